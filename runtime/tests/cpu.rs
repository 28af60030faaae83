//! CPU: emitted MLIR, lowered and JIT-compiled, against the reference interpreter.

use crate::support::*;
use moai_ir::{BinaryOp, DType, Graph, Op, Tensor, UnaryOp};
use moai_runtime::{CpuExecutor, Executor, KernelStyle, emit_program};

fn check(g: &Graph, inputs: &[(&str, Tensor)], tol: f64) -> f64 {
    let m = emit_program(g, &no_dims(), "prog", KernelStyle::Linalg).expect("emits");
    let args = args_for(g, inputs);
    let got = CpuExecutor::new()
        .run(&m, &args)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.text));
    let want = reference(g, inputs);
    let names: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
    assert_close(&got, &want, &names, tol)
}

#[test]
fn matmul_jit_matches_reference() {
    let mut b = B::new("mm");
    let x = b.input("x", DType::F32, &[3, 5]);
    let w = b.param("w", &[5, 4], 1.0);
    let y = b.op1(Op::MatMul, &[x, w], DType::F32, &[3, 4]);
    b.out("y", y);
    let e = check(&b.g, &[("x", rand_t(&[3, 5], 7, 1.0))], 1e-5);
    eprintln!("matmul max rel err {e:e}");
}

#[test]
fn elementwise_softmax_reduce_match_reference() {
    let mut b = B::new("ew");
    let x = b.input("x", DType::F32, &[2, 3, 8]);
    let bias = b.param("bias", &[8], 0.5);
    let a = b.op1(
        Op::Binary(BinaryOp::Add),
        &[x, bias],
        DType::F32,
        &[2, 3, 8],
    );
    let s = b.op1(Op::Unary(UnaryOp::Silu), &[a], DType::F32, &[2, 3, 8]);
    let g = b.op1(Op::Unary(UnaryOp::Gelu), &[s], DType::F32, &[2, 3, 8]);
    let t = b.op1(Op::Unary(UnaryOp::Tanh), &[g], DType::F32, &[2, 3, 8]);
    let sm = b.op1(Op::Softmax { axis: 2 }, &[t], DType::F32, &[2, 3, 8]);
    let r = b.op1(
        Op::Reduce {
            kind: moai_ir::ReduceKind::Mean,
            axes: vec![1],
            keep_dims: false,
        },
        &[sm],
        DType::F32,
        &[2, 8],
    );
    b.out("softmax", sm);
    b.out("mean", r);
    check(&b.g, &[("x", rand_t(&[2, 3, 8], 3, 2.0))], 1e-5);
}
