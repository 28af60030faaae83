//! A hand-built Llama in the canonical fused form (what recognition produces from ONNX), for tests,
//! examples and benchmarks that must not depend on the importer.
//!
//! Weights are either inline (deterministic pseudo-random values, runnable by the interpreter) or
//! external placeholders (shapes only, for planning-sized models).

use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::{Graph, NodeId, Provenance, Value};
use crate::op::{BinaryOp, Op, ParamData, UnaryOp};
use crate::shape::{Shape, TensorType};
use crate::tensor::Tensor;

/// Architecture of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Inline pseudo-random weights (true) or external placeholders (false).
    pub inline_weights: bool,
    /// Weight element type.
    pub dtype: DType,
    /// Seed of the weight generator.
    pub seed: u64,
}

impl LlamaConfig {
    /// The geometry of `models/tiny-llama.onnx` (2 layers, hidden 64, 4 heads, 2 KV heads, ffn 176,
    /// vocab 512), inline f32 weights.
    pub fn tiny() -> LlamaConfig {
        LlamaConfig {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 176,
            vocab: 512,
            eps: 1e-6,
            rope_theta: 10000.0,
            inline_weights: true,
            dtype: DType::F32,
            seed: 7,
        }
    }

    /// A planning-sized model with external bf16 placeholder weights.
    pub fn planning(
        layers: usize,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
        vocab: usize,
    ) -> LlamaConfig {
        LlamaConfig {
            layers,
            hidden,
            heads,
            kv_heads,
            ffn,
            vocab,
            eps: 1e-5,
            inline_weights: false,
            dtype: DType::BF16,
            ..LlamaConfig::tiny()
        }
    }

    /// Trainable parameters.
    pub fn params(&self) -> u64 {
        let (h, d) = (self.hidden as u64, (self.hidden / self.heads) as u64);
        let kv = self.kv_heads as u64 * d;
        let layer = h * h * 2 + h * kv * 2 + 3 * h * self.ffn as u64 + 2 * h;
        self.layers as u64 * layer + 2 * self.vocab as u64 * h + h
    }
}

struct Builder {
    g: Graph,
    cfg: LlamaConfig,
    rng: u64,
}

impl Builder {
    fn prov(scope: &str, layer: Option<usize>) -> Provenance {
        Provenance {
            name: scope.to_string(),
            scope: scope.to_string(),
            layer: layer.map(|l| l as u32),
        }
    }

    fn next(&mut self) -> f64 {
        // xorshift64*, mapped to [-1, 1).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn param(
        &mut self,
        name: &str,
        dims: &[usize],
        center: f64,
        spread: f64,
        layer: Option<usize>,
    ) -> Value {
        let ty = TensorType::new(
            self.cfg.dtype,
            Shape::from_consts(&dims.iter().map(|d| *d as i64).collect::<Vec<_>>()),
        );
        let n: usize = dims.iter().product();
        let data = if self.cfg.inline_weights {
            let v: Vec<f32> = (0..n)
                .map(|_| (center + spread * self.next()) as f32)
                .collect();
            let mut t = Tensor::f32(dims.to_vec(), v);
            t.dtype = self.cfg.dtype;
            ParamData::Inline(t)
        } else {
            let len = n as u64 * self.cfg.dtype.size_bytes();
            ParamData::External {
                location: "weights.bin".into(),
                offset: 0,
                length: len,
            }
        };
        let scope = name.trim_end_matches(".weight");
        Value::of(self.g.add(
            Op::Param {
                name: name.into(),
                data,
            },
            vec![],
            vec![ty],
            Self::prov(scope, layer),
        ))
    }

    fn node(
        &mut self,
        op: Op,
        ins: Vec<Value>,
        ty: TensorType,
        scope: &str,
        layer: Option<usize>,
    ) -> Value {
        Value::of(self.g.add(op, ins, vec![ty], Self::prov(scope, layer)))
    }

    fn linear(&mut self, x: Value, name: &str, i: usize, o: usize, layer: Option<usize>) -> Value {
        let w = self.param(
            &format!("{name}.weight"),
            &[i, o],
            0.0,
            1.0 / (i as f64).sqrt(),
            layer,
        );
        let mut ty = self.g.ty(x).clone();
        *ty.shape
            .0
            .last_mut()
            .expect("activations have a feature axis") = Dim::constant(o as i64);
        ty.dtype = self.cfg.dtype;
        self.node(Op::Linear { bias: false }, vec![x, w], ty, name, layer)
    }
}

fn act(dtype: DType, dims: Vec<Dim>) -> TensorType {
    TensorType::new(dtype, Shape(dims))
}

/// Builds the fused-form Llama graph: input `input_ids` i64 `[batch, seq]`, output `logits`
/// `[batch, seq, vocab]`.
pub fn llama(cfg: &LlamaConfig) -> Graph {
    let mut b = Builder {
        g: Graph::new("llama-fixture"),
        cfg: cfg.clone(),
        rng: cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
    };
    let dt = cfg.dtype;
    let (bs, sq) = (Dim::sym("batch"), Dim::sym("seq"));
    let c = |v: usize| Dim::constant(v as i64);
    let (h, nh, kvh) = (cfg.hidden, cfg.heads, cfg.kv_heads);
    let d = h / nh;
    let ids = Value::of(b.g.add(
        Op::Input {
            name: "input_ids".into(),
        },
        vec![],
        vec![act(DType::I64, vec![bs.clone(), sq.clone()])],
        Provenance {
            name: "input_ids".into(),
            ..Default::default()
        },
    ));
    let table = b.param("model.embed_tokens.weight", &[cfg.vocab, h], 0.0, 1.0, None);
    let hid = act(dt, vec![bs.clone(), sq.clone(), c(h)]);
    let mut x = b.node(
        Op::Embedding,
        vec![table, ids],
        hid.clone(),
        "model.embed_tokens",
        None,
    );

    // cos/sin [1, 1, seq, d] from positions, computed once.
    let rs = "model.rotary_emb";
    let pos = b.node(
        Op::Range {
            start: Dim::constant(0),
            end: sq.clone(),
            step: 1,
            dtype: DType::F32,
        },
        vec![],
        act(DType::F32, vec![sq.clone()]),
        rs,
        None,
    );
    let pos = b.node(
        Op::Reshape(Shape(vec![sq.clone(), c(1)])),
        vec![pos],
        act(DType::F32, vec![sq.clone(), c(1)]),
        rs,
        None,
    );
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)) as f32)
        .collect();
    let invc = b.node(
        Op::Constant(Tensor::f32(vec![1, d / 2], inv)),
        vec![],
        act(DType::F32, vec![c(1), c(d / 2)]),
        rs,
        None,
    );
    let freqs = b.node(
        Op::Binary(BinaryOp::Mul),
        vec![pos, invc],
        act(DType::F32, vec![sq.clone(), c(d / 2)]),
        rs,
        None,
    );
    let emb = b.node(
        Op::Concat { axis: 1 },
        vec![freqs, freqs],
        act(DType::F32, vec![sq.clone(), c(d)]),
        rs,
        None,
    );
    let rot4 = Shape(vec![c(1), c(1), sq.clone(), c(d)]);
    let mut trig = Vec::new();
    for u in [UnaryOp::Cos, UnaryOp::Sin] {
        let t = b.node(
            Op::Unary(u),
            vec![emb],
            act(DType::F32, vec![sq.clone(), c(d)]),
            rs,
            None,
        );
        let t = b.node(
            Op::Cast(dt),
            vec![t],
            act(dt, vec![sq.clone(), c(d)]),
            rs,
            None,
        );
        trig.push(b.node(
            Op::Reshape(rot4.clone()),
            vec![t],
            act(dt, rot4.0.clone()),
            rs,
            None,
        ));
    }
    let (cos, sin) = (trig[0], trig[1]);

    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let ly = Some(l);
        let w_in = b.param(&format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1, ly);
        let hn = b.node(
            Op::RmsNorm { eps: cfg.eps },
            vec![x, w_in],
            hid.clone(),
            &format!("{p}.input_layernorm"),
            ly,
        );
        let a = format!("{p}.self_attn");
        let q = b.linear(hn, &format!("{a}.q_proj"), h, nh * d, ly);
        let k = b.linear(hn, &format!("{a}.k_proj"), h, kvh * d, ly);
        let v = b.linear(hn, &format!("{a}.v_proj"), h, kvh * d, ly);
        let mut heads4 = Vec::new();
        for (t, n) in [(q, nh), (k, kvh), (v, kvh)] {
            let r = b.node(
                Op::Reshape(Shape(vec![bs.clone(), sq.clone(), c(n), c(d)])),
                vec![t],
                act(dt, vec![bs.clone(), sq.clone(), c(n), c(d)]),
                &a,
                ly,
            );
            heads4.push(b.node(
                Op::Transpose(vec![0, 2, 1, 3]),
                vec![r],
                act(dt, vec![bs.clone(), c(n), sq.clone(), c(d)]),
                &a,
                ly,
            ));
        }
        let q4 = b.node(
            Op::Rotary,
            vec![heads4[0], cos, sin],
            b.g.ty(heads4[0]).clone(),
            &a,
            ly,
        );
        let k4 = b.node(
            Op::Rotary,
            vec![heads4[1], cos, sin],
            b.g.ty(heads4[1]).clone(),
            &a,
            ly,
        );
        let at = b.g.add(
            Op::Attention {
                heads: nh,
                kv_heads: kvh,
                scale: 1.0 / (d as f64).sqrt(),
                causal: true,
            },
            vec![q4, k4, heads4[2]],
            vec![
                b.g.ty(q4).clone(),
                act(DType::F32, vec![bs.clone(), c(nh), sq.clone()]),
            ],
            Builder::prov(&a, ly),
        );
        let t = b.node(
            Op::Transpose(vec![0, 2, 1, 3]),
            vec![Value::of(at)],
            act(dt, vec![bs.clone(), sq.clone(), c(nh), c(d)]),
            &a,
            ly,
        );
        let t = b.node(
            Op::Reshape(Shape(vec![bs.clone(), sq.clone(), c(nh * d)])),
            vec![t],
            act(dt, vec![bs.clone(), sq.clone(), c(nh * d)]),
            &a,
            ly,
        );
        let o = b.linear(t, &format!("{a}.o_proj"), nh * d, h, ly);
        x = b.node(Op::Binary(BinaryOp::Add), vec![x, o], hid.clone(), &p, ly);
        let w_post = b.param(
            &format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.1,
            ly,
        );
        let h2 = b.node(
            Op::RmsNorm { eps: cfg.eps },
            vec![x, w_post],
            hid.clone(),
            &format!("{p}.post_attention_layernorm"),
            ly,
        );
        let m = format!("{p}.mlp");
        let gate = b.linear(h2, &format!("{m}.gate_proj"), h, cfg.ffn, ly);
        let up = b.linear(h2, &format!("{m}.up_proj"), h, cfg.ffn, ly);
        let fty = b.g.ty(gate).clone();
        let sg = b.node(
            Op::Unary(UnaryOp::Silu),
            vec![gate],
            fty.clone(),
            &format!("{m}.act_fn"),
            ly,
        );
        let mm = b.node(Op::Binary(BinaryOp::Mul), vec![sg, up], fty, &m, ly);
        let dn = b.linear(mm, &format!("{m}.down_proj"), cfg.ffn, h, ly);
        x = b.node(Op::Binary(BinaryOp::Add), vec![x, dn], hid.clone(), &p, ly);
    }
    let w_f = b.param("model.norm.weight", &[h], 1.0, 0.1, None);
    let xf = b.node(
        Op::RmsNorm { eps: cfg.eps },
        vec![x, w_f],
        hid,
        "model.norm",
        None,
    );
    let logits = b.linear(xf, "lm_head", h, cfg.vocab, None);
    b.g.outputs.push(("logits".into(), logits));
    b.g
}

/// The node ids of the graph's trainable parameters by name.
pub fn param_ids(g: &Graph) -> Vec<(String, NodeId)> {
    g.params()
        .into_iter()
        .filter_map(|id| match &g.node(id).op {
            Op::Param { name, .. } => Some((name.clone(), id)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_llama_has_the_fixture_parameter_count() {
        let cfg = LlamaConfig::tiny();
        // models/manifest.json: tiny-llama torch_params = 158016.
        assert_eq!(cfg.params(), 158_016);
        let g = llama(&cfg);
        let total: u64 = g
            .params()
            .iter()
            .map(|p| g.ty(Value::of(*p)).shape.numel().as_const().unwrap_or(0) as u64)
            .sum();
        assert_eq!(total, 158_016);
    }
}
