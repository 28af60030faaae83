//! Op times: measured profile where the op falls inside a table, roofline with fitted efficiencies
//! otherwise. Every time says which source produced it.

use crate::device::DeviceSpec;
use crate::efficiency::Efficiency;
use crate::profile::{MemoryKind, OpProfile};
use moai_ir::DType;
use moai_ir::cost::{
    BlockKind, BlockProfile, KernelClass, LossKernel, OpCost, Phase, StepProfile, TpSplit,
};
use serde::{Deserialize, Serialize};

/// Where a predicted time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Interpolated in a measured profile.
    Profile,
    /// Roofline with efficiencies.
    Roofline,
}

/// An op's size on one device after tensor-parallel splitting.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedOp {
    /// Kernel class with per-device sizes.
    pub class: KernelClass,
    /// Per-device FLOPs.
    pub flops: f64,
    /// Per-device bytes.
    pub bytes: f64,
}

/// Splits an op across a tensor-parallel group of `tp` (see [`TpSplit`]). Matmuls divide the larger of
/// their N and K dimensions that `tp` divides (the sharded feature dimension in forward and backward
/// alike); attention divides heads and KV heads; other kernels divide FLOPs and bytes.
pub fn shard(op: &OpCost, tp: u64, sequence_parallel: bool) -> ShardedOp {
    let tp = tp.max(1);
    let divides = match op.split {
        TpSplit::Replicated => false,
        TpSplit::Sequence => sequence_parallel,
        _ => true,
    };
    if tp == 1 || !divides {
        return ShardedOp {
            class: op.class.clone(),
            flops: op.flops,
            bytes: op.bytes,
        };
    }
    let f = tp as f64;
    let class = match &op.class {
        KernelClass::Matmul {
            batch,
            m,
            n,
            k,
            dtype,
        } => {
            let (mut m, mut n, mut k) = (*m, *n, *k);
            let prefer_n = !matches!(op.split, TpSplit::Row);
            let n_ok = n % tp == 0;
            let k_ok = k % tp == 0;
            if op.split == TpSplit::Sequence {
                m = (m / tp).max(1);
            } else if n_ok && (!k_ok || n > k || (n == k && prefer_n)) {
                n /= tp;
            } else if k_ok {
                k /= tp;
            } else {
                n = n.div_ceil(tp);
            }
            KernelClass::Matmul {
                batch: *batch,
                m,
                n,
                k,
                dtype: *dtype,
            }
        }
        KernelClass::Attention {
            batch,
            heads,
            kv_heads,
            seq,
            head_dim,
            causal,
            backward,
            dtype,
        } => KernelClass::Attention {
            batch: *batch,
            heads: (heads / tp).max(1),
            kv_heads: (kv_heads / tp).max(1),
            seq: *seq,
            head_dim: *head_dim,
            causal: *causal,
            backward: *backward,
            dtype: *dtype,
        },
        c => c.clone(),
    };
    ShardedOp {
        class,
        flops: op.flops / f,
        bytes: op.bytes / f,
    }
}

/// The per-kernel floor of a GPU kernel (seconds): launch-to-completion of an empty or tiny kernel on
/// the device (a few microseconds on every GPU moai knows; NVIDIA's and AMD's launch-latency guides
/// quote 2-5 µs). A memory-bound kernel never takes less.
pub const KERNEL_FLOOR_S: f64 = 2.5e-6;

/// GEMM tile candidates `(tile_m, tile_n, per-tile efficiency)`: cuBLAS/hipBLASLt pick among
/// 256×128, 128×256, 128×128, 128×64 and 64×64 output tiles per SM/CU; smaller tiles reuse operands
/// less and reach a lower fraction of the tensor-core rate.
const TILES: [(u64, u64, f64); 5] = [
    (256, 128, 1.0),
    (128, 256, 1.0),
    (128, 128, 0.92),
    (128, 64, 0.78),
    (64, 64, 0.6),
];

/// Fraction of the maximum achievable matmul rate a `batch × [m,k]×[k,n]` GEMM reaches on a device
/// with `units` SMs/CUs: the best tile's padding (tile quantization) times its wave quantization
/// (the last wave's idle units, relieved by split-K when K is long and tiles are few), times a
/// short-K penalty `k / (k + 64)` (prologue/epilogue per tile) normalised to 1 at K = 4096.
pub fn gemm_shape_efficiency(units: u32, batch: u64, m: u64, n: u64, k: u64) -> f64 {
    let units = units.max(1) as f64;
    let (m, n, k, batch) = (m.max(1), n.max(1), k.max(1), batch.max(1));
    let mut best: f64 = 0.0;
    for (tm, tn, q) in TILES {
        let (bm, bn) = (m.div_ceil(tm), n.div_ceil(tn));
        let fill = (m * n) as f64 / ((bm * tm) * (bn * tn)) as f64;
        let tiles = (batch * bm * bn) as f64;
        // Split-K: with fewer tiles than units and a long K, the library splits K to fill the device.
        let split = (units / tiles)
            .floor()
            .clamp(1.0, (k as f64 / 512.0).max(1.0));
        let work = tiles * split;
        let waves = (work / units).ceil();
        let wave = work / (waves * units);
        best = best.max(q * fill * wave);
    }
    let kf = |k: f64| k / (k + 64.0);
    (best * kf(k as f64) / kf(4096.0)).clamp(1e-3, 1.0)
}

/// Counted FLOPs per FLOP at the maximum achievable rate of a fused (flash / sdpa) attention kernel,
/// before the device's fitted attention coefficient: query-block waves over the units (128-row query
/// tiles per batch·head), a sequence term `s / (s + 128)` (per-tile setup and the softmax
/// rescaling), a head-dimension term normalised to 1 at 128 (FlashAttention-2 reports head dim 64
/// about 15% slower than 128), and backward at 0.75 of forward (FlashAttention-2, Dao 2023: forward
/// up to 73% of A100 peak, backward up to 63% with more recomputation and atomics). The training
/// graph counts the full `s²` score matrix; a causal kernel skips the blocks above the diagonal and
/// runs `(n + 1) / 2n` of them (`n` 128-wide key blocks), so causal attention may exceed 1 here.
/// GQA changes bytes, not FLOPs: it enters through the memory bound.
#[allow(clippy::too_many_arguments)]
pub fn attention_shape_efficiency(
    units: u32,
    batch: u64,
    heads: u64,
    seq: u64,
    head_dim: u64,
    causal: bool,
    backward: bool,
) -> f64 {
    block_attention_efficiency(units, batch, heads, seq, seq, head_dim, causal, backward)
}

/// Fraction of the maximum achievable rate (before the device's attention coefficient, counted
/// FLOPs `4·b·h·q·kv·d` per FLOP run) of one fused-attention kernel with `q` query rows and `kv` key
/// rows: [`attention_shape_efficiency`] for a rectangular block (the owner of the attention kernel's
/// shape model; a square block is `attention_shape_efficiency` itself). The forward kernel
/// (FlashAttention-2) runs one 128-row query tile per program and iterates over the keys; its
/// backward runs one 128-row key tile per program and iterates over the queries, so the waves count
/// the tiles of the parallel side and the sequence term `s / (s + 128)` takes the iterated side. A
/// causal block is square (the ring's diagonal block). Causal: the query tiles do on average
/// `(n + 1) / 2` key blocks instead of `n`; waves count tiles weighted by their work.
#[allow(clippy::too_many_arguments)]
pub fn block_attention_efficiency(
    units: u32,
    batch: u64,
    heads: u64,
    q: u64,
    kv: u64,
    head_dim: u64,
    causal: bool,
    backward: bool,
) -> f64 {
    let units = units.max(1) as f64;
    let (parallel, iterated) = if backward { (kv, q) } else { (q, kv) };
    let blocks = parallel.max(1).div_ceil(128);
    let work = if causal {
        let n = kv.max(1).div_ceil(128);
        (n + 1) as f64 / (2 * n) as f64
    } else {
        1.0
    };
    let tiles = (batch.max(1) * heads.max(1) * blocks) as f64 * work;
    let waves = (tiles / units).ceil();
    let wave = tiles / (waves * units);
    let s = iterated.max(1) as f64;
    let seq_eff = s / (s + 128.0);
    let hd = head_dim.max(1) as f64;
    let hd_eff = ((hd / (hd + 48.0)) / (128.0 / 176.0)).min(1.0);
    let dir = if backward { 0.75 } else { 1.0 };
    (wave * seq_eff * hd_eff * dir / work).clamp(1e-3, 2.0)
}

/// Which fitted coefficient scales a kernel's base time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Compute-bound GEMM: divided by the device's matmul coefficient.
    Matmul,
    /// Fused attention: divided by the device's attention coefficient.
    Attention,
    /// Memory-bound kernel the stack may fuse (norms, elementwise, softmax/reductions).
    Fusable,
    /// Other memory-bound kernel (gathers, copies, optimizer, memory-bound GEMMs): divided by the
    /// device's memory coefficient.
    Memory,
    /// Read from a measured profile; not scaled.
    Measured,
}

/// A kernel's time at unit coefficients and which coefficient scales it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelTime {
    /// Seconds at coefficient 1 (at the maximum achievable matmul rate times the shape efficiency,
    /// or at the HBM peak), without the per-kernel floor.
    pub base_s: f64,
    /// Which coefficient divides `base_s`.
    pub bucket: Bucket,
    /// Where it came from.
    pub source: Source,
}

/// Throughput of a fused attention kernel with in-kernel dropout relative to the same kernel
/// without, forward and backward: Dao-AILab/flash-attention PR #2597 (FlashAttention-4 dropout,
/// bf16, p = 0.125, head dims 64 and 128, against cuDNN 9.24's dropout kernels) measures the
/// forward at 75-85% and the backward at 60-70% of the dropout-free throughput, with cuDNN's
/// backward slower still; the midpoints are taken. Assumed: Hopper's cuDNN and FlashAttention-2
/// kernels lose the same fractions (the measurements are on GB200).
pub const ATTENTION_DROPOUT_THROUGHPUT: (f64, f64) = (0.8, 0.65);

/// Throughput of the Triton port of the first FlashAttention that MosaicML's LLM Foundry ran as
/// `attn_impl: triton` (`llmfoundry/models/layers/flash_attn_triton.py`, copied from HazyResearch's
/// `flash_attn/flash_attn_triton.py`: the setting of its MPT yamls and the default of
/// `scripts/train/benchmarking/submit_benchmarks.py` until 2024) relative to a FlashAttention-2
/// kernel of the same shape, forward and backward: the FlashAttention-2 paper (Dao 2023, arXiv
/// 2307.08691, §4.1, A100 80GB) measures FlashAttention-2 "around 1.3-1.5× faster than
/// FlashAttention in Triton in the forward pass and around 2× faster in the backward pass". The
/// midpoints, 1.4 and 2, are taken; published, not fitted.
///
/// Measured on A100 only; applied on Hopper too ([`triton_flash_throughput`]), because on H100
/// both kernels run the Ampere instruction path: LLM Foundry compiled this kernel with the
/// pre-MLIR Triton compiler (`import triton_pre_mlir as triton`; `setup.py` installs
/// `triton-pre-mlir` from the `triton_pre_mlir_sm90` branch since mosaicml/llm-foundry commit
/// 9c941b03d, 2023-05-31, "updt tritonpremlir to sm90 version", still at 5e85bd62d, 2024-01-06),
/// a 2022 code base older than Triton's Hopper (`wgmma`, TMA) code generation, and
/// FlashAttention-2 likewise uses Ampere `mma.sync` tiles on Hopper (which is why it reaches only
/// about 35% of the H100's peak: FlashAttention-3 paper, Shah et al. 2024, arXiv:2407.08608, §1).
/// Assumed, not measured: the two kernels keep their A100 ratio there.
pub const TRITON_FLASH_THROUGHPUT_A100: (f64, f64) = (1.0 / 1.4, 0.5);

/// The GPUs [`TRITON_FLASH_THROUGHPUT_A100`] is costed on: A100, where it was measured, and the
/// Hopper family (H100, H200, the HBM2e H100), where both kernels run the same instruction path
/// (see there).
pub const TRITON_FLASH_GPUS: [crate::device::Gpu; 4] = [
    crate::device::Gpu::A100,
    crate::device::Gpu::H100,
    crate::device::Gpu::H200,
    crate::device::Gpu::H100Hbm2e,
];

/// [`TRITON_FLASH_THROUGHPUT_A100`] on [`TRITON_FLASH_GPUS`]; `None` elsewhere (no measurement,
/// and newer or AMD GPUs run other code paths).
pub fn triton_flash_throughput(gpu: crate::device::Gpu) -> Option<(f64, f64)> {
    TRITON_FLASH_GPUS
        .contains(&gpu)
        .then_some(TRITON_FLASH_THROUGHPUT_A100)
}

/// Cost a profile's fused attention kernels as running at `(forward, backward)` fractions of the
/// throughput the model prices them at: each forward kernel's work is divided by the first and
/// each backward kernel's by the second.
pub fn scale_attention_throughput(
    profile: &mut moai_ir::cost::StepProfile,
    (fwd, bwd): (f64, f64),
) {
    for block in &mut profile.blocks {
        for op in &mut block.ops {
            if let KernelClass::Attention { backward, .. } = op.class {
                op.flops /= if backward { bwd } else { fwd };
            }
        }
    }
}

/// Cost a profile's fused attention kernels as running with in-kernel attention dropout
/// ([`ATTENTION_DROPOUT_THROUGHPUT`]; the probability itself does not change the kernels' cost:
/// the mask is drawn for every element).
pub fn apply_attention_dropout(profile: &mut moai_ir::cost::StepProfile) {
    scale_attention_throughput(profile, ATTENTION_DROPOUT_THROUGHPUT);
}

/// Rewrites a step profile's fused attention kernels as the unfused sequence Megatron-LM and eager
/// PyTorch ran before FlashAttention: per forward, a batched `QKᵀ` GEMM writing the `s × s` scores,
/// a fused scale-mask-softmax kernel, attention dropout, and a batched `PV` GEMM; per backward, the
/// four GEMMs of their gradients and the dropout and softmax backward kernels. FLOPs of the GEMMs
/// cover the full score matrix, as the fused op counted them; the bytes are the score traffic
/// (2-byte elements).
pub fn unfuse_attention(profile: &mut moai_ir::cost::StepProfile) {
    for block in &mut profile.blocks {
        let mut ops = Vec::with_capacity(block.ops.len());
        for op in block.ops.drain(..) {
            let KernelClass::Attention {
                batch,
                heads,
                seq,
                head_dim,
                backward,
                dtype,
                ..
            } = op.class
            else {
                ops.push(op);
                continue;
            };
            let bh = batch * heads;
            let scores = (bh * seq * seq) as f64 * 2.0;
            let qkv = (bh * seq * head_dim) as f64 * 2.0;
            let mm = |m: u64, n: u64, k: u64, bytes: f64, tag: &str| OpCost {
                class: KernelClass::Matmul {
                    batch: bh,
                    m,
                    n,
                    k,
                    dtype,
                },
                flops: 2.0 * (bh * m * n * k) as f64,
                bytes,
                phase: op.phase,
                layer: op.layer,
                split: TpSplit::Heads,
                label: format!("{}:{tag}", op.label),
                role: op.role,
            };
            let ew = |class: KernelClass, bytes: f64, tag: &str| OpCost {
                class,
                flops: 2.0 * scores,
                bytes,
                phase: op.phase,
                layer: op.layer,
                split: TpSplit::Heads,
                label: format!("{}:{tag}", op.label),
                role: op.role,
            };
            let (s, d) = (seq, head_dim);
            if !backward {
                ops.push(mm(s, s, d, 2.0 * qkv + scores, "qk"));
                ops.push(ew(KernelClass::Reduce, 2.0 * scores, "softmax"));
                ops.push(ew(KernelClass::Elementwise, 2.5 * scores, "dropout"));
                ops.push(mm(s, d, s, scores + 2.0 * qkv, "pv"));
            } else {
                ops.push(mm(s, s, d, 2.0 * qkv + scores, "dprobs"));
                ops.push(mm(s, d, s, scores + 2.0 * qkv, "dv"));
                ops.push(ew(KernelClass::Elementwise, 3.5 * scores, "dropout_bwd"));
                ops.push(ew(KernelClass::Reduce, 3.0 * scores, "softmax_bwd"));
                ops.push(mm(s, d, s, scores + 2.0 * qkv, "dq"));
                ops.push(mm(s, d, s, scores + 2.0 * qkv, "dk"));
            }
        }
        block.ops = ops;
    }
    profile.refresh_fingerprint();
}

/// Bytes per logit element of a fused softmax-cross-entropy kernel over bf16 logits, forward and
/// backward (flash-attn's `csrc/xentropy/xentropy_kernel.cu`, Apex's kernels, read at flash-attn
/// v1.0.9): the forward reads each row twice (a max reduction, then a sum of exponentials) and
/// writes one loss per row; the backward reads the row once and writes its bf16 gradient.
pub const FUSED_XENTROPY_BYTES_PER_LOGIT: (f64, f64) = (4.0, 4.0);

/// Rewrites a profile's loss as a fused cross-entropy kernel over the bf16 logits
/// ([`LossKernel::FusedBf16`]), as LLM Foundry's MPT ran it (`loss_fn: fused_crossentropy`, its
/// default): the head's casts of the logits to fp32 and of their gradient back (the copies moving 6
/// bytes per logit) are gone, its cross-entropy kernels move [`FUSED_XENTROPY_BYTES_PER_LOGIT`], and
/// it saves the bf16 logits for backward instead of their fp32 copy (2 bytes per logit less, on the
/// tensor-parallel side the LM head's matmul is on); its backward temporary is the bf16 gradient.
/// Returns false, leaving the profile as it was, when the profile has no fp32-upcast loss to fuse.
pub fn fuse_cross_entropy(profile: &mut StepProfile) -> bool {
    if profile.loss != LossKernel::Fp32Upcast {
        return false;
    }
    let Some((head, logits, vocab_split)) = lm_head(profile) else {
        return false;
    };
    let cast = |op: &OpCost| {
        op.class == KernelClass::Copy && (op.bytes - 6.0 * logits).abs() <= 1e-6 * op.bytes
    };
    if logits <= 0.0
        || !head
            .ops
            .iter()
            .any(|op| cast(op) && op.phase == Phase::Forward)
    {
        return false;
    }
    head.ops.retain(|op| !cast(op));
    let (forward, backward) = FUSED_XENTROPY_BYTES_PER_LOGIT;
    for op in &mut head.ops {
        if op.class == KernelClass::Reduce && op.split == TpSplit::Vocab {
            op.bytes = if op.phase == Phase::Backward {
                backward
            } else {
                forward
            } * logits;
        }
    }
    let saved = if vocab_split {
        &mut head.saved.tp_sharded
    } else {
        &mut head.saved.tp_replicated
    };
    *saved = (*saved - 2.0 * logits).max(0.0);
    head.transient.tp_sharded = 2.0 * logits;
    profile.loss = LossKernel::FusedBf16;
    profile.refresh_fingerprint();
    true
}

/// The profile's LM-head block, its logits per micro-batch (the forward matmul's output elements)
/// and whether tensor parallelism splits them by vocabulary.
fn lm_head(profile: &mut StepProfile) -> Option<(&mut BlockProfile, f64, bool)> {
    let head = profile
        .blocks
        .iter_mut()
        .find(|b| b.kind == BlockKind::Head)?;
    let (logits, vocab_split) = head.ops.iter().find_map(|op| match op.class {
        KernelClass::Matmul { batch, m, n, .. } if op.phase == Phase::Forward => {
            Some(((batch.max(1) * m * n) as f64, op.split == TpSplit::Vocab))
        }
        _ => None,
    })?;
    Some((head, logits, vocab_split))
}

/// Bytes per logit element of one forward-only PyTorch cross-entropy over bf16 logits under
/// autocast, which runs it in fp32: the cast of the logits (2 read, 4 written) and the log-softmax
/// (4 read, 4 written); the loss gathers one element per row.
pub const TORCH_METRIC_CROSS_ENTROPY_BYTES_PER_LOGIT: (f64, f64) = (6.0, 8.0);

/// Adds `n` forward-only cross-entropies over the LM head's logits to every micro-batch: what a
/// trainer computes for its training metrics. Composer (the trainer LLM Foundry runs; composer
/// v0.16.4 `Trainer._train_microbatch` → `_eval_train_metrics`, after each micro-batch's backward,
/// under `torch.no_grad` and the precision context) updates every train metric of the model, and
/// LLM Foundry's MPT has two by default (`use_train_metrics: true`): `LanguageCrossEntropy` and
/// `LanguagePerplexity`, each its own `torch.nn.CrossEntropyLoss` over the bf16 logits
/// (`composer/metrics/nlp.py`). Each adds a cast and a log-softmax kernel
/// ([`TORCH_METRIC_CROSS_ENTROPY_BYTES_PER_LOGIT`]) to the head's forward; their fp32 buffers live
/// after backward, when the activations are gone, so they do not move the peak and are not
/// counted there. Returns false, leaving the profile as it was, when it has no LM head.
pub fn add_metric_cross_entropies(profile: &mut StepProfile, n: u32) -> bool {
    let Some((head, logits, _)) = lm_head(profile) else {
        return false;
    };
    let (cast, log_softmax) = TORCH_METRIC_CROSS_ENTROPY_BYTES_PER_LOGIT;
    let op = |class: KernelClass, bytes, label: &str| OpCost {
        flops: if class == KernelClass::Reduce {
            5.0 * logits
        } else {
            0.0
        },
        class,
        bytes: bytes * logits,
        phase: Phase::Forward,
        layer: None,
        split: TpSplit::Vocab,
        label: label.into(),
        role: moai_ir::cost::Role::Plain,
    };
    for _ in 0..n {
        head.ops
            .push(op(KernelClass::Copy, cast, "metric.logits.float"));
        head.ops
            .push(op(KernelClass::Reduce, log_softmax, "metric.cross_entropy"));
    }
    profile.refresh_fingerprint();
    true
}

/// Times single kernels on one device.
#[derive(Clone, Debug)]
pub struct OpTimer<'a> {
    /// Device peaks.
    pub spec: &'a DeviceSpec,
    /// Efficiencies.
    pub eff: &'a Efficiency,
    /// Measured profile, if any.
    pub profile: Option<&'a OpProfile>,
}

impl OpTimer<'_> {
    /// Roofline time of a memory-bound transfer of `bytes` at the fitted bandwidth.
    pub fn memory_time(&self, bytes: f64) -> f64 {
        bytes / (self.spec.hbm_bytes_per_s * self.eff.memory)
    }

    /// A kernel's base time (unit coefficients) and its bucket. A GEMM or attention kernel whose
    /// bytes at the HBM peak take longer than its FLOPs at the shape-dependent rate is memory bound.
    pub fn base(&self, op: &ShardedOp) -> KernelTime {
        let mem = op.bytes / self.spec.hbm_bytes_per_s;
        let units = self.spec.compute_units;
        let kt = |base_s, bucket| KernelTime {
            base_s,
            bucket,
            source: Source::Roofline,
        };
        let measured = |t| KernelTime {
            base_s: t,
            bucket: Bucket::Measured,
            source: Source::Profile,
        };
        match &op.class {
            KernelClass::Matmul {
                batch,
                m,
                n,
                k,
                dtype,
            } => {
                if let Some(t) = self
                    .profile
                    .and_then(|p| p.matmul(*dtype, *batch, *m, *n, *k))
                {
                    return measured(t);
                }
                let rate = self.spec.max_achievable_flops(*dtype)
                    * gemm_shape_efficiency(units, *batch, *m, *n, *k);
                let compute = op.flops / rate;
                if compute >= mem {
                    kt(compute, Bucket::Matmul)
                } else {
                    kt(mem, Bucket::Memory)
                }
            }
            KernelClass::Attention {
                batch,
                heads,
                kv_heads,
                seq,
                head_dim,
                causal,
                backward,
                dtype,
            } => {
                let group = (heads / (*kv_heads).max(1)).max(1);
                if let Some(t) = self.profile.and_then(|p| {
                    p.attention(
                        *dtype, *causal, *backward, group, *batch, *heads, *seq, *head_dim,
                    )
                }) {
                    return measured(t);
                }
                let rate = self.spec.max_achievable_flops(*dtype)
                    * attention_shape_efficiency(
                        units, *batch, *heads, *seq, *head_dim, *causal, *backward,
                    );
                let compute = op.flops / rate;
                if compute >= mem {
                    kt(compute, Bucket::Attention)
                } else {
                    kt(mem, Bucket::Memory)
                }
            }
            other => {
                let kind = match other {
                    KernelClass::Norm => MemoryKind::Norm,
                    KernelClass::Reduce => MemoryKind::Reduce,
                    KernelClass::Gather => MemoryKind::Gather,
                    KernelClass::Optimizer => MemoryKind::Optimizer,
                    KernelClass::Copy => MemoryKind::Copy,
                    _ => MemoryKind::Elementwise,
                };
                if let Some(t) = self.profile.and_then(|p| p.memory_bound(kind, op.bytes)) {
                    return measured(t);
                }
                let compute = op.flops / self.spec.peak_flops(DType::F32);
                let bucket = match other {
                    KernelClass::Norm | KernelClass::Elementwise | KernelClass::Reduce => {
                        Bucket::Fusable
                    }
                    _ => Bucket::Memory,
                };
                kt(mem.max(compute), bucket)
            }
        }
    }

    /// The coefficient that divides a bucket's base time.
    pub fn coefficient(&self, bucket: Bucket) -> f64 {
        match bucket {
            Bucket::Matmul => self.eff.matmul,
            Bucket::Attention => self.eff.attention,
            Bucket::Fusable | Bucket::Memory => self.eff.memory,
            Bucket::Measured => 1.0,
        }
    }

    /// Time of one (sharded) kernel with this timer's coefficients (unfused, with the per-kernel floor
    /// for memory-bound kernels) and its source.
    pub fn time(&self, op: &ShardedOp) -> (f64, Source) {
        let k = self.base(op);
        let t = k.base_s / self.coefficient(k.bucket);
        let t = match k.bucket {
            Bucket::Fusable | Bucket::Memory => t + KERNEL_FLOOR_S,
            _ => t,
        };
        (t, k.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;
    use moai_ir::cost::{Phase, Role};

    fn mm(split: TpSplit, n: u64, k: u64) -> OpCost {
        OpCost {
            class: KernelClass::Matmul {
                batch: 1,
                m: 4096,
                n,
                k,
                dtype: DType::BF16,
            },
            flops: 2.0 * 4096.0 * n as f64 * k as f64,
            bytes: 2.0 * (4096.0 * k as f64 + (k * n) as f64 + 4096.0 * n as f64),
            phase: Phase::Forward,
            layer: Some(0),
            split,
            label: "x".into(),
            role: Role::Plain,
        }
    }

    /// A profile whose only block is an LM head over `4096 × 1000` logits with the training graph's
    /// fp32-upcast loss.
    fn head_profile() -> StepProfile {
        let logits = 4096.0 * 1000.0;
        let op = |class, bytes, phase| OpCost {
            class,
            flops: 0.0,
            bytes,
            phase,
            layer: None,
            split: TpSplit::Vocab,
            label: "loss".into(),
            role: Role::Plain,
        };
        StepProfile {
            micro_batch: 1,
            seq: 4096,
            blocks: vec![moai_ir::cost::BlockProfile {
                kind: BlockKind::Head,
                ops: vec![
                    mm(TpSplit::Vocab, 1000, 64),
                    op(KernelClass::Copy, 6.0 * logits, Phase::Forward),
                    op(KernelClass::Reduce, 8.0 * logits, Phase::Forward),
                    op(KernelClass::Reduce, 10.0 * logits, Phase::Backward),
                ],
                params: 64_000,
                tp_sharded_params: 64_000,
                expert_params: 0,
                saved: moai_ir::cost::ActivationBytes {
                    tp_sharded: 4.0 * logits,
                    tp_replicated: 0.0,
                },
                transient: Default::default(),
                boundary_bytes: 0.0,
            }],
            optimizer: vec![],
            static_bytes_per_param: 16.0,
            low_prec_param_bytes_per_param: 0.0,
            optimizer_bytes_per_param: 12.0,
            grad_bytes_per_param: 4.0,
            loss: LossKernel::Fp32Upcast,
            fingerprint: Default::default(),
        }
    }

    #[test]
    fn a_fused_loss_drops_the_upcast_once() {
        let logits = 4096.0 * 1000.0;
        let mut p = head_profile();
        let before = p.fingerprint();
        assert!(fuse_cross_entropy(&mut p));
        assert_eq!(p.loss, LossKernel::FusedBf16);
        assert_ne!(p.fingerprint(), before);
        let head = &p.blocks[0];
        assert_eq!(head.ops.len(), 3);
        assert!(head.ops.iter().all(|o| o.class != KernelClass::Copy));
        let reduce: Vec<f64> = head
            .ops
            .iter()
            .filter(|o| o.class == KernelClass::Reduce)
            .map(|o| o.bytes)
            .collect();
        assert_eq!(reduce, vec![4.0 * logits, 4.0 * logits]);
        assert_eq!(head.saved.tp_sharded, 2.0 * logits);
        assert_eq!(head.transient.tp_sharded, 2.0 * logits);
        // A second fusion, or a profile without a head, leaves the profile alone.
        let fused = p.clone();
        assert!(!fuse_cross_entropy(&mut p));
        assert_eq!(p, fused);
        let mut headless = head_profile();
        headless.blocks[0].kind = BlockKind::Embedding;
        let copy = headless.clone();
        assert!(!fuse_cross_entropy(&mut headless));
        assert_eq!(headless, copy);
    }

    #[test]
    fn sharding_divides_the_feature_dimension() {
        let s = shard(&mm(TpSplit::Column, 11008, 4096), 8, false);
        assert!(matches!(
            s.class,
            KernelClass::Matmul {
                n: 1376,
                k: 4096,
                ..
            }
        ));
        let s = shard(&mm(TpSplit::Row, 4096, 11008), 8, false);
        assert!(matches!(
            s.class,
            KernelClass::Matmul {
                n: 4096,
                k: 1376,
                ..
            }
        ));
        let s = shard(&mm(TpSplit::Replicated, 4096, 4096), 8, false);
        assert_eq!(s.flops, mm(TpSplit::Replicated, 4096, 4096).flops);
    }

    #[test]
    fn roofline_is_compute_bound_for_big_matmuls() {
        let spec = Gpu::H100.spec();
        let eff = crate::efficiency::committed().get(Gpu::H100);
        let t = OpTimer {
            spec,
            eff,
            profile: None,
        };
        let op = shard(&mm(TpSplit::Replicated, 8192, 8192), 1, false);
        let (secs, src) = t.time(&op);
        assert_eq!(src, Source::Roofline);
        let shape = gemm_shape_efficiency(spec.compute_units, 1, 4096, 8192, 8192);
        let want = op.flops / (spec.max_achievable_bf16_flops * shape * eff.matmul);
        assert!((secs / want - 1.0).abs() < 1e-12);
    }

    #[test]
    fn gemm_efficiency_follows_shape() {
        let big = gemm_shape_efficiency(132, 1, 8192, 8192, 8192);
        assert!(big > 0.9, "{big}");
        // Wave quantization: 133 tiles of 256x128 on 132 SMs run in two waves.
        let one_more = gemm_shape_efficiency(132, 1, 256 * 7, 128 * 19, 4096);
        let exact = gemm_shape_efficiency(132, 1, 256 * 12, 128 * 11, 4096);
        assert!(one_more < exact, "{one_more} vs {exact}");
        // Skinny and short-K products are slower per FLOP.
        assert!(gemm_shape_efficiency(132, 1, 16, 4096, 4096) < 0.5 * big);
        assert!(gemm_shape_efficiency(132, 1, 8192, 8192, 64) < 0.6 * big);
        // Tile padding: 129 rows waste most of a second row of tiles.
        assert!(
            gemm_shape_efficiency(108, 1, 129, 8192, 4096)
                < gemm_shape_efficiency(108, 1, 128, 8192, 4096)
        );
    }

    #[test]
    fn attention_efficiency_follows_shape() {
        let f = |s, hd, causal, bwd| attention_shape_efficiency(132, 8, 32, s, hd, causal, bwd);
        assert!(f(4096, 128, false, false) > f(512, 128, false, false));
        // Causal kernels skip about half the (counted) score blocks.
        let (c, full) = (f(2048, 128, true, false), f(2048, 128, false, false));
        assert!(c > 1.8 * full && c < 2.0 * full, "{c} vs {full}");
        assert!(f(2048, 64, false, false) < f(2048, 128, false, false));
        assert!(f(2048, 128, false, true) < f(2048, 128, false, false));
    }

    #[test]
    fn triton_attention_is_costed_on_a100_and_every_hopper_kind() {
        use crate::device::{Family, Gpu};
        for g in Gpu::ALL {
            let want = g == Gpu::A100 || g.family() == Family::Hopper;
            assert_eq!(super::triton_flash_throughput(g).is_some(), want, "{g}");
        }
    }
}
