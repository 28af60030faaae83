//! Builds the canonical fused graph of an [`ArchConfig`] directly (no ONNX).
//!
//! Parameters are [`Op::Param`] nodes. By default ([`Weights::Synthetic`]) no weights exist: each parameter
//! is `ParamData::External { location: "<synthetic>", offset: 0, length }`, enough for planning (shapes,
//! FLOPs, bytes) but not for execution — an interpreter that tries to read them fails on the
//! `<synthetic>` location, which names no file. [`Weights::Random`] fills small models with seeded random
//! values (`ParamData::Inline`) so that they can run.

mod gpt;
mod llama;
mod rng;

use crate::arch::{ArchConfig, Family};
use crate::error::{ErrorKind, ModelError};
use moai_ir::{
    BinaryOp, DType, Dim, Graph, Op, ParamData, Provenance, Shape, Tensor, TensorType, Value,
};
use rng::Rng;

/// The `location` of parameters that have no weights.
pub const SYNTHETIC_LOCATION: &str = "<synthetic>";

/// Largest parameter count [`Weights::Random`] accepts (64 Mi elements, 256 MiB of f32).
pub const MAX_RANDOM_PARAMS: u64 = 1 << 26;

/// Where parameter values come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weights {
    /// No values: `External { location: "<synthetic>" }` (planning only).
    Synthetic,
    /// Seeded random values inline: matrices `N(0, std²)`, embedding tables `N(0, embedding_std²)`
    /// (`std` when `None`), norm weights 1, biases 0. The parameters are drawn in the same order
    /// whatever the spreads, so changing one spread leaves every other parameter's values as they were.
    Random {
        /// PRNG seed (same seed, same weights).
        seed: u64,
        /// Standard deviation of matrix entries (Hugging Face uses 0.02).
        std: f32,
        /// Standard deviation of the token (and learned position) embedding tables; `None` uses
        /// `std`, as Hugging Face's initialisation does.
        embedding_std: Option<f32>,
    },
}

/// Builds the graph of `cfg` (validated first); `origin` names the model in errors.
pub fn build(cfg: &ArchConfig, weights: Weights) -> Result<Graph, ModelError> {
    let origin = || format!("model `{}`", cfg.name);
    cfg.validate().map_err(|k| ModelError::new(origin(), k))?;
    if let Weights::Random { .. } = weights {
        let params = cfg.params();
        if params > MAX_RANDOM_PARAMS {
            return Err(ModelError::new(
                origin(),
                ErrorKind::TooLargeToInit {
                    params,
                    limit: MAX_RANDOM_PARAMS,
                },
            ));
        }
    }
    let mut b = Builder::new(cfg, weights);
    match cfg.family {
        Family::Gpt => gpt::build(&mut b, cfg),
        _ => llama::build(&mut b, cfg),
    }
    Ok(b.g)
}

/// Initialization class of a parameter.
#[derive(Clone, Copy)]
pub(crate) enum Init {
    /// Normal with the configured std (matrices).
    Normal,
    /// Normal with the configured embedding std (token and position embedding tables).
    Embedding,
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// Node-adding helper that tracks scope and layer for provenance.
pub(crate) struct Builder {
    pub(crate) g: Graph,
    pub(crate) dtype: DType,
    weights: Weights,
    rng: Rng,
    scope: String,
    layer: Option<u32>,
    counter: usize,
}

impl Builder {
    fn new(cfg: &ArchConfig, weights: Weights) -> Builder {
        let seed = match weights {
            Weights::Random { seed, .. } => seed,
            Weights::Synthetic => 0,
        };
        Builder {
            g: Graph::new(cfg.name.clone()),
            dtype: cfg.dtype,
            weights,
            rng: Rng::new(seed),
            scope: String::new(),
            layer: None,
            counter: 0,
        }
    }

    /// Sets the module scope (and decoder layer) for the nodes added next.
    pub(crate) fn at(&mut self, scope: impl Into<String>, layer: Option<usize>) {
        self.scope = scope.into();
        self.layer = layer.map(|l| l as u32);
    }

    fn prov(&mut self, kind: &str) -> Provenance {
        self.counter += 1;
        let name = if self.scope.is_empty() {
            format!("{kind}_{}", self.counter)
        } else {
            format!("{}/{kind}_{}", self.scope, self.counter)
        };
        Provenance {
            name,
            scope: self.scope.clone(),
            layer: self.layer,
        }
    }

    /// Adds a single-output node.
    pub(crate) fn op(&mut self, op: Op, inputs: &[Value], dtype: DType, shape: Vec<Dim>) -> Value {
        let prov = self.prov(&op.kind_name());
        Value::of(self.g.add(
            op,
            inputs.to_vec(),
            vec![TensorType::new(dtype, Shape(shape))],
            prov,
        ))
    }

    /// Adds a node with several outputs, returning each.
    pub(crate) fn op_multi(
        &mut self,
        op: Op,
        inputs: &[Value],
        outputs: Vec<TensorType>,
    ) -> Vec<Value> {
        let n = outputs.len() as u32;
        let prov = self.prov(&op.kind_name());
        let id = self.g.add(op, inputs.to_vec(), outputs, prov);
        (0..n).map(|output| Value { node: id, output }).collect()
    }

    /// The graph input `input_ids` i64 `[batch, seq]`.
    pub(crate) fn input_ids(&mut self) -> Value {
        let prov = Provenance {
            name: "input_ids".into(),
            scope: String::new(),
            layer: None,
        };
        let ty = TensorType::new(DType::I64, Shape(vec![Dim::sym("batch"), Dim::sym("seq")]));
        Value::of(self.g.add(
            Op::Input {
                name: "input_ids".into(),
            },
            vec![],
            vec![ty],
            prov,
        ))
    }

    /// A parameter `name` of constant `shape` in the current scope.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Value {
        let numel: usize = shape.iter().product();
        let data = match self.weights {
            Weights::Synthetic => ParamData::External {
                location: SYNTHETIC_LOCATION.into(),
                offset: 0,
                length: numel as u64 * self.dtype.size_bytes(),
            },
            Weights::Random {
                std, embedding_std, ..
            } => {
                let values = match init {
                    Init::Normal => (0..numel).map(|_| self.rng.normal() * std).collect(),
                    Init::Embedding => {
                        let std = embedding_std.unwrap_or(std);
                        (0..numel).map(|_| self.rng.normal() * std).collect()
                    }
                    Init::Ones => vec![1.0; numel],
                    Init::Zeros => vec![0.0; numel],
                };
                let mut t = Tensor::f32(shape.to_vec(), values);
                t.dtype = self.dtype;
                ParamData::Inline(t)
            }
        };
        let ty = TensorType::new(self.dtype, Shape(shape.iter().map(|d| c(*d)).collect()));
        let prov = Provenance {
            name: name.into(),
            scope: self.scope.clone(),
            layer: self.layer,
        };
        Value::of(self.g.add(
            Op::Param {
                name: name.into(),
                data,
            },
            vec![],
            vec![ty],
            prov,
        ))
    }

    /// `Linear(x, W [in, out] (, b [out]))` with parameters `<scope>.weight` / `<scope>.bias`;
    /// `x` is `[.., in]`, the result `[.., out]`.
    pub(crate) fn linear(
        &mut self,
        x: Value,
        leading: &[Dim],
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Value {
        let w = self.param(&format!("{}.weight", self.scope), &[inp, out], Init::Normal);
        let mut inputs = vec![x, w];
        if bias {
            inputs.push(self.param(&format!("{}.bias", self.scope), &[out], Init::Zeros));
        }
        let mut shape = leading.to_vec();
        shape.push(c(out));
        self.op(Op::Linear { bias }, &inputs, self.dtype, shape)
    }
}

/// A constant dim.
pub(crate) fn c(v: usize) -> Dim {
    Dim::constant(v as i64)
}

/// `[batch, seq]`.
pub(crate) fn bs() -> Vec<Dim> {
    vec![Dim::sym("batch"), Dim::sym("seq")]
}

/// `[batch, seq, n]`.
pub(crate) fn bsn(n: usize) -> Vec<Dim> {
    vec![Dim::sym("batch"), Dim::sym("seq"), c(n)]
}

/// Splits `x [b, s, heads*d]` into `[b, heads, s, d]` (Reshape, then Transpose `[0, 2, 1, 3]`).
pub(crate) fn split_heads(b: &mut Builder, x: Value, heads: usize, d: usize) -> Value {
    let dt = b.dtype;
    let shape = vec![Dim::sym("batch"), Dim::sym("seq"), c(heads), c(d)];
    let r = b.op(
        Op::Reshape(Shape(shape)),
        &[x],
        dt,
        vec![Dim::sym("batch"), Dim::sym("seq"), c(heads), c(d)],
    );
    b.op(
        Op::Transpose(vec![0, 2, 1, 3]),
        &[r],
        dt,
        vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(d)],
    )
}

/// Fused attention on `[b, h, s, d]` heads, merged back to `[b, s, h*d]`.
pub(crate) fn attention(
    b: &mut Builder,
    q: Value,
    k: Value,
    v: Value,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Value {
    let dt = b.dtype;
    let scale = 1.0 / (d as f64).sqrt();
    let outs = b.op_multi(
        Op::Attention {
            heads,
            kv_heads,
            scale,
            causal: true,
        },
        &[q, k, v],
        vec![
            TensorType::new(
                dt,
                Shape(vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(d)]),
            ),
            TensorType::new(
                DType::F32,
                Shape(vec![Dim::sym("batch"), c(heads), Dim::sym("seq")]),
            ),
        ],
    );
    let t = b.op(
        Op::Transpose(vec![0, 2, 1, 3]),
        &[outs[0]],
        dt,
        vec![Dim::sym("batch"), Dim::sym("seq"), c(heads), c(d)],
    );
    b.op(Op::Reshape(Shape(bsn(heads * d))), &[t], dt, bsn(heads * d))
}

/// The normalization of a decoder family.
#[derive(Clone, Copy)]
pub(crate) enum Norm {
    /// LayerNorm with weight and bias (GPT).
    Layer,
    /// RMSNorm with a weight (Llama-style).
    Rms,
}

/// The normalization `kind` of `x [.., h]` in module scope `scope`, with its parameters
/// `<scope>.weight` (ones) and, for LayerNorm, `<scope>.bias` (zeros).
pub(crate) fn norm(
    b: &mut Builder,
    kind: Norm,
    scope: &str,
    layer: Option<usize>,
    x: Value,
    h: usize,
    eps: f64,
) -> Value {
    b.at(scope, layer);
    let w = b.param(&format!("{scope}.weight"), &[h], Init::Ones);
    let dt = b.dtype;
    match kind {
        Norm::Layer => {
            let bias = b.param(&format!("{scope}.bias"), &[h], Init::Zeros);
            b.op(Op::LayerNorm { eps }, &[x, w, bias], dt, bsn(h))
        }
        Norm::Rms => b.op(Op::RmsNorm { eps }, &[x, w], dt, bsn(h)),
    }
}

/// The pre-norm decoder layer every family shares, in module scope `p` (layer `l`):
/// `x + attn(norm₁(x))`, then `+ mlp(norm₂(·))`, the norms in scopes `<p>.<norms.0>` / `<p>.<norms.1>`
/// and the residual adds in `p`. `attn` and `mlp` add the family's sublayers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pre_norm_layer(
    b: &mut Builder,
    cfg: &ArchConfig,
    kind: Norm,
    p: &str,
    l: Option<usize>,
    norms: (&str, &str),
    x: Value,
    attn: impl FnOnce(&mut Builder, Value) -> Value,
    mlp: impl FnOnce(&mut Builder, Value) -> Value,
) -> Value {
    let (h, dt) = (cfg.hidden, b.dtype);
    let hs = norm(b, kind, &format!("{p}.{}", norms.0), l, x, h, cfg.eps);
    let o = attn(b, hs);
    b.at(p, l);
    let x = b.op(Op::Binary(BinaryOp::Add), &[x, o], dt, bsn(h));
    let hs = norm(b, kind, &format!("{p}.{}", norms.1), l, x, h, cfg.eps);
    let m = mlp(b, hs);
    b.at(p, l);
    b.op(Op::Binary(BinaryOp::Add), &[x, m], dt, bsn(h))
}

/// The end every family shares: the final norm (scope `scope`), the LM head ([`lm_head`], tied to
/// `table` when the config says so) and the graph output `logits`.
pub(crate) fn finish(
    b: &mut Builder,
    cfg: &ArchConfig,
    kind: Norm,
    scope: &str,
    x: Value,
    table: Value,
) {
    let x = norm(b, kind, scope, None, x, cfg.hidden, cfg.eps);
    let logits = lm_head(b, x, table, cfg.hidden, cfg.vocab, cfg.tied);
    b.g.outputs.push(("logits".into(), logits));
}

/// The LM head: `Linear(x, lm_head.weight [hidden, vocab])`, or for tied models the embedding table
/// (the same Param node) transposed to `[hidden, vocab]`.
pub(crate) fn lm_head(
    b: &mut Builder,
    x: Value,
    table: Value,
    hidden: usize,
    vocab: usize,
    tied: bool,
) -> Value {
    b.at("lm_head", None);
    let dt = b.dtype;
    let w = if tied {
        b.op(
            Op::Transpose(vec![1, 0]),
            &[table],
            dt,
            vec![c(hidden), c(vocab)],
        )
    } else {
        b.param("lm_head.weight", &[hidden, vocab], Init::Normal)
    };
    b.op(Op::Linear { bias: false }, &[x, w], dt, bsn(vocab))
}
