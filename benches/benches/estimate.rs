//! Cost evaluation of one configuration (`CostModel::estimate`) after import: the target is < 50 µs.
//!
//! The step profile is built once (outside the timed loop) from a model spec with the training
//! graph's `step_profile`; the loop times the estimator alone, as the search calls it.

use criterion::{Criterion, criterion_group, criterion_main};
use moai_costmodel::{Cluster, CostModel, Gpu, ParallelConfig, ProfiledCostModel};
use moai_ir::train::{TrainOptions, step_profile};
use std::hint::black_box;

fn bench_estimate(c: &mut Criterion) {
    let graph = moai_models::from_spec(
        "llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000",
    )
    .expect("llama-7b spec");
    let profile = step_profile(&graph, &TrainOptions::default(), 1, 2048).expect("step profile");
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).expect("flavor");
    let model = ProfiledCostModel::new();
    let mut group = c.benchmark_group("estimate");
    let dp4_tp2_pp4 = ParallelConfig {
        dp: 4,
        tp: 2,
        pp: 4,
        micro_batch_size: 1,
        num_micro_batches: 16,
        ..Default::default()
    };
    let configs = [
        (
            "llama7b_dp32",
            ParallelConfig {
                dp: 32,
                micro_batch_size: 1,
                num_micro_batches: 8,
                ..Default::default()
            },
        ),
        (
            "llama7b_dp16_pp2_m16_zero3",
            ParallelConfig {
                dp: 16,
                pp: 2,
                micro_batch_size: 1,
                num_micro_batches: 16,
                distribute_param: true,
                ..Default::default()
            },
        ),
        ("llama7b_dp4_tp2_pp4_m16", dp4_tp2_pp4.clone()),
        (
            "llama7b_dp4_tp2_pp4_m16_interleaved4",
            ParallelConfig {
                schedule: moai_costmodel::Schedule::Interleaved(4),
                ..dp4_tp2_pp4
            },
        ),
    ];
    for (name, cfg) in &configs {
        // Warm the per-(profile, tp) cache once, as the search does on its first candidate.
        model.estimate(&profile, &cluster, cfg).expect("estimate");
        group.bench_function(*name, |b| {
            b.iter(|| {
                model
                    .estimate(black_box(&profile), black_box(&cluster), black_box(cfg))
                    .expect("estimate")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_estimate);
criterion_main!(benches);
