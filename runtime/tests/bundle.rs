//! `emit_stage` files and the `plan.moai` bundle round trip; insta snapshot of a printed module.

use crate::gpu::matmul_graph;
use moai_runtime::{
    AmdChip, Dims, KernelStyle, NvSm, Program, ProgramKind, StageProgram, Target, emit_program,
    emit_stage, read_bundle, write_bundle,
};
use std::path::PathBuf;

fn out_dir(name: &str) -> PathBuf {
    let base = std::env::var("MOAI_TEST_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let d = base.join(format!("moai-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn emit_stage_writes_files_and_bundle_round_trips() {
    let sp = StageProgram {
        stage: 0,
        programs: vec![Program {
            kind: ProgramKind::Forward,
            graph: matmul_graph(256, 256, 256),
        }],
        dims: Dims::new(),
    };
    let dir = out_dir("bundle");
    let mut kernels = Vec::new();
    for t in [
        Target::Rocdl {
            chip: AmdChip::Gfx90a,
        },
        Target::Rocdl {
            chip: AmdChip::Gfx942,
        },
        Target::Nvvm { sm: NvSm::Sm90 },
    ] {
        let sub = dir.join(t.to_string().replace(':', "_"));
        let st = emit_stage(&sp, t, &sub).unwrap_or_else(|e| panic!("{t}: {e}"));
        let bin = sub.join(format!("stage0/forward.{}", t.binary_extension()));
        assert!(sub.join("stage0/forward.mlir").exists());
        assert!(
            std::fs::metadata(&bin)
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "{}",
            bin.display()
        );
        kernels.extend(st.kernels);
    }
    let plan = r#"{"plan":{"dp":1,"tp":1,"pp":1}}"#;
    let path = dir.join("plan.moai");
    write_bundle(&path, plan, kernels.clone()).expect("writes");
    let b = read_bundle(&path).expect("reads");
    assert_eq!(b.plan_json, plan);
    assert_eq!(b.kernels, kernels);
    assert_eq!(b.kernels.len(), 3);
    assert!(b.kernels.iter().all(|k| {
        k.launches
            .iter()
            .any(|l| l.shared_bytes == 8192 && l.block == vec![16, 16, 1])
    }));
    assert!(read_bundle(&dir.join("stage0")).is_err());
    if std::env::var("MOAI_TEST_OUT").is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_function_names_are_rejected() {
    let g = matmul_graph(2, 2, 2);
    let e = emit_program(&g, &Dims::new(), "x}; func.func @evil", KernelStyle::Linalg).unwrap_err();
    assert!(e.to_string().contains("identifier"), "{e}");
}

#[test]
fn printed_mlir_snapshot() {
    use crate::support::*;
    use moai_ir::{DType, Op};
    let mut b = B::new("snap");
    let x = b.input("x", DType::F32, &[2, 4]);
    let w = b.param("w", &[4], 1.0);
    let y = b.op1(Op::RmsNorm { eps: 1e-6 }, &[x, w], DType::F32, &[2, 4]);
    b.out("y", y);
    let m = emit_program(&b.g, &Dims::new(), "rmsnorm", KernelStyle::Linalg).expect("emits");
    insta::assert_snapshot!("rmsnorm_module", m.text);
}
