//! Roofline efficiencies per device and the allocator model, loaded from the committed data file
//! `data/efficiency.json`.
//!
//! H100 and A100 coefficients are *fitted* (see [`crate::fit`] and the test
//! `fit::fitted_coefficients_match_committed` that recomputes them from `data/truth/`); AMD
//! coefficients are *assumptions* taken from published results, with citations in the file's
//! `source` fields.

use crate::device::Gpu;
use crate::error::{CostError, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The committed coefficients, embedded at build time.
pub const EFFICIENCY_JSON: &str = include_str!("../data/efficiency.json");

/// Achieved fractions of peak for one device, and the host's per-kernel cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// GPU kind.
    pub gpu: Gpu,
    /// Matmul throughput as a fraction of the dtype's peak.
    pub matmul: f64,
    /// Fused-attention throughput as a fraction of the bf16 peak.
    pub attention: f64,
    /// Memory-bound kernels' bandwidth as a fraction of the HBM peak.
    pub memory: f64,
    /// Host time to issue one kernel (framework + launch), seconds; a phase is never faster than its
    /// kernel count times this.
    pub launch_overhead_s: f64,
    /// Fitted or assumed, and from what.
    pub source: String,
}

/// The memory model's fitted coefficients (the file's `allocator` section); see
/// [`crate::memory::MemoryCoefficients`] and the mechanisms in [`crate::memory`].
pub use crate::memory::MemoryCoefficients as Allocator;

/// The data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyFile {
    /// Format version (1).
    pub format_version: u32,
    /// How the fitted entries were produced.
    pub procedure: String,
    /// One entry per GPU kind.
    pub devices: Vec<Efficiency>,
    /// Allocator model.
    pub allocator: Allocator,
}

impl EfficiencyFile {
    /// Parses and checks the file: every GPU kind present once, fractions in (0, 1].
    pub fn from_json(text: &str, origin: &str) -> Result<EfficiencyFile> {
        let err = |reason: String| CostError::Profile {
            origin: origin.to_string(),
            reason,
        };
        let f: EfficiencyFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        for g in Gpu::ALL {
            let n = f.devices.iter().filter(|e| e.gpu == g).count();
            if n != 1 {
                return Err(err(format!("{n} entries for {g}, expected 1")));
            }
        }
        for e in &f.devices {
            for (name, v) in [
                ("matmul", e.matmul),
                ("attention", e.attention),
                ("memory", e.memory),
            ] {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(err(format!(
                        "{}: {name} efficiency {v} outside (0, 1]",
                        e.gpu
                    )));
                }
            }
            if !(e.launch_overhead_s >= 0.0) {
                return Err(err(format!("{}: negative launch overhead", e.gpu)));
            }
        }
        Ok(f)
    }

    /// The entry of a GPU kind.
    pub fn get(&self, gpu: Gpu) -> &Efficiency {
        self.devices
            .iter()
            .find(|e| e.gpu == gpu)
            .unwrap_or(&self.devices[0])
    }

    /// Replaces the entry of a GPU kind.
    pub fn set(&mut self, eff: Efficiency) {
        if let Some(e) = self.devices.iter_mut().find(|e| e.gpu == eff.gpu) {
            *e = eff;
        } else {
            self.devices.push(eff);
        }
    }
}

/// The committed coefficients (parsed once).
pub fn committed() -> &'static EfficiencyFile {
    static FILE: OnceLock<EfficiencyFile> = OnceLock::new();
    FILE.get_or_init(|| {
        EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap_or_else(|_| {
            EfficiencyFile {
                // Unreachable with the shipped file (a unit test parses it); keep a usable fallback.
                format_version: 1,
                procedure: "fallback".into(),
                devices: Gpu::ALL
                    .iter()
                    .map(|g| Efficiency {
                        gpu: *g,
                        matmul: 0.5,
                        attention: 0.4,
                        memory: 0.7,
                        launch_overhead_s: 1e-5,
                        source: "fallback".into(),
                    })
                    .collect(),
                allocator: Allocator::default(),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_file_parses() {
        let f = EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap();
        assert_eq!(f.devices.len(), 5);
        assert!(f.get(Gpu::Mi250).source.contains("assumption"));
    }

    #[test]
    fn rejects_out_of_range() {
        let mut f = committed().clone();
        f.devices[0].matmul = 1.5;
        let text = serde_json::to_string(&f).unwrap();
        assert!(
            EfficiencyFile::from_json(&text, "x")
                .unwrap_err()
                .to_string()
                .contains("outside (0, 1]")
        );
    }
}
