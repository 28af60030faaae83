//! The command line: bad input gives one clear line and a non-zero exit; good input prints what
//! DESIGN.md promises.

use crate::common::{Cli, fails, moai};

const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";

#[test]
fn unknown_flavor_suggests_the_nearest() {
    let e = Cli::estimate(SMALL)
        .job(32, 128)
        .flag("--flavor", "4xLarge.2084GB")
        .fails();
    assert!(e.contains("4xLarge.2048GB"), "{e}");
}

#[test]
fn unknown_gpu_kind() {
    let e = Cli::estimate(SMALL).on("tpu", 8).job(32, 128).fails();
    assert!(e.contains("tpu"), "{e}");
}

#[test]
fn flavor_without_whole_device_mapping() {
    let e = Cli::estimate(SMALL)
        .batch(32)
        .flag("--flavor", "Small.64GB")
        .flag("--gpu", "mi300x")
        .fails();
    assert!(e.to_lowercase().contains("mi300x"), "{e}");
}

#[test]
fn devices_not_divisible_by_parallel_degrees() {
    let e = Cli::estimate(SMALL)
        .on("h100", 8)
        .batch(32)
        .flag("--tp", 2)
        .flag("--pp", 3)
        .fails();
    assert!(e.contains("divisible"), "{e}");
}

#[test]
fn micro_batch_that_does_not_divide_the_batch() {
    let e = Cli::estimate(SMALL)
        .on("h100", 1)
        .job(10, 128)
        .flag("--micro-batch-size", 4)
        .fails();
    assert!(e.contains("micro-batch-size 4"), "{e}");
}

#[test]
fn batch_not_divisible_by_dp() {
    let e = Cli::estimate(SMALL).on("h100", 8).job(12, 128).fails();
    assert!(e.contains("not divisible by dp 8"), "{e}");
}

#[test]
fn tp_that_does_not_divide_the_heads() {
    let e = Cli::estimate("llama:layers=4,hidden=240,heads=6,kv_heads=6,ffn=640,vocab=1000")
        .on("h100", 4)
        .job(8, 128)
        .flag("--tp", 4)
        .fails();
    assert!(e.contains("heads"), "{e}");
}

#[test]
fn missing_model_file() {
    let e = fails(&["inspect", "models/no-such-model.onnx"]);
    assert!(e.contains("no-such-model.onnx"), "{e}");
}

#[test]
fn emit_without_out_and_unknown_emit() {
    let e = fails(&[
        SMALL,
        "--gpu",
        "h100",
        "--devices",
        "1",
        "--batch-size",
        "8",
        "--seq-len",
        "128",
        "--emit",
        "megatron",
    ]);
    assert!(e.contains("--out"), "{e}");
    let e = fails(&[
        SMALL,
        "--gpu",
        "h100",
        "--devices",
        "1",
        "--batch-size",
        "8",
        "--seq-len",
        "128",
        "--emit",
        "pdf",
        "--out",
        "/tmp/x",
    ]);
    assert!(e.contains("pdf"), "{e}");
}

#[test]
fn flavors_lists_the_catalog() {
    let out = moai(&["flavors"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for f in ["Small.64GB", "4xLarge.2048GB", "48xLarge.24576GB"] {
        assert!(text.contains(f), "{text}");
    }
}

#[test]
fn estimate_json_has_the_design_fields() {
    let out = Cli::estimate(SMALL).on("h100", 2).job(8, 128).json().run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert!(v.get("search").is_none());
    for k in ["step_time_s", "tokens_per_s", "peak_memory_bytes", "mfu"] {
        assert!(v["predicted"][k].is_number(), "{k} in {v}");
    }
    assert_eq!(v["plan"]["dp"], 2);
    assert_eq!(v["cluster"]["devices"], 2);
}

#[test]
fn mi250x_plans_by_device_count_and_has_no_flavors() {
    // Frontier's and LUMI-G's GCD: planned with --gpu/--devices; flavors are the platform's MI250 sizes.
    let out = Cli::estimate(SMALL)
        .on("mi250x", 8)
        .job(32, 128)
        .json()
        .run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"]["gpu"], "mi250x");
    for args in [
        &["flavors", "--gpu", "mi250x"][..],
        &["flavors", "--gpu", "mi325x"],
    ] {
        let out = moai(args);
        assert!(!out.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.lines().count() == 1 && e.contains("--devices N"),
            "{args:?}: {e}"
        );
    }
}
