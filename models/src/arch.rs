//! The architecture description every front end (spec string, Hugging Face config) produces, its
//! validation and its closed-form parameter count.

use crate::error::ErrorKind;
use moai_ir::DType;

/// Largest accepted layer count (the largest public decoders have about 130).
pub const MAX_LAYERS: usize = 4096;
/// Largest accepted size of any other dimension (hidden, ffn, vocab, heads, positions): 2^24.
pub const MAX_DIM: usize = 1 << 24;
/// Largest accepted parameter count, 2^50 (about 10^15; byte sizes then stay far inside 64 bits).
pub const MAX_PARAMS: u64 = 1 << 50;

/// The architecture family, which fixes the layer structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Llama: RMSNorm, rotary, SwiGLU MLP, no biases.
    Llama,
    /// Mistral: Llama with grouped KV heads and a sliding attention window (recorded only).
    Mistral,
    /// Qwen2: Llama with biases on the q/k/v projections.
    Qwen2,
    /// GPT-2 / GPT-3: learned positions, LayerNorm, biased linears, fused qkv, GELU (tanh) MLP.
    Gpt,
}

impl Family {
    /// True for the rotary/RMSNorm/SwiGLU families.
    pub fn is_llama_like(self) -> bool {
        !matches!(self, Family::Gpt)
    }

    /// Lowercase family name as spec strings write it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gpt => "gpt",
        }
    }
}

/// Everything that determines a decoder's graph. Built by [`crate::from_spec`] and
/// [`crate::from_hf_config_str`] (through [`ArchConfig::from_spec`] / [`ArchConfig::from_hf_config_str`]);
/// construct it directly for programmatic use and call [`ArchConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ArchConfig {
    /// Model name (graph name).
    pub name: String,
    /// Family.
    pub family: Family,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden (model) width.
    pub hidden: usize,
    /// Attention (query) heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Per-head width (usually `hidden / heads`).
    pub head_dim: usize,
    /// MLP inner width.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Maximum positions: the learned position table's rows for GPT, recorded only for rotary families.
    pub max_pos: usize,
    /// LM head shares the token embedding table.
    pub tied: bool,
    /// Normalization epsilon.
    pub eps: f64,
    /// Biases on the q/k/v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Rotary base frequency (rotary families).
    pub rope_theta: f64,
    /// Sliding attention window (Mistral); recorded, attention stays fully causal in the graph and its cost.
    pub sliding_window: Option<usize>,
    /// Parameter and activation element type.
    pub dtype: DType,
    /// RMSNorm of each query and key head before rotary (Qwen3's `q_norm`/`k_norm`, weights
    /// `[head_dim]`).
    pub qk_norm: bool,
    /// Mixture-of-experts MLPs (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek); `None` for dense models.
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention (DeepSeek-V2/V3); `None` for standard grouped-KV attention.
    pub mla: Option<MlaConfig>,
    /// Scaled rotary positions (the config's `rope_scaling`); `None`: plain rotary (`rope_theta`).
    /// Changes the rotary frequencies (and, for YaRN, the softmax scale), not shapes or FLOPs: carried
    /// to the exports, which must reproduce it or refuse.
    pub rope_scaling: Option<RopeScaling>,
}

/// A config's rotary-position scaling (`rope_scaling`), with the `transformers` defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.x (`rope_type: llama3`): frequencies whose wavelength exceeds
    /// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those below
    /// `original_max_position_embeddings / high_freq_factor` are kept, and those between interpolated.
    Llama3 {
        /// `factor` (Llama 3.1: 8; Llama 3.2: 32).
        factor: f64,
        /// `low_freq_factor` (Llama 3.1: 1).
        low_freq_factor: f64,
        /// `high_freq_factor` (Llama 3.1: 4).
        high_freq_factor: f64,
        /// `original_max_position_embeddings` (Llama 3.1: 8192).
        original_max_position_embeddings: usize,
    },
    /// YaRN as DeepSeek-V2/V3 configure it (`type: yarn`): frequencies interpolated by `factor`
    /// outside the `beta_fast`..`beta_slow` correction range, the rotary cos/sin scaled by
    /// `mscale(factor, mscale) / mscale(factor, mscale_all_dim)` and the softmax scale by
    /// `mscale(factor, mscale_all_dim)²`, with `mscale(s, m) = 0.1 · m · ln(s) + 1`. Defaults as in
    /// DeepSeek's `DeepseekV3YarnRotaryEmbedding` (4096, 32, 1, 1, 0).
    Yarn {
        /// `factor` (DeepSeek-V2/V3: 40).
        factor: f64,
        /// `original_max_position_embeddings` (4096).
        original_max_position_embeddings: usize,
        /// `beta_fast` (32).
        beta_fast: f64,
        /// `beta_slow` (1).
        beta_slow: f64,
        /// `mscale` (DeepSeek-V3: 1.0; V2: 0.707).
        mscale: f64,
        /// `mscale_all_dim` (DeepSeek-V3: 1.0; V2: 0.707).
        mscale_all_dim: f64,
    },
}

impl RopeScaling {
    /// The `rope_type` name `transformers` gives the scaling (`llama3`, `yarn`).
    pub fn kind(&self) -> &'static str {
        match self {
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }
}

/// How a mixture-of-experts router scores experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouterScore {
    /// Softmax over the experts' logits (Mixtral, Qwen2-MoE, DeepSeek-V2).
    Softmax,
    /// Independent sigmoids (DeepSeek-V3).
    Sigmoid,
}

/// The mixture-of-experts part of a decoder: which layers route tokens to experts and how wide those
/// experts are. Every expert is a SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`, no biases).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer (`num_local_experts`, `num_experts`, `n_routed_experts`).
    pub experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub topk: usize,
    /// Inner width of one routed expert (`moe_intermediate_size`; Mixtral: `intermediate_size`).
    pub expert_ffn: usize,
    /// Inner width of the always-active shared expert MLP, 0 for none (Qwen2-MoE:
    /// `shared_expert_intermediate_size`; DeepSeek: `n_shared_experts · moe_intermediate_size`).
    pub shared_ffn: usize,
    /// A sigmoid gate `hidden → 1` scales the shared expert's output (Qwen2-MoE's `shared_expert_gate`).
    pub shared_gate: bool,
    /// The router has a per-expert score-correction bias (DeepSeek-V3's `e_score_correction_bias`).
    pub router_bias: bool,
    /// Router scoring function.
    pub score: RouterScore,
    /// Routing weights renormalized over the chosen top-k (`norm_topk_prob`).
    pub norm_topk: bool,
    /// Expert capacity factor ≥ 1: each expert's GEMM is sized for `tokens · topk / experts ·
    /// capacity_factor` tokens (1.0: the balanced average). No token is dropped; the factor pads the
    /// expert GEMMs in the cost, not the values.
    pub capacity_factor: f64,
    /// Layers that keep a dense MLP of width [`ArchConfig::ffn`], sorted (DeepSeek's
    /// `first_k_dense_replace`, Qwen2-MoE's `mlp_only_layers` and `decoder_sparse_step`).
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    /// True when decoder layer `layer` has a mixture-of-experts MLP.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.dense_layers.binary_search(&layer).is_err()
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3): queries and keys/values pass through low-rank
/// projections; each head's query/key has a non-rotary part and a rotary part (the rotary key is shared
/// by all heads); values have their own width. [`ArchConfig::head_dim`] is
/// `qk_nope_head_dim + qk_rope_head_dim` and [`ArchConfig::kv_heads`] equals the heads.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Query compression rank (`q_lora_rank`); `None`: a plain `q_proj` (DeepSeek-V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// Key/value compression rank (`kv_lora_rank`).
    pub kv_lora_rank: usize,
    /// Non-rotary query/key width per head (`qk_nope_head_dim`).
    pub qk_nope_head_dim: usize,
    /// Rotary query/key width per head (`qk_rope_head_dim`).
    pub qk_rope_head_dim: usize,
    /// Value width per head (`v_head_dim`).
    pub v_head_dim: usize,
}

impl ArchConfig {
    /// The Llama rule for the MLP width when none is given: `2/3 · 4 · hidden`, rounded up to a multiple
    /// of 256 (Meta's `multiple_of`), e.g. 4096 → 11008, 5120 → 13824.
    pub fn llama_default_ffn(hidden: usize) -> usize {
        let h = (2 * 4 * hidden) / 3;
        h.div_ceil(256) * 256
    }

    /// Checks ranges and divisibility; the error says what is inconsistent.
    pub fn validate(&self) -> Result<(), ErrorKind> {
        let positive = [
            ("layers", self.layers, MAX_LAYERS),
            ("hidden", self.hidden, MAX_DIM),
            ("heads", self.heads, MAX_DIM),
            ("kv_heads", self.kv_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("ffn", self.ffn, MAX_DIM),
            ("vocab", self.vocab, MAX_DIM),
            ("max_pos", self.max_pos, MAX_DIM),
        ];
        for (key, v, max) in positive {
            if v == 0 || v > max {
                return Err(ErrorKind::BadValue {
                    key: key.into(),
                    value: v.to_string(),
                    expected: format!("an integer in 1..={max}"),
                });
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(ErrorKind::Inconsistent(format!(
                "kv_heads {} does not divide heads {}",
                self.kv_heads, self.heads
            )));
        }
        if self.family.is_llama_like() && !self.head_dim.is_multiple_of(2) {
            return Err(ErrorKind::Inconsistent(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if self.family == Family::Gpt {
            if !self.hidden.is_multiple_of(self.heads) {
                return Err(ErrorKind::Inconsistent(format!(
                    "heads {} does not divide hidden {}",
                    self.heads, self.hidden
                )));
            }
            if self.head_dim * self.heads != self.hidden || self.kv_heads != self.heads {
                return Err(ErrorKind::Inconsistent(
                    "gpt attention has head_dim = hidden / heads and kv_heads = heads".into(),
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ErrorKind::BadValue {
                key: "eps".into(),
                value: self.eps.to_string(),
                expected: "a positive finite number".into(),
            });
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ErrorKind::BadValue {
                key: "rope_theta".into(),
                value: self.rope_theta.to_string(),
                expected: "a positive finite number".into(),
            });
        }
        if let Some(0) = self.sliding_window {
            return Err(ErrorKind::BadValue {
                key: "sliding_window".into(),
                value: "0".into(),
                expected: "a positive integer".into(),
            });
        }
        if self.name.is_empty() {
            return Err(ErrorKind::BadValue {
                key: "name".into(),
                value: String::new(),
                expected: "non-empty".into(),
            });
        }
        if let Some(m) = &self.moe {
            self.validate_moe(m)?;
        }
        if self.qk_norm && !self.family.is_llama_like() {
            return Err(ErrorKind::Inconsistent(
                "query/key norms are modeled for the rotary families only".into(),
            ));
        }
        if let Some(m) = &self.mla {
            self.validate_mla(m)?;
        }
        // Every tensor's byte size must fit the IR's i64 dims: bound the total.
        match self.checked_params() {
            Some(n) if n <= MAX_PARAMS => {}
            n => {
                let n = n.map_or("more than 2^63".to_string(), |n| n.to_string());
                return Err(ErrorKind::Inconsistent(format!(
                    "{n} parameters exceed the limit of 2^50"
                )));
            }
        }
        Ok(())
    }

    fn validate_moe(&self, m: &MoeConfig) -> Result<(), ErrorKind> {
        let sizes = [
            ("experts", m.experts, 1, MAX_DIM),
            ("topk", m.topk, 1, m.experts),
            ("expert_ffn", m.expert_ffn, 1, MAX_DIM),
            ("shared_ffn", m.shared_ffn, 0, MAX_DIM),
        ];
        for (key, v, lo, hi) in sizes {
            if v < lo || v > hi {
                return Err(ErrorKind::BadValue {
                    key: key.into(),
                    value: v.to_string(),
                    expected: format!("an integer in {lo}..={hi}"),
                });
            }
        }
        if !(m.capacity_factor.is_finite() && (1.0..=1e3).contains(&m.capacity_factor)) {
            return Err(ErrorKind::BadValue {
                key: "capacity_factor".into(),
                value: m.capacity_factor.to_string(),
                expected: "a number in [1, 1000] (no token is dropped)".into(),
            });
        }
        if !self.family.is_llama_like() {
            return Err(ErrorKind::Inconsistent(
                "mixture-of-experts layers are modeled for the rotary (llama-like) families only"
                    .into(),
            ));
        }
        if m.dense_layers.windows(2).any(|w| w[0] >= w[1])
            || m.dense_layers.last().is_some_and(|l| *l >= self.layers)
        {
            return Err(ErrorKind::Inconsistent(format!(
                "dense layers {:?} must be sorted, distinct and below the {} layers",
                m.dense_layers, self.layers
            )));
        }
        Ok(())
    }

    fn validate_mla(&self, m: &MlaConfig) -> Result<(), ErrorKind> {
        let sizes = [
            ("q_lora_rank", m.q_lora_rank.unwrap_or(1)),
            ("kv_lora_rank", m.kv_lora_rank),
            ("qk_nope_head_dim", m.qk_nope_head_dim),
            ("qk_rope_head_dim", m.qk_rope_head_dim),
            ("v_head_dim", m.v_head_dim),
        ];
        for (key, v) in sizes {
            if v == 0 || v > MAX_DIM {
                return Err(ErrorKind::BadValue {
                    key: key.into(),
                    value: v.to_string(),
                    expected: format!("an integer in 1..={MAX_DIM}"),
                });
            }
        }
        if !self.family.is_llama_like() || self.qkv_bias || self.qk_norm {
            return Err(ErrorKind::Inconsistent(
                "latent attention is modeled for the rotary families without q/k/v biases or norms"
                    .into(),
            ));
        }
        if !m.qk_rope_head_dim.is_multiple_of(2) {
            return Err(ErrorKind::Inconsistent(format!(
                "qk_rope_head_dim {} must be even for rotary embeddings",
                m.qk_rope_head_dim
            )));
        }
        if self.head_dim != m.qk_nope_head_dim + m.qk_rope_head_dim || self.kv_heads != self.heads {
            return Err(ErrorKind::Inconsistent(format!(
                "latent attention has head_dim = qk_nope_head_dim + qk_rope_head_dim ({}) and kv_heads = heads",
                m.qk_nope_head_dim + m.qk_rope_head_dim
            )));
        }
        if m.v_head_dim > self.head_dim {
            return Err(ErrorKind::Inconsistent(format!(
                "v_head_dim {} wider than the query/key head {} is not modeled (values are padded to the query/key width for the fused attention)",
                m.v_head_dim, self.head_dim
            )));
        }
        Ok(())
    }

    /// Total trainable parameters (a tied LM head counted once), as `torch.nn.Module.parameters()` counts
    /// them. Saturates at `u64::MAX` for configurations that [`ArchConfig::validate`] rejects.
    pub fn params(&self) -> u64 {
        self.checked_params().unwrap_or(u64::MAX)
    }

    fn checked_params(&self) -> Option<u64> {
        self.count_params(false)
    }

    /// Parameters that take part in one token's forward pass: everything except the routed experts a
    /// token is not sent to (so `topk` of the `experts` routed experts per MoE layer, the shared
    /// experts, the router, attention, norms, the embedding table and the LM head). Equal to
    /// [`ArchConfig::params`] for dense models. Saturates at `u64::MAX` like `params`.
    pub fn active_params(&self) -> u64 {
        self.count_params(true).unwrap_or(u64::MAX)
    }

    /// Parameters of decoder layer `layer` (attention, norms, MLP or MoE block); `active` counts only
    /// `topk` routed experts.
    fn layer_params(&self, layer: usize, active: bool) -> u128 {
        let h = self.hidden as u128;
        let f = self.ffn as u128;
        let q = (self.heads * self.head_dim) as u128;
        let kv = (self.kv_heads * self.head_dim) as u128;
        let b = |on: bool, n: u128| if on { n } else { 0 };
        let attn = match &self.mla {
            Some(m) => {
                let heads = self.heads as u128;
                let qk = (m.qk_nope_head_dim + m.qk_rope_head_dim) as u128;
                let (kvr, rope) = (m.kv_lora_rank as u128, m.qk_rope_head_dim as u128);
                let (nope, v) = (m.qk_nope_head_dim as u128, m.v_head_dim as u128);
                let q_part = match m.q_lora_rank {
                    // q_a_proj, q_a_layernorm, q_b_proj
                    Some(r) => h * r as u128 + r as u128 + r as u128 * heads * qk,
                    None => h * heads * qk,
                };
                q_part
                    + h * (kvr + rope)          // kv_a_proj_with_mqa
                    + kvr                       // kv_a_layernorm
                    + kvr * heads * (nope + v)  // kv_b_proj
                    + heads * v * h + b(self.o_bias, h) // o_proj
            }
            None => {
                h * q + b(self.qkv_bias, q)                // q_proj
                    + 2 * (h * kv + b(self.qkv_bias, kv))  // k_proj, v_proj
                    + q * h + b(self.o_bias, h)            // o_proj
                    + b(self.qk_norm, 2 * self.head_dim as u128) // q_norm, k_norm
            }
        };
        let swiglu = |w: u128, bias: bool| 2 * (h * w + b(bias, w)) + w * h + b(bias, h);
        let mlp = match &self.moe {
            Some(m) if m.is_moe_layer(layer) => {
                let routed = if active { m.topk } else { m.experts } as u128;
                let ef = m.expert_ffn as u128;
                h * m.experts as u128                       // router (mlp.gate)
                    + b(m.router_bias, m.experts as u128)   // e_score_correction_bias
                    + routed * swiglu(ef, false)
                    + swiglu(m.shared_ffn as u128, false)
                    + b(m.shared_gate, h) // shared_expert_gate
            }
            _ => swiglu(f, self.mlp_bias),
        };
        2 * h + attn + mlp // two RMSNorm weights
    }

    fn count_params(&self, active: bool) -> Option<u64> {
        let h = self.hidden as u128;
        let v = self.vocab as u128;
        let f = self.ffn as u128;
        let head = if self.tied { 0 } else { h * v };
        let total = match self.family {
            Family::Gpt => {
                let p = self.max_pos as u128;
                let layer = 2 * 2 * h          // ln_1, ln_2 (weight + bias)
                    + h * 3 * h + 3 * h        // c_attn
                    + h * h + h                // attn.c_proj
                    + h * f + f                // mlp.c_fc
                    + f * h + h; // mlp.c_proj
                v * h + p * h + self.layers as u128 * layer + 2 * h + head
            }
            _ if self.moe.is_none() && self.mla.is_none() => {
                // Every layer has the same structure: count one.
                v * h + self.layers as u128 * self.layer_params(0, active) + h + head
            }
            _ => {
                let layers: u128 = (0..self.layers).map(|l| self.layer_params(l, active)).sum();
                v * h + layers + h + head
            }
        };
        // Each tensor must also fit the IR's i64 element counts; the largest is at most the total.
        u64::try_from(total).ok().filter(|t| *t <= i64::MAX as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama7b() -> ArchConfig {
        ArchConfig {
            name: "llama2-7b".into(),
            family: Family::Llama,
            layers: 32,
            hidden: 4096,
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
            ffn: 11008,
            vocab: 32000,
            max_pos: 4096,
            tied: false,
            eps: 1e-5,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            rope_theta: 10000.0,
            sliding_window: None,
            dtype: DType::BF16,
            qk_norm: false,
            moe: None,
            mla: None,
            rope_scaling: None,
        }
    }

    #[test]
    fn llama_rule_matches_published_widths() {
        assert_eq!(ArchConfig::llama_default_ffn(4096), 11008);
        assert_eq!(ArchConfig::llama_default_ffn(5120), 13824);
        assert_eq!(ArchConfig::llama_default_ffn(1024), 2816);
    }

    #[test]
    fn llama2_7b_params_match_torch() {
        assert_eq!(llama7b().params(), 6_738_415_616);
    }

    #[test]
    fn validation_rejects_bad_grouping_and_odd_head_dim() {
        let mut c = llama7b();
        c.kv_heads = 5;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("does not divide heads")
        );
        let mut c = llama7b();
        c.head_dim = 127;
        assert!(c.validate().unwrap_err().to_string().contains("even"));
        let mut c = llama7b();
        c.layers = 0;
        assert!(c.validate().unwrap_err().to_string().contains("`layers`"));
    }
}
