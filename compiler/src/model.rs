//! A model to plan: loaded from an ONNX file, a Hugging Face `config.json`, a Hugging Face model
//! directory (its `config.json`, and the ONNX file in it if there is exactly one), or a spec string.

use crate::error::{PlanError, Result};
use crate::export::{Activation, ModelSettings};
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
    /// A Hugging Face model directory: its `config.json`, and the ONNX file in it when there is one.
    HfDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The ONNX file the graph was imported from, if any.
        onnx: Option<std::path::PathBuf>,
    },
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
    /// The architecture, when the model came from a config or spec (settings an ONNX graph does not
    /// record, such as the rotary base, come from here).
    pub arch: Option<moai_models::ArchConfig>,
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
        let import_onnx = |p: &Path| -> Result<(Graph, OnnxInfo)> {
            let imported = moai_ir::onnx::import(p)?;
            let info = OnnxInfo {
                ops: imported.onnx_ops,
                opset: imported.opset,
                import_ms: imported.import_ms,
            };
            Ok((imported.graph, info))
        };
        let (graph, source, onnx, arch) = if path.is_dir() {
            let config = path.join("config.json");
            if !config.is_file() {
                return Err(PlanError::InvalidArgument(format!(
                    "{src}: a directory without a config.json (a Hugging Face model directory holds one)"
                )));
            }
            let arch = moai_models::ArchConfig::from_hf_config(&config)?;
            let onnx_files = onnx_files_in(path)?;
            match onnx_files.as_slice() {
                [] => (
                    arch.build()?,
                    ModelSource::HfDir {
                        dir: path.to_path_buf(),
                        onnx: None,
                    },
                    None,
                    Some(arch),
                ),
                [one] => {
                    let (g, info) = import_onnx(one)?;
                    (
                        g,
                        ModelSource::HfDir {
                            dir: path.to_path_buf(),
                            onnx: Some(one.clone()),
                        },
                        Some(info),
                        Some(arch),
                    )
                }
                many => {
                    return Err(PlanError::InvalidArgument(format!(
                        "{src}: {} ONNX files in the directory ({}); pass the one to plan",
                        many.len(),
                        many.iter()
                            .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        } else if lower.ends_with(".onnx") {
            let (g, info) = import_onnx(path)?;
            // An export directory (optimum, transformers) keeps the config beside the graph: settings
            // the graph does not record come from it, and its unmodeled fields are refused.
            let sibling = path
                .parent()
                .map(|d| d.join("config.json"))
                .filter(|c| c.is_file());
            let arch = sibling
                .map(|c| moai_models::ArchConfig::from_hf_config(&c))
                .transpose()?;
            (g, ModelSource::Onnx(path.to_path_buf()), Some(info), arch)
        } else if lower.ends_with(".json") {
            let arch = moai_models::ArchConfig::from_hf_config(path)?;
            (
                arch.build()?,
                ModelSource::HfConfig(path.to_path_buf()),
                None,
                Some(arch),
            )
        } else if moai_models::looks_like_spec(src) {
            let arch = moai_models::ArchConfig::from_spec(src)?;
            (
                arch.build()?,
                ModelSource::Spec(src.to_string()),
                None,
                Some(arch),
            )
        } else if path.exists() {
            return Err(PlanError::InvalidArgument(format!(
                "{src}: unknown model format (expected an .onnx file, a Hugging Face config.json or model directory, or a spec such as llama:layers=32,hidden=4096,heads=32,ffn=11008,vocab=32000)"
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
        if let (Some(a), Some(_)) = (&arch, &onnx) {
            check_config_matches_graph(src, a, &summary)?;
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
            arch,
        })
    }

    /// The architecture settings the engine exports need: from the config or spec when there is one,
    /// else read from the graph (the rotary base only when the graph holds its `inv_freq` table).
    pub fn settings(&self) -> ModelSettings {
        let s = &self.summary;
        let gated = matches!(s.mlp, moai_ir::layers::MlpKind::Gated);
        let activation = if gated {
            Activation::Swiglu
        } else {
            Activation::GeluTanh
        };
        if let Some(a) = &self.arch {
            let llama = a.family.is_llama_like();
            return ModelSettings {
                llama_style: llama,
                activation,
                qkv_bias: a.qkv_bias,
                out_bias: a.o_bias,
                mlp_bias: a.mlp_bias,
                rope_theta: llama.then_some(a.rope_theta),
                rope_scaling: a.rope_scaling.clone().filter(|_| llama),
                norm_eps: Some(a.eps),
                max_positions: Some(a.max_pos as u64),
                head_dim: a.head_dim as u64,
            };
        }
        let g = &self.graph;
        let mut eps = None;
        let mut rope_theta = None;
        let mut linear_biases = 0usize;
        let mut linears = 0usize;
        for id in g.topo_order() {
            let node = g.node(id);
            let inv_freq = match &node.op {
                moai_ir::Op::Param {
                    name,
                    data: moai_ir::ParamData::Inline(t),
                } if name.ends_with("inv_freq") => Some(t),
                moai_ir::Op::Constant(t) if node.prov.name.ends_with("inv_freq") => Some(t),
                _ => None,
            };
            if rope_theta.is_none()
                && let Some(t) = inv_freq
            {
                // inv_freq[i] = theta^(-2i/d): theta = inv_freq[1]^(-d/2), d = 2·len.
                let v = t.to_f64_vec();
                if v.len() >= 2 && v[1] > 0.0 && v[1] < 1.0 {
                    let theta = v[1].powf(-(v.len() as f64));
                    // Read back as the integer it was written from (f32 tables carry ~1e-6 error).
                    let rounded = theta.round();
                    // Only a plain table: scaled rotary positions (Llama 3.1's low frequencies
                    // divided by 8) keep inv_freq[1] and change the rest, and an export with the
                    // base alone would train other frequencies.
                    let plain = v.iter().enumerate().all(|(i, f)| {
                        let want = rounded.powf(-(i as f64) / v.len() as f64);
                        ((f - want) / want).abs() < 1e-3
                    });
                    if ((theta - rounded) / rounded).abs() < 1e-4 && plain {
                        rope_theta = Some(rounded);
                    }
                }
            }
            match &node.op {
                moai_ir::Op::RmsNorm { eps: e } | moai_ir::Op::LayerNorm { eps: e }
                    if eps.is_none() =>
                {
                    eps = Some(*e)
                }
                moai_ir::Op::Linear { bias, .. } => {
                    linears += 1;
                    linear_biases += usize::from(*bias);
                }
                _ => {}
            }
        }
        let llama = matches!(s.norm, moai_ir::layers::NormKind::RmsNorm) && gated;
        // A Qwen2-style graph has biases on exactly the q/k/v projections (3 of 7 linears per layer).
        let all_biased = linears > 0 && linear_biases == linears;
        ModelSettings {
            llama_style: llama,
            activation,
            qkv_bias: linear_biases > 0,
            out_bias: all_biased || (linear_biases > 0 && !llama),
            mlp_bias: all_biased || (linear_biases > 0 && !llama),
            rope_theta,
            rope_scaling: None,
            norm_eps: eps,
            max_positions: None,
            head_dim: s.head_dim,
        }
    }
}

/// A config read beside an ONNX graph must describe that graph.
fn check_config_matches_graph(
    src: &str,
    a: &moai_models::ArchConfig,
    s: &ModelSummary,
) -> Result<()> {
    let pairs = [
        ("num_hidden_layers", a.layers as u64, s.layers as u64),
        ("hidden_size", a.hidden as u64, s.hidden),
        ("num_attention_heads", a.heads as u64, s.heads),
        ("num_key_value_heads", a.kv_heads as u64, s.kv_heads),
        ("intermediate_size", a.ffn as u64, s.ffn),
        ("vocab_size", a.vocab as u64, s.vocab),
    ];
    for (key, config, graph) in pairs {
        if config != graph {
            return Err(PlanError::InvalidArgument(format!(
                "{src}: the config.json beside the ONNX graph says {key} {config}, the graph has {graph}; they describe different models"
            )));
        }
    }
    Ok(())
}

/// The `.onnx` files directly in a directory, sorted.
fn onnx_files_in(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| PlanError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out: Vec<std::path::PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| x.eq_ignore_ascii_case("onnx"))
        })
        .collect();
    out.sort();
    Ok(out)
}
