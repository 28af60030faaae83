//! Shape and data-movement ops. On known values (shape vectors) they fold at import time; on graph values
//! they become canonical nodes with symbolic output shapes.

use super::super::ctx::{Ctx, Outs, Val, norm_axis};
use super::super::known::{KData, Known, MAX_FOLD, broadcast_index, strides};
use super::super::proto::{self, attr, attr_i, attr_ints};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::Value;
use crate::op::Op;
use crate::shape::{Shape, TensorType};
use onnx_protobuf::NodeProto;
use std::rc::Rc;

const BIG: i64 = i64::MAX / 2;

fn kval(k: Known) -> Val {
    Val::K(Rc::new(k))
}

fn concrete(shape: &Shape) -> Option<Vec<usize>> {
    shape
        .as_consts()
        .map(|v| v.into_iter().map(|d| d as usize).collect())
}

/// `Constant`.
pub(crate) fn constant(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    if let Some(a) = attr(node, "value") {
        let t = a.t.as_ref().ok_or("`value` attribute without a tensor")?;
        if proto::external_ref(t).is_some() {
            return Err("Constant with external data is not supported".into());
        }
        let t = proto::decode_tensor(t)?;
        if t.numel() <= MAX_FOLD {
            return Ok(vec![kval(Known::from_tensor(&t))]);
        }
        let ty = super::super::ctx::tensor_type_of(&t);
        return Ok(vec![Val::T(cx.add(Op::Constant(t), vec![], ty))]);
    }
    if let Some(a) = attr(node, "value_float") {
        return Ok(vec![kval(Known {
            dtype: DType::F32,
            shape: vec![],
            data: KData::Float(vec![a.f as f64]),
        })]);
    }
    if let Some(a) = attr(node, "value_floats") {
        let v: Vec<f64> = a.floats.iter().map(|x| *x as f64).collect();
        return Ok(vec![kval(Known {
            dtype: DType::F32,
            shape: vec![v.len()],
            data: KData::Float(v),
        })]);
    }
    if let Some(a) = attr(node, "value_int") {
        return Ok(vec![kval(Known::scalar_dim(Dim::constant(a.i)))]);
    }
    if let Some(a) = attr(node, "value_ints") {
        return Ok(vec![kval(Known::dims(
            a.ints.iter().map(|x| Dim::constant(*x)).collect(),
        ))]);
    }
    Err("Constant without a supported value attribute (value, value_float(s), value_int(s))".into())
}

/// `Shape` (with `start`/`end`).
pub(crate) fn shape(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let dims: Vec<Dim> = match cx.req(node, 0)? {
        Val::K(k) => k.shape.iter().map(|d| Dim::constant(*d as i64)).collect(),
        Val::T(v) => cx.shape(v).0,
        Val::Seq { .. } => return Err("Shape of a sequence".into()),
    };
    let r = dims.len() as i64;
    let clamp = |x: i64| if x < 0 { (x + r).max(0) } else { x.min(r) } as usize;
    let start = clamp(attr_i(node, "start").unwrap_or(0));
    let end = clamp(attr_i(node, "end").unwrap_or(r));
    Ok(vec![kval(Known::dims(
        dims[start..end.max(start)].to_vec(),
    ))])
}

/// `Size`.
pub(crate) fn size(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let n = match cx.req(node, 0)? {
        Val::K(k) => Dim::constant(k.numel() as i64),
        Val::T(v) => cx.shape(v).numel(),
        Val::Seq { .. } => return Err("Size of a sequence".into()),
    };
    Ok(vec![kval(Known::scalar_dim(n))])
}

/// `ConstantOfShape`.
pub(crate) fn constant_of_shape(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let dims = cx
        .req_known(node, 0, "shape")?
        .as_dims()
        .ok_or("shape must be integers")?;
    let fill = match attr(node, "value").and_then(|a| a.t.as_ref()) {
        Some(t) => Known::from_tensor(&proto::decode_tensor(t)?),
        None => Known {
            dtype: DType::F32,
            shape: vec![1],
            data: KData::Float(vec![0.0]),
        },
    };
    let consts: Option<Vec<usize>> = dims
        .iter()
        .map(|d| d.as_const().map(|c| c as usize))
        .collect();
    if let Some(s) = &consts {
        let n: usize = s.iter().product();
        if n <= MAX_FOLD {
            return Ok(vec![kval(fill.gather_flat(&vec![0; n], s.clone()))]);
        }
    }
    let scalar = cx.constant(&fill.reshaped(vec![]))?;
    let ty = TensorType::new(fill.dtype, Shape(dims.clone()));
    Ok(vec![Val::T(cx.add(
        Op::Expand(Shape(dims)),
        vec![scalar],
        ty,
    ))])
}

/// `Gather`.
pub(crate) fn gather(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let axis_attr = attr_i(node, "axis").unwrap_or(0);
    if let (Some(data), Some(idx)) = (cx.known(node, 0)?, cx.known(node, 1)?) {
        let axis = norm_axis(axis_attr, data.shape.len())?;
        let ids = idx
            .as_ints()
            .ok_or("Gather indices must be constant integers")?;
        let n = data.shape[axis] as i64;
        let ids: Vec<usize> = ids
            .iter()
            .map(|i| {
                let j = if *i < 0 { i + n } else { *i };
                if (0..n).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!("index {i} out of range for axis of size {n}"))
                }
            })
            .collect::<Result<_, _>>()?;
        let outer: usize = data.shape[..axis].iter().product();
        let inner: usize = data.shape[axis + 1..].iter().product();
        let mut flat = Vec::new();
        for o in 0..outer {
            for i in &ids {
                for k in 0..inner {
                    flat.push((o * data.shape[axis] + i) * inner + k);
                }
            }
        }
        let mut shape = data.shape[..axis].to_vec();
        shape.extend(&idx.shape);
        shape.extend(&data.shape[axis + 1..]);
        return Ok(vec![kval(data.gather_flat(&flat, shape))]);
    }
    let data = cx.tensor(node, 0)?;
    let idx = cx.tensor(node, 1)?;
    let (td, ti) = (cx.ty(data), cx.ty(idx));
    if ti.dtype.is_float() {
        return Err("Gather indices must be integers".into());
    }
    let axis = norm_axis(axis_attr, td.shape.rank())?;
    let mut dims = td.shape.0[..axis].to_vec();
    dims.extend(ti.shape.0.iter().cloned());
    dims.extend(td.shape.0[axis + 1..].iter().cloned());
    Ok(vec![Val::T(cx.add(
        Op::Gather { axis },
        vec![data, idx],
        TensorType::new(td.dtype, Shape(dims)),
    ))])
}

/// `Concat`.
pub(crate) fn concat(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let axis_attr = attr_i(node, "axis").ok_or("missing attribute `axis`")?;
    let mut knowns = Vec::new();
    for i in 0..node.input.len() {
        match cx.known(node, i)? {
            Some(k) => knowns.push(k),
            None => break,
        }
    }
    if knowns.len() == node.input.len() && !knowns.is_empty() {
        let rank = knowns[0].shape.len();
        let axis = norm_axis(axis_attr, rank)?;
        let outer: usize = knowns[0].shape[..axis].iter().product();
        let mut shape = knowns[0].shape.clone();
        shape[axis] = knowns
            .iter()
            .map(|k| k.shape.get(axis).copied().unwrap_or(0))
            .sum();
        let mut data: Option<KData> = None;
        for o in 0..outer {
            for k in &knowns {
                let chunk: usize = k.shape[axis..].iter().product();
                let idx: Vec<usize> = (o * chunk..(o + 1) * chunk).collect();
                let part = k
                    .gather_flat(&idx, vec![idx.len()])
                    .cast(knowns[0].dtype)?
                    .data;
                data = Some(match (data, part) {
                    (None, p) => p,
                    (Some(KData::Int(mut a)), KData::Int(b)) => {
                        a.extend(b);
                        KData::Int(a)
                    }
                    (Some(KData::Float(mut a)), KData::Float(b)) => {
                        a.extend(b);
                        KData::Float(a)
                    }
                    (Some(KData::Bool(mut a)), KData::Bool(b)) => {
                        a.extend(b);
                        KData::Bool(a)
                    }
                    _ => return Err("Concat of mixed element types".into()),
                });
            }
        }
        let data = data.unwrap_or(KData::Int(vec![]));
        return Ok(vec![kval(Known {
            dtype: knowns[0].dtype,
            shape,
            data,
        })]);
    }
    let vals: Vec<Value> = (0..node.input.len())
        .map(|i| cx.tensor(node, i))
        .collect::<Result<_, _>>()?;
    let t0 = cx.ty(vals[0]);
    let axis = norm_axis(axis_attr, t0.shape.rank())?;
    let mut dims = t0.shape.0.clone();
    let mut total = Dim::constant(0);
    for v in &vals {
        let s = cx.shape(*v);
        if s.rank() != dims.len() {
            return Err(format!(
                "Concat inputs of different ranks: {} and {}",
                t0.shape, s
            ));
        }
        total = total.add(&s.0[axis]);
    }
    dims[axis] = total;
    Ok(vec![Val::T(cx.add(
        Op::Concat { axis },
        vals,
        TensorType::new(t0.dtype, Shape(dims)),
    ))])
}

fn axes_of(cx: &mut Ctx, node: &NodeProto, i: usize) -> Result<Option<Vec<i64>>, String> {
    if let Some(a) = attr_ints(node, "axes") {
        return Ok(Some(a));
    }
    match cx.input(node, i)? {
        None => Ok(None),
        Some(Val::K(k)) => Ok(Some(k.as_ints().ok_or("axes must be constant integers")?)),
        Some(_) => Err("axes must be known at import time".into()),
    }
}

/// Reshapes a value (known or graph) to a symbolic shape; identity reshapes vanish.
fn reshape_to(cx: &mut Ctx, v: Val, dims: Vec<Dim>) -> Result<Val, String> {
    match v {
        Val::K(k) => {
            let shape: Vec<usize> = dims
                .iter()
                .map(|d| {
                    d.as_const()
                        .map(|c| c as usize)
                        .ok_or("symbolic shape for a known value")
                })
                .collect::<Result<_, _>>()?;
            if shape.iter().product::<usize>() != k.numel() {
                return Err(format!("cannot reshape {:?} to {:?}", k.shape, shape));
            }
            Ok(kval(k.reshaped(shape)))
        }
        Val::T(x) => {
            let ty = cx.ty(x);
            if ty.shape.0 == dims {
                return Ok(Val::T(x));
            }
            let shape = Shape(dims);
            Ok(Val::T(cx.add(
                Op::Reshape(shape.clone()),
                vec![x],
                TensorType::new(ty.dtype, shape),
            )))
        }
        Val::Seq { .. } => Err("cannot reshape a sequence".into()),
    }
}

fn dims_of(cx: &Ctx, v: &Val) -> Result<Vec<Dim>, String> {
    match v {
        Val::K(k) => Ok(k.shape.iter().map(|d| Dim::constant(*d as i64)).collect()),
        Val::T(x) => Ok(cx.shape(*x).0),
        Val::Seq { .. } => Err("expected a tensor, got a sequence".into()),
    }
}

/// `Unsqueeze`.
pub(crate) fn unsqueeze(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let mut dims = dims_of(cx, &x)?;
    let axes = axes_of(cx, node, 1)?.ok_or("Unsqueeze needs axes")?;
    let r = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|a| norm_axis(*a, r))
        .collect::<Result<_, _>>()?;
    axes.sort();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!(
            "Unsqueeze axes {axes:?} repeat an axis (ONNX requires them unique)"
        ));
    }
    // Unique axes in [0, r), inserted in ascending order, always fit.
    for a in axes {
        dims.insert(a, Dim::constant(1));
    }
    Ok(vec![reshape_to(cx, x, dims)?])
}

/// `Squeeze`.
pub(crate) fn squeeze(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let one = Dim::constant(1);
    let axes: Vec<usize> = match axes_of(cx, node, 1)? {
        Some(a) => a
            .iter()
            .map(|a| norm_axis(*a, dims.len()))
            .collect::<Result<_, _>>()?,
        None => (0..dims.len()).filter(|i| dims[*i] == one).collect(),
    };
    for a in &axes {
        if dims[*a] != one {
            return Err(format!("cannot squeeze axis {a} of size {}", dims[*a]));
        }
    }
    let out = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, d)| d.clone())
        .collect();
    Ok(vec![reshape_to(cx, x, out)?])
}

/// `Reshape` (with `0` = copy and `-1` = infer).
pub(crate) fn reshape(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let target = cx
        .req_known(node, 1, "shape")?
        .as_dims()
        .ok_or("shape must be integers")?;
    let allow_zero = attr_i(node, "allowzero").unwrap_or(0) != 0;
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, d) in target.iter().enumerate() {
        match d.as_const() {
            Some(0) if !allow_zero => out.push(
                dims.get(i)
                    .cloned()
                    .ok_or("0 in shape beyond the input's rank")?,
            ),
            Some(-1) => {
                if infer.replace(i).is_some() {
                    return Err("more than one -1 in shape".into());
                }
                out.push(Dim::constant(1));
            }
            Some(c) if c < 0 => return Err(format!("invalid dim {c} in shape")),
            _ => out.push(d.clone()),
        }
    }
    let numel = dims.iter().fold(Dim::constant(1), |a, d| a.mul(d));
    if let Some(i) = infer {
        let rest = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .fold(Dim::constant(1), |a, (_, d)| a.mul(d));
        let q = numel.floor_div(&rest);
        if q.mul(&rest) != numel {
            return Err(format!(
                "cannot infer -1: {numel} elements are not a multiple of {rest}"
            ));
        }
        out[i] = q;
    } else {
        let total = out.iter().fold(Dim::constant(1), |a, d| a.mul(d));
        if total != numel && total.sub(&numel).as_const().is_some() {
            return Err(format!(
                "cannot reshape {} elements to {}",
                numel,
                Shape(out.clone())
            ));
        }
    }
    Ok(vec![reshape_to(cx, x, out)?])
}

/// `Flatten`.
pub(crate) fn flatten(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let axis = attr_i(node, "axis").unwrap_or(1);
    let a = if axis < 0 {
        axis + dims.len() as i64
    } else {
        axis
    } as usize;
    let prod = |s: &[Dim]| s.iter().fold(Dim::constant(1), |acc, d| acc.mul(d));
    let out = vec![
        prod(&dims[..a.min(dims.len())]),
        prod(&dims[a.min(dims.len())..]),
    ];
    Ok(vec![reshape_to(cx, x, out)?])
}

/// `Expand`.
pub(crate) fn expand(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let target = cx
        .req_known(node, 1, "shape")?
        .as_dims()
        .ok_or("shape must be integers")?;
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let out = super::super::ctx::broadcast(&Shape(dims.clone()), &Shape(target))?;
    match x {
        Val::K(k) => {
            if let Some(s) = concrete(&out)
                && s.iter().product::<usize>() <= MAX_FOLD
            {
                let idx = broadcast_index(&k.shape, &s);
                return Ok(vec![kval(k.gather_flat(&idx, s))]);
            }
            let v = cx.tensor(node, 0)?;
            let ty = TensorType::new(k.dtype, out.clone());
            Ok(vec![Val::T(cx.add(Op::Expand(out), vec![v], ty))])
        }
        Val::T(v) => {
            if out.0 == dims {
                return Ok(vec![Val::T(v)]);
            }
            let ty = TensorType::new(cx.ty(v).dtype, out.clone());
            Ok(vec![Val::T(cx.add(Op::Expand(out), vec![v], ty))])
        }
        Val::Seq { .. } => Err("cannot expand a sequence".into()),
    }
}

/// Clamps a slice bound against a dim (ONNX semantics, positive step).
fn clamp_bound(b: &Dim, d: &Dim) -> Dim {
    match b.as_const() {
        Some(c) if c >= BIG => d.clone(),
        Some(c) if c <= -BIG => Dim::constant(0),
        Some(c) if c < 0 => d.add(&Dim::constant(c)).maximum(&Dim::constant(0)),
        _ => b.minimum(d),
    }
}

/// `Slice`.
pub(crate) fn slice(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let starts = cx
        .req_known(node, 1, "starts")?
        .as_dims()
        .ok_or("starts must be integers")?;
    let ends = cx
        .req_known(node, 2, "ends")?
        .as_dims()
        .ok_or("ends must be integers")?;
    let axes: Vec<usize> = match cx.known(node, 3)? {
        Some(k) => k
            .as_ints()
            .ok_or("axes must be constant")?
            .iter()
            .map(|a| norm_axis(*a, dims.len()))
            .collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps: Vec<i64> = match cx.known(node, 4)? {
        Some(k) => k.as_ints().ok_or("steps must be constant")?,
        None => vec![1; starts.len()],
    };
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    match x {
        Val::K(k) => {
            let mut cur = (*k).clone();
            for j in 0..axes.len() {
                cur = slice_known(&cur, axes[j], &starts[j], &ends[j], steps[j])?;
            }
            Ok(vec![kval(cur)])
        }
        Val::T(mut v) => {
            for j in 0..axes.len() {
                let step = steps[j];
                if step <= 0 {
                    return Err(format!(
                        "step {step} is not supported on tensors (positive steps only)"
                    ));
                }
                let ty = cx.ty(v);
                let d = &ty.shape.0[axes[j]];
                let start = clamp_bound(&starts[j], d);
                let end = clamp_bound(&ends[j], d).maximum(&start);
                if start.as_const() == Some(0) && end == *d && step == 1 {
                    continue;
                }
                let len = end
                    .sub(&start)
                    .add(&Dim::constant(step - 1))
                    .floor_div(&Dim::constant(step));
                let mut shape = ty.shape.clone();
                shape.0[axes[j]] = len;
                v = cx.add(
                    Op::Slice {
                        axis: axes[j],
                        start,
                        end,
                        step,
                    },
                    vec![v],
                    TensorType::new(ty.dtype, shape),
                );
            }
            Ok(vec![Val::T(v)])
        }
        Val::Seq { .. } => Err("cannot slice a sequence".into()),
    }
}

fn slice_known(k: &Known, axis: usize, start: &Dim, end: &Dim, step: i64) -> Result<Known, String> {
    let (s, e) = (
        start
            .as_const()
            .ok_or("symbolic slice bound on a known value")?,
        end.as_const()
            .ok_or("symbolic slice bound on a known value")?,
    );
    let n = k.shape[axis] as i64;
    if step == 0 {
        return Err("slice step 0".into());
    }
    let norm = |x: i64, lo: i64, hi: i64| {
        if x < 0 {
            (x + n).clamp(lo, hi)
        } else {
            x.clamp(lo, hi)
        }
    };
    let picks: Vec<usize> = if step > 0 {
        let (a, b) = (norm(s, 0, n), norm(e, 0, n));
        (a..b).step_by(step as usize).map(|i| i as usize).collect()
    } else {
        let (a, b) = (norm(s, -1, n - 1), norm(e, -1, n - 1));
        let mut v = Vec::new();
        let mut i = a;
        while i > b {
            v.push(i as usize);
            i += step;
        }
        v
    };
    let st = strides(&k.shape);
    let mut shape = k.shape.clone();
    shape[axis] = picks.len();
    let outer: usize = k.shape[..axis].iter().product();
    let inner = st[axis];
    let mut flat = Vec::new();
    for o in 0..outer {
        for p in &picks {
            for i in 0..inner {
                flat.push(o * k.shape[axis] * inner + p * inner + i);
            }
        }
    }
    Ok(k.gather_flat(&flat, shape))
}

/// `Range`.
pub(crate) fn range(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let s = cx.req_known(node, 0, "start")?;
    let l = cx.req_known(node, 1, "limit")?;
    let d = cx.req_known(node, 2, "delta")?;
    let dtype = s.dtype;
    if dtype.is_float() {
        let (a, b, c) = (s.scalar_f64(), l.scalar_f64(), d.scalar_f64());
        if let (Some(a), Some(b), Some(c)) = (a, b, c) {
            let n = (((b - a) / c).ceil().max(0.0)) as usize;
            if n <= MAX_FOLD {
                return Ok(vec![kval(Known {
                    dtype,
                    shape: vec![n],
                    data: KData::Float((0..n).map(|i| a + c * i as f64).collect()),
                })]);
            }
        }
        let (a, b, c) = (s.as_dims(), l.as_dims(), d.as_ints());
        let (Some(a), Some(b), Some(c)) = (a, b, c) else {
            return Err("float Range with symbolic bounds needs integral values".into());
        };
        return range_node(cx, a[0].clone(), b[0].clone(), c[0], dtype);
    }
    let a = s
        .as_dims()
        .and_then(|v| v.first().cloned())
        .ok_or("start must be a scalar")?;
    let b = l
        .as_dims()
        .and_then(|v| v.first().cloned())
        .ok_or("limit must be a scalar")?;
    let c = d
        .as_ints()
        .and_then(|v| v.first().copied())
        .ok_or("delta must be a constant scalar")?;
    if c == 0 {
        return Err("Range delta is 0".into());
    }
    if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
        let n = ((y - x) as f64 / c as f64).ceil().max(0.0) as usize;
        if n <= MAX_FOLD {
            return Ok(vec![kval(Known {
                dtype,
                shape: vec![n],
                data: KData::Int((0..n).map(|i| Dim::constant(x + c * i as i64)).collect()),
            })]);
        }
    }
    range_node(cx, a, b, c, dtype)
}

fn range_node(cx: &mut Ctx, start: Dim, end: Dim, step: i64, dtype: DType) -> Result<Outs, String> {
    if step <= 0 {
        return Err("symbolic Range needs a positive step".into());
    }
    let len = end
        .sub(&start)
        .add(&Dim::constant(step - 1))
        .floor_div(&Dim::constant(step))
        .maximum(&Dim::constant(0));
    let ty = TensorType::new(dtype, Shape(vec![len]));
    Ok(vec![Val::T(cx.add(
        Op::Range {
            start,
            end,
            step,
            dtype,
        },
        vec![],
        ty,
    ))])
}

/// `Transpose`.
pub(crate) fn transpose(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.req(node, 0)?;
    let dims = dims_of(cx, &x)?;
    let r = dims.len();
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        Some(p) => p
            .iter()
            .map(|a| norm_axis(*a, r))
            .collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|p| std::mem::replace(&mut seen[*p], true)) {
        return Err(format!("perm {perm:?} is not a permutation of rank {r}"));
    }
    if perm.iter().enumerate().all(|(i, p)| i == *p) {
        return Ok(vec![x]);
    }
    let out: Vec<Dim> = perm.iter().map(|p| dims[*p].clone()).collect();
    match x {
        Val::K(k) => {
            let st = strides(&k.shape);
            let oshape: Vec<usize> = perm.iter().map(|p| k.shape[*p]).collect();
            let ost = strides(&oshape);
            let flat: Vec<usize> = (0..k.numel())
                .map(|f| {
                    (0..r)
                        .map(|i| ((f / ost[i]) % oshape[i]) * st[perm[i]])
                        .sum()
                })
                .collect();
            Ok(vec![kval(k.gather_flat(&flat, oshape))])
        }
        Val::T(v) => {
            let dtype = cx.ty(v).dtype;
            Ok(vec![Val::T(cx.add(
                Op::Transpose(perm),
                vec![v],
                TensorType::new(dtype, Shape(out)),
            ))])
        }
        Val::Seq { .. } => Err("cannot transpose a sequence".into()),
    }
}

/// Split boundaries along a dim from a `split` input (sizes or one chunk size) or equal parts.
fn split_parts(
    dim: &Dim,
    split: Option<&Known>,
    parts: Option<usize>,
) -> Result<Vec<(Dim, Dim)>, String> {
    let sizes: Vec<Dim> = match split {
        Some(k) if !k.shape.is_empty() => k.as_dims().ok_or("split sizes must be integers")?,
        Some(k) => {
            let c = k
                .as_ints()
                .and_then(|v| v.first().copied())
                .ok_or("split size must be constant")?;
            let n = dim.as_const().ok_or("scalar split of a symbolic dim")?;
            if c <= 0 {
                return Err(format!("split size {c}"));
            }
            let mut v = vec![Dim::constant(c); (n / c) as usize];
            if n % c != 0 {
                v.push(Dim::constant(n % c));
            }
            v
        }
        None => {
            let p = parts.ok_or("split needs sizes or a number of outputs")?;
            let n = dim.as_const().ok_or("equal split of a symbolic dim")?;
            let c = (n + p as i64 - 1) / p as i64;
            (0..p)
                .map(|i| Dim::constant(c.min(n - c * i as i64).max(0)))
                .collect()
        }
    };
    let mut out = Vec::new();
    let mut at = Dim::constant(0);
    for s in sizes {
        let next = at.add(&s);
        out.push((at, next.clone()));
        at = next;
    }
    if at != *dim {
        return Err(format!("split sizes add up to {at}, the axis has {dim}"));
    }
    Ok(out)
}

fn slice_part(
    cx: &mut Ctx,
    v: Value,
    axis: usize,
    part: &(Dim, Dim),
    squeeze: bool,
) -> Result<Val, String> {
    let ty = cx.ty(v);
    let mut shape = ty.shape.clone();
    shape.0[axis] = part.1.sub(&part.0);
    let s = cx.add(
        Op::Slice {
            axis,
            start: part.0.clone(),
            end: part.1.clone(),
            step: 1,
        },
        vec![v],
        TensorType::new(ty.dtype, shape.clone()),
    );
    if squeeze {
        shape.0.remove(axis);
        return reshape_to(cx, Val::T(s), shape.0);
    }
    Ok(Val::T(s))
}

/// `Split`.
pub(crate) fn split(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let v = cx.tensor(node, 0)?;
    let ty = cx.ty(v);
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), ty.shape.rank())?;
    let split_known = match attr_ints(node, "split") {
        Some(s) => Some(Rc::new(Known::dims(
            s.iter().map(|x| Dim::constant(*x)).collect(),
        ))),
        None => cx.known(node, 1)?,
    };
    let parts = split_parts(
        &ty.shape.0[axis],
        split_known.as_deref(),
        Some(node.output.len()),
    )?;
    if parts.len() != node.output.len() {
        return Err(format!(
            "{} parts for {} outputs",
            parts.len(),
            node.output.len()
        ));
    }
    parts
        .iter()
        .map(|p| slice_part(cx, v, axis, p, false))
        .collect()
}

/// `SplitToSequence`: the parts become slices when `SequenceAt` picks them.
pub(crate) fn split_to_sequence(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let v = cx.tensor(node, 0)?;
    let ty = cx.ty(v);
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), ty.shape.rank())?;
    let split_known = cx.known(node, 1)?;
    let keep = attr_i(node, "keepdims").unwrap_or(1) != 0;
    let (parts, keep_dims) = match &split_known {
        Some(k) => (split_parts(&ty.shape.0[axis], Some(k), None)?, true),
        None => {
            let n = ty.shape.0[axis]
                .as_const()
                .ok_or("SplitToSequence without split on a symbolic axis")?;
            (
                split_parts(&ty.shape.0[axis], None, Some(n as usize))?,
                keep,
            )
        }
    };
    Ok(vec![Val::Seq {
        input: v,
        axis,
        parts,
        keep_dims,
    }])
}

/// `SequenceAt` with a constant position.
pub(crate) fn sequence_at(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let Val::Seq {
        input,
        axis,
        parts,
        keep_dims,
    } = cx.req(node, 0)?
    else {
        return Err("SequenceAt input 0 is not a sequence".into());
    };
    let pos = cx
        .req_known(node, 1, "position")?
        .as_ints()
        .and_then(|v| v.first().copied())
        .ok_or("position must be a constant")?;
    let n = parts.len() as i64;
    let p = if pos < 0 { pos + n } else { pos };
    if !(0..n).contains(&p) {
        return Err(format!("position {pos} out of range for a sequence of {n}"));
    }
    Ok(vec![slice_part(
        cx,
        input,
        axis,
        &parts[p as usize],
        !keep_dims,
    )?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_bounds_clamp_symbolically() {
        let s = Dim::sym("seq");
        assert_eq!(clamp_bound(&Dim::constant(i64::MAX), &s), s);
        assert_eq!(clamp_bound(&s, &s.add(&Dim::constant(1))), s);
        assert_eq!(clamp_bound(&Dim::constant(0), &s), Dim::constant(0));
        let k = Known::dims(vec![Dim::sym("batch"), s.clone(), Dim::constant(8)]);
        let last = slice_known(&k, 0, &Dim::constant(-1), &Dim::constant(i64::MAX), 1).unwrap();
        assert_eq!(last.as_dims().unwrap(), vec![Dim::constant(8)]);
        let rev = slice_known(&k, 0, &Dim::constant(-1), &Dim::constant(i64::MIN), -1).unwrap();
        assert_eq!(rev.as_dims().unwrap().len(), 3);
    }

    #[test]
    fn split_parts_add_up() {
        let p = split_parts(
            &Dim::constant(12),
            Some(&Known::dims(vec![Dim::constant(4); 3])),
            None,
        )
        .unwrap();
        assert_eq!(p[2], (Dim::constant(8), Dim::constant(12)));
        assert!(
            split_parts(
                &Dim::constant(12),
                Some(&Known::dims(vec![Dim::constant(5); 2])),
                None
            )
            .is_err()
        );
    }
}
