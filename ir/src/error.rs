//! Errors of the IR crate.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong importing, analysing or executing a graph. Every variant names what was
/// wrong and where.
#[derive(Debug, Error)]
pub enum IrError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid ONNX protobuf.
    #[error("{path}: not a valid ONNX model: {reason}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The model is structurally invalid or outside what moai supports.
    #[error("{path}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One or more ops are outside the supported set.
    #[error("{path}: unsupported ONNX ops: {}", .ops.iter().map(|(op, node)| format!("{op} (e.g. node `{node}`)")).collect::<Vec<_>>().join(", "))]
    Unsupported {
        /// File.
        path: PathBuf,
        /// Each unsupported op type with one example node name.
        ops: Vec<(String, String)>,
    },
    /// A node could not be imported.
    #[error("{path}: node `{node}` ({op_type}): {reason}")]
    Node {
        /// File.
        path: PathBuf,
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// What is wrong.
        reason: String,
    },
    /// External weight data is unsafe or missing.
    #[error("{path}: external data for `{tensor}`: {reason}")]
    ExternalData {
        /// Model file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Execution failed.
    #[error("execution failed at node `{node}`: {reason}")]
    Exec {
        /// Node name.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// A graph-level analysis failed (autodiff, training graph, liveness).
    #[error("{0}")]
    Analysis(String),
}

/// Result alias for the IR crate.
pub type Result<T> = std::result::Result<T, IrError>;
