//! TEST FIXTURE, not the product: an analytic step-profile builder for Llama- and GPT-style decoders.
//!
//! The real profiles come from `moai_ir::train::step_profile` (the training graph). Until that lands
//! these tests (and the fit that produced `data/efficiency.json`) use this builder, which mimics what
//! the training graph records per micro-batch: canonical fused ops (one op per Linear, norm,
//! attention, elementwise), bf16 matmuls under amp-bf16 with an fp32 residual stream and fp32 master
//! weights in the PyTorch-autocast style (16 bytes per parameter: fp32 weights, fp32 grads, two fp32
//! Adam moments), per-weight bf16 casts every forward, saved activations under the recomputation
//! policy.

use moai_costmodel::Recompute;
use moai_ir::DType;
use moai_ir::cost::{
    ActivationBytes, BlockKind, BlockProfile, KernelClass, OpCost, Phase, Role, StepProfile,
    TpSplit,
};

/// Architecture of a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    /// `llama` or `gpt`.
    pub family: String,
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub ffn: u64,
    pub vocab: u64,
}

/// Parses `llama:layers=..,hidden=..,heads=..,kv_heads=..,ffn=..,vocab=..` or `gpt:...`.
pub fn parse_spec(spec: &str) -> Result<DecoderSpec, String> {
    let (family, rest) = spec
        .split_once(':')
        .ok_or_else(|| format!("`{spec}` is not a spec"))?;
    let mut d = DecoderSpec {
        family: family.into(),
        layers: 0,
        hidden: 0,
        heads: 0,
        kv_heads: 0,
        ffn: 0,
        vocab: 0,
    };
    for kv in rest.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad field `{kv}`"))?;
        let v: u64 = v.parse().map_err(|_| format!("bad number in `{kv}`"))?;
        match k {
            "layers" => d.layers = v,
            "hidden" => d.hidden = v,
            "heads" => d.heads = v,
            "kv_heads" => d.kv_heads = v,
            "ffn" => d.ffn = v,
            "vocab" => d.vocab = v,
            _ => return Err(format!("unknown field `{k}`")),
        }
    }
    if d.kv_heads == 0 {
        d.kv_heads = d.heads;
    }
    if d.ffn == 0 {
        d.ffn = 4 * d.hidden;
    }
    Ok(d)
}

struct B {
    ops: Vec<OpCost>,
    layer: Option<u32>,
    /// Megatron-style mixed precision: bf16 weights and residual stream, no per-forward weight casts.
    half: bool,
}

impl B {
    fn mm(&mut self, phase: Phase, split: TpSplit, label: &str, m: u64, n: u64, k: u64) {
        self.ops.push(OpCost {
            class: KernelClass::Matmul {
                batch: 1,
                m,
                n,
                k,
                dtype: DType::BF16,
            },
            flops: 2.0 * (m * n * k) as f64,
            bytes: 2.0 * (m * k + k * n + m * n) as f64,
            phase,
            layer: self.layer,
            split,
            label: label.into(),
            role: Role::Plain,
        });
    }
    /// Marks the linear just added as reading the input of the one before it (k and v after q, up
    /// after gate), as the training graph does in forward and recomputation.
    fn shares_input(&mut self) {
        if let Some(op) = self.ops.last_mut() {
            op.role = Role::SharedInputLinear;
        }
    }
    /// A linear `[t, k] × [k, n]`: forward, or backward (dgrad, wgrad, fp32 grad accumulation).
    fn linear(&mut self, phase: Phase, split: TpSplit, label: &str, t: u64, n: u64, k: u64) {
        if phase == Phase::Backward {
            self.mm(phase, split, &format!("{label}.dgrad"), t, k, n);
            self.mm(phase, split, &format!("{label}.wgrad"), k, n, t);
            let acc = if self.half { 6 } else { 10 };
            self.mem(
                phase,
                split,
                KernelClass::Elementwise,
                &format!("{label}.grad_acc"),
                (k * n * acc) as f64,
                (k * n) as f64,
            );
        } else {
            if !self.half {
                // Autocast casts the fp32 weight to bf16 every forward (and recomputation).
                self.mem(
                    phase,
                    split,
                    KernelClass::Copy,
                    &format!("{label}.cast"),
                    (k * n * 6) as f64,
                    0.0,
                );
            }
            self.mm(phase, split, label, t, n, k);
        }
    }
    fn mem(
        &mut self,
        phase: Phase,
        split: TpSplit,
        class: KernelClass,
        label: &str,
        bytes: f64,
        flops: f64,
    ) {
        self.ops.push(OpCost {
            class,
            flops,
            bytes,
            phase,
            layer: self.layer,
            split,
            label: label.into(),
            role: Role::Plain,
        });
    }
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        phase: Phase,
        b: u64,
        s: u64,
        heads: u64,
        kv: u64,
        d: u64,
        backward: bool,
    ) {
        let fwd = 4.0 * (b * heads * s * s * d) as f64 * 0.5;
        let flops = if backward { 2.5 * fwd } else { fwd };
        let io = 2.0 * (b * s * d * (2 * heads + 2 * kv)) as f64;
        self.ops.push(OpCost {
            class: KernelClass::Attention {
                batch: b,
                heads,
                kv_heads: kv,
                seq: s,
                head_dim: d,
                causal: true,
                backward,
                dtype: DType::BF16,
            },
            flops,
            bytes: if backward { 2.0 * io } else { io },
            phase,
            layer: self.layer,
            split: TpSplit::Heads,
            label: "self_attn.core".into(),
            role: Role::Plain,
        });
    }
}

fn layer_forward(bl: &mut B, spec: &DecoderSpec, phase: Phase, b: u64, s: u64) {
    let t = b * s;
    let (h, f) = (spec.hidden, spec.ffn);
    let d = h / spec.heads;
    let (qn, kvn) = (spec.heads * d, spec.kv_heads * d);
    let gpt = spec.family == "gpt";
    let norm = |bl: &mut B, l: &str| {
        bl.mem(
            phase,
            TpSplit::Sequence,
            KernelClass::Norm,
            l,
            (t * h * 6) as f64,
            (t * h * 5) as f64,
        )
    };
    norm(bl, "input_layernorm");
    if gpt {
        bl.linear(phase, TpSplit::Column, "self_attn.qkv", t, qn + 2 * kvn, h);
    } else {
        bl.linear(phase, TpSplit::Column, "self_attn.q_proj", t, qn, h);
        bl.linear(phase, TpSplit::Column, "self_attn.k_proj", t, kvn, h);
        bl.shares_input();
        bl.linear(phase, TpSplit::Column, "self_attn.v_proj", t, kvn, h);
        bl.shares_input();
        bl.mem(
            phase,
            TpSplit::Heads,
            KernelClass::Elementwise,
            "rotary",
            (t * (qn + kvn) * 4) as f64,
            (t * (qn + kvn) * 3) as f64,
        );
    }
    bl.attention(phase, b, s, spec.heads, spec.kv_heads, d, false);
    bl.linear(phase, TpSplit::Row, "self_attn.o_proj", t, h, qn);
    bl.mem(
        phase,
        TpSplit::Sequence,
        KernelClass::Elementwise,
        "residual",
        (t * h * 10) as f64,
        (t * h) as f64,
    );
    norm(bl, "post_attention_layernorm");
    if gpt {
        bl.linear(phase, TpSplit::Column, "mlp.fc", t, f, h);
        bl.mem(
            phase,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.gelu",
            (t * f * 4) as f64,
            (t * f * 8) as f64,
        );
    } else {
        bl.linear(phase, TpSplit::Column, "mlp.gate_proj", t, f, h);
        bl.linear(phase, TpSplit::Column, "mlp.up_proj", t, f, h);
        bl.shares_input();
        bl.mem(
            phase,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.silu",
            (t * f * 4) as f64,
            (t * f * 4) as f64,
        );
        bl.mem(
            phase,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.mul",
            (t * f * 6) as f64,
            (t * f) as f64,
        );
    }
    bl.linear(phase, TpSplit::Row, "mlp.down_proj", t, h, f);
    bl.mem(
        phase,
        TpSplit::Sequence,
        KernelClass::Elementwise,
        "residual",
        (t * h * 10) as f64,
        (t * h) as f64,
    );
}

fn layer_backward(bl: &mut B, spec: &DecoderSpec, b: u64, s: u64) {
    let p = Phase::Backward;
    let t = b * s;
    let (h, f) = (spec.hidden, spec.ffn);
    let d = h / spec.heads;
    let (qn, kvn) = (spec.heads * d, spec.kv_heads * d);
    let gpt = spec.family == "gpt";
    bl.mem(
        p,
        TpSplit::Sequence,
        KernelClass::Elementwise,
        "residual.grad",
        (t * h * 12) as f64,
        (t * h) as f64,
    );
    bl.linear(p, TpSplit::Row, "mlp.down_proj", t, h, f);
    if gpt {
        bl.mem(
            p,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.gelu.grad",
            (t * f * 6) as f64,
            (t * f * 10) as f64,
        );
        bl.linear(p, TpSplit::Column, "mlp.fc", t, f, h);
    } else {
        bl.mem(
            p,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.mul.grad",
            (t * f * 10) as f64,
            (t * f * 2) as f64,
        );
        bl.mem(
            p,
            TpSplit::Column,
            KernelClass::Elementwise,
            "mlp.silu.grad",
            (t * f * 6) as f64,
            (t * f * 6) as f64,
        );
        bl.linear(p, TpSplit::Column, "mlp.up_proj", t, f, h);
        bl.linear(p, TpSplit::Column, "mlp.gate_proj", t, f, h);
    }
    bl.mem(
        p,
        TpSplit::Sequence,
        KernelClass::Norm,
        "post_attention_layernorm.grad",
        (t * h * 14) as f64,
        (t * h * 8) as f64,
    );
    bl.mem(
        p,
        TpSplit::Sequence,
        KernelClass::Elementwise,
        "residual.grad",
        (t * h * 12) as f64,
        (t * h) as f64,
    );
    bl.linear(p, TpSplit::Row, "self_attn.o_proj", t, h, qn);
    bl.attention(p, b, s, spec.heads, spec.kv_heads, d, true);
    if gpt {
        bl.linear(p, TpSplit::Column, "self_attn.qkv", t, qn + 2 * kvn, h);
    } else {
        bl.mem(
            p,
            TpSplit::Heads,
            KernelClass::Elementwise,
            "rotary.grad",
            (t * (qn + kvn) * 4) as f64,
            (t * (qn + kvn) * 3) as f64,
        );
        bl.linear(p, TpSplit::Column, "self_attn.v_proj", t, kvn, h);
        bl.linear(p, TpSplit::Column, "self_attn.k_proj", t, kvn, h);
        bl.linear(p, TpSplit::Column, "self_attn.q_proj", t, qn, h);
    }
    bl.mem(
        p,
        TpSplit::Sequence,
        KernelClass::Norm,
        "input_layernorm.grad",
        (t * h * 14) as f64,
        (t * h * 8) as f64,
    );
}

/// Saved bytes of one decoder layer, one micro-batch, without recomputation: fp32 residual inputs of
/// the two norms, bf16 norm outputs, q/k (after rotary), v, attention output (+ fp32 log-sum-exp),
/// MLP intermediates.
fn layer_saved(spec: &DecoderSpec, t: u64) -> ActivationBytes {
    let (h, f) = (spec.hidden as f64, spec.ffn as f64);
    let d = h / spec.heads as f64;
    let (qn, kvn) = (spec.heads as f64 * d, spec.kv_heads as f64 * d);
    let t = t as f64;
    let mlp = if spec.family == "gpt" {
        2.0 * f * 2.0
    } else {
        4.0 * f * 2.0
    };
    ActivationBytes {
        tp_sharded: t * (2.0 * (qn + 2.0 * kvn) + 2.0 * qn + 4.0 * spec.heads as f64 + mlp),
        tp_replicated: t * (4.0 * h + 2.0 * h + 4.0 * h + 2.0 * h),
    }
}

/// Builds the step profile of one micro-batch. `precision`: `amp-bf16` is PyTorch autocast (fp32
/// weights, grads and residual stream; 16 B/param); `bf16` is Megatron-style mixed precision (bf16
/// weights, grads and residual stream, fp32 master weights and moments; 16 B/param).
pub fn step_profile(
    spec: &DecoderSpec,
    b: u64,
    s: u64,
    recompute: Recompute,
    precision: &str,
) -> StepProfile {
    let half = precision == "bf16";
    let rb: u64 = if half { 2 } else { 4 };
    let t = b * s;
    let (h, v) = (spec.hidden, spec.vocab);
    let gpt = spec.family == "gpt";
    let d = h / spec.heads;
    let layer_params = if gpt {
        h * (h + 2 * spec.kv_heads * d) + h * h + 2 * h * spec.ffn + spec.ffn + 9 * h
    } else {
        h * (spec.heads * d + 2 * spec.kv_heads * d) + spec.heads * d * h + 3 * h * spec.ffn + 2 * h
    };
    let mut blocks = Vec::new();
    // Embedding.
    let mut e = B {
        ops: vec![],
        layer: None,
        half,
    };
    e.mem(
        Phase::Forward,
        TpSplit::Vocab,
        KernelClass::Gather,
        "embed_tokens",
        (t * h * 8) as f64,
        0.0,
    );
    e.mem(
        Phase::Backward,
        TpSplit::Vocab,
        KernelClass::Gather,
        "embed_tokens.grad",
        (t * h * 8 + v * h * 4) as f64,
        (t * h) as f64,
    );
    let emb_params = v * h + if gpt { s * h } else { 0 };
    blocks.push(BlockProfile {
        kind: BlockKind::Embedding,
        ops: e.ops,
        params: emb_params,
        tp_sharded_params: v * h,
        expert_params: 0,
        saved: ActivationBytes::default(),
        transient: ActivationBytes::default(),
        boundary_bytes: (t * h * rb) as f64,
    });
    let full = layer_saved(spec, t);
    for l in 0..spec.layers {
        let mut bl = B {
            ops: vec![],
            layer: Some(l as u32),
            half,
        };
        layer_forward(&mut bl, spec, Phase::Forward, b, s);
        match recompute {
            Recompute::Full => layer_forward(&mut bl, spec, Phase::Recompute, b, s),
            Recompute::Selective => {
                bl.attention(Phase::Recompute, b, s, spec.heads, spec.kv_heads, d, false)
            }
            Recompute::None => {}
            Recompute::SelectiveOp => panic!(
                "the hand-built fixture has no per-op checkpointing policy; profile selective-op from the training graph"
            ),
        }
        layer_backward(&mut bl, spec, b, s);
        let (saved, transient) = match recompute {
            Recompute::Full => (
                ActivationBytes {
                    tp_sharded: 0.0,
                    tp_replicated: (t * h * rb) as f64,
                },
                ActivationBytes {
                    tp_sharded: full.tp_sharded,
                    tp_replicated: full.tp_replicated + (t * h * 8) as f64,
                },
            ),
            _ => (
                full.clone(),
                ActivationBytes {
                    tp_sharded: 0.0,
                    tp_replicated: (t * h * 8) as f64,
                },
            ),
        };
        let sharded = layer_params - if gpt { 6 * h } else { 2 * h };
        blocks.push(BlockProfile {
            kind: BlockKind::Decoder(l as u32),
            ops: bl.ops,
            params: layer_params,
            tp_sharded_params: sharded,
            expert_params: 0,
            saved,
            transient,
            boundary_bytes: (t * h * rb) as f64,
        });
    }
    // Head: final norm, LM head, fp32 upcast of the logits, cross-entropy.
    let mut hd = B {
        ops: vec![],
        layer: None,
        half,
    };
    hd.mem(
        Phase::Forward,
        TpSplit::Sequence,
        KernelClass::Norm,
        "norm",
        (t * h * 6) as f64,
        (t * h * 5) as f64,
    );
    hd.linear(Phase::Forward, TpSplit::Vocab, "lm_head", t, v, h);
    hd.mem(
        Phase::Forward,
        TpSplit::Vocab,
        KernelClass::Copy,
        "logits.float",
        (t * v * 6) as f64,
        0.0,
    );
    hd.mem(
        Phase::Forward,
        TpSplit::Vocab,
        KernelClass::Reduce,
        "cross_entropy",
        (t * v * 8) as f64,
        (t * v * 4) as f64,
    );
    hd.mem(
        Phase::Backward,
        TpSplit::Vocab,
        KernelClass::Reduce,
        "cross_entropy.grad",
        (t * v * 10) as f64,
        (t * v * 3) as f64,
    );
    hd.linear(Phase::Backward, TpSplit::Vocab, "lm_head", t, v, h);
    hd.mem(
        Phase::Backward,
        TpSplit::Sequence,
        KernelClass::Norm,
        "norm.grad",
        (t * h * 14) as f64,
        (t * h * 8) as f64,
    );
    let head_params = if gpt { 2 * h } else { v * h + h };
    blocks.push(BlockProfile {
        kind: BlockKind::Head,
        ops: hd.ops,
        params: head_params,
        tp_sharded_params: if gpt { 0 } else { v * h },
        expert_params: 0,
        saved: ActivationBytes {
            tp_sharded: (t * v * 4) as f64,
            tp_replicated: (t * h * 6) as f64,
        },
        transient: ActivationBytes {
            tp_sharded: (t * v * 6) as f64,
            tp_replicated: 0.0,
        },
        boundary_bytes: 0.0,
    });
    let total: u64 = blocks.iter().map(|b| b.params).sum();
    let optimizer = vec![OpCost {
        class: KernelClass::Optimizer,
        flops: 12.0 * total as f64,
        bytes: 28.0 * total as f64,
        phase: Phase::Optimizer,
        layer: None,
        split: TpSplit::Replicated,
        label: "adamw".into(),
        role: Role::Plain,
    }];
    StepProfile {
        micro_batch: b,
        seq: s,
        blocks,
        optimizer,
        static_bytes_per_param: 16.0,
        low_prec_param_bytes_per_param: if half { 2.0 } else { 0.0 },
        optimizer_bytes_per_param: if half { 12.0 } else { 8.0 },
        grad_bytes_per_param: if half { 2.0 } else { 4.0 },
        loss: Default::default(),
        fingerprint: Default::default(),
    }
}
