//! Linear algebra, reductions and normalization: `MatMul`, `Gemm`, `Softmax`, `Reduce*`, `CumSum`,
//! `Trilu`, `GatherND`, `LayerNormalization`.

use super::super::ctx::{Ctx, Outs, Val, broadcast, norm_axis};
use super::super::known::{KData, Known};
use super::super::proto::{attr_f, attr_i, attr_ints};
use crate::dim::Dim;
use crate::graph::Value;
use crate::op::{BinaryOp, Op, ReduceKind};
use crate::shape::{Shape, TensorType};
use onnx_protobuf::NodeProto;

/// Output shape of a (batched, broadcast) matrix product.
pub(crate) fn matmul_shape(a: &Shape, b: &Shape) -> Result<Shape, String> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err("MatMul of a scalar".into());
    }
    let a2 = if a.rank() == 1 {
        Shape(vec![Dim::constant(1), a.0[0].clone()])
    } else {
        a.clone()
    };
    let b2 = if b.rank() == 1 {
        Shape(vec![b.0[0].clone(), Dim::constant(1)])
    } else {
        b.clone()
    };
    let (ra, rb) = (a2.rank(), b2.rank());
    let k1 = &a2.0[ra - 1];
    let k2 = &b2.0[rb - 2];
    if k1 != k2 {
        return Err(format!("MatMul contraction dims differ: {a} × {b}"));
    }
    let batch = broadcast(
        &Shape(a2.0[..ra - 2].to_vec()),
        &Shape(b2.0[..rb - 2].to_vec()),
    )?;
    let mut out = batch.0;
    if a.rank() > 1 {
        out.push(a2.0[ra - 2].clone());
    }
    if b.rank() > 1 {
        out.push(b2.0[rb - 1].clone());
    }
    Ok(Shape(out))
}

fn matmul_node(cx: &mut Ctx, a: Value, b: Value) -> Result<Value, String> {
    let (ta, tb) = (cx.ty(a), cx.ty(b));
    let shape = matmul_shape(&ta.shape, &tb.shape)?;
    Ok(cx.add(Op::MatMul, vec![a, b], TensorType::new(ta.dtype, shape)))
}

/// `MatMul`.
pub(crate) fn matmul(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let a = cx.tensor(node, 0)?;
    let b = cx.tensor(node, 1)?;
    Ok(vec![Val::T(matmul_node(cx, a, b)?)])
}

fn transpose2(cx: &mut Ctx, v: Value) -> Result<Value, String> {
    let ty = cx.ty(v);
    if ty.shape.rank() != 2 {
        return Err(format!("Gemm operand of rank {}", ty.shape.rank()));
    }
    let shape = Shape(vec![ty.shape.0[1].clone(), ty.shape.0[0].clone()]);
    Ok(cx.add(
        Op::Transpose(vec![1, 0]),
        vec![v],
        TensorType::new(ty.dtype, shape),
    ))
}

fn scale(cx: &mut Ctx, v: Value, s: f32) -> Result<Value, String> {
    if s == 1.0 {
        return Ok(v);
    }
    let ty = cx.ty(v);
    let c = cx.constant(&Known {
        dtype: ty.dtype,
        shape: vec![],
        data: KData::Float(vec![s as f64]),
    })?;
    Ok(cx.add(Op::Binary(BinaryOp::Mul), vec![v, c], ty))
}

/// `Gemm`: `alpha·A'·B' + beta·C` as `MatMul` (+ `Transpose`, `Mul`, `Add`).
pub(crate) fn gemm(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let mut a = cx.tensor(node, 0)?;
    let mut b = cx.tensor(node, 1)?;
    if attr_i(node, "transA").unwrap_or(0) != 0 {
        a = transpose2(cx, a)?;
    }
    if attr_i(node, "transB").unwrap_or(0) != 0 {
        b = transpose2(cx, b)?;
    }
    let mut y = matmul_node(cx, a, b)?;
    y = scale(cx, y, attr_f(node, "alpha").unwrap_or(1.0))?;
    if node.input.get(2).is_some_and(|n| !n.is_empty()) {
        let c = cx.tensor(node, 2)?;
        let c = scale(cx, c, attr_f(node, "beta").unwrap_or(1.0))?;
        let ty = cx.ty(y);
        let shape = broadcast(&ty.shape, &cx.shape(c))?;
        y = cx.add(
            Op::Binary(BinaryOp::Add),
            vec![y, c],
            TensorType::new(ty.dtype, shape),
        );
    }
    Ok(vec![Val::T(y)])
}

/// `Softmax` / `LogSoftmax` (opset ≥ 13 semantics: one axis).
pub(crate) fn softmax(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(-1), ty.shape.rank())?;
    let op = if node.op_type == "LogSoftmax" {
        Op::LogSoftmax { axis }
    } else {
        Op::Softmax { axis }
    };
    Ok(vec![Val::T(cx.add(op, vec![x], ty))])
}

/// `ReduceMean`, `ReduceSum`, `ReduceMax`, `ReduceMin`, `ReduceProd` (axes as attribute or input).
pub(crate) fn reduce(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let kind = match node.op_type.as_str() {
        "ReduceMean" => ReduceKind::Mean,
        "ReduceSum" => ReduceKind::Sum,
        "ReduceMax" => ReduceKind::Max,
        "ReduceMin" => ReduceKind::Min,
        "ReduceProd" => ReduceKind::Prod,
        other => return Err(format!("{other} is not a reduction")),
    };
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    let r = ty.shape.rank();
    let axes = match attr_ints(node, "axes") {
        Some(a) => Some(a),
        None => cx
            .known(node, 1)?
            .map(|k| k.as_ints().ok_or("axes must be constant"))
            .transpose()?,
    };
    let noop = attr_i(node, "noop_with_empty_axes").unwrap_or(0) != 0;
    let mut axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|a| norm_axis(*a, r))
            .collect::<Result<_, _>>()?,
        _ if noop => return Ok(vec![Val::T(x)]),
        _ => (0..r).collect(),
    };
    axes.sort();
    axes.dedup();
    let keep_dims = attr_i(node, "keepdims").unwrap_or(1) != 0;
    let dims: Vec<Dim> = ty
        .shape
        .0
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keep_dims.then(|| Dim::constant(1))
            } else {
                Some(d.clone())
            }
        })
        .collect();
    Ok(vec![Val::T(cx.add(
        Op::Reduce {
            kind,
            axes,
            keep_dims,
        },
        vec![x],
        TensorType::new(ty.dtype, Shape(dims)),
    ))])
}

/// `CumSum`.
pub(crate) fn cumsum(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    let axis = cx
        .req_known(node, 1, "axis")?
        .as_ints()
        .and_then(|v| v.first().copied())
        .ok_or("axis must be a constant")?;
    let axis = norm_axis(axis, ty.shape.rank())?;
    let op = Op::CumSum {
        axis,
        exclusive: attr_i(node, "exclusive").unwrap_or(0) != 0,
        reverse: attr_i(node, "reverse").unwrap_or(0) != 0,
    };
    Ok(vec![Val::T(cx.add(op, vec![x], ty))])
}

/// `Trilu`.
pub(crate) fn trilu(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    let k = match cx.known(node, 1)? {
        Some(k) => k
            .as_ints()
            .and_then(|v| v.first().copied())
            .ok_or("k must be a constant")?,
        None if node.input.get(1).is_some_and(|n| !n.is_empty()) => {
            return Err("k must be known at import time".into());
        }
        None => 0,
    };
    let upper = attr_i(node, "upper").unwrap_or(1) != 0;
    Ok(vec![Val::T(cx.add(Op::Trilu { upper, k }, vec![x], ty))])
}

/// `GatherND`.
pub(crate) fn gather_nd(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let data = cx.tensor(node, 0)?;
    let idx = cx.tensor(node, 1)?;
    let (td, ti) = (cx.ty(data), cx.ty(idx));
    let batch_dims = attr_i(node, "batch_dims").unwrap_or(0) as usize;
    let last = ti
        .shape
        .0
        .last()
        .and_then(Dim::as_const)
        .ok_or("GatherND indices need a constant last dim")? as usize;
    if batch_dims + last > td.shape.rank() {
        return Err(format!(
            "GatherND index depth {last} exceeds data rank {}",
            td.shape.rank()
        ));
    }
    let mut dims = ti.shape.0[..ti.shape.rank() - 1].to_vec();
    dims.extend(td.shape.0[batch_dims + last..].iter().cloned());
    Ok(vec![Val::T(cx.add(
        Op::GatherNd { batch_dims },
        vec![data, idx],
        TensorType::new(td.dtype, Shape(dims)),
    ))])
}

/// `LayerNormalization` over the last axis → canonical `LayerNorm`.
pub(crate) fn layer_norm(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    if node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("the Mean/InvStdDev outputs are not supported".into());
    }
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(-1), ty.shape.rank())?;
    if axis + 1 != ty.shape.rank() {
        return Err(format!(
            "normalization over axis {axis} (only the last axis is supported)"
        ));
    }
    let w = cx.tensor(node, 1)?;
    let b = if node.input.get(2).is_some_and(|n| !n.is_empty()) {
        cx.tensor(node, 2)?
    } else {
        let tw = cx.ty(w);
        let n = tw
            .shape
            .numel()
            .as_const()
            .ok_or("symbolic normalization width")? as usize;
        cx.constant(&Known {
            dtype: tw.dtype,
            shape: vec![n],
            data: KData::Float(vec![0.0; n]),
        })?
    };
    let eps = attr_f(node, "epsilon").unwrap_or(1e-5) as f64;
    Ok(vec![Val::T(cx.add(
        Op::LayerNorm { eps },
        vec![x, w, b],
        ty,
    ))])
}
