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

#[test]
fn breakdown_adds_up_and_json_names_match_design() {
    let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let cfg = ParallelConfig {
        dp: 16,
        pp: 2,
        micro_batch_size: 1,
        num_micro_batches: 16,
        distribute_param: true,
        ..Default::default()
    };
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
const LLAMA2_70B: &str = "llama:layers=80,hidden=8192,heads=64,kv_heads=8,ffn=28672,vocab=32000";

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

/// The best predicted MFU of a large dense model (llama2-70b, 64 devices, seq 4096, batch 512,
/// Megatron stack) over a small plan grid, per GPU, lies in published ranges: H100 35-60% (Llama 3
/// paper, Table 4: 38-43% on 16k H100s; NVIDIA Megatron-Core/NeMo 70B recipes about 50-55%); MI250
/// 25-50% (Dash et al., arXiv 2312.12705: 32-38% on Frontier's MI250X); MI300X 20-50% (AMD Primus /
/// Megatron-LM MI300X/MI325X training reports, about 30-45% of the bf16 peak).
///
/// A100, 70B class: published MFU is 43-56%: Llama 2 70B pretraining (Touvron et al. 2023, Table 2:
/// 1,720,320 A100-80GB GPU-hours for 2T tokens at 350-400 W caps, so 6·N·D over 312 TFLOP/s times
/// those hours is about 43%, a lower bound since the hours include restarts); MosaicML llm-foundry
/// MPT-70B (`costmodel/data/truth/llmfoundry_a100_80gb.jsonl`: 48.6% on 32 and 53.3% on 64
/// A100-80GB); torchtitan Llama 2 70B on 64 A100 (`torchtitan.jsonl`: 50.5-50.8%); Megatron-LM with
/// sequence parallelism and selective recomputation (Korthikanti et al. 2022, arXiv 2205.05198,
/// Table 5, `megatron_a100_korthikanti2022.jsonl`: 51.4% at 175B, 56.0% at 530B and 56.3% at 1T
/// without data parallelism, 54.2% for 530B on 2240 A100); SC21 Table 1
/// (`megatron_sc21_table1.jsonl`: 44-52%, pre-FlashAttention). The 62-64% of the same llm-foundry
/// table are MPT-7B/13B, not this class. Asserted as 40-60%, the same few points of margin as the
/// H100's 35-60% around its published 38-55%.
///
/// The profiles carry Megatron-LM's memory for `--bf16` ([`megatron_bf16`]: fp32 gradients). The
/// committed fit's best A100 plan is tp 4, pp 4, dp 4, no recomputation, 128 micro-batches: 0.584,
/// with 93% of the step in kernels (GEMMs at the fitted 0.89 of the 271 TFLOP/s maximum achievable
/// rate, 77% of peak), 3.4% pipeline bubble and 3.8% exposed tensor-parallel communication. No
/// published 70B-class A100 run uses that recipe. The same coefficients predict Korthikanti et al.'s
/// Megatron-LM iterations (22B-1T) with a 2.8% mean error, and those reach 56% with an 11% bubble
/// at 1T, tensor parallelism 8 and materialised attention: 58% with a 3% bubble, tp 4 and
/// FlashAttention-2 is consistent with them. With bf16 gradients (`--grad-reduce-in-bf16`, not
/// Megatron-LM's default) tp 2, pp 8 would fit, at 0.590; with fp32 gradients it needs 86 GB.
/// `p` (the fixture's `bf16` profile: bf16 weights and residual stream, fp32 master weights and
/// moments) with Megatron-LM's gradients for `--bf16`: gradient accumulation and all-reduce in fp32
/// (a 4-byte `main_grad` per parameter; NVIDIA/Megatron-LM `megatron/training/arguments.py`, the
/// `if args.bf16:` block, commit 000c4ac: "bfloat16 requires gradient accumulation and all-reduce
/// to be done in fp32", unless `--grad-reduce-in-bf16`), 18 bytes per parameter as moai's
/// `amp-bf16` plans and exports for Megatron-LM.
fn megatron_bf16(mut p: moai_ir::cost::StepProfile) -> moai_ir::cost::StepProfile {
    p.static_bytes_per_param += 4.0 - p.grad_bytes_per_param;
    p.grad_bytes_per_param = 4.0;
    p.refresh_fingerprint();
    p
}

#[test]
fn best_plan_mfu_within_published_ranges() {
    let m = ProfiledCostModel::new();
    let ranges = [
        (Gpu::H100, 0.35, 0.60),
        // Published 43-56% for the 70B class (see above); the model predicts 0.584.
        (Gpu::A100, 0.40, 0.60),
        (Gpu::Mi250, 0.25, 0.50),
        (Gpu::Mi300x, 0.20, 0.50),
    ];
    let profiles: Vec<_> = [
        (1u64, Recompute::None),
        (1, Recompute::Full),
        (2, Recompute::Full),
    ]
    .into_iter()
    .map(|(b, r)| (b, r, megatron_bf16(dense(LLAMA2_70B, b, 4096, r))))
    .collect();
    for (g, lo, hi) in ranges {
        let c = Cluster::new(g, 64).unwrap();
        let cap = c.memory_per_device_bytes as f64 * 0.95;
        let mut best: f64 = 0.0;
        let mut which = String::new();
        for (b, r, p) in &profiles {
            for (tp, pp) in [(8u32, 2u32), (8, 4), (8, 8), (4, 4), (4, 8), (2, 8)] {
                let dp = 64 / (tp * pp);
                let Ok(nm) = moai_costmodel::micro_batches_for(512, dp, *b as u32) else {
                    continue;
                };
                let cfg = ParallelConfig {
                    dp,
                    tp,
                    pp,
                    micro_batch_size: *b as u32,
                    num_micro_batches: nm,
                    recompute: *r,
                    distribute_optimizer: true,
                    sequence_parallel: tp > 1,
                    ..Default::default()
                };
                if let Ok(e) = m.estimate(p, &c, &cfg)
                    && (e.peak_memory_bytes as f64) < cap
                    && e.mfu > best
                {
                    best = e.mfu;
                    let (t, bd) = (e.step_time_s, &e.breakdown);
                    which = format!(
                        "tp {tp} pp {pp} dp {dp}, micro-batch {b}x{nm}, recompute {r:?}: {t:.2} s, \
                         compute {:.1}%, exposed communication {:.1}%, bubble {:.1}%, \
                         peak {:.1} GiB",
                        100.0 * bd.compute_s / t,
                        100.0 * bd.exposed_comm_s / t,
                        100.0 * bd.bubble_s / t,
                        e.peak_memory_bytes as f64 / (1u64 << 30) as f64
                    );
                }
            }
        }
        eprintln!("{g}: best MFU {best:.3} (published {lo}-{hi}): {which}");
        assert!(best >= lo && best <= hi, "{g}: {best}");
    }
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
