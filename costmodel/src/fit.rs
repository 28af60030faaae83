//! Fitting the roofline efficiencies and the allocator model to measurements.
//!
//! Efficiencies: minimise `Σ ln(predicted / measured)²` over the samples' step times plus a small
//! prior `w · Σ ln(p / p₀)²` pulling each free coefficient toward its starting value (five
//! measurements cannot pin four coefficients alone), by cyclic golden-section search in log space
//! within fixed bounds. Deterministic: same samples, same result.
//!
//! Memory: the two coefficients of the mechanistic memory model, by least squares
//! ([`crate::memory::fit_memory`]).

use crate::cluster::Cluster;
use crate::config::ParallelConfig;
use crate::device::Gpu;
use crate::efficiency::{Allocator, Efficiency, EfficiencyFile};
use crate::error::{CostError, Result};
use crate::estimate::{CostModel, ProfiledCostModel};
use moai_ir::cost::StepProfile;
use serde::{Deserialize, Serialize};

/// One measured run with the step profile of its model.
#[derive(Clone, Debug)]
pub struct FitSample {
    /// Label.
    pub name: String,
    /// Step profile of one micro-batch.
    pub profile: StepProfile,
    /// Cluster.
    pub cluster: Cluster,
    /// Configuration.
    pub config: ParallelConfig,
    /// Measured step time, seconds.
    pub step_time_s: Option<f64>,
    /// Measured peak allocated bytes.
    pub peak_memory_bytes: Option<f64>,
}

/// A coefficient the fit may move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    /// Matmul efficiency, bounds [0.05, 1].
    Matmul,
    /// Attention efficiency, bounds [0.02, 1].
    Attention,
    /// Memory-bound efficiency, bounds [0.02, 1].
    Memory,
    /// Per-kernel host overhead, bounds [0.1 µs, 200 µs].
    LaunchOverhead,
}

impl Param {
    fn bounds(self) -> (f64, f64) {
        match self {
            Param::Matmul => (0.05, 1.0),
            Param::Attention | Param::Memory => (0.02, 1.0),
            Param::LaunchOverhead => (1e-7, 2e-4),
        }
    }
    fn get(self, e: &Efficiency) -> f64 {
        match self {
            Param::Matmul => e.matmul,
            Param::Attention => e.attention,
            Param::Memory => e.memory,
            Param::LaunchOverhead => e.launch_overhead_s,
        }
    }
    fn set(self, e: &mut Efficiency, v: f64) {
        match self {
            Param::Matmul => e.matmul = v,
            Param::Attention => e.attention = v,
            Param::Memory => e.memory = v,
            Param::LaunchOverhead => e.launch_overhead_s = v,
        }
    }
}

/// Result of an efficiency fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyFit {
    /// Fitted coefficients.
    pub efficiency: Efficiency,
    /// Root-mean-square of `ln(predicted / measured)` at the optimum.
    pub rms_log_error: f64,
    /// Per sample: (name, predicted, measured) step time.
    pub residuals: Vec<(String, f64, f64)>,
}

/// Per-sample (name, predicted, measured) step times.
type Residuals = Vec<(String, f64, f64)>;

fn objective(samples: &[FitSample], file: &EfficiencyFile) -> Result<(f64, Residuals)> {
    let model = ProfiledCostModel::with_efficiencies(file.clone());
    let mut sum = 0.0;
    let mut res = Vec::new();
    for s in samples {
        let Some(meas) = s.step_time_s else { continue };
        let est = model.estimate(&s.profile, &s.cluster, &s.config)?;
        let r = (est.step_time_s / meas).ln();
        sum += r * r;
        res.push((s.name.clone(), est.step_time_s, meas));
    }
    Ok((sum, res))
}

/// Fits the `free` coefficients of `gpu` in `base` to the samples' step times, with prior weight
/// `prior` toward the starting values.
pub fn fit_efficiency(
    samples: &[FitSample],
    base: &EfficiencyFile,
    gpu: Gpu,
    free: &[Param],
    prior: f64,
) -> Result<EfficiencyFit> {
    let n = samples
        .iter()
        .filter(|s| s.step_time_s.is_some() && s.cluster.gpu == gpu)
        .count();
    if n == 0 {
        return Err(CostError::Fit(format!("no step-time samples on {gpu}")));
    }
    let samples: Vec<FitSample> = samples
        .iter()
        .filter(|s| s.cluster.gpu == gpu)
        .cloned()
        .collect();
    let start = base.get(gpu).clone();
    let mut file = base.clone();
    let total = |file: &EfficiencyFile| -> Result<f64> {
        let (data, _) = objective(&samples, file)?;
        let e = file.get(gpu);
        let pen: f64 = free
            .iter()
            .map(|p| (p.get(e) / p.get(&start)).ln().powi(2))
            .sum();
        Ok(data + prior * pen)
    };
    const PHI: f64 = 0.618_033_988_749_895;
    for _round in 0..4 {
        for p in free {
            let (lo, hi) = p.bounds();
            let eval = |x: f64, file: &mut EfficiencyFile| -> Result<f64> {
                let mut e = file.get(gpu).clone();
                p.set(&mut e, x.exp());
                file.set(e);
                total(file)
            };
            // Coarse scan first (the objective is flat where a bound does not bind, so it can have
            // several local minima), then golden-section search between the best point's neighbours.
            const SCAN: usize = 25;
            let step = (hi.ln() - lo.ln()) / (SCAN - 1) as f64;
            let mut best = (f64::INFINITY, 0usize);
            for i in 0..SCAN {
                let f = eval(lo.ln() + step * i as f64, &mut file)?;
                if f < best.0 {
                    best = (f, i);
                }
            }
            let (mut a, mut b) = (
                lo.ln() + step * best.1.saturating_sub(1) as f64,
                lo.ln() + step * (best.1 + 1).min(SCAN - 1) as f64,
            );
            let mut c = b - PHI * (b - a);
            let mut d = a + PHI * (b - a);
            let mut fc = eval(c, &mut file)?;
            let mut fd = eval(d, &mut file)?;
            for _ in 0..30 {
                if fc < fd {
                    b = d;
                    d = c;
                    fd = fc;
                    c = b - PHI * (b - a);
                    fc = eval(c, &mut file)?;
                } else {
                    a = c;
                    c = d;
                    fc = fd;
                    d = a + PHI * (b - a);
                    fd = eval(d, &mut file)?;
                }
            }
            let x = 0.5 * (a + b);
            let mut e = file.get(gpu).clone();
            p.set(&mut e, round_sig(x.exp(), 4));
            file.set(e);
        }
    }
    let (sum, residuals) = objective(&samples, &file)?;
    Ok(EfficiencyFit {
        efficiency: file.get(gpu).clone(),
        rms_log_error: (sum / residuals.len().max(1) as f64).sqrt(),
        residuals,
    })
}

/// Rounds to `digits` significant digits (so committed coefficients read cleanly and compare exactly).
pub fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Fits the memory model's coefficients to the samples' measured peaks (needs at least two); see
/// [`crate::memory::fit_memory`].
pub fn fit_allocator(samples: &[FitSample], base: &EfficiencyFile) -> Result<Allocator> {
    crate::memory::fit_memory_with(samples, base)
}

/// Starting values (and prior centres) of the H100 fit: typical achieved fractions for PyTorch eager
/// training kernels (cuBLAS bf16 GEMM about 60% of peak, FlashAttention-2 about 40%, elementwise
/// kernels about 70% of HBM bandwidth, about 10 µs of host time per op).
pub const H100_PRIOR: (f64, f64, f64, f64) = (0.6, 0.4, 0.7, 1e-5);
/// Starting values of the A100 fit (matmul, attention); memory efficiency stays at 0.7 and the host
/// overhead is the H100 fit's (same software stack, never the bottleneck at Megatron's sizes).
pub const A100_PRIOR: (f64, f64) = (0.6, 0.4);
/// Prior weight of both fits.
pub const PRIOR_WEIGHT: f64 = 0.02;

/// The whole committed procedure: fits H100 (matmul, attention, memory, launch overhead) to the
/// llama-350m H100 measurements, A100 (matmul, attention) to Megatron's Table 1, and the allocator
/// model to the H100 peaks; AMD entries are copied from `base` unchanged (they are assumptions).
pub fn refit(
    base: &EfficiencyFile,
    h100: &[FitSample],
    a100: &[FitSample],
) -> Result<EfficiencyFile> {
    let mut file = base.clone();
    let (m, a, mem, l) = H100_PRIOR;
    file.set(Efficiency {
        gpu: Gpu::H100,
        matmul: m,
        attention: a,
        memory: mem,
        launch_overhead_s: l,
        source: String::new(),
    });
    let all = [
        Param::Matmul,
        Param::Attention,
        Param::Memory,
        Param::LaunchOverhead,
    ];
    let h = fit_efficiency(h100, &file, Gpu::H100, &all, PRIOR_WEIGHT)?;
    let mut e = h.efficiency.clone();
    e.source = format!(
        "fitted to data/truth/h100_llama350m.jsonl ({} runs, rms log error {:.3}); prior {:?}, weight {PRIOR_WEIGHT}",
        h.residuals.len(),
        h.rms_log_error,
        H100_PRIOR
    );
    let launch = e.launch_overhead_s;
    file.set(e);
    let (am, aa) = A100_PRIOR;
    file.set(Efficiency {
        gpu: Gpu::A100,
        matmul: am,
        attention: aa,
        memory: 0.7,
        launch_overhead_s: launch,
        source: String::new(),
    });
    let f = fit_efficiency(
        a100,
        &file,
        Gpu::A100,
        &[Param::Matmul, Param::Attention],
        PRIOR_WEIGHT,
    )?;
    let mut e = f.efficiency.clone();
    e.source = format!(
        "fitted to data/truth/megatron_sc21_table1.jsonl ({} rows, rms log error {:.3}); memory 0.7 assumed, launch overhead from the H100 fit",
        f.residuals.len(),
        f.rms_log_error
    );
    file.set(e);
    let mut alloc = fit_allocator(h100, &file)?;
    alloc.source = format!(
        "{} of data/truth/h100_llama350m.jsonl (H100, PyTorch)",
        alloc.source
    );
    file.allocator = alloc;
    file.procedure = "moai_costmodel::fit::refit over the step profiles of the truth rows; recomputed by the test \
                      `fit::fitted_coefficients_match_committed` (MOAI_WRITE_FIT=1 rewrites this file)"
        .into();
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(round_sig(0.123456, 4), 0.1235);
        assert_eq!(round_sig(1.23456e-5, 3), 1.23e-5);
    }
}
