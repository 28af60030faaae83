//! One training step of tiny-llama (forward, backward, AdamW) from the emitted MLIR on the CPU JIT,
//! against the reference interpreter on the whole training graph.

use crate::support::*;
use moai_ir::train::{PrecisionPolicy, TrainOptions};
use moai_ir::{Op, ParamData, Tensor};
use moai_runtime::{CpuExecutor, Dims, KernelStyle, emit_program, run_chain};
use std::collections::HashMap;

/// Initial values of every Param node (inline data, or zeros for optimizer state stored elsewhere).
pub fn initial_values(g: &moai_ir::Graph) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    for id in g.node_ids() {
        if let Op::Param { name, data } = &g.node(id).op {
            let t = match data {
                ParamData::Inline(t) => t.clone(),
                ParamData::External { .. } => {
                    let shape = g.node(id).outputs[0]
                        .shape
                        .as_consts()
                        .expect("static param")
                        .iter()
                        .map(|d| *d as usize)
                        .collect::<Vec<_>>();
                    Tensor::f32(shape.clone(), vec![0.0; shape.iter().product()])
                }
            };
            m.insert(name.clone(), t);
        }
    }
    m
}

pub fn ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tensor {
    let v = rand_vec(batch * seq, seed, 1.0);
    Tensor::i64(
        vec![batch, seq],
        v.iter()
            .map(|x| ((x.abs() * 1e4) as i64) % vocab as i64)
            .collect(),
    )
}

/// The step's forward, backward and optimizer programs emitted, JIT-compiled and run in order on
/// `input_ids` (batch 2, seq 8) from the graph's initial values; every value by name afterwards.
fn run_on_cpu(
    g: &moai_ir::Graph,
    parts: &[moai_ir::Graph],
    input: &Tensor,
) -> HashMap<String, Tensor> {
    let dims: Dims = [("batch".to_string(), 2), ("seq".to_string(), 8)].into();
    let modules: Vec<_> = parts
        .iter()
        .zip(["forward", "backward", "optimizer"])
        .map(|(g, n)| {
            emit_program(g, &dims, n, KernelStyle::Linalg).unwrap_or_else(|e| panic!("{n}: {e}"))
        })
        .collect();
    let mut values = initial_values(g);
    values.insert("input_ids".into(), input.clone());
    run_chain(
        &mut CpuExecutor::new(),
        &modules.iter().collect::<Vec<_>>(),
        &mut values,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    values
}

#[test]
fn tiny_llama_training_step_matches_reference() {
    let cfg = tiny_llama_arch();
    let (tg, parts) = tiny_llama_step(PrecisionPolicy::Fp32);
    let input = ids(2, 8, cfg.vocab, 11);
    let values = run_on_cpu(&tg.graph, &parts, &input);

    // Criterion: every output (loss, every gradient, updated parameter and AdamW moment) within 1e-4
    // normwise relative error of the f32 reference interpreter; and loss and gradients elementwise no less accurate than
    // the f32 reference itself, both measured against the f64 reference (the f32 reference's own
    // elementwise error is up to ~5e-4 on small gradient entries, so an elementwise 1e-4 against it
    // would measure f32 summation-order noise, not the compiler).
    let want = reference(&tg.graph, &[("input_ids", input.clone())]);
    let exact = reference_at(
        &tg.graph,
        &[("input_ids", input)],
        moai_ir::interp::Precision::F64,
    );
    let (checked, worst, worst_el) = check_step_outputs(&tg.graph, &want, &exact, &|name| {
        values
            .get(name)
            .unwrap_or_else(|| panic!("no output {name}"))
            .clone()
    });
    assert!(
        checked > 3 * cfg.layers * 9,
        "only {checked} outputs checked"
    );
    eprintln!(
        "tiny-llama step: {checked} outputs; normwise vs f32 reference <= {worst:.2e}; loss and gradients elementwise vs f64 <= {worst_el:.2e}"
    );
}

/// The same step under bf16 mixed precision as eager autocast runs it (bf16 matmuls over fp32 master
/// weights, fp32 residual stream, fp32 optimizer state): normwise within bf16 rounding of the reference
/// interpreter, which rounds every bf16 result the same way.
#[test]
fn tiny_llama_amp_bf16_training_step_matches_reference() {
    half_precision_step(&TrainOptions {
        precision: PrecisionPolicy::AmpBf16,
        ..Default::default()
    });
}

/// bf16 mixed precision as the planner's plans train it (every export engine computes on bf16 copies
/// of the fp32 master weights: bf16 residual stream, fp32 master weights, gradients and moments).
#[test]
fn tiny_llama_amp_bf16_on_weight_copies_training_step_matches_reference() {
    half_precision_step(&TrainOptions {
        precision: PrecisionPolicy::AmpBf16,
        bf16_weight_copies: true,
        ..Default::default()
    });
}

/// Pure bf16 (bf16 weights, gradients and compute; fp32 optimizer moments).
#[test]
fn tiny_llama_bf16_training_step_matches_reference() {
    half_precision_step(&TrainOptions {
        precision: PrecisionPolicy::Bf16,
        ..Default::default()
    });
}

fn half_precision_step(opts: &TrainOptions) {
    let cfg = tiny_llama_arch();
    let policy = format!(
        "{}{}",
        opts.precision,
        if opts.reads_weight_copies() {
            " (weight copies)"
        } else {
            ""
        }
    );
    let (tg, parts) = tiny_llama_step_with(opts);
    let input = ids(2, 8, cfg.vocab, 11);
    let values = run_on_cpu(&tg.graph, &parts, &input);
    let want = reference(&tg.graph, &[("input_ids", input)]);
    // bf16 rounding (`BF16_STEP_TOLERANCE` normwise), twice that for AdamW's second moments (squares
    // of gradients double their relative error)
    let tolerance = |name: &str| {
        if name.ends_with(".exp_avg_sq") {
            2.0 * crate::support::BF16_STEP_TOLERANCE
        } else {
            crate::support::BF16_STEP_TOLERANCE
        }
    };
    let mut worst = (0.0f64, String::new());
    for ((name, _), w) in tg.graph.outputs.iter().zip(&want) {
        let e = norm_rel(&values[name], w);
        assert!(
            e <= tolerance(name),
            "`{name}`: normwise relative error {e:e}"
        );
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    let loss = norm_rel(&values["loss"], &want[0]);
    eprintln!(
        "tiny-llama {policy} step: loss {loss:.2e}; worst normwise {:.2e} at `{}`",
        worst.0, worst.1
    );
    assert!(loss <= 1e-2, "loss: relative error {loss:e}");
}
