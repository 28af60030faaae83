//! Measured op-cost profiles: the versioned data format the profiler (`profiler/profile_ops.py`) writes,
//! and log-space interpolation over its grids.
//!
//! Format (JSON, `format_version` 1):
//! ```json
//! {"format_version": 1, "gpu": "h100", "device_name": "NVIDIA H100 80GB HBM3",
//!  "kernel_library": {"torch": "2.11.0", "blas": "cuBLAS 12.8", "attention": "sdpa flash"},
//!  "driver": "570.86", "date": "2026-11-23", "command": "python profile_ops.py --out h100.json",
//!  "matmul": [{"dtype": "bf16", "m": [256, 1024], "n": [256, 1024], "k": [256, 1024],
//!              "time_s": [/* m-major, then n, then k: len = |m|·|n|·|k| */]}],
//!  "attention": [{"dtype": "bf16", "causal": true, "backward": false, "gqa_group": 1,
//!                 "batch": [1, 4], "heads": [8, 32], "seq": [512, 2048], "head_dim": [64, 128],
//!                 "time_s": [/* batch-major: len = product of the axes */]}],
//!  "memory_bound": [{"kind": "elementwise", "bytes": [1e6, 1e8, 1e10], "time_s": [...]}]}
//! ```
//! `memory_bound` kinds: `norm`, `elementwise`, `reduce`, `gather`, `optimizer`, `copy`. Times are
//! medians in seconds of one kernel (or one optimizer step over `bytes` of state traffic). Interpolation
//! is multilinear in log(size)–log(time); a query outside a grid's range returns `None`, and the caller
//! falls back to the roofline.

use crate::device::Gpu;
use crate::error::{CostError, Result};
use moai_ir::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The profile format version this crate reads and the profiler writes.
pub const PROFILE_FORMAT_VERSION: u32 = 1;

/// An N-dimensional grid of measured times, interpolated in log space.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    axes: Vec<Vec<f64>>,
    log_axes: Vec<Vec<f64>>,
    log_values: Vec<f64>,
}

impl Grid {
    /// A grid over increasing positive axes with `values` in row-major order (first axis slowest).
    pub fn new(axes: Vec<Vec<f64>>, values: &[f64]) -> std::result::Result<Grid, String> {
        let n: usize = axes.iter().map(Vec::len).product();
        if axes.is_empty() || n != values.len() {
            return Err(format!(
                "grid has {} values, its axes need {n}",
                values.len()
            ));
        }
        for (i, a) in axes.iter().enumerate() {
            if a.is_empty() || a.iter().any(|x| !(*x > 0.0)) || a.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("axis {i} must be positive and strictly increasing"));
            }
        }
        if values.iter().any(|v| !(*v > 0.0) || !v.is_finite()) {
            return Err("times must be positive and finite".into());
        }
        Ok(Grid {
            log_axes: axes
                .iter()
                .map(|a| a.iter().map(|x| x.ln()).collect())
                .collect(),
            axes,
            log_values: values.iter().map(|v| v.ln()).collect(),
        })
    }

    /// The axes.
    pub fn axes(&self) -> &[Vec<f64>] {
        &self.axes
    }

    /// Interpolated value at `point`, or `None` outside the grid (or with the wrong dimension).
    pub fn interpolate(&self, point: &[f64]) -> Option<f64> {
        if point.len() != self.axes.len() {
            return None;
        }
        let d = point.len();
        // For each axis: lower index and weight of the upper neighbour.
        let mut lo = [0usize; 8];
        let mut w = [0f64; 8];
        if d > 8 {
            return None;
        }
        for (i, &x) in point.iter().enumerate() {
            let a = &self.axes[i];
            let (first, last) = (a[0], a[a.len() - 1]);
            if !(x >= first * (1.0 - 1e-9) && x <= last * (1.0 + 1e-9)) {
                return None;
            }
            if a.len() == 1 {
                lo[i] = 0;
                w[i] = 0.0;
                continue;
            }
            let lx = x.ln();
            let la = &self.log_axes[i];
            let j = la.partition_point(|v| *v <= lx).clamp(1, la.len() - 1) - 1;
            lo[i] = j;
            w[i] = ((lx - la[j]) / (la[j + 1] - la[j])).clamp(0.0, 1.0);
        }
        let mut strides = [1usize; 8];
        for i in (0..d.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.axes[i + 1].len();
        }
        let mut acc = 0.0;
        for corner in 0..(1usize << d) {
            let mut weight = 1.0;
            let mut idx = 0;
            for i in 0..d {
                let up = (corner >> i) & 1 == 1;
                if up && self.axes[i].len() == 1 {
                    weight = 0.0;
                    break;
                }
                weight *= if up { w[i] } else { 1.0 - w[i] };
                idx += (lo[i] + usize::from(up)) * strides[i];
            }
            if weight > 0.0 {
                acc += weight * self.log_values[idx];
            }
        }
        Some(acc.exp())
    }
}

/// A matmul table as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatmulTable {
    /// Compute dtype (`bf16`, `f32`, ...).
    pub dtype: DType,
    /// M axis.
    pub m: Vec<u64>,
    /// N axis.
    pub n: Vec<u64>,
    /// K axis.
    pub k: Vec<u64>,
    /// Seconds, m-major.
    pub time_s: Vec<f64>,
}

/// An attention table as stored (one per dtype, causality, direction and GQA group size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionTable {
    /// Compute dtype.
    pub dtype: DType,
    /// Causal mask.
    pub causal: bool,
    /// Backward kernel.
    pub backward: bool,
    /// Query heads per KV head.
    pub gqa_group: u64,
    /// Batch axis.
    pub batch: Vec<u64>,
    /// Query-heads axis.
    pub heads: Vec<u64>,
    /// Sequence axis.
    pub seq: Vec<u64>,
    /// Head-dimension axis.
    pub head_dim: Vec<u64>,
    /// Seconds, batch-major.
    pub time_s: Vec<f64>,
}

/// Which memory-bound family a bytes table measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// RMSNorm/LayerNorm.
    Norm,
    /// Elementwise.
    Elementwise,
    /// Reductions, softmax, loss.
    Reduce,
    /// Embedding gather/scatter.
    Gather,
    /// Optimizer step.
    Optimizer,
    /// Copies and casts.
    Copy,
}

/// A memory-bound table as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BytesTable {
    /// Kernel family.
    pub kind: MemoryKind,
    /// Bytes moved (read + written) axis.
    pub bytes: Vec<f64>,
    /// Seconds.
    pub time_s: Vec<f64>,
}

/// The stored profile file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// Must be [`PROFILE_FORMAT_VERSION`].
    pub format_version: u32,
    /// GPU kind.
    pub gpu: Gpu,
    /// Device name as the driver reports it.
    pub device_name: String,
    /// Kernel libraries and their versions.
    pub kernel_library: BTreeMap<String, String>,
    /// Driver version.
    pub driver: String,
    /// Date of the measurement.
    pub date: String,
    /// Command that produced the file.
    pub command: String,
    /// Matmul tables.
    #[serde(default)]
    pub matmul: Vec<MatmulTable>,
    /// Attention tables.
    #[serde(default)]
    pub attention: Vec<AttentionTable>,
    /// Memory-bound tables.
    #[serde(default)]
    pub memory_bound: Vec<BytesTable>,
}

/// A loaded profile, ready for queries.
#[derive(Clone, Debug)]
pub struct OpProfile {
    /// Provenance and raw tables.
    pub file: ProfileFile,
    matmul: Vec<(DType, Grid)>,
    attention: Vec<((DType, bool, bool, u64), Grid)>,
    memory: Vec<(MemoryKind, Grid)>,
}

fn to_f(v: &[u64]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

impl OpProfile {
    /// Parses and checks a profile; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<OpProfile> {
        let err = |reason: String| CostError::Profile {
            origin: origin.to_string(),
            reason,
        };
        let file: ProfileFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if file.format_version != PROFILE_FORMAT_VERSION {
            return Err(err(format!(
                "format_version {} is not supported (this build reads {PROFILE_FORMAT_VERSION})",
                file.format_version
            )));
        }
        let mut matmul = Vec::new();
        for (i, t) in file.matmul.iter().enumerate() {
            let g = Grid::new(vec![to_f(&t.m), to_f(&t.n), to_f(&t.k)], &t.time_s)
                .map_err(|e| err(format!("matmul[{i}]: {e}")))?;
            matmul.push((t.dtype, g));
        }
        let mut attention = Vec::new();
        for (i, t) in file.attention.iter().enumerate() {
            let g = Grid::new(
                vec![
                    to_f(&t.batch),
                    to_f(&t.heads),
                    to_f(&t.seq),
                    to_f(&t.head_dim),
                ],
                &t.time_s,
            )
            .map_err(|e| err(format!("attention[{i}]: {e}")))?;
            attention.push(((t.dtype, t.causal, t.backward, t.gqa_group.max(1)), g));
        }
        let mut memory = Vec::new();
        for (i, t) in file.memory_bound.iter().enumerate() {
            let g = Grid::new(vec![t.bytes.clone()], &t.time_s)
                .map_err(|e| err(format!("memory_bound[{i}]: {e}")))?;
            memory.push((t.kind, g));
        }
        Ok(OpProfile {
            file,
            matmul,
            attention,
            memory,
        })
    }

    /// Reads a profile file.
    pub fn load(path: &std::path::Path) -> Result<OpProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| CostError::Profile {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        OpProfile::from_json(&text, &path.display().to_string())
    }

    /// Measured time of `batch` `[m,k]×[k,n]` matmuls (batch folded into m), if inside the grid.
    pub fn matmul(&self, dtype: DType, batch: u64, m: u64, n: u64, k: u64) -> Option<f64> {
        let (_, g) = self.matmul.iter().find(|(d, _)| *d == dtype)?;
        g.interpolate(&[(batch.max(1) * m) as f64, n as f64, k as f64])
    }

    /// Measured attention time, if a table of the same dtype, causality, direction exists and the
    /// point is inside it (the table with the nearest GQA group size is used).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        dtype: DType,
        causal: bool,
        backward: bool,
        gqa_group: u64,
        batch: u64,
        heads: u64,
        seq: u64,
        head_dim: u64,
    ) -> Option<f64> {
        let (_, g) = self
            .attention
            .iter()
            .filter(|((d, c, b, _), _)| *d == dtype && *c == causal && *b == backward)
            .min_by_key(|((_, _, _, grp), _)| grp.abs_diff(gqa_group))?;
        g.interpolate(&[batch as f64, heads as f64, seq as f64, head_dim as f64])
    }

    /// Measured time of a memory-bound kernel moving `bytes`, if inside the table.
    pub fn memory_bound(&self, kind: MemoryKind, bytes: f64) -> Option<f64> {
        let (_, g) = self.memory.iter().find(|(k, _)| *k == kind)?;
        g.interpolate(&[bytes])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_interpolation_is_exact_for_power_laws() {
        // t = 1e-9 · m · n  → linear in log space.
        let axes = vec![vec![10.0, 100.0, 1000.0], vec![10.0, 1000.0]];
        let vals: Vec<f64> = axes[0]
            .iter()
            .flat_map(|m| axes[1].iter().map(move |n| 1e-9 * m * n))
            .collect();
        let g = Grid::new(axes, &vals).unwrap();
        let t = g.interpolate(&[31.0, 200.0]).unwrap();
        assert!((t / (1e-9 * 31.0 * 200.0) - 1.0).abs() < 1e-9, "{t}");
        assert_eq!(g.interpolate(&[5.0, 200.0]), None);
        let corner = g.interpolate(&[1000.0, 1000.0]).unwrap();
        assert!((corner / 1e-3 - 1.0).abs() < 1e-9, "{corner}");
    }

    #[test]
    fn rejects_bad_grids() {
        assert!(Grid::new(vec![vec![1.0, 2.0]], &[1.0]).is_err());
        assert!(Grid::new(vec![vec![2.0, 1.0]], &[1.0, 1.0]).is_err());
        assert!(Grid::new(vec![vec![1.0, 2.0]], &[1.0, -1.0]).is_err());
    }

    #[test]
    fn rejects_wrong_version() {
        let text = r#"{"format_version": 9, "gpu": "h100", "device_name": "x", "kernel_library": {},
            "driver": "", "date": "", "command": ""}"#;
        let e = OpProfile::from_json(text, "p.json").unwrap_err();
        assert!(e.to_string().contains("format_version 9"), "{e}");
    }
}
