//! The training graph: gradient checks, optimizer steps, FLOPs, static and peak memory.

use moai_ir::cost::{BlockKind, Phase};
use moai_ir::interp::{Interpreter, Precision};
use moai_ir::train::fixture::{LlamaConfig, llama};
use moai_ir::train::{
    Hyper, OptimizerKind, PrecisionPolicy, RecomputePolicy, TrainOptions, TrainingGraph,
    build_training_graph, build_training_graph_with, peak_memory, step_costs, step_profile,
};
use moai_ir::{Graph, Op, Tensor, Value};
use std::collections::HashMap;
use std::path::PathBuf;

fn models() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

fn import(name: &str) -> Graph {
    moai_ir::onnx::import(&models().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .graph
}

fn opts(p: PrecisionPolicy, o: OptimizerKind, r: RecomputePolicy) -> TrainOptions {
    TrainOptions {
        precision: p,
        optimizer: o,
        recompute: r,
    }
}

fn fp32() -> TrainOptions {
    opts(
        PrecisionPolicy::Fp32,
        OptimizerKind::AdamW,
        RecomputePolicy::None,
    )
}

fn token_ids(b: usize, s: usize, vocab: i64) -> Tensor {
    Tensor::i64(
        vec![b, s],
        (0..(b * s) as i64)
            .map(|i| (i * 131 + 17) % vocab)
            .collect(),
    )
}

fn param_value(g: &Graph, id: moai_ir::NodeId) -> Tensor {
    match &g.node(id).op {
        Op::Param {
            data: moai_ir::ParamData::Inline(t),
            ..
        } => t.clone(),
        _ => panic!("inline parameter expected"),
    }
}

/// Runs the step in f64 and returns every output by name.
fn run64(
    tg: &TrainingGraph,
    ids: &Tensor,
    overrides: &[(String, Tensor)],
) -> HashMap<String, Tensor> {
    let mut it = Interpreter::new(&tg.graph).precision(Precision::F64);
    for (n, t) in overrides {
        it.set_param(n.clone(), t.clone());
    }
    it.run(&[("input_ids", ids.clone())])
        .unwrap()
        .into_iter()
        .collect()
}

fn loss64(tg: &TrainingGraph, ids: &Tensor, name: &str, value: Tensor) -> f64 {
    let it = Interpreter::new(&tg.graph)
        .precision(Precision::F64)
        .with_param(name, value);
    it.run_values(&[("input_ids", ids.clone())], &[tg.loss])
        .unwrap()[0]
        .to_f64_vec()[0]
}

/// Central finite differences on sampled elements of every parameter tensor.
fn gradient_check(forward: &Graph, o: TrainOptions, ids: &Tensor) -> f64 {
    let tg = build_training_graph(forward, &o).unwrap();
    let out = run64(&tg, ids, &[]);
    let mut worst: f64 = 0.0;
    for p in &tg.params {
        let grad = out[&format!("grad:{}", p.name)].to_f64_vec();
        let base = param_value(&tg.graph, p.node);
        let n = base.numel();
        let biggest = (0..n)
            .max_by(|a, b| grad[*a].abs().total_cmp(&grad[*b].abs()))
            .unwrap_or(0);
        for &i in &[0, n / 3, (2 * n) / 3 + 1, biggest] {
            let i = i.min(n - 1);
            let h = 1e-5;
            let mut vals = base.to_f64_vec();
            vals[i] += h;
            let up = loss64(
                &tg,
                ids,
                &p.name,
                Tensor::f64(base.shape.clone(), vals.clone()),
            );
            vals[i] -= 2.0 * h;
            let down = loss64(&tg, ids, &p.name, Tensor::f64(base.shape.clone(), vals));
            let fd = (up - down) / (2.0 * h);
            let an = grad[i];
            // Relative to the element, with a floor at the tensor's gradient scale.
            let scale = fd
                .abs()
                .max(an.abs())
                .max(1e-3 * grad[biggest].abs())
                .max(1e-9);
            let e = (fd - an).abs() / scale;
            assert!(
                e < 1e-3,
                "{} [{i}]: finite difference {fd:.9e} vs backward {an:.9e} (rel {e:.2e})",
                p.name
            );
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn gradient_check_fixture_llama_every_parameter() {
    let g = llama(&LlamaConfig::tiny());
    let ids = token_ids(2, 7, 512);
    let w = gradient_check(&g, fp32(), &ids);
    println!("fixture tiny llama: worst relative gradient error {w:.2e}");
}

#[test]
fn gradient_check_tiny_llama_onnx_every_parameter() {
    let g = import("tiny-llama.onnx");
    let ids = token_ids(1, 9, 512);
    let w = gradient_check(&g, fp32(), &ids);
    println!("tiny-llama.onnx: worst relative gradient error {w:.2e}");
}

#[test]
fn recomputation_does_not_change_gradients() {
    let g = llama(&LlamaConfig::tiny());
    let ids = token_ids(1, 6, 512);
    let base = run64(&build_training_graph(&g, &fp32()).unwrap(), &ids, &[]);
    for r in [RecomputePolicy::Selective, RecomputePolicy::Full] {
        let tg = build_training_graph(&g, &opts(PrecisionPolicy::Fp32, OptimizerKind::AdamW, r))
            .unwrap();
        assert!(
            tg.count_by_phase()
                .get(&Phase::Recompute)
                .copied()
                .unwrap_or(0)
                > 0,
            "{r}: no recomputed nodes"
        );
        let out = run64(&tg, &ids, &[]);
        for p in &tg.params {
            let k = format!("grad:{}", p.name);
            let (a, b) = (out[&k].to_f64_vec(), base[&k].to_f64_vec());
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-12, "{r}: {k} differs by {d}");
        }
    }
}

#[test]
fn adamw_step_matches_the_update_written_by_hand() {
    let g = llama(&LlamaConfig::tiny());
    let ids = token_ids(1, 5, 512);
    let hyper = Hyper {
        lr: 1e-2,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
        momentum: 0.0,
        step: 1,
    };
    let tg = build_training_graph_with(&g, &fp32(), &hyper).unwrap();
    // Start from non-zero moments to exercise every term.
    let p = &tg.params[3];
    let n = param_value(&tg.graph, p.node).numel();
    let shape = param_value(&tg.graph, p.node).shape;
    let m0: Vec<f64> = (0..n).map(|i| ((i % 7) as f64 - 3.0) * 1e-3).collect();
    let v0: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 1e-5).collect();
    let ov = vec![
        (
            format!("{}.exp_avg", p.name),
            Tensor::f64(shape.clone(), m0.clone()),
        ),
        (
            format!("{}.exp_avg_sq", p.name),
            Tensor::f64(shape.clone(), v0.clone()),
        ),
    ];
    let out = run64(&tg, &ids, &ov);
    let w = param_value(&tg.graph, p.node).to_f64_vec();
    let gr = out[&format!("grad:{}", p.name)].to_f64_vec();
    let (new_w, new_m, new_v) = (
        out[&p.name].to_f64_vec(),
        out[&format!("{}.exp_avg", p.name)].to_f64_vec(),
        out[&format!("{}.exp_avg_sq", p.name)].to_f64_vec(),
    );
    for i in 0..n {
        let m = 0.8 * m0[i] + 0.2 * gr[i];
        let v = 0.95 * v0[i] + 0.05 * gr[i] * gr[i];
        let mhat = m / (1.0 - 0.8);
        let vhat = v / (1.0 - 0.95);
        let want = w[i] * (1.0 - 1e-2 * 0.1) - 1e-2 * mhat / (vhat.sqrt() + 1e-6);
        assert!((new_m[i] - m).abs() < 1e-15 && (new_v[i] - v).abs() < 1e-15);
        assert!(
            (new_w[i] - want).abs() < 1e-12,
            "{}[{i}]: {} vs {want}",
            p.name,
            new_w[i]
        );
    }
    // SGD with momentum, zero buffer: buf = g + wd·w, w' = w − lr·buf.
    let sgd = build_training_graph_with(
        &g,
        &opts(
            PrecisionPolicy::Fp32,
            OptimizerKind::Sgd,
            RecomputePolicy::None,
        ),
        &hyper,
    )
    .unwrap();
    let out = run64(&sgd, &ids, &[]);
    let p = &sgd.params[0];
    let w = param_value(&sgd.graph, p.node).to_f64_vec();
    let gr = out[&format!("grad:{}", p.name)].to_f64_vec();
    let nw = out[&p.name].to_f64_vec();
    for i in (0..w.len()).step_by(97) {
        let buf = gr[i] + 0.1 * w[i];
        assert!((nw[i] - (w[i] - 1e-2 * buf)).abs() < 1e-12);
    }
}

#[test]
fn precision_policies_place_casts_and_dtypes() {
    let g = llama(&LlamaConfig::tiny());
    let amp = build_training_graph(&g, &TrainOptions::default()).unwrap();
    let casts = amp
        .schedule
        .iter()
        .filter(|id| matches!(amp.graph.node(**id).op, Op::Cast(_)))
        .count();
    assert!(casts > 0);
    for p in &amp.params {
        assert_eq!(
            amp.graph.ty(Value::of(p.node)).dtype,
            moai_ir::DType::F32,
            "{}",
            p.name
        );
        assert_eq!(
            amp.graph.ty(p.grad).dtype,
            moai_ir::DType::F32,
            "{}",
            p.name
        );
    }
    let linear_out = amp
        .schedule
        .iter()
        .find(|id| matches!(amp.graph.node(**id).op, Op::Linear { .. }))
        .unwrap();
    assert_eq!(
        amp.graph.ty(Value::of(*linear_out)).dtype,
        moai_ir::DType::BF16
    );
    let bf = build_training_graph(
        &g,
        &opts(
            PrecisionPolicy::Bf16,
            OptimizerKind::AdamW,
            RecomputePolicy::None,
        ),
    )
    .unwrap();
    for p in &bf.params {
        assert_eq!(bf.graph.ty(Value::of(p.node)).dtype, moai_ir::DType::BF16);
        for s in &p.state {
            assert_eq!(bf.graph.ty(Value::of(*s)).dtype, moai_ir::DType::F32);
        }
    }
    // The amp-bf16 step still runs and gives a finite loss close to the fp32 one.
    let ids = token_ids(1, 6, 512);
    let l32 = Interpreter::new(&build_training_graph(&g, &fp32()).unwrap().graph)
        .run(&[("input_ids", ids.clone())])
        .unwrap()[0]
        .1
        .to_f64_vec()[0];
    let lamp = Interpreter::new(&amp.graph)
        .run(&[("input_ids", ids)])
        .unwrap()[0]
        .1
        .to_f64_vec()[0];
    assert!(
        (l32 - lamp).abs() < 0.05 * l32.abs(),
        "fp32 loss {l32} vs amp-bf16 {lamp}"
    );
}
