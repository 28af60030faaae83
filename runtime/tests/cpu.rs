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

/// The device-library-free math GPU kernels use (LLVM intrinsics, polynomial sine/cosine), run on the
/// CPU JIT against the reference interpreter: angles up to ±4096 rad (rotary tables at seq 4096).
#[test]
fn portable_math_matches_reference() {
    use moai_runtime::{MathLowering, emit_program_with};
    let n = 4096usize;
    let mut b = B::new("math");
    let pos = b.input("pos", DType::F32, &[n as i64]);
    let ang = b.input("ang", DType::F32, &[n as i64]);
    let sh = [n as i64];
    let mut names = Vec::new();
    for (u, x) in [
        (UnaryOp::Exp, ang),
        (UnaryOp::Log, pos),
        (UnaryOp::Sqrt, pos),
        (UnaryOp::Rsqrt, pos),
        (UnaryOp::Sin, ang),
        (UnaryOp::Cos, ang),
        (UnaryOp::Abs, ang),
    ] {
        let y = b.op1(Op::Unary(u), &[x], DType::F32, &sh);
        let name = format!("{u:?}").to_lowercase();
        b.out(&name, y);
        names.push(name);
    }
    let p = b.op1(Op::Binary(BinaryOp::Pow), &[pos, pos], DType::F32, &sh);
    b.out("pow", p);
    names.push("pow".into());
    // positives in [0.01, 8]; angles in [-4096, 4096] (exp of them clipped to [-30, 30] below)
    let posv: Vec<f32> = (0..n).map(|i| 0.01 + 8.0 * i as f32 / n as f32).collect();
    let angv: Vec<f32> = (0..n)
        .map(|i| -4096.0 + 8192.0 * (i as f32 + 0.37) / n as f32)
        .collect();
    let inputs = [
        ("pos", Tensor::f32(vec![n], posv)),
        ("ang", Tensor::f32(vec![n], angv)),
    ];
    let m = emit_program_with(
        &b.g,
        &no_dims(),
        "math",
        KernelStyle::Linalg,
        MathLowering::Portable,
    )
    .expect("emits");
    assert!(!m.text.contains("math.sin") && !m.text.contains("math.exp"));
    let got = CpuExecutor::new()
        .run(&m, &args_for(&b.g, &inputs))
        .unwrap_or_else(|e| panic!("{e}"));
    let want = reference_at(&b.g, &inputs, moai_ir::interp::Precision::F64);
    for ((name, g), w) in names.iter().zip(&got).zip(&want) {
        let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
        let mut worst = 0.0f64;
        for (a, e) in g.iter().zip(&w) {
            let err = if name == "sin" || name == "cos" {
                (a - e).abs()
            } else if e.is_finite() && e.abs() < 1e30 {
                (a - e).abs() / e.abs().max(1e-30)
            } else {
                0.0
            };
            worst = worst.max(err);
        }
        let tol = match name.as_str() {
            "sin" | "cos" => 1e-6, // absolute
            "exp" | "pow" => 1e-5, // relative; grows with |x|·ε
            _ => 1e-6,
        };
        assert!(
            worst <= tol,
            "{name}: worst error {worst:e} (tolerance {tol:e})"
        );
        eprintln!("portable {name}: worst error {worst:.2e}");
    }
}

/// A bf16 matmul with a long reduction accumulates in f32 and rounds once, like mixed-precision
/// matmuls (and like the reference): summing 1024 products in bf16 would be off by percents.
#[test]
fn bf16_matmul_accumulates_in_f32() {
    let (m, k, n) = (4i64, 1024i64, 4i64);
    let mut b = B::new("mm16");
    let x = b.input("x", DType::BF16, &[m, k]);
    let w = b.input("w", DType::BF16, &[k, n]);
    let y = b.op1(Op::MatMul, &[x, w], DType::BF16, &[m, n]);
    b.out("y", y);
    // positive operands so the sum grows and bf16 accumulation would visibly stall
    let pos = |shape: &[usize], seed| {
        let mut t = rand_t(shape, seed, 1.0);
        if let moai_ir::TensorData::F32(v) = &mut t.data {
            for x in v.iter_mut() {
                *x = half::bf16::from_f32(x.abs() + 0.5).to_f32();
            }
        }
        t.dtype = DType::BF16;
        t
    };
    let inputs = [
        ("x", pos(&[m as usize, k as usize], 3)),
        ("w", pos(&[k as usize, n as usize], 4)),
    ];
    let e = check(&b.g, &inputs, 8e-3);
    eprintln!("bf16 matmul (K = {k}) max rel err vs reference {e:e}");
}
