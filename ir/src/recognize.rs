//! Recognition of higher-level structure (linear, embedding, norms, rotary, attention, MLPs, LM head) with
//! egg rewrites.
//!
//! 1. [`lang::convert`] turns the whole graph into one e-graph (opaque leaves for ops no pattern mentions,
//!    verified shape idioms `kt`/`rep` for the reshapes around attention).
//! 2. The rewrites of [`rules::rules`] run once, with iteration, node and time limits; the stop reason is
//!    logged.
//! 3. Splicing: in topological order, each original node whose e-class gained a fused e-node is replaced by
//!    the fused canonical op, whose inputs are the graph values of the e-node's children (which must come
//!    earlier in the order, so no cycle can form). Attention masks that evaluate to the causal mask become
//!    `causal: true`; GQA's `repeat_kv` disappears (`kv_heads` is set).
//! 4. Peepholes: `Reshape[b,s,out](Linear(Reshape[b·s,in](x)))` (GPT-2's `Gemm` on 2-D views) becomes
//!    `Linear(x)`; dead nodes go; a single graph output is named `logits`.
//!
//! Anything not recognized stays primitive and is listed in [`RecognitionReport::unrecognized`].

mod lang;
mod mask;
mod rules;

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, Value};
use crate::op::{Op, UnaryOp};
use crate::shape::{Shape, TensorType};
use egg::{Id, Runner};
use lang::Rec;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What recognition did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecognitionReport {
    /// Fused op kind → number of instances created.
    pub fused: BTreeMap<String, usize>,
    /// Regions left primitive, each with the reason.
    pub unrecognized: Vec<String>,
    /// Nodes before recognition.
    pub nodes_before: usize,
    /// Nodes after recognition.
    pub nodes_after: usize,
    /// Why the e-graph runner stopped.
    pub stop_reason: String,
    /// Wall time, milliseconds.
    pub ms: f64,
}

/// Limits of the egg runner.
const ITER_LIMIT: usize = 12;
const NODE_LIMIT: usize = 400_000;
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Rewrites the graph into the canonical fused form (see the module docs).
pub fn recognize(g: &mut Graph) -> Result<RecognitionReport> {
    let t0 = Instant::now();
    let mut report = RecognitionReport {
        nodes_before: g.len(),
        ..Default::default()
    };
    let conv = lang::convert(g);
    let rules = rules::rules().map_err(|e| IrError::Analysis(format!("recognition rules: {e}")))?;
    let runner = Runner::default()
        .with_egraph(conv.egraph)
        .with_iter_limit(ITER_LIMIT)
        .with_node_limit(NODE_LIMIT)
        .with_time_limit(TIME_LIMIT)
        .run(&rules);
    let stop = format!("{:?}", runner.stop_reason);
    tracing::debug!(stop_reason = %stop, iterations = runner.iterations.len(), nodes = runner.egraph.total_size(), "recognition e-graph saturated or stopped");
    if runner.egraph.analysis.mismatches > 0 {
        tracing::warn!(
            mismatches = runner.egraph.analysis.mismatches,
            "recognition: type disagreements while merging e-classes"
        );
    }
    report.stop_reason = stop;
    splice(g, &runner.egraph, &conv.ids, &conv.order, &mut report);
    fold_gemm_views(g, &mut report);
    g.remove_dead();
    if g.outputs.len() == 1 {
        g.outputs[0].0 = "logits".into();
    }
    list_unrecognized(g, &mut report);
    report.nodes_after = g.len();
    report.ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

type EG = egg::EGraph<Rec, lang::Shapes>;

/// Priority of fused e-nodes when a class holds several.
fn rank_of(n: &Rec) -> Option<u8> {
    Some(match n {
        Rec::Attention(_) => 0,
        Rec::Rotary(_) => 1,
        Rec::RmsNorm(_) => 2,
        Rec::LinearB(_) => 3,
        Rec::Linear(_) => 4,
        Rec::Embedding(_) => 5,
        Rec::GeluTanh(_) => 6,
        Rec::Gelu(_) => 7,
        Rec::Silu(_) => 8,
        _ => return None,
    })
}

fn splice(
    g: &mut Graph,
    eg: &EG,
    ids: &HashMap<Value, Id>,
    order: &[NodeId],
    report: &mut RecognitionReport,
) {
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // Class → (current value, its position in the order).
    let mut cur: HashMap<Id, (Value, usize)> = HashMap::new();
    for &n in order {
        for o in 0..g.node(n).outputs.len() {
            let v = Value {
                node: n,
                output: o as u32,
            };
            if let Some(id) = ids.get(&v) {
                cur.entry(eg.find(*id)).or_insert((v, pos[&n]));
            }
        }
    }
    for &n in order {
        let v = Value::of(n);
        let Some(id) = ids.get(&v).map(|i| eg.find(*i)) else {
            continue;
        };
        if g.node(n).outputs.len() != 1 || g.node(n).op.is_source() {
            continue;
        }
        let here = pos[&n];
        let mut fused: Vec<&Rec> = eg[id]
            .nodes
            .iter()
            .filter(|e| rank_of(e).is_some())
            .collect();
        fused.sort_by_key(|e| rank_of(e));
        for e in fused {
            if let Some(new) = build(g, eg, e, &cur, here, v) {
                let kind = g.node(new).op.kind_name();
                *report.fused.entry(kind).or_insert(0) += 1;
                g.replace_uses(v, Value::of(new));
                cur.insert(id, (Value::of(new), here));
                break;
            }
        }
    }
}

/// Creates the fused node for e-node `e` replacing value `old`, if every input is available earlier.
fn build(
    g: &mut Graph,
    eg: &EG,
    e: &Rec,
    cur: &HashMap<Id, (Value, usize)>,
    here: usize,
    old: Value,
) -> Option<NodeId> {
    let val = |c: &Id| -> Option<Value> {
        let (v, p) = cur.get(&eg.find(*c))?;
        (*p < here).then_some(*v)
    };
    let k = |c: &Id| eg[eg.find(*c)].data.konst;
    let ty = g.ty(old).clone();
    let prov = g.node(old.node).prov.clone();
    let (op, inputs, outs) = match e {
        Rec::RmsNorm([x, w, eps]) => (
            Op::RmsNorm { eps: k(eps)? },
            vec![val(x)?, val(w)?],
            vec![ty],
        ),
        Rec::Linear([x, w]) => (Op::Linear { bias: false }, vec![val(x)?, val(w)?], vec![ty]),
        Rec::LinearB([x, w, b]) => (
            Op::Linear { bias: true },
            vec![val(x)?, val(w)?, val(b)?],
            vec![ty],
        ),
        Rec::Embedding([t, ids]) => (Op::Embedding, vec![val(t)?, val(ids)?], vec![ty]),
        Rec::Silu(x) => (Op::Unary(UnaryOp::Silu), vec![val(x)?], vec![ty]),
        Rec::Gelu(x) => (Op::Unary(UnaryOp::Gelu), vec![val(x)?], vec![ty]),
        Rec::GeluTanh(x) => (Op::Unary(UnaryOp::GeluTanh), vec![val(x)?], vec![ty]),
        Rec::Rotary([x, c, s]) => (Op::Rotary, vec![val(x)?, val(c)?, val(s)?], vec![ty]),
        Rec::Attention([q, kk, v, m, sc]) => {
            let (qv, kv, vv) = (val(q)?, val(kk)?, val(v)?);
            let heads = g.ty(qv).shape.0[1].as_const()? as usize;
            let kv_heads = g.ty(kv).shape.0[1].as_const()? as usize;
            let scale = k(sc)?;
            let mut inputs = vec![qv, kv, vv];
            let causal = if k(m) == Some(0.0) && eg[eg.find(*m)].data.ty.is_none() {
                false
            } else {
                let mv = val(m)?;
                if mask::is_causal(g, mv) {
                    true
                } else {
                    inputs.push(mv);
                    false
                }
            };
            let s = &ty.shape.0;
            let lse = TensorType::new(DType::F32, Shape(s[..3].to_vec()));
            (
                Op::Attention {
                    heads,
                    kv_heads,
                    scale,
                    causal,
                },
                inputs,
                vec![ty, lse],
            )
        }
        _ => return None,
    };
    Some(g.add(op, inputs, outs, prov))
}

/// `Reshape[b,s,out](Linear(Reshape[b·s,in](x), W, b))` → `Linear(x, W, b)`.
fn fold_gemm_views(g: &mut Graph, report: &mut RecognitionReport) {
    let linears: Vec<NodeId> = g
        .node_ids()
        .filter(|n| matches!(g.node(*n).op, Op::Linear { .. }))
        .collect();
    let mut folded = 0;
    for l in linears {
        let node = g.node(l);
        let xin = node.inputs[0];
        let Op::Reshape(_) = g.node(xin.node).op else {
            continue;
        };
        let x = g.node(xin.node).inputs[0];
        let users = g.users(l);
        if users.len() != 1 || g.use_count(Value::of(l)) != 1 {
            continue;
        }
        let r = users[0];
        let Op::Reshape(_) = g.node(r).op else {
            continue;
        };
        let (tx, tr, tl) = (
            g.ty(x).clone(),
            g.ty(Value::of(r)).clone(),
            g.ty(Value::of(l)).clone(),
        );
        let (xd, rd) = (&tx.shape.0, &tr.shape.0);
        if xd.len() < 2
            || xd.len() != rd.len()
            || xd[..xd.len() - 1] != rd[..rd.len() - 1]
            || tl.shape.0.last() != rd.last()
        {
            continue;
        }
        let mut inputs = node.inputs.clone();
        inputs[0] = x;
        let (op, prov) = (node.op.clone(), node.prov.clone());
        let new = g.add(op, inputs, vec![tr], prov);
        g.replace_uses(Value::of(r), Value::of(new));
        folded += 1;
    }
    if folded > 0 {
        tracing::debug!(folded, "linear layers on 2-D views folded to 3-D");
    }
    let _ = report;
}

/// Lists what stayed primitive where a fused op was expected.
fn list_unrecognized(g: &Graph, report: &mut RecognitionReport) {
    let mut by: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let what = match &node.op {
            Op::Softmax { .. } => "softmax outside a recognized attention",
            Op::Unary(UnaryOp::Sigmoid) => "sigmoid outside a recognized SiLU",
            Op::Unary(UnaryOp::Tanh) => "tanh outside a recognized GELU",
            Op::Unary(UnaryOp::Reciprocal) | Op::Reduce { .. } => {
                "reduction/reciprocal outside a recognized normalization"
            }
            Op::MatMul if g.node(node.inputs[1].node).op.kind_name() == "Param" => {
                "matmul with a weight not recognized as Linear"
            }
            Op::Gather { .. } if matches!(g.node(node.inputs[0].node).op, Op::Param { .. }) => {
                "gather from a parameter not recognized as Embedding"
            }
            _ => continue,
        };
        let e = by
            .entry(what.to_string())
            .or_insert((0, format!("{} ({})", node.prov.name, node.prov.scope)));
        e.0 += 1;
    }
    for (what, (count, example)) in by {
        report
            .unrecognized
            .push(format!("{count} × {what}, e.g. {example}"));
    }
}
