//! `sweep` agrees with `plan`: each flavor's row is the plan `moai-compile plan --flavor F` picks, with the
//! same predicted numbers (a sweep row for llama2-13b on 4xLarge.2048GB once read 52.0 GiB next to a 51.1
//! GiB report that had been rendered before an allocator refit; this pins the two commands together).

use crate::common::moai;
use serde_json::Value;

const MODEL: &str = "models/llama2-13b.onnx";

fn stdout_of(args: &[&str]) -> String {
    let r = moai(args);
    assert!(
        r.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).expect("utf-8 stdout")
}

#[test]
fn sweep_rows_equal_the_plans_of_their_flavors() {
    let flavors = ["2xLarge.1024GB", "4xLarge.2048GB"];
    let table = stdout_of(&[
        "--log",
        "warn",
        "sweep",
        MODEL,
        "--flavors",
        &flavors.join(","),
    ]);
    for f in flavors {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(f))
            .unwrap_or_else(|| panic!("no row for {f}:\n{table}"));
        // flavor devices tokens/s step peak MFU scaling plan...
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (_, rest) = row.split_once('%').expect("scaling column");
        let plan_column = rest.trim();

        let text = stdout_of(&[
            "--log",
            "warn",
            "plan",
            MODEL,
            "--flavor",
            f,
            "--no-progress",
        ]);
        let summary = text.lines().next().expect("summary line");
        assert_eq!(plan_column, summary, "{f}: sweep picked another plan");

        let json: Value = serde_json::from_str(&stdout_of(&[
            "--log",
            "warn",
            "plan",
            MODEL,
            "--flavor",
            f,
            "--no-progress",
            "--json",
        ]))
        .expect("plan --json parses");
        let p = &json["predicted"];
        let num = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("predicted.{k}"));
        let devices = json["cluster"]["devices"].as_u64().expect("devices");
        assert_eq!(cols[1], devices.to_string(), "{f}: devices");
        assert_eq!(
            cols[2],
            format!("{:.0}", num("tokens_per_s")),
            "{f}: tokens/s"
        );
        assert_eq!(
            cols[3],
            format!("{:.3}", num("step_time_s")),
            "{f}: step time"
        );
        assert_eq!(
            cols[4],
            format!("{:.1}", num("peak_memory_bytes") / (1u64 << 30) as f64),
            "{f}: peak GiB"
        );
        assert_eq!(cols[5], format!("{:.1}", num("mfu") * 100.0), "{f}: MFU");
        // The text output shows the same peak, in GiB.
        assert!(
            text.contains(&format!(
                "peak memory {:.2} GiB",
                num("peak_memory_bytes") / (1u64 << 30) as f64
            )),
            "{text}"
        );
    }
}

/// `--time-budget` bounds the whole sweep: every flavor of the catalog range gets a row, in about the
/// budget (each flavor's search gets the time left over the flavors left; a cut-short search still does a
/// bounded minimum of work, hence the slack), and the budget is checked like `plan`'s.
#[test]
fn a_time_budget_bounds_the_whole_sweep() {
    let t0 = std::time::Instant::now();
    let table = stdout_of(&[
        "--log",
        "warn",
        "sweep",
        MODEL,
        "--flavors",
        "Small.64GB..8xLarge.4096GB",
        "--time-budget",
        "2",
    ]);
    let secs = t0.elapsed().as_secs_f64();
    let rows = table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(rows, 10, "one row per flavor:\n{table}");
    assert!(secs < 30.0, "a 2 s sweep ran {secs:.1} s");
    let r = moai(&[
        "sweep",
        MODEL,
        "--flavors",
        "Small.64GB..Large.256GB",
        "--time-budget",
        "0",
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("--time-budget"),
        "{err}"
    );
}

/// A cancelled request (Ctrl-C) plans no further flavor: the rows say so and the sweep still returns.
#[test]
fn a_cancelled_sweep_returns_rows_saying_so() {
    let model = moai_compiler::Model::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/llama2-13b.onnx")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let req = moai_compiler::PlanRequest::new(256, 1024);
    req.cancel.cancel();
    let flavors = vec!["Large.256GB".to_string(), "4xLarge.2048GB".to_string()];
    let rows =
        moai_compiler::sweep::sweep(&model, &flavors, moai_costmodel::Gpu::Mi250, &req).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(
            r.best.as_ref().unwrap_err(),
            "not planned: interrupted",
            "{r:?}"
        );
        assert!(r.devices > 0);
    }
}
