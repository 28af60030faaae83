//! Errors of the architecture catalog: every error names its origin (the spec string or the config file)
//! and what was wrong, on one line.

use thiserror::Error;

/// An error building a model from a spec string or a Hugging Face `config.json`.
///
/// Displays as `<origin>: <what>`, where the origin is `spec `...`` or the config's path or name.
#[derive(Debug, Error)]
#[error("{origin}: {kind}")]
pub struct ModelError {
    /// Where the input came from: "spec `llama:...`" or a file path / config name.
    pub origin: String,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl ModelError {
    /// An error for `origin`.
    pub fn new(origin: impl Into<String>, kind: ErrorKind) -> ModelError {
        ModelError {
            origin: origin.into(),
            kind,
        }
    }
}

/// What was wrong with a model description.
#[derive(Debug, Error)]
pub enum ErrorKind {
    /// The spec has no `family:` prefix.
    #[error("not a model spec: expected `family:key=value,...` (families: {known})")]
    NotASpec {
        /// Known families, comma separated.
        known: String,
    },
    /// The spec's family is not in the catalog.
    #[error("unknown model family `{family}` (known: {known})")]
    UnknownFamily {
        /// The family given.
        family: String,
        /// Known families, comma separated.
        known: String,
    },
    /// A Hugging Face `model_type` that the catalog does not build.
    #[error("unsupported model_type `{model_type}` (supported: {known})")]
    UnknownModelType {
        /// The model type given.
        model_type: String,
        /// Supported model types, comma separated.
        known: String,
    },
    /// A spec key that the family does not take.
    #[error("unknown key `{key}` for family `{family}` (known: {known})")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The family.
        family: String,
        /// Keys the family takes, comma separated.
        known: String,
    },
    /// A spec key given twice (aliases such as `seq` and `max_pos` count as the same key).
    #[error("key `{key}` given more than once")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A spec entry that is not `key=value`.
    #[error("entry {index} `{entry}` is not `key=value`")]
    BadEntry {
        /// 1-based position of the entry.
        index: usize,
        /// The entry text.
        entry: String,
    },
    /// A value of the wrong form or out of range.
    #[error("`{key}` must be {expected}, got `{value}`")]
    BadValue {
        /// The key.
        key: String,
        /// The value given (as text).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A required key is absent.
    /// A config field that changes the architecture in a way moai does not model.
    #[error("`{key}` = {value} is not modeled: {why}")]
    Unmodeled {
        /// The config key.
        key: String,
        /// Its value, as JSON.
        value: String,
        /// What it changes and what moai supports instead.
        why: String,
    },
    /// A required key is absent.
    #[error("missing required key `{key}`")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// The values are individually fine but inconsistent (heads not dividing hidden, ...).
    #[error("{0}")]
    Inconsistent(String),
    /// The config file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The config is not valid JSON.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The config's top level is not a JSON object.
    #[error("config must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// Random initialization was asked for a model too large to hold in memory.
    #[error("random initialization of {params} parameters exceeds the limit of {limit}")]
    TooLargeToInit {
        /// Parameter count.
        params: u64,
        /// The limit.
        limit: u64,
    },
}
