//! Activation offload (`ParallelConfig.offload_activations`): the offloaded layers leave the device's
//! peak except the in-flight window, their copies cost what the next layer's compute does not hide, the
//! host's memory is a limit shared with optimizer offload, and the bounds stay below the prediction.

use moai_costmodel::offload::{ACTIVATION_WINDOW_LAYERS, host_spec};
use moai_costmodel::{
    Cluster, CostModel, Estimate, Gpu, ParallelConfig, ProfiledCostModel, Recompute, Schedule,
    Stack,
};
use moai_ir::cost::StepProfile;
use moai_ir::train::{TrainOptions, step_profile};

fn profile(spec: &str, recompute: Recompute, micro_batch: u64, seq: u64) -> StepProfile {
    let g = moai_models::from_spec(spec).expect("spec builds");
    let opts = TrainOptions {
        recompute,
        ..Default::default()
    };
    step_profile(&g, &opts, micro_batch, seq).expect("profile")
}

/// An 8-layer, 4096-wide Llama at sequence 8192 (Megatron-LM, data parallel over 8 H100).
const WIDE: &str = "llama:layers=8,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000";

fn dp8(recompute: Recompute, offload: u32) -> ParallelConfig {
    ParallelConfig {
        dp: 8,
        micro_batch_size: 1,
        num_micro_batches: 2,
        recompute,
        distribute_optimizer: true,
        stack: Stack::Megatron,
        offload_activations: offload,
        ..Default::default()
    }
}

fn est(p: &StepProfile, cluster: &Cluster, cfg: &ParallelConfig) -> Estimate {
    ProfiledCostModel::new()
        .estimate(p, cluster, cfg)
        .unwrap_or_else(|e| panic!("{cfg:?}: {e}"))
}

#[test]
fn offloaded_layers_leave_the_peak_but_the_window() {
    let p = profile(WIDE, Recompute::None, 1, 8192);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let base = est(&p, &cluster, &dp8(Recompute::None, 0));
    let off = est(&p, &cluster, &dp8(Recompute::None, 7));
    let (a, b) = (&base.memory[0], &off.memory[0]);
    // Megatron-LM's layer: 34·s·b·h bytes (tp 1, flash attention).
    let layer = 34.0 * 8192.0 * 4096.0;
    let freed = a.activations_bytes - b.activations_bytes;
    let expect = (7.0 - ACTIVATION_WINDOW_LAYERS) * layer;
    assert!(
        (freed - expect).abs() < 1e-6 * expect,
        "freed {freed} B, expected {expect} B (7 layers less the window of {ACTIVATION_WINDOW_LAYERS})"
    );
    assert!(off.peak_memory_bytes < base.peak_memory_bytes);
    // Every byte of the copies costs step time or is hidden: never faster than without offload.
    assert_eq!(base.breakdown.offload_s, 0.0);
    assert!(off.step_time_s >= base.step_time_s);
    assert!(
        (off.step_time_s - base.step_time_s - off.breakdown.offload_s).abs()
            < 1e-9 * off.step_time_s,
        "the step grows by the exposed copies: {} vs {} + {}",
        off.step_time_s,
        base.step_time_s,
        off.breakdown.offload_s
    );
    // Offloading the last layer too frees one layer more.
    let all = est(&p, &cluster, &dp8(Recompute::None, 8));
    let more = b.activations_bytes - all.memory[0].activations_bytes;
    assert!((more - layer).abs() < 1e-6 * layer, "{more}");
    // the bounds stay below the prediction without pipelining too
    for (n, e) in [(7, &off), (8, &all)] {
        let bounds = ProfiledCostModel::new()
            .lower_bounds(&p, &cluster, &dp8(Recompute::None, n))
            .unwrap();
        assert!(
            bounds.peak_memory_bytes <= e.peak_memory_bytes as f64,
            "{n}"
        );
        assert!(
            bounds.peak_memory_bytes > 0.5 * e.peak_memory_bytes as f64,
            "{n}"
        );
        assert!(bounds.step_time_s <= e.step_time_s, "{n}");
    }
}

#[test]
fn copies_are_hidden_under_full_recomputation_and_exposed_on_a_small_model() {
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    // Full recomputation saves only each layer's input (2·s·b·h bytes); the next layer's forward
    // and its backward with recomputation hide the copies.
    let p = profile(WIDE, Recompute::Full, 1, 8192);
    let e = est(&p, &cluster, &dp8(Recompute::Full, 7));
    assert_eq!(e.breakdown.offload_s, 0.0, "{:?}", e.breakdown);
    // An absurd case: a 256-wide model with 16 × 2048 tokens per micro-batch saves 34·b·s·h =
    // 285 MB per layer (5.6 ms each way over 51.2 GB/s) while its layer computes in far less (the
    // compute per byte saved grows with h and s): the copies are exposed.
    let (b, s) = (16.0, 2048.0);
    let small = profile(
        "llama:layers=4,hidden=256,heads=4,kv_heads=4,ffn=688,vocab=1000",
        Recompute::None,
        16,
        2048,
    );
    let small_cfg = |n| ParallelConfig {
        micro_batch_size: 16,
        ..dp8(Recompute::None, n)
    };
    let base = est(&small, &cluster, &small_cfg(0));
    let off = est(&small, &cluster, &small_cfg(3));
    let link = host_spec(Gpu::H100).link_bytes_per_s * moai_costmodel::offload::LINK_EFFICIENCY;
    let copy = 34.0 * b * s * 256.0 / link;
    eprintln!(
        "small model, 16 x 2048 tokens per micro-batch: step {:.3} s → {:.3} s with 3 of 4 layers offloaded ({:.3} s exposed; {:.1} ms per copy)",
        base.step_time_s,
        off.step_time_s,
        off.breakdown.offload_s,
        copy * 1e3
    );
    assert!(off.breakdown.offload_s > 0.0);
    // At most every copy out and back of both micro-batches, at least half of them.
    let all = 2.0 * 3.0 * 2.0 * copy;
    assert!(off.breakdown.offload_s <= all * (1.0 + 1e-9));
    assert!(
        off.breakdown.offload_s > 0.5 * all,
        "{}",
        off.breakdown.offload_s
    );
    assert!(off.step_time_s > base.step_time_s);
}

#[test]
fn host_memory_limits_offloaded_activations_with_the_optimizer() {
    // 32 layers of 4096 wide at 32,768 tokens, 8 micro-batches of 4 in flight per pipeline device:
    // 34·s·b·h = 4.6 GB per layer and sample; 31 layers × 4 samples × 8 devices ≈ 4.5 TB per server,
    // more than a DGX H100's 2 TiB.
    let p = profile(
        "llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000",
        Recompute::None,
        4,
        32_768,
    );
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let cfg = ParallelConfig {
        micro_batch_size: 4,
        num_micro_batches: 1,
        ..dp8(Recompute::None, 31)
    };
    let err = ProfiledCostModel::new()
        .estimate(&p, &cluster, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the offloaded activations need") && err.contains("host memory per server"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // Two layers fit on the host; with the optimizer offloaded too the message names both.
    let few = ParallelConfig {
        offload_activations: 2,
        ..cfg.clone()
    };
    est(&p, &cluster, &few);
    let both = ParallelConfig {
        offload_optimizer: true,
        ..cfg
    };
    let err = ProfiledCostModel::new()
        .estimate(&p, &cluster, &both)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer state and activations"), "{err}");
}

#[test]
fn pipelined_offload_holds_each_stage_in_flight_micro_batches_on_the_host() {
    // 1F1B on 4 stages: stage s keeps pp − s micro-batches in flight, so the first stage frees the
    // most device memory when it offloads.
    let p = profile(WIDE, Recompute::None, 1, 8192);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let cfg = |n| ParallelConfig {
        dp: 2,
        pp: 4,
        num_micro_batches: 8,
        schedule: Schedule::OneFOneB,
        offload_activations: n,
        ..dp8(Recompute::None, 0)
    };
    let (a, b) = (est(&p, &cluster, &cfg(0)), est(&p, &cluster, &cfg(1)));
    let freed: Vec<f64> = a
        .memory
        .iter()
        .zip(&b.memory)
        .map(|(x, y)| x.activations_bytes - y.activations_bytes)
        .collect();
    let layer = 34.0 * 8192.0 * 4096.0;
    for (s, f) in freed.iter().enumerate() {
        // one layer of pp − s micro-batches leaves, two layers' window comes in
        let expect = (4 - s) as f64 * layer - ACTIVATION_WINDOW_LAYERS * layer;
        assert!(
            (f - expect).abs() < 1e-6 * layer,
            "stage {s}: {f} vs {expect}"
        );
    }
    // the bounds stay below the prediction
    let m = ProfiledCostModel::new();
    for n in [1, 2] {
        let bounds = m.lower_bounds(&p, &cluster, &cfg(n)).unwrap();
        let e = est(&p, &cluster, &cfg(n));
        assert!(bounds.peak_memory_bytes <= e.peak_memory_bytes as f64);
        assert!(bounds.step_time_s <= e.step_time_s);
    }
}

#[test]
fn more_offloaded_layers_than_the_model_has_is_an_error() {
    let p = profile(WIDE, Recompute::None, 1, 1024);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let err = ProfiledCostModel::new()
        .estimate(&p, &cluster, &dp8(Recompute::None, 9))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("offload_activations 9 exceeds the 8 decoder layers"),
        "{err}"
    );
}

#[test]
fn the_field_round_trips_and_is_omitted_when_zero() {
    let cfg = dp8(Recompute::None, 3);
    let j = serde_json::to_string(&cfg).unwrap();
    assert!(j.contains("\"offload_activations\":3"), "{j}");
    let back: ParallelConfig = serde_json::from_str(&j).unwrap();
    assert_eq!(back, cfg);
    let j = serde_json::to_string(&dp8(Recompute::None, 0)).unwrap();
    assert!(!j.contains("offload_activations"), "{j}");
}
