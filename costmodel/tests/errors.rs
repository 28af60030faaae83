//! Every bad input gives one clear line.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::{
    Cluster, CostModel, Gpu, ParallelConfig, ProfiledCostModel, Recompute, micro_batches_for,
};

fn tiny() -> moai_ir::cost::StepProfile {
    let spec =
        parse_spec("llama:layers=4,hidden=256,heads=8,kv_heads=4,ffn=768,vocab=1000").unwrap();
    step_profile(&spec, 2, 128, Recompute::None, "amp-bf16")
}

fn err(cluster: &Cluster, cfg: ParallelConfig) -> String {
    let e = ProfiledCostModel::new()
        .estimate(&tiny(), cluster, &cfg)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn unknown_gpu_and_flavor() {
    assert_eq!(
        "v100".parse::<Gpu>().unwrap_err().to_string(),
        "unknown GPU kind `v100` (expected one of mi250, mi210, mi300x, h100, a100, h200, b200, mi325x, mi355x, mi250x, h100-hbm2e)"
    );
    let e = Cluster::from_flavor("4xlarge", Gpu::Mi250)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("unknown flavor `4xlarge` (did you mean `"),
        "{e}"
    );
    let e = Cluster::from_flavor("Medium.128GB", Gpu::Mi300x)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no whole-device mapping on mi300x: it would be 1/2 of a device"),
        "{e}"
    );
}

#[test]
fn devices_not_divisible() {
    let c = Cluster::new(Gpu::H100, 8).unwrap();
    let e = err(
        &c,
        ParallelConfig {
            dp: 3,
            micro_batch_size: 2,
            ..Default::default()
        },
    );
    assert_eq!(
        e,
        "invalid configuration: 8 devices are not divisible by dp·tp·pp = 3·1·1 = 3"
    );
}

#[test]
fn micro_batch_not_dividing_batch() {
    let e = micro_batches_for(10, 4, 1).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid configuration: micro-batch size 1 × dp 4 = 4 does not divide the batch size 10"
    );
    let c = Cluster::new(Gpu::H100, 1).unwrap();
    let e = err(
        &c,
        ParallelConfig {
            micro_batch_size: 4,
            ..Default::default()
        },
    );
    assert!(
        e.contains("micro_batch_size 4 differs from the step profile's micro-batch 2"),
        "{e}"
    );
}

#[test]
fn tp_not_dividing_heads() {
    let c = Cluster::new(Gpu::H100, 3).unwrap();
    let e = err(
        &c,
        ParallelConfig {
            tp: 3,
            micro_batch_size: 2,
            ..Default::default()
        },
    );
    assert_eq!(
        e,
        "invalid configuration: tp 3 does not divide the 256 output features of self_attn.q_proj"
    );
    let c = Cluster::new(Gpu::H100, 16).unwrap();
    let spec =
        parse_spec("llama:layers=4,hidden=240,heads=6,kv_heads=6,ffn=768,vocab=1000").unwrap();
    let p = step_profile(&spec, 2, 128, Recompute::None, "amp-bf16");
    let cfg = ParallelConfig {
        tp: 4,
        dp: 4,
        micro_batch_size: 2,
        ..Default::default()
    };
    let e = ProfiledCostModel::new()
        .estimate(&p, &c, &cfg)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid configuration: tp 4 does not divide the 6 attention heads (self_attn.core)"
    );
}

#[test]
fn tp_crossing_a_server() {
    let c = Cluster::new(Gpu::Mi250, 32).unwrap();
    let e = err(
        &c,
        ParallelConfig {
            tp: 16,
            dp: 2,
            micro_batch_size: 2,
            ..Default::default()
        },
    );
    assert_eq!(
        e,
        "invalid configuration: tp 16 crosses a server (8 devices per server); tensor parallelism must stay inside one"
    );
}

#[test]
fn bad_stages_and_recompute() {
    let c = Cluster::new(Gpu::H100, 2).unwrap();
    let e = err(
        &c,
        ParallelConfig {
            pp: 2,
            micro_batch_size: 2,
            stages: vec![(0, 1), (3, 3)],
            ..Default::default()
        },
    );
    assert!(e.contains("stage 1 covers layers [3, 3]"), "{e}");
    let e = err(
        &c,
        ParallelConfig {
            pp: 2,
            micro_batch_size: 2,
            stages: vec![(0, 1), (2, 2)],
            ..Default::default()
        },
    );
    assert!(
        e.contains("stages end at layer 2 but the model has 4 layers"),
        "{e}"
    );
    let e = err(
        &c,
        ParallelConfig {
            dp: 2,
            micro_batch_size: 2,
            recompute: Recompute::Full,
            ..Default::default()
        },
    );
    assert!(
        e.contains("recompute is full but the step profile holds no recomputed ops"),
        "{e}"
    );
    let e = err(
        &c,
        ParallelConfig {
            pp: 2,
            micro_batch_size: 2,
            num_micro_batches: 3,
            schedule: "interleaved:2".parse().unwrap(),
            ..Default::default()
        },
    );
    assert!(e.contains("multiple of pp 2"), "{e}");
}

#[test]
fn bad_cluster_file() {
    let e = Cluster::from_json("{\"gpu\": \"h100\"}", "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cluster file c.json: missing field `devices`"),
        "{e}"
    );
}
