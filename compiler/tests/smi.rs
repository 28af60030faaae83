//! `moai-compile smi`: the accelerator and device tables of the main job's plan, their JSON, and the
//! one-line errors for plan files of another version or corrupt ones.

use crate::cli::moai;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The main job (README): llama2-13b, default flavor 4xLarge.2048GB, batch 256 × 1024, planned once
/// into an --out directory shared by the tests below.
fn main_job_out() -> &'static PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("moai-smi-main-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let o = moai(&[
            "models/llama2-13b.onnx",
            "--no-progress",
            "--out",
            d.to_str().expect("utf-8 temp path"),
        ]);
        assert!(
            o.status.success(),
            "main job failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        d
    })
}

fn stdout_ok(args: &[&str]) -> String {
    let o = moai(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The cells of the table rows of `text` that start with `|` and whose first cell satisfies `keep`.
fn rows(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| keep(&cells[0]))
        .collect()
}

fn mib(cell: &str) -> u64 {
    cell.strip_suffix(" MiB")
        .unwrap_or_else(|| panic!("not MiB: {cell}"))
        .parse()
        .unwrap()
}

#[test]
fn smi_on_the_main_job_plan() {
    let out = main_job_out().to_str().unwrap().to_string();
    let text = stdout_ok(&["smi", &out]);
    let acc = rows(&text, |c| c == "* 0");
    assert_eq!(acc.len(), 1, "{text}");
    let a = &acc[0];
    assert_eq!(&a[1..3], ["MoAI Accelerator", "4xLarge.2048GB"], "{text}");
    let used = mib(&a[3]);
    assert_eq!(mib(&a[4]), 2_096_640, "32 GCDs × 65,520 MiB: {text}");
    assert!(a[5].ends_with('%'), "{text}");
    let devices = rows(&text, |c| c.parse::<u64>().is_ok());
    assert_eq!(devices.len(), 32, "{text}");
    let sum: u64 = devices.iter().map(|r| mib(&r[5])).sum();
    assert_eq!(sum, used, "device usage sums to the accelerator's: {text}");
    for (rank, r) in devices.iter().enumerate() {
        assert_eq!(r[0], (rank / 8).to_string(), "server of rank {rank}");
        assert_eq!(r[1], (rank % 8).to_string(), "device of rank {rank}");
        assert_eq!(mib(&r[6]), 65_520);
        assert!(mib(&r[5]) < 65_520, "the plan fits: {text}");
    }
    // The busiest device's utilization is the accelerator's.
    let pct = |c: &str| c.trim_end_matches('%').parse::<u64>().unwrap();
    let busiest = devices.iter().map(|r| pct(&r[7])).max().unwrap();
    assert_eq!(pct(&a[5]), busiest);
    assert!(
        text.contains("Total Memory: 65520 MiB per mi250 GCD, as rocm-smi"),
        "{text}"
    );

    // --breakdown adds the five parts per device.
    let text = stdout_ok(&["smi", &out, "--breakdown"]);
    assert!(
        text.contains("|  Weights  |  Gradients  |  Optimizer  |  Activations  |  Transients  |"),
        "{text}"
    );
    let devices = rows(&text, |c| c.parse::<u64>().is_ok());
    assert_eq!(devices.len(), 32);
    assert!(devices.iter().all(|r| r.len() == 13), "{text}");
}

#[test]
fn smi_json_matches_the_shape_and_the_cost_model() {
    let dir = main_job_out();
    let v: serde_json::Value =
        serde_json::from_str(&stdout_ok(&["smi", dir.to_str().unwrap(), "--json"])).unwrap();
    let keys = |o: &serde_json::Value| {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v), ["accelerator", "devices"]);
    let a = &v["accelerator"];
    assert_eq!(
        keys(a),
        [
            "flavor",
            "memory_total_mib",
            "memory_used_mib",
            "utilization"
        ]
    );
    assert_eq!(a["flavor"], "4xLarge.2048GB");
    assert_eq!(a["memory_total_mib"], 2_096_640);
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 32);
    for d in devices {
        assert_eq!(
            keys(d),
            [
                "device",
                "dp_rank",
                "memory_total_mib",
                "memory_used_mib",
                "server",
                "stage",
                "tp_rank",
                "utilization"
            ]
        );
    }
    let sum: u64 = devices
        .iter()
        .map(|d| d["memory_used_mib"].as_u64().unwrap())
        .sum();
    assert_eq!(a["memory_used_mib"].as_u64().unwrap(), sum);
    // The figures are the cost model's per-stage estimate stored in plan.json, not a second computation.
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["format_version"], 2);
    let stages = plan["predicted"]["stages"].as_array().unwrap();
    let (dp, tp) = (
        plan["plan"]["dp"].as_u64().unwrap(),
        plan["plan"]["tp"].as_u64().unwrap(),
    );
    let step = plan["predicted"]["step_time_s"].as_f64().unwrap();
    for (rank, d) in devices.iter().enumerate() {
        let rank = rank as u64;
        let stage = rank / (dp * tp);
        assert_eq!(d["stage"], stage);
        assert_eq!(d["tp_rank"], rank % tp);
        assert_eq!(d["dp_rank"], (rank / tp) % dp);
        let s = &stages[stage as usize];
        let peak = s["peak_bytes"].as_u64().unwrap();
        assert_eq!(d["memory_used_mib"], (peak + (1 << 19)) >> 20);
        let u = d["utilization"].as_f64().unwrap();
        assert!(
            (u - s["compute_s"].as_f64().unwrap() / step).abs() < 1e-12,
            "{u}"
        );
        assert!(u > 0.0 && u <= 1.0);
    }
    // The most loaded device is the plan's predicted peak.
    let max_peak = stages
        .iter()
        .map(|s| s["peak_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    let peak = plan["predicted"]["peak_memory_bytes"].as_u64().unwrap();
    assert!(max_peak.abs_diff(peak) <= 1, "{max_peak} vs {peak}");
    let util = a["utilization"].as_f64().unwrap();
    let busiest = devices
        .iter()
        .map(|d| d["utilization"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(util, busiest);
}

/// A tp=2, pp=2 plan on 8 H100s: ranks map to stages and tp/dp ranks in Megatron's order, each stage's
/// devices show that stage's predicted peak, and the total is nvidia-smi's 81,559 MiB per H100.
#[test]
fn smi_of_a_pipeline_plan_on_h100s() {
    let d = std::env::temp_dir().join(format!("moai-smi-pp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    stdout_ok(&[
        "plan",
        "llama:layers=8,hidden=512,heads=8,kv_heads=8,ffn=1376,vocab=8000",
        "--gpu",
        "h100",
        "--devices",
        "8",
        "--tp",
        "2",
        "--pp",
        "2",
        "--batch-size",
        "64",
        "--seq-len",
        "256",
        "--no-progress",
        "--out",
        d.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout_ok(&[
        "smi",
        d.to_str().unwrap(),
        "--json",
        "--breakdown",
    ]))
    .unwrap();
    assert_eq!(v["accelerator"]["flavor"], "custom: 8 h100");
    assert_eq!(v["accelerator"]["memory_total_mib"], 8 * 81_559);
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("plan.json")).unwrap()).unwrap();
    let stages = plan["predicted"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    for (rank, dev) in devices.iter().enumerate() {
        let stage = rank / 4;
        assert_eq!(dev["stage"], stage);
        assert_eq!(dev["tp_rank"], rank % 2);
        assert_eq!(dev["dp_rank"], (rank / 2) % 2);
        let peak = stages[stage]["peak_bytes"].as_u64().unwrap();
        assert_eq!(dev["memory_used_mib"], (peak + (1 << 19)) >> 20);
        let w = stages[stage]["weights_bytes"].as_u64().unwrap();
        assert_eq!(dev["breakdown"]["weights"], (w + (1 << 19)) >> 20);
    }
    let sum: u64 = devices
        .iter()
        .map(|d| d["memory_used_mib"].as_u64().unwrap())
        .sum();
    assert_eq!(v["accelerator"]["memory_used_mib"], sum);
    // Each stage shows its own figures: the stages hold different layers (the last one the LM head).
    assert_ne!(stages[0]["peak_bytes"], stages[1]["peak_bytes"]);
    assert_ne!(devices[0]["memory_used_mib"], devices[4]["memory_used_mib"]);
}

#[test]
fn smi_without_a_plan_shows_the_current_flavor_before_a_job() {
    let text = stdout_ok(&["smi"]);
    let acc = rows(&text, |c| c == "* 0");
    assert_eq!(
        acc[0],
        [
            "* 0",
            "MoAI Accelerator",
            "4xLarge.2048GB",
            "-",
            "2096640 MiB",
            "-"
        ]
    );
    let devices = rows(&text, |c| c.parse::<u64>().is_ok());
    assert_eq!(devices.len(), 32);
    assert!(
        devices.iter().all(|r| r[2..6] == ["-", "-", "-", "-"]),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout_ok(&["smi", "--json"])).unwrap();
    assert!(v["accelerator"]["memory_used_mib"].is_null());
    assert!(v["devices"][0]["stage"].is_null());
    assert_eq!(v["devices"][31]["memory_total_mib"], 65_520);
}

#[test]
fn smi_rejects_other_versions_and_corrupt_plans_in_one_line() {
    let good = std::fs::read_to_string(main_job_out().join("plan.json")).unwrap();
    let d = std::env::temp_dir().join(format!("moai-smi-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&good).unwrap();
    old.as_object_mut().unwrap().remove("format_version");
    let mut future = old.clone();
    future["format_version"] = serde_json::json!(3);
    let mut broken: serde_json::Value = serde_json::from_str(&good).unwrap();
    broken["predicted"]["stages"] = serde_json::json!([]);
    let cases = [
        (
            old.to_string(),
            "has no format_version (written by another version of moai-compile)",
        ),
        (
            future.to_string(),
            "plan file format 3 but this moai-compile reads format 2",
        ),
        (good[..good.len() / 2].to_string(), "corrupt plan file"),
        (
            broken.to_string(),
            "corrupt plan file: predicted.stages has 0 entries for 1 pipeline stages",
        ),
        ("{}".to_string(), "has no format_version"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = d.join(format!("plan{i}.json"));
        std::fs::write(&f, text).unwrap();
        let e = crate::cli::fails(&["smi", f.to_str().unwrap()]);
        assert!(e.starts_with(&format!("error: {}: ", f.display())), "{e}");
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = crate::cli::fails(&["smi", d.join("nothing").to_str().unwrap()]);
    assert!(e.contains("cannot read the plan"), "{e}");
}
