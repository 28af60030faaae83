//! moai-models: the architecture catalog. Builds a [`moai_ir::Graph`] in the canonical fused form (the
//! same form ONNX import and recognition produce) directly from a spec string or a Hugging Face
//! `config.json`, without any ONNX file.
//!
//! ```
//! let g = moai_models::from_spec("llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512").unwrap();
//! assert_eq!(g.outputs[0].0, "logits");
//! let cfg = moai_models::ArchConfig::from_spec("gpt:layers=48,hidden=1600,heads=25,vocab=50257").unwrap();
//! assert_eq!(cfg.params(), 1_557_611_200);
//! ```
//!
//! Graphs built here have no weights unless asked for ([`Weights::Random`]); see [`build`] for what that
//! means for execution.

#![warn(missing_docs)]
mod arch;
mod build;
mod error;
mod hf;
mod spec;

pub use arch::{
    ArchConfig, Family, MAX_DIM, MAX_LAYERS, MAX_PARAMS, MlaConfig, MoeConfig, RopeScaling,
    RouterScore,
};
pub use build::{MAX_RANDOM_PARAMS, SYNTHETIC_LOCATION, Weights};
pub use error::{ErrorKind, ModelError};
pub use spec::looks_like_spec;

use moai_ir::Graph;
use std::path::Path;

impl ArchConfig {
    /// Parses and validates a spec string (see the `spec` grammar in the README).
    pub fn from_spec(spec: &str) -> Result<ArchConfig, ModelError> {
        spec::parse(spec)
    }

    /// Parses and validates a Hugging Face `config.json` text; `name` names the model in the graph and in
    /// errors.
    pub fn from_hf_config_str(json: &str, name: &str) -> Result<ArchConfig, ModelError> {
        hf::parse(json, name, name)
    }

    /// Reads, parses and validates a Hugging Face `config.json`; the model is named after the directory
    /// holding a `config.json`, or after the file stem otherwise; errors name the path.
    pub fn from_hf_config(path: &Path) -> Result<ArchConfig, ModelError> {
        let origin = path.display().to_string();
        let json =
            std::fs::read_to_string(path).map_err(|e| ModelError::new(origin.clone(), e.into()))?;
        hf::parse(&json, &origin, &model_name(path))
    }

    /// Builds the graph (no weights; see [`build`]).
    pub fn build(&self) -> Result<Graph, ModelError> {
        build::build(self, Weights::Synthetic)
    }

    /// Builds the graph with the given weights.
    pub fn build_with(&self, weights: Weights) -> Result<Graph, ModelError> {
        build::build(self, weights)
    }
}

/// Builds the graph of a spec such as `llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=11008,vocab=32000`.
pub fn from_spec(spec: &str) -> Result<Graph, ModelError> {
    ArchConfig::from_spec(spec)?.build()
}

/// Builds the graph of a Hugging Face `config.json` file.
pub fn from_hf_config(path: &Path) -> Result<Graph, ModelError> {
    ArchConfig::from_hf_config(path)?.build()
}

/// Builds the graph of a Hugging Face `config.json` given as text; `name` names the graph and errors.
pub fn from_hf_config_str(json: &str, name: &str) -> Result<Graph, ModelError> {
    ArchConfig::from_hf_config_str(json, name)?.build()
}

/// `…/Llama-2-7b-hf/config.json` → `Llama-2-7b-hf`; `…/llama2-7b.json` → `llama2-7b`.
fn model_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let dir = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str());
    match dir {
        Some(dir) if stem == "config" => dir.to_string(),
        _ => stem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_come_from_the_directory_or_stem() {
        assert_eq!(
            model_name(Path::new("/m/Llama-2-7b-hf/config.json")),
            "Llama-2-7b-hf"
        );
        assert_eq!(model_name(Path::new("x/llama2-7b.json")), "llama2-7b");
        assert_eq!(model_name(Path::new("config.json")), "config");
    }
}
