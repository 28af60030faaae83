//! Errors of the runtime crate. Every variant names what was wrong and where.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong emitting, lowering, bundling or running a stage program.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A graph node cannot be emitted (unsupported op, dtype or shape).
    #[error("emitting `{program}`: node `{node}` ({op}): {reason}")]
    Emit {
        /// Program (function) name.
        program: String,
        /// Node name (provenance) or id.
        node: String,
        /// Op kind name.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// A symbolic dimension has no value in the plan's dimension bindings.
    #[error(
        "emitting `{program}`: dimension `{dim}` of value {value} is not bound (bound: {bound})"
    )]
    UnboundDim {
        /// Program name.
        program: String,
        /// The symbolic dim as printed.
        dim: String,
        /// The value whose shape needs it.
        value: String,
        /// The symbols that are bound.
        bound: String,
    },
    /// MLIR rejected the emitted module (parse or verification).
    #[error("MLIR module `{program}` is invalid: {reason}")]
    InvalidModule {
        /// Program name.
        program: String,
        /// Diagnostics.
        reason: String,
    },
    /// A lowering pipeline failed.
    #[error("lowering `{program}` for {target} failed in pipeline `{pipeline}`: {reason}")]
    Lowering {
        /// Program name.
        program: String,
        /// Target.
        target: String,
        /// The pipeline text.
        pipeline: String,
        /// Diagnostics.
        reason: String,
    },
    /// A toolkit directory given for linking is unusable.
    #[error("toolkit `{path}`: {reason}")]
    Toolkit {
        /// Directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A feature needed for this call was not compiled in.
    #[error("{what} needs moai-runtime built with feature `{feature}`: {hint}")]
    FeatureDisabled {
        /// What was asked for.
        what: String,
        /// The cargo feature.
        feature: &'static str,
        /// How to enable it.
        hint: &'static str,
    },
    /// No device of the requested kind is present.
    #[error("{backend}: no device present: {reason}")]
    NoDevice {
        /// Backend name.
        backend: &'static str,
        /// Driver's message.
        reason: String,
    },
    /// Execution inputs do not match the program's signature.
    #[error("running `{program}`: {reason}")]
    BadInput {
        /// Program name.
        program: String,
        /// What is wrong.
        reason: String,
    },
    /// Execution failed.
    #[error("running `{program}`: {reason}")]
    Exec {
        /// Program name.
        program: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A bundle could not be decoded.
    #[error("{path}: not a moai bundle: {reason}")]
    Bundle {
        /// File.
        path: PathBuf,
        /// Decoder message.
        reason: String,
    },
}

/// Result alias for the runtime crate.
pub type Result<T> = std::result::Result<T, RuntimeError>;
