//! GPT-2 / GPT-3: token and learned position embeddings, LayerNorm, fused `c_attn` split by `Slice`,
//! GELU (tanh) MLP, biased linears; module scopes as in `transformers` (`transformer.h.N.attn.c_attn`).

use super::{Builder, Init, Norm, attention, bsn, c, finish, pre_norm_layer, split_heads};
use crate::arch::ArchConfig;
use moai_ir::{BinaryOp, DType, Dim, Op, Shape, UnaryOp, Value};

/// Adds the whole model to `b`.
pub(super) fn build(b: &mut Builder, cfg: &ArchConfig) {
    let (h, dt) = (cfg.hidden, b.dtype);
    let seq = Dim::sym("seq");
    let ids = b.input_ids();
    b.at("transformer.wte", None);
    let wte = b.param("transformer.wte.weight", &[cfg.vocab, h], Init::Embedding);
    let tok = b.op(Op::Embedding, &[wte, ids], dt, bsn(h));
    b.at("transformer.wpe", None);
    let wpe = b.param("transformer.wpe.weight", &[cfg.max_pos, h], Init::Embedding);
    b.at("transformer", None);
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
    b.at("transformer.wpe", None);
    let pos = b.op(
        Op::Embedding,
        &[wpe, pos],
        dt,
        vec![c(1), seq.clone(), c(h)],
    );
    b.at("transformer", None);
    let mut x = b.op(Op::Binary(BinaryOp::Add), &[tok, pos], dt, bsn(h));
    for layer in 0..cfg.layers {
        x = block(b, cfg, layer, x);
    }
    finish(b, cfg, Norm::Layer, "transformer.ln_f", x, wte);
}

fn block(b: &mut Builder, cfg: &ArchConfig, n: usize, x: Value) -> Value {
    let (h, d, heads, dt) = (cfg.hidden, cfg.head_dim, cfg.heads, b.dtype);
    let l = Some(n);
    let p = format!("transformer.h.{n}");
    let lead = super::bs();
    let attn = |b: &mut Builder, hs: Value| {
        b.at(format!("{p}.attn.c_attn"), l);
        let qkv = b.linear(hs, &lead, h, 3 * h, true);
        b.at(format!("{p}.attn"), l);
        let mut parts = Vec::with_capacity(3);
        for i in 0..3 {
            let slice = Op::Slice {
                axis: 2,
                start: c(i * h),
                end: c((i + 1) * h),
                step: 1,
            };
            let s = b.op(slice, &[qkv], dt, bsn(h));
            parts.push(split_heads(b, s, heads, d));
        }
        let a = attention(b, parts[0], parts[1], parts[2], heads, heads, d);
        b.at(format!("{p}.attn.c_proj"), l);
        b.linear(a, &lead, h, h, true)
    };
    let mlp = |b: &mut Builder, hs: Value| {
        b.at(format!("{p}.mlp.c_fc"), l);
        let f = b.linear(hs, &lead, h, cfg.ffn, true);
        b.at(format!("{p}.mlp.act"), l);
        let f = b.op(Op::Unary(UnaryOp::GeluTanh), &[f], dt, bsn(cfg.ffn));
        b.at(format!("{p}.mlp.c_proj"), l);
        b.linear(f, &lead, cfg.ffn, h, true)
    };
    pre_norm_layer(b, cfg, Norm::Layer, &p, l, ("ln_1", "ln_2"), x, attn, mlp)
}
