//! The shipped truth files and reference tables are well formed: every truth row parses, names its
//! source, builds its model's training graph and step profile, and fits its cluster; the reference
//! tables parse with the documented columns; the totals meet issue 11's data targets.

use crate::real::real_profile;
use crate::support::data;
use moai_costmodel::validate::{TruthRow, read_truth};
use moai_costmodel::{Gpu, Stack};
use moai_models::ArchConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Every `*.jsonl` file under `data/truth/`, sorted by name.
fn truth_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data("truth"))
        .expect("data/truth exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Every truth row with the name of its file.
fn all_rows() -> Vec<(String, TruthRow)> {
    truth_files()
        .iter()
        .flat_map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            read_truth(path)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(move |row| (name.clone(), row))
        })
        .collect()
}

#[test]
fn every_truth_file_parses_with_unique_names_and_sources() {
    let files = truth_files();
    assert!(files.len() >= 2, "no truth files found in data/truth");
    for path in &files {
        let rows = read_truth(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!rows.is_empty(), "{} holds no rows", path.display());
        let mut names = BTreeSet::new();
        for row in &rows {
            assert!(
                !row.source.trim().is_empty(),
                "{}: row `{}` has no source",
                path.display(),
                row.name
            );
            assert!(
                names.insert(row.name.clone()),
                "{}: row name `{}` appears twice",
                path.display(),
                row.name
            );
        }
    }
}

#[test]
fn every_truth_row_builds_its_model_cluster_and_config() {
    for (file, row) in all_rows() {
        let at = format!("{file}: `{}`", row.name);
        let cluster = row
            .cluster()
            .unwrap_or_else(|e| panic!("{at}: cluster: {e}"));
        row.config
            .validate_cluster(&cluster)
            .unwrap_or_else(|e| panic!("{at}: config vs cluster: {e}"));
        let profile = real_profile(&row).unwrap_or_else(|e| panic!("{at}: model: {e}"));
        row.config
            .validate_profile(&profile)
            .unwrap_or_else(|e| panic!("{at}: config vs step profile: {e}"));
        assert!(
            row.measured_step_time().is_some_and(|t| t > 0.0)
                || row.measured.peak_memory_bytes.is_some_and(|m| m > 0.0),
            "{at}: nothing positive measured"
        );
    }
}

/// Rows that quote the source's parameter count as `NumParams=<n>` (llm-foundry) map the source's
/// architecture onto a moai spec with exactly that many parameters.
#[test]
fn quoted_parameter_counts_match_the_specs() {
    let mut checked = 0;
    for (file, row) in all_rows() {
        let Some(rest) = row.source.split("NumParams=").nth(1) else {
            continue;
        };
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let quoted: u64 = digits
            .parse()
            .unwrap_or_else(|e| panic!("{file}: `{}`: NumParams: {e}", row.name));
        let arch = ArchConfig::from_spec(&row.model)
            .unwrap_or_else(|e| panic!("{file}: `{}`: {e}", row.name));
        assert_eq!(
            arch.params(),
            quoted,
            "{file}: `{}`: spec {} has {} parameters, the source says {quoted}",
            row.name,
            row.model,
            arch.params()
        );
        checked += 1;
    }
    assert!(checked > 0, "no row quotes NumParams");
}

/// The H100 measurements of this project are eager Hugging Face steps; Megatron SC21 is Megatron;
/// llm-foundry is FSDP; torchtitan runs without `torch.compile` are torchtitan.
#[test]
fn stacks_are_recorded_per_source() {
    for (file, row) in all_rows() {
        let expected = if file.starts_with("h100_llama") {
            Some(Stack::Eager)
        } else if file.starts_with("megatron_") {
            Some(Stack::Megatron)
        } else if file.starts_with("llmfoundry_") {
            Some(Stack::Fsdp)
        } else if file.starts_with("torchtitan") && row.name.contains("compile") {
            // Compiled torchtitan runs: the FSDP stack's fitted fusion stands in for
            // torch.compile's (as in long_context_torchtitan.jsonl).
            Some(Stack::Fsdp)
        } else if file.starts_with("torchtitan") || file.starts_with("frontier_") {
            Some(Stack::Torchtitan)
        } else {
            None
        };
        if let Some(stack) = expected {
            assert_eq!(row.config.stack, stack, "{file}: `{}`", row.name);
        }
    }
}

/// Issue 11's data targets over all truth files: at least 50 rows, six architectures and four GPU
/// kinds, one of them AMD (H100, the HBM2e H100 of Grand Teton, H200, A100, MI250 (MosaicML), MI250X
/// (LUMI and Frontier GCD runs) and MI325X).
#[test]
fn truth_totals_meet_the_data_targets() {
    let rows = all_rows();
    let gpus: BTreeSet<Gpu> = rows
        .iter()
        .map(|(_, r)| r.cluster.gpu.parse::<Gpu>().unwrap())
        .collect();
    let specs: BTreeSet<&str> = rows.iter().map(|(_, r)| r.model.as_str()).collect();
    // Architectures ignore `seq=` (the learned-position length), which does not change the shape of
    // the decoder layers.
    let archs: BTreeSet<String> = specs
        .iter()
        .map(|s| {
            s.split(',')
                .filter(|kv| !kv.starts_with("seq="))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let mut per_gpu: BTreeMap<Gpu, usize> = BTreeMap::new();
    for (_, r) in &rows {
        *per_gpu
            .entry(r.cluster.gpu.parse::<Gpu>().unwrap())
            .or_default() += 1;
    }
    eprintln!(
        "{} rows, {} model specs, {} architectures, rows per GPU {per_gpu:?}",
        rows.len(),
        specs.len(),
        archs.len()
    );
    assert!(rows.len() >= 50, "{} rows", rows.len());
    assert!(archs.len() >= 6, "{} architectures", archs.len());
    assert!(gpus.len() >= 4, "GPU kinds {gpus:?}");
    assert!(gpus.iter().any(|g| g.is_amd()), "no AMD GPU in {gpus:?}");
}

/// Splits one CSV line: fields separated by commas, a field may be double-quoted (and then hold
/// commas); `""` inside quotes is a literal quote.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A reference table's rows as header-keyed maps, after checking the header.
fn table(rel: &str, header: &[&str]) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(data(rel)).unwrap();
    let mut lines = text.lines();
    let head = csv_fields(lines.next().unwrap_or_default());
    assert_eq!(head, header, "{rel}: header");
    lines
        .enumerate()
        .map(|(i, line)| {
            let f = csv_fields(line);
            assert_eq!(f.len(), header.len(), "{rel} line {}: {line}", i + 2);
            assert!(
                !f.last().unwrap().trim().is_empty(),
                "{rel} line {}: no source",
                i + 2
            );
            header
                .iter()
                .map(|h| h.to_string())
                .zip(f)
                .collect::<BTreeMap<_, _>>()
        })
        .collect()
}

fn num(row: &BTreeMap<String, String>, key: &str) -> f64 {
    let v: f64 = row[key]
        .parse()
        .unwrap_or_else(|e| panic!("{key} = `{}`: {e}", row[key]));
    assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    v
}

#[test]
fn matmul_table_is_well_formed_and_covers_every_gpu_in_bf16() {
    let rows = table(
        "matmul_max_achievable.csv",
        &[
            "gpu",
            "dtype",
            "peak_tflops",
            "max_achievable_tflops",
            "m",
            "n",
            "k",
            "source",
        ],
    );
    let mut seen = BTreeSet::new();
    for r in &rows {
        let gpu: Gpu = r["gpu"].parse().unwrap();
        assert!(
            ["bf16", "fp16", "fp8"].contains(&r["dtype"].as_str()),
            "{r:?}"
        );
        assert!(
            seen.insert((gpu, r["dtype"].clone())),
            "duplicate {gpu} {}",
            r["dtype"]
        );
        let (peak, best) = (num(r, "peak_tflops"), num(r, "max_achievable_tflops"));
        assert!(best < peak, "{r:?}: achievable above peak");
        for k in ["m", "n", "k"] {
            assert!(r[k].parse::<u64>().is_ok_and(|v| v > 0), "{r:?}");
        }
        if r["dtype"] == "bf16" {
            let moai_peak = gpu.spec().peak_bf16_flops / 1e12;
            assert!(
                (peak / moai_peak - 1.0).abs() < 1e-3,
                "{gpu}: bf16 peak {peak} differs from hardware_peaks.csv {moai_peak}"
            );
        }
    }
    for gpu in Gpu::ALL {
        assert!(
            seen.contains(&(gpu, "bf16".to_string())),
            "no bf16 row for {gpu}"
        );
    }
}

#[test]
fn busbw_table_is_well_formed() {
    let rows = table(
        "collective_busbw.csv",
        &[
            "gpu",
            "link",
            "collective",
            "ranks",
            "message_bytes",
            "busbw_gbps",
            "source",
        ],
    );
    assert!(rows.len() >= 20, "{} rows", rows.len());
    let mut keys = BTreeSet::new();
    let mut gpus = BTreeSet::new();
    for r in &rows {
        gpus.insert(r["gpu"].parse::<Gpu>().unwrap());
        assert!(
            ["all_reduce", "all_gather", "reduce_scatter"].contains(&r["collective"].as_str()),
            "{r:?}"
        );
        let ranks: u32 = r["ranks"].parse().unwrap();
        assert!(ranks >= 2, "{r:?}");
        let bytes: u64 = r["message_bytes"].parse().unwrap();
        assert!(bytes > 0, "{r:?}");
        num(r, "busbw_gbps");
        assert!(
            keys.insert((
                r["gpu"].clone(),
                r["link"].clone(),
                r["collective"].clone(),
                ranks,
                bytes
            )),
            "duplicate row {r:?}"
        );
    }
    assert!(gpus.iter().any(|g| g.is_amd()), "no AMD link in {gpus:?}");
    assert!(gpus.contains(&Gpu::H100) && gpus.contains(&Gpu::A100));
}
