//! moai-ir: the intermediate representation of moai.
//!
//! - [`dtype`], [`dim`], [`shape`], [`tensor`]: element types, symbolic dims, shapes, concrete tensors.
//! - [`op`], [`graph`]: the closed canonical op set and the petgraph-based graph with provenance.
//! - [`cost`]: the per-op cost records shared with the cost model.

#![warn(missing_docs)]
pub mod cost;
mod dim;
mod dtype;
mod error;
mod graph;
pub mod interp;
pub mod layers;
pub mod onnx;
mod op;
mod recognize;
mod shape;
pub mod stats;
mod tensor;
pub mod train;

pub use dim::Dim;
pub use dtype::DType;
pub use error::{IrError, Result};
pub use graph::{Graph, Node, NodeId, Provenance, Value};
pub use op::{BinaryOp, CollectiveKind, Op, ParamData, ReduceKind, UnaryOp};
pub use shape::{Shape, TensorType};
pub use tensor::{Tensor, TensorData};
