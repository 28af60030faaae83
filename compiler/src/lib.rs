//! moai-compiler: the planner. Search space, per-candidate compilation (stage partitioning on the cost
//! model's per-block costs), parallel evaluation, selection, plans and exports. The `moai-compile` binary is a
//! thin layer over this library.
//!
//! ```no_run
//! use moai_compiler::{Cluster, Gpu, Model, PlanRequest, plan};
//! let model = Model::load("models/llama2-13b.onnx").unwrap();
//! let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
//! let report = plan(&model, &cluster, &PlanRequest::new(256, 1024)).unwrap();
//! println!("{}", report.output.plan.summary_line());
//! ```

#![warn(missing_docs)]
mod api;
pub mod cli;
mod codegen;
pub mod commands;
pub mod config;
mod current;
pub mod emit;
mod error;
pub mod export;
pub mod fit;
pub mod html;
mod inspect;
mod model;
mod partition;
pub mod plan;
pub mod report;
pub mod request;
pub mod search;
mod smi;
pub mod space;
mod svg;
pub mod sweep;
mod validate;

pub use api::{estimate, plan, plan_with};
pub use config::{EmitKind, ZeroStage};
pub use error::{PlanError, Result};
pub use moai_costmodel::{
    BlockCost, Cluster, CostModel, Estimate, Gpu, ParallelConfig, ProfiledCostModel, Recompute,
    Schedule,
};
pub use model::{Model, ModelSource};
pub use plan::PlanOutput;
pub use report::PlanReport;
pub use request::{Constraints, PlanRequest};
