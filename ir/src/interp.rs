//! The reference CPU interpreter for the canonical op set.
//!
//! Executes any graph of canonical ops (primitive, fused, backward, optimizer; collectives only for a
//! group of one rank) on concrete inputs. Floats compute in f32 (the reference semantics: only explicit
//! [`Op::Cast`]s to bf16/f16 round) or in f64 ([`Precision::F64`], for gradient checks; casts do not
//! round there). Symbolic dims (`batch`, `seq`) are bound from the shapes of the graph inputs.
//!
//! ```
//! use moai_ir::{Graph, Op, Provenance, Shape, Tensor, TensorType, DType, UnaryOp, Value};
//! use moai_ir::interp::Interpreter;
//! let mut g = Graph::new("neg");
//! let t = TensorType::new(DType::F32, Shape::from_consts(&[2]));
//! let x = g.add(Op::Input { name: "x".into() }, vec![], vec![t.clone()], Provenance::default());
//! let y = g.add(Op::Unary(UnaryOp::Neg), vec![Value::of(x)], vec![t], Provenance::default());
//! g.outputs.push(("y".into(), Value::of(y)));
//! let out = Interpreter::new(&g).run(&[("x", Tensor::f32(vec![2], vec![1.0, -2.0]))]).unwrap();
//! assert_eq!(out[0].1.to_f64_vec(), vec![-1.0, 2.0]);
//! ```

mod exec;
pub mod fused;
pub mod kernels;
pub mod npy;
pub mod num;

use crate::error::{IrError, Result};
use crate::graph::{Graph, Value};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// The float type the interpreter computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 reference semantics.
    #[default]
    F32,
    /// f64, for finite-difference gradient checks (float casts do not round).
    F64,
}

/// Executes a graph on concrete inputs.
pub struct Interpreter<'g> {
    graph: &'g Graph,
    precision: Precision,
    params: HashMap<String, Tensor>,
}

impl<'g> Interpreter<'g> {
    /// An f32 interpreter for `graph`.
    pub fn new(graph: &'g Graph) -> Interpreter<'g> {
        Interpreter {
            graph,
            precision: Precision::F32,
            params: HashMap::new(),
        }
    }

    /// Chooses the compute precision.
    pub fn precision(mut self, p: Precision) -> Interpreter<'g> {
        self.precision = p;
        self
    }

    /// Overrides the value of the parameter named `name` (for finite differences, optimizer steps, or
    /// weights that live elsewhere).
    pub fn with_param(mut self, name: impl Into<String>, value: Tensor) -> Interpreter<'g> {
        self.params.insert(name.into(), value);
        self
    }

    /// Overrides a parameter in place (see [`Interpreter::with_param`]).
    pub fn set_param(&mut self, name: impl Into<String>, value: Tensor) {
        self.params.insert(name.into(), value);
    }

    /// Runs the graph and returns every graph output, in order, with its name.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let wanted: Vec<Value> = self.graph.outputs.iter().map(|(_, v)| *v).collect();
        let vals = self.run_values(inputs, &wanted)?;
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(vals)
            .collect())
    }

    /// Runs only what `wanted` depends on and returns those values, in order.
    pub fn run_values(&self, inputs: &[(&str, Tensor)], wanted: &[Value]) -> Result<Vec<Tensor>> {
        for v in wanted {
            if !self.graph.contains(v.node)
                || v.output as usize >= self.graph.node(v.node).outputs.len()
            {
                return Err(IrError::Exec {
                    node: format!("{v:?}"),
                    reason: "requested value is not in the graph".into(),
                });
            }
        }
        match self.precision {
            Precision::F32 => exec::Exec::<f32>::new(self.graph, &self.params, inputs)?.run(wanted),
            Precision::F64 => exec::Exec::<f64>::new(self.graph, &self.params, inputs)?.run(wanted),
        }
    }
}
