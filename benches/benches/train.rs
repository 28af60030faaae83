//! Training-graph construction for llama2-13b (40 layers): the full training graph (forward, backward,
//! optimizer) and the fast per-block step profile the planner calls per candidate, on bf16 weight
//! copies as the export engines run the step.

use criterion::{Criterion, criterion_group, criterion_main};
use moai_costmodel::Stack;
use moai_ir::train::{
    OptimizerKind, PrecisionPolicy, RecomputePolicy, TrainOptions, build_training_graph,
    peak_memory, step_profile,
};
use std::hint::black_box;
use std::path::PathBuf;

fn model() -> moai_ir::Graph {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/llama2-13b.onnx"
    ));
    moai_ir::onnx::import(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .graph
}

fn bench(c: &mut Criterion) {
    let g = model();
    // As the export engines run the step (bf16 weight copies), the options the planner builds.
    let amp = Stack::default().train_options(
        PrecisionPolicy::AmpBf16,
        OptimizerKind::AdamW,
        RecomputePolicy::None,
    );
    let full = TrainOptions {
        recompute: RecomputePolicy::Full,
        ..amp
    };
    c.bench_function("train/build_training_graph llama2-13b amp-bf16", |b| {
        b.iter(|| black_box(build_training_graph(&g, &amp).unwrap()))
    });
    c.bench_function(
        "train/build_training_graph llama2-13b full recompute",
        |b| b.iter(|| black_box(build_training_graph(&g, &full).unwrap())),
    );
    let tg = build_training_graph(&g, &amp).unwrap();
    c.bench_function("train/peak_memory llama2-13b mb1 s4096", |b| {
        b.iter(|| black_box(peak_memory(&tg, 1, 4096).unwrap()))
    });
    c.bench_function("train/step_profile llama2-13b mb1 s4096", |b| {
        b.iter(|| black_box(step_profile(&g, &amp, 1, 4096).unwrap()))
    });
    c.bench_function("train/step_profile llama2-13b mb4 s4096 full", |b| {
        b.iter(|| black_box(step_profile(&g, &full, 4, 4096).unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
