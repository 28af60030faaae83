//! Deciding whether an attention mask is the causal mask. The exporter computes the mask from positions
//! (`Range` over `seq`, packed-sequence detection with `CumSum`/`GatherND`, `LessOrEqual`); we evaluate
//! that subgraph at a few concrete `(batch, seq)` and compare with the lower-triangular mask. A mask that
//! reads a graph input (a user-supplied `attention_mask`) is not causal-only and stays an input.

use crate::graph::{Graph, Value};
use crate::op::{BinaryOp, Op, UnaryOp};
use std::collections::HashMap;
use std::rc::Rc;

/// A small concrete tensor (every element type as f64).
#[derive(Clone, Debug)]
struct T {
    shape: Vec<usize>,
    v: Vec<f64>,
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn bcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
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
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

fn bcast_to(t: &T, out: &[usize]) -> Vec<f64> {
    let n: usize = out.iter().product();
    let st = strides(&t.shape);
    let ost = strides(out);
    let off = out.len() - t.shape.len();
    (0..n)
        .map(|f| {
            let mut src = 0;
            for (i, &s) in t.shape.iter().enumerate() {
                if s != 1 {
                    src += ((f / ost[i + off]) % out[i + off]) * st[i];
                }
            }
            t.v[src]
        })
        .collect()
}

const LIMIT: usize = 1 << 16;

struct Eval<'g> {
    g: &'g Graph,
    batch: i64,
    seq: i64,
    memo: HashMap<Value, Option<Rc<T>>>,
}

impl Eval<'_> {
    fn dim(&self, d: &crate::dim::Dim) -> Option<usize> {
        let v = d.eval(&|s| match s {
            "batch" => Some(self.batch),
            "seq" => Some(self.seq),
            _ => None,
        })?;
        usize::try_from(v).ok()
    }

    fn shape(&self, s: &crate::shape::Shape) -> Option<Vec<usize>> {
        s.0.iter().map(|d| self.dim(d)).collect()
    }

    fn get(&mut self, v: Value, depth: usize) -> Option<Rc<T>> {
        if let Some(r) = self.memo.get(&v) {
            return r.clone();
        }
        let r = if depth > 200 {
            None
        } else {
            self.compute(v, depth).map(Rc::new)
        };
        self.memo.insert(v, r.clone());
        r
    }

    fn compute(&mut self, v: Value, depth: usize) -> Option<T> {
        let node = self.g.node(v.node);
        let out_shape = self.shape(&node.outputs.get(v.output as usize)?.shape)?;
        if out_shape.iter().product::<usize>() > LIMIT {
            return None;
        }
        let arg = |i: usize, me: &mut Self| me.get(node.inputs[i], depth + 1);
        let t = match &node.op {
            Op::Constant(t) => T {
                shape: t.shape.clone(),
                v: t.to_f64_vec(),
            },
            Op::Range { start, step, .. } => {
                let s = start.eval(&|n| match n {
                    "batch" => Some(self.batch),
                    "seq" => Some(self.seq),
                    _ => None,
                })?;
                T {
                    shape: out_shape.clone(),
                    v: (0..out_shape[0])
                        .map(|i| (s + step * i as i64) as f64)
                        .collect(),
                }
            }
            Op::Reshape(_) => T {
                shape: out_shape.clone(),
                v: arg(0, self)?.v.clone(),
            },
            Op::Expand(_) => T {
                shape: out_shape.clone(),
                v: bcast_to(&*arg(0, self)?, &out_shape),
            },
            Op::Cast(dt) => {
                let x = arg(0, self)?;
                let v = if *dt == crate::DType::Bool {
                    x.v.iter().map(|e| (*e != 0.0) as u8 as f64).collect()
                } else if dt.is_float() {
                    x.v.clone()
                } else {
                    x.v.iter().map(|e| e.trunc()).collect()
                };
                T {
                    shape: x.shape.clone(),
                    v,
                }
            }
            Op::Unary(UnaryOp::Not) => {
                let x = arg(0, self)?;
                T {
                    shape: x.shape.clone(),
                    v: x.v.iter().map(|e| (*e == 0.0) as u8 as f64).collect(),
                }
            }
            Op::Unary(UnaryOp::Neg) => {
                let x = arg(0, self)?;
                T {
                    shape: x.shape.clone(),
                    v: x.v.iter().map(|e| -e).collect(),
                }
            }
            Op::Binary(b) => {
                let (x, y) = (arg(0, self)?, arg(1, self)?);
                let s = bcast_shape(&x.shape, &y.shape)?;
                let (xv, yv) = (bcast_to(&x, &s), bcast_to(&y, &s));
                let f = |p: f64, q: f64| -> Option<f64> {
                    Some(match b {
                        BinaryOp::Add => p + q,
                        BinaryOp::Sub => p - q,
                        BinaryOp::Mul => p * q,
                        BinaryOp::Max => p.max(q),
                        BinaryOp::Min => p.min(q),
                        BinaryOp::Equal => (p == q) as u8 as f64,
                        BinaryOp::Less => (p < q) as u8 as f64,
                        BinaryOp::LessOrEqual => (p <= q) as u8 as f64,
                        BinaryOp::Greater => (p > q) as u8 as f64,
                        BinaryOp::GreaterOrEqual => (p >= q) as u8 as f64,
                        BinaryOp::And => (p != 0.0 && q != 0.0) as u8 as f64,
                        BinaryOp::Or => (p != 0.0 || q != 0.0) as u8 as f64,
                        _ => return None,
                    })
                };
                T {
                    shape: s,
                    v: xv
                        .iter()
                        .zip(&yv)
                        .map(|(p, q)| f(*p, *q))
                        .collect::<Option<_>>()?,
                }
            }
            Op::Where => {
                let (c, x, y) = (arg(0, self)?, arg(1, self)?, arg(2, self)?);
                let s = bcast_shape(&bcast_shape(&c.shape, &x.shape)?, &y.shape)?;
                let (cv, xv, yv) = (bcast_to(&c, &s), bcast_to(&x, &s), bcast_to(&y, &s));
                T {
                    shape: s,
                    v: (0..cv.len())
                        .map(|i| if cv[i] != 0.0 { xv[i] } else { yv[i] })
                        .collect(),
                }
            }
            Op::Slice {
                axis, start, step, ..
            } => {
                let x = arg(0, self)?;
                let s0 = self.dim(start)?;
                let st = strides(&x.shape);
                let ost = strides(&out_shape);
                let n: usize = out_shape.iter().product();
                let v = (0..n)
                    .map(|f| {
                        (0..out_shape.len())
                            .map(|i| {
                                let c = (f / ost[i]) % out_shape[i];
                                let c = if i == *axis {
                                    s0 + c * (*step as usize)
                                } else {
                                    c
                                };
                                c * st[i]
                            })
                            .sum::<usize>()
                    })
                    .map(|src| x.v.get(src).copied())
                    .collect::<Option<_>>()?;
                T {
                    shape: out_shape.clone(),
                    v,
                }
            }
            Op::Concat { axis } => {
                let parts: Vec<Rc<T>> = (0..node.inputs.len())
                    .map(|i| arg(i, self))
                    .collect::<Option<_>>()?;
                let outer: usize = out_shape[..*axis].iter().product();
                let mut v = Vec::with_capacity(out_shape.iter().product());
                for o in 0..outer {
                    for p in &parts {
                        let chunk: usize = p.shape[*axis..].iter().product();
                        v.extend_from_slice(p.v.get(o * chunk..(o + 1) * chunk)?);
                    }
                }
                T {
                    shape: out_shape.clone(),
                    v,
                }
            }
            Op::Transpose(perm) => {
                let x = arg(0, self)?;
                let st = strides(&x.shape);
                let ost = strides(&out_shape);
                let n: usize = out_shape.iter().product();
                let v = (0..n)
                    .map(|f| {
                        x.v[(0..perm.len())
                            .map(|i| ((f / ost[i]) % out_shape[i]) * st[perm[i]])
                            .sum::<usize>()]
                    })
                    .collect();
                T {
                    shape: out_shape.clone(),
                    v,
                }
            }
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => {
                let x = arg(0, self)?;
                let st = strides(&x.shape);
                let n = x.shape[*axis];
                let mut v = x.v.clone();
                for f in 0..x.v.len() {
                    if !(f / st[*axis]).is_multiple_of(n) {
                        continue;
                    }
                    let idx: Vec<usize> = if *reverse {
                        (0..n).rev().collect()
                    } else {
                        (0..n).collect()
                    };
                    let mut acc = 0.0;
                    for i in idx {
                        let p = f + i * st[*axis];
                        let e = x.v[p];
                        if *exclusive {
                            v[p] = acc;
                            acc += e;
                        } else {
                            acc += e;
                            v[p] = acc;
                        }
                    }
                }
                T {
                    shape: x.shape.clone(),
                    v,
                }
            }
            Op::GatherNd { batch_dims: 0 } => {
                let (d, ix) = (arg(0, self)?, arg(1, self)?);
                let k = *ix.shape.last()?;
                let st = strides(&d.shape);
                let inner: usize = d.shape[k..].iter().product();
                let mut v = Vec::new();
                for row in ix.v.chunks(k) {
                    let mut base = 0;
                    for (j, c) in row.iter().enumerate() {
                        let c = *c as i64;
                        let c = if c < 0 { c + d.shape[j] as i64 } else { c };
                        if c < 0 || c as usize >= d.shape[j] {
                            return None;
                        }
                        base += c as usize * st[j];
                    }
                    v.extend_from_slice(d.v.get(base..base + inner)?);
                }
                T {
                    shape: out_shape.clone(),
                    v,
                }
            }
            _ => return None,
        };
        (t.v.len() == out_shape.iter().product::<usize>()).then_some(t)
    }
}

/// True when `mask` (an additive float mask or a boolean keep-mask, broadcastable to `[b, h, s, s]`)
/// equals the causal mask at several concrete sizes.
pub fn is_causal(g: &Graph, mask: Value) -> bool {
    let boolean = g.ty(mask).dtype == crate::DType::Bool;
    for (batch, seq) in [(2, 5), (1, 3), (3, 8)] {
        let mut ev = Eval {
            g,
            batch,
            seq,
            memo: HashMap::new(),
        };
        let Some(t) = ev.get(mask, 0) else {
            return false;
        };
        if t.shape.len() != 4 || t.shape[2] != seq as usize || t.shape[3] != seq as usize {
            return false;
        }
        let s = seq as usize;
        for (f, e) in t.v.iter().enumerate() {
            let (i, j) = ((f / s) % s, f % s);
            let keep = if boolean { *e != 0.0 } else { *e == 0.0 };
            let blocked = if boolean { *e == 0.0 } else { *e < -1e30 };
            if (j <= i && !keep) || (j > i && !blocked) {
                return false;
            }
        }
    }
    true
}
