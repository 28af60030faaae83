//! Errors of the cost model. Every variant names what was wrong and where, in one line.

use thiserror::Error;

/// Everything the cost model can reject.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CostError {
    /// A GPU kind that moai does not know.
    #[error("unknown GPU kind `{0}` (expected one of {names})", names = crate::device::Gpu::NAMES)]
    UnknownGpu(String),
    /// A name that is not a flavor.
    #[error("unknown flavor `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownFlavor {
        /// What was given.
        name: String,
        /// The nearest flavor name by edit distance.
        suggestion: Option<String>,
    },
    /// A flavor that does not map to a whole number of devices of a GPU kind.
    #[error(
        "flavor `{flavor}` has no whole-device mapping on {gpu}: it would be {numerator}/{denominator} of a device"
    )]
    NoWholeDeviceMapping {
        /// Flavor name.
        flavor: String,
        /// GPU kind.
        gpu: String,
        /// Fraction numerator (devices = numerator / denominator).
        numerator: u64,
        /// Fraction denominator.
        denominator: u64,
    },
    /// A GPU kind for which flavors are not defined ([`crate::flavor::no_flavors`] builds it).
    #[error("flavors are defined for {flavored}, not {gpu}; give --gpu {gpu} --devices N instead")]
    NoFlavorsForGpu {
        /// The GPU kind asked for.
        gpu: String,
        /// The kinds that have flavors, as a list in words ([`crate::flavor::FLAVOR_GPUS`]).
        flavored: String,
    },
    /// A cluster that cannot exist.
    #[error("invalid cluster: {0}")]
    InvalidCluster(String),
    /// A cluster file that cannot be read or parsed.
    #[error("cluster file {path}: {reason}")]
    ClusterFile {
        /// File.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A parallel configuration that does not fit the cluster or the model.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A profile data file that cannot be read or is malformed.
    #[error("op profile {origin}: {reason}")]
    Profile {
        /// File or description of the profile.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A step profile (from the training graph) that is inconsistent.
    #[error("step profile: {0}")]
    StepProfile(String),
    /// A truth file line that cannot be parsed.
    #[error("{path}:{line}: {reason}")]
    Truth {
        /// File.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A fit that could not be carried out.
    #[error("fit: {0}")]
    Fit(String),
}

/// Result alias of the cost model.
pub type Result<T> = std::result::Result<T, CostError>;
