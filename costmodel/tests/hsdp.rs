//! Hybrid sharding (`dp_shard`, HSDP / partial ZeRO groups): ZeRO's collectives and sharded state
//! follow the shard group, and the replicas all-reduce their shard of the gradients.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::memory::static_bytes;
use moai_costmodel::{
    Cluster, CostModel, Estimate, Gpu, ParallelConfig, ProfiledCostModel, Recompute, Stack,
};

/// Llama-2-7B's shape at 4,096 tokens.
fn profile(b: u64) -> moai_ir::cost::StepProfile {
    let spec = parse_spec("llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000")
        .unwrap();
    step_profile(&spec, b, 4096, Recompute::Full, "amp-bf16")
}

/// 64 H100 in servers of 8 on a slow network: two 100 GbE ports per server, 3.125 GB/s per device
/// (a quarter of the default 200 Gb/s InfiniBand per device), where the network is the wall.
fn slow_network() -> Cluster {
    Cluster::from_json(
        r#"{"gpu": "h100", "devices": 64, "devices_per_server": 8,
            "links": {"network": {"bytes_per_s": 3.125e9, "latency_s": 15e-6}}}"#,
        "test",
    )
    .unwrap()
}

fn run(cfg: &ParallelConfig, cluster: &Cluster) -> Estimate {
    ProfiledCostModel::new()
        .estimate(&profile(cfg.micro_batch_size as u64), cluster, cfg)
        .unwrap()
}

/// FSDP (ZeRO-3) over 64 H100 in servers of 8: dp 64, one sequence per device and step.
fn zero3(dp_shard: u32) -> ParallelConfig {
    ParallelConfig {
        dp: 64,
        micro_batch_size: 1,
        num_micro_batches: 1,
        recompute: Recompute::Full,
        distribute_param: true,
        distribute_low_prec_param: true,
        distribute_optimizer: true,
        stack: Stack::Fsdp,
        dp_shard,
        ..ParallelConfig::default()
    }
}

#[test]
fn hybrid_zero3_moves_the_gathers_inside_the_server_and_costs_memory() {
    let cluster = slow_network();
    let full = run(&zero3(0), &cluster);
    let hybrid = run(&zero3(8), &cluster);
    let (f, h) = (&full.breakdown, &hybrid.breakdown);
    eprintln!(
        "full: step {:.4} s, gather {:.4} s, dp {:.4} s, peak {:.2} GiB; hybrid 8: step {:.4} s, gather {:.4} s, dp {:.4} s, peak {:.2} GiB",
        full.step_time_s,
        f.zero3_gather_s,
        f.dp_comm_s,
        full.peak_memory_bytes as f64 / (1u64 << 30) as f64,
        hybrid.step_time_s,
        h.zero3_gather_s,
        h.dp_comm_s,
        hybrid.peak_memory_bytes as f64 / (1u64 << 30) as f64
    );
    // The gathers run over one server's NVLink instead of the network: several times faster.
    assert!(
        h.zero3_gather_s < 0.5 * f.zero3_gather_s,
        "{} vs {}",
        h.zero3_gather_s,
        f.zero3_gather_s
    );
    assert!(hybrid.step_time_s < full.step_time_s);
    // The sharded state is split 8 ways instead of 64: more memory.
    assert!(hybrid.peak_memory_bytes > full.peak_memory_bytes);
    // Exactly what full sharding over a dp of 8 holds per device.
    let p = profile(1);
    let eight = ParallelConfig {
        dp: 8,
        dp_shard: 0,
        ..zero3(0)
    };
    assert_eq!(
        static_bytes(&p, &zero3(8), 1e9),
        static_bytes(&p, &eight, 1e9)
    );
    assert_ne!(
        static_bytes(&p, &zero3(8), 1e9),
        static_bytes(&p, &zero3(0), 1e9)
    );
}

#[test]
fn dp_shard_equal_to_dp_is_full_sharding() {
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let a = run(&zero3(0), &cluster);
    let b = run(&zero3(64), &cluster);
    assert_eq!(a.step_time_s, b.step_time_s);
    assert_eq!(a.peak_memory_bytes, b.peak_memory_bytes);
}

#[test]
fn hybrid_zero1_shards_the_optimizer_per_instance_and_all_reduces_across() {
    // Megatron's distributed optimizer with 8 instances of 8 ranks (--num-distributed-optimizer-instances 8).
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let cfg = |dp_shard| ParallelConfig {
        dp: 64,
        micro_batch_size: 1,
        num_micro_batches: 4,
        recompute: Recompute::Full,
        distribute_optimizer: true,
        stack: Stack::Megatron,
        dp_shard,
        ..ParallelConfig::default()
    };
    let (full, hybrid) = (run(&cfg(0), &cluster), run(&cfg(8), &cluster));
    let p = profile(1);
    let (sf, sh) = (
        static_bytes(&p, &cfg(0), 1.0),
        static_bytes(&p, &cfg(8), 1.0),
    );
    // Optimizer state over 8 ranks instead of 64; weights and gradients unchanged.
    assert!((sh.optimizer - 8.0 * sf.optimizer).abs() < 1e-9);
    assert_eq!(sh.weights, sf.weights);
    assert_eq!(sh.grads, sf.grads);
    assert!(hybrid.peak_memory_bytes > full.peak_memory_bytes);
    // The reduce-scatter and gather stay in the server, the shard's all-reduce crosses it: the
    // traffic differs from full sharding and is positive.
    assert!(hybrid.breakdown.dp_comm_s > 0.0);
    assert_ne!(hybrid.breakdown.dp_comm_s, full.breakdown.dp_comm_s);
    // A larger optimizer shard per device takes longer to step.
    assert!(hybrid.breakdown.optimizer_s > full.breakdown.optimizer_s);
}

#[test]
fn bad_dp_shard_values_are_refused_in_one_line() {
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let cost = ProfiledCostModel::new();
    let p = profile(1);
    let e = cost
        .estimate(&p, &cluster, &zero3(3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dp_shard 3 does not divide dp 64"), "{e}");
    assert!(!e.contains('\n'));
    let replicated = ParallelConfig {
        distribute_param: false,
        distribute_low_prec_param: false,
        distribute_optimizer: false,
        stack: Stack::Megatron,
        ..zero3(8)
    };
    let e = cost
        .estimate(&p, &cluster, &replicated)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a sharded plan"), "{e}");
}

#[test]
fn bounds_hold_under_hybrid_sharding() {
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let cost = ProfiledCostModel::new();
    for s in [0, 2, 8, 16, 32] {
        for stack in [Stack::Fsdp, Stack::Deepspeed, Stack::Megatron] {
            let cfg = ParallelConfig { stack, ..zero3(s) };
            let p = profile(1);
            let e = cost.estimate(&p, &cluster, &cfg).unwrap();
            let b = cost.lower_bounds(&p, &cluster, &cfg).unwrap();
            assert!(b.step_time_s <= e.step_time_s, "{cfg:?}");
            assert!(b.peak_memory_bytes <= e.peak_memory_bytes as f64, "{cfg:?}");
        }
    }
}

#[test]
fn dp_shard_is_printed_only_when_set() {
    let j = serde_json::to_string(&zero3(0)).unwrap();
    assert!(!j.contains("dp_shard"), "{j}");
    let j = serde_json::to_value(zero3(8)).unwrap();
    assert_eq!(j["dp_shard"], 8);
    let back: ParallelConfig = serde_json::from_value(j).unwrap();
    assert_eq!(back, zero3(8));
}
