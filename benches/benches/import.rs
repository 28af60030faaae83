//! Import + shape inference + recognition of `models/llama2-13b.onnx` (6,440 ONNX nodes).
//! Target: under 150 ms on the 2-core development machine.

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::Path;

fn import_llama2_13b(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llama2-13b.onnx");
    let mut group = c.benchmark_group("import");
    group.sample_size(20);
    group.bench_function("llama2-13b", |b| {
        b.iter(|| {
            let imported = moai_ir::onnx::import(&path).expect("llama2-13b imports");
            std::hint::black_box(imported.graph.len())
        })
    });
    let primitive = moai_ir::onnx::ImportOptions { recognize: false };
    group.bench_function("llama2-13b-without-recognition", |b| {
        b.iter(|| {
            std::hint::black_box(
                moai_ir::onnx::import_with(&path, &primitive)
                    .expect("imports")
                    .graph
                    .len(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, import_llama2_13b);
criterion_main!(benches);
