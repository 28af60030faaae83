//! Memory per device: static bytes (weights, gradients, optimizer state) under ZeRO-style sharding,
//! activations times the schedule's in-flight micro-batches, transients, and the allocator model.

use crate::config::{ParallelConfig, Schedule};
use crate::efficiency::Allocator;
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
