//! ONNX import: protobuf decoding, the op-builder table, shape inference and constant folding of PyTorch
//! shape subgraphs, external data.
//!
//! [`import`] reads a model, checks it (opset ≥ [`MIN_OPSET`], at least one graph input, every op in the
//! supported set — all unsupported op types are reported together), builds a [`Graph`] of canonical ops
//! with symbolic dims (`batch`, `seq` from the inputs' `dim_param`), folds shape computations into
//! symbolic shapes, and then runs [`crate::recognize::recognize`] to produce the fused canonical form.
//! External weights are referenced, never read: see [`read_external`].

mod ctx;
mod external;
mod known;
mod ops;
mod params;
mod proto;

pub(crate) use ctx::broadcast;
pub use external::{read_external, validate_location};
pub use ops::supported_ops;
pub use proto::layer_of_scope;

use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, Provenance, Value};
use crate::op::Op;
use crate::recognize::RecognitionReport;
use crate::shape::{Shape, TensorType};
use ctx::{Ctx, Val};
use onnx_protobuf::{Message, ModelProto};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Oldest default-domain opset the importer accepts (axes as inputs of `Squeeze`/`Unsqueeze`/`ReduceSum`,
/// `Split` sizes as an input: the opset-13 forms). Older exports must be upgraded first.
pub const MIN_OPSET: i64 = 13;

/// An imported model.
#[derive(Debug)]
pub struct Imported {
    /// The graph in canonical (fused, unless recognition was turned off) form.
    pub graph: Graph,
    /// ONNX op histogram of the file (op type → node count).
    pub onnx_ops: BTreeMap<String, usize>,
    /// Default-domain opset version.
    pub opset: i64,
    /// Wall time of the whole import (read, decode, build, fold, recognize), milliseconds.
    pub import_ms: f64,
    /// What recognition fused and what it left primitive.
    pub recognition: RecognitionReport,
}

/// Options of [`import_with`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Run [`crate::recognize::recognize`] after building the primitive graph.
    pub recognize: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { recognize: true }
    }
}

/// Imports an ONNX model and recognizes its structure (see the module docs).
pub fn import(path: &Path) -> Result<Imported> {
    import_with(path, &ImportOptions::default())
}

/// Imports an ONNX model with options (e.g. without recognition, to get the primitive graph).
pub fn import_with(path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let t0 = Instant::now();
    let bytes = std::fs::read(path).map_err(|source| IrError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| IrError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let (mut graph, onnx_ops, opset) = build(&model, path, &name)?;
    graph.source_dir = Some(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let recognition = if opts.recognize {
        crate::recognize::recognize(&mut graph)?
    } else {
        RecognitionReport::default()
    };
    let import_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(model = %name, nodes = graph.len(), import_ms, "imported");
    Ok(Imported {
        graph,
        onnx_ops,
        opset,
        import_ms,
        recognition,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> IrError {
    IrError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decodes an ONNX model already parsed from `path` into a primitive graph.
fn build(
    model: &ModelProto,
    path: &Path,
    name: &str,
) -> Result<(Graph, BTreeMap<String, usize>, i64)> {
    let Some(gp) = model.graph.as_ref() else {
        return Err(invalid(
            path,
            "the file holds no graph (empty file or not an ONNX model)",
        ));
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| invalid(path, "the model imports no default-domain (ai.onnx) opset"))?;
    if opset < MIN_OPSET {
        return Err(invalid(
            path,
            format!(
                "opset {opset} is too old: moai imports opset {MIN_OPSET} or newer (upgrade the model with onnx.version_converter)"
            ),
        ));
    }
    // Every unsupported op type, with one example node each.
    let mut unsupported: Vec<(String, String)> = Vec::new();
    let mut onnx_ops = BTreeMap::new();
    for (i, n) in gp.node.iter().enumerate() {
        *onnx_ops.entry(n.op_type.clone()).or_insert(0) += 1;
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        if !default_domain || ops::builder(&n.op_type).is_none() {
            let op = if default_domain {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            if !unsupported.iter().any(|(o, _)| *o == op) {
                unsupported.push((op, node_name(n, i)));
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(IrError::Unsupported {
            path: path.to_path_buf(),
            ops: unsupported,
        });
    }
    let init_names: std::collections::HashSet<&str> =
        gp.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = gp
        .input
        .iter()
        .filter(|i| !init_names.contains(i.name.as_str()))
        .collect();
    if inputs.is_empty() {
        return Err(invalid(
            path,
            "the graph has no inputs (expected e.g. `input_ids` [batch, seq])",
        ));
    }
    if gp.output.is_empty() {
        return Err(invalid(path, "the graph has no outputs"));
    }
    let plan = params::InitPlan::new(gp);
    let scopes = plan.scopes.clone();
    let mut cx = Ctx::new(name, &gp.initializer, plan);
    for inp in &inputs {
        let ty = input_type(inp)
            .map_err(|r| invalid(path, format!("graph input `{}`: {r}", inp.name)))?;
        let prov = Provenance {
            name: inp.name.clone(),
            ..Default::default()
        };
        let id = cx.g.add(
            Op::Input {
                name: inp.name.clone(),
            },
            vec![],
            vec![ty],
            prov,
        );
        cx.bind(&inp.name, Val::T(Value::of(id)));
    }
    for (i, n) in gp.node.iter().enumerate() {
        let nname = node_name(n, i);
        let scope = scopes[i].clone();
        cx.prov = Provenance {
            name: nname.clone(),
            layer: proto::layer_of_scope(&scope),
            scope,
        };
        cx.node_index = i;
        let node_err = |reason: String| IrError::Node {
            path: path.to_path_buf(),
            node: nname.clone(),
            op_type: n.op_type.clone(),
            reason,
        };
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if !cx.has(inp) {
                return Err(node_err(format!(
                    "input `{inp}` is not produced by an earlier node (the graph must be topologically sorted)"
                )));
            }
        }
        let build = ops::builder(&n.op_type).ok_or_else(|| node_err("unsupported".into()))?;
        let outs = build(&mut cx, n).map_err(node_err)?;
        for (o, v) in n.output.iter().zip(outs) {
            if !o.is_empty() {
                cx.bind(o, v);
            }
        }
    }
    for o in &gp.output {
        if !cx.has(&o.name) {
            return Err(invalid(
                path,
                format!("graph output `{}` is not produced by any node", o.name),
            ));
        }
        let v = match cx.val(&o.name).map_err(|r| invalid(path, r))? {
            Val::T(v) => v,
            Val::K(k) => cx
                .constant(&k)
                .map_err(|r| invalid(path, format!("output `{}`: {r}", o.name)))?,
            Val::Seq { .. } => {
                return Err(invalid(
                    path,
                    format!("graph output `{}` is a sequence", o.name),
                ));
            }
        };
        cx.g.outputs.push((o.name.clone(), v));
    }
    let mut g = cx.g;
    g.remove_dead();
    Ok((g, onnx_ops, opset))
}

fn node_name(n: &onnx_protobuf::NodeProto, i: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else if let Some(o) = n.output.first().filter(|o| !o.is_empty()) {
        format!("{}({o})", n.op_type)
    } else {
        format!("{}#{i}", n.op_type)
    }
}

/// The tensor type of a graph input (symbolic dims from `dim_param`).
fn input_type(vi: &onnx_protobuf::ValueInfoProto) -> std::result::Result<TensorType, String> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as DV;
    use onnx_protobuf::type_proto::Value as TV;
    let tp = vi.type_.as_ref().ok_or("no type")?;
    let Some(TV::TensorType(t)) = &tp.value else {
        return Err("not a tensor".into());
    };
    let dtype = DType::from_onnx(t.elem_type)
        .ok_or_else(|| format!("unsupported element type code {}", t.elem_type))?;
    let shape = t.shape.as_ref().ok_or("no shape")?;
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.value {
            Some(DV::DimValue(v)) if *v >= 0 => Ok(Dim::constant(*v)),
            Some(DV::DimValue(v)) => Err(format!("negative dim {v}")),
            Some(DV::DimParam(p)) if !p.is_empty() => Ok(Dim::sym(p)),
            _ => Ok(Dim::sym(&format!("{}_{i}", vi.name))),
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(TensorType::new(dtype, Shape(dims)))
}
