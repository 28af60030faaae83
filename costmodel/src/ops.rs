//! Op times: measured profile where the op falls inside a table, roofline with fitted efficiencies
//! otherwise. Every time says which source produced it.

use crate::device::DeviceSpec;
use crate::efficiency::Efficiency;
use crate::profile::{MemoryKind, OpProfile};
use moai_ir::DType;
use moai_ir::cost::{KernelClass, OpCost, TpSplit};
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
    /// Roofline time of a memory-bound transfer of `bytes`.
    pub fn memory_time(&self, bytes: f64) -> f64 {
        bytes / (self.spec.hbm_bytes_per_s * self.eff.memory)
    }

    /// Time of one (sharded) kernel and its source.
    pub fn time(&self, op: &ShardedOp) -> (f64, Source) {
        let mem = self.memory_time(op.bytes);
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
                    return (t, Source::Profile);
                }
                let compute = op.flops / (self.spec.peak_flops(*dtype) * self.eff.matmul);
                (compute.max(mem), Source::Roofline)
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
                    return (t, Source::Profile);
                }
                let peak = self.spec.peak_flops(*dtype);
                (
                    ((op.flops) / (peak * self.eff.attention)).max(mem),
                    Source::Roofline,
                )
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
                    return (t, Source::Profile);
                }
                let compute = op.flops / (self.spec.peak_flops(DType::F32) * self.eff.memory);
                (mem.max(compute), Source::Roofline)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;
    use moai_ir::cost::Phase;

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
        }
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
        assert!((secs - op.flops / (spec.peak_bf16_flops * eff.matmul)).abs() < 1e-12);
    }
}
