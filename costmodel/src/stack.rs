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
