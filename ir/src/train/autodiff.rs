//! Reverse-mode autodiff over the canonical ops, with recomputation.
//!
//! Backward nodes are emitted in reverse forward order. Fused ops get their fused backward ops
//! ([`Op::AttentionBackward`] from the saved `lse`, norm, rotary, embedding and cross-entropy backward);
//! primitives get broadcasting-aware formulas in primitive ops. Saved values are read through
//! [`Builder::fetch`], which applies the recomputation policy: `full` reruns a decoder layer's forward
//! (phase [`Phase::Recompute`]) the first time its backward needs one of its values; `selective` reruns
//! only attention; `selective-op` reruns the layer like `full` except the ops torchtitan's per-op
//! policy saves ([`op_policy_saves`]).

use super::build::{Builder, Ctx};
use super::options::RecomputePolicy;
use crate::cost::{BlockKind, Phase, Role};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{NodeId, Value};
use crate::op::{BinaryOp, CollectiveKind, Op, ReduceKind, UnaryOp};
use crate::shape::{Shape, TensorType};

fn err(node: &str, what: impl std::fmt::Display) -> IrError {
    IrError::Analysis(format!("autodiff at `{node}`: {what}"))
}

/// Whether torchtitan's per-op selective activation-checkpointing policy saves the output of this
/// forward op of a decoder layer (torchtitan `apply_ac`: `_save_list` holds `aten.mm`, the SDPA
/// flash / efficient kernels and `reduce_scatter_tensor`; "Saves output of all compute ops, except
/// every second mm", counting mms from 1 per layer). `matmuls` counts the layer's matmuls so far
/// (a linear is one `aten.mm`).
pub(super) fn op_policy_saves(op: &Op, matmuls: &mut usize) -> bool {
    match op {
        Op::Linear { .. } | Op::MatMul => {
            *matmuls += 1;
            *matmuls % 2 == 1
        }
        Op::Attention { .. } => true,
        Op::Collective { kind, .. } => *kind == CollectiveKind::ReduceScatter,
        _ => false,
    }
}

/// Symbolic NumPy broadcast of two shapes.
pub(super) fn bshape(a: &Shape, b: &Shape) -> Option<Shape> {
    let r = a.rank().max(b.rank());
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.rank() >= r {
            a.0[i + a.rank() - r].clone()
        } else {
            one.clone()
        };
        let db = if i + b.rank() >= r {
            b.0[i + b.rank() - r].clone()
        } else {
            one.clone()
        };
        out.push(if da == db || db == one {
            da
        } else if da == one {
            db
        } else {
            return None;
        });
    }
    Some(Shape(out))
}

impl Builder<'_> {
    fn bin(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value> {
        let (ta, tb) = (self.ty(a), self.ty(b));
        let sh = bshape(&ta.shape, &tb.shape)
            .ok_or_else(|| err(&self.ctx.scope, format!("cannot broadcast {ta} with {tb}")))?;
        let dt = if matches!(
            op,
            BinaryOp::Equal
                | BinaryOp::Less
                | BinaryOp::LessOrEqual
                | BinaryOp::Greater
                | BinaryOp::GreaterOrEqual
        ) {
            DType::Bool
        } else {
            ta.dtype
        };
        Ok(self.add1(Op::Binary(op), vec![a, b], TensorType::new(dt, sh)))
    }
    fn un(&mut self, op: UnaryOp, a: Value) -> Value {
        let t = self.ty(a);
        self.add1(Op::Unary(op), vec![a], t)
    }
    fn mul(&mut self, a: Value, b: Value) -> Result<Value> {
        self.bin(BinaryOp::Mul, a, b)
    }
    fn mulc(&mut self, a: Value, c: f64) -> Result<Value> {
        let k = self.scalar(c, self.ty(a).dtype);
        self.bin(BinaryOp::Mul, a, k)
    }
    fn addc(&mut self, a: Value, c: f64) -> Result<Value> {
        let k = self.scalar(c, self.ty(a).dtype);
        self.bin(BinaryOp::Add, a, k)
    }
    /// `c - a`.
    fn rsubc(&mut self, c: f64, a: Value) -> Result<Value> {
        let k = self.scalar(c, self.ty(a).dtype);
        self.bin(BinaryOp::Sub, k, a)
    }
    fn where_(&mut self, c: Value, a: Value, b: Value) -> Result<Value> {
        let (tc, ta, tb) = (self.ty(c), self.ty(a), self.ty(b));
        let sh = bshape(&tc.shape, &ta.shape)
            .and_then(|s| bshape(&s, &tb.shape))
            .ok_or_else(|| err(&self.ctx.scope, "Where operands do not broadcast"))?;
        Ok(self.add1(Op::Where, vec![c, a, b], TensorType::new(ta.dtype, sh)))
    }
    fn transpose(&mut self, a: Value, perm: Vec<usize>) -> Value {
        let t = self.ty(a);
        let sh = Shape(perm.iter().map(|p| t.shape.0[*p].clone()).collect());
        self.add1(Op::Transpose(perm), vec![a], TensorType::new(t.dtype, sh))
    }
    fn reshape(&mut self, a: Value, sh: Shape) -> Value {
        let t = self.ty(a);
        if t.shape == sh {
            return a;
        }
        self.add1(
            Op::Reshape(sh.clone()),
            vec![a],
            TensorType::new(t.dtype, sh),
        )
    }
    fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        let (ta, tb) = (self.ty(a), self.ty(b));
        let (ra, rb) = (ta.shape.rank(), tb.shape.rank());
        if ra < 2 || rb < 2 {
            return Err(err(
                &self.ctx.scope,
                "MatMul backward needs operands of rank ≥ 2",
            ));
        }
        let mut sh = bshape(
            &Shape(ta.shape.0[..ra - 2].to_vec()),
            &Shape(tb.shape.0[..rb - 2].to_vec()),
        )
        .ok_or_else(|| err(&self.ctx.scope, "MatMul batch axes do not broadcast"))?;
        sh.0.push(ta.shape.0[ra - 2].clone());
        sh.0.push(tb.shape.0[rb - 1].clone());
        Ok(self.add1(Op::MatMul, vec![a, b], TensorType::new(ta.dtype, sh)))
    }
    fn swap_last(&mut self, a: Value) -> Value {
        let r = self.ty(a).shape.rank();
        let mut p: Vec<usize> = (0..r).collect();
        p.swap(r - 2, r - 1);
        self.transpose(a, p)
    }
    fn sum_axes(&mut self, a: Value, axes: Vec<usize>, keep: bool) -> Value {
        let t = self.ty(a);
        let mut sh = Vec::new();
        for (i, d) in t.shape.0.iter().enumerate() {
            if axes.contains(&i) {
                if keep {
                    sh.push(Dim::constant(1));
                }
            } else {
                sh.push(d.clone());
            }
        }
        self.add1(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
                keep_dims: keep,
            },
            vec![a],
            TensorType::new(t.dtype, Shape(sh)),
        )
    }

    /// Reduces a gradient of a broadcast result back to the operand's shape.
    fn unbroadcast(&mut self, g: Value, target: &Shape) -> Value {
        let gs = self.ty(g).shape;
        if &gs == target {
            return g;
        }
        let lead = gs.rank().saturating_sub(target.rank());
        let one = Dim::constant(1);
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, d) in target.0.iter().enumerate() {
            if *d == one && gs.0[lead + i] != one {
                axes.push(lead + i);
            }
        }
        let s = if axes.is_empty() {
            g
        } else {
            self.sum_axes(g, axes, true)
        };
        self.reshape(s, target.clone())
    }

    /// Adds `g` to the gradient of `v`.
    fn acc(&mut self, v: Value, g: Value) -> Result<()> {
        let vt = self.ty(v);
        let g = if self.ty(g).dtype != vt.dtype {
            self.cast(g, vt.dtype, true)
        } else {
            g
        };
        let g = if self.ty(g).shape != vt.shape {
            self.unbroadcast(g, &vt.shape)
        } else {
            g
        };
        let new = match self.grads.get(&v) {
            Some(prev) => {
                let p = *prev;
                self.bin(BinaryOp::Add, p, g)?
            }
            None => g,
        };
        self.grads.insert(v, new);
        Ok(())
    }

    /// A forward value as backward reads it, after the recomputation policy.
    pub(super) fn fetch(&mut self, v: Value) -> Value {
        if let Some(r) = self.recomputed.get(&v) {
            return *r;
        }
        let node = self.g.node(v.node);
        if self.meta[v.node.index()].phase != Phase::Forward
            || matches!(
                node.op,
                Op::Param { .. } | Op::Constant(_) | Op::Input { .. }
            )
        {
            return v;
        }
        match self.opts.recompute {
            RecomputePolicy::None => v,
            RecomputePolicy::Selective => {
                if !matches!(node.op, Op::Attention { .. }) {
                    return v;
                }
                let (op, ins, outs) = (node.op.clone(), node.inputs.clone(), node.outputs.clone());
                let saved = self.ctx.clone();
                self.ctx = Ctx {
                    phase: Phase::Recompute,
                    origin: Some(v.node),
                    role: Role::Plain,
                    ..saved.clone()
                };
                let ins: Vec<Value> = ins.into_iter().map(|i| self.fetch(i)).collect();
                let id = self.add(op, ins, outs.clone());
                self.ctx = saved;
                for i in 0..outs.len() {
                    self.recomputed.insert(
                        Value {
                            node: v.node,
                            output: i as u32,
                        },
                        Value {
                            node: id,
                            output: i as u32,
                        },
                    );
                }
                self.recomputed[&v]
            }
            RecomputePolicy::Full | RecomputePolicy::SelectiveOp => {
                // Only the layer's own backward reruns it; other blocks read the kept layer output.
                let Some(l) = node.prov.layer.filter(|l| self.ctx.layer == Some(*l)) else {
                    return v;
                };
                if !self.recomputed_layers.insert(l) {
                    return self.recomputed.get(&v).copied().unwrap_or(v);
                }
                let per_op = self.opts.recompute == RecomputePolicy::SelectiveOp;
                let mut matmuls = 0usize;
                let nodes = self.layer_nodes.get(&l).cloned().unwrap_or_default();
                let saved = self.ctx.clone();
                for n in nodes {
                    let nd = self.g.node(n);
                    if matches!(nd.op, Op::Param { .. } | Op::Constant(_) | Op::Input { .. }) {
                        continue;
                    }
                    // Ops the per-op policy saves keep their forward output (readers use it).
                    if per_op && op_policy_saves(&nd.op, &mut matmuls) {
                        continue;
                    }
                    let (op, ins, outs, scope) = (
                        nd.op.clone(),
                        nd.inputs.clone(),
                        nd.outputs.clone(),
                        nd.prov.scope.clone(),
                    );
                    let role = self.meta[n.index()].role;
                    self.ctx = Ctx {
                        phase: Phase::Recompute,
                        block: BlockKind::Decoder(l),
                        layer: Some(l),
                        scope,
                        origin: Some(n),
                        role,
                    };
                    let ins: Vec<Value> = ins
                        .into_iter()
                        .map(|i| self.recomputed.get(&i).copied().unwrap_or(i))
                        .collect();
                    let id = self.add(op, ins, outs.clone());
                    for i in 0..outs.len() {
                        self.recomputed.insert(
                            Value {
                                node: n,
                                output: i as u32,
                            },
                            Value {
                                node: id,
                                output: i as u32,
                            },
                        );
                    }
                }
                self.ctx = saved;
                self.recomputed.get(&v).copied().unwrap_or(v)
            }
        }
    }

    /// Emits the backward pass of `loss` over the forward nodes.
    pub(super) fn backward(&mut self, loss: Value) -> Result<()> {
        self.ctx = Ctx {
            phase: Phase::Backward,
            block: BlockKind::Head,
            layer: None,
            scope: "loss".into(),
            origin: Some(loss.node),
            role: Role::Plain,
        };
        if !self.requires_grad.contains(&loss) {
            return Err(IrError::Analysis(
                "the loss does not depend on any trainable parameter".into(),
            ));
        }
        let seed = self.scalar(1.0, DType::F32);
        self.grads.insert(loss, seed);
        let order: Vec<NodeId> = self.fwd_nodes.clone();
        for id in order.into_iter().rev() {
            let n = self.g.node(id);
            let nout = n.outputs.len();
            let gys: Vec<Option<Value>> = (0..nout)
                .map(|i| {
                    self.grads
                        .get(&Value {
                            node: id,
                            output: i as u32,
                        })
                        .copied()
                })
                .collect();
            if gys.iter().all(Option::is_none) {
                continue;
            }
            let m = &self.meta[id.index()];
            self.ctx = Ctx {
                phase: Phase::Backward,
                block: m.block,
                layer: n.prov.layer,
                scope: n.prov.scope.clone(),
                origin: Some(id),
                role: m.role.of_gradient(),
            };
            self.diff(id, &gys)?;
        }
        Ok(())
    }

    fn needs(&self, v: Value) -> bool {
        self.requires_grad.contains(&v)
    }

    /// Emits the backward of one forward node given its output gradients. One arm per op, grouped
    /// by op family (the same families, in the same order, as `interp::exec` and the runtime's
    /// `emit::nn`): sources, elementwise, reductions and normalization, shape and layout, matmul and
    /// attention, embedding and loss, optimizers, collectives, mixture of experts. Each arm calls
    /// its family's rule below; ops with no rule (backward and optimizer ops are never
    /// differentiated again) say so in their family, so a new `Op` variant is a compile error here.
    fn diff(&mut self, id: NodeId, gys: &[Option<Value>]) -> Result<()> {
        let n = self.g.node(id).clone();
        let name = if n.prov.scope.is_empty() {
            n.prov.name.clone()
        } else {
            format!("{} ({})", n.prov.scope, n.op.kind_name())
        };
        let ins = n.inputs.clone();
        let Some(g) = gys[0] else {
            // Only a secondary output (e.g. attention's lse) has a gradient: nothing flows back.
            return Ok(());
        };
        let need: Vec<bool> = ins.iter().map(|v| self.needs(*v)).collect();
        let d = Grad {
            id,
            ins: &ins,
            need: &need,
            g,
            name: &name,
        };
        match &n.op {
            // sources
            Op::Param { .. } | Op::Input { .. } | Op::Constant(_) | Op::Range { .. } => Ok(()),
            // elementwise
            Op::Unary(u) => self.grad_unary(&d, *u),
            Op::Binary(bop) => self.binary_grad(*bop, &ins, &need, d.y(), g, &name),
            Op::Where => self.grad_where(&d),
            Op::Cast(_) => self.grad_cast(&d),
            // reductions and normalization
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => self.grad_reduce(&d, *kind, axes, *keep_dims),
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => self.grad_cumsum(&d, *axis, *exclusive, *reverse),
            Op::Softmax { axis } => self.grad_softmax(&d, *axis),
            Op::LogSoftmax { axis } => self.grad_log_softmax(&d, *axis),
            Op::RmsNorm { eps } => self.grad_rms_norm(&d, *eps),
            Op::LayerNorm { eps } => self.grad_layer_norm(&d, *eps),
            op @ (Op::RmsNormBackward { .. } | Op::LayerNormBackward { .. }) => d.no_rule(op),
            // shape and layout
            Op::Reshape(_) => self.grad_reshape(&d),
            Op::Transpose(perm) => self.grad_transpose(&d, perm),
            Op::Expand(_) => self.grad_expand(&d),
            Op::Concat { axis } => self.grad_concat(&d, *axis),
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => self.grad_slice(&d, *axis, start, end, *step),
            Op::Gather { axis } => self.grad_gather(&d, *axis),
            Op::Trilu { upper, k } => self.grad_trilu(&d, *upper, *k),
            op @ Op::GatherNd { .. } => d.no_rule(op),
            // matmul and attention
            Op::MatMul => self.grad_matmul(&d),
            Op::Linear { bias } => self.grad_linear(&d, *bias),
            Op::Rotary => self.grad_rotary(&d),
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
            } => self.grad_attention(&d, *heads, *kv_heads, *scale, *causal),
            op @ (Op::RotaryBackward | Op::AttentionBackward { .. }) => d.no_rule(op),
            // embedding and loss
            Op::Embedding => self.grad_embedding(&d),
            Op::CrossEntropy { ignore_index } => self.grad_cross_entropy(&d, *ignore_index),
            op @ (Op::EmbeddingBackward { .. } | Op::CrossEntropyBackward { .. }) => d.no_rule(op),
            // optimizers
            op @ (Op::AdamW { .. } | Op::SgdMomentum { .. }) => d.no_rule(op),
            // collectives: all-reduce and copy-to-group are each other's gradient; the others have
            // no rule yet
            Op::Collective {
                kind: CollectiveKind::AllReduce,
                ..
            } => self.grad_all_reduce(&d),
            Op::Collective {
                kind: CollectiveKind::CopyToGroup,
                group_size,
                ..
            } => self.grad_copy_to_group(&d, *group_size),
            op @ Op::Collective { .. } => d.no_rule(op),
            // mixture of experts
            Op::MoeExperts {
                experts,
                topk,
                norm_topk,
                capacity_factor,
            } => self.grad_moe_experts(&d, *experts, *topk, *norm_topk, *capacity_factor),
            op @ Op::MoeExpertsBackward { .. } => d.no_rule(op),
        }
    }

    /// Accumulates output `i` of the backward node `b` into input `i`'s gradient for every input
    /// `i < n` that needs one.
    fn acc_outputs(&mut self, d: &Grad<'_>, b: NodeId, n: usize) -> Result<()> {
        for i in 0..n {
            if d.need[i] {
                self.acc(
                    d.ins[i],
                    Value {
                        node: b,
                        output: i as u32,
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// What one node's backward rule reads: the forward node, its inputs, which of them need a
/// gradient, the gradient of its first output, and its name for errors.
struct Grad<'n> {
    id: NodeId,
    ins: &'n [Value],
    need: &'n [bool],
    g: Value,
    name: &'n str,
}

impl Grad<'_> {
    /// The forward node's first output.
    fn y(&self) -> Value {
        Value::of(self.id)
    }

    /// Whether input `i` needs a gradient (false when the node has no input `i`).
    fn needs(&self, i: usize) -> bool {
        self.need.get(i).copied().unwrap_or(false)
    }

    /// The error for an op without a gradient rule.
    fn no_rule(&self, op: &Op) -> Result<()> {
        Err(err(
            self.name,
            format!("no gradient rule for {}", op.kind_name()),
        ))
    }
}

/// Elementwise rules (`unary_grad` and `binary_grad` hold the per-function formulas).
impl Builder<'_> {
    /// `Unary`: the function's derivative times the gradient.
    fn grad_unary(&mut self, d: &Grad<'_>, u: UnaryOp) -> Result<()> {
        if d.need[0] {
            // An activation's gradient is one kernel on every engine (`Role::ActivationGrad`).
            let role = self.ctx.role;
            if matches!(u, UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::GeluTanh) {
                self.ctx.role = Role::ActivationGrad;
            }
            let dx = self.unary_grad(u, d.ins[0], d.y(), d.g, d.name);
            self.ctx.role = role;
            self.acc(d.ins[0], dx?)?;
        }
        Ok(())
    }

    /// `Where`: the gradient flows to the branch the condition picked.
    fn grad_where(&mut self, d: &Grad<'_>) -> Result<()> {
        let zero = self.scalar(0.0, self.ty(d.g).dtype);
        let c = self.fetch(d.ins[0]);
        if d.need[1] {
            let da = self.where_(c, d.g, zero)?;
            self.acc(d.ins[1], da)?;
        }
        if d.need[2] {
            let db = self.where_(c, zero, d.g)?;
            self.acc(d.ins[2], db)?;
        }
        Ok(())
    }

    /// `Cast`: the gradient cast back to the input's type.
    fn grad_cast(&mut self, d: &Grad<'_>) -> Result<()> {
        let g = self.cast(d.g, self.ty(d.ins[0]).dtype, true);
        self.acc(d.ins[0], g)
    }
}

/// Reductions and normalization.
impl Builder<'_> {
    /// `Reduce` (sum and mean): the gradient broadcast back over the reduced axes.
    fn grad_reduce(
        &mut self,
        d: &Grad<'_>,
        kind: ReduceKind,
        axes: &[usize],
        keep_dims: bool,
    ) -> Result<()> {
        if !d.need[0] {
            return Ok(());
        }
        let tx = self.ty(d.ins[0]);
        let axes: Vec<usize> = if axes.is_empty() {
            (0..tx.shape.rank()).collect()
        } else {
            axes.to_vec()
        };
        let mut g = d.g;
        if !keep_dims {
            let ks = Shape(
                tx.shape
                    .0
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        if axes.contains(&i) {
                            Dim::constant(1)
                        } else {
                            d.clone()
                        }
                    })
                    .collect(),
            );
            g = self.reshape(g, ks);
        }
        match kind {
            ReduceKind::Sum => {}
            ReduceKind::Mean => {
                let cnt = axes
                    .iter()
                    .fold(Dim::constant(1), |a, i| a.mul(&tx.shape.0[*i]));
                let c = cnt
                    .as_const()
                    .ok_or_else(|| err(d.name, format!("mean over a symbolic count {cnt}")))?;
                g = self.mulc(g, 1.0 / c as f64)?;
            }
            k => {
                return Err(err(
                    d.name,
                    format!("gradient of Reduce.{k:?} is not supported"),
                ));
            }
        }
        let e = self.add1(
            Op::Expand(tx.shape.clone()),
            vec![g],
            TensorType::new(self.ty(g).dtype, tx.shape.clone()),
        );
        self.acc(d.ins[0], e)
    }

    /// `CumSum`: the cumulative sum of the gradient in the other direction.
    fn grad_cumsum(
        &mut self,
        d: &Grad<'_>,
        axis: usize,
        exclusive: bool,
        reverse: bool,
    ) -> Result<()> {
        if d.need[0] {
            let t = self.ty(d.g);
            let dx = self.add1(
                Op::CumSum {
                    axis,
                    exclusive,
                    reverse: !reverse,
                },
                vec![d.g],
                t,
            );
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `Softmax`: `y · (g − Σ g·y)`.
    fn grad_softmax(&mut self, d: &Grad<'_>, axis: usize) -> Result<()> {
        if d.need[0] {
            let yv = self.fetch(d.y());
            let gy = self.mul(d.g, yv)?;
            let s = self.sum_axes(gy, vec![axis], true);
            let t = self.bin(BinaryOp::Sub, d.g, s)?;
            let dx = self.mul(yv, t)?;
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `LogSoftmax`: `g − exp(y) · Σ g`.
    fn grad_log_softmax(&mut self, d: &Grad<'_>, axis: usize) -> Result<()> {
        if d.need[0] {
            let yv = self.fetch(d.y());
            let p = self.un(UnaryOp::Exp, yv);
            let s = self.sum_axes(d.g, vec![axis], true);
            let ps = self.mul(p, s)?;
            let dx = self.bin(BinaryOp::Sub, d.g, ps)?;
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `RmsNorm`: one fused `RmsNormBackward`.
    fn grad_rms_norm(&mut self, d: &Grad<'_>, eps: f64) -> Result<()> {
        let (x, w) = (self.fetch(d.ins[0]), self.fetch(d.ins[1]));
        let (tx, tw) = (self.ty(d.ins[0]), self.ty(d.ins[1]));
        let b = self.add(Op::RmsNormBackward { eps }, vec![x, w, d.g], vec![tx, tw]);
        if d.need[0] {
            self.acc(d.ins[0], Value { node: b, output: 0 })?;
        }
        if d.need[1] {
            self.acc(d.ins[1], Value { node: b, output: 1 })?;
        }
        Ok(())
    }

    /// `LayerNorm`: one fused `LayerNormBackward`.
    fn grad_layer_norm(&mut self, d: &Grad<'_>, eps: f64) -> Result<()> {
        let (x, w) = (self.fetch(d.ins[0]), self.fetch(d.ins[1]));
        let (tx, tw, tb) = (self.ty(d.ins[0]), self.ty(d.ins[1]), self.ty(d.ins[2]));
        let b = self.add(
            Op::LayerNormBackward { eps },
            vec![x, w, d.g],
            vec![tx, tw, tb],
        );
        self.acc_outputs(d, b, 3)
    }
}

/// Shape and layout: each gradient is the inverse movement of the gradient.
impl Builder<'_> {
    /// `Reshape`: the gradient reshaped back.
    fn grad_reshape(&mut self, d: &Grad<'_>) -> Result<()> {
        if d.need[0] {
            let sh = self.ty(d.ins[0]).shape;
            let dx = self.reshape(d.g, sh);
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `Transpose`: the gradient under the inverse permutation.
    fn grad_transpose(&mut self, d: &Grad<'_>, perm: &[usize]) -> Result<()> {
        if d.need[0] {
            let mut inv = vec![0; perm.len()];
            for (i, p) in perm.iter().enumerate() {
                inv[*p] = i;
            }
            let dx = self.transpose(d.g, inv);
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `Expand`: the gradient summed over the broadcast axes.
    fn grad_expand(&mut self, d: &Grad<'_>) -> Result<()> {
        if d.need[0] {
            let sh = self.ty(d.ins[0]).shape;
            let dx = self.unbroadcast(d.g, &sh);
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `Concat`: each input's slice of the gradient.
    fn grad_concat(&mut self, d: &Grad<'_>, axis: usize) -> Result<()> {
        let mut off = Dim::constant(0);
        for (i, v) in d.ins.iter().enumerate() {
            let t = self.ty(*v);
            let len = t.shape.0[axis].clone();
            if d.need[i] {
                let dx = self.add1(
                    Op::Slice {
                        axis,
                        start: off.clone(),
                        end: off.add(&len),
                        step: 1,
                    },
                    vec![d.g],
                    t,
                );
                self.acc(*v, dx)?;
            }
            off = off.add(&len);
        }
        Ok(())
    }

    /// `Slice` (unit step): the gradient padded with zeros to the input's extent.
    fn grad_slice(
        &mut self,
        d: &Grad<'_>,
        axis: usize,
        start: &Dim,
        end: &Dim,
        step: i64,
    ) -> Result<()> {
        if !d.need[0] {
            return Ok(());
        }
        if step != 1 {
            return Err(err(d.name, "gradient of a strided slice is not supported"));
        }
        let g = d.g;
        let tx = self.ty(d.ins[0]);
        let dim = tx.shape.0[axis].clone();
        let dt = self.ty(g).dtype;
        let mut parts = Vec::new();
        let zero = Dim::constant(0);
        for (len, before) in [(start.clone(), true), (dim.sub(end), false)] {
            if len == zero {
                continue;
            }
            let mut sh = tx.shape.clone();
            sh.0[axis] = len;
            let z = self.scalar(0.0, dt);
            let z = self.add1(Op::Expand(sh.clone()), vec![z], TensorType::new(dt, sh));
            parts.push((before, z));
        }
        let mut pieces: Vec<Value> = parts.iter().filter(|p| p.0).map(|p| p.1).collect();
        pieces.push(g);
        pieces.extend(parts.iter().filter(|p| !p.0).map(|p| p.1));
        let dx = if pieces.len() == 1 {
            g
        } else {
            self.add1(
                Op::Concat { axis },
                pieces,
                TensorType::new(dt, tx.shape.clone()),
            )
        };
        self.acc(d.ins[0], dx)
    }

    /// `Gather` (row lookups in a 2-D table only): an `EmbeddingBackward` scatter-add.
    fn grad_gather(&mut self, d: &Grad<'_>, axis: usize) -> Result<()> {
        if d.need[0] {
            let tt = self.ty(d.ins[0]);
            if axis != 0 || tt.shape.rank() != 2 {
                return Err(err(
                    d.name,
                    "gradient of Gather is only supported for row lookups in a 2-D table",
                ));
            }
            let vocab = tt.shape.0[0]
                .as_const()
                .ok_or_else(|| err(d.name, "gathered table rows are symbolic"))?
                as usize;
            let ids = self.fetch(d.ins[1]);
            let dt = self.add1(Op::EmbeddingBackward { vocab }, vec![ids, d.g], tt);
            self.acc(d.ins[0], dt)?;
        }
        Ok(())
    }

    /// `Trilu`: the same triangle of the gradient.
    fn grad_trilu(&mut self, d: &Grad<'_>, upper: bool, k: i64) -> Result<()> {
        if d.need[0] {
            let t = self.ty(d.g);
            let dx = self.add1(Op::Trilu { upper, k }, vec![d.g], t);
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }
}

/// Matmul and attention.
impl Builder<'_> {
    /// `MatMul`: `dA = G·Bᵀ`, `dB = Aᵀ·G`, each reduced over broadcast batch axes.
    fn grad_matmul(&mut self, d: &Grad<'_>) -> Result<()> {
        let (a, b) = (d.ins[0], d.ins[1]);
        let (ta, tb) = (self.ty(a), self.ty(b));
        if d.need[0] {
            let bv = self.fetch(b);
            let bt = self.swap_last(bv);
            let da = self.matmul(d.g, bt)?;
            let da = self.unbroadcast(da, &ta.shape);
            self.acc(a, da)?;
        }
        if d.need[1] {
            let av = self.fetch(a);
            let at = self.swap_last(av);
            let db = self.matmul(at, d.g)?;
            let db = self.unbroadcast(db, &tb.shape);
            self.acc(b, db)?;
        }
        Ok(())
    }

    /// `Linear`: `dx = G·Wᵀ` (role `LinearDx`), `dW = xᵀ·G` over flattened rows (role
    /// `LinearDw`), `db = Σ G`.
    fn grad_linear(&mut self, d: &Grad<'_>, bias: bool) -> Result<()> {
        let g = d.g;
        let (x, w) = (d.ins[0], d.ins[1]);
        let (tx, tw) = (self.ty(x), self.ty(w));
        if d.need[0] {
            self.ctx.role = Role::LinearDx;
            let wv = self.fetch(w);
            let wt = self.transpose(wv, vec![1, 0]);
            let dx = self.matmul(g, wt)?;
            self.ctx.role = Role::Plain;
            self.acc(x, dx)?;
        }
        if d.need[1] {
            let rows = tx.shape.0[..tx.shape.rank() - 1]
                .iter()
                .fold(Dim::constant(1), |a, d| a.mul(d));
            let (i, o) = (tw.shape.0[0].clone(), tw.shape.0[1].clone());
            self.ctx.role = Role::LinearDw;
            let xv = self.fetch(x);
            let x2 = self.reshape(xv, Shape(vec![rows.clone(), i]));
            let xt = self.transpose(x2, vec![1, 0]);
            let g2 = self.reshape(g, Shape(vec![rows, o]));
            let dw = self.matmul(xt, g2)?;
            self.ctx.role = Role::Plain;
            self.acc(w, dw)?;
        }
        if bias && d.needs(2) {
            let r = self.ty(g).shape.rank();
            let db = self.sum_axes(g, (0..r - 1).collect(), false);
            self.acc(d.ins[2], db)?;
        }
        Ok(())
    }

    /// `Rotary`: one `RotaryBackward` (cos and sin must be constants).
    fn grad_rotary(&mut self, d: &Grad<'_>) -> Result<()> {
        if d.need[1] || d.need[2] {
            return Err(err(
                d.name,
                "rotary cos/sin must not depend on trainable parameters",
            ));
        }
        if d.need[0] {
            let (c, s) = (self.fetch(d.ins[1]), self.fetch(d.ins[2]));
            let tx = self.ty(d.ins[0]);
            let dx = self.add1(Op::RotaryBackward, vec![d.g, c, s], tx);
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }

    /// `Attention`: one fused `AttentionBackward` from the saved output and `lse`.
    fn grad_attention(
        &mut self,
        d: &Grad<'_>,
        heads: usize,
        kv_heads: usize,
        scale: f64,
        causal: bool,
    ) -> Result<()> {
        if d.needs(3) {
            return Err(err(
                d.name,
                "attention masks must not depend on trainable parameters",
            ));
        }
        let mut bins: Vec<Value> = d.ins[..3].iter().map(|v| self.fetch(*v)).collect();
        let out = self.fetch(Value {
            node: d.id,
            output: 0,
        });
        let lse = self.fetch(Value {
            node: d.id,
            output: 1,
        });
        bins.extend([out, lse, d.g]);
        if let Some(m) = d.ins.get(3) {
            bins.push(self.fetch(*m));
        }
        let outs = vec![self.ty(d.ins[0]), self.ty(d.ins[1]), self.ty(d.ins[2])];
        let b = self.add(
            Op::AttentionBackward {
                heads,
                kv_heads,
                scale,
                causal,
            },
            bins,
            outs,
        );
        self.acc_outputs(d, b, 3)
    }
}

/// Embedding and loss.
impl Builder<'_> {
    /// `Embedding`: an `EmbeddingBackward` scatter-add into the table.
    fn grad_embedding(&mut self, d: &Grad<'_>) -> Result<()> {
        if d.need[0] {
            let tt = self.ty(d.ins[0]);
            let vocab = tt.shape.0[0]
                .as_const()
                .ok_or_else(|| err(d.name, "embedding table rows are symbolic"))?
                as usize;
            let ids = self.fetch(d.ins[1]);
            let dt = self.add1(Op::EmbeddingBackward { vocab }, vec![ids, d.g], tt);
            self.acc(d.ins[0], dt)?;
        }
        Ok(())
    }

    /// `CrossEntropy`: one fused `CrossEntropyBackward` into the logits.
    fn grad_cross_entropy(&mut self, d: &Grad<'_>, ignore_index: i64) -> Result<()> {
        if d.need[0] {
            let (lg, t) = (self.fetch(d.ins[0]), self.fetch(d.ins[1]));
            let tl = self.ty(d.ins[0]);
            let dl = self.add1(
                Op::CrossEntropyBackward { ignore_index },
                vec![lg, t, d.g],
                tl,
            );
            self.acc(d.ins[0], dl)?;
        }
        Ok(())
    }
}

/// Collectives: tensor parallelism (Megatron-LM's f and g). An all-reduce of partial sums feeds
/// replicated computation, whose gradient is already whole on every rank (identity); where a
/// replicated value enters a tensor-parallel region, each rank holds a partial gradient
/// (all-reduce).
impl Builder<'_> {
    /// `Collective` all-reduce: the identity.
    fn grad_all_reduce(&mut self, d: &Grad<'_>) -> Result<()> {
        if d.need[0] {
            self.acc(d.ins[0], d.g)?;
        }
        Ok(())
    }

    /// `Collective` copy-to-group: an all-reduce over the group.
    fn grad_copy_to_group(&mut self, d: &Grad<'_>, group_size: u32) -> Result<()> {
        if d.need[0] {
            let t = self.ty(d.g);
            let dx = self.add1(
                Op::Collective {
                    kind: CollectiveKind::AllReduce,
                    group_size,
                    axis: None,
                },
                vec![d.g],
                t,
            );
            self.acc(d.ins[0], dx)?;
        }
        Ok(())
    }
}

/// Mixture of experts.
impl Builder<'_> {
    /// `MoeExperts`: one fused `MoeExpertsBackward` giving every input's gradient.
    fn grad_moe_experts(
        &mut self,
        d: &Grad<'_>,
        experts: usize,
        topk: usize,
        norm_topk: bool,
        capacity_factor: f64,
    ) -> Result<()> {
        let fetched: Vec<Value> = d.ins.iter().map(|v| self.fetch(*v)).collect();
        let types: Vec<TensorType> = d.ins.iter().map(|v| self.ty(*v)).collect();
        let mut inputs = fetched;
        inputs.push(d.g);
        let b = self.add(
            Op::MoeExpertsBackward {
                experts,
                topk,
                norm_topk,
                capacity_factor,
            },
            inputs,
            types,
        );
        self.acc_outputs(d, b, d.ins.len())
    }
}

/// Per-function rules for the elementwise ops.
impl Builder<'_> {
    fn unary_grad(
        &mut self,
        u: UnaryOp,
        x: Value,
        y: Value,
        g: Value,
        name: &str,
    ) -> Result<Value> {
        use UnaryOp::*;
        let dt = self.ty(g).dtype;
        Ok(match u {
            Neg => self.un(Neg, g),
            Exp => {
                let yv = self.fetch(y);
                self.mul(g, yv)?
            }
            Log => {
                let xv = self.fetch(x);
                self.bin(BinaryOp::Div, g, xv)?
            }
            Sqrt => {
                let yv = self.fetch(y);
                let h = self.mulc(g, 0.5)?;
                self.bin(BinaryOp::Div, h, yv)?
            }
            Rsqrt => {
                let yv = self.fetch(y);
                let y2 = self.mul(yv, yv)?;
                let y3 = self.mul(y2, yv)?;
                let t = self.mulc(y3, -0.5)?;
                self.mul(g, t)?
            }
            Reciprocal => {
                let yv = self.fetch(y);
                let y2 = self.mul(yv, yv)?;
                let t = self.mul(g, y2)?;
                self.un(Neg, t)
            }
            Tanh => {
                let yv = self.fetch(y);
                let y2 = self.mul(yv, yv)?;
                let t = self.rsubc(1.0, y2)?;
                self.mul(g, t)?
            }
            Sigmoid => {
                let yv = self.fetch(y);
                let om = self.rsubc(1.0, yv)?;
                let t = self.mul(yv, om)?;
                self.mul(g, t)?
            }
            Silu => {
                // silu'(x) = s·(1 + x·(1 − s)), s = sigmoid(x)
                let xv = self.fetch(x);
                let s = self.un(Sigmoid, xv);
                let om = self.rsubc(1.0, s)?;
                let xo = self.mul(xv, om)?;
                let t = self.addc(xo, 1.0)?;
                let st = self.mul(s, t)?;
                self.mul(g, st)?
            }
            Gelu => {
                // Φ(x) + x·φ(x)
                let xv = self.fetch(x);
                let xs = self.mulc(xv, std::f64::consts::FRAC_1_SQRT_2)?;
                let e = self.un(Erf, xs);
                let e1 = self.addc(e, 1.0)?;
                let cdf = self.mulc(e1, 0.5)?;
                let x2 = self.mul(xv, xv)?;
                let ex = self.mulc(x2, -0.5)?;
                let ex = self.un(Exp, ex);
                let pdf = self.mulc(ex, 1.0 / (2.0 * std::f64::consts::PI).sqrt())?;
                let xp = self.mul(xv, pdf)?;
                let d = self.bin(BinaryOp::Add, cdf, xp)?;
                self.mul(g, d)?
            }
            GeluTanh => {
                // 0.5(1+t) + 0.5x(1−t²)·c(1+3a x²), t = tanh(c(x + a x³))
                let (c, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
                let xv = self.fetch(x);
                let x2 = self.mul(xv, xv)?;
                let x3 = self.mul(x2, xv)?;
                let ax3 = self.mulc(x3, a)?;
                let inner = self.bin(BinaryOp::Add, xv, ax3)?;
                let u = self.mulc(inner, c)?;
                let t = self.un(Tanh, u);
                let t1 = self.addc(t, 1.0)?;
                let left = self.mulc(t1, 0.5)?;
                let t2 = self.mul(t, t)?;
                let omt2 = self.rsubc(1.0, t2)?;
                let k = self.mulc(x2, 3.0 * a * c)?;
                let k = self.addc(k, c)?;
                let r = self.mul(omt2, k)?;
                let r = self.mul(r, xv)?;
                let r = self.mulc(r, 0.5)?;
                let d = self.bin(BinaryOp::Add, left, r)?;
                self.mul(g, d)?
            }
            Relu => {
                let xv = self.fetch(x);
                let z = self.scalar(0.0, dt);
                let c = self.bin(BinaryOp::Greater, xv, z)?;
                self.where_(c, g, z)?
            }
            Cos => {
                let xv = self.fetch(x);
                let s = self.un(Sin, xv);
                let t = self.mul(g, s)?;
                self.un(Neg, t)
            }
            Sin => {
                let xv = self.fetch(x);
                let c = self.un(Cos, xv);
                self.mul(g, c)?
            }
            Erf => {
                let xv = self.fetch(x);
                let x2 = self.mul(xv, xv)?;
                let nx2 = self.un(Neg, x2);
                let e = self.un(Exp, nx2);
                let d = self.mulc(e, std::f64::consts::FRAC_2_SQRT_PI)?;
                self.mul(g, d)?
            }
            Abs => {
                let xv = self.fetch(x);
                let z = self.scalar(0.0, dt);
                let c = self.bin(BinaryOp::GreaterOrEqual, xv, z)?;
                let ng = self.un(Neg, g);
                self.where_(c, g, ng)?
            }
            Not | IsNan => return Err(err(name, format!("{u:?} has no gradient"))),
        })
    }

    fn binary_grad(
        &mut self,
        op: BinaryOp,
        ins: &[Value],
        need: &[bool],
        y: Value,
        g: Value,
        name: &str,
    ) -> Result<()> {
        use BinaryOp::*;
        let (a, b) = (ins[0], ins[1]);
        match op {
            Add => {
                if need[0] {
                    self.acc(a, g)?;
                }
                if need[1] {
                    self.acc(b, g)?;
                }
            }
            Sub => {
                if need[0] {
                    self.acc(a, g)?;
                }
                if need[1] {
                    let n = self.un(UnaryOp::Neg, g);
                    self.acc(b, n)?;
                }
            }
            Mul => {
                if need[0] {
                    let bv = self.fetch(b);
                    let d = self.mul(g, bv)?;
                    self.acc(a, d)?;
                }
                if need[1] {
                    let av = self.fetch(a);
                    let d = self.mul(g, av)?;
                    self.acc(b, d)?;
                }
            }
            Div => {
                let bv = self.fetch(b);
                if need[0] {
                    let d = self.bin(Div, g, bv)?;
                    self.acc(a, d)?;
                }
                if need[1] {
                    let yv = self.fetch(y);
                    let gy = self.mul(g, yv)?;
                    let t = self.bin(Div, gy, bv)?;
                    let d = self.un(UnaryOp::Neg, t);
                    self.acc(b, d)?;
                }
            }
            Pow => {
                if need[1] {
                    return Err(err(
                        name,
                        "gradient of Pow with respect to the exponent is not supported",
                    ));
                }
                if need[0] {
                    let (av, bv) = (self.fetch(a), self.fetch(b));
                    let bm1 = self.addc(bv, -1.0)?;
                    let p = self.bin(Pow, av, bm1)?;
                    let bp = self.mul(p, bv)?;
                    let d = self.mul(g, bp)?;
                    self.acc(a, d)?;
                }
            }
            Max | Min => {
                let (av, bv) = (self.fetch(a), self.fetch(b));
                let c = self.bin(
                    if op == Max {
                        GreaterOrEqual
                    } else {
                        LessOrEqual
                    },
                    av,
                    bv,
                )?;
                let z = self.scalar(0.0, self.ty(g).dtype);
                if need[0] {
                    let d = self.where_(c, g, z)?;
                    self.acc(a, d)?;
                }
                if need[1] {
                    let d = self.where_(c, z, g)?;
                    self.acc(b, d)?;
                }
            }
            // comparisons and logic are piecewise constant: no gradient flows through them
            Equal | Less | LessOrEqual | Greater | GreaterOrEqual | And | Or => {}
        }
        Ok(())
    }
}
