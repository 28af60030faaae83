//! The estimator: step time, throughput, peak memory and MFU of one parallel configuration.
//!
//! Per micro-batch and (virtual) stage: forward and backward kernel times (profile or roofline) bounded
//! below by the host's kernel-issue time, plus tensor-parallel collectives; then the pipeline schedule
//! simulation; then the data-parallel gradient sync (exposed part) and the optimizer step.

use crate::cluster::Cluster;
use crate::collective::{Collective, collective_time, exposed_after_overlap, tp_collectives_time};
use crate::config::ParallelConfig;
use crate::device::Gpu;
use crate::efficiency::{Allocator, Efficiency, EfficiencyFile, StackCoefficients};
use crate::error::{CostError, Result};
use crate::memory::{DeviceInput, StageMemory, device_memory};
use crate::ops::{Bucket, KERNEL_FLOOR_S, OpTimer, Source, shard};
use crate::pipeline::{StageTimes, simulate};
use crate::precision::MatmulPrecision;
use crate::profile::OpProfile;
use crate::stack::Stack;
use moai_ir::cost::{BlockKind, KernelClass, Phase, Role, StepProfile, TpSplit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Time breakdown of a step (JSON names of DESIGN.md's `predicted.breakdown`). The four parts
/// `compute_s`, `exposed_comm_s`, `bubble_s` and `optimizer_s` add up to the step time of the device
/// that finishes last; the other fields detail modeled traffic (hidden or not).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Kernel time (forward, backward, recomputation), including host-bound phases.
    pub compute_s: f64,
    /// Communication not hidden behind compute (tensor-parallel collectives, exposed gradient sync,
    /// ZeRO-3 gathers).
    pub exposed_comm_s: f64,
    /// Pipeline bubble and waiting for stage-to-stage transfers.
    pub bubble_s: f64,
    /// Optimizer step, including the stack's fixed per-step cost (`step_overhead_s`) and, for an fp8
    /// plan, the once-per-step fp8 weight casts and amax reduction.
    pub optimizer_s: f64,
    /// Tensor-parallel collective seconds of the critical device per step, before overlap.
    #[serde(default)]
    pub tp_comm_s: f64,
    /// Data-parallel gradient synchronisation seconds per step (all-reduce, or reduce-scatter plus
    /// the ZeRO-1 parameter all-gather, or ZeRO-3's per-micro-batch reduce-scatters), before overlap.
    #[serde(default)]
    pub dp_comm_s: f64,
    /// ZeRO-3 parameter all-gather seconds per step (forward and backward of every layer and
    /// micro-batch), before overlap; 0 without ZeRO-3.
    #[serde(default)]
    pub zero3_gather_s: f64,
    /// The stack's fixed per-step cost (part of `optimizer_s`).
    #[serde(default)]
    pub step_overhead_s: f64,
    /// Offload seconds per step of the critical device, both parts (see [`crate::offload`]): the
    /// optimizer offload (part of `optimizer_s`, where it replaces the device's optimizer kernels: the
    /// exposed gradient download, the CPU optimizer step and the weight upload; 0 without
    /// `offload_optimizer`) plus the activation offload's exposed copies (every micro-batch's copies
    /// out and back that the next layer's compute does not hide; in the stage times, so outside
    /// `compute_s`, `exposed_comm_s`, `bubble_s` and `optimizer_s`; 0 without `offload_activations`).
    #[serde(default)]
    pub offload_s: f64,
    /// Context-parallel communication seconds of the critical device per step (ring key/value steps
    /// or Ulysses all-to-alls), before overlap; its exposed part is in `exposed_comm_s`. 0 without cp.
    #[serde(default)]
    pub cp_comm_s: f64,
    /// Mixture-of-experts token dispatch and combine seconds of the critical device per step (the
    /// all-to-alls over the expert-parallel group, forward, backward and recomputation), part of
    /// `exposed_comm_s`; absent (0) without expert parallelism.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moe_dispatch_s: f64,
    /// The critical device's kernel seconds per step by kernel class: where `compute_s` goes.
    #[serde(default)]
    pub kernels: KernelClasses,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Kernel seconds by kernel class, at the device's fitted coefficients and after the stack's
/// fusion. Their sum is the device's kernel time; a phase's compute is that or, where the host
/// cannot launch kernels as fast as the device runs them, the host's launch time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelClasses {
    /// Compute-bound GEMMs.
    pub matmul_s: f64,
    /// Fused attention (forward and backward).
    pub attention_s: f64,
    /// Memory-bound kernels the stack fuses (norms, elementwise, softmax and reductions), after
    /// its fusion removed its share of their bytes.
    pub fused_memory_s: f64,
    /// Other memory-bound kernels (casts, gathers, copies, memory-bound GEMMs).
    pub memory_s: f64,
    /// Kernels timed from a measured profile.
    pub measured_s: f64,
    /// The per-kernel floor of every memory-bound kernel left after fusion.
    pub kernel_floor_s: f64,
    /// GEMMs slowed by the SMs Transformer Engine's TP communication overlap reserves.
    pub tp_sm_margin_s: f64,
}

impl KernelClasses {
    /// The classes in field order.
    fn parts(&self) -> [f64; 7] {
        [
            self.matmul_s,
            self.attention_s,
            self.fused_memory_s,
            self.memory_s,
            self.measured_s,
            self.kernel_floor_s,
            self.tp_sm_margin_s,
        ]
    }

    /// Class by class, `f` of this and `o`.
    fn zip(&self, o: &KernelClasses, f: impl Fn(f64, f64) -> f64) -> KernelClasses {
        let (a, b) = (self.parts(), o.parts());
        let c = |i: usize| f(a[i], b[i]);
        KernelClasses {
            matmul_s: c(0),
            attention_s: c(1),
            fused_memory_s: c(2),
            memory_s: c(3),
            measured_s: c(4),
            kernel_floor_s: c(5),
            tp_sm_margin_s: c(6),
        }
    }

    /// Their sum: the kernel seconds.
    pub fn total(&self) -> f64 {
        self.parts().iter().sum()
    }

    /// Each class times `k`.
    pub fn scaled(&self, k: f64) -> KernelClasses {
        self.zip(self, |a, _| a * k)
    }

    /// The sum of two, class by class.
    pub fn plus(&self, o: &KernelClasses) -> KernelClasses {
        self.zip(o, |a, b| a + b)
    }
}

/// Which sources the prediction used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceNotes {
    /// Ops of one micro-batch timed from the measured profile.
    pub profile_ops: u64,
    /// Ops timed by the roofline.
    pub roofline_ops: u64,
    /// Where the efficiencies came from.
    pub efficiency: String,
    /// The measured profile used, if any (device, library, date).
    pub profile: Option<String>,
    /// Allocator model used for the peak.
    pub allocator: String,
    /// The software stack the step was costed for (`megatron`, `deepspeed`, `fsdp`, `eager`) and its
    /// overheads' source.
    #[serde(default)]
    pub stack: String,
}

/// The prediction for one configuration (JSON names of DESIGN.md's `predicted` object).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Seconds per optimizer step.
    pub step_time_s: f64,
    /// Tokens per second over the whole cluster.
    pub tokens_per_s: f64,
    /// Peak allocated bytes on the most loaded device.
    pub peak_memory_bytes: u64,
    /// Model FLOPs utilisation: forward+backward FLOPs (no recomputation) per second over the
    /// cluster's bf16 peak.
    pub mfu: f64,
    /// Time breakdown.
    pub breakdown: Breakdown,
    /// Memory of each pipeline device.
    pub memory: Vec<StageMemory>,
    /// Which sources were used.
    pub sources: SourceNotes,
    /// Forward and backward seconds of one micro-batch on each virtual stage (`pp × chunks` entries, stage
    /// `v` on device `schedule.device_of(v, pp)`), tensor-parallel communication included: what the
    /// pipeline simulation ran on.
    #[serde(default)]
    pub stage_times: Vec<StageTimes>,
    /// Point-to-point seconds between adjacent pipeline stages used by the simulation (0 without pp).
    #[serde(default)]
    pub p2p_s: f64,
    /// Kernel seconds per step of each pipeline device (forward, backward and recomputation of all its
    /// micro-batches, plus its optimizer step), without communication or waiting: a device's predicted
    /// utilization is this over `step_time_s`.
    #[serde(default)]
    pub device_compute_s: Vec<f64>,
}

/// A cost model the search can call; implementations must be thread-safe.
pub trait CostModel: Sync {
    /// Predicts one configuration of a model (given as its per-micro-batch step profile) on a cluster.
    fn estimate(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Estimate>;

    /// Per-block costs and memory of `cfg` on one device, one entry per block of `profile` in order: what
    /// stage partitioning balances and memory pruning bounds before the stages are known (so a cost
    /// model plugged into the planner cuts the stages it scores). Must not depend on `cfg.stages`, `pp`,
    /// the schedule or the micro-batch count. The default is the default cost model's
    /// ([`crate::blocks::default_block_costs`]).
    fn block_costs(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Vec<crate::blocks::BlockCost>> {
        crate::blocks::default_block_costs(profile, cluster, cfg)
    }

    /// Lower bounds of what [`CostModel::estimate`] predicts for `cfg`, valid for every stage split
    /// (`cfg.stages` is not read): the planner skips a candidate whose time bound exceeds plans it
    /// already costed or whose memory bound exceeds the device. `None` (the default) promises nothing,
    /// and the planner then costs every candidate. See [`crate::bounds`].
    fn lower_bounds(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Option<crate::bounds::LowerBounds> {
        let _ = (profile, cluster, cfg);
        None
    }
}

/// Sums of one phase of one block on one device. The bucket sums are seconds at unit coefficients
/// (see [`crate::ops::KernelTime`]); the estimator divides them by the device's fitted coefficients and
/// applies the stack's fusion, so one prepared profile serves every coefficient set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseSums {
    /// Kernel seconds with this model's coefficients, unfused, per-kernel floors included.
    pub gpu_s: f64,
    /// Kernels.
    pub kernels: f64,
    /// Bytes all-reduced over the tensor-parallel group (with sequence parallelism, reduce-scattered).
    pub tp_bytes: f64,
    /// Tensor-parallel collectives.
    pub tp_collectives: f64,
    /// Bytes the sequence-parallel all-gathers move, one beside each of the `tp_collectives`
    /// reduce-scatters (read with sequence parallelism only): the tensor reduced, in bf16, or its fp8
    /// copy (one byte per element) for the pair of an fp8 linear, because Transformer Engine
    /// quantizes before it gathers: a `LayerNormLinear` under sequence parallelism gathers its norm's
    /// fp8 output (`ln_out_total = gather_along_first_dim(ln_out)` after the fp8 norm), and a
    /// module's backward casts its output gradient to fp8 before gathering it
    /// (`grad_output_preprocess`, "FP8 case with gather": NVIDIA/TransformerEngine
    /// `transformer_engine/pytorch/module/base.py` and `layernorm_linear.py`, 1.x releases). The
    /// reduce-scatters of the row-parallel outputs and of the column-parallel input gradients stay
    /// bf16.
    pub tp_gather_bytes: f64,
    /// Compute-bound GEMM seconds at unit matmul coefficient.
    pub matmul_s: f64,
    /// Fused-attention seconds at unit attention coefficient.
    pub attention_s: f64,
    /// Non-fusable memory-bound seconds at the HBM peak.
    pub memory_s: f64,
    /// Fusable memory-bound seconds (norms, elementwise, reductions) at the HBM peak.
    pub fusable_s: f64,
    /// Seconds read from a measured profile.
    pub measured_s: f64,
    /// Memory-bound kernels (each pays the per-kernel floor).
    pub memory_kernels: f64,
    /// Of those, fusable kernels.
    pub fusable_kernels: f64,
    /// Of `matmul_s`, the GEMMs Transformer Engine's TP communication overlap runs beside a
    /// reduce-scatter or bulk collective on SMs it reserves (forward and recomputed row-parallel
    /// GEMMs, backward column-parallel GEMMs; see [`crate::Stack::tp_overlap_sm_margin`]), at unit
    /// matmul coefficient; 0 without tensor parallelism.
    pub tp_overlap_matmul_s: f64,
    /// Bytes each device sends in the mixture-of-experts all-to-alls (dispatch and combine).
    pub a2a_bytes: f64,
    /// Mixture-of-experts all-to-alls.
    pub a2a_count: f64,
    /// Of `memory_s`, the training graph's casts inside the decoder layers ([`Role::is_cast`]:
    /// autocast's per-call casts of fp32 weights and activations to bf16, the fp32 upcasts of the
    /// eager modules autocast runs, and the gradients' casts back), at the HBM peak: a stack that
    /// holds the model in bf16 does not run them ([`Stack::runs_amp_casts`]).
    pub autocast_cast_s: f64,
    /// Of `memory_kernels`, those casts.
    pub autocast_cast_kernels: f64,
    /// Of `fusable_s`, the elementwise kernels of Hugging Face's unfused rotary embedding under
    /// autocast and of its gradient ([`Role::EagerRotary`]: fp32 products and sum, negation): a
    /// stack with a fused RoPE kernel (Megatron-LM's `--apply-rope-fusion`, its default) runs one
    /// kernel instead, whose traffic (one read and one write of the bf16 q or k) is that of the
    /// decomposition's concatenation, which is kept.
    pub eager_rotary_s: f64,
    /// Of `fusable_kernels`, those kernels.
    pub eager_rotary_kernels: f64,
}

impl PhaseSums {
    fn add(&mut self, o: &PhaseSums) {
        self.gpu_s += o.gpu_s;
        self.kernels += o.kernels;
        self.tp_bytes += o.tp_bytes;
        self.tp_collectives += o.tp_collectives;
        self.tp_gather_bytes += o.tp_gather_bytes;
        self.matmul_s += o.matmul_s;
        self.attention_s += o.attention_s;
        self.memory_s += o.memory_s;
        self.fusable_s += o.fusable_s;
        self.measured_s += o.measured_s;
        self.memory_kernels += o.memory_kernels;
        self.fusable_kernels += o.fusable_kernels;
        self.tp_overlap_matmul_s += o.tp_overlap_matmul_s;
        self.a2a_bytes += o.a2a_bytes;
        self.a2a_count += o.a2a_count;
        self.autocast_cast_s += o.autocast_cast_s;
        self.autocast_cast_kernels += o.autocast_cast_kernels;
        self.eager_rotary_s += o.eager_rotary_s;
        self.eager_rotary_kernels += o.eager_rotary_kernels;
    }

    /// Extra seconds of this phase's GEMMs while Transformer Engine's TP overlap reserves `sms` of
    /// the device's `units` SMs for communication (`set_sm_margin`): those GEMMs run on the rest, so
    /// they take `units / (units - sms)` as long.
    pub fn sm_margin_s(&self, eff: &Efficiency, sms: u32, units: u32) -> f64 {
        if sms == 0 || units <= sms || self.tp_overlap_matmul_s <= 0.0 {
            return 0.0;
        }
        self.tp_overlap_matmul_s / eff.matmul * sms as f64 / (units - sms) as f64
    }

    /// Seconds of this phase's tensor-parallel collectives (`tp_s` of them in all) left on the
    /// critical path. Without the overlap (`overlapped` false) all of them. With Transformer
    /// Engine's userbuffers overlap each collective runs beside the GEMM it feeds or drains, and what
    /// the phase's GEMMs (their kernel time at `eff`) cannot cover is exposed; so is, in the
    /// forward, the last of the four chunks each reduce-scatter after the row-parallel GEMMs is
    /// pipelined in (the `pipeline` method, `num_splits = 4`; the all-gathers' `ring_exchange` starts
    /// on the rank's own chunk, and the backward's `bulk` overlaps run whole beside the dgrad and
    /// wgrad GEMMs: TransformerEngine `transformer_engine/pytorch/module/base.py`,
    /// `get_default_config`, commit d0067d0): half the forward traffic, a quarter of it exposed.
    pub fn exposed_tp_s(
        &self,
        tp_s: f64,
        eff: &Efficiency,
        overlapped: bool,
        backward: bool,
    ) -> f64 {
        if !overlapped || tp_s <= 0.0 {
            return tp_s;
        }
        let floor = if backward {
            0.0
        } else {
            tp_s / (2.0 * TE_PIPELINE_SPLITS)
        };
        (tp_s - self.matmul_s / eff.matmul).max(floor)
    }

    /// Seconds of this phase's tensor-parallel collectives under `cfg`'s tp and sequence parallelism,
    /// each at its own message size ([`tp_collectives_time`]: the all-gathers at theirs,
    /// `tp_gather_bytes`), before any overlap.
    pub fn tp_time(&self, cluster: &Cluster, cfg: &ParallelConfig) -> f64 {
        tp_collectives_time(
            cluster,
            self.tp_bytes,
            self.tp_gather_bytes,
            self.tp_collectives,
            cfg.tp,
            cfg.sequence_parallel,
        )
    }

    /// Seconds of this phase's mixture-of-experts all-to-alls over `ep` ranks spaced `stride` apart.
    pub fn a2a_time(&self, cluster: &Cluster, ep: u32, stride: u32) -> f64 {
        if self.a2a_count <= 0.0 {
            0.0
        } else {
            self.a2a_count
                * crate::moe::all_to_all_time(cluster, self.a2a_bytes / self.a2a_count, ep, stride)
        }
    }

    /// Kernel seconds and kernels of this phase on a device with coefficients `eff`, under a stack's
    /// fusion: fusable bytes scaled by `sc.fused_bytes` as given (the coefficients of
    /// [`EfficiencyFile::costed`], which decided the stack's fraction on the GPU), fusable kernels by
    /// [`crate::stack::Stack::fusion`]'s kernel fraction.
    pub fn kernel_time(&self, eff: &Efficiency, sc: &StackCoefficients) -> (f64, f64) {
        let (classes, kernels) = self.kernel_classes(eff, sc);
        (classes.total(), kernels)
    }

    /// [`PhaseSums::kernel_time`] by kernel class (no TP SM margin: [`PhaseSums::sm_margin_s`]),
    /// and the kernels.
    pub fn kernel_classes(&self, eff: &Efficiency, sc: &StackCoefficients) -> (KernelClasses, f64) {
        let (fb, fk) = (sc.fused_bytes, sc.stack.fusion().1);
        let (cast_s, cast_kernels, rope_s, rope_kernels) = if sc.stack.runs_amp_casts() {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            (
                self.autocast_cast_s,
                self.autocast_cast_kernels,
                self.eager_rotary_s,
                self.eager_rotary_kernels,
            )
        };
        let removed = (self.fusable_kernels - rope_kernels).max(0.0) * (1.0 - fk)
            + (cast_kernels + rope_kernels);
        let kernels = (self.kernels - removed).max(0.0);
        let floors = (self.memory_kernels - removed).max(0.0);
        let classes = KernelClasses {
            matmul_s: self.matmul_s / eff.matmul,
            attention_s: self.attention_s / attention_coefficient(eff, sc.stack),
            fused_memory_s: (self.fusable_s - rope_s).max(0.0) * fb / eff.memory,
            memory_s: (self.memory_s - cast_s).max(0.0) / eff.memory,
            measured_s: self.measured_s,
            kernel_floor_s: floors * KERNEL_FLOOR_S,
            tp_sm_margin_s: 0.0,
        };
        (classes, kernels)
    }
}

/// The attention of block `i` as context parallelism sees it, with cp > 1: read when the profile
/// was prepared (the scan of the profile's block is the fallback for a prepared profile built
/// without shapes).
fn ring_attention(
    prep: &PreparedProfile,
    profile: &StepProfile,
    i: usize,
    cfg: &ParallelConfig,
) -> Option<crate::context::CpAttention> {
    if cfg.cp <= 1 {
        return None;
    }
    match prep.shapes.get(i) {
        Some(s) => s.attention,
        None => profile
            .blocks
            .get(i)
            .and_then(|pb| crate::memory::block_shape(pb, 1).attention),
    }
}

/// The coefficient that divides a fused-attention kernel's base time on `eff`'s GPU under `stack`:
/// the GPU's fitted attention coefficient (a FlashAttention-2-class kernel) times the throughput of
/// the kernel family the stack runs there over that class ([`Stack::attention_kernel`]).
pub fn attention_coefficient(eff: &Efficiency, stack: Stack) -> f64 {
    eff.attention * stack.attention_kernel(eff.gpu).throughput_over_fa2()
}

/// Host launch time and device kernel time of one micro-batch's forward and backward, for the
/// host-device pipeline bound of an unpipelined step ([`HostDevice::pipeline_s`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostDevice {
    /// Host seconds issuing the forward's kernels.
    pub host_forward_s: f64,
    /// Host seconds issuing the backward's kernels.
    pub host_backward_s: f64,
    /// Device seconds of the forward's kernels.
    pub device_forward_s: f64,
    /// Device seconds of the backward's kernels.
    pub device_backward_s: f64,
}

impl HostDevice {
    /// Adds a phase's host and device seconds to the backward (`backward`) or the forward.
    pub fn add(&mut self, backward: bool, host_s: f64, device_s: f64) {
        if backward {
            self.host_backward_s += host_s;
            self.device_backward_s += device_s;
        } else {
            self.host_forward_s += host_s;
            self.device_forward_s += device_s;
        }
    }

    /// Lower bound on the forward and backward of `m` micro-batches run in turn, from the
    /// host-device pipeline. Eager PyTorch enqueues each kernel on the CUDA stream and returns
    /// (asynchronous execution, PyTorch's "CUDA semantics" notes), so the host runs ahead of the
    /// device and a kernel starts when both it has been issued and the kernel before it has
    /// finished: the device finishes no earlier than the host's issue time up to any kernel plus
    /// the device time from that kernel on. Taken at the phase boundaries (within a phase the
    /// layers repeat, so the bound moves little inside one) for the sequence
    /// F₁ B₁ … Fₘ Bₘ this is the largest of the host alone, the device alone, and the host up to
    /// a forward's end with the device from the following backward on (a host-bound forward
    /// followed by a device-bound backward, where `max(host, device)` of the whole step is too
    /// low). Only the boundary after the first or the last forward can be the largest (the bound is
    /// linear in the boundary's index). Seconds.
    pub fn pipeline_s(&self, m: u32) -> f64 {
        let m = m.max(1) as f64;
        let (hf, hb) = (self.host_forward_s, self.host_backward_s);
        let (df, db) = (self.device_forward_s, self.device_backward_s);
        let host = m * (hf + hb);
        let device = m * (df + db);
        let first = hf + m * db + (m - 1.0) * df;
        let last = m * hf + (m - 1.0) * hb + db;
        host.max(device).max(first).max(last)
    }
}

/// One block's per-device sums for a given tp.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSums {
    /// Which block.
    pub kind: BlockKind,
    /// Forward.
    pub forward: PhaseSums,
    /// Backward plus recomputation.
    pub backward: PhaseSums,
    /// Of `backward`, the weight-gradient ops ([`crate::pipeline::weight_grad_ops`]): the W pass of
    /// the zero-bubble schedules.
    pub weight_grad: PhaseSums,
    /// Parameters on one device.
    pub params: f64,
    /// Saved activation bytes of one micro-batch on one device.
    pub saved_bytes: f64,
    /// Transient bytes on one device.
    pub transient_bytes: f64,
    /// Bytes sent to the next block, per device.
    pub boundary_bytes: f64,
    /// Weight elements on one device of the block's FP8 linear layers (0 unless prepared for fp8):
    /// what the per-step weight cast and the fp8 weight copies scale with.
    pub fp8_weight_params: f64,
    /// FP8 linear layers of the block (0 unless prepared for fp8): their scaling state.
    pub fp8_linears: f64,
}

/// A step profile reduced to per-block sums for one device kind, tp and sequence-parallel setting;
/// computed once and reused across configurations that share them.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedProfile {
    /// Blocks in order.
    pub blocks: Vec<BlockSums>,
    /// Optimizer kernel seconds for the whole, unsharded model.
    pub optimizer_s: f64,
    /// Optimizer kernels.
    pub optimizer_kernels: f64,
    /// Optimizer seconds for the whole model at the HBM peak (unit memory coefficient).
    pub optimizer_base_s: f64,
    /// Optimizer seconds read from a measured profile.
    pub optimizer_measured_s: f64,
    /// What the memory model reads off each block's ops (same order as `blocks`).
    pub shapes: Vec<crate::memory::BlockShape>,
    /// Total trainable parameters.
    pub total_params: f64,
    /// Forward+backward FLOPs of one micro-batch (unsharded, no recomputation).
    pub model_flops: f64,
    /// Ops timed from the profile.
    pub profile_ops: u64,
    /// Ops timed by the roofline.
    pub roofline_ops: u64,
    /// The GEMM precision the sums were prepared for (see [`crate::precision`]).
    pub precision: MatmulPrecision,
    /// Whether the fp8 linears were prepared as Transformer Engine modules
    /// ([`Stack::runs_te_modules`]; false for bf16 GEMMs).
    pub te_modules: bool,
}

/// What a prepared profile depends on: the GPU, tp, sequence parallelism, the GEMM precision and
/// whether fp8 linears run as Transformer Engine modules, the profile's
/// [fingerprint](moai_ir::cost::StepProfile::fingerprint) with its sizes, block count and op count
/// (read per call, one step per block: a profile whose blocks were added or removed after it was
/// fingerprinted is never taken for its original) and the expert split (ep, expert_tp, routing
/// imbalance).
type CacheKey = (
    Gpu,
    u32,
    bool,
    (MatmulPrecision, bool),
    (u64, u64, u64, usize, usize),
    (u32, u32, u64),
);

/// The default cost model: measured profiles where available, roofline with fitted efficiencies
/// elsewhere, α-β collectives, pipeline simulation and the calibrated memory model.
#[derive(Debug, Default)]
pub struct ProfiledCostModel {
    efficiencies: Option<EfficiencyFile>,
    profiles: HashMap<Gpu, Arc<OpProfile>>,
    cache: RwLock<Vec<(CacheKey, Arc<PreparedProfile>)>>,
    time_only: bool,
    moe_imbalance: Option<f64>,
}

impl Clone for ProfiledCostModel {
    fn clone(&self) -> Self {
        ProfiledCostModel {
            efficiencies: self.efficiencies.clone(),
            profiles: self.profiles.clone(),
            cache: RwLock::default(),
            time_only: self.time_only,
            moe_imbalance: self.moe_imbalance,
        }
    }
}

const CACHE_ENTRIES: usize = 64;

/// Chunks Transformer Engine's `pipeline` overlap splits a row-parallel GEMM and its reduce-scatter
/// into (`get_default_config`'s `num_splits` for that method); see [`PhaseSums::exposed_tp_s`].
const TE_PIPELINE_SPLITS: f64 = 4.0;

/// Parameter tensors one fused multi-tensor optimizer launch updates (PyTorch's and Apex's
/// `multi_tensor_apply` process tensor lists in chunks of this order).
const OPTIMIZER_TENSORS_PER_LAUNCH: f64 = 48.0;

impl ProfiledCostModel {
    /// The model with the committed efficiencies and no measured profile.
    pub fn new() -> ProfiledCostModel {
        ProfiledCostModel::default()
    }

    /// The model with another set of efficiencies (used by the fit).
    pub fn with_efficiencies(file: EfficiencyFile) -> ProfiledCostModel {
        ProfiledCostModel {
            efficiencies: Some(file),
            ..Default::default()
        }
    }

    /// The same model without the memory part (estimates carry no memory breakdown and a zero peak):
    /// what the time fit evaluates many times.
    pub fn time_only(mut self) -> ProfiledCostModel {
        self.time_only = true;
        self
    }

    /// The model with another routing-imbalance factor for mixture-of-experts layers (tokens at the
    /// busiest expert over the average, ≥ 1; default [`crate::moe::DEFAULT_IMBALANCE`]).
    pub fn with_moe_imbalance(mut self, imbalance: f64) -> ProfiledCostModel {
        self.moe_imbalance = Some(imbalance);
        self.cache = RwLock::default();
        self
    }

    /// The routing-imbalance factor in use.
    pub fn moe_imbalance(&self) -> f64 {
        self.moe_imbalance
            .filter(|x| x.is_finite() && *x >= 1.0)
            .unwrap_or(crate::moe::DEFAULT_IMBALANCE)
    }

    /// [`ProfiledCostModel::prepare`] for a configuration's tensor, sequence, expert and expert
    /// tensor parallelism and its GEMM precision: what [`ProfiledCostModel::estimate_prepared`] needs.
    pub fn prepare_for(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        cfg: &ParallelConfig,
    ) -> PreparedProfile {
        self.prepare_split(
            profile,
            gpu,
            cfg.sequence_parallel,
            &crate::moe::ExpertSplit {
                tp: cfg.tp.max(1) as u64,
                ep: cfg.ep.max(1) as u64,
                expert_tp: cfg.expert_tp.max(1) as u64,
                imbalance: self.moe_imbalance(),
            },
            cfg.precision,
            te_modules(cfg),
        )
    }

    /// Adds a measured profile for its GPU kind.
    pub fn with_profile(mut self, profile: OpProfile) -> ProfiledCostModel {
        self.profiles.insert(profile.file.gpu, Arc::new(profile));
        self.cache = RwLock::default();
        self
    }

    /// The efficiency table in use.
    pub fn efficiencies(&self) -> &EfficiencyFile {
        self.efficiencies
            .as_ref()
            .unwrap_or_else(|| crate::efficiency::committed())
    }

    fn efficiency(&self, gpu: Gpu) -> &Efficiency {
        self.efficiencies().get(gpu)
    }

    fn allocator(&self) -> &Allocator {
        &self.efficiencies().allocator
    }

    /// Reduces a step profile to per-block sums on `gpu` at tensor-parallel degree `tp`, with bf16
    /// GEMMs (routed experts, if any, unsplit by expert parallelism; see
    /// [`ProfiledCostModel::prepare_for`]).
    pub fn prepare(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        tp: u32,
        sequence_parallel: bool,
    ) -> PreparedProfile {
        self.prepare_with(profile, gpu, tp, sequence_parallel, MatmulPrecision::Bf16)
    }

    /// [`ProfiledCostModel::prepare`] with the GEMM precision given: under
    /// [`MatmulPrecision::Fp8`] the decoder blocks' linear GEMMs are timed at the fp8 rate and their
    /// per-micro-batch scaling casts are added (see [`crate::precision`]), as the default stack
    /// (Megatron-LM) runs them, in Transformer Engine modules ([`Stack::runs_te_modules`];
    /// [`ProfiledCostModel::prepare_for`] prepares for a configuration's stack).
    pub fn prepare_with(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        tp: u32,
        sequence_parallel: bool,
        precision: MatmulPrecision,
    ) -> PreparedProfile {
        self.prepare_split(
            profile,
            gpu,
            sequence_parallel,
            &crate::moe::ExpertSplit {
                tp: tp.max(1) as u64,
                ep: 1,
                expert_tp: 1,
                imbalance: self.moe_imbalance(),
            },
            precision,
            precision == MatmulPrecision::Fp8 && Stack::default().runs_te_modules(),
        )
    }

    fn prepare_split(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        sequence_parallel: bool,
        experts: &crate::moe::ExpertSplit,
        precision: MatmulPrecision,
        te_modules: bool,
    ) -> PreparedProfile {
        let tp = experts.tp as u32;
        let fp8 = precision == MatmulPrecision::Fp8;
        let te_modules = fp8 && te_modules;
        let spec = gpu.spec();
        let eff = self.efficiency(gpu);
        let timer = OpTimer {
            spec,
            eff,
            profile: self.profiles.get(&gpu).map(|p| p.as_ref()),
        };
        let tp64 = tp.max(1) as u64;
        let (mut profile_ops, mut roofline_ops) = (0u64, 0u64);
        let mut model_flops = 0.0;
        let mut blocks = Vec::with_capacity(profile.blocks.len());
        for b in &profile.blocks {
            let (mut fwd, mut bwd) = (PhaseSums::default(), PhaseSums::default());
            let mut wgrad = PhaseSums::default();
            let wmask = crate::pipeline::weight_grad_ops(b);
            let mut vocab_reduced = false;
            let (mut fp8_weight_params, mut fp8_linears) = (0.0, 0.0);
            // The phase of the previous fp8 GEMM when it was column-parallel: a column-parallel linear
            // of role `SharedInputLinear` after it in the same phase joins its Transformer Engine
            // module, on a stack that runs them (`Stack::runs_te_modules`).
            let mut fp8_column: Option<Phase> = None;
            for (oi, op) in b.ops.iter().enumerate() {
                if matches!(op.phase, Phase::Forward | Phase::Backward) {
                    model_flops += op.flops;
                }
                let mut s = if op.split == TpSplit::Expert {
                    crate::moe::shard_expert(op, experts)
                } else if tp64 > 1
                    && b.kind == BlockKind::Head
                    && op.split == TpSplit::Replicated
                    && matches!(op.class, KernelClass::Matmul { .. })
                {
                    // The output layer is vocab-parallel under tensor parallelism (Megatron's
                    // parallel LM head), also when the graph ties it to the embedding and marks it
                    // replicated.
                    let mut o = op.clone();
                    o.split = TpSplit::Vocab;
                    shard(&o, tp64, sequence_parallel)
                } else {
                    shard(op, tp64, sequence_parallel)
                };
                let fp8_gemm = fp8 && crate::precision::is_fp8_gemm(b.kind, op);
                if fp8_gemm {
                    // Scaling casts of this GEMM, one kernel per Transformer Engine module
                    // (memory-bound; see `precision::te_module_casts`); the weight's once per step.
                    let column = op.split == TpSplit::Column;
                    let same_module = te_modules
                        && column
                        && op.role == Role::SharedInputLinear
                        && fp8_column == Some(op.phase);
                    fp8_column = column.then_some(op.phase);
                    if let Some(c) = crate::precision::te_module_casts(op, tp64, same_module) {
                        let cast = |bytes: f64, kernels: f64| {
                            let base = timer.memory_time(bytes) * eff.memory;
                            PhaseSums {
                                gpu_s: base / eff.memory + kernels * KERNEL_FLOOR_S,
                                kernels,
                                memory_s: base,
                                memory_kernels: kernels,
                                ..Default::default()
                            }
                        };
                        let per = crate::precision::CAST_TRANSPOSE_BYTES_PER_ELEMENT;
                        let forward = cast(c.forward_cast_elements * per, c.kernels.0);
                        let backward = cast(
                            c.backward_cast_elements * per
                                + c.backward_transpose_elements
                                    * crate::precision::FP8_TRANSPOSE_BYTES_PER_ELEMENT,
                            c.kernels.1,
                        );
                        match op.phase {
                            Phase::Forward => {
                                fwd.add(&forward);
                                bwd.add(&backward);
                            }
                            Phase::Recompute => bwd.add(&forward),
                            _ => {}
                        }
                        if op.phase == Phase::Forward
                            && let KernelClass::Matmul { n, k, .. } = s.class
                        {
                            fp8_weight_params += (k * n) as f64;
                            fp8_linears += 1.0;
                        }
                    }
                    if let Some(bytes) = crate::precision::fp8_gemm_bytes(&s.class) {
                        s.bytes = bytes;
                    }
                    s.class = crate::precision::as_fp8(&s.class);
                }
                if matches!(op.class, KernelClass::Gather)
                    && op.phase == Phase::Forward
                    && b.boundary_bytes > 0.0
                {
                    // An embedding lookup reads the looked-up rows, not the whole table the op's
                    // inputs list: about its output, read and written.
                    s.bytes = s.bytes.min(2.0 * b.boundary_bytes / tp64 as f64);
                }
                let mut k = timer.base(&s);
                if fp8_gemm && k.bucket == Bucket::Matmul {
                    k.base_s /= crate::precision::FP8_GEMM_EFFICIENCY;
                }
                match k.source {
                    Source::Profile => profile_ops += 1,
                    Source::Roofline => roofline_ops += 1,
                }
                let mut ps = PhaseSums {
                    gpu_s: k.base_s / timer.coefficient(k.bucket),
                    kernels: 1.0,
                    ..Default::default()
                };
                match k.bucket {
                    Bucket::Matmul => {
                        ps.matmul_s = k.base_s;
                        let beside_comm = match op.phase {
                            Phase::Forward | Phase::Recompute => op.split == TpSplit::Row,
                            Phase::Backward => op.split == TpSplit::Column,
                            Phase::Optimizer => false,
                        };
                        if tp64 > 1 && beside_comm {
                            ps.tp_overlap_matmul_s = k.base_s;
                        }
                    }
                    Bucket::Attention => ps.attention_s = k.base_s,
                    Bucket::Measured => ps.measured_s = k.base_s,
                    Bucket::Memory | Bucket::Fusable => {
                        ps.gpu_s += KERNEL_FLOOR_S;
                        ps.memory_kernels = 1.0;
                        if k.bucket == Bucket::Fusable {
                            ps.fusable_s = k.base_s;
                            ps.fusable_kernels = 1.0;
                            // Hugging Face's unfused rotary embedding (its concatenations are
                            // copies, kept in `memory_s` as the traffic of a fused RoPE kernel, see
                            // `PhaseSums::eager_rotary_s`; its casts have a cast role).
                            if op.layer.is_some() && op.role == Role::EagerRotary {
                                ps.eager_rotary_s = k.base_s;
                                ps.eager_rotary_kernels = 1.0;
                            }
                        } else {
                            ps.memory_s = k.base_s;
                            // The training graph's casts inside a decoder layer.
                            if op.layer.is_some() && op.role.is_cast() {
                                ps.autocast_cast_s = k.base_s;
                                ps.autocast_cast_kernels = 1.0;
                            }
                        }
                    }
                }
                if tp64 > 1 {
                    // Megatron's collectives: a row-parallel linear all-reduces its output in forward
                    // (and recomputation); its column-parallel partner all-reduces the input gradient in
                    // backward. The vocab-parallel embedding all-reduces its output.
                    let out_bytes = match &op.class {
                        KernelClass::Matmul {
                            batch, m, n, dtype, ..
                        } if op.split == TpSplit::Row => {
                            let elements = batch * m * n;
                            // Both all-gathers of an fp8 linear's pair (its input's in forward, its
                            // output gradient's in backward) move the fp8 copy
                            // (`PhaseSums::tp_gather_bytes`).
                            let gathered = if fp8_gemm {
                                moai_ir::DType::F8E4M3FN.size_bytes()
                            } else {
                                dtype.size_bytes()
                            };
                            Some((
                                (elements * dtype.size_bytes()) as f64,
                                (elements * gathered) as f64,
                            ))
                        }
                        // One all-reduce of the block's output activation (not of the table the
                        // gather's bytes count), however many lookups the block sums.
                        KernelClass::Gather
                            if op.split == TpSplit::Vocab
                                && op.phase == Phase::Forward
                                && !vocab_reduced =>
                        {
                            vocab_reduced = true;
                            let bytes = if b.boundary_bytes > 0.0 {
                                b.boundary_bytes
                            } else {
                                op.bytes / 2.0
                            };
                            Some((bytes, bytes))
                        }
                        _ => None,
                    };
                    if let Some((bytes, gathered)) = out_bytes {
                        ps.tp_bytes = bytes;
                        ps.tp_gather_bytes = gathered;
                        ps.tp_collectives = 1.0;
                        if op.phase == Phase::Forward {
                            bwd.tp_bytes += bytes;
                            bwd.tp_gather_bytes += gathered;
                            bwd.tp_collectives += 1.0;
                        }
                    }
                }
                if experts.ep > 1
                    && let Some(bytes) = crate::moe::dispatch_bytes(op, experts)
                {
                    // Dispatch and combine around the expert GEMMs, and their transposes in backward.
                    let pair = PhaseSums {
                        a2a_bytes: 2.0 * bytes,
                        a2a_count: 2.0,
                        ..Default::default()
                    };
                    bwd.add(&pair);
                    if op.phase == Phase::Forward {
                        ps.a2a_bytes = pair.a2a_bytes;
                        ps.a2a_count = pair.a2a_count;
                    }
                }
                match op.phase {
                    Phase::Forward => fwd.add(&ps),
                    Phase::Backward | Phase::Recompute => {
                        // Backward row-parallel ops are accounted through their forward partner.
                        let ps = if op.phase == Phase::Backward {
                            PhaseSums {
                                tp_bytes: 0.0,
                                tp_gather_bytes: 0.0,
                                tp_collectives: 0.0,
                                ..ps
                            }
                        } else {
                            ps
                        };
                        if wmask.get(oi).copied().unwrap_or(false) {
                            wgrad.add(&ps);
                        }
                        bwd.add(&ps)
                    }
                    Phase::Optimizer => {}
                }
            }
            let expert = b.expert_params.min(b.tp_sharded_params) as f64;
            let params = (b.tp_sharded_params as f64 - expert) / tp64 as f64
                + expert / (experts.ep * experts.expert_tp).max(1) as f64
                + (b.params - b.tp_sharded_params.min(b.params)) as f64;
            // Megatron's scatter/gather optimisation: each tensor-parallel rank sends 1/tp of the
            // boundary activation between stages (and all-gathers it inside the server).
            let bound = b.boundary_bytes / tp64 as f64;
            blocks.push(BlockSums {
                kind: b.kind,
                forward: fwd,
                backward: bwd,
                weight_grad: wgrad,
                params,
                saved_bytes: b.saved.per_device(tp64, sequence_parallel),
                transient_bytes: b.transient.per_device(tp64, sequence_parallel),
                boundary_bytes: bound,
                fp8_weight_params,
                fp8_linears,
            });
        }
        let (mut optimizer_s, mut optimizer_base_s, mut optimizer_measured_s) = (0.0, 0.0, 0.0);
        for op in &profile.optimizer {
            let s = shard(op, 1, false);
            optimizer_s += timer.time(&s).0;
            let k = timer.base(&s);
            if k.bucket == Bucket::Measured {
                optimizer_measured_s += k.base_s;
            } else {
                optimizer_base_s += k.base_s;
            }
        }
        PreparedProfile {
            blocks,
            optimizer_s,
            optimizer_kernels: profile.optimizer.len() as f64,
            optimizer_base_s,
            optimizer_measured_s,
            shapes: profile
                .blocks
                .iter()
                .map(|b| crate::memory::block_shape(b, tp64))
                .collect(),
            total_params: profile.blocks.iter().map(|b| b.params as f64).sum(),
            model_flops,
            profile_ops,
            roofline_ops,
            precision,
            te_modules,
        }
    }

    fn prepared(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        cfg: &ParallelConfig,
    ) -> Arc<PreparedProfile> {
        let key: CacheKey = (
            gpu,
            cfg.tp,
            cfg.sequence_parallel,
            (cfg.precision, te_modules(cfg)),
            (
                profile.fingerprint(),
                profile.micro_batch,
                profile.seq,
                profile.blocks.len(),
                profile.blocks.iter().map(|b| b.ops.len()).sum(),
            ),
            (cfg.ep, cfg.expert_tp, self.moe_imbalance().to_bits()),
        );
        if let Ok(cache) = self.cache.read()
            && let Some((_, p)) = cache.iter().find(|(k, _)| *k == key)
        {
            return p.clone();
        }
        let p = Arc::new(self.prepare_for(profile, gpu, cfg));
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_ENTRIES {
                cache.remove(0);
            }
            cache.push((key, p.clone()));
        }
        p
    }
}

impl CostModel for ProfiledCostModel {
    /// This model's own per-op times (cached per tp and sequence parallelism), see [`crate::blocks`].
    fn block_costs(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Vec<crate::blocks::BlockCost>> {
        let sc = self.efficiencies().costed(cfg.stack, cluster.gpu);
        let sc = sc.as_ref();
        let costed = costed_as(cfg);
        let cfg = costed.as_ref();
        let prep = self.prepared(profile, cluster.gpu, cfg);
        let eff = self.efficiency(cluster.gpu);
        let launch = sc.launch_overhead_s;
        let sms = cfg
            .stack
            .tp_overlap_sm_margin(cfg.sequence_parallel, cfg.tp_comm_overlap);
        let units = cluster.gpu.spec().compute_units;
        let kernel_s = |s: &PhaseSums| {
            let (gpu, kernels) = s.kernel_time(eff, sc);
            (gpu + s.sm_margin_s(eff, sms, units)).max(kernels * launch)
        };
        let overlap = cfg
            .stack
            .tp_comm_overlap(cfg.sequence_parallel, cfg.tp_comm_overlap);
        let exposed_tp =
            |s: &PhaseSums, t: f64, backward: bool| s.exposed_tp_s(t, eff, overlap, backward);
        crate::blocks::from_prepared(&prep, &kernel_s, &exposed_tp, profile, cluster, cfg)
    }

    fn estimate(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Estimate> {
        let prep = self.prepared(profile, cluster.gpu, cfg);
        self.estimate_prepared(&prep, profile, cluster, cfg)
    }

    /// This model's bounds, see [`crate::bounds::profiled`].
    fn lower_bounds(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Option<crate::bounds::LowerBounds> {
        let sc = self.efficiencies().costed(cfg.stack, cluster.gpu);
        let costed = costed_as(cfg);
        let cfg = costed.as_ref();
        let prep = self.prepared(profile, cluster.gpu, cfg);
        let eff = self.efficiency(cluster.gpu);
        let mut b = crate::bounds::profiled(&prep, eff, &sc, profile, cfg);
        if self.time_only {
            // estimates without the memory part predict a zero peak
            b.peak_memory_bytes = 0.0;
        }
        Some(b)
    }
}

/// Whether `cfg`'s fp8 linears run as Transformer Engine modules (what a profile is prepared for).
fn te_modules(cfg: &ParallelConfig) -> bool {
    cfg.precision == MatmulPrecision::Fp8 && cfg.stack.runs_te_modules()
}

/// The configuration as the cost model prices it when its stack is costed as another
/// ([`crate::Stack::costed_as`]: torchtitan as FSDP), borrowed when it is priced as named.
fn costed_as(cfg: &ParallelConfig) -> std::borrow::Cow<'_, ParallelConfig> {
    let as_stack = cfg.stack.costed_as();
    if as_stack == cfg.stack {
        std::borrow::Cow::Borrowed(cfg)
    } else {
        std::borrow::Cow::Owned(ParallelConfig {
            stack: as_stack,
            ..cfg.clone()
        })
    }
}

impl ProfiledCostModel {
    /// [`CostModel::estimate`] on a profile already reduced by [`ProfiledCostModel::prepare`] for the
    /// cluster's GPU, `cfg.tp` and `cfg.sequence_parallel` (by any model: the prepared sums do not
    /// depend on the coefficients, which this model applies). The fit uses it to try many
    /// coefficient sets on one prepared profile.
    pub fn estimate_prepared(
        &self,
        prep: &PreparedProfile,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Estimate> {
        let named = cfg.stack;
        let costed = costed_as(cfg);
        let cfg = costed.as_ref();
        cfg.validate_cluster(cluster)?;
        let ranges = cfg.validate_profile(profile)?;
        if profile.blocks.is_empty() || prep.blocks.len() != profile.blocks.len() {
            return Err(CostError::StepProfile("no blocks".into()));
        }
        if prep.precision != cfg.precision {
            return Err(CostError::InvalidConfig(format!(
                "the profile was prepared for {} GEMMs but the configuration's precision is {} (prepare it with ProfiledCostModel::prepare_for)",
                prep.precision, cfg.precision
            )));
        }
        if prep.te_modules != te_modules(cfg) {
            let how = |te: bool| {
                if te {
                    "in Transformer Engine modules"
                } else {
                    "per linear"
                }
            };
            return Err(CostError::InvalidConfig(format!(
                "the profile was prepared for fp8 linears cast {} but stack {named} casts them {} (prepare it with ProfiledCostModel::prepare_for)",
                how(prep.te_modules),
                how(te_modules(cfg))
            )));
        }
        let eff = self.efficiency(cluster.gpu);
        let spec = cluster.gpu.spec();
        let stack = cfg.stack;
        let sc = self.efficiencies().costed(named, cluster.gpu);
        let sc = sc.as_ref();
        let launch = sc.launch_overhead_s;
        let pp = cfg.pp.max(1) as usize;
        let nv = ranges.len();
        let m = cfg.num_micro_batches.max(1);
        // Context parallelism: each rank runs 1/cp of every block's work (see `crate::context`).
        let cp = cfg.cp.max(1);

        // Blocks → virtual stages.
        let mut fwd = vec![PhaseSums::default(); nv];
        let mut bwd = vec![PhaseSums::default(); nv];
        let mut wgrad = vec![PhaseSums::default(); nv];
        let mut params = vec![0f64; nv];
        let mut boundary: f64 = 0.0;
        let mut block_stage = Vec::with_capacity(prep.blocks.len());
        // Per block with cp > 1: its ring's attention scales (forward, backward), read again by the
        // cp-traffic overlap below. The ring steps of the last attention seen are kept, since the
        // decoder blocks share one attention shape.
        let mut ring_scales: Vec<(f64, f64)> = Vec::new();
        let mut last_ring: Option<(
            crate::context::CpAttention,
            Option<crate::context::RingSteps>,
        )> = None;
        for (i, b) in prep.blocks.iter().enumerate() {
            let v = match b.kind {
                BlockKind::Embedding => 0,
                BlockKind::Head => nv - 1,
                BlockKind::Decoder(l) => ranges
                    .iter()
                    .position(|(a, z)| l >= *a && l <= *z)
                    .unwrap_or(nv - 1),
            };
            block_stage.push(v);
            let (mut f, mut bw) = (b.forward.context_shard(cp), b.backward.context_shard(cp));
            // The ring's per-step kernels and merge traffic (see `crate::context::RingSteps`).
            let steps = ring_attention(prep, profile, i, cfg).and_then(|a| match last_ring {
                Some((seen, r)) if seen == a => r,
                _ => {
                    let r = crate::context::ring_steps(
                        &a,
                        cfg,
                        spec.compute_units,
                        stack.runs_pytorch_ring(),
                    );
                    last_ring = Some((a, r));
                    r
                }
            });
            if cp > 1 {
                ring_scales.push(steps.map_or((1.0, 1.0), |r| (r.forward_scale, r.backward_scale)));
            }
            if let Some(r) = steps {
                let hbm = spec.hbm_bytes_per_s;
                // Recomputation that reruns attention's forward reruns its ring in backward.
                let again = matches!(
                    cfg.recompute,
                    crate::config::Recompute::Full | crate::config::Recompute::Selective
                );
                let rerun = if again { f.attention_s } else { 0.0 };
                let (rb, rk) = if again {
                    (r.forward_merge_bytes, r.forward_merge_kernels)
                } else {
                    (0.0, 0.0)
                };
                let fs = r.forward_scale;
                bw = bw.with_ring_steps(
                    rerun,
                    fs,
                    r.backward_scale,
                    r.backward_merge_bytes + rb,
                    r.backward_merge_kernels + rk,
                    hbm,
                );
                f = f.with_ring_steps(
                    f.attention_s,
                    fs,
                    fs,
                    r.forward_merge_bytes,
                    r.forward_merge_kernels,
                    hbm,
                );
            }
            fwd[v].add(&f);
            bwd[v].add(&bw);
            wgrad[v].add(&b.weight_grad.context_shard(cp));
            params[v] += b.params;
            let next_v = prep.blocks.get(i + 1).map(|n| match n.kind {
                BlockKind::Embedding => 0,
                BlockKind::Head => nv - 1,
                BlockKind::Decoder(l) => ranges
                    .iter()
                    .position(|(a, z)| l >= *a && l <= *z)
                    .unwrap_or(nv - 1),
            });
            if next_v.is_some_and(|n| n != v) {
                boundary = boundary.max(b.boundary_bytes / cp as f64);
            }
        }
        // Context-parallel traffic per virtual stage: (forward, backward) before overlap and exposed.
        let mut cp_total = vec![0f64; nv];
        let mut cp_exposed = vec![(0f64, 0f64); nv];
        if cp > 1 {
            for (i, (b, v)) in prep.blocks.iter().zip(&block_stage).enumerate() {
                let Some(attn) = ring_attention(prep, profile, i, cfg) else {
                    continue;
                };
                // Ring steps hide behind the rank's attention kernels as priced per step.
                let (fs, bs) = ring_scales.get(i).copied().unwrap_or((1.0, 1.0));
                let attention_s = |s: &PhaseSums, scale: f64| {
                    s.context_shard(cp).attention_s * scale / attention_coefficient(eff, stack)
                };
                let t = crate::context::block_comm(
                    cluster,
                    cfg,
                    &attn,
                    (attention_s(&b.forward, fs), attention_s(&b.backward, bs)),
                );
                cp_total[*v] += t.forward_s + t.backward_s;
                cp_exposed[*v].0 += t.forward_exposed_s;
                cp_exposed[*v].1 += t.backward_exposed_s;
            }
        }

        // Per virtual stage: compute (host-bounded) and tensor-parallel communication.
        // Each tensor-parallel collective at its own message size.
        let tp_time = |s: &PhaseSums| s.tp_time(cluster, cfg);
        let mut compute = vec![(0f64, 0f64); nv];
        let mut comm = vec![(0f64, 0f64); nv];
        let mut comm_total = vec![0f64; nv];
        let mut times = Vec::with_capacity(nv);
        let hidden = stack.tp_comm_overlap(cfg.sequence_parallel, cfg.tp_comm_overlap);
        // Without pipelining the host issues the whole step's kernels ahead of the GPU (PyTorch is
        // asynchronous up to the step's synchronisation), so the host bound applies to the whole
        // step; between pipeline stages every phase waits for its input, so it applies per phase.
        let whole_step_host = pp == 1;
        // Per micro-batch: host seconds of the forward and backward launches, device seconds of the
        // forward and backward kernels (pp 1 only; its host-device pipeline bound, which includes the
        // host alone, is the step's host time).
        let mut host_dev = HostDevice::default();
        // SMs Transformer Engine's TP overlap takes from the GEMMs it runs beside (0 without it).
        let sms = stack.tp_overlap_sm_margin(cfg.sequence_parallel, cfg.tp_comm_overlap);
        let units = spec.compute_units;
        // A phase's compute seconds (host-bounded) and its kernel seconds by class.
        let mut phase = |s: &PhaseSums, back: bool| {
            let (mut classes, kernels) = s.kernel_classes(eff, sc);
            classes.tp_sm_margin_s = s.sm_margin_s(eff, sms, units);
            let gpu = classes.total();
            let t = if whole_step_host {
                host_dev.add(back, kernels * launch, gpu);
                gpu
            } else {
                gpu.max(kernels * launch)
            };
            (t, classes)
        };
        // Per virtual stage: one micro-batch's forward plus backward kernel seconds by class.
        let mut stage_classes = vec![KernelClasses::default(); nv];
        // Mixture-of-experts all-to-alls: on the critical path (the expert GEMMs wait for the
        // dispatched tokens, the next op for the combined ones).
        let mut dispatch = vec![0f64; nv];
        for v in 0..nv {
            let ((cf, kf), (cb, kb)) = (phase(&fwd[v], false), phase(&bwd[v], true));
            stage_classes[v] = kf.plus(&kb);
            let (tf, tb) = (tp_time(&fwd[v]), tp_time(&bwd[v]));
            comm_total[v] = tf + tb;
            // The overlapped part of a TP collective hides behind the GEMMs of the same phase.
            let (tf, tb) = (
                fwd[v].exposed_tp_s(tf, eff, hidden, false),
                bwd[v].exposed_tp_s(tb, eff, hidden, true),
            );
            let (af, ab) = (
                fwd[v].a2a_time(cluster, cfg.ep, cfg.tp),
                bwd[v].a2a_time(cluster, cfg.ep, cfg.tp),
            );
            dispatch[v] = af + ab;
            let (tf, tb) = (tf + cp_exposed[v].0, tb + cp_exposed[v].1);
            compute[v] = (cf, cb);
            comm[v] = (tf + af, tb + ab);
            // The W pass: the weight-gradient GEMMs' kernel time (no collective), within the backward.
            let w = wgrad[v].kernel_time(eff, sc).0.min(cb);
            times.push(StageTimes {
                forward_s: cf + tf + af,
                backward_s: cb + tb + ab,
                weight_grad_s: w,
            });
        }
        let host_s = if whole_step_host {
            host_dev.pipeline_s(m)
        } else {
            0.0
        };
        // Activation offload (crate::offload): per device, each offloaded layer's copy out runs under
        // the next block's forward on the device and its copy back under that block's backward; the
        // excess joins the layer's stage times (so the schedule sees it). Host bytes per device: the
        // offloaded bytes of its in-flight micro-batches.
        // What the memory model reads for pipeline device `d`.
        let device_input = |d: usize| DeviceInput {
            profile,
            prep,
            cfg,
            device: d as u32,
            block_stage: &block_stage,
            virtual_stages: nv,
            boundary_bytes: boundary,
        };
        let mut act_offload = vec![0f64; nv];
        let mut act_host = vec![0f64; pp];
        if cfg.offload_activations > 0 {
            for (d, host) in act_host.iter_mut().enumerate() {
                let input = device_input(d);
                let mut per_stage: Vec<Vec<crate::offload::OffloadedLayer>> = vec![Vec::new(); nv];
                for (i, bytes) in crate::memory::offloaded_layers(&input) {
                    let v = block_stage[i].min(nv - 1);
                    let next = prep
                        .blocks
                        .get(i + 1)
                        .filter(|_| block_stage.get(i + 1) == Some(&block_stage[i]));
                    let cover = |s: &PhaseSums| s.context_shard(cp).kernel_time(eff, sc).0;
                    per_stage[v].push(crate::offload::OffloadedLayer {
                        bytes,
                        forward_cover_s: next.map_or(0.0, |n| cover(&n.forward)),
                        backward_cover_s: next.map_or(0.0, |n| cover(&n.backward)),
                    });
                    *host +=
                        bytes * crate::memory::in_flight(cfg.schedule, cfg.pp, d as u32, m) as f64;
                }
                for (v, layers) in per_stage.iter().enumerate() {
                    if layers.is_empty() {
                        continue;
                    }
                    let t = crate::offload::activation_offload(cluster.gpu, layers);
                    times[v].forward_s += t.forward_exposed_s;
                    times[v].backward_s += t.backward_exposed_s;
                    act_offload[v] += t.forward_exposed_s + t.backward_exposed_s;
                }
            }
        }
        // Megatron-LM's rank order tp-cp-dp-pp: pipeline neighbours are dp·tp·cp ranks apart.
        let stride = cfg.dp * cfg.tp * cp;
        let p2p = if pp > 1 {
            // Each tensor-parallel rank sends its 1/tp of the boundary activation to the next stage;
            // without sequence parallelism the receiver all-gathers the whole activation inside its
            // tensor-parallel group (Megatron's scatter-gather optimisation) before it can start.
            let gather = if cfg.tp > 1 && !cfg.sequence_parallel {
                collective_time(
                    cluster,
                    Collective::AllGather,
                    boundary * cfg.tp as f64,
                    cfg.tp,
                    1,
                )
            } else {
                0.0
            };
            collective_time(cluster, Collective::PointToPoint, boundary, 2, stride) + gather
        } else {
            0.0
        };
        let sim = simulate(cfg.schedule, &times, cfg.pp, m, p2p)?;

        // Per device: gradient sync, optimizer, memory.
        let dp = cfg.dp.max(1);
        // Gradients are reduced (and ZeRO state sharded) over the dp·cp ranks that hold the same
        // weights, `tp` apart.
        let dpc = dp * cp;
        // FP8: once per step, every fp8 weight is cast (with its transpose) and the amaxes are
        // all-reduced over the data- and tensor-parallel group (Megatron's amax reduction group);
        // counted with the optimizer step, the device's other once-per-step work.
        let fp8_step_s = |d: usize| -> f64 {
            if cfg.precision != MatmulPrecision::Fp8 {
                return 0.0;
            }
            let (mut params, mut linears) = (0.0, 0.0);
            for (b, v) in prep.blocks.iter().zip(&block_stage) {
                if cfg.schedule.device_of(*v, pp) == d {
                    params += b.fp8_weight_params;
                    linears += b.fp8_linears;
                }
            }
            if linears == 0.0 {
                return 0.0;
            }
            let cast = params * crate::precision::CAST_TRANSPOSE_BYTES_PER_ELEMENT
                / (spec.hbm_bytes_per_s * eff.memory)
                + linears * KERNEL_FLOOR_S;
            let group = dpc * cfg.tp.max(1);
            let amax = if group > 1 {
                collective_time(
                    cluster,
                    Collective::AllReduce,
                    3.0 * 4.0 * linears,
                    dpc,
                    cfg.tp,
                )
            } else {
                0.0
            };
            cast + amax
        };
        let alloc = self.allocator();
        let mut memory = Vec::with_capacity(pp);
        let mut device_compute_s = Vec::with_capacity(pp);
        let mut best = (f64::MIN, 0usize, 0f64, 0f64, 0f64, 0f64);
        let mut offload_dev: Vec<f64> = Vec::with_capacity(pp);
        for d in 0..pp {
            let vs: Vec<usize> = (0..nv)
                .filter(|v| cfg.schedule.device_of(*v, pp) == d)
                .collect();
            let p_dev: f64 = vs.iter().map(|v| params[*v]).sum();
            let b_dev: f64 = vs.iter().map(|v| times[*v].backward_s).sum();
            let f_dev: f64 = vs.iter().map(|v| times[*v].forward_s).sum();
            // Bytes per parameter of the weights the collectives gather (ZeRO-3 before each block,
            // ZeRO-1 after the step): the copy the forward computes with, as the memory model
            // holds it for this stack (bf16 under amp-bf16 on every engine moai exports to).
            let gathered = crate::memory::compute_bytes_per_param(profile, cfg);
            let grad_bytes = p_dev * profile.grad_bytes_per_param;
            let n_blocks = block_stage
                .iter()
                .filter(|v| cfg.schedule.device_of(**v, pp) == d)
                .count()
                .max(1) as f64;
            let dp_traffic = if dpc > 1 {
                crate::data_parallel::traffic(
                    cluster,
                    cfg,
                    stack,
                    &crate::data_parallel::DeviceWork {
                        params: p_dev,
                        gathered_bytes_per_param: gathered,
                        grad_bytes,
                        blocks: n_blocks,
                        forward_s: f_dev,
                        backward_s: b_dev,
                        micro_batches: m as f64,
                    },
                )
            } else {
                crate::data_parallel::DpTraffic::default()
            };
            let exposed = dp_traffic.exposed_s;
            let (dp_comm, gather_total) = (dp_traffic.comm_s, dp_traffic.gather_s);
            let shard = if cfg.distribute_param || cfg.distribute_optimizer {
                (cfg.shard_dp().max(1) * cp) as f64
            } else {
                1.0
            };
            let frac = if prep.total_params > 0.0 {
                p_dev / shard / prep.total_params
            } else {
                0.0
            };
            // Fused multi-tensor optimizer: one pass over the shard's states at the achievable
            // bandwidth, one launch per chunk of tensors.
            let launches = (prep.optimizer_kernels * frac / OPTIMIZER_TENSORS_PER_LAUNCH)
                .ceil()
                .max(1.0);
            let device_opt = ((prep.optimizer_base_s / eff.memory + prep.optimizer_measured_s)
                * frac)
                .max(launches * launch)
                + launches * KERNEL_FLOOR_S;
            // Optimizer offload: the CPU step, the gradient download (overlapped with backward, in
            // buckets) and the weight upload replace the device's optimizer kernels.
            // Host memory per server: every device's offloaded optimizer shard and activations.
            let server = cluster.devices_per_server.min(cluster.devices) as f64;
            let host_opt = if cfg.offload_optimizer {
                crate::offload::host_bytes_per_device(
                    p_dev / shard,
                    profile.optimizer_bytes_per_param,
                )
            } else {
                0.0
            };
            let host_acts = act_host.get(d).copied().unwrap_or(0.0);
            if host_opt + host_acts > 0.0 {
                let host = crate::offload::host_spec(cluster.gpu);
                let need = (host_opt + host_acts) * server;
                if need > host.memory_per_server_bytes as f64 {
                    let what = match (host_opt > 0.0, host_acts > 0.0) {
                        (true, true) => "the offloaded optimizer state and activations need",
                        (false, true) => "the offloaded activations need",
                        _ => "the offloaded optimizer state needs",
                    };
                    return Err(CostError::InvalidConfig(format!(
                        "{what} {:.0} GiB of host memory per server, more than its {} GiB",
                        need / (1u64 << 30) as f64,
                        host.memory_per_server_bytes >> 30
                    )));
                }
            }
            let offload_s = if cfg.offload_optimizer {
                let shard_params = p_dev / shard;
                let t = crate::offload::optimizer_offload(
                    cluster.gpu,
                    cluster.devices_per_server,
                    shard_params,
                    grad_bytes,
                );
                let buckets = (grad_bytes / crate::stack::DDP_BUCKET_BYTES)
                    .ceil()
                    .max(1.0) as u32;
                exposed_after_overlap(t.download_s, b_dev, buckets) + t.cpu_step_s + t.upload_s
            } else {
                0.0
            };
            offload_dev.push(offload_s);
            let opt = if cfg.offload_optimizer {
                offload_s
            } else {
                device_opt
            } + sc.step_overhead_s
                + fp8_step_s(d);
            device_compute_s.push(
                vs.iter()
                    .map(|v| (compute[*v].0 + compute[*v].1) * m as f64)
                    .sum::<f64>()
                    + opt,
            );
            let end = sim
                .end_s
                .get(d)
                .copied()
                .unwrap_or(sim.makespan_s)
                .max(host_s)
                + exposed
                + opt;
            if end > best.0 {
                best = (end, d, exposed, opt, dp_comm, gather_total);
            }

            // The time fit skips the memory model (`time_only`).
            if self.time_only {
                continue;
            }
            memory.push(device_memory(&device_input(d), alloc));
        }
        let (step, crit, exposed_dp, opt, dp_comm_s, zero3_gather_s) = best;
        let vs: Vec<usize> = (0..nv)
            .filter(|v| cfg.schedule.device_of(*v, pp) == crit)
            .collect();
        let compute_s: f64 = vs
            .iter()
            .map(|v| (compute[*v].0 + compute[*v].1) * m as f64)
            .sum::<f64>()
            .max(host_s);
        let kernels = vs
            .iter()
            .fold(KernelClasses::default(), |a, v| a.plus(&stage_classes[*v]))
            .scaled(m as f64);
        let tp_comm_s: f64 = vs
            .iter()
            .map(|v| (comm[*v].0 + comm[*v].1) * m as f64)
            .sum();
        let exposed_comm_s = tp_comm_s + exposed_dp;
        let tp_total_s: f64 = vs.iter().map(|v| comm_total[*v] * m as f64).sum();
        let cp_comm_s: f64 = vs.iter().map(|v| cp_total[*v] * m as f64).sum();
        let moe_dispatch_s: f64 = vs.iter().map(|v| dispatch[*v] * m as f64).sum();
        let act_offload_s: f64 = vs.iter().map(|v| act_offload[*v] * m as f64).sum();
        let bubble_s = (step - compute_s - exposed_comm_s - opt - act_offload_s).max(0.0);
        let tokens = cfg.global_batch() as f64 * profile.seq as f64;
        let peak = memory.iter().map(|s| s.peak_bytes).fold(0.0, f64::max);
        let flops = prep.model_flops * m as f64 * dp as f64;
        Ok(Estimate {
            step_time_s: step,
            tokens_per_s: tokens / step,
            peak_memory_bytes: peak.max(0.0).round() as u64,
            mfu: flops / (step * cluster.devices as f64 * spec.peak_bf16_flops),
            breakdown: Breakdown {
                compute_s,
                exposed_comm_s,
                bubble_s,
                optimizer_s: opt,
                tp_comm_s: tp_total_s,
                dp_comm_s,
                zero3_gather_s,
                step_overhead_s: sc.step_overhead_s,
                offload_s: offload_dev.get(crit).copied().unwrap_or(0.0) + act_offload_s,
                cp_comm_s,
                moe_dispatch_s,
                kernels,
            },
            memory,
            sources: SourceNotes {
                profile_ops: prep.profile_ops,
                roofline_ops: prep.roofline_ops,
                efficiency: format!("{}: {}", cluster.gpu, eff.source),
                profile: self.profiles.get(&cluster.gpu).map(|p| {
                    format!(
                        "{} ({}, {})",
                        p.file.device_name, p.file.date, p.file.command
                    )
                }),
                allocator: alloc.source.clone(),
                stack: if named == stack {
                    format!("{stack}: {}", sc.source)
                } else {
                    format!("{named} (costed as {stack}): {}", sc.source)
                },
            },
            stage_times: times,
            p2p_s: p2p,
            device_compute_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{HostDevice, PhaseSums};
    use crate::device::Gpu;
    use crate::stack::Stack;

    #[test]
    fn kernel_time_reads_the_resolved_fusion_fraction() {
        // The fraction is decided by `EfficiencyFile::costed`; the kernel time applies
        // `fused_bytes` as given, whatever Transformer Engine fraction the entry still names.
        let f = crate::efficiency::committed();
        let eff = f.get(Gpu::H100);
        let s = PhaseSums {
            fusable_s: 1e-3,
            ..Default::default()
        };
        let mut sc = f.stack(Stack::Megatron).clone();
        (sc.fused_bytes, sc.te_fused_bytes) = (0.3, Some(0.9));
        let (t, _) = s.kernel_time(eff, &sc);
        assert!((t - 0.3e-3 / eff.memory).abs() < 1e-15, "{t}");
        let costed = f.costed(Stack::Megatron, Gpu::H100);
        let (t, _) = s.kernel_time(eff, &costed);
        assert!((t - costed.fused_bytes * 1e-3 / eff.memory).abs() < 1e-15);
    }

    #[test]
    fn host_bound_forward_then_device_bound_backward() {
        let mut hd = HostDevice::default();
        hd.add(false, 0.05, 0.02);
        hd.add(true, 0.03, 0.06);
        // max(host, device) of the whole step is 0.08; the forward's host time and the backward's
        // device time cannot overlap.
        assert!((hd.pipeline_s(1) - 0.11).abs() < 1e-12);
        // Never below the host alone or the device alone.
        let mut dev = HostDevice::default();
        dev.add(false, 0.01, 0.05);
        dev.add(true, 0.01, 0.1);
        assert!((dev.pipeline_s(2) - 0.3).abs() < 1e-12);
        let mut host = HostDevice::default();
        host.add(false, 0.05, 0.01);
        host.add(true, 0.05, 0.01);
        assert!((host.pipeline_s(3) - 0.3).abs() < 1e-12);
        // Two micro-batches: the first forward's host time, then every backward and the second
        // forward on the device.
        assert!((hd.pipeline_s(2) - (0.05 + 2.0 * 0.06 + 0.02)).abs() < 1e-12);
    }
}
