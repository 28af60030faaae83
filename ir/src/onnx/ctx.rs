//! The importer's state: ONNX value names → graph values or import-time known values, lazy creation of
//! parameters and constants, and the shape helpers the op builders share.

use super::known::{Known, MAX_FOLD};
use super::params::{InitKind, InitPlan};
use super::proto;
use crate::dim::Dim;
use crate::graph::{Graph, NodeId, Provenance, Value};
use crate::op::{Op, ParamData};
use crate::shape::{Shape, TensorType};
use onnx_protobuf::{NodeProto, TensorProto};
use std::collections::HashMap;
use std::rc::Rc;

/// What an ONNX value name stands for during import.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// A value computed by a graph node.
    T(Value),
    /// A value known at import time (folded).
    K(Rc<Known>),
    /// A sequence from `SplitToSequence`: slices of `input` along `axis`.
    Seq {
        /// Split tensor.
        input: Value,
        /// Split axis.
        axis: usize,
        /// `(start, end)` of each part.
        parts: Vec<(Dim, Dim)>,
        /// Keep the split axis (false: each part is squeezed).
        keep_dims: bool,
    },
}

/// Builder result: one entry per ONNX output.
pub(crate) type Outs = Vec<Val>;

/// Importer state.
pub(crate) struct Ctx<'m> {
    /// The graph under construction.
    pub g: Graph,
    vals: HashMap<&'m str, Val>,
    materialized: HashMap<String, Value>,
    inits: HashMap<&'m str, &'m TensorProto>,
    plan: InitPlan,
    params: HashMap<(String, String), NodeId>,
    /// Provenance of the node being built.
    pub prov: Provenance,
    /// Index of the node being built.
    pub node_index: usize,
}

impl<'m> Ctx<'m> {
    /// A fresh context.
    pub fn new(name: &str, inits: &'m [TensorProto], plan: InitPlan) -> Ctx<'m> {
        Ctx {
            g: Graph::new(name),
            vals: HashMap::new(),
            materialized: HashMap::new(),
            inits: inits.iter().map(|t| (t.name.as_str(), t)).collect(),
            plan,
            params: HashMap::new(),
            prov: Provenance::default(),
            node_index: 0,
        }
    }

    /// Binds an ONNX name.
    pub fn bind(&mut self, name: &'m str, v: Val) {
        self.vals.insert(name, v);
    }

    /// True when the name is bound or is an initializer.
    pub fn has(&self, name: &str) -> bool {
        self.vals.contains_key(name) || self.inits.contains_key(name)
    }

    /// Resolves a name (initializers on first use).
    pub fn val(&mut self, name: &str) -> Result<Val, String> {
        if let Some(v) = self.vals.get(name) {
            return Ok(v.clone());
        }
        let Some(t) = self.inits.get(name).copied() else {
            return Err(format!(
                "input `{name}` is not produced by any node, initializer or graph input"
            ));
        };
        self.initializer(t)
    }

    fn initializer(&mut self, t: &'m TensorProto) -> Result<Val, String> {
        let kind = self.plan.kind(&t.name);
        let dtype = proto::tensor_dtype(t)?;
        let shape = proto::tensor_shape(t)?;
        if kind == InitKind::Param || proto::external_ref(t).is_some() {
            let group = self.plan.group(&t.name, self.node_index);
            let key = (t.name.clone(), group.clone());
            if let Some(id) = self.params.get(&key) {
                return Ok(Val::T(Value::of(*id)));
            }
            let data = match proto::external_ref(t) {
                Some(r) => {
                    let (location, offset, length) = r?;
                    super::external::validate_location(&location)
                        .map_err(|e| format!("external data for `{}`: {e}", t.name))?;
                    // a corrupt shape may not fit in 64 bits: an error, not an overflow
                    let need = shape
                        .iter()
                        .try_fold(dtype.size_bytes(), |n, d| n.checked_mul(*d as u64))
                        .ok_or_else(|| {
                            format!(
                                "external data for `{}`: shape {shape:?} is too large",
                                t.name
                            )
                        })?;
                    ParamData::External {
                        location,
                        offset,
                        length: length.unwrap_or(need),
                    }
                }
                None => ParamData::Inline(proto::decode_tensor(t)?),
            };
            let ty = TensorType::new(
                dtype,
                Shape(shape.iter().map(|d| Dim::constant(*d as i64)).collect()),
            );
            let mut scope = self.plan.scope_of(&group);
            if scope.is_empty() {
                scope = self.prov.scope.clone();
            }
            let prov = Provenance {
                name: group.clone(),
                layer: proto::layer_of_scope(&scope),
                scope,
            };
            let id = self.g.add(
                Op::Param {
                    name: group.clone(),
                    data,
                },
                vec![],
                vec![ty],
                prov,
            );
            if kind != InitKind::Param {
                self.g.buffers.insert(group);
            }
            self.params.insert(key, id);
            return Ok(Val::T(Value::of(id)));
        }
        let tensor = proto::decode_tensor(t)?;
        let v = if tensor.numel() <= MAX_FOLD {
            Val::K(Rc::new(Known::from_tensor(&tensor)))
        } else {
            let ty = tensor_type_of(&tensor);
            let prov = Provenance {
                name: t.name.clone(),
                ..Default::default()
            };
            Val::T(Value::of(self.g.add(
                Op::Constant(tensor),
                vec![],
                vec![ty],
                prov,
            )))
        };
        self.vals.insert(t.name.as_str(), v.clone());
        Ok(v)
    }

    /// Input `i` of a node, `None` when absent or empty.
    pub fn input(&mut self, node: &NodeProto, i: usize) -> Result<Option<Val>, String> {
        match node.input.get(i) {
            Some(n) if !n.is_empty() => self.val(n).map(Some),
            _ => Ok(None),
        }
    }

    /// Input `i`, required.
    pub fn req(&mut self, node: &NodeProto, i: usize) -> Result<Val, String> {
        self.input(node, i)?
            .ok_or_else(|| format!("missing input {i}"))
    }

    /// Input `i` as a known value (None when not known at import time).
    pub fn known(&mut self, node: &NodeProto, i: usize) -> Result<Option<Rc<Known>>, String> {
        Ok(match self.input(node, i)? {
            Some(Val::K(k)) => Some(k),
            _ => None,
        })
    }

    /// Input `i` as a known value, required (shape operands).
    pub fn req_known(
        &mut self,
        node: &NodeProto,
        i: usize,
        what: &str,
    ) -> Result<Rc<Known>, String> {
        self.known(node, i)?
            .ok_or_else(|| format!("{what} (input {i}) must be known at import time (a constant or a shape computation)"))
    }

    /// Input `i` as a graph value (known values become constant nodes).
    pub fn tensor(&mut self, node: &NodeProto, i: usize) -> Result<Value, String> {
        let name = node
            .input
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("missing input {i}"))?;
        match self.val(name)? {
            Val::T(v) => Ok(v),
            Val::K(k) => {
                if let Some(v) = self.materialized.get(name.as_str()) {
                    return Ok(*v);
                }
                let v = self.constant(&k)?;
                self.materialized.insert(name.clone(), v);
                Ok(v)
            }
            Val::Seq { .. } => Err(format!("input `{name}` is a sequence, expected a tensor")),
        }
    }

    /// Adds a constant node for a known value.
    pub fn constant(&mut self, k: &Known) -> Result<Value, String> {
        let t = k.to_tensor()?;
        let ty = tensor_type_of(&t);
        let prov = Provenance {
            name: format!("{}_const", self.prov.name),
            ..self.prov.clone()
        };
        Ok(Value::of(self.g.add(
            Op::Constant(t),
            vec![],
            vec![ty],
            prov,
        )))
    }

    /// The type of a value.
    pub fn ty(&self, v: Value) -> TensorType {
        self.g.ty(v).clone()
    }

    /// The shape of a value.
    pub fn shape(&self, v: Value) -> Shape {
        self.g.ty(v).shape.clone()
    }

    /// Adds a node with the current provenance and returns its first output.
    pub fn add(&mut self, op: Op, inputs: Vec<Value>, ty: TensorType) -> Value {
        Value::of(self.g.add(op, inputs, vec![ty], self.prov.clone()))
    }
}

/// The tensor type of a concrete tensor.
pub(crate) fn tensor_type_of(t: &crate::tensor::Tensor) -> TensorType {
    TensorType::new(
        t.dtype,
        Shape(t.shape.iter().map(|d| Dim::constant(*d as i64)).collect()),
    )
}

/// NumPy broadcasting of symbolic shapes.
pub(crate) fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let r = a.rank().max(b.rank());
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let x = if i + a.rank() >= r {
            &a.0[i + a.rank() - r]
        } else {
            &one
        };
        let y = if i + b.rank() >= r {
            &b.0[i + b.rank() - r]
        } else {
            &one
        };
        out.push(if x == y || *y == one {
            x.clone()
        } else if *x == one {
            y.clone()
        } else {
            return Err(format!("cannot broadcast shapes {a} and {b}"));
        });
    }
    Ok(Shape(out))
}

/// Normalizes an axis against a rank.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}
