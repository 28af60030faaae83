//! Llama, Mistral and Qwen2: RMSNorm, rotary q/k, grouped-KV attention, SwiGLU MLP; module scopes as
//! in `transformers` (`model.layers.N.self_attn.q_proj`, ...).

use super::{Builder, Init, attention, bsn, c, lm_head, split_heads};
use crate::arch::ArchConfig;
use moai_ir::{BinaryOp, DType, Dim, Op, Shape, Tensor, UnaryOp, Value};

/// Adds the whole model to `b`.
pub(super) fn build(b: &mut Builder, cfg: &ArchConfig) {
    let (h, dt) = (cfg.hidden, b.dtype);
    let ids = b.input_ids();
    b.at("model.embed_tokens", None);
    let table = b.param("model.embed_tokens.weight", &[cfg.vocab, h], Init::Normal);
    let mut x = b.op(Op::Embedding, &[table, ids], dt, bsn(h));
    let (cos, sin) = rotary_tables(b, cfg);
    let mut rot = RotaryTables {
        cos,
        sin,
        unsqueezed: None,
    };
    for layer in 0..cfg.layers {
        x = decoder_layer(b, cfg, layer, x, &mut rot);
    }
    b.at("model.norm", None);
    let w = b.param("model.norm.weight", &[h], Init::Ones);
    let x = b.op(Op::RmsNorm { eps: cfg.eps }, &[x, w], dt, bsn(h));
    let logits = lm_head(b, x, table, h, cfg.vocab, cfg.tied);
    b.g.outputs.push(("logits".into(), logits));
}

/// `cos`, `sin` of shape `[1, seq, head_dim]`, computed once from the positions `0..seq`
/// (`model.rotary_emb`), as `transformers` computes them and the ONNX import yields them:
/// `freqs = (inv_freq [1, d/2, 1] @ positions [1, 1, seq])ᵀ`, `emb = concat(freqs, freqs)`, then `cos`,
/// `sin` cast to the model's dtype. Each layer unsqueezes them to `[1, 1, seq, head_dim]`.
fn rotary_tables(b: &mut Builder, cfg: &ArchConfig) -> (Value, Value) {
    let d = cfg.head_dim;
    let seq = Dim::sym("seq");
    b.at("model", None);
    let pos = b.op(
        Op::Range {
            start: Dim::constant(0),
            end: seq.clone(),
            step: 1,
            dtype: DType::I64,
        },
        &[],
        DType::I64,
        vec![seq.clone()],
    );
    let pos = b.op(
        Op::Reshape(Shape(vec![c(1), seq.clone()])),
        &[pos],
        DType::I64,
        vec![c(1), seq.clone()],
    );
    b.at("model.rotary_emb", None);
    let s3 = vec![c(1), c(1), seq.clone()];
    let pos = b.op(
        Op::Reshape(Shape(s3.clone())),
        &[pos],
        DType::I64,
        s3.clone(),
    );
    let pos = b.op(Op::Cast(DType::F32), &[pos], DType::F32, s3);
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)) as f32)
        .collect();
    let inv = b.op(
        Op::Constant(Tensor::f32(vec![1, d / 2, 1], inv)),
        &[],
        DType::F32,
        vec![c(1), c(d / 2), c(1)],
    );
    let freqs = b.op(
        Op::MatMul,
        &[inv, pos],
        DType::F32,
        vec![c(1), c(d / 2), seq.clone()],
    );
    let freqs = b.op(
        Op::Transpose(vec![0, 2, 1]),
        &[freqs],
        DType::F32,
        vec![c(1), seq.clone(), c(d / 2)],
    );
    let table_shape = vec![c(1), seq.clone(), c(d)];
    let emb = b.op(
        Op::Concat { axis: 2 },
        &[freqs, freqs],
        DType::F32,
        table_shape.clone(),
    );
    let mut table = |u: UnaryOp| {
        let t = b.op(Op::Unary(u), &[emb], DType::F32, table_shape.clone());
        if b.dtype == DType::F32 {
            t
        } else {
            b.op(Op::Cast(b.dtype), &[t], b.dtype, table_shape.clone())
        }
    };
    (table(UnaryOp::Cos), table(UnaryOp::Sin))
}

/// The rotary tables and their `[1, 1, seq, d]` views. Like the ONNX export (whose graph shares one
/// `unsqueeze` of `cos`/`sin` between all layers after common-subexpression elimination), the views are
/// made once, inside the first decoder layer's `self_attn` scope, and reused by the later layers.
struct RotaryTables {
    cos: Value,
    sin: Value,
    unsqueezed: Option<(Value, Value)>,
}

impl RotaryTables {
    /// The `[1, 1, seq, d]` views, made in the current scope on first use.
    fn views(&mut self, b: &mut Builder, d: usize) -> (Value, Value) {
        if let Some(v) = self.unsqueezed {
            return v;
        }
        let shape = vec![c(1), c(1), Dim::sym("seq"), c(d)];
        let dt = b.dtype;
        let cos = b.op(
            Op::Reshape(Shape(shape.clone())),
            &[self.cos],
            dt,
            shape.clone(),
        );
        let sin = b.op(Op::Reshape(Shape(shape.clone())), &[self.sin], dt, shape);
        *self.unsqueezed.insert((cos, sin))
    }
}

fn decoder_layer(
    b: &mut Builder,
    cfg: &ArchConfig,
    n: usize,
    x: Value,
    rot: &mut RotaryTables,
) -> Value {
    let (h, d, dt) = (cfg.hidden, cfg.head_dim, b.dtype);
    let (heads, kv) = (cfg.heads, cfg.kv_heads);
    let l = Some(n);
    let p = format!("model.layers.{n}");
    let lead = super::bs();

    b.at(format!("{p}.input_layernorm"), l);
    let w = b.param(&format!("{p}.input_layernorm.weight"), &[h], Init::Ones);
    let hs = b.op(Op::RmsNorm { eps: cfg.eps }, &[x, w], dt, bsn(h));

    b.at(format!("{p}.self_attn.q_proj"), l);
    let q = b.linear(hs, &lead, h, heads * d, cfg.qkv_bias);
    b.at(format!("{p}.self_attn.k_proj"), l);
    let k = b.linear(hs, &lead, h, kv * d, cfg.qkv_bias);
    b.at(format!("{p}.self_attn.v_proj"), l);
    let v = b.linear(hs, &lead, h, kv * d, cfg.qkv_bias);

    b.at(format!("{p}.self_attn"), l);
    let (cos, sin) = rot.views(b, d);
    let q4 = split_heads(b, q, heads, d);
    let k4 = split_heads(b, k, kv, d);
    let v4 = split_heads(b, v, kv, d);
    let q4 = rotary(b, q4, cos, sin, heads, d);
    let k4 = rotary(b, k4, cos, sin, kv, d);
    let a = attention(b, q4, k4, v4, heads, kv, d);

    b.at(format!("{p}.self_attn.o_proj"), l);
    let o = b.linear(a, &lead, heads * d, h, cfg.o_bias);
    b.at(p.clone(), l);
    let x = b.op(Op::Binary(BinaryOp::Add), &[x, o], dt, bsn(h));

    b.at(format!("{p}.post_attention_layernorm"), l);
    let w = b.param(
        &format!("{p}.post_attention_layernorm.weight"),
        &[h],
        Init::Ones,
    );
    let hs = b.op(Op::RmsNorm { eps: cfg.eps }, &[x, w], dt, bsn(h));

    b.at(format!("{p}.mlp.gate_proj"), l);
    let gate = b.linear(hs, &lead, h, cfg.ffn, cfg.mlp_bias);
    b.at(format!("{p}.mlp.up_proj"), l);
    let up = b.linear(hs, &lead, h, cfg.ffn, cfg.mlp_bias);
    b.at(format!("{p}.mlp.act_fn"), l);
    let act = b.op(Op::Unary(UnaryOp::Silu), &[gate], dt, bsn(cfg.ffn));
    b.at(format!("{p}.mlp"), l);
    let m = b.op(Op::Binary(BinaryOp::Mul), &[act, up], dt, bsn(cfg.ffn));
    b.at(format!("{p}.mlp.down_proj"), l);
    let down = b.linear(m, &lead, cfg.ffn, h, cfg.mlp_bias);
    b.at(p, l);
    b.op(Op::Binary(BinaryOp::Add), &[x, down], dt, bsn(h))
}

fn rotary(b: &mut Builder, x: Value, cos: Value, sin: Value, heads: usize, d: usize) -> Value {
    let dt = b.dtype;
    b.op(
        Op::Rotary,
        &[x, cos, sin],
        dt,
        vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(d)],
    )
}
