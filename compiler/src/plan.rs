//! The plan and the JSON objects `plan --json` and `estimate --json` print (DESIGN.md's contract).

use moai_costmodel::{ParallelConfig, Schedule};
use serde::{Deserialize, Serialize};

/// The model part of the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Trainable parameters.
    pub params: u64,
    /// Decoder layers.
    pub layers: u32,
}

/// The cluster part of the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Flavor name, when the cluster came from one.
    pub flavor: Option<String>,
    /// GPU kind.
    pub gpu: String,
    /// Devices (GCDs for MI250).
    pub devices: u64,
    /// Servers.
    pub servers: u64,
    /// Memory per device.
    pub memory_per_device_bytes: u64,
    /// Devices in one server (the last server may be partly used).
    #[serde(default)]
    pub devices_per_server: u64,
}

/// Search statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchInfo {
    /// Candidates in the space (after constraints).
    pub candidates: u64,
    /// Candidates whose predicted peak memory fits, among those costed (the bounded search does not
    /// cost what it pruned; `plan --exhaustive` costs every candidate).
    pub feasible: u64,
    /// Wall time to compile all candidates (sharding, partitioning, profiles).
    pub compile_ms: f64,
    /// Wall time to cost the surviving candidates.
    pub cost_ms: f64,
    /// Every candidate was compiled and costed (false when the time budget or an interrupt cut the search
    /// short).
    #[serde(default = "complete_default")]
    pub complete: bool,
    /// Why the search stopped early: `time-budget` or `interrupt` (absent when complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Combinations the space enumerated: `candidates` plus `rejected_by_structure`.
    #[serde(default)]
    pub enumerated: u64,
    /// Combinations a structural rule rejected while enumerating (each reason counted under the
    /// output's `rejected`).
    #[serde(default)]
    pub rejected_by_structure: u64,
    /// Candidates skipped by a lower bound before compiling or costing, by bound: `memory` (cannot fit
    /// whatever its stages), `time` (cannot be among the fastest plans kept).
    #[serde(default)]
    pub pruned: std::collections::BTreeMap<String, u64>,
    /// Candidates whose pipeline stages were partitioned (compiled) for costing.
    #[serde(default)]
    pub compiled: u64,
    /// Candidates the cost model predicted.
    #[serde(default)]
    pub costed: u64,
}

fn complete_default() -> bool {
    true
}

fn one() -> u64 {
    1
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// One pipeline stage: an inclusive range of decoder layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInfo {
    /// First and last decoder layer (inclusive); the first stage also holds the embedding, the last the head.
    pub layers: [u32; 2],
}

/// A parallel training configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// Data-parallel degree.
    pub dp: u64,
    /// Tensor-parallel degree.
    pub tp: u64,
    /// Pipeline-parallel degree.
    pub pp: u64,
    /// Context-parallel degree (each sequence split over `cp` ranks); always printed.
    #[serde(default = "one")]
    pub cp: u64,
    /// Context-parallel communication (`p2p` ring or `a2a` all-to-all); printed when not `p2p`.
    #[serde(default, skip_serializing_if = "moai_costmodel::CpComm::is_default")]
    pub cp_comm: moai_costmodel::CpComm,
    /// Micro-batches per step per data-parallel replica.
    pub num_micro_batches: u64,
    /// Sequences per micro-batch per device.
    pub micro_batch_size: u64,
    /// Recomputation policy (`"none"`, `"selective"`, `"full"` in JSON).
    pub recompute: moai_costmodel::Recompute,
    /// ZeRO-3 / FSDP: parameters, gradients and optimizer state sharded over dp.
    pub distribute_param: bool,
    /// Low-precision (bf16) weight copies sharded over dp.
    pub distribute_low_prec_param: bool,
    /// ZeRO-1: optimizer state (and fp32 master weights) sharded over dp.
    pub distribute_optimizer: bool,
    /// Megatron sequence parallelism.
    pub sequence_parallel: bool,
    /// Pipeline schedule (`gpipe`, `1f1b`, `interleaved:V`).
    pub schedule: String,
    /// Stages.
    pub stages: Vec<StageInfo>,
    /// The engine the plan was costed for and is exported to (`megatron`, `deepspeed`, `fsdp`,
    /// `torchtitan`).
    #[serde(default)]
    pub engine: moai_costmodel::Stack,
    /// Recomputation per pipeline stage when the stages differ (`recompute` is the first stage's);
    /// absent when every stage uses `recompute`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_recompute: Vec<moai_costmodel::Recompute>,
    /// The GEMM precision of the decoder layers' linears (`"fp8"` in JSON; absent for bf16).
    #[serde(
        default,
        skip_serializing_if = "moai_costmodel::MatmulPrecision::is_bf16"
    )]
    pub precision: moai_costmodel::MatmulPrecision,
    /// Optimizer state and master weights in host memory (ZeRO-Offload); absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offload_optimizer: bool,
    /// Decoder layers per pipeline stage whose saved activations are offloaded to host memory
    /// (Megatron-LM's `--cpu-offloading-num-layers`); absent when 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offload_activations: u64,
    /// Data-parallel gradient reduction overlapped with backward (printed only when off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub overlap_grad_reduce: bool,
    /// Parameter all-gathers overlapped with compute (printed only when off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub overlap_param_gather: bool,
    /// Tensor-parallel collectives overlapped with the GEMMs (printed only when off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tp_comm_overlap: bool,
    /// Expert-parallel degree (mixture-of-experts models; absent when 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ep: u64,
    /// Expert tensor-parallel degree (absent when 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub expert_tp: u64,
    /// Gradient buffers live across steps (printed only when off: PyTorch's
    /// `zero_grad(set_to_none=True)`; see `ParallelConfig::persistent_grads`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub persistent_grads: bool,
    /// Hybrid sharding: the data-parallel ranks of one ZeRO / FSDP shard group, the state replicated
    /// over dp / dp_shard groups (absent, 0, when sharded over all of dp).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dp_shard: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_one(v: &u64) -> bool {
    *v == 1
}

/// Step time breakdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Compute on the critical path.
    pub compute_s: f64,
    /// Communication not hidden behind compute.
    pub exposed_comm_s: f64,
    /// Pipeline bubble.
    pub bubble_s: f64,
    /// Optimizer step (with the stack's fixed per-step cost).
    pub optimizer_s: f64,
    /// Tensor-parallel collective seconds per step, before overlap.
    #[serde(default)]
    pub tp_comm_s: f64,
    /// Data-parallel gradient synchronisation seconds per step, before overlap.
    #[serde(default)]
    pub dp_comm_s: f64,
    /// ZeRO-3 parameter all-gather seconds per step, before overlap (0 without ZeRO-3).
    #[serde(default)]
    pub zero3_gather_s: f64,
    /// Offload seconds per step: the optimizer offload (part of `optimizer_s`) plus the activation
    /// offload's exposed copies (outside the other parts); absent without offload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offload_s: f64,
    /// Context-parallel communication seconds per step, before overlap (absent without cp).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cp_comm_s: f64,
    /// Mixture-of-experts token dispatch and combine (all-to-all) seconds per step, part of
    /// `exposed_comm_s` (absent without expert parallelism).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moe_dispatch_s: f64,
    /// The software stack the prediction assumes (`megatron`, `deepspeed`, `fsdp`, `eager`).
    #[serde(default)]
    pub stack: String,
    /// The critical device's kernel seconds per step by kernel class (matmul, attention, fused and
    /// other memory-bound kernels, measured kernels, per-kernel floors, TP overlap's SM margin):
    /// where `compute_s` goes.
    #[serde(default)]
    pub kernels: moai_costmodel::KernelClasses,
}

/// Predictions for a configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// Seconds per training step.
    pub step_time_s: f64,
    /// Tokens per second, whole cluster.
    pub tokens_per_s: f64,
    /// Peak allocated bytes on the most loaded device.
    pub peak_memory_bytes: u64,
    /// Model FLOPs utilization (6·N·tokens plus attention, without recomputation, over peak).
    pub mfu: f64,
    /// Where the time goes.
    pub breakdown: Breakdown,
    /// Per pipeline stage (every device of a stage alike): the cost model's memory breakdown and compute
    /// time, what `moai-compile smi` shows per device.
    #[serde(default)]
    pub stages: Vec<StagePrediction>,
    /// Where predictions for a plan like this one are known to miss published runs, one line each
    /// (`moai_costmodel::known_misses::for_plan`; absent when none applies). The CLI also prints them on stderr.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_misses: Vec<String>,
}

/// The cost model's prediction for the devices of one pipeline stage (bytes rounded to whole bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagePrediction {
    /// Pipeline rank.
    pub stage: u64,
    /// Weights resident at the peak.
    pub weights_bytes: u64,
    /// Gradients resident at the peak.
    pub grads_bytes: u64,
    /// Optimizer state.
    pub optimizer_bytes: u64,
    /// Saved activations of the in-flight micro-batches.
    pub activations_bytes: u64,
    /// Transient buffers at the peak.
    pub transients_bytes: u64,
    /// Predicted peak allocated bytes (the allocator model applied to the parts above).
    pub peak_bytes: u64,
    /// Kernel seconds per step (forward, backward, recomputation, optimizer), without communication
    /// or waiting.
    pub compute_s: f64,
}

fn yes() -> bool {
    true
}

/// What `plan --json` and `estimate --json` print.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    /// Model.
    pub model: ModelInfo,
    /// Cluster.
    pub cluster: ClusterInfo,
    /// Search statistics (absent for `estimate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchInfo>,
    /// Chosen (or estimated) configuration.
    pub plan: PlanConfig,
    /// Predictions.
    pub predicted: Predicted,
    /// Whether the predicted peak memory fits the usable device memory (always true for a chosen plan;
    /// `estimate` reports configurations that do not fit with `false`).
    #[serde(default = "yes")]
    pub fits: bool,
}

/// Why a plan's configuration (`PlanConfig`, e.g. read back from a `plan.json`) is not a
/// [`ParallelConfig`]; each message names the `plan` field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanConfigError {
    /// A degree or count does not fit the configuration's integer type.
    #[error("plan.{field} = {value} is too large (at most {max})")]
    TooLarge {
        /// The field's JSON name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value the configuration holds.
        max: u64,
    },
    /// The schedule name is not one the cost model knows.
    #[error("plan.schedule: {0}")]
    Schedule(String),
}

/// `v` as a `u32`, or the error naming `field`.
fn narrow(field: &'static str, v: u64) -> Result<u32, PlanConfigError> {
    u32::try_from(v).map_err(|_| PlanConfigError::TooLarge {
        field,
        value: v,
        max: u32::MAX as u64,
    })
}

/// The number of stage ranges a plan lists when its configuration leaves the split even: one per
/// pipeline device, except zbv's `2·pp` virtual stages in layer order (device `d` holds stages `d`
/// and `2·pp − 1 − d`, so a per-device list would misplace the V).
fn listed_even_stages(cfg: &ParallelConfig) -> u32 {
    if cfg.schedule == Schedule::ZeroBubbleV {
        cfg.pp.saturating_mul(cfg.schedule.chunks())
    } else {
        cfg.pp
    }
}

impl PlanConfig {
    /// The plan view of a configuration of a model with `layers` decoder layers: the one conversion
    /// from [`ParallelConfig`] (the inverse is [`PlanConfig::to_config`]). An even split is listed as
    /// explicit stage ranges; `stage_recompute` is printed only for a per-stage mix.
    pub fn of_config(cfg: &ParallelConfig, layers: u32) -> PlanConfig {
        let ranges = if cfg.stages.is_empty() {
            moai_costmodel::config::even_stages(layers, listed_even_stages(cfg))
        } else {
            cfg.stages.clone()
        };
        PlanConfig {
            dp: cfg.dp as u64,
            tp: cfg.tp as u64,
            pp: cfg.pp as u64,
            cp: cfg.cp as u64,
            cp_comm: cfg.cp_comm,
            num_micro_batches: cfg.num_micro_batches as u64,
            micro_batch_size: cfg.micro_batch_size as u64,
            recompute: cfg.recompute,
            distribute_param: cfg.distribute_param,
            distribute_low_prec_param: cfg.distribute_low_prec_param,
            distribute_optimizer: cfg.distribute_optimizer,
            sequence_parallel: cfg.sequence_parallel,
            schedule: cfg.schedule.to_string(),
            stages: ranges
                .into_iter()
                .map(|(lo, hi)| StageInfo { layers: [lo, hi] })
                .collect(),
            engine: cfg.stack,
            precision: cfg.precision,
            offload_optimizer: cfg.offload_optimizer,
            offload_activations: cfg.offload_activations as u64,
            dp_shard: if cfg.hybrid_shard() {
                cfg.dp_shard as u64
            } else {
                0
            },
            stage_recompute: if cfg.mixed_recompute() {
                cfg.stage_recompute.clone()
            } else {
                Vec::new()
            },
            overlap_grad_reduce: cfg.overlap_grad_reduce,
            overlap_param_gather: cfg.overlap_param_gather,
            tp_comm_overlap: cfg.tp_comm_overlap,
            ep: cfg.ep as u64,
            expert_tp: cfg.expert_tp as u64,
            persistent_grads: cfg.persistent_grads,
        }
    }

    /// The configuration this plan describes: the one conversion back from the plan view, used by the
    /// engines' rules ([`crate::export::PlanDims::of_plan`]) and by every reader of a `plan.json`.
    /// Stage ranges that are the even split [`PlanConfig::of_config`] lists become the empty (even)
    /// split again, so `to_config(of_config(c)) == c` for every configuration the planner makes.
    /// Errors when a number does not fit or the schedule is unknown; the configuration is not
    /// checked against a cluster here (`ParallelConfig::validate_cluster` does that).
    pub fn to_config(&self) -> Result<ParallelConfig, PlanConfigError> {
        let schedule: Schedule = self.schedule.parse().map_err(|e| {
            PlanConfigError::Schedule(match e {
                moai_costmodel::CostError::InvalidConfig(m) => m,
                e => e.to_string(),
            })
        })?;
        let mut cfg = ParallelConfig {
            dp: narrow("dp", self.dp)?,
            tp: narrow("tp", self.tp)?,
            pp: narrow("pp", self.pp)?,
            cp: narrow("cp", self.cp)?,
            cp_comm: self.cp_comm,
            micro_batch_size: narrow("micro_batch_size", self.micro_batch_size)?,
            num_micro_batches: narrow("num_micro_batches", self.num_micro_batches)?,
            recompute: self.recompute,
            distribute_param: self.distribute_param,
            distribute_low_prec_param: self.distribute_low_prec_param,
            distribute_optimizer: self.distribute_optimizer,
            sequence_parallel: self.sequence_parallel,
            schedule,
            stages: self
                .stages
                .iter()
                .map(|s| (s.layers[0], s.layers[1]))
                .collect(),
            persistent_grads: self.persistent_grads,
            overlap_grad_reduce: self.overlap_grad_reduce,
            overlap_param_gather: self.overlap_param_gather,
            tp_comm_overlap: self.tp_comm_overlap,
            // Every export engine overlaps its ring; only truth rows of compiled runs turn it off.
            cp_comm_overlap: true,
            stack: self.engine,
            ep: narrow("ep", self.ep)?,
            expert_tp: narrow("expert_tp", self.expert_tp)?,
            stage_recompute: self.stage_recompute.clone(),
            precision: self.precision,
            offload_optimizer: self.offload_optimizer,
            offload_activations: narrow("offload_activations", self.offload_activations)?,
            dp_shard: narrow("dp_shard", self.dp_shard)?,
        };
        if let Some(last) = cfg.stages.last() {
            let layers = last.1.saturating_add(1);
            if cfg.stages == moai_costmodel::config::even_stages(layers, listed_even_stages(&cfg)) {
                cfg.stages.clear();
            }
        }
        Ok(cfg)
    }

    /// The MoAI-style one-line summary (`No PP, No TP, recomputation : ...`).
    pub fn summary_line(&self) -> String {
        let pp = if self.pp == 1 {
            "No PP".to_string()
        } else {
            format!(
                "num_stages : {}, num_micro_batches : {}, schedule : {}",
                self.pp, self.num_micro_batches, self.schedule
            )
        };
        let tp = if self.tp == 1 {
            "No TP".to_string()
        } else {
            format!(
                "TP : {}{}",
                self.tp,
                if self.sequence_parallel {
                    " (sequence parallel)"
                } else {
                    ""
                }
            )
        };
        let cp = match (self.cp, self.cp_comm) {
            (0 | 1, _) => String::new(),
            (n, comm) => format!(", CP : {n} ({comm})"),
        };
        let tp = if self.ep > 1 || self.expert_tp > 1 {
            format!("{tp}, EP : {}, expert TP : {}", self.ep, self.expert_tp)
        } else {
            tp
        };
        let mb = if self.pp == 1 {
            format!(", num_micro_batches : {}", self.num_micro_batches)
        } else {
            String::new()
        };
        let fp8 = if self.precision.is_bf16() {
            ""
        } else {
            ", matmul_precision : fp8"
        };
        format!(
            "{pp}, {tp}{cp}, DP : {}, batch_per_device : {}{mb}, recomputation : {}, distribute_param : {}, distribute_low_prec_param : {}, distribute_optimizer : {}{fp8}",
            self.dp,
            self.micro_batch_size,
            if self.stage_recompute.is_empty() {
                self.recompute.to_string()
            } else {
                let per: Vec<String> = self.stage_recompute.iter().map(|r| r.to_string()).collect();
                format!("per stage [{}]", per.join(", "))
            },
            self.distribute_param,
            self.distribute_low_prec_param,
            self.distribute_optimizer
        ) + &if self.dp_shard > 0 {
            format!(", dp_shard : {}", self.dp_shard)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moai_costmodel::{CpComm, MatmulPrecision, Recompute, Stack};

    /// A configuration with every field away from its default. The literal names every field (no
    /// `..Default::default()`), so a new `ParallelConfig` field does not compile here until it is
    /// given a non-default value, and then the round trip below fails until the plan view carries it.
    fn every_field_set() -> ParallelConfig {
        ParallelConfig {
            dp: 6,
            tp: 4,
            pp: 2,
            cp: 5,
            cp_comm: CpComm::A2a,
            micro_batch_size: 6,
            num_micro_batches: 7,
            recompute: Recompute::Selective,
            distribute_param: true,
            distribute_low_prec_param: true,
            distribute_optimizer: true,
            sequence_parallel: true,
            schedule: Schedule::Interleaved(2),
            stages: vec![(0, 9), (10, 19), (20, 29), (30, 31)],
            persistent_grads: false,
            overlap_grad_reduce: false,
            overlap_param_gather: false,
            tp_comm_overlap: false,
            cp_comm_overlap: true,
            stack: Stack::Deepspeed,
            ep: 8,
            expert_tp: 2,
            stage_recompute: vec![Recompute::Full, Recompute::None],
            precision: MatmulPrecision::Fp8,
            offload_optimizer: true,
            offload_activations: 3,
            dp_shard: 3,
        }
    }

    fn through_json(cfg: &ParallelConfig, layers: u32) -> ParallelConfig {
        let json = serde_json::to_string(&PlanConfig::of_config(cfg, layers)).unwrap();
        let back: PlanConfig = serde_json::from_str(&json).unwrap();
        back.to_config().unwrap()
    }

    #[test]
    fn every_field_is_away_from_its_default() {
        let full = serde_json::to_value(every_field_set()).unwrap();
        let default = serde_json::to_value(ParallelConfig::default()).unwrap();
        let full = full.as_object().unwrap();
        for (k, v) in full {
            assert_ne!(default.get(k), Some(v), "{k} is at its default");
        }
        // A field the configuration's own JSON skips would escape the check above.
        assert_eq!(full.len(), 26, "{:?}", full.keys().collect::<Vec<_>>());
    }

    #[test]
    fn every_config_field_survives_the_plan_json() {
        let cfg = every_field_set();
        assert_eq!(through_json(&cfg, 32), cfg);
        // And every default survives (the JSON leaves most of them out).
        let plain = ParallelConfig::default();
        assert_eq!(through_json(&plain, 32), plain);
    }

    #[test]
    fn an_even_split_is_listed_and_read_back_as_even() {
        for (schedule, listed) in [
            (Schedule::OneFOneB, 4),
            (Schedule::Interleaved(2), 4),
            (Schedule::ZeroBubbleV, 8),
        ] {
            let cfg = ParallelConfig {
                pp: 4,
                schedule,
                ..Default::default()
            };
            let plan = PlanConfig::of_config(&cfg, 30);
            assert_eq!(plan.stages.len(), listed, "{schedule}");
            assert_eq!(plan.stages[0].layers[0], 0);
            assert_eq!(plan.stages.last().unwrap().layers[1], 29);
            assert_eq!(plan.to_config().unwrap(), cfg, "{schedule}");
        }
        // An uneven split stays explicit.
        let uneven = ParallelConfig {
            pp: 2,
            stages: vec![(0, 13), (14, 29)],
            ..Default::default()
        };
        assert_eq!(through_json(&uneven, 30), uneven);
    }

    #[test]
    fn plans_that_are_no_configuration_are_refused_naming_the_field() {
        let mut p = PlanConfig::of_config(&ParallelConfig::default(), 4);
        p.schedule = "2f2b".into();
        let e = p.to_config().unwrap_err().to_string();
        assert!(
            e.starts_with("plan.schedule: unknown schedule `2f2b`"),
            "{e}"
        );
        let mut p = PlanConfig::of_config(&ParallelConfig::default(), 4);
        p.num_micro_batches = u64::from(u32::MAX) + 1;
        assert_eq!(
            p.to_config().unwrap_err().to_string(),
            "plan.num_micro_batches = 4294967296 is too large (at most 4294967295)"
        );
    }
}
