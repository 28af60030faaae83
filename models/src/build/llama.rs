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
    for layer in 0..cfg.layers {
        x = decoder_layer(b, cfg, layer, x, cos, sin);
    }
    b.at("model.norm", None);
    let w = b.param("model.norm.weight", &[h], Init::Ones);
    let x = b.op(Op::RmsNorm { eps: cfg.eps }, &[x, w], dt, bsn(h));
    let logits = lm_head(b, x, table, h, cfg.vocab, cfg.tied);
    b.g.outputs.push(("logits".into(), logits));
}

/// `cos`, `sin` of shape `[1, 1, seq, head_dim]`, computed once from the positions `0..seq`
/// (`model.rotary_emb`): `freqs = positions ⊗ inv_freq`, `emb = concat(freqs, freqs)`.
fn rotary_tables(b: &mut Builder, cfg: &ArchConfig) -> (Value, Value) {
    let d = cfg.head_dim;
    let seq = Dim::sym("seq");
    b.at("model.rotary_emb", None);
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)) as f32)
        .collect();
    let inv = b.op(
        Op::Constant(Tensor::f32(vec![1, d / 2], inv)),
        &[],
        DType::F32,
        vec![c(1), c(d / 2)],
    );
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
    let pos = b.op(Op::Cast(DType::F32), &[pos], DType::F32, vec![seq.clone()]);
    let pos = b.op(
        Op::Reshape(Shape(vec![seq.clone(), c(1)])),
        &[pos],
        DType::F32,
        vec![seq.clone(), c(1)],
    );
    let freqs = b.op(
        Op::MatMul,
        &[pos, inv],
        DType::F32,
        vec![seq.clone(), c(d / 2)],
    );
    let emb = b.op(
        Op::Concat { axis: 1 },
        &[freqs, freqs],
        DType::F32,
        vec![seq.clone(), c(d)],
    );
    let out_shape = vec![c(1), c(1), seq.clone(), c(d)];
    let mut table = |u: UnaryOp| {
        let mut t = b.op(Op::Unary(u), &[emb], DType::F32, vec![seq.clone(), c(d)]);
        if b.dtype != DType::F32 {
            t = b.op(Op::Cast(b.dtype), &[t], b.dtype, vec![seq.clone(), c(d)]);
        }
        b.op(
            Op::Reshape(Shape(out_shape.clone())),
            &[t],
            b.dtype,
            out_shape.clone(),
        )
    };
    (table(UnaryOp::Cos), table(UnaryOp::Sin))
}

fn decoder_layer(
    b: &mut Builder,
    cfg: &ArchConfig,
    n: usize,
    x: Value,
    cos: Value,
    sin: Value,
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
