//! Bad-input matrix: each wrong file, flag or configuration gives one error line naming the problem,
//! a non-zero exit, no panic, and writes nothing into `--out`.

use crate::cli::fails;
use std::path::PathBuf;

const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("moai-bad-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_input_matrix() {
    let dir = scratch();
    let w = |name: &str, body: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let corrupt = w(
        "corrupt.onnx",
        b"\x08\x07garbage-not-a-protobuf\xff\xff\xff",
    );
    let empty = w("empty.onnx", b"");
    let bad_json = w("config.json", b"{ not json");
    let unknown_type_dir = dir.join("unk");
    std::fs::create_dir_all(&unknown_type_dir).unwrap();
    let unknown_type = unknown_type_dir.join("config.json");
    std::fs::write(&unknown_type, br#"{"model_type":"mamba","hidden_size":64}"#).unwrap();
    let unknown_type = unknown_type.to_str().unwrap().to_string();
    let bad_truth = w("truth.jsonl", b"{\"this is\": not a record\n");
    let missing = dir.join("nope.json").to_str().unwrap().to_string();
    let job = [
        "--gpu",
        "h100",
        "--devices",
        "8",
        "--batch-size",
        "32",
        "--seq-len",
        "128",
    ];

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&corrupt], "corrupt.onnx"),
        (vec![&empty], "empty.onnx"),
        (vec![&bad_json], "config.json"),
        (vec![&unknown_type], "mamba"),
        (vec!["mamba:layers=2,hidden=64"], "mamba"),
        (vec!["llama:layers=2,hidden=64,heads=4"], "vocab"),
        (
            vec!["llama:layers=2,hidden=64,heads=0,kv_heads=1,ffn=128,vocab=100"],
            "heads",
        ),
        (vec![SMALL, "--flavor", "Huge.1GB"], "Huge.1GB"),
        (vec![SMALL, "--gpu", "tpu", "--devices", "8"], "tpu"),
        (vec![SMALL, "--gpu", "h100", "--devices", "0"], "devices"),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "0",
            ],
            "batch",
        ),
        (
            vec![SMALL, "--gpu", "h100", "--devices", "8", "--seq-len", "0"],
            "seq",
        ),
        (
            vec![SMALL, "--tp", "3"],
            "--tp 3 does not divide the 8 devices, --tp 3 does not divide the 8 attention heads",
        ),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "6",
                "--batch-size",
                "30",
                "--tp",
                "3",
            ],
            "--tp 3 does not divide the 8 attention heads",
        ),
        (
            vec![SMALL, "--pp", "3"],
            "--pp 3 does not divide the 8 devices",
        ),
        (
            vec![SMALL, "--dp", "3"],
            "--dp 3 does not divide the 8 devices",
        ),
        (
            vec![SMALL, "--dp", "4", "--tp", "4"],
            "dp 4 × tp 4 (= 16) do not fit the 8 devices",
        ),
        (
            vec![SMALL, "--micro-batch-size", "5"],
            "--micro-batch-size 5 does not divide the batch of 32",
        ),
        (vec![SMALL, "--recompute", "sometimes"], "sometimes"),
        (vec![SMALL, "--schedule", "zigzag"], "zigzag"),
        (vec![SMALL, "--zero", "2"], "2"),
        (vec![SMALL, "--emit", "pdf"], "pdf"),
        (vec![SMALL, "--emit", "report"], "--out"),
        (
            vec![SMALL, "--gpu", "h100", "--devices", "8", "--emit", "hsaco"],
            "--emit ptx",
        ),
        (
            vec![SMALL, "--flavor", "Large.256GB", "--emit", "mlir,ptx"],
            "--emit hsaco",
        ),
        (vec![SMALL, "--time-budget", "-1"], "-1"),
        (vec![SMALL, "--threads", "0"], "threads"),
        (vec![SMALL, "--cluster-file", &missing], "nope.json"),
        (vec!["models/does-not-exist.onnx"], "does-not-exist"),
        (vec![SMALL, "--precision", "fp3"], "fp3"),
        (vec![SMALL, "--optimizer", "lion9"], "lion9"),
    ];
    let mut problems = Vec::new();
    for (i, (args, want)) in cases.iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        let mut full: Vec<&str> = vec!["plan"];
        full.extend(args.iter().copied());
        if !args
            .iter()
            .any(|a| a.starts_with("--gpu") || a.starts_with("--flavor"))
        {
            full.extend(job);
        }
        let o = out.to_str().unwrap().to_string();
        // every case gets --out except the one about --emit without it
        if *args != [SMALL, "--emit", "report"] {
            full.extend(["--out", &o]);
        }
        let line = std::panic::catch_unwind(|| fails(&full));
        match line {
            Ok(l) if l.contains(want) => {}
            Ok(l) => problems.push(format!("{full:?}: expected `{want}` in: {l}")),
            Err(_) => problems.push(format!("{full:?}: contract broken (see above)")),
        }
        if out.exists()
            && std::fs::read_dir(&out)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            problems.push(format!("{full:?}: wrote into --out"));
        }
    }
    let other: Vec<(Vec<&str>, &str)> = vec![
        (vec!["validate", &bad_truth], "truth.jsonl"),
        (vec!["validate", &missing], "nope.json"),
        (
            vec![
                "estimate",
                "llama:layers=4,hidden=240,heads=6,kv_heads=6,ffn=640,vocab=1000",
                "--gpu",
                "h100",
                "--devices",
                "4",
                "--tp",
                "4",
                "--batch-size",
                "8",
                "--seq-len",
                "128",
            ],
            "heads",
        ),
        (
            vec!["sweep", SMALL, "--flavors", "Large.256GB..Small.64GB"],
            "Large.256GB",
        ),
        (
            vec!["sweep", SMALL, "--flavors", "Tiny.1GB..Large.256GB"],
            "Tiny.1GB",
        ),
        (
            vec!["sweep", SMALL, "--flavors", "Small.64GB", "--threads", "0"],
            "threads",
        ),
    ];
    for (full, want) in &other {
        match std::panic::catch_unwind(|| fails(full)) {
            Ok(l) if l.contains(want) => {}
            Ok(l) => problems.push(format!("{full:?}: expected `{want}` in: {l}")),
            Err(_) => problems.push(format!("{full:?}: contract broken (see above)")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        problems.is_empty(),
        "{} bad-input problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
