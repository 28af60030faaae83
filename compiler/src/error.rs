//! Errors of the planner library.

use thiserror::Error;

/// What can go wrong loading a model, planning or estimating. Each message is one line naming the
/// input that was wrong.
#[derive(Debug, Error)]
pub enum PlanError {
    /// The model could not be loaded (file, config or spec).
    #[error(transparent)]
    Ir(#[from] moai_ir::IrError),
    /// A spec string or Hugging Face config was wrong.
    #[error(transparent)]
    Models(#[from] moai_models::ModelError),
    /// The cost model rejected the cluster or configuration.
    #[error(transparent)]
    Cost(#[from] moai_costmodel::CostError),
    /// Emitting or lowering the plan's stage programs failed (`--emit mlir,hsaco,ptx`).
    #[error(transparent)]
    Runtime(#[from] moai_runtime::RuntimeError),
    /// A flag value was wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The model is not one the planner understands (e.g. no decoder layers found).
    #[error("{0}")]
    UnsupportedModel(String),
    /// No configuration fits in memory.
    #[error("{0}")]
    NoFeasiblePlan(String),
    /// The time budget or an interrupt stopped the search before any evaluated candidate fitted.
    #[error("{0}")]
    Stopped(String),
    /// The search was interrupted before any candidate was evaluated.
    #[error("interrupted before any candidate was evaluated")]
    Interrupted,
    /// The current flavor or its config file (`moai-compile use`, cluster flags) was wrong.
    #[error(transparent)]
    Current(#[from] crate::current::CurrentError),
    /// A plan file given to `smi` was wrong.
    #[error(transparent)]
    Smi(#[from] crate::smi::SmiError),
    /// An error with what was being done when it happened (`writing into out/: ...`).
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: Box<PlanError>,
    },
    /// Writing outputs failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl PlanError {
    /// This error with `context` (what was being done) in front of it.
    pub fn context(self, context: impl Into<String>) -> PlanError {
        PlanError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, PlanError>;
