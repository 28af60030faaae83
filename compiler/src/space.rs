//! The search space: every combination of data, tensor and pipeline parallelism over the cluster's
//! devices, micro-batch size and count, recomputation, ZeRO sharding, sequence parallelism and pipeline
//! schedule, filtered by the request's constraints. Combinations that break a structural rule are
//! counted by reason instead of silently skipped.

use crate::request::Constraints;
use moai_costmodel::{Cluster, ParallelConfig, Recompute, Schedule};
use std::collections::BTreeMap;

/// What the space needs to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: u32,
    /// Attention heads.
    pub heads: u64,
    /// KV heads.
    pub kv_heads: u64,
    /// FFN width.
    pub ffn: u64,
}

/// The candidates of a job and the structural rejections met while enumerating.
#[derive(Clone, Debug, Default)]
pub struct Space {
    /// Candidates in a deterministic order.
    pub candidates: Vec<ParallelConfig>,
    /// Combinations rejected before evaluation, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// Micro-batch sizes the search tries.
pub const MICRO_BATCH_SIZES: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

fn divisors(n: u32) -> Vec<u32> {
    (1..=n).filter(|d| n % d == 0).collect()
}

/// Enumerates the space for a job of `batch` sequences on `cluster`.
pub fn enumerate(shape: ModelShape, cluster: &Cluster, batch: u64, c: &Constraints) -> Space {
    let mut space = Space::default();
    let mut reject = |reason: String, n: u64| *space.rejected.entry(reason).or_insert(0) += n;
    let devices = cluster.devices;
    let recomputes: Vec<Recompute> = if c.recompute.is_empty() {
        vec![Recompute::None, Recompute::Selective, Recompute::Full]
    } else {
        c.recompute.clone()
    };
    let zeros: Vec<u8> = match c.zero {
        Some(z) => vec![z],
        None => vec![0, 1, 3],
    };
    let mut candidates = Vec::new();
    for tp in divisors(devices) {
        if c.tp.is_some_and(|t| t != tp) {
            continue;
        }
        if tp > cluster.devices_per_server {
            reject(
                format!("tp > {} devices per server", cluster.devices_per_server),
                1,
            );
            continue;
        }
        let t = tp as u64;
        if shape.heads % t != 0 || shape.kv_heads % t != 0 || shape.ffn % t != 0 {
            reject("tp does not divide heads, KV heads or FFN width".into(), 1);
            continue;
        }
        for pp in divisors(devices / tp) {
            if c.pp.is_some_and(|p| p != pp) {
                continue;
            }
            if pp > shape.layers {
                reject("more pipeline stages than layers".into(), 1);
                continue;
            }
            let dp = devices / (tp * pp);
            if c.dp.is_some_and(|d| d != dp) {
                continue;
            }
            if batch % dp as u64 != 0 {
                reject("dp does not divide the batch".into(), 1);
                continue;
            }
            let per_replica = batch / dp as u64;
            for mbs in MICRO_BATCH_SIZES {
                if c.micro_batch_size.is_some_and(|m| m != mbs) {
                    continue;
                }
                if mbs as u64 > per_replica || per_replica % mbs as u64 != 0 {
                    continue;
                }
                let nmb = (per_replica / mbs as u64) as u32;
                let schedules: Vec<Schedule> = if pp == 1 {
                    vec![Schedule::OneFOneB]
                } else if c.schedules.is_empty() {
                    vec![
                        Schedule::OneFOneB,
                        Schedule::Gpipe,
                        Schedule::Interleaved(2),
                    ]
                } else {
                    c.schedules.clone()
                };
                for schedule in schedules {
                    if let Schedule::Interleaved(v) = schedule {
                        if shape.layers % (pp * v) != 0 {
                            reject("interleaved chunks do not divide the layers".into(), 1);
                            continue;
                        }
                        if nmb % pp != 0 {
                            reject(
                                "interleaved schedule needs micro-batches divisible by pp".into(),
                                1,
                            );
                            continue;
                        }
                    }
                    for &recompute in &recomputes {
                        for &zero in &zeros {
                            if zero == 3 && pp > 1 {
                                reject("ZeRO-3 with pipeline parallelism".into(), 1);
                                continue;
                            }
                            let sps: Vec<bool> = match c.sequence_parallel {
                                Some(sp) => vec![sp],
                                None if tp > 1 => vec![false, true],
                                None => vec![false],
                            };
                            for sp in sps {
                                if sp && tp == 1 {
                                    reject("sequence parallelism needs tp > 1".into(), 1);
                                    continue;
                                }
                                candidates.push(ParallelConfig {
                                    dp,
                                    tp,
                                    pp,
                                    micro_batch_size: mbs,
                                    num_micro_batches: nmb,
                                    recompute,
                                    distribute_param: zero == 3,
                                    distribute_low_prec_param: zero == 3,
                                    distribute_optimizer: zero >= 1,
                                    sequence_parallel: sp,
                                    schedule,
                                    stages: Vec::new(),
                                    ..ParallelConfig::default()
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    space.candidates = candidates;
    space
}

#[cfg(test)]
mod tests {
    use super::*;
    use moai_costmodel::Gpu;

    fn shape13b() -> ModelShape {
        ModelShape {
            layers: 40,
            heads: 40,
            kv_heads: 40,
            ffn: 13824,
        }
    }

    #[test]
    fn space_is_large_and_respects_rules() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let s = enumerate(shape13b(), &cluster, 256, &Constraints::default());
        assert!(s.candidates.len() >= 1000, "{}", s.candidates.len());
        for c in &s.candidates {
            assert_eq!(c.dp * c.tp * c.pp, 32);
            assert_eq!(
                c.dp as u64 * c.micro_batch_size as u64 * c.num_micro_batches as u64,
                256
            );
            assert!(c.tp <= 8 && 40 % c.tp == 0);
        }
        assert!(
            s.rejected.contains_key("tp > 8 devices per server"),
            "tp=16/32: {:?}",
            s.rejected
        );
    }

    #[test]
    fn constraints_fix_dimensions() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let c = Constraints {
            tp: Some(1),
            pp: Some(1),
            recompute: vec![Recompute::Full],
            zero: Some(3),
            ..Default::default()
        };
        let s = enumerate(shape13b(), &cluster, 256, &c);
        assert!(!s.candidates.is_empty());
        assert!(s.candidates.iter().all(|c| c.tp == 1
            && c.pp == 1
            && c.dp == 32
            && c.distribute_param
            && c.recompute == Recompute::Full));
    }
}
