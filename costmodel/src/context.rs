//! Context parallelism (`cp`): the sequence of every sample is split over `cp` ranks, each holding
//! `seq/cp` tokens (Megatron-LM cuts it into `2·cp` chunks and gives rank `r` chunks `r` and
//! `2·cp − 1 − r`, so every rank does the same share of the causal attention).
//!
//! The mechanisms, without fitted constants:
//! - **Work.** Everything outside attention runs on `seq/cp` tokens; the causal attention of a rank
//!   covers its queries against all earlier keys, which load balancing makes `1/cp` of the whole.
//!   So a rank's kernel seconds are the whole sequence's divided by cp ([`PhaseSums::context_shard`];
//!   per-kernel floors and launches are not divided).
//! - **Ring steps.** The ring's rank does not run one attention kernel over its share but cp per pass:
//!   the causal diagonal block of its tokens and `cp − 1` non-causal blocks of half the FLOPs, each
//!   priced at its own shape for the busiest rank; PyTorch's ring (torchtitan, FSDP scripts) also
//!   merges the steps' outputs and accumulates the gradients in fp32, memory-bound traffic that
//!   grows with the steps ([`RingSteps`], [`ring_steps`], [`crate::stack::Stack::runs_pytorch_ring`]).
//! - **Ring (`p2p`).** Each attention passes the rank's key/value chunk around the ring of cp ranks in
//!   `cp − 1` steps; a step's transfer runs under the attention of the chunk in hand (one cp-th of the
//!   rank's attention), so only what exceeds it is exposed. Backward passes the keys/values and their
//!   gradients (twice the bytes). Full recomputation runs the forward ring again in backward.
//!   PyTorch's ring moves other bytes at other times ([`pytorch_ring`]): keys and values at the query
//!   heads' width, all-gathered once per pass, and fp32 key/value gradients passed after every step;
//!   a compiled step waits for each transfer where it is issued
//!   ([`ParallelConfig::cp_comm_overlap`]).
//! - **All-to-all (`a2a`, Ulysses).** Queries, keys and values are exchanged from sequence-sharded to
//!   head-sharded before attention and the output back after it: 4 all-to-alls per layer in forward and
//!   4 in backward, on the critical path.
//! - **Links.** The cp ranks come after the tp ranks in Megatron-LM's rank order (`tp-cp-ep-dp-pp`), so a
//!   cp group is `cp` ranks `tp` apart: inside one server while `tp·cp` fits in it, else across the network
//!   (a ring step waits for its slowest hop).
//! - **Memory.** Activations, transients and logits are those of `seq/cp` tokens; the ring keeps a send
//!   and a receive buffer of the key/value chunk (and of its gradient in backward).

use crate::cluster::Cluster;
use crate::collective::{Collective, collective_time};
use crate::config::{CpComm, ParallelConfig, Recompute};
use crate::estimate::PhaseSums;
use moai_ir::cost::{KernelClass, OpCost, Phase};

/// The attention of one block as context parallelism sees it (whole sequence, unsharded heads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpAttention {
    /// Samples per micro-batch.
    pub batch: u64,
    /// Whole sequence length.
    pub seq: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Bytes per element of the attention's inputs.
    pub elem_bytes: u64,
    /// Causal (decoder) attention: the ring is load balanced and its steps skip masked blocks.
    pub causal: bool,
}

impl CpAttention {
    /// The attention of one op, if it is a forward attention (the prepared profile keeps each
    /// block's in [`crate::memory::BlockShape::attention`]).
    pub fn of_op(op: &OpCost) -> Option<CpAttention> {
        match op.class {
            KernelClass::Attention {
                batch,
                heads,
                kv_heads,
                seq,
                head_dim,
                backward: false,
                dtype,
                causal,
            } if op.phase == Phase::Forward => Some(CpAttention {
                batch,
                seq,
                heads,
                kv_heads,
                head_dim,
                elem_bytes: dtype.size_bytes(),
                causal,
            }),
            _ => None,
        }
    }

    /// Bytes of one rank's key and value chunk (`seq/cp` tokens, the KV heads of one tensor-parallel
    /// rank): what one ring step sends.
    pub fn kv_chunk_bytes(&self, tp: u32, cp: u32) -> f64 {
        self.chunk_bytes(self.kv_heads, tp, cp)
    }

    /// Bytes of one rank's key and value chunk as PyTorch's ring holds them: at the query heads'
    /// width. SDPA's flash backend takes as many key/value heads as query heads, so a grouped-query
    /// model repeats its key/value heads before attention (torchtitan's `repeat_kv`, Hugging Face's
    /// `repeat_kv` in its SDPA path), and the ring moves and accumulates the repeated tensors.
    pub fn pytorch_chunk_bytes(&self, tp: u32, cp: u32) -> f64 {
        self.chunk_bytes(self.heads.max(self.kv_heads), tp, cp)
    }

    fn chunk_bytes(&self, heads: u64, tp: u32, cp: u32) -> f64 {
        let tokens = self.batch as f64 * self.seq as f64 / cp.max(1) as f64;
        2.0 * tokens
            * (heads as f64 / tp.max(1) as f64)
            * self.head_dim as f64
            * self.elem_bytes as f64
    }

    /// Bytes one rank holds of the queries, keys, values and output (`seq/cp` tokens, one
    /// tensor-parallel rank's heads): what the four all-to-alls of one pass exchange.
    pub fn a2a_bytes(&self, tp: u32, cp: u32) -> [f64; 4] {
        let tokens = self.batch as f64 * self.seq as f64 / cp.max(1) as f64;
        let t = tp.max(1) as f64;
        let per_head = tokens * self.head_dim as f64 * self.elem_bytes as f64;
        let q = per_head * self.heads as f64 / t;
        let kv = per_head * self.kv_heads as f64 / t;
        [q, kv, kv, q]
    }
}

/// Context-parallel communication of one block and micro-batch on one rank, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpTraffic {
    /// Forward communication, before overlap.
    pub forward_s: f64,
    /// Backward (and recomputation) communication, before overlap.
    pub backward_s: f64,
    /// Forward communication not hidden behind attention.
    pub forward_exposed_s: f64,
    /// Backward communication not hidden behind attention.
    pub backward_exposed_s: f64,
}

/// Seconds of an all-to-all in which each of `n` ranks `stride` apart holds `bytes` and keeps `1/n` of
/// them: `(n−1)/n` of the buffer leaves each rank, the part bound for other servers over the network
/// and the rest over the server link at the same time; one message latency per peer link class used.
pub fn all_to_all_time(cluster: &Cluster, bytes: f64, n: u32, stride: u32) -> f64 {
    if n <= 1 || bytes <= 0.0 {
        return 0.0;
    }
    let (servers, per) = cluster.group_layout(n, stride);
    let nf = n as f64;
    let server = &cluster.links.server;
    let intra = if per > 1 {
        server.latency_s + (per - 1) as f64 / nf * bytes / server.effective_bytes_per_s(per)
    } else {
        0.0
    };
    let inter = if servers > 1 {
        let net = &cluster.links.network;
        net.latency_s + (n - per) as f64 / nf * bytes / net.effective_bytes_per_s(2)
    } else {
        0.0
    };
    intra.max(inter)
}

/// Seconds of one ring step sending `bytes` between neighbouring cp ranks (`tp` apart): over the
/// network when the ring spans servers (the slowest hop gates every step), else the server link.
pub fn ring_step_time(cluster: &Cluster, bytes: f64, cp: u32, tp: u32) -> f64 {
    collective_time(cluster, Collective::PointToPoint, bytes, cp, tp)
}

/// The context-parallel communication of one block of one micro-batch on one rank: `attn` the block's
/// attention, `attention_s` the rank's forward and backward attention kernel seconds (already divided
/// by cp), under which ring steps overlap.
pub fn block_comm(
    cluster: &Cluster,
    cfg: &ParallelConfig,
    attn: &CpAttention,
    attention_s: (f64, f64),
) -> CpTraffic {
    let cp = cfg.cp.max(1);
    if cp <= 1 {
        return CpTraffic::default();
    }
    let tp = cfg.tp.max(1);
    let steps = (cp - 1) as f64;
    match cfg.cp_comm {
        CpComm::P2p if cfg.stack.runs_pytorch_ring() => {
            pytorch_ring(cluster, cfg, attn, attention_s)
        }
        CpComm::P2p => {
            let kv = attn.kv_chunk_bytes(tp, cp);
            let f_step = ring_step_time(cluster, kv, cp, tp);
            let b_step = ring_step_time(cluster, 2.0 * kv, cp, tp);
            let c = RingCover::of(cfg, attention_s);
            let forward_exposed = c.exposed(f_step, c.forward_s);
            CpTraffic {
                forward_s: steps * f_step,
                backward_s: steps * (b_step + c.again * f_step),
                forward_exposed_s: steps * forward_exposed,
                backward_exposed_s: steps
                    * (c.exposed(b_step, c.backward_s) + c.again * forward_exposed),
            }
        }
        CpComm::A2a => {
            let t: f64 = attn
                .a2a_bytes(tp, cp)
                .iter()
                .map(|b| all_to_all_time(cluster, *b, cp, tp))
                .sum();
            let again = if cfg.recompute == Recompute::Full {
                t
            } else {
                0.0
            };
            CpTraffic {
                forward_s: t,
                backward_s: t + again,
                forward_exposed_s: t,
                backward_exposed_s: t + again,
            }
        }
    }
}

/// PyTorch's ring (`_templated_ring_attention` and its backward in
/// `torch/distributed/tensor/experimental/_attention.py`, read at commit 0123248a, with torchtitan's
/// default `allgather` rotation) on one rank, one block and micro-batch:
/// - keys and values travel at the query heads' width ([`CpAttention::pytorch_chunk_bytes`]);
/// - **forward:** one all-gather of every rank's chunk, issued before the diagonal step and waited
///   at the first later step, so only its excess over the diagonal step (`1/cp` of the rank's
///   attention) is exposed;
/// - **backward:** the same all-gather again, then after each of the cp steps the fp32 key/value
///   gradient buffer goes to the next rank (`all_to_all_single`), waited after the next step's
///   kernels; the last is waited at once, with nothing left to hide it;
/// - full recomputation reruns the forward's all-gather inside backward;
/// - with `cp_comm_overlap` off (a compiled step, see [`ParallelConfig::cp_comm_overlap`]) every
///   transfer is waited where it is issued, on the critical path.
pub fn pytorch_ring(
    cluster: &Cluster,
    cfg: &ParallelConfig,
    attn: &CpAttention,
    attention_s: (f64, f64),
) -> CpTraffic {
    let cp = cfg.cp.max(1);
    let tp = cfg.tp.max(1);
    let n = cp as f64;
    let chunk = attn.pytorch_chunk_bytes(tp, cp);
    let gather = collective_time(cluster, Collective::AllGather, chunk * n, cp, tp);
    let grads = ring_step_time(cluster, chunk * 4.0 / attn.elem_bytes.max(1) as f64, cp, tp);
    let c = RingCover::of(cfg, attention_s);
    let forward_exposed_s = c.exposed(gather, c.forward_s);
    CpTraffic {
        forward_s: gather,
        backward_s: (1.0 + c.again) * gather + n * grads,
        forward_exposed_s,
        backward_exposed_s: c.again * forward_exposed_s
            + c.exposed(gather, c.backward_s)
            + (n - 1.0) * c.exposed(grads, c.backward_s)
            + grads,
    }
}

/// What a ring transfer can hide behind on one rank: the attention of one step (a cp-th of the
/// rank's forward, and of its backward without the recomputed forward), when the implementation
/// waits for the transfer where its result is first used (`cp_comm_overlap`).
struct RingCover {
    /// 1 when full recomputation reruns the forward ring inside backward, else 0.
    again: f64,
    /// Attention seconds of one forward step.
    forward_s: f64,
    /// Attention seconds of one backward step.
    backward_s: f64,
    /// Transfers wait where their result is first used (else where they are issued).
    overlap: bool,
}

impl RingCover {
    fn of(cfg: &ParallelConfig, (af, ab): (f64, f64)) -> RingCover {
        let n = cfg.cp.max(1) as f64;
        // Full recomputation runs the forward ring again during backward, under the recomputed
        // forward attention (part of the backward seconds).
        let again = if cfg.recompute == Recompute::Full {
            1.0
        } else {
            0.0
        };
        RingCover {
            again,
            forward_s: af / n,
            backward_s: (ab - again * af).max(0.0) / n,
            overlap: cfg.cp_comm_overlap,
        }
    }

    /// The exposed part of a transfer of `t` seconds under `under` seconds of attention.
    fn exposed(&self, t: f64, under: f64) -> f64 {
        if self.overlap {
            (t - under).max(0.0)
        } else {
            t
        }
    }
}

/// Transient bytes context parallelism adds on one rank at the peak: the ring's send and receive
/// buffers of a key/value chunk and of its gradient (backward), or the head-sharded copies of the
/// queries, keys, values and output the all-to-alls produce.
pub fn buffer_bytes(cfg: &ParallelConfig, attn: &CpAttention) -> f64 {
    let cp = cfg.cp.max(1);
    if cp <= 1 {
        return 0.0;
    }
    match cfg.cp_comm {
        CpComm::P2p => 4.0 * attn.kv_chunk_bytes(cfg.tp, cp),
        CpComm::A2a => attn.a2a_bytes(cfg.tp, cp).iter().sum(),
    }
}

/// What the ring attention of one block costs one context-parallel rank beyond the whole
/// sequence's attention divided by cp (the estimator's [`PhaseSums::context_shard`]), for the
/// busiest rank. The mechanisms (PyTorch's `_templated_ring_attention` and its backward in
/// `torch/distributed/tensor/experimental/_attention.py`, pytorch/pytorch read at commit 0123248a,
/// which torchtitan's context parallelism runs; Transformer Engine's `AttnFuncWithCPAndKVP2P` splits
/// the steps the same way):
/// - **Step kernels.** With load balancing (rank `r` holds chunks `r` and `2·cp − 1 − r` of `2·cp`)
///   a rank runs cp attention kernels per pass, not one: step 0 the causal diagonal block of its
///   `T = seq/cp` tokens; each later step `i` a non-causal block of half the FLOPs, all `T` queries
///   against the first half of the visiting keys (`i ≤ r`) or the second half of the queries against
///   all `T` keys (`i > r`). Each is priced at its own shape ([`block_attention_efficiency`]), so the
///   smaller kernels' last-wave idle units and the per-tile overhead of the shorter iterated side
///   count; without causality every step is a full `T × T` block.
/// - **Merge traffic** (`pytorch_merge`, PyTorch's implementation only): each step's output is
///   merged into a running output and log-sum-exp in fp32 (`_SDPAMerger`, `convert_to_f32` on by
///   default): the block output cast to fp32, `out − σ(lse_b − lse)·(out − out_b)` as three
///   elementwise kernels over fp32 `out`, and on the half-query steps the fp32 output rebuilt by
///   `torch.cat` (`_partial_update`); the key/value chunk is concatenated into the send buffer each
///   step. Backward accumulates dQ, dK, dV in fp32 (zero-initialised), adds each step's bf16
///   gradients (half of dK/dV on the `i ≤ r` steps, rebuilt by `torch.cat`; half of dQ on the
///   others, likewise), and concatenates dK/dV in fp32 into the buffer sent to the next rank;
///   output and gradients are cast back at the end. Counted as the bytes those eager kernels move
///   (fusable memory-bound traffic: the stack's fusion applies as to other elementwise kernels).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RingSteps {
    /// Busiest rank's forward attention kernel seconds over the whole-sequence share (≥ about 1).
    pub forward_scale: f64,
    /// The same for the backward attention kernels.
    pub backward_scale: f64,
    /// Bytes the forward's merge kernels move on the busiest rank, per pass.
    pub forward_merge_bytes: f64,
    /// Bytes the backward's accumulation kernels move on the busiest rank.
    pub backward_merge_bytes: f64,
    /// Merge kernels per forward pass.
    pub forward_merge_kernels: f64,
    /// Accumulation kernels per backward pass.
    pub backward_merge_kernels: f64,
}

/// The ring-step costs of `attn` under `cfg` on a device with `units` SMs/CUs (see [`RingSteps`]);
/// `None` without a ring (cp 1 or Ulysses all-to-all). `pytorch_merge`: count PyTorch's fp32
/// merge and accumulation traffic.
pub fn ring_steps(
    attn: &CpAttention,
    cfg: &ParallelConfig,
    units: u32,
    pytorch_merge: bool,
) -> Option<RingSteps> {
    let cp = cfg.cp.max(1) as u64;
    if cp <= 1 || cfg.cp_comm != CpComm::P2p {
        return None;
    }
    let tp = cfg.tp.max(1) as u64;
    let heads = (attn.heads / tp).max(1);
    let b = attn.batch.max(1);
    let d = attn.head_dim.max(1);
    let s = attn.seq.max(1);
    let t = (s / cp).max(1);
    let half = (t / 2).max(1);
    // Seconds at unit rate are proportional to counted FLOPs (q·kv) over efficiency.
    let cost = |q: u64, kv: u64, causal: bool, bwd: bool| {
        (q * kv) as f64
            / crate::ops::block_attention_efficiency(units, b, heads, q, kv, d, causal, bwd)
    };
    let whole = |bwd: bool| cost(s, s, attn.causal, bwd) / cp as f64;
    // Rank r runs the diagonal block, then r steps with half the keys and cp − 1 − r with half the
    // queries: each block shape is priced once.
    let busiest = |bwd: bool| -> f64 {
        if !attn.causal {
            return cp as f64 * cost(t, t, false, bwd);
        }
        let (diagonal, half_keys, half_queries) = (
            cost(t, t, true, bwd),
            cost(t, half, false, bwd),
            cost(half, t, false, bwd),
        );
        (0..cp)
            .map(|r| {
                let later: f64 = (1..cp)
                    .map(|i| if i <= r { half_keys } else { half_queries })
                    .sum();
                diagonal + later
            })
            .fold(0.0, f64::max)
    };
    let mut out = RingSteps {
        forward_scale: busiest(false) / whole(false),
        backward_scale: busiest(true) / whole(true),
        ..Default::default()
    };
    if pytorch_merge {
        let (e, f) = (attn.elem_bytes as f64, 4.0);
        let o = (b * t * heads * d) as f64;
        // PyTorch's ring holds keys, values and their gradients at the query heads' width.
        let kv = 2.0 * (b * t * (attn.heads.max(attn.kv_heads) / tp).max(1) * d) as f64;
        let later = (cp - 1) as f64;
        // Forward: step 0's cast to fp32, the final cast back, the key/value send-buffer copies.
        let f_base = 2.0 * o * (e + f) + later * kv * 2.0 * e;
        let f_full = o * (e + 9.0 * f);
        let f_half = o / 2.0 * (e + 9.0 * f) + o * 2.0 * f;
        // Backward: fp32 zeros, step 0's accumulation and send copy, the key/value copies, the casts.
        let b_base = (o + kv) * f
            + later * kv * 2.0 * e
            + (kv + o) * (2.0 * f + e)
            + kv * 2.0 * f
            + (o + kv) * (f + e);
        let b_full = kv / 2.0 * (2.0 * f + e) + 2.0 * kv * 2.0 * f + o * (2.0 * f + e);
        let b_half = kv * (2.0 * f + e) + kv * 2.0 * f + o / 2.0 * (2.0 * f + e) + o * 2.0 * f;
        let per_rank = |base: f64, full: f64, part: f64| {
            (0..cp)
                .map(|r| {
                    let n_full = if attn.causal { r.min(cp - 1) } else { cp - 1 } as f64;
                    base + n_full * full + (later - n_full) * part
                })
                .fold(0.0, f64::max)
        };
        out.forward_merge_bytes = per_rank(f_base, f_full, f_half);
        out.backward_merge_bytes = per_rank(b_base, b_full, b_half);
        // Eager kernels: forward 2 casts + per step a copy, a cast and the merge's 5 elementwise
        // ops; backward 3 zero fills, 3 casts and per step 5 copies or additions.
        out.forward_merge_kernels = 2.0 + 7.0 * later;
        out.backward_merge_kernels = 6.0 + 5.0 * (later + 1.0);
    }
    Some(out)
}

impl PhaseSums {
    /// This rank's sums of one block's phase after [`PhaseSums::context_shard`] with the ring's
    /// step costs ([`RingSteps`]) applied: `recomputed_s` of the sharded attention seconds are a
    /// recomputed forward (scaled as the forward) and the rest `scale`d; `merge_bytes` at the
    /// `hbm_bytes_per_s` peak join the fusable memory-bound seconds with their `merge_kernels`.
    pub fn with_ring_steps(
        &self,
        recomputed_s: f64,
        forward_scale: f64,
        scale: f64,
        merge_bytes: f64,
        merge_kernels: f64,
        hbm_bytes_per_s: f64,
    ) -> PhaseSums {
        let recomputed = recomputed_s.clamp(0.0, self.attention_s);
        let merge_s = if hbm_bytes_per_s > 0.0 {
            merge_bytes / hbm_bytes_per_s
        } else {
            0.0
        };
        PhaseSums {
            attention_s: recomputed * forward_scale + (self.attention_s - recomputed) * scale,
            fusable_s: self.fusable_s + merge_s,
            gpu_s: self.gpu_s + merge_s,
            kernels: self.kernels + merge_kernels,
            memory_kernels: self.memory_kernels + merge_kernels,
            fusable_kernels: self.fusable_kernels + merge_kernels,
            ..*self
        }
    }
}

impl PhaseSums {
    /// One context-parallel rank's share of a phase timed for the whole sequence: every second and
    /// tensor-parallel byte divided by `cp` (see the module doc), kernel and collective counts (and
    /// with them per-kernel floors and launches) unchanged.
    pub fn context_shard(&self, cp: u32) -> PhaseSums {
        if cp <= 1 {
            return *self;
        }
        let c = cp as f64;
        PhaseSums {
            gpu_s: self.gpu_s / c,
            tp_bytes: self.tp_bytes / c,
            tp_gather_bytes: self.tp_gather_bytes / c,
            matmul_s: self.matmul_s / c,
            attention_s: self.attention_s / c,
            memory_s: self.memory_s / c,
            fusable_s: self.fusable_s / c,
            measured_s: self.measured_s / c,
            tp_overlap_matmul_s: self.tp_overlap_matmul_s / c,
            a2a_bytes: self.a2a_bytes / c,
            autocast_cast_s: self.autocast_cast_s / c,
            eager_rotary_s: self.eager_rotary_s / c,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;

    fn attn() -> CpAttention {
        CpAttention {
            batch: 1,
            seq: 131072,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            elem_bytes: 2,
            causal: true,
        }
    }

    #[test]
    fn chunk_bytes_follow_tokens_and_heads() {
        let a = attn();
        // 16384 tokens × 2 (k, v) × 1 KV head × 128 × 2 bytes.
        assert_eq!(a.kv_chunk_bytes(8, 8), 16384.0 * 2.0 * 128.0 * 2.0);
        assert_eq!(a.kv_chunk_bytes(1, 8), 8.0 * a.kv_chunk_bytes(8, 8));
        let [q, k, v, o] = a.a2a_bytes(1, 4);
        assert_eq!(q, 4.0 * k);
        assert_eq!((k, o), (v, q));
    }

    #[test]
    fn ring_is_hidden_when_attention_is_long_and_exposed_when_short() {
        let c = Cluster::new(Gpu::H100, 64).unwrap();
        let cfg = ParallelConfig {
            dp: 1,
            tp: 8,
            cp: 8,
            ..Default::default()
        };
        let a = attn();
        let long = block_comm(&c, &cfg, &a, (10.0, 25.0));
        assert!(long.forward_s > 0.0 && long.backward_s > long.forward_s);
        assert_eq!(long.forward_exposed_s, 0.0);
        assert_eq!(long.backward_exposed_s, 0.0);
        let short = block_comm(&c, &cfg, &a, (0.0, 0.0));
        assert_eq!(short.forward_exposed_s, short.forward_s);
        // tp·cp = 64 spans servers: the ring runs over the network, slower than inside one server.
        let inside = ParallelConfig {
            tp: 1,
            cp: 8,
            dp: 8,
            ..Default::default()
        };
        let a1 = CpAttention { kv_heads: 1, ..a };
        let in_s = block_comm(&c, &inside, &a1, (0.0, 0.0)).forward_s;
        assert!(in_s < short.forward_s, "{in_s} vs {}", short.forward_s);
    }

    #[test]
    fn pytorch_ring_moves_repeated_heads_and_hides_only_behind_the_step_in_hand() {
        use crate::Stack;
        let c = Cluster::new(Gpu::H100, 8).unwrap();
        let a = CpAttention {
            kv_heads: 8,
            ..attn()
        };
        // 16384 tokens per rank × 2 (k, v) × 32 query heads × 128 × 2 bytes: 4× the GQA chunk.
        assert_eq!(a.pytorch_chunk_bytes(1, 8), 4.0 * a.kv_chunk_bytes(1, 8));
        assert_eq!(
            a.pytorch_chunk_bytes(1, 8),
            16384.0 * 2.0 * 32.0 * 128.0 * 2.0
        );
        let cfg = |stack, overlap| ParallelConfig {
            dp: 1,
            tp: 1,
            cp: 8,
            recompute: Recompute::Full,
            stack,
            cp_comm_overlap: overlap,
            ..Default::default()
        };
        let chunk = a.pytorch_chunk_bytes(1, 8);
        let gather = collective_time(&c, Collective::AllGather, 8.0 * chunk, 8, 1);
        let grads = ring_step_time(&c, 2.0 * chunk, 8, 1);
        // Long attention: the all-gathers hide behind the diagonal steps; only the last key/value
        // gradient exchange, waited once the steps are done, is exposed.
        let eager = block_comm(&c, &cfg(Stack::Torchtitan, true), &a, (100.0, 300.0));
        assert_eq!(eager.forward_s, gather);
        assert!((eager.backward_s - (2.0 * gather + 8.0 * grads)).abs() < 1e-12);
        assert_eq!(eager.forward_exposed_s, 0.0);
        assert!((eager.backward_exposed_s - grads).abs() < 1e-15);
        // Compiled (collectives waited where issued): every transfer is exposed.
        let compiled = block_comm(&c, &cfg(Stack::Fsdp, false), &a, (100.0, 300.0));
        assert_eq!(compiled.forward_exposed_s, compiled.forward_s);
        assert!((compiled.backward_exposed_s - compiled.backward_s).abs() < 1e-12);
        // Short attention: the all-gather's excess over the diagonal step shows even in eager.
        let short = block_comm(
            &c,
            &cfg(Stack::Torchtitan, true),
            &a,
            (8.0 * gather / 2.0, 0.0),
        );
        assert!((short.forward_exposed_s - gather / 2.0).abs() < 1e-15);
        // Transformer Engine's ring (Megatron-LM) moves the grouped heads step by step, and the
        // overlap switch is the only thing a compiled step changes for PyTorch's ring.
        let te = block_comm(&c, &cfg(Stack::Megatron, true), &a, (100.0, 300.0));
        assert_eq!(
            te.forward_s,
            7.0 * ring_step_time(&c, a.kv_chunk_bytes(1, 8), 8, 1)
        );
        let compiled_tt = block_comm(&c, &cfg(Stack::Torchtitan, false), &a, (100.0, 300.0));
        assert_eq!(compiled_tt, compiled);
        // The switch means the same for Transformer Engine's ring: nothing hidden.
        let te_off = block_comm(&c, &cfg(Stack::Megatron, false), &a, (100.0, 300.0));
        assert_eq!(te.forward_exposed_s, 0.0);
        assert_eq!(te_off.forward_exposed_s, te_off.forward_s);
        assert!((te_off.backward_exposed_s - te_off.backward_s).abs() < 1e-15);
    }

    #[test]
    fn all_to_all_is_exposed_and_grows_across_servers() {
        let c = Cluster::new(Gpu::H100, 64).unwrap();
        let mut cfg = ParallelConfig {
            tp: 1,
            cp: 8,
            dp: 8,
            cp_comm: CpComm::A2a,
            ..Default::default()
        };
        let a = attn();
        let inside = block_comm(&c, &cfg, &a, (1.0, 1.0));
        assert!(inside.forward_exposed_s > 0.0);
        assert_eq!(inside.forward_exposed_s, inside.forward_s);
        cfg.tp = 2;
        cfg.dp = 4;
        let across = block_comm(&c, &cfg, &a, (1.0, 1.0));
        // Half the bytes per rank (tp 2) but over the network.
        assert!(across.forward_s > inside.forward_s / 2.0);
        assert_eq!(all_to_all_time(&c, 1e6, 1, 1), 0.0);
    }

    #[test]
    fn block_efficiency_is_the_square_kernels_for_square_blocks() {
        for (seq, causal, bwd) in [
            (32768, true, false),
            (32768, true, true),
            (4096, false, false),
            (1000, false, true),
        ] {
            assert_eq!(
                crate::ops::block_attention_efficiency(132, 1, 32, seq, seq, 128, causal, bwd),
                crate::ops::attention_shape_efficiency(132, 1, 32, seq, 128, causal, bwd)
            );
        }
        // A half-length block: half the query tiles forward (a smaller last wave), half the
        // iterated keys; backward the other way round.
        let f =
            |q, kv, bwd| crate::ops::block_attention_efficiency(132, 1, 32, q, kv, 128, false, bwd);
        assert!(f(16384, 32768, false) < f(32768, 32768, false));
        assert!((f(16384, 32768, false) - f(32768, 16384, true) / 0.75).abs() < 1e-12);
    }

    #[test]
    fn ring_steps_cost_more_than_the_share_and_grow_with_cp() {
        let a = CpAttention {
            kv_heads: 8,
            ..attn()
        };
        let cfg = |cp, cp_comm| ParallelConfig {
            tp: 1,
            cp,
            dp: 8 / cp,
            cp_comm,
            ..Default::default()
        };
        assert!(ring_steps(&a, &cfg(1, CpComm::P2p), 132, true).is_none());
        assert!(ring_steps(&a, &cfg(4, CpComm::A2a), 132, true).is_none());
        let r = |cp, merge| ring_steps(&a, &cfg(cp, CpComm::P2p), 132, merge).unwrap();
        let (r2, r4, r8) = (r(2, true), r(4, true), r(8, true));
        // More, smaller kernels per rank as cp grows: a few percent over the whole-sequence share.
        assert!(r2.forward_scale > 1.0 && r2.forward_scale < r4.forward_scale);
        assert!(r4.backward_scale < r8.backward_scale && r8.backward_scale < 1.06);
        // PyTorch's merges move bytes; without them only the kernel shapes change.
        let steps = |x: &RingSteps| x.forward_merge_bytes + x.backward_merge_bytes;
        assert!(steps(&r8) > 0.0 && r(8, false).forward_merge_bytes == 0.0);
        assert_eq!(r(8, false).forward_scale, r8.forward_scale);
        // The busiest rank of cp 2 over 65536 tokens (32768 each): the forward's output is
        // 32768 × 4096 elements; step 0's cast and the final cast (6 bytes each), one full-query
        // merge (38 bytes) and one key/value copy (2 × 32768 × 4096 elements, the 8 key/value
        // heads repeated to the 32 query heads, 4 bytes).
        let a2 = CpAttention { seq: 65536, ..a };
        let o = 32768.0 * 4096.0;
        let fwd = ring_steps(&a2, &cfg(2, CpComm::P2p), 132, true)
            .unwrap()
            .forward_merge_bytes;
        let want = o * (12.0 + 38.0) + 2.0 * 32768.0 * 4096.0 * 4.0;
        assert!((fwd / want - 1.0).abs() < 1e-12, "{fwd} vs {want}");
        // Without causality no load balancing: cp full blocks of the rank's tokens.
        let nc = CpAttention { causal: false, ..a };
        let full = ring_steps(&nc, &cfg(4, CpComm::P2p), 132, false).unwrap();
        assert!(full.forward_scale > 1.0 && full.forward_scale < 1.03);
    }

    #[test]
    fn ring_steps_scale_attention_and_add_fusable_traffic() {
        let s = PhaseSums {
            attention_s: 3.0,
            fusable_s: 1.0,
            kernels: 10.0,
            memory_kernels: 4.0,
            fusable_kernels: 2.0,
            ..Default::default()
        };
        // 1 s of the 3 is a recomputed forward.
        let r = s.with_ring_steps(1.0, 1.5, 2.0, 2e12, 5.0, 1e12);
        assert_eq!(r.attention_s, 1.5 + 4.0);
        assert_eq!(r.fusable_s, 3.0);
        assert_eq!(
            (r.kernels, r.memory_kernels, r.fusable_kernels),
            (15.0, 9.0, 7.0)
        );
        assert_eq!(s.with_ring_steps(0.0, 1.0, 1.0, 0.0, 0.0, 1e12), s);
    }

    #[test]
    fn shard_divides_seconds_not_kernels() {
        let s = PhaseSums {
            gpu_s: 4.0,
            kernels: 10.0,
            matmul_s: 2.0,
            attention_s: 1.0,
            tp_bytes: 8.0,
            tp_gather_bytes: 4.0,
            tp_collectives: 2.0,
            memory_kernels: 3.0,
            ..Default::default()
        };
        let r = s.context_shard(4);
        assert_eq!(
            (
                r.gpu_s,
                r.matmul_s,
                r.attention_s,
                r.tp_bytes,
                r.tp_gather_bytes
            ),
            (1.0, 0.5, 0.25, 2.0, 1.0)
        );
        assert_eq!(
            (r.kernels, r.tp_collectives, r.memory_kernels),
            (10.0, 2.0, 3.0)
        );
        assert_eq!(s.context_shard(1), s);
    }
}
