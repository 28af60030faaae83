//! The plan and the JSON objects `plan --json` and `estimate --json` print (DESIGN.md's contract).

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
    /// Hybrid sharding: the data-parallel ranks of one ZeRO / FSDP shard group, the state replicated
    /// over dp / dp_shard groups (absent, 0, when sharded over all of dp).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dp_shard: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
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
    /// Optimizer offload seconds per step (part of `optimizer_s`); absent without offload.
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

impl PlanConfig {
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
