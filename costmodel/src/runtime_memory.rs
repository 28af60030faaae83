//! Device memory as the runtime reports it: the "Total Memory" that `rocm-smi` / `nvidia-smi` (and the
//! platform's own smi) show for one device, in MiB.
//!
//! This is a little less than the data sheet's HBM size that the planner budgets with
//! ([`crate::DeviceSpec::hbm_bytes`], 64 GiB = 65,536 MiB for an MI250 GCD): the driver keeps a reserve.
//! The figures and their sources are in `data/runtime_memory.csv` (embedded at build time):
//!
//! | kind | MiB per device | reported by |
//! | --- | ---: | --- |
//! | mi250 (one GCD) | 65,520 | rocm-smi; 32 GCDs = the platform's 2,096,640 MiB for 4xLarge.2048GB |
//! | mi210 | 65,520 | rocm-smi |
//! | mi250x (one GCD) | 65,520 | as mi250 (the same 64 GB gfx90a GCD memory) |
//! | mi300x | 196,592 | rocm-smi |
//! | h100 (SXM5 80 GB HBM3) | 81,559 | nvidia-smi |
//! | a100 (SXM4 80 GB) | 81,920 | nvidia-smi |

use crate::device::{Gpu, split_csv_line};
use std::sync::OnceLock;

/// The table, embedded at build time.
pub const RUNTIME_MEMORY_CSV: &str = include_str!("../data/runtime_memory.csv");

/// The total memory the runtime reports for one device of a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeMemory {
    /// GPU kind.
    pub gpu: Gpu,
    /// Total memory in MiB, as the runtime's smi tool prints it.
    pub total_mib: u64,
    /// The tool that reports it.
    pub reported_by: String,
    /// Where the figure comes from.
    pub source: String,
}

/// Parses the runtime-memory table (`gpu,total_MiB,total_bytes,reported_by,source`); `None` when a row is
/// malformed, a kind is missing, or MiB and bytes disagree.
pub fn parse_runtime_memory(text: &str) -> Option<Vec<RuntimeMemory>> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f = split_csv_line(line);
        if f.len() != 5 {
            return None;
        }
        let gpu: Gpu = f[0].trim().parse().ok()?;
        let total_mib: u64 = f[1].trim().parse().ok()?;
        let bytes: u64 = f[2].trim().parse().ok()?;
        if bytes != total_mib.checked_mul(1 << 20)? {
            return None;
        }
        rows.push(RuntimeMemory {
            gpu,
            total_mib,
            reported_by: f[3].trim().to_string(),
            source: f[4].trim().to_string(),
        });
    }
    Gpu::ALL
        .iter()
        .map(|g| rows.iter().find(|r| r.gpu == *g).cloned())
        .collect()
}

fn table() -> &'static [RuntimeMemory] {
    static TABLE: OnceLock<Vec<RuntimeMemory>> = OnceLock::new();
    // The embedded table is part of the build; a malformed one is caught by the tests below.
    TABLE.get_or_init(|| {
        parse_runtime_memory(RUNTIME_MEMORY_CSV).unwrap_or_else(|| {
            tracing::error!(
                "the embedded runtime-memory table does not parse; device memory falls back to the data sheets (a packaging bug: please report it)"
            );
            Vec::new()
        })
    })
}

/// The runtime-reported total memory of one device of `gpu`. Falls back to the data sheet's HBM size
/// (in MiB) only if the embedded table were broken, which the tests rule out.
pub fn runtime_memory(gpu: Gpu) -> RuntimeMemory {
    table()
        .iter()
        .find(|r| r.gpu == gpu)
        .cloned()
        .unwrap_or_else(|| RuntimeMemory {
            gpu,
            total_mib: gpu.spec().hbm_bytes >> 20,
            reported_by: "data sheet".into(),
            source: "data/hardware_peaks.csv".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_has_every_kind() {
        let t = parse_runtime_memory(RUNTIME_MEMORY_CSV).expect("table parses");
        assert_eq!(t.len(), Gpu::ALL.len());
        assert_eq!(runtime_memory(Gpu::Mi250).total_mib, 65_520);
        assert_eq!(runtime_memory(Gpu::H100).total_mib, 81_559);
        assert_eq!(runtime_memory(Gpu::A100).total_mib, 81_920);
        assert_eq!(runtime_memory(Gpu::Mi300x).total_mib, 196_592);
        assert_eq!(runtime_memory(Gpu::Mi210).total_mib, 65_520);
        // 4xLarge.2048GB = 32 GCDs: the platform's smi total.
        assert_eq!(32 * runtime_memory(Gpu::Mi250).total_mib, 2_096_640);
        for r in &t {
            assert!(!r.source.is_empty() && !r.reported_by.is_empty(), "{r:?}");
            // Never more than the data sheet's HBM.
            assert!(r.total_mib <= r.gpu.spec().hbm_bytes >> 20, "{r:?}");
        }
    }

    #[test]
    fn inconsistent_rows_are_rejected() {
        let h = "gpu,total_MiB,total_bytes,reported_by,source\n";
        let bad = format!("{h}mi250,65520,1,x,y\n");
        assert!(parse_runtime_memory(&bad).is_none());
        let missing = format!("{h}mi250,1,1048576,x,y\n");
        assert!(parse_runtime_memory(&missing).is_none());
    }
}
