//! Values known while importing: small constant tensors and the symbolic shape vectors PyTorch's shape
//! subgraphs compute (`Shape`, `Gather`, `Concat`, arithmetic). Folding them here turns
//! `Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 4, 16))` into `Reshape[batch, seq, 4, 16]`.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::tensor::{Tensor, TensorData};

/// Largest number of elements a folded value may have; bigger results become graph nodes.
pub(crate) const MAX_FOLD: usize = 4096;

/// Elements of a known value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KData {
    /// Integers, possibly symbolic.
    Int(Vec<Dim>),
    /// Floating point values.
    Float(Vec<f64>),
    /// Booleans.
    Bool(Vec<bool>),
}

/// A tensor whose value is known at import time.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Known {
    /// Declared element type.
    pub dtype: DType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: KData,
}

impl Known {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// An i64 vector of dims.
    pub fn dims(v: Vec<Dim>) -> Known {
        Known {
            dtype: DType::I64,
            shape: vec![v.len()],
            data: KData::Int(v),
        }
    }

    /// An i64 scalar.
    pub fn scalar_dim(d: Dim) -> Known {
        Known {
            dtype: DType::I64,
            shape: vec![],
            data: KData::Int(vec![d]),
        }
    }

    /// From a concrete tensor.
    pub fn from_tensor(t: &Tensor) -> Known {
        let data = match &t.data {
            TensorData::F32(v) => KData::Float(v.iter().map(|x| *x as f64).collect()),
            TensorData::F64(v) => KData::Float(v.clone()),
            TensorData::I64(v) => KData::Int(v.iter().map(|x| Dim::constant(*x)).collect()),
            TensorData::Bool(v) => KData::Bool(v.clone()),
        };
        Known {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        }
    }

    /// The elements as dims (integers and booleans).
    pub fn as_dims(&self) -> Option<Vec<Dim>> {
        match &self.data {
            KData::Int(v) => Some(v.clone()),
            KData::Bool(v) => Some(v.iter().map(|b| Dim::constant(*b as i64)).collect()),
            KData::Float(v) => v
                .iter()
                .map(|x| (x.fract() == 0.0 && x.abs() < 9.0e15).then(|| Dim::constant(*x as i64)))
                .collect(),
        }
    }

    /// The elements as constant integers.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        self.as_dims()?.iter().map(|d| d.as_const()).collect()
    }

    /// The elements as f64 when all are constant.
    pub fn as_f64s(&self) -> Option<Vec<f64>> {
        match &self.data {
            KData::Float(v) => Some(v.clone()),
            KData::Int(v) => v.iter().map(|d| d.as_const().map(|x| x as f64)).collect(),
            KData::Bool(v) => Some(v.iter().map(|b| *b as u8 as f64).collect()),
        }
    }

    /// A single scalar element as f64.
    pub fn scalar_f64(&self) -> Option<f64> {
        let v = self.as_f64s()?;
        (v.len() == 1).then(|| v[0])
    }

    /// Converts to a concrete tensor; fails when a value is symbolic.
    pub fn to_tensor(&self) -> Result<Tensor, String> {
        let data = match &self.data {
            KData::Int(v) => TensorData::I64(
                v.iter()
                    .map(|d| {
                        d.as_const()
                            .ok_or_else(|| format!("symbolic value `{d}` used as tensor data"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            KData::Float(v) if self.dtype == DType::F64 => TensorData::F64(v.clone()),
            KData::Float(v) => TensorData::F32(v.iter().map(|x| *x as f32).collect()),
            KData::Bool(v) => TensorData::Bool(v.clone()),
        };
        Ok(Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data,
        })
    }

    /// Converts the element type (ONNX Cast semantics for the cases shape subgraphs use).
    pub fn cast(&self, to: DType) -> Result<Known, String> {
        let data = if to.is_float() {
            KData::Float(
                self.as_f64s()
                    .ok_or("cannot cast a symbolic value to a float")?
                    .into_iter()
                    .map(|x| round_to(x, to))
                    .collect(),
            )
        } else if to == DType::Bool {
            KData::Bool(match &self.data {
                KData::Float(v) => v.iter().map(|x| *x != 0.0).collect(),
                KData::Bool(v) => v.clone(),
                KData::Int(v) => v
                    .iter()
                    .map(|d| {
                        d.as_const()
                            .map(|x| x != 0)
                            .ok_or("cannot cast a symbolic value to bool")
                    })
                    .collect::<Result<_, _>>()?,
            })
        } else {
            KData::Int(match &self.data {
                KData::Float(v) => v.iter().map(|x| Dim::constant(x.trunc() as i64)).collect(),
                _ => self.as_dims().ok_or("cannot cast to an integer")?,
            })
        };
        Ok(Known {
            dtype: to,
            shape: self.shape.clone(),
            data,
        })
    }

    /// Element `i` as a one-element known value of the same type.
    fn pick(&self, idx: &[usize]) -> KData {
        match &self.data {
            KData::Int(v) => KData::Int(idx.iter().map(|i| v[*i].clone()).collect()),
            KData::Float(v) => KData::Float(idx.iter().map(|i| v[*i]).collect()),
            KData::Bool(v) => KData::Bool(idx.iter().map(|i| v[*i]).collect()),
        }
    }

    /// Gathers elements by flat indices into a new shape.
    pub fn gather_flat(&self, idx: &[usize], shape: Vec<usize>) -> Known {
        Known {
            dtype: self.dtype,
            shape,
            data: self.pick(idx),
        }
    }

    /// Same data, new shape.
    pub fn reshaped(&self, shape: Vec<usize>) -> Known {
        Known {
            dtype: self.dtype,
            shape,
            data: self.data.clone(),
        }
    }
}

/// Rounds a value through the precision of a float dtype.
fn round_to(x: f64, to: DType) -> f64 {
    match to {
        DType::F32 => x as f32 as f64,
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        _ => x,
    }
}

/// Row-major strides.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// NumPy broadcast of concrete shapes.
pub(crate) fn broadcast_concrete(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let y = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

/// Flat source indices of `shape` broadcast to `out`.
pub(crate) fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let st = strides(shape);
    let off = out.len() - shape.len();
    let ost = strides(out);
    (0..n)
        .map(|flat| {
            let mut src = 0;
            for (i, &s) in shape.iter().enumerate() {
                let coord = (flat / ost[i + off]) % out[i + off];
                if s != 1 {
                    src += coord * st[i];
                }
            }
            src
        })
        .collect()
}

/// Elementwise binary function on known values with broadcasting.
pub(crate) fn binary(op: &str, a: &Known, b: &Known) -> Option<Known> {
    let shape = broadcast_concrete(&a.shape, &b.shape)?;
    if shape.iter().product::<usize>() > MAX_FOLD {
        return None;
    }
    let ia = broadcast_index(&a.shape, &shape);
    let ib = broadcast_index(&b.shape, &shape);
    let cmp = matches!(
        op,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual"
    );
    let logic = matches!(op, "And" | "Or" | "Xor");
    if logic {
        let (KData::Bool(x), KData::Bool(y)) = (&a.data, &b.data) else {
            return None;
        };
        let v = ia
            .iter()
            .zip(&ib)
            .map(|(i, j)| match op {
                "And" => x[*i] && y[*j],
                "Or" => x[*i] || y[*j],
                _ => x[*i] ^ y[*j],
            })
            .collect();
        return Some(Known {
            dtype: DType::Bool,
            shape,
            data: KData::Bool(v),
        });
    }
    match (&a.data, &b.data) {
        (KData::Float(_), _) | (_, KData::Float(_)) => {
            let x = a.as_f64s()?;
            let y = b.as_f64s()?;
            let f = |p: f64, q: f64| -> Option<f64> {
                Some(match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    "Div" => p / q,
                    "Pow" => p.powf(q),
                    "Max" => p.max(q),
                    "Min" => p.min(q),
                    "Equal" => (p == q) as u8 as f64,
                    "Less" => (p < q) as u8 as f64,
                    "LessOrEqual" => (p <= q) as u8 as f64,
                    "Greater" => (p > q) as u8 as f64,
                    "GreaterOrEqual" => (p >= q) as u8 as f64,
                    _ => return None,
                })
            };
            let v: Vec<f64> = ia
                .iter()
                .zip(&ib)
                .map(|(i, j)| f(x[*i], y[*j]))
                .collect::<Option<_>>()?;
            if cmp {
                Some(Known {
                    dtype: DType::Bool,
                    shape,
                    data: KData::Bool(v.iter().map(|z| *z != 0.0).collect()),
                })
            } else {
                let dtype = if a.dtype.is_float() { a.dtype } else { b.dtype };
                Some(Known {
                    dtype,
                    shape,
                    data: KData::Float(v.into_iter().map(|z| round_to(z, dtype)).collect()),
                })
            }
        }
        _ => {
            let x = a.as_dims()?;
            let y = b.as_dims()?;
            let f = |p: &Dim, q: &Dim| -> Option<KElem> {
                Some(match op {
                    "Add" => KElem::D(p.add(q)),
                    "Sub" => KElem::D(p.sub(q)),
                    "Mul" => KElem::D(p.mul(q)),
                    "Div" => match (p.as_const(), q.as_const()) {
                        (Some(u), Some(w)) if w != 0 => KElem::D(Dim::constant(u / w)),
                        (_, Some(w)) if w != 0 => KElem::D(p.floor_div(q)),
                        _ => return None,
                    },
                    "Mod" => KElem::D(p.rem(q)),
                    "Max" => KElem::D(p.maximum(q)),
                    "Min" => KElem::D(p.minimum(q)),
                    "Pow" => {
                        let e = q.as_const()?;
                        let base = p.as_const()?;
                        KElem::D(Dim::constant(base.checked_pow(u32::try_from(e).ok()?)?))
                    }
                    "Equal" => {
                        if p == q {
                            KElem::B(true)
                        } else if p.sub(q).as_const().is_some() {
                            KElem::B(false)
                        } else {
                            return None;
                        }
                    }
                    "Less" => KElem::B(decide_lt(p, q)?),
                    "LessOrEqual" => KElem::B(!decide_lt(q, p)?),
                    "Greater" => KElem::B(decide_lt(q, p)?),
                    "GreaterOrEqual" => KElem::B(!decide_lt(p, q)?),
                    _ => return None,
                })
            };
            let v: Vec<KElem> = ia
                .iter()
                .zip(&ib)
                .map(|(i, j)| f(&x[*i], &y[*j]))
                .collect::<Option<_>>()?;
            if cmp {
                let bools = v.into_iter().map(|e| matches!(e, KElem::B(true))).collect();
                Some(Known {
                    dtype: DType::Bool,
                    shape,
                    data: KData::Bool(bools),
                })
            } else {
                let dims = v
                    .into_iter()
                    .map(|e| match e {
                        KElem::D(d) => Some(d),
                        KElem::B(_) => None,
                    })
                    .collect::<Option<_>>()?;
                Some(Known {
                    dtype: a.dtype,
                    shape,
                    data: KData::Int(dims),
                })
            }
        }
    }
}

enum KElem {
    D(Dim),
    B(bool),
}

/// Decides `p < q` when provable either way.
fn decide_lt(p: &Dim, q: &Dim) -> Option<bool> {
    if q.provably_ge(&p.add(&Dim::constant(1))) {
        Some(true)
    } else if p.provably_ge(q) {
        Some(false)
    } else {
        None
    }
}

/// Elementwise unary function on known values.
pub(crate) fn unary(op: &str, a: &Known) -> Option<Known> {
    if op == "Not" {
        let KData::Bool(v) = &a.data else { return None };
        return Some(Known {
            dtype: DType::Bool,
            shape: a.shape.clone(),
            data: KData::Bool(v.iter().map(|b| !b).collect()),
        });
    }
    if op == "Neg"
        && let KData::Int(v) = &a.data
    {
        return Some(Known {
            dtype: a.dtype,
            shape: a.shape.clone(),
            data: KData::Int(v.iter().map(|d| d.scale(-1)).collect()),
        });
    }
    if op == "Abs"
        && let Some(v) = a.as_ints()
        && matches!(a.data, KData::Int(_))
    {
        return Some(Known {
            dtype: a.dtype,
            shape: a.shape.clone(),
            data: KData::Int(v.iter().map(|x| Dim::constant(x.abs())).collect()),
        });
    }
    let KData::Float(v) = &a.data else {
        return None;
    };
    if op == "IsNaN" {
        return Some(Known {
            dtype: DType::Bool,
            shape: a.shape.clone(),
            data: KData::Bool(v.iter().map(|x| x.is_nan()).collect()),
        });
    }
    let f = |x: f64| -> Option<f64> {
        Some(match op {
            "Neg" => -x,
            "Sqrt" => x.sqrt(),
            "Reciprocal" => 1.0 / x,
            "Exp" => x.exp(),
            "Log" => x.ln(),
            "Cos" => x.cos(),
            "Sin" => x.sin(),
            "Tanh" => x.tanh(),
            "Abs" => x.abs(),
            "Relu" => x.max(0.0),
            "Sigmoid" => 1.0 / (1.0 + (-x).exp()),
            "Floor" => x.floor(),
            "Ceil" => x.ceil(),
            _ => return None,
        })
    };
    let out = v
        .iter()
        .map(|x| f(*x).map(|y| round_to(y, a.dtype)))
        .collect::<Option<_>>()?;
    Some(Known {
        dtype: a.dtype,
        shape: a.shape.clone(),
        data: KData::Float(out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_symbolic_arithmetic_and_comparisons() {
        let s = Dim::sym("seq");
        let a = Known::dims(vec![s.clone(), Dim::constant(4)]);
        let one = Known::scalar_dim(Dim::constant(1));
        let sum = binary("Add", &a, &one).unwrap();
        assert_eq!(
            sum.as_dims().unwrap(),
            vec![s.add(&Dim::constant(1)), Dim::constant(5)]
        );
        let lt = binary("Less", &a, &sum).unwrap();
        assert_eq!(lt.data, KData::Bool(vec![true, true]));
        assert!(
            binary("Equal", &a, &Known::scalar_dim(Dim::constant(7))).is_none(),
            "seq == 7 is undecidable"
        );
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn casts_round_through_bf16() {
        let k = Known {
            dtype: DType::F32,
            shape: vec![],
            data: KData::Float(vec![0.1]),
        };
        let b = k.cast(DType::BF16).unwrap();
        assert_eq!(b.scalar_f64().unwrap(), half::bf16::from_f64(0.1).to_f64());
        assert!(Known::scalar_dim(Dim::sym("seq")).cast(DType::F32).is_err());
    }
}
