//! Tensor parallelism on the CPU: two pipeline stages, each an MLP block sharded over tp=2 ranks
//! (column-parallel up projection, row-parallel down projection, all-reduce), run stage by stage with
//! both ranks as threads whose emitted code calls the in-process all-reduce. Forward only.

use crate::support::*;
use moai_ir::{BinaryOp, CollectiveKind, DType, Op, Tensor, UnaryOp, Value};
use moai_runtime::{Dims, Executor, KernelStyle, emit_program, run_ranks};

const ROWS: i64 = 4;
const H: i64 = 16;
const F: i64 = 24;

/// `x + down(silu(up(x)))` with the given (possibly sharded) weights; all-reduce after `down` when tp > 1.
fn block(b: &mut B, x: Value, up: Tensor, down: Tensor, tp: u32, tag: &str) -> Value {
    let f = up.shape[1] as i64;
    let wu = b.param_t(&format!("{tag}.up"), up);
    let wd = b.param_t(&format!("{tag}.down"), down);
    let u = b.op1(Op::Linear { bias: false }, &[x, wu], DType::F32, &[ROWS, f]);
    let s = b.op1(Op::Unary(UnaryOp::Silu), &[u], DType::F32, &[ROWS, f]);
    let mut d = b.op1(Op::Linear { bias: false }, &[s, wd], DType::F32, &[ROWS, H]);
    if tp > 1 {
        d = b.op1(
            Op::Collective {
                kind: CollectiveKind::AllReduce,
                group_size: tp,
                axis: None,
            },
            &[d],
            DType::F32,
            &[ROWS, H],
        );
    }
    b.op1(Op::Binary(BinaryOp::Add), &[x, d], DType::F32, &[ROWS, H])
}

fn cols(t: &Tensor, lo: usize, hi: usize) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let v = t.to_f64_vec();
    let mut out = Vec::new();
    for i in 0..r {
        for j in lo..hi {
            out.push(v[i * c + j] as f32);
        }
    }
    Tensor::f32(vec![r, hi - lo], out)
}

fn rows(t: &Tensor, lo: usize, hi: usize) -> Tensor {
    let c = t.shape[1];
    let v = t.to_f64_vec();
    Tensor::f32(
        vec![hi - lo, c],
        v[lo * c..hi * c].iter().map(|x| *x as f32).collect(),
    )
}

#[test]
fn two_stage_tp2_forward_matches_unsharded_reference() {
    let weights: Vec<(Tensor, Tensor)> = (0..2)
        .map(|s| {
            (
                rand_t(&[H as usize, F as usize], 100 + s, 0.3),
                rand_t(&[F as usize, H as usize], 200 + s, 0.3),
            )
        })
        .collect();
    // unsharded reference of both stages
    let mut full = B::new("full");
    let x0 = full.input("x", DType::F32, &[ROWS, H]);
    let mut x = x0;
    for (s, (u, d)) in weights.iter().enumerate() {
        x = block(&mut full, x, u.clone(), d.clone(), 1, &format!("s{s}"));
    }
    full.out("y", x);
    let input = rand_t(&[ROWS as usize, H as usize], 5, 1.0);
    let want = reference(&full.g, &[("x", input.clone())]);

    // stage by stage, each stage on 2 ranks
    let half = (F / 2) as usize;
    let mut act = vec![input.clone(), input];
    for (s, (u, d)) in weights.iter().enumerate() {
        let mut mods = Vec::new();
        for r in 0..2 {
            let mut b = B::new("stage");
            let xin = b.input("x", DType::F32, &[ROWS, H]);
            let y = block(
                &mut b,
                xin,
                cols(u, r * half, (r + 1) * half),
                rows(d, r * half, (r + 1) * half),
                2,
                &format!("s{s}"),
            );
            b.out("y", y);
            let m = emit_program(
                &b.g,
                &Dims::new(),
                &format!("stage{s}_rank{r}"),
                KernelStyle::Linalg,
            )
            .expect("emits");
            assert_eq!(m.calls, vec!["moai_allreduce_f32".to_string()]);
            let args = args_for(&b.g, &[("x", act[r].clone())]);
            mods.push((m, args));
        }
        let refs: Vec<_> = mods.iter().map(|(m, a)| (m, a.clone())).collect();
        let outs = run_ranks(&refs).unwrap_or_else(|e| panic!("{e}"));
        act = outs.into_iter().map(|mut o| o.remove(0)).collect();
    }
    for (r, a) in act.iter().enumerate() {
        let e = max_rel(a, &want[0]);
        assert!(e <= 1e-5, "rank {r}: max relative error {e:e}");
    }
    assert_eq!(
        act[0], act[1],
        "ranks agree bit for bit after the all-reduce"
    );
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
