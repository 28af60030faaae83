//! Tensor parallelism as a graph transform: one rank's forward program of a Megatron-style sharded model.
//!
//! Linear layers are classed by their weight's name ([`moai_ir::train::tp::linear_class`]): q/k/v/gate/up
//! are column-parallel (the rank keeps a contiguous slice of output features; a
//! [`CollectiveKind::CopyToGroup`] marks where the replicated input enters, so its gradient is all-reduced),
//! o/down are row-parallel (a slice of input features, then an all-reduce of the partial sums, bias after).
//! Attention keeps `heads / tp` query and `kv_heads / tp` key/value heads. Reshapes, transposes, rotary and
//! elementwise ops follow the split axis. Embedding, norms, the LM head and the loss stay replicated.
//! Anything else that would touch a split tensor is an error naming the node, never a silent wrong program.
//!
//! The result is built by [`moai_ir::train::build_training_graph`] into the rank's training step like any
//! forward graph: autodiff knows the gradients of both collectives.

use crate::error::{Result, RuntimeError};
use moai_ir::cost::TpSplit;
use moai_ir::train::tp::linear_class;
use moai_ir::{
    BinaryOp, CollectiveKind, Dim, Graph, NodeId, Op, ParamData, Provenance, Shape, Tensor,
    TensorType, Value,
};
use std::collections::HashMap;

/// Rank `rank`'s forward program of `g` under `tp`-way tensor parallelism (`tp == 1` returns a copy).
pub fn shard_tensor_parallel(g: &Graph, tp: u32, rank: u32) -> Result<Graph> {
    if tp == 0 || rank >= tp {
        return Err(err(
            g,
            "",
            format!("rank {rank} of a tensor-parallel group of {tp}"),
        ));
    }
    let mut s = Sharder {
        src: g,
        tp: tp as i64,
        rank: rank as i64,
        out: Graph::new(g.name.clone()),
        map: HashMap::new(),
        axis: HashMap::new(),
        sliced: HashMap::new(),
        entered: HashMap::new(),
    };
    s.out.source_dir = g.source_dir.clone();
    s.out.buffers = g.buffers.clone();
    for id in g.topo_order() {
        s.node(id)?;
    }
    if tp > 1 && s.entered.is_empty() {
        return Err(err(
            g,
            "",
            "no linear layer could be split (none is named like a q/k/v/o or gate/up/down projection, \
             by weight or by module): tensor parallelism would only replicate the model"
                .into(),
        ));
    }
    for (name, v) in &g.outputs {
        let nv = s.value(*v);
        if s.axis.contains_key(&nv) {
            return Err(err(
                g,
                name,
                "the graph output is split across tensor-parallel ranks".into(),
            ));
        }
        s.out.outputs.push((name.clone(), nv));
    }
    Ok(s.out)
}

fn err(g: &Graph, node: &str, reason: String) -> RuntimeError {
    RuntimeError::Exec {
        program: format!("tensor-parallel split of `{}`", g.name),
        reason: if node.is_empty() {
            reason
        } else {
            format!("`{node}`: {reason}")
        },
    }
}

struct Sharder<'a> {
    src: &'a Graph,
    tp: i64,
    rank: i64,
    out: Graph,
    /// Source value → value in the rank's graph.
    map: HashMap<Value, Value>,
    /// Values of the rank's graph that are split, and along which axis.
    axis: HashMap<Value, usize>,
    /// (source param value, axis) → its slice in the rank's graph.
    sliced: HashMap<(Value, usize), Value>,
    /// Replicated value → its `CopyToGroup` in the rank's graph.
    entered: HashMap<Value, Value>,
}

impl Sharder<'_> {
    fn name(&self, id: NodeId) -> String {
        let p = &self.src.node(id).prov;
        if p.scope.is_empty() {
            p.name.clone()
        } else {
            p.scope.clone()
        }
    }

    fn fail(&self, id: NodeId, reason: impl Into<String>) -> RuntimeError {
        err(self.src, &self.name(id), reason.into())
    }

    /// The dim divided by tp, or an error if it does not divide.
    fn div(&self, id: NodeId, d: &Dim) -> Result<Dim> {
        match d.as_const() {
            Some(c) if c % self.tp == 0 => Ok(Dim::constant(c / self.tp)),
            _ => Err(self.fail(
                id,
                format!(
                    "dimension {d} does not divide by tensor-parallel degree {}",
                    self.tp
                ),
            )),
        }
    }

    fn split_ty(&self, id: NodeId, t: &TensorType, axis: usize) -> Result<TensorType> {
        let mut t = t.clone();
        t.shape.0[axis] = self.div(id, &t.shape.0[axis])?;
        Ok(t)
    }

    fn node(&mut self, id: NodeId) -> Result<()> {
        let n = self.src.node(id).clone();
        if self.is_weight(Value::of(id)) {
            // copied where used whole, sliced where a parallel linear uses it
            return Ok(());
        }
        if let Op::Linear { bias } = &n.op {
            return self.linear(id, *bias);
        }
        let ins: Vec<Value> = n.inputs.iter().map(|v| self.value(*v)).collect();
        let split: Vec<Option<usize>> = ins.iter().map(|v| self.axis.get(v).copied()).collect();
        let any_split = split.iter().any(Option::is_some);
        match &n.op {
            Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
            } if any_split => {
                for (i, s) in split.iter().enumerate().take(3) {
                    if *s != Some(1) {
                        return Err(
                            self.fail(id, format!("attention input {i} is not split by heads"))
                        );
                    }
                }
                if split.len() > 3 && split[3].is_some() {
                    return Err(self.fail(id, "a split attention mask is not supported"));
                }
                let tp = self.tp as usize;
                if heads % tp != 0 || kv_heads % tp != 0 {
                    return Err(self.fail(
                        id,
                        format!(
                            "{heads} query / {kv_heads} key-value heads do not divide by tp={tp}"
                        ),
                    ));
                }
                let op = Op::Attention {
                    heads: heads / tp,
                    kv_heads: kv_heads / tp,
                    scale: *scale,
                    causal: *causal,
                };
                let tys = n
                    .outputs
                    .iter()
                    .map(|t| self.split_ty(id, t, 1))
                    .collect::<Result<Vec<_>>>()?;
                let new = self.out.add(op, ins, tys, n.prov.clone());
                for o in 0..n.outputs.len() as u32 {
                    self.axis.insert(
                        Value {
                            node: new,
                            output: o,
                        },
                        1,
                    );
                }
                self.record(id, new, n.outputs.len());
                return Ok(());
            }
            _ => {}
        }
        let Some(axis) = self.result_axis(id, &n.op, &split)? else {
            // nothing split flows in: copy (params are copied whole here; slices are made by linears)
            let new = self
                .out
                .add(n.op.clone(), ins, n.outputs.clone(), n.prov.clone());
            self.record(id, new, n.outputs.len());
            return Ok(());
        };
        let op = match &n.op {
            Op::Reshape(_) => Op::Reshape(Shape({
                let t = self.split_ty(id, &n.outputs[0], axis)?;
                t.shape.0
            })),
            other => other.clone(),
        };
        let ty = self.split_ty(id, &n.outputs[0], axis)?;
        let new = self.out.add(op, ins, vec![ty], n.prov.clone());
        self.axis.insert(Value::of(new), axis);
        self.record(id, new, 1);
        Ok(())
    }

    /// A parameter, or a cast of one: materialized on use.
    fn is_weight(&self, v: Value) -> bool {
        match &self.src.node(v.node).op {
            Op::Param { .. } => true,
            Op::Cast(_) | Op::Transpose(_) => self.is_weight(self.src.node(v.node).inputs[0]),
            _ => false,
        }
    }

    /// The rank's value for a source value (whole weights are copied on first use).
    fn value(&mut self, v: Value) -> Value {
        if let Some(m) = self.map.get(&v) {
            return *m;
        }
        let n = self.src.node(v.node).clone();
        let ins: Vec<Value> = n.inputs.iter().map(|i| self.value(*i)).collect();
        let new = self
            .out
            .add(n.op.clone(), ins, n.outputs.clone(), n.prov.clone());
        self.record(v.node, new, n.outputs.len());
        self.map[&v]
    }

    fn record(&mut self, id: NodeId, new: NodeId, outputs: usize) {
        for o in 0..outputs as u32 {
            self.map.insert(
                Value {
                    node: id,
                    output: o,
                },
                Value {
                    node: new,
                    output: o,
                },
            );
        }
    }

    /// The split axis of a non-linear node's (single) output, `None` when nothing split flows in.
    fn result_axis(&self, id: NodeId, op: &Op, split: &[Option<usize>]) -> Result<Option<usize>> {
        let Some(first) = split.iter().position(Option::is_some) else {
            return Ok(None);
        };
        let a = split[first].unwrap_or_default();
        match op {
            Op::Transpose(perm) => Ok(perm.iter().position(|p| *p == a)),
            Op::Reshape(target) => {
                let src = &self.src.node(id);
                let from = &self.src.ty(src.inputs[0]).shape.0;
                let before = from[..a].iter().fold(Dim::constant(1), |p, d| p.mul(d));
                let mut prefix = Dim::constant(1);
                for (j, d) in target.0.iter().enumerate() {
                    if prefix == before && d.as_const() != Some(1) {
                        return Ok(Some(j));
                    }
                    prefix = prefix.mul(d);
                }
                Err(self.fail(id, "a reshape that moves the tensor-parallel split axis"))
            }
            Op::Unary(_) | Op::Cast(_) | Op::Rotary | Op::Binary(_) => {
                // every input is split along the same axis, or broadcasts (size 1) along it
                let src = self.src.node(id);
                for (i, s) in split.iter().enumerate() {
                    match s {
                        Some(b) if *b == a => {}
                        Some(_) => {
                            return Err(self.fail(id, "inputs split along different axes"));
                        }
                        None => {
                            let t = self.src.ty(src.inputs[i]);
                            let rank = src.outputs[0].shape.0.len();
                            let off = rank.saturating_sub(t.shape.0.len());
                            let ok = a < off || t.shape.0[a - off].as_const() == Some(1);
                            if !ok {
                                return Err(self.fail(
                                    id,
                                    format!("input {i} is replicated but the other is split by tensor parallelism"),
                                ));
                            }
                        }
                    }
                }
                Ok(Some(a))
            }
            other @ (Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant(_)
            | Op::Where
            | Op::MatMul
            | Op::Reduce { .. }
            | Op::CumSum { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Expand(_)
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::Gather { .. }
            | Op::GatherNd { .. }
            | Op::Range { .. }
            | Op::Trilu { .. }
            | Op::Linear { .. }
            | Op::Embedding
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Attention { .. }
            | Op::AttentionBackward { .. }
            | Op::RmsNormBackward { .. }
            | Op::LayerNormBackward { .. }
            | Op::RotaryBackward
            | Op::EmbeddingBackward { .. }
            | Op::CrossEntropyBackward { .. }
            | Op::AdamW { .. }
            | Op::SgdMomentum { .. }
            | Op::Collective { .. }
            | Op::CrossEntropy { .. }
            | Op::MoeExperts { .. }
            | Op::MoeExpertsBackward { .. }) => Err(self.fail(
                id,
                format!(
                    "{} on a tensor split across tensor-parallel ranks is not supported",
                    other.kind_name()
                ),
            )),
        }
    }

    fn linear(&mut self, id: NodeId, bias: bool) -> Result<()> {
        let n = self.src.node(id).clone();
        let src_w = n.inputs[1];
        let class = self.linear_split(id, src_w);
        let x = self.value(n.inputs[0]);
        let x_axis = self.axis.get(&x).copied();
        let last = n.outputs[0].shape.0.len() - 1;
        match class {
            TpSplit::Column => {
                if x_axis.is_some() {
                    return Err(self.fail(id, "column-parallel linear on an already split input"));
                }
                let x = self.enter(x, &n.prov);
                let w = self.slice(id, src_w, 1)?;
                let mut args = vec![x, w];
                if bias {
                    args.push(self.slice(id, n.inputs[2], 0)?);
                }
                let ty = self.split_ty(id, &n.outputs[0], last)?;
                let new = self
                    .out
                    .add(Op::Linear { bias }, args, vec![ty], n.prov.clone());
                self.axis.insert(Value::of(new), last);
                self.record(id, new, 1);
            }
            TpSplit::Row => {
                let features = self.out.ty(x).shape.0.len() - 1;
                if x_axis != Some(features) {
                    return Err(self.fail(
                        id,
                        "row-parallel linear needs its input split along the feature axis",
                    ));
                }
                let w = self.slice(id, src_w, 0)?;
                let ty = n.outputs[0].clone();
                let part = self.out.add(
                    Op::Linear { bias: false },
                    vec![x, w],
                    vec![ty.clone()],
                    n.prov.clone(),
                );
                let mut y = Value::of(self.out.add(
                    Op::Collective {
                        kind: CollectiveKind::AllReduce,
                        group_size: self.tp as u32,
                        axis: None,
                    },
                    vec![Value::of(part)],
                    vec![ty.clone()],
                    n.prov.clone(),
                ));
                if bias {
                    let b = self.value(n.inputs[2]);
                    y = Value::of(self.out.add(
                        Op::Binary(BinaryOp::Add),
                        vec![y, b],
                        vec![ty],
                        n.prov.clone(),
                    ));
                }
                self.map.insert(Value::of(id), y);
            }
            TpSplit::Replicated
            | TpSplit::Vocab
            | TpSplit::Sequence
            | TpSplit::Heads
            | TpSplit::Expert => {
                if x_axis.is_some() {
                    return Err(self.fail(
                        id,
                        "a replicated linear layer on a tensor split across tensor-parallel ranks",
                    ));
                }
                let ins: Vec<Value> = n.inputs.iter().map(|v| self.value(*v)).collect();
                let new = self
                    .out
                    .add(n.op.clone(), ins, n.outputs.clone(), n.prov.clone());
                self.record(id, new, 1);
            }
        }
        Ok(())
    }

    /// How a linear layer divides: by its weight's name, or by its module's name where the weight's says
    /// nothing (ONNX exports fold weights into constants named like `val_92`).
    fn linear_split(&self, id: NodeId, w: Value) -> TpSplit {
        let mut v = w;
        let by_weight = loop {
            let n = self.src.node(v.node);
            match &n.op {
                Op::Param { name, .. } => break linear_class(name),
                Op::Cast(_) | Op::Transpose(_) => v = n.inputs[0],
                _ => break TpSplit::Replicated,
            }
        };
        match by_weight {
            TpSplit::Replicated => linear_class(&self.src.node(id).prov.scope),
            c => c,
        }
    }

    /// `x` marked as entering a tensor-parallel region (one marker per value).
    fn enter(&mut self, x: Value, prov: &Provenance) -> Value {
        if let Some(v) = self.entered.get(&x) {
            return *v;
        }
        let ty = self.out.ty(x).clone();
        let v = Value::of(self.out.add(
            Op::Collective {
                kind: CollectiveKind::CopyToGroup,
                group_size: self.tp as u32,
                axis: None,
            },
            vec![x],
            vec![ty],
            prov.clone(),
        ));
        self.entered.insert(x, v);
        v
    }

    /// This rank's contiguous slice along `axis` of a weight (a parameter, possibly behind casts).
    fn slice(&mut self, user: NodeId, v: Value, axis: usize) -> Result<Value> {
        if let Some(s) = self.sliced.get(&(v, axis)) {
            return Ok(*s);
        }
        let n = self.src.node(v.node).clone();
        let new = match &n.op {
            Op::Param { name, data } => {
                let ty = self.split_ty(user, &n.outputs[0], axis)?;
                let data = match data {
                    ParamData::Inline(t) => ParamData::Inline(slice_tensor(
                        t,
                        axis,
                        self.rank as usize,
                        self.tp as usize,
                    )),
                    // planning-only weights: the rank's slice is read from the same tensor when loaded
                    ext @ ParamData::External { .. } => ext.clone(),
                };
                self.out.add(
                    Op::Param {
                        name: name.clone(),
                        data,
                    },
                    vec![],
                    vec![ty],
                    n.prov.clone(),
                )
            }
            Op::Cast(dt) => {
                let inner = self.slice(user, n.inputs[0], axis)?;
                let ty = self.split_ty(user, &n.outputs[0], axis)?;
                self.out
                    .add(Op::Cast(*dt), vec![inner], vec![ty], n.prov.clone())
            }
            // a weight stored [out, in] and transposed for the linear layer
            Op::Transpose(perm) => {
                let inner = self.slice(user, n.inputs[0], perm[axis])?;
                let ty = self.split_ty(user, &n.outputs[0], axis)?;
                self.out.add(
                    Op::Transpose(perm.clone()),
                    vec![inner],
                    vec![ty],
                    n.prov.clone(),
                )
            }
            other => {
                return Err(self.fail(
                    user,
                    format!(
                        "its weight comes from {}, not a parameter",
                        other.kind_name()
                    ),
                ));
            }
        };
        let nv = Value::of(new);
        self.sliced.insert((v, axis), nv);
        Ok(nv)
    }
}

/// Part `part` of `parts` equal contiguous pieces of `t` along `axis`.
pub fn slice_tensor(t: &Tensor, axis: usize, part: usize, parts: usize) -> Tensor {
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product();
    let len = t.shape[axis] / parts;
    let v = t.to_f64_vec();
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * t.shape[axis] + part * len) * inner;
        out.extend(v[base..base + len * inner].iter().map(|x| *x as f32));
    }
    let mut shape = t.shape.clone();
    shape[axis] = len;
    let mut s = Tensor::f32(shape, out);
    s.dtype = t.dtype;
    s
}

/// Concatenation of per-rank pieces along `axis` (the inverse of [`slice_tensor`]).
pub fn concat_tensors(parts: &[Tensor], axis: usize) -> Tensor {
    let first = &parts[0];
    let outer: usize = first.shape[..axis].iter().product();
    let mut shape = first.shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let vs: Vec<Vec<f64>> = parts.iter().map(|p| p.to_f64_vec()).collect();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (p, v) in parts.iter().zip(&vs) {
            let chunk: usize = p.shape[axis..].iter().product();
            out.extend(v[o * chunk..(o + 1) * chunk].iter().map(|x| *x as f32));
        }
    }
    let mut t = Tensor::f32(shape, out);
    t.dtype = first.dtype;
    t
}
