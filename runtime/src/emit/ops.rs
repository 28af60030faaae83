//! Emission of the primitive ops (elementwise, matmul, reductions, layout changes, gathers).

use super::Emitter;
use super::builder::{Elem, Fb, Init, Ix, Tv, bcast, ident, tensor_ty};
use super::contract::Contraction;
use crate::error::Result;
use moai_ir::{BinaryOp, Dim, NodeId, Op, ReduceKind, TensorData, UnaryOp};

type Outs = [(Vec<i64>, Elem)];

/// Emits a primitive op; `Ok(None)` when `id` is not one (the fused/backward emitter takes it). One
/// arm per op, grouped by op family (the same families, in the same order, as `nn::emit` and
/// `moai_ir`'s interpreter and autodiff): sources, elementwise, reductions and normalization, shape
/// and layout, matmul and attention, mixture of experts; the layer, training and collective ops
/// are listed in the last arm. Each arm calls its op's function below, so a new `Op` variant is a
/// compile error here.
pub(super) fn emit(em: &mut Emitter<'_>, id: NodeId, outs: &Outs) -> Result<Option<Vec<Tv>>> {
    let op = em.graph.node(id).op.clone();
    let (oshape, oelem) = outs.first().cloned().unwrap_or_default_pair();
    let o = &Out {
        id,
        shape: &oshape,
        elem: oelem,
    };
    let r = match op {
        // sources
        Op::Constant(t) => vec![constant(em, id, &t, &oshape, oelem)?],
        Op::Input { .. } | Op::Param { .. } => {
            return Err(em.err(id, "source node is not an argument of the program"));
        }
        Op::Range { start, step, .. } => emit_range(em, o, &start, step)?,
        // elementwise
        Op::Unary(u) => emit_unary(em, o, u)?,
        Op::Binary(b) => emit_binary(em, o, b)?,
        Op::Where => emit_where(em, o)?,
        Op::Cast(_) => emit_cast(em, o)?,
        // reductions and normalization (the fused norms are nn::emit's)
        Op::Reduce {
            kind,
            axes,
            keep_dims,
        } => emit_reduce(em, o, kind, &axes, keep_dims)?,
        Op::Softmax { axis } => emit_softmax(em, o, axis, false)?,
        Op::LogSoftmax { axis } => emit_softmax(em, o, axis, true)?,
        Op::CumSum { .. } => return Err(unused_by_decoders(em, id)),
        // shape and layout
        Op::Reshape(_) => emit_reshape(em, o)?,
        Op::Transpose(perm) => emit_transpose(em, o, &perm)?,
        Op::Expand(_) => emit_expand(em, o)?,
        Op::Concat { axis } => emit_concat(em, o, axis)?,
        Op::Slice {
            axis, start, step, ..
        } => emit_slice(em, o, axis, &start, step)?,
        Op::Gather { axis } => emit_gather(em, o, axis)?,
        Op::GatherNd { .. } => return Err(unused_by_decoders(em, id)),
        Op::Trilu { upper, k } => emit_trilu(em, o, upper, k)?,
        // matmul and attention (linear and attention are nn::emit's)
        Op::MatMul => emit_matmul(em, o)?,
        // mixture of experts
        Op::MoeExperts { .. } | Op::MoeExpertsBackward { .. } => {
            return Err(em.err(
                id,
                "mixture-of-experts layers are not supported by the MLIR code generation yet",
            ));
        }
        // layer, training and collective ops: nn::emit
        Op::Linear { .. }
        | Op::Embedding
        | Op::RmsNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Rotary
        | Op::RotaryBackward
        | Op::RmsNormBackward { .. }
        | Op::LayerNormBackward { .. }
        | Op::Attention { .. }
        | Op::AttentionBackward { .. }
        | Op::EmbeddingBackward { .. }
        | Op::CrossEntropy { .. }
        | Op::CrossEntropyBackward { .. }
        | Op::AdamW { .. }
        | Op::SgdMomentum { .. }
        | Op::Collective { .. } => return Ok(None),
    };
    Ok(Some(r))
}

/// What a primitive op emits into: the node and its first output's shape and element type.
#[derive(Clone, Copy)]
struct Out<'a> {
    id: NodeId,
    shape: &'a [i64],
    elem: Elem,
}

/// The error for an op no training graph of a decoder uses.
fn unused_by_decoders(em: &Emitter<'_>, id: NodeId) -> crate::error::RuntimeError {
    em.err(
        id,
        "not supported by the MLIR emitter (no training graph of a decoder uses it)",
    )
}

/// `Softmax` (`log == false`) or `LogSoftmax` along an axis.
fn emit_softmax(em: &mut Emitter<'_>, o: &Out<'_>, axis: usize, log: bool) -> Result<Vec<Tv>> {
    let x = em.input(o.id, 0)?;
    Ok(vec![softmax(&mut em.fb, &x, axis, log)])
}

// Sources.

/// `Range`: `start + i·step` from a bound start.
fn emit_range(em: &mut Emitter<'_>, o: &Out<'_>, start: &Dim, step: i64) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let env = |s: &str| em.dims.get(s).copied();
    let st = start
        .eval(&env)
        .ok_or_else(|| em.err(id, &format!("range start {start} is not bound")))?;
    Ok(vec![em.fb.generic(
        &[],
        oshape,
        oelem,
        None,
        &[false],
        Init::Empty,
        &mut |fb, _| {
            let i = fb.lindex(0);
            let ii = fb.op1("arith.index_cast", &i, "index to i64");
            let s = fb.cst(st as f64, Elem::I64);
            let k = fb.cst(step as f64, Elem::I64);
            let m = fb.op2("arith.muli", &ii, &k, "i64");
            let v = fb.op2("arith.addi", &s, &m, "i64");
            cast(fb, &v, Elem::I64, oelem)
        },
    )])
}

// Elementwise.

/// `Unary`: the function applied elementwise.
fn emit_unary(em: &mut Emitter<'_>, o: &Out<'_>, u: UnaryOp) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let x = em.input(id, 0)?;
    Ok(vec![map(&mut em.fb, &[&x], oshape, oelem, &mut |fb, a| {
        unary(fb, u, &a[0], x.elem)
    })])
}

/// `Binary`: elementwise with broadcasting (operands of one type).
fn emit_binary(em: &mut Emitter<'_>, o: &Out<'_>, b: BinaryOp) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let (x, y) = (em.input(id, 0)?, em.input(id, 1)?);
    if x.elem != y.elem {
        return Err(em.err(
            id,
            &format!("operand types differ ({} vs {})", x.ty(), y.ty()),
        ));
    }
    if b == BinaryOp::Pow && !x.elem.is_float() {
        return Err(em.err(id, "integer Pow is not supported"));
    }
    Ok(vec![map(
        &mut em.fb,
        &[&x, &y],
        oshape,
        oelem,
        &mut |fb, a| binary(fb, b, &a[0], &a[1], x.elem),
    )])
}

/// `Where`: `cond ? a : b` with broadcasting.
fn emit_where(em: &mut Emitter<'_>, o: &Out<'_>) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let (c, x, y) = (em.input(id, 0)?, em.input(id, 1)?, em.input(id, 2)?);
    let et = oelem.mlir();
    Ok(vec![map(
        &mut em.fb,
        &[&c, &x, &y],
        oshape,
        oelem,
        &mut |fb, a| fb.select(&a[0], &a[1], &a[2], et),
    )])
}

/// `Cast`: element type conversion (none when the type already matches).
fn emit_cast(em: &mut Emitter<'_>, o: &Out<'_>) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let x = em.input(id, 0)?;
    Ok(if x.elem == oelem {
        vec![x]
    } else {
        vec![map(&mut em.fb, &[&x], oshape, oelem, &mut |fb, a| {
            cast(fb, &a[0], x.elem, oelem)
        })]
    })
}

// Reductions and normalization (`emit_softmax` above).

/// `Reduce` over axes.
fn emit_reduce(
    em: &mut Emitter<'_>,
    o: &Out<'_>,
    kind: ReduceKind,
    axes: &[usize],
    keep_dims: bool,
) -> Result<Vec<Tv>> {
    let Out {
        id, shape: oshape, ..
    } = *o;
    let x = em.input(id, 0)?;
    Ok(vec![reduce(&mut em.fb, &x, axes, keep_dims, kind, oshape)])
}

// Shape and layout.

/// `Reshape` to the output shape.
fn emit_reshape(em: &mut Emitter<'_>, o: &Out<'_>) -> Result<Vec<Tv>> {
    let Out {
        id, shape: oshape, ..
    } = *o;
    let x = em.input(id, 0)?;
    Ok(vec![reshape(&mut em.fb, &x, oshape)])
}

/// `Transpose` by an axis permutation.
fn emit_transpose(em: &mut Emitter<'_>, o: &Out<'_>, perm: &[usize]) -> Result<Vec<Tv>> {
    let Out { id, .. } = *o;
    let x = em.input(id, 0)?;
    Ok(vec![transpose(&mut em.fb, &x, perm)])
}

/// `Expand`: broadcast to the output shape.
fn emit_expand(em: &mut Emitter<'_>, o: &Out<'_>) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let x = em.input(id, 0)?;
    Ok(vec![map(&mut em.fb, &[&x], oshape, oelem, &mut |_, a| {
        a[0].clone()
    })])
}

/// `Concat`: each input inserted at its offset along the axis.
fn emit_concat(em: &mut Emitter<'_>, o: &Out<'_>, axis: usize) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let n = em.graph.node(id).inputs.len();
    let mut acc = em.fb.empty(oshape, oelem);
    let mut off = 0;
    for i in 0..n {
        let x = em.input(id, i)?;
        acc = insert_slice(&mut em.fb, &x, &acc, axis, off);
        off += x.shape[axis];
    }
    Ok(vec![acc])
}

/// `Slice` with a positive step and a bound start.
fn emit_slice(
    em: &mut Emitter<'_>,
    o: &Out<'_>,
    axis: usize,
    start: &Dim,
    step: i64,
) -> Result<Vec<Tv>> {
    let Out {
        id, shape: oshape, ..
    } = *o;
    let x = em.input(id, 0)?;
    if step <= 0 {
        return Err(em.err(id, "slices with a non-positive step are not supported"));
    }
    let env = |s: &str| em.dims.get(s).copied();
    let st = start
        .eval(&env)
        .ok_or_else(|| em.err(id, &format!("slice start {start} is not bound")))?;
    Ok(vec![extract_slice(
        &mut em.fb,
        &x,
        axis,
        st,
        oshape[axis],
        step,
    )])
}

/// `Gather` along an axis with integer indices.
fn emit_gather(em: &mut Emitter<'_>, o: &Out<'_>, axis: usize) -> Result<Vec<Tv>> {
    let Out {
        id, shape: oshape, ..
    } = *o;
    let (d, i) = (em.input(id, 0)?, em.input(id, 1)?);
    if i.elem.is_float() {
        return Err(em.err(id, "gather indices must be integers"));
    }
    Ok(vec![gather(&mut em.fb, &d, &i, axis, oshape)])
}

/// `Trilu`: the lower or upper triangle, zero elsewhere.
fn emit_trilu(em: &mut Emitter<'_>, o: &Out<'_>, upper: bool, k: i64) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let x = em.input(id, 0)?;
    let rr = oshape.len();
    if rr < 2 {
        return Err(em.err(id, "Trilu needs rank ≥ 2"));
    }
    let e = x.elem;
    Ok(vec![map(&mut em.fb, &[&x], oshape, oelem, &mut |fb, a| {
        let i = fb.lindex(rr - 2);
        let j = fb.lindex(rr - 1);
        let ii = fb.op1("arith.index_cast", &i, "index to i64");
        let jj = fb.op1("arith.index_cast", &j, "index to i64");
        let diff = fb.op2("arith.subi", &jj, &ii, "i64");
        let kc = fb.cst(k as f64, Elem::I64);
        let keep = fb.cmp(false, if upper { "sge" } else { "sle" }, &diff, &kc, "i64");
        let z = fb.cst(0.0, e);
        fb.select(&keep, &a[0], &z, e.mlir())
    })])
}

// Matmul and attention.

/// `MatMul`: a batched contraction over the last axis of `a`, broadcasting the batch axes.
fn emit_matmul(em: &mut Emitter<'_>, o: &Out<'_>) -> Result<Vec<Tv>> {
    let Out {
        id,
        shape: oshape,
        elem: oelem,
    } = *o;
    let (a, b) = (em.input(id, 0)?, em.input(id, 1)?);
    if a.shape.len() < 2 || b.shape.len() < 2 {
        return Err(em.err(
            id,
            "rank-1 MatMul operands are not supported; reshape to rank 2",
        ));
    }
    let rr = oshape.len();
    let k = a.shape[a.shape.len() - 1];
    let batch = &oshape[..rr - 2];
    let mut aix = bcast(&a.shape[..a.shape.len() - 2], batch);
    aix.extend([Ix::D(rr - 2), Ix::D(rr)]);
    let mut bix = bcast(&b.shape[..b.shape.len() - 2], batch);
    bix.extend([Ix::D(rr), Ix::D(rr - 1)]);
    Ok(vec![em.contract(Contraction {
        a: (&a, aix),
        b: (&b, bix),
        out: oshape.to_vec(),
        k,
        elem: oelem,
    })])
}

trait PairDefault {
    fn unwrap_or_default_pair(self) -> (Vec<i64>, Elem);
}
impl PairDefault for Option<(Vec<i64>, Elem)> {
    fn unwrap_or_default_pair(self) -> (Vec<i64>, Elem) {
        self.unwrap_or((Vec::new(), Elem::F32))
    }
}

/// Elementwise map with NumPy broadcasting of every input to `out`.
pub(crate) fn map(
    fb: &mut Fb,
    ins: &[&Tv],
    out: &[i64],
    elem: Elem,
    body: &mut dyn FnMut(&mut Fb, &[String]) -> String,
) -> Tv {
    let ops: Vec<(&Tv, Vec<Ix>)> = ins.iter().map(|t| (*t, bcast(&t.shape, out))).collect();
    fb.generic(
        &ops,
        out,
        elem,
        None,
        &vec![false; out.len()],
        Init::Empty,
        body,
    )
}

/// `tanh` through `exp` (no device-library call on GPUs).
pub(crate) fn tanh(fb: &mut Fb, x: &str, e: Elem) -> String {
    let two = fb.cst(2.0, e);
    let one = fb.cst(1.0, e);
    let tx = fb.fmul(&two, x, e);
    let ex = fb.exp(&tx, e);
    let d = fb.fadd(&ex, &one, e);
    let q = fb.fdiv(&two, &d, e);
    fb.fsub(&one, &q, e)
}

/// `erf` by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7).
pub(crate) fn erf(fb: &mut Fb, x: &str, e: Elem) -> String {
    let et = e.mlir();
    let ax = fb.math("absf", x, e);
    let p = fb.cst(0.3275911, e);
    let one = fb.cst(1.0, e);
    let px = fb.fmul(&p, &ax, e);
    let den = fb.fadd(&one, &px, e);
    let t = fb.fdiv(&one, &den, e);
    let cs = [
        1.061405429,
        -1.453152027,
        1.421413741,
        -0.284496736,
        0.254829592,
    ];
    let mut poly = fb.cst(cs[0], e);
    for c in &cs[1..] {
        let m = fb.fmul(&poly, &t, e);
        let cc = fb.cst(*c, e);
        poly = fb.fadd(&m, &cc, e);
    }
    poly = fb.fmul(&poly, &t, e);
    let x2 = fb.fmul(&ax, &ax, e);
    let nx2 = fb.op1("arith.negf", &x2, et);
    let ex = fb.exp(&nx2, e);
    let pe = fb.fmul(&poly, &ex, e);
    let y = fb.fsub(&one, &pe, e);
    let z = fb.cst(0.0, e);
    let neg = fb.cmp(true, "olt", x, &z, et);
    let ny = fb.op1("arith.negf", &y, et);
    fb.select(&neg, &ny, &y, et)
}

/// `1/(1+e^-x)`.
pub(crate) fn sigmoid(fb: &mut Fb, x: &str, e: Elem) -> String {
    let nx = fb.op1("arith.negf", x, e.mlir());
    let ex = fb.exp(&nx, e);
    let one = fb.cst(1.0, e);
    let d = fb.fadd(&one, &ex, e);
    fb.fdiv(&one, &d, e)
}

fn unary(fb: &mut Fb, u: UnaryOp, x: &str, e: Elem) -> String {
    let et = e.mlir();
    if !e.is_float() {
        return match u {
            UnaryOp::Neg => {
                let z = fb.cst(0.0, e);
                fb.op2("arith.subi", &z, x, et)
            }
            UnaryOp::Abs => fb.op1("math.absi", x, et),
            UnaryOp::Not => {
                let t = fb.cst(1.0, e);
                fb.op2("arith.xori", x, &t, et)
            }
            _ => x.to_string(),
        };
    }
    match u {
        UnaryOp::Neg => fb.op1("arith.negf", x, et),
        UnaryOp::Exp => fb.exp(x, e),
        UnaryOp::Log => fb.math("log", x, e),
        UnaryOp::Sqrt => fb.math("sqrt", x, e),
        UnaryOp::Rsqrt => {
            let s = fb.math("sqrt", x, e);
            let one = fb.cst(1.0, e);
            fb.fdiv(&one, &s, e)
        }
        UnaryOp::Reciprocal => {
            let one = fb.cst(1.0, e);
            fb.fdiv(&one, x, e)
        }
        UnaryOp::Tanh => tanh(fb, x, e),
        UnaryOp::Sigmoid => sigmoid(fb, x, e),
        UnaryOp::Silu => {
            let s = sigmoid(fb, x, e);
            fb.fmul(x, &s, e)
        }
        UnaryOp::Gelu => {
            let c = fb.cst(std::f64::consts::FRAC_1_SQRT_2, e);
            let xs = fb.fmul(x, &c, e);
            let er = erf(fb, &xs, e);
            let one = fb.cst(1.0, e);
            let half = fb.cst(0.5, e);
            let s = fb.fadd(&one, &er, e);
            let hx = fb.fmul(&half, x, e);
            fb.fmul(&hx, &s, e)
        }
        UnaryOp::GeluTanh => {
            let x3 = fb.fmul(x, x, e);
            let x3 = fb.fmul(&x3, x, e);
            let c = fb.cst(0.044715, e);
            let cx3 = fb.fmul(&c, &x3, e);
            let inner = fb.fadd(x, &cx3, e);
            let k = fb.cst((2.0 / std::f64::consts::PI).sqrt(), e);
            let arg = fb.fmul(&k, &inner, e);
            let th = tanh(fb, &arg, e);
            let one = fb.cst(1.0, e);
            let half = fb.cst(0.5, e);
            let s = fb.fadd(&one, &th, e);
            let hx = fb.fmul(&half, x, e);
            fb.fmul(&hx, &s, e)
        }
        UnaryOp::Relu => {
            let z = fb.cst(0.0, e);
            let p = fb.cmp(true, "ogt", x, &z, et);
            fb.select(&p, x, &z, et)
        }
        UnaryOp::Cos => fb.math("cos", x, e),
        UnaryOp::Sin => fb.math("sin", x, e),
        UnaryOp::Erf => erf(fb, x, e),
        UnaryOp::Abs => fb.math("absf", x, e),
        UnaryOp::Not => x.to_string(),
        UnaryOp::IsNan => fb.cmp(true, "uno", x, x, et),
    }
}

fn binary(fb: &mut Fb, b: BinaryOp, x: &str, y: &str, e: Elem) -> String {
    let et = e.mlir();
    let f = e.is_float();
    let pick = |fl: &'static str, int: &'static str| if f { fl } else { int };
    match b {
        BinaryOp::Add => fb.op2(pick("arith.addf", "arith.addi"), x, y, et),
        BinaryOp::Sub => fb.op2(pick("arith.subf", "arith.subi"), x, y, et),
        BinaryOp::Mul => fb.op2(pick("arith.mulf", "arith.muli"), x, y, et),
        BinaryOp::Div => fb.op2(pick("arith.divf", "arith.divsi"), x, y, et),
        BinaryOp::Pow => fb.powf(x, y, e),
        BinaryOp::Max => fb.op2(pick("arith.maximumf", "arith.maxsi"), x, y, et),
        BinaryOp::Min => fb.op2(pick("arith.minimumf", "arith.minsi"), x, y, et),
        BinaryOp::Equal => fb.cmp(f, pick("oeq", "eq"), x, y, et),
        BinaryOp::Less => fb.cmp(f, pick("olt", "slt"), x, y, et),
        BinaryOp::LessOrEqual => fb.cmp(f, pick("ole", "sle"), x, y, et),
        BinaryOp::Greater => fb.cmp(f, pick("ogt", "sgt"), x, y, et),
        BinaryOp::GreaterOrEqual => fb.cmp(f, pick("oge", "sge"), x, y, et),
        BinaryOp::And => fb.op2("arith.andi", x, y, et),
        BinaryOp::Or => fb.op2("arith.ori", x, y, et),
    }
}

/// Scalar conversion between element types.
pub(crate) fn cast(fb: &mut Fb, x: &str, from: Elem, to: Elem) -> String {
    if from == to {
        return x.to_string();
    }
    let ft = from.mlir();
    let tt = to.mlir();
    let conv = |fb: &mut Fb, op: &str| fb.op1(op, x, &format!("{ft} to {tt}"));
    match (from.is_float(), to.is_float()) {
        (true, true) => {
            if to.bits() > from.bits() || (from.bits() == to.bits()) {
                if from.bits() == to.bits() {
                    let w = fb.op1("arith.extf", x, &format!("{ft} to f32"));
                    fb.op1("arith.truncf", &w, &format!("f32 to {tt}"))
                } else {
                    conv(fb, "arith.extf")
                }
            } else {
                conv(fb, "arith.truncf")
            }
        }
        (false, true) => conv(
            fb,
            if from == Elem::I1 {
                "arith.uitofp"
            } else {
                "arith.sitofp"
            },
        ),
        (true, false) => {
            if to == Elem::I1 {
                let z = fb.cst(0.0, from);
                fb.cmp(true, "une", x, &z, ft)
            } else {
                conv(fb, "arith.fptosi")
            }
        }
        (false, false) => {
            if to == Elem::I1 {
                let z = fb.cst(0.0, from);
                fb.cmp(false, "ne", x, &z, ft)
            } else if to.bits() > from.bits() {
                conv(
                    fb,
                    if from == Elem::I1 {
                        "arith.extui"
                    } else {
                        "arith.extsi"
                    },
                )
            } else {
                conv(fb, "arith.trunci")
            }
        }
    }
}

fn constant(
    em: &mut Emitter<'_>,
    id: NodeId,
    t: &moai_ir::Tensor,
    shape: &[i64],
    elem: Elem,
) -> Result<Tv> {
    let n = em.fb.fresh("k");
    let ty = tensor_ty(shape, elem);
    let numel: i64 = shape.iter().product();
    if t.numel() as i64 != numel {
        return Err(em.err(
            id,
            &format!(
                "constant has {} elements, its type {ty} needs {numel}",
                t.numel()
            ),
        ));
    }
    let vals = t.to_f64_vec();
    let dense = if elem == Elem::I1 {
        format!(
            "[{}]",
            vals.iter()
                .map(|v| if *v != 0.0 { "true" } else { "false" })
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        let mut hex = String::from("\"0x");
        for v in &vals {
            let bytes: Vec<u8> = match (elem, &t.data) {
                (Elem::F32, _) => (*v as f32).to_le_bytes().to_vec(),
                (Elem::F64, _) => v.to_le_bytes().to_vec(),
                (Elem::I64, TensorData::I64(_)) | (Elem::I64, _) => {
                    (*v as i64).to_le_bytes().to_vec()
                }
                (Elem::I32, _) => (*v as i32).to_le_bytes().to_vec(),
                (Elem::I8, _) => (*v as i8).to_le_bytes().to_vec(),
                (Elem::BF16 | Elem::F16, _) => {
                    let lit = super::builder::float_lit(*v, elem);
                    let bits = u16::from_str_radix(&lit[2..], 16).unwrap_or(0);
                    bits.to_le_bytes().to_vec()
                }
                (Elem::I1, _) => vec![(*v != 0.0) as u8],
            };
            for b in bytes {
                hex.push_str(&format!("{b:02X}"));
            }
        }
        hex.push('"');
        hex
    };
    // integer data held as i64 keeps exact values above 2^53
    let dense = match (&t.data, elem) {
        (TensorData::I64(v), Elem::I64) => {
            let mut hex = String::from("\"0x");
            for x in v {
                for b in x.to_le_bytes() {
                    hex.push_str(&format!("{b:02X}"));
                }
            }
            hex.push('"');
            hex
        }
        _ => dense,
    };
    if numel == 0 {
        return Ok(em.fb.empty(shape, elem));
    }
    em.fb
        .line(format!("{n} = arith.constant dense<{dense}> : {ty}"));
    Ok(Tv {
        name: n,
        shape: shape.to_vec(),
        elem,
    })
}

/// Reduction over `axes` into `out` (shape with or without kept dims).
pub(crate) fn reduce(
    fb: &mut Fb,
    x: &Tv,
    axes: &[usize],
    keep: bool,
    kind: ReduceKind,
    out: &[i64],
) -> Tv {
    let e = x.elem;
    let f = e.is_float();
    let rank = x.shape.len();
    let red: Vec<bool> = (0..rank).map(|i| axes.contains(&i)).collect();
    let out_ix: Vec<Ix> = (0..rank)
        .filter_map(|i| {
            if axes.contains(&i) {
                if keep { Some(Ix::C(0)) } else { None }
            } else {
                Some(Ix::D(i))
            }
        })
        .collect();
    let init = match kind {
        ReduceKind::Sum | ReduceKind::Mean => 0.0,
        ReduceKind::Prod => 1.0,
        ReduceKind::Max => f64::NEG_INFINITY,
        ReduceKind::Min => f64::INFINITY,
    };
    let et = e.mlir();
    let r = fb.generic(
        &[(x, ident(rank))],
        out,
        e,
        Some(out_ix),
        &red,
        Init::Fill(init),
        &mut |fb, a| match kind {
            ReduceKind::Sum | ReduceKind::Mean => fb.op2(
                if f { "arith.addf" } else { "arith.addi" },
                &a[1],
                &a[0],
                et,
            ),
            ReduceKind::Prod => fb.op2(
                if f { "arith.mulf" } else { "arith.muli" },
                &a[1],
                &a[0],
                et,
            ),
            ReduceKind::Max => fb.op2(
                if f { "arith.maximumf" } else { "arith.maxsi" },
                &a[1],
                &a[0],
                et,
            ),
            ReduceKind::Min => fb.op2(
                if f { "arith.minimumf" } else { "arith.minsi" },
                &a[1],
                &a[0],
                et,
            ),
        },
    );
    if kind == ReduceKind::Mean {
        let count: i64 = axes.iter().map(|a| x.shape[*a]).product();
        return map(fb, &[&r], out, e, &mut |fb, a| {
            let c = fb.cst(count as f64, e);
            if f {
                fb.fdiv(&a[0], &c, e)
            } else {
                fb.op2("arith.divsi", &a[0], &c, et)
            }
        });
    }
    r
}

/// Max or sum along one axis, keeping it as size 1.
pub(crate) fn reduce_axis(fb: &mut Fb, x: &Tv, axis: usize, kind: ReduceKind) -> Tv {
    let mut out = x.shape.clone();
    out[axis] = 1;
    reduce(fb, x, &[axis], true, kind, &out)
}

/// Softmax (or log-softmax) along an axis.
pub(crate) fn softmax(fb: &mut Fb, x: &Tv, axis: usize, log: bool) -> Tv {
    let e = x.elem;
    let m = reduce_axis(fb, x, axis, ReduceKind::Max);
    let ex = map(fb, &[x, &m], &x.shape, e, &mut |fb, a| {
        let d = fb.fsub(&a[0], &a[1], e);
        fb.exp(&d, e)
    });
    let s = reduce_axis(fb, &ex, axis, ReduceKind::Sum);
    if log {
        map(fb, &[x, &m, &s], &x.shape, e, &mut |fb, a| {
            let d = fb.fsub(&a[0], &a[1], e);
            let l = fb.math("log", &a[2], e);
            fb.fsub(&d, &l, e)
        })
    } else {
        map(fb, &[&ex, &s], &x.shape, e, &mut |fb, a| {
            fb.fdiv(&a[0], &a[1], e)
        })
    }
}

/// Reshape through a rank-1 (or rank-0) intermediate.
pub(crate) fn reshape(fb: &mut Fb, x: &Tv, out: &[i64]) -> Tv {
    if x.shape == out {
        return x.clone();
    }
    let e = x.elem;
    let n: i64 = x.shape.iter().product();
    let flat = if x.shape.len() == 1 {
        x.clone()
    } else if x.shape.is_empty() {
        let r = fb.fresh("rs");
        let t = Tv {
            name: r.clone(),
            shape: vec![1],
            elem: e,
        };
        fb.line(format!(
            "{r} = tensor.expand_shape {} [] output_shape [1] : {} into {}",
            x.name,
            x.ty(),
            t.ty()
        ));
        t
    } else {
        let r = fb.fresh("rs");
        let t = Tv {
            name: r.clone(),
            shape: vec![n],
            elem: e,
        };
        let grp = (0..x.shape.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        fb.line(format!(
            "{r} = tensor.collapse_shape {} [[{grp}]] : {} into {}",
            x.name,
            x.ty(),
            t.ty()
        ));
        t
    };
    if out.len() == 1 {
        return flat;
    }
    let r = fb.fresh("rs");
    let t = Tv {
        name: r.clone(),
        shape: out.to_vec(),
        elem: e,
    };
    if out.is_empty() {
        fb.line(format!(
            "{r} = tensor.collapse_shape {} [] : {} into {}",
            flat.name,
            flat.ty(),
            t.ty()
        ));
    } else {
        let grp = (0..out.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let os = out
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        fb.line(format!(
            "{r} = tensor.expand_shape {} [[{grp}]] output_shape [{os}] : {} into {}",
            flat.name,
            flat.ty(),
            t.ty()
        ));
    }
    t
}

/// `linalg.transpose` (`out[i] = in[perm[i]]`).
pub(crate) fn transpose(fb: &mut Fb, x: &Tv, perm: &[usize]) -> Tv {
    if perm.iter().enumerate().all(|(i, p)| i == *p) {
        return x.clone();
    }
    let out: Vec<i64> = perm.iter().map(|p| x.shape[*p]).collect();
    let e = fb.empty(&out, x.elem);
    let r = fb.fresh("tr");
    let t = Tv {
        name: r.clone(),
        shape: out,
        elem: x.elem,
    };
    let ps = perm
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    fb.line(format!(
        "{r} = linalg.transpose ins({} : {}) outs({} : {}) permutation = [{ps}]",
        x.name,
        x.ty(),
        e.name,
        e.ty()
    ));
    t
}

/// `tensor.insert_slice` of `x` into `dst` at offset `off` along `axis`.
pub(crate) fn insert_slice(fb: &mut Fb, x: &Tv, dst: &Tv, axis: usize, off: i64) -> Tv {
    let r = fb.fresh("ins");
    let offs: Vec<String> = (0..x.shape.len())
        .map(|i| {
            if i == axis {
                off.to_string()
            } else {
                "0".into()
            }
        })
        .collect();
    let sizes: Vec<String> = x.shape.iter().map(|d| d.to_string()).collect();
    let ones = vec!["1"; x.shape.len()].join(", ");
    fb.line(format!(
        "{r} = tensor.insert_slice {} into {}[{}] [{}] [{ones}] : {} into {}",
        x.name,
        dst.name,
        offs.join(", "),
        sizes.join(", "),
        x.ty(),
        dst.ty()
    ));
    Tv {
        name: r,
        shape: dst.shape.clone(),
        elem: dst.elem,
    }
}

/// `tensor.extract_slice` along one axis.
pub(crate) fn extract_slice(
    fb: &mut Fb,
    x: &Tv,
    axis: usize,
    start: i64,
    len: i64,
    step: i64,
) -> Tv {
    let mut out = x.shape.clone();
    out[axis] = len;
    let r = fb.fresh("sl");
    let offs: Vec<String> = (0..x.shape.len())
        .map(|i| {
            if i == axis {
                start.to_string()
            } else {
                "0".into()
            }
        })
        .collect();
    let sizes: Vec<String> = out.iter().map(|d| d.to_string()).collect();
    let strides: Vec<String> = (0..x.shape.len())
        .map(|i| {
            if i == axis {
                step.to_string()
            } else {
                "1".into()
            }
        })
        .collect();
    let t = Tv {
        name: r.clone(),
        shape: out,
        elem: x.elem,
    };
    fb.line(format!(
        "{r} = tensor.extract_slice {}[{}] [{}] [{}] : {} to {}",
        x.name,
        offs.join(", "),
        sizes.join(", "),
        strides.join(", "),
        x.ty(),
        t.ty()
    ));
    t
}

/// Gather along `axis` with an integer index tensor (negative indices count from the end).
pub(crate) fn gather(fb: &mut Fb, data: &Tv, idx: &Tv, axis: usize, out: &[i64]) -> Tv {
    let ri = idx.shape.len();
    let ix: Vec<Ix> = (0..ri).map(|i| Ix::D(axis + i)).collect();
    let rd = data.shape.len();
    let dim = data.shape[axis];
    let (dname, dty) = (data.name.clone(), data.ty());
    let ie = idx.elem;
    fb.generic(
        &[(idx, ix)],
        out,
        data.elem,
        None,
        &vec![false; out.len()],
        Init::Empty,
        &mut |fb, a| {
            let i64v = cast(fb, &a[0], ie, Elem::I64);
            let z = fb.cst(0.0, Elem::I64);
            let dc = fb.cst(dim as f64, Elem::I64);
            let neg = fb.cmp(false, "slt", &i64v, &z, "i64");
            let wrapped = fb.op2("arith.addi", &i64v, &dc, "i64");
            let fixed = fb.select(&neg, &wrapped, &i64v, "i64");
            let gi = fb.op1("arith.index_cast", &fixed, "i64 to index");
            let mut coords = Vec::new();
            for d in 0..rd {
                if d < axis {
                    coords.push(fb.lindex(d));
                } else if d == axis {
                    coords.push(gi.clone());
                } else {
                    coords.push(fb.lindex(d - 1 + ri));
                }
            }
            let v = fb.fresh("x");
            fb.line(format!(
                "{v} = tensor.extract {dname}[{}] : {dty}",
                coords.join(", ")
            ));
            v
        },
    )
}
