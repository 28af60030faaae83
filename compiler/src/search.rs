//! The search: compile every candidate (training profiles, stage partitioning on the cost model's
//! per-block costs), prune by the cost model's static-memory lower bound, cost the survivors in parallel
//! with rayon, and select the fastest plan that fits. Deterministic: the same request gives the same plan
//! at any thread count.

use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::partition::{StageCost, partition};
use crate::request::{PlanRequest, StopReason, WorkBounds};
use crate::space::{ModelShape, enumerate_seq};
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
    /// The search stopped early (time budget or interrupt), in words for the explanation.
    pub stopped_early: Option<String>,
    /// Why the search stopped early, when it did.
    pub stopped_by: Option<StopReason>,
    /// The bounds the search ran under (the request's cancellation token and the deadline of its time
    /// budget, counted from the start of the search); code generation after the search continues under
    /// the same bounds.
    pub bounds: Arc<WorkBounds>,
}

/// Training options for one recomputation policy.
pub fn train_options(req: &PlanRequest, r: Recompute) -> TrainOptions {
    TrainOptions {
        precision: req.precision,
        optimizer: req.optimizer,
        recompute: r,
    }
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

/// Runs the whole search.
pub fn search(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    progress: &dyn Progress,
) -> Result<SearchResult> {
    req.validate()?;
    let t0 = Instant::now();
    // The time budget and Ctrl-C bound every phase below: each unit of work (a profile, a candidate's
    // compilation, a candidate's costing) starts only while `bounds.check()` is None.
    let bounds = Arc::new(WorkBounds::new(req, t0));
    let shape = model_shape(model);
    let space = enumerate_seq(shape, cluster, req.batch, Some(req.seq), &req.constraints);
    let mut rejected = space.rejected.clone();
    let mut candidates = space.candidates;
    tracing::info!("The number of candidates is {}.", candidates.len());
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

    // Stage partitioning and memory lower bound, per candidate.
    let capacity = cluster.memory_per_device_bytes as f64 * req.memory_fraction;
    let compiled_ok = AtomicU64::new(0);
    let compiled: Vec<std::result::Result<ParallelConfig, String>> = candidates
        .par_iter()
        .map(|c| {
            // unfinished work (time budget, Ctrl-C) leaves the candidate not evaluated
            let Some(profile) = profiles.get(&(c.micro_batch_size, c.recompute)) else {
                progress.tick();
                return Err(NOT_EVALUATED.to_string());
            };
            if bounds.check_within(COMPILE_SHARE).is_some()
                && compiled_ok.load(Ordering::SeqCst) >= COMPILE_GRACE
            {
                progress.tick();
                return Err(NOT_EVALUATED.to_string());
            }
            let r = compile_with(c, profile, &profiles, cost, cluster, shape.layers, capacity);
            if r.is_ok() {
                compiled_ok.fetch_add(1, Ordering::SeqCst);
            }
            progress.tick();
            r
        })
        .collect();
    progress.finish();
    let mut survivors = Vec::new();
    let mut evaluated: Vec<Evaluated> = Vec::with_capacity(candidates.len());
    for (i, (c, r)) in candidates.drain(..).zip(compiled).enumerate() {
        match r {
            Err(reason) if reason == NOT_EVALUATED => {
                *rejected.entry(reason).or_insert(0) += 1;
                evaluated.push(Evaluated {
                    config: c,
                    outcome: Outcome::NotEvaluated,
                });
            }
            Ok(cfg) => {
                survivors.push(i);
                evaluated.push(Evaluated {
                    config: cfg,
                    outcome: Outcome::NotEvaluated,
                });
            }
            Err(reason) => {
                *rejected.entry(reason.clone()).or_insert(0) += 1;
                evaluated.push(Evaluated {
                    config: c,
                    outcome: Outcome::Rejected(reason),
                });
            }
        }
    }
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        "Elapsed Time to compile all candidates = {} [ms]",
        compile_ms.round() as u64
    );
    tracing::info!("The number of possible candidates is {}.", survivors.len());

    // Cost the survivors.
    tracing::info!("SelectBestGraphFromCandidates start...");
    let t1 = Instant::now();
    let costed = AtomicU64::new(0);
    let feasible = AtomicU64::new(0);
    let after_stop = AtomicU64::new(0);
    progress.start("cost", survivors.len() as u64);
    let outcomes: Vec<(usize, Outcome)> = survivors
        .par_iter()
        .map(|&i| {
            // once stopped, cost only until one candidate fits (at most COST_GRACE more)
            let stop = bounds.check().is_some()
                && (feasible.load(Ordering::SeqCst) > 0
                    || after_stop.fetch_add(1, Ordering::SeqCst) >= COST_GRACE);
            let out = if stop {
                Outcome::NotEvaluated
            } else {
                let c = &evaluated[i].config;
                costed.fetch_add(1, Ordering::Relaxed);
                match estimate_candidate(c, &profiles, cost, cluster, shape.layers) {
                    Ok(e) if (e.peak_memory_bytes as f64) <= capacity => {
                        feasible.fetch_add(1, Ordering::SeqCst);
                        Outcome::Feasible(e)
                    }
                    Ok(e) => Outcome::OutOfMemory(e),
                    Err(err) => Outcome::Rejected(format!("cost model: {err}")),
                }
            };
            progress.tick();
            (i, out)
        })
        .collect();
    progress.finish();
    for (i, o) in outcomes {
        match &o {
            Outcome::OutOfMemory(_) => {
                *rejected
                    .entry("predicted peak memory exceeds the device".into())
                    .or_insert(0) += 1
            }
            Outcome::Rejected(r) => *rejected.entry(r.clone()).or_insert(0) += 1,
            Outcome::NotEvaluated => *rejected.entry(NOT_EVALUATED.into()).or_insert(0) += 1,
            Outcome::Feasible(_) => {}
        }
        evaluated[i].outcome = o;
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
        costed.fetch_add(tried, Ordering::Relaxed);
        let fitting = found.len() as u64;
        if tried > fitting {
            *rejected
                .entry("per-stage recomputation mix (full on the first stages) still exceeds the device or is slower".into())
                .or_insert(0) += tried - fitting;
        }
        evaluated.extend(found);
    }
    let cost_ms = t1.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        "Elapsed Time to compute cost for survived candidates = {} [ms]",
        cost_ms.round() as u64
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
            let costed = costed.load(Ordering::Relaxed);
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
        costed: costed.load(Ordering::Relaxed),
        stopped_early,
        stopped_by,
        bounds,
    })
}

/// The share of the time budget training profiles may use (their candidates are compiled and costed in
/// the rest).
const PROFILES_SHARE: f64 = 0.4;

/// The share of the time budget profiles and candidate compilation may use together (the survivors are
/// costed in the rest).
const COMPILE_SHARE: f64 = 0.6;

/// Candidates compiled after the time budget or an interrupt stopped the compile phase, when fewer had
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
/// then [`compile_stages`].
fn compile_with(
    c: &ParallelConfig,
    profile: &StepProfile,
    profiles: &Profiles,
    cost: &dyn CostModel,
    cluster: &Cluster,
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let blocks = cost
        .block_costs(profile, cluster, c)
        .map_err(|e| format!("cost model: {e}"))?;
    if !c.mixed_recompute() {
        return compile_candidate(c, &blocks, layers, capacity);
    }
    let mut per_stage = Vec::with_capacity(c.pp as usize);
    for d in 0..c.pp as usize {
        let r = c.recompute_of_device(d);
        let p = profiles
            .get(&(c.micro_batch_size, r))
            .ok_or_else(|| NOT_EVALUATED.to_string())?;
        per_stage.push(
            cost.block_costs(p, cluster, c)
                .map_err(|e| format!("cost model: {e}"))?,
        );
    }
    let refs: Vec<&[BlockCost]> = per_stage.iter().map(Vec::as_slice).collect();
    compile_stages(c, &refs, layers, capacity)
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
                let Ok(c) = compile_with(&c, p, profiles, cost, cluster, layers, capacity) else {
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
fn compile_candidate(
    c: &ParallelConfig,
    blocks: &[BlockCost],
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    compile_stages(c, &[blocks], layers, capacity)
}

/// [`compile_candidate`] with the block costs of each pipeline stage (`stage_blocks[d]` for device `d`,
/// or one list for every stage): a stage's time and memory come from its own policy's costs.
fn compile_stages(
    c: &ParallelConfig,
    stage_blocks: &[&[BlockCost]],
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let all: Vec<LayerSums> = stage_blocks
        .iter()
        .map(|b| LayerSums::new(b, layers))
        .collect::<std::result::Result<_, _>>()?;
    let Some(first) = all.first() else {
        return Err("no block costs".into());
    };
    let sums_of = |stage: u32| all.get(stage as usize).unwrap_or(first);
    let mut cfg = c.clone();
    let stage_cost = |stage: u32, lo: u32, hi: u32| -> StageCost {
        let [time, saved, statics] = sums_of(stage).stage(lo, hi);
        let inflight =
            moai_costmodel::memory::in_flight(c.schedule, c.pp, stage, c.num_micro_batches) as f64;
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
