//! Elementwise ops: unary and binary arithmetic, comparisons, logic, `Where`, casts.

use super::super::ctx::{Ctx, Outs, Val, broadcast};
use super::super::known::{self, KData, Known, MAX_FOLD, broadcast_concrete, broadcast_index};
use super::super::proto::attr_i;
use crate::dtype::DType;
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::shape::TensorType;
use onnx_protobuf::NodeProto;
use std::rc::Rc;

fn binary_op(op: &str) -> Option<BinaryOp> {
    Some(match op {
        "Add" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => BinaryOp::Pow,
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        "Equal" => BinaryOp::Equal,
        "Less" => BinaryOp::Less,
        "LessOrEqual" => BinaryOp::LessOrEqual,
        "Greater" => BinaryOp::Greater,
        "GreaterOrEqual" => BinaryOp::GreaterOrEqual,
        "And" => BinaryOp::And,
        "Or" => BinaryOp::Or,
        _ => return None,
    })
}

fn unary_op(op: &str) -> Option<UnaryOp> {
    Some(match op {
        "Neg" => UnaryOp::Neg,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Sqrt" => UnaryOp::Sqrt,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Tanh" => UnaryOp::Tanh,
        "Sigmoid" => UnaryOp::Sigmoid,
        "Relu" => UnaryOp::Relu,
        "Cos" => UnaryOp::Cos,
        "Sin" => UnaryOp::Sin,
        "Erf" => UnaryOp::Erf,
        "Abs" => UnaryOp::Abs,
        "Not" => UnaryOp::Not,
        "IsNaN" => UnaryOp::IsNan,
        _ => return None,
    })
}

/// Binary elementwise ops (variadic `Max`/`Min` fold left).
pub(crate) fn binary(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let op = node.op_type.as_str();
    let bop = binary_op(op).ok_or_else(|| format!("{op} is not a binary op"))?;
    if node.input.len() < 2 {
        return Err(format!("{op} needs two inputs"));
    }
    let n = node.input.len();
    // Fold when every input is known.
    let mut acc = cx.known(node, 0)?;
    for i in 1..n {
        acc = match (acc, cx.known(node, i)?) {
            (Some(a), Some(b)) => known::binary(op, &a, &b).map(Rc::new),
            _ => None,
        };
    }
    if let Some(k) = acc {
        return Ok(vec![Val::K(k)]);
    }
    let mut a = cx.tensor(node, 0)?;
    for i in 1..n {
        let b = cx.tensor(node, i)?;
        let (ta, tb) = (cx.ty(a), cx.ty(b));
        let shape = broadcast(&ta.shape, &tb.shape)?;
        let dtype = match bop {
            BinaryOp::Equal
            | BinaryOp::Less
            | BinaryOp::LessOrEqual
            | BinaryOp::Greater
            | BinaryOp::GreaterOrEqual => DType::Bool,
            _ => ta.dtype,
        };
        a = cx.add(Op::Binary(bop), vec![a, b], TensorType::new(dtype, shape));
    }
    Ok(vec![Val::T(a)])
}

/// Unary elementwise ops.
pub(crate) fn unary(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let op = node.op_type.as_str();
    let uop = unary_op(op).ok_or_else(|| format!("{op} is not a unary op"))?;
    if let Some(k) = cx.known(node, 0)?
        && let Some(r) = known::unary(op, &k)
    {
        return Ok(vec![Val::K(Rc::new(r))]);
    }
    let x = cx.tensor(node, 0)?;
    let mut ty = cx.ty(x);
    if uop == UnaryOp::IsNan {
        ty.dtype = DType::Bool;
    }
    Ok(vec![Val::T(cx.add(Op::Unary(uop), vec![x], ty))])
}

/// `Gelu` (opset 20): exact or tanh approximation.
pub(crate) fn gelu(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let approx = super::super::proto::attr_s(node, "approximate").unwrap_or_else(|| "none".into());
    let u = match approx.as_str() {
        "none" => UnaryOp::Gelu,
        "tanh" => UnaryOp::GeluTanh,
        other => return Err(format!("unknown approximate=`{other}`")),
    };
    let x = cx.tensor(node, 0)?;
    let ty = cx.ty(x);
    Ok(vec![Val::T(cx.add(Op::Unary(u), vec![x], ty))])
}

/// `Where(cond, a, b)`.
pub(crate) fn where_(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    if let (Some(c), Some(a), Some(b)) =
        (cx.known(node, 0)?, cx.known(node, 1)?, cx.known(node, 2)?)
        && let Some(k) = fold_where(&c, &a, &b)
    {
        return Ok(vec![Val::K(Rc::new(k))]);
    }
    let c = cx.tensor(node, 0)?;
    let a = cx.tensor(node, 1)?;
    let b = cx.tensor(node, 2)?;
    let shape = broadcast(&broadcast(&cx.shape(c), &cx.shape(a))?, &cx.shape(b))?;
    let dtype = cx.ty(a).dtype;
    Ok(vec![Val::T(cx.add(
        Op::Where,
        vec![c, a, b],
        TensorType::new(dtype, shape),
    ))])
}

fn fold_where(c: &Known, a: &Known, b: &Known) -> Option<Known> {
    let shape = broadcast_concrete(&broadcast_concrete(&c.shape, &a.shape)?, &b.shape)?;
    if shape.iter().product::<usize>() > MAX_FOLD {
        return None;
    }
    let KData::Bool(cv) = &c.data else {
        return None;
    };
    let (ic, ia, ib) = (
        broadcast_index(&c.shape, &shape),
        broadcast_index(&a.shape, &shape),
        broadcast_index(&b.shape, &shape),
    );
    let data = match (&a.data, &b.data) {
        (KData::Int(x), KData::Int(y)) => KData::Int(
            (0..ic.len())
                .map(|i| {
                    if cv[ic[i]] {
                        x[ia[i]].clone()
                    } else {
                        y[ib[i]].clone()
                    }
                })
                .collect(),
        ),
        (KData::Float(x), KData::Float(y)) => KData::Float(
            (0..ic.len())
                .map(|i| if cv[ic[i]] { x[ia[i]] } else { y[ib[i]] })
                .collect(),
        ),
        (KData::Bool(x), KData::Bool(y)) => KData::Bool(
            (0..ic.len())
                .map(|i| if cv[ic[i]] { x[ia[i]] } else { y[ib[i]] })
                .collect(),
        ),
        _ => return None,
    };
    Some(Known {
        dtype: a.dtype,
        shape,
        data,
    })
}

/// `Cast` and `CastLike`.
pub(crate) fn cast(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    let to = if node.op_type == "CastLike" {
        match cx.req(node, 1)? {
            Val::K(k) => k.dtype,
            Val::T(v) => cx.ty(v).dtype,
            Val::Seq { .. } => return Err("CastLike target is a sequence".into()),
        }
    } else {
        let code = attr_i(node, "to").ok_or("missing attribute `to`")?;
        DType::from_onnx(code as i32)
            .ok_or_else(|| format!("unsupported target type code {code}"))?
    };
    match cx.req(node, 0)? {
        Val::K(k) => Ok(vec![Val::K(Rc::new(k.cast(to)?))]),
        Val::T(v) => {
            let mut ty = cx.ty(v);
            if ty.dtype == to {
                return Ok(vec![Val::T(v)]);
            }
            ty.dtype = to;
            Ok(vec![Val::T(cx.add(Op::Cast(to), vec![v], ty))])
        }
        Val::Seq { .. } => Err("cannot cast a sequence".into()),
    }
}

/// `Identity` and inference-mode `Dropout` (first output).
pub(crate) fn identity(cx: &mut Ctx, node: &NodeProto) -> Result<Outs, String> {
    if node.op_type == "Dropout" && node.output.get(1).is_some_and(|o| !o.is_empty()) {
        return Err("Dropout's mask output is not supported".into());
    }
    Ok(vec![cx.req(node, 0)?])
}
