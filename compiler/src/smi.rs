//! `moai-compile smi`: the virtual accelerator and its physical devices as a plan will use them, in the
//! style of the platform's `moreh-smi` (and `rocm-smi`/`nvidia-smi`).
//!
//! Every figure comes from the plan file: the cost model's own per-stage estimate
//! (`predicted.stages`: the memory breakdown and compute seconds of each pipeline stage, the same numbers
//! as the report), not a second computation. A device's memory usage is its stage's predicted peak in
//! MiB; the accelerator's is the sum over devices. Utilization is the fraction of the step a device runs
//! kernels; the accelerator's is the busiest device's. Total memory is what the runtime reports for one
//! device ([`moai_costmodel::runtime_memory`], e.g. 65,520 MiB per MI250 GCD), unless a cluster file set
//! another memory size.

use crate::current::Current;
use crate::emit::PLAN_FORMAT_VERSION;
use crate::plan::{ClusterInfo, PlanConfig, Predicted};
use moai_costmodel::{Cluster, Gpu, runtime_memory};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What can go wrong reading a plan file: one line naming the file.
#[derive(Debug, Error)]
pub enum SmiError {
    /// The file cannot be read.
    #[error("{path}: cannot read the plan: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not JSON, or not the shape of a plan file.
    #[error("{path}: corrupt plan file: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A plan file of another format version.
    #[error(
        "{path}: plan file {found} but this moai-compile reads format {PLAN_FORMAT_VERSION}: re-run `moai-compile plan ... --out DIR` to write it again"
    )]
    Version {
        /// The file.
        path: String,
        /// What was found, in words.
        found: String,
    },
}

/// The accelerator row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorRow {
    /// Flavor name (or `custom: N kind` for a cluster without one).
    pub flavor: String,
    /// Predicted memory usage summed over devices, MiB (`None` before a job).
    pub memory_used_mib: Option<u64>,
    /// Total memory over devices, MiB.
    pub memory_total_mib: u64,
    /// Predicted utilization: the busiest device's fraction of the step spent in kernels.
    pub utilization: Option<f64>,
}

/// Memory breakdown of one device, MiB (`--breakdown`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakdownMib {
    /// Weights.
    pub weights: u64,
    /// Gradients.
    pub gradients: u64,
    /// Optimizer state.
    pub optimizer_state: u64,
    /// Saved activations.
    pub activations: u64,
    /// Transient buffers.
    pub transients: u64,
}

/// One physical device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Server index.
    pub server: u64,
    /// Device index inside the server.
    pub device: u64,
    /// Pipeline stage (`None` before a job).
    pub stage: Option<u64>,
    /// Tensor-parallel rank.
    pub tp_rank: Option<u64>,
    /// Data-parallel rank.
    pub dp_rank: Option<u64>,
    /// Predicted peak memory, MiB.
    pub memory_used_mib: Option<u64>,
    /// Total memory the runtime reports, MiB.
    pub memory_total_mib: u64,
    /// Fraction of the step this device runs kernels.
    pub utilization: Option<f64>,
    /// Memory breakdown (`--breakdown` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub breakdown: Option<BreakdownMib>,
}

/// What `smi` shows (and `smi --json` prints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmiReport {
    /// The virtual accelerator.
    pub accelerator: AcceleratorRow,
    /// The physical devices in rank order.
    pub devices: Vec<DeviceRow>,
}

/// The parts of a plan file `smi` reads.
#[derive(Debug, Deserialize)]
struct PlanFile {
    cluster: ClusterInfo,
    plan: PlanConfig,
    predicted: Predicted,
}

/// `plan.json` itself, or `DIR/plan.json` for a directory.
pub fn plan_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("plan.json")
    } else {
        p.to_path_buf()
    }
}

/// Total memory of one device in MiB: what the runtime reports for the kind, or the cluster's own
/// memory size when a cluster file changed it; and a sentence naming the source.
pub fn device_total_mib(gpu: Gpu, memory_per_device_bytes: u64) -> (u64, String) {
    if memory_per_device_bytes == gpu.spec().hbm_bytes {
        let r = runtime_memory(gpu);
        let unit = if gpu.is_gcd() { " GCD" } else { "" };
        (
            r.total_mib,
            format!(
                "{} MiB per {gpu}{unit}, as {} reports it (costmodel/data/runtime_memory.csv)",
                r.total_mib, r.reported_by
            ),
        )
    } else {
        let mib = memory_per_device_bytes >> 20;
        (
            mib,
            format!("{mib} MiB per {gpu}, the cluster file's memory_per_device_bytes"),
        )
    }
}

fn flavor_label(flavor: Option<&str>, devices: u64, gpu: &str) -> String {
    match flavor {
        Some(f) => f.to_string(),
        None => format!("custom: {devices} {gpu}"),
    }
}

fn mib(bytes: u64) -> u64 {
    (bytes + (1 << 19)) >> 20
}

/// Reads a plan file (or `--out` directory) into the smi view; `breakdown` adds the per-device memory
/// breakdown. Returns the report and the sentence naming the total-memory source.
pub fn from_plan_file(path: &Path, breakdown: bool) -> Result<(SmiReport, String), SmiError> {
    let file = plan_path(path);
    let name = file.display().to_string();
    let text = std::fs::read_to_string(&file).map_err(|source| SmiError::Read {
        path: name.clone(),
        source,
    })?;
    let corrupt = |reason: String| SmiError::Corrupt {
        path: name.clone(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if !v.is_object() {
        return Err(corrupt("not a JSON object".into()));
    }
    match v.get("format_version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(PLAN_FORMAT_VERSION) => {}
        Some(other) => {
            return Err(SmiError::Version {
                path: name,
                found: format!("format {other}"),
            });
        }
        None => {
            return Err(SmiError::Version {
                path: name,
                found: "has no format_version (written by another version of moai-compile)".into(),
            });
        }
    }
    let p: PlanFile = serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?;
    let gpu: Gpu = p
        .cluster
        .gpu
        .parse()
        .map_err(|e| corrupt(format!("cluster.gpu: {e}")))?;
    // The configuration as the planner holds it (the one conversion back from the plan view).
    let cfg = p.plan.to_config().map_err(|e| corrupt(e.to_string()))?;
    let (tp, dp, pp, cp) = (
        u64::from(cfg.tp),
        u64::from(cfg.dp),
        u64::from(cfg.pp),
        u64::from(cfg.cp),
    );
    let devices = p.cluster.devices;
    if tp == 0
        || dp == 0
        || pp == 0
        || cp == 0
        || tp
            .checked_mul(dp)
            .and_then(|x| x.checked_mul(pp))
            .and_then(|x| x.checked_mul(cp))
            != Some(devices)
    {
        let cp_part = if cp != 1 {
            format!(" × cp {cp}")
        } else {
            String::new()
        };
        return Err(corrupt(format!(
            "plan dp {dp} × tp {tp} × pp {pp}{cp_part} does not cover the cluster's {devices} devices"
        )));
    }
    if p.predicted.stages.len() as u64 != pp
        || p.predicted
            .stages
            .iter()
            .enumerate()
            .any(|(i, s)| s.stage != i as u64)
    {
        return Err(corrupt(format!(
            "predicted.stages has {} entries for {pp} pipeline stages",
            p.predicted.stages.len()
        )));
    }
    let per_server = p.cluster.devices_per_server;
    if per_server == 0 || per_server > devices {
        return Err(corrupt(format!(
            "cluster.devices_per_server {per_server} is not in 1..={devices}"
        )));
    }
    let step = p.predicted.step_time_s;
    if !(step.is_finite() && step > 0.0) {
        return Err(corrupt(format!(
            "predicted.step_time_s {step} is not a positive time"
        )));
    }
    let (total, source) = device_total_mib(gpu, p.cluster.memory_per_device_bytes);
    let mut rows = Vec::with_capacity(devices as usize);
    for rank in 0..devices {
        // Megatron-LM's rank order tp-cp-dp-pp: the cp ranks sit between the tp and dp ranks.
        let tp_rank = rank % tp;
        let dp_rank = (rank / (tp * cp)) % dp;
        let stage = rank / (tp * cp * dp);
        let s = &p.predicted.stages[stage as usize];
        rows.push(DeviceRow {
            server: rank / per_server,
            device: rank % per_server,
            stage: Some(stage),
            tp_rank: Some(tp_rank),
            dp_rank: Some(dp_rank),
            memory_used_mib: Some(mib(s.peak_bytes)),
            memory_total_mib: total,
            utilization: Some((s.compute_s / step).clamp(0.0, 1.0)),
            breakdown: breakdown.then(|| BreakdownMib {
                weights: mib(s.weights_bytes),
                gradients: mib(s.grads_bytes),
                optimizer_state: mib(s.optimizer_bytes),
                activations: mib(s.activations_bytes),
                transients: mib(s.transients_bytes),
            }),
        });
    }
    let used: u64 = rows.iter().filter_map(|r| r.memory_used_mib).sum();
    let util = rows
        .iter()
        .filter_map(|r| r.utilization)
        .fold(0.0, f64::max);
    Ok((
        SmiReport {
            accelerator: AcceleratorRow {
                flavor: flavor_label(p.cluster.flavor.as_deref(), devices, &p.cluster.gpu),
                memory_used_mib: Some(used),
                memory_total_mib: total * devices,
                utilization: Some(util),
            },
            devices: rows,
        },
        source,
    ))
}

/// The smi view of a cluster before any job: usage columns empty.
pub fn before_job(cluster: &Cluster) -> (SmiReport, String) {
    let (total, source) = device_total_mib(cluster.gpu, cluster.memory_per_device_bytes);
    let per = cluster.devices_per_server.max(1) as u64;
    let devices = cluster.devices as u64;
    let rows = (0..devices)
        .map(|r| DeviceRow {
            server: r / per,
            device: r % per,
            stage: None,
            tp_rank: None,
            dp_rank: None,
            memory_used_mib: None,
            memory_total_mib: total,
            utilization: None,
            breakdown: None,
        })
        .collect();
    (
        SmiReport {
            accelerator: AcceleratorRow {
                flavor: flavor_label(cluster.flavor.as_deref(), devices, cluster.gpu.name()),
                memory_used_mib: None,
                memory_total_mib: total * devices,
                utilization: None,
            },
            devices: rows,
        },
        source,
    )
}

/// The smi view of the current flavor (see [`crate::current`]).
pub fn for_current(cur: &Current) -> moai_costmodel::Result<(SmiReport, String)> {
    Ok(before_job(&Cluster::from_flavor(&cur.flavor, cur.gpu)?))
}

/// One table in the platform's style: `|  cell  |` columns, `+---+` rules, `+===+` under the header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
                + 4
        })
        .collect();
    let rule = |ch: char| {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&ch.to_string().repeat(*w));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!("  {c:<width$}  |", width = w - 4));
        }
        s.push('\n');
        s
    };
    let mut out = rule('-');
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    out.push_str(&rule('='));
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out.push_str(&rule('-'));
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn mib_cell(v: Option<u64>) -> String {
    v.map(|x| format!("{x} MiB")).unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The two tables (accelerator, then devices) and the total-memory note.
pub fn render(r: &SmiReport, source: &str, breakdown: bool) -> String {
    let a = &r.accelerator;
    let mut out = table(
        &[
            "Device",
            "Name",
            "Flavor",
            "Memory Usage",
            "Total Memory",
            "Utilization",
        ],
        &[vec![
            "* 0".into(),
            "MoAI Accelerator".into(),
            a.flavor.clone(),
            mib_cell(a.memory_used_mib),
            mib_cell(Some(a.memory_total_mib)),
            pct(a.utilization),
        ]],
    );
    out.push('\n');
    let mut header = vec![
        "Server",
        "Device",
        "Stage",
        "TP rank",
        "DP rank",
        "Memory Usage",
        "Total Memory",
        "Utilization",
    ];
    if breakdown {
        header.extend([
            "Weights",
            "Gradients",
            "Optimizer",
            "Activations",
            "Transients",
        ]);
    }
    let rows: Vec<Vec<String>> = r
        .devices
        .iter()
        .map(|d| {
            let mut row = vec![
                d.server.to_string(),
                d.device.to_string(),
                opt(d.stage),
                opt(d.tp_rank),
                opt(d.dp_rank),
                mib_cell(d.memory_used_mib),
                mib_cell(Some(d.memory_total_mib)),
                pct(d.utilization),
            ];
            if breakdown {
                let b = d.breakdown.as_ref();
                row.extend([
                    mib_cell(b.map(|b| b.weights)),
                    mib_cell(b.map(|b| b.gradients)),
                    mib_cell(b.map(|b| b.optimizer_state)),
                    mib_cell(b.map(|b| b.activations)),
                    mib_cell(b.map(|b| b.transients)),
                ]);
            }
            row
        })
        .collect();
    out.push_str(&table(&header, &rows));
    out.push_str(&format!("Total Memory: {source}.\n"));
    if a.memory_used_mib.is_some() {
        out.push_str(
            "Memory Usage and Utilization are predictions of the cost model for the plan: a device's peak \
allocated memory and the fraction of the step it runs kernels.\n",
        );
        if breakdown {
            out.push_str(
                "Memory Usage = weights + gradients + optimizer state + the allocator model applied to \
activations + transients (costmodel/data/efficiency.json), so the parts do not add up to it exactly.\n",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_a_job_the_usage_is_empty() {
        let c = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let (r, src) = before_job(&c);
        assert_eq!(r.accelerator.memory_total_mib, 2_096_640);
        assert_eq!(r.devices.len(), 32);
        assert_eq!((r.devices[9].server, r.devices[9].device), (1, 1));
        assert!(src.contains("65520 MiB per mi250 GCD"), "{src}");
        let text = render(&r, &src, false);
        assert!(
            text.contains("|  * 0     |  MoAI Accelerator  |  4xLarge.2048GB  |  -             |  2096640 MiB   |  -            |"),
            "{text}"
        );
    }

    #[test]
    fn cluster_file_memory_is_its_own_total() {
        let (mib, src) = device_total_mib(Gpu::H100, 40 << 30);
        assert_eq!(mib, 40960);
        assert!(src.contains("cluster file"), "{src}");
        assert_eq!(
            device_total_mib(Gpu::H100, Gpu::H100.spec().hbm_bytes).0,
            81_559
        );
    }

    #[test]
    fn bad_plan_files_are_one_line() {
        let d = std::env::temp_dir().join(format!("moai-smi-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("plan.json");
        for (text, want) in [
            ("{not json", "corrupt plan file"),
            ("[1,2]", "not a JSON object"),
            ("{\"plan\":{}}", "has no format_version"),
            (
                "{\"format_version\":1}",
                "plan file format 1 but this moai-compile reads format 2",
            ),
            ("{\"format_version\":2,\"plan\":3}", "corrupt plan file"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = from_plan_file(&d, false).unwrap_err().to_string();
            assert!(e.starts_with(&f.display().to_string()), "{e}");
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = from_plan_file(&d.join("missing.json"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json: cannot read the plan"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
