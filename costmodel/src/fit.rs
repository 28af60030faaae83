//! Fitting the time model's coefficients jointly over every truth row, and the allocator model.
//!
//! Time coefficients: per GPU architecture family ([`Family`]: matmul, attention, memory fractions of
//! each device's own shape-dependent rates, one triple shared by every member of the family) and per
//! software stack (host seconds per kernel, fixed seconds per step, the fraction of fusable traffic
//! left by its fusions: `fused_bytes`, and `te_fused_bytes` on the rows that run Transformer
//! Engine's fused kernels), only for families and stacks that have step-time samples; the rest keep
//! their starting values ([`PRIORS`]).
//! Objective: `Σ ln(predicted / measured)²` over the samples plus a weak prior
//! `w · Σ ln(p / p₀)²` toward the starting values (it pins coefficients the data cannot separate),
//! minimised by cyclic coordinate search in log space within fixed bounds: a coarse scan, then
//! golden-section search. Each coordinate only re-estimates the samples it affects, on step profiles
//! prepared once ([`ProfiledCostModel::estimate_prepared`]). Deterministic: same samples, same result.
//!
//! Memory: the two coefficients of the mechanistic memory model, by least squares
//! ([`crate::memory::fit_memory`]).

use crate::cluster::Cluster;
use crate::config::ParallelConfig;
use crate::device::{Family, Gpu};
use crate::efficiency::{Allocator, EfficiencyFile, StackCoefficients};
use crate::error::{CostError, Result};
use crate::estimate::{PreparedProfile, ProfiledCostModel};
use crate::stack::Stack;
use moai_ir::cost::StepProfile;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One measured run with the step profile of its model.
#[derive(Clone, Debug)]
pub struct FitSample {
    /// Label.
    pub name: String,
    /// The model (truth row's `model` field): leave-one-model-out groups by it.
    pub model: String,
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
    /// Matmul fraction of every GPU kind of a family, bounds [0.2, 1].
    Matmul(Family),
    /// Attention fraction of every GPU kind of a family, bounds [0.1, 1].
    Attention(Family),
    /// Memory-bound fraction of every GPU kind of a family, bounds [0.2, 1].
    Memory(Family),
    /// Host seconds per kernel of a stack, bounds [0.1 µs, 100 µs].
    LaunchOverhead(Stack),
    /// Fixed seconds per step of a stack, bounds [10 µs, 0.5 s].
    StepOverhead(Stack),
    /// Fusable-traffic fraction of a (non-eager) stack, bounds [0.2, 1].
    FusedBytes(Stack),
    /// Fusable-traffic fraction where a stack runs Transformer Engine's fused kernels, bounds
    /// [0.2, 1].
    TeFusedBytes(Stack),
    /// Sustained clock of a power-limited GPU kind, within its
    /// [`Gpu::sustained_clock_bounds`]: scales that kind's matmul and attention fractions.
    Clock(Gpu),
}

impl Param {
    fn bounds(self) -> (f64, f64) {
        match self {
            Param::Matmul(_) | Param::Memory(_) => (0.2, 1.0),
            Param::Attention(_) => (0.1, 1.0),
            Param::LaunchOverhead(_) => (1e-7, 1e-4),
            Param::StepOverhead(_) => (1e-5, 0.5),
            Param::FusedBytes(_) | Param::TeFusedBytes(_) => (0.2, 1.0),
            Param::Clock(g) => g
                .sustained_clock_bounds()
                .map_or((1.0, 1.0), |c| (c.lo, c.hi)),
        }
    }
    fn get(self, f: &EfficiencyFile) -> f64 {
        match self {
            Param::Matmul(g) => f.get(lead(g)).matmul,
            Param::Attention(g) => f.get(lead(g)).attention,
            Param::Memory(g) => f.get(lead(g)).memory,
            Param::LaunchOverhead(s) => f.stack(s).launch_overhead_s,
            Param::StepOverhead(s) => f.stack(s).step_overhead_s,
            Param::FusedBytes(s) => f.stack(s).fused_bytes,
            Param::TeFusedBytes(s) => f.stack(s).te_fused_bytes.unwrap_or(s.fusion().0),
            Param::Clock(g) => f.get(g).clock,
        }
    }
    fn set(self, f: &mut EfficiencyFile, v: f64) {
        match self {
            Param::Matmul(fam) | Param::Attention(fam) | Param::Memory(fam) => {
                // A power-limited member runs the compute-bound fractions at its sustained clock.
                for g in fam.members() {
                    let mut e = f.get(g).clone();
                    match self {
                        Param::Matmul(_) => e.matmul = clocked(v, e.clock),
                        Param::Attention(_) => e.attention = clocked(v, e.clock),
                        _ => e.memory = v,
                    }
                    f.set(e);
                }
            }
            Param::Clock(g) => set_clock(f, g, v),
            Param::LaunchOverhead(s)
            | Param::StepOverhead(s)
            | Param::FusedBytes(s)
            | Param::TeFusedBytes(s) => {
                let mut c = f.stack(s).clone();
                match self {
                    Param::LaunchOverhead(_) => c.launch_overhead_s = v,
                    Param::StepOverhead(_) => c.step_overhead_s = v,
                    Param::TeFusedBytes(_) => c.te_fused_bytes = Some(v),
                    _ => c.fused_bytes = v,
                }
                f.set_stack(c);
            }
        }
    }
    fn affects(self, s: &FitSample) -> bool {
        match self {
            Param::Matmul(g) | Param::Attention(g) | Param::Memory(g) => {
                s.cluster.gpu.family() == g
            }
            Param::LaunchOverhead(st) | Param::StepOverhead(st) => s.config.stack.costed_as() == st,
            Param::FusedBytes(st) => {
                s.config.stack.costed_as() == st
                    && s.config.stack.fits_fusion()
                    && !s.config.stack.runs_te_fused_kernels(s.cluster.gpu)
            }
            Param::TeFusedBytes(st) => {
                s.config.stack.costed_as() == st
                    && s.config.stack.runs_te_fused_kernels(s.cluster.gpu)
            }
            Param::Clock(g) => s.cluster.gpu == g,
        }
    }
}

/// Sets a power-limited kind's sustained clock: its matmul and attention fractions become its
/// family's (read from the family's lead, which runs at full power) times the clock.
fn set_clock(f: &mut EfficiencyFile, g: Gpu, clock: f64) {
    let family = f.get(lead(g.family())).clone();
    let mut e = f.get(g).clone();
    e.clock = clock;
    e.matmul = clocked(family.matmul, clock);
    e.attention = clocked(family.attention, clock);
    f.set(e);
}

/// A compute-bound fraction of the family (`fraction`) as a member at sustained `clock` runs it,
/// rounded as the committed file stores it.
fn clocked(fraction: f64, clock: f64) -> f64 {
    round_sig(fraction * clock, 4)
}

/// The family's first member in catalog order: the entry a family coefficient is read from (every
/// member holds the same value after [`prior_file`] and after a fit, a power-limited member times its
/// sustained clock).
fn lead(f: Family) -> Gpu {
    f.members().first().copied().unwrap_or(Gpu::ALL[0])
}

/// `(gpu, matmul, attention, memory)` starting values (equal within a family: the fit ties them).
pub type GpuPrior = (Gpu, f64, f64, f64);
/// `(stack, launch_overhead_s, step_overhead_s)` starting values.
pub type StackPrior = (Stack, f64, f64);

/// Starting values and prior centres: `(matmul, attention, memory)` fractions per GPU kind (GEMMs in
/// training reach most of the maximum achievable rate at their shape; FlashAttention-2 about 70% of
/// it; elementwise kernels about 75% of HBM peak) and `(launch, step)` overheads per stack (eager
/// PyTorch about 15 µs of host time per op and a few ms per step for zero_grad, loss sync and
/// logging; Megatron's fused path about 5 µs per kernel).
pub const PRIORS: ([GpuPrior; 11], [StackPrior; 4]) = (
    [
        (Gpu::Mi250, 0.8, 0.6, 0.75),
        (Gpu::Mi210, 0.8, 0.6, 0.75),
        (Gpu::Mi300x, 0.8, 0.6, 0.75),
        (Gpu::H100, 0.8, 0.6, 0.75),
        (Gpu::A100, 0.8, 0.6, 0.75),
        (Gpu::H200, 0.8, 0.6, 0.75),
        (Gpu::B200, 0.8, 0.6, 0.75),
        (Gpu::Mi325x, 0.8, 0.6, 0.75),
        (Gpu::Mi355x, 0.8, 0.6, 0.75),
        (Gpu::Mi250x, 0.8, 0.6, 0.75),
        (Gpu::H100Hbm2e, 0.8, 0.6, 0.75),
    ],
    [
        (Stack::Megatron, 5e-6, 5e-3),
        (Stack::Deepspeed, 1e-5, 1e-2),
        (Stack::Fsdp, 1e-5, 1e-2),
        (Stack::Eager, 1.5e-5, 5e-3),
    ],
);

/// Prior weight of the fit.
pub const PRIOR_WEIGHT: f64 = 0.02;

/// The starting file: `base` with every coefficient at its prior (time coefficients at [`PRIORS`], the
/// allocator model at its mechanism default), so nothing fitted before (on rows a cross-validation fold
/// holds out) survives into a refit.
pub fn prior_file(base: &EfficiencyFile) -> EfficiencyFile {
    let mut f = base.clone();
    f.allocator = Allocator::default();
    for (g, m, a, mem) in PRIORS.0 {
        let mut e = f.get(g).clone();
        e.gpu = g;
        (e.matmul, e.attention, e.memory, e.clock) = (m, a, mem, 1.0);
        e.source = "assumption (no truth rows): prior of moai_costmodel::fit::PRIORS".into();
        f.set(e);
    }
    for g in Gpu::ALL {
        if let Some(c) = g.sustained_clock_bounds() {
            set_clock(&mut f, g, c.prior);
        }
    }
    for (s, l, st) in PRIORS.1 {
        f.set_stack(StackCoefficients {
            stack: s,
            launch_overhead_s: l,
            step_overhead_s: st,
            fused_bytes: s.fusion().0,
            te_fused_bytes: None,
            source: "assumption (no truth rows): prior of moai_costmodel::fit::PRIORS".into(),
        });
    }
    f
}

/// Result of a time-coefficient fit.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeFit {
    /// The fitted file.
    pub file: EfficiencyFile,
    /// Root-mean-square of `ln(predicted / measured)` over the step-time samples at the optimum.
    pub rms_log_error: f64,
    /// Per sample: (name, predicted, measured) step time.
    pub residuals: Vec<(String, f64, f64)>,
}

/// Step profiles of the samples, reduced once per sample.
fn prepare_all(samples: &[FitSample]) -> Vec<Arc<PreparedProfile>> {
    let m = ProfiledCostModel::new();
    samples
        .iter()
        .map(|s| Arc::new(m.prepare_for(&s.profile, s.cluster.gpu, &s.config)))
        .collect()
}

fn log_errors(
    samples: &[FitSample],
    preps: &[Arc<PreparedProfile>],
    idx: &[usize],
    file: &EfficiencyFile,
) -> Result<f64> {
    let model = ProfiledCostModel::with_efficiencies(file.clone()).time_only();
    let mut sum = 0.0;
    for &i in idx {
        let s = &samples[i];
        let Some(meas) = s.step_time_s else { continue };
        let est = model
            .estimate_prepared(&preps[i], &s.profile, &s.cluster, &s.config)
            .map_err(|e| CostError::Fit(format!("{}: {e}", s.name)))?;
        let r = (est.step_time_s / meas).ln();
        sum += r * r;
    }
    Ok(sum)
}

/// The parameters the samples can inform: per GPU family and per stack that has step-time samples.
pub fn free_params(samples: &[FitSample]) -> Vec<Param> {
    let timed: Vec<&FitSample> = samples.iter().filter(|s| s.step_time_s.is_some()).collect();
    let mut out = Vec::new();
    for g in Family::ALL {
        if timed.iter().any(|s| s.cluster.gpu.family() == g) {
            out.extend([Param::Matmul(g), Param::Attention(g), Param::Memory(g)]);
        }
    }
    for g in Gpu::ALL {
        if g.sustained_clock_bounds().is_some() && timed.iter().any(|s| s.cluster.gpu == g) {
            out.push(Param::Clock(g));
        }
    }
    for st in Stack::ALL {
        if timed.iter().any(|s| s.config.stack.costed_as() == st) {
            out.extend([Param::LaunchOverhead(st), Param::StepOverhead(st)]);
            for p in [Param::FusedBytes(st), Param::TeFusedBytes(st)] {
                if st != Stack::Eager && timed.iter().any(|s| p.affects(s)) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Fits every informed time coefficient of `start` jointly to the samples' step times.
pub fn fit_time(samples: &[FitSample], start: &EfficiencyFile) -> Result<TimeFit> {
    let preps = prepare_all(samples);
    fit_time_prepared(samples, &preps, start)
}

fn fit_time_prepared(
    samples: &[FitSample],
    preps: &[Arc<PreparedProfile>],
    start: &EfficiencyFile,
) -> Result<TimeFit> {
    let free = free_params(samples);
    if free.is_empty() {
        return Err(CostError::Fit("no step-time samples".into()));
    }
    let mut file = start.clone();
    const PHI: f64 = 0.618_033_988_749_895;
    const SCAN: usize = 9;
    for _round in 0..2 {
        for p in &free {
            let idx: Vec<usize> = (0..samples.len())
                .filter(|i| p.affects(&samples[*i]))
                .collect();
            let centre = p.get(start);
            let (lo, hi) = p.bounds();
            let eval = |x: f64, file: &mut EfficiencyFile| -> Result<f64> {
                p.set(file, x.exp());
                Ok(log_errors(samples, preps, &idx, file)?
                    + PRIOR_WEIGHT * (x - centre.ln()).powi(2))
            };
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
            for _ in 0..16 {
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
            p.set(&mut file, round_sig((0.5 * (a + b)).exp(), 4));
        }
    }
    let model = ProfiledCostModel::with_efficiencies(file.clone());
    let mut residuals = Vec::new();
    let mut sum = 0.0;
    for (s, prep) in samples.iter().zip(preps) {
        let Some(meas) = s.step_time_s else { continue };
        let est = model.estimate_prepared(prep, &s.profile, &s.cluster, &s.config)?;
        sum += (est.step_time_s / meas).ln().powi(2);
        residuals.push((s.name.clone(), est.step_time_s, meas));
    }
    Ok(TimeFit {
        file,
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

/// The whole committed procedure over every truth row: time coefficients fitted jointly from the
/// priors ([`prior_file`]), each fitted entry's `source` saying from how many rows; the allocator
/// model fitted to the rows' measured peaks (its prior when fewer than two).
pub fn refit(base: &EfficiencyFile, samples: &[FitSample]) -> Result<EfficiencyFile> {
    let preps = prepare_all(samples);
    refit_prepared(base, samples, &preps)
}

/// [`refit`] on samples whose profiles are already prepared (cross-validation reuses them).
pub fn refit_prepared(
    base: &EfficiencyFile,
    samples: &[FitSample],
    preps: &[Arc<PreparedProfile>],
) -> Result<EfficiencyFile> {
    // FP8 rows (`config.precision` fp8) are validated, never fitted: the coefficients describe the
    // bf16 kernels, and FP8 is calibrated against published speedups (see crate::precision).
    let (samples, preps): (Vec<FitSample>, Vec<Arc<PreparedProfile>>) = samples
        .iter()
        .zip(preps)
        .filter(|(s, _)| s.config.precision == crate::precision::MatmulPrecision::Bf16)
        .map(|(s, p)| (s.clone(), p.clone()))
        .unzip();
    let (samples, preps) = (&samples[..], &preps[..]);
    let start = prior_file(base);
    let fit = fit_time_prepared(samples, preps, &start)?;
    let mut file = fit.file;
    let timed = |f: &dyn Fn(&FitSample) -> bool| {
        samples
            .iter()
            .filter(|s| s.step_time_s.is_some() && f(s))
            .count()
    };
    let models = |f: &dyn Fn(&FitSample) -> bool| {
        let mut m: Vec<&str> = samples
            .iter()
            .filter(|s| s.step_time_s.is_some() && f(s))
            .map(|s| s.model.as_str())
            .collect();
        m.sort();
        m.dedup();
        m.len()
    };
    for fam in Family::ALL {
        let n = timed(&|s| s.cluster.gpu.family() == fam);
        if n == 0 {
            continue;
        }
        let members = fam.members();
        let per: Vec<String> = members
            .iter()
            .map(|g| format!("{g} {}", timed(&|s| s.cluster.gpu == *g)))
            .collect();
        for g in &members {
            let mut e = file.get(*g).clone();
            e.source = format!(
                "fitted jointly over the truth files, tied over the {fam} family ({}: {n} step-time rows of {} models; rows per member: {}; all rows rms log error {:.3})",
                members
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                models(&|s| s.cluster.gpu.family() == fam),
                per.join(", "),
                fit.rms_log_error
            );
            if let Some(c) = g.sustained_clock_bounds() {
                e.source.push_str(&format!(
                    "; matmul and attention are the family's times this kind's sustained clock {}, fitted within [{:.4}, {}] on its {} rows (prior {:.4}: Gpu::sustained_clock_bounds)",
                    e.clock,
                    c.lo,
                    c.hi,
                    timed(&|s| s.cluster.gpu == *g),
                    c.prior
                ));
            }
            file.set(e);
        }
    }
    for st in Stack::ALL {
        let n = timed(&|s| s.config.stack.costed_as() == st);
        if n > 0 {
            let mut c = file.stack(st).clone();
            c.source = format!(
                "fitted jointly over the truth files ({n} step-time rows of {} models on this stack or costed as it)",
                models(&|s| s.config.stack.costed_as() == st)
            );
            file.set_stack(c);
        }
    }
    if let Ok(mut alloc) = fit_allocator(samples, &file) {
        alloc.source = format!("{} of the truth files", alloc.source);
        file.allocator = alloc;
    }
    file.format_version = 2;
    file.procedure = format!(
        "moai_costmodel::fit::refit over every row of data/truth/*.jsonl (step profiles from the training graph): time coefficients from moai_costmodel::fit::PRIORS, prior weight {PRIOR_WEIGHT}; recomputed by the test `fit::fitted_coefficients_match_committed` (MOAI_WRITE_FIT=1 rewrites this file)"
    );
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_params_write_every_member() {
        let mut f = prior_file(crate::efficiency::committed());
        Param::Matmul(Family::Cdna3).set(&mut f, 0.55);
        Param::Attention(Family::Hopper).set(&mut f, 0.33);
        assert_eq!(f.get(Gpu::Mi300x).matmul, 0.55);
        assert_eq!(f.get(Gpu::Mi325x).matmul, 0.55);
        assert_eq!(Param::Matmul(Family::Cdna3).get(&f), 0.55);
        assert_eq!(f.get(Gpu::H100).attention, 0.33);
        assert_eq!(f.get(Gpu::H200).attention, 0.33);
        // Other families keep their priors.
        assert_eq!(f.get(Gpu::Mi355x).matmul, 0.8);
        assert_eq!(f.get(Gpu::Mi250).matmul, 0.8);
    }

    #[test]
    fn committed_coefficients_are_equal_within_each_family() {
        let f = crate::efficiency::committed();
        for fam in Family::ALL {
            let m = fam.members();
            for g in &m[1..] {
                let (a, b) = (f.get(m[0]), f.get(*g));
                if g.sustained_clock_bounds().is_some() {
                    // A power-limited member: the compute fractions times its clock (rounded to 4
                    // digits), the memory fraction the family's.
                    let near = |x: f64, y: f64| (x - y).abs() <= 5e-4 * y;
                    assert!(
                        near(b.matmul, a.matmul * b.clock)
                            && near(b.attention, a.attention * b.clock)
                            && b.memory == a.memory,
                        "{fam}: {} vs {g} at clock {}",
                        m[0],
                        b.clock
                    );
                    continue;
                }
                assert_eq!(
                    (a.matmul, a.attention, a.memory),
                    (b.matmul, b.attention, b.memory),
                    "{fam}: {} vs {g}",
                    m[0]
                );
            }
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round_sig(0.123456, 4), 0.1235);
        assert_eq!(round_sig(1.23456e-5, 3), 1.23e-5);
    }
}
