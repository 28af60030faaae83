//! Memory per pipeline device, mechanistically: what is live at the step's peak for the software
//! stack the plan runs on.
//!
//! Three moments of a step are candidates for the peak, and the largest wins:
//! - **end of forward** (the loss is being computed): resident weights, optimizer state and persistent
//!   gradients; for the eager stack under autocast, the autocast cache of bf16 weight copies (PyTorch
//!   keeps a bf16 cast of every fp32 weight used by a matmul until the autocast region exits); the saved
//!   activations of the in-flight micro-batches; on the device holding the LM head, the loss buffers of
//!   the logits (the bf16 logits the model returns and their fp32 upcast, beside the log-probabilities
//!   the training graph saves); ZeRO-3 gather buffers and pipeline receive buffers;
//! - **during backward**: the same without the autocast cache (only the weight copies autograd saved
//!   stay), with the largest backward temporary of a block (recomputed activations, attention backward
//!   scratch) or of the loss;
//! - **optimizer step**: every gradient (set-to-none gradients exist by then) and the optimizer's
//!   temporaries (PyTorch's `foreach` AdamW allocates a `sqrt(v)` list as large as the moments; fused
//!   kernels allocate nothing; DeepSpeed's bf16 optimizer flattens an fp32 gradient partition).
//!
//! Static bytes per parameter follow the stack ([`static_bytes`]): Megatron-LM keeps bf16 weights, a
//! persistent fp32 `main_grad` buffer and fp32 master weights plus moments (18 bytes, 6 + 12/dp with
//! the distributed optimizer); DeepSpeed bf16 weights, bf16 gradients and 12 bytes of fp32 optimizer
//! state (ZeRO's (2 + 2 + K)Ψ); FSDP and eager PyTorch keep fp32 weights that are themselves the master
//! copy, fp32 gradients and two fp32 moments (16 bytes).
//!
//! Activations: the training graph's liveness (`moai_ir::cost::BlockProfile::saved`), built as the
//! stack computes (`Stack::computes_on_weight_copies`: on bf16 weight copies, so a bf16 residual stream
//! and bf16 checkpointed layer inputs, for every stack but eager autocast), with the bf16
//! weight copies split out (they are weights, counted once however many micro-batches are in flight,
//! and absent where the stack keeps bf16 weights or gathers them per layer). For the Megatron stack the
//! decoder layers use Korthikanti et al.'s layout instead ("Reducing Activation Recomputation in Large
//! Transformer Models", 2022): `s·b·h·(34 + 5·a·s/h)` bytes per layer, `s·b·h·(10 + 24/t + 5·a·s/(h·t))`
//! under tensor parallelism, `34·s·b·h/t` with sequence parallelism, and the `5·a·s/h` attention-score
//! term gone with selective recomputation or flash attention (the graph's attention is the fused
//! kernel, so it never counts here); `2·s·b·h` (over `t` with sequence parallelism) with full
//! recomputation.
//!
//! The truth is allocated bytes (`torch.cuda.max_memory_allocated`), not reserved: PyTorch's caching
//! allocator rounds every block up to 512 bytes ([`round_block`]; the 2 MiB rounding of large segments
//! affects reserved memory only). What the mechanisms do not see is in two coefficients
//! ([`MemoryCoefficients`], fitted by [`fit_memory`]): the loss-buffer bytes per logit of the Hugging
//! Face loss (prior: 2-byte bf16 logits plus 4-byte fp32 upcast) and a fixed per-device workspace.

use crate::config::{ParallelConfig, Recompute, Schedule};
use crate::efficiency::EfficiencyFile;
use crate::error::{CostError, Result};
use crate::estimate::{CostModel, PreparedProfile, ProfiledCostModel};
use crate::fit::{FitSample, round_sig};
use crate::stack::Stack;
use moai_ir::cost::{
    BlockKind, BlockProfile, KernelClass, LossKernel, Phase, StepProfile, TpSplit,
};
use serde::{Deserialize, Serialize};

/// The moment of the step at which a device's memory peaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakPhase {
    /// End of forward, while the loss is computed.
    #[default]
    Forward,
    /// During backward.
    Backward,
    /// The optimizer step.
    Optimizer,
}

/// Memory of one pipeline device (stage), bytes: what is live at its peak. `weights_bytes +
/// grads_bytes + optimizer_bytes + activations_bytes + transients_bytes = peak_bytes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageMemory {
    /// Pipeline rank.
    pub stage: u32,
    /// Weights resident at the peak: the stored weights (fp32 master weights for eager PyTorch and
    /// FSDP, bf16 weights for Megatron-LM and DeepSpeed) and, for eager autocast, the bf16 weight
    /// copies alive at that moment.
    pub weights_bytes: f64,
    /// Gradients resident at the peak.
    pub grads_bytes: f64,
    /// Optimizer state (moments, and fp32 master weights where they are separate from the weights).
    pub optimizer_bytes: f64,
    /// Saved activations of the in-flight micro-batches (bf16 weight copies excluded).
    pub activations_bytes: f64,
    /// Transient buffers at the peak: loss buffers of the logits, the largest backward temporary,
    /// ZeRO-3 gather buffers, pipeline receive buffers, optimizer temporaries, the fitted workspace
    /// and the allocator's rounding.
    pub transients_bytes: f64,
    /// Predicted peak allocated bytes.
    pub peak_bytes: f64,
    /// When the peak occurs.
    #[serde(default)]
    pub peak_phase: PeakPhase,
    /// Logit elements whose fitted loss buffers are live at the peak (0 when the peak is elsewhere,
    /// the device does not hold the LM head, or the loss is not the fitted kind: [`loss_buffers`]);
    /// the fitted `loss_bytes_per_logit` multiplies it.
    #[serde(default)]
    pub loss_logits: f64,
}

/// The fitted part of the memory model (the `allocator` section of `data/efficiency.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryCoefficients {
    /// Loss-buffer bytes per logit element live at the end of forward beyond the training graph's
    /// saved log-probabilities, for stacks running a Hugging Face-style loss (eager, FSDP, DeepSpeed):
    /// the bf16 logits the model returns (2) and their fp32 upcast (4) are the mechanism, 6 the prior.
    /// Megatron-LM's fused vocab-parallel cross entropy uses [`MEGATRON_LOSS_BYTES_PER_LOGIT`].
    pub loss_bytes_per_logit: f64,
    /// Fixed allocated bytes per device (cuBLAS and attention workspaces, RNG state, small buffers).
    pub workspace_bytes: f64,
    /// How the coefficients were obtained.
    pub source: String,
}

impl Default for MemoryCoefficients {
    fn default() -> Self {
        MemoryCoefficients {
            loss_bytes_per_logit: HF_LOSS_BYTES_PER_LOGIT,
            workspace_bytes: 0.0,
            source: "mechanistic prior (bf16 logits + fp32 upcast), no workspace".into(),
        }
    }
}

/// Prior of [`MemoryCoefficients::loss_bytes_per_logit`]: bf16 logits (2 bytes) kept by the model's
/// output plus their fp32 upcast (4 bytes) in the Hugging Face loss.
pub const HF_LOSS_BYTES_PER_LOGIT: f64 = 6.0;

/// Loss-buffer bytes per logit element live beyond what the training graph saves, at the end of
/// forward and during backward, for one stack and loss kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossBuffers {
    /// At the end of forward.
    pub forward: f64,
    /// During the loss's backward.
    pub backward: f64,
    /// Given by the fitted [`MemoryCoefficients::loss_bytes_per_logit`].
    pub fitted: bool,
}

/// The owner of which loss buffers a step holds: Megatron-LM's fused vocab-parallel cross entropy
/// ([`MEGATRON_LOSS_BYTES_PER_LOGIT`], whatever the model's loss); a fused kernel over the bf16 logits
/// ([`LossKernel::FusedBf16`]: the graph's saved bf16 logits are all at the end of forward, and its
/// backward adds the bf16 gradient, [`FUSED_LOSS_BACKWARD_BYTES_PER_LOGIT`]); otherwise the fitted
/// Hugging Face-style loss of an fp32 upcast.
pub fn loss_buffers(stack: Stack, loss: LossKernel, coef: &MemoryCoefficients) -> LossBuffers {
    match (stack, loss) {
        (Stack::Megatron, _) => LossBuffers {
            forward: MEGATRON_LOSS_BYTES_PER_LOGIT,
            backward: MEGATRON_LOSS_BYTES_PER_LOGIT,
            fitted: false,
        },
        (_, LossKernel::FusedBf16) => LossBuffers {
            forward: 0.0,
            backward: FUSED_LOSS_BACKWARD_BYTES_PER_LOGIT,
            fitted: false,
        },
        (_, LossKernel::Fp32Upcast) => LossBuffers {
            forward: coef.loss_bytes_per_logit,
            backward: coef.loss_bytes_per_logit,
            fitted: true,
        },
    }
}

/// The bf16 gradient a fused cross-entropy kernel's backward writes beside the saved bf16 logits
/// (flash-attn's `xentropy` with `inplace_backward` off, its default).
pub const FUSED_LOSS_BACKWARD_BYTES_PER_LOGIT: f64 = 2.0;

/// Megatron-LM's vocab-parallel cross entropy upcasts the bf16 logits to fp32 and computes the
/// softmax in place in that buffer (the saved probabilities): only the bf16 logits (2 bytes) are
/// live beyond what the graph saves.
pub const MEGATRON_LOSS_BYTES_PER_LOGIT: f64 = 2.0;

/// PyTorch's caching allocator rounds every allocation up to a multiple of 512 bytes
/// (`c10::cuda::CUDACachingAllocator`, `kMinBlockSize`).
pub const BLOCK_ROUNDING_BYTES: f64 = 512.0;

/// Rounds `bytes` made of `blocks` allocations up the way the caching allocator does: each block to
/// a multiple of 512 bytes (on average half a rounding unit per block).
pub fn round_block(bytes: f64, blocks: f64) -> f64 {
    if bytes <= 0.0 {
        return 0.0;
    }
    bytes + 0.5 * BLOCK_ROUNDING_BYTES * blocks.max(1.0)
}

/// Micro-batch chunks whose activations a pipeline device holds at its peak: 1F1B device `d` holds
/// `min(pp − d, m)`, GPipe all `m`, Megatron's interleaved schedule `(pp − d − 1)·2 + (V − 1)·pp + 1`
/// chunk-micro-batches (at most `m·V`). Without pipelining one micro-batch is live at a time.
/// The zero-bubble schedules keep a micro-batch's activations until its W pass (B frees only part of
/// them; counted whole, an upper bound): ZB-H1 holds `min(pp, m)` on every device (1F1B's first-stage
/// peak, as the paper states), ZB-V `2·pp` half-size chunks (`pp` stages' worth, again 1F1B's peak),
/// read off the schedule's order when there are fewer than `2·pp` micro-batches.
pub fn in_flight(schedule: Schedule, pp: u32, device: u32, micro_batches: u32) -> u32 {
    let m = micro_batches.max(1);
    if pp <= 1 {
        return 1;
    }
    let d = device.min(pp - 1);
    match schedule {
        Schedule::Gpipe => m,
        // Megatron's order: its warm-up forwards and the first steady one.
        Schedule::OneFOneB | Schedule::Interleaved(_) => {
            let total = (m * schedule.chunks()) as usize;
            let warm = crate::pipeline::megatron_warmup(
                pp as usize,
                d as usize,
                schedule.chunks() as usize,
                total,
            );
            (warm + 1).min(total) as u32
        }
        Schedule::ZeroBubbleH1 => pp.min(m),
        Schedule::ZeroBubbleV if m >= 2 * pp => 2 * pp,
        Schedule::ZeroBubbleV => crate::pipeline::peak_in_flight(schedule, pp, d, m),
    }
}

/// Static bytes of one device's parameters, by role, under a stack and its sharding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StaticBytes {
    /// Stored weights.
    pub weights: f64,
    /// Gradients that persist across the step (Megatron's `main_grad` buffer, DeepSpeed's bf16
    /// gradients, PyTorch gradients without `set_to_none`).
    pub persistent_grads: f64,
    /// All gradients, live at the optimizer step.
    pub grads: f64,
    /// Optimizer state (moments and separate master weights).
    pub optimizer: f64,
    /// Optimizer temporaries at the step.
    pub optimizer_temp: f64,
    /// Bytes per parameter of the weights a forward reads (bf16 under mixed precision), what ZeRO-3
    /// gathers.
    pub compute_bytes_per_param: f64,
    /// True when the eager autocast keeps bf16 copies of fp32 weights (amp-bf16 on the eager stack).
    pub autocast_copies: bool,
}

/// Static bytes of `params` parameters on one device. The profile's precision policy gives bytes
/// per parameter (`amp-bf16`: no stored low-precision copy, fp32 master weights inside
/// `optimizer_bytes_per_param`); the stack says which of them exist (see the module doc); ZeRO
/// sharding divides: `distribute_param` (ZeRO-3 / FSDP full shard) weights, gradients and optimizer
/// state, `distribute_low_prec_param` the stored bf16 weights, `distribute_optimizer` (ZeRO-1 /
/// distributed optimizer) the optimizer state. Gradients persist across the step where the stack keeps
/// a buffer (Megatron-LM, DeepSpeed), where `persistent_grads` is set, or under gradient accumulation.
///
/// With `offload_optimizer` the optimizer state, master weights and optimizer temporaries live in host
/// memory (see [`crate::offload`]): none of them is on the device.
pub fn static_bytes(profile: &StepProfile, cfg: &ParallelConfig, params: f64) -> StaticBytes {
    let mut s = device_static_bytes(profile, cfg, params);
    if cfg.offload_optimizer {
        s.optimizer = 0.0;
        s.optimizer_temp = 0.0;
    }
    s
}

fn device_static_bytes(profile: &StepProfile, cfg: &ParallelConfig, params: f64) -> StaticBytes {
    // ZeRO shards over the dp·cp ranks holding the same weights (Megatron-LM's data-parallel group
    // with context parallelism); under hybrid sharding over the dp_shard·cp ranks of a shard group.
    let dp = cfg.shard_dp().max(1) as f64 * cfg.cp.max(1) as f64;
    let z3 = if cfg.distribute_param { dp } else { 1.0 };
    let lp_div = if cfg.distribute_param || cfg.distribute_low_prec_param {
        dp
    } else {
        1.0
    };
    let opt_div = if cfg.distribute_param || cfg.distribute_optimizer {
        dp
    } else {
        1.0
    };
    let low = profile.low_prec_param_bytes_per_param.max(0.0);
    let grad = profile.grad_bytes_per_param.max(0.0);
    let opt = profile.optimizer_bytes_per_param.max(0.0);
    let base = (profile.static_bytes_per_param - low - opt - grad).max(0.0);
    // Mixed precision with fp32 master weights inside the optimizer bytes (amp-bf16).
    let amp = low == 0.0 && base == 0.0 && opt >= 4.0 && grad >= 4.0;
    // Set-to-none gradients still exist during the forward of every micro-batch after the first.
    let keep = cfg.persistent_grads || cfg.num_micro_batches > 1;
    let persistent = |g: f64| if keep { g } else { 0.0 };
    match (amp, cfg.stack) {
        (true, Stack::Megatron) => StaticBytes {
            weights: params * 2.0 / lp_div,
            persistent_grads: params * grad / z3,
            grads: params * grad / z3,
            optimizer: params * opt / opt_div,
            optimizer_temp: 0.0,
            compute_bytes_per_param: 2.0,
            autocast_copies: false,
        },
        (true, Stack::Deepspeed) => StaticBytes {
            weights: params * 2.0 / lp_div,
            persistent_grads: params * 2.0 / z3,
            grads: params * 2.0 / z3,
            optimizer: params * opt / opt_div,
            // The bf16 optimizer's flat fp32 gradient partition, built at the step.
            optimizer_temp: params * grad / opt_div,
            compute_bytes_per_param: 2.0,
            autocast_copies: false,
        },
        (true, stack) => {
            let master = 4.0;
            let g = params * grad / z3;
            StaticBytes {
                weights: params * master / z3,
                persistent_grads: persistent(g),
                grads: g,
                optimizer: params * (opt - master) / opt_div,
                // FSDP's default `foreach` AdamW allocates sqrt(v) for the whole shard.
                optimizer_temp: if stack == Stack::Fsdp {
                    params * (opt - master) / 2.0 / opt_div
                } else {
                    0.0
                },
                compute_bytes_per_param: 2.0,
                autocast_copies: stack == Stack::Eager,
            }
        }
        (false, stack) => {
            let always = matches!(stack, Stack::Megatron | Stack::Deepspeed);
            let g = params * grad / z3;
            StaticBytes {
                weights: params * (base / z3 + low / lp_div),
                persistent_grads: if always { g } else { persistent(g) },
                grads: g,
                optimizer: params * opt / opt_div,
                optimizer_temp: 0.0,
                compute_bytes_per_param: if low > 0.0 { low } else { base },
                autocast_copies: false,
            }
        }
    }
}

/// What the memory model needs to know about one pipeline device of one configuration.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInput<'a> {
    /// The step profile of one micro-batch.
    pub profile: &'a StepProfile,
    /// The profile reduced to per-block sums at the configuration's tp.
    pub prep: &'a PreparedProfile,
    /// The configuration.
    pub cfg: &'a ParallelConfig,
    /// Pipeline rank of the device.
    pub device: u32,
    /// Virtual stage of each block of `prep` (stage `v` runs on device `cfg.schedule.device_of(v, pp)`).
    pub block_stage: &'a [usize],
    /// Virtual stages (`pp × chunks`).
    pub virtual_stages: usize,
    /// Largest activation sent between adjacent stages, bytes per device.
    pub boundary_bytes: f64,
}

/// Bytes per parameter of the weights a forward computes with on `cfg`'s stack: what ZeRO-3
/// gathers before each block and the distributed optimizer (ZeRO-1) gathers after the step. Under
/// `amp-bf16` the bf16 copy (Megatron-LM's bf16 module, DeepSpeed's bf16 weights, FSDP's
/// `param_dtype`), else the low-precision copies where the policy keeps them, else the stored
/// weights ([`StaticBytes::compute_bytes_per_param`]).
pub fn compute_bytes_per_param(profile: &StepProfile, cfg: &ParallelConfig) -> f64 {
    device_static_bytes(profile, cfg, 1.0).compute_bytes_per_param
}

/// What the memory model reads off one block's ops, per device at tensor-parallel degree `tp`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockShape {
    /// Bytes of the low-precision weight copies the block's forward matmuls read (weight-stationary
    /// matmuls: column-, row- or vocab-split linears), per device.
    pub weight_copy_bytes: f64,
    /// True when the block's matmuls are recomputed in backward (full recomputation), so the graph
    /// does not save their weight copies.
    pub recomputed: bool,
    /// Logit elements of the LM head per device (0 elsewhere).
    pub logits: f64,
    /// The block's (first) forward attention, whole sequence and unsharded heads, if it has one:
    /// what the Megatron activation formula and context parallelism read.
    pub attention: Option<crate::context::CpAttention>,
    /// Tensors the block saves, roughly (one allocator block each).
    pub tensors: f64,
}

/// Reads a block's weight copies, recomputation, logits and attention shape.
pub fn block_shape(block: &BlockProfile, tp: u64) -> BlockShape {
    let tp = tp.max(1) as f64;
    let mut s = BlockShape::default();
    for op in &block.ops {
        match (&op.class, op.phase) {
            (
                KernelClass::Matmul {
                    batch,
                    m,
                    n,
                    k,
                    dtype,
                },
                Phase::Forward,
            ) if matches!(op.split, TpSplit::Column | TpSplit::Row | TpSplit::Vocab) => {
                s.weight_copy_bytes += (n * k * dtype.size_bytes()) as f64 / tp;
                s.tensors += 3.0;
                if block.kind == BlockKind::Head && op.split == TpSplit::Vocab {
                    s.logits += (batch * m * n) as f64 / tp;
                }
            }
            (KernelClass::Matmul { .. }, Phase::Recompute) => s.recomputed = true,
            (
                KernelClass::Attention {
                    backward: false, ..
                },
                Phase::Forward,
            ) => {
                s.attention = s
                    .attention
                    .or_else(|| crate::context::CpAttention::of_op(op))
            }
            (_, Phase::Forward) => s.tensors += 1.0,
            _ => {}
        }
    }
    s
}

/// Sizes of one transformer layer and micro-batch for [`megatron_layer_bytes`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerDims {
    /// Sequence length `s`.
    pub seq: f64,
    /// Micro-batch size `b`.
    pub batch: f64,
    /// Hidden size `h`.
    pub hidden: f64,
    /// Attention heads `a`.
    pub heads: f64,
}

impl LayerDims {
    /// The layer's sizes read off its attention (hidden = heads · head dimension).
    pub fn of_attention(a: &crate::context::CpAttention) -> LayerDims {
        LayerDims {
            seq: a.seq as f64,
            batch: a.batch as f64,
            hidden: (a.heads * a.head_dim) as f64,
            heads: a.heads as f64,
        }
    }
}

/// Korthikanti et al.'s activation bytes of one transformer layer and micro-batch on one device
/// (Megatron-LM layout, bf16, 1-byte dropout masks): `s·b·h·(10 + 24/t + 5·a·s/(h·t))`, with sequence
/// parallelism `s·b·h·(34 + 5·a·s/h)/t`; `unfused_scores` keeps the `5·a·s/h` attention-score term (no
/// flash attention and no selective recomputation); full recomputation keeps the layer input,
/// `2·s·b·h` (over `t` with sequence parallelism).
pub fn megatron_layer_bytes(
    dims: LayerDims,
    tp: f64,
    sequence_parallel: bool,
    recompute: Recompute,
    unfused_scores: bool,
) -> f64 {
    let LayerDims {
        seq,
        batch,
        hidden,
        heads,
    } = dims;
    let sbh = seq * batch * hidden;
    let t = tp.max(1.0);
    if recompute == Recompute::Full {
        return if sequence_parallel {
            2.0 * sbh / t
        } else {
            2.0 * sbh
        };
    }
    let scores = if unfused_scores && recompute == Recompute::None {
        5.0 * heads * seq / (hidden * t)
    } else {
        0.0
    };
    if sequence_parallel {
        sbh * (34.0 / t + scores)
    } else {
        sbh * (10.0 + 24.0 / t + scores)
    }
}

/// How many of a device's `decoder_layers` have their activations offloaded: the first
/// `cfg.offload_activations` of them, or all when the device holds fewer.
pub fn offloaded_count(cfg: &ParallelConfig, decoder_layers: usize) -> usize {
    (cfg.offload_activations as usize).min(decoder_layers)
}

/// The weight-copy bytes a block's saved bytes include that are not activations (none when the block's
/// matmuls are recomputed, except the head's).
fn kept_weight_copy(pb: &BlockProfile, shape: &BlockShape) -> f64 {
    if shape.recomputed && pb.kind != BlockKind::Head {
        0.0
    } else {
        shape.weight_copy_bytes
    }
}

/// The activation bytes one micro-batch of a block saves on one device before context parallelism
/// divides them: Korthikanti et al.'s layer formula for Megatron-LM's decoder layers (fp8 inputs
/// saved in fp8), else the graph's `saved_bytes` less the weight copies counted as weights.
fn block_saved_bytes(
    input: &DeviceInput,
    pb: &BlockProfile,
    saved_bytes: f64,
    shape: &BlockShape,
    recompute: Recompute,
) -> f64 {
    let cfg = input.cfg;
    let tp = cfg.tp.max(1) as f64;
    let mut act = (saved_bytes - kept_weight_copy(pb, shape)).max(0.0);
    if cfg.stack == Stack::Megatron
        && let (BlockKind::Decoder(_), Some(a)) = (pb.kind, shape.attention)
    {
        let dims = LayerDims::of_attention(&a);
        act = megatron_layer_bytes(dims, tp, cfg.sequence_parallel, recompute, false);
        if cfg.precision == crate::precision::MatmulPrecision::Fp8 {
            act -= crate::precision::megatron_fp8_saved_bytes(
                dims,
                tp,
                cfg.sequence_parallel,
                recompute,
            )
            .min(act);
        }
    }
    act
}

/// The decoder layers of one pipeline device whose activations are offloaded
/// (`cfg.offload_activations`): `(block index, saved bytes per micro-batch)` in layer order, the bytes
/// as [`device_memory`] counts them (context parallelism applied). Empty without activation offload.
pub fn offloaded_layers(input: &DeviceInput) -> Vec<(usize, f64)> {
    let cfg = input.cfg;
    if cfg.offload_activations == 0 {
        return Vec::new();
    }
    let pp = cfg.pp.max(1) as usize;
    let nv = input.virtual_stages.max(1);
    let tp = cfg.tp.max(1) as u64;
    let cp = cfg.cp.max(1) as f64;
    let recompute = cfg.recompute_of_device(input.device as usize);
    let mut out = Vec::new();
    for (i, (b, v)) in input.prep.blocks.iter().zip(input.block_stage).enumerate() {
        let v = (*v).min(nv - 1);
        if cfg.schedule.device_of(v, pp) != input.device as usize {
            continue;
        }
        let Some(pb) = input.profile.blocks.get(i) else {
            continue;
        };
        if !matches!(pb.kind, BlockKind::Decoder(_)) {
            continue;
        }
        let shape = match input.prep.shapes.get(i) {
            Some(s) => *s,
            None => block_shape(pb, tp),
        };
        out.push((
            i,
            block_saved_bytes(input, pb, b.saved_bytes, &shape, recompute) / cp,
        ));
    }
    let n = offloaded_count(cfg, out.len());
    out.truncate(n);
    out
}

/// Memory of one pipeline device: static bytes by stack, the activations of its in-flight
/// micro-batches, the largest transient, and the coefficients; the peak is the largest of the three
/// moments (see the module doc).
pub fn device_memory(input: &DeviceInput, coef: &MemoryCoefficients) -> StageMemory {
    let DeviceInput {
        profile,
        prep,
        cfg,
        device: d,
        block_stage,
        virtual_stages: nv,
        boundary_bytes: boundary,
    } = *input;
    let pp = cfg.pp.max(1) as usize;
    let m = cfg.num_micro_batches.max(1);
    // The ranks ZeRO-3 gathers the weights from: one shard group's (all dp·cp ranks without hybrid
    // sharding).
    let dp = cfg.shard_dp().max(1) * cfg.cp.max(1);
    let tp = cfg.tp.max(1) as u64;
    // Context parallelism: a rank holds the activations of seq/cp tokens (`crate::context`).
    let cp = cfg.cp.max(1) as f64;
    let mut cp_buffers: f64 = 0.0;
    let nv = nv.max(1);
    let on_device = |v: usize| cfg.schedule.device_of(v, pp) == d as usize;
    let vs: Vec<usize> = (0..nv).filter(|v| on_device(*v)).collect();
    let st0 = static_bytes(profile, cfg, 1.0);
    let recompute = cfg.recompute_of_device(d as usize);
    // Where the graph's saved bf16 weight copies are weights of the stack instead: bf16 stored
    // weights (Megatron, DeepSpeed) or per-layer gathers (ZeRO-3 / FSDP full shard).
    let copies_elsewhere = !st0.autocast_copies;
    let (mut params, mut saved, mut transient, mut largest) = (
        vec![0f64; nv],
        vec![0f64; nv],
        vec![0f64; nv],
        vec![0f64; nv],
    );
    let (mut copies_all, mut copies_saved, mut logits, mut tensors) = (0.0, 0.0, 0.0, 0.0);
    // FP8 plans: the fp8 weight copies (and transposes) and the scaling state of this device's fp8
    // linears, resident through the step (see crate::precision).
    let mut fp8_bytes = 0.0;
    // (virtual stage, saved bytes per micro-batch) of this device's decoder layers, in layer order.
    let mut decoder: Vec<(usize, f64)> = Vec::new();
    let inflight = |v: usize| -> f64 {
        let _ = v;
        in_flight(cfg.schedule, cfg.pp, d, m) as f64
    };
    for (i, (b, v)) in prep.blocks.iter().zip(block_stage).enumerate() {
        let v = (*v).min(nv - 1);
        params[v] += b.params;
        largest[v] = largest[v].max(b.params);
        if !on_device(v) {
            continue;
        }
        // The fp8 weight copies and scaling state the stack keeps through the step.
        if cfg.precision == crate::precision::MatmulPrecision::Fp8 && cfg.stack.caches_fp8_weights()
        {
            fp8_bytes += b.fp8_weight_params * crate::precision::FP8_WEIGHT_BYTES_PER_PARAM
                + crate::precision::scaling_state_bytes(b.fp8_linears);
        }
        let Some(pb) = profile.blocks.get(i) else {
            continue;
        };
        let shape = match prep.shapes.get(i) {
            Some(s) => *s,
            None => block_shape(pb, tp),
        };
        let act = block_saved_bytes(input, pb, b.saved_bytes, &shape, recompute);
        let kept_copy = kept_weight_copy(pb, &shape);
        if matches!(pb.kind, BlockKind::Decoder(_)) {
            decoder.push((v, act / cp));
        }
        saved[v] += act / cp;
        copies_all += shape.weight_copy_bytes;
        copies_saved += kept_copy;
        tensors += shape.tensors;
        if pb.kind == BlockKind::Head {
            logits += shape.logits / cp;
        } else {
            transient[v] = transient[v].max(b.transient_bytes / cp);
        }
        if cfg.cp > 1
            && let Some(attn) = shape.attention
        {
            cp_buffers = cp_buffers.max(crate::context::buffer_bytes(cfg, &attn));
        }
    }
    let p_dev: f64 = vs.iter().map(|v| params[*v]).sum();
    let mut st = static_bytes(profile, cfg, p_dev);
    st.weights += fp8_bytes;
    // Activation offload: the first `offload_activations` decoder layers' saved activations live on
    // the host; the device keeps the in-flight window (one layer being copied out, one being
    // prefetched back: two of the largest offloaded layer), see crate::offload.
    let offloaded = offloaded_count(cfg, decoder.len());
    let mut window: f64 = 0.0;
    for &(v, act) in decoder.iter().take(offloaded) {
        saved[v] -= act;
        window = window.max(act);
    }
    let window = crate::offload::ACTIVATION_WINDOW_LAYERS * window;
    let acts = if cfg.schedule == Schedule::ZeroBubbleV {
        // Per chunk: the first chunk holds up to 2·pp − 1 micro-batches, the second about one.
        crate::pipeline::peak_live_bytes(cfg.schedule, cfg.pp, d, m, &|v| {
            saved.get(v).copied().unwrap_or(0.0)
        })
    } else if cfg.schedule.chunks() > 1 {
        // Interleaved: each chunk counts the micro-batches it holds at the peak (the LM head's chunk
        // on the last device holds one, not the device's whole in-flight count).
        crate::pipeline::interleaved_peak_live_bytes(cfg.pp, d, m, cfg.schedule.chunks(), &|v| {
            saved.get(v).copied().unwrap_or(0.0)
        })
    } else {
        vs.iter()
            .map(|v| saved[*v] * inflight(*v) / vs.len().max(1) as f64)
            .sum::<f64>()
    }
    .max(0.0);
    let acts = round_block(acts, tensors * inflight(0)) + window;
    let buffers = loss_buffers(cfg.stack, profile.loss, coef);
    let (loss, loss_b) = (buffers.forward * logits, buffers.backward * logits);
    // Logits the fitted coefficient multiplies (none where the loss is not the fitted kind).
    let fitted_logits = if buffers.fitted { logits } else { 0.0 };
    let block_trans = vs.iter().map(|v| transient[*v]).fold(0.0, f64::max);
    let mut fixed_trans = coef.workspace_bytes.max(0.0);
    // A pipelined stage that keeps its weights unsharded (PyTorch's pipelining with FSDP2 stages,
    // `ParallelConfig::keeps_stage_unsharded`) holds all of them in compute precision from the first
    // forward to the last backward, and its unsharded gradients in the reduce dtype (the stack's
    // gradient bytes) from the first backward on: both at the forward and backward peaks of the
    // steady state, neither at the optimizer step (the last backward reshards and reduce-scatters).
    let unsharded = cfg.keeps_stage_unsharded();
    let (unsharded_w, unsharded_g) = if unsharded {
        (
            p_dev * st.compute_bytes_per_param,
            p_dev * profile.grad_bytes_per_param.max(0.0),
        )
    } else {
        (0.0, 0.0)
    };
    if cfg.distribute_param && dp > 1 && !unsharded {
        // The layer being computed and the prefetched next one, gathered in compute precision;
        // with the engine's prefetch switched off (`overlap_param_gather`), only the layer computed.
        let blk = vs.iter().map(|v| largest[*v]).fold(0.0, f64::max);
        let prefetch_off = cfg
            .stack
            .has_overlap_switch(crate::stack::OverlapSwitch::ParamGather)
            && !cfg.overlap_param_gather;
        let buffers = if prefetch_off { 1.0 } else { 2.0 };
        fixed_trans += buffers * blk * st.compute_bytes_per_param;
    }
    if pp > 1 {
        fixed_trans += 2.0 * boundary;
    }
    // Transformer Engine's TP-overlap userbuffers: each holds one decoder block's full activation,
    // [seq · micro-batch, hidden] in bf16 (`initialize_ub`'s default dtype) — the output of the
    // block's forward row-parallel GEMMs (attention output and MLP down projections), unsharded.
    let buffers = cfg
        .stack
        .tp_overlap_buffers(cfg.sequence_parallel, cfg.tp_comm_overlap);
    if buffers > 0.0 {
        let elements = profile
            .blocks
            .iter()
            .filter(|b| matches!(b.kind, moai_ir::cost::BlockKind::Decoder(_)))
            .flat_map(|b| b.ops.iter())
            .filter(|op| {
                op.phase == moai_ir::cost::Phase::Forward && op.split == moai_ir::cost::TpSplit::Row
            })
            .filter_map(|op| match op.class {
                moai_ir::cost::KernelClass::Matmul { batch, m, n, .. } => {
                    Some(batch.max(1) as f64 * m as f64 * n as f64)
                }
                _ => None,
            })
            .fold(0.0, f64::max);
        fixed_trans += buffers * elements * 2.0;
    }
    fixed_trans += cp_buffers;
    // Weight copies: the autocast cache holds all of them at the end of forward; autograd keeps the
    // saved ones through backward. Elsewhere they are the stack's own weights or gather buffers.
    let (copies_f, copies_b) = if copies_elsewhere {
        (0.0, 0.0)
    } else {
        (copies_all, copies_saved)
    };
    let resident = st.weights + st.persistent_grads + st.optimizer + unsharded_w + unsharded_g;
    let forward = resident + copies_f + acts + loss + fixed_trans;
    let backward = resident + copies_b + acts + block_trans.max(loss_b) + fixed_trans;
    let optimizer = st.weights + st.grads + st.optimizer + st.optimizer_temp + coef.workspace_bytes;
    let mk = |phase, weights, grads, activations, transients, loss_logits| StageMemory {
        stage: d,
        weights_bytes: weights,
        grads_bytes: grads,
        optimizer_bytes: st.optimizer,
        activations_bytes: activations,
        transients_bytes: transients,
        peak_bytes: weights + grads + st.optimizer + activations + transients,
        peak_phase: phase,
        loss_logits,
    };
    if optimizer > forward && optimizer > backward {
        mk(
            PeakPhase::Optimizer,
            st.weights,
            st.grads,
            0.0,
            st.optimizer_temp + coef.workspace_bytes.max(0.0),
            0.0,
        )
    } else if backward > forward {
        let loss_live = if loss_b >= block_trans {
            fitted_logits
        } else {
            0.0
        };
        mk(
            PeakPhase::Backward,
            st.weights + unsharded_w + copies_b,
            st.persistent_grads + unsharded_g,
            acts,
            block_trans.max(loss_b) + fixed_trans,
            loss_live,
        )
    } else {
        mk(
            PeakPhase::Forward,
            st.weights + unsharded_w + copies_f,
            st.persistent_grads + unsharded_g,
            acts,
            loss + fixed_trans,
            fitted_logits,
        )
    }
}

/// Fits the memory coefficients to the measured peaks of `samples` (rows without
/// `peak_memory_bytes` are skipped; at least two are needed): ordinary least squares of
/// `measured − mechanistic = loss_bytes_per_logit · logits + workspace_bytes` over each sample's most
/// loaded device, both constrained to be non-negative, iterated until the peak moment of every sample stops changing (a coefficient can
/// move the peak from one moment to another). Deterministic. Used by the committed refit and by
/// leave-one-model-out cross-validation (call it with the other models' rows and predict the held-out
/// model's with the result).
pub fn fit_memory(samples: &[FitSample]) -> Result<MemoryCoefficients> {
    fit_memory_with(samples, crate::efficiency::committed())
}

/// [`fit_memory`] with the time coefficients of `base` (they do not change memory; `base` only
/// supplies the estimator).
pub fn fit_memory_with(samples: &[FitSample], base: &EfficiencyFile) -> Result<MemoryCoefficients> {
    let mut coef = MemoryCoefficients::default();
    let n = samples
        .iter()
        .filter(|s| s.peak_memory_bytes.is_some())
        .count();
    if n < 2 {
        return Err(CostError::Fit(format!(
            "the memory fit needs at least two peak-memory samples, got {n}"
        )));
    }
    for _ in 0..8 {
        let mut file = base.clone();
        file.allocator = coef.clone();
        let model = ProfiledCostModel::with_efficiencies(file);
        let mut pts = Vec::with_capacity(n);
        for s in samples {
            let Some(meas) = s.peak_memory_bytes else {
                continue;
            };
            let est = model.estimate(&s.profile, &s.cluster, &s.config)?;
            let dev = est
                .memory
                .iter()
                .max_by(|a, b| a.peak_bytes.total_cmp(&b.peak_bytes))
                .ok_or_else(|| CostError::Fit(format!("{}: no memory breakdown", s.name)))?;
            let fitted_part = coef.loss_bytes_per_logit * dev.loss_logits + coef.workspace_bytes;
            pts.push((dev.loss_logits, meas - (dev.peak_bytes - fitted_part)));
        }
        let k = pts.len() as f64;
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / k, sy / k);
        let sxx: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        // Both coefficients are bytes and cannot be negative: where the unconstrained optimum has a
        // negative workspace, the constrained one has none and a slope through the origin.
        let (a, c) = if sxx > 0.0 {
            let a = (sxy / sxx).max(0.0);
            let c = my - a * mx;
            if c >= 0.0 {
                (a, c)
            } else {
                let sxx0: f64 = pts.iter().map(|(x, _)| x * x).sum();
                let sxy0: f64 = pts.iter().map(|(x, y)| x * y).sum();
                ((sxy0 / sxx0).max(0.0), 0.0)
            }
        } else {
            // No spread in logits: keep the mechanistic prior and fit the constant alone.
            let a = coef.loss_bytes_per_logit;
            (a, (my - a * mx).max(0.0))
        };
        let next = MemoryCoefficients {
            loss_bytes_per_logit: round_sig(a, 4),
            workspace_bytes: round_sig(c, 4).round(),
            source: format!("least squares over {n} measured peaks"),
        };
        if next == coef {
            break;
        }
        coef = next;
    }
    Ok(coef)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts() {
        assert_eq!(in_flight(Schedule::OneFOneB, 4, 0, 16), 4);
        assert_eq!(in_flight(Schedule::OneFOneB, 4, 3, 16), 1);
        assert_eq!(in_flight(Schedule::OneFOneB, 4, 0, 2), 2);
        assert_eq!(in_flight(Schedule::Gpipe, 4, 3, 16), 16);
        assert_eq!(in_flight(Schedule::Interleaved(2), 4, 0, 16), 11);
        assert_eq!(in_flight(Schedule::OneFOneB, 1, 0, 16), 1);
        assert_eq!(in_flight(Schedule::ZeroBubbleH1, 4, 3, 16), 4);
        assert_eq!(in_flight(Schedule::ZeroBubbleV, 4, 1, 16), 8);
    }

    #[test]
    fn in_flight_closed_forms_match_the_schedules_orders() {
        use crate::pipeline::peak_in_flight;
        for pp in 2..=6u32 {
            for m in 1..=4 * pp {
                for d in 0..pp {
                    for s in [
                        Schedule::Gpipe,
                        Schedule::OneFOneB,
                        Schedule::ZeroBubbleH1,
                        Schedule::ZeroBubbleV,
                    ] {
                        assert_eq!(
                            in_flight(s, pp, d, m),
                            peak_in_flight(s, pp, d, m),
                            "{s} pp {pp} device {d} m {m}"
                        );
                    }
                    if m % pp == 0 {
                        let s = Schedule::Interleaved(2);
                        assert_eq!(
                            in_flight(s, pp, d, m),
                            peak_in_flight(s, pp, d, m),
                            "{s} pp {pp} device {d} m {m}"
                        );
                    }
                }
            }
        }
    }

    fn amp() -> StepProfile {
        StepProfile {
            micro_batch: 1,
            seq: 1,
            blocks: vec![],
            optimizer: vec![],
            static_bytes_per_param: 16.0,
            low_prec_param_bytes_per_param: 0.0,
            optimizer_bytes_per_param: 12.0,
            grad_bytes_per_param: 4.0,
            loss: Default::default(),
            fingerprint: Default::default(),
        }
    }

    #[test]
    fn static_bytes_by_stack() {
        let p = amp();
        let total = |stack: Stack, dp: u32, z1: bool, z3: bool| {
            let c = ParallelConfig {
                dp,
                stack,
                distribute_optimizer: z1,
                distribute_param: z3,
                ..Default::default()
            };
            let s = static_bytes(&p, &c, 1.0);
            s.weights + s.persistent_grads + s.optimizer
        };
        // Megatron: 18 bytes, 6 + 12/dp with the distributed optimizer (Korthikanti et al. / ZeRO).
        assert_eq!(total(Stack::Megatron, 8, false, false), 18.0);
        assert_eq!(total(Stack::Megatron, 8, true, false), 6.0 + 12.0 / 8.0);
        // DeepSpeed: (2 + 2 + 12), ZeRO-1 (2 + 2 + 12/dp), ZeRO-3 16/dp.
        assert_eq!(total(Stack::Deepspeed, 8, false, false), 16.0);
        assert_eq!(total(Stack::Deepspeed, 8, true, false), 4.0 + 12.0 / 8.0);
        assert_eq!(total(Stack::Deepspeed, 8, true, true), 16.0 / 8.0);
        // Eager: fp32 weights + fp32 grads + two moments.
        assert_eq!(total(Stack::Eager, 1, false, false), 16.0);
        let eager = static_bytes(
            &p,
            &ParallelConfig {
                stack: Stack::Eager,
                ..Default::default()
            },
            1.0,
        );
        assert!(eager.autocast_copies);
        assert_eq!(eager.weights, 4.0);
        assert_eq!(eager.optimizer, 8.0);
        let fsdp = static_bytes(
            &p,
            &ParallelConfig {
                stack: Stack::Fsdp,
                dp: 4,
                distribute_param: true,
                ..Default::default()
            },
            1.0,
        );
        assert_eq!(fsdp.weights + fsdp.grads + fsdp.optimizer, 4.0);
        assert_eq!(fsdp.optimizer_temp, 1.0);
    }

    #[test]
    fn korthikanti_layer_formula() {
        let (s, b, h, a) = (2048.0, 1.0, 4096.0, 32.0);
        let sbh = s * b * h;
        let d = LayerDims {
            seq: s,
            batch: b,
            hidden: h,
            heads: a,
        };
        assert_eq!(
            megatron_layer_bytes(d, 1.0, false, Recompute::None, true),
            sbh * (34.0 + 5.0 * a * s / h)
        );
        assert_eq!(
            megatron_layer_bytes(d, 8.0, true, Recompute::Selective, true),
            34.0 * sbh / 8.0
        );
        assert_eq!(
            megatron_layer_bytes(d, 8.0, false, Recompute::None, false),
            sbh * (10.0 + 3.0)
        );
        assert_eq!(
            megatron_layer_bytes(d, 8.0, true, Recompute::Full, false),
            2.0 * sbh / 8.0
        );
    }

    #[test]
    fn rounding_adds_half_a_unit_per_block() {
        assert_eq!(round_block(0.0, 10.0), 0.0);
        assert_eq!(round_block(1e6, 4.0), 1e6 + 1024.0);
    }
}
