//! Estimates of fixture models: breakdowns, sources, JSON names.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::profile::OpProfile;
use moai_costmodel::{
    Cluster, CostModel, Gpu, ParallelConfig, ProfiledCostModel, Recompute, Schedule,
};

fn llama7b(b: u64, r: Recompute) -> moai_ir::cost::StepProfile {
    let spec = parse_spec("llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000")
        .unwrap();
    step_profile(&spec, b, 2048, r, "bf16")
}

/// A pipelined 7B job on 4xLarge.2048GB: dp 16 × pp 2, ZeRO-3, 16 micro-batches of 1.
fn pipelined_mi250() -> (Cluster, ParallelConfig) {
    let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let cfg = ParallelConfig {
        dp: 16,
        pp: 2,
        micro_batch_size: 1,
        num_micro_batches: 16,
        distribute_param: true,
        ..Default::default()
    };
    (c, cfg)
}

#[test]
fn breakdown_adds_up_and_json_names_match_design() {
    let (c, cfg) = pipelined_mi250();
    let e = ProfiledCostModel::new()
        .estimate(&llama7b(1, Recompute::None), &c, &cfg)
        .unwrap();
    let b = &e.breakdown;
    assert!(
        (b.compute_s + b.exposed_comm_s + b.bubble_s + b.optimizer_s - e.step_time_s).abs()
            < 1e-9 * e.step_time_s.max(1.0) + 1e-9,
        "{e:?}"
    );
    assert!(b.bubble_s > 0.0);
    assert!(e.mfu > 0.05 && e.mfu < 0.8, "{}", e.mfu);
    assert_eq!(e.memory.len(), 2);
    assert!(
        e.memory[0].activations_bytes > e.memory[1].activations_bytes,
        "stage 0 holds more micro-batches"
    );
    let v = serde_json::to_value(&e).unwrap();
    for k in ["step_time_s", "tokens_per_s", "peak_memory_bytes", "mfu"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    for k in ["compute_s", "exposed_comm_s", "bubble_s"] {
        assert!(v["breakdown"].get(k).is_some(), "{k}");
    }
    assert_eq!(e.sources.profile_ops, 0);
    assert!(e.sources.roofline_ops > 0);
    assert!(
        e.sources.efficiency.starts_with("mi250: "),
        "{}",
        e.sources.efficiency
    );
    assert!(
        e.sources.stack.starts_with("megatron: "),
        "{}",
        e.sources.stack
    );
    assert_eq!(v["sources"]["stack"], serde_json::json!(e.sources.stack));
    for k in [
        "tp_comm_s",
        "dp_comm_s",
        "zero3_gather_s",
        "step_overhead_s",
    ] {
        assert!(v["breakdown"].get(k).is_some(), "{k}");
    }
}

#[test]
fn measured_profile_is_used_inside_its_grid() {
    let text = r#"{"format_version": 1, "gpu": "h100", "device_name": "synthetic", "kernel_library": {"torch": "test"},
        "driver": "none", "date": "2026-11-23", "command": "test fixture",
        "matmul": [{"dtype": "bf16", "m": [1024, 65536], "n": [64, 65536], "k": [64, 65536],
                    "time_s": [1e-5, 1e-4, 1e-4, 1e-3, 1e-4, 1e-3, 1e-3, 1e-2]}]}"#;
    let p = OpProfile::from_json(text, "synthetic").unwrap();
    let m = ProfiledCostModel::new().with_profile(p);
    let c = Cluster::new(Gpu::H100, 1).unwrap();
    let cfg = ParallelConfig {
        micro_batch_size: 1,
        ..Default::default()
    };
    let e = m.estimate(&llama7b(1, Recompute::None), &c, &cfg).unwrap();
    assert!(
        e.sources.profile_ops > 0 && e.sources.roofline_ops > 0,
        "{:?}",
        e.sources
    );
    assert!(e.sources.profile.as_deref().unwrap().contains("synthetic"));
}

#[test]
fn recompute_trades_time_for_memory() {
    let c = Cluster::new(Gpu::H100, 8).unwrap();
    let m = ProfiledCostModel::new();
    let none = ParallelConfig {
        dp: 8,
        micro_batch_size: 2,
        ..Default::default()
    };
    let full = ParallelConfig {
        recompute: Recompute::Full,
        ..none.clone()
    };
    let a = m.estimate(&llama7b(2, Recompute::None), &c, &none).unwrap();
    let b = m.estimate(&llama7b(2, Recompute::Full), &c, &full).unwrap();
    assert!(b.step_time_s > a.step_time_s);
    assert!(b.peak_memory_bytes < a.peak_memory_bytes);
}

#[test]
fn interleaving_reduces_bubble_raises_memory() {
    let c = Cluster::new(Gpu::A100, 8).unwrap();
    let m = ProfiledCostModel::new();
    let p = llama7b(1, Recompute::None);
    let base = ParallelConfig {
        tp: 2,
        pp: 4,
        micro_batch_size: 1,
        num_micro_batches: 8,
        ..Default::default()
    };
    let inter = ParallelConfig {
        schedule: Schedule::Interleaved(2),
        ..base.clone()
    };
    let a = m.estimate(&p, &c, &base).unwrap();
    let b = m.estimate(&p, &c, &inter).unwrap();
    assert!(
        b.breakdown.bubble_s < a.breakdown.bubble_s,
        "{:?} {:?}",
        a.breakdown,
        b.breakdown
    );
    assert!(b.memory[0].activations_bytes > a.memory[0].activations_bytes);
}

#[test]
fn stage_times_are_what_the_pipeline_simulation_ran_on() {
    let c = Cluster::new(Gpu::A100, 8).unwrap();
    let m = ProfiledCostModel::new();
    let p = llama7b(1, Recompute::None);
    for schedule in [Schedule::OneFOneB, Schedule::Interleaved(2)] {
        let cfg = ParallelConfig {
            tp: 2,
            pp: 4,
            micro_batch_size: 1,
            num_micro_batches: 8,
            schedule,
            ..Default::default()
        };
        let e = m.estimate(&p, &c, &cfg).unwrap();
        assert_eq!(e.stage_times.len(), 4 * schedule.chunks() as usize);
        assert!(e.p2p_s > 0.0, "pp > 1 sends activations between stages");
        for s in &e.stage_times {
            assert!(s.forward_s > 0.0 && s.backward_s > s.forward_s, "{s:?}");
        }
        // Re-simulating from the exposed times reproduces a makespan within the step time, and the busy
        // time of every device is its share of the stage times.
        let sim =
            moai_costmodel::pipeline::simulate(schedule, &e.stage_times, 4, 8, e.p2p_s).unwrap();
        assert!(sim.makespan_s <= e.step_time_s * (1.0 + 1e-12));
        for d in 0..4 {
            let own: f64 = (0..e.stage_times.len())
                .filter(|v| v % 4 == d)
                .map(|v| 8.0 * (e.stage_times[v].forward_s + e.stage_times[v].backward_s))
                .sum();
            assert!(
                (sim.busy_s[d] - own).abs() <= 1e-9 * own,
                "{d}: {} vs {own}",
                sim.busy_s[d]
            );
        }
    }
}

fn dense(spec: &str, b: u64, seq: u64, r: Recompute) -> moai_ir::cost::StepProfile {
    step_profile(&parse_spec(spec).unwrap(), b, seq, r, "bf16")
}

const LLAMA2_13B: &str = "llama:layers=40,hidden=5120,heads=40,kv_heads=40,ffn=13824,vocab=32000";
const LLAMA2_7B: &str = "llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000";

/// Issue 11: ZeRO-3 and ZeRO-1 of llama2-13b on 4xLarge.2048GB differ by the modeled parameter
/// gathers and gradient reduce-scatters (breakdown) and by memory.
#[test]
fn zero3_and_zero1_differ_in_traffic_and_memory() {
    let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let p = dense(LLAMA2_13B, 1, 1024, Recompute::Full);
    let base = ParallelConfig {
        dp: 32,
        micro_batch_size: 1,
        num_micro_batches: 8,
        recompute: Recompute::Full,
        distribute_optimizer: true,
        ..Default::default()
    };
    let z3 = ParallelConfig {
        distribute_param: true,
        distribute_low_prec_param: true,
        ..base.clone()
    };
    let m = ProfiledCostModel::new();
    let (e1, e3) = (
        m.estimate(&p, &c, &base).unwrap(),
        m.estimate(&p, &c, &z3).unwrap(),
    );
    eprintln!("ZeRO-1 {:?}\nZeRO-3 {:?}", e1.breakdown, e3.breakdown);
    assert_eq!(e1.breakdown.zero3_gather_s, 0.0);
    assert!(e3.breakdown.zero3_gather_s > 0.0);
    // 8 micro-batches reduce-scatter their gradients under ZeRO-3, once per step under ZeRO-1.
    assert!(e3.breakdown.dp_comm_s > e1.breakdown.dp_comm_s);
    assert!(e3.step_time_s > e1.step_time_s);
    assert!(e3.peak_memory_bytes < e1.peak_memory_bytes);
}

/// Issue 11: the same 7B plan on 32 H100s vs 32 A100s (Megatron stack) runs 2.0-3.5x faster; the
/// bf16 peaks differ 3.2x, published Megatron/NeMo runs 2.5-3x.
#[test]
fn h100_over_a100_on_a_7b_model() {
    let p = dense(LLAMA2_7B, 2, 4096, Recompute::None);
    let cfg = ParallelConfig {
        dp: 8,
        tp: 4,
        micro_batch_size: 2,
        num_micro_batches: 16,
        distribute_optimizer: true,
        sequence_parallel: true,
        ..Default::default()
    };
    let m = ProfiledCostModel::new();
    let t = |g| {
        m.estimate(&p, &Cluster::new(g, 32).unwrap(), &cfg)
            .unwrap()
            .step_time_s
    };
    let ratio = t(Gpu::A100) / t(Gpu::H100);
    eprintln!("A100 / H100 step time on llama2-7b, 32 devices: {ratio:.2}");
    assert!((2.0..=3.5).contains(&ratio), "{ratio}");
}

#[test]
fn the_prepared_profile_cache_follows_the_profiles_fingerprint() {
    // One model (one cache) for every estimate below.
    let m = ProfiledCostModel::new();
    let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let cfg = ParallelConfig {
        dp: 16,
        tp: 2,
        micro_batch_size: 1,
        num_micro_batches: 16,
        ..Default::default()
    };
    let p = llama7b(1, Recompute::None);
    let base = m.estimate(&p, &c, &cfg).unwrap();
    // An edited profile with the same op count and sizes: refreshed, it is prepared anew.
    let mut q = p.clone();
    for b in &mut q.blocks {
        for op in &mut b.ops {
            op.flops *= 2.0;
        }
    }
    q.refresh_fingerprint();
    let heavier = m.estimate(&q, &c, &cfg).unwrap();
    assert!(
        heavier.step_time_s > base.step_time_s,
        "{} vs {}",
        heavier.step_time_s,
        base.step_time_s
    );
    // The same figures as a fresh model's: the cache never answers for another profile.
    assert_eq!(
        heavier,
        ProfiledCostModel::new().estimate(&q, &c, &cfg).unwrap()
    );
    assert_eq!(base, m.estimate(&p, &c, &cfg).unwrap());
}

/// The same 7B job (micro-batch 1, full recomputation) estimated under `cfg` on 8 devices of `a` and
/// of `b`.
fn llama7b_on_8_of_each(
    cfg: &ParallelConfig,
    a: Gpu,
    b: Gpu,
) -> (moai_costmodel::Estimate, moai_costmodel::Estimate) {
    let p = llama7b(1, Recompute::Full);
    let on = |g: Gpu| {
        ProfiledCostModel::new()
            .estimate(&p, &Cluster::new(g, 8).unwrap(), cfg)
            .unwrap()
    };
    (on(a), on(b))
}

/// An MI250X GCD is an MI250 GCD with 110 compute units instead of 104 and its own measured matmul
/// asymptote: the same family coefficients, memory, links and node. The same job is faster on it, by
/// less than the 147.0 / 138.9 ratio of the asymptotes (memory-bound kernels and communication do
/// not speed up), and needs the same memory.
#[test]
fn an_mi250x_gcd_runs_the_mi250_job_faster_by_at_most_its_compute_ratio() {
    let cfg = ParallelConfig {
        dp: 8,
        micro_batch_size: 1,
        num_micro_batches: 4,
        recompute: Recompute::Full,
        distribute_optimizer: true,
        ..Default::default()
    };
    let (mi250, mi250x) = llama7b_on_8_of_each(&cfg, Gpu::Mi250, Gpu::Mi250x);
    let speedup = mi250.step_time_s / mi250x.step_time_s;
    let compute =
        Gpu::Mi250x.spec().max_achievable_bf16_flops / Gpu::Mi250.spec().max_achievable_bf16_flops;
    assert!(
        speedup > 1.0 && speedup <= compute + 1e-9,
        "mi250 {} s, mi250x {} s: {speedup} (asymptotes {compute})",
        mi250.step_time_s,
        mi250x.step_time_s
    );
    assert_eq!(mi250.peak_memory_bytes, mi250x.peak_memory_bytes);
    assert!(mi250x.sources.efficiency.starts_with("mi250x: "));
}

/// The power-limited HBM2e H100 (Grand Teton) is the H100 die with a lower sustained clock and
/// slower memory: the same job takes longer on it, by at least its compute slowdown (1 / the fitted
/// clock) and at most its memory slowdown (3.35 / 2.4 TB/s), since the step mixes the two; the fitted
/// clock lies within the bounds the sources allow.
#[test]
fn a_power_limited_h100_is_slower_by_its_clock_and_its_memory() {
    let cfg = ParallelConfig {
        dp: 8,
        micro_batch_size: 1,
        num_micro_batches: 1,
        recompute: Recompute::Full,
        distribute_param: true,
        ..Default::default()
    };
    let (full, limited) = llama7b_on_8_of_each(&cfg, Gpu::H100, Gpu::H100Hbm2e);
    let slowdown = limited.step_time_s / full.step_time_s;
    let eff = moai_costmodel::efficiency::committed();
    let clock = eff.get(Gpu::H100Hbm2e).clock;
    let bounds = Gpu::H100Hbm2e.sustained_clock_bounds().unwrap();
    assert!(bounds.lo <= clock && clock < 1.0, "clock {clock}");
    // The kind's matmul and attention fractions are the family's times its clock.
    let h100 = eff.get(Gpu::H100);
    assert!((eff.get(Gpu::H100Hbm2e).matmul / h100.matmul - clock).abs() < 1e-3);
    assert!((eff.get(Gpu::H100Hbm2e).attention / h100.attention - clock).abs() < 1e-3);
    let memory = Gpu::H100.spec().hbm_bytes_per_s / Gpu::H100Hbm2e.spec().hbm_bytes_per_s;
    assert!(
        slowdown >= 1.0 / clock - 1e-3 && slowdown <= memory + 1e-9,
        "h100 {} s, h100-hbm2e {} s: {slowdown} (compute {}, memory {memory})",
        full.step_time_s,
        limited.step_time_s,
        1.0 / clock
    );
}

/// The kernel classes of the breakdown add up to the critical device's compute when the device,
/// not the host, bounds it (a pipelined 7B step on MI250 and a tensor-parallel one with the
/// overlap's SM margin on H100), each class is non-negative, and the JSON names them.
#[test]
fn kernel_classes_add_up_to_compute() {
    let cases = [
        pipelined_mi250(),
        (
            Cluster::new(Gpu::H100, 8).unwrap(),
            ParallelConfig {
                dp: 2,
                tp: 4,
                micro_batch_size: 2,
                num_micro_batches: 4,
                sequence_parallel: true,
                tp_comm_overlap: true,
                ..Default::default()
            },
        ),
    ];
    for (c, cfg) in cases {
        let e = ProfiledCostModel::new()
            .estimate(
                &llama7b(cfg.micro_batch_size as u64, Recompute::None),
                &c,
                &cfg,
            )
            .unwrap();
        let k = &e.breakdown.kernels;
        let parts = [
            k.matmul_s,
            k.attention_s,
            k.fused_memory_s,
            k.memory_s,
            k.measured_s,
            k.kernel_floor_s,
            k.tp_sm_margin_s,
        ];
        assert!(parts.iter().all(|p| *p >= 0.0), "{k:?}");
        assert!(k.matmul_s > k.attention_s && k.attention_s > 0.0, "{k:?}");
        let rel = (k.total() - e.breakdown.compute_s).abs() / e.breakdown.compute_s;
        assert!(rel < 1e-9, "{k:?} vs compute {}", e.breakdown.compute_s);
        assert_eq!(k.tp_sm_margin_s > 0.0, cfg.tp > 1, "{k:?}");
        let v = serde_json::to_value(&e).unwrap();
        for name in [
            "matmul_s",
            "attention_s",
            "fused_memory_s",
            "kernel_floor_s",
        ] {
            assert!(v["breakdown"]["kernels"].get(name).is_some(), "{name}");
        }
    }
}
