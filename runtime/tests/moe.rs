//! Mixture-of-experts graphs are refused by the MLIR emission with one line (the default build emits
//! MLIR text without LLVM, so this runs without the `mlir` feature).

use moai_ir::{DType, Graph, Op, ParamData, Provenance, Shape, TensorType, Value};
use moai_runtime::{Dims, KernelStyle, emit_program};

fn ty(shape: &[i64]) -> TensorType {
    TensorType::new(
        DType::F32,
        Shape(shape.iter().map(|d| moai_ir::Dim::constant(*d)).collect()),
    )
}

fn prov(name: &str) -> Provenance {
    Provenance {
        name: name.into(),
        scope: String::new(),
        layer: None,
    }
}

#[test]
fn moe_experts_are_refused_in_one_line() {
    let mut g = Graph::new("moe");
    let input = |g: &mut Graph, name: &str, shape: &[i64]| {
        Value::of(g.add(
            Op::Input { name: name.into() },
            vec![],
            vec![ty(shape)],
            prov(name),
        ))
    };
    let param = |g: &mut Graph, name: &str, shape: &[i64]| {
        let n: i64 = shape.iter().product();
        Value::of(g.add(
            Op::Param {
                name: name.into(),
                data: ParamData::External {
                    location: "<synthetic>".into(),
                    offset: 0,
                    length: n as u64 * 4,
                },
            },
            vec![],
            vec![ty(shape)],
            prov(name),
        ))
    };
    let x = input(&mut g, "x", &[2, 4]);
    let s = input(&mut g, "scores", &[2, 3]);
    let wg = param(&mut g, "mlp.experts.gate_proj.weight", &[3, 4, 5]);
    let wu = param(&mut g, "mlp.experts.up_proj.weight", &[3, 4, 5]);
    let wd = param(&mut g, "mlp.experts.down_proj.weight", &[3, 5, 4]);
    let y = g.add(
        Op::MoeExperts {
            experts: 3,
            topk: 2,
            norm_topk: true,
            capacity_factor: 1.0,
        },
        vec![x, s, wg, wu, wd],
        vec![ty(&[2, 4])],
        prov("mlp.experts"),
    );
    g.outputs.push(("y".into(), Value::of(y)));
    let e = emit_program(&g, &Dims::new(), "moe", KernelStyle::Linalg)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("mixture-of-experts layers are not supported by the MLIR code generation yet"),
        "{e}"
    );
}
