//! Code generation: MLIR emission + lowering of a llama2-7b-sized decoder layer's forward and backward
//! programs for gfx90a (HSACO through ROCDL), and emission alone.
//!
//! The model is one decoder layer at llama2-7b width (hidden 4096, 32 heads, ffn 11008, vocab 32000;
//! embedding and LM head included), fp32, micro-batch 1, sequence 1024; the training graph is split by
//! phase into the forward and backward programs.

use criterion::{Criterion, criterion_group, criterion_main};
use moai_ir::cost::Phase;
use moai_ir::train::{PrecisionPolicy, TrainOptions, build_training_graph};
use moai_runtime::{
    AmdChip, Dims, KernelStyle, Target, Toolkit, compile_program, emit_program, split_graph,
};

fn programs() -> Vec<moai_ir::Graph> {
    let fwd = moai_models::ArchConfig::from_spec(
        "llama:layers=1,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000,eps=1e-5,dtype=f32",
    )
    .and_then(|c| c.build())
    .expect("the model builds");
    let tg = build_training_graph(
        &fwd,
        &TrainOptions {
            precision: PrecisionPolicy::Fp32,
            ..Default::default()
        },
    )
    .expect("training graph");
    let part = |id| match tg.meta(id).phase {
        Phase::Forward => 0,
        Phase::Backward | Phase::Recompute => 1,
        Phase::Optimizer => 2,
    };
    let mut parts = split_graph(&tg.graph, 3, &part).expect("split");
    parts.truncate(2);
    parts
}

fn bench(c: &mut Criterion) {
    let parts = programs();
    let dims: Dims = [("batch".to_string(), 1), ("seq".to_string(), 1024)].into();
    let target = Target::Rocdl {
        chip: AmdChip::Gfx90a,
    };
    let tk = Toolkit::temporary(None).expect("ld.lld of LLVM 22");
    let mut g = c.benchmark_group("codegen_llama7b_layer");
    g.sample_size(10);
    for (p, name) in parts.iter().zip(["forward", "backward"]) {
        g.bench_function(format!("emit_{name}"), |b| {
            b.iter(|| emit_program(p, &dims, name, KernelStyle::GpuTiled).expect("emits"))
        });
        g.bench_function(format!("emit_lower_gfx90a_{name}"), |b| {
            b.iter(|| compile_program(p, &dims, name, target, Some(&tk)).expect("lowers"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
