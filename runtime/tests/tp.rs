//! Tensor and pipeline parallelism on the CPU: tiny-llama's training step as a 2-stage, tp=2 plan, run
//! stage by stage with both ranks as threads whose emitted code calls the in-process all-reduce; and the
//! errors of the sharding transform.

use crate::support::*;
use crate::train::{ids, initial_values};
use moai_ir::train::{PrecisionPolicy, TrainOptions, build_training_graph};
use moai_ir::{CollectiveKind, DType, Graph, Op, Tensor};
use moai_runtime::shard::concat_tensors;
use moai_runtime::{
    Dims, EmittedModule, Executor, KernelStyle, ProgramKind, StageLayout, StageProgram,
    emit_program, run_step, shard_tensor_parallel, stage_programs, step_order,
};
use std::collections::HashMap;

/// Rank `r`'s modules for every part of the step, in [`step_order`].
fn rank_modules(
    fwd: &Graph,
    opts: &TrainOptions,
    layout: &StageLayout,
    dims: &Dims,
    tp: u32,
    r: u32,
) -> (
    Vec<EmittedModule>,
    Vec<StageProgram>,
    HashMap<String, Tensor>,
) {
    let shard = shard_tensor_parallel(fwd, tp, r).unwrap_or_else(|e| panic!("{e}"));
    let tg = build_training_graph(&shard, opts).unwrap_or_else(|e| panic!("{e}"));
    let stages = stage_programs(&tg, layout, dims).unwrap_or_else(|e| panic!("{e}"));
    let modules = step_order(layout.stages())
        .iter()
        .map(|(s, k)| {
            let p = stages[*s as usize]
                .programs
                .iter()
                .find(|p| p.kind == *k)
                .expect("every stage has all three programs");
            let name = format!("rank{r}_stage{s}_{}", k.name());
            emit_program(&p.graph, dims, &name, KernelStyle::Linalg)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect();
    (modules, stages, initial_values(&tg.graph))
}

fn count_collectives(g: &Graph, kind: CollectiveKind) -> usize {
    g.node_ids()
        .filter(|id| matches!(g.node(*id).op, Op::Collective { kind: k, .. } if k == kind))
        .count()
}

fn has_param(g: &Graph, name: &str) -> bool {
    g.node_ids()
        .any(|id| matches!(&g.node(id).op, Op::Param { name: n, .. } if n == name))
}

/// The whole tensor from the ranks' pieces: equal shapes are replicated (rank 0's), otherwise the pieces
/// are concatenated along the one axis where they differ from the reference.
fn gather(pieces: &[&Tensor], want: &Tensor) -> Tensor {
    if pieces[0].shape == want.shape {
        return pieces[0].clone();
    }
    let axis = (0..want.shape.len())
        .find(|a| pieces[0].shape[*a] != want.shape[*a])
        .expect("a split axis");
    let owned: Vec<Tensor> = pieces.iter().map(|t| (*t).clone()).collect();
    concat_tensors(&owned, axis)
}

/// One training step of tiny-llama (forward, backward, AdamW) as a plan with 2 pipeline stages and
/// tensor parallelism 2: each rank's forward graph is sharded, built into its training step, cut into
/// the stages' programs, emitted to MLIR and JIT-compiled; parts run in pipeline order with both ranks
/// on threads and the all-reduces done by the CPU executor. Compared with the unsharded step on the
/// reference interpreter, the same criterion as the single-device test (`train.rs`).
#[test]
fn two_stage_tp2_training_step_matches_reference() {
    two_stage_tp2_step(PrecisionPolicy::Fp32);
}

/// The same plan under bf16 mixed precision (bf16 activations are all-reduced in f32).
#[test]
fn two_stage_tp2_amp_bf16_training_step_matches_reference() {
    two_stage_tp2_step(PrecisionPolicy::AmpBf16);
}

fn two_stage_tp2_step(precision: PrecisionPolicy) {
    let cfg = tiny_llama_arch();
    let fwd = tiny_llama();
    let opts = TrainOptions {
        precision,
        ..Default::default()
    };
    let full = build_training_graph(&fwd, &opts).expect("training graph");
    let dims: Dims = [("batch".to_string(), 2), ("seq".to_string(), 8)].into();
    let input = ids(2, 8, cfg.vocab, 11);
    let want = reference(&full.graph, &[("input_ids", input.clone())]);
    let exact = reference_at(
        &full.graph,
        &[("input_ids", input.clone())],
        moai_ir::interp::Precision::F64,
    );

    let layout = StageLayout::even(cfg.layers as u32, 2).expect("layout");
    let tp = 2;
    let mut programs = Vec::new();
    let mut values = Vec::new();
    for r in 0..tp {
        let (mods, stages, mut vals) = rank_modules(&fwd, &opts, &layout, &dims, tp, r);
        // what went where: the embedding on stage 0, the head on stage 1; one decoder layer per stage
        // with Megatron's two all-reduces forward and two backward
        let graph = |s: usize, k: ProgramKind| {
            &stages[s]
                .programs
                .iter()
                .find(|p| p.kind == k)
                .expect("program")
                .graph
        };
        assert!(has_param(
            graph(0, ProgramKind::Forward),
            "model.embed_tokens.weight"
        ));
        assert!(!has_param(graph(0, ProgramKind::Forward), "lm_head.weight"));
        assert!(has_param(graph(1, ProgramKind::Forward), "lm_head.weight"));
        assert!(has_param(
            graph(1, ProgramKind::Forward),
            "model.layers.1.mlp.down_proj.weight"
        ));
        assert!(!has_param(
            graph(0, ProgramKind::Forward),
            "model.layers.1.mlp.down_proj.weight"
        ));
        for s in 0..2 {
            for k in [ProgramKind::Forward, ProgramKind::Backward] {
                assert_eq!(
                    count_collectives(graph(s, k), CollectiveKind::AllReduce),
                    2,
                    "stage {s} {k:?}"
                );
            }
        }
        for m in &mods[..4] {
            assert!(
                m.calls.contains(&"moai_allreduce_f32".to_string()),
                "{} calls no all-reduce",
                m.func_name
            );
        }
        vals.insert("input_ids".into(), input.clone());
        programs.push(mods);
        values.push(vals);
    }
    run_step(&programs, &mut values).unwrap_or_else(|e| panic!("{e}"));

    let split = full
        .graph
        .outputs
        .iter()
        .zip(&want)
        .filter(|((name, _), w)| values[0][name].shape != w.shape)
        .count();
    let got = |name: &str| {
        let pieces: Vec<&Tensor> = values
            .iter()
            .map(|v| v.get(name).unwrap_or_else(|| panic!("no output {name}")))
            .collect();
        let at = full.graph.outputs.iter().position(|(n, _)| n == name);
        gather(&pieces, &want[at.expect("a graph output")])
    };
    if precision != PrecisionPolicy::Fp32 {
        // bf16 rounding (same criterion as train::tiny_llama_amp_bf16_training_step_matches_reference)
        let loss = norm_rel(&got("loss"), &want[0]);
        assert!(loss <= 1e-2, "loss: relative error {loss:e}");
        let mut worst = 0.0f64;
        for ((name, _), w) in full.graph.outputs.iter().zip(&want) {
            let e = norm_rel(&got(name), w);
            let tolerance = if name.ends_with(".exp_avg_sq") {
                2.0 * crate::support::BF16_STEP_TOLERANCE
            } else {
                crate::support::BF16_STEP_TOLERANCE
            };
            assert!(e <= tolerance, "`{name}`: normwise relative error {e:e}");
            worst = worst.max(e);
        }
        eprintln!(
            "tiny-llama 2-stage tp=2 {precision} step: loss {loss:.2e}, worst normwise {worst:.2e}"
        );
        return;
    }
    let (checked, worst, worst_el) = check_step_outputs(&full.graph, &want, &exact, &got);
    assert!(
        split >= 7 * cfg.layers * 4,
        "only {split} outputs were split across ranks"
    );
    assert!(
        checked > 3 * cfg.layers * 9,
        "only {checked} outputs checked"
    );
    eprintln!(
        "tiny-llama 2-stage tp=2 step: {checked} outputs ({split} split); normwise vs f32 reference <= {worst:.2e}; elementwise vs f64 <= {worst_el:.2e}"
    );
}

#[test]
fn sharding_errors_name_the_layer() {
    let cfg = tiny_llama_arch(); // 4 heads, 2 key/value heads
    let fwd = tiny_llama();
    let e = shard_tensor_parallel(&fwd, 4, 0).unwrap_err().to_string();
    assert!(
        e.contains("self_attn") && e.contains("tensor-parallel degree 4"),
        "{e}"
    );
    let e = shard_tensor_parallel(&fwd, 2, 2).unwrap_err().to_string();
    assert!(e.contains("rank 2"), "{e}");
    assert!(StageLayout::even(cfg.layers as u32, 3).is_err());
}

#[test]
fn allreduce_without_a_group_is_an_error() {
    let mut b = B::new("lonely");
    let x = b.input("x", DType::F32, &[2]);
    let y = b.op1(
        Op::Collective {
            kind: CollectiveKind::AllReduce,
            group_size: 2,
            axis: None,
        },
        &[x],
        DType::F32,
        &[2],
    );
    b.out("y", y);
    let m = emit_program(&b.g, &Dims::new(), "lonely", KernelStyle::Linalg).expect("emits");
    let e = Executor::run(
        &mut moai_runtime::CpuExecutor::new(),
        &m,
        &[Tensor::f32(vec![2], vec![1.0, 2.0])],
    )
    .unwrap_err();
    assert!(e.to_string().contains("group of 2"), "{e}");
}

/// The sharding transform on a real ONNX export: tiny-llama.onnx's linear weights are folded constants
/// with names like `val_92` (classed by their module instead) behind transposes. The forward pass of both
/// ranks, run as threads with in-process all-reduces, gives the unsharded graph's logits.
#[test]
fn onnx_tiny_llama_forward_under_tp2_matches_reference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-llama.onnx");
    let g = moai_ir::onnx::import(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .graph;
    let dims: Dims = [("batch".to_string(), 2), ("seq".to_string(), 16)].into();
    let input = ids(2, 16, 512, 7);
    let want = reference(&g, &[("input_ids", input.clone())]);
    let mut mods = Vec::new();
    for r in 0..2 {
        let shard = shard_tensor_parallel(&g, 2, r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            count_collectives(&shard, CollectiveKind::AllReduce),
            2 * 2,
            "two all-reduces per layer"
        );
        let m = emit_program(&shard, &dims, &format!("rank{r}"), KernelStyle::Linalg)
            .unwrap_or_else(|e| panic!("{e}"));
        let args = args_for(&shard, &[("input_ids", input.clone())]);
        mods.push((m, args));
    }
    let refs: Vec<_> = mods.iter().map(|(m, a)| (m, a.clone())).collect();
    let outs = moai_runtime::run_ranks(&refs).unwrap_or_else(|e| panic!("{e}"));
    for (r, o) in outs.iter().enumerate() {
        // f32 partial sums in another order: normwise tight, elementwise within summation noise
        let (n, e) = (norm_rel(&o[0], &want[0]), max_rel(&o[0], &want[0]));
        assert!(n <= 1e-5, "rank {r}: logits normwise relative error {n:e}");
        assert!(e <= 1e-3, "rank {r}: logits max relative error {e:e}");
    }
}

/// A model whose linear layers name no known projection is refused under tp > 1, not replicated.
#[test]
fn nothing_to_split_is_an_error() {
    let mut b = B::new("anon");
    let x = b.input("x", DType::F32, &[4, 8]);
    let w = b.param("mixer.weight", &[8, 8], 0.5);
    let y = b.op1(Op::Linear { bias: false }, &[x, w], DType::F32, &[4, 8]);
    b.out("y", y);
    let e = shard_tensor_parallel(&b.g, 2, 0).unwrap_err().to_string();
    assert!(e.contains("no linear layer could be split"), "{e}");
    assert!(
        shard_tensor_parallel(&b.g, 1, 0).is_ok(),
        "tp = 1 needs no split"
    );
}
