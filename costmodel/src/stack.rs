//! The software stack a plan runs on. The same GPU runs a Megatron-LM step (fused kernels, overlapped
//! communication) much closer to peak than an eager Hugging Face step, so the stack is an input of the
//! cost model, and the engine a plan is exported to is the stack it was costed for.

use crate::device::{Family, Gpu};
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
    /// with torchrun from a JobConfig TOML. Costed as [`Stack::Fsdp`] ([`Stack::costed_as`]): both
    /// run PyTorch modules under FSDP, so they share the fitted launch and step overheads; without
    /// `torch.compile` torchtitan does not fuse memory-bound ops ([`Stack::fits_fusion`]).
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
    /// PyTorch modules under FSDP2 as the FSDP stack does, so it is costed as FSDP (sharing its
    /// fitted overheads; its fusion is its own, [`Stack::fused_bytes`]); every other stack as itself.
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
    /// Whether the memory-bound traffic of this stack follows the fitted `fused_bytes` of the stack
    /// it is costed as ([`Stack::costed_as`]). Not torchtitan: moai exports it with
    /// `[compile] enable = false`, and torchtitan's llama without `torch.compile` runs every norm,
    /// rotary, activation and residual op as its own eager kernel (torchtitan fuses them only through
    /// `torch.compile`), while the FSDP stack's fitted fraction comes from llm-foundry runs with
    /// their own fused kernels. Its fusable bytes stay whole, as eager PyTorch's.
    pub fn fits_fusion(self) -> bool {
        !matches!(self, Stack::Torchtitan)
    }

    /// The fraction of fusable bytes this stack leaves, given the fitted `fused_bytes` of the stack
    /// it is costed as: that value where [`Stack::fits_fusion`], else 1 (no fusion).
    pub fn fused_bytes(self, fitted: f64) -> f64 {
        if self.fits_fusion() { fitted } else { 1.0 }
    }

    /// Whether this stack runs Transformer Engine's fused CUDA kernels for the memory-bound ops on
    /// `gpu`: Megatron-LM (Megatron-Core with `--transformer-impl transformer_engine`) on Hopper and
    /// later NVIDIA GPUs, whose norms run inside `LayerNormLinear`/`LayerNormMLP` modules, with
    /// fused SwiGLU, RoPE and bias-dropout-add kernels: the same GPUs on which it runs Transformer
    /// Engine's Hopper attention ([`Stack::attention_kernel`]). Megatron-LM's other truth rows run
    /// the older TorchScript and Apex fusions (the 2021 A100 runs of SC21, Megatron-DeepSpeed on
    /// ROCm), which LUMI's measurements show leave almost all of the traffic: switching off the
    /// bias-GeLU, bias-dropout and layer-norm fusions each moved throughput by under 1.5%, only
    /// the masked-softmax fusion mattered (spyysalo/lumi-llm-scaling `README.md` "Impact of fused
    /// kernels" and `figures/kernels.png`, commit 7314958).
    pub fn runs_te_fused_kernels(self, gpu: Gpu) -> bool {
        self == Stack::Megatron && matches!(gpu.family(), Family::Hopper | Family::Blackwell)
    }

    /// Whether this stack's fp8 linear layers run as Transformer Engine modules: Megatron-LM, whose
    /// fp8 path is Transformer Engine's (`--fp8-format` with `--transformer-impl
    /// transformer_engine`, on NVIDIA and on ROCm's Transformer Engine port alike). Its module spec
    /// fuses a layer's projections of one input into one module (`linear_qkv`, `linear_fc1`: the
    /// linears of role [`moai_ir::cost::Role::SharedInputLinear`] join the module before them), and a
    /// module runs its scaling casts once ([`crate::precision::te_module_casts`]). The other stacks
    /// cast per linear layer (torchao's `Float8Linear` under FSDP and torchtitan).
    pub fn runs_te_modules(self) -> bool {
        matches!(self, Stack::Megatron)
    }

    /// Whether this stack runs PyTorch's ring attention (`torch.distributed.tensor.experimental.
    /// context_parallel`, which torchtitan and FSDP training scripts call) and so its fp32 merge
    /// traffic ([`crate::context::RingSteps`]) and its transfers (keys and values at the query heads'
    /// width, all-gathered once per pass; fp32 gradients after every step:
    /// [`crate::context::pytorch_ring`]); Megatron-LM runs Transformer Engine's ring, whose output
    /// corrections are not modelled.
    pub fn runs_pytorch_ring(self) -> bool {
        matches!(self, Stack::Fsdp | Stack::Torchtitan)
    }

    /// The fraction of fusable bytes this stack leaves on `gpu`, given the fitted coefficients of
    /// the stack it is costed as: where it runs Transformer Engine's fused kernels
    /// ([`Stack::runs_te_fused_kernels`]) the fraction fitted on those rows (`te_fitted`; the
    /// stack's prior [`Stack::fusion`] where none is fitted), else [`Stack::fused_bytes`] of the
    /// `fused_bytes` fitted on its other rows (the older TorchScript/Apex fusions). Decided once per
    /// estimate, by [`crate::efficiency::EfficiencyFile::costed`].
    pub fn fused_bytes_on(self, gpu: Gpu, fitted: f64, te_fitted: Option<f64>) -> f64 {
        if self.runs_te_fused_kernels(gpu) {
            te_fitted.unwrap_or(self.fusion().0)
        } else {
            self.fused_bytes(fitted)
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

    /// Whether tensor-parallel collectives run beside the GEMMs they feed or drain: Megatron-Core with
    /// Transformer Engine overlaps the sequence-parallel all-gathers and reduce-scatters with the
    /// adjacent GEMMs (`--tp-comm-overlap`, userbuffers), which needs sequence parallelism; how much
    /// of them that hides is [`crate::estimate::PhaseSums::exposed_tp_s`]. With the switch off
    /// (`switch`, the configuration's `tp_comm_overlap`), without sequence parallelism, and on the
    /// other stacks (torchtitan's async TP needs `torch.compile`, which the export leaves off), TP
    /// collectives are on the critical path.
    pub fn tp_comm_overlap(self, sequence_parallel: bool, switch: bool) -> bool {
        matches!(self, Stack::Megatron) && sequence_parallel && switch
    }

    /// SMs Transformer Engine's TP communication overlap (Megatron `--tp-comm-overlap`) reserves for
    /// communication while the GEMM beside it runs on the rest: `initialize_ub`'s default config gives
    /// the `pipeline` (forward reduce-scatter: proj_fprop, fc2_fprop) and `bulk` (backward:
    /// qkv/fc1 dgrad and wgrad) methods `num_sm = 16` with `set_sm_margin = True`, the
    /// `ring_exchange` all-gathers 1 SM on copy engines (TransformerEngine
    /// `transformer_engine/pytorch/module/base.py`, `get_default_config`, commit d0067d0). 16 when
    /// the overlap is on ([`Stack::tp_comm_overlap`]), else 0.
    pub fn tp_overlap_sm_margin(self, sequence_parallel: bool, switch: bool) -> u32 {
        if self.tp_comm_overlap(sequence_parallel, switch) {
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
        if self.tp_comm_overlap(sequence_parallel, switch) {
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

    /// Whether a fully sharded (ZeRO-3) pipeline stage of this stack gathers its weights once per
    /// step and keeps them, and its gradients, unsharded until the step's last backward: PyTorch's
    /// pipelining with FSDP2 stages, as torchtitan runs it. torchtitan shards every block with
    /// `reshard_after_forward=False` when pipeline parallelism is on ("to avoid per-microbatch
    /// all-gathers", `apply_fsdp`, pytorch/torchtitan 9dec370 `torchtitan/parallelisms/
    /// parallelize_llama.py`), and the schedule runs every backward with
    /// `set_reshard_after_backward(False)` and `set_requires_gradient_sync(False)`, calling FSDP's
    /// post-backward (one reduce-scatter per block) only after the last micro-batch's
    /// (`backward_maybe_with_nosync`, pytorch/pytorch `torch/distributed/pipelining/stage.py`).
    /// Meanwhile the unsharded gradients accumulate in the reduce dtype (FSDP2's
    /// `FSDPParam.to_accumulated_grad_if_needed`: fp32 under torchtitan's default
    /// `mixed_precision_reduce = "float32"`). Megatron-LM and DeepSpeed do not pipeline ZeRO-3
    /// stages here (their exports refuse it).
    pub fn keeps_pipelined_stage_unsharded(self) -> bool {
        self.costed_as() == Stack::Fsdp
    }

    /// Whether the distributed optimizer's all-gather of the updated weights (ZeRO-1) overlaps with
    /// the next step's forward compute: Megatron-LM with `--overlap-param-gather` (`flag`), whose
    /// forward pre-hooks wait on each bucket's gather just before the layers that use it, so the
    /// gathers hide under the first micro-batch's forward ("asynchronous all-gathers that get
    /// overlapped with the next forward pass", NVIDIA/Megatron-LM
    /// `megatron/core/optimizer/distrib_optimizer.py` at core_r0.8.0). DeepSpeed's ZeRO-1/2 never overlaps
    /// it: `DeepSpeedZeroOptimizer.step` ends with `all_gather_dp_groups` over the updated 16-bit
    /// partitions, after the optimizer update and before the next forward (microsoft/DeepSpeed
    /// `deepspeed/runtime/zero/stage_1_and_2.py` @38327e0, "Gather the updated weights from
    /// everyone"), so the gather is exposed in full. FSDP and torchtitan shard parameters (ZeRO-3)
    /// and do not reach this path.
    pub fn overlaps_zero1_gather(self, flag: bool) -> bool {
        match self {
            Stack::Megatron => flag,
            Stack::Deepspeed => false,
            _ => true,
        }
    }

    /// Parameters per data-parallel gradient bucket (each bucket one reduce-scatter or all-reduce of
    /// its own size) on `dp` data-parallel ranks, `None` for one bucket holding every gradient:
    /// - Megatron-LM: `max(40M, 1M × dp)` parameters, larger at large dp so that the ring's chunks
    ///   stay bandwidth-bound; one bucket with `--overlap-grad-reduce` off (`overlap`)
    ///   (NVIDIA/Megatron-LM `megatron/core/distributed/distributed_data_parallel.py` at
    ///   core_r0.8.0, `bucket_size` default);
    /// - DeepSpeed: `reduce_bucket_size`, 5·10⁸ elements by default (`deepspeed/runtime/zero/config.py`);
    /// - PyTorch DDP (eager, and the FSDP stacks' replicated parameters): `bucket_cap_mb = 25`
    ///   ([`DDP_BUCKET_BYTES`]) of fp32 gradients.
    pub fn grad_bucket_params(self, dp: u32, overlap: bool) -> Option<f64> {
        match self {
            Stack::Megatron if !overlap => None,
            Stack::Megatron => Some(40e6f64.max(1e6 * dp as f64)),
            Stack::Deepspeed => Some(5e8),
            Stack::Fsdp | Stack::Torchtitan | Stack::Eager => Some(DDP_BUCKET_BYTES / 4.0),
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

    /// Whether the training graph's mixed-precision casts inside the decoder layers run as kernels
    /// (per micro-batch: autocast's casts of the fp32 weights and of the fp32 residual-stream
    /// activations to bf16 before each GEMM, and the casts of their gradients back). Megatron-LM
    /// does not run them: with `--bf16`/`--fp16` it wraps the model in `Float16Module`, which
    /// converts the parameters to half precision once, keeps the activations (residual stream
    /// included, `--fp32-residual-connection` off by default) in half precision, holds the fp32
    /// master weights in the optimizer, and accumulates weight gradients straight into the fp32
    /// `main_grad` inside the weight-gradient GEMM (`--gradient-accumulation-fusion`, on by default)
    /// (NVIDIA/Megatron-LM `megatron/core/transformer/module.py` `Float16Module`,
    /// `megatron/training/arguments.py`). DeepSpeed (bf16 module, but per-micro-batch fp32
    /// gradient accumulation), FSDP's mixed precision and eager autocast run casts of this order;
    /// they keep them.
    pub fn runs_amp_casts(self) -> bool {
        !matches!(self, Stack::Megatron)
    }

    /// Whether an `amp-bf16` step on this stack computes on bf16 copies of the fp32 master weights
    /// (`moai_ir::train::TrainOptions::bf16_weight_copies`), so that its activations, residual
    /// stream and checkpointed layer inputs are bf16: Megatron-LM's `Float16Module` (bf16 parameters,
    /// fp32 master weights in the optimizer, `--fp32-residual-connection` off by default), DeepSpeed's
    /// bf16 engine (the module converted to bf16, fp32 master weights in the optimizer), FSDP's
    /// mixed precision (`MixedPrecision(param_dtype=torch.bfloat16)`: Composer's `DEFAULT` and
    /// `PURE`, `composer/distributed/mosaic_fsdp_utils.py` `get_mixed_precision`, mosaicml/composer
    /// v0.16.4) and torchtitan's FSDP2 (`MixedPrecisionPolicy(param_dtype=torch.bfloat16,
    /// reduce_dtype=torch.float32)`, its default `mixed_precision_param = "bfloat16"`). Eager
    /// PyTorch under `torch.autocast` keeps the fp32 weights and casts only at matmuls, so its
    /// embedding, norms and residual stream stay fp32.
    pub fn computes_on_weight_copies(self) -> bool {
        !matches!(self, Stack::Eager)
    }

    /// The training options a step on this stack runs with `precision`, `optimizer` and
    /// `recompute`: bf16 weight copies where the stack computes on them
    /// ([`Stack::computes_on_weight_copies`]). Truth rows, the planner and code generation build
    /// their options here.
    pub fn train_options(
        self,
        precision: moai_ir::train::PrecisionPolicy,
        optimizer: moai_ir::train::OptimizerKind,
        recompute: moai_ir::train::RecomputePolicy,
    ) -> moai_ir::train::TrainOptions {
        moai_ir::train::TrainOptions {
            precision,
            optimizer,
            recompute,
            bf16_weight_copies: self.computes_on_weight_copies(),
        }
    }

    /// Whether this stack's fp8 linears keep an fp8 copy of each weight (and of its transpose)
    /// for the whole step, with per-tensor delayed-scaling state: Transformer Engine's modules
    /// (Megatron-LM) cast a weight once per step and cache it. torchao's `Float8Linear` (FSDP,
    /// torchtitan; `tensorwise` dynamic scaling) casts the weight at each GEMM and keeps neither;
    /// DeepSpeed runs no fp8 path of its own.
    pub fn caches_fp8_weights(self) -> bool {
        matches!(self, Stack::Megatron)
    }

    /// Whether the optimizer step is a fused multi-tensor kernel (Megatron/DeepSpeed FusedAdam, torch
    /// AdamW `fused=True`/`foreach`); every stack moai exports to uses one.
    pub fn fused_optimizer(self) -> bool {
        true
    }
}

/// Bytes of one PyTorch DDP gradient bucket (`bucket_cap_mb = 25`).
pub const DDP_BUCKET_BYTES: f64 = 25e6;

/// The fused-attention kernel family a stack runs on a GPU ([`Stack::attention_kernel`]). The
/// attention model ([`crate::ops::attention_shape_efficiency`] and the fitted per-GPU attention
/// coefficient) describes FlashAttention-2-class kernels, which every stack moai costs runs except
/// one: Transformer Engine on Hopper and later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionKernel {
    /// FlashAttention-2 (Dao 2023) or a kernel of its class: PyTorch SDPA's flash backend (eager,
    /// FSDP, torchtitan), the `flash-attn` package (llm-foundry, Megatron-LM on Ampere), AMD's
    /// CK/Triton ports on ROCm. Written for the Ampere programming model; on H100 it reaches about
    /// 35% of the bf16 peak (FlashAttention-3 paper, Shah et al. 2024, arXiv:2407.08608, §1).
    FlashAttention2,
    /// A Hopper-native fused attention (warp-specialised, TMA loads, `wgmma` overlapped with the
    /// softmax): cuDNN's flash attention, which Transformer Engine selects on Hopper and later when
    /// both it and FlashAttention-2 apply (NVIDIA/NeMo `docs/source/nlp/nemo_megatron/
    /// memory_optimizations.rst`, PR #9188: "Transformer Engine prefers cuDNN flash attention on
    /// Hopper+ architectures, and Tri Dao flash attention on pre-Hopper architectures"), of the class
    /// of FlashAttention-3. The preference is older than that note: from Transformer Engine 1.2
    /// (December 2023) `DotProductAttention` drops FlashAttention-2 on compute capability 9.0
    /// whenever cuDNN's `F16_arbitrary_seqlen` backend applies ("Select FusedAttention on sm90 and
    /// FlashAttention on others for performance", NVIDIA/TransformerEngine
    /// `transformer_engine/pytorch/attention.py`, tags v1.2 and v1.3), and that backend takes
    /// grouped-query attention from cuDNN 8.9.7 on (`nvte_get_fused_attn_backend`,
    /// `transformer_engine/common/fused_attn/fused_attn.cpp`, same tags). Megatron-Core runs of
    /// early 2024 with the `flash-attn` package installed (FlagPerf's Llama-3-8B on NGC
    /// `pytorch:24.02`, cuDNN 9.0) therefore ran this kernel, not FlashAttention-2 (assumed: that
    /// container's Transformer Engine is 1.2 or later; v1.2 is tagged two months before it).
    HopperFused,
}

impl AttentionKernel {
    /// Throughput relative to a FlashAttention-2-class kernel of the same shape on the same GPU: the
    /// factor that multiplies the fitted attention coefficient. FlashAttention-3 on H100 (Shah et
    /// al. 2024, arXiv:2407.08608, abstract and §4.1, bf16/fp16, head dim 64-256, sequence
    /// 512-16k, causal and not): forward 1.5-2.0× FlashAttention-2, backward 1.5-1.75×, with cuDNN's
    /// kernels of the same order in the paper's figures. A training step runs about 2.5× the
    /// forward's attention FLOPs in backward, so the step-weighted gain is near the backward's;
    /// 1.6 is taken (the lower half of both ranges). Transformer Engine's own measurement with
    /// cuDNN 9.0 and flash-attn 2.4.2 on H100 PCIe (NVIDIA/TransformerEngine
    /// `docs/examples/attention/attention.ipynb`, June 2024, fwd+bwd) gives 1.31-1.59×. NeMo's
    /// launcher switched cuDNN attention off from 24.01 to 24.07 (`NVTE_FUSED_ATTN=0`), so the
    /// NeMo rows of that period are marked `attention: flash2` and run at 1.0.
    pub fn throughput_over_fa2(self) -> f64 {
        match self {
            AttentionKernel::FlashAttention2 => 1.0,
            AttentionKernel::HopperFused => 1.6,
        }
    }
}

impl Stack {
    /// The fused-attention kernel family this stack runs on `gpu`: Megatron-LM (Megatron-Core with
    /// Transformer Engine's `DotProductAttention`) runs cuDNN's fused attention on Hopper and later
    /// NVIDIA GPUs (H100, H200, B200) and FlashAttention-2 before (A100) and on AMD GPUs (no cuDNN).
    /// Eager PyTorch calls `scaled_dot_product_attention`, whose backend order puts cuDNN's attention
    /// first on Hopper (compute capability 9.0) when the runtime cuDNN is newer than 9.15
    /// (`check_prefer_cudnn_attention`, pytorch/pytorch
    /// `aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`, commit 001f694a); assumed: the eager
    /// recipe's PyTorch (2.11) ships such a cuDNN. DeepSpeed, FSDP and torchtitan (their truth rows
    /// predate that preference or call the `flash-attn` package) stay FlashAttention-2-class.
    pub fn attention_kernel(self, gpu: Gpu) -> AttentionKernel {
        match (self, gpu) {
            // Transformer Engine's fused kernels, its cuDNN attention among them.
            _ if self.runs_te_fused_kernels(gpu) => AttentionKernel::HopperFused,
            (Stack::Eager, g) if g.family() == Family::Hopper => AttentionKernel::HopperFused,
            _ => AttentionKernel::FlashAttention2,
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
        for g in Gpu::ALL {
            let want = matches!(g, Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e);
            assert_eq!(
                Stack::Eager.attention_kernel(g) == AttentionKernel::HopperFused,
                want,
                "{g}"
            );
        }
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
        assert!(Stack::Megatron.tp_comm_overlap(true, true));
        assert!(!Stack::Megatron.tp_comm_overlap(true, false));
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

    #[test]
    fn transformer_engine_runs_hopper_fused_attention_on_hopper_only() {
        for g in Gpu::ALL {
            let want = matches!(g, Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e | Gpu::B200);
            assert_eq!(
                Stack::Megatron.attention_kernel(g) == AttentionKernel::HopperFused,
                want,
                "{g}"
            );
            for st in [Stack::Deepspeed, Stack::Fsdp, Stack::Torchtitan] {
                assert_eq!(
                    st.attention_kernel(g),
                    AttentionKernel::FlashAttention2,
                    "{st} {g}"
                );
            }
        }
        // Within FlashAttention-3's published range over FlashAttention-2 (1.5-2.0x forward,
        // 1.5-1.75x backward); the FlashAttention-2 class is the model's reference.
        let f = AttentionKernel::HopperFused.throughput_over_fa2();
        assert!((1.5..=1.75).contains(&f), "{f}");
        assert_eq!(AttentionKernel::FlashAttention2.throughput_over_fa2(), 1.0);
    }

    #[test]
    fn deepspeed_gathers_zero1_weights_after_the_step() {
        // DeepSpeed's ZeRO-1/2 all-gather runs inside step(), whatever the switch says; Megatron-LM
        // follows --overlap-param-gather.
        for flag in [true, false] {
            assert!(!Stack::Deepspeed.overlaps_zero1_gather(flag));
            assert_eq!(Stack::Megatron.overlaps_zero1_gather(flag), flag);
        }
    }

    #[test]
    fn transformer_engine_fusion_is_megatrons_prior_on_hopper_only() {
        for g in [Gpu::H100, Gpu::H200, Gpu::B200] {
            assert!(Stack::Megatron.runs_te_fused_kernels(g));
            assert_eq!(
                Stack::Megatron.attention_kernel(g),
                AttentionKernel::HopperFused
            );
            assert_eq!(
                Stack::Megatron.fused_bytes_on(g, 0.9, None),
                Stack::Megatron.fusion().0
            );
            assert_eq!(Stack::Megatron.fused_bytes_on(g, 0.9, Some(0.6)), 0.6);
        }
        for g in [Gpu::A100, Gpu::Mi250, Gpu::Mi325x] {
            assert!(!Stack::Megatron.runs_te_fused_kernels(g));
            assert_eq!(Stack::Megatron.fused_bytes_on(g, 0.9, Some(0.6)), 0.9);
        }
        for st in [Stack::Deepspeed, Stack::Fsdp, Stack::Eager] {
            assert!(!st.runs_te_fused_kernels(Gpu::H100));
            assert_eq!(st.fused_bytes_on(Gpu::H100, 0.7, None), 0.7);
        }
        assert_eq!(Stack::Torchtitan.fused_bytes_on(Gpu::H100, 0.7, None), 1.0);
    }

    #[test]
    fn only_megatron_runs_transformer_engine_modules() {
        assert!(Stack::Megatron.runs_te_modules());
        for st in [
            Stack::Deepspeed,
            Stack::Fsdp,
            Stack::Torchtitan,
            Stack::Eager,
        ] {
            assert!(!st.runs_te_modules(), "{st}");
        }
    }

    #[test]
    fn torchtitan_without_compile_keeps_its_fusable_bytes() {
        assert_eq!(Stack::Torchtitan.fused_bytes(0.7), 1.0);
        assert_eq!(Stack::Fsdp.fused_bytes(0.7), 0.7);
        assert!(Stack::ALL.iter().all(|s| s.fits_fusion()));
        assert!(!Stack::Torchtitan.fits_fusion());
    }
}
