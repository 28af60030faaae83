//! A model to plan: loaded from an ONNX file, a Hugging Face `config.json`, or a spec string.

use crate::error::{PlanError, Result};
use moai_ir::Graph;
use moai_ir::layers::ModelSummary;
use std::path::Path;
use std::time::Instant;

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// An ONNX export.
    Onnx(std::path::PathBuf),
    /// A Hugging Face `config.json`.
    HfConfig(std::path::PathBuf),
    /// A spec string such as `llama:layers=32,...`.
    Spec(String),
}

/// A loaded model: its canonical forward graph and the summary the planner reads.
#[derive(Clone, Debug)]
pub struct Model {
    /// Model name (file stem, config name or spec).
    pub name: String,
    /// Forward graph in the canonical fused form.
    pub graph: Graph,
    /// Layers, sizes, parameter counts.
    pub summary: ModelSummary,
    /// Where it came from.
    pub source: ModelSource,
    /// Wall time to load, import and recognize, milliseconds.
    pub load_ms: f64,
    /// The ONNX import record (op histogram, opset), for ONNX models.
    pub onnx: Option<OnnxInfo>,
}

/// What the ONNX import recorded besides the graph.
#[derive(Clone, Debug)]
pub struct OnnxInfo {
    /// ONNX op histogram.
    pub ops: std::collections::BTreeMap<String, usize>,
    /// Default-domain opset.
    pub opset: i64,
    /// Import wall time (decode, shapes, folding, recognition), ms.
    pub import_ms: f64,
}

impl Model {
    /// Loads `.onnx` files, `config.json` files (any `.json`), or spec strings (`llama:...`, `gpt:...`).
    ///
    /// ```no_run
    /// let m = moai_compiler::Model::load("models/llama2-13b.onnx").unwrap();
    /// assert_eq!(m.summary.layers, 40);
    /// ```
    pub fn load(src: &str) -> Result<Model> {
        let t0 = Instant::now();
        let path = Path::new(src);
        let lower = src.to_ascii_lowercase();
        let (graph, source, onnx) = if lower.ends_with(".onnx") {
            let imported = moai_ir::onnx::import(path)?;
            let info = OnnxInfo {
                ops: imported.onnx_ops,
                opset: imported.opset,
                import_ms: imported.import_ms,
            };
            (
                imported.graph,
                ModelSource::Onnx(path.to_path_buf()),
                Some(info),
            )
        } else if lower.ends_with(".json") {
            let g = moai_models::from_hf_config(path)?;
            (g, ModelSource::HfConfig(path.to_path_buf()), None)
        } else if moai_models::looks_like_spec(src) {
            (
                moai_models::from_spec(src)?,
                ModelSource::Spec(src.to_string()),
                None,
            )
        } else if path.exists() {
            return Err(PlanError::InvalidArgument(format!(
                "{src}: unknown model format (expected an .onnx file, a Hugging Face config.json, or a spec such as llama:layers=32,hidden=4096,heads=32,ffn=11008,vocab=32000)"
            )));
        } else {
            return Err(PlanError::InvalidArgument(format!(
                "{src}: no such file, and not a model spec (expected llama:key=value,... or gpt:key=value,...)"
            )));
        };
        let summary = moai_ir::layers::summarize(&graph)?;
        if summary.layers == 0 {
            return Err(PlanError::UnsupportedModel(format!(
                "{src}: no decoder layers found; the planner needs a decoder-only transformer"
            )));
        }
        let name = if summary.name.is_empty() {
            graph.name.clone()
        } else {
            summary.name.clone()
        };
        Ok(Model {
            name,
            graph,
            summary,
            source,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            onnx,
        })
    }
}
