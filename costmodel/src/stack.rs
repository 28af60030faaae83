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
    /// torchtitan (FSDP2 / HSDP, tensor and pipeline parallelism of `torch.distributed`), launched
    /// with torchrun from a JobConfig TOML. Costed as [`Stack::Fsdp`] ([`Stack::costed_as`]): the
    /// FSDP stack's truth rows are torchtitan runs, so they share one set of fitted coefficients.
    Torchtitan,
    /// Eager PyTorch / Hugging Face Trainer-style loop on one device or plain DDP.
    Eager,
}

impl Stack {
    /// Every stack with its own coefficients, in a fixed order (torchtitan is costed as FSDP).
    pub const ALL: [Stack; 4] = [Stack::Megatron, Stack::Deepspeed, Stack::Fsdp, Stack::Eager];

    /// Every stack a configuration can name, in a fixed order.
    pub const NAMED: [Stack; 5] = [
        Stack::Megatron,
        Stack::Deepspeed,
        Stack::Fsdp,
        Stack::Torchtitan,
        Stack::Eager,
    ];

    /// The stack whose mechanisms and fitted coefficients the cost model applies: torchtitan runs
    /// the same eager modules under FSDP2 as the FSDP stack, and the FSDP stack's truth rows are
    /// torchtitan measurements (`costmodel/data/truth/torchtitan.jsonl`), so it is costed as FSDP;
    /// every other stack as itself.
    pub fn costed_as(self) -> Stack {
        match self {
            Stack::Torchtitan => Stack::Fsdp,
            s => s,
        }
    }

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Megatron => "megatron",
            Stack::Deepspeed => "deepspeed",
            Stack::Fsdp => "fsdp",
            Stack::Torchtitan => "torchtitan",
            Stack::Eager => "eager",
        }
    }
}

impl Stack {
    /// Speed of the stack's fused attention kernel on `gpu` relative to the FlashAttention-2
    /// kernels the device's fitted attention coefficient describes (a divisor of attention time).
    /// Eager PyTorch calls `scaled_dot_product_attention`, whose backend order puts cuDNN's
    /// attention first on Hopper (compute capability 9.0) when the runtime cuDNN is newer than
    /// 9.15 (`check_prefer_cudnn_attention`, pytorch/pytorch
    /// `aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`, commit 001f694a); on Hopper
    /// cuDNN's kernels are 1.7–2.3× faster than FlashAttention-2 for training shapes
    /// (huggingface/transformers pull request 48163), 2 taken here. Assumed: the eager recipe's
    /// PyTorch ships such a cuDNN. 1 everywhere else (torchtitan's H100 measurements predate the
    /// preference; the other stacks call FlashAttention or Transformer Engine's kernels).
    pub fn attention_speedup(self, gpu: crate::Gpu) -> f64 {
        match (self, gpu) {
            (Stack::Eager, crate::Gpu::H100 | crate::Gpu::H200) => 2.0,
            _ => 1.0,
        }
    }

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
            Stack::Fsdp | Stack::Torchtitan | Stack::Eager => (1.0, 1.0),
        }
    }

    /// Fraction of tensor-parallel collective time hidden behind GEMMs. Megatron-Core with Transformer
    /// Engine overlaps the sequence-parallel all-gather / reduce-scatter with the adjacent GEMMs
    /// (`--tp-comm-overlap`, userbuffers), which needs sequence parallelism; assumed to hide half.
    /// With the switch off (`switch`, the configuration's `tp_comm_overlap`), without sequence
    /// parallelism, and on the other stacks (torchtitan's async TP needs `torch.compile`, which the
    /// export leaves off), TP collectives are on the critical path.
    pub fn tp_comm_overlap(self, sequence_parallel: bool, switch: bool) -> f64 {
        match self {
            Stack::Megatron if sequence_parallel && switch => 0.5,
            _ => 0.0,
        }
    }

    /// SMs Transformer Engine's TP communication overlap (Megatron `--tp-comm-overlap`) reserves for
    /// communication while the GEMM beside it runs on the rest: `initialize_ub`'s default config gives
    /// the `pipeline` (forward reduce-scatter: proj_fprop, fc2_fprop) and `bulk` (backward:
    /// qkv/fc1 dgrad and wgrad) methods `num_sm = 16` with `set_sm_margin = True`, the
    /// `ring_exchange` all-gathers 1 SM on copy engines (TransformerEngine
    /// `transformer_engine/pytorch/module/base.py`, `get_default_config`, commit d0067d0). 16 when
    /// the overlap is on ([`Stack::tp_comm_overlap`] > 0), else 0.
    pub fn tp_overlap_sm_margin(self, sequence_parallel: bool, switch: bool) -> u32 {
        if self.tp_comm_overlap(sequence_parallel, switch) > 0.0 {
            16
        } else {
            0
        }
    }

    /// Communication buffers of shape `[seq · micro-batch / cp, hidden]` in bf16 (2 bytes an element,
    /// `initialize_ub`'s default `dtype=torch.bfloat16`, which Megatron-LM does not override) that Transformer
    /// Engine's TP overlap allocates per rank (`initialize_ub`: one userbuffer per overlapped GEMM
    /// of the `ring_exchange`, `pipeline` and `bulk` methods — qkv_fprop, fc1_fprop, proj_dgrad,
    /// fc2_dgrad, proj_fprop, fc2_fprop, qkv_dgrad, qkv_wgrad, fc1_dgrad, fc1_wgrad — the `external`
    /// wgrads reuse their dgrad's), with Megatron-LM passing that shape
    /// (`megatron/training/initialize.py` `_initialize_tp_communicators`). 10 when the overlap is on,
    /// else 0.
    pub fn tp_overlap_buffers(self, sequence_parallel: bool, switch: bool) -> f64 {
        if self.tp_comm_overlap(sequence_parallel, switch) > 0.0 {
            10.0
        } else {
            0.0
        }
    }

    /// Whether the data-parallel gradient reduction overlaps with backward: Megatron with
    /// `--overlap-grad-reduce` and DeepSpeed with `overlap_comm` (the configuration's flag); DDP
    /// buckets and FSDP's / torchtitan's per-unit reduce-scatter always do.
    pub fn overlaps_grad_reduce(self, flag: bool) -> bool {
        match self {
            Stack::Megatron | Stack::Deepspeed => flag,
            _ => true,
        }
    }

    /// Whether ZeRO-3 / FSDP parameter all-gathers are prefetched under the previous layer's compute
    /// (FSDP forward/backward prefetch, DeepSpeed's prefetch bucket, Megatron-Core's FSDP with
    /// `--overlap-param-gather`); `flag` is the configuration's `overlap_param_gather`, honoured
    /// where the engine has the switch (Megatron-LM, DeepSpeed). Eager PyTorch has no sharded
    /// parameters to prefetch, so its gathers are serial.
    pub fn prefetches_params(self, flag: bool) -> bool {
        match self {
            Stack::Eager => false,
            Stack::Megatron | Stack::Deepspeed => flag,
            Stack::Fsdp | Stack::Torchtitan => true,
        }
    }

    /// Whether the distributed optimizer's all-gather of the updated weights (ZeRO-1) overlaps with
    /// the next step's forward compute: Megatron-LM with `--overlap-param-gather` (`flag`), modelled
    /// as hidden like the gradient reduce-scatter it follows; DeepSpeed's ZeRO-1/2 gathers after the
    /// step as the same bucketed collective. Off, the gather is exposed in full.
    pub fn overlaps_zero1_gather(self, flag: bool) -> bool {
        match self {
            Stack::Megatron => flag,
            _ => true,
        }
    }

    /// Whether the engine has a switch for this overlap (so a plan may turn it off and the export
    /// says so): Megatron-LM has all three (`--overlap-grad-reduce`, `--overlap-param-gather`,
    /// `--tp-comm-overlap`); DeepSpeed has `overlap_comm` (gradient reduce) and, for ZeRO-3,
    /// `stage3_prefetch_bucket_size` (0 disables the parameter prefetch); FSDP and torchtitan always
    /// overlap both and have no TP overlap moai costs; eager PyTorch has none.
    pub fn has_overlap_switch(self, switch: OverlapSwitch) -> bool {
        matches!(
            (self, switch),
            (Stack::Megatron, _)
                | (
                    Stack::Deepspeed,
                    OverlapSwitch::GradReduce | OverlapSwitch::ParamGather
                )
        )
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
        Stack::NAMED
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                CostError::InvalidConfig(format!(
                    "unknown stack `{s}` (expected megatron, deepspeed, fsdp, torchtitan or eager)"
                ))
            })
    }
}

/// One overlap switch of a plan (a dimension of the search where the engine has it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OverlapSwitch {
    /// The data-parallel gradient reduction under backward (`overlap_grad_reduce`).
    GradReduce,
    /// Parameter all-gathers under compute (`overlap_param_gather`).
    ParamGather,
    /// Tensor-parallel collectives under the adjacent GEMMs (`tp_comm_overlap`).
    TpComm,
}

impl OverlapSwitch {
    /// Every switch, in a fixed order.
    pub const ALL: [OverlapSwitch; 3] = [
        OverlapSwitch::GradReduce,
        OverlapSwitch::ParamGather,
        OverlapSwitch::TpComm,
    ];

    /// The name on the command line (`--overlap grad-reduce=off`).
    pub fn name(self) -> &'static str {
        match self {
            OverlapSwitch::GradReduce => "grad-reduce",
            OverlapSwitch::ParamGather => "param-gather",
            OverlapSwitch::TpComm => "tp-comm",
        }
    }

    /// The switch's value in a configuration.
    pub fn get(self, cfg: &crate::ParallelConfig) -> bool {
        match self {
            OverlapSwitch::GradReduce => cfg.overlap_grad_reduce,
            OverlapSwitch::ParamGather => cfg.overlap_param_gather,
            OverlapSwitch::TpComm => cfg.tp_comm_overlap,
        }
    }

    /// Sets the switch in a configuration.
    pub fn set(self, cfg: &mut crate::ParallelConfig, on: bool) {
        match self {
            OverlapSwitch::GradReduce => cfg.overlap_grad_reduce = on,
            OverlapSwitch::ParamGather => cfg.overlap_param_gather = on,
            OverlapSwitch::TpComm => cfg.tp_comm_overlap = on,
        }
    }
}

impl fmt::Display for OverlapSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OverlapSwitch {
    type Err = CostError;
    fn from_str(s: &str) -> Result<OverlapSwitch> {
        let t = s.trim().to_ascii_lowercase();
        OverlapSwitch::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                CostError::InvalidConfig(format!(
                    "unknown overlap switch `{s}` (expected grad-reduce, param-gather or tp-comm)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eager_attention_on_hopper_is_cudnn() {
        assert_eq!(Stack::Eager.attention_speedup(crate::Gpu::H100), 2.0);
        assert_eq!(Stack::Eager.attention_speedup(crate::Gpu::A100), 1.0);
        assert_eq!(Stack::Fsdp.attention_speedup(crate::Gpu::H100), 1.0);
        assert_eq!(Stack::Megatron.attention_speedup(crate::Gpu::H100), 1.0);
    }

    #[test]
    fn names_round_trip() {
        for s in Stack::NAMED {
            assert_eq!(s.name().parse::<Stack>().unwrap(), s);
        }
        assert!("torch".parse::<Stack>().is_err());
        for o in OverlapSwitch::ALL {
            assert_eq!(o.name().parse::<OverlapSwitch>().unwrap(), o);
        }
        assert!("dp".parse::<OverlapSwitch>().is_err());
    }

    #[test]
    fn switches_only_change_what_the_engine_has() {
        // Off where the engine has the switch: nothing hidden; elsewhere the engine's own behaviour.
        assert_eq!(Stack::Megatron.tp_comm_overlap(true, true), 0.5);
        assert_eq!(Stack::Megatron.tp_comm_overlap(true, false), 0.0);
        assert!(!Stack::Deepspeed.overlaps_grad_reduce(false));
        assert!(Stack::Fsdp.overlaps_grad_reduce(false));
        assert!(!Stack::Megatron.prefetches_params(false));
        assert!(Stack::Torchtitan.prefetches_params(false));
        for st in Stack::NAMED {
            for o in OverlapSwitch::ALL {
                if !st.has_overlap_switch(o) {
                    let mut on = crate::ParallelConfig::default();
                    let mut off = on.clone();
                    on.stack = st;
                    off.stack = st;
                    o.set(&mut off, false);
                    assert!(!o.get(&off) && o.get(&on));
                    assert_eq!(
                        (
                            st.tp_comm_overlap(true, on.tp_comm_overlap),
                            st.overlaps_grad_reduce(on.overlap_grad_reduce),
                            st.prefetches_params(on.overlap_param_gather)
                        ),
                        (
                            st.tp_comm_overlap(true, off.tp_comm_overlap),
                            st.overlaps_grad_reduce(off.overlap_grad_reduce),
                            st.prefetches_params(off.overlap_param_gather)
                        ),
                        "{st} {o}"
                    );
                }
            }
        }
        assert_eq!(Stack::Torchtitan.costed_as(), Stack::Fsdp);
    }
}
