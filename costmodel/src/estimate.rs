//! The estimator: step time, throughput, peak memory and MFU of one parallel configuration.
//!
//! Per micro-batch and (virtual) stage: forward and backward kernel times (profile or roofline) bounded
//! below by the host's kernel-issue time, plus tensor-parallel collectives; then the pipeline schedule
//! simulation; then the data-parallel gradient sync (exposed part) and the optimizer step.

use crate::cluster::Cluster;
use crate::collective::{Collective, collective_time, exposed_after_overlap};
use crate::config::ParallelConfig;
use crate::device::Gpu;
use crate::efficiency::{Allocator, Efficiency, EfficiencyFile};
use crate::error::{CostError, Result};
use crate::memory::{DeviceInput, StageMemory, device_memory};
use crate::ops::{OpTimer, Source, shard};
use crate::pipeline::{StageTimes, simulate};
use crate::profile::OpProfile;
use moai_ir::cost::{BlockKind, KernelClass, Phase, StepProfile, TpSplit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Time breakdown of a step (JSON names of DESIGN.md's `predicted.breakdown`). The four parts add up
/// to the step time of the device that finishes last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Kernel time (forward, backward, recomputation), including host-bound phases.
    pub compute_s: f64,
    /// Communication not hidden behind compute (tensor-parallel collectives, exposed gradient sync,
    /// ZeRO-3 gathers).
    pub exposed_comm_s: f64,
    /// Pipeline bubble and waiting for stage-to-stage transfers.
    pub bubble_s: f64,
    /// Optimizer step.
    pub optimizer_s: f64,
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
    /// `v` on device `v % pp`), tensor-parallel communication included: what the pipeline simulation ran on.
    #[serde(default)]
    pub stage_times: Vec<StageTimes>,
    /// Point-to-point seconds between adjacent pipeline stages used by the simulation (0 without pp).
    #[serde(default)]
    pub p2p_s: f64,
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
}

/// Sums of one phase of one block on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseSums {
    /// Kernel seconds.
    pub gpu_s: f64,
    /// Kernels.
    pub kernels: f64,
    /// Bytes all-reduced over the tensor-parallel group.
    pub tp_bytes: f64,
    /// Tensor-parallel collectives.
    pub tp_collectives: f64,
}

impl PhaseSums {
    fn add(&mut self, o: &PhaseSums) {
        self.gpu_s += o.gpu_s;
        self.kernels += o.kernels;
        self.tp_bytes += o.tp_bytes;
        self.tp_collectives += o.tp_collectives;
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
    /// Parameters on one device.
    pub params: f64,
    /// Saved activation bytes of one micro-batch on one device.
    pub saved_bytes: f64,
    /// Transient bytes on one device.
    pub transient_bytes: f64,
    /// Bytes sent to the next block, per device.
    pub boundary_bytes: f64,
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
}

type CacheKey = (Gpu, u32, bool, u64, u64, usize, usize, u64, u64);

/// The default cost model: measured profiles where available, roofline with fitted efficiencies
/// elsewhere, α-β collectives, pipeline simulation and the calibrated memory model.
#[derive(Debug, Default)]
pub struct ProfiledCostModel {
    efficiencies: Option<EfficiencyFile>,
    profiles: HashMap<Gpu, Arc<OpProfile>>,
    cache: RwLock<Vec<(CacheKey, Arc<PreparedProfile>)>>,
}

impl Clone for ProfiledCostModel {
    fn clone(&self) -> Self {
        ProfiledCostModel {
            efficiencies: self.efficiencies.clone(),
            profiles: self.profiles.clone(),
            cache: RwLock::default(),
        }
    }
}

const CACHE_ENTRIES: usize = 64;

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

    /// Reduces a step profile to per-block sums on `gpu` at tensor-parallel degree `tp`.
    pub fn prepare(
        &self,
        profile: &StepProfile,
        gpu: Gpu,
        tp: u32,
        sequence_parallel: bool,
    ) -> PreparedProfile {
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
            for op in &b.ops {
                if matches!(op.phase, Phase::Forward | Phase::Backward) {
                    model_flops += op.flops;
                }
                let s = shard(op, tp64, sequence_parallel);
                let (t, src) = timer.time(&s);
                match src {
                    Source::Profile => profile_ops += 1,
                    Source::Roofline => roofline_ops += 1,
                }
                let mut ps = PhaseSums {
                    gpu_s: t,
                    kernels: 1.0,
                    ..Default::default()
                };
                if tp64 > 1 {
                    // Megatron's collectives: a row-parallel linear all-reduces its output in forward
                    // (and recomputation); its column-parallel partner all-reduces the input gradient in
                    // backward. The vocab-parallel embedding all-reduces its output.
                    let out_bytes = match &op.class {
                        KernelClass::Matmul {
                            batch, m, n, dtype, ..
                        } if op.split == TpSplit::Row => {
                            Some((batch * m * n * dtype.size_bytes()) as f64)
                        }
                        KernelClass::Gather
                            if op.split == TpSplit::Vocab && op.phase == Phase::Forward =>
                        {
                            Some(op.bytes / 2.0)
                        }
                        _ => None,
                    };
                    if let Some(bytes) = out_bytes {
                        ps.tp_bytes = bytes;
                        ps.tp_collectives = 1.0;
                        if op.phase == Phase::Forward {
                            bwd.tp_bytes += bytes;
                            bwd.tp_collectives += 1.0;
                        }
                    }
                }
                match op.phase {
                    Phase::Forward => fwd.add(&ps),
                    Phase::Backward | Phase::Recompute => {
                        // Backward row-parallel ops are accounted through their forward partner.
                        let ps = if op.phase == Phase::Backward {
                            PhaseSums {
                                tp_bytes: 0.0,
                                tp_collectives: 0.0,
                                ..ps
                            }
                        } else {
                            ps
                        };
                        bwd.add(&ps)
                    }
                    Phase::Optimizer => {}
                }
            }
            let params = b.tp_sharded_params as f64 / tp64 as f64
                + (b.params - b.tp_sharded_params.min(b.params)) as f64;
            // Megatron's scatter/gather optimisation: each tensor-parallel rank sends 1/tp of the
            // boundary activation between stages (and all-gathers it inside the server).
            let bound = b.boundary_bytes / tp64 as f64;
            blocks.push(BlockSums {
                kind: b.kind,
                forward: fwd,
                backward: bwd,
                params,
                saved_bytes: b.saved.per_device(tp64, sequence_parallel),
                transient_bytes: b.transient.per_device(tp64, sequence_parallel),
                boundary_bytes: bound,
            });
        }
        let mut optimizer_s = 0.0;
        for op in &profile.optimizer {
            let s = shard(op, 1, false);
            optimizer_s += timer.time(&s).0;
        }
        PreparedProfile {
            blocks,
            optimizer_s,
            optimizer_kernels: profile.optimizer.len() as f64,
            shapes: profile
                .blocks
                .iter()
                .map(|b| crate::memory::block_shape(b, tp64))
                .collect(),
            total_params: profile.blocks.iter().map(|b| b.params as f64).sum(),
            model_flops,
            profile_ops,
            roofline_ops,
        }
    }

    fn prepared(&self, profile: &StepProfile, gpu: Gpu, tp: u32, sp: bool) -> Arc<PreparedProfile> {
        let (mut n_ops, mut fs, mut bs) = (0usize, 0f64, 0f64);
        for b in &profile.blocks {
            n_ops += b.ops.len();
            for op in &b.ops {
                fs += op.flops;
                bs += op.bytes;
            }
        }
        let key: CacheKey = (
            gpu,
            tp,
            sp,
            profile.micro_batch,
            profile.seq,
            profile.blocks.len(),
            n_ops,
            fs.to_bits(),
            bs.to_bits(),
        );
        if let Ok(cache) = self.cache.read()
            && let Some((_, p)) = cache.iter().find(|(k, _)| *k == key)
        {
            return p.clone();
        }
        let p = Arc::new(self.prepare(profile, gpu, tp, sp));
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
    fn estimate(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Estimate> {
        cfg.validate_cluster(cluster)?;
        let ranges = cfg.validate_profile(profile)?;
        if profile.blocks.is_empty() {
            return Err(CostError::StepProfile("no blocks".into()));
        }
        let prep = self.prepared(profile, cluster.gpu, cfg.tp, cfg.sequence_parallel);
        let eff = self.efficiency(cluster.gpu);
        let launch = eff.launch_overhead_s;
        let pp = cfg.pp.max(1) as usize;
        let nv = ranges.len();
        let m = cfg.num_micro_batches.max(1);

        // Blocks → virtual stages.
        let mut fwd = vec![PhaseSums::default(); nv];
        let mut bwd = vec![PhaseSums::default(); nv];
        let mut params = vec![0f64; nv];
        let mut boundary: f64 = 0.0;
        let mut block_stage = Vec::with_capacity(prep.blocks.len());
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
            fwd[v].add(&b.forward);
            bwd[v].add(&b.backward);
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
                boundary = boundary.max(b.boundary_bytes);
            }
        }

        // Per virtual stage: compute (host-bounded) and tensor-parallel communication.
        let tp_time = |s: &PhaseSums| {
            if s.tp_collectives <= 0.0 {
                0.0
            } else {
                s.tp_collectives
                    * collective_time(
                        cluster,
                        Collective::AllReduce,
                        s.tp_bytes / s.tp_collectives,
                        cfg.tp,
                        1,
                    )
            }
        };
        let mut compute = vec![(0f64, 0f64); nv];
        let mut comm = vec![(0f64, 0f64); nv];
        let mut times = Vec::with_capacity(nv);
        for v in 0..nv {
            let cf = fwd[v].gpu_s.max(fwd[v].kernels * launch);
            let cb = bwd[v].gpu_s.max(bwd[v].kernels * launch);
            let (tf, tb) = (tp_time(&fwd[v]), tp_time(&bwd[v]));
            compute[v] = (cf, cb);
            comm[v] = (tf, tb);
            times.push(StageTimes {
                forward_s: cf + tf,
                backward_s: cb + tb,
            });
        }
        let stride = cfg.dp * cfg.tp;
        let p2p = if pp > 1 {
            collective_time(cluster, Collective::PointToPoint, boundary, 2, stride)
        } else {
            0.0
        };
        let sim = simulate(cfg.schedule, &times, cfg.pp, m, p2p)?;

        // Per device: gradient sync, optimizer, memory.
        let dp = cfg.dp.max(1);
        let alloc = self.allocator();
        let mut memory = Vec::with_capacity(pp);
        let mut best = (f64::MIN, 0usize, 0f64, 0f64);
        for d in 0..pp {
            let vs: Vec<usize> = (0..nv).filter(|v| v % pp == d).collect();
            let p_dev: f64 = vs.iter().map(|v| params[*v]).sum();
            let b_dev: f64 = vs.iter().map(|v| times[*v].backward_s).sum();
            let compute_dev: f64 = vs
                .iter()
                .map(|v| times[*v].forward_s + times[*v].backward_s)
                .sum();
            let low_or_base = if profile.low_prec_param_bytes_per_param > 0.0 {
                profile.low_prec_param_bytes_per_param
            } else {
                profile.static_bytes_per_param
                    - profile.optimizer_bytes_per_param
                    - profile.grad_bytes_per_param
            }
            .max(0.0);
            let grad_bytes = p_dev * profile.grad_bytes_per_param;
            let mut exposed = 0.0;
            if dp > 1 {
                let ar = |kind, bytes| collective_time(cluster, kind, bytes, dp, cfg.tp);
                let sync = if cfg.distribute_param {
                    // ZeRO-3: gather weights before forward and backward of every micro-batch (prefetched
                    // under compute), reduce-scatter gradients at the end.
                    let gather = 2.0 * ar(Collective::AllGather, p_dev * low_or_base);
                    exposed += m as f64 * (gather - compute_dev).max(0.0);
                    ar(Collective::ReduceScatter, grad_bytes)
                } else if cfg.distribute_optimizer {
                    ar(Collective::ReduceScatter, grad_bytes)
                        + ar(Collective::AllGather, p_dev * low_or_base)
                } else {
                    ar(Collective::AllReduce, grad_bytes)
                };
                exposed += if cfg.overlap_grad_reduce {
                    let buckets = (grad_bytes / 25e6).ceil().max(1.0) as u32;
                    exposed_after_overlap(sync, b_dev, buckets)
                } else {
                    sync
                };
            }
            let shard = if cfg.distribute_param || cfg.distribute_optimizer {
                dp as f64
            } else {
                1.0
            };
            let frac = if prep.total_params > 0.0 {
                p_dev / shard / prep.total_params
            } else {
                0.0
            };
            let opt = (prep.optimizer_s * frac).max(prep.optimizer_kernels * launch);
            let end = sim.end_s.get(d).copied().unwrap_or(sim.makespan_s) + exposed + opt;
            if end > best.0 {
                best = (end, d, exposed, opt);
            }

            memory.push(device_memory(
                &DeviceInput {
                    profile,
                    prep: &prep,
                    cfg,
                    device: d as u32,
                    block_stage: &block_stage,
                    virtual_stages: nv,
                    boundary_bytes: boundary,
                },
                alloc,
            ));
        }
        let (step, crit, exposed_dp, opt) = best;
        let vs: Vec<usize> = (0..nv).filter(|v| v % pp == crit).collect();
        let compute_s: f64 = vs
            .iter()
            .map(|v| (compute[*v].0 + compute[*v].1) * m as f64)
            .sum();
        let tp_comm_s: f64 = vs
            .iter()
            .map(|v| (comm[*v].0 + comm[*v].1) * m as f64)
            .sum();
        let exposed_comm_s = tp_comm_s + exposed_dp;
        let bubble_s = (step - compute_s - exposed_comm_s - opt).max(0.0);
        let tokens = cfg.global_batch() as f64 * profile.seq as f64;
        let peak = memory.iter().map(|s| s.peak_bytes).fold(0.0, f64::max);
        let spec = cluster.gpu.spec();
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
            },
            stage_times: times,
            p2p_s: p2p,
        })
    }
}
