//! FLOP and byte counts of canonical ops at concrete sizes.
//!
//! FLOPs follow the usual model-FLOP convention: a multiply-add is 2 FLOPs, attention counts the full
//! `s×s` score matrix (so a training step is `6·N + 12·L·h·s` per token for a decoder), and the
//! attention backward is twice its forward. Views (reshape, transpose, expand, slice) are free; bytes
//! are what a kernel reads plus writes.

use super::build::TrainingGraph;
use super::tp;
use crate::cost::{KernelClass, OpCost};
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::op::{Op, UnaryOp};

/// FLOPs, bytes and kernel class of one op instance.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCount {
    /// Kernel family and sizes.
    pub class: KernelClass,
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes read plus written.
    pub bytes: f64,
}

/// True for ops that only reinterpret their input's buffer.
pub fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape(_) | Op::Transpose(_) | Op::Expand(_) | Op::Slice { .. }
    )
}

/// Symbol values for a micro-batch and sequence length.
pub fn env(micro_batch: u64, seq: u64) -> impl Fn(&str) -> Option<i64> {
    move |s: &str| match s {
        "batch" => Some(micro_batch as i64),
        "seq" => Some(seq as i64),
        _ => None,
    }
}

fn dims(
    g: &Graph,
    id: NodeId,
    out: bool,
    i: usize,
    env: &dyn Fn(&str) -> Option<i64>,
) -> Result<Vec<u64>> {
    let n = g.node(id);
    let ty = if out {
        &n.outputs[i]
    } else {
        g.ty(n.inputs[i])
    };
    ty.shape
        .eval(env)
        .map(|v| v.into_iter().map(|d| d.max(0) as u64).collect())
        .ok_or_else(|| {
            IrError::Analysis(format!(
                "node `{}`: cannot evaluate shape {} (bind batch and seq)",
                n.prov.name, ty.shape
            ))
        })
}

fn numel(d: &[u64]) -> u64 {
    d.iter().product()
}

/// FLOPs and bytes of one node at the given symbol values.
pub fn node_cost(g: &Graph, id: NodeId, env: &dyn Fn(&str) -> Option<i64>) -> Result<OpCount> {
    let n = g.node(id);
    let mut bytes = 0f64;
    if !is_view(&n.op) && !n.op.is_source() {
        for i in 0..n.inputs.len() {
            bytes +=
                (numel(&dims(g, id, false, i, env)?) * g.ty(n.inputs[i]).dtype.size_bytes()) as f64;
        }
        for (i, t) in n.outputs.iter().enumerate() {
            bytes += (numel(&dims(g, id, true, i, env)?) * t.dtype.size_bytes()) as f64;
        }
    }
    let out0 = if n.outputs.is_empty() {
        Vec::new()
    } else {
        dims(g, id, true, 0, env)?
    };
    let on = numel(&out0) as f64;
    let dt = n.outputs.first().map(|t| t.dtype).unwrap_or(DType::F32);
    let ew = |f: f64| (KernelClass::Elementwise, f);
    let (class, flops) = match &n.op {
        Op::Linear { bias } => {
            let x = dims(g, id, false, 0, env)?;
            let w = dims(g, id, false, 1, env)?;
            let (k, nn) = (w[0], w[1]);
            let m = numel(&x) / k.max(1);
            let f = 2.0 * (m * k * nn) as f64 + if *bias { (m * nn) as f64 } else { 0.0 };
            (
                KernelClass::Matmul {
                    batch: 1,
                    m,
                    n: nn,
                    k,
                    dtype: dt,
                },
                f,
            )
        }
        Op::MatMul => {
            let a = dims(g, id, false, 0, env)?;
            let b = dims(g, id, false, 1, env)?;
            let k = *a.last().unwrap_or(&1);
            let (m, nn) = (
                out0.get(out0.len().wrapping_sub(2)).copied().unwrap_or(1),
                *out0.last().unwrap_or(&1),
            );
            let _ = b;
            let batch = numel(&out0) / (m * nn).max(1);
            (
                KernelClass::Matmul {
                    batch,
                    m,
                    n: nn,
                    k,
                    dtype: dt,
                },
                2.0 * (batch * m * nn * k) as f64,
            )
        }
        Op::Attention {
            heads,
            kv_heads,
            causal,
            ..
        }
        | Op::AttentionBackward {
            heads,
            kv_heads,
            causal,
            ..
        } => {
            let q = dims(g, id, false, 0, env)?;
            let k = dims(g, id, false, 1, env)?;
            let (b, s, d) = (q[0], q[2], q[3]);
            let bwd = matches!(n.op, Op::AttentionBackward { .. });
            let f = 4.0 * (b * *heads as u64 * s * k[2] * d) as f64 * if bwd { 2.0 } else { 1.0 };
            let cdt = g.ty(n.inputs[0]).dtype;
            (
                KernelClass::Attention {
                    batch: b,
                    heads: *heads as u64,
                    kv_heads: *kv_heads as u64,
                    seq: s,
                    head_dim: d,
                    causal: *causal,
                    backward: bwd,
                    dtype: cdt,
                },
                f,
            )
        }
        Op::MoeExperts {
            experts,
            topk,
            capacity_factor,
            ..
        }
        | Op::MoeExpertsBackward {
            experts,
            topk,
            capacity_factor,
            ..
        } => {
            // Grouped GEMMs: per expert, gate and up `[cap, h]×[h, f]` and down `[cap, f]×[f, h]` (the
            // same FLOPs and tile shape as a third `[cap, h]×[h, f]`); backward runs each twice
            // (input and weight gradients).
            let x = dims(g, id, false, 0, env)?;
            let w = dims(g, id, false, 2, env)?;
            let (h, f) = (
                w.get(1).copied().unwrap_or(1),
                w.get(2).copied().unwrap_or(1),
            );
            let e = (*experts as u64).max(1);
            let tokens = numel(&x) / h.max(1);
            let cap = moe_capacity(tokens, *topk as u64, e, *capacity_factor);
            let bwd = matches!(n.op, Op::MoeExpertsBackward { .. });
            let gemms = if bwd { 6 } else { 3 } * e;
            let cdt = g.ty(n.inputs[0]).dtype;
            (
                KernelClass::Matmul {
                    batch: gemms,
                    m: cap,
                    n: f,
                    k: h,
                    dtype: cdt,
                },
                2.0 * (gemms * cap * f * h) as f64,
            )
        }
        Op::RmsNorm { .. } | Op::LayerNorm { .. } => (KernelClass::Norm, 5.0 * on),
        Op::RmsNormBackward { .. } | Op::LayerNormBackward { .. } => (KernelClass::Norm, 10.0 * on),
        Op::Rotary | Op::RotaryBackward => ew(3.0 * on),
        Op::Unary(u) => ew(on
            * match u {
                UnaryOp::Silu | UnaryOp::Sigmoid | UnaryOp::Tanh => 4.0,
                UnaryOp::Gelu | UnaryOp::GeluTanh => 8.0,
                UnaryOp::Neg
                | UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Sqrt
                | UnaryOp::Rsqrt
                | UnaryOp::Reciprocal
                | UnaryOp::Relu
                | UnaryOp::Cos
                | UnaryOp::Sin
                | UnaryOp::Erf
                | UnaryOp::Abs
                | UnaryOp::Not
                | UnaryOp::IsNan => 1.0,
            }),
        Op::Binary(_) | Op::Where => ew(on),
        Op::Reduce { .. } | Op::CumSum { .. } => (
            KernelClass::Reduce,
            numel(&dims(g, id, false, 0, env)?) as f64,
        ),
        Op::Softmax { .. } | Op::LogSoftmax { .. } => (KernelClass::Reduce, 5.0 * on),
        Op::CrossEntropy { .. } => (
            KernelClass::Reduce,
            5.0 * numel(&dims(g, id, false, 0, env)?) as f64,
        ),
        Op::CrossEntropyBackward { .. } => (KernelClass::Reduce, 5.0 * on),
        Op::Embedding | Op::Gather { .. } | Op::GatherNd { .. } => (KernelClass::Gather, 0.0),
        Op::EmbeddingBackward { .. } => (
            KernelClass::Gather,
            numel(&dims(g, id, false, 1, env)?) as f64,
        ),
        Op::AdamW { .. } => (KernelClass::Optimizer, 12.0 * on),
        Op::SgdMomentum { .. } => (KernelClass::Optimizer, 4.0 * on),
        Op::Cast(_) | Op::Concat { .. } | Op::Collective { .. } => (KernelClass::Copy, 0.0),
        Op::Trilu { .. } | Op::Range { .. } => ew(0.0),
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Constant(_)
        | Op::Reshape(_)
        | Op::Transpose(_)
        | Op::Expand(_)
        | Op::Slice { .. } => (KernelClass::Copy, 0.0),
    };
    Ok(OpCount {
        class,
        flops,
        bytes,
    })
}

/// Rows of each expert's GEMM: `⌈tokens · topk / experts · capacity_factor⌉`, at least 1.
pub fn moe_capacity(tokens: u64, topk: u64, experts: u64, capacity_factor: f64) -> u64 {
    let avg = tokens as f64 * topk as f64 / experts.max(1) as f64;
    ((avg * capacity_factor.max(1.0)).ceil() as u64).max(1)
}

/// True for nodes that run no kernel (sources and views).
pub fn is_free(op: &Op) -> bool {
    op.is_source() || is_view(op)
}

/// The cost record of every kernel-running node of the training graph, in execution order.
pub fn step_costs(tg: &TrainingGraph, micro_batch: u64, seq: u64) -> Result<Vec<OpCost>> {
    let e = env(micro_batch, seq);
    let tpi = tp::analyze(tg);
    let mut out = Vec::new();
    for id in &tg.schedule {
        if !is_free(&tg.graph.node(*id).op) {
            out.push(op_record(tg, &tpi, *id, &e)?);
        }
    }
    Ok(fuse_activation_grads(out))
}

/// The cost record of one kernel-running node of the training graph (`tpi`: its TP analysis).
pub(crate) fn op_record(
    tg: &TrainingGraph,
    tpi: &tp::TpInfo,
    id: NodeId,
    env: &dyn Fn(&str) -> Option<i64>,
) -> Result<OpCost> {
    let n = tg.graph.node(id);
    let c = node_cost(&tg.graph, id, env)?;
    let m = tg.meta(id);
    Ok(OpCost {
        class: c.class,
        flops: c.flops,
        bytes: c.bytes,
        phase: m.phase,
        layer: n.prov.layer,
        split: tpi.split[id.index()],
        label: label(&n.prov.scope, &n.op),
        role: m.role,
    })
}

/// The cost records with each activation gradient ([`crate::cost::Role::ActivationGrad`]: a run of
/// consecutive records of that role in one layer, phase and scope) as the one kernel engines run: it reads
/// the activation's input and the incoming gradient and writes the input's gradient, the three
/// tensors the run's last op (the product with the incoming gradient) reads and writes, with the
/// run's FLOPs.
pub fn fuse_activation_grads(ops: Vec<OpCost>) -> Vec<OpCost> {
    use crate::cost::Role;
    let mut out: Vec<OpCost> = Vec::with_capacity(ops.len());
    let mut run: Option<OpCost> = None;
    for op in ops {
        if op.role == Role::ActivationGrad {
            let scope = op.label.split(':').next().unwrap_or_default();
            match run.as_mut() {
                Some(r)
                    if r.layer == op.layer
                        && r.phase == op.phase
                        && r.label.split(':').next() == Some(scope) =>
                {
                    r.flops += op.flops;
                    r.bytes = op.bytes;
                    r.split = op.split;
                }
                _ => {
                    out.extend(run.take());
                    let label = format!("{scope}:ActivationGrad");
                    run = Some(OpCost {
                        class: KernelClass::Elementwise,
                        label,
                        ..op
                    });
                }
            }
        } else {
            out.extend(run.take());
            out.push(op);
        }
    }
    out.extend(run);
    out
}

/// A short label: the scope without the leading `model.`, and the op kind.
pub fn label(scope: &str, op: &Op) -> String {
    let s = scope.strip_prefix("model.").unwrap_or(scope);
    if s.is_empty() {
        op.kind_name()
    } else {
        format!("{s}:{}", op.kind_name())
    }
}
