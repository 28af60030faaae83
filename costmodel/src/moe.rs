//! Mixture-of-experts costs: the routed experts' grouped GEMMs divided over expert parallelism (`ep`)
//! and expert tensor parallelism (`expert_tp`), the token dispatch and combine all-to-alls over the
//! expert-parallel group, and the routing-imbalance factor.
//!
//! The step profile marks every op of the routed experts [`TpSplit::Expert`] (the grouped GEMMs of
//! `Op::MoeExperts` and its backward, the expert weights' casts and optimizer updates) and counts their
//! parameters in `BlockProfile::expert_params`. Megatron-LM's layout is assumed: the attention side
//! runs on `tp` (with sequence parallelism the ranks of a tensor-parallel group hold different tokens),
//! the experts on `ep · expert_tp` ranks inside the data-parallel (and context-parallel) ranks, and a
//! device computes `1/tp` of a micro-batch's routed work however `ep` and `expert_tp` divide it:
//! `E / ep` experts of width `f / expert_tp`, each over `capacity · ep · expert_tp / tp` rows. The most
//! loaded expert's device sets the pace: its GEMMs are scaled by the imbalance factor.

use crate::cluster::Cluster;
use crate::ops::ShardedOp;
use moai_ir::cost::{KernelClass, OpCost, Phase, TpSplit};

/// The default routing-imbalance factor: tokens at the most loaded expert over the average. Switch
/// Transformers (Fedus, Zoph and Shazeer, JMLR 2022, §2.2 and Table 1) train with an expert capacity
/// factor of 1.25 — the headroom over the balanced load that their load-balanced top-1 routing needs
/// to drop few tokens. A dropless run computes what the busiest expert receives, so that ratio paces its
/// GEMMs. Set `--moe-imbalance` to a measured value (1.0: perfectly balanced).
pub const DEFAULT_IMBALANCE: f64 = 1.25;

/// How a configuration divides the routed experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpertSplit {
    /// Tensor-parallel degree of the rest of the model.
    pub tp: u64,
    /// Expert-parallel degree (experts per device: `E / ep`).
    pub ep: u64,
    /// Expert tensor-parallel degree (each expert's width divided by it).
    pub expert_tp: u64,
    /// Routing-imbalance factor (≥ 1).
    pub imbalance: f64,
}

impl ExpertSplit {
    /// The unsplit, balanced case (a dense model, or one device).
    pub fn none() -> ExpertSplit {
        ExpertSplit {
            tp: 1,
            ep: 1,
            expert_tp: 1,
            imbalance: 1.0,
        }
    }
}

/// One device's share of an expert op (`op.split` is [`TpSplit::Expert`]). Grouped GEMMs
/// (`batch` = 3 or 6 GEMMs per expert, `m` = rows per expert at capacity, `n` = expert width,
/// `k` = hidden) become `batch / ep` GEMMs of `m · ep · expert_tp / tp · imbalance` rows and
/// `n / expert_tp` columns; their FLOPs and bytes are `1/tp` of the micro-batch's, times the imbalance.
/// Other expert ops (weight casts, optimizer updates) divide by `ep · expert_tp`.
pub fn shard_expert(op: &OpCost, s: &ExpertSplit) -> ShardedOp {
    let (tp, ep, etp) = (s.tp.max(1), s.ep.max(1), s.expert_tp.max(1));
    let imb = s.imbalance.max(1.0);
    match &op.class {
        KernelClass::Matmul {
            batch,
            m,
            n,
            k,
            dtype,
        } => {
            let rows = ((*m * ep * etp) as f64 / tp as f64 * imb).ceil().max(1.0) as u64;
            ShardedOp {
                class: KernelClass::Matmul {
                    batch: (batch / ep).max(1),
                    m: rows,
                    n: (n / etp).max(1),
                    k: *k,
                    dtype: *dtype,
                },
                flops: op.flops / tp as f64 * imb,
                bytes: op.bytes / tp as f64 * imb,
            }
        }
        c => {
            let f = (ep * etp) as f64;
            ShardedOp {
                class: c.clone(),
                flops: op.flops / f,
                bytes: op.bytes / f,
            }
        }
    }
}

/// Bytes one device sends in one all-to-all (dispatch or combine) of the expert op `op` (a forward or
/// recomputed grouped GEMM): its `1/tp` share of the routed token copies (`experts · rows` of `hidden`
/// elements), times the imbalance, in the op's dtype. `None` for other ops.
pub fn dispatch_bytes(op: &OpCost, s: &ExpertSplit) -> Option<f64> {
    if op.split != TpSplit::Expert || !matches!(op.phase, Phase::Forward | Phase::Recompute) {
        return None;
    }
    match &op.class {
        KernelClass::Matmul {
            batch, m, k, dtype, ..
        } => {
            let copies = (batch / 3) as f64 * *m as f64;
            Some(copies * *k as f64 * dtype.size_bytes() as f64 / s.tp.max(1) as f64 * s.imbalance)
        }
        _ => None,
    }
}

/// Seconds of one all-to-all in which each of `ep` ranks, spaced `stride` apart (Megatron places the
/// expert-parallel group after the tensor- and context-parallel ranks), sends `bytes` split evenly over
/// the group: the share for ranks in the same server crosses the server link, the rest the network,
/// both at once; plus one latency per peer.
pub fn all_to_all_time(cluster: &Cluster, bytes: f64, ep: u32, stride: u32) -> f64 {
    if ep <= 1 || bytes <= 0.0 {
        return 0.0;
    }
    let (servers, per) = cluster.group_layout(ep, stride);
    let n = ep as f64;
    let intra = &cluster.links.server;
    let local = per.min(ep) as f64;
    let intra_s = if local > 1.0 {
        (local - 1.0) * intra.latency_s
            + bytes * (local - 1.0) / n / intra.effective_bytes_per_s(local as u32)
    } else {
        0.0
    };
    let inter_s = if servers > 1 {
        let net = &cluster.links.network;
        (servers - 1) as f64 * net.latency_s
            + bytes * (n - local) / n / net.effective_bytes_per_s(servers)
    } else {
        0.0
    };
    intra_s.max(inter_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;
    use moai_ir::DType;
    use moai_ir::cost::Role;

    fn grouped(batch: u64, m: u64, phase: Phase) -> OpCost {
        OpCost {
            class: KernelClass::Matmul {
                batch,
                m,
                n: 1024,
                k: 512,
                dtype: DType::BF16,
            },
            flops: 2.0 * (batch * m * 1024 * 512) as f64,
            bytes: 1e6,
            phase,
            layer: Some(0),
            split: TpSplit::Expert,
            label: "layers.0.mlp.experts:MoeExperts".into(),
            role: Role::Plain,
        }
    }

    #[test]
    fn expert_gemms_keep_per_device_flops_and_grow_rows_with_ep() {
        let op = grouped(24, 100, Phase::Forward);
        let one = shard_expert(&op, &ExpertSplit::none());
        let s = ExpertSplit {
            tp: 2,
            ep: 4,
            expert_tp: 2,
            imbalance: 1.0,
        };
        let split = shard_expert(&op, &s);
        assert_eq!(split.flops, one.flops / 2.0);
        match split.class {
            KernelClass::Matmul { batch, m, n, .. } => assert_eq!((batch, m, n), (6, 400, 512)),
            _ => unreachable!(),
        }
        // The FLOPs of the per-device shape equal the per-device FLOPs.
        if let KernelClass::Matmul { batch, m, n, k, .. } = split.class {
            assert_eq!(2.0 * (batch * m * n * k) as f64, split.flops);
        }
        let busy = shard_expert(
            &op,
            &ExpertSplit {
                imbalance: 1.5,
                ..s
            },
        );
        assert_eq!(busy.flops, 1.5 * split.flops);
    }

    #[test]
    fn all_to_all_is_free_alone_and_slower_across_servers() {
        let c = Cluster::new(Gpu::H100, 64).unwrap();
        assert_eq!(all_to_all_time(&c, 1e8, 1, 1), 0.0);
        let inside = all_to_all_time(&c, 1e8, 8, 1);
        let across = all_to_all_time(&c, 1e8, 8, 8);
        assert!(inside > 0.0 && across > 3.0 * inside, "{inside} {across}");
        let bytes = dispatch_bytes(&grouped(24, 100, Phase::Forward), &ExpertSplit::none());
        assert_eq!(bytes, Some(8.0 * 100.0 * 512.0 * 2.0));
        assert_eq!(
            dispatch_bytes(&grouped(48, 100, Phase::Backward), &ExpertSplit::none()),
            None
        );
    }
}
