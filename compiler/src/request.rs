//! What a user asks the planner: the job (batch, sequence, precision, optimizer) and constraints on the
//! search.

use crate::error::{PlanError, Result};
use moai_costmodel::{Cluster, MatmulPrecision};
use moai_costmodel::{Recompute, Schedule};
use moai_ir::train::{OptimizerKind, PrecisionPolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The largest global batch a request may ask for, in sequences (2^40). A plan expresses a batch as
/// dp × micro-batch size × micro-batches, each a `u32`; 2^40 keeps every product the planner and the cost
/// model form (tokens per step, bytes per micro-batch) far from `u64` and `f64`-exact limits.
pub const MAX_BATCH: u64 = 1 << 40;

/// The longest sequence a request may ask for, in tokens (2^24 = 16,777,216).
pub const MAX_SEQ: u64 = 1 << 24;

/// The most tokens one step may hold (batch × sequence length, 2^50): exact in `f64`.
pub const MAX_TOKENS_PER_STEP: u64 = 1 << 50;

/// The longest time budget, in seconds (one week): a finite bound that any `Duration` holds.
pub const MAX_TIME_BUDGET_S: f64 = 7.0 * 24.0 * 3600.0;

/// The most model chunks per pipeline stage an interleaved schedule may ask for (`interleaved:V`).
pub const MAX_INTERLEAVE: u32 = 1024;

/// Worker threads allowed per core of the machine (`--threads` at most cores × this).
pub const THREADS_PER_CORE: usize = 4;

/// The cores of this machine (1 when the OS does not say).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Checks a `--time-budget` in seconds: finite, positive, at most [`MAX_TIME_BUDGET_S`].
pub fn time_budget_from_secs(secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err(PlanError::InvalidArgument(format!(
            "--time-budget {secs}: must be a positive, finite number of seconds"
        )));
    }
    if secs > MAX_TIME_BUDGET_S {
        return Err(PlanError::InvalidArgument(format!(
            "--time-budget {secs:e}: at most {MAX_TIME_BUDGET_S} seconds (one week)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks a `--threads` count: at least 1, at most the machine's cores × [`THREADS_PER_CORE`].
pub fn check_threads(threads: usize) -> Result<usize> {
    let cores = available_cores();
    let max = cores.saturating_mul(THREADS_PER_CORE);
    if threads == 0 {
        return Err(PlanError::InvalidArgument(
            "--threads 0: need at least one thread".into(),
        ));
    }
    if threads > max {
        return Err(PlanError::InvalidArgument(format!(
            "--threads {threads}: at most {max} ({cores} cores × {THREADS_PER_CORE})"
        )));
    }
    Ok(threads)
}

/// A cancellation flag shared by a request and whoever may cancel it (the binary's Ctrl-C handler).
/// Clones share the flag. The search, and the code generation after it, stop at the next unit of work
/// once it is set and keep what is finished.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels; returns whether it was already cancelled (a second Ctrl-C).
    pub fn cancel(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a search (or the code generation after it) stopped before finishing its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopReason {
    /// The request's time budget ran out.
    TimeBudget,
    /// The request's [`CancelToken`] was cancelled (Ctrl-C).
    Interrupt,
}

impl StopReason {
    /// The name in `--json` (`"stopped_by"`): `time-budget` or `interrupt`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::TimeBudget => "time-budget",
            StopReason::Interrupt => "interrupt",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bounds of one run of work: the request's cancellation token and its time budget, counted from the
/// start of the run. Remembers the first reason it reported, so every phase and the final result agree
/// on why the work was cut short.
#[derive(Debug)]
pub struct WorkBounds {
    cancel: CancelToken,
    start: Instant,
    budget: Option<Duration>,
    /// 0: never stopped; 1 + `StopReason as u8` once a check reported a stop.
    stopped: AtomicU8,
}

impl WorkBounds {
    /// Bounds of a run started at `start` under `req`.
    pub fn new(req: &PlanRequest, start: Instant) -> WorkBounds {
        WorkBounds {
            cancel: req.cancel.clone(),
            start,
            budget: req.time_budget,
            stopped: AtomicU8::new(0),
        }
    }

    /// `Some(reason)` when the work must stop now: the token was cancelled, or the whole time budget has
    /// passed.
    pub fn check(&self) -> Option<StopReason> {
        self.check_within(1.0)
    }

    /// Like [`WorkBounds::check`], for a phase that may use only the first `fraction` of the time budget
    /// (so that later phases keep time to finish what it produced). Each call looks at the clock and the
    /// token afresh; the first reason ever reported is kept for [`WorkBounds::stopped`].
    pub fn check_within(&self, fraction: f64) -> Option<StopReason> {
        let now = if self.cancel.is_cancelled() {
            StopReason::Interrupt
        } else if self
            .budget
            .is_some_and(|b| self.start.elapsed().as_secs_f64() >= b.as_secs_f64() * fraction)
        {
            StopReason::TimeBudget
        } else {
            return None;
        };
        let _ = self
            .stopped
            .compare_exchange(0, 1 + now as u8, Ordering::SeqCst, Ordering::SeqCst);
        Some(now)
    }

    /// The first reason a check reported, if any did: the work was cut short.
    pub fn stopped(&self) -> Option<StopReason> {
        match self.stopped.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(StopReason::TimeBudget),
            _ => Some(StopReason::Interrupt),
        }
    }
}

/// `--offload activations[=N]`: how many decoder layers per pipeline device offload their saved
/// activations to host memory (`ParallelConfig::offload_activations`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActivationOffload {
    /// No activation offload (the default).
    #[default]
    Off,
    /// `activations`: every decoder layer of a stage but its last (Megatron-LM's
    /// `--cpu-offloading-num-layers` must stay below the layer count); `plan` tries it beside no
    /// offload.
    Auto,
    /// `activations=N`: the first `N` decoder layers of each pipeline device, in every candidate.
    Layers(u32),
}

impl ActivationOffload {
    /// The layer count `activations` stands for on a `layers`-layer model cut into `pp` stages: all of
    /// an even stage's layers but the last (0 when a stage has one layer).
    pub fn auto_layers(layers: u32, pp: u32) -> u32 {
        (layers / pp.max(1)).saturating_sub(1)
    }

    /// The offloaded-layer counts a search candidate with `pp` stages tries: `[0]` when off,
    /// `[0, auto]` for `activations` (just `[0]` when a stage has one layer), `[N]` for `activations=N`.
    pub fn counts(self, layers: u32, pp: u32) -> Vec<u32> {
        match self {
            ActivationOffload::Off => vec![0],
            ActivationOffload::Auto => match Self::auto_layers(layers, pp) {
                0 => vec![0],
                n => vec![0, n],
            },
            ActivationOffload::Layers(n) => vec![n],
        }
    }

    /// The one count `estimate` uses: 0 when off, [`ActivationOffload::auto_layers`] for
    /// `activations`, `N` for `activations=N`.
    pub fn fixed(self, layers: u32, pp: u32) -> u32 {
        match self {
            ActivationOffload::Off => 0,
            ActivationOffload::Auto => Self::auto_layers(layers, pp),
            ActivationOffload::Layers(n) => n,
        }
    }

    /// The one-line error for a count the model cannot take: `activations=N` must leave the last of
    /// the model's `layers` decoder layers on the device (Megatron-LM's `--cpu-offloading-num-layers`
    /// is below the layer count; no other engine offloads activations).
    pub fn check_layers(self, layers: u32) -> Result<()> {
        if let ActivationOffload::Layers(n) = self
            && n >= layers
        {
            return Err(PlanError::InvalidArgument(format!(
                "--offload activations={n}: at most {} of the model's {layers} decoder layers (the last layer's activations stay on the device, as Megatron-LM's --cpu-offloading-num-layers requires)",
                layers.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

/// Constraints that fix or restrict dimensions of the search (every field optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constraints {
    /// Fixed data-parallel degree.
    pub dp: Option<u32>,
    /// Fixed tensor-parallel degree.
    pub tp: Option<u32>,
    /// Fixed pipeline-parallel degree.
    pub pp: Option<u32>,
    /// Fixed context-parallel degree (`--cp`).
    pub cp: Option<u32>,
    /// Fixed context-parallel communication (`--cp-comm p2p|a2a`); `None`: both are searched.
    pub cp_comm: Option<moai_costmodel::CpComm>,
    /// Fixed micro-batch size.
    pub micro_batch_size: Option<u32>,
    /// Allowed recomputation policies (empty: all).
    pub recompute: Vec<Recompute>,
    /// Fixed ZeRO stage.
    pub zero: Option<crate::config::ZeroStage>,
    /// Fixed sequence parallelism.
    pub sequence_parallel: Option<bool>,
    /// Allowed schedules (empty: gpipe, 1f1b and interleaved:2; the zero-bubble schedules `zb-h1` and
    /// `zbv` only when listed).
    pub schedules: Vec<Schedule>,
    /// Fixed recomputation per pipeline stage (`--stage-recompute full,none,...`, one policy per stage;
    /// empty: the same policy on every stage).
    pub stage_recompute: Vec<Recompute>,
    /// Let the search try per-stage recomputation mixes (`--stage-recompute mixed`): full
    /// recomputation on the first `k` stages and the candidate's own policy on the rest, for pipelined
    /// candidates whose uniform policy does not fit.
    pub stage_recompute_mixes: bool,
    /// The engine (`--engine`): only configurations it runs are searched, and they are costed for it.
    /// `None`: each candidate goes to the first engine that runs it (Megatron-LM, DeepSpeed, FSDP).
    pub engine: Option<moai_costmodel::Stack>,
    /// The GEMM precision every candidate uses (`--precision fp8` sets [`MatmulPrecision::Fp8`]). The
    /// search does not try fp8 by itself: it plans fp8 only when the user asks for it.
    pub precision: MatmulPrecision,
    /// Offload the optimizer state to host memory in every candidate (`--offload optimizer`); the
    /// search does not try offload by itself.
    pub offload_optimizer: bool,
    /// Activation offload (`--offload activations[=N]`): off, tried by the search beside no offload
    /// (`activations`), or a fixed number of decoder layers per pipeline device (`activations=N`).
    pub offload_activations: ActivationOffload,
    /// Fixed overlap switches (`--overlap grad-reduce=off,...`), in switch order; a switch not named
    /// stays on where the engine overlaps.
    pub overlap: Vec<(moai_costmodel::OverlapSwitch, bool)>,
    /// Fixed expert-parallel degree (mixture-of-experts models).
    pub ep: Option<u32>,
    /// Fixed expert tensor-parallel degree.
    pub expert_tp: Option<u32>,
    /// Fixed hybrid-sharding group (`--dp-shard N`: ZeRO state sharded over N data-parallel ranks,
    /// replicated over dp/N); `None`: full sharding and whole-server groups are searched.
    pub dp_shard: Option<u32>,
}

impl Constraints {
    /// Parses `--overlap`: a comma list of `SWITCH=on|off` (switches `grad-reduce`, `param-gather`,
    /// `tp-comm`), or `all=on|off` for every switch; a later entry overrides an earlier one.
    pub fn parse_overlap_list(s: &str) -> Result<Vec<(moai_costmodel::OverlapSwitch, bool)>> {
        use moai_costmodel::OverlapSwitch;
        let bad = |m: String| PlanError::InvalidArgument(format!("--overlap {s}: {m}"));
        let mut out: Vec<(OverlapSwitch, bool)> = Vec::new();
        for item in s.split(',') {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{}` is not SWITCH=on|off", item.trim())))?;
            let on = match value.trim().to_ascii_lowercase().as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                v => return Err(bad(format!("`{v}` is not on or off"))),
            };
            let switches: Vec<OverlapSwitch> = if name.trim().eq_ignore_ascii_case("all") {
                OverlapSwitch::ALL.to_vec()
            } else {
                vec![name.parse().map_err(|e| bad(format!("{e}")))?]
            };
            for sw in switches {
                out.retain(|(k, _)| *k != sw);
                out.push((sw, on));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Parses a comma list of recomputation policies (`none,full`).
    pub fn parse_recompute_list(s: &str) -> Result<Vec<Recompute>> {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<Recompute>()
                    .map_err(|e| PlanError::InvalidArgument(format!("--recompute: {e}")))
            })
            .collect()
    }

    /// Parses a comma list of schedules (`1f1b,interleaved:2`); interleaving takes at most
    /// [`MAX_INTERLEAVE`] chunks per stage.
    pub fn parse_schedule_list(s: &str) -> Result<Vec<Schedule>> {
        s.split(',')
            .map(|p| {
                let sched = p
                    .trim()
                    .parse::<Schedule>()
                    .map_err(|e| PlanError::InvalidArgument(format!("--schedule: {e}")))?;
                if let Schedule::Interleaved(v) = sched
                    && v > MAX_INTERLEAVE
                {
                    return Err(PlanError::InvalidArgument(format!(
                        "--schedule interleaved:{v}: at most {MAX_INTERLEAVE} chunks per stage"
                    )));
                }
                Ok(sched)
            })
            .collect()
    }
}

/// A planning request.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Global batch in sequences.
    pub batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Precision policy.
    pub precision: PrecisionPolicy,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Search constraints.
    pub constraints: Constraints,
    /// Stop after this long, counted from the start of the search and covering every phase (profiles,
    /// candidate compilation, costing, code generation), and return the best plan so far.
    pub time_budget: Option<Duration>,
    /// Worker threads (None: all cores).
    pub threads: Option<usize>,
    /// Fraction of device memory a plan may use (the rest is headroom for the allocator and runtime).
    pub memory_fraction: f64,
    /// Cancels the search and the code generation (the binary's Ctrl-C handler sets it); what is finished
    /// is kept.
    pub cancel: CancelToken,
    /// Whether the search skips candidates by bounds (the default) or compiles and costs every one
    /// (`--exhaustive`); both choose the same plan.
    pub pruning: crate::search::Pruning,
    /// Mixture-of-experts routing-imbalance factor (tokens at the busiest expert over the average,
    /// `--moe-imbalance`); `None`: the cost model's default, `moai_costmodel::moe::DEFAULT_IMBALANCE`.
    pub moe_imbalance: Option<f64>,
}

impl PlanRequest {
    /// A request with defaults: amp-bf16, AdamW, no constraints, 95% of device memory usable.
    pub fn new(batch: u64, seq: u64) -> PlanRequest {
        PlanRequest {
            batch,
            seq,
            precision: "amp-bf16".parse().expect("amp-bf16 is a precision policy"),
            optimizer: "adamw".parse().expect("adamw is an optimizer"),
            constraints: Constraints::default(),
            time_budget: None,
            threads: None,
            memory_fraction: 0.95,
            cancel: CancelToken::new(),
            pruning: crate::search::Pruning::Bounds,
            moe_imbalance: None,
        }
    }

    /// Checks the job's own numbers against their ranges: batch in 1..=[`MAX_BATCH`], sequence length in
    /// 1..=[`MAX_SEQ`], batch × sequence length at most [`MAX_TOKENS_PER_STEP`], a positive time budget of
    /// at most [`MAX_TIME_BUDGET_S`], threads in 1..=cores × [`THREADS_PER_CORE`], a memory fraction in
    /// (0, 1].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PlanError::InvalidArgument(m));
        if self.batch == 0 {
            return bad("--batch-size 0: the global batch must be at least 1".into());
        }
        if self.batch > MAX_BATCH {
            return bad(format!(
                "--batch-size {}: at most {MAX_BATCH} sequences (2^40)",
                self.batch
            ));
        }
        if self.seq == 0 {
            return bad("--seq-len 0: the sequence length must be at least 1".into());
        }
        if self.seq > MAX_SEQ {
            return bad(format!(
                "--seq-len {}: at most {MAX_SEQ} tokens (2^24)",
                self.seq
            ));
        }
        if self.batch.saturating_mul(self.seq) > MAX_TOKENS_PER_STEP {
            return bad(format!(
                "--batch-size {} × --seq-len {}: at most {MAX_TOKENS_PER_STEP} tokens per step (2^50)",
                self.batch, self.seq
            ));
        }
        if let Some(t) = self.time_budget {
            if t.is_zero() {
                return bad("--time-budget must be positive".into());
            }
            if t.as_secs_f64() > MAX_TIME_BUDGET_S {
                return bad(format!(
                    "--time-budget {}: at most {MAX_TIME_BUDGET_S} seconds (one week)",
                    t.as_secs_f64()
                ));
            }
        }
        if let Some(n) = self.threads {
            check_threads(n)?;
        }
        if !(self.memory_fraction > 0.0 && self.memory_fraction <= 1.0) {
            return bad(format!(
                "memory fraction {}: must be in (0, 1]",
                self.memory_fraction
            ));
        }
        if let Some(x) = self.moe_imbalance
            && !(x.is_finite() && (1.0..=64.0).contains(&x))
        {
            return bad(format!(
                "--moe-imbalance {x}: must be in [1, 64] (tokens at the busiest expert over the average)"
            ));
        }
        Ok(())
    }

    /// The default cost model for this request (its routing-imbalance factor applied).
    pub fn cost_model(&self) -> moai_costmodel::ProfiledCostModel {
        let m = moai_costmodel::ProfiledCostModel::new();
        match self.moe_imbalance {
            Some(x) => m.with_moe_imbalance(x),
            None => m,
        }
    }
    /// [`PlanRequest::validate`], then the job against the cluster it runs on: `--precision fp8` needs a
    /// GPU with FP8 matrix units (H100 and the HBM2e H100, H200, B200, MI300X, MI325X, MI355X);
    /// elsewhere one line says so.
    pub fn validate_for(&self, cluster: &Cluster) -> Result<()> {
        self.validate()?;
        check_precision(self.constraints.precision, cluster.gpu)
    }
}

/// Whether `gpu` runs GEMMs of `precision`: fp8 needs FP8 matrix units; the error is one line naming
/// `--precision` and the GPUs that have them.
pub fn check_precision(precision: MatmulPrecision, gpu: moai_costmodel::Gpu) -> Result<()> {
    precision.check_gpu(gpu).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.strip_prefix("invalid configuration: ").unwrap_or(&msg);
        PlanError::InvalidArgument(format!("--precision {precision}: {msg}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_with_the_value() {
        let ok = PlanRequest::new(256, 1024);
        assert!(ok.validate().is_ok());
        let err = |r: PlanRequest| r.validate().unwrap_err().to_string();
        assert!(err(PlanRequest::new(MAX_BATCH + 1, 1)).contains("at most 1099511627776"));
        assert!(PlanRequest::new(MAX_BATCH, 1).validate().is_ok());
        assert!(err(PlanRequest::new(1, MAX_SEQ + 1)).contains("at most 16777216"));
        assert!(err(PlanRequest::new(1 << 30, 1 << 21)).contains("tokens per step"));
        assert!(err(PlanRequest::new(u64::MAX, u64::MAX)).contains("--batch-size"));
        let mut r = PlanRequest::new(8, 8);
        r.threads = Some(available_cores() * THREADS_PER_CORE + 1);
        assert!(err(r).contains("at most"));
        assert!(check_threads(1).is_ok());
        assert!(check_threads(0).is_err());
        assert!(check_threads(usize::MAX).is_err());
    }

    #[test]
    fn activation_offload_counts_follow_the_stage_size() {
        use ActivationOffload::*;
        assert_eq!(Off.counts(32, 1), vec![0]);
        assert_eq!(Auto.counts(32, 1), vec![0, 31]);
        assert_eq!(Auto.counts(32, 4), vec![0, 7]);
        assert_eq!(Auto.counts(4, 4), vec![0], "one layer per stage stays");
        assert_eq!(Layers(3).counts(32, 8), vec![3]);
        assert_eq!(Auto.fixed(32, 1), 31);
        assert_eq!(Layers(5).fixed(32, 1), 5);
        assert!(Layers(31).check_layers(32).is_ok());
        let e = Layers(32).check_layers(32).unwrap_err().to_string();
        assert!(e.starts_with("--offload activations=32: at most 31"), "{e}");
        assert!(Auto.check_layers(1).is_ok());
    }

    #[test]
    fn fp8_is_refused_on_gpus_without_fp8_units() {
        let mut r = PlanRequest::new(8, 8);
        r.constraints.precision = MatmulPrecision::Fp8;
        for g in [moai_costmodel::Gpu::A100, moai_costmodel::Gpu::Mi250] {
            let e = r
                .validate_for(&Cluster::new(g, 8).unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--precision fp8: fp8 GEMMs need FP8 matrix units, which"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        r.validate_for(&Cluster::new(moai_costmodel::Gpu::H100, 8).unwrap())
            .unwrap();
    }

    #[test]
    fn time_budgets_are_finite_and_bounded() {
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            MAX_TIME_BUDGET_S + 1.0,
        ] {
            assert!(time_budget_from_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(
            time_budget_from_secs(2.5).unwrap(),
            Duration::from_millis(2500)
        );
        assert!(time_budget_from_secs(MAX_TIME_BUDGET_S).is_ok());
    }

    #[test]
    fn cancel_tokens_are_shared_and_bounds_remember_the_first_reason() {
        let req = PlanRequest::new(8, 8);
        let b = WorkBounds::new(&req, Instant::now());
        assert_eq!(b.check(), None);
        assert_eq!(b.stopped(), None);
        let other = req.cancel.clone();
        assert!(!other.cancel(), "first cancel");
        assert!(req.cancel.cancel(), "second cancel sees the first");
        assert_eq!(b.check(), Some(StopReason::Interrupt));
        assert_eq!(b.stopped(), Some(StopReason::Interrupt));

        let mut req = PlanRequest::new(8, 8);
        req.time_budget = Some(Duration::from_millis(100));
        let started = Instant::now() - Duration::from_millis(60);
        let b = WorkBounds::new(&req, started);
        assert_eq!(b.check(), None, "60 of 100 ms used");
        assert_eq!(b.check_within(0.5), Some(StopReason::TimeBudget));
        assert_eq!(b.stopped(), Some(StopReason::TimeBudget));
        assert_eq!(
            b.check(),
            None,
            "a phase's share does not stop later phases"
        );
        req.cancel.cancel();
        assert_eq!(b.check(), Some(StopReason::Interrupt));
        assert_eq!(
            b.stopped(),
            Some(StopReason::TimeBudget),
            "the first reason is kept"
        );
        assert_eq!(StopReason::TimeBudget.as_str(), "time-budget");
        assert_eq!(StopReason::Interrupt.to_string(), "interrupt");
    }
}
