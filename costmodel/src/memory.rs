//! Memory per device: static bytes (weights, gradients, optimizer state) under ZeRO-style sharding,
//! activations times the schedule's in-flight micro-batches, transients, and the allocator model.

use crate::config::{ParallelConfig, Schedule};
use crate::efficiency::Allocator;
use crate::estimate::PreparedProfile;
use moai_ir::cost::StepProfile;
use serde::{Deserialize, Serialize};

/// Memory of one pipeline device (stage), bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageMemory {
    /// Pipeline rank.
    pub stage: u32,
    /// Weights (full precision and low-precision copies) resident at the peak.
    pub weights_bytes: f64,
    /// Gradients resident at the peak.
    pub grads_bytes: f64,
    /// Optimizer state (moments, master weights).
    pub optimizer_bytes: f64,
    /// Saved activations of the in-flight micro-batches.
    pub activations_bytes: f64,
    /// Transient buffers at the peak (backward temporaries, gathered ZeRO-3 weights, p2p buffers).
    pub transients_bytes: f64,
    /// Predicted peak allocated bytes, with the allocator model.
    pub peak_bytes: f64,
}

/// Micro-batch chunks whose activations a pipeline device holds at its peak: 1F1B device `d` holds
/// `min(pp − d, m)`, GPipe all `m`, Megatron's interleaved schedule `(pp − d − 1)·2 + (V − 1)·pp + 1`
/// chunk-micro-batches (at most `m·V`). Without pipelining one micro-batch is live at a time.
pub fn in_flight(schedule: Schedule, pp: u32, device: u32, micro_batches: u32) -> u32 {
    let m = micro_batches.max(1);
    if pp <= 1 {
        return match schedule {
            Schedule::Gpipe => 1,
            _ => 1,
        };
    }
    let d = device.min(pp - 1);
    match schedule {
        Schedule::Gpipe => m,
        Schedule::OneFOneB => (pp - d).min(m),
        Schedule::Interleaved(v) => ((pp - d - 1) * 2 + (v.max(1) - 1) * pp + 1).min(m * v.max(1)),
    }
}

/// Static bytes of `params` parameters on one device under the configuration's sharding:
/// `(weights, grads, optimizer)`. `distribute_param` (ZeRO-3) divides all three by dp;
/// `distribute_low_prec_param` divides the low-precision copies; `distribute_optimizer` (ZeRO-1)
/// divides the optimizer state. Gradients count only when `persistent_grads` is set.
pub fn static_bytes(profile: &StepProfile, cfg: &ParallelConfig, params: f64) -> (f64, f64, f64) {
    let dp = cfg.dp.max(1) as f64;
    let low = profile.low_prec_param_bytes_per_param;
    let opt = profile.optimizer_bytes_per_param;
    let grad = profile.grad_bytes_per_param;
    let base = (profile.static_bytes_per_param - low - opt - grad).max(0.0);
    let z3 = if cfg.distribute_param { dp } else { 1.0 };
    let low_div = if cfg.distribute_param || cfg.distribute_low_prec_param {
        dp
    } else {
        1.0
    };
    let opt_div = if cfg.distribute_param || cfg.distribute_optimizer {
        dp
    } else {
        1.0
    };
    let weights = params * (base / z3 + low / low_div);
    let grads = if cfg.persistent_grads {
        params * grad / z3
    } else {
        0.0
    };
    (weights, grads, params * opt / opt_div)
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
    /// Virtual stage of each block of `prep` (stage `v` runs on device `v % pp`).
    pub block_stage: &'a [usize],
    /// Virtual stages (`pp × chunks`).
    pub virtual_stages: usize,
    /// Largest activation sent between adjacent stages, bytes per device.
    pub boundary_bytes: f64,
}

/// Bytes per parameter of the weights a forward reads (gathered under ZeRO-3): the low-precision
/// copies where the policy keeps them, else the stored weights.
pub fn gathered_bytes_per_param(profile: &StepProfile) -> f64 {
    if profile.low_prec_param_bytes_per_param > 0.0 {
        profile.low_prec_param_bytes_per_param
    } else {
        profile.static_bytes_per_param
            - profile.optimizer_bytes_per_param
            - profile.grad_bytes_per_param
    }
    .max(0.0)
}

/// Memory of one pipeline device: static bytes, saved activations of its in-flight micro-batches,
/// its largest transient, and the allocator model.
pub fn device_memory(input: &DeviceInput, alloc: &Allocator) -> StageMemory {
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
    let dp = cfg.dp.max(1);
    let vs: Vec<usize> = (0..nv).filter(|v| v % pp == d as usize).collect();
    let (mut params, mut saved, mut transient, mut largest) =
        (vec![0f64; nv], vec![0f64; nv], vec![0f64; nv], vec![0f64; nv]);
    for (b, v) in prep.blocks.iter().zip(block_stage) {
        let v = (*v).min(nv.saturating_sub(1));
        params[v] += b.params;
        saved[v] += b.saved_bytes;
        transient[v] = transient[v].max(b.transient_bytes);
        largest[v] = largest[v].max(b.params);
    }
    let p_dev: f64 = vs.iter().map(|v| params[*v]).sum();
    let (w, g, o) = static_bytes(profile, cfg, p_dev);
    let acts: f64 = vs
        .iter()
        .map(|v| saved[*v] * in_flight(cfg.schedule, cfg.pp, d, m) as f64 / vs.len().max(1) as f64)
        .sum::<f64>()
        .max(0.0);
    let acts = if cfg.schedule.chunks() > 1 {
        // Interleaved: in-flight counts chunk-micro-batches; charge the device's largest chunk.
        let per_chunk = vs.iter().map(|v| saved[*v]).fold(0.0, f64::max);
        per_chunk * in_flight(cfg.schedule, cfg.pp, d, m) as f64
    } else {
        acts
    };
    let mut trans = vs.iter().map(|v| transient[*v]).fold(0.0, f64::max);
    if cfg.distribute_param && dp > 1 {
        let blk = vs.iter().map(|v| largest[*v]).fold(0.0, f64::max);
        trans += 2.0 * blk * gathered_bytes_per_param(profile);
    }
    if pp > 1 {
        trans += 2.0 * boundary;
    }
    finish(
        StageMemory {
            stage: d,
            weights_bytes: w,
            grads_bytes: g,
            optimizer_bytes: o,
            activations_bytes: acts,
            transients_bytes: trans,
            peak_bytes: 0.0,
        },
        alloc,
    )
}

/// Applies the allocator model to a raw breakdown and returns the completed record.
pub fn finish(mut m: StageMemory, alloc: &Allocator) -> StageMemory {
    m.peak_bytes = m.weights_bytes
        + m.grads_bytes
        + m.optimizer_bytes
        + alloc.activation_factor * (m.activations_bytes + m.transients_bytes)
        + alloc.fixed_bytes;
    m
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
    }

    #[test]
    fn zero_stages_shrink_static_bytes() {
        let p = StepProfile {
            micro_batch: 1,
            seq: 1,
            blocks: vec![],
            optimizer: vec![],
            static_bytes_per_param: 18.0,
            low_prec_param_bytes_per_param: 2.0,
            optimizer_bytes_per_param: 12.0,
            grad_bytes_per_param: 4.0,
        };
        let base = ParallelConfig {
            dp: 8,
            ..Default::default()
        };
        let sum = |c: &ParallelConfig| {
            let (w, g, o) = static_bytes(&p, c, 1e9);
            w + g + o
        };
        let z1 = ParallelConfig {
            distribute_optimizer: true,
            ..base.clone()
        };
        let z3 = ParallelConfig {
            distribute_param: true,
            ..base.clone()
        };
        assert_eq!(sum(&base), 18e9);
        assert!(sum(&z1) < sum(&base));
        assert!((sum(&z3) - 18e9 / 8.0).abs() < 1.0);
    }
}
