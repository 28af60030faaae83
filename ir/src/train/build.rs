//! Building the training graph: the forward copy re-typed by the precision policy, the loss, autodiff
//! (see [`super::autodiff`]) and the optimizer updates.

use super::options::{Hyper, OptimizerKind, PrecisionPolicy, TrainOptions};
use crate::cost::{BlockKind, Phase, Role};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, Provenance, Value};
use crate::op::{BinaryOp, Op, ParamData, UnaryOp};
use crate::shape::{Shape, TensorType};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// What a node of the training graph is for.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeMeta {
    /// Phase of the step.
    pub phase: Phase,
    /// Model block.
    pub block: BlockKind,
    /// The forward node this node differentiates or recomputes (itself for forward nodes).
    pub origin: Option<NodeId>,
    /// What the node is for (linear backward, cast, unfused rotary embedding).
    pub role: Role,
}

/// One trainable parameter of the training graph.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Parameter name.
    pub name: String,
    /// The parameter node (master weights).
    pub node: NodeId,
    /// Its gradient (same dtype as the parameter).
    pub grad: Value,
    /// Optimizer state nodes (AdamW: m, v; SGD: momentum buffer), fp32.
    pub state: Vec<NodeId>,
    /// Updated parameter followed by updated state.
    pub updated: Vec<Value>,
    /// Decoder layer, if the parameter belongs to one.
    pub layer: Option<u32>,
}

/// Forward, loss, backward and optimizer of one training step in one graph, in execution order.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// The graph. Inputs: `input_ids`; outputs: `loss`, `grad:<param>` for every parameter, then the
    /// updated parameters (`<param>`) and optimizer state (`<param>.exp_avg`, `<param>.exp_avg_sq` or
    /// `<param>.momentum_buffer`).
    pub graph: Graph,
    /// Options it was built with.
    pub opts: TrainOptions,
    /// Hyper-parameters of the optimizer nodes.
    pub hyper: Hyper,
    /// Every node in execution order.
    pub schedule: Vec<NodeId>,
    /// Per-node metadata, indexed by `NodeId::index()`.
    pub meta: Vec<NodeMeta>,
    /// The scalar loss.
    pub loss: Value,
    /// Trainable parameters, in the forward graph's order.
    pub params: Vec<ParamInfo>,
    /// Number of decoder layers.
    pub layers: u32,
}

impl TrainingGraph {
    /// Metadata of a node.
    pub fn meta(&self, id: NodeId) -> &NodeMeta {
        &self.meta[id.index()]
    }

    /// Node count per phase.
    pub fn count_by_phase(&self) -> HashMap<Phase, usize> {
        let mut m = HashMap::new();
        for id in &self.schedule {
            *m.entry(self.meta(*id).phase).or_insert(0) += 1;
        }
        m
    }
}

/// Builds the training graph with default hyper-parameters.
pub fn build_training_graph(forward: &Graph, opts: &TrainOptions) -> Result<TrainingGraph> {
    build_training_graph_with(forward, opts, &Hyper::default())
}

/// Builds the training graph with explicit optimizer hyper-parameters: the step moai compiles
/// (rotary embeddings stay one fused `Rotary` op).
pub fn build_training_graph_with(
    forward: &Graph,
    opts: &TrainOptions,
    hyper: &Hyper,
) -> Result<TrainingGraph> {
    build(forward, opts, hyper, false)
}

/// Builds the training graph as the engines' PyTorch modules run it, for costing: under autocast,
/// Hugging Face's rotary embedding is unfused and in fp32 (`Builder::eager_rotary`, its ops of role
/// [`Role::EagerRotary`]; a stack with a fused RoPE kernel costs them as that kernel). The step
/// profiles ([`crate::train::step_profile`]) are built from it; the compiled programs are not.
pub fn build_engine_training_graph(forward: &Graph, opts: &TrainOptions) -> Result<TrainingGraph> {
    build(forward, opts, &Hyper::default(), true)
}

fn build(
    forward: &Graph,
    opts: &TrainOptions,
    hyper: &Hyper,
    eager_rotary: bool,
) -> Result<TrainingGraph> {
    let mut b = Builder::new(forward, *opts);
    b.eager_rotary = eager_rotary;
    b.copy_forward()?;
    let loss = b.add_loss()?;
    b.backward(loss)?;
    let params = b.optimizer(hyper)?;
    let layers = b.layer_nodes.keys().next_back().map(|l| l + 1).unwrap_or(0);
    let mut graph = b.g;
    graph.outputs.insert(0, ("loss".into(), loss));
    Ok(TrainingGraph {
        graph,
        opts: *opts,
        hyper: *hyper,
        schedule: b.schedule,
        meta: b.meta,
        loss,
        params,
        layers,
    })
}

/// Where new nodes go.
#[derive(Clone, Debug)]
pub(super) struct Ctx {
    pub phase: Phase,
    pub block: BlockKind,
    pub layer: Option<u32>,
    pub scope: String,
    pub origin: Option<NodeId>,
    pub role: Role,
}

pub(super) struct Builder<'f> {
    pub fwd: &'f Graph,
    pub opts: TrainOptions,
    pub g: Graph,
    pub meta: Vec<NodeMeta>,
    pub schedule: Vec<NodeId>,
    pub ctx: Ctx,
    /// Old forward value → new value.
    pub map: HashMap<Value, Value>,
    /// Cached casts `(value, dtype)` → cast value.
    pub casts: HashMap<(Value, DType), Value>,
    /// New values that depend on a trainable parameter.
    pub requires_grad: HashSet<Value>,
    /// New forward nodes in order.
    pub fwd_nodes: Vec<NodeId>,
    /// New forward nodes per decoder layer.
    pub layer_nodes: std::collections::BTreeMap<u32, Vec<NodeId>>,
    /// Forward value → recomputed value.
    pub recomputed: HashMap<Value, Value>,
    /// Layers already recomputed (full policy).
    pub recomputed_layers: HashSet<u32>,
    /// Trainable parameter nodes (new graph) with names.
    pub param_nodes: Vec<(String, NodeId)>,
    /// Gradients of new forward values.
    pub grads: HashMap<Value, Value>,
    /// Whether autocast's rotary embedding is built unfused as Hugging Face runs it
    /// ([`build_engine_training_graph`]).
    pub eager_rotary: bool,
    /// Forward-graph values a copied linear layer reads as its input: a later linear reading one of
    /// them has the role [`Role::SharedInputLinear`].
    pub linear_inputs: HashSet<Value>,
}

pub(super) fn is_low_float(d: DType) -> bool {
    d.is_float() && !matches!(d, DType::F32 | DType::F64)
}

fn float_rank(d: DType) -> u8 {
    match d {
        DType::F64 => 3,
        DType::F32 => 2,
        _ => 1,
    }
}

impl<'f> Builder<'f> {
    fn new(fwd: &'f Graph, opts: TrainOptions) -> Builder<'f> {
        let mut g = Graph::new(format!("{}-train", fwd.name));
        g.source_dir = fwd.source_dir.clone();
        g.buffers = fwd.buffers.clone();
        Builder {
            fwd,
            opts,
            g,
            meta: Vec::new(),
            schedule: Vec::new(),
            ctx: Ctx {
                phase: Phase::Forward,
                block: BlockKind::Embedding,
                layer: None,
                scope: String::new(),
                origin: None,
                role: Role::Plain,
            },
            map: HashMap::new(),
            casts: HashMap::new(),
            requires_grad: HashSet::new(),
            fwd_nodes: Vec::new(),
            layer_nodes: Default::default(),
            recomputed: HashMap::new(),
            recomputed_layers: HashSet::new(),
            param_nodes: Vec::new(),
            grads: HashMap::new(),
            eager_rotary: false,
            linear_inputs: HashSet::new(),
        }
    }

    /// Adds a node in the current context.
    pub fn add(&mut self, op: Op, inputs: Vec<Value>, outputs: Vec<TensorType>) -> NodeId {
        let name = format!("{}:{}", phase_tag(self.ctx.phase), op.kind_name());
        let prov = Provenance {
            name,
            scope: self.ctx.scope.clone(),
            layer: self.ctx.layer,
        };
        let id = self.g.add(op, inputs, outputs, prov);
        debug_assert_eq!(
            id.index(),
            self.meta.len(),
            "the training graph never removes nodes"
        );
        self.meta.push(NodeMeta {
            phase: self.ctx.phase,
            block: self.ctx.block,
            origin: self.ctx.origin,
            role: self.ctx.role,
        });
        self.schedule.push(id);
        if self.ctx.phase == Phase::Forward {
            self.fwd_nodes.push(id);
            if let Some(l) = self.ctx.layer {
                self.layer_nodes.entry(l).or_default().push(id);
            }
        }
        id
    }

    /// Adds a single-output node and returns its value.
    pub fn add1(&mut self, op: Op, inputs: Vec<Value>, ty: TensorType) -> Value {
        Value::of(self.add(op, inputs, vec![ty]))
    }

    pub fn ty(&self, v: Value) -> TensorType {
        self.g.ty(v).clone()
    }

    /// A cast of `v` to `dt` (identity if it already has it); cached unless `fresh`.
    pub fn cast(&mut self, v: Value, dt: DType, fresh: bool) -> Value {
        let t = self.ty(v);
        if t.dtype == dt {
            return v;
        }
        if !fresh && let Some(c) = self.casts.get(&(v, dt)) {
            return *c;
        }
        let role = self.ctx.role;
        self.ctx.role = if matches!(self.g.node(v.node).op, Op::Param { .. }) {
            Role::WeightCast
        } else {
            Role::Cast
        };
        let c = self.add1(Op::Cast(dt), vec![v], TensorType::new(dt, t.shape));
        self.ctx.role = role;
        if self.requires_grad.contains(&v) {
            self.requires_grad.insert(c);
        }
        if !fresh {
            self.casts.insert((v, dt), c);
        }
        c
    }

    /// A scalar float constant.
    pub fn scalar(&mut self, v: f64, dt: DType) -> Value {
        let mut t = Tensor::f32(vec![], vec![v as f32]);
        t.dtype = dt;
        if dt == DType::F64 {
            t = Tensor::f64(vec![], vec![v]);
        }
        self.add1(Op::Constant(t), vec![], TensorType::new(dt, Shape(vec![])))
    }

    fn block_of(&self, old: NodeId, layer_desc: &HashSet<NodeId>) -> BlockKind {
        match self.fwd.node(old).prov.layer {
            Some(l) => BlockKind::Decoder(l),
            None if layer_desc.contains(&old) => BlockKind::Head,
            None => BlockKind::Embedding,
        }
    }

    /// Copies the forward graph, re-typed by the precision policy.
    fn copy_forward(&mut self) -> Result<()> {
        let trainable: HashSet<NodeId> = self.fwd.params().into_iter().collect();
        let (order, reader) = weights_at_first_use(self.fwd, &trainable);
        // Non-layer nodes downstream of a decoder layer belong to the head.
        let mut layer_desc: HashSet<NodeId> = HashSet::new();
        for id in &order {
            let n = self.fwd.node(*id);
            if n.inputs
                .iter()
                .any(|v| self.fwd.node(v.node).prov.layer.is_some() || layer_desc.contains(&v.node))
            {
                layer_desc.insert(*id);
            }
        }
        for old in order {
            let n = self.fwd.node(old);
            self.ctx = Ctx {
                phase: Phase::Forward,
                // A weight's view belongs to the block that reads it (an untied LM head's
                // transpose to the head, whichever pipeline stage holds it).
                block: self.block_of(reader.get(&old).copied().unwrap_or(old), &layer_desc),
                layer: n.prov.layer,
                scope: n.prov.scope.clone(),
                origin: None,
                role: Role::Plain,
            };
            let ins: Vec<Value> = n
                .inputs
                .iter()
                .map(|v| {
                    self.map.get(v).copied().ok_or_else(|| {
                        IrError::Analysis(format!(
                            "forward node `{}`: input {v:?} not copied",
                            n.prov.name
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            self.copy_node(old, ins, trainable.contains(&old))?;
        }
        Ok(())
    }

    fn copy_node(&mut self, old: NodeId, mut ins: Vec<Value>, trainable: bool) -> Result<()> {
        let n = self.fwd.node(old);
        let pol = self.opts.precision;
        let cdt = pol.compute_dtype();
        if self.opts.reads_weight_copies() {
            // Every op reads the weight's bf16 copy (cast once per forward and shared by its uses),
            // as the engine's bf16 module or gathered bf16 parameters hand it out.
            for v in ins.iter_mut() {
                if matches!(self.g.node(v.node).op, Op::Param { .. })
                    && self.requires_grad.contains(v)
                    && self.g.ty(*v).dtype == DType::F32
                {
                    *v = self.cast(*v, cdt, false);
                }
            }
        }
        let mut outs: Vec<TensorType> = n.outputs.clone();
        let in_dt = |b: &Self, i: usize| ins.get(i).map(|v| b.g.ty(*v).dtype);
        let op = n.op.clone();
        if let (Op::Rotary, PrecisionPolicy::AmpBf16, true) = (&op, pol, self.eager_rotary)
            && let Some(y) = self.eager_rotary(ins[0], ins[1], ins[2])
        {
            self.map.insert(Value::of(old), y);
            return Ok(());
        }
        if let (Op::RmsNorm { eps }, PrecisionPolicy::AmpBf16) = (&op, pol) {
            let y = self.eager_rms_norm(ins[0], ins[1], *eps);
            self.map.insert(Value::of(old), y);
            return Ok(());
        }
        match &op {
            Op::Param { name, data } if trainable => {
                let wdt = pol.weight_dtype();
                outs[0].dtype = wdt;
                let data = match data {
                    ParamData::Inline(t) => {
                        let mut t = t.clone();
                        t.dtype = wdt;
                        ParamData::Inline(t)
                    }
                    d => d.clone(),
                };
                let id = self.add(
                    Op::Param {
                        name: name.clone(),
                        data,
                    },
                    vec![],
                    outs,
                );
                self.requires_grad.insert(Value::of(id));
                self.param_nodes.push((name.clone(), id));
                self.map.insert(Value::of(old), Value::of(id));
                return Ok(());
            }
            Op::Cast(dt) if dt.is_float() => {
                let target = if is_low_float(*dt) { cdt } else { *dt };
                let v = self.cast(ins[0], target, true);
                self.map.insert(Value::of(old), v);
                return Ok(());
            }
            Op::Linear { .. } | Op::MatMul | Op::Attention { .. } | Op::MoeExperts { .. } => {
                // A linear reading the input an earlier one read (q, k, v; gate, up) says so, so
                // an engine fusing them into one module can cost them as one.
                if matches!(op, Op::Linear { .. })
                    && let Some(x) = n.inputs.first()
                    && !self.linear_inputs.insert(*x)
                {
                    self.ctx.role = Role::SharedInputLinear;
                }
                for (i, v) in ins.iter_mut().enumerate() {
                    if !self.g.ty(*v).dtype.is_float() {
                        continue;
                    }
                    let is_weight = matches!(self.g.node(v.node).op, Op::Param { .. });
                    // Autocast casts weights once per forward and activations at every use.
                    let fresh = pol == PrecisionPolicy::AmpBf16
                        && !is_weight
                        && i == 0
                        && !matches!(op, Op::Attention { .. });
                    *v = self.cast(*v, cdt, fresh);
                }
                outs[0].dtype = cdt;
            }
            Op::Rotary => {
                let xd = self.g.ty(ins[0]).dtype;
                ins[1] = self.cast(ins[1], xd, false);
                ins[2] = self.cast(ins[2], xd, false);
                outs[0].dtype = xd;
            }
            Op::Embedding => outs[0].dtype = self.g.ty(ins[0]).dtype,
            Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                let (x, w) = (self.g.ty(ins[0]).dtype, self.g.ty(ins[1]).dtype);
                let d = if float_rank(w) > float_rank(x) { w } else { x };
                for x in ins.iter_mut().skip(1) {
                    *x = self.cast(*x, d, false);
                }
                ins[0] = self.cast(ins[0], d, false);
                outs[0].dtype = d;
            }
            Op::Binary(_) | Op::Where | Op::Concat { .. } => {
                let first = usize::from(matches!(op, Op::Where));
                let fl: Vec<usize> = (first..ins.len())
                    .filter(|i| self.g.ty(ins[*i]).dtype.is_float())
                    .collect();
                if fl.len() == ins.len() - first && fl.len() > 1 {
                    // Promote like PyTorch: 0-d operands follow the others; otherwise the widest wins.
                    let dims: Vec<bool> = fl
                        .iter()
                        .map(|i| self.g.ty(ins[*i]).shape.rank() > 0)
                        .collect();
                    let cands: Vec<usize> = if dims.iter().any(|d| *d) {
                        fl.iter()
                            .zip(&dims)
                            .filter(|(_, d)| **d)
                            .map(|(i, _)| *i)
                            .collect()
                    } else {
                        fl.clone()
                    };
                    let target = cands
                        .iter()
                        .map(|i| self.g.ty(ins[*i]).dtype)
                        .max_by_key(|d| float_rank(*d))
                        .unwrap_or(DType::F32);
                    for i in fl {
                        ins[i] = self.cast(ins[i], target, false);
                    }
                    for o in outs.iter_mut().filter(|o| o.dtype.is_float()) {
                        o.dtype = target;
                    }
                } else if let Some(i) = fl.first() {
                    let d = self.g.ty(ins[*i]).dtype;
                    for o in outs.iter_mut().filter(|o| o.dtype.is_float()) {
                        o.dtype = d;
                    }
                }
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant(_)
            | Op::Range { .. }
            | Op::Cast(_) => {}
            _ => {
                if let Some(d) = in_dt(self, 0).filter(|d| d.is_float()) {
                    for o in outs.iter_mut() {
                        if o.dtype.is_float() && !(matches!(op, Op::Attention { .. })) {
                            o.dtype = d;
                        }
                    }
                }
            }
        }
        if matches!(op, Op::Attention { .. }) && outs.len() > 1 {
            outs[1].dtype = DType::F32;
        }
        let rg = ins.iter().any(|v| self.requires_grad.contains(v));
        let id = self.add(op, ins, outs.clone());
        for (i, o) in outs.iter().enumerate() {
            let v = Value {
                node: id,
                output: i as u32,
            };
            if rg && o.dtype.is_float() {
                self.requires_grad.insert(v);
            }
            self.map.insert(
                Value {
                    node: old,
                    output: i as u32,
                },
                v,
            );
        }
        Ok(())
    }

    /// A forward node whose output requires a gradient when an input does.
    fn fwd1(&mut self, op: Op, ins: Vec<Value>, ty: TensorType) -> Value {
        let rg = ins.iter().any(|v| self.requires_grad.contains(v));
        let v = self.add1(op, ins, ty);
        if rg {
            self.requires_grad.insert(v);
        }
        v
    }

    /// RMSNorm as PyTorch autocast runs Hugging Face's eager module: in fp32, unfused
    /// (`w · (x · rsqrt(mean(x²) + eps))`), so backward keeps what eager autograd keeps (the input, the
    /// reciprocal RMS and the fp32 normalized tensor).
    fn eager_rms_norm(&mut self, x: Value, w: Value, eps: f64) -> Value {
        let xt = self.ty(x);
        let x32 = self.cast(x, DType::F32, true);
        let r = xt.shape.rank();
        let f32t = TensorType::new(DType::F32, xt.shape.clone());
        let mut red = xt.shape.clone();
        if let Some(last) = red.0.last_mut() {
            *last = Dim::constant(1);
        }
        let redt = TensorType::new(DType::F32, red);
        let two = self.scalar(2.0, DType::F32);
        let sq = self.fwd1(Op::Binary(BinaryOp::Pow), vec![x32, two], f32t.clone());
        let ms = self.fwd1(
            Op::Reduce {
                kind: crate::op::ReduceKind::Mean,
                axes: vec![r.saturating_sub(1)],
                keep_dims: true,
            },
            vec![sq],
            redt.clone(),
        );
        let e = self.scalar(eps, DType::F32);
        let a = self.fwd1(Op::Binary(BinaryOp::Add), vec![ms, e], redt.clone());
        let rs = self.fwd1(Op::Unary(UnaryOp::Rsqrt), vec![a], redt);
        let nrm = self.fwd1(Op::Binary(BinaryOp::Mul), vec![x32, rs], f32t);
        let nrm = self.cast(nrm, xt.dtype, true);
        let wd = self.ty(w).dtype;
        let out_dt = if float_rank(wd) > float_rank(xt.dtype) {
            wd
        } else {
            xt.dtype
        };
        let w = self.cast(w, out_dt, false);
        let nrm = self.cast(nrm, out_dt, true);
        self.fwd1(
            Op::Binary(BinaryOp::Mul),
            vec![w, nrm],
            TensorType::new(out_dt, xt.shape),
        )
    }

    /// Rotary embedding as Hugging Face's `apply_rotary_pos_emb` runs under autocast:
    /// `x·cos + rotate_half(x)·sin` unfused, with `rotate_half(x) = cat(-x₂, x₁)` over the two halves
    /// of the head dimension. `cos` and `sin` come from the rotary module in the dtype of the hidden
    /// states it is given (the embedding's output: the fp32 master weights' dtype), so the two
    /// products promote the bf16 projection to fp32 and the attention casts it back. `None` when the
    /// head dimension is not a known even constant (the fused op is kept).
    fn eager_rotary(&mut self, x: Value, cos: Value, sin: Value) -> Option<Value> {
        // Its ops (and their gradients and recomputations) have the role `Role::EagerRotary`, so a
        // stack running a fused RoPE kernel can cost that kernel instead; their scope
        // `<scope>/rotary` names them in breakdowns.
        let (scope, role) = (self.ctx.scope.clone(), self.ctx.role);
        self.ctx.scope = format!("{scope}/rotary");
        self.ctx.role = Role::EagerRotary;
        let y = self.eager_rotary_ops(x, cos, sin);
        self.ctx.scope = scope;
        self.ctx.role = role;
        y
    }

    /// The ops of [`Self::eager_rotary`], in the current scope.
    fn eager_rotary_ops(&mut self, x: Value, cos: Value, sin: Value) -> Option<Value> {
        let xt = self.ty(x);
        let r = xt.shape.rank();
        let d = xt.shape.0.last()?.as_const()?;
        if r == 0 || d < 2 || d % 2 != 0 {
            return None;
        }
        // The dtype of the hidden states the rotary module is given: the weights' the model computes
        // with (the embedding's output).
        let wdt = self.opts.read_weight_dtype();
        let out_dt = if float_rank(wdt) > float_rank(xt.dtype) {
            wdt
        } else {
            xt.dtype
        };
        let cos = self.rotary_table(cos, out_dt);
        let sin = self.rotary_table(sin, out_dt);
        let outt = TensorType::new(out_dt, xt.shape.clone());
        let mut half = xt.shape.clone();
        half.0[r - 1] = Dim::constant(d / 2);
        let halft = TensorType::new(xt.dtype, half);
        let slice = |b: &mut Self, start: i64, end: i64| {
            b.fwd1(
                Op::Slice {
                    axis: r - 1,
                    start: Dim::constant(start),
                    end: Dim::constant(end),
                    step: 1,
                },
                vec![x],
                halft.clone(),
            )
        };
        let x1 = slice(self, 0, d / 2);
        let x2 = slice(self, d / 2, d);
        let n2 = self.fwd1(Op::Unary(UnaryOp::Neg), vec![x2], halft.clone());
        let rot = self.fwd1(Op::Concat { axis: r - 1 }, vec![n2, x1], xt.clone());
        // PyTorch promotes inside the multiply; the graph's binary ops take one dtype, so the
        // promotion is an explicit cast (as for every other mixed-dtype binary op of the graph).
        let x_out = self.cast(x, out_dt, false);
        let rot = self.cast(rot, out_dt, false);
        let a = self.fwd1(Op::Binary(BinaryOp::Mul), vec![x_out, cos], outt.clone());
        let b = self.fwd1(Op::Binary(BinaryOp::Mul), vec![rot, sin], outt.clone());
        Some(self.fwd1(Op::Binary(BinaryOp::Add), vec![a, b], outt))
    }

    /// A rotary table `v` in `dt` as the rotary module made it: through views (reshapes,
    /// expands, transposes) and a cast to the model's dtype back to a table already in `dt`, whose
    /// views are rebuilt (once, shared by every layer like `v`); a cast where there is none.
    fn rotary_table(&mut self, v: Value, dt: DType) -> Value {
        if self.ty(v).dtype == dt {
            return v;
        }
        if let Some(c) = self.casts.get(&(v, dt)) {
            return *c;
        }
        let n = self.g.node(v.node);
        let (op, src) = (n.op.clone(), n.inputs.first().copied());
        let out = match (op, src) {
            (Op::Cast(_), Some(src)) if self.ty(src).dtype == dt => src,
            (op @ (Op::Reshape(_) | Op::Expand(_) | Op::Transpose(_)), Some(src)) => {
                let base = self.rotary_table(src, dt);
                if self.ty(base).dtype != dt {
                    return self.cast(v, dt, false);
                }
                let ty = TensorType::new(dt, self.ty(v).shape);
                self.add1(op, vec![base], ty)
            }
            _ => return self.cast(v, dt, false),
        };
        self.casts.insert((v, dt), out);
        out
    }

    /// Cross-entropy of the logits against the input ids shifted by one (last position ignored).
    fn add_loss(&mut self) -> Result<Value> {
        let (_, logits_old) = self
            .fwd
            .outputs
            .iter()
            .find(|(n, _)| n == "logits")
            .or_else(|| self.fwd.outputs.first())
            .cloned()
            .ok_or_else(|| {
                IrError::Analysis(format!(
                    "graph `{}` has no output to train on",
                    self.fwd.name
                ))
            })?;
        let logits = self.map[&logits_old];
        let ids = self
            .g
            .inputs
            .iter()
            .copied()
            .find(|id| matches!(&self.g.node(*id).op, Op::Input { name } if name == "input_ids"))
            .or_else(|| self.g.inputs.first().copied())
            .ok_or_else(|| {
                IrError::Analysis(format!("graph `{}` has no input ids", self.fwd.name))
            })?;
        let ids = Value::of(ids);
        let it = self.ty(ids);
        let lt = self.ty(logits);
        if it.shape.rank() != 2 || lt.shape.rank() != 3 || lt.shape.0[..2] != it.shape.0[..] {
            return Err(IrError::Analysis(format!(
                "loss wants input ids [batch, seq] and logits [batch, seq, vocab]; got {} and {}",
                it, lt
            )));
        }
        self.ctx = Ctx {
            phase: Phase::Forward,
            block: BlockKind::Head,
            layer: None,
            scope: "loss".into(),
            origin: None,
            role: Role::Plain,
        };
        let (bs, sq) = (it.shape.0[0].clone(), it.shape.0[1].clone());
        let one = Dim::constant(1);
        let shifted = self.add1(
            Op::Slice {
                axis: 1,
                start: one.clone(),
                end: sq.clone(),
                step: 1,
            },
            vec![ids],
            TensorType::new(it.dtype, Shape(vec![bs.clone(), sq.sub(&one)])),
        );
        let mut pad_t = Tensor::i64(vec![1, 1], vec![super::IGNORE_INDEX]);
        pad_t.dtype = it.dtype;
        let pad = self.add1(
            Op::Constant(pad_t),
            vec![],
            TensorType::new(it.dtype, Shape(vec![one.clone(), one.clone()])),
        );
        let pad = self.add1(
            Op::Expand(Shape(vec![bs.clone(), one.clone()])),
            vec![pad],
            TensorType::new(it.dtype, Shape(vec![bs.clone(), one])),
        );
        let targets = self.add1(Op::Concat { axis: 1 }, vec![shifted, pad], it.clone());
        // Like Hugging Face's loss: logits upcast to fp32 before the cross-entropy.
        let logits32 = self.cast(logits, DType::F32, true);
        let loss = self.add1(
            Op::CrossEntropy {
                ignore_index: super::IGNORE_INDEX,
            },
            vec![logits32, targets],
            TensorType::new(DType::F32, Shape(vec![])),
        );
        if self.requires_grad.contains(&logits32) {
            self.requires_grad.insert(loss);
        }
        Ok(loss)
    }

    /// Optimizer state and update nodes for every parameter.
    fn optimizer(&mut self, hyper: &Hyper) -> Result<Vec<ParamInfo>> {
        let mut infos = Vec::new();
        let params = self.param_nodes.clone();
        let mut grad_outputs = Vec::new();
        let mut upd_outputs = Vec::new();
        for (name, id) in params {
            let pv = Value::of(id);
            let pt = self.ty(pv);
            let layer = self.g.node(id).prov.layer;
            let grad = match self.grads.get(&pv) {
                Some(g) => *g,
                None => {
                    return Err(IrError::Analysis(format!(
                        "parameter `{name}` does not reach the loss: no gradient"
                    )));
                }
            };
            self.ctx = Ctx {
                phase: Phase::Optimizer,
                block: self.meta[id.index()].block,
                layer,
                scope: self.g.node(id).prov.scope.clone(),
                origin: Some(id),
                role: Role::Plain,
            };
            let st_names: &[&str] = match self.opts.optimizer {
                OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
                OptimizerKind::Sgd => &["momentum_buffer"],
            };
            let st_ty = TensorType::new(DType::F32, pt.shape.clone());
            let mut state = Vec::new();
            for s in st_names {
                let sname = format!("{name}.{s}");
                let data = match &self.g.node(id).op {
                    Op::Param {
                        data: ParamData::Inline(t),
                        ..
                    } => ParamData::Inline(Tensor::f32(t.shape.clone(), vec![0.0; t.numel()])),
                    _ => ParamData::External {
                        location: "optimizer_state".into(),
                        offset: 0,
                        length: 0,
                    },
                };
                self.g.buffers.insert(sname.clone());
                state.push(self.add(Op::Param { name: sname, data }, vec![], vec![st_ty.clone()]));
            }
            let (op, outs) = match self.opts.optimizer {
                OptimizerKind::AdamW => (
                    Op::AdamW {
                        lr: hyper.lr,
                        beta1: hyper.beta1,
                        beta2: hyper.beta2,
                        eps: hyper.eps,
                        weight_decay: hyper.weight_decay,
                        step: hyper.step,
                    },
                    vec![pt.clone(), st_ty.clone(), st_ty.clone()],
                ),
                OptimizerKind::Sgd => (
                    Op::SgdMomentum {
                        lr: hyper.lr,
                        momentum: hyper.momentum,
                        weight_decay: hyper.weight_decay,
                    },
                    vec![pt.clone(), st_ty.clone()],
                ),
            };
            let mut ins = vec![pv, grad];
            ins.extend(state.iter().map(|s| Value::of(*s)));
            let n = outs.len();
            let upd = self.add(op, ins, outs);
            let updated: Vec<Value> = (0..n)
                .map(|i| Value {
                    node: upd,
                    output: i as u32,
                })
                .collect();
            grad_outputs.push((format!("grad:{name}"), grad));
            upd_outputs.push((name.clone(), updated[0]));
            for (s, v) in st_names.iter().zip(&updated[1..]) {
                upd_outputs.push((format!("{name}.{s}"), *v));
            }
            infos.push(ParamInfo {
                name,
                node: id,
                grad,
                state,
                updated,
                layer,
            });
        }
        self.g.outputs.extend(grad_outputs);
        self.g.outputs.extend(upd_outputs);
        Ok(infos)
    }
}

fn phase_tag(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "fwd",
        Phase::Backward => "bwd",
        Phase::Recompute => "recompute",
        Phase::Optimizer => "opt",
    }
}

/// The forward graph's topological order with every view of a trainable weight (its transposes,
/// reshapes and casts, [`Graph::view_source`]) moved to just before its first reader, as eager
/// PyTorch computes `F.linear`'s weight operand at the call. Backward runs in reverse order, so the
/// view's backward (the transpose or cast of the weight's gradient into the parameter's) follows
/// its reader's weight-gradient GEMM at once, and that gradient is a transient of the layer, not a
/// buffer alive from the layer's backward to the end of the step. Also returns, for each view, the
/// first node that reads it other than a view.
fn weights_at_first_use(
    fwd: &Graph,
    trainable: &HashSet<NodeId>,
) -> (Vec<NodeId>, HashMap<NodeId, NodeId>) {
    let is_view = |id: NodeId| {
        !fwd.node(id).op.is_source()
            && fwd
                .view_source(Value::of(id))
                .is_some_and(|s| trainable.contains(&s))
    };
    let topo = fwd.topo_order();
    let mut order = Vec::with_capacity(topo.len());
    let mut placed: HashSet<NodeId> = HashSet::new();
    let mut reader: HashMap<NodeId, NodeId> = HashMap::new();
    for id in &topo {
        if is_view(*id) {
            continue;
        }
        // The views this node reads, innermost first (a view reads a source or another view).
        let mut chain: Vec<NodeId> = Vec::new();
        for v in &fwd.node(*id).inputs {
            let mut n = v.node;
            let mut inner = Vec::new();
            while is_view(n) && !placed.contains(&n) {
                inner.push(n);
                n = fwd.node(n).inputs[0].node;
            }
            chain.extend(inner.into_iter().rev());
        }
        for n in chain {
            if placed.insert(n) {
                order.push(n);
                reader.insert(n, *id);
            }
        }
        order.push(*id);
    }
    // Views nothing reads (a graph output), where topological order had them.
    if order.len() < topo.len() {
        let rest: Vec<NodeId> = topo
            .into_iter()
            .filter(|id| is_view(*id) && !placed.contains(id))
            .collect();
        order.extend(rest);
    }
    (order, reader)
}
