//! Data-parallel communication of one pipeline device per step: ZeRO-3's per-block parameter
//! all-gathers and gradient reduce-scatters, or the bucketed gradient reduction of plain data
//! parallelism and ZeRO-1 (with its weight all-gather after the step), each with the overlap the
//! stack runs. Hybrid sharding adds each shard's all-reduce across the replicas.

use crate::cluster::Cluster;
use crate::collective::{Collective, collective_time, exposed_after_overlap};
use crate::config::ParallelConfig;
use crate::stack::Stack;

/// What one pipeline device holds and computes per step, as the data-parallel collectives see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceWork {
    /// Parameters of the device's blocks (unsharded count).
    pub params: f64,
    /// Bytes per parameter of the weights the collectives gather: the copy the forward computes
    /// with ([`crate::memory::compute_bytes_per_param`]).
    pub gathered_bytes_per_param: f64,
    /// Bytes of the device's gradients, as reduced.
    pub grad_bytes: f64,
    /// Blocks on the device (at least 1): ZeRO-3 gathers and reduces block by block.
    pub blocks: f64,
    /// Forward seconds of one micro-batch on the device.
    pub forward_s: f64,
    /// Backward seconds of one micro-batch on the device.
    pub backward_s: f64,
    /// Micro-batches per step.
    pub micro_batches: f64,
}

/// The data-parallel seconds of one device's step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct DpTraffic {
    /// Gradient reduction (and ZeRO-1's weight all-gather) seconds, before overlap.
    pub comm_s: f64,
    /// ZeRO-3 parameter all-gather seconds, before overlap; 0 without ZeRO-3.
    pub gather_s: f64,
    /// Seconds on the critical path after overlap.
    pub exposed_s: f64,
}

/// The group ZeRO's collectives run over: all dp·cp ranks, or under hybrid sharding the
/// dp_shard·cp contiguous ranks of a group (`tp` apart, as the dp·cp group); without sharding the
/// plain dp·cp gradient reduction.
struct ShardGroup<'a> {
    cluster: &'a Cluster,
    ranks: u32,
    replicas: u32,
    tp: u32,
}

impl ShardGroup<'_> {
    /// Seconds of one collective of `bytes` over the group.
    fn coll(&self, kind: Collective, bytes: f64) -> f64 {
        collective_time(self.cluster, kind, bytes, self.ranks, self.tp)
    }

    /// Hybrid sharding: a shard group's reduce-scattered gradients (1/ranks of `bytes`) are
    /// all-reduced across the replicas, the same shard of every group, which lie ranks·tp ranks
    /// apart (inter-server when a group fills its servers); 0 without replicas.
    fn across(&self, bytes: f64) -> f64 {
        if self.replicas > 1 {
            collective_time(
                self.cluster,
                Collective::AllReduce,
                bytes / self.ranks as f64,
                self.replicas,
                self.ranks * self.tp,
            )
        } else {
            0.0
        }
    }
}

/// The data-parallel traffic of one device's step under `cfg` on `stack` (`dp·cp > 1`).
pub(crate) fn traffic(
    cluster: &Cluster,
    cfg: &ParallelConfig,
    stack: Stack,
    w: &DeviceWork,
) -> DpTraffic {
    let group = ShardGroup {
        cluster,
        ranks: cfg.shard_dp().max(1) * cfg.cp.max(1),
        replicas: cfg.dp_replicas().max(1),
        tp: cfg.tp,
    };
    if cfg.distribute_param {
        zero3(&group, cfg, stack, w)
    } else {
        bucketed(&group, cfg, stack, w)
    }
}

/// ZeRO-3: one all-gather per block (in compute precision) and one reduce-scatter per block (its
/// own message size); under hybrid sharding followed by the block's all-reduce across replicas
/// (FSDP2's HSDP and Megatron-FSDP reduce every block's gradients this way), the same traffic.
fn zero3(g: &ShardGroup, cfg: &ParallelConfig, stack: Stack, w: &DeviceWork) -> DpTraffic {
    let n = w.blocks;
    let per_block = g.coll(
        Collective::AllGather,
        w.params * w.gathered_bytes_per_param / n,
    );
    let rs = n * (g.coll(Collective::ReduceScatter, w.grad_bytes / n) + g.across(w.grad_bytes / n));
    if cfg.keeps_stage_unsharded() {
        // A pipelined stage that keeps its weights unsharded
        // (`ParallelConfig::keeps_stage_unsharded`): each block is gathered once per step, before
        // the first micro-batch's forward, prefetched under the previous block's; the gradients
        // are reduce-scattered once, after the last micro-batch's backward, when the stage has
        // nothing left to compute.
        let gathers = n * per_block;
        return DpTraffic {
            comm_s: rs,
            gather_s: gathers,
            exposed_s: per_block + (gathers - per_block - w.forward_s).max(0.0) + rs,
        };
    }
    // Every block's weights are all-gathered before its forward and again before its backward,
    // each micro-batch; with prefetch the next block's gather runs under this block's compute.
    // Gradients are reduce-scattered block by block during each micro-batch's backward.
    let gathers = 2.0 * n * per_block;
    let rs_last = rs / n;
    let compute = w.forward_s + w.backward_s;
    // Per micro-batch. Gathers and reduce-scatters share the same links, so with prefetch they
    // hide together under the micro-batch's compute: exposed are the first gather, the last
    // block's reduce-scatter and whatever traffic exceeds the compute.
    let per_mb = match (
        stack.prefetches_params(cfg.overlap_param_gather),
        stack.overlaps_grad_reduce(cfg.overlap_grad_reduce),
    ) {
        (true, true) => {
            per_block + rs_last + (gathers + rs - per_block - rs_last - compute).max(0.0)
        }
        (true, false) => per_block + (gathers - per_block - compute).max(0.0) + rs,
        (false, true) => gathers + exposed_after_overlap(rs, w.backward_s, n as u32),
        (false, false) => gathers + rs,
    };
    DpTraffic {
        comm_s: w.micro_batches * rs,
        gather_s: w.micro_batches * gathers,
        exposed_s: w.micro_batches * per_mb,
    }
}

/// Plain data parallelism and ZeRO-1: gradients are reduced bucket by bucket, each bucket one
/// collective of its own size, of the stack's bucket size (`Stack::grad_bucket_params`).
///
/// ZeRO-1 (Megatron's distributed optimizer) reduce-scatters the gradients and all-gathers the
/// updated low-precision weights after the step, per bucket; with the parameter gather's overlap
/// off (Megatron without `--overlap-param-gather`) that all-gather is on the critical path. With
/// replicas (Megatron's `--num-distributed-optimizer-instances`) each bucket's reduce-scatter inside
/// the instance is followed by an all-reduce of its shard across the instances. With the gather
/// overlapped it hides under the next step's first forward, bucket by bucket, as the forward
/// pre-hooks wait on it: a window of its own, after the one the gradients' reduce-scatter hides in
/// (the last micro-batch's backward).
fn bucketed(g: &ShardGroup, cfg: &ParallelConfig, stack: Stack, w: &DeviceWork) -> DpTraffic {
    let dpc = cfg.dp.max(1) * cfg.cp.max(1);
    let overlap = stack.overlaps_grad_reduce(cfg.overlap_grad_reduce);
    let buckets = stack
        .grad_bucket_params(dpc, overlap)
        .map_or(1.0, |b| (w.params / b).ceil().max(1.0));
    let (sync, serial, forward_gather) = if cfg.distribute_optimizer {
        let rs = buckets
            * (g.coll(Collective::ReduceScatter, w.grad_bytes / buckets)
                + g.across(w.grad_bytes / buckets));
        let ag = buckets
            * g.coll(
                Collective::AllGather,
                w.params * w.gathered_bytes_per_param / buckets,
            );
        if stack.overlaps_zero1_gather(cfg.overlap_param_gather) {
            (rs, 0.0, ag)
        } else {
            (rs, ag, 0.0)
        }
    } else {
        (
            buckets * g.coll(Collective::AllReduce, w.grad_bytes / buckets),
            0.0,
            0.0,
        )
    };
    let reduce = if overlap {
        exposed_after_overlap(sync, w.backward_s, buckets as u32)
    } else {
        sync
    };
    DpTraffic {
        comm_s: sync + serial + forward_gather,
        gather_s: 0.0,
        exposed_s: serial
            + reduce
            + exposed_after_overlap(forward_gather, w.forward_s, buckets as u32),
    }
}
