//! Bad-input matrix: each wrong file, flag or configuration gives one error line naming the problem,
//! a non-zero exit, no panic, and writes nothing into `--out`.

use crate::common::fails;
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
        // numeric ranges: each flag's bound, named with the value
        (
            vec![SMALL, "--threads", "100000"],
            "--threads 100000: at most",
        ),
        (
            vec![SMALL, "--threads", "18446744073709551615"],
            "--threads 18446744073709551615: at most",
        ),
        (vec![SMALL, "--time-budget", "0"], "--time-budget 0"),
        (vec![SMALL, "--time-budget", "inf"], "finite"),
        (vec![SMALL, "--time-budget", "NaN"], "finite"),
        (
            vec![SMALL, "--time-budget", "1e300"],
            "at most 604800 seconds",
        ),
        (
            vec![SMALL, "--time-budget", "604801"],
            "at most 604800 seconds",
        ),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "18446744073709551615",
            ],
            "--batch-size 18446744073709551615: at most 1099511627776",
        ),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "1099511627777",
            ],
            "at most 1099511627776",
        ),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--seq-len",
                "99999999999",
            ],
            "--seq-len 99999999999: at most 16777216",
        ),
        (
            vec![
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "1099511627776",
                "--seq-len",
                "4096",
            ],
            "tokens per step",
        ),
        (
            vec![SMALL, "--tp", "4294967296"],
            "--tp 4294967296: too large",
        ),
        (
            vec![SMALL, "--micro-batch-size", "99999999999"],
            "--micro-batch-size 99999999999: too large",
        ),
        (vec![SMALL, "--batch-size", "-1"], "-1"),
        (vec![SMALL, "--time-budget", "soon"], "soon"),
        (
            vec![SMALL, "--pp", "4", "--schedule", "interleaved:4294967295"],
            "interleaved:4294967295: at most 1024",
        ),
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
        (
            vec!["inspect", SMALL, "--seq-len", "18446744073709551615"],
            "--seq-len 18446744073709551615: at most 16777216",
        ),
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
        (
            vec![
                "sweep",
                SMALL,
                "--flavors",
                "Small.64GB",
                "--threads",
                "100000",
            ],
            "--threads 100000: at most",
        ),
        (
            vec![
                "sweep",
                SMALL,
                "--flavors",
                "Small.64GB",
                "--batch-size",
                "18446744073709551615",
            ],
            "at most 1099511627776",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "18446744073709551615",
                "--seq-len",
                "128",
            ],
            "at most 1099511627776",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "8",
                "--seq-len",
                "16777217",
            ],
            "--seq-len 16777217: at most 16777216",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--tp",
                "65536",
                "--pp",
                "65536",
                "--batch-size",
                "8",
                "--seq-len",
                "8",
            ],
            "8 devices are not divisible by tp 65536 × pp 65536",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--dp",
                "4294967295",
                "--tp",
                "8",
                "--batch-size",
                "8",
                "--seq-len",
                "8",
            ],
            "(= 34359738360)",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--tp",
                "2",
                "--pp",
                "4",
                "--batch-size",
                "1000000000",
                "--seq-len",
                "8",
            ],
            "1000000000 micro-batches in a 4-stage pipeline: at most 65536",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "1099511627776",
                "--seq-len",
                "1",
            ],
            "micro-batches per replica",
        ),
        (
            vec![
                "estimate",
                SMALL,
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--pp",
                "4",
                "--schedule",
                "interleaved:4294967295",
                "--batch-size",
                "8",
                "--seq-len",
                "8",
            ],
            "interleaved:4294967295: at most 1024",
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

/// Extreme but valid sizes give a bounded, correct plan: no overflow (the plan's dp × micro-batch size ×
/// micro-batches is the batch, each count within 32 bits), no hang, bounded memory.
#[test]
fn extreme_sizes_give_bounded_correct_plans() {
    use crate::common::moai;
    use serde_json::Value;
    // (args, batch): the largest batch at seq 1; a billion-sequence batch under a 5 s budget; u32::MAX
    // devices (all divisors of 2^32-1 found without counting to it)
    let cases: Vec<(Vec<&str>, u64)> = vec![
        (
            vec![
                "--gpu",
                "h100",
                "--devices",
                "8",
                "--batch-size",
                "1099511627776",
                "--seq-len",
                "1",
            ],
            1 << 40,
        ),
        (
            vec![
                "--flavor",
                "4xLarge.2048GB",
                "--batch-size",
                "1000000000",
                "--time-budget",
                "5",
            ],
            1_000_000_000,
        ),
        (
            vec![
                "--gpu",
                "h100",
                "--devices",
                "4294967295",
                "--batch-size",
                "4294967295",
                "--seq-len",
                "8",
            ],
            u32::MAX as u64,
        ),
    ];
    for (args, batch) in cases {
        let mut full = vec!["plan", SMALL, "--json", "--log", "warn"];
        full.extend(args.iter().copied());
        let t = std::time::Instant::now();
        let out = moai(&full);
        let secs = t.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{full:?}: {err}");
        assert!(secs < 60.0, "{full:?} took {secs:.1} s");
        let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints one object");
        let p = &v["plan"];
        let n = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{k} in {p}"));
        assert!(n("num_micro_batches") <= u32::MAX as u64, "{p}");
        assert_eq!(
            n("dp") as u128 * n("micro_batch_size") as u128 * n("num_micro_batches") as u128,
            batch as u128,
            "{full:?}: {p}"
        );
        let search = &v["search"];
        let complete = search["complete"].as_bool().expect("search.complete");
        if complete {
            assert!(search.get("stopped_by").is_none(), "{search}");
        } else {
            assert_eq!(search["stopped_by"], "time-budget", "{search}");
        }
    }
}

mod extreme_sizes {
    //! Proptest over extreme sizes: any request the ranges accept plans without arithmetic overflow (the
    //! test profile has overflow checks on, so an overflow panics) and with a consistent plan.
    use moai_compiler::{Cluster, Gpu, Model, PlanRequest, plan};
    use proptest::prelude::*;
    use std::time::Duration;

    fn model() -> Model {
        Model::load(super::SMALL).expect("spec loads")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn accepted_requests_plan_without_overflow(
            batch_log in 0u32..=40,
            batch_off in any::<u64>(),
            seq_log in 0u32..=24,
            devices in prop_oneof![1u32..=64, Just(u32::MAX), 1u32..=u32::MAX],
            mbs in proptest::option::of(prop_oneof![1u32..=4, Just(u32::MAX)]),
        ) {
            let batch = (1u64 << batch_log) + batch_off % (1u64 << batch_log);
            let batch = batch.min(moai_compiler::request::MAX_BATCH);
            let seq = 1u64 << seq_log;
            let mut req = PlanRequest::new(batch, seq);
            req.constraints.micro_batch_size = mbs;
            req.time_budget = Some(Duration::from_secs(2));
            req.threads = Some(1);
            let accepted = req.validate().is_ok();
            prop_assert_eq!(
                accepted,
                batch <= moai_compiler::request::MAX_BATCH
                    && seq <= moai_compiler::request::MAX_SEQ
                    && (batch as u128) * (seq as u128) <= moai_compiler::request::MAX_TOKENS_PER_STEP as u128
            );
            if !accepted {
                return Ok(());
            }
            let cluster = Cluster::new(Gpu::H100, devices).expect("devices >= 1");
            match plan(&model(), &cluster, &req) {
                Ok(r) => {
                    let p = &r.output.plan;
                    prop_assert_eq!(
                        p.dp as u128 * p.micro_batch_size as u128 * p.num_micro_batches as u128,
                        batch as u128
                    );
                    prop_assert!(p.num_micro_batches <= u32::MAX as u64);
                    let s = r.output.predicted.step_time_s;
                    prop_assert!(s.is_finite() && s > 0.0, "step time {}", s);
                }
                Err(e) => {
                    let m = e.to_string();
                    prop_assert!(!m.is_empty() && !m.contains('\n'), "{}", m);
                }
            }
        }
    }
}
