//! The software stack a plan runs on. The same GPU runs a Megatron-LM step (fused kernels, overlapped
//! communication) much closer to peak than an eager Hugging Face step, so the stack is an input of the
//! cost model, and the engine a plan is exported to is the stack it was costed for.

use crate::error::{CostError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The training software stack (the engine a plan is exported to and costed for).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// Megatron-LM (Megatron-Core): fused kernels, distributed optimizer, overlapped gradient reduce.
    #[default]
    Megatron,
    /// DeepSpeed (ZeRO stages 1-3) on PyTorch modules.
    Deepspeed,
    /// PyTorch FSDP launched with torchrun.
    Fsdp,
    /// Eager PyTorch / Hugging Face Trainer-style loop on one device or plain DDP.
    Eager,
}

impl Stack {
    /// Every stack, in a fixed order.
    pub const ALL: [Stack; 4] = [Stack::Megatron, Stack::Deepspeed, Stack::Fsdp, Stack::Eager];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Megatron => "megatron",
            Stack::Deepspeed => "deepspeed",
            Stack::Fsdp => "fsdp",
            Stack::Eager => "eager",
        }
    }
}

impl Stack {
    /// Kernel fusion of memory-bound ops (norms, elementwise, softmax): the fractions of their bytes
    /// and kernels left after fusion. The bytes fraction is the prior of the fitted per-stack
    /// `fused_bytes` coefficient (eager stays at 1); the kernel fraction is used as is. Megatron-LM fuses bias+activation (bias-GeLU / SwiGLU),
    /// bias+dropout+residual-add, the norms (Apex / Transformer Engine) and masked softmax, leaving
    /// about half the traffic in about a third of the kernels; DeepSpeed's PyTorch modules use a few
    /// fused kernels; FSDP wraps eager modules and eager PyTorch runs every op as its own kernel
    /// (the training graph's op list is the eager one).
    pub fn fusion(self) -> (f64, f64) {
        match self {
            Stack::Megatron => (0.5, 0.35),
            Stack::Deepspeed => (0.85, 0.75),
            Stack::Fsdp | Stack::Eager => (1.0, 1.0),
        }
    }

    /// Fraction of tensor-parallel collective time hidden behind GEMMs. Megatron-Core with Transformer
    /// Engine overlaps the sequence-parallel all-gather / reduce-scatter with the adjacent GEMMs
    /// (`--tp-comm-overlap`, userbuffers), which needs sequence parallelism; assumed to hide half.
    /// Without sequence parallelism, and on the other stacks, TP collectives are on the critical path.
    pub fn tp_comm_overlap(self, sequence_parallel: bool) -> f64 {
        match self {
            Stack::Megatron if sequence_parallel => 0.5,
            _ => 0.0,
        }
    }

    /// Whether the data-parallel gradient reduction overlaps with backward: Megatron only with
    /// `--overlap-grad-reduce` (the configuration's flag); DDP buckets, DeepSpeed `overlap_comm` and
    /// FSDP's per-unit reduce-scatter always do.
    pub fn overlaps_grad_reduce(self, flag: bool) -> bool {
        match self {
            Stack::Megatron => flag,
            _ => true,
        }
    }

    /// Whether ZeRO-3 / FSDP parameter all-gathers are prefetched under the previous layer's compute
    /// (FSDP forward/backward prefetch, DeepSpeed's prefetch bucket, Megatron-Core's FSDP); eager
    /// PyTorch has no sharded parameters to prefetch, so its gathers are serial.
    pub fn prefetches_params(self) -> bool {
        !matches!(self, Stack::Eager)
    }

    /// Whether the optimizer step is a fused multi-tensor kernel (Megatron/DeepSpeed FusedAdam, torch
    /// AdamW `fused=True`/`foreach`); every stack moai exports to uses one.
    pub fn fused_optimizer(self) -> bool {
        true
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stack {
    type Err = CostError;
    fn from_str(s: &str) -> Result<Stack> {
        let t = s.trim().to_ascii_lowercase();
        Stack::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                CostError::InvalidConfig(format!(
                    "unknown stack `{s}` (expected megatron, deepspeed, fsdp or eager)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Stack::ALL {
            assert_eq!(s.name().parse::<Stack>().unwrap(), s);
        }
        assert!("torch".parse::<Stack>().is_err());
    }
}
