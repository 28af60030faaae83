//! The library entry points: `plan` and `estimate`.

use crate::error::Result;
use crate::model::Model;
use crate::plan::{PlanConfig, PlanOutput};
use crate::report::{PlanReport, build_report, cluster_info, model_info, predicted};
use crate::request::PlanRequest;
use crate::search::{NoProgress, Progress, search, train_options};
use crate::space::ModelShape;
use moai_costmodel::{Cluster, CostModel, ParallelConfig};

/// Finds the best plan with the default (profiled) cost model.
pub fn plan(model: &Model, cluster: &Cluster, req: &PlanRequest) -> Result<PlanReport> {
    plan_with(model, cluster, req, &req.cost_model(), &NoProgress)
}

/// Finds the best plan with any cost model, reporting progress.
pub fn plan_with(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    progress: &dyn Progress,
) -> Result<PlanReport> {
    check_model_job(model, req)?;
    req.validate_for(cluster)?;
    req.constraints
        .offload_activations
        .check_layers(model.summary.layers as u32)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(req.threads.unwrap_or(0))
        .build()
        .map_err(|e| crate::error::PlanError::InvalidArgument(format!("--threads: {e}")))?;
    let result = pool.install(|| search(model, cluster, req, cost, progress))?;
    Ok(build_report(model, cluster, req, result))
}

/// Refuses a job the model's graph does not describe: a sliding attention window (recorded from the
/// config) that the sequence exceeds, which moai does not model (at or below the window the attention
/// is full attention, which it does).
pub fn check_model_job(model: &Model, req: &PlanRequest) -> Result<()> {
    if let Some(w) = model.arch.as_ref().and_then(|a| a.sliding_window)
        && req.seq > w as u64
    {
        return Err(crate::error::PlanError::UnsupportedModel(format!(
            "{}: `sliding_window` = {w} is active at --seq-len {} and moai does not model sliding-window attention (plan with --seq-len {w} or less)",
            model.name, req.seq
        )));
    }
    Ok(())
}

/// Predicts one configuration (the `estimate` command).
pub fn estimate(
    model: &Model,
    cluster: &Cluster,
    config: &ParallelConfig,
    req: &PlanRequest,
) -> Result<PlanOutput> {
    estimate_with(model, cluster, config, req, &req.cost_model())
}

/// Predicts one configuration with any cost model.
pub fn estimate_with(
    model: &Model,
    cluster: &Cluster,
    config: &ParallelConfig,
    req: &PlanRequest,
    cost: &dyn CostModel,
) -> Result<PlanOutput> {
    req.validate_for(cluster)?;
    check_model_job(model, req)?;
    crate::config::checked(config, cluster, ModelShape::of(model))?;
    crate::config::checked_seq(config, req.seq, ModelShape::of(model))?;
    let s = &model.summary;
    let global = config.global_batch();
    if global != req.batch {
        return Err(crate::error::PlanError::InvalidArgument(format!(
            "dp {} × micro-batch {} × {} micro-batches = {global} sequences, but --batch-size is {}",
            config.dp, config.micro_batch_size, config.num_micro_batches, req.batch
        )));
    }
    let max_mb = crate::space::MAX_PIPELINE_MICRO_BATCHES;
    if config.pp > 1 && config.num_micro_batches as u64 > max_mb {
        // the pipeline schedule is simulated per micro-batch: bound its time and memory
        return Err(crate::error::PlanError::InvalidArgument(format!(
            "{} micro-batches in a {}-stage pipeline: at most {max_mb}",
            config.num_micro_batches, config.pp
        )));
    }
    let profile_for = |r| {
        moai_ir::train::step_profile(
            &model.graph,
            &train_options(req, r),
            config.micro_batch_size as u64,
            req.seq,
        )
    };
    let mut profile = profile_for(config.recompute)?;
    if config.mixed_recompute() {
        // Each stage's blocks as profiled under its own policy.
        let mut others = Vec::new();
        for r in &config.stage_recompute {
            if *r != config.recompute && !others.iter().any(|(p, _)| p == r) {
                others.push((*r, profile_for(*r)?));
            }
        }
        let base = &profile;
        profile = moai_costmodel::config::mixed_profile(config, s.layers as u32, &|r| {
            if r == config.recompute {
                Some(base)
            } else {
                others.iter().find(|(p, _)| *p == r).map(|(_, p)| p)
            }
        })?;
    }
    let e = cost.estimate(&profile, cluster, config)?;
    Ok(PlanOutput {
        model: model_info(model),
        cluster: cluster_info(cluster),
        search: None,
        plan: PlanConfig::of_config(config, s.layers as u32),
        predicted: predicted(&e, req.seq, config),
        fits: e.peak_memory_bytes as f64 <= usable_memory(cluster, req),
    })
}

/// The bytes a plan may use on one device: the device memory times the request's memory fraction (the
/// rest is headroom for the allocator and runtime). The search and `estimate` use the same bound.
pub fn usable_memory(cluster: &Cluster, req: &PlanRequest) -> f64 {
    cluster.memory_per_device_bytes as f64 * req.memory_fraction
}

/// The cheapest change to a configuration that does not fit: the fastest plan the planner's own
/// search finds under `fixed` (the flags the user gave), or, when those flags leave nothing that fits,
/// under no flags at all. Returns the plan and the changes from `config`, one phrase each.
pub fn cheapest_fitting_change(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    config: &ParallelConfig,
    fixed: &crate::request::Constraints,
) -> Option<(PlanOutput, Vec<String>, bool)> {
    let mut r = req.clone();
    r.constraints = fixed.clone();
    let (report, kept_flags) = match plan(model, cluster, &r) {
        Ok(rep) => (rep, true),
        Err(_) => {
            r.constraints = crate::request::Constraints {
                engine: fixed.engine,
                precision: fixed.precision,
                offload_optimizer: fixed.offload_optimizer,
                offload_activations: fixed.offload_activations,
                ..Default::default()
            };
            (plan(model, cluster, &r).ok()?, false)
        }
    };
    let best = report.output;
    let from = PlanConfig::of_config(config, model.summary.layers as u32);
    let to = &best.plan;
    let mut changes = Vec::new();
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{name} {a} → {b}"));
        }
    };
    diff("dp", from.dp.to_string(), to.dp.to_string());
    diff("tp", from.tp.to_string(), to.tp.to_string());
    diff("pp", from.pp.to_string(), to.pp.to_string());
    diff(
        "micro-batch size",
        from.micro_batch_size.to_string(),
        to.micro_batch_size.to_string(),
    );
    diff(
        "recompute",
        from.recompute.to_string(),
        to.recompute.to_string(),
    );
    let zero = |p: &PlanConfig| {
        crate::config::ZeroStage::of_flags(p.distribute_param, p.distribute_optimizer)
            .number()
            .to_string()
    };
    diff("zero", zero(&from), zero(to));
    let shard = |p: &crate::plan::PlanConfig| match p.dp_shard {
        0 => "all of dp".to_string(),
        n => n.to_string(),
    };
    diff("dp shard", shard(&from), shard(to));
    diff(
        "sequence parallel",
        from.sequence_parallel.to_string(),
        to.sequence_parallel.to_string(),
    );
    if to.pp > 1 || from.pp > 1 {
        diff("schedule", from.schedule.clone(), to.schedule.clone());
    }
    diff(
        "offloaded activation layers",
        from.offload_activations.to_string(),
        to.offload_activations.to_string(),
    );
    let onoff = |b: bool| if b { "on" } else { "off" }.to_string();
    for (what, a, b) in [
        (
            "grad-reduce overlap",
            from.overlap_grad_reduce,
            to.overlap_grad_reduce,
        ),
        (
            "param-gather overlap",
            from.overlap_param_gather,
            to.overlap_param_gather,
        ),
        ("tp-comm overlap", from.tp_comm_overlap, to.tp_comm_overlap),
    ] {
        diff(what, onoff(a), onoff(b));
    }
    diff("engine", from.engine.to_string(), to.engine.to_string());
    Some((best, changes, kept_flags))
}
