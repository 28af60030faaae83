//! The search: compile every candidate (tensor-parallel sharding with egg, stage partitioning, training
//! profiles), prune by memory lower bounds, cost the survivors in parallel with rayon, and select the
//! fastest plan that fits. Deterministic: the same request gives the same plan at any thread count.

use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::partition::{StageCost, partition};
use crate::request::PlanRequest;
use crate::shard::{LayerCollectives, LayerCosts, MlpKind, shard_layer};
use crate::space::{ModelShape, enumerate};
use moai_costmodel::{Cluster, CostModel, Estimate, ParallelConfig, Recompute, Schedule};
use moai_ir::cost::{BlockKind, StepProfile};
use moai_ir::train::{RecomputePolicy, TrainOptions};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Set by a Ctrl-C handler: the search stops evaluating and returns the best plan so far.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

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

/// Statistics of the egg sharding runs.
#[derive(Clone, Debug, Default)]
pub struct ShardingLog {
    /// (tp, sequence_parallel) → (stop reason, e-graph nodes, collectives per layer).
    pub runs: BTreeMap<(u32, bool), (String, usize, LayerCollectives)>,
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
    /// The search stopped early (time budget or interrupt).
    pub stopped_early: Option<String>,
    /// egg runs.
    pub sharding: ShardingLog,
}

/// Training options for one recomputation policy.
pub fn train_options(req: &PlanRequest, r: Recompute) -> TrainOptions {
    let recompute: RecomputePolicy = r.to_string().parse().expect("recompute names are shared");
    TrainOptions {
        precision: req.precision,
        optimizer: req.optimizer,
        recompute,
    }
}

/// Profiles of the model for every (micro-batch size, recomputation) a set of candidates needs.
pub fn profiles_for(
    model: &Model,
    req: &PlanRequest,
    keys: &[(u32, Recompute)],
) -> Result<HashMap<(u32, Recompute), Arc<StepProfile>>> {
    let built: Vec<Result<((u32, Recompute), Arc<StepProfile>)>> = keys
        .par_iter()
        .map(|&(mbs, r)| {
            let p = moai_ir::train::step_profile(
                &model.graph,
                &train_options(req, r),
                mbs as u64,
                req.seq,
            )?;
            Ok(((mbs, r), Arc::new(p)))
        })
        .collect();
    built.into_iter().collect()
}

fn model_shape(model: &Model) -> ModelShape {
    let s = &model.summary;
    ModelShape {
        layers: s.layers as u32,
        heads: s.heads as u64,
        kv_heads: s.kv_heads as u64,
        ffn: s.ffn as u64,
    }
}

/// Roofline-style proxy times and memory per block, used to balance stages. The real prediction is the
/// cost model's; the proxy only has to rank splits.
struct BlockProxy {
    time: Vec<f64>,
    saved: Vec<f64>,
    params: Vec<f64>,
}

fn block_proxy(p: &StepProfile, cluster: &Cluster, tp: u32, sp: bool) -> BlockProxy {
    let spec = cluster.gpu.spec();
    let peak = spec.peak_flops(moai_ir::DType::BF16);
    let bw = spec.hbm_bytes_per_s;
    let mut out = BlockProxy {
        time: Vec::new(),
        saved: Vec::new(),
        params: Vec::new(),
    };
    for b in &p.blocks {
        let t: f64 = b
            .ops
            .iter()
            .map(|o| (o.flops / peak).max(o.bytes / bw))
            .sum::<f64>()
            / tp as f64;
        out.time.push(t);
        out.saved.push(b.saved.per_device(tp as u64, sp));
        out.params.push(b.params as f64 / tp as f64);
    }
    out
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
    let shape = model_shape(model);
    let space = enumerate(shape, cluster, req.batch, &req.constraints);
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
    let mut keys: Vec<(u32, Recompute)> = candidates
        .iter()
        .map(|c| (c.micro_batch_size, c.recompute))
        .collect();
    keys.sort_by_key(|(m, r)| (*m, *r as u8));
    keys.dedup();
    let profiles = profiles_for(model, req, &keys)?;

    // egg sharding per (tp, sequence_parallel): the collectives of one layer.
    let mut tp_keys: Vec<(u32, bool)> = candidates
        .iter()
        .map(|c| (c.tp, c.sequence_parallel))
        .collect();
    tp_keys.sort();
    tp_keys.dedup();
    let mlp = if matches!(model.summary.mlp, moai_ir::layers::MlpKind::Gated) {
        MlpKind::Gated
    } else {
        MlpKind::Gelu
    };
    let any_profile = profiles
        .values()
        .next()
        .expect("at least one profile")
        .clone();
    let sharding = ShardingLog {
        runs: tp_keys
            .par_iter()
            .map(|&(tp, sp)| {
                let costs = layer_costs(&any_profile, cluster, tp);
                let s = shard_layer(mlp, &costs, sp);
                (
                    (tp, sp),
                    (s.stop_reason.clone(), s.egraph_nodes, s.collectives()),
                )
            })
            .collect(),
    };
    for ((tp, sp), (stop, nodes, coll)) in &sharding.runs {
        tracing::debug!(tp, sp, stop = %stop, nodes, ?coll, "sharded decoder layer");
    }

    // Stage partitioning and memory lower bound, per candidate.
    let capacity = cluster.memory_per_device_bytes as f64 * req.memory_fraction;
    let proxies: Mutex<HashMap<(u32, Recompute, u32, bool), Arc<BlockProxy>>> =
        Mutex::new(HashMap::new());
    let compiled: Vec<std::result::Result<ParallelConfig, String>> = candidates
        .par_iter()
        .map(|c| {
            let profile = &profiles[&(c.micro_batch_size, c.recompute)];
            let key = (c.micro_batch_size, c.recompute, c.tp, c.sequence_parallel);
            let proxy = {
                let cached = proxies.lock().expect("proxy cache").get(&key).cloned();
                match cached {
                    Some(p) => p,
                    None => {
                        let p = Arc::new(block_proxy(profile, cluster, c.tp, c.sequence_parallel));
                        proxies.lock().expect("proxy cache").insert(key, p.clone());
                        p
                    }
                }
            };
            let r = compile_candidate(c, profile, &proxy, shape.layers, capacity);
            progress.tick();
            r
        })
        .collect();
    progress.finish();
    let mut survivors = Vec::new();
    let mut evaluated: Vec<Evaluated> = Vec::with_capacity(candidates.len());
    for (i, (c, r)) in candidates.drain(..).zip(compiled).enumerate() {
        match r {
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
    let deadline = req.time_budget.map(|b| t0 + b);
    let stopped = AtomicBool::new(false);
    let costed = AtomicU64::new(0);
    progress.start("cost", survivors.len() as u64);
    let outcomes: Vec<(usize, Outcome)> = survivors
        .par_iter()
        .map(|&i| {
            let out = if INTERRUPTED.load(Ordering::Relaxed)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                stopped.store(true, Ordering::Relaxed);
                Outcome::NotEvaluated
            } else {
                let c = &evaluated[i].config;
                let profile = &profiles[&(c.micro_batch_size, c.recompute)];
                costed.fetch_add(1, Ordering::Relaxed);
                match cost.estimate(profile, cluster, c) {
                    Ok(e) if (e.peak_memory_bytes as f64) <= capacity => Outcome::Feasible(e),
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
            Outcome::NotEvaluated => {
                *rejected
                    .entry("not evaluated (time budget or interrupt)".into())
                    .or_insert(0) += 1
            }
            Outcome::Feasible(_) => {}
        }
        evaluated[i].outcome = o;
    }
    let cost_ms = t1.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        "Elapsed Time to compute cost for survived candidates = {} [ms]",
        cost_ms.round() as u64
    );
    let stopped_early = if INTERRUPTED.load(Ordering::Relaxed) {
        Some("interrupted".to_string())
    } else if stopped.load(Ordering::Relaxed) {
        Some(format!(
            "time budget of {:.1} s reached",
            req.time_budget.map(|d| d.as_secs_f64()).unwrap_or(0.0)
        ))
    } else {
        None
    };

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
        if costed.load(Ordering::Relaxed) == 0 && stopped_early.is_some() {
            return Err(PlanError::Interrupted);
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
        sharding,
    })
}

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

/// Layer-level costs for the egg extraction, from the profile's decoder-layer ops.
fn layer_costs(p: &StepProfile, cluster: &Cluster, tp: u32) -> LayerCosts {
    let spec = cluster.gpu.spec();
    let peak = spec.peak_flops(moai_ir::DType::BF16);
    let bw = spec.hbm_bytes_per_s;
    let layer = p
        .blocks
        .iter()
        .find(|b| matches!(b.kind, BlockKind::Decoder(_)));
    let mut linear: BTreeMap<String, f64> = BTreeMap::new();
    let (mut attn, mut norm, mut elementwise) = (0.0, 0.0, 0.0);
    let mut hidden_bytes = 0.0_f64;
    if let Some(l) = layer {
        hidden_bytes = l.boundary_bytes;
        for o in &l.ops {
            let t = (o.flops / peak).max(o.bytes / bw);
            match &o.class {
                moai_ir::cost::KernelClass::Matmul { .. } => {
                    let name = o
                        .label
                        .rsplit('.')
                        .next()
                        .unwrap_or("")
                        .trim_end_matches("_proj")
                        .to_string();
                    let key = match name.as_str() {
                        "c_attn" | "qkv" => "q".to_string(),
                        "c_proj" if o.label.contains("attn") => "o".to_string(),
                        "c_fc" => "fc1".to_string(),
                        "c_proj" => "fc2".to_string(),
                        other => other.to_string(),
                    };
                    *linear.entry(key).or_insert(0.0) += t;
                }
                moai_ir::cost::KernelClass::Attention { .. } => attn += t,
                moai_ir::cost::KernelClass::Norm => norm += t / 2.0,
                _ => elementwise += t / 4.0,
            }
        }
    }
    let link = if tp <= 2 {
        cluster.links.pair
    } else {
        cluster.links.server
    };
    let link_bw = link.effective_bytes_per_s(tp.max(1));
    let t = tp.max(1) as f64;
    let ring = 2.0 * (t - 1.0) / t * hidden_bytes / link_bw;
    LayerCosts {
        tp: tp as u64,
        linear: linear.into_iter().collect(),
        attn,
        norm,
        elementwise,
        allreduce: 2.0 * ring,
        reduce_scatter: ring,
        gather_cols: 4.0 * ring,
    }
}

/// Partitions stages and checks the static-memory lower bound of one candidate.
fn compile_candidate(
    c: &ParallelConfig,
    profile: &StepProfile,
    proxy: &BlockProxy,
    layers: u32,
    capacity: f64,
) -> std::result::Result<ParallelConfig, String> {
    let mut cfg = c.clone();
    // Static bytes per parameter on one device after ZeRO sharding.
    let dp = c.dp as f64;
    let mut per_param = profile.static_bytes_per_param;
    if c.distribute_param {
        per_param /= dp;
    } else {
        if c.distribute_optimizer {
            per_param -= profile.optimizer_bytes_per_param * (1.0 - 1.0 / dp);
        }
        if c.distribute_low_prec_param {
            per_param -= profile.low_prec_param_bytes_per_param * (1.0 - 1.0 / dp);
        }
    }
    // Blocks: 0 = embedding, 1..=layers decoder, layers+1 = head.
    let nb = proxy.time.len();
    let block_of_layer = |l: u32| (l + 1) as usize;
    let stage_cost = |stage: u32, lo: u32, hi: u32| -> StageCost {
        let mut time = 0.0;
        let mut saved = 0.0;
        let mut params = 0.0;
        let mut add = |b: usize| {
            time += proxy.time[b];
            saved += proxy.saved[b];
            params += proxy.params[b];
        };
        if lo == 0 {
            add(0);
        }
        for l in lo..=hi {
            add(block_of_layer(l));
        }
        if hi == layers - 1 && nb > layers as usize + 1 {
            add(nb - 1);
        }
        let inflight =
            moai_costmodel::memory::in_flight(c.schedule, c.pp, stage, c.num_micro_batches) as f64;
        StageCost {
            time_s: time,
            memory_bytes: params * per_param + saved * inflight,
        }
    };
    let stages = if c.pp > 1 && !matches!(c.schedule, Schedule::Interleaved(_)) {
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
        .map(|&(lo, hi)| {
            let mut params = 0.0;
            if lo == 0 {
                params += proxy.params[0];
            }
            for l in lo..=hi {
                params += proxy.params[block_of_layer(l)];
            }
            if hi == layers - 1 && nb > layers as usize + 1 {
                params += proxy.params[nb - 1];
            }
            params * per_param
        })
        .fold(0.0, f64::max);
    if static_max > capacity {
        return Err(
            "static memory (weights, gradients, optimizer state) exceeds the device".into(),
        );
    }
    cfg.stages = stages;
    Ok(cfg)
}
