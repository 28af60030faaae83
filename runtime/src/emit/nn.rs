//! Emission of the fused ops, their backward ops, the optimizers and the collectives.
//! Semantics follow `moai_ir::interp::fused` (the reference).

use super::builder::{Elem, Fb, Init, Ix, Tv, bcast, ident};
use super::contract::Contraction;
use super::ops::{gather, map, reduce, reduce_axis, reshape, softmax};
use super::{Emitter, KernelStyle};
use crate::error::Result;
use moai_ir::{CollectiveKind, NodeId, Op, ReduceKind};

type Outs = [(Vec<i64>, Elem)];

/// Emits a layer, training or collective op. One arm per op, grouped by op family (the same
/// families, in the same order, as `moai_ir`'s interpreter and autodiff): reductions and
/// normalization, matmul and attention, embedding and loss, optimizers, collectives. Each arm
/// calls its op's function below; the ops of the other families (sources, elementwise, plain
/// reductions, shape and layout, matmul, mixture of experts) are `ops::emit`'s and listed in the
/// last arm, so a new `Op` variant is a compile error here.
pub(super) fn emit(em: &mut Emitter<'_>, id: NodeId, outs: &Outs) -> Result<Vec<Tv>> {
    let op = em.graph.node(id).op.clone();
    let n_in = em.graph.node(id).inputs.len();
    let mut ins = Vec::with_capacity(n_in);
    for i in 0..n_in {
        ins.push(em.input(id, i)?);
    }
    let at = &At {
        id,
        ins: &ins,
        outs,
    };
    match op {
        // reductions and normalization
        Op::RmsNorm { eps } => rms_norm(em, at, eps),
        Op::LayerNorm { eps } => layer_norm(em, at, eps),
        Op::RmsNormBackward { eps } => rms_norm_bwd(em, at, eps),
        Op::LayerNormBackward { eps } => layer_norm_bwd(em, at, eps),
        // matmul and attention
        Op::Linear { bias } => linear(em, at, bias),
        Op::Rotary => Ok(vec![rotary(&mut em.fb, &ins[0], &ins[1], &ins[2], false)]),
        Op::RotaryBackward => Ok(vec![rotary(&mut em.fb, &ins[0], &ins[1], &ins[2], true)]),
        Op::Attention {
            heads,
            kv_heads,
            scale,
            causal,
        } => attention(em, at, heads, kv_heads, scale, causal),
        Op::AttentionBackward {
            heads,
            kv_heads,
            scale,
            causal,
        } => attention_bwd(em, at, heads, kv_heads, scale, causal),
        // embedding and loss
        Op::Embedding => Ok(vec![gather(&mut em.fb, &ins[0], &ins[1], 0, &outs[0].0)]),
        Op::EmbeddingBackward { vocab } => embedding_bwd(em, at, vocab),
        Op::CrossEntropy { ignore_index } => cross_entropy(em, at, ignore_index),
        Op::CrossEntropyBackward { ignore_index } => cross_entropy_bwd(em, at, ignore_index),
        // optimizers
        Op::AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        } => adamw(
            em,
            at,
            &Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                step,
            },
        ),
        Op::SgdMomentum {
            lr,
            momentum,
            weight_decay,
        } => sgd(em, at, lr, momentum, weight_decay),
        // collectives
        Op::Collective {
            kind,
            group_size,
            axis,
        } => emit_collective(em, at, kind, group_size, axis),
        // sources, elementwise, plain reductions, shape and layout, matmul, mixture of experts:
        // ops::emit (never reaches here)
        other @ (Op::Input { .. }
        | Op::Param { .. }
        | Op::Constant(_)
        | Op::Range { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast(_)
        | Op::Reduce { .. }
        | Op::CumSum { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Reshape(_)
        | Op::Transpose(_)
        | Op::Expand(_)
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::GatherNd { .. }
        | Op::Trilu { .. }
        | Op::MatMul
        | Op::MoeExperts { .. }
        | Op::MoeExpertsBackward { .. }) => Err(em.err(
            id,
            &format!(
                "op {} is not supported by the MLIR emitter",
                other.kind_name()
            ),
        )),
    }
}

/// One node being emitted: its id, its input tensors and its outputs' shapes and types.
#[derive(Clone, Copy)]
struct At<'a> {
    id: NodeId,
    ins: &'a [Tv],
    outs: &'a Outs,
}

impl At<'_> {
    /// Fails unless input `i` is floating point.
    fn float_in(&self, em: &Emitter<'_>, i: usize) -> Result<()> {
        if self.ins[i].elem.is_float() {
            Ok(())
        } else {
            Err(em.err(self.id, &format!("input {i} must be floating point")))
        }
    }
}

/// The hyper-parameters of one `AdamW` step.
#[derive(Clone, Copy)]
struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
}

// Reductions and normalization: the fused norms and their backward ops.

/// `RmsNorm`: `x / √(mean(x²)+eps) · w`.
fn rms_norm(em: &mut Emitter<'_>, at: &At<'_>, eps: f64) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (x, w) = (&ins[0], &ins[1]);
    let r = rms_inv(&mut em.fb, x, eps);
    let e = x.elem;
    Ok(vec![map(
        &mut em.fb,
        &[x, &r, w],
        &x.shape,
        e,
        &mut |fb, a| {
            let n = fb.fmul(&a[0], &a[1], e);
            fb.fmul(&n, &a[2], e)
        },
    )])
}

/// `LayerNorm`: `(x − mean) / √(var+eps) · w + b`.
fn layer_norm(em: &mut Emitter<'_>, at: &At<'_>, eps: f64) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (x, w, b) = (&ins[0], &ins[1], &ins[2]);
    let (mean, r) = ln_stats(&mut em.fb, x, eps);
    let e = x.elem;
    Ok(vec![map(
        &mut em.fb,
        &[x, &mean, &r, w, b],
        &x.shape,
        e,
        &mut |fb, a| {
            let c = fb.fsub(&a[0], &a[1], e);
            let n = fb.fmul(&c, &a[2], e);
            let s = fb.fmul(&n, &a[3], e);
            fb.fadd(&s, &a[4], e)
        },
    )])
}

/// `RmsNormBackward`: `[x, w, d_y]` → `[d_x, d_w]`.
fn rms_norm_bwd(em: &mut Emitter<'_>, at: &At<'_>, eps: f64) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (x, w, dy) = (&ins[0], &ins[1], &ins[2]);
    let e = x.elem;
    let h = *x.shape.last().unwrap_or(&1);
    let last = x.shape.len() - 1;
    let r = rms_inv(&mut em.fb, x, eps);
    let n = map(&mut em.fb, &[x, &r], &x.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let gn_el = map(&mut em.fb, &[dy, w, &n], &x.shape, e, &mut |fb, a| {
        let g = fb.fmul(&a[0], &a[1], e);
        fb.fmul(&g, &a[2], e)
    });
    let gn = reduce_axis(&mut em.fb, &gn_el, last, ReduceKind::Sum);
    let dx = map(
        &mut em.fb,
        &[dy, w, &n, &gn, &r],
        &x.shape,
        e,
        &mut |fb, a| {
            let g = fb.fmul(&a[0], &a[1], e);
            let hc = fb.cst(h as f64, e);
            let m = fb.fdiv(&a[3], &hc, e);
            let nm = fb.fmul(&a[2], &m, e);
            let d = fb.fsub(&g, &nm, e);
            fb.fmul(&a[4], &d, e)
        },
    );
    let dn = map(&mut em.fb, &[dy, &n], &x.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let axes: Vec<usize> = (0..last).collect();
    let dw = reduce(&mut em.fb, &dn, &axes, false, ReduceKind::Sum, &[h]);
    Ok(vec![dx, dw])
}

/// `LayerNormBackward`: `[x, w, d_y]` → `[d_x, d_w, d_b]`.
fn layer_norm_bwd(em: &mut Emitter<'_>, at: &At<'_>, eps: f64) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (x, w, dy) = (&ins[0], &ins[1], &ins[2]);
    let e = x.elem;
    let h = *x.shape.last().unwrap_or(&1);
    let last = x.shape.len() - 1;
    let (mean, r) = ln_stats(&mut em.fb, x, eps);
    let n = map(&mut em.fb, &[x, &mean, &r], &x.shape, e, &mut |fb, a| {
        let c = fb.fsub(&a[0], &a[1], e);
        fb.fmul(&c, &a[2], e)
    });
    let g = map(&mut em.fb, &[dy, w], &x.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let gn_el = map(&mut em.fb, &[&g, &n], &x.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let sg = reduce_axis(&mut em.fb, &g, last, ReduceKind::Sum);
    let sgn = reduce_axis(&mut em.fb, &gn_el, last, ReduceKind::Sum);
    let dx = map(
        &mut em.fb,
        &[&g, &sg, &n, &sgn, &r],
        &x.shape,
        e,
        &mut |fb, a| {
            let hc = fb.cst(h as f64, e);
            let mg = fb.fdiv(&a[1], &hc, e);
            let mgn = fb.fdiv(&a[3], &hc, e);
            let t = fb.fsub(&a[0], &mg, e);
            let nm = fb.fmul(&a[2], &mgn, e);
            let t = fb.fsub(&t, &nm, e);
            fb.fmul(&a[4], &t, e)
        },
    );
    let dn = map(&mut em.fb, &[dy, &n], &x.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let axes: Vec<usize> = (0..last).collect();
    let dw = reduce(&mut em.fb, &dn, &axes, false, ReduceKind::Sum, &[h]);
    let db = reduce(&mut em.fb, dy, &axes, false, ReduceKind::Sum, &[h]);
    Ok(vec![dx, dw, db])
}

// Matmul and attention: the linear layer and the fused attention, forward and backward (rotary is
// `rotary` below).

/// `Linear`: `x·W (+ b)` over the flattened rows.
fn linear(em: &mut Emitter<'_>, at: &At<'_>, bias: bool) -> Result<Vec<Tv>> {
    let At { ins, outs, .. } = *at;
    let (x, w) = (&ins[0], &ins[1]);
    at.float_in(em, 0)?;
    let kin = *x.shape.last().unwrap_or(&1);
    let rows: i64 = x.shape[..x.shape.len().saturating_sub(1)].iter().product();
    let nout = w.shape[1];
    let x2 = reshape(&mut em.fb, x, &[rows, kin]);
    let y = em.contract(Contraction {
        a: (&x2, vec![Ix::D(0), Ix::D(2)]),
        b: (w, vec![Ix::D(2), Ix::D(1)]),
        out: vec![rows, nout],
        k: kin,
        elem: x.elem,
    });
    let y = if bias {
        let e = x.elem;
        map(
            &mut em.fb,
            &[&y, &ins[2]],
            &[rows, nout],
            e,
            &mut |fb, a| fb.fadd(&a[0], &a[1], e),
        )
    } else {
        y
    };
    Ok(vec![reshape(&mut em.fb, &y, &outs[0].0)])
}

/// `Attention`: softmax(scores)·V and the log-sum-exp statistics `[out, lse]`.
fn attention(
    em: &mut Emitter<'_>,
    at: &At<'_>,
    heads: usize,
    kv_heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Vec<Tv>> {
    let At { id, ins, outs } = *at;
    at.float_in(em, 0)?;
    let g = group(em, id, heads, kv_heads)?;
    let mask = ins.get(3).cloned();
    let (q, k, v) = (&ins[0], &ins[1], &ins[2]);
    let s = scores(em, q, k, g, scale, causal, mask.as_ref());
    let e = q.elem;
    let mx = reduce_axis(&mut em.fb, &s, 3, ReduceKind::Max);
    let p = map(&mut em.fb, &[&s, &mx], &s.shape, e, &mut |fb, a| {
        let d = fb.fsub(&a[0], &a[1], e);
        fb.exp(&d, e)
    });
    let sum = reduce_axis(&mut em.fb, &p, 3, ReduceKind::Sum);
    let pn = map(&mut em.fb, &[&p, &sum], &s.shape, e, &mut |fb, a| {
        fb.fdiv(&a[0], &a[1], e)
    });
    let (b, h, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let sk = k.shape[2];
    let out = em.contract(Contraction {
        a: (&pn, vec![Ix::D(0), Ix::D(1), Ix::D(2), Ix::D(4)]),
        b: (v, vec![Ix::D(0), Ix::Div(1, g), Ix::D(4), Ix::D(3)]),
        out: vec![b, h, sq, d],
        k: sk,
        elem: e,
    });
    let lse_elem = outs[1].1;
    let lse4 = map(
        &mut em.fb,
        &[&mx, &sum],
        &[b, h, sq, 1],
        lse_elem,
        &mut |fb, a| {
            let l = fb.math("log", &a[1], e);
            let r = fb.fadd(&a[0], &l, e);
            super::ops::cast(fb, &r, e, lse_elem)
        },
    );
    let lse = reshape(&mut em.fb, &lse4, &[b, h, sq]);
    Ok(vec![out, lse])
}

/// `AttentionBackward`: `[d_q, d_k, d_v]` with the softmax recomputed from `lse`.
fn attention_bwd(
    em: &mut Emitter<'_>,
    at: &At<'_>,
    heads: usize,
    kv_heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Vec<Tv>> {
    let At { id, ins, .. } = *at;
    at.float_in(em, 0)?;
    let g = group(em, id, heads, kv_heads)?;
    let (q, k, v, o, lse, dout) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], &ins[5]);
    let mask = ins.get(6).cloned();
    let e = q.elem;
    let (b, h, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let sk = k.shape[2];
    let kvh = k.shape[1];
    let s = scores(em, q, k, g, scale, causal, mask.as_ref());
    let lse4 = reshape(&mut em.fb, lse, &[b, h, sq, 1]);
    let le = lse.elem;
    let p = map(&mut em.fb, &[&s, &lse4], &s.shape, e, &mut |fb, a| {
        let l = super::ops::cast(fb, &a[1], le, e);
        let dd = fb.fsub(&a[0], &l, e);
        fb.exp(&dd, e)
    });
    // dV_full[b,h,j,d] = Σ_i P[b,h,i,j] dO[b,h,i,d]
    let dv_full = em.contract(Contraction {
        a: (&p, vec![Ix::D(0), Ix::D(1), Ix::D(4), Ix::D(2)]),
        b: (dout, vec![Ix::D(0), Ix::D(1), Ix::D(4), Ix::D(3)]),
        out: vec![b, h, sk, d],
        k: sq,
        elem: e,
    });
    // dP[b,h,i,j] = Σ_d dO[b,h,i,d] V[b,h/g,j,d]
    let dp = em.contract(Contraction {
        a: (dout, vec![Ix::D(0), Ix::D(1), Ix::D(2), Ix::D(4)]),
        b: (v, vec![Ix::D(0), Ix::Div(1, g), Ix::D(3), Ix::D(4)]),
        out: vec![b, h, sq, sk],
        k: d,
        elem: e,
    });
    let dd = map(&mut em.fb, &[dout, o], &dout.shape, e, &mut |fb, a| {
        fb.fmul(&a[0], &a[1], e)
    });
    let delta = reduce_axis(&mut em.fb, &dd, 3, ReduceKind::Sum);
    let ds = map(&mut em.fb, &[&p, &dp, &delta], &p.shape, e, &mut |fb, a| {
        let t = fb.fsub(&a[1], &a[2], e);
        let t = fb.fmul(&a[0], &t, e);
        let sc = fb.cst(scale, e);
        fb.fmul(&t, &sc, e)
    });
    let dq = em.contract(Contraction {
        a: (&ds, vec![Ix::D(0), Ix::D(1), Ix::D(2), Ix::D(4)]),
        b: (k, vec![Ix::D(0), Ix::Div(1, g), Ix::D(4), Ix::D(3)]),
        out: vec![b, h, sq, d],
        k: sk,
        elem: e,
    });
    let dk_full = em.contract(Contraction {
        a: (&ds, vec![Ix::D(0), Ix::D(1), Ix::D(4), Ix::D(2)]),
        b: (q, vec![Ix::D(0), Ix::D(1), Ix::D(4), Ix::D(3)]),
        out: vec![b, h, sk, d],
        k: sq,
        elem: e,
    });
    let dk = group_sum(&mut em.fb, &dk_full, g, kvh);
    let dv = group_sum(&mut em.fb, &dv_full, g, kvh);
    Ok(vec![dq, dk, dv])
}

// Embedding and loss: the embedding backward (the lookup is a `gather`) and the cross-entropy loss.

/// `EmbeddingBackward`: the gradient rows scatter-added into a `[vocab, h]` table.
fn embedding_bwd(em: &mut Emitter<'_>, at: &At<'_>, vocab: usize) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    let (ids, dy) = (&ins[0], &ins[1]);
    let hdim = *dy.shape.last().unwrap_or(&1);
    let t: i64 = ids.shape.iter().product();
    let ids1 = reshape(&mut em.fb, ids, &[t]);
    let dy2 = reshape(&mut em.fb, dy, &[t, hdim]);
    let e = dy.elem;
    let ie = ids.elem;
    Ok(vec![em.fb.generic(
        &[(&ids1, vec![Ix::D(2)]), (&dy2, vec![Ix::D(2), Ix::D(1)])],
        &[vocab as i64, hdim],
        e,
        None,
        &[false, false, true],
        Init::Fill(0.0),
        &mut |fb, a| {
            let row = fb.lindex(0);
            let row = fb.op1("arith.index_cast", &row, "index to i64");
            let idv = super::ops::cast(fb, &a[0], ie, Elem::I64);
            let hit = fb.cmp(false, "eq", &row, &idv, "i64");
            let s = fb.fadd(&a[2], &a[1], e);
            fb.select(&hit, &s, &a[2], e.mlir())
        },
    )])
}

/// `CrossEntropy`: the mean negative log-likelihood over the counted targets.
fn cross_entropy(em: &mut Emitter<'_>, at: &At<'_>, ignore_index: i64) -> Result<Vec<Tv>> {
    let At { ins, outs, .. } = *at;
    at.float_in(em, 0)?;
    let (logits, targets) = (&ins[0], &ins[1]);
    let (lsm, t1, n, vcb) = ce_prep(&mut em.fb, logits, targets, true);
    let e = logits.elem;
    let te = targets.elem;
    let oe = outs[0].1;
    let picked = em.fb.generic(
        &[(&lsm, vec![Ix::D(0), Ix::D(1)]), (&t1, vec![Ix::D(0)])],
        &[],
        e,
        Some(vec![]),
        &[true, true],
        Init::Fill(0.0),
        &mut |fb, a| {
            let col = fb.lindex(1);
            let col = fb.op1("arith.index_cast", &col, "index to i64");
            let tv = super::ops::cast(fb, &a[1], te, Elem::I64);
            let hit = fb.cmp(false, "eq", &col, &tv, "i64");
            let ig = fb.cst(ignore_index as f64, Elem::I64);
            let counted = fb.cmp(false, "ne", &tv, &ig, "i64");
            let both = fb.op2("arith.andi", &hit, &counted, "i1");
            let s = fb.fsub(&a[2], &a[0], e);
            fb.select(&both, &s, &a[2], e.mlir())
        },
    );
    let count = ce_count(&mut em.fb, &t1, ignore_index, e);
    let _ = (n, vcb);
    Ok(vec![map(
        &mut em.fb,
        &[&picked, &count],
        &[],
        oe,
        &mut |fb, a| {
            let z = fb.cst(0.0, e);
            let none = fb.cmp(true, "oeq", &a[1], &z, e.mlir());
            let q = fb.fdiv(&a[0], &a[1], e);
            let r = fb.select(&none, &z, &q, e.mlir());
            super::ops::cast(fb, &r, e, oe)
        },
    )])
}

/// `CrossEntropyBackward`: `(softmax − onehot) · d_loss / count`, zero on ignored targets.
fn cross_entropy_bwd(em: &mut Emitter<'_>, at: &At<'_>, ignore_index: i64) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (logits, targets, dloss) = (&ins[0], &ins[1], &ins[2]);
    let (p, t1, n, vcb) = ce_prep(&mut em.fb, logits, targets, false);
    let e = logits.elem;
    let te = targets.elem;
    let de = dloss.elem;
    let count = ce_count(&mut em.fb, &t1, ignore_index, e);
    let d = em.fb.generic(
        &[
            (&p, vec![Ix::D(0), Ix::D(1)]),
            (&t1, vec![Ix::D(0)]),
            (dloss, vec![]),
            (&count, vec![]),
        ],
        &[n, vcb],
        e,
        None,
        &[false, false],
        Init::Empty,
        &mut |fb, a| {
            let col = fb.lindex(1);
            let col = fb.op1("arith.index_cast", &col, "index to i64");
            let tv = super::ops::cast(fb, &a[1], te, Elem::I64);
            let hit = fb.cmp(false, "eq", &col, &tv, "i64");
            let one = fb.cst(1.0, e);
            let z = fb.cst(0.0, e);
            let oh = fb.select(&hit, &one, &z, e.mlir());
            let diff = fb.fsub(&a[0], &oh, e);
            let dl = super::ops::cast(fb, &a[2], de, e);
            let sc = fb.fdiv(&dl, &a[3], e);
            let none = fb.cmp(true, "oeq", &a[3], &z, e.mlir());
            let sc = fb.select(&none, &z, &sc, e.mlir());
            let r = fb.fmul(&diff, &sc, e);
            let ig = fb.cst(ignore_index as f64, Elem::I64);
            let skip = fb.cmp(false, "eq", &tv, &ig, "i64");
            fb.select(&skip, &z, &r, e.mlir())
        },
    );
    Ok(vec![reshape(&mut em.fb, &d, &logits.shape)])
}

// Optimizers: one fused update step per parameter.

/// `AdamW`: `[p, g, m, v]` → `[p', m', v']`, computed in the moments' type.
fn adamw(em: &mut Emitter<'_>, at: &At<'_>, h: &Adam) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    let Adam {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        step,
    } = *h;
    at.float_in(em, 0)?;
    let (p, g, m, v) = (&ins[0], &ins[1], &ins[2], &ins[3]);
    // moments keep their own type (fp32 under bf16 policies); the update is computed in it
    let (ep, eg, e) = (p.elem, g.elem, m.elem);
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    let shape = p.shape.clone();
    let nm = map(&mut em.fb, &[m, g], &shape, e, &mut |fb, a| {
        let gi = convert(fb, &a[1], eg, e);
        let b1 = fb.cst(beta1, e);
        let c1 = fb.cst(1.0 - beta1, e);
        let x = fb.fmul(&b1, &a[0], e);
        let y = fb.fmul(&c1, &gi, e);
        fb.fadd(&x, &y, e)
    });
    let nv = map(&mut em.fb, &[v, g], &shape, v.elem, &mut |fb, a| {
        let e = v.elem;
        let gi = convert(fb, &a[1], eg, e);
        let b2 = fb.cst(beta2, e);
        let c2 = fb.cst(1.0 - beta2, e);
        let x = fb.fmul(&b2, &a[0], e);
        let gg = fb.fmul(&gi, &gi, e);
        let y = fb.fmul(&c2, &gg, e);
        fb.fadd(&x, &y, e)
    });
    let np = map(&mut em.fb, &[p, &nm, &nv], &shape, ep, &mut |fb, a| {
        let pi = convert(fb, &a[0], ep, e);
        let vi = convert(fb, &a[2], v.elem, e);
        let dec = fb.cst(1.0 - lr * weight_decay, e);
        let decayed = fb.fmul(&pi, &dec, e);
        let k1 = fb.cst(bc1, e);
        let k2 = fb.cst(bc2, e);
        let mh = fb.fdiv(&a[1], &k1, e);
        let vh = fb.fdiv(&vi, &k2, e);
        let sq = fb.math("sqrt", &vh, e);
        let eps_c = fb.cst(eps, e);
        let den = fb.fadd(&sq, &eps_c, e);
        let q = fb.fdiv(&mh, &den, e);
        let l = fb.cst(lr, e);
        let upd = fb.fmul(&l, &q, e);
        let np = fb.fsub(&decayed, &upd, e);
        convert(fb, &np, e, ep)
    });
    Ok(vec![np, nm, nv])
}

/// `SgdMomentum`: `[p, g, buf]` → `[p', buf']`.
fn sgd(
    em: &mut Emitter<'_>,
    at: &At<'_>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<Vec<Tv>> {
    let At { ins, .. } = *at;
    at.float_in(em, 0)?;
    let (p, g, buf) = (&ins[0], &ins[1], &ins[2]);
    let e = p.elem;
    let shape = p.shape.clone();
    let nb = map(&mut em.fb, &[p, g, buf], &shape, e, &mut |fb, a| {
        let wd = fb.cst(weight_decay, e);
        let wp = fb.fmul(&wd, &a[0], e);
        let gi = fb.fadd(&a[1], &wp, e);
        let mo = fb.cst(momentum, e);
        let mb = fb.fmul(&mo, &a[2], e);
        fb.fadd(&mb, &gi, e)
    });
    let np = map(&mut em.fb, &[p, &nb], &shape, e, &mut |fb, a| {
        let l = fb.cst(lr, e);
        let u = fb.fmul(&l, &a[1], e);
        fb.fsub(&a[0], &u, e)
    });
    Ok(vec![np, nb])
}

// Collectives.

/// `Collective`: the identity where no data moves; otherwise a runtime call (16-bit values widened to f32 around it).
fn emit_collective(
    em: &mut Emitter<'_>,
    at: &At<'_>,
    kind: CollectiveKind,
    group_size: u32,
    axis: Option<usize>,
) -> Result<Vec<Tv>> {
    let At { id, ins, outs } = *at;
    let x = &ins[0];
    Ok(
        if kind == CollectiveKind::CopyToGroup
            || (group_size == 1 && kind == CollectiveKind::AllReduce)
        {
            // identity in the forward pass (its gradient, an all-reduce, is its own node)
            vec![x.clone()]
        } else if matches!(x.elem, Elem::BF16 | Elem::F16) {
            // 16-bit activations are reduced in f32 (the runtime's collectives are f32)
            let e = x.elem;
            let shape = x.shape.clone();
            let wide = map(&mut em.fb, &[x], &shape, Elem::F32, &mut |fb, a| {
                convert(fb, &a[0], e, Elem::F32)
            });
            let r = collective(em, &wide, kind, group_size, axis, &outs[0].0);
            let oshape = r.shape.clone();
            vec![map(&mut em.fb, &[&r], &oshape, e, &mut |fb, a| {
                convert(fb, &a[0], Elem::F32, e)
            })]
        } else {
            if x.elem != Elem::F32 {
                return Err(em.err(id, "collectives are emitted for float tensors only"));
            }
            vec![collective(em, x, kind, group_size, axis, &outs[0].0)]
        },
    )
}

// Helpers.

fn group(em: &Emitter<'_>, id: NodeId, heads: usize, kv: usize) -> Result<i64> {
    if kv == 0 || !heads.is_multiple_of(kv) {
        return Err(em.err(
            id,
            &format!("{heads} heads are not a multiple of {kv} KV heads"),
        ));
    }
    Ok((heads / kv) as i64)
}

/// `1/√(mean(x²)+eps)` over the last axis, kept as size 1.
fn rms_inv(fb: &mut Fb, x: &Tv, eps: f64) -> Tv {
    let e = x.elem;
    let last = x.shape.len() - 1;
    let h = x.shape[last];
    let sq = map(fb, &[x], &x.shape, e, &mut |fb, a| fb.fmul(&a[0], &a[0], e));
    let ss = reduce_axis(fb, &sq, last, ReduceKind::Sum);
    map(fb, &[&ss], &ss.shape.clone(), e, &mut |fb, a| {
        let hc = fb.cst(h as f64, e);
        let ms = fb.fdiv(&a[0], &hc, e);
        let ep = fb.cst(eps, e);
        let t = fb.fadd(&ms, &ep, e);
        let s = fb.math("sqrt", &t, e);
        let one = fb.cst(1.0, e);
        fb.fdiv(&one, &s, e)
    })
}

/// Mean and `1/√(var+eps)` over the last axis, kept as size 1.
fn ln_stats(fb: &mut Fb, x: &Tv, eps: f64) -> (Tv, Tv) {
    let e = x.elem;
    let last = x.shape.len() - 1;
    let h = x.shape[last];
    let s = reduce_axis(fb, x, last, ReduceKind::Sum);
    let mean = map(fb, &[&s], &s.shape.clone(), e, &mut |fb, a| {
        let hc = fb.cst(h as f64, e);
        fb.fdiv(&a[0], &hc, e)
    });
    let c2 = map(fb, &[x, &mean], &x.shape, e, &mut |fb, a| {
        let c = fb.fsub(&a[0], &a[1], e);
        fb.fmul(&c, &c, e)
    });
    let vs = reduce_axis(fb, &c2, last, ReduceKind::Sum);
    let r = map(fb, &[&vs], &vs.shape.clone(), e, &mut |fb, a| {
        let hc = fb.cst(h as f64, e);
        let var = fb.fdiv(&a[0], &hc, e);
        let ep = fb.cst(eps, e);
        let t = fb.fadd(&var, &ep, e);
        let s = fb.math("sqrt", &t, e);
        let one = fb.cst(1.0, e);
        fb.fdiv(&one, &s, e)
    });
    (mean, r)
}

/// Rotary (rotate-half) forward, or its backward (`x` is then `d_y`).
fn rotary(fb: &mut Fb, x: &Tv, cos: &Tv, sin: &Tv, backward: bool) -> Tv {
    let e = x.elem;
    let rank = x.shape.len();
    let d = x.shape[rank - 1];
    let half = d / 2;
    // forward: rot = j<half ? −x[j+half] : x[j−half];    y = x·cos + rot·sin
    // backward: u = dy·sin; t = j<half ? u[j+half] : −u[j−half]; dx = dy·cos + t
    let src = if backward {
        map(fb, &[x, sin], &x.shape, e, &mut |fb, a| {
            fb.fmul(&a[0], &a[1], e)
        })
    } else {
        x.clone()
    };
    let (sname, sty) = (src.name.clone(), src.ty());
    let mut ins: Vec<(&Tv, Vec<Ix>)> = vec![(x, ident(rank)), (cos, bcast(&cos.shape, &x.shape))];
    if !backward {
        ins.push((sin, bcast(&sin.shape, &x.shape)));
    }
    fb.generic(
        &ins,
        &x.shape,
        e,
        None,
        &vec![false; rank],
        Init::Empty,
        &mut |fb, a| {
            let mut coords: Vec<String> = (0..rank - 1).map(|i| fb.lindex(i)).collect();
            let j = fb.lindex(rank - 1);
            let hc = fb.idx(half);
            let lo = fb.cmp(false, "ult", &j, &hc, "index");
            let up = fb.op2("arith.addi", &j, &hc, "index");
            let dn = fb.op2("arith.subi", &j, &hc, "index");
            let src_j = fb.select(&lo, &up, &dn, "index");
            coords.push(src_j);
            let v = fb.fresh("x");
            fb.line(format!(
                "{v} = tensor.extract {sname}[{}] : {sty}",
                coords.join(", ")
            ));
            let nv = fb.op1("arith.negf", &v, e.mlir());
            let xc = fb.fmul(&a[0], &a[1], e);
            if backward {
                let t = fb.select(&lo, &v, &nv, e.mlir());
                fb.fadd(&xc, &t, e)
            } else {
                let rot = fb.select(&lo, &nv, &v, e.mlir());
                let rs = fb.fmul(&rot, &a[2], e);
                fb.fadd(&xc, &rs, e)
            }
        },
    )
}

/// Scaled, masked attention scores `[b, h, sq, sk]`.
fn scores(
    em: &mut Emitter<'_>,
    q: &Tv,
    k: &Tv,
    g: i64,
    scale: f64,
    causal: bool,
    mask: Option<&Tv>,
) -> Tv {
    let (b, h, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let sk = k.shape[2];
    let e = q.elem;
    let raw = em.contract(Contraction {
        a: (q, vec![Ix::D(0), Ix::D(1), Ix::D(2), Ix::D(4)]),
        b: (k, vec![Ix::D(0), Ix::Div(1, g), Ix::D(3), Ix::D(4)]),
        out: vec![b, h, sq, sk],
        k: d,
        elem: e,
    });
    let shape = raw.shape.clone();
    let mut ins: Vec<&Tv> = vec![&raw];
    if let Some(m) = mask {
        ins.push(m);
    }
    let has_mask = mask.is_some();
    let me = mask.map(|m| m.elem).unwrap_or(e);
    map(&mut em.fb, &ins, &shape, e, &mut |fb, a| {
        let sc = fb.cst(scale, e);
        let mut s = fb.fmul(&a[0], &sc, e);
        if has_mask {
            let m = super::ops::cast(fb, &a[1], me, e);
            s = fb.fadd(&s, &m, e);
        }
        if causal {
            let i = fb.lindex(2);
            let j = fb.lindex(3);
            let vis = fb.cmp(false, "ule", &j, &i, "index");
            let ninf = fb.cst(f64::NEG_INFINITY, e);
            s = fb.select(&vis, &s, &ninf, e.mlir());
        }
        s
    })
}

/// Sums `[b, kvh·g, s, d]` over each group of `g` heads into `[b, kvh, s, d]`.
fn group_sum(fb: &mut Fb, x: &Tv, g: i64, kvh: i64) -> Tv {
    if g == 1 {
        return x.clone();
    }
    let x5 = reshape(fb, x, &[x.shape[0], kvh, g, x.shape[2], x.shape[3]]);
    let out = vec![x.shape[0], kvh, x.shape[2], x.shape[3]];
    reduce(fb, &x5, &[2], false, ReduceKind::Sum, &out)
}

/// Flattens logits to `[n, vocab]` and targets to `[n]`; returns (log-softmax or softmax, targets, n, vocab).
fn ce_prep(fb: &mut Fb, logits: &Tv, targets: &Tv, log: bool) -> (Tv, Tv, i64, i64) {
    let vcb = *logits.shape.last().unwrap_or(&1);
    let n: i64 = logits.shape[..logits.shape.len() - 1].iter().product();
    let l2 = reshape(fb, logits, &[n, vcb]);
    let t1 = reshape(fb, targets, &[n]);
    (softmax(fb, &l2, 1, log), t1, n, vcb)
}

/// Number of counted targets as a rank-0 float.
fn ce_count(fb: &mut Fb, t1: &Tv, ignore: i64, e: Elem) -> Tv {
    let te = t1.elem;
    fb.generic(
        &[(t1, vec![Ix::D(0)])],
        &[],
        e,
        Some(vec![]),
        &[true],
        Init::Fill(0.0),
        &mut |fb, a| {
            let tv = super::ops::cast(fb, &a[0], te, Elem::I64);
            let ig = fb.cst(ignore as f64, Elem::I64);
            let counted = fb.cmp(false, "ne", &tv, &ig, "i64");
            let one = fb.cst(1.0, e);
            let z = fb.cst(0.0, e);
            let inc = fb.select(&counted, &one, &z, e.mlir());
            fb.fadd(&a[1], &inc, e)
        },
    )
}

/// Emits a collective as a call into the runtime on raw buffer addresses.
fn collective(
    em: &mut Emitter<'_>,
    x: &Tv,
    kind: CollectiveKind,
    group: u32,
    axis: Option<usize>,
    out: &[i64],
) -> Tv {
    let fb = &mut em.fb;
    let addr = |fb: &mut Fb, t: &Tv| -> (String, String) {
        let m = fb.fresh("buf");
        fb.line(format!(
            "{m} = bufferization.to_buffer {} : {} to {}",
            t.name,
            t.ty(),
            t.memref_ty()
        ));
        let p = fb.fresh("addr");
        fb.line(format!(
            "{p} = memref.extract_aligned_pointer_as_index {m} : {} -> index",
            t.memref_ty()
        ));
        let pi = fb.op1("arith.index_cast", &p, "index to i64");
        (m, pi)
    };
    let fresh_copy = |fb: &mut Fb, t: &Tv| -> Tv {
        let n = fb.fresh("cp");
        fb.line(format!(
            "{n} = bufferization.alloc_tensor() copy({}) : {}",
            t.name,
            t.ty()
        ));
        Tv {
            name: n,
            shape: t.shape.clone(),
            elem: t.elem,
        }
    };
    let fresh_out = |fb: &mut Fb, shape: &[i64]| -> Tv {
        let n = fb.fresh("ob");
        let t = Tv {
            name: n.clone(),
            shape: shape.to_vec(),
            elem: Elem::F32,
        };
        fb.line(format!("{n} = bufferization.alloc_tensor() : {}", t.ty()));
        t
    };
    let back = |fb: &mut Fb, m: &str, t: &Tv| -> Tv {
        let n = fb.fresh("col");
        fb.line(format!(
            "{n} = bufferization.to_tensor {m} restrict writable : {} to {}",
            t.memref_ty(),
            t.ty()
        ));
        Tv {
            name: n,
            shape: t.shape.clone(),
            elem: t.elem,
        }
    };
    let i64c = |fb: &mut Fb, v: i64| fb.cst(v as f64, Elem::I64);
    let g = group as i64;
    let (sym, result) = match kind {
        CollectiveKind::CopyToGroup => return x.clone(),
        CollectiveKind::AllReduce | CollectiveKind::Send | CollectiveKind::Recv => {
            let c = if kind == CollectiveKind::Recv {
                fresh_out(fb, out)
            } else {
                fresh_copy(fb, x)
            };
            let (m, p) = addr(fb, &c);
            let n = i64c(fb, c.numel());
            let third = match kind {
                CollectiveKind::AllReduce => g,
                _ => {
                    em.tag += 1;
                    em.tag
                }
            };
            let third = i64c(fb, third);
            let sym = match kind {
                CollectiveKind::AllReduce => "moai_allreduce_f32",
                CollectiveKind::Send => "moai_send_f32",
                _ => "moai_recv_f32",
            };
            fb.line(format!(
                "func.call @{sym}({p}, {n}, {third}) : (i64, i64, i64) -> ()"
            ));
            (sym, back(fb, &m, &c))
        }
        CollectiveKind::AllGather | CollectiveKind::ReduceScatter => {
            let ax = axis.unwrap_or(0).min(x.shape.len().saturating_sub(1));
            let src = fresh_copy(fb, x);
            let (_, pin) = addr(fb, &src);
            let o = fresh_out(fb, out);
            let (mo, pout) = addr(fb, &o);
            let outer: i64 = x.shape[..ax].iter().product();
            let inner: i64 = if kind == CollectiveKind::AllGather {
                x.shape[ax..].iter().product()
            } else {
                out[ax..].iter().product()
            };
            let (a, b, c) = (i64c(fb, outer), i64c(fb, inner), i64c(fb, g));
            let sym = if kind == CollectiveKind::AllGather {
                "moai_allgather_f32"
            } else {
                "moai_reducescatter_f32"
            };
            fb.line(format!(
                "func.call @{sym}({pin}, {pout}, {a}, {b}, {c}) : (i64, i64, i64, i64, i64) -> ()"
            ));
            (sym, back(fb, &mo, &o))
        }
    };
    em.calls.insert(sym.to_string());
    let _ = KernelStyle::Linalg;
    result
}

/// `x` converted between float types (extended or rounded; unchanged when equal).
fn convert(fb: &mut Fb, x: &str, from: Elem, to: Elem) -> String {
    if from == to {
        return x.to_string();
    }
    let op = if from.bits() < to.bits() {
        "arith.extf"
    } else {
        "arith.truncf"
    };
    fb.op1(op, x, &format!("{} to {}", from.mlir(), to.mlir()))
}
