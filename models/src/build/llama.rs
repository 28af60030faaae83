//! Llama, Mistral and Qwen2: RMSNorm, rotary q/k, grouped-KV attention, SwiGLU MLP; module scopes as
//! in `transformers` (`model.layers.N.self_attn.q_proj`, ...).

use super::{Builder, Init, Norm, attention, bsn, c, finish, pre_norm_layer, split_heads};
use crate::arch::{ArchConfig, MlaConfig, MoeConfig, RouterScore};
use moai_ir::{BinaryOp, DType, Dim, Op, Shape, Tensor, UnaryOp, Value};

/// Adds the whole model to `b`.
pub(super) fn build(b: &mut Builder, cfg: &ArchConfig) {
    let (h, dt) = (cfg.hidden, b.dtype);
    let ids = b.input_ids();
    b.at("model.embed_tokens", None);
    let table = b.param(
        "model.embed_tokens.weight",
        &[cfg.vocab, h],
        Init::Embedding,
    );
    let mut x = b.op(Op::Embedding, &[table, ids], dt, bsn(h));
    // Latent attention rotates only the rotary part of each head.
    let rot_dim = cfg
        .mla
        .as_ref()
        .map_or(cfg.head_dim, |m| m.qk_rope_head_dim);
    let (cos, sin) = rotary_tables(b, cfg, rot_dim);
    let mut rot = RotaryTables {
        cos,
        sin,
        unsqueezed: None,
    };
    for layer in 0..cfg.layers {
        x = decoder_layer(b, cfg, layer, x, &mut rot);
    }
    finish(b, cfg, Norm::Rms, "model.norm", x, table);
}

/// `cos`, `sin` of shape `[1, seq, head_dim]`, computed once from the positions `0..seq`
/// (`model.rotary_emb`), as `transformers` computes them and the ONNX import yields them:
/// `freqs = (inv_freq [1, d/2, 1] @ positions [1, 1, seq])ᵀ`, `emb = concat(freqs, freqs)`, then `cos`,
/// `sin` cast to the model's dtype. Each layer unsqueezes them to `[1, 1, seq, head_dim]`.
fn rotary_tables(b: &mut Builder, cfg: &ArchConfig, d: usize) -> (Value, Value) {
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
    let (h, d) = (cfg.hidden, cfg.head_dim);
    let (heads, kv) = (cfg.heads, cfg.kv_heads);
    let l = Some(n);
    let p = format!("model.layers.{n}");
    let lead = super::bs();
    let attn = |b: &mut Builder, hs: Value| match &cfg.mla {
        Some(m) => latent_attention(b, cfg, m, &p, l, hs, rot),
        None => {
            b.at(format!("{p}.self_attn.q_proj"), l);
            let q = b.linear(hs, &lead, h, heads * d, cfg.qkv_bias);
            b.at(format!("{p}.self_attn.k_proj"), l);
            let k = b.linear(hs, &lead, h, kv * d, cfg.qkv_bias);
            b.at(format!("{p}.self_attn.v_proj"), l);
            let v = b.linear(hs, &lead, h, kv * d, cfg.qkv_bias);

            b.at(format!("{p}.self_attn"), l);
            let (cos, sin) = rot.views(b, d);
            let mut q4 = split_heads(b, q, heads, d);
            let mut k4 = split_heads(b, k, kv, d);
            let v4 = split_heads(b, v, kv, d);
            if cfg.qk_norm {
                // Qwen3: RMSNorm of every query and key head (weights [head_dim]) before rotary.
                q4 = head_norm(b, cfg, &format!("{p}.self_attn.q_norm"), l, q4, heads);
                k4 = head_norm(b, cfg, &format!("{p}.self_attn.k_norm"), l, k4, kv);
                b.at(format!("{p}.self_attn"), l);
            }
            let q4 = rotary(b, q4, cos, sin, heads, d);
            let k4 = rotary(b, k4, cos, sin, kv, d);
            let a = attention(b, q4, k4, v4, heads, kv, d);

            b.at(format!("{p}.self_attn.o_proj"), l);
            b.linear(a, &lead, heads * d, h, cfg.o_bias)
        }
    };
    let mlp = |b: &mut Builder, hs: Value| match &cfg.moe {
        Some(m) if m.is_moe_layer(n) => moe_block(b, cfg, m, &p, l, hs),
        _ => swiglu(b, &format!("{p}.mlp"), l, hs, h, cfg.ffn, cfg.mlp_bias),
    };
    pre_norm_layer(
        b,
        cfg,
        Norm::Rms,
        &p,
        l,
        ("input_layernorm", "post_attention_layernorm"),
        x,
        attn,
        mlp,
    )
}

/// A SwiGLU MLP `down(silu(gate(x)) · up(x))` in module scope `scope` (`….mlp`, `….mlp.shared_expert`).
fn swiglu(
    b: &mut Builder,
    scope: &str,
    l: Option<usize>,
    hs: Value,
    h: usize,
    f: usize,
    bias: bool,
) -> Value {
    let (lead, dt) = (super::bs(), b.dtype);
    b.at(format!("{scope}.gate_proj"), l);
    let gate = b.linear(hs, &lead, h, f, bias);
    b.at(format!("{scope}.up_proj"), l);
    let up = b.linear(hs, &lead, h, f, bias);
    b.at(format!("{scope}.act_fn"), l);
    let act = b.op(Op::Unary(UnaryOp::Silu), &[gate], dt, bsn(f));
    b.at(scope.to_string(), l);
    let m = b.op(Op::Binary(BinaryOp::Mul), &[act, up], dt, bsn(f));
    b.at(format!("{scope}.down_proj"), l);
    b.linear(m, &lead, f, h, bias)
}

/// A mixture-of-experts MLP: the router `mlp.gate` (a linear to one logit per expert, then softmax or
/// sigmoid scores, plus DeepSeek-V3's score-correction bias), the routed experts as one
/// [`Op::MoeExperts`] over the fused expert weights `mlp.experts.{gate,up,down}_proj.weight`
/// (`[E, h, f]`, `[E, h, f]`, `[E, f, h]`), and the shared expert MLP (Qwen2-MoE's
/// `mlp.shared_expert`, gated by `mlp.shared_expert_gate`; DeepSeek's `mlp.shared_experts`) added to it.
/// DeepSeek-V3 uses its correction bias for the choice of experts only; here the biased scores also
/// weight them (same shapes, FLOPs and routing).
fn moe_block(
    b: &mut Builder,
    cfg: &ArchConfig,
    m: &MoeConfig,
    p: &str,
    l: Option<usize>,
    hs: Value,
) -> Value {
    let (h, e, f, dt) = (cfg.hidden, m.experts, m.expert_ffn, b.dtype);
    let lead = super::bs();
    b.at(format!("{p}.mlp.gate"), l);
    let logits = b.linear(hs, &lead, h, e, false);
    let mut scores = match m.score {
        RouterScore::Softmax => b.op(Op::Softmax { axis: 2 }, &[logits], dt, bsn(e)),
        RouterScore::Sigmoid => b.op(Op::Unary(UnaryOp::Sigmoid), &[logits], dt, bsn(e)),
    };
    if m.router_bias {
        let bias = b.param(
            &format!("{p}.mlp.gate.e_score_correction_bias"),
            &[e],
            Init::Zeros,
        );
        scores = b.op(Op::Binary(BinaryOp::Add), &[scores, bias], dt, bsn(e));
    }
    b.at(format!("{p}.mlp.experts"), l);
    let wg = b.param(
        &format!("{p}.mlp.experts.gate_proj.weight"),
        &[e, h, f],
        Init::Normal,
    );
    let wu = b.param(
        &format!("{p}.mlp.experts.up_proj.weight"),
        &[e, h, f],
        Init::Normal,
    );
    let wd = b.param(
        &format!("{p}.mlp.experts.down_proj.weight"),
        &[e, f, h],
        Init::Normal,
    );
    let routed = b.op(
        Op::MoeExperts {
            experts: e,
            topk: m.topk,
            norm_topk: m.norm_topk,
            capacity_factor: m.capacity_factor,
        },
        &[hs, scores, wg, wu, wd],
        dt,
        bsn(h),
    );
    if m.shared_ffn == 0 {
        return routed;
    }
    let scope = if m.shared_gate {
        format!("{p}.mlp.shared_expert")
    } else {
        format!("{p}.mlp.shared_experts")
    };
    let mut shared = swiglu(b, &scope, l, hs, h, m.shared_ffn, false);
    if m.shared_gate {
        b.at(format!("{p}.mlp.shared_expert_gate"), l);
        let g = b.linear(hs, &lead, h, 1, false);
        let g = b.op(Op::Unary(UnaryOp::Sigmoid), &[g], dt, bsn(1));
        b.at(format!("{p}.mlp"), l);
        shared = b.op(Op::Binary(BinaryOp::Mul), &[g, shared], dt, bsn(h));
    }
    b.at(format!("{p}.mlp"), l);
    b.op(Op::Binary(BinaryOp::Add), &[routed, shared], dt, bsn(h))
}

/// RMSNorm over the head dimension of `x [b, heads, s, head_dim]` in module scope `scope`.
fn head_norm(
    b: &mut Builder,
    cfg: &ArchConfig,
    scope: &str,
    l: Option<usize>,
    x: Value,
    heads: usize,
) -> Value {
    let (d, dt) = (cfg.head_dim, b.dtype);
    b.at(scope.to_string(), l);
    let w = b.param(&format!("{scope}.weight"), &[d], Init::Ones);
    b.op(
        Op::RmsNorm { eps: cfg.eps },
        &[x, w],
        dt,
        vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(d)],
    )
}

/// `[b, h, s, from..to]` of a `[b, h, s, d]` tensor.
fn slice_last(b: &mut Builder, x: Value, heads: usize, from: usize, to: usize) -> Value {
    let dt = b.dtype;
    b.op(
        Op::Slice {
            axis: 3,
            start: Dim::constant(from as i64),
            end: Dim::constant(to as i64),
            step: 1,
        },
        &[x],
        dt,
        vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(to - from)],
    )
}

/// Multi-head latent attention as DeepSeek-V2/V3 run it in `transformers`: queries through
/// `q_a_proj` → `q_a_layernorm` → `q_b_proj` (or one `q_proj`), keys and values through
/// `kv_a_proj_with_mqa` (the compressed KV and one rotary key shared by all heads) →
/// `kv_a_layernorm` → `kv_b_proj`; rotary on the rotary parts; values zero-padded to the query/key
/// width for the fused attention kernel and the output sliced back; `o_proj`.
fn latent_attention(
    b: &mut Builder,
    cfg: &ArchConfig,
    m: &MlaConfig,
    p: &str,
    l: Option<usize>,
    hs: Value,
    rot: &mut RotaryTables,
) -> Value {
    let (h, heads, dt) = (cfg.hidden, cfg.heads, b.dtype);
    let (nope, rope, vd) = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim);
    let (qk, kvr) = (nope + rope, m.kv_lora_rank);
    let lead = super::bs();
    let q = match m.q_lora_rank {
        Some(r) => {
            b.at(format!("{p}.self_attn.q_a_proj"), l);
            let qa = b.linear(hs, &lead, h, r, false);
            b.at(format!("{p}.self_attn.q_a_layernorm"), l);
            let w = b.param(
                &format!("{p}.self_attn.q_a_layernorm.weight"),
                &[r],
                Init::Ones,
            );
            let qa = b.op(Op::RmsNorm { eps: cfg.eps }, &[qa, w], dt, bsn(r));
            b.at(format!("{p}.self_attn.q_b_proj"), l);
            b.linear(qa, &lead, r, heads * qk, false)
        }
        None => {
            b.at(format!("{p}.self_attn.q_proj"), l);
            b.linear(hs, &lead, h, heads * qk, false)
        }
    };
    b.at(format!("{p}.self_attn.kv_a_proj_with_mqa"), l);
    let kva = b.linear(hs, &lead, h, kvr + rope, false);
    b.at(format!("{p}.self_attn"), l);
    let part = |b: &mut Builder, from: usize, to: usize| {
        b.op(
            Op::Slice {
                axis: 2,
                start: Dim::constant(from as i64),
                end: Dim::constant(to as i64),
                step: 1,
            },
            &[kva],
            dt,
            bsn(to - from),
        )
    };
    let compressed = part(b, 0, kvr);
    let k_pe = part(b, kvr, kvr + rope);
    let k_pe = split_heads(b, k_pe, 1, rope);
    b.at(format!("{p}.self_attn.kv_a_layernorm"), l);
    let w = b.param(
        &format!("{p}.self_attn.kv_a_layernorm.weight"),
        &[kvr],
        Init::Ones,
    );
    let compressed = b.op(Op::RmsNorm { eps: cfg.eps }, &[compressed, w], dt, bsn(kvr));
    b.at(format!("{p}.self_attn.kv_b_proj"), l);
    let kv = b.linear(compressed, &lead, kvr, heads * (nope + vd), false);

    b.at(format!("{p}.self_attn"), l);
    let q4 = split_heads(b, q, heads, qk);
    let kv4 = split_heads(b, kv, heads, nope + vd);
    let q_nope = slice_last(b, q4, heads, 0, nope);
    let q_pe = slice_last(b, q4, heads, nope, qk);
    let k_nope = slice_last(b, kv4, heads, 0, nope);
    let v4 = slice_last(b, kv4, heads, nope, nope + vd);
    let (cos, sin) = rot.views(b, rope);
    let q_pe = rotary(b, q_pe, cos, sin, heads, rope);
    let k_pe = rotary(b, k_pe, cos, sin, 1, rope);
    let full = |n: usize| vec![Dim::sym("batch"), c(heads), Dim::sym("seq"), c(n)];
    let k_pe = b.op(Op::Expand(Shape(full(rope))), &[k_pe], dt, full(rope));
    let q4 = b.op(Op::Concat { axis: 3 }, &[q_nope, q_pe], dt, full(qk));
    let k4 = b.op(Op::Concat { axis: 3 }, &[k_nope, k_pe], dt, full(qk));
    let v4 = if vd < qk {
        let zero = b.op(
            Op::Constant(Tensor::f32(vec![], vec![0.0])),
            &[],
            DType::F32,
            vec![],
        );
        let zero = if dt == DType::F32 {
            zero
        } else {
            b.op(Op::Cast(dt), &[zero], dt, vec![])
        };
        let pad = b.op(Op::Expand(Shape(full(qk - vd))), &[zero], dt, full(qk - vd));
        b.op(Op::Concat { axis: 3 }, &[v4, pad], dt, full(qk))
    } else {
        v4
    };
    let outs = b.op_multi(
        Op::Attention {
            heads,
            kv_heads: heads,
            scale: 1.0 / (qk as f64).sqrt(),
            causal: true,
        },
        &[q4, k4, v4],
        vec![
            moai_ir::TensorType::new(dt, Shape(full(qk))),
            moai_ir::TensorType::new(
                DType::F32,
                Shape(vec![Dim::sym("batch"), c(heads), Dim::sym("seq")]),
            ),
        ],
    );
    let o = slice_last(b, outs[0], heads, 0, vd);
    let t = b.op(
        Op::Transpose(vec![0, 2, 1, 3]),
        &[o],
        dt,
        vec![Dim::sym("batch"), Dim::sym("seq"), c(heads), c(vd)],
    );
    let a = b.op(
        Op::Reshape(Shape(bsn(heads * vd))),
        &[t],
        dt,
        bsn(heads * vd),
    );
    b.at(format!("{p}.self_attn.o_proj"), l);
    b.linear(a, &lead, heads * vd, h, cfg.o_bias)
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
