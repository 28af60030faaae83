//! Concrete tensors: constants in graphs and values in the reference interpreter.

use crate::dtype::DType;
use serde::{Deserialize, Serialize};

/// Element storage. Floating types narrower than f32 (bf16, f16, f8) are widened to f32 on load and keep
/// their declared dtype in [`Tensor::dtype`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    /// f32 storage (also used for bf16, f16 and f8 values).
    F32(Vec<f32>),
    /// f64 storage.
    F64(Vec<f64>),
    /// Integer storage (every integer dtype).
    I64(Vec<i64>),
    /// Boolean storage.
    Bool(Vec<bool>),
}

/// A dense, row-major tensor with concrete shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Declared element type.
    pub dtype: DType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

impl Tensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::F32,
            shape,
            data: TensorData::F32(data),
        }
    }

    /// An f64 tensor.
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        Tensor {
            dtype: DType::F64,
            shape,
            data: TensorData::F64(data),
        }
    }

    /// An i64 tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor {
            dtype: DType::I64,
            shape,
            data: TensorData::I64(data),
        }
    }

    /// A bool tensor.
    pub fn bool(shape: Vec<usize>, data: Vec<bool>) -> Tensor {
        Tensor {
            dtype: DType::Bool,
            shape,
            data: TensorData::Bool(data),
        }
    }

    /// A scalar i64.
    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::i64(vec![], vec![v])
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as i64 when the tensor holds integers (or booleans).
    pub fn as_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            TensorData::I64(v) => Some(v.clone()),
            TensorData::Bool(v) => Some(v.iter().map(|b| *b as i64).collect()),
            _ => None,
        }
    }

    /// The elements converted to f64 (any storage).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|x| *x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|x| *x as u8 as f64).collect(),
        }
    }
}
