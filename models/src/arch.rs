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

    /// Total trainable parameters (a tied LM head counted once), as `torch.nn.Module.parameters()` counts
    /// them. Saturates at `u64::MAX` for configurations that [`ArchConfig::validate`] rejects.
    pub fn params(&self) -> u64 {
        self.checked_params().unwrap_or(u64::MAX)
    }

    fn checked_params(&self) -> Option<u64> {
        let h = self.hidden as u128;
        let v = self.vocab as u128;
        let f = self.ffn as u128;
        let q = (self.heads * self.head_dim) as u128;
        let kv = (self.kv_heads * self.head_dim) as u128;
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
            _ => {
                let b = |on: bool, n: u128| if on { n } else { 0 };
                let layer = 2 * h                          // two RMSNorm weights
                    + h * q + b(self.qkv_bias, q)          // q_proj
                    + 2 * (h * kv + b(self.qkv_bias, kv))  // k_proj, v_proj
                    + q * h + b(self.o_bias, h)            // o_proj
                    + 2 * (h * f + b(self.mlp_bias, f))    // gate_proj, up_proj
                    + f * h + b(self.mlp_bias, h); // down_proj
                v * h + self.layers as u128 * layer + h + head
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
