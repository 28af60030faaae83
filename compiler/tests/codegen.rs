//! `--emit mlir,hsaco,ptx` through the binary: the chosen plan's stage programs on disk per stage, the
//! binaries for the job's GPU, and the `plan.moai` bundle read back with `moai_runtime::read_bundle`.

use crate::common::{fails, moai};
use moai_runtime::elf::{self, EM_AMDGPU};
use moai_runtime::{AmdChip, Bundle, read_bundle};
use std::path::{Path, PathBuf};

const PROGRAMS: [&str; 3] = ["forward", "backward", "optimizer"];

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moai-codegen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `plan` with `args` into a fresh `--out`; returns the directory and stderr.
fn plan_into(name: &str, args: &[&str]) -> (PathBuf, String) {
    let dir = out_dir(name);
    let d = dir.to_str().unwrap().to_string();
    let mut full = vec![
        "plan",
        "models/tiny-llama.onnx",
        "--no-progress",
        "--out",
        &d,
    ];
    full.extend(args);
    let o = moai(&full);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{full:?} failed: {err}");
    (dir, err)
}

fn plan_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap()
}

/// Checks the bundle against the files on disk: one entry per program in stage order, binaries equal to
/// the files, launch metadata present (grid, block, arguments), the plan inside equal to `plan.json`.
fn check_bundle(dir: &Path, stages: u32, ext: &str, target: &str) -> Bundle {
    let b = read_bundle(&dir.join("plan.moai")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.kernels.len(), 3 * stages as usize);
    for (i, k) in b.kernels.iter().enumerate() {
        let (stage, program) = (i as u32 / 3, PROGRAMS[i % 3]);
        assert_eq!((k.stage, k.program.as_str()), (stage, program), "entry {i}");
        assert_eq!(k.target, target);
        let file = dir.join(format!("stage{stage}/{program}.{ext}"));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            k.binary,
            "{}",
            file.display()
        );
        assert!(!k.launches.is_empty(), "{}: no launches", k.name);
        for l in &k.launches {
            assert!(!l.kernel.is_empty());
            assert_eq!(l.grid.len(), 3, "{}: grid {:?}", l.kernel, l.grid);
            assert_eq!(l.block.len(), 3, "{}: block {:?}", l.kernel, l.block);
            assert!(l.grid.iter().chain(&l.block).all(|x| *x > 0), "{l:?}");
            assert!(!l.args.is_empty(), "{}: no arguments", l.kernel);
        }
        let sig: serde_json::Value = serde_json::from_str(&k.signature_json).unwrap();
        assert!(sig["inputs"].as_array().is_some_and(|a| !a.is_empty()));
    }
    let mut inside: serde_json::Value = serde_json::from_str(&b.plan_json).unwrap();
    let code = inside
        .as_object_mut()
        .unwrap()
        .remove("codegen")
        .expect("codegen record");
    assert_eq!(code["target"], target);
    assert_eq!(code["rank"], 0);
    assert_eq!(
        code["precision"], "amp-bf16",
        "the default plan trains in amp-bf16"
    );
    assert_eq!(inside, plan_json(dir), "bundle's plan vs plan.json");
    b
}

/// The default flavor (4xLarge.2048GB on MI250, gfx90a) with tp=2 and two pipeline stages: every stage's
/// MLIR and HSACO, AMDGPU code objects for gfx90a whose symbols are the launched kernels, the tp
/// all-reduces as runtime calls, the bundle complete, and the honest notes on stderr.
/// tiny-llama planned on one `gpu` (batch 2, seq 32) with `--emit emit`; returns the output directory.
fn one_device_plan(gpu: &str, emit: &str) -> PathBuf {
    let args = [
        "--gpu",
        gpu,
        "--devices",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--emit",
        emit,
    ];
    plan_into(gpu, &args).0
}

/// `stage<s>/<p>.mlir`, checked to hold the program's entry function and, for forward and backward, a
/// tiled GPU kernel.
fn stage_mlir(dir: &Path, s: u32, p: &str) -> String {
    let mlir = std::fs::read_to_string(dir.join(format!("stage{s}/{p}.mlir")))
        .unwrap_or_else(|e| panic!("stage{s}/{p}.mlir: {e}"));
    assert!(
        mlir.contains(&format!("@stage{s}_{p}")),
        "stage{s}/{p}.mlir"
    );
    if p != "optimizer" {
        assert!(
            mlir.contains("gpu.launch"),
            "stage{s}/{p}.mlir has no tiled kernel"
        );
    }
    mlir
}

#[test]
#[cfg_attr(not(feature = "mlir"), ignore = "lowering needs the mlir feature")]
fn tiny_llama_tp2_two_stages_emits_gfx90a_hsaco_and_bundle() {
    let (dir, err) = plan_into(
        "tp2pp2",
        &[
            "--tp",
            "2",
            "--pp",
            "2",
            "--batch-size",
            "32",
            "--micro-batch-size",
            "2",
            "--seq-len",
            "64",
            "--emit",
            "mlir,hsaco",
        ],
    );
    let plan = plan_json(&dir);
    assert_eq!(
        (plan["plan"]["tp"].as_u64(), plan["plan"]["pp"].as_u64()),
        (Some(2), Some(2))
    );
    for s in 0..2 {
        for p in PROGRAMS {
            let mlir = stage_mlir(&dir, s, p);
            // amp-bf16: bf16 compute; the optimizer updates fp32 master weights
            assert_eq!(
                mlir.contains("bf16"),
                p != "optimizer",
                "stage{s}/{p}.mlir: an amp-bf16 plan's forward and backward compute in bf16"
            );
            if p != "optimizer" {
                assert!(
                    mlir.contains("moai_allreduce_f32"),
                    "stage{s}/{p}.mlir has no tp all-reduce"
                );
            }
        }
        assert!(!dir.join(format!("stage{s}/forward.ptx")).exists());
    }
    let b = check_bundle(&dir, 2, "hsaco", "rocdl:gfx90a");
    for k in &b.kernels {
        let info = elf::parse(&k.binary).unwrap_or_else(|| panic!("{}: not ELF64", k.name));
        assert_eq!(info.machine, EM_AMDGPU, "{}", k.name);
        assert_eq!(info.flags & 0xff, AmdChip::Gfx90a.elf_mach(), "{}", k.name);
        for l in &k.launches {
            assert!(
                info.symbols.iter().any(|s| s == &l.kernel),
                "{}: launched kernel {} is not in the code object",
                k.name,
                l.kernel
            );
        }
    }
    // the forward of a tp=2 stage: tiled contractions (q/k/v/o, gate/up/down, attention products)
    let fwd = &b.kernels[0];
    assert!(
        fwd.launches.iter().filter(|l| l.shared_bytes > 0).count() >= 7,
        "{} launches with workgroup memory",
        fwd.launches.iter().filter(|l| l.shared_bytes > 0).count()
    );
    for want in ["rank 0", "[6/6]", "amp-bf16", "tp all-reduces"] {
        assert!(err.contains(want), "stderr lacks `{want}`: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// MI300X gets gfx942 code objects; `--emit hsaco` alone writes no MLIR files.
#[test]
#[cfg_attr(not(feature = "mlir"), ignore = "lowering needs the mlir feature")]
fn mi300x_gets_gfx942_code_objects() {
    let dir = one_device_plan("mi300x", "hsaco");
    let b = check_bundle(&dir, 1, "hsaco", "rocdl:gfx942");
    for k in &b.kernels {
        let info = elf::parse(&k.binary).expect("ELF64");
        assert_eq!(info.flags & 0xff, AmdChip::Gfx942.elf_mach(), "{}", k.name);
    }
    assert!(!dir.join("stage0/forward.mlir").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// H100 gets PTX for sm_90 whose entry points are the launched kernels.
#[test]
#[cfg_attr(not(feature = "mlir"), ignore = "lowering needs the mlir feature")]
fn h100_gets_sm90_ptx() {
    let dir = one_device_plan("h100", "ptx");
    let b = check_bundle(&dir, 1, "ptx", "nvvm:sm_90");
    for k in &b.kernels {
        let ptx = String::from_utf8(k.binary.clone()).expect("PTX is text");
        assert!(ptx.contains(".target sm_90"), "{}", k.name);
        for l in &k.launches {
            assert!(
                ptx.contains(&format!(".entry {}(", l.kernel)),
                "{}: no entry {}",
                k.name,
                l.kernel
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--emit mlir` alone (A100): the GPU-styled modules of every program, no binaries, no bundle.
#[test]
fn mlir_alone_writes_gpu_styled_modules_only() {
    let (dir, err) = plan_into(
        "mlir",
        &[
            "--gpu",
            "a100",
            "--devices",
            "2",
            "--pp",
            "2",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--emit",
            "mlir",
        ],
    );
    for s in 0..2 {
        for p in PROGRAMS {
            stage_mlir(&dir, s, p);
            assert!(!dir.join(format!("stage{s}/{p}.ptx")).exists());
        }
    }
    assert!(!dir.join("plan.moai").exists());
    assert!(err.contains("nvvm:sm_80"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The wrong binary kind for the GPU fails before searching, naming the GPU and the right choice.
#[test]
fn wrong_binary_kind_for_the_gpu() {
    let e = fails(&[
        "plan",
        "models/tiny-llama.onnx",
        "--gpu",
        "h100",
        "--devices",
        "8",
        "--emit",
        "hsaco",
        "--out",
        "/nonexistent/never-written",
    ]);
    assert!(e.contains("h100") && e.contains("--emit ptx"), "{e}");
    let e = fails(&[
        "plan",
        "models/tiny-llama.onnx",
        "--emit",
        "mlir,ptx",
        "--out",
        "/nonexistent/never-written",
    ]);
    assert!(
        e.contains("mi250") && e.contains("gfx90a") && e.contains("--emit hsaco"),
        "{e}"
    );
}

/// llama2-13b from ONNX (external weights, `Transpose(W)` in the graph) under tp=4, pp=2, `--emit mlir`:
/// rank 0's programs hold a quarter of each split weight and the tp all-reduces.
#[test]
fn llama13b_onnx_tp4_split_reaches_the_emitted_code() {
    let dir = out_dir("13b-tp4");
    let d = dir.to_str().unwrap().to_string();
    let o = moai(&[
        "plan",
        "models/llama2-13b.onnx",
        "--tp",
        "4",
        "--pp",
        "2",
        "--emit",
        "mlir",
        "--out",
        &d,
        "--no-progress",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    let fwd = std::fs::read_to_string(dir.join("stage0/forward.mlir")).unwrap();
    assert!(fwd.contains("moai_allreduce_f32"), "no tp all-reduce");
    // q_proj [in 5120, out 5120 / 4]; gate/up [5120, 13824 / 4]; down [13824 / 4, 5120]
    for ty in [
        "memref<5120x1280xf32>",
        "memref<5120x3456xf32>",
        "memref<3456x5120xf32>",
    ] {
        assert!(fwd.contains(ty), "no {ty} in stage0/forward.mlir");
    }
    assert!(
        !fwd.contains("memref<5120x13824xf32>"),
        "an unsplit MLP weight"
    );
    assert!(err.contains("pre-transposed"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C while the stage programs are being lowered: what is finished is kept. The programs not yet
/// started are skipped and named as not written (stderr and `plan.json`'s `codegen`), the plan and the
/// finished programs are written, no incomplete `plan.moai` bundle, exit 0. SIGINT is sent when the
/// first of tiny-llama's six tp=2 / pp=2 programs has been lowered (its progress line is on stderr).
#[test]
#[cfg_attr(not(feature = "mlir"), ignore = "lowering needs the mlir feature")]
fn ctrl_c_during_lowering_keeps_the_plan_and_finished_programs() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = out_dir("sigint");
    let mut child = crate::common::isolate(&mut Command::new(env!("CARGO_BIN_EXE_moai-compile")))
        .args([
            "plan",
            "models/tiny-llama.onnx",
            "--tp",
            "2",
            "--pp",
            "2",
            "--batch-size",
            "32",
            "--micro-batch-size",
            "2",
            "--seq-len",
            "64",
            "--threads",
            "1",
            "--emit",
            "hsaco",
            "--no-progress",
            "--out",
        ])
        .arg(&dir)
        .current_dir(crate::common::repo())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts moai-compile");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = Vec::new();
    let mut signalled = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if !signalled && line.contains("codegen [1/6]") {
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .expect("runs kill")
                .success();
            assert!(ok, "kill -INT failed");
            signalled = true;
        }
        lines.push(line);
    }
    let status = child.wait().expect("waits");
    let err = lines.join("\n");
    assert!(signalled, "no program finished lowering:\n{err}");
    // what is finished is kept: the plan is printed and written, the unfinished programs are named
    assert!(status.success(), "exit {status:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !err.contains("codegen [6/6]"),
        "all six programs were lowered:\n{err}"
    );
    assert!(
        err.contains("codegen stopped (interrupt)") && err.contains("not written: stage"),
        "{err}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).expect("plan.json"))
            .expect("plan.json parses");
    assert_eq!(plan["codegen"]["complete"], false, "{}", plan["codegen"]);
    assert_eq!(plan["codegen"]["stopped_by"], "interrupt");
    let missing = plan["codegen"]["not_written"]
        .as_array()
        .expect("not_written");
    assert!(!missing.is_empty());
    for m in missing {
        let m = m.as_str().expect("a path");
        assert!(
            !dir.join(m).exists(),
            "{m} is listed as not written but exists"
        );
    }
    assert!(dir.join("stage0/forward.hsaco").exists() || dir.join("stage1/forward.hsaco").exists());
    assert!(
        !dir.join("plan.moai").exists(),
        "an incomplete bundle was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// FNV-1a, 64 bits: a stable digest with no dependency.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One line per artifact of a `--emit mlir,hsaco` run: every stage's `.mlir` file, `plan.json`, and per
/// bundle entry its binary, its signature and every launch (kernel, grid, block, workgroup memory,
/// arguments), each as a digest, so that a difference names the artifact that changed.
fn artifact_digests(dir: &Path, stages: u32) -> String {
    let mut out = String::new();
    for s in 0..stages {
        for p in PROGRAMS {
            let f = format!("stage{s}/{p}.mlir");
            let text = std::fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            out.push_str(&format!("{f} {:016x}\n", fnv64(&text)));
        }
    }
    let plan = std::fs::read(dir.join("plan.json")).unwrap();
    out.push_str(&format!("plan.json {:016x}\n", fnv64(&plan)));
    let b = read_bundle(&dir.join("plan.moai")).unwrap_or_else(|e| panic!("{e}"));
    for k in &b.kernels {
        out.push_str(&format!(
            "{} {} binary {:016x} signature {:016x}\n",
            k.name,
            k.target,
            fnv64(&k.binary),
            fnv64(k.signature_json.as_bytes())
        ));
        for l in &k.launches {
            let args: Vec<String> = l
                .args
                .iter()
                .map(|a| format!("{}:{}:{}", a.kind, a.ty, a.value))
                .collect();
            let line = format!(
                "{} {:?} {:?} {} {} {}",
                l.kernel,
                l.grid,
                l.block,
                l.shared_bytes,
                l.order,
                args.join(",")
            );
            out.push_str(&format!(
                "  launch {} {} {:016x}\n",
                l.order,
                l.kernel,
                fnv64(line.as_bytes())
            ));
        }
    }
    out
}

/// Behaviour is pinned: tiny-llama under tp=2, pp=2 on the default flavor, `--emit mlir,hsaco`, yields
/// exactly the committed digests of every emitted module, the plan, every code object and every launch's
/// metadata (`tests/snapshots/codegen_tiny_llama_tp2pp2.digests`, made before the lowering moved from
/// text surgery to IR rewrites). `MOAI_BLESS=1` rewrites the file after an intended change.
#[test]
#[cfg_attr(not(feature = "mlir"), ignore = "lowering needs the mlir feature")]
fn emitted_artifacts_match_the_committed_snapshot() {
    let (dir, _) = plan_into(
        "snapshot",
        &[
            "--tp",
            "2",
            "--pp",
            "2",
            "--batch-size",
            "32",
            "--micro-batch-size",
            "2",
            "--seq-len",
            "64",
            "--emit",
            "mlir,hsaco",
        ],
    );
    let got = artifact_digests(&dir, 2);
    let _ = std::fs::remove_dir_all(&dir);
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/codegen_tiny_llama_tp2pp2.digests");
    if std::env::var_os("MOAI_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &got).unwrap();
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run once with MOAI_BLESS=1 to make it)",
            file.display()
        )
    });
    let diff: Vec<String> = want
        .lines()
        .zip(got.lines())
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("- {w}\n+ {g}"))
        .take(20)
        .collect();
    assert!(
        want == got,
        "emitted artifacts differ from the snapshot ({} vs {} lines):\n{}",
        want.lines().count(),
        got.lines().count(),
        diff.join("\n")
    );
}
