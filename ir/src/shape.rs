//! Shapes and tensor types.

use crate::dim::Dim;
use crate::dtype::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A tensor shape: one symbolic [`Dim`] per axis.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of constant dims.
    pub fn from_consts(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|d| Dim::constant(*d)).collect())
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements, symbolic.
    pub fn numel(&self) -> Dim {
        self.0.iter().fold(Dim::constant(1), |acc, d| acc.mul(d))
    }

    /// Constant dims, if every dim is constant.
    pub fn as_consts(&self) -> Option<Vec<i64>> {
        self.0.iter().map(|d| d.as_const()).collect()
    }

    /// Evaluates every dim with the given symbol values.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<Vec<i64>> {
        self.0.iter().map(|d| d.eval(env)).collect()
    }

    /// Normalizes a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        let r = self.rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        (0..r).contains(&a).then_some(a as usize)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The type of a value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Shape,
}

impl TensorType {
    /// Builds a tensor type.
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape }
    }

    /// Size in bytes, symbolic.
    pub fn bytes(&self) -> Dim {
        self.shape.numel().scale(self.dtype.size_bytes() as i64)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}
