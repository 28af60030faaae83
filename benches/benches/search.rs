//! Search throughput: the whole plan search for llama2-13b on 4xLarge.2048GB (batch 256, seq 1024),
//! reported as candidates per second, and cost evaluation alone over the same candidates.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moai_compiler::search::{NoProgress, search};
use moai_compiler::{Cluster, CostModel, Gpu, Model, PlanRequest, ProfiledCostModel};
use std::path::PathBuf;

fn bench_search(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let model = Model::load(&root.join("models/llama2-13b.onnx").display().to_string())
        .expect("llama2-13b imports");
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let req = PlanRequest::new(256, 1024);
    let cost = ProfiledCostModel::new();
    let first = search(&model, &cluster, &req, &cost, &NoProgress).expect("a plan");
    let n = first.evaluated.len() as u64;
    let mut g = c.benchmark_group("search");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("llama2-13b/4xLarge.2048GB/candidates", |b| {
        b.iter(|| search(&model, &cluster, &req, &cost, &NoProgress).expect("a plan"))
    });
    // Cost evaluation only, over the compiled candidates (profiles prepared once).
    let keys: Vec<_> = first
        .evaluated
        .iter()
        .map(|e| (e.config.micro_batch_size, e.config.recompute))
        .collect();
    let mut uniq = keys.clone();
    uniq.sort_by_key(|(m, r)| (*m, *r as u8));
    uniq.dedup();
    let profiles = moai_compiler::search::profiles_for(&model, &req, &uniq).unwrap();
    let configs: Vec<_> = first.evaluated.iter().map(|e| e.config.clone()).collect();
    g.throughput(Throughput::Elements(configs.len() as u64));
    g.bench_function("llama2-13b/4xLarge.2048GB/cost-only", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for cfg in &configs {
                let p = &profiles[&(cfg.micro_batch_size, cfg.recompute)];
                ok += cost.estimate(p, &cluster, cfg).is_ok() as usize;
            }
            ok
        })
    });
    g.finish();
}

criterion_group!(benches, bench_search);
criterion_main!(benches);
