//! Training options: precision policy, optimizer, recomputation policy, hyper-parameters.

use crate::dtype::DType;
use crate::error::IrError;
use std::fmt;
use std::str::FromStr;

/// Which dtypes weights, gradients, optimizer state and compute use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PrecisionPolicy {
    /// fp32 master weights, gradients and optimizer state; bf16 compute (autocast-style casts).
    #[default]
    AmpBf16,
    /// bf16 weights, gradients and compute; fp32 optimizer moments.
    Bf16,
    /// Everything fp32.
    Fp32,
}

impl PrecisionPolicy {
    /// Dtype of the stored weights (and their gradients).
    pub fn weight_dtype(self) -> DType {
        match self {
            PrecisionPolicy::Bf16 => DType::BF16,
            _ => DType::F32,
        }
    }
    /// Dtype of matmul/attention compute.
    pub fn compute_dtype(self) -> DType {
        match self {
            PrecisionPolicy::Fp32 => DType::F32,
            _ => DType::BF16,
        }
    }
}

/// The optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// AdamW (two fp32 moments per parameter).
    #[default]
    AdamW,
    /// SGD with momentum (one fp32 buffer per parameter).
    Sgd,
}

/// What the backward pass recomputes instead of keeping: the one recomputation vocabulary of the
/// workspace (`moai_costmodel::Recompute` is this type). Serialized as `"none"`, `"selective"`,
/// `"selective-op"` or `"full"`; parsed from those names case-insensitively, with `false`/`true` for
/// none/full.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RecomputePolicy {
    /// Keep every activation backward needs.
    #[default]
    None,
    /// Recompute the attention core (Megatron's selective recomputation): only attention's inputs are
    /// kept; its output and statistics are recomputed in backward.
    Selective,
    /// torchtitan's per-op selective activation checkpointing (`[activation_checkpoint] mode =
    /// "selective"`, `selective_ac_option = "op"`): each decoder layer is checkpointed under a policy
    /// that saves the outputs of attention and of every odd-numbered linear (matmul) of the layer in
    /// forward order (1st, 3rd, ...) and of reduce-scatters, and recomputes everything else — every
    /// second linear, norms, rotary, activations — in backward (torchtitan `apply_ac`, `_save_list`
    /// and `_custom_policy`: "Saves output of all compute ops, except every second mm").
    #[serde(rename = "selective-op")]
    SelectiveOp,
    /// Keep only each decoder layer's inputs; rerun the layer's forward in backward.
    Full,
}

/// Options of the training step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrainOptions {
    /// Precision policy.
    pub precision: PrecisionPolicy,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Recomputation policy.
    pub recompute: RecomputePolicy,
    /// Under `amp-bf16`: the step computes on bf16 copies of the fp32 master weights, as the
    /// training engines run mixed precision (Megatron-LM's `Float16Module`, DeepSpeed's bf16
    /// weights, FSDP's `param_dtype`), so every op reads a weight's bf16 copy and the activations,
    /// the residual stream and the checkpointed layer inputs are bf16. `false` (the default) is
    /// eager PyTorch's `torch.autocast` over fp32 weights: only matmuls and attention compute in
    /// bf16, the embedding, norms and residual stream stay fp32. Other policies ignore it.
    pub bf16_weight_copies: bool,
}

impl TrainOptions {
    /// Whether the step reads bf16 copies of fp32 weights ([`TrainOptions::bf16_weight_copies`]
    /// under `amp-bf16`).
    pub fn reads_weight_copies(&self) -> bool {
        self.bf16_weight_copies && self.precision == PrecisionPolicy::AmpBf16
    }

    /// Dtype of the weights the forward's ops read: the bf16 copies where the step reads them, else
    /// the stored weights.
    pub fn read_weight_dtype(&self) -> DType {
        if self.reads_weight_copies() {
            self.precision.compute_dtype()
        } else {
            self.precision.weight_dtype()
        }
    }
}

/// Optimizer hyper-parameters (PyTorch defaults, `step` 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Learning rate.
    pub lr: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// 1-based step for AdamW bias correction.
    pub step: u64,
}

impl Default for Hyper {
    fn default() -> Hyper {
        Hyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.9,
            step: 1,
        }
    }
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:path => $s:literal),+) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $s),+ })
            }
        }
        impl FromStr for $t {
            type Err = IrError;
            fn from_str(s: &str) -> Result<$t, IrError> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(IrError::Analysis(format!(
                        concat!("unknown ", $what, " `{}` (expected one of: {})"),
                        s,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

names!(PrecisionPolicy, "precision", PrecisionPolicy::AmpBf16 => "amp-bf16", PrecisionPolicy::Bf16 => "bf16", PrecisionPolicy::Fp32 => "fp32");
names!(OptimizerKind, "optimizer", OptimizerKind::AdamW => "adamw", OptimizerKind::Sgd => "sgd");

impl fmt::Display for RecomputePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecomputePolicy::None => "none",
            RecomputePolicy::Selective => "selective",
            RecomputePolicy::SelectiveOp => "selective-op",
            RecomputePolicy::Full => "full",
        })
    }
}

impl FromStr for RecomputePolicy {
    type Err = IrError;
    fn from_str(s: &str) -> Result<RecomputePolicy, IrError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "false" => Ok(RecomputePolicy::None),
            "selective" => Ok(RecomputePolicy::Selective),
            "selective-op" => Ok(RecomputePolicy::SelectiveOp),
            "full" | "true" => Ok(RecomputePolicy::Full),
            _ => Err(IrError::Analysis(format!(
                "unknown recompute `{s}` (expected none, selective, selective-op or full)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_round_trip() {
        for p in [
            PrecisionPolicy::AmpBf16,
            PrecisionPolicy::Bf16,
            PrecisionPolicy::Fp32,
        ] {
            assert_eq!(p.to_string().parse::<PrecisionPolicy>().unwrap(), p);
        }
        assert_eq!("sgd".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
        assert_eq!(
            "full".parse::<RecomputePolicy>().unwrap(),
            RecomputePolicy::Full
        );
        assert_eq!(
            " True".parse::<RecomputePolicy>().unwrap(),
            RecomputePolicy::Full
        );
        assert_eq!(
            serde_json::to_string(&RecomputePolicy::Selective).unwrap(),
            "\"selective\""
        );
        assert_eq!(
            serde_json::to_string(&RecomputePolicy::SelectiveOp).unwrap(),
            "\"selective-op\""
        );
        assert_eq!(
            "Selective-Op".parse::<RecomputePolicy>().unwrap(),
            RecomputePolicy::SelectiveOp
        );
        assert_eq!(
            serde_json::from_str::<RecomputePolicy>("\"none\"").unwrap(),
            RecomputePolicy::None
        );
        let e = "sometimes"
            .parse::<RecomputePolicy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("selective"), "{e}");
        let e = "fp16".parse::<PrecisionPolicy>().unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("amp-bf16"), "{e}");
    }
}
