//! Context parallelism (`cp`): the sequence of every sample is split over `cp` ranks, each holding
//! `seq/cp` tokens (Megatron-LM cuts it into `2·cp` chunks and gives rank `r` chunks `r` and
//! `2·cp − 1 − r`, so every rank does the same share of the causal attention).
//!
//! The mechanisms, without fitted constants:
//! - **Work.** Everything outside attention runs on `seq/cp` tokens; the causal attention of a rank
//!   covers its queries against all earlier keys, which load balancing makes `1/cp` of the whole.
//!   So a rank's kernel seconds are the whole sequence's divided by cp ([`PhaseSums::context_shard`];
//!   per-kernel floors and launches are not divided).
//! - **Ring (`p2p`).** Each attention passes the rank's key/value chunk around the ring of cp ranks in
//!   `cp − 1` steps; a step's transfer runs under the attention of the chunk in hand (one cp-th of the
//!   rank's attention), so only what exceeds it is exposed. Backward passes the keys/values and their
//!   gradients (twice the bytes). Full recomputation runs the forward ring again in backward.
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
                ..
            } if op.phase == Phase::Forward => Some(CpAttention {
                batch,
                seq,
                heads,
                kv_heads,
                head_dim,
                elem_bytes: dtype.size_bytes(),
            }),
            _ => None,
        }
    }

    /// Bytes of one rank's key and value chunk (`seq/cp` tokens, the KV heads of one tensor-parallel
    /// rank): what one ring step sends.
    pub fn kv_chunk_bytes(&self, tp: u32, cp: u32) -> f64 {
        let tokens = self.batch as f64 * self.seq as f64 / cp.max(1) as f64;
        2.0 * tokens
            * (self.kv_heads as f64 / tp.max(1) as f64)
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
        CpComm::P2p => {
            let kv = attn.kv_chunk_bytes(tp, cp);
            let f_step = ring_step_time(cluster, kv, cp, tp);
            let b_step = ring_step_time(cluster, 2.0 * kv, cp, tp);
            let per = |s: f64| s / cp as f64;
            let (af, ab) = attention_s;
            // Full recomputation runs the forward ring again during backward, under the recomputed
            // forward attention (part of the backward seconds).
            let again = if cfg.recompute == Recompute::Full {
                1.0
            } else {
                0.0
            };
            let ab_only = (ab - again * af).max(0.0);
            CpTraffic {
                forward_s: steps * f_step,
                backward_s: steps * (b_step + again * f_step),
                forward_exposed_s: steps * (f_step - per(af)).max(0.0),
                backward_exposed_s: steps
                    * ((b_step - per(ab_only)).max(0.0) + again * (f_step - per(af)).max(0.0)),
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
    fn shard_divides_seconds_not_kernels() {
        let s = PhaseSums {
            gpu_s: 4.0,
            kernels: 10.0,
            matmul_s: 2.0,
            attention_s: 1.0,
            tp_bytes: 8.0,
            tp_collectives: 2.0,
            memory_kernels: 3.0,
            ..Default::default()
        };
        let r = s.context_shard(4);
        assert_eq!(
            (r.gpu_s, r.matmul_s, r.attention_s, r.tp_bytes),
            (1.0, 0.5, 0.25, 2.0)
        );
        assert_eq!(
            (r.kernels, r.tp_collectives, r.memory_kernels),
            (10.0, 2.0, 3.0)
        );
        assert_eq!(s.context_shard(1), s);
    }
}
