//! The graph: canonical ops on a petgraph `StableDiGraph`, with ordered inputs, typed outputs and per-node
//! provenance.
//!
//! Invariants: every node's `inputs` name values produced by nodes of this graph; there is one petgraph
//! edge per input slot (producer → consumer, weighted by the slot); the graph is acyclic.

use crate::op::Op;
use crate::shape::TensorType;
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Index of a node.
pub type NodeId = NodeIndex<u32>;

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Value {
    /// Producing node.
    pub node: NodeId,
    /// Output index on that node.
    pub output: u32,
}

impl Value {
    /// The first (often only) output of a node.
    pub fn of(node: NodeId) -> Value {
        Value { node, output: 0 }
    }
}

/// Where a node came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// ONNX node name (or a generated name for nodes moai created).
    pub name: String,
    /// Innermost module name scope, e.g. `model.layers.12.self_attn.q_proj` (empty if unknown).
    pub scope: String,
    /// Decoder-layer index, when the node belongs to one.
    pub layer: Option<u32>,
}

/// A node: op, ordered inputs, output types, provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Inputs in order.
    pub inputs: Vec<Value>,
    /// Output types.
    pub outputs: Vec<TensorType>,
    /// Where it came from.
    pub prov: Provenance,
}

/// A dataflow graph of canonical ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Model name.
    pub name: String,
    g: StableDiGraph<Node, u32>,
    /// Graph inputs (nodes with [`Op::Input`]), in declaration order.
    pub inputs: Vec<NodeId>,
    /// Graph outputs with their names.
    pub outputs: Vec<(String, Value)>,
    /// Directory of the model file, against which external weight locations resolve.
    pub source_dir: Option<std::path::PathBuf>,
    /// Names of [`Op::Param`] nodes that are non-trainable buffers (e.g. a rotary `inv_freq` stored as
    /// external data): they hold values like parameters but [`Graph::params`] leaves them out.
    pub buffers: std::collections::BTreeSet<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds a node; its inputs must already exist.
    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<Value>,
        outputs: Vec<TensorType>,
        prov: Provenance,
    ) -> NodeId {
        let is_input = matches!(op, Op::Input { .. });
        let id = self.g.add_node(Node {
            op,
            inputs: inputs.clone(),
            outputs,
            prov,
        });
        for (slot, v) in inputs.iter().enumerate() {
            self.g.add_edge(v.node, id, slot as u32);
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    /// The source node (parameter, input, constant) a value is a view of: the value's own node, or
    /// the one behind its casts, transposes and reshapes; `None` for a computed value. A weight read
    /// through its bf16 cast, or a tied LM head's transpose of the embedding table, is a view of
    /// the parameter.
    pub fn view_source(&self, mut v: Value) -> Option<NodeId> {
        loop {
            let n = self.node(v.node);
            match &n.op {
                op if op.is_source() => return Some(v.node),
                Op::Cast(_) | Op::Transpose(_) | Op::Reshape(_) => v = *n.inputs.first()?,
                _ => return None,
            }
        }
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// Mutable access to a node's op, types and provenance. Do not edit `inputs` here: use
    /// [`Graph::set_input`].
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// True if the id names a live node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    /// The type of a value.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.g[v.node].outputs[v.output as usize]
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// All live node ids, in index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// Nodes in a topological order (inputs before users); ties broken by node index, so deterministic.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indeg: HashMap<NodeId, usize> = HashMap::with_capacity(self.g.node_count());
        for id in self.g.node_indices() {
            indeg.insert(id, self.g.edges_directed(id, Direction::Incoming).count());
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<NodeId>> = indeg
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(id, _)| std::cmp::Reverse(*id))
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(std::cmp::Reverse(id)) = ready.pop() {
            order.push(id);
            for e in self.g.edges_directed(id, Direction::Outgoing) {
                let d = indeg
                    .get_mut(&e.target())
                    .expect("edge target is a live node");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        order
    }

    /// The nodes that consume any output of `id` (each once, sorted).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self
            .g
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect();
        u.sort();
        u.dedup();
        u
    }

    /// Number of uses of a value (input slots, plus graph outputs).
    pub fn use_count(&self, v: Value) -> usize {
        let slots = self
            .g
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| self.g[e.target()].inputs[*e.weight() as usize] == v)
            .count();
        slots + self.outputs.iter().filter(|(_, o)| *o == v).count()
    }

    /// Rewires input `slot` of `node` to `v`.
    pub fn set_input(&mut self, node: NodeId, slot: usize, v: Value) {
        let old = self.g[node].inputs[slot];
        if let Some(e) = self
            .g
            .edges_directed(node, Direction::Incoming)
            .find(|e| e.source() == old.node && *e.weight() == slot as u32)
            .map(|e| e.id())
        {
            self.g.remove_edge(e);
        }
        self.g[node].inputs[slot] = v;
        self.g.add_edge(v.node, node, slot as u32);
    }

    /// Replaces every use of `old` (inputs and graph outputs) by `new`.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        if old == new {
            return;
        }
        let uses: Vec<(NodeId, usize)> = self
            .g
            .edges_directed(old.node, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight() as usize))
            .filter(|(n, s)| self.g[*n].inputs[*s] == old)
            .collect();
        for (n, s) in uses {
            self.set_input(n, s, new);
        }
        for (_, o) in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes nodes that no graph output depends on (graph inputs are kept). Returns how many went.
    pub fn remove_dead(&mut self) -> usize {
        let mut live = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|(_, v)| v.node).collect();
        stack.extend(self.inputs.iter().copied());
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g[n].inputs.iter().map(|v| v.node));
            }
        }
        let dead: Vec<NodeId> = self
            .g
            .node_indices()
            .filter(|n| !live.contains(n))
            .collect();
        for n in &dead {
            self.g.remove_node(*n);
        }
        dead.len()
    }

    /// Trainable parameter nodes (every [`Op::Param`] not named in [`Graph::buffers`]), in index order.
    pub fn params(&self) -> Vec<NodeId> {
        self.g
            .node_indices()
            .filter(|n| matches!(&self.g[*n].op, Op::Param { name, .. } if !self.buffers.contains(name)))
            .collect()
    }

    /// The underlying petgraph graph (read-only), for analyses.
    pub fn petgraph(&self) -> &StableDiGraph<Node, u32> {
        &self.g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::op::{BinaryOp, UnaryOp};
    use crate::shape::Shape;

    #[test]
    fn replace_and_dead_code() {
        let mut g = Graph::new("t");
        let t = TensorType::new(DType::F32, Shape::from_consts(&[2]));
        let x = g.add(
            Op::Input { name: "x".into() },
            vec![],
            vec![t.clone()],
            Provenance::default(),
        );
        let a = g.add(
            Op::Unary(UnaryOp::Neg),
            vec![Value::of(x)],
            vec![t.clone()],
            Provenance::default(),
        );
        let b = g.add(
            Op::Binary(BinaryOp::Add),
            vec![Value::of(a), Value::of(a)],
            vec![t.clone()],
            Provenance::default(),
        );
        g.outputs.push(("y".into(), Value::of(b)));
        assert_eq!(g.topo_order(), vec![x, a, b]);
        assert_eq!(g.use_count(Value::of(a)), 2);
        g.replace_uses(Value::of(a), Value::of(x));
        assert_eq!(g.node(b).inputs, vec![Value::of(x), Value::of(x)]);
        assert_eq!(g.remove_dead(), 1);
        assert_eq!(g.len(), 2);
    }
}
