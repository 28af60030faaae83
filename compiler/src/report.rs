//! From a search result to what users read: the plan JSON, the explanation of why the plan won, the
//! rejection counts, and the platform's own choice for comparison.

use crate::model::Model;
use crate::plan::{
    Breakdown, ClusterInfo, ModelInfo, PlanConfig, PlanOutput, Predicted, SearchInfo,
    StagePrediction,
};
use crate::request::PlanRequest;
use crate::search::{Evaluated, SearchResult};
use moai_costmodel::{Cluster, Estimate, ParallelConfig};
use std::collections::BTreeMap;

/// The planner's full answer.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// The chosen plan, as `--json` prints it.
    pub output: PlanOutput,
    /// The best few feasible alternatives after the winner, fastest first.
    pub alternatives: Vec<PlanOutput>,
    /// Rejected candidates by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Why the plan won: against the runner-up, in words.
    pub explanation: String,
    /// The raw search result (every candidate), for reports and research.
    pub search: SearchResult,
}

/// Output objects for a model, cluster and configuration.
pub fn model_info(model: &Model) -> ModelInfo {
    ModelInfo {
        name: model.name.clone(),
        params: model.summary.params,
        layers: model.summary.layers as u32,
    }
}

/// The cluster part of the output.
pub fn cluster_info(c: &Cluster) -> ClusterInfo {
    ClusterInfo {
        flavor: c.flavor.clone(),
        gpu: c.gpu.to_string(),
        devices: c.devices as u64,
        servers: c.servers as u64,
        memory_per_device_bytes: c.memory_per_device_bytes,
        devices_per_server: c.devices_per_server as u64,
    }
}

/// The predicted part of the output of plan `cfg`, for a job of `seq` tokens per sequence.
pub fn predicted(e: &Estimate, seq: u64, cfg: &ParallelConfig) -> Predicted {
    Predicted {
        known_misses: moai_costmodel::known_misses::for_plan(seq, cfg),
        step_time_s: e.step_time_s,
        tokens_per_s: e.tokens_per_s,
        peak_memory_bytes: e.peak_memory_bytes,
        mfu: e.mfu,
        breakdown: Breakdown {
            compute_s: e.breakdown.compute_s,
            exposed_comm_s: e.breakdown.exposed_comm_s,
            bubble_s: e.breakdown.bubble_s,
            optimizer_s: e.breakdown.optimizer_s,
            tp_comm_s: e.breakdown.tp_comm_s,
            dp_comm_s: e.breakdown.dp_comm_s,
            zero3_gather_s: e.breakdown.zero3_gather_s,
            offload_s: e.breakdown.offload_s,
            cp_comm_s: e.breakdown.cp_comm_s,
            moe_dispatch_s: e.breakdown.moe_dispatch_s,
            kernels: e.breakdown.kernels,
            stack: e
                .sources
                .stack
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        },
        stages: e
            .memory
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let b = |x: f64| x.max(0.0).round() as u64;
                StagePrediction {
                    stage: m.stage as u64,
                    weights_bytes: b(m.weights_bytes),
                    grads_bytes: b(m.grads_bytes),
                    optimizer_bytes: b(m.optimizer_bytes),
                    activations_bytes: b(m.activations_bytes),
                    transients_bytes: b(m.transients_bytes),
                    peak_bytes: b(m.peak_bytes),
                    compute_s: e.device_compute_s.get(i).copied().unwrap_or(0.0),
                }
            })
            .collect(),
    }
}

/// The output object of one evaluated candidate of a job of `seq` tokens per sequence.
pub fn output_of(
    model: &Model,
    cluster: &Cluster,
    ev: &Evaluated,
    search: Option<SearchInfo>,
    seq: u64,
) -> Option<PlanOutput> {
    let e = ev.estimate()?;
    Some(PlanOutput {
        model: model_info(model),
        cluster: cluster_info(cluster),
        search,
        plan: PlanConfig::of_config(&ev.config, model.summary.layers as u32),
        predicted: predicted(e, seq, &ev.config),
        fits: matches!(ev.outcome, crate::search::Outcome::Feasible(_)),
    })
}

/// Builds the report from a finished search.
pub fn build_report(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    result: SearchResult,
) -> PlanReport {
    let feasible = result.ranking.len() as u64;
    let info = SearchInfo {
        candidates: result.evaluated.len() as u64,
        feasible,
        compile_ms: round1(result.compile_ms),
        cost_ms: round1(result.cost_ms),
        complete: result.stopped_by.is_none(),
        stopped_by: result.stopped_by.map(|r| r.as_str().to_string()),
        enumerated: result.enumerated,
        rejected_by_structure: result.structural,
        pruned: result.pruned.clone(),
        compiled: result.compiled,
        costed: result.costed,
    };
    let best = &result.evaluated[result.best];
    let output = output_of(model, cluster, best, Some(info), req.seq)
        .expect("the best candidate was costed");
    let alternatives: Vec<PlanOutput> = result
        .ranking
        .iter()
        .skip(1)
        .take(crate::search::RANKED - 1)
        .filter_map(|&i| output_of(model, cluster, &result.evaluated[i], None, req.seq))
        .collect();
    let mut explanation = explain(
        &output,
        crate::export::runs_as_planned(&best.config, cluster),
        alternatives.first(),
        &result.rejected,
        result.stopped_early.as_deref(),
    );
    explanation.push(' ');
    explanation.push_str(&search_counts(output.search.as_ref().expect("set above")));
    PlanReport {
        output,
        alternatives,
        rejected: result.rejected.clone(),
        explanation,
        search: result,
    }
}

/// The search's counts in one sentence: enumerated, rejected by structure, pruned by each bound, costed.
pub fn search_counts(info: &SearchInfo) -> String {
    let pruned = |b: &str| info.pruned.get(b).copied().unwrap_or(0);
    format!(
        "Searched {} combinations: {} rejected by structure, {} pruned by the memory lower bound, {} by the time lower bound, {} costed.",
        info.enumerated,
        info.rejected_by_structure,
        pruned(crate::search::Bound::Memory.as_str()),
        pruned(crate::search::Bound::Time.as_str()),
        info.costed
    )
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn describe(p: &PlanConfig) -> String {
    let mut parts = vec![
        if p.cp > 1 {
            format!(
                "dp={} tp={} pp={} cp={} ({})",
                p.dp, p.tp, p.pp, p.cp, p.cp_comm
            )
        } else {
            format!("dp={} tp={} pp={}", p.dp, p.tp, p.pp)
        },
        format!("micro-batch {}×{}", p.micro_batch_size, p.num_micro_batches),
    ];
    if p.stage_recompute.iter().any(|r| *r != p.recompute) {
        let per: Vec<String> = p.stage_recompute.iter().map(|r| r.to_string()).collect();
        parts.push(format!("recompute per stage {}", per.join("/")));
    } else {
        parts.push(format!("recompute {}", p.recompute));
    }
    let zero = if p.distribute_param {
        "ZeRO-3"
    } else if p.distribute_optimizer {
        "ZeRO-1"
    } else {
        "no ZeRO"
    };
    parts.push(if p.dp_shard > 0 {
        format!("{zero} in shard groups of {}", p.dp_shard)
    } else {
        zero.to_string()
    });
    if p.sequence_parallel {
        parts.push("sequence parallel".into());
    }
    if p.ep > 1 || p.expert_tp > 1 {
        parts.push(format!("ep={} expert_tp={}", p.ep, p.expert_tp));
    }
    if p.pp > 1 {
        parts.push(p.schedule.clone());
    }
    for (on, what) in [
        (p.overlap_grad_reduce, "grad-reduce"),
        (p.overlap_param_gather, "param-gather"),
        (p.tp_comm_overlap, "tp-comm"),
    ] {
        if !on {
            parts.push(format!("{what} overlap off"));
        }
    }
    parts.push(format!("on {}", crate::export::engine_title(p.engine)));
    parts.join(", ")
}

/// Why the winner won, in a few sentences. `exported`: its engine runs it as planned
/// ([`crate::export::runs_as_planned`]).
pub fn explain(
    best: &PlanOutput,
    exported: bool,
    runner_up: Option<&PlanOutput>,
    rejected: &BTreeMap<String, u64>,
    stopped: Option<&str>,
) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut s = format!(
        "Chosen: {} — {:.3} s/step, {:.0} tokens/s, peak {:.1} GiB per device, MFU {:.1}%.",
        describe(&best.plan),
        best.predicted.step_time_s,
        best.predicted.tokens_per_s,
        gib(best.predicted.peak_memory_bytes),
        best.predicted.mfu * 100.0
    );
    let engine = best.plan.engine;
    let mixed = best
        .plan
        .stage_recompute
        .iter()
        .any(|r| *r != best.plan.recompute);
    if !exported {
        // Searched only when asked for (--schedule zb-h1,zbv, --stage-recompute): no export engine
        // runs these dimensions yet (see export::assign_engine).
        s.push_str(&format!(
            " It is costed on {}'s stack, but no export engine runs its {} yet (PyTorch's pipelining runs zero-bubble schedules).",
            crate::export::engine_title(engine),
            if mixed {
                "per-stage recomputation"
            } else {
                "zero-bubble schedule"
            }
        ));
    } else {
        s.push_str(&format!(
            " It is costed for and runs on {}: export it with --emit {}.",
            crate::export::engine_title(engine),
            engine.name()
        ));
    }
    let dispatch = best.predicted.breakdown.moe_dispatch_s;
    if dispatch > 0.0 {
        s.push_str(&format!(
            " Mixture-of-experts token dispatch and combine (all-to-all over ep {}) take {:.3} s/step, {:.1}% of the step.",
            best.plan.ep,
            dispatch,
            100.0 * dispatch / best.predicted.step_time_s.max(f64::MIN_POSITIVE)
        ));
    }
    if best.plan.offload_activations > 0 {
        s.push_str(&format!(
            " The saved activations of {} decoder layer{} per stage go to host memory and back over the host link; {} {:.3} s/step.",
            best.plan.offload_activations,
            if best.plan.offload_activations == 1 { "" } else { "s" },
            if best.plan.offload_optimizer {
                "with the optimizer offload, offloading takes"
            } else {
                "the copies the next layer's compute does not hide take"
            },
            best.predicted.breakdown.offload_s
        ));
    }
    if let Some(r) = runner_up {
        let b = &best.predicted.breakdown;
        let o = &r.predicted.breakdown;
        let diffs = [
            ("compute", o.compute_s - b.compute_s),
            ("exposed communication", o.exposed_comm_s - b.exposed_comm_s),
            ("pipeline bubble", o.bubble_s - b.bubble_s),
            ("optimizer", o.optimizer_s - b.optimizer_s),
        ];
        let (what, by) =
            diffs.iter().cloned().fold(
                ("", f64::NEG_INFINITY),
                |acc, d| if d.1 > acc.1 { d } else { acc },
            );
        let slower = (r.predicted.step_time_s / best.predicted.step_time_s - 1.0) * 100.0;
        s.push_str(&format!(
            " Runner-up: {} — {:.1}% slower, losing most on {what} (+{:.3} s/step), peak {:.1} GiB.",
            describe(&r.plan),
            slower,
            by.max(0.0),
            gib(r.predicted.peak_memory_bytes)
        ));
    } else {
        s.push_str(" No other candidate fits.");
    }
    if !rejected.is_empty() {
        let total: u64 = rejected.values().sum();
        let parts: Vec<String> = rejected.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        s.push_str(&format!(" Rejected {total}: {}.", parts.join("; ")));
    }
    if let Some(why) = stopped {
        s.push_str(&format!(
            " The search stopped early ({why}): this is the best plan among those evaluated."
        ));
    }
    s
}
