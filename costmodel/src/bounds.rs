//! Lower bounds of a prediction, cheap enough to compute for every candidate before its stages are cut:
//! what the planner prunes by (a candidate whose step-time bound exceeds the time of plans already costed
//! cannot win, and one whose memory bound exceeds the device cannot fit).
//!
//! [`CostModel::lower_bounds`](crate::estimate::CostModel::lower_bounds) returns them; a cost model
//! that gives none (the trait's default) is never pruned by them. Each bound must hold for every stage
//! split the planner may choose (it is computed before partitioning), so it reads nothing of
//! `cfg.stages`.

use crate::config::ParallelConfig;
use crate::efficiency::{Efficiency, StackCoefficients};
use crate::estimate::{PhaseSums, PreparedProfile};
use crate::ops::KERNEL_FLOOR_S;
use moai_ir::cost::{BlockKind, StepProfile};

/// Lower bounds of what [`CostModel::estimate`](crate::estimate::CostModel::estimate) predicts for
/// one configuration, under any stage split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LowerBounds {
    /// The predicted `step_time_s` is at least this.
    pub step_time_s: f64,
    /// The predicted `peak_memory_bytes` is at least this.
    pub peak_memory_bytes: f64,
}

/// Relative slack taken off every bound, so that floating-point summation in a different order than
/// the estimator's can never lift a bound above the value it bounds.
pub const BOUND_SLACK: f64 = 1e-9;

/// The default cost model's bounds ([`crate::ProfiledCostModel`]), from the same prepared per-block
/// sums its estimate reads.
///
/// **Step time** — the estimator's step time is the latest device's
/// `max(end, host) + exposed communication + optimizer`, and a device's pipeline end is at least its busy
/// time, `m` micro-batches times the forward and backward seconds of its (virtual) stages. Each stage
/// phase costs at least its GPU kernel time (the host bound and the tensor-parallel collectives only add),
/// and that kernel time is linear in the phase's sums except for the per-kernel floors,
/// `max(memory kernels − fused kernels, 0)`, whose sum over stages is at least the same expression over
/// the whole model. The busiest of `pp` devices has at least `1/pp` of all devices' busy time, and every
/// device's optimizer step costs at least the stack's fixed step overhead plus one kernel floor (one
/// launch at least). So
/// `step ≥ m · gpu(all blocks' forward and backward sums) / pp + step_overhead + floor`, whatever the split
/// and schedule (bubbles, waits and communication are all non-negative).
///
/// **Peak memory** — every device's peak is at least its resident static bytes (weights, persistent
/// gradients, optimizer state) plus the saved activations of its in-flight micro-batches (the forward
/// moment holds both, plus transients). Static bytes are linear in the device's parameters
/// ([`crate::memory::static_bytes`]); every device holds at least one decoder layer with at least
/// [`crate::memory::in_flight`] micro-batches of it saved; the first device also holds the embedding, the
/// last the head, and the device with the most parameters at least `1/pp` of them and the largest layer.
/// Without pipelining the one device holds every block and one micro-batch of every layer's activations.
/// With activation offload (`offload_activations = N`) the device keeps at least the activations of all
/// but the `N` largest layers without pipelining, and with it at least one layer's worth (what it keeps,
/// or the window of offloaded layers in flight).
pub fn profiled(
    prep: &PreparedProfile,
    eff: &Efficiency,
    sc: &StackCoefficients,
    profile: &StepProfile,
    cfg: &ParallelConfig,
) -> LowerBounds {
    let pp = cfg.pp.max(1) as f64;
    let m = cfg.num_micro_batches.max(1) as f64;
    let mut all = PhaseSums::default();
    for b in &prep.blocks {
        for s in [&b.forward, &b.backward] {
            all.matmul_s += s.matmul_s;
            all.attention_s += s.attention_s;
            all.memory_s += s.memory_s;
            all.fusable_s += s.fusable_s;
            all.measured_s += s.measured_s;
            all.memory_kernels += s.memory_kernels;
            all.fusable_kernels += s.fusable_kernels;
            all.kernels += s.kernels;
            all.autocast_cast_s += s.autocast_cast_s;
            all.autocast_cast_kernels += s.autocast_cast_kernels;
            all.eager_rotary_s += s.eager_rotary_s;
            all.eager_rotary_kernels += s.eager_rotary_kernels;
        }
    }
    // A context-parallel rank does 1/cp of every phase (`crate::context`), as the estimator divides it.
    let (gpu, _) = all.context_shard(cfg.cp.max(1)).kernel_time(eff, sc);
    let step = m * gpu.max(0.0) / pp + sc.step_overhead_s.max(0.0) + KERNEL_FLOOR_S;

    // Static bytes per parameter on one device (linear in the parameter count).
    let st = crate::memory::static_bytes(profile, cfg, 1.0);
    let per_param = (st.weights + st.persistent_grads + st.optimizer).max(0.0);
    let tp = cfg.tp.max(1) as u64;
    let megatron = cfg.stack == crate::stack::Stack::Megatron;
    let (mut total, mut emb, mut head) = (0.0, 0.0, 0.0);
    let (mut first, mut last, mut largest) = (0.0, 0.0, 0f64);
    // The least activation bytes one micro-batch of one decoder layer leaves saved on a device, and all
    // decoder layers' together, as the memory model counts them.
    let (mut act_min, mut act_all) = (f64::INFINITY, 0.0);
    let mut acts: Vec<f64> = Vec::new();
    for (i, b) in prep.blocks.iter().enumerate() {
        total += b.params;
        match b.kind {
            BlockKind::Embedding => emb += b.params,
            BlockKind::Head => head += b.params,
            BlockKind::Decoder(l) => {
                largest = largest.max(b.params);
                if l == 0 {
                    first = b.params;
                }
                last = b.params;
                let act = layer_activation_bytes(prep, profile, cfg, i, tp, megatron);
                act_min = act_min.min(act);
                act_all += act;
                acts.push(act);
            }
        }
    }
    // A context-parallel rank holds the activations of seq/cp tokens (`crate::memory::device_memory`).
    let cp = cfg.cp.max(1) as f64;
    let act_min = if act_min.is_finite() {
        act_min / cp
    } else {
        0.0
    };
    // Activation offload takes at most the `offload_activations` largest layers off the device (the
    // in-flight window it keeps is not counted, so the bound stays below).
    let offloaded = if cfg.offload_activations > 0 {
        acts.sort_by(|a, b| b.total_cmp(a));
        acts.iter()
            .take(cfg.offload_activations as usize)
            .sum::<f64>()
    } else {
        0.0
    };
    let act_all = (act_all - offloaded).max(0.0) / cp;
    // With activation offload a device may offload every layer it holds, keeping only the window of
    // two offloaded layers (at least one layer's activations, whatever the in-flight count).
    let inflight = |d: u32| {
        if cfg.offload_activations > 0 {
            1.0
        } else {
            crate::memory::in_flight(cfg.schedule, cfg.pp, d, cfg.num_micro_batches) as f64
        }
    };
    let peak = if cfg.pp <= 1 {
        // One device holds every block and one micro-batch's activations of every layer.
        total * per_param + act_all
    } else {
        // Every device holds at least one decoder layer with at least one micro-batch in flight; the
        // first device also the embedding, the last the head, and the one with the most parameters at
        // least `1/pp` of them and the largest layer.
        let least_inflight = (0..cfg.pp).map(inflight).fold(f64::INFINITY, f64::min);
        let busiest = (total / pp).max(largest) * per_param + least_inflight * act_min;
        let first_dev = (emb + first) * per_param + inflight(0) * act_min;
        let last_dev = (head + last) * per_param + inflight(cfg.pp - 1) * act_min;
        busiest.max(first_dev).max(last_dev)
    };
    LowerBounds {
        step_time_s: step * (1.0 - BOUND_SLACK),
        peak_memory_bytes: peak.max(0.0) * (1.0 - BOUND_SLACK),
    }
}

/// The activation bytes one micro-batch of decoder block `i` saves on one device, as
/// [`crate::memory::device_memory`] counts them: Korthikanti et al.'s layer formula under Megatron-LM,
/// else the graph's saved bytes less the weight copies kept elsewhere.
fn layer_activation_bytes(
    prep: &PreparedProfile,
    profile: &StepProfile,
    cfg: &ParallelConfig,
    i: usize,
    tp: u64,
    megatron: bool,
) -> f64 {
    let (Some(b), Some(pb)) = (prep.blocks.get(i), profile.blocks.get(i)) else {
        return 0.0;
    };
    let shape = match prep.shapes.get(i) {
        Some(s) => *s,
        None => crate::memory::block_shape(pb, tp),
    };
    if megatron && let Some(a) = shape.attention {
        let dims = crate::memory::LayerDims::of_attention(&a);
        let act = crate::memory::megatron_layer_bytes(
            dims,
            tp as f64,
            cfg.sequence_parallel,
            cfg.recompute,
            false,
        );
        // FP8 linears keep their saved inputs in fp8, as the memory model counts them.
        let fp8 = if cfg.precision == crate::precision::MatmulPrecision::Fp8 {
            crate::precision::megatron_fp8_saved_bytes(
                dims,
                tp as f64,
                cfg.sequence_parallel,
                cfg.recompute,
            )
            .min(act)
        } else {
            0.0
        };
        return (act - fp8).max(0.0);
    }
    let kept_copy = if shape.recomputed {
        0.0
    } else {
        shape.weight_copy_bytes
    };
    (b.saved_bytes - kept_copy).max(0.0)
}

#[cfg(test)]
mod tests {
    use crate::cluster::Cluster;
    use crate::config::{ParallelConfig, Recompute, Schedule};
    use crate::device::Gpu;
    use crate::estimate::{CostModel, ProfiledCostModel};
    use crate::stack::Stack;
    use moai_ir::train::TrainOptions;

    /// Every bound of the default model is below its prediction, over stacks, sharding, recomputation,
    /// schedules, uneven stage splits and micro-batch counts.
    #[test]
    fn bounds_are_below_the_prediction() {
        let g = moai_models::from_spec(
            "llama:layers=8,hidden=512,heads=8,kv_heads=4,ffn=1376,vocab=8000",
        )
        .expect("spec builds");
        let cluster = Cluster::new(Gpu::H100, 16).unwrap();
        let cost = ProfiledCostModel::new();
        let mut checked = 0;
        for recompute in [Recompute::None, Recompute::Selective, Recompute::Full] {
            let opts = TrainOptions {
                recompute,
                ..Default::default()
            };
            let profile = moai_ir::train::step_profile(&g, &opts, 2, 512).expect("profile");
            for stack in Stack::ALL {
                for (tp, pp) in [(1, 1), (2, 1), (1, 2), (2, 4), (1, 8)] {
                    let dp = 16 / (tp * pp);
                    for schedule in [
                        Schedule::OneFOneB,
                        Schedule::Gpipe,
                        Schedule::Interleaved(2),
                    ] {
                        if pp == 1 && schedule != Schedule::OneFOneB
                            || matches!(schedule, Schedule::Interleaved(_)) && 8 % (2 * pp) != 0
                        {
                            continue;
                        }
                        for (zero3, zero1, sp, m) in [
                            (false, false, false, 4),
                            (false, true, tp > 1, 8),
                            (pp == 1, pp == 1, false, 1),
                        ] {
                            // an even split, and one with the first stage holding a single layer
                            let splits: Vec<Vec<(u32, u32)>> =
                                if pp > 1 && !matches!(schedule, Schedule::Interleaved(_)) {
                                    let uneven: Vec<(u32, u32)> = std::iter::once((0, 0))
                                        .chain(
                                            crate::config::even_stages(7, pp - 1)
                                                .into_iter()
                                                .map(|(a, b)| (a + 1, b + 1)),
                                        )
                                        .collect();
                                    vec![Vec::new(), uneven]
                                } else {
                                    vec![Vec::new()]
                                };
                            for stages in splits {
                                let cfg = ParallelConfig {
                                    dp,
                                    tp,
                                    pp,
                                    micro_batch_size: 2,
                                    num_micro_batches: m,
                                    recompute,
                                    sequence_parallel: sp,
                                    schedule,
                                    distribute_param: zero3,
                                    distribute_low_prec_param: zero3,
                                    distribute_optimizer: zero1 || zero3,
                                    stack,
                                    stages,
                                    ..Default::default()
                                };
                                let Ok(e) = cost.estimate(&profile, &cluster, &cfg) else {
                                    continue;
                                };
                                let b = cost.lower_bounds(&profile, &cluster, &cfg).unwrap();
                                assert!(
                                    b.step_time_s <= e.step_time_s
                                        && b.peak_memory_bytes <= e.peak_memory_bytes as f64,
                                    "{cfg:?}: {b:?} vs {} s, {} B",
                                    e.step_time_s,
                                    e.peak_memory_bytes
                                );
                                // not vacuous: within a factor of the prediction
                                assert!(b.step_time_s > 0.05 * e.step_time_s, "{cfg:?}: {b:?}");
                                assert!(b.peak_memory_bytes > 0.05 * e.peak_memory_bytes as f64);
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 200, "{checked}");
    }

    #[test]
    fn a_time_only_model_bounds_no_memory() {
        let g = moai_models::from_spec("llama:layers=2,hidden=256,heads=4,ffn=688,vocab=1000")
            .expect("spec builds");
        let profile =
            moai_ir::train::step_profile(&g, &TrainOptions::default(), 1, 128).expect("profile");
        let cluster = Cluster::new(Gpu::A100, 1).unwrap();
        let cfg = ParallelConfig::default();
        let b = ProfiledCostModel::new()
            .time_only()
            .lower_bounds(&profile, &cluster, &cfg)
            .unwrap();
        assert_eq!(b.peak_memory_bytes, 0.0);
        assert!(b.step_time_s > 0.0);
    }
}
