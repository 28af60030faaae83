//! Search throughput: the whole plan search for llama2-13b on 4xLarge.2048GB (batch 256, seq 1024),
//! reported as candidates per second, and cost evaluation alone over the same candidates; and the whole
//! search for Llama-3.1-405B (Hugging Face config) on 1,024 H100 at sequence 8192, batch 2048, with
//! pruning by bounds (the default) and without.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moai_compiler::search::{NoProgress, Pruning, search, search_with};
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

fn bench_search_405b(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let model = Model::load(
        &root
            .join("models/configs/llama3.1-405b/config.json")
            .display()
            .to_string(),
    )
    .expect("the Llama-3.1-405B config builds");
    let cluster = Cluster::new(Gpu::H100, 1024).unwrap();
    let req = PlanRequest::new(2048, 8192);
    let cost = ProfiledCostModel::new();
    let first = search(&model, &cluster, &req, &cost, &NoProgress).expect("a plan");
    let mut g = c.benchmark_group("search-405b");
    g.sample_size(10);
    g.throughput(Throughput::Elements(first.evaluated.len() as u64));
    g.bench_function("llama3.1-405b/1024xH100/pruned", |b| {
        b.iter(|| search(&model, &cluster, &req, &cost, &NoProgress).expect("a plan"))
    });
    g.bench_function("llama3.1-405b/1024xH100/exhaustive", |b| {
        b.iter(|| {
            search_with(&model, &cluster, &req, &cost, &NoProgress, Pruning::Off).expect("a plan")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_search, bench_search_405b);
criterion_main!(benches);
