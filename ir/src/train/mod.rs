//! The training graph: loss, reverse-mode autodiff, optimizer updates, precision policies, recomputation,
//! liveness and per-op costs.
//!
//! [`build_training_graph`] turns a fused-form forward graph into one graph of the same IR holding the
//! forward pass (re-typed by the precision policy, with casts), the loss, the backward pass (with the
//! recomputed forward ops the recomputation policy asks for) and the optimizer updates, in execution
//! order. [`peak_memory`] runs a liveness analysis over that order; [`step_profile`] gives the cost
//! model its per-block records quickly by building the training graph of one representative decoder
//! layer per distinct layer structure.

mod autodiff;
mod build;
pub mod cost;
mod memory;
mod options;
mod profile;
pub mod tp;

pub use build::{
    ParamInfo, TrainingGraph, build_engine_training_graph, build_training_graph,
    build_training_graph_with,
};
pub use cost::{OpCount, node_cost, step_costs};
pub use memory::{LayerMemory, MemoryReport, PeakBreakdown, peak_memory};
pub use options::{Hyper, OptimizerKind, PrecisionPolicy, RecomputePolicy, TrainOptions};
pub use profile::{ReducedModel, reduce_layers, step_profile, unreduced_step_profile};

/// Ignore index of the loss targets (padding and the position after the last token).
pub const IGNORE_INDEX: i64 = -100;
