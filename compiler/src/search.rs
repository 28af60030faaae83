//! The search: enumerate the space, screen every candidate by the cost model's lower bounds (training
//! profiles built once per micro-batch size and recomputation), then — cheapest step-time bound first, in
//! fixed batches — prune by the static bytes of its block costs, partition its stages on those costs, and
//! cost it, skipping candidates whose time bound exceeds the [`RANKED`]-th fastest plan costed so far
//! (branch and bound); select the fastest plan that fits. Deterministic: the same request gives the same
//! plan, and the same counts, at any thread count. [`Pruning::Off`] compiles and costs every candidate and
//! chooses the same plan.

use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::partition::{StageCost, partition};
use crate::request::{PlanRequest, StopReason, WorkBounds};
use crate::space::{ModelShape, enumerate};
use moai_costmodel::{BlockCost, Cluster, CostModel, Estimate, ParallelConfig, Recompute};
use moai_ir::cost::{BlockKind, StepProfile};
use moai_ir::train::TrainOptions;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Progress callbacks of a long search (the CLI draws a bar; libraries may ignore them).
pub trait Progress: Sync {
    /// A phase started with `total` units of work.
    fn start(&self, phase: &str, total: u64);
    /// One unit done.
    fn tick(&self);
    /// The phase ended.
    fn finish(&self);
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn tick(&self) {}
    fn finish(&self) {}
}

/// What happened to one candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Costed and fits in memory.
    Feasible(Estimate),
    /// Costed, but its predicted peak exceeds the usable device memory.
    OutOfMemory(Estimate),
    /// Rejected before costing, with the reason.
    Rejected(String),
    /// Not costed: the time budget ran out or the search was interrupted.
    NotEvaluated,
    /// Not costed: a lower bound shows it cannot fit, or cannot be among the [`RANKED`] fastest.
    Pruned(Bound),
}

/// A candidate with its compiled stage layout and outcome.
#[derive(Clone, Debug)]
pub struct Evaluated {
    /// Configuration (stages filled in by partitioning).
    pub config: ParallelConfig,
    /// Outcome.
    pub outcome: Outcome,
}

impl Evaluated {
    /// The estimate, when the candidate was costed.
    pub fn estimate(&self) -> Option<&Estimate> {
        match &self.outcome {
            Outcome::Feasible(e) | Outcome::OutOfMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Everything the search found.
#[derive(Clone, Debug)]
pub struct SearchResult {
    /// Every candidate in enumeration order.
    pub evaluated: Vec<Evaluated>,
    /// Index of the chosen candidate in `evaluated`.
    pub best: usize,
    /// Indices of feasible candidates, fastest first (the winner first).
    pub ranking: Vec<usize>,
    /// Combinations rejected while enumerating or compiling, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Compile phase wall time, ms.
    pub compile_ms: f64,
    /// Cost phase wall time, ms.
    pub cost_ms: f64,
    /// Candidates that survived pruning and were costed.
    pub costed: u64,
    /// Combinations the space enumerated: the candidates plus those a structural rule rejected.
    pub enumerated: u64,
    /// Combinations a structural rule rejected while enumerating (by reason in `rejected`).
    pub structural: u64,
    /// Candidates pruned by a bound before compiling or costing, by [`Bound::as_str`].
    pub pruned: BTreeMap<String, u64>,
    /// Candidates whose stages were partitioned (compiled) for costing.
    pub compiled: u64,
    /// The search stopped early (time budget or interrupt), in words for the explanation.
    pub stopped_early: Option<String>,
    /// Why the search stopped early, when it did.
    pub stopped_by: Option<StopReason>,
    /// The bounds the search ran under (the request's cancellation token and the deadline of its time
    /// budget, counted from the start of the search); code generation after the search continues under
    /// the same bounds.
    pub bounds: Arc<WorkBounds>,
}

/// Training options for one recomputation policy, as the export engines run the step
/// ([`moai_costmodel::Stack::train_options`]). Every engine runs the same options (each computes on
/// bf16 copies of the weights; eager PyTorch, the one stack that does not, is no engine), so one
/// profile serves every candidate whatever its engine; a test holds the engines to that.
pub fn train_options(req: &PlanRequest, r: Recompute) -> TrainOptions {
    let [first, ..] = crate::export::ALL_EXPORT_ENGINES;
    first.train_options(req.precision, req.optimizer, r)
}

/// Profiles of the model for every (micro-batch size, recomputation) a set of candidates needs.
pub fn profiles_for(
    model: &Model,
    req: &PlanRequest,
    keys: &[(u32, Recompute)],
) -> Result<HashMap<(u32, Recompute), Arc<StepProfile>>> {
    profiles_within(model, req, keys, None)
}

/// Like [`profiles_for`], but once `bounds` say stop, builds no more profiles (after the first one, which
/// is always built so that a cut-short search can still cost something): the map then lacks those keys.
fn profiles_within(
    model: &Model,
    req: &PlanRequest,
    keys: &[(u32, Recompute)],
    bounds: Option<&WorkBounds>,
) -> Result<HashMap<(u32, Recompute), Arc<StepProfile>>> {
    let done = AtomicU64::new(0);
    type Built = Option<((u32, Recompute), Arc<StepProfile>)>;
    let built: Vec<Result<Built>> = keys
        .par_iter()
        .with_max_len(1)
        .map(|&(mbs, r)| {
            if bounds.is_some_and(|b| b.check_within(PROFILES_SHARE).is_some())
                && done.load(Ordering::SeqCst) >= 1
            {
                return Ok(None);
            }
            let p = moai_ir::train::step_profile(
                &model.graph,
                &train_options(req, r),
                mbs as u64,
                req.seq,
            )?;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(Some(((mbs, r), Arc::new(p))))
        })
        .collect();
    let mut out = HashMap::new();
    for b in built {
        if let Some((k, p)) = b? {
            out.insert(k, p);
        }
    }
    Ok(out)
}

fn model_shape(model: &Model) -> ModelShape {
    ModelShape::of(model)
}

/// How the search may skip candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pruning {
    /// Skip candidates by bounds (the default): a memory lower bound before stage partitioning, and
    /// branch and bound on the cost model's step-time lower bound against the plans already costed.
    /// Returns exactly the plan, alternatives and ranking head of [`Pruning::Off`].
    #[default]
    Bounds,
    /// Compile and cost every candidate: the reference the bounded search is tested against.
    Off,
}

/// The bound that pruned a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bound {
    /// A memory lower bound exceeds the usable device memory: it cannot fit, whatever its stages.
    Memory,
    /// Its step-time lower bound exceeds the step time of [`RANKED`] plans already costed that fit: it
    /// can neither win nor be one of the alternatives shown.
    Time,
}

impl Bound {
    /// The key in `SearchResult::pruned` and the plan JSON's `search.pruned`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Time => "time",
        }
    }
}

/// Plans whose exact ranking the bounded search keeps: the winner and the alternatives the report shows.
/// A candidate is pruned by time only when its lower bound exceeds the `RANKED`-th fastest feasible step
/// time costed so far, so the first `RANKED` entries of [`SearchResult::ranking`] are those of the
/// unpruned search.
pub const RANKED: usize = 6;

/// Candidates costed between two updates of the branch-and-bound threshold. Fixed (not the thread
/// count), so that which candidates are pruned, and so every count, is the same at any thread count.
const COST_BATCH: usize = 32;

/// Runs the whole search under the request's pruning (by bounds unless `req.pruning` says otherwise).
pub fn search(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    progress: &dyn Progress,
) -> Result<SearchResult> {
    search_with(model, cluster, req, cost, progress, req.pruning)
}

/// What the screening of one candidate left for costing.
enum Screened {
    /// To cost, with the cost model's lower bounds of step time and peak memory (0 without bounds).
    Survivor(f64, f64),
    /// Pruned by the cost model's own bound, with its time and memory bounds (re-costed should a costed
    /// candidate show that bound unsound, and when nothing else fits, so that the error names real peaks).
    Pruned(Bound, f64, f64),
    /// Rejected with the reason, or not evaluated (`NOT_EVALUATED`).
    Rejected(String),
}

/// The static bytes of the heaviest stage of any split of `sums` into `pp` contiguous stages, at least:
/// a stage holding everything without pipelining; else the most of the total any `pp` stages can
/// divide it into, the largest decoder layer, the first stage's embedding and first layer, and the last
/// stage's last layer and head (each stage holds at least one layer). Never above
/// [`compile_candidate`]'s `static_max` for any split it may choose, so pruning by it rejects nothing
/// that check would keep.
fn static_lower_bound(sums: &LayerSums, pp: u32, layers: u32) -> f64 {
    let last = layers.saturating_sub(1);
    let total = sums.stage(0, last)[2];
    let stages = pp.min(layers).max(1);
    if stages <= 1 {
        return total;
    }
    let mut lb = total / stages as f64 * (1.0 - moai_costmodel::bounds::BOUND_SLACK);
    lb = lb.max(sums.stage(0, 0)[2]).max(sums.stage(last, last)[2]);
    for l in 1..last {
        lb = lb.max(sums.stage(l, l)[2]);
    }
    lb
}

/// Runs the whole search under a pruning policy.
pub fn search_with(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    progress: &dyn Progress,
    pruning: Pruning,
) -> Result<SearchResult> {
    req.validate()?;
    let t0 = Instant::now();
    // The time budget and Ctrl-C bound every phase below: each unit of work (a profile, a candidate's
    // screening, a candidate's compilation and costing) starts only while `bounds.check()` is None.
    let bounds = Arc::new(WorkBounds::new(req, t0));
    let shape = model_shape(model);
    let space = enumerate(shape, cluster, req.batch, req.seq, &req.constraints);
    let mut rejected = space.rejected.clone();
    let structural: u64 = space.rejected.values().sum();
    let mut candidates = space.candidates;
    let enumerated = candidates.len() as u64 + structural;
    tracing::info!("The number of candidates is {}.", candidates.len());
    tracing::info!(
        "Enumerated {enumerated} combinations: {} candidates, {structural} rejected by structure.",
        candidates.len()
    );
    if candidates.is_empty() {
        let reasons: Vec<String> = if space.conflicts.is_empty() {
            rejected.iter().map(|(r, n)| format!("{r} ({n})")).collect()
        } else {
            space.conflicts
        };
        return Err(PlanError::NoFeasiblePlan(format!(
            "no configuration of {} on {} devices satisfies the constraints: {}",
            model.name,
            cluster.devices,
            if reasons.is_empty() {
                "the flags exclude every candidate".to_string()
            } else {
                reasons.join(", ")
            }
        )));
    }
    tracing::info!("Parallel Graph Compile start...");
    progress.start("compile", candidates.len() as u64);

    // Training profiles for every (micro-batch, recompute) in the space.
    let mix_full = req.constraints.stage_recompute_mixes
        && (req.constraints.recompute.is_empty()
            || req.constraints.recompute.contains(&Recompute::Full));
    let mut keys: Vec<(u32, Recompute)> = candidates
        .iter()
        .flat_map(|c| {
            let mut k = vec![(c.micro_batch_size, c.recompute)];
            k.extend(c.stage_recompute.iter().map(|r| (c.micro_batch_size, *r)));
            if mix_full && c.pp > 1 {
                k.push((c.micro_batch_size, Recompute::Full));
            }
            k
        })
        .collect();
    keys.sort_by_key(|(m, r)| (*m, *r as u8));
    keys.dedup();
    let profiles = profiles_within(model, req, &keys, Some(&bounds))?;
    tracing::debug!(
        "{} training profiles in {} ms",
        profiles.len(),
        t0.elapsed().as_millis()
    );

    // Screening, per candidate: block costs and the memory lower bounds, before any stage partitioning.
    let capacity = cluster.memory_per_device_bytes as f64 * req.memory_fraction;
    let screened_ok = AtomicU64::new(0);
    let screened: Vec<Screened> = candidates
        .par_iter()
        .map(|c| {
            let out = screen(
                c,
                &profiles,
                cluster,
                cost,
                capacity,
                pruning,
                &bounds,
                &screened_ok,
            );
            progress.tick();
            out
        })
        .collect();
    progress.finish();
    let mut pruned: BTreeMap<String, u64> = BTreeMap::new();
    let mut survivors: Vec<(usize, f64, f64)> = Vec::new();
    // Candidates pruned by the cost model's own bounds, re-costed if that bound proves unsound.
    let mut model_pruned: Vec<(usize, f64, f64)> = Vec::new();
    let mut evaluated: Vec<Evaluated> = Vec::with_capacity(candidates.len());
    for (i, (c, r)) in candidates.drain(..).zip(screened).enumerate() {
        let outcome = match r {
            Screened::Survivor(t, m) => {
                survivors.push((i, t, m));
                Outcome::NotEvaluated
            }
            Screened::Pruned(b, t, m) => {
                *pruned.entry(b.as_str().into()).or_insert(0) += 1;
                model_pruned.push((i, t, m));
                Outcome::Pruned(b)
            }
            Screened::Rejected(reason) => {
                *rejected.entry(reason.clone()).or_insert(0) += 1;
                if reason == NOT_EVALUATED {
                    Outcome::NotEvaluated
                } else {
                    Outcome::Rejected(reason)
                }
            }
        };
        evaluated.push(Evaluated { config: c, outcome });
    }
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        "Elapsed Time to compile all candidates = {} [ms]",
        compile_ms.round() as u64
    );
    tracing::info!("The number of possible candidates is {}.", survivors.len());
    if let Some(n) = pruned.get(Bound::Memory.as_str()) {
        tracing::info!("Pruned {n} candidates by a memory lower bound before partitioning.");
    }

    // Compile (partition) and cost the survivors, cheapest time bound first, in fixed batches; a
    // candidate whose time bound exceeds the RANKED-th fastest plan costed so far is pruned.
    tracing::info!("SelectBestGraphFromCandidates start...");
    let t1 = Instant::now();
    survivors.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let counters = CostCounters::default();
    progress.start("cost", survivors.len() as u64);
    let ctx = CostContext {
        profiles: &profiles,
        cluster,
        cost,
        layers: shape.layers,
        capacity,
        bounds: &bounds,
        counters: &counters,
        progress,
        pruning,
    };
    let prune_time = pruning == Pruning::Bounds;
    let mut run = cost_candidates(&ctx, &mut evaluated, &mut rejected, &survivors, prune_time);
    progress.finish();
    if prune_time && !run.unsound && bounds.check().is_none() {
        // Audit: cost a few candidates each bound pruned, spread over them, and check the bounds
        // against their predictions (a bound that a new dimension of the estimator outgrew shows here
        // even when no candidate costed so far exposed it).
        let mut sample = take_sample(&mut model_pruned);
        for &(i, ..) in &sample {
            uncount(&mut pruned, &evaluated[i].outcome);
        }
        sample.extend(take_sample(&mut run.time_pruned));
        sample.sort_by_key(|a| a.0);
        let audit = cost_candidates(&ctx, &mut evaluated, &mut rejected, &sample, false);
        run.unsound = audit.unsound;
        counters
            .audited
            .fetch_add(sample.len() as u64, Ordering::Relaxed);
    }
    if run.unsound {
        // A costed candidate predicted below its own bound: the cost model's bounds do not hold for
        // this job, so every candidate they pruned is costed after all.
        tracing::warn!(
            "the cost model's lower bounds exceed a prediction on this job: costing the {} candidates they pruned",
            model_pruned.len() + run.time_pruned.len()
        );
        let mut again: Vec<(usize, f64, f64)> = std::mem::take(&mut model_pruned);
        again.append(&mut run.time_pruned);
        again.sort_by_key(|a| a.0);
        for &(i, ..) in &again {
            uncount(&mut pruned, &evaluated[i].outcome);
        }
        let more = cost_candidates(&ctx, &mut evaluated, &mut rejected, &again, false);
        run.time_pruned = more.time_pruned;
    }
    for &(i, ..) in &run.time_pruned {
        *pruned.entry(Bound::Time.as_str().into()).or_insert(0) += 1;
        evaluated[i].outcome = Outcome::Pruned(Bound::Time);
    }
    let stopped_now = bounds.stopped();
    let any_feasible = evaluated
        .iter()
        .any(|e| matches!(e.outcome, Outcome::Feasible(_)));
    if !any_feasible && stopped_now.is_none() && !model_pruned.is_empty() {
        // Nothing fits: cost what the cost model's memory bound pruned too, so that the error names the
        // smallest predicted peak exactly as an unpruned search would.
        for &(i, ..) in &model_pruned {
            uncount(&mut pruned, &evaluated[i].outcome);
        }
        cost_candidates(&ctx, &mut evaluated, &mut rejected, &model_pruned, false);
    }
    if mix_full && bounds.check().is_none() {
        let (tried, found) = try_recompute_mixes(
            &evaluated,
            &profiles,
            cost,
            cluster,
            req,
            shape.layers,
            capacity,
        );
        counters.costed.fetch_add(tried, Ordering::Relaxed);
        let fitting = found.len() as u64;
        if tried > fitting {
            *rejected
                .entry("per-stage recomputation mix (full on the first stages) still exceeds the device or is slower".into())
                .or_insert(0) += tried - fitting;
        }
        evaluated.extend(found);
    }
    let static_pruned = counters.static_pruned.load(Ordering::Relaxed);
    if static_pruned > 0 {
        *pruned.entry(Bound::Memory.as_str().into()).or_insert(0) += static_pruned;
    }
    let not_costed = counters.not_evaluated.load(Ordering::Relaxed);
    if not_costed > 0 {
        *rejected.entry(NOT_EVALUATED.into()).or_insert(0) += not_costed;
    }
    let costed = counters.costed.load(Ordering::Relaxed);
    let compiled = counters.compiled.load(Ordering::Relaxed);
    let cost_ms = t1.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        "Elapsed Time to compute cost for survived candidates = {} [ms]",
        cost_ms.round() as u64
    );
    tracing::info!(
        "Compiled {compiled} and costed {costed} candidates ({} of them pruned ones, to audit the bounds); pruned {} by a memory lower bound, {} by a time lower bound.",
        counters.audited.load(Ordering::Relaxed),
        pruned.get(Bound::Memory.as_str()).copied().unwrap_or(0),
        pruned.get(Bound::Time.as_str()).copied().unwrap_or(0)
    );
    let stopped_by = bounds.stopped();
    let stopped_early = stopped_by.map(|r| match r {
        StopReason::Interrupt => "interrupted".to_string(),
        StopReason::TimeBudget => format!(
            "time budget of {:.1} s reached",
            req.time_budget.map(|d| d.as_secs_f64()).unwrap_or(0.0)
        ),
    });

    let mut ranking: Vec<usize> = (0..evaluated.len())
        .filter(|&i| matches!(evaluated[i].outcome, Outcome::Feasible(_)))
        .collect();
    ranking.sort_by(|&a, &b| {
        rank_key(&evaluated[a])
            .partial_cmp(&rank_key(&evaluated[b]))
            .expect("finite")
            .then(a.cmp(&b))
    });
    let Some(&best) = ranking.first() else {
        if let Some(why) = stopped_by {
            // nothing feasible among what was finished: say what stopped it, not "fits nowhere"
            if costed == 0 && why == StopReason::Interrupt {
                return Err(PlanError::Interrupted);
            }
            let (what, hint) = match why {
                StopReason::Interrupt => ("interrupted (Ctrl-C)".to_string(), ""),
                StopReason::TimeBudget => (
                    format!(
                        "the time budget of {:.1} s ran out",
                        req.time_budget.map(|d| d.as_secs_f64()).unwrap_or(0.0)
                    ),
                    "; give --time-budget more seconds",
                ),
            };
            return Err(PlanError::Stopped(format!(
                "{what} after {costed} of {} candidates were costed, none of them fitting{hint}",
                evaluated.len()
            )));
        }
        return Err(no_fit_error(model, cluster, req, &evaluated));
    };
    Ok(SearchResult {
        evaluated,
        best,
        ranking,
        rejected,
        compile_ms,
        cost_ms,
        costed,
        stopped_early,
        stopped_by,
        bounds,
        enumerated,
        structural,
        pruned,
        compiled,
    })
}

/// Pruned candidates of each bound costed after the search to check the bound on them.
const AUDIT: usize = 8;

/// Takes [`AUDIT`] entries spread evenly over `list` (its first and last included) out of it.
fn take_sample(list: &mut Vec<(usize, f64, f64)>) -> Vec<(usize, f64, f64)> {
    let n = list.len();
    if n == 0 {
        return Vec::new();
    }
    let mut at: Vec<usize> = (0..AUDIT).map(|k| k * n / AUDIT).collect();
    at.push(n - 1);
    at.dedup();
    let sample: Vec<(usize, f64, f64)> = at.iter().map(|&k| list[k]).collect();
    let mut k = 0;
    list.retain(|_| {
        let keep = at.binary_search(&k).is_err();
        k += 1;
        keep
    });
    sample
}

/// Takes a pruned candidate's count back before it is costed after all.
fn uncount(pruned: &mut BTreeMap<String, u64>, outcome: &Outcome) {
    if let Outcome::Pruned(b) = outcome
        && let Some(n) = pruned.get_mut(b.as_str())
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            pruned.remove(b.as_str());
        }
    }
}

/// Screens one candidate before partitioning: its profile, the time budget, its block costs and the
/// memory lower bounds (only under [`Pruning::Bounds`]).
#[allow(clippy::too_many_arguments)]
fn screen(
    c: &ParallelConfig,
    profiles: &HashMap<(u32, Recompute), Arc<StepProfile>>,
    cluster: &Cluster,
    cost: &dyn CostModel,
    capacity: f64,
    pruning: Pruning,
    bounds: &WorkBounds,
    screened_ok: &AtomicU64,
) -> Screened {
    // unfinished work (time budget, Ctrl-C) leaves the candidate not evaluated
    let Some(profile) = profiles.get(&(c.micro_batch_size, c.recompute)) else {
        return Screened::Rejected(NOT_EVALUATED.to_string());
    };
    if bounds.check_within(COMPILE_SHARE).is_some()
        && screened_ok.load(Ordering::SeqCst) >= COMPILE_GRACE
    {
        return Screened::Rejected(NOT_EVALUATED.to_string());
    }
    // A per-stage recomputation mix is bounded by no single profile: never pruned.
    if pruning == Pruning::Off || c.mixed_recompute() {
        screened_ok.fetch_add(1, Ordering::SeqCst);
        return Screened::Survivor(0.0, 0.0);
    }
    // The cost model's own bounds first (the cheaper call, and its memory bound counts activations too).
    let lb = cost.lower_bounds(profile, cluster, c).unwrap_or_default();
    if lb.peak_memory_bytes > capacity {
        return Screened::Pruned(Bound::Memory, lb.step_time_s, lb.peak_memory_bytes);
    }
    screened_ok.fetch_add(1, Ordering::SeqCst);
    Screened::Survivor(lb.step_time_s, lb.peak_memory_bytes)
}

/// What the costing phase shares between its workers.
struct CostContext<'a> {
    profiles: &'a HashMap<(u32, Recompute), Arc<StepProfile>>,
    cluster: &'a Cluster,
    cost: &'a dyn CostModel,
    layers: u32,
    capacity: f64,
    bounds: &'a WorkBounds,
    counters: &'a CostCounters,
    progress: &'a dyn Progress,
    /// Under [`Pruning::Bounds`], the static-bytes bound prunes before partitioning.
    pruning: Pruning,
}

/// Counts of the costing phase.
#[derive(Default)]
struct CostCounters {
    /// Candidates partitioned into stages.
    compiled: AtomicU64,
    /// Candidates the cost model predicted.
    costed: AtomicU64,
    /// Candidates that fit.
    feasible: AtomicU64,
    /// Candidates started after a stop.
    after_stop: AtomicU64,
    /// Candidates left unfinished by a stop.
    not_evaluated: AtomicU64,
    /// Candidates pruned by the static-bytes bound of their block costs, before partitioning.
    static_pruned: AtomicU64,
    /// Pruned candidates costed to audit the bounds.
    audited: AtomicU64,
}

/// The result of one costing pass.
struct CostRun {
    /// Candidates pruned by the time bound (outcomes still `NotEvaluated`), with their bounds.
    time_pruned: Vec<(usize, f64, f64)>,
    /// A costed candidate was predicted below one of its lower bounds.
    unsound: bool,
}

/// Compiles (partitions) and costs `order` (index, time bound, memory bound), in that order, in
/// batches of [`COST_BATCH`]; with `prune_time`, skips a candidate whose time bound exceeds the
/// [`RANKED`]-th fastest feasible step time costed in the batches before.
fn cost_candidates(
    ctx: &CostContext,
    evaluated: &mut [Evaluated],
    rejected: &mut BTreeMap<String, u64>,
    order: &[(usize, f64, f64)],
    prune_time: bool,
) -> CostRun {
    let mut kept: Vec<f64> = evaluated
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Feasible(x) => Some(x.step_time_s),
            _ => None,
        })
        .collect();
    kept.sort_by(f64::total_cmp);
    kept.truncate(RANKED);
    let mut run = CostRun {
        time_pruned: Vec::new(),
        unsound: false,
    };
    // without time pruning there is no threshold to update: one batch, all of it in parallel
    let size = if prune_time {
        COST_BATCH
    } else {
        order.len().max(1)
    };
    for (b, batch) in order.chunks(size).enumerate() {
        let threshold = if prune_time && kept.len() >= RANKED {
            kept[RANKED - 1]
        } else {
            f64::INFINITY
        };
        if batch[0].1 > threshold {
            // sorted by the bound: every later candidate is pruned too
            for &a in &order[b * size..] {
                run.time_pruned.push(a);
                ctx.progress.tick();
            }
            break;
        }
        let configs: Vec<&ParallelConfig> =
            batch.iter().map(|&(i, ..)| &evaluated[i].config).collect();
        let outcomes: Vec<Option<(ParallelConfig, Outcome)>> = batch
            .par_iter()
            .zip(configs.par_iter())
            .map(|(&(_, lb_time, _), c)| {
                let out = if lb_time > threshold {
                    None
                } else {
                    Some(cost_one(ctx, c))
                };
                ctx.progress.tick();
                out
            })
            .collect();
        drop(configs);
        for (&(i, lb_time, lb_mem), out) in batch.iter().zip(outcomes) {
            let Some((cfg, outcome)) = out else {
                run.time_pruned.push((i, lb_time, lb_mem));
                continue;
            };
            if let Outcome::Feasible(e) | Outcome::OutOfMemory(e) = &outcome
                && (e.step_time_s < lb_time || (e.peak_memory_bytes as f64) < lb_mem)
            {
                tracing::debug!(
                    "bound above prediction: {:?}: {} s < {lb_time} s or {} B < {lb_mem} B",
                    cfg,
                    e.step_time_s,
                    e.peak_memory_bytes
                );
                run.unsound = true;
            }
            match &outcome {
                Outcome::OutOfMemory(_) => {
                    *rejected
                        .entry("predicted peak memory exceeds the device".into())
                        .or_insert(0) += 1
                }
                Outcome::Rejected(r) => *rejected.entry(r.clone()).or_insert(0) += 1,
                _ => {}
            }
            if let Outcome::Feasible(e) = &outcome {
                let at = kept.partition_point(|t| *t <= e.step_time_s);
                kept.insert(at, e.step_time_s);
                kept.truncate(RANKED);
            }
            evaluated[i].config = cfg;
            evaluated[i].outcome = outcome;
        }
        if run.unsound && prune_time {
            // stop pruning by a bound shown wrong; the caller costs what it pruned
            return CostRun {
                time_pruned: {
                    let mut rest = run.time_pruned;
                    let next = ((b + 1) * size).min(order.len());
                    rest.extend_from_slice(&order[next..]);
                    rest
                },
                unsound: true,
            };
        }
    }
    run
}

/// Partitions one candidate's stages and costs it (unless the search was stopped and has what it needs).
fn cost_one(ctx: &CostContext, c: &ParallelConfig) -> (ParallelConfig, Outcome) {
    let n = ctx.counters;
    // once stopped, cost only until one candidate fits (at most COST_GRACE more)
    let stop = ctx.bounds.check().is_some()
        && (n.feasible.load(Ordering::SeqCst) > 0
            || n.after_stop.fetch_add(1, Ordering::SeqCst) >= COST_GRACE);
    if stop {
        n.not_evaluated.fetch_add(1, Ordering::Relaxed);
        return (c.clone(), Outcome::NotEvaluated);
    }
    let Some(profile) = ctx.profiles.get(&(c.micro_batch_size, c.recompute)) else {
        n.not_evaluated.fetch_add(1, Ordering::Relaxed);
        return (c.clone(), Outcome::NotEvaluated);
    };
    if c.mixed_recompute() {
        // each stage's blocks costed under its own policy, the estimate on the assembled profile
        n.compiled.fetch_add(1, Ordering::Relaxed);
        let cfg = match compile_mixed(
            c,
            profile,
            ctx.profiles,
            ctx.cost,
            ctx.cluster,
            ctx.layers,
            ctx.capacity,
        ) {
            Ok(cfg) => cfg,
            Err(reason) => return (c.clone(), Outcome::Rejected(reason)),
        };
        n.costed.fetch_add(1, Ordering::Relaxed);
        let outcome =
            match estimate_candidate(&cfg, ctx.profiles, ctx.cost, ctx.cluster, ctx.layers) {
                Ok(e) if (e.peak_memory_bytes as f64) <= ctx.capacity => {
                    n.feasible.fetch_add(1, Ordering::SeqCst);
                    Outcome::Feasible(e)
                }
                Ok(e) => Outcome::OutOfMemory(e),
                Err(err) => Outcome::Rejected(format!("cost model: {err}")),
            };
        return (cfg, outcome);
    }
    let sums = match ctx
        .cost
        .block_costs(profile, ctx.cluster, c)
        .map_err(|e| format!("cost model: {e}"))
        .and_then(|blocks| LayerSums::new(&blocks, ctx.layers))
    {
        Ok(s) => s,
        Err(reason) => return (c.clone(), Outcome::Rejected(reason)),
    };
    if ctx.pruning == Pruning::Bounds && static_lower_bound(&sums, c.pp, ctx.layers) > ctx.capacity
    {
        // the static bytes of its block costs cannot fit, whatever the stage split
        n.static_pruned.fetch_add(1, Ordering::Relaxed);
        return (c.clone(), Outcome::Pruned(Bound::Memory));
    }
    n.compiled.fetch_add(1, Ordering::Relaxed);
    let compiled = compile_with(c, std::slice::from_ref(&sums), ctx.layers, ctx.capacity);
    let cfg = match compiled {
        Ok(cfg) => cfg,
        Err(reason) => return (c.clone(), Outcome::Rejected(reason)),
    };
    n.costed.fetch_add(1, Ordering::Relaxed);
    let outcome = match ctx.cost.estimate(profile, ctx.cluster, &cfg) {
        Ok(e) if (e.peak_memory_bytes as f64) <= ctx.capacity => {
            n.feasible.fetch_add(1, Ordering::SeqCst);
            Outcome::Feasible(e)
        }
        Ok(e) => Outcome::OutOfMemory(e),
        Err(err) => Outcome::Rejected(format!("cost model: {err}")),
    };
    (cfg, outcome)
}

/// The share of the time budget training profiles may use (their candidates are compiled and costed in
/// the rest).
const PROFILES_SHARE: f64 = 0.4;

/// The share of the time budget profiles and candidate screening may use together (the survivors are
/// partitioned and costed in the rest).
const COMPILE_SHARE: f64 = 0.6;

/// Candidates screened after the time budget or an interrupt stopped the screening phase, when fewer had
/// survived before: a search cut short still has candidates to cost.
const COMPILE_GRACE: u64 = 64;

/// Candidates costed after a stop while none fits yet: a search cut short still returns a plan when one
/// of the first few fits.
const COST_GRACE: u64 = 256;

/// The rejection reason of candidates left unfinished by the time budget or an interrupt.
pub const NOT_EVALUATED: &str = "not evaluated (time budget or interrupt)";

/// Lower is better: step time, then peak memory (headroom breaks ties).
fn rank_key(e: &Evaluated) -> (f64, f64) {
    match &e.outcome {
        Outcome::Feasible(est) => (est.step_time_s, est.peak_memory_bytes as f64),
        _ => (f64::INFINITY, f64::INFINITY),
    }
}

fn no_fit_error(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    ev: &[Evaluated],
) -> PlanError {
    let least = ev
        .iter()
        .filter_map(|e| e.estimate())
        .map(|e| e.peak_memory_bytes)
        .min();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let where_ = match &cluster.flavor {
        Some(f) => format!("{f} ({} × {})", cluster.devices, cluster.gpu),
        None => format!("{} × {}", cluster.devices, cluster.gpu),
    };
    PlanError::NoFeasiblePlan(format!(
        "{} at batch {} × seq {} fits nowhere on {where_}: the smallest predicted peak is {} for {:.1} GiB usable per device",
        model.name,
        req.batch,
        req.seq,
        least
            .map(|b| format!("{:.1} GiB", gib(b)))
            .unwrap_or_else(|| "unknown (every candidate was rejected before costing)".into()),
        cluster.memory_per_device_bytes as f64 * req.memory_fraction / (1u64 << 30) as f64,
    ))
}

/// Per-layer sums of the cost model's block costs, with the embedding charged to the first stage and the
/// head to the last; prefix sums make a stage's cost O(1).
struct LayerSums {
    /// Prefix sums over decoder layers `0..l` of (seconds, saved bytes, static bytes).
    prefix: Vec<[f64; 3]>,
    /// Embedding (and anything before the first layer).
    first: [f64; 3],
    /// Head (and anything after the last layer).
    last: [f64; 3],
}

impl LayerSums {
    fn new(blocks: &[BlockCost], layers: u32) -> std::result::Result<LayerSums, String> {
        if layers == 0 {
            return Err("the model has no decoder layers".into());
        }
        let mut per_layer = vec![[0.0; 3]; layers as usize];
        let (mut first, mut last) = ([0.0; 3], [0.0; 3]);
        for b in blocks {
            let v = [b.time_s(), b.saved_bytes, b.static_bytes];
            let slot = match b.kind {
                BlockKind::Embedding => &mut first,
                BlockKind::Head => &mut last,
                BlockKind::Decoder(l) => per_layer.get_mut(l as usize).ok_or_else(|| {
                    format!(
                        "cost model: block costs name decoder layer {l} of a {layers}-layer model"
                    )
                })?,
            };
            for k in 0..3 {
                slot[k] += v[k];
            }
        }
        let mut prefix = vec![[0.0; 3]; layers as usize + 1];
        for (l, v) in per_layer.iter().enumerate() {
            for k in 0..3 {
                prefix[l + 1][k] = prefix[l][k] + v[k];
            }
        }
        Ok(LayerSums {
            prefix,
            first,
            last,
        })
    }

    /// (seconds, saved bytes, static bytes) of a stage holding layers `lo..=hi`.
    fn stage(&self, lo: u32, hi: u32) -> [f64; 3] {
        // Clamped to the model's layers (`new` ensures there is one); an empty range (lo = hi + 1) sums to
        // nothing of its own.
        let hi = (hi as usize).min(self.prefix.len() - 2);
        let lo = (lo as usize).min(hi + 1);
        let mut v = [0.0; 3];
        for (k, x) in v.iter_mut().enumerate() {
            *x = self.prefix[hi + 1][k] - self.prefix[lo][k];
            if lo == 0 {
                *x += self.first[k];
            }
            if hi + 2 == self.prefix.len() {
                *x += self.last[k];
            }
        }
        v
    }
}

type Profiles = HashMap<(u32, Recompute), Arc<StepProfile>>;

/// Compiles a candidate: per-block costs from the cost model under each stage's recomputation policy,
/// then [`compile_with`].
fn compile_mixed(
    c: &ParallelConfig,
    profile: &StepProfile,
    profiles: &Profiles,
    cost: &dyn CostModel,
    cluster: &Cluster,
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let sums_for = |p: &StepProfile| {
        cost.block_costs(p, cluster, c)
            .map_err(|e| format!("cost model: {e}"))
            .and_then(|blocks| LayerSums::new(&blocks, layers))
    };
    if !c.mixed_recompute() {
        return compile_with(c, &[sums_for(profile)?], layers, capacity);
    }
    let mut per_stage = Vec::with_capacity(c.pp as usize);
    for d in 0..c.pp as usize {
        let r = c.recompute_of_device(d);
        let p = profiles
            .get(&(c.micro_batch_size, r))
            .ok_or_else(|| NOT_EVALUATED.to_string())?;
        per_stage.push(sums_for(p)?);
    }
    compile_with(c, &per_stage, layers, capacity)
}

/// Costs a compiled candidate: its step profile, assembled per stage for a recomputation mix.
fn estimate_candidate(
    c: &ParallelConfig,
    profiles: &Profiles,
    cost: &dyn CostModel,
    cluster: &Cluster,
    layers: u32,
) -> moai_costmodel::Result<Estimate> {
    let missing = || {
        moai_costmodel::CostError::InvalidConfig(format!(
            "no step profile for micro-batch {} and recompute {}",
            c.micro_batch_size, c.recompute
        ))
    };
    if !c.mixed_recompute() {
        let p = profiles
            .get(&(c.micro_batch_size, c.recompute))
            .ok_or_else(missing)?;
        return cost.estimate(p, cluster, c);
    }
    let mixed = moai_costmodel::config::mixed_profile(c, layers, &|r| {
        profiles.get(&(c.micro_batch_size, r)).map(|p| p.as_ref())
    })?;
    cost.estimate(&mixed, cluster, c)
}

/// The per-stage recomputation mixes of `--stage-recompute mixed`: for every costed pipelined candidate
/// with one stage per device and a uniform policy other than full (whether it ran out of memory, or
/// fitted only by a memory-bound stage split that made it slow), full recomputation on the first `k`
/// stages (which hold the most in-flight micro-batches) and the candidate's policy on the rest, `k` =
/// 1, 2, … until a mix fits, or is no faster than the fastest fitting plan (more full stages only
/// add recomputation). Returns how many mixes were costed and the fitting ones.
/// Deterministic: candidates are tried independently and collected in enumeration order.
fn try_recompute_mixes(
    evaluated: &[Evaluated],
    profiles: &Profiles,
    cost: &dyn CostModel,
    cluster: &Cluster,
    req: &PlanRequest,
    layers: u32,
    capacity: f64,
) -> (u64, Vec<Evaluated>) {
    let best = evaluated
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Feasible(x) => Some(x.step_time_s),
            _ => None,
        })
        .fold(f64::INFINITY, f64::min);
    let seeds: Vec<&Evaluated> = evaluated
        .iter()
        .filter(|e| {
            let c = &e.config;
            c.pp > 1
                && c.schedule.chunks() == 1
                && !c.mixed_recompute()
                && c.recompute != Recompute::Full
                && e.estimate().is_some()
                && profiles.contains_key(&(c.micro_batch_size, Recompute::Full))
        })
        .collect();
    let tried = AtomicU64::new(0);
    let found: Vec<Option<Evaluated>> = seeds
        .par_iter()
        .map(|e| {
            let base = &e.config;
            for k in 1..base.pp as usize {
                let mut c = base.clone();
                c.stage_recompute = (0..base.pp as usize)
                    .map(|d| {
                        if d < k {
                            Recompute::Full
                        } else {
                            base.recompute
                        }
                    })
                    .collect();
                c.recompute = Recompute::Full;
                c.stages = Vec::new();
                let Ok(c) = crate::export::assign_engine(req.constraints.engine, c, cluster) else {
                    return None;
                };
                let p = profiles.get(&(c.micro_batch_size, c.recompute))?;
                let Ok(c) = compile_mixed(&c, p, profiles, cost, cluster, layers, capacity) else {
                    return None;
                };
                tried.fetch_add(1, Ordering::Relaxed);
                let Ok(est) = estimate_candidate(&c, profiles, cost, cluster, layers) else {
                    return None;
                };
                if est.step_time_s >= best {
                    return None;
                }
                if est.peak_memory_bytes as f64 <= capacity {
                    return Some(Evaluated {
                        config: c,
                        outcome: Outcome::Feasible(est),
                    });
                }
            }
            None
        })
        .collect();
    (
        tried.load(Ordering::Relaxed),
        found.into_iter().flatten().collect(),
    )
}

/// Partitions stages on the cost model's per-block costs and checks the static-memory lower bound of one
/// candidate.
#[cfg(test)]
fn compile_candidate(
    c: &ParallelConfig,
    blocks: &[BlockCost],
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let sums = LayerSums::new(blocks, layers)?;
    compile_with(c, std::slice::from_ref(&sums), layers, capacity)
}

/// [`compile_candidate`] on block costs already summed per layer: one sum for every stage, or one per
/// pipeline device (`all[d]`, a per-stage recomputation mix), each stage's time and memory from its
/// own policy's costs.
fn compile_with(
    c: &ParallelConfig,
    all: &[LayerSums],
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let Some(first) = all.first() else {
        return Err("no block costs".into());
    };
    let sums_of = |stage: u32| all.get(stage as usize).unwrap_or(first);
    let mut cfg = c.clone();
    // in-flight micro-batches per stage, looked up rather than recomputed in the partitioner's inner loop
    let inflight_of: Vec<f64> = (0..c.pp.max(1))
        .map(|d| moai_costmodel::memory::in_flight(c.schedule, c.pp, d, c.num_micro_batches) as f64)
        .collect();
    let stage_cost = |stage: u32, lo: u32, hi: u32| -> StageCost {
        let [time, saved, statics] = sums_of(stage).stage(lo, hi);
        let inflight = match inflight_of.get(stage as usize) {
            Some(&n) => n,
            None => moai_costmodel::memory::in_flight(c.schedule, c.pp, stage, c.num_micro_batches)
                as f64,
        };
        StageCost {
            time_s: time,
            memory_bytes: statics + saved * inflight,
        }
    };
    let stages = if c.pp > 1 && c.schedule.chunks() == 1 {
        partition(layers, c.pp, capacity, &stage_cost)
    } else {
        Vec::new()
    };
    // Memory lower bound: static memory of the heaviest stage alone.
    let ranges = if stages.is_empty() {
        moai_costmodel::config::even_stages(layers, c.pp)
    } else {
        stages.clone()
    };
    let static_max = ranges
        .iter()
        .map(|&(lo, hi)| first.stage(lo, hi)[2])
        .fold(0.0, f64::max);
    if static_max > capacity {
        return Err(
            "static memory (weights, gradients, optimizer state) exceeds the device".into(),
        );
    }
    cfg.stages = stages;
    Ok(cfg)
}

#[cfg(test)]
mod block_cost_tests {
    use super::*;

    /// Embedding, `layers` decoder layers of 1 s each (layer `slow` of `slow_s`), head; static bytes 10
    /// per block, saved bytes 1.
    fn blocks(layers: u32, slow: u32, slow_s: f64) -> Vec<BlockCost> {
        let b = |kind, t: f64| BlockCost {
            kind,
            forward_s: t / 3.0,
            backward_s: 2.0 * t / 3.0,
            params: 1.0,
            static_bytes: 10.0,
            saved_bytes: 1.0,
        };
        let mut v = vec![b(BlockKind::Embedding, 0.5)];
        v.extend(
            (0..layers).map(|l| b(BlockKind::Decoder(l), if l == slow { slow_s } else { 1.0 })),
        );
        v.push(b(BlockKind::Head, 2.0));
        v
    }

    fn pipeline(pp: u32) -> ParallelConfig {
        ParallelConfig {
            pp,
            num_micro_batches: 4,
            ..Default::default()
        }
    }

    #[test]
    fn stage_sums_charge_embedding_first_and_head_last() {
        let s = LayerSums::new(&blocks(4, 9, 1.0), 4).unwrap();
        let t = |lo, hi| s.stage(lo, hi)[0];
        assert!((t(0, 3) - 6.5).abs() < 1e-12);
        assert!((t(0, 1) - 2.5).abs() < 1e-12);
        assert!((t(2, 3) - 4.0).abs() < 1e-12);
        assert_eq!(s.stage(1, 2)[2], 20.0);
        assert_eq!(
            s.stage(4, 3)[0],
            2.0,
            "an empty last range holds only the head"
        );
    }

    #[test]
    fn the_split_follows_the_block_costs() {
        let even = compile_candidate(&pipeline(2), &blocks(8, 9, 1.0), 8, f64::INFINITY).unwrap();
        assert_eq!(
            even.stages,
            vec![(0, 4), (5, 7)],
            "the head weighs 2 layers"
        );
        let slow = compile_candidate(&pipeline(2), &blocks(8, 1, 6.0), 8, f64::INFINITY).unwrap();
        assert_eq!(slow.stages, vec![(0, 1), (2, 7)], "layer 1 takes 6 s");
    }

    /// Every split of `layers` layers into `stages` non-empty contiguous ranges.
    fn splits(layers: u32, stages: u32) -> Vec<Vec<(u32, u32)>> {
        if stages == 1 {
            return vec![vec![(0, layers - 1)]];
        }
        let mut out = Vec::new();
        for first_end in 0..layers - (stages - 1) {
            for rest in splits(layers - first_end - 1, stages - 1) {
                let mut v = vec![(0, first_end)];
                v.extend(
                    rest.iter()
                        .map(|&(a, b)| (a + first_end + 1, b + first_end + 1)),
                );
                out.push(v);
            }
        }
        out
    }

    #[test]
    fn static_lower_bound_is_below_every_split() {
        // uneven static bytes: a heavy embedding, a heavy layer 3, a heavy head
        let mut b = blocks(7, 9, 1.0);
        for (i, x) in b.iter_mut().enumerate() {
            x.static_bytes = [40.0, 3.0, 5.0, 2.0, 30.0, 4.0, 6.0, 1.0, 25.0][i];
        }
        let sums = LayerSums::new(&b, 7).unwrap();
        let total: f64 = b.iter().map(|x| x.static_bytes).sum();
        assert_eq!(static_lower_bound(&sums, 1, 7), total);
        for pp in 2..=7 {
            let best = splits(7, pp)
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|&(lo, hi)| sums.stage(lo, hi)[2])
                        .fold(0.0, f64::max)
                })
                .fold(f64::INFINITY, f64::min);
            let lb = static_lower_bound(&sums, pp, 7);
            assert!(
                lb <= best,
                "pp {pp}: bound {lb} above the best split's {best}"
            );
            assert!(lb >= total / pp as f64 * 0.999, "pp {pp}: {lb}");
        }
        // seven single-layer stages: the first holds the embedding and layer 0
        assert_eq!(static_lower_bound(&sums, 7, 7), 43.0);
    }

    #[test]
    fn static_bytes_bound_prunes_and_bad_layers_are_named() {
        // 10 blocks × 10 bytes on one device.
        let c = ParallelConfig::default();
        assert!(compile_candidate(&c, &blocks(8, 9, 1.0), 8, 100.0).is_ok());
        let e = compile_candidate(&c, &blocks(8, 9, 1.0), 8, 99.0).unwrap_err();
        assert!(e.contains("static memory"), "{e}");
        let e = compile_candidate(&c, &blocks(9, 9, 1.0), 8, 1e9).unwrap_err();
        assert!(e.contains("decoder layer 8 of a 8-layer model"), "{e}");
        let e = compile_candidate(&c, &blocks(1, 9, 1.0), 0, 1e9).unwrap_err();
        assert!(e.contains("no decoder layers"), "{e}");
    }
}
