//! The training graph: gradient checks, optimizer steps, FLOPs, static and peak memory.

use crate::support::{planning_llama, tiny_llama};
use moai_ir::cost::{BlockKind, Phase};
use moai_ir::interp::{Interpreter, Precision};
use moai_ir::train::{
    Hyper, OptimizerKind, PrecisionPolicy, RecomputePolicy, TrainOptions, TrainingGraph,
    build_engine_training_graph, build_training_graph, build_training_graph_with, peak_memory,
    step_costs, step_profile,
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
        bf16_weight_copies: false,
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
fn gradient_check_built_llama_every_parameter() {
    let g = tiny_llama();
    let ids = token_ids(2, 7, 512);
    let w = gradient_check(&g, fp32(), &ids);
    println!("built tiny llama: worst relative gradient error {w:.2e}");
    // amp-bf16 (eager fp32 RMSNorm, casts; casts do not round in f64) and recomputation give the same gradients.
    let w = gradient_check(
        &g,
        opts(
            PrecisionPolicy::AmpBf16,
            OptimizerKind::AdamW,
            RecomputePolicy::Full,
        ),
        &ids,
    );
    println!("built tiny llama, amp-bf16 + full recompute: worst relative gradient error {w:.2e}");
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
    let g = tiny_llama();
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
    let g = tiny_llama();
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
    let g = tiny_llama();
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

struct Cfg {
    layers: u64,
    hidden: u64,
    vocab: u64,
    params: u64,
}

fn manifest(name: &str) -> Cfg {
    let text = std::fs::read_to_string(models().join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let m = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap();
    let c = &m["config"];
    Cfg {
        layers: c["num_hidden_layers"].as_u64().unwrap(),
        hidden: c["hidden_size"].as_u64().unwrap(),
        vocab: c["vocab_size"].as_u64().unwrap(),
        params: m["torch_params"].as_u64().unwrap(),
    }
}

fn phase_flops(costs: &[moai_ir::cost::OpCost], phase: Phase, decoder_only: bool) -> f64 {
    costs
        .iter()
        .filter(|c| c.phase == phase && (!decoder_only || c.layer.is_some()))
        .map(|c| c.flops)
        .sum()
}

#[test]
fn training_flops_per_token_match_6n_plus_12lhs() {
    for name in ["llama-350m", "llama2-7b", "llama2-13b"] {
        let g = import(&format!("{name}.onnx"));
        let c = manifest(name);
        let (mb, seq) = (2u64, 1024u64);
        let tg = build_engine_training_graph(&g, &TrainOptions::default()).unwrap();
        let costs = step_costs(&tg, mb, seq).unwrap();
        let tokens = (mb * seq) as f64;
        let train = (phase_flops(&costs, Phase::Forward, false)
            + phase_flops(&costs, Phase::Backward, false))
            / tokens;
        let n = (c.params - c.vocab * c.hidden) as f64;
        let want = 6.0 * n + 12.0 * (c.layers * c.hidden * seq) as f64;
        let err = train / want - 1.0;
        println!(
            "{name}: training FLOPs/token {train:.4e}, 6N+12Lhs = {want:.4e}, error {:+.2}%",
            100.0 * err
        );
        assert!(err.abs() < 0.02, "{name}: {err}");
        // Full recomputation adds exactly one forward pass of the decoder layers.
        let full = build_engine_training_graph(
            &g,
            &opts(
                PrecisionPolicy::AmpBf16,
                OptimizerKind::AdamW,
                RecomputePolicy::Full,
            ),
        )
        .unwrap();
        let fc = step_costs(&full, mb, seq).unwrap();
        let fwd_layers = phase_flops(&fc, Phase::Forward, true);
        assert!(fwd_layers > 0.0);
        assert_eq!(
            phase_flops(&fc, Phase::Recompute, false),
            fwd_layers,
            "{name}"
        );
        assert_eq!(
            phase_flops(&fc, Phase::Backward, false),
            phase_flops(&costs, Phase::Backward, false),
            "{name}"
        );
        // The fast profile (built from the engine graph) replicates representative layers: same totals per phase as the full graph.
        for (o, full_costs) in [(TrainOptions::default(), &costs), (full.opts, &fc)] {
            let prof = step_profile(&g, &o, mb, seq).unwrap();
            assert_eq!(prof.blocks.len() as u64, c.layers + 2);
            for ph in [Phase::Forward, Phase::Backward, Phase::Recompute] {
                let p: f64 = prof
                    .blocks
                    .iter()
                    .flat_map(|b| &b.ops)
                    .filter(|x| x.phase == ph)
                    .map(|x| x.flops)
                    .sum();
                let f = phase_flops(full_costs, ph, false);
                assert!(
                    (p - f).abs() <= 1e-9 * f.max(1.0),
                    "{name} {ph:?}: profile {p} vs graph {f}"
                );
            }
            let po: f64 = prof.optimizer.iter().map(|x| x.flops).sum();
            assert!((po - phase_flops(full_costs, Phase::Optimizer, false)).abs() < 1.0);
        }
    }
}

#[test]
fn static_memory_per_parameter() {
    let g = import("llama-350m.onnx");
    let c = manifest("llama-350m");
    for (p, o, want) in [
        (PrecisionPolicy::AmpBf16, OptimizerKind::AdamW, 16),
        (PrecisionPolicy::Bf16, OptimizerKind::AdamW, 12),
        (PrecisionPolicy::Fp32, OptimizerKind::AdamW, 16),
        (PrecisionPolicy::AmpBf16, OptimizerKind::Sgd, 12),
        (PrecisionPolicy::Bf16, OptimizerKind::Sgd, 8),
    ] {
        let o = opts(p, o, RecomputePolicy::None);
        let tg = build_training_graph(&g, &o).unwrap();
        let r = peak_memory(&tg, 1, 128).unwrap();
        assert_eq!(r.params, c.params);
        assert_eq!(r.static_bytes, want * c.params, "{p} {:?}", o.optimizer);
        let prof = step_profile(&g, &o, 1, 128).unwrap();
        assert_eq!(prof.static_bytes_per_param, want as f64);
        let sum = prof.low_prec_param_bytes_per_param
            + prof.grad_bytes_per_param
            + prof.optimizer_bytes_per_param;
        assert_eq!(sum, want as f64);
        let bp: u64 = prof.blocks.iter().map(|b| b.params).sum();
        assert_eq!(bp, c.params);
    }
}

#[test]
fn llama_350m_peak_memory_vs_h100_measurements() {
    let g = import("llama-350m.onnx");
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../costmodel/data/truth/source/h100_training_truth_llama-350m.json"
    ));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    let gib = (1u64 << 30) as f64;
    let mut built: HashMap<bool, TrainingGraph> = HashMap::new();
    println!(
        "llama-350m, one H100, amp-bf16 + AdamW: liveness peak (no allocator model) vs torch max_memory_allocated"
    );
    for row in rows.as_array().unwrap() {
        let (mb, seq, rc) = (
            row["micro_batch"].as_u64().unwrap(),
            row["seq"].as_u64().unwrap(),
            row["recompute"].as_bool().unwrap(),
        );
        let truth = row["peak_alloc_gib"].as_f64().unwrap();
        let tg = built.entry(rc).or_insert_with(|| {
            let r = if rc {
                RecomputePolicy::Full
            } else {
                RecomputePolicy::None
            };
            build_training_graph(&g, &opts(PrecisionPolicy::AmpBf16, OptimizerKind::AdamW, r))
                .unwrap()
        });
        let r = peak_memory(tg, mb, seq).unwrap();
        let pred = r.peak_bytes as f64 / gib;
        let err = pred / truth - 1.0;
        println!(
            "  mb={mb:>2} seq={seq} recompute={:<5}: predicted {pred:6.2} GiB, measured {truth:6.2} GiB, error {:+5.1}%  (peak at {} [{:?}]; weights {:.2} grads {:.2} optimizer {:.2} activations {:.2} temporaries {:.2} GiB)",
            if rc { "full" } else { "none" },
            100.0 * err,
            r.peak_node,
            r.peak_phase,
            r.at_peak.weights as f64 / gib,
            r.at_peak.grads as f64 / gib,
            r.at_peak.optimizer_state as f64 / gib,
            r.at_peak.activations as f64 / gib,
            r.at_peak.temporaries as f64 / gib,
        );
        assert!(
            err.abs() < 0.10,
            "mb={mb} seq={seq} recompute={rc}: {:+.1}%",
            100.0 * err
        );
    }
}

#[test]
fn recomputation_trades_memory_for_flops() {
    let g = planning_llama(4, 512, 8, 8, 1408, 8000);
    let mut saved = Vec::new();
    for r in [
        RecomputePolicy::None,
        RecomputePolicy::Selective,
        RecomputePolicy::Full,
    ] {
        let tg = build_training_graph(&g, &opts(PrecisionPolicy::AmpBf16, OptimizerKind::AdamW, r))
            .unwrap();
        let m = peak_memory(&tg, 4, 512).unwrap();
        let layer0 = m
            .blocks
            .iter()
            .find(|b| b.block == BlockKind::Decoder(0))
            .unwrap()
            .saved_bytes;
        saved.push((m.saved_activation_bytes, layer0, m.peak_bytes));
    }
    assert!(
        saved[0].1 > saved[1].1 && saved[1].1 > saved[2].1,
        "{saved:?}"
    );
    assert!(saved[0].2 > saved[2].2, "{saved:?}");
    // Full recomputation keeps exactly the layer input (fp32 residual [4, 512, 512]).
    assert_eq!(saved[2].1, 4 * 512 * 512 * 4, "{saved:?}");
}

#[test]
fn untrainable_graphs_are_rejected() {
    let mut g = tiny_llama();
    g.buffers = g
        .params()
        .iter()
        .filter_map(|p| match &g.node(*p).op {
            Op::Param { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let e = build_training_graph(&g, &fp32()).unwrap_err().to_string();
    assert!(e.contains("trainable"), "{e}");
}

#[test]
fn llama2_13b_builds_and_profiles() {
    let g = import("llama2-13b.onnx");
    let t0 = std::time::Instant::now();
    let tg = build_training_graph(&g, &TrainOptions::default()).unwrap();
    let t1 = t0.elapsed();
    let t0 = std::time::Instant::now();
    let prof = step_profile(&g, &TrainOptions::default(), 1, 4096).unwrap();
    let t2 = t0.elapsed();
    println!(
        "llama2-13b (test profile, opt-level 1): build_training_graph {t1:?} ({} nodes), step_profile {t2:?}",
        tg.schedule.len()
    );
    assert_eq!(tg.layers, 40);
    assert_eq!(prof.blocks.len(), 42);
}

/// Under autocast the rotary embedding is Hugging Face's unfused `x·cos + rotate_half(x)·sin` with fp32
/// tables (the products promote to fp32); in fp32 training it stays the fused op.
#[test]
fn amp_rotary_runs_unfused_in_fp32() {
    use moai_ir::DType;
    use moai_ir::UnaryOp;
    let g = planning_llama(2, 256, 4, 2, 688, 1000);
    let count = |tg: &TrainingGraph, f: &dyn Fn(&Op) -> bool| {
        tg.graph
            .node_ids()
            .filter(|id| f(&tg.graph.node(*id).op))
            .count()
    };
    let amp_opts = opts(
        PrecisionPolicy::AmpBf16,
        OptimizerKind::AdamW,
        RecomputePolicy::None,
    );
    let amp = build_engine_training_graph(&g, &amp_opts).unwrap();
    assert_eq!(count(&amp, &|o| matches!(o, Op::Rotary)), 0);
    // One negation of the second half per rotated tensor (q and k) per layer.
    let negs = count(&amp, &|o| matches!(o, Op::Unary(UnaryOp::Neg)));
    assert!(negs >= 4, "{negs}");
    let fp32_mul = amp.graph.node_ids().any(|id| {
        let n = amp.graph.node(id);
        matches!(n.op, Op::Binary(_))
            && n.outputs[0].dtype == DType::F32
            && n.outputs[0].shape.rank() == 4
    });
    assert!(fp32_mul);
    let full = build_engine_training_graph(&g, &fp32()).unwrap();
    assert!(count(&full, &|o| matches!(o, Op::Rotary)) > 0);
    // The step moai compiles keeps the fused rotary op under autocast too.
    let compiled = build_training_graph(&g, &amp_opts).unwrap();
    assert!(count(&compiled, &|o| matches!(o, Op::Rotary)) > 0);
    assert_eq!(
        count(&compiled, &|o| matches!(o, Op::Unary(UnaryOp::Neg))),
        0
    );
}

/// A 2-layer planning Llama (GQA, SwiGLU) under bf16 autocast with full recomputation, and the
/// training graph the engines run for it.
fn small_llama_engine_graph_amp_full() -> (Graph, TrainOptions, TrainingGraph) {
    let g = planning_llama(2, 256, 4, 2, 688, 1000);
    let amp_full = opts(
        PrecisionPolicy::AmpBf16,
        OptimizerKind::AdamW,
        RecomputePolicy::Full,
    );
    let tg = build_engine_training_graph(&g, &amp_full).unwrap();
    (g, amp_full, tg)
}

#[test]
fn linears_sharing_an_input_are_marked() {
    use moai_ir::cost::Role;
    // Llama's k and v projections read q's input, up reads gate's: forward and recomputation.
    let (g, amp_full, tg) = small_llama_engine_graph_amp_full();
    let mut shared = HashMap::new();
    for id in &tg.schedule {
        let (n, meta) = (tg.graph.node(*id), tg.meta(*id));
        if meta.role != Role::SharedInputLinear {
            continue;
        }
        assert!(matches!(n.op, Op::Linear { .. }), "{}", n.prov.name);
        let scope = n
            .prov
            .scope
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            ["k_proj", "v_proj", "up_proj"].contains(&scope.as_str()),
            "{}",
            n.prov.scope
        );
        *shared.entry(meta.phase).or_insert(0) += 1;
    }
    assert_eq!(shared.get(&Phase::Forward), Some(&6), "{shared:?}");
    assert_eq!(shared.get(&Phase::Recompute), Some(&6), "{shared:?}");
    assert_eq!(shared.get(&Phase::Backward), None);
    let prof = step_profile(&g, &amp_full, 2, 64).unwrap();
    let n = prof
        .blocks
        .iter()
        .flat_map(|b| &b.ops)
        .filter(|o| o.role == Role::SharedInputLinear)
        .count();
    assert_eq!(n, 12);
    // GPT-2's attention is one c_attn linear; its MLP one c_fc: nothing shares an input.
    let gpt = moai_models::ArchConfig::from_spec(
        "gpt:layers=2,hidden=256,heads=4,ffn=1024,vocab=1000,dtype=bf16",
    )
    .and_then(|c| c.build())
    .unwrap();
    let tg = build_engine_training_graph(&gpt, &amp_full).unwrap();
    assert!(tg.meta.iter().all(|m| m.role != Role::SharedInputLinear));
}

#[test]
fn engine_graph_roles_mark_casts_and_the_unfused_rotary() {
    use moai_ir::cost::Role;
    let (g, amp_full, tg) = small_llama_engine_graph_amp_full();
    let mut rotary_phases = HashMap::new();
    for id in &tg.schedule {
        let (n, role) = (tg.graph.node(*id), tg.meta(*id).role);
        // Every cast the builder makes has a cast role: weight casts read a parameter.
        if let Op::Cast(_) = n.op {
            let of_param = matches!(tg.graph.node(n.inputs[0].node).op, Op::Param { .. });
            let want = if of_param {
                Role::WeightCast
            } else {
                Role::Cast
            };
            assert_eq!(role, want, "{}", n.prov.name);
        } else {
            assert!(!role.is_cast(), "{}: {role:?}", n.prov.name);
        }
        // The unfused rotary embedding's ops (named by their scope) and only they have its role.
        let in_rotary = n.prov.scope.ends_with("/rotary");
        if role == Role::EagerRotary {
            assert!(in_rotary && n.prov.layer.is_some(), "{}", n.prov.scope);
            *rotary_phases.entry(tg.meta(*id).phase).or_insert(0) += 1;
        } else if in_rotary {
            assert!(role.is_cast(), "{} ({:?}): {role:?}", n.prov.scope, n.op);
        }
    }
    // Forward, its gradient and its recomputation.
    for ph in [Phase::Forward, Phase::Backward, Phase::Recompute] {
        assert!(rotary_phases.get(&ph).copied().unwrap_or(0) >= 4, "{ph:?}");
    }
    // The cost records carry the role.
    let costs = step_costs(&tg, 2, 64).unwrap();
    let roles = |c: &[moai_ir::cost::OpCost], r: Role| c.iter().filter(|o| o.role == r).count();
    assert!(roles(&costs, Role::EagerRotary) >= 12);
    assert!(roles(&costs, Role::WeightCast) >= 7);
    assert!(roles(&costs, Role::Cast) > 0);
    let prof = step_profile(&g, &amp_full, 2, 64).unwrap();
    let prof_ops: Vec<_> = prof.blocks.iter().flat_map(|b| b.ops.clone()).collect();
    assert_eq!(
        roles(&prof_ops, Role::EagerRotary),
        roles(&costs, Role::EagerRotary)
    );
    // Neither the compiled step nor an fp32 engine graph has an unfused rotary embedding.
    for tg in [
        build_training_graph(&g, &amp_full).unwrap(),
        build_engine_training_graph(&g, &fp32()).unwrap(),
    ] {
        assert!(tg.meta.iter().all(|m| m.role != Role::EagerRotary));
    }
}

/// Each activation's gradient (GeLU in its tanh form here; SiLU in Llama) is one cost record per
/// layer and backward, reading the activation's input and the incoming gradient and writing the
/// input's gradient, with every FLOP of the ops autodiff wrote out; the graph itself keeps them.
#[test]
fn activation_gradients_are_one_kernel_each() {
    use moai_ir::cost::Role;
    use moai_ir::train::cost::node_cost;
    for (spec, layers) in [
        (
            "gpt:layers=2,hidden=256,heads=4,ffn=1024,vocab=1000,dtype=bf16",
            2,
        ),
        (
            "llama:layers=3,hidden=256,heads=4,kv_heads=2,ffn=640,vocab=1000",
            3,
        ),
    ] {
        let g = moai_models::ArchConfig::from_spec(spec)
            .and_then(|c| c.build())
            .unwrap();
        let o = opts(
            PrecisionPolicy::AmpBf16,
            OptimizerKind::AdamW,
            RecomputePolicy::Full,
        );
        let tg = build_engine_training_graph(&g, &o).unwrap();
        let env = moai_ir::train::cost::env(2, 64);
        let (mut graph_ops, mut graph_flops) = (0, 0.0);
        for id in &tg.schedule {
            if tg.meta(*id).role == Role::ActivationGrad {
                graph_ops += 1;
                graph_flops += node_cost(&tg.graph, *id, &env).unwrap().flops;
            }
        }
        assert!(graph_ops >= 5 * layers, "{spec}: {graph_ops} ops");
        let costs = step_costs(&tg, 2, 64).unwrap();
        let fused: Vec<_> = costs
            .iter()
            .filter(|c| c.role == Role::ActivationGrad)
            .collect();
        assert_eq!(fused.len(), layers, "{spec}");
        let ffn = if spec.starts_with("gpt") {
            1024.0
        } else {
            640.0
        };
        let flops: f64 = fused.iter().map(|c| c.flops).sum();
        assert!((flops / graph_flops - 1.0).abs() < 1e-12, "{spec}");
        for c in fused {
            assert_eq!(c.phase, Phase::Backward);
            assert!(c.label.ends_with(":ActivationGrad"), "{}", c.label);
            // Three bf16 tensors of [2, 64, ffn].
            assert_eq!(c.bytes, 3.0 * 2.0 * 64.0 * ffn * 2.0, "{spec}: {}", c.label);
        }
        let prof = step_profile(&g, &o, 2, 64).unwrap();
        let n = prof
            .blocks
            .iter()
            .flat_map(|b| &b.ops)
            .filter(|c| c.role == Role::ActivationGrad)
            .count();
        assert_eq!(n, layers, "{spec}");
    }
}
