//! MLIR emission: one `moai_ir::Graph` program → one MLIR module in the `func` + `linalg`/`tensor`/
//! `arith`/`math` dialects on tensors, with symbolic dims specialized to concrete values.
//!
//! The entry function takes every program input and parameter, then every output, as a `memref` (so the
//! executor passes plain buffers) and brings them into tensor form with `bufferization.to_tensor restrict`;
//! results are written with `bufferization.materialize_in_destination`. Collectives become `func.call`s to
//! runtime symbols ([`COLLECTIVE_SYMBOLS`]) on raw buffer addresses.
//!
//! The text is built here from typed pieces ([`builder`]); it is parsed and verified by MLIR (melior) in
//! [`crate::mlir`] before any lowering.

pub mod builder;
pub mod contract;
mod nn;
mod ops;

use crate::error::{Result, RuntimeError};
use builder::{Elem, Fb, Tv, memref_ty};
use moai_ir::{DType, Graph, Op, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Bindings of symbolic dims (`batch`, `seq`, ...) to the plan's concrete values.
pub type Dims = BTreeMap<String, i64>;

/// How contractions are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelStyle {
    /// Plain `linalg.generic` contractions (CPU).
    Linalg,
    /// Hand-tiled GPU kernels with workgroup-memory staging for every tileable contraction.
    GpuTiled,
}

/// Runtime symbols the emitted code may call, all `(i64...) -> ()`:
/// `moai_allreduce_f32(ptr, count, group_size)`, `moai_allgather_f32(in, out, outer, inner, group_size)`,
/// `moai_reducescatter_f32(in, out, outer, inner_out, group_size)`, `moai_send_f32(ptr, count, tag)`,
/// `moai_recv_f32(ptr, count, tag)`.
pub const COLLECTIVE_SYMBOLS: [(&str, usize); 5] = [
    ("moai_allreduce_f32", 3),
    ("moai_allgather_f32", 5),
    ("moai_reducescatter_f32", 5),
    ("moai_send_f32", 3),
    ("moai_recv_f32", 3),
];

/// One argument of an emitted entry function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSpec {
    /// Input, parameter or output name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Concrete shape.
    pub shape: Vec<usize>,
}

impl ArgSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An emitted module and the signature of its entry function.
#[derive(Clone, Debug)]
pub struct EmittedModule {
    /// Entry function name.
    pub func_name: String,
    /// MLIR text.
    pub text: String,
    /// Inputs then parameters, in argument order.
    pub inputs: Vec<ArgSpec>,
    /// Outputs, in argument order after the inputs.
    pub outputs: Vec<ArgSpec>,
    /// Number of hand-tiled contraction kernels.
    pub tiled_kernels: usize,
    /// Runtime symbols called.
    pub calls: Vec<String>,
}

/// How transcendental functions (`exp`, `log`, `sqrt`, `sin`, `cos`, `pow`, `fma`) are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathLowering {
    /// `math` dialect ops (the CPU lowers them to LLVM intrinsics and libm).
    Dialect,
    /// On f32, code that needs no GPU device library: LLVM intrinsics both GPU backends select to
    /// instructions, and polynomial sine/cosine (see [`builder::Fb::math`]).
    Portable,
}

impl KernelStyle {
    /// The math lowering this style uses: portable for GPU kernels.
    pub fn math(self) -> MathLowering {
        match self {
            KernelStyle::Linalg => MathLowering::Dialect,
            KernelStyle::GpuTiled => MathLowering::Portable,
        }
    }
}

/// Emits `graph` as an MLIR module whose entry function is `func_name`. Arguments: the graph inputs in
/// declaration order, then every `Param` node (parameters and buffers) in node-index order, then outputs.
pub fn emit_program(
    graph: &Graph,
    dims: &Dims,
    func_name: &str,
    style: KernelStyle,
) -> Result<EmittedModule> {
    emit_program_with(graph, dims, func_name, style, style.math())
}

/// [`emit_program`] with an explicit math lowering (e.g. portable math run on the CPU to test it).
pub fn emit_program_with(
    graph: &Graph,
    dims: &Dims,
    func_name: &str,
    style: KernelStyle,
    math: MathLowering,
) -> Result<EmittedModule> {
    if func_name.is_empty()
        || !func_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || func_name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(RuntimeError::Emit {
            program: func_name.into(),
            node: "-".into(),
            op: "-".into(),
            reason: "function name must be an identifier ([A-Za-z_][A-Za-z0-9_]*)".into(),
        });
    }
    let mut fb = Fb::new(2);
    fb.portable_math = math == MathLowering::Portable;
    fb.gpu = style == KernelStyle::GpuTiled;
    let mut em = Emitter {
        graph,
        dims,
        program: func_name.to_string(),
        style,
        fb,
        vals: HashMap::new(),
        helpers: Vec::new(),
        calls: BTreeSet::new(),
        tiled: 0,
        tag: 0,
    };
    // signature
    let mut arg_nodes = graph.inputs.clone();
    // every Param node (trainable parameters and non-trainable buffers), in index order
    arg_nodes.extend(
        graph
            .node_ids()
            .filter(|n| matches!(graph.node(*n).op, Op::Param { .. })),
    );
    let mut inputs = Vec::new();
    let mut sig = Vec::new();
    for (i, id) in arg_nodes.iter().enumerate() {
        let node = graph.node(*id);
        let name = match &node.op {
            Op::Input { name } | Op::Param { name, .. } => name.clone(),
            _ => format!("arg{i}"),
        };
        let v = Value::of(*id);
        let (shape, elem) = em.value_type(v)?;
        let arg = format!("%in{i}");
        sig.push(format!("{arg}: {}", memref_ty(&shape, elem)));
        inputs.push(ArgSpec {
            name,
            dtype: graph.ty(v).dtype,
            shape: shape.iter().map(|d| *d as usize).collect(),
        });
        let t = em.fb.fresh("t");
        let tv = Tv {
            name: t.clone(),
            shape: shape.clone(),
            elem,
        };
        em.fb.line(format!(
            "{t} = bufferization.to_tensor {arg} restrict : {} to {}",
            tv.memref_ty(),
            tv.ty()
        ));
        em.vals.insert(v, tv);
    }
    let mut outputs = Vec::new();
    for (i, (name, v)) in graph.outputs.iter().enumerate() {
        let (shape, elem) = em.value_type(*v)?;
        sig.push(format!("%out{i}: {}", memref_ty(&shape, elem)));
        outputs.push(ArgSpec {
            name: name.clone(),
            dtype: graph.ty(*v).dtype,
            shape: shape.iter().map(|d| *d as usize).collect(),
        });
    }
    for id in graph.topo_order() {
        if arg_nodes.contains(&id) {
            continue;
        }
        em.node(id)?;
    }
    for (i, (name, v)) in graph.outputs.iter().enumerate() {
        let tv = em.vals.get(v).cloned().ok_or_else(|| RuntimeError::Emit {
            program: func_name.into(),
            node: name.clone(),
            op: "output".into(),
            reason: "output value was not computed".into(),
        })?;
        em.fb.line(format!(
            "bufferization.materialize_in_destination {} in restrict writable %out{i} : ({}, {}) -> ()",
            tv.name,
            tv.ty(),
            tv.memref_ty()
        ));
    }
    em.fb.line("return");
    let mut text = String::from("module {\n");
    for c in &em.calls {
        if let Some((_, n)) = COLLECTIVE_SYMBOLS.iter().find(|(s, _)| s == c) {
            text.push_str(&format!(
                "  func.func private @{c}({})\n",
                vec!["i64"; *n].join(", ")
            ));
        }
    }
    for h in &em.helpers {
        text.push_str(h);
        text.push('\n');
    }
    text.push_str(&format!(
        "  func.func @{func_name}({}) attributes {{llvm.emit_c_interface}} {{\n",
        sig.join(", ")
    ));
    for l in &em.fb.lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("  }\n}\n");
    Ok(EmittedModule {
        func_name: func_name.into(),
        text,
        inputs,
        outputs,
        tiled_kernels: em.tiled,
        calls: em.calls.into_iter().collect(),
    })
}

/// Emission state for one program.
pub(crate) struct Emitter<'g> {
    pub graph: &'g Graph,
    pub dims: &'g Dims,
    pub program: String,
    pub style: KernelStyle,
    pub fb: Fb,
    pub vals: HashMap<Value, Tv>,
    pub helpers: Vec<String>,
    pub calls: BTreeSet<String>,
    pub tiled: usize,
    pub tag: i64,
}

impl Emitter<'_> {
    /// Concrete shape and element type of a value.
    pub fn value_type(&self, v: Value) -> Result<(Vec<i64>, Elem)> {
        let ty = self.graph.ty(v);
        let env = |s: &str| self.dims.get(s).copied();
        let mut shape = Vec::with_capacity(ty.shape.rank());
        for d in &ty.shape.0 {
            match d.eval(&env) {
                Some(x) if x >= 0 => shape.push(x),
                _ => {
                    return Err(RuntimeError::UnboundDim {
                        program: self.program.clone(),
                        dim: d.to_string(),
                        value: format!("{}#{}", self.node_name(v.node), v.output),
                        bound: self.dims.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        let elem = Elem::from_dtype(ty.dtype)
            .ok_or_else(|| self.err(v.node, &format!("dtype {} is not supported", ty.dtype)))?;
        Ok((shape, elem))
    }

    fn node_name(&self, id: moai_ir::NodeId) -> String {
        let n = self.graph.node(id);
        if n.prov.name.is_empty() {
            format!("n{}", id.index())
        } else {
            n.prov.name.clone()
        }
    }

    /// An emission error at a node.
    pub fn err(&self, id: moai_ir::NodeId, reason: &str) -> RuntimeError {
        RuntimeError::Emit {
            program: self.program.clone(),
            node: self.node_name(id),
            op: self.graph.node(id).op.kind_name(),
            reason: reason.into(),
        }
    }

    /// The tensor of an input value.
    pub fn input(&self, id: moai_ir::NodeId, slot: usize) -> Result<Tv> {
        let v = self
            .graph
            .node(id)
            .inputs
            .get(slot)
            .ok_or_else(|| self.err(id, &format!("missing input {slot}")))?;
        self.vals
            .get(v)
            .cloned()
            .ok_or_else(|| self.err(id, &format!("input {slot} not computed")))
    }

    /// Emits a contraction in the style of this program.
    pub fn contract(&mut self, c: contract::Contraction<'_>) -> Tv {
        if self.style == KernelStyle::GpuTiled && c.tileable() {
            self.tiled += 1;
            let id = self.tiled;
            c.emit_tiled(&mut self.fb, &mut self.helpers, id)
        } else {
            c.emit_linalg(&mut self.fb)
        }
    }

    fn node(&mut self, id: moai_ir::NodeId) -> Result<()> {
        let node = self.graph.node(id);
        let mut outs = Vec::new();
        for i in 0..node.outputs.len() {
            outs.push(self.value_type(Value {
                node: id,
                output: i as u32,
            })?);
        }
        let results = if let Some(r) = ops::emit(self, id, &outs)? {
            r
        } else {
            nn::emit(self, id, &outs)?
        };
        if results.len() != outs.len() {
            return Err(self.err(
                id,
                &format!(
                    "emitted {} results for {} outputs",
                    results.len(),
                    outs.len()
                ),
            ));
        }
        for (i, (t, (shape, elem))) in results.into_iter().zip(outs).enumerate() {
            if t.shape != shape || t.elem != elem {
                return Err(self.err(
                    id,
                    &format!(
                        "result {i} has type {} but the graph says {}",
                        t.ty(),
                        builder::tensor_ty(&shape, elem)
                    ),
                ));
            }
            self.vals.insert(
                Value {
                    node: id,
                    output: i as u32,
                },
                t,
            );
        }
        Ok(())
    }
}
