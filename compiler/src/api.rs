//! The library entry points: `plan` and `estimate`.

use crate::error::Result;
use crate::model::Model;
use crate::plan::PlanOutput;
use crate::report::{PlanReport, build_report, cluster_info, model_info, plan_config, predicted};
use crate::request::PlanRequest;
use crate::search::{NoProgress, Progress, search, train_options};
use moai_costmodel::{Cluster, CostModel, ParallelConfig, ProfiledCostModel};

/// Finds the best plan with the default (profiled) cost model.
pub fn plan(model: &Model, cluster: &Cluster, req: &PlanRequest) -> Result<PlanReport> {
    plan_with(model, cluster, req, &ProfiledCostModel::new(), &NoProgress)
}

/// Finds the best plan with any cost model, reporting progress.
pub fn plan_with(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    progress: &dyn Progress,
) -> Result<PlanReport> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(req.threads.unwrap_or(0))
        .build()
        .map_err(|e| crate::error::PlanError::InvalidArgument(format!("--threads: {e}")))?;
    let result = pool.install(|| search(model, cluster, req, cost, progress))?;
    Ok(build_report(model, cluster, req, result))
}

/// Predicts one configuration (the `estimate` command).
pub fn estimate(
    model: &Model,
    cluster: &Cluster,
    config: &ParallelConfig,
    req: &PlanRequest,
) -> Result<PlanOutput> {
    estimate_with(model, cluster, config, req, &ProfiledCostModel::new())
}

/// Predicts one configuration with any cost model.
pub fn estimate_with(
    model: &Model,
    cluster: &Cluster,
    config: &ParallelConfig,
    req: &PlanRequest,
    cost: &dyn CostModel,
) -> Result<PlanOutput> {
    req.validate()?;
    config.validate_cluster(cluster)?;
    let s = &model.summary;
    moai_costmodel::check_tp_dims(config.tp, s.heads as u64, s.kv_heads as u64, s.ffn as u64)?;
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
    let profile = moai_ir::train::step_profile(
        &model.graph,
        &train_options(req, config.recompute),
        config.micro_batch_size as u64,
        req.seq,
    )?;
    let e = cost.estimate(&profile, cluster, config)?;
    Ok(PlanOutput {
        model: model_info(model),
        cluster: cluster_info(cluster),
        search: None,
        plan: plan_config(config, s.layers as u32),
        predicted: predicted(&e),
    })
}
