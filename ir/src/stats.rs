//! Model statistics: parameter counts and bytes by dtype, op histograms, forward FLOPs per token, and the
//! `inspect --json` report.
//!
//! **FLOPs per token** (forward, batch 1, sequence length `s`): `2 ×` the multiply-accumulates of every
//! `Linear` and `MatMul` (including the LM head), plus attention's two products, `QKᵀ` and `PV`, each
//! `2·s·d` per head per token (the full square: causal masking is not discounted, as kernels usually do
//! not skip it). Elementwise ops, norms and softmax are not counted. The total at `(batch 1, seq s)` is
//! divided by `s`.

use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::layers::summarize;
use crate::onnx::Imported;
use crate::op::Op;
use serde::Serialize;
use std::collections::BTreeMap;

/// Trainable parameter count.
pub fn param_count(g: &Graph) -> Result<u64> {
    g.params()
        .iter()
        .map(|p| {
            numel(
                g,
                g.node(*p).outputs[0].shape.numel(),
                &g.node(*p).prov.name,
            )
        })
        .sum()
}

fn numel(_g: &Graph, d: crate::Dim, name: &str) -> Result<u64> {
    d.as_const()
        .map(|c| c as u64)
        .ok_or_else(|| IrError::Analysis(format!("`{name}` has a symbolic size {d}")))
}

/// Bytes of trainable parameters by dtype name (`bf16`, `f32`, ...), as stored in the model.
pub fn param_bytes_by_dtype(g: &Graph) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for p in g.params() {
        let ty = &g.node(p).outputs[0];
        let n = numel(g, ty.bytes(), &g.node(p).prov.name)?;
        *out.entry(ty.dtype.name().to_string()).or_insert(0) += n;
    }
    Ok(out)
}

/// Canonical op histogram (`Op::kind_name` → count).
pub fn canonical_ops(g: &Graph) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for n in g.node_ids() {
        *h.entry(g.node(n).op.kind_name()).or_insert(0) += 1;
    }
    h
}

/// Forward FLOPs per token at sequence length `seq` (see the module docs for the formula).
pub fn flops_per_token(g: &Graph, seq: u64) -> Result<f64> {
    let s = seq.max(1) as i64;
    let env = move |name: &str| match name {
        "batch" => Some(1),
        "seq" => Some(s),
        _ => None,
    };
    let eval = |d: &crate::Dim| -> Result<f64> {
        d.eval(&env).map(|v| v as f64).ok_or_else(|| {
            IrError::Analysis(format!("cannot evaluate dim {d} at batch 1, seq {seq}"))
        })
    };
    let mut total = 0.0;
    for n in g.node_ids() {
        let node = g.node(n);
        match &node.op {
            Op::Linear { .. } | Op::MatMul => {
                let out = &node.outputs[0].shape;
                let a = &g.ty(node.inputs[0]).shape;
                let k = a.0.last().ok_or_else(|| {
                    IrError::Analysis(format!("`{}`: scalar matmul operand", node.prov.name))
                })?;
                total += 2.0 * eval(&out.numel())? * eval(k)?;
            }
            Op::Attention { heads, .. } => {
                let q = &g.ty(node.inputs[0]).shape;
                let (b, sq, d) = (eval(&q.0[0])?, eval(&q.0[2])?, eval(&q.0[3])?);
                let sk = eval(&g.ty(node.inputs[1]).shape.0[2])?;
                total += 2.0 * 2.0 * b * (*heads as f64) * sq * sk * d;
            }
            Op::MoeExperts { topk, .. } => {
                // Each token runs `topk` experts' three `h × f` GEMMs (model FLOPs: no capacity padding).
                let w = &g.ty(node.inputs[2]).shape;
                let (h, f) = (eval(&w.0[1])?, eval(&w.0[2])?);
                let x = &g.ty(node.inputs[0]).shape;
                let tokens = eval(&x.numel())? / h.max(1.0);
                total += 2.0 * 3.0 * tokens * *topk as f64 * h * f;
            }
            _ => {}
        }
    }
    Ok(total / s as f64)
}

/// Parameters active per token: all parameters except, in each [`Op::MoeExperts`], the weights of the
/// `experts − topk` routed experts a token does not visit. `None` for graphs without experts.
pub fn active_params(g: &Graph, params: u64) -> Option<u64> {
    let mut idle = 0u64;
    let mut any = false;
    for n in g.node_ids() {
        if let Op::MoeExperts { experts, topk, .. } = &g.node(n).op {
            any = true;
            let weights: u64 = g.node(n).inputs[2..5]
                .iter()
                .map(|v| g.ty(*v).shape.numel().as_const().unwrap_or(0).max(0) as u64)
                .sum();
            let per = weights / (*experts as u64).max(1);
            idle += per * experts.saturating_sub(*topk) as u64;
        }
    }
    any.then(|| params.saturating_sub(idle))
}

/// The `model` object of `moai-compile inspect --json` (DESIGN.md).
#[derive(Clone, Debug, Serialize)]
pub struct InspectModel {
    /// Model name.
    pub name: String,
    /// Trainable parameters.
    pub params: u64,
    /// Parameters active per token (mixture-of-experts models only: the routed experts a token does
    /// not visit excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_params: Option<u64>,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// MLP inner width.
    pub ffn: u64,
    /// Forward FLOPs per token at the requested sequence length.
    pub flops_per_token: f64,
    /// Parameter bytes by dtype.
    pub param_bytes_by_dtype: BTreeMap<String, u64>,
    /// ONNX op histogram.
    pub onnx_ops: BTreeMap<String, usize>,
    /// Canonical op histogram after recognition.
    pub canonical_ops: BTreeMap<String, usize>,
    /// Import wall time, milliseconds.
    pub import_ms: f64,
}

/// `inspect --json` output: `{"model": {...}}`.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    /// The model.
    pub model: InspectModel,
}

/// Builds the inspect report of an imported model at sequence length `seq`.
pub fn inspect(imported: &Imported, seq: u64) -> Result<InspectReport> {
    let g = &imported.graph;
    let s = summarize(g)?;
    let source = InspectSource {
        name: s.name.clone(),
        onnx_ops: imported.onnx_ops.clone(),
        import_ms: imported.import_ms,
    };
    report(g, &s, source, seq)
}

/// What an inspect report says about where a model came from (the rest is read off its graph).
#[derive(Clone, Debug, Default)]
pub struct InspectSource {
    /// The model's name.
    pub name: String,
    /// ONNX op histogram (empty for a model built from a config or spec).
    pub onnx_ops: BTreeMap<String, usize>,
    /// Import (or load) wall time, milliseconds.
    pub import_ms: f64,
}

/// The inspect report of graph `g` with summary `s` at sequence length `seq`: the one place the
/// report's figures are assembled, for imported ONNX files ([`inspect`]) and models loaded any other
/// way alike.
pub fn report(
    g: &Graph,
    s: &crate::layers::ModelSummary,
    source: InspectSource,
    seq: u64,
) -> Result<InspectReport> {
    Ok(InspectReport {
        model: InspectModel {
            name: source.name,
            params: s.params,
            active_params: active_params(g, s.params),
            layers: s.layers,
            hidden: s.hidden,
            heads: s.heads,
            kv_heads: s.kv_heads,
            vocab: s.vocab,
            ffn: s.ffn,
            flops_per_token: flops_per_token(g, seq)?,
            param_bytes_by_dtype: param_bytes_by_dtype(g)?,
            onnx_ops: source.onnx_ops,
            canonical_ops: canonical_ops(g),
            import_ms: source.import_ms,
        },
    })
}
