//! The generic executor behind [`super::Interpreter`]: value storage, symbol binding and op dispatch.

use super::fused::{self, AdamParams, AttnDims, MoeDims};
use super::kernels::{self as k, broadcast_shape, expand_to, map2};
use super::num::Float;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, NodeId, Value};
use crate::op::{BinaryOp, CollectiveKind, Op, ParamData, ReduceKind, UnaryOp};
use crate::shape::Shape;
use crate::tensor::{Tensor, TensorData};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Element storage of a runtime value.
#[derive(Clone, Debug)]
pub(crate) enum Buf<T> {
    F(Vec<T>),
    I(Vec<i64>),
    B(Vec<bool>),
}

/// A runtime value.
#[derive(Clone, Debug)]
pub(crate) struct Val<T> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub buf: Buf<T>,
}

type R<X> = std::result::Result<X, String>;

impl<T: Float> Val<T> {
    fn f(dtype: DType, shape: Vec<usize>, v: Vec<T>) -> Val<T> {
        Val {
            dtype,
            shape,
            buf: Buf::F(v),
        }
    }
    fn i(shape: Vec<usize>, v: Vec<i64>) -> Val<T> {
        Val {
            dtype: DType::I64,
            shape,
            buf: Buf::I(v),
        }
    }
    fn b(shape: Vec<usize>, v: Vec<bool>) -> Val<T> {
        Val {
            dtype: DType::Bool,
            shape,
            buf: Buf::B(v),
        }
    }
    fn fl(&self) -> R<&[T]> {
        match &self.buf {
            Buf::F(v) => Ok(v),
            _ => Err(format!("expected a float tensor, got {}", self.dtype)),
        }
    }
    /// Floats, converting integers and booleans.
    fn as_f(&self) -> Vec<T> {
        match &self.buf {
            Buf::F(v) => v.clone(),
            Buf::I(v) => v.iter().map(|x| T::from_f64(*x as f64)).collect(),
            Buf::B(v) => v
                .iter()
                .map(|x| if *x { T::ONE } else { T::ZERO })
                .collect(),
        }
    }
    fn ints(&self) -> R<Vec<i64>> {
        match &self.buf {
            Buf::I(v) => Ok(v.clone()),
            Buf::B(v) => Ok(v.iter().map(|b| *b as i64).collect()),
            Buf::F(_) => Err(format!("expected an integer tensor, got {}", self.dtype)),
        }
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    fn from_tensor(t: &Tensor) -> R<Val<T>> {
        if t.shape.iter().product::<usize>() != tensor_len(t) {
            return Err(format!(
                "tensor of shape {:?} holds {} elements",
                t.shape,
                tensor_len(t)
            ));
        }
        Ok(match &t.data {
            TensorData::F32(v) => Val::f(
                t.dtype,
                t.shape.clone(),
                v.iter().map(|x| T::from_f64(*x as f64)).collect(),
            ),
            TensorData::F64(v) => Val::f(
                t.dtype,
                t.shape.clone(),
                v.iter().map(|x| T::from_f64(*x)).collect(),
            ),
            TensorData::I64(v) => Val {
                dtype: t.dtype,
                shape: t.shape.clone(),
                buf: Buf::I(v.clone()),
            },
            TensorData::Bool(v) => Val::b(t.shape.clone(), v.clone()),
        })
    }
    fn to_tensor(&self, f64_mode: bool) -> Tensor {
        let data = match &self.buf {
            Buf::F(v) if f64_mode => TensorData::F64(v.iter().map(|x| x.to_f64()).collect()),
            Buf::F(v) => TensorData::F32(v.iter().map(|x| x.to_f64() as f32).collect()),
            Buf::I(v) => TensorData::I64(v.clone()),
            Buf::B(v) => TensorData::Bool(v.clone()),
        };
        Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data,
        }
    }
    /// Same kind of buffer, data moved by an index-generic function.
    fn map_buf(&self, shape: Vec<usize>, f: impl Fn(&dyn Mover) -> Mv) -> Val<T> {
        let buf = match &self.buf {
            Buf::F(v) => Buf::F(f(&Src(v)).into_vec()),
            Buf::I(v) => Buf::I(f(&Src(v)).into_vec()),
            Buf::B(v) => Buf::B(f(&Src(v)).into_vec()),
        };
        Val {
            dtype: self.dtype,
            shape,
            buf,
        }
    }
}

fn tensor_len(t: &Tensor) -> usize {
    match &t.data {
        TensorData::F32(v) => v.len(),
        TensorData::F64(v) => v.len(),
        TensorData::I64(v) => v.len(),
        TensorData::Bool(v) => v.len(),
    }
}

// Data movement that is generic over the element type, through a small type-erased interface.
use std::any::Any;
struct Src<'a, X>(&'a [X]);
struct Mv(Box<dyn Any>);
impl Mv {
    fn into_vec<X: 'static>(self) -> Vec<X> {
        *self
            .0
            .downcast::<Vec<X>>()
            .expect("mover returns the element type it was given")
    }
}
trait Mover {
    fn transpose(&self, shape: &[usize], perm: &[usize]) -> Mv;
    fn expand(&self, inp: &[usize], out: &[usize]) -> Mv;
    fn take(&self, shape: &[usize], axis: usize, idx: &[usize]) -> Mv;
}
impl<X: Copy + 'static> Mover for Src<'_, X> {
    fn transpose(&self, shape: &[usize], perm: &[usize]) -> Mv {
        Mv(Box::new(k::transpose(self.0, shape, perm).0))
    }
    fn expand(&self, inp: &[usize], out: &[usize]) -> Mv {
        Mv(Box::new(expand_to(self.0, inp, out)))
    }
    fn take(&self, shape: &[usize], axis: usize, idx: &[usize]) -> Mv {
        Mv(Box::new(k::take_axis(self.0, shape, axis, idx)))
    }
}

/// One execution of a graph.
pub(crate) struct Exec<'a, T> {
    g: &'a Graph,
    params: &'a HashMap<String, Tensor>,
    env: HashMap<String, i64>,
    vals: HashMap<Value, Rc<Val<T>>>,
}

impl<'a, T: Float> Exec<'a, T> {
    pub fn new(
        g: &'a Graph,
        params: &'a HashMap<String, Tensor>,
        inputs: &[(&str, Tensor)],
    ) -> Result<Exec<'a, T>> {
        let mut ex = Exec {
            g,
            params,
            env: HashMap::new(),
            vals: HashMap::new(),
        };
        for id in &g.inputs {
            let node = g.node(*id);
            let Op::Input { name } = &node.op else {
                continue;
            };
            let Some((_, t)) = inputs.iter().find(|(n, _)| n == name) else {
                return Err(IrError::Exec {
                    node: name.clone(),
                    reason: format!("graph input `{name}` was not given"),
                });
            };
            let declared = &node.outputs[0].shape;
            if declared.rank() != t.shape.len() {
                return Err(IrError::Exec {
                    node: name.clone(),
                    reason: format!(
                        "input has shape {:?}, the graph declares {declared}",
                        t.shape
                    ),
                });
            }
            for (d, n) in declared.0.iter().zip(&t.shape) {
                let syms = d.symbols();
                if syms.len() == 1 && *d == Dim::sym(&syms[0]) {
                    let prev = ex.env.insert(syms[0].to_string(), *n as i64);
                    if prev.is_some_and(|p| p != *n as i64) {
                        return Err(IrError::Exec {
                            node: name.clone(),
                            reason: format!(
                                "symbol `{}` bound to {} and {n}",
                                syms[0],
                                prev.unwrap_or(0)
                            ),
                        });
                    }
                }
            }
            let mut v = Val::from_tensor(t).map_err(|reason| IrError::Exec {
                node: name.clone(),
                reason,
            })?;
            v.dtype = node.outputs[0].dtype;
            ex.vals.insert(Value::of(*id), Rc::new(v));
        }
        // Check non-trivial input dims against the bindings.
        for id in &g.inputs {
            let node = g.node(*id);
            let Op::Input { name } = &node.op else {
                continue;
            };
            let got = &ex.vals[&Value::of(*id)].shape;
            for (d, n) in node.outputs[0].shape.0.iter().zip(got) {
                if let Some(want) = ex.eval_dim(d)
                    && want != *n as i64
                {
                    return Err(IrError::Exec {
                        node: name.clone(),
                        reason: format!("input dim {n} does not match the declared {d} = {want}"),
                    });
                }
            }
        }
        Ok(ex)
    }

    fn eval_dim(&self, d: &Dim) -> Option<i64> {
        d.eval(&|s| self.env.get(s).copied())
    }

    fn eval_shape(&self, s: &Shape) -> R<Vec<usize>> {
        s.0.iter()
            .map(|d| {
                let v = self.eval_dim(d).ok_or_else(|| {
                    format!("cannot evaluate dim `{d}` (symbols bound: {:?})", self.env)
                })?;
                usize::try_from(v).map_err(|_| format!("dim `{d}` evaluates to {v}"))
            })
            .collect()
    }

    pub fn run(mut self, wanted: &[Value]) -> Result<Vec<Tensor>> {
        // Nodes the wanted values depend on, and how often each value is still needed.
        let mut need: HashSet<NodeId> = HashSet::new();
        let mut stack: Vec<NodeId> = wanted.iter().map(|v| v.node).collect();
        while let Some(n) = stack.pop() {
            if need.insert(n) {
                stack.extend(self.g.node(n).inputs.iter().map(|v| v.node));
            }
        }
        let mut uses: HashMap<Value, usize> = HashMap::new();
        for n in &need {
            for v in &self.g.node(*n).inputs {
                *uses.entry(*v).or_insert(0) += 1;
            }
        }
        let keep: HashSet<Value> = wanted.iter().copied().collect();
        for id in self.g.topo_order() {
            if !need.contains(&id) || self.vals.contains_key(&Value::of(id)) {
                continue;
            }
            let node = self.g.node(id);
            let ins: Vec<Rc<Val<T>>> = node.inputs.iter().map(|v| self.vals[v].clone()).collect();
            let outs = self.eval(node, &ins).map_err(|reason| IrError::Exec {
                node: node_label(node),
                reason,
            })?;
            if outs.len() != node.outputs.len() {
                return Err(IrError::Exec {
                    node: node_label(node),
                    reason: format!(
                        "produced {} outputs, the graph declares {}",
                        outs.len(),
                        node.outputs.len()
                    ),
                });
            }
            for (i, mut o) in outs.into_iter().enumerate() {
                // Integer and float results keep the declared dtype (bf16 stays a widened f32).
                let decl = node.outputs[i].dtype;
                if matches!(
                    (&o.buf, decl.is_float()),
                    (Buf::F(_), true) | (Buf::I(_), false)
                ) {
                    o.dtype = decl;
                }
                self.vals.insert(
                    Value {
                        node: id,
                        output: i as u32,
                    },
                    Rc::new(o),
                );
            }
            for v in &node.inputs {
                let u = uses.get_mut(v).expect("counted above");
                *u -= 1;
                if *u == 0 && !keep.contains(v) {
                    self.vals.remove(v);
                }
            }
        }
        let f64_mode = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>();
        wanted
            .iter()
            .map(|v| {
                self.vals
                    .get(v)
                    .map(|x| x.to_tensor(f64_mode))
                    .ok_or_else(|| IrError::Exec {
                        node: format!("{v:?}"),
                        reason: "value was not computed".into(),
                    })
            })
            .collect()
    }

    fn param(&self, name: &str, data: &ParamData, node: &Node) -> R<Val<T>> {
        if let Some(t) = self.params.get(name) {
            return Val::from_tensor(t);
        }
        match data {
            ParamData::Inline(t) => Val::from_tensor(t),
            ParamData::External { .. } => {
                let ty = &node.outputs[0];
                let shape = self.eval_shape(&ty.shape)?;
                let dir = self.g.source_dir.clone().unwrap_or_default();
                let t = read_external(&dir, name, data, ty.dtype, &shape)?;
                Val::from_tensor(&t)
            }
        }
    }

    /// Evaluates one node. One arm per op, grouped by op family (the same families, in the same
    /// order, as `train::autodiff` and the runtime's `emit::nn`): sources, elementwise, reductions
    /// and normalization, shape and layout, matmul and attention, embedding and loss, optimizers,
    /// collectives, mixture of experts. Each arm calls its family's method below, so a new `Op`
    /// variant is a compile error here.
    fn eval(&self, node: &Node, ins: &[Rc<Val<T>>]) -> R<Vec<Val<T>>> {
        match &node.op {
            // sources
            Op::Input { name } => Err(format!("graph input `{name}` was not given")),
            Op::Param { name, data } => Ok(vec![self.param(name, data, node)?]),
            Op::Constant(t) => Ok(vec![Val::from_tensor(t)?]),
            Op::Range {
                start,
                end,
                step,
                dtype,
            } => self.range(start, end, *step, *dtype),
            // elementwise
            Op::Unary(u) => one(ins, 1, |x| unary(*u, &x[0])),
            Op::Binary(b) => one(ins, 2, |x| binary(*b, &x[0], &x[1], out_dtype(node))),
            Op::Where => one(ins, 3, |x| where_(&x[0], &x[1], &x[2])),
            Op::Cast(dt) => one(ins, 1, |x| Ok(cast(&x[0], *dt))),
            // reductions and normalization
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => one(ins, 1, |x| reduce(&x[0], *kind, axes, *keep_dims)),
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => one(ins, 1, |x| cumsum(&x[0], *axis, *exclusive, *reverse)),
            Op::Softmax { axis } => one(ins, 1, |x| softmax(&x[0], *axis, false)),
            Op::LogSoftmax { axis } => one(ins, 1, |x| softmax(&x[0], *axis, true)),
            Op::RmsNorm { eps } => self.rms_norm(node, ins, *eps),
            Op::LayerNorm { eps } => self.layer_norm(node, ins, *eps),
            Op::RmsNormBackward { eps } => self.rms_norm_bwd(node, ins, *eps),
            Op::LayerNormBackward { eps } => self.layer_norm_bwd(node, ins, *eps),
            // shape and layout
            Op::Reshape(s) => self.reshape(ins, s),
            Op::Transpose(perm) => self.transpose(ins, perm),
            Op::Expand(s) => self.expand(ins, s),
            Op::Concat { axis } => one(ins, 1, |x| concat(x, *axis)),
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => self.slice(ins, *axis, start, end, *step),
            Op::Gather { axis } => one(ins, 2, |x| gather(&x[0], &x[1], *axis)),
            Op::GatherNd { batch_dims } => one(ins, 2, |x| gather_nd(&x[0], &x[1], *batch_dims)),
            Op::Trilu { upper, k: diag } => one(ins, 1, |x| trilu(&x[0], *upper, *diag)),
            // matmul and attention
            Op::MatMul => one(ins, 2, |x| matmul(&x[0], &x[1], out_dtype(node))),
            Op::Linear { bias } => one(ins, if *bias { 3 } else { 2 }, |x| {
                linear(&x[0], &x[1], bias.then(|| &*x[2]), out_dtype(node))
            }),
            Op::Rotary => self.rotary(node, ins, false),
            Op::RotaryBackward => self.rotary(node, ins, true),
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
            } => self.attention(node, ins, *heads, *kv_heads, *scale, *causal),
            Op::AttentionBackward {
                heads,
                kv_heads,
                scale,
                causal,
            } => self.attention_bwd(node, ins, *heads, *kv_heads, *scale, *causal),
            // embedding and loss
            Op::Embedding => self.embedding(node, ins),
            Op::EmbeddingBackward { vocab } => self.embedding_bwd(node, ins, *vocab),
            Op::CrossEntropy { ignore_index } => self.cross_entropy(ins, *ignore_index),
            Op::CrossEntropyBackward { ignore_index } => {
                self.cross_entropy_bwd(node, ins, *ignore_index)
            }
            // optimizers
            Op::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                step,
            } => self.adamw(
                node,
                ins,
                &AdamParams {
                    lr: *lr,
                    beta1: *beta1,
                    beta2: *beta2,
                    eps: *eps,
                    weight_decay: *weight_decay,
                    step: *step,
                },
            ),
            Op::SgdMomentum {
                lr,
                momentum,
                weight_decay,
            } => self.sgd(node, ins, *lr, *momentum, *weight_decay),
            // collectives
            Op::Collective {
                kind, group_size, ..
            } => self.collective(ins, *kind, *group_size),
            // mixture of experts
            Op::MoeExperts {
                experts,
                topk,
                norm_topk,
                ..
            } => self.moe_experts(node, ins, *experts, *topk, *norm_topk),
            Op::MoeExpertsBackward {
                experts,
                topk,
                norm_topk,
                ..
            } => self.moe_experts_bwd(node, ins, *experts, *topk, *norm_topk),
        }
    }
}

/// Sources: values that come from no input.
impl<T: Float> Exec<'_, T> {
    /// `Range`: `start, start+step, ...` below `end`, bounds evaluated in the bound symbols.
    fn range(&self, start: &Dim, end: &Dim, step: i64, dtype: DType) -> R<Vec<Val<T>>> {
        let s = self.eval_dim(start).ok_or("cannot evaluate range start")?;
        let e = self.eval_dim(end).ok_or("cannot evaluate range end")?;
        if step == 0 {
            return Err("range step is 0".into());
        }
        let n = ((e - s) as f64 / step as f64).ceil().max(0.0) as usize;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * step).collect();
        Ok(vec![if dtype.is_float() {
            Val::f(
                dtype,
                vec![n],
                v.iter().map(|x| T::from_f64(*x as f64)).collect(),
            )
        } else {
            Val::i(vec![n], v)
        }])
    }
}

/// Reductions and normalization: the fused norms and their backward ops (the plain reductions
/// are the free functions `reduce`, `cumsum` and `softmax`).
impl<T: Float> Exec<'_, T> {
    /// `RmsNorm`: `[x, w]` → `y`.
    fn rms_norm(&self, node: &Node, ins: &[Rc<Val<T>>], eps: f64) -> R<Vec<Val<T>>> {
        want(ins, 2)?;
        let h = last_dim(&ins[0], &ins[1])?;
        Ok(vec![Val::f(
            out_dtype(node),
            ins[0].shape.clone(),
            fused::rms_norm(ins[0].fl()?, ins[1].fl()?, h, eps),
        )])
    }

    /// `LayerNorm`: `[x, w, b]` → `y`.
    fn layer_norm(&self, node: &Node, ins: &[Rc<Val<T>>], eps: f64) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let h = last_dim(&ins[0], &ins[1])?;
        let y = fused::layer_norm(ins[0].fl()?, ins[1].fl()?, ins[2].fl()?, h, eps);
        Ok(vec![Val::f(out_dtype(node), ins[0].shape.clone(), y)])
    }

    /// `RmsNormBackward`: `[x, w, d_y]` → `[d_x, d_w]`.
    fn rms_norm_bwd(&self, node: &Node, ins: &[Rc<Val<T>>], eps: f64) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let h = last_dim(&ins[0], &ins[1])?;
        let (dx, dw) = fused::rms_norm_bwd(ins[0].fl()?, ins[1].fl()?, ins[2].fl()?, h, eps);
        Ok(vec![
            Val::f(out_dtype(node), ins[0].shape.clone(), dx),
            Val::f(ins[1].dtype, ins[1].shape.clone(), dw),
        ])
    }

    /// `LayerNormBackward`: `[x, w, d_y]` → `[d_x, d_w, d_b]`.
    fn layer_norm_bwd(&self, node: &Node, ins: &[Rc<Val<T>>], eps: f64) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let h = last_dim(&ins[0], &ins[1])?;
        let (dx, dw, db) = fused::layer_norm_bwd(ins[0].fl()?, ins[1].fl()?, ins[2].fl()?, h, eps);
        Ok(vec![
            Val::f(out_dtype(node), ins[0].shape.clone(), dx),
            Val::f(ins[1].dtype, ins[1].shape.clone(), dw),
            Val::f(ins[1].dtype, ins[1].shape.clone(), db),
        ])
    }
}

/// Shape and layout: ops that move elements without arithmetic (those needing the bound symbols
/// are methods; `concat`, `gather`, `gather_nd` and `trilu` are free functions).
impl<T: Float> Exec<'_, T> {
    /// `Reshape` to a symbolic shape with the same element count.
    fn reshape(&self, ins: &[Rc<Val<T>>], s: &Shape) -> R<Vec<Val<T>>> {
        want(ins, 1)?;
        let sh = self.eval_shape(s)?;
        let n = ins[0].numel();
        if sh.iter().product::<usize>() != n {
            return Err(format!(
                "cannot reshape {:?} ({n} elements) to {:?}",
                ins[0].shape, sh
            ));
        }
        let mut v = (*ins[0]).clone();
        v.shape = sh;
        Ok(vec![v])
    }

    /// `Transpose` by an axis permutation.
    fn transpose(&self, ins: &[Rc<Val<T>>], perm: &[usize]) -> R<Vec<Val<T>>> {
        want(ins, 1)?;
        let x = &ins[0];
        if perm.len() != x.shape.len() {
            return Err(format!("permutation {perm:?} for rank {}", x.shape.len()));
        }
        let sh: Vec<usize> = perm.iter().map(|p| x.shape[*p]).collect();
        Ok(vec![x.map_buf(sh, |m| m.transpose(&x.shape, perm))])
    }

    /// `Expand`: broadcast to a symbolic shape.
    fn expand(&self, ins: &[Rc<Val<T>>], s: &Shape) -> R<Vec<Val<T>>> {
        want(ins, 1)?;
        let x = &ins[0];
        let target = self.eval_shape(s)?;
        let sh = broadcast_shape(&x.shape, &target)
            .ok_or_else(|| format!("cannot expand {:?} to {target:?}", x.shape))?;
        Ok(vec![x.map_buf(sh.clone(), |m| m.expand(&x.shape, &sh))])
    }

    /// `Slice`: a strided slice along one axis with symbolic bounds.
    fn slice(
        &self,
        ins: &[Rc<Val<T>>],
        axis: usize,
        start: &Dim,
        end: &Dim,
        step: i64,
    ) -> R<Vec<Val<T>>> {
        want(ins, 1)?;
        let x = &ins[0];
        let d = *x.shape.get(axis).ok_or("slice axis out of range")? as i64;
        let s = self.eval_dim(start).ok_or("cannot evaluate slice start")?;
        let e = self.eval_dim(end).ok_or("cannot evaluate slice end")?;
        let idx: Vec<usize> = if step > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s..e).step_by(step as usize).map(|i| i as usize).collect()
        } else if step < 0 {
            let (s, e) = (s.clamp(-1, d - 1), e.clamp(-1, d - 1));
            let mut v = Vec::new();
            let mut i = s;
            while i > e {
                v.push(i as usize);
                i += step;
            }
            v
        } else {
            return Err("slice step is 0".into());
        };
        let mut sh = x.shape.clone();
        sh[axis] = idx.len();
        Ok(vec![x.map_buf(sh, |m| m.take(&x.shape, axis, &idx))])
    }
}

/// Matmul and attention: the fused rotary embedding and attention, forward and backward (the
/// plain products are the free functions `matmul` and `linear`).
impl<T: Float> Exec<'_, T> {
    /// `Rotary` (`backward == false`) or `RotaryBackward`: `[x, cos, sin]` → `y`.
    fn rotary(&self, node: &Node, ins: &[Rc<Val<T>>], backward: bool) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let x = &ins[0];
        let (c, s) = (bcast_f(&ins[1], &x.shape)?, bcast_f(&ins[2], &x.shape)?);
        let d = *x.shape.last().ok_or("rotary of a scalar")?;
        let y = if backward {
            fused::rotary_bwd(x.fl()?, &c, &s, d)
        } else {
            fused::rotary(x.fl()?, &c, &s, d)
        };
        Ok(vec![Val::f(out_dtype(node), x.shape.clone(), y)])
    }

    /// `Attention`: `[q, k, v]` (+ mask) → `[out, lse]`.
    fn attention(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        heads: usize,
        kv_heads: usize,
        scale: f64,
        causal: bool,
    ) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let g = attn_dims(&ins[0], &ins[1], &ins[2], heads, kv_heads, scale, causal)?;
        let mask = match ins.get(3) {
            Some(m) => Some(bcast_f(m, &[g.b, g.h, g.sq, g.sk])?),
            None => None,
        };
        let (o, l) = fused::attention(
            ins[0].fl()?,
            ins[1].fl()?,
            ins[2].fl()?,
            mask.as_deref(),
            &g,
        );
        Ok(vec![
            Val::f(out_dtype(node), ins[0].shape.clone(), o),
            Val::f(DType::F32, vec![g.b, g.h, g.sq], l),
        ])
    }

    /// `AttentionBackward`: `[q, k, v, out, lse, d_out]` (+ mask) → `[d_q, d_k, d_v]`.
    fn attention_bwd(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        heads: usize,
        kv_heads: usize,
        scale: f64,
        causal: bool,
    ) -> R<Vec<Val<T>>> {
        want(ins, 6)?;
        let g = attn_dims(&ins[0], &ins[1], &ins[2], heads, kv_heads, scale, causal)?;
        let mask = match ins.get(6) {
            Some(m) => Some(bcast_f(m, &[g.b, g.h, g.sq, g.sk])?),
            None => None,
        };
        let (dq, dk, dv) = fused::attention_bwd(
            ins[0].fl()?,
            ins[1].fl()?,
            ins[2].fl()?,
            ins[3].fl()?,
            ins[4].fl()?,
            ins[5].fl()?,
            mask.as_deref(),
            &g,
        );
        let dt = |i: usize| out_dtype_at(node, i, DType::F32);
        Ok(vec![
            Val::f(dt(0), ins[0].shape.clone(), dq),
            Val::f(dt(1), ins[1].shape.clone(), dk),
            Val::f(dt(2), ins[2].shape.clone(), dv),
        ])
    }
}

/// Embedding and loss: the token table lookup, the cross-entropy loss and their backward ops.
impl<T: Float> Exec<'_, T> {
    /// `Embedding`: `[table, ids]` → `table[ids]`.
    fn embedding(&self, node: &Node, ins: &[Rc<Val<T>>]) -> R<Vec<Val<T>>> {
        want(ins, 2)?;
        let (t, ids) = (&ins[0], ins[1].ints()?);
        if t.shape.len() != 2 {
            return Err(format!("embedding table has shape {:?}", t.shape));
        }
        let (vocab, h) = (t.shape[0], t.shape[1]);
        let tab = t.fl()?;
        let mut out = Vec::with_capacity(ids.len() * h);
        for id in &ids {
            let r = usize::try_from(*id)
                .ok()
                .filter(|r| *r < vocab)
                .ok_or_else(|| format!("token id {id} outside [0, {vocab})"))?;
            out.extend_from_slice(&tab[r * h..(r + 1) * h]);
        }
        let mut sh = ins[1].shape.clone();
        sh.push(h);
        Ok(vec![Val::f(out_dtype(node), sh, out)])
    }

    /// `EmbeddingBackward`: `[ids, d_y]` → the table gradient `[vocab, h]`.
    fn embedding_bwd(&self, node: &Node, ins: &[Rc<Val<T>>], vocab: usize) -> R<Vec<Val<T>>> {
        want(ins, 2)?;
        let (ids, dy) = (ins[0].ints()?, ins[1].fl()?);
        let h = *ins[1]
            .shape
            .last()
            .ok_or("embedding gradient of a scalar")?;
        let mut d = vec![T::ZERO; vocab * h];
        for (i, id) in ids.iter().enumerate() {
            let r = usize::try_from(*id)
                .ok()
                .filter(|r| *r < vocab)
                .ok_or_else(|| format!("token id {id} outside [0, {vocab})"))?;
            for (a, b) in d[r * h..(r + 1) * h]
                .iter_mut()
                .zip(&dy[i * h..(i + 1) * h])
            {
                *a += *b;
            }
        }
        Ok(vec![Val::f(out_dtype(node), vec![vocab, h], d)])
    }

    /// `CrossEntropy`: `[logits, targets]` → the mean loss (f32 scalar).
    fn cross_entropy(&self, ins: &[Rc<Val<T>>], ignore_index: i64) -> R<Vec<Val<T>>> {
        want(ins, 2)?;
        let (lg, t) = (&ins[0], ins[1].ints()?);
        let v = logits_width(lg, &ins[1], t.len())?;
        Ok(vec![Val::f(
            DType::F32,
            vec![],
            vec![fused::cross_entropy(lg.fl()?, &t, v, ignore_index)?],
        )])
    }

    /// `CrossEntropyBackward`: `[logits, targets, d_loss]` → `d_logits`.
    fn cross_entropy_bwd(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        ignore_index: i64,
    ) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        let (lg, t) = (&ins[0], ins[1].ints()?);
        let v = logits_width(lg, &ins[1], t.len())?;
        let dl = *ins[2].fl()?.first().ok_or("empty loss gradient")?;
        Ok(vec![Val::f(
            out_dtype(node),
            lg.shape.clone(),
            fused::cross_entropy_bwd(lg.fl()?, &t, v, ignore_index, dl)?,
        )])
    }
}

/// Optimizers: one fused update step per parameter.
impl<T: Float> Exec<'_, T> {
    /// `AdamW`: `[p, g, m, v]` → `[p', m', v']` (the parameter rounded to its type).
    fn adamw(&self, node: &Node, ins: &[Rc<Val<T>>], a: &AdamParams) -> R<Vec<Val<T>>> {
        want(ins, 4)?;
        same_shapes(&ins[..4])?;
        let (p, m, v) = fused::adamw(ins[0].fl()?, ins[1].fl()?, ins[2].fl()?, ins[3].fl()?, a);
        let sh = ins[0].shape.clone();
        let dt = |i: usize, d: DType| out_dtype_at(node, i, d);
        Ok(vec![
            Val::f(
                dt(0, ins[0].dtype),
                sh.clone(),
                round(p, dt(0, ins[0].dtype)),
            ),
            Val::f(dt(1, ins[2].dtype), sh.clone(), m),
            Val::f(dt(2, ins[3].dtype), sh, v),
        ])
    }

    /// `SgdMomentum`: `[p, g, buf]` → `[p', buf']` (the parameter rounded to its type).
    fn sgd(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> R<Vec<Val<T>>> {
        want(ins, 3)?;
        same_shapes(&ins[..3])?;
        let (p, b) = fused::sgd(
            ins[0].fl()?,
            ins[1].fl()?,
            ins[2].fl()?,
            lr,
            momentum,
            weight_decay,
        );
        let sh = ins[0].shape.clone();
        let dt = |i: usize, d: DType| out_dtype_at(node, i, d);
        Ok(vec![
            Val::f(
                dt(0, ins[0].dtype),
                sh.clone(),
                round(p, dt(0, ins[0].dtype)),
            ),
            Val::f(dt(1, ins[2].dtype), sh, b),
        ])
    }
}

/// Collectives: the reference interpreter runs one rank, where a collective is the identity.
impl<T: Float> Exec<'_, T> {
    /// `Collective`: the identity over one rank (and for copy-to-group); an error over more.
    fn collective(
        &self,
        ins: &[Rc<Val<T>>],
        kind: CollectiveKind,
        group_size: u32,
    ) -> R<Vec<Val<T>>> {
        want(ins, 1)?;
        if group_size != 1 && kind != CollectiveKind::CopyToGroup {
            return Err(format!(
                "{} over {group_size} ranks needs a multi-rank executor; the reference interpreter runs one rank",
                Op::Collective {
                    kind,
                    group_size,
                    axis: None
                }
                .kind_name()
            ));
        }
        Ok(vec![(*ins[0]).clone()])
    }
}

/// Mixture of experts: the fused routed-expert block and its backward op.
impl<T: Float> Exec<'_, T> {
    /// `MoeExperts`: `[x, scores, w_gate, w_up, w_down]` → `y`.
    fn moe_experts(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        experts: usize,
        topk: usize,
        norm_topk: bool,
    ) -> R<Vec<Val<T>>> {
        want(ins, 5)?;
        let d = moe_dims(ins, experts, topk, norm_topk)?;
        let y = fused::moe_experts(
            ins[0].fl()?,
            ins[1].fl()?,
            ins[2].fl()?,
            ins[3].fl()?,
            ins[4].fl()?,
            &d,
        );
        Ok(vec![Val::f(out_dtype(node), ins[0].shape.clone(), y)])
    }

    /// `MoeExpertsBackward`: the forward's inputs and `d_y` → a gradient for each input.
    fn moe_experts_bwd(
        &self,
        node: &Node,
        ins: &[Rc<Val<T>>],
        experts: usize,
        topk: usize,
        norm_topk: bool,
    ) -> R<Vec<Val<T>>> {
        want(ins, 6)?;
        let d = moe_dims(ins, experts, topk, norm_topk)?;
        if ins[5].shape != ins[0].shape {
            return Err(format!(
                "expert output gradient {:?} differs from the input {:?}",
                ins[5].shape, ins[0].shape
            ));
        }
        let (dx, ds, dwg, dwu, dwd) = fused::moe_experts_bwd(
            ins[0].fl()?,
            ins[1].fl()?,
            ins[2].fl()?,
            ins[3].fl()?,
            ins[4].fl()?,
            ins[5].fl()?,
            &d,
        );
        let dt = |i: usize| out_dtype_at(node, i, DType::F32);
        Ok(vec![
            Val::f(dt(0), ins[0].shape.clone(), dx),
            Val::f(dt(1), ins[1].shape.clone(), ds),
            Val::f(dt(2), ins[2].shape.clone(), dwg),
            Val::f(dt(3), ins[3].shape.clone(), dwu),
            Val::f(dt(4), ins[4].shape.clone(), dwd),
        ])
    }
}

/// Checks that an op has at least `n` inputs.
fn want<T>(ins: &[Rc<Val<T>>], n: usize) -> R<()> {
    if ins.len() < n {
        Err(format!("needs {n} inputs, has {}", ins.len()))
    } else {
        Ok(())
    }
}

/// A single-output op of at least `n` inputs computed by `f`.
fn one<T>(
    ins: &[Rc<Val<T>>],
    n: usize,
    f: impl FnOnce(&[Rc<Val<T>>]) -> R<Val<T>>,
) -> R<Vec<Val<T>>> {
    want(ins, n)?;
    Ok(vec![f(ins)?])
}

/// The element type of a node's first output (f32 when it declares none).
fn out_dtype(node: &Node) -> DType {
    out_dtype_at(node, 0, DType::F32)
}

/// The element type of a node's output `i`, or `default` when it declares none.
fn out_dtype_at(node: &Node, i: usize, default: DType) -> DType {
    node.outputs.get(i).map(|t| t.dtype).unwrap_or(default)
}

/// The vocabulary width of cross-entropy logits, checked against the number of targets.
fn logits_width<T: Float>(lg: &Val<T>, targets: &Val<T>, n_targets: usize) -> R<usize> {
    let v = *lg.shape.last().ok_or("cross-entropy of a scalar")?;
    if lg.numel() != n_targets * v {
        return Err(format!(
            "logits {:?} do not match targets {:?}",
            lg.shape, targets.shape
        ));
    }
    Ok(v)
}

/// `Where`: `cond ? a : b` with broadcasting; mixed buffer kinds are compared as floats.
fn where_<T: Float>(c: &Val<T>, a: &Val<T>, b: &Val<T>) -> R<Val<T>> {
    let sh = broadcast_shape(&c.shape, &a.shape)
        .and_then(|s| broadcast_shape(&s, &b.shape))
        .ok_or_else(|| {
            format!(
                "cannot broadcast {:?}, {:?}, {:?}",
                c.shape, a.shape, b.shape
            )
        })?;
    let cond: Vec<bool> = match &c.buf {
        Buf::B(v) => expand_to(v, &c.shape, &sh),
        Buf::I(v) => expand_to(v, &c.shape, &sh)
            .iter()
            .map(|x| *x != 0)
            .collect(),
        Buf::F(_) => return Err("Where condition is a float tensor".into()),
    };
    let pick = |x: &Val<T>| x.map_buf(sh.clone(), |m| m.expand(&x.shape, &sh));
    let (ea, eb) = (pick(a), pick(b));
    let buf = match (ea.buf, eb.buf) {
        (Buf::F(x), Buf::F(y)) => Buf::F(sel(&cond, x, y)),
        (Buf::I(x), Buf::I(y)) => Buf::I(sel(&cond, x, y)),
        (Buf::B(x), Buf::B(y)) => Buf::B(sel(&cond, x, y)),
        (x, y) => {
            let (x, y) = (
                Val {
                    dtype: a.dtype,
                    shape: sh.clone(),
                    buf: x,
                },
                Val {
                    dtype: b.dtype,
                    shape: sh.clone(),
                    buf: y,
                },
            );
            Buf::F(sel(&cond, x.as_f(), y.as_f()))
        }
    };
    Ok(Val {
        dtype: a.dtype,
        shape: sh,
        buf,
    })
}

/// Reads an external weight through the ONNX importer (bounds-checked, inside the model directory).
fn read_external(
    dir: &std::path::Path,
    name: &str,
    data: &ParamData,
    dtype: DType,
    shape: &[usize],
) -> R<Tensor> {
    crate::onnx::read_external(dir, name, data, dtype, shape).map_err(|e| e.to_string())
}

fn node_label(n: &Node) -> String {
    if n.prov.name.is_empty() {
        n.op.kind_name()
    } else {
        format!("{} ({})", n.prov.name, n.op.kind_name())
    }
}

fn sel<X: Copy>(c: &[bool], a: Vec<X>, b: Vec<X>) -> Vec<X> {
    c.iter()
        .zip(a.into_iter().zip(b))
        .map(|(c, (a, b))| if *c { a } else { b })
        .collect()
}

fn round<T: Float>(v: Vec<T>, dt: DType) -> Vec<T> {
    if matches!(dt, DType::F32 | DType::F64) {
        v
    } else {
        v.into_iter().map(|x| x.round_to(dt)).collect()
    }
}

fn same_shapes<T>(v: &[Rc<Val<T>>]) -> R<()> {
    if v.iter().all(|x| x.shape == v[0].shape) {
        Ok(())
    } else {
        Err(format!(
            "operand shapes differ: {:?}",
            v.iter().map(|x| x.shape.clone()).collect::<Vec<_>>()
        ))
    }
}

fn last_dim<T>(x: &Val<T>, w: &Val<T>) -> R<usize> {
    let h = *x.shape.last().ok_or("normalization of a scalar")?;
    if w.shape.iter().product::<usize>() != h {
        return Err(format!(
            "weight {:?} does not match the last axis of {:?}",
            w.shape, x.shape
        ));
    }
    Ok(h)
}

fn bcast_f<T: Float>(x: &Val<T>, to: &[usize]) -> R<Vec<T>> {
    let sh = broadcast_shape(&x.shape, to)
        .filter(|s| s == to)
        .ok_or_else(|| format!("cannot broadcast {:?} to {to:?}", x.shape))?;
    Ok(expand_to(&x.as_f(), &x.shape, &sh))
}

/// Checks the shapes of a mixture-of-experts op's inputs `[x [.., h], scores [.., E], w_gate [E, h, f],
/// w_up [E, h, f], w_down [E, f, h], ...]`.
fn moe_dims<T>(ins: &[Rc<Val<T>>], experts: usize, topk: usize, norm_topk: bool) -> R<MoeDims> {
    let (x, s, wg, wu, wd) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]);
    let h = *x
        .shape
        .last()
        .ok_or("mixture-of-experts input is a scalar")?;
    let ok = wg.shape.len() == 3
        && wg.shape == wu.shape
        && wg.shape[0] == experts
        && wg.shape[1] == h
        && wd.shape == [experts, wg.shape[2], h]
        && s.shape.last() == Some(&experts)
        && s.shape[..s.shape.len() - 1] == x.shape[..x.shape.len() - 1]
        && (1..=experts).contains(&topk);
    if !ok {
        return Err(format!(
            "mixture of {experts} experts (top {topk}) got x {:?}, scores {:?}, w_gate {:?}, w_up {:?}, w_down {:?}",
            x.shape, s.shape, wg.shape, wu.shape, wd.shape
        ));
    }
    Ok(MoeDims {
        tokens: x.shape[..x.shape.len() - 1].iter().product(),
        h,
        f: wg.shape[2],
        experts,
        topk,
        norm_topk,
    })
}

fn attn_dims<T>(
    q: &Val<T>,
    kk: &Val<T>,
    v: &Val<T>,
    heads: usize,
    kvh: usize,
    scale: f64,
    causal: bool,
) -> R<AttnDims> {
    if q.shape.len() != 4 || kk.shape.len() != 4 || v.shape != kk.shape {
        return Err(format!(
            "attention wants q [b,h,s,d], k = v [b,kv,s,d]; got {:?}, {:?}, {:?}",
            q.shape, kk.shape, v.shape
        ));
    }
    let (b, h, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    if h != heads
        || kk.shape[1] != kvh
        || kvh == 0
        || !heads.is_multiple_of(kvh)
        || kk.shape[0] != b
        || kk.shape[3] != d
    {
        return Err(format!(
            "attention with {heads} heads / {kvh} KV heads got q {:?}, k {:?}",
            q.shape, kk.shape
        ));
    }
    Ok(AttnDims {
        b,
        h,
        kvh,
        sq,
        sk: kk.shape[2],
        d,
        scale,
        causal,
    })
}

fn unary<T: Float>(u: UnaryOp, x: &Val<T>) -> R<Val<T>> {
    let sh = x.shape.clone();
    match &x.buf {
        Buf::F(v) => {
            if u == UnaryOp::IsNan {
                return Ok(Val::b(sh, v.iter().map(|a| a.is_nan()).collect()));
            }
            if u == UnaryOp::Not {
                return Err("Not of a float tensor".into());
            }
            let half = T::from_f64(0.5);
            let f: Box<dyn Fn(T) -> T> = match u {
                UnaryOp::Neg => Box::new(|a: T| -a),
                UnaryOp::Exp => Box::new(|a: T| a.exp()),
                UnaryOp::Log => Box::new(|a: T| a.ln()),
                UnaryOp::Sqrt => Box::new(|a: T| a.sqrt()),
                UnaryOp::Rsqrt => Box::new(|a: T| T::ONE / a.sqrt()),
                UnaryOp::Reciprocal => Box::new(|a: T| T::ONE / a),
                UnaryOp::Tanh => Box::new(|a: T| a.tanh()),
                UnaryOp::Sigmoid => Box::new(sigmoid),
                UnaryOp::Silu => Box::new(|a: T| a * sigmoid(a)),
                UnaryOp::Gelu => Box::new(move |a: T| {
                    half * a * (T::ONE + (a * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
                }),
                UnaryOp::GeluTanh => Box::new(move |a: T| {
                    let c = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
                    half * a * (T::ONE + (c * (a + T::from_f64(0.044715) * a * a * a)).tanh())
                }),
                UnaryOp::Relu => Box::new(|a: T| if a > T::ZERO { a } else { T::ZERO }),
                UnaryOp::Cos => Box::new(|a: T| a.cos()),
                UnaryOp::Sin => Box::new(|a: T| a.sin()),
                UnaryOp::Erf => Box::new(|a: T| a.erf()),
                UnaryOp::Abs => Box::new(|a: T| a.abs()),
                UnaryOp::Not | UnaryOp::IsNan => unreachable!("handled above"),
            };
            Ok(Val::f(x.dtype, sh, v.iter().map(|a| f(*a)).collect()))
        }
        Buf::I(v) => match u {
            UnaryOp::Neg => Ok(Val::i(sh, v.iter().map(|a| a.wrapping_neg()).collect())),
            UnaryOp::Abs => Ok(Val::i(sh, v.iter().map(|a| a.wrapping_abs()).collect())),
            UnaryOp::Relu => Ok(Val::i(sh, v.iter().map(|a| (*a).max(0)).collect())),
            UnaryOp::IsNan => Ok(Val::b(sh, vec![false; v.len()])),
            _ => Err(format!("{u:?} of an integer tensor")),
        },
        Buf::B(v) => match u {
            UnaryOp::Not => Ok(Val::b(sh, v.iter().map(|a| !a).collect())),
            _ => Err(format!("{u:?} of a boolean tensor")),
        },
    }
}

fn sigmoid<T: Float>(a: T) -> T {
    if a >= T::ZERO {
        T::ONE / (T::ONE + (-a).exp())
    } else {
        let e = a.exp();
        e / (T::ONE + e)
    }
}

fn binary<T: Float>(op: BinaryOp, a: &Val<T>, b: &Val<T>, out_dtype: DType) -> R<Val<T>> {
    use BinaryOp::*;
    let sh = broadcast_shape(&a.shape, &b.shape)
        .ok_or_else(|| format!("cannot broadcast {:?} with {:?}", a.shape, b.shape))?;
    let cmp = matches!(op, Equal | Less | LessOrEqual | Greater | GreaterOrEqual);
    match (&a.buf, &b.buf) {
        (Buf::B(x), Buf::B(y)) => {
            let f: fn(bool, bool) -> bool = match op {
                And => |p, q| p && q,
                Or => |p, q| p || q,
                Equal => |p, q| p == q,
                _ => return Err(format!("{op:?} of boolean tensors")),
            };
            Ok(Val::b(sh.clone(), map2(x, &a.shape, y, &b.shape, &sh, f)))
        }
        (Buf::I(x), Buf::I(y)) => {
            if cmp {
                let f: fn(i64, i64) -> bool = int_cmp(op);
                return Ok(Val::b(sh.clone(), map2(x, &a.shape, y, &b.shape, &sh, f)));
            }
            let f: fn(i64, i64) -> i64 = match op {
                Add => |p: i64, q: i64| p.wrapping_add(q),
                Sub => |p: i64, q: i64| p.wrapping_sub(q),
                Mul => |p: i64, q: i64| p.wrapping_mul(q),
                Div => |p: i64, q: i64| if q == 0 { 0 } else { p.wrapping_div(q) },
                Pow => |p: i64, q: i64| {
                    if q < 0 {
                        0
                    } else {
                        p.wrapping_pow(q.min(u32::MAX as i64) as u32)
                    }
                },
                Max => |p: i64, q: i64| p.max(q),
                Min => |p: i64, q: i64| p.min(q),
                _ => return Err(format!("{op:?} of integer tensors")),
            };
            if matches!(op, Div)
                && map2(x, &a.shape, y, &b.shape, &sh, |_, q| q == 0)
                    .iter()
                    .any(|z| *z)
            {
                return Err("integer division by zero".into());
            }
            Ok(Val {
                dtype: a.dtype,
                shape: sh.clone(),
                buf: Buf::I(map2(x, &a.shape, y, &b.shape, &sh, f)),
            })
        }
        _ => {
            let (xa, xb) = (a.as_f(), b.as_f());
            if cmp {
                let f: fn(T, T) -> bool = match op {
                    Equal => |p, q| p == q,
                    Less => |p, q| p < q,
                    LessOrEqual => |p, q| p <= q,
                    Greater => |p, q| p > q,
                    _ => |p, q| p >= q,
                };
                return Ok(Val::b(
                    sh.clone(),
                    map2(&xa, &a.shape, &xb, &b.shape, &sh, f),
                ));
            }
            let f: fn(T, T) -> T = match op {
                Add => |p, q| p + q,
                Sub => |p, q| p - q,
                Mul => |p, q| p * q,
                Div => |p, q| p / q,
                Pow => |p: T, q: T| {
                    // Exact small integer powers keep f64 gradient checks exact.
                    let qf = q.to_f64();
                    if qf == 2.0 {
                        p * p
                    } else if qf == 1.0 {
                        p
                    } else {
                        p.powf(q)
                    }
                },
                Max => |p: T, q: T| p.maxf(q),
                Min => |p: T, q: T| p.minf(q),
                _ => return Err(format!("{op:?} of float tensors")),
            };
            let dt = if out_dtype.is_float() {
                out_dtype
            } else {
                a.dtype
            };
            Ok(Val::f(
                dt,
                sh.clone(),
                map2(&xa, &a.shape, &xb, &b.shape, &sh, f),
            ))
        }
    }
}

fn int_cmp(op: BinaryOp) -> fn(i64, i64) -> bool {
    match op {
        BinaryOp::Equal => |p, q| p == q,
        BinaryOp::Less => |p, q| p < q,
        BinaryOp::LessOrEqual => |p, q| p <= q,
        BinaryOp::Greater => |p, q| p > q,
        _ => |p, q| p >= q,
    }
}

fn cast<T: Float>(x: &Val<T>, dt: DType) -> Val<T> {
    let sh = x.shape.clone();
    if dt.is_float() {
        let v: Vec<T> = x.as_f().into_iter().map(|a| a.round_to(dt)).collect();
        return Val::f(dt, sh, v);
    }
    if dt == DType::Bool {
        let v = match &x.buf {
            Buf::F(v) => v.iter().map(|a| *a != T::ZERO).collect(),
            Buf::I(v) => v.iter().map(|a| *a != 0).collect(),
            Buf::B(v) => v.clone(),
        };
        return Val::b(sh, v);
    }
    let v = match &x.buf {
        Buf::F(v) => v.iter().map(|a| a.to_f64().trunc() as i64).collect(),
        Buf::I(v) => v.clone(),
        Buf::B(v) => v.iter().map(|a| *a as i64).collect(),
    };
    Val {
        dtype: dt,
        shape: sh,
        buf: Buf::I(v),
    }
}

fn matmul<T: Float>(a: &Val<T>, b: &Val<T>, out_dtype: DType) -> R<Val<T>> {
    let (av, bv) = (a.as_f(), b.as_f());
    let mut ash = a.shape.clone();
    let mut bsh = b.shape.clone();
    let (a1, b1) = (ash.len() == 1, bsh.len() == 1);
    if ash.is_empty() || bsh.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    if a1 {
        ash.insert(0, 1);
    }
    if b1 {
        bsh.push(1);
    }
    let (out, mut sh) = k::matmul(&av, &ash, &bv, &bsh)
        .ok_or_else(|| format!("cannot multiply {:?} by {:?}", a.shape, b.shape))?;
    if b1 {
        sh.pop();
    }
    if a1 {
        let n = sh.len();
        sh.remove(n - if b1 { 1 } else { 2 });
    }
    let dt = if out_dtype.is_float() {
        out_dtype
    } else {
        a.dtype
    };
    Ok(Val::f(dt, sh, out))
}

fn linear<T: Float>(x: &Val<T>, w: &Val<T>, b: Option<&Val<T>>, out_dtype: DType) -> R<Val<T>> {
    if w.shape.len() != 2 {
        return Err(format!(
            "linear weight has shape {:?}, want [in, out]",
            w.shape
        ));
    }
    let (i, o) = (w.shape[0], w.shape[1]);
    if x.shape.last() != Some(&i) {
        return Err(format!(
            "linear input {:?} does not match weight {:?}",
            x.shape, w.shape
        ));
    }
    let rows = x.numel() / i.max(1);
    let mut out = vec![T::ZERO; rows * o];
    if let Some(b) = b {
        let bv = b.fl()?;
        if bv.len() != o {
            return Err(format!(
                "bias {:?} does not match weight {:?}",
                b.shape, w.shape
            ));
        }
        for r in out.chunks_mut(o) {
            r.copy_from_slice(bv);
        }
    }
    k::gemm(x.fl()?, w.fl()?, &mut out, rows, i, o);
    let mut sh = x.shape.clone();
    *sh.last_mut().expect("checked non-empty") = o;
    Ok(Val::f(out_dtype, sh, out))
}

fn reduce<T: Float>(x: &Val<T>, kind: ReduceKind, axes: &[usize], keep: bool) -> R<Val<T>> {
    let all: Vec<usize> = (0..x.shape.len()).collect();
    let axes = if axes.is_empty() { &all[..] } else { axes };
    if axes.iter().any(|a| *a >= x.shape.len()) {
        return Err(format!(
            "reduce axes {axes:?} out of range for {:?}",
            x.shape
        ));
    }
    let mut axes = axes.to_vec();
    axes.sort_unstable();
    axes.dedup();
    let sh = k::reduced_shape(&x.shape, &axes, keep);
    let count: usize = axes.iter().map(|a| x.shape[*a]).product();
    match &x.buf {
        Buf::F(v) => {
            let r = match kind {
                ReduceKind::Sum => k::fold_axes(v, &x.shape, &axes, T::ZERO, |a, b| a + b),
                ReduceKind::Mean => {
                    let s = k::fold_axes(v, &x.shape, &axes, T::ZERO, |a, b| a + b);
                    let c = T::from_f64(count as f64);
                    s.into_iter().map(|a| a / c).collect()
                }
                ReduceKind::Max => k::fold_axes(
                    v,
                    &x.shape,
                    &axes,
                    T::from_f64(f64::NEG_INFINITY),
                    |a, b| a.maxf(b),
                ),
                ReduceKind::Min => {
                    k::fold_axes(v, &x.shape, &axes, T::from_f64(f64::INFINITY), |a, b| {
                        a.minf(b)
                    })
                }
                ReduceKind::Prod => k::fold_axes(v, &x.shape, &axes, T::ONE, |a, b| a * b),
            };
            Ok(Val::f(x.dtype, sh, r))
        }
        Buf::I(v) => {
            let r = match kind {
                ReduceKind::Sum => k::fold_axes(v, &x.shape, &axes, 0i64, |a, b| a.wrapping_add(b)),
                ReduceKind::Mean => k::fold_axes(v, &x.shape, &axes, 0i64, |a, b| a + b)
                    .into_iter()
                    .map(|a| a / count.max(1) as i64)
                    .collect(),
                ReduceKind::Max => k::fold_axes(v, &x.shape, &axes, i64::MIN, |a, b| a.max(b)),
                ReduceKind::Min => k::fold_axes(v, &x.shape, &axes, i64::MAX, |a, b| a.min(b)),
                ReduceKind::Prod => {
                    k::fold_axes(v, &x.shape, &axes, 1i64, |a, b| a.wrapping_mul(b))
                }
            };
            Ok(Val {
                dtype: x.dtype,
                shape: sh,
                buf: Buf::I(r),
            })
        }
        Buf::B(_) => Err("reduction of a boolean tensor".into()),
    }
}

/// (outer, axis, inner) sizes around an axis.
fn split_at<T>(x: &Val<T>, axis: usize) -> R<(usize, usize, usize)> {
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} out of range for {:?}", x.shape));
    }
    Ok((
        x.shape[..axis].iter().product(),
        x.shape[axis],
        x.shape[axis + 1..].iter().product(),
    ))
}

fn cumsum<T: Float>(x: &Val<T>, axis: usize, exclusive: bool, reverse: bool) -> R<Val<T>> {
    let (o, d, i) = split_at(x, axis)?;
    fn run<X: Copy + std::ops::Add<Output = X>>(
        v: &[X],
        zero: X,
        o: usize,
        d: usize,
        inn: usize,
        ex: bool,
        rev: bool,
    ) -> Vec<X> {
        let mut out = vec![zero; v.len()];
        for a in 0..o {
            for c in 0..inn {
                let mut acc = zero;
                for t in 0..d {
                    let j = if rev { d - 1 - t } else { t };
                    let idx = (a * d + j) * inn + c;
                    if ex {
                        out[idx] = acc;
                        acc = acc + v[idx];
                    } else {
                        acc = acc + v[idx];
                        out[idx] = acc;
                    }
                }
            }
        }
        out
    }
    Ok(match &x.buf {
        Buf::F(v) => Val::f(
            x.dtype,
            x.shape.clone(),
            run(v, T::ZERO, o, d, i, exclusive, reverse),
        ),
        Buf::I(v) => Val {
            dtype: x.dtype,
            shape: x.shape.clone(),
            buf: Buf::I(run(v, 0, o, d, i, exclusive, reverse)),
        },
        Buf::B(_) => return Err("cumulative sum of a boolean tensor".into()),
    })
}

fn softmax<T: Float>(x: &Val<T>, axis: usize, log: bool) -> R<Val<T>> {
    let (o, d, inn) = split_at(x, axis)?;
    let v = x.fl()?;
    let mut out = vec![T::ZERO; v.len()];
    for a in 0..o {
        for c in 0..inn {
            let at = |j: usize| (a * d + j) * inn + c;
            let mx = (0..d).fold(T::from_f64(f64::NEG_INFINITY), |m, j| m.maxf(v[at(j)]));
            let sum = (0..d).fold(T::ZERO, |s, j| s + (v[at(j)] - mx).exp());
            for j in 0..d {
                out[at(j)] = if log {
                    v[at(j)] - mx - sum.ln()
                } else {
                    (v[at(j)] - mx).exp() / sum
                };
            }
        }
    }
    Ok(Val::f(x.dtype, x.shape.clone(), out))
}

fn concat<T: Float>(ins: &[Rc<Val<T>>], axis: usize) -> R<Val<T>> {
    let first = &ins[0];
    let r = first.shape.len();
    if axis >= r {
        return Err(format!(
            "concat axis {axis} out of range for {:?}",
            first.shape
        ));
    }
    let mut sh = first.shape.clone();
    sh[axis] = 0;
    for x in ins {
        if x.shape.len() != r || (0..r).any(|a| a != axis && x.shape[a] != first.shape[a]) {
            return Err(format!(
                "cannot concatenate {:?} with {:?} on axis {axis}",
                first.shape, x.shape
            ));
        }
        sh[axis] += x.shape[axis];
    }
    let buf = match &first.buf {
        Buf::F(_) => {
            let parts: Vec<Vec<T>> = ins.iter().map(|x| x.as_f()).collect();
            Buf::F(k::concat(
                &parts
                    .iter()
                    .zip(ins)
                    .map(|(p, x)| (&p[..], &x.shape[..]))
                    .collect::<Vec<_>>(),
                axis,
            ))
        }
        Buf::I(_) => {
            let parts: Vec<Vec<i64>> = ins.iter().map(|x| x.ints()).collect::<R<_>>()?;
            Buf::I(k::concat(
                &parts
                    .iter()
                    .zip(ins)
                    .map(|(p, x)| (&p[..], &x.shape[..]))
                    .collect::<Vec<_>>(),
                axis,
            ))
        }
        Buf::B(_) => {
            let parts: Vec<Vec<bool>> = ins
                .iter()
                .map(|x| match &x.buf {
                    Buf::B(v) => Ok(v.clone()),
                    _ => Err("cannot concatenate booleans with numbers".to_string()),
                })
                .collect::<R<_>>()?;
            Buf::B(k::concat(
                &parts
                    .iter()
                    .zip(ins)
                    .map(|(p, x)| (&p[..], &x.shape[..]))
                    .collect::<Vec<_>>(),
                axis,
            ))
        }
    };
    Ok(Val {
        dtype: first.dtype,
        shape: sh,
        buf,
    })
}

fn gather<T: Float>(x: &Val<T>, idx: &Val<T>, axis: usize) -> R<Val<T>> {
    let (_, d, _) = split_at(x, axis)?;
    let ids: Vec<usize> = idx
        .ints()?
        .iter()
        .map(|i| {
            let j = if *i < 0 { *i + d as i64 } else { *i };
            usize::try_from(j)
                .ok()
                .filter(|j| *j < d)
                .ok_or_else(|| format!("gather index {i} out of range for axis of {d}"))
        })
        .collect::<R<_>>()?;
    let mut sh: Vec<usize> = x.shape[..axis].to_vec();
    sh.extend_from_slice(&idx.shape);
    sh.extend_from_slice(&x.shape[axis + 1..]);
    Ok(x.map_buf(sh, |m| m.take(&x.shape, axis, &ids)))
}

fn gather_nd<T: Float>(x: &Val<T>, idx: &Val<T>, bd: usize) -> R<Val<T>> {
    let ish = &idx.shape;
    let q = *ish.last().ok_or("GatherND indices are a scalar")?;
    if bd + q > x.shape.len() || bd >= ish.len() || ish[..bd] != x.shape[..bd] {
        return Err(format!(
            "GatherND of {:?} with indices {:?}, batch_dims {bd}",
            x.shape, ish
        ));
    }
    let ids = idx.ints()?;
    let batch: usize = x.shape[..bd].iter().product();
    let slice: usize = x.shape[bd + q..].iter().product();
    let per_batch: usize = x.shape[bd..].iter().product();
    let n_tuples = ids.len() / q.max(1);
    let tuples_per_batch = n_tuples / batch.max(1);
    let st = k::strides(&x.shape[bd..bd + q]);
    let mut offs = Vec::with_capacity(n_tuples);
    for t in 0..n_tuples {
        let b = t / tuples_per_batch.max(1);
        let mut off = 0usize;
        for (j, s) in st.iter().enumerate() {
            let dj = x.shape[bd + j] as i64;
            let i = ids[t * q + j];
            let i = if i < 0 { i + dj } else { i };
            if !(0..dj).contains(&i) {
                return Err(format!(
                    "GatherND index {} out of range for {dj}",
                    ids[t * q + j]
                ));
            }
            off += i as usize * s;
        }
        offs.push(b * per_batch / slice.max(1) + off);
    }
    let mut sh: Vec<usize> = ish[..ish.len() - 1].to_vec();
    sh.extend_from_slice(&x.shape[bd + q..]);
    let flat = [x.numel() / slice.max(1), slice];
    Ok(x.map_buf(sh, |m| m.take(&flat, 0, &offs)))
}

fn trilu<T: Float>(x: &Val<T>, upper: bool, diag: i64) -> R<Val<T>> {
    let r = x.shape.len();
    if r < 2 {
        return Err("Trilu needs at least two axes".into());
    }
    let (m, n) = (x.shape[r - 2], x.shape[r - 1]);
    let keep = |i: usize, j: usize| {
        let dlt = j as i64 - i as i64;
        if upper { dlt >= diag } else { dlt <= diag }
    };
    let mask: Vec<bool> = (0..x.numel()).map(|e| keep((e / n) % m, e % n)).collect();
    let buf = match &x.buf {
        Buf::F(v) => Buf::F(
            v.iter()
                .zip(&mask)
                .map(|(a, k)| if *k { *a } else { T::ZERO })
                .collect(),
        ),
        Buf::I(v) => Buf::I(
            v.iter()
                .zip(&mask)
                .map(|(a, k)| if *k { *a } else { 0 })
                .collect(),
        ),
        Buf::B(v) => Buf::B(v.iter().zip(&mask).map(|(a, k)| *a && *k).collect()),
    };
    Ok(Val {
        dtype: x.dtype,
        shape: x.shape.clone(),
        buf,
    })
}
