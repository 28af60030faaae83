//! The egg language recognition rewrites over, its shape analysis, and the conversion of a [`Graph`] into
//! an e-graph.
//!
//! Only the primitive ops the patterns mention become structured e-nodes; every other value is an opaque
//! leaf (`v<node>_<output>`). Pure data-movement idioms that PyTorch emits around attention are verified by
//! shape and folded into single e-nodes while converting: `kt` (`Reshape(Transpose[0,2,1](Reshape(k)))`,
//! i.e. `kᵀ` over the last two axes) and `rep` (`Reshape(Expand(Reshape(k)))`, HF's `repeat_kv`).

use crate::dim::Dim;
use crate::graph::{Graph, NodeId, Value};
use crate::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use crate::shape::{Shape, TensorType};
use egg::{Analysis, DidMerge, EGraph, Id, Symbol, define_language};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A scalar constant in the language (f64 stored by bits so it can be hashed).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Konst(pub u64);

impl Konst {
    /// The value.
    pub fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
    /// From a value.
    pub fn of(v: f64) -> Konst {
        Konst(v.to_bits())
    }
}

impl FromStr for Konst {
    type Err = ();
    fn from_str(s: &str) -> Result<Konst, ()> {
        s.parse::<f64>().map(Konst::of).map_err(|_| ())
    }
}

impl fmt::Display for Konst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value())
    }
}

impl fmt::Debug for Konst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value())
    }
}

define_language! {
    /// Recognition language: the primitives patterns mention, verified idioms, and fused ops.
    pub enum Rec {
        "+" = Add([Id; 2]),
        "-" = Sub([Id; 2]),
        "*" = Mul([Id; 2]),
        "/" = Div([Id; 2]),
        "pow" = Pow([Id; 2]),
        "neg" = Neg(Id),
        "sqrt" = Sqrt(Id),
        "recip" = Recip(Id),
        "sigmoid" = Sigmoid(Id),
        "tanh" = Tanh(Id),
        "erf" = Erf(Id),
        "isnan" = IsNan(Id),
        "mean" = Mean(Id),
        "cast" = Cast(Id),
        "matmul" = MatMul([Id; 2]),
        "t" = T(Id),
        "softmax" = Softmax(Id),
        "where" = Where([Id; 3]),
        "lo" = Lo(Id),
        "hi" = Hi(Id),
        "cat" = Cat([Id; 2]),
        "gather" = Gather([Id; 2]),
        "kt" = Kt(Id),
        "rep" = Rep(Id),
        "rmsnorm" = RmsNorm([Id; 3]),
        "silu" = Silu(Id),
        "gelu" = Gelu(Id),
        "gelu_tanh" = GeluTanh(Id),
        "linear" = Linear([Id; 2]),
        "linear_b" = LinearB([Id; 3]),
        "embedding" = Embedding([Id; 2]),
        "rotary" = Rotary([Id; 3]),
        "attention" = Attention([Id; 5]),
        Num(Konst),
        Leaf(Symbol),
    }
}

/// What the analysis knows about an opaque leaf.
#[derive(Clone, Debug)]
pub struct LeafInfo {
    /// Its type.
    pub ty: TensorType,
    /// A trainable parameter.
    pub param: bool,
}

/// Per-class facts: type (shape and dtype), constant value, parameter-ness.
#[derive(Clone, Debug, Default)]
pub struct Info {
    /// Tensor type, when known.
    pub ty: Option<TensorType>,
    /// Scalar constant value.
    pub konst: Option<f64>,
    /// The class is a trainable parameter.
    pub param: bool,
}

/// The shape analysis. `merge` keeps the first type and counts disagreements (a rewrite that changed a
/// type would be a bug; conditions validate shapes before a rewrite enters the e-graph).
#[derive(Default)]
pub struct Shapes {
    /// Opaque leaves.
    pub leaves: HashMap<Symbol, LeafInfo>,
    /// Number of merges whose types disagreed.
    pub mismatches: usize,
}

fn ty_of(eg: &EGraph<Rec, Shapes>, id: Id) -> Option<TensorType> {
    eg[id].data.ty.clone()
}

impl Analysis<Rec> for Shapes {
    type Data = Info;

    fn make(eg: &mut EGraph<Rec, Self>, enode: &Rec) -> Info {
        let same = |c: &Id| ty_of(eg, *c);
        match enode {
            Rec::Num(k) => Info {
                konst: Some(k.value()),
                ..Default::default()
            },
            Rec::Leaf(s) => match eg.analysis.leaves.get(s) {
                Some(l) => Info {
                    ty: Some(l.ty.clone()),
                    konst: None,
                    param: l.param,
                },
                None => Info::default(),
            },
            Rec::Silu(x) | Rec::Gelu(x) | Rec::GeluTanh(x) => Info {
                ty: same(x),
                ..Default::default()
            },
            Rec::RmsNorm([x, _, _]) | Rec::Rotary([x, _, _]) => Info {
                ty: same(x),
                ..Default::default()
            },
            Rec::Attention([q, ..]) => Info {
                ty: same(q),
                ..Default::default()
            },
            Rec::Linear([x, w]) | Rec::LinearB([x, w, _]) => {
                let ty = match (same(x), same(w)) {
                    (Some(tx), Some(tw)) if tx.shape.rank() >= 1 && tw.shape.rank() == 2 => {
                        let mut d = tx.shape.0.clone();
                        d.pop();
                        d.push(tw.shape.0[1].clone());
                        Some(TensorType::new(tx.dtype, Shape(d)))
                    }
                    _ => None,
                };
                Info {
                    ty,
                    ..Default::default()
                }
            }
            Rec::Embedding([t, ids]) => {
                let ty = match (same(t), same(ids)) {
                    (Some(tt), Some(ti)) if tt.shape.rank() == 2 => {
                        let mut d = ti.shape.0.clone();
                        d.push(tt.shape.0[1].clone());
                        Some(TensorType::new(tt.dtype, Shape(d)))
                    }
                    _ => None,
                };
                Info {
                    ty,
                    ..Default::default()
                }
            }
            _ => Info::default(),
        }
    }

    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        let mut changed = false;
        match (&a.ty, b.ty) {
            (None, Some(t)) => {
                a.ty = Some(t);
                changed = true;
            }
            (Some(x), Some(y)) if *x != y => self.mismatches += 1,
            _ => {}
        }
        if a.konst.is_none() && b.konst.is_some() {
            a.konst = b.konst;
            changed = true;
        }
        if !a.param && b.param {
            a.param = true;
            changed = true;
        }
        DidMerge(changed, true)
    }
}

/// The e-graph of a graph plus the value ↔ class correspondence.
pub struct Converted {
    /// The e-graph.
    pub egraph: EGraph<Rec, Shapes>,
    /// Class of every graph value that was converted.
    pub ids: HashMap<Value, Id>,
    /// Nodes in topological order.
    pub order: Vec<NodeId>,
}

fn konst_of(g: &Graph, v: Value) -> Option<f64> {
    match &g.node(v.node).op {
        Op::Constant(t) if t.numel() == 1 => t.to_f64_vec().first().copied(),
        _ => None,
    }
}

fn dims(g: &Graph, v: Value) -> &[Dim] {
    &g.ty(v).shape.0
}

/// `Reshape(Transpose[0,2,1](Reshape(k)))` with shapes `[b·h,s,d] → [b·h,d,s] → [b,h,d,s]`: returns `k`.
fn kt_idiom(g: &Graph, n: NodeId) -> Option<Value> {
    let node = g.node(n);
    let Op::Reshape(_) = node.op else { return None };
    let t = node.inputs[0];
    let Op::Transpose(p) = &g.node(t.node).op else {
        return None;
    };
    if p != &[0, 2, 1] {
        return None;
    }
    let r = g.node(t.node).inputs[0];
    let Op::Reshape(_) = g.node(r.node).op else {
        return None;
    };
    let k = g.node(r.node).inputs[0];
    let kd = dims(g, k);
    if kd.len() != 4 {
        return None;
    }
    let bh = kd[0].mul(&kd[1]);
    let ok = dims(g, r) == [bh.clone(), kd[2].clone(), kd[3].clone()]
        && dims(g, t) == [bh, kd[3].clone(), kd[2].clone()]
        && dims(g, Value::of(n)) == [kd[0].clone(), kd[1].clone(), kd[3].clone(), kd[2].clone()];
    ok.then_some(k)
}

/// `Reshape(Expand(Reshape(x)))` with shapes `[b,kv,1,s,d] → [b,kv,r,s,d] → [b,kv·r,s,d]`: returns `x`.
fn rep_idiom(g: &Graph, n: NodeId) -> Option<Value> {
    let node = g.node(n);
    let Op::Reshape(_) = node.op else { return None };
    let e = node.inputs[0];
    let Op::Expand(_) = g.node(e.node).op else {
        return None;
    };
    let u = g.node(e.node).inputs[0];
    let Op::Reshape(_) = g.node(u.node).op else {
        return None;
    };
    let x = g.node(u.node).inputs[0];
    let xd = dims(g, x);
    if xd.len() != 4 {
        return None;
    }
    let ed = dims(g, e);
    if ed.len() != 5 {
        return None;
    }
    let r = ed[2].clone();
    let one = Dim::constant(1);
    let ok = dims(g, u)
        == [
            xd[0].clone(),
            xd[1].clone(),
            one,
            xd[2].clone(),
            xd[3].clone(),
        ]
        && ed
            == [
                xd[0].clone(),
                xd[1].clone(),
                r.clone(),
                xd[2].clone(),
                xd[3].clone(),
            ]
        && dims(g, Value::of(n)) == [xd[0].clone(), xd[1].mul(&r), xd[2].clone(), xd[3].clone()];
    ok.then_some(x)
}

/// Converts a graph into an e-graph.
pub fn convert(g: &Graph) -> Converted {
    let mut eg: EGraph<Rec, Shapes> = EGraph::new(Shapes::default());
    let mut ids: HashMap<Value, Id> = HashMap::with_capacity(g.len());
    let order = g.topo_order();
    for &n in &order {
        let node = g.node(n);
        let input = |i: usize| ids.get(&node.inputs[i]).copied();
        let rank = node.outputs.first().map(|t| t.shape.rank()).unwrap_or(0);
        let last_dim = |v: Value| g.ty(v).shape.0.last().and_then(Dim::as_const);
        let enode: Option<Rec> = if node.outputs.len() != 1 {
            None
        } else {
            match &node.op {
                Op::Constant(_) => konst_of(g, Value::of(n)).map(|c| Rec::Num(Konst::of(c))),
                Op::Binary(b) => {
                    let (a, c) = (input(0), input(1));
                    match (a, c, b) {
                        (Some(a), Some(c), BinaryOp::Add) => Some(Rec::Add([a, c])),
                        (Some(a), Some(c), BinaryOp::Sub) => Some(Rec::Sub([a, c])),
                        (Some(a), Some(c), BinaryOp::Mul) => Some(Rec::Mul([a, c])),
                        (Some(a), Some(c), BinaryOp::Div) => Some(Rec::Div([a, c])),
                        (Some(a), Some(c), BinaryOp::Pow) => Some(Rec::Pow([a, c])),
                        _ => None,
                    }
                }
                Op::Unary(u) => input(0).and_then(|x| match u {
                    UnaryOp::Neg => Some(Rec::Neg(x)),
                    UnaryOp::Sqrt => Some(Rec::Sqrt(x)),
                    UnaryOp::Reciprocal => Some(Rec::Recip(x)),
                    UnaryOp::Sigmoid => Some(Rec::Sigmoid(x)),
                    UnaryOp::Tanh => Some(Rec::Tanh(x)),
                    UnaryOp::Erf => Some(Rec::Erf(x)),
                    UnaryOp::IsNan => Some(Rec::IsNan(x)),
                    _ => None,
                }),
                Op::Reduce {
                    kind: ReduceKind::Mean,
                    axes,
                    keep_dims: true,
                } if axes == &[rank.saturating_sub(1)] => input(0).map(Rec::Mean),
                Op::Cast(_) => input(0).map(Rec::Cast),
                Op::MatMul => match (input(0), input(1)) {
                    (Some(a), Some(b)) => Some(Rec::MatMul([a, b])),
                    _ => None,
                },
                Op::Transpose(p) if p == &[1, 0] => input(0).map(Rec::T),
                Op::Softmax { axis } if *axis + 1 == rank => input(0).map(Rec::Softmax),
                Op::Where => match (input(0), input(1), input(2)) {
                    (Some(a), Some(b), Some(c)) => Some(Rec::Where([a, b, c])),
                    _ => None,
                },
                Op::Slice {
                    axis,
                    start,
                    end,
                    step: 1,
                } if *axis + 1 == rank => {
                    let d = last_dim(node.inputs[0]);
                    match (d, start.as_const(), end.as_const()) {
                        (Some(d), Some(0), Some(e)) if d % 2 == 0 && e == d / 2 => {
                            input(0).map(Rec::Lo)
                        }
                        (Some(d), Some(s), Some(e)) if d % 2 == 0 && s == d / 2 && e == d => {
                            input(0).map(Rec::Hi)
                        }
                        _ => None,
                    }
                }
                Op::Concat { axis } if *axis + 1 == rank && node.inputs.len() == 2 => {
                    match (input(0), input(1)) {
                        (Some(a), Some(b)) => Some(Rec::Cat([a, b])),
                        _ => None,
                    }
                }
                Op::Gather { axis: 0 } => match (input(0), input(1)) {
                    (Some(a), Some(b)) => Some(Rec::Gather([a, b])),
                    _ => None,
                },
                Op::Reshape(_) => {
                    if let Some(k) = kt_idiom(g, n) {
                        ids.get(&k).map(|k| Rec::Kt(*k))
                    } else if let Some(x) = rep_idiom(g, n) {
                        ids.get(&x).map(|x| Rec::Rep(*x))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        for (o, ty) in node.outputs.iter().enumerate() {
            let v = Value {
                node: n,
                output: o as u32,
            };
            let id = match &enode {
                Some(e) => {
                    let id = eg.add(e.clone());
                    if eg[id].data.ty.is_none() && !matches!(e, Rec::Num(_)) {
                        eg[id].data.ty = Some(ty.clone());
                    }
                    id
                }
                None => {
                    let sym = Symbol::from(format!("v{}_{o}", n.index()));
                    let param =
                        matches!(&node.op, Op::Param { name, .. } if !g.buffers.contains(name));
                    eg.analysis.leaves.insert(
                        sym,
                        LeafInfo {
                            ty: ty.clone(),
                            param,
                        },
                    );
                    eg.add(Rec::Leaf(sym))
                }
            };
            ids.insert(v, id);
        }
    }
    eg.rebuild();
    Converted {
        egraph: eg,
        ids,
        order,
    }
}
