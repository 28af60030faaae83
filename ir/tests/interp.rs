//! The reference interpreter: tiny-llama logits against onnxruntime, built-model consistency, errors.

use crate::support::tiny_llama;
use moai_ir::interp::npy::read_npy;
use moai_ir::interp::{Interpreter, Precision};
use moai_ir::{
    CollectiveKind, DType, Graph, IrError, Op, Provenance, Shape, Tensor, TensorType, Value,
};
use std::path::PathBuf;

fn models() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

fn ids(b: usize, s: usize, seed: i64) -> Tensor {
    Tensor::i64(
        vec![b, s],
        (0..(b * s) as i64)
            .map(|i| (i * 37 + seed * 11 + 5) % 512)
            .collect(),
    )
}

#[test]
fn tiny_llama_logits_match_onnxruntime() {
    let imported =
        moai_ir::onnx::import(&models().join("tiny-llama.onnx")).expect("tiny-llama imports");
    for shape in ["b1s37", "b2s16"] {
        let input = read_npy(&models().join(format!("tiny-llama.input_ids.{shape}.npy"))).unwrap();
        let want = read_npy(&models().join(format!("tiny-llama.logits.{shape}.npy"))).unwrap();
        let out = Interpreter::new(&imported.graph)
            .run(&[("input_ids", input)])
            .unwrap();
        let (name, got) = &out[0];
        assert_eq!(name, "logits");
        assert_eq!(got.shape, want.shape, "{shape}");
        let e = rel_err(&got.to_f64_vec(), &want.to_f64_vec());
        println!("tiny-llama {shape}: relative error {e:.3e}");
        assert!(e < 1e-4, "{shape}: relative error {e}");
    }
}

#[test]
fn missing_external_weight_file_is_named() {
    let imported =
        moai_ir::onnx::import(&models().join("llama-350m.onnx")).expect("llama-350m imports");
    let err = Interpreter::new(&imported.graph)
        .run(&[("input_ids", ids(1, 4, 0))])
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IrError::Exec { .. }), "{msg}");
    assert!(
        msg.contains(".onnx.data") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn built_llama_is_causal_and_batch_independent() {
    let g = tiny_llama();
    let long = ids(2, 9, 1);
    let out = Interpreter::new(&g)
        .run(&[("input_ids", long.clone())])
        .unwrap();
    let full = out[0].1.to_f64_vec();
    assert_eq!(out[0].1.shape, vec![2, 9, 512]);
    // The second sequence alone, truncated to 5 tokens, gives the same first 5 positions.
    let l = long.as_i64().unwrap();
    let short = Tensor::i64(vec![1, 5], l[9..14].to_vec());
    let part = Interpreter::new(&g).run(&[("input_ids", short)]).unwrap()[0]
        .1
        .to_f64_vec();
    let want = &full[9 * 512..(9 + 5) * 512];
    assert!(rel_err(&part, want) < 1e-5, "{}", rel_err(&part, want));
    // f64 mode agrees with f32.
    let out64 = Interpreter::new(&g)
        .precision(Precision::F64)
        .run(&[("input_ids", long)])
        .unwrap();
    assert!(rel_err(&full, &out64[0].1.to_f64_vec()) < 1e-5);
}

#[test]
fn inputs_are_checked_against_the_graph() {
    let g = tiny_llama();
    let e = Interpreter::new(&g).run(&[]).unwrap_err().to_string();
    assert!(e.contains("input_ids"), "{e}");
    let e = Interpreter::new(&g)
        .run(&[("input_ids", Tensor::i64(vec![4], vec![1, 2, 3, 4]))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("input_ids") && e.contains("[batch, seq]"), "{e}");
    let e = Interpreter::new(&g)
        .run(&[("input_ids", Tensor::i64(vec![1, 2], vec![1, 9999]))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("9999"), "{e}");
}

fn one_op(op: Op, ins: Vec<Tensor>, outs: Vec<TensorType>) -> moai_ir::Result<Vec<Tensor>> {
    let mut g = Graph::new("t");
    let mut vals = Vec::new();
    for (i, t) in ins.iter().enumerate() {
        let ty = TensorType::new(
            t.dtype,
            Shape::from_consts(&t.shape.iter().map(|d| *d as i64).collect::<Vec<_>>()),
        );
        vals.push(Value::of(g.add(
            Op::Input {
                name: format!("x{i}"),
            },
            vec![],
            vec![ty],
            Provenance::default(),
        )));
    }
    let n = outs.len();
    let id = g.add(
        op,
        vals,
        outs,
        Provenance {
            name: "op".into(),
            ..Default::default()
        },
    );
    for o in 0..n {
        g.outputs.push((
            format!("y{o}"),
            Value {
                node: id,
                output: o as u32,
            },
        ));
    }
    let names: Vec<String> = (0..ins.len()).map(|i| format!("x{i}")).collect();
    let feed: Vec<(&str, Tensor)> = names.iter().map(|s| s.as_str()).zip(ins).collect();
    Ok(Interpreter::new(&g)
        .run(&feed)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

fn f32t(shape: &[i64]) -> TensorType {
    TensorType::new(DType::F32, Shape::from_consts(shape))
}

#[test]
fn primitives_compute_numpy_semantics() {
    // Broadcast add [2,1] + [3].
    let y = one_op(
        Op::Binary(moai_ir::BinaryOp::Add),
        vec![
            Tensor::f32(vec![2, 1], vec![1.0, 2.0]),
            Tensor::f32(vec![3], vec![10.0, 20.0, 30.0]),
        ],
        vec![f32t(&[2, 3])],
    )
    .unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    // Softmax over the last axis.
    let y = one_op(
        Op::Softmax { axis: 1 },
        vec![Tensor::f32(vec![1, 2], vec![0.0, (3.0f32).ln()])],
        vec![f32t(&[1, 2])],
    )
    .unwrap();
    let v = y[0].to_f64_vec();
    assert!((v[0] - 0.25).abs() < 1e-6 && (v[1] - 0.75).abs() < 1e-6);
    // Gather rows with a negative index.
    let y = one_op(
        Op::Gather { axis: 0 },
        vec![
            Tensor::f32(vec![3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            Tensor::i64(vec![2], vec![-1, 0]),
        ],
        vec![f32t(&[2, 2])],
    )
    .unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![4.0, 5.0, 0.0, 1.0]);
    // Batched matmul with a broadcast right operand.
    let y = one_op(
        Op::MatMul,
        vec![
            Tensor::f32(vec![2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
            Tensor::f32(vec![2, 1], vec![1.0, 1.0]),
        ],
        vec![f32t(&[2, 1, 1])],
    )
    .unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![3.0, 7.0]);
    // Cast to bf16 rounds in the f32 reference.
    let y = one_op(
        Op::Cast(DType::BF16),
        vec![Tensor::f32(vec![1], vec![1.0 + 1.0 / 1024.0])],
        vec![TensorType::new(DType::BF16, Shape::from_consts(&[1]))],
    )
    .unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![1.0]);
    // Lower triangle.
    let y = one_op(
        Op::Trilu { upper: false, k: 0 },
        vec![Tensor::f32(vec![2, 2], vec![1.0; 4])],
        vec![f32t(&[2, 2])],
    )
    .unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![1.0, 0.0, 1.0, 1.0]);
}

#[test]
fn collectives_need_a_multi_rank_executor() {
    let op = Op::Collective {
        kind: CollectiveKind::AllReduce,
        group_size: 2,
        axis: None,
    };
    let e = one_op(op, vec![Tensor::f32(vec![1], vec![1.0])], vec![f32t(&[1])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("multi-rank executor"), "{e}");
    let op = Op::Collective {
        kind: CollectiveKind::AllReduce,
        group_size: 1,
        axis: None,
    };
    let y = one_op(op, vec![Tensor::f32(vec![1], vec![2.5])], vec![f32t(&[1])]).unwrap();
    assert_eq!(y[0].to_f64_vec(), vec![2.5]);
}

#[test]
fn built_tiny_llama_has_the_onnx_parameter_count() {
    // models/manifest.json: tiny-llama torch_params = 158016.
    let g = tiny_llama();
    let total: u64 = g
        .params()
        .iter()
        .map(|p| {
            g.ty(moai_ir::Value::of(*p))
                .shape
                .numel()
                .as_const()
                .unwrap_or(0) as u64
        })
        .sum();
    assert_eq!(total, 158_016);
}
