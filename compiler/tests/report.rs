//! `--emit report`: a self-contained HTML page with the four charts; rendered by headless Chromium
//! when it is installed (required in CI). The screenshot of the Chromium test is docs/report.png:
//! `MOAI_UPDATE_DOCS=1 cargo test --release -p moai-compiler --test main report_renders` rewrites it.

use crate::common::moai;
use std::path::Path;
use std::process::Command;

const SMALL: &str = "llama:layers=8,hidden=512,heads=8,kv_heads=8,ffn=1376,vocab=8000";
const CHROMIUM: &str = "/usr/bin/chromium";

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("moai-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The small plan of the structure test: 8 H100s, two pipeline stages.
const SMALL_PLAN: &[&str] = &[
    "plan",
    SMALL,
    "--gpu",
    "h100",
    "--devices",
    "8",
    "--batch-size",
    "64",
    "--seq-len",
    "256",
    "--pp",
    "2",
];

/// The plan of docs/report.png: llama2-13b on 4xLarge.2048GB with four pipeline stages, so that the
/// timeline shows the 1F1B warm-up and cool-down bubbles.
const DOCS_PLAN: &[&str] = &[
    "plan",
    "models/llama2-13b.onnx",
    "--flavor",
    "4xLarge.2048GB",
    "--pp",
    "4",
];

fn write_report(out: &Path, plan: &[&str]) -> String {
    let o = out.to_str().expect("utf-8 temp path");
    let mut args = plan.to_vec();
    args.extend(["--no-progress", "--emit", "report", "--out", o]);
    let r = moai(&args);
    assert!(
        r.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::read_to_string(out.join("report.html")).expect("report.html written")
}

#[test]
fn report_has_the_four_charts_and_no_external_resources() {
    let out = tmp("html");
    let html = write_report(&out, SMALL_PLAN);
    assert!(html.starts_with("<!DOCTYPE html>"));
    for heading in [
        "Pipeline timeline",
        "Candidates: throughput vs peak memory",
        "Memory per pipeline stage",
        "Rejected candidates",
    ] {
        assert!(html.contains(heading), "missing section {heading}");
    }
    assert_eq!(html.matches("<svg").count(), 3, "three inline SVG charts");
    // pp=2: two timeline rows, forward and backward tasks of 2 stages.
    assert!(html.contains(">stage 1</text>"));
    assert!(html.contains("#4a7fd4") && html.contains("#f0a040"));
    assert!(html.contains("capacity"));
    assert!(html.contains(">chosen</text>"));
    for bad in ["<script", "<link", "url(", "https://", "src=\""] {
        assert!(
            !html.contains(bad),
            "report must be self-contained, found {bad}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn report_renders_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "{CHROMIUM} is required in CI (scripts/install-deps.sh installs it)"
        );
        eprintln!("note: {CHROMIUM} not found; skipping the screenshot check locally");
        return;
    }
    let out = tmp("png");
    let html = write_report(&out, DOCS_PLAN);
    assert!(html.contains(">stage 3</text>"), "four timeline rows");
    let png = out.join("report.png");
    let profile = out.join("chromium-profile");
    let status = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1400,1800")
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .expect("runs chromium");
    assert!(
        status.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert!(
        bytes.len() > 20_000,
        "screenshot too small ({} bytes) to hold the charts",
        bytes.len()
    );
    // MOAI_UPDATE_DOCS=1 refreshes the screenshot the README shows.
    if std::env::var_os("MOAI_UPDATE_DOCS").is_some() {
        let docs = crate::common::repo().join("docs/report.png");
        std::fs::write(&docs, &bytes).unwrap_or_else(|e| panic!("{}: {e}", docs.display()));
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sweep_prints_a_row_per_flavor_and_a_plot() {
    let out = tmp("sweep");
    std::fs::create_dir_all(&out).unwrap();
    let svg = out.join("sweep.svg");
    let r = moai(&[
        "--log",
        "warn",
        "sweep",
        SMALL,
        "--flavors",
        "Small.64GB..Large.256GB",
        "--batch-size",
        "32",
        "--seq-len",
        "256",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    for f in ["Small.64GB", "Medium.128GB", "Large.256GB"] {
        assert!(
            text.lines().any(|l| l.starts_with(f)),
            "row for {f} missing:\n{text}"
        );
    }
    assert!(
        text.contains("100.0%"),
        "the first fitting flavor is the scaling baseline:\n{text}"
    );
    let plot = std::fs::read_to_string(&svg).expect("plot written");
    assert!(plot.contains("<polyline") && plot.contains("ideal scaling"));
    let _ = std::fs::remove_dir_all(&out);
}
