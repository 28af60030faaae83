//! The time model's fitted coefficients and the allocator model, loaded from the committed data file
//! `data/efficiency.json` (format 2).
//!
//! Per GPU kind (physics): how close training GEMMs, fused attention and memory-bound kernels come to
//! the device's *shape-dependent* rate (the kernel models of [`crate::ops`]: maximum achievable matmul
//! throughput × tile/wave/short-K efficiency; HBM peak). Per software stack (overheads): host seconds
//! per kernel and a fixed per-step cost. Coefficients of a GPU or stack with truth rows are *fitted*
//! jointly over every truth file (see [`crate::fit`] and the test
//! `fit::fitted_coefficients_match_committed`); the others keep their documented starting values
//! (the `source` fields say which).

use crate::device::Gpu;
use crate::error::{CostError, Result};
use crate::stack::Stack;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The committed coefficients, embedded at build time.
pub const EFFICIENCY_JSON: &str = include_str!("../data/efficiency.json");

/// Per-device coefficients of the kernel models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// GPU kind.
    pub gpu: Gpu,
    /// Training GEMMs' throughput as a fraction of the shape-dependent rate (maximum achievable matmul
    /// throughput × [`crate::ops::gemm_shape_efficiency`]).
    pub matmul: f64,
    /// Fused attention's throughput as a fraction of the maximum achievable matmul rate times
    /// [`crate::ops::attention_shape_efficiency`].
    pub attention: f64,
    /// Memory-bound kernels' bandwidth as a fraction of the HBM peak.
    pub memory: f64,
    /// Sustained tensor-core clock of a power-limited kind as a fraction of the full-power clock
    /// ([`Gpu::sustained_clock_bounds`]); 1 for the others. `matmul` and `attention` above already
    /// include it (they are the family's fractions times this clock).
    #[serde(default = "full_clock", skip_serializing_if = "is_full_clock")]
    pub clock: f64,
    /// Fitted or assumed, and from what.
    pub source: String,
}

/// Per-stack overheads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackCoefficients {
    /// The stack.
    pub stack: Stack,
    /// Host time to issue one kernel (framework dispatch + launch), seconds; a phase is never faster
    /// than its kernel count times this.
    pub launch_overhead_s: f64,
    /// Fixed seconds per optimizer step (gradient zeroing, loss synchronisation, scheduler, logging).
    pub step_overhead_s: f64,
    /// Fraction of the fusable memory-bound traffic (norms, elementwise, softmax) left after the
    /// stack's kernel fusion (1 for eager PyTorch, which runs every op as its own kernel): in the file,
    /// the fraction on the rows that do not run Transformer Engine's fused kernels; in the
    /// coefficients [`EfficiencyFile::costed`] returns, the fraction the stack leaves on its GPU.
    pub fused_bytes: f64,
    /// Fraction of the fusable traffic left where the stack runs Transformer Engine's fused kernels
    /// ([`Stack::runs_te_fused_kernels`]); fitted on those rows, absent = the stack's prior
    /// ([`Stack::fusion`]). [`EfficiencyFile::costed`] resolves it into `fused_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub te_fused_bytes: Option<f64>,
    /// Fitted or assumed, and from what.
    pub source: String,
}

fn full_clock() -> f64 {
    1.0
}

fn is_full_clock(c: &f64) -> bool {
    *c == 1.0
}

/// The memory model's fitted coefficients (the file's `allocator` section); see
/// [`crate::memory::MemoryCoefficients`] and the mechanisms in [`crate::memory`].
pub use crate::memory::MemoryCoefficients as Allocator;

/// The data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyFile {
    /// Format version (2).
    pub format_version: u32,
    /// How the fitted entries were produced.
    pub procedure: String,
    /// One entry per GPU kind.
    pub devices: Vec<Efficiency>,
    /// One entry per software stack.
    pub stacks: Vec<StackCoefficients>,
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
        for s in Stack::ALL {
            let n = f.stacks.iter().filter(|e| e.stack == s).count();
            if n != 1 {
                return Err(err(format!("{n} entries for stack {s}, expected 1")));
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
            let (lo, hi) = e
                .gpu
                .sustained_clock_bounds()
                .map_or((1.0, 1.0), |c| (c.lo, c.hi));
            if !(e.clock >= lo && e.clock <= hi) {
                return Err(err(format!(
                    "{}: clock {} outside [{lo:.4}, {hi}] (the sustained clock of a power-limited kind; 1 elsewhere)",
                    e.gpu, e.clock
                )));
            }
        }
        for s in &f.stacks {
            if !(s.launch_overhead_s >= 0.0 && s.step_overhead_s >= 0.0) {
                return Err(err(format!("{}: negative overhead", s.stack)));
            }
            if !(s.fused_bytes > 0.0 && s.fused_bytes <= 1.0) {
                return Err(err(format!(
                    "{}: fused_bytes {} outside (0, 1]",
                    s.stack, s.fused_bytes
                )));
            }
            if let Some(t) = s.te_fused_bytes
                && !(t > 0.0 && t <= 1.0)
            {
                return Err(err(format!(
                    "{}: te_fused_bytes {t} outside (0, 1]",
                    s.stack
                )));
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

    /// The overheads of a stack.
    pub fn stack(&self, stack: Stack) -> &StackCoefficients {
        let stack = stack.costed_as();
        self.stacks
            .iter()
            .find(|e| e.stack == stack)
            .unwrap_or(&self.stacks[0])
    }

    /// The coefficients a named stack is priced with on `gpu`: the entry of the stack it is costed as
    /// ([`Stack::costed_as`]) with the fraction of fusable bytes the named stack leaves there decided
    /// once, in `fused_bytes` ([`Stack::fused_bytes_on`]: its own fusion, and the Transformer Engine
    /// fraction `te_fused_bytes` where it runs Transformer Engine's fused kernels), and no
    /// `te_fused_bytes` left to decide again. The estimator reads `fused_bytes` of these coefficients
    /// as it is ([`crate::estimate::PhaseSums::kernel_time`]).
    pub fn costed(&self, stack: Stack, gpu: Gpu) -> std::borrow::Cow<'_, StackCoefficients> {
        let sc = self.stack(stack);
        let fused_bytes = stack.fused_bytes_on(gpu, sc.fused_bytes, sc.te_fused_bytes);
        if fused_bytes == sc.fused_bytes && sc.te_fused_bytes.is_none() {
            std::borrow::Cow::Borrowed(sc)
        } else {
            std::borrow::Cow::Owned(StackCoefficients {
                fused_bytes,
                te_fused_bytes: None,
                ..sc.clone()
            })
        }
    }

    /// Replaces the entry of a stack.
    pub fn set_stack(&mut self, c: StackCoefficients) {
        if let Some(e) = self.stacks.iter_mut().find(|e| e.stack == c.stack) {
            *e = c;
        } else {
            self.stacks.push(c);
        }
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
        EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap_or_else(|e| {
            tracing::error!(
                "the embedded coefficients do not parse ({e}); predictions use fallback coefficients (a packaging bug: please report it)"
            );
            EfficiencyFile {
                // Unreachable with the shipped file (a unit test parses it); keep a usable fallback.
                format_version: 2,
                procedure: "fallback".into(),
                devices: Gpu::ALL
                    .iter()
                    .map(|g| Efficiency {
                        gpu: *g,
                        matmul: 0.8,
                        attention: 0.6,
                        memory: 0.7,
                        clock: 1.0,
                        source: "fallback".into(),
                    })
                    .collect(),
                stacks: Stack::ALL
                    .iter()
                    .map(|s| StackCoefficients {
                        stack: *s,
                        launch_overhead_s: 1e-5,
                        step_overhead_s: 0.0,
                        fused_bytes: s.fusion().0,
                        te_fused_bytes: None,
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
        assert_eq!(f.devices.len(), Gpu::ALL.len());
        assert_eq!(f.stacks.len(), 4);
        assert_eq!(f.format_version, 2);
    }

    #[test]
    fn costed_decides_the_fusion_fraction_once_per_stack_and_gpu() {
        let mut f = committed().clone();
        let mut m = f.stack(Stack::Megatron).clone();
        (m.fused_bytes, m.te_fused_bytes) = (0.9, Some(0.6));
        f.set_stack(m);
        // Transformer Engine's fraction where Megatron-LM runs its fused kernels, the older fusions'
        // elsewhere; nothing left for the estimator to decide again.
        let h100 = f.costed(Stack::Megatron, Gpu::H100);
        assert_eq!((h100.fused_bytes, h100.te_fused_bytes), (0.6, None));
        let a100 = f.costed(Stack::Megatron, Gpu::A100);
        assert_eq!((a100.fused_bytes, a100.te_fused_bytes), (0.9, None));
        // torchtitan is priced with FSDP's overheads and its own (absent) fusion.
        let fsdp = f.stack(Stack::Fsdp).clone();
        assert!(fsdp.fused_bytes < 1.0);
        let titan = f.costed(Stack::Torchtitan, Gpu::H100);
        assert_eq!(titan.fused_bytes, 1.0);
        assert_eq!(titan.stack, Stack::Fsdp);
        assert_eq!(titan.launch_overhead_s, fsdp.launch_overhead_s);
        assert_eq!(*f.costed(Stack::Fsdp, Gpu::H100), fsdp);
    }

    #[test]
    fn clock_only_where_the_power_is_limited_and_within_its_bounds() {
        let f = committed().clone();
        let at = |g: Gpu, c: f64| {
            let mut f = f.clone();
            f.devices.iter_mut().find(|e| e.gpu == g).unwrap().clock = c;
            EfficiencyFile::from_json(&serde_json::to_string(&f).unwrap(), "x")
        };
        let lo = Gpu::H100Hbm2e.sustained_clock_bounds().unwrap().lo;
        at(Gpu::H100Hbm2e, lo).unwrap();
        at(Gpu::H100Hbm2e, 1.0).unwrap();
        for (g, c) in [(Gpu::H100Hbm2e, 0.5), (Gpu::H100, 0.9), (Gpu::A100, 1.1)] {
            let e = at(g, c).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{g}: clock")) && e.contains("outside"),
                "{e}"
            );
        }
        // Written only where it is not 1.
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(text.matches("\"clock\"").count(), 1);
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
