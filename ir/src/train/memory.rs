//! Liveness-based peak memory of one training step on one device.
//!
//! Every non-view value gets a buffer, alive from its producer to its last reader (views keep their
//! root buffer alive; optimizer updates are in place). Parameters and optimizer state live for the
//! whole step; gradients from their production to the optimizer. Some kernels need scratch space while
//! they run (cross-entropy's log-probabilities, attention backward's fp32 `dq` accumulator).

use super::build::{ParamInfo, TrainingGraph};
use super::cost::{env, is_view};
use crate::cost::{BlockKind, Phase};
use crate::error::{IrError, Result};
use crate::graph::{NodeId, Value};
use crate::op::Op;
use std::collections::{HashMap, HashSet};

/// Memory of one block (embedding, a decoder layer, the head).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMemory {
    /// Which block.
    pub block: BlockKind,
    /// Parameter bytes (master weights).
    pub param_bytes: u64,
    /// Activations produced by this block's forward and kept for backward.
    pub saved_bytes: u64,
    /// Activations and temporaries of this block alive at the step's peak.
    pub live_at_peak: u64,
}

/// What is alive at the peak.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeakBreakdown {
    /// Master weights (and other parameters/constants).
    pub weights: u64,
    /// Parameter gradients produced so far.
    pub grads: u64,
    /// Optimizer state.
    pub optimizer_state: u64,
    /// Values produced by forward or recomputation.
    pub activations: u64,
    /// Backward temporaries and kernel scratch.
    pub temporaries: u64,
}

/// Peak memory of one training step.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    /// Micro-batch size.
    pub micro_batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Trainable parameters.
    pub params: u64,
    /// Bytes of master weights.
    pub weight_bytes: u64,
    /// Bytes of gradients (all of them).
    pub grad_bytes: u64,
    /// Bytes of optimizer state.
    pub optimizer_bytes: u64,
    /// Weights + gradients + optimizer state.
    pub static_bytes: u64,
    /// Activations kept from forward for backward (all blocks).
    pub saved_activation_bytes: u64,
    /// Peak of live bytes over the step.
    pub peak_bytes: u64,
    /// The op at which the peak occurs (label).
    pub peak_node: String,
    /// Its phase.
    pub peak_phase: Phase,
    /// Its decoder layer.
    pub peak_layer: Option<u32>,
    /// Composition of the peak.
    pub at_peak: PeakBreakdown,
    /// Per-block breakdown, in model order.
    pub blocks: Vec<LayerMemory>,
}

/// One buffer's lifetime.
pub(super) struct Buffer {
    pub root: Value,
    pub bytes: u64,
    pub start: usize,
    pub end: usize,
}

/// Buffers with their lifetimes (positions in the schedule) and per-position scratch bytes.
pub(super) struct Liveness {
    pub buffers: Vec<Buffer>,
    pub scratch: Vec<u64>,
    /// Value → the value whose buffer it uses.
    pub root: HashMap<Value, Value>,
}

/// Computes buffer lifetimes at concrete sizes.
pub(super) fn liveness(tg: &TrainingGraph, micro_batch: u64, seq: u64) -> Result<Liveness> {
    let g = &tg.graph;
    let e = env(micro_batch, seq);
    let len = tg.schedule.len();
    let mut root: HashMap<Value, Value> = HashMap::new();
    let mut index: HashMap<Value, usize> = HashMap::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut scratch = vec![0u64; len];
    let mut noncontig: HashSet<Value> = HashSet::new();
    let bytes_of = |v: Value| -> Result<u64> {
        let t = g.ty(v);
        let n = t.shape.numel().eval(&e).ok_or_else(|| {
            IrError::Analysis(format!(
                "cannot evaluate the size of {t} (bind batch and seq)"
            ))
        })?;
        Ok(n.max(0) as u64 * t.dtype.size_bytes())
    };
    for (p, id) in tg.schedule.iter().enumerate() {
        let n = g.node(*id);
        // Readers extend the lifetime of the buffers they read.
        for v in &n.inputs {
            let r = root.get(v).copied().unwrap_or(*v);
            if let Some(b) = index.get(&r) {
                let b = &mut buffers[*b];
                b.end = b.end.max(p);
            }
        }
        // Views alias their input, except a reshape of a non-contiguous view, which copies (as
        // PyTorch's `reshape` does after a transpose).
        let in_noncontig = n.inputs.first().is_some_and(|v| noncontig.contains(v));
        let alias = match &n.op {
            Op::Reshape(_) => !in_noncontig,
            op => is_view(op) || matches!(op, Op::Collective { group_size: 1, .. }),
        };
        if alias {
            let strided = match &n.op {
                Op::Transpose(p) => p.iter().enumerate().any(|(i, a)| i != *a),
                Op::Expand(_) => g.ty(n.inputs[0]).shape != n.outputs[0].shape,
                Op::Slice { axis, .. } => *axis != 0,
                _ => false,
            };
            if strided || in_noncontig {
                noncontig.insert(Value::of(*id));
            }
        }
        for i in 0..n.outputs.len() {
            let v = Value {
                node: *id,
                output: i as u32,
            };
            let inplace = match n.op {
                // Optimizer updates write their parameter and state in place.
                Op::AdamW { .. } => Some([0usize, 2, 3][i]),
                Op::SgdMomentum { .. } => Some([0usize, 2][i]),
                _ if alias => Some(0),
                _ => None,
            };
            if let Some(slot) = inplace {
                let src = n.inputs[slot];
                root.insert(v, root.get(&src).copied().unwrap_or(src));
                continue;
            }
            index.insert(v, buffers.len());
            buffers.push(Buffer {
                root: v,
                bytes: bytes_of(v)?,
                start: p,
                end: p,
            });
        }
        scratch[p] = match &n.op {
            Op::CrossEntropy { .. } => {
                bytes_of(n.inputs[0])? / g.ty(n.inputs[0]).dtype.size_bytes() * 4
            }
            Op::CrossEntropyBackward { .. } => {
                bytes_of(n.inputs[0])? / g.ty(n.inputs[0]).dtype.size_bytes() * 4
            }
            Op::AttentionBackward { .. } => {
                bytes_of(n.inputs[0])? / g.ty(n.inputs[0]).dtype.size_bytes() * 4
            }
            _ => 0,
        };
    }
    // Graph outputs, parameters and optimizer state live to the end; parameters and state from the start.
    for (_, v) in &g.outputs {
        let r = root.get(v).copied().unwrap_or(*v);
        if let Some(b) = index.get(&r) {
            buffers[*b].end = len;
        }
    }
    for b in buffers.iter_mut() {
        if g.node(b.root.node).op.is_source() && !matches!(g.node(b.root.node).op, Op::Range { .. })
        {
            b.start = 0;
            b.end = len;
        }
    }
    Ok(Liveness {
        buffers,
        scratch,
        root,
    })
}

fn grad_roots(params: &[ParamInfo], lv: &Liveness) -> HashSet<Value> {
    params
        .iter()
        .map(|p| lv.root.get(&p.grad).copied().unwrap_or(p.grad))
        .collect()
}

/// Liveness-based peak memory of one training step for a micro-batch and sequence length.
pub fn peak_memory(tg: &TrainingGraph, micro_batch: u64, seq: u64) -> Result<MemoryReport> {
    let g = &tg.graph;
    let lv = liveness(tg, micro_batch, seq)?;
    let len = tg.schedule.len();
    let mut delta = vec![0i128; len + 2];
    for b in &lv.buffers {
        delta[b.start] += b.bytes as i128;
        delta[b.end + 1] -= b.bytes as i128;
    }
    let (mut cur, mut peak, mut at) = (0i128, 0i128, 0usize);
    for (p, d) in delta.iter().enumerate().take(len) {
        cur += d;
        let here = cur + lv.scratch[p] as i128;
        if here > peak {
            peak = here;
            at = p;
        }
    }
    let grads = grad_roots(&tg.params, &lv);
    let state: HashSet<NodeId> = tg
        .params
        .iter()
        .flat_map(|p| p.state.iter().copied())
        .collect();
    let trainable: HashSet<NodeId> = tg.params.iter().map(|p| p.node).collect();
    let last_fwd = tg
        .schedule
        .iter()
        .rposition(|id| tg.meta(*id).phase == Phase::Forward)
        .unwrap_or(0);
    let mut bd = PeakBreakdown {
        temporaries: lv.scratch[at],
        ..Default::default()
    };
    let mut blocks: Vec<LayerMemory> = Vec::new();
    let block_index = |blocks: &mut Vec<LayerMemory>, k: BlockKind| -> usize {
        match blocks.iter().position(|b| b.block == k) {
            Some(i) => i,
            None => {
                blocks.push(LayerMemory {
                    block: k,
                    param_bytes: 0,
                    saved_bytes: 0,
                    live_at_peak: 0,
                });
                blocks.len() - 1
            }
        }
    };
    let (mut weight_bytes, mut grad_bytes, mut opt_bytes, mut saved) = (0u64, 0u64, 0u64, 0u64);
    for b in &lv.buffers {
        let id = b.root.node;
        let m = tg.meta(id);
        let live = b.start <= at && at <= b.end;
        let bi = block_index(&mut blocks, m.block);
        if trainable.contains(&id) {
            weight_bytes += b.bytes;
            blocks[bi].param_bytes += b.bytes;
            if live {
                bd.weights += b.bytes;
            }
        } else if state.contains(&id) {
            opt_bytes += b.bytes;
            if live {
                bd.optimizer_state += b.bytes;
            }
        } else if grads.contains(&b.root) {
            grad_bytes += b.bytes;
            if live {
                bd.grads += b.bytes;
            }
        } else if g.node(id).op.is_source() {
            if live {
                bd.weights += b.bytes;
            }
        } else if matches!(m.phase, Phase::Forward | Phase::Recompute) {
            if m.phase == Phase::Forward && b.start <= last_fwd && b.end > last_fwd {
                saved += b.bytes;
                blocks[bi].saved_bytes += b.bytes;
            }
            if live {
                bd.activations += b.bytes;
                blocks[bi].live_at_peak += b.bytes;
            }
        } else if live {
            bd.temporaries += b.bytes;
            blocks[bi].live_at_peak += b.bytes;
        }
    }
    blocks.sort_by_key(|b| match b.block {
        BlockKind::Embedding => (0, 0),
        BlockKind::Decoder(l) => (1, l),
        BlockKind::Head => (2, 0),
    });
    let peak_id = tg.schedule.get(at).copied();
    let (peak_node, peak_phase, peak_layer) = match peak_id {
        Some(id) => {
            let n = g.node(id);
            (
                super::cost::label(&n.prov.scope, &n.op),
                tg.meta(id).phase,
                n.prov.layer,
            )
        }
        None => (String::new(), Phase::Forward, None),
    };
    let params: u64 = tg
        .params
        .iter()
        .map(|p| {
            g.ty(Value::of(p.node))
                .shape
                .numel()
                .eval(&env(micro_batch, seq))
                .unwrap_or(0)
                .max(0) as u64
        })
        .sum();
    Ok(MemoryReport {
        micro_batch,
        seq,
        params,
        weight_bytes,
        grad_bytes,
        optimizer_bytes: opt_bytes,
        static_bytes: weight_bytes + grad_bytes + opt_bytes,
        saved_activation_bytes: saved,
        peak_bytes: peak.max(0) as u64,
        peak_node,
        peak_phase,
        peak_layer,
        at_peak: bd,
        blocks,
    })
}
