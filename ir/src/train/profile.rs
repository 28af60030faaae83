//! The cost model's input: per-block costs and memory of one training step, built fast.
//!
//! Decoder layers with the same structure (ops, types, wiring) have the same training costs, so
//! [`step_profile`] keeps one representative layer per distinct structure, builds the training graph of
//! that reduced model (embedding, representatives, head), and replicates each representative's records
//! to the layers it stands for.

use super::build::build_engine_training_graph;
use super::cost::{env, is_free, op_record};
use super::memory::liveness;
use super::options::{OptimizerKind, PrecisionPolicy, TrainOptions};
use super::tp::{self, linear_class};
use crate::cost::{
    ActivationBytes, BlockKind, BlockProfile, LossKernel, OpCost, Phase, StepProfile, TpSplit,
};
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, Value};
use crate::op::Op;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Per-block costs and memory of one training step of one micro-batch at `(micro_batch, seq)`.
///
/// Static bytes per parameter: `amp-bf16` + AdamW is 16 (fp32 gradients 4; optimizer 12 = fp32 master
/// weights + two moments; the bf16 weight copies made for compute are activations of the forward that
/// backward keeps, so they are in each block's `saved`); `bf16` + AdamW is 12 (bf16 weights 2 as
/// `low_prec_param_bytes_per_param`, bf16 gradients 2, fp32 moments 8); `fp32` + AdamW is 16 (weights
/// 4 as `low_prec_param_bytes_per_param`, gradients 4, moments 8). SGD keeps one fp32 buffer instead
/// of two moments.
pub fn step_profile(
    forward: &Graph,
    opts: &TrainOptions,
    micro_batch: u64,
    seq: u64,
) -> Result<StepProfile> {
    profile_of(reduce_layers(forward)?, opts, micro_batch, seq)
}

/// [`step_profile`] without the layer reduction: every layer profiled from its own training graph.
/// Slow (the whole model's training graph); the reference the reduced profile is tested against.
pub fn unreduced_step_profile(
    forward: &Graph,
    opts: &TrainOptions,
    micro_batch: u64,
    seq: u64,
) -> Result<StepProfile> {
    let layers: BTreeMap<u32, u32> = forward
        .node_ids()
        .filter_map(|n| forward.node(n).prov.layer)
        .map(|l| (l, l))
        .collect();
    let whole = ReducedModel {
        graph: forward.clone(),
        layer_rep: layers.into_iter().collect(),
    };
    profile_of(whole, opts, micro_batch, seq)
}

/// The profile of `reduced`, each of its representatives' records standing for its layers.
fn profile_of(
    reduced: ReducedModel,
    opts: &TrainOptions,
    micro_batch: u64,
    seq: u64,
) -> Result<StepProfile> {
    let tg = build_engine_training_graph(&reduced.graph, opts)?;
    let e = env(micro_batch, seq);
    let tpi = tp::analyze(&tg);
    let lv = liveness(&tg, micro_batch, seq)?;
    let g = &tg.graph;

    // Records per block of the reduced model.
    let mut per_block: HashMap<BlockKind, Vec<OpCost>> = HashMap::new();
    let mut optimizer: Vec<OpCost> = Vec::new();
    for id in &tg.schedule {
        if is_free(&g.node(*id).op) {
            continue;
        }
        let rec = op_record(&tg, &tpi, *id, &e)?;
        let m = tg.meta(*id);
        if m.phase == Phase::Optimizer {
            optimizer.push(rec);
        } else {
            per_block.entry(m.block).or_default().push(rec);
        }
    }
    let per_block: HashMap<BlockKind, Vec<OpCost>> = per_block
        .into_iter()
        .map(|(k, ops)| (k, super::cost::fuse_activation_grads(ops)))
        .collect();

    // Saved activations, transients and boundary bytes per block of the reduced model.
    let last_fwd = tg
        .schedule
        .iter()
        .rposition(|id| tg.meta(*id).phase == Phase::Forward)
        .unwrap_or(0);
    let grads: HashSet<Value> = tg
        .params
        .iter()
        .map(|p| lv.root.get(&p.grad).copied().unwrap_or(p.grad))
        .collect();
    let mut saved: HashMap<BlockKind, ActivationBytes> = HashMap::new();
    let mut temps: Vec<(usize, usize, u64, bool)> = Vec::new();
    for b in &lv.buffers {
        let id = b.root.node;
        let m = tg.meta(id);
        if g.node(id).op.is_source() || grads.contains(&b.root) {
            continue;
        }
        let sh = tpi.sharded[id.index()];
        if m.phase == Phase::Forward && b.start <= last_fwd && b.end > last_fwd {
            let a = saved.entry(m.block).or_default();
            if sh {
                a.tp_sharded += b.bytes as f64;
            } else {
                a.tp_replicated += b.bytes as f64;
            }
        } else if matches!(m.phase, Phase::Backward | Phase::Recompute) {
            temps.push((b.start, b.end, b.bytes, sh));
        }
    }
    // Transient peak of each block: backward/recompute buffers alive at a position of that block's backward.
    let mut transient: HashMap<BlockKind, ActivationBytes> = HashMap::new();
    let len = tg.schedule.len();
    let (mut d_sh, mut d_rep) = (vec![0i128; len + 2], vec![0i128; len + 2]);
    for (s, e2, bytes, sh) in &temps {
        let d = if *sh { &mut d_sh } else { &mut d_rep };
        d[*s] += *bytes as i128;
        d[*e2 + 1] -= *bytes as i128;
    }
    let (mut c_sh, mut c_rep) = (0i128, 0i128);
    for (p, id) in tg.schedule.iter().enumerate() {
        c_sh += d_sh[p];
        c_rep += d_rep[p];
        let m = tg.meta(*id);
        if !matches!(m.phase, Phase::Backward | Phase::Recompute) {
            continue;
        }
        let scratch = lv.scratch[p] as f64;
        let scratch_sharded = matches!(
            g.node(*id).op,
            Op::AttentionBackward { .. }
                | Op::CrossEntropyBackward { .. }
                | Op::CrossEntropy { .. }
        );
        let (s, r) = (
            c_sh as f64 + if scratch_sharded { scratch } else { 0.0 },
            c_rep as f64 + if scratch_sharded { 0.0 } else { scratch },
        );
        let t = transient.entry(m.block).or_default();
        if s + r > t.tp_sharded + t.tp_replicated {
            *t = ActivationBytes {
                tp_sharded: s,
                tp_replicated: r,
            };
        }
    }
    // Boundary: bytes produced by a block's forward and read by a later block's forward (activations:
    // a weight another block reads, such as a tied LM head's embedding table, is a weight of both
    // stages, not a transfer).
    let mut boundary: HashMap<BlockKind, f64> = HashMap::new();
    let mut seen: HashSet<Value> = HashSet::new();
    for id in &tg.schedule {
        let m = tg.meta(*id);
        if m.phase != Phase::Forward {
            continue;
        }
        for v in &g.node(*id).inputs {
            let pm = tg.meta(v.node);
            if pm.phase == Phase::Forward
                && pm.block != m.block
                && !is_weight_view(g, *v)
                && seen.insert(*v)
            {
                let t = g.ty(*v);
                let bytes = t.shape.numel().eval(&e).unwrap_or(0).max(0) as f64
                    * t.dtype.size_bytes() as f64;
                *boundary.entry(pm.block).or_default() += bytes;
            }
        }
    }

    // Parameters per block of the full model.
    let mut params: HashMap<BlockKind, (u64, u64, u64)> = HashMap::new();
    for p in &tg.params {
        let numel = g
            .ty(Value::of(p.node))
            .shape
            .numel()
            .as_const()
            .unwrap_or(0)
            .max(0) as u64;
        let class = linear_class(&p.name);
        let split = class != TpSplit::Replicated
            || p.name.contains("embed_tokens")
            || p.name.contains("wte");
        let e = params.entry(tg.meta(p.node).block).or_default();
        e.0 += numel;
        if split {
            e.1 += numel;
        }
        if class == TpSplit::Expert {
            e.2 += numel;
        }
    }

    // Assemble: embedding, every decoder layer (from its representative), head.
    let mut blocks = Vec::with_capacity(reduced.layer_rep.len() + 2);
    let make = |kind: BlockKind, src: BlockKind, relabel: Option<(u32, u32)>| -> BlockProfile {
        let ops = per_block
            .get(&src)
            .map(|v| v.iter().map(|o| relayer(o, relabel)).collect())
            .unwrap_or_default();
        let (p, ps, pe) = params.get(&src).copied().unwrap_or((0, 0, 0));
        BlockProfile {
            kind,
            ops,
            params: p,
            tp_sharded_params: ps,
            expert_params: pe,
            saved: saved.get(&src).cloned().unwrap_or_default(),
            transient: transient.get(&src).cloned().unwrap_or_default(),
            boundary_bytes: boundary.get(&src).copied().unwrap_or(0.0),
        }
    };
    blocks.push(make(BlockKind::Embedding, BlockKind::Embedding, None));
    for (l, r) in &reduced.layer_rep {
        blocks.push(make(
            BlockKind::Decoder(*l),
            BlockKind::Decoder(*r),
            Some((*r, *l)),
        ));
    }
    blocks.push(make(BlockKind::Head, BlockKind::Head, None));
    let mut opt_full = Vec::new();
    for o in &optimizer {
        match o.layer {
            Some(r) => {
                for (l, rr) in &reduced.layer_rep {
                    if *rr == r {
                        opt_full.push(relayer(o, Some((r, *l))));
                    }
                }
            }
            None => opt_full.push(o.clone()),
        }
    }
    let (low, grad, opt) = static_split(opts);
    let profile = StepProfile {
        micro_batch,
        seq,
        blocks,
        optimizer: opt_full,
        static_bytes_per_param: low + grad + opt,
        low_prec_param_bytes_per_param: low,
        optimizer_bytes_per_param: opt,
        grad_bytes_per_param: grad,
        // The builder upcasts the logits to fp32 before the cross-entropy.
        loss: LossKernel::Fp32Upcast,
        fingerprint: Default::default(),
    };
    // Once, here, rather than on the cost model's every call.
    profile.fingerprint();
    Ok(profile)
}

/// `(low-precision weights read by forward, gradients, optimizer state incl. master weights)` bytes
/// per parameter.
fn static_split(opts: &TrainOptions) -> (f64, f64, f64) {
    let state = match opts.optimizer {
        OptimizerKind::AdamW => 8.0,
        OptimizerKind::Sgd => 4.0,
    };
    match opts.precision {
        PrecisionPolicy::AmpBf16 => (0.0, 4.0, 4.0 + state),
        PrecisionPolicy::Bf16 => (2.0, 2.0, state),
        PrecisionPolicy::Fp32 => (4.0, 4.0, state),
    }
}

fn relayer(o: &OpCost, relabel: Option<(u32, u32)>) -> OpCost {
    let mut o = o.clone();
    if let Some((from, to)) = relabel
        && from != to
    {
        o.layer = Some(to);
        o.label = o
            .label
            .replacen(&format!("layers.{from}."), &format!("layers.{to}."), 1);
        if o.label.ends_with(&format!("layers.{from}"))
            || o.label.contains(&format!("layers.{from}:"))
        {
            o.label = o
                .label
                .replacen(&format!("layers.{from}"), &format!("layers.{to}"), 1);
        }
    }
    o
}

/// A forward graph with one representative decoder layer per distinct layer structure.
pub struct ReducedModel {
    /// The reduced forward graph.
    pub graph: Graph,
    /// Every decoder layer of the full model with its representative, in order.
    pub layer_rep: Vec<(u32, u32)>,
}

/// Keeps one decoder layer per distinct structure; the outputs of a dropped layer are replaced by its
/// representative's.
pub fn reduce_layers(g: &Graph) -> Result<ReducedModel> {
    let order = g.topo_order();
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut layers: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
    for id in &order {
        if let Some(l) = g.node(*id).prov.layer {
            layers.entry(l).or_default().push(*id);
        }
    }
    // Structure signature and external outputs of each layer.
    let mut sig: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ext_out: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    let outputs: HashSet<Value> = g.outputs.iter().map(|(_, v)| *v).collect();
    for (l, nodes) in &layers {
        let local: HashMap<NodeId, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut h = DefaultHasher::new();
        let mut ext = Vec::new();
        for id in nodes {
            let n = g.node(*id);
            match &n.op {
                Op::Param { .. } => "Param".hash(&mut h),
                Op::Constant(t) => ("Constant", &t.shape, t.dtype).hash(&mut h),
                op => format!("{op:?}").hash(&mut h),
            }
            for t in &n.outputs {
                t.hash(&mut h);
            }
            for v in &n.inputs {
                match local.get(&v.node) {
                    Some(i) => (0u8, *i, v.output).hash(&mut h),
                    None => (1u8, g.ty(*v)).hash(&mut h),
                }
            }
            for o in 0..n.outputs.len() {
                let v = Value {
                    node: *id,
                    output: o as u32,
                };
                let used_outside = g
                    .users(*id)
                    .iter()
                    .any(|u| g.node(*u).prov.layer != Some(*l) && g.node(*u).inputs.contains(&v));
                if used_outside || outputs.contains(&v) {
                    ext.push(v);
                }
            }
        }
        sig.insert(*l, h.finish());
        ext_out.insert(*l, ext);
    }
    let Some((&last, &last_sig)) = sig.iter().next_back() else {
        return Ok(ReducedModel {
            graph: g.clone(),
            layer_rep: Vec::new(),
        });
    };
    // The kept layers are a prefix of the model, 0..=k, so that each kept layer hands its output on
    // to what the layers it stands for hand theirs to: every layer but the last stands for the first
    // layer of its structure, which lies before k (its successor in the prefix is a decoder layer,
    // which checkpoints or keeps the hand-over as the real successor does); the last stands for k,
    // a layer of its structure whose output the head reads. A contiguous prefix also leaves no kept
    // layer without a successor (whose weights would not reach the loss), whatever the order of the
    // structures.
    let mut first: HashMap<u64, u32> = HashMap::new();
    for (l, s) in sig.range(..last) {
        first.entry(*s).or_insert(*l);
    }
    let after_firsts = first.values().max().map_or(0, |f| f + 1);
    let k = sig
        .range(after_firsts..)
        .find(|(_, s)| **s == last_sig)
        .map_or(last, |(l, _)| *l);
    if k == last {
        return Ok(ReducedModel {
            graph: g.clone(),
            layer_rep: sig.keys().map(|l| (*l, *l)).collect(),
        });
    }
    let stands_for = |l: u32, s: u64| if l == last { k } else { first[&s] };
    let layer_rep: Vec<(u32, u32)> = sig.iter().map(|(l, s)| (*l, stands_for(*l, *s))).collect();
    // The prefix is kept whole; every layer past it is dropped, its outputs standing for its
    // representative's.
    let rep: BTreeMap<u32, u32> = sig
        .iter()
        .map(|(l, s)| (*l, if *l <= k { *l } else { stands_for(*l, *s) }))
        .collect();
    // Copy kept nodes; map dropped layers' external outputs onto their representative's.
    let mut out = Graph::new(g.name.clone());
    out.source_dir = g.source_dir.clone();
    out.buffers = g.buffers.clone();
    // A dropped layer's external outputs stand for its representative's, position by position.
    let mut alias: HashMap<Value, Value> = HashMap::new();
    for (l, r) in &rep {
        if l == r {
            continue;
        }
        let (mine, theirs) = (&ext_out[l], &ext_out[r]);
        if mine.len() != theirs.len() || mine.iter().zip(theirs).any(|(a, b)| g.ty(*a) != g.ty(*b))
        {
            return Err(IrError::Analysis(format!(
                "layer {l} has the structure of layer {r} but different outputs"
            )));
        }
        alias.extend(mine.iter().copied().zip(theirs.iter().copied()));
    }
    let mut map: HashMap<Value, Value> = HashMap::new();
    for id in &order {
        let n = g.node(*id);
        if n.prov.layer.is_some_and(|l| rep[&l] != l) {
            continue;
        }
        let ins: Vec<Value> = n
            .inputs
            .iter()
            .map(|v| {
                let v = alias.get(v).unwrap_or(v);
                map.get(v).copied().ok_or_else(|| {
                    IrError::Analysis(format!(
                        "node `{}` reads a value of a dropped layer that is not its output (at position {})",
                        n.prov.name, pos[id]
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let nid = out.add(n.op.clone(), ins, n.outputs.clone(), n.prov.clone());
        for o in 0..n.outputs.len() {
            map.insert(
                Value {
                    node: *id,
                    output: o as u32,
                },
                Value {
                    node: nid,
                    output: o as u32,
                },
            );
        }
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, v)| {
            let v = alias.get(v).unwrap_or(v);
            map.get(v)
                .map(|nv| (name.clone(), *nv))
                .ok_or_else(|| IrError::Analysis(format!("output `{name}` was not copied")))
        })
        .collect::<Result<_>>()?;
    Ok(ReducedModel {
        graph: out,
        layer_rep,
    })
}

/// Whether `v` is a source (parameter, input, constant) or a view or cast of one: a weight a block
/// reads (through its bf16 cast or a tied LM head's transpose of the embedding table), never an
/// activation that crosses a block boundary. Megatron-LM keeps a tied output layer's copy of the
/// word embeddings on the last pipeline stage (`share_embeddings_and_output_weights`) and
/// all-reduces their gradients with the first stage once per step; per micro-batch only the
/// hidden states travel.
fn is_weight_view(g: &Graph, v: Value) -> bool {
    g.view_source(v).is_some()
}
