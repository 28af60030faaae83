//! A parallel configuration (one candidate of the search space) and its validation.

use crate::cluster::Cluster;
use crate::error::{CostError, Result};
use crate::precision::MatmulPrecision;
use moai_ir::cost::{KernelClass, Phase, StepProfile, TpSplit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Pipeline schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Schedule {
    /// All forwards, then all backwards.
    Gpipe,
    /// One forward, one backward (PipeDream-flush / Megatron default).
    #[default]
    OneFOneB,
    /// Megatron's interleaved 1F1B with `V` model chunks per device.
    Interleaved(u32),
    /// Zero-bubble ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024): 1F1B with each
    /// backward split into an input-gradient pass (B) and a weight-gradient pass (W), the W passes of
    /// later stages deferred into the cool-down bubble; 1F1B's peak activation memory.
    ZeroBubbleH1,
    /// Zero-bubble ZB-V (same paper, section 6): two model chunks per device in a V shape (device `d`
    /// holds virtual stages `d` and `2·pp − 1 − d`), B and W passes scheduled to fill the bubble.
    ZeroBubbleV,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Gpipe => f.write_str("gpipe"),
            Schedule::OneFOneB => f.write_str("1f1b"),
            Schedule::Interleaved(v) => write!(f, "interleaved:{v}"),
            Schedule::ZeroBubbleH1 => f.write_str("zb-h1"),
            Schedule::ZeroBubbleV => f.write_str("zbv"),
        }
    }
}

impl FromStr for Schedule {
    type Err = CostError;
    fn from_str(s: &str) -> Result<Schedule> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "gpipe" => Ok(Schedule::Gpipe),
            "1f1b" => Ok(Schedule::OneFOneB),
            "zb-h1" => Ok(Schedule::ZeroBubbleH1),
            "zbv" => Ok(Schedule::ZeroBubbleV),
            _ => {
                let v = t
                    .strip_prefix("interleaved:")
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| {
                        CostError::InvalidConfig(format!(
                            "unknown schedule `{s}` (expected gpipe, 1f1b, interleaved:V with V >= 1, zb-h1 or zbv)"
                        ))
                    })?;
                Ok(Schedule::Interleaved(v))
            }
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Schedule, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Schedule {
    /// Model chunks per device (1 except for interleaved and zbv).
    pub fn chunks(self) -> u32 {
        match self {
            Schedule::Interleaved(v) => v.max(1),
            Schedule::ZeroBubbleV => 2,
            _ => 1,
        }
    }

    /// True for the zero-bubble schedules, which split each backward into B and W passes.
    pub fn is_zero_bubble(self) -> bool {
        matches!(self, Schedule::ZeroBubbleH1 | Schedule::ZeroBubbleV)
    }

    /// The pipeline device that runs virtual stage `vstage` (virtual stages in layer order, `pp ·
    /// chunks` of them): `vstage mod pp` for the looping schedules, the V shape for zbv (device `d`
    /// holds stages `d` and `2·pp − 1 − d`, so the first and the last stage share device 0).
    pub fn device_of(self, vstage: usize, pp: usize) -> usize {
        let pp = pp.max(1);
        match self {
            Schedule::ZeroBubbleV => {
                let v = vstage % (2 * pp);
                if v < pp { v } else { 2 * pp - 1 - v }
            }
            _ => vstage % pp,
        }
    }
}

/// Activation recomputation policy: the workspace's one recomputation enum,
/// [`moai_ir::train::RecomputePolicy`] (serde names `none`, `selective`, `full`).
pub use moai_ir::train::RecomputePolicy as Recompute;

fn one() -> u32 {
    1
}

/// How the context-parallel ranks of one attention exchange the sequence (Megatron-LM's
/// `--cp-comm-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CpComm {
    /// Ring attention: each rank keeps its queries and passes its key/value chunk around the ring in
    /// `cp − 1` point-to-point steps, each overlapped with the attention of the chunk in hand.
    #[default]
    P2p,
    /// Ulysses-style all-to-all: the sequence-sharded queries, keys and values are exchanged for
    /// head-sharded ones before attention and back after it (needs heads/tp and KV heads/tp divisible
    /// by cp).
    A2a,
}

impl CpComm {
    /// Whether this is the default (ring); used to keep the JSON of plans without cp unchanged.
    pub fn is_default(&self) -> bool {
        *self == CpComm::P2p
    }
}

impl fmt::Display for CpComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpComm::P2p => "p2p",
            CpComm::A2a => "a2a",
        })
    }
}

impl FromStr for CpComm {
    type Err = CostError;
    fn from_str(s: &str) -> Result<CpComm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "p2p" => Ok(CpComm::P2p),
            "a2a" => Ok(CpComm::A2a),
            _ => Err(CostError::InvalidConfig(format!(
                "unknown context-parallel communication `{s}` (expected p2p or a2a)"
            ))),
        }
    }
}

impl Serialize for CpComm {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CpComm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<CpComm, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
fn yes() -> bool {
    true
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_true(b: &bool) -> bool {
    *b
}

/// One parallel configuration. JSON names follow DESIGN.md's `plan` object; `stages` are inclusive
/// decoder-layer ranges `[first, last]`, `pp · V` of them for `interleaved:V`, or empty for an even
/// split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParallelConfig {
    /// Data-parallel degree.
    #[serde(default = "one")]
    pub dp: u32,
    /// Tensor-parallel degree.
    #[serde(default = "one")]
    pub tp: u32,
    /// Pipeline-parallel degree (stages).
    #[serde(default = "one")]
    pub pp: u32,
    /// Context-parallel degree: each sequence is split over `cp` ranks (placed after the tensor-parallel
    /// ranks in Megatron-LM's rank order), every rank holding `seq/cp` tokens (2·cp chunks for causal
    /// load balancing); gradients are reduced over `dp·cp`. Always printed.
    #[serde(default = "one")]
    pub cp: u32,
    /// How context-parallel ranks exchange the sequence in attention (`p2p` ring, `a2a` Ulysses).
    #[serde(default, skip_serializing_if = "CpComm::is_default")]
    pub cp_comm: CpComm,
    /// Samples per micro-batch (batch per device).
    #[serde(default = "one")]
    pub micro_batch_size: u32,
    /// Micro-batches per step per pipeline (gradient-accumulation steps without pipelining).
    #[serde(default = "one")]
    pub num_micro_batches: u32,
    /// Recomputation policy (the step profile must have been built with it).
    #[serde(default)]
    pub recompute: Recompute,
    /// ZeRO-3 / FSDP: weights, gradients and optimizer state sharded over dp.
    #[serde(default)]
    pub distribute_param: bool,
    /// Low-precision weight copies sharded over dp.
    #[serde(default)]
    pub distribute_low_prec_param: bool,
    /// ZeRO-1: optimizer state sharded over dp.
    #[serde(default)]
    pub distribute_optimizer: bool,
    /// Megatron sequence parallelism (norms and dropout split along the sequence).
    #[serde(default)]
    pub sequence_parallel: bool,
    /// Pipeline schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Decoder-layer ranges per (virtual) stage; empty for an even split.
    #[serde(default, with = "stage_ranges")]
    pub stages: Vec<(u32, u32)>,
    /// Gradient buffers live across steps (Megatron, DeepSpeed, DDP). `false` models PyTorch's
    /// `zero_grad(set_to_none=True)`, where gradients do not exist at the start of backward.
    #[serde(default = "yes")]
    pub persistent_grads: bool,
    /// Data-parallel gradient reduction overlaps with backward (DDP buckets, Megatron
    /// `--overlap-grad-reduce`); `false` reduces after the pipeline flush.
    #[serde(default = "yes")]
    pub overlap_grad_reduce: bool,
    /// Parameter all-gathers overlap with compute where the engine has the switch: ZeRO-3 / FSDP
    /// prefetch of the next layer's weights, and Megatron's `--overlap-param-gather` for the
    /// distributed optimizer's all-gather of the updated weights; `false` runs them on the critical
    /// path. See [`crate::Stack::has_overlap_switch`].
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub overlap_param_gather: bool,
    /// Tensor-parallel all-gather / reduce-scatter overlap with the adjacent GEMMs (Megatron
    /// `--tp-comm-overlap`, which needs sequence parallelism); `false` leaves them exposed.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tp_comm_overlap: bool,
    /// The context-parallel ring's collectives wait where their result is first used, so they run
    /// under the attention in hand (every engine moai exports to). `false` models a step compiled
    /// with `torch.compile`: traced functional collectives are waited right where they are issued
    /// (`_maybe_wrap_tensor` in `torch/distributed/_functional_collectives.py`) and Inductor's
    /// compute/communication reordering is off by default (`reorder_for_compute_comm_overlap`), so
    /// every ring transfer is on the critical path. Set by truth rows of compiled runs; no export
    /// engine runs it (torchtitan's export leaves compile off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cp_comm_overlap: bool,
    /// The software stack the configuration runs on (and is exported to); see [`crate::Stack`].
    #[serde(default)]
    pub stack: crate::stack::Stack,
    /// Expert-parallel degree: the routed experts of each mixture-of-experts layer are spread over `ep`
    /// ranks of the data-parallel group (Megatron's `--expert-model-parallel-size`); 1 for dense
    /// models.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ep: u32,
    /// Expert tensor-parallel degree: each routed expert's width divided over `expert_tp` ranks
    /// (Megatron's `--expert-tensor-parallel-size`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub expert_tp: u32,
    /// Recomputation per pipeline device (`pp` entries, device order); empty means `recompute` on
    /// every stage. The step profile of a mixed configuration holds each block as profiled under its
    /// stage's policy (see [`ParallelConfig::recompute_of_device`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_recompute: Vec<Recompute>,
    /// The precision of the decoder layers' linear GEMMs (`bf16`, or `fp8` with per-tensor scaling on
    /// GPUs with FP8 matrix units; see [`crate::precision`]). Serialized only when not bf16.
    #[serde(default, skip_serializing_if = "MatmulPrecision::is_bf16")]
    pub precision: MatmulPrecision,
    /// ZeRO-Offload: optimizer state and master weights in host memory, the optimizer step on the CPU
    /// (see [`crate::offload`]). Serialized only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offload_optimizer: bool,
    /// Activation offload: the saved activations of the first `offload_activations` decoder layers of
    /// each pipeline device go to host memory during forward and come back ahead of their backward (a
    /// device with fewer layers offloads all of its own); 0 = none (see [`crate::offload`]).
    /// Serialized only when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offload_activations: u32,
    /// Hybrid sharding (HSDP, partial ZeRO groups): the data-parallel ranks of one ZeRO / FSDP shard
    /// group. 0 (the default) shards over all of dp; otherwise a divisor of dp, and the sharded state
    /// is split over `dp_shard` ranks (with their `cp` ranks) and replicated over `dp / dp_shard`
    /// groups, whose gradients are all-reduced across the replicas. Needs ZeRO-1 or ZeRO-3. Shard
    /// groups are contiguous data-parallel ranks, as Megatron-LM (`--num-distributed-optimizer-instances`),
    /// torchtitan and FSDP's `HYBRID_SHARD` lay them out. Serialized only when set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dp_shard: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

mod stage_ranges {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Stage {
        layers: [u32; 2],
    }

    pub fn serialize<S: Serializer>(v: &[(u32, u32)], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|(a, b)| Stage { layers: [*a, *b] })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, u32)>, D::Error> {
        Ok(Vec::<Stage>::deserialize(d)?
            .into_iter()
            .map(|s| (s.layers[0], s.layers[1]))
            .collect())
    }
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            dp: 1,
            tp: 1,
            pp: 1,
            cp: 1,
            cp_comm: CpComm::P2p,
            micro_batch_size: 1,
            num_micro_batches: 1,
            recompute: Recompute::None,
            distribute_param: false,
            distribute_low_prec_param: false,
            distribute_optimizer: false,
            sequence_parallel: false,
            schedule: Schedule::OneFOneB,
            stages: Vec::new(),
            persistent_grads: true,
            overlap_grad_reduce: true,
            overlap_param_gather: true,
            tp_comm_overlap: true,
            cp_comm_overlap: true,
            stack: crate::stack::Stack::Megatron,
            ep: 1,
            expert_tp: 1,
            precision: MatmulPrecision::Bf16,
            offload_optimizer: false,
            offload_activations: 0,
            stage_recompute: Vec::new(),
            dp_shard: 0,
        }
    }
}

/// Micro-batches per pipeline for a global batch: `batch / (dp · micro_batch_size)`, or an error when
/// that does not divide.
pub fn micro_batches_for(batch: u64, dp: u32, micro_batch_size: u32) -> Result<u32> {
    let per = dp as u64 * micro_batch_size as u64;
    if per == 0 || batch == 0 || !batch.is_multiple_of(per) {
        return Err(CostError::InvalidConfig(format!(
            "micro-batch size {micro_batch_size} × dp {dp} = {per} does not divide the batch size {batch}"
        )));
    }
    Ok((batch / per) as u32)
}

/// Checks that `tp` divides the attention heads, KV heads and FFN width.
pub fn check_tp_dims(tp: u32, heads: u64, kv_heads: u64, ffn: u64) -> Result<()> {
    let tp64 = tp as u64;
    for (what, n) in [
        ("attention heads", heads),
        ("KV heads", kv_heads),
        ("FFN width", ffn),
    ] {
        if tp64 == 0 || n % tp64 != 0 {
            return Err(CostError::InvalidConfig(format!(
                "tp {tp} does not divide the {n} {what}"
            )));
        }
    }
    Ok(())
}

impl ParallelConfig {
    /// Global batch (samples per step): `dp · micro_batch_size · num_micro_batches`.
    pub fn global_batch(&self) -> u64 {
        self.dp as u64 * self.micro_batch_size as u64 * self.num_micro_batches as u64
    }

    /// The data-parallel ranks one ZeRO / FSDP shard group spans: `dp_shard` under hybrid sharding,
    /// else all of `dp` (see [`ParallelConfig::dp_shard`]).
    pub fn shard_dp(&self) -> u32 {
        if self.hybrid_shard() {
            self.dp_shard
        } else {
            self.dp.max(1)
        }
    }

    /// Whether each pipeline stage gathers its sharded weights once per step and keeps them, and its
    /// gradients, unsharded until the step's last backward
    /// ([`crate::Stack::keeps_pipelined_stage_unsharded`]): ZeRO-3 over more than one rank, a
    /// pipeline, and a stack that runs it so.
    pub fn keeps_stage_unsharded(&self) -> bool {
        self.distribute_param
            && self.pp > 1
            && self.shard_dp().max(1) * self.cp.max(1) > 1
            && self.stack.keeps_pipelined_stage_unsharded()
    }

    /// The replicas of each shard group, `dp / shard_dp` (1 without hybrid sharding); their gradients
    /// are all-reduced across them.
    pub fn dp_replicas(&self) -> u32 {
        self.dp.max(1) / self.shard_dp().max(1)
    }

    /// True when ZeRO / FSDP state is sharded over fewer than all `dp` ranks (`0 < dp_shard < dp`,
    /// `dp_shard` dividing `dp`, and ZeRO-1 or ZeRO-3 on).
    pub fn hybrid_shard(&self) -> bool {
        let group = Self::shard_group(self.dp, self.dp_shard);
        group > 0
            && group < self.dp
            && self.dp.is_multiple_of(group)
            && (self.distribute_param || self.distribute_optimizer)
    }

    /// The one reading of a requested shard group: `dp_shard` 0, or equal to `dp` (one group of every
    /// data-parallel rank), is full sharding and reads as 0; any other value is the group as given,
    /// for [`ParallelConfig::check_dp_shard`] to judge. [`ParallelConfig::hybrid_shard`], the search's
    /// shard groups and the exports' reading of a plan go through it.
    pub fn shard_group(dp: u32, dp_shard: u32) -> u32 {
        if dp_shard == dp { 0 } else { dp_shard }
    }

    /// Checks `dp_shard`: 0, or a divisor of dp on a plan that shards (ZeRO-1 or ZeRO-3); one line.
    pub fn check_dp_shard(&self) -> Result<()> {
        if self.dp_shard == 0 {
            return Ok(());
        }
        if !self.dp.max(1).is_multiple_of(self.dp_shard) {
            return Err(CostError::InvalidConfig(format!(
                "dp_shard {} does not divide dp {}",
                self.dp_shard, self.dp
            )));
        }
        if self.dp_shard == 1 && self.dp > 1 {
            return Err(CostError::InvalidConfig(
                "dp_shard 1 shards nothing (every rank a group of its own); plan ZeRO-0 to replicate"
                    .into(),
            ));
        }
        if !(self.distribute_param || self.distribute_optimizer) {
            return Err(CostError::InvalidConfig(format!(
                "dp_shard {} needs a sharded plan: it needs ZeRO-1 or ZeRO-3, and this one replicates its state over dp",
                self.dp_shard
            )));
        }
        Ok(())
    }

    /// Checks the configuration against the cluster alone.
    pub fn validate_cluster(&self, cluster: &Cluster) -> Result<()> {
        let bad = |m: String| Err(CostError::InvalidConfig(m));
        for (name, v) in [
            ("dp", self.dp),
            ("tp", self.tp),
            ("pp", self.pp),
            ("cp", self.cp),
            ("micro_batch_size", self.micro_batch_size),
            ("num_micro_batches", self.num_micro_batches),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        let prod = self.dp as u64 * self.tp as u64 * self.pp as u64 * self.cp as u64;
        // Without cp the messages keep their dp·tp·pp wording.
        let (names, values) = if self.cp > 1 {
            (
                "dp·tp·pp·cp",
                format!("{}·{}·{}·{}", self.dp, self.tp, self.pp, self.cp),
            )
        } else {
            ("dp·tp·pp", format!("{}·{}·{}", self.dp, self.tp, self.pp))
        };
        if !(cluster.devices as u64).is_multiple_of(prod) {
            return bad(format!(
                "{} devices are not divisible by {names} = {values} = {prod}",
                cluster.devices
            ));
        }
        if prod != cluster.devices as u64 {
            return bad(format!(
                "{names} = {values} = {prod} does not use all {} devices",
                cluster.devices
            ));
        }
        if self.tp > cluster.devices_per_server
            || !cluster.devices_per_server.is_multiple_of(self.tp)
        {
            return bad(format!(
                "tp {} crosses a server ({} devices per server); tensor parallelism must stay inside one",
                self.tp, cluster.devices_per_server
            ));
        }
        if let Schedule::Interleaved(v) = self.schedule {
            if self.pp < 2 {
                return bad(format!("schedule interleaved:{v} needs pp >= 2"));
            }
            if !self.num_micro_batches.is_multiple_of(self.pp) {
                return bad(format!(
                    "schedule interleaved:{v} needs the {} micro-batches to be a multiple of pp {}",
                    self.num_micro_batches, self.pp
                ));
            }
        }
        if self.sequence_parallel && self.tp == 1 {
            return bad("sequence_parallel needs tp >= 2".into());
        }
        self.precision.check_gpu(cluster.gpu)?;
        self.check_dp_shard()?;
        if self.schedule.is_zero_bubble() && self.pp < 2 {
            return bad(format!("schedule {} needs pp >= 2", self.schedule));
        }
        if !self.stage_recompute.is_empty() {
            if self.stage_recompute.len() != self.pp as usize {
                return bad(format!(
                    "stage_recompute lists {} policies for {} pipeline stages",
                    self.stage_recompute.len(),
                    self.pp
                ));
            }
            if self.stage_recompute[0] != self.recompute {
                return bad(format!(
                    "stage_recompute starts with {} but recompute is {} (recompute names the first stage's policy)",
                    self.stage_recompute[0], self.recompute
                ));
            }
        }
        self.validate_experts_cluster(cluster)
    }

    /// Expert parallelism on the cluster: `ep · expert_tp` ranks inside the `dp · cp · tp` ranks of a
    /// pipeline stage (Megatron folds the expert groups into them) and `expert_tp` inside a server. (For a
    /// model with experts, [`ParallelConfig::check_expert_tp`] also asks, with `tp > 1`, for sequence
    /// parallelism or `expert_tp = tp`: the cost model's expert work per device, `1/tp` of the
    /// micro-batch's, assumes the ranks of a tensor-parallel group either hold different tokens or split
    /// each expert among themselves; other layouts are not planned.)
    fn validate_experts_cluster(&self, cluster: &Cluster) -> Result<()> {
        let bad = |m: String| Err(CostError::InvalidConfig(m));
        if self.ep == 0 || self.expert_tp == 0 {
            return bad("ep and expert_tp must be at least 1".into());
        }
        if self.ep == 1 && self.expert_tp == 1 {
            return Ok(());
        }
        let group = self.ep as u64 * self.expert_tp as u64;
        // Megatron-LM folds the expert groups into the dp·cp·tp ranks of a pipeline stage.
        let ranks = self.dp as u64 * self.cp.max(1) as u64 * self.tp as u64;
        if !ranks.is_multiple_of(group) {
            return bad(format!(
                "ep·expert_tp = {}·{} = {group} does not divide the dp·cp·tp = {ranks} ranks of a pipeline stage",
                self.ep, self.expert_tp
            ));
        }
        if self.expert_tp > cluster.devices_per_server
            || !cluster.devices_per_server.is_multiple_of(self.expert_tp)
        {
            return bad(format!(
                "expert_tp {} crosses a server ({} devices per server)",
                self.expert_tp, cluster.devices_per_server
            ));
        }
        Ok(())
    }

    /// For a model with routed experts and `tp > 1`: sequence parallelism or `expert_tp = tp` (see
    /// [`ParallelConfig::validate_cluster`]); the error is one line.
    pub fn check_expert_tp(&self) -> Result<()> {
        if self.tp > 1 && !self.sequence_parallel && self.expert_tp != self.tp {
            return Err(CostError::InvalidConfig(format!(
                "routed experts with tp {} need sequence_parallel or expert_tp = tp (got expert_tp {})",
                self.tp, self.expert_tp
            )));
        }
        Ok(())
    }

    /// The recomputation policy of pipeline device `device`: its `stage_recompute` entry, else
    /// `recompute`.
    pub fn recompute_of_device(&self, device: usize) -> Recompute {
        self.stage_recompute
            .get(device)
            .copied()
            .unwrap_or(self.recompute)
    }

    /// True when the pipeline stages do not all use the same recomputation policy.
    pub fn mixed_recompute(&self) -> bool {
        self.stage_recompute.iter().any(|r| *r != self.recompute)
    }

    /// The recomputation policy of each block of a step profile with `blocks` (embedding, decoder
    /// layers, head) under this configuration's stages: what a mixed step profile is assembled from
    /// (block `i` from the profile built with policy `out[i]`). `ranges` are the per-virtual-stage
    /// layer ranges ([`ParallelConfig::validate_profile`] or [`even_stages`]).
    pub fn block_recompute(
        &self,
        kinds: &[moai_ir::cost::BlockKind],
        ranges: &[(u32, u32)],
    ) -> Vec<Recompute> {
        let nv = ranges.len().max(1);
        let pp = self.pp.max(1) as usize;
        kinds
            .iter()
            .map(|k| {
                let v = match k {
                    moai_ir::cost::BlockKind::Embedding => 0,
                    moai_ir::cost::BlockKind::Head => nv - 1,
                    moai_ir::cost::BlockKind::Decoder(l) => ranges
                        .iter()
                        .position(|(a, z)| l >= a && l <= z)
                        .unwrap_or(nv - 1),
                };
                self.recompute_of_device(self.schedule.device_of(v, pp))
            })
            .collect()
    }

    /// Checks the context-parallel degree against the sequence length and the attention heads: with
    /// cp > 1 the sequence is cut into `2·cp` chunks (Megatron-LM's causal load balancing gives rank
    /// `r` chunks `r` and `2·cp − 1 − r`), so `2·cp` must divide it; all-to-all (Ulysses) context
    /// parallelism splits the heads each tensor-parallel rank holds, so cp must divide heads/tp and KV
    /// heads/tp.
    pub fn validate_cp(&self, seq: u64, heads: u64, kv_heads: u64) -> Result<()> {
        let cp = self.cp as u64;
        if cp <= 1 {
            return Ok(());
        }
        if !seq.is_multiple_of(2 * cp) {
            return Err(CostError::InvalidConfig(format!(
                "cp {cp} needs the sequence length {seq} to be a multiple of 2·cp = {} (causal load balancing cuts it into 2·cp chunks)",
                2 * cp
            )));
        }
        if self.cp_comm == CpComm::A2a {
            let tp = self.tp.max(1) as u64;
            for (n, what) in [(heads, "attention heads"), (kv_heads, "KV heads")] {
                if !n.is_multiple_of(tp) || !(n / tp).is_multiple_of(cp) {
                    return Err(CostError::InvalidConfig(format!(
                        "cp {cp} with all-to-all (a2a) needs the {n} {what} / tp {tp} to be a multiple of cp"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks the configuration against a step profile: micro-batch size, tp divisibility of every
    /// split op, recomputation consistency, stage ranges. Returns the per-(virtual-)stage layer ranges.
    pub fn validate_profile(&self, profile: &StepProfile) -> Result<Vec<(u32, u32)>> {
        let bad = |m: String| Err(CostError::InvalidConfig(m));
        if profile.micro_batch != self.micro_batch_size as u64 {
            return bad(format!(
                "micro_batch_size {} differs from the step profile's micro-batch {}",
                self.micro_batch_size, profile.micro_batch
            ));
        }
        let tp = self.tp as u64;
        if self.cp > 1 {
            let (heads, kv_heads) = profile
                .blocks
                .iter()
                .flat_map(|b| &b.ops)
                .find_map(|op| match op.class {
                    KernelClass::Attention {
                        heads, kv_heads, ..
                    } => Some((heads, kv_heads)),
                    _ => None,
                })
                .unwrap_or((1, 1));
            self.validate_cp(profile.seq, heads, kv_heads)?;
        }
        let mut has_recompute = false;
        for block in &profile.blocks {
            for op in &block.ops {
                has_recompute |= op.phase == Phase::Recompute;
                if tp == 1 || op.phase != Phase::Forward {
                    continue;
                }
                match (&op.class, op.split) {
                    (
                        KernelClass::Attention {
                            heads, kv_heads, ..
                        },
                        _,
                    ) => {
                        if heads % tp != 0 {
                            return bad(format!(
                                "tp {tp} does not divide the {heads} attention heads ({})",
                                op.label
                            ));
                        }
                        if kv_heads % tp != 0 {
                            return bad(format!(
                                "tp {tp} does not divide the {kv_heads} KV heads ({})",
                                op.label
                            ));
                        }
                    }
                    (KernelClass::Matmul { n, .. }, TpSplit::Column) if n % tp != 0 => {
                        return bad(format!(
                            "tp {tp} does not divide the {n} output features of {}",
                            op.label
                        ));
                    }
                    (KernelClass::Matmul { k, .. }, TpSplit::Row) if k % tp != 0 => {
                        return bad(format!(
                            "tp {tp} does not divide the {k} input features of {}",
                            op.label
                        ));
                    }
                    _ => {}
                }
            }
        }
        self.validate_experts_profile(profile)?;
        if !self.mixed_recompute() {
            if self.recompute == Recompute::None && has_recompute {
                return bad("recompute is none but the step profile holds recomputed ops".into());
            }
            if self.recompute == Recompute::Full && !has_recompute {
                return bad(
                    "recompute is full but the step profile holds no recomputed ops".into(),
                );
            }
        }
        let layers = profile
            .blocks
            .iter()
            .filter(|b| matches!(b.kind, moai_ir::cost::BlockKind::Decoder(_)))
            .count() as u32;
        let vstages = self.pp * self.schedule.chunks();
        if vstages > layers.max(1) {
            return bad(format!(
                "{vstages} pipeline stages (pp·chunks) exceed the {layers} decoder layers"
            ));
        }
        if self.offload_activations > layers {
            return bad(format!(
                "offload_activations {} exceeds the {layers} decoder layers",
                self.offload_activations
            ));
        }
        let ranges = self.stage_ranges(layers, vstages)?;
        if self.mixed_recompute() {
            // Each decoder layer must have been profiled under its own stage's policy.
            let kinds: Vec<_> = profile.blocks.iter().map(|b| b.kind).collect();
            for (b, r) in profile
                .blocks
                .iter()
                .zip(self.block_recompute(&kinds, &ranges))
            {
                if !matches!(b.kind, moai_ir::cost::BlockKind::Decoder(_)) {
                    continue;
                }
                let recomputed = b.ops.iter().any(|o| o.phase == Phase::Recompute);
                if (r == Recompute::None && recomputed) || (r == Recompute::Full && !recomputed) {
                    return bad(format!(
                        "block {:?} runs with recompute {r} on its stage but the step profile's ops say otherwise (assemble a mixed profile with moai_costmodel::config::mixed_profile)",
                        b.kind
                    ));
                }
            }
        }
        Ok(ranges)
    }

    fn stage_ranges(&self, layers: u32, vstages: u32) -> Result<Vec<(u32, u32)>> {
        let bad = |m: String| Err(CostError::InvalidConfig(m));
        if self.stages.is_empty() {
            return Ok(even_stages(layers, vstages));
        }
        if self.stages.len() as u32 != vstages {
            return bad(format!(
                "{} stage ranges given, pp·chunks = {vstages} needed",
                self.stages.len()
            ));
        }
        let mut next = 0;
        for (i, (a, b)) in self.stages.iter().enumerate() {
            if *a != next || b < a {
                return bad(format!(
                    "stage {i} covers layers [{a}, {b}]; stages must cover layers 0..{} in order without gaps",
                    layers.saturating_sub(1)
                ));
            }
            next = b + 1;
        }
        if next != layers {
            return bad(format!(
                "stages end at layer {} but the model has {layers} layers",
                next.saturating_sub(1)
            ));
        }
        Ok(self.stages.clone())
    }
}

impl ParallelConfig {
    /// Expert parallelism against the model: it needs routed experts, `ep` must divide their number
    /// and `expert_tp` their width.
    fn validate_experts_profile(&self, profile: &StepProfile) -> Result<()> {
        let experts = profile.blocks.iter().flat_map(|b| &b.ops).find_map(|op| {
            match (&op.class, op.split, op.phase) {
                (KernelClass::Matmul { batch, n, .. }, TpSplit::Expert, Phase::Forward) => {
                    Some((batch / 3, *n))
                }
                _ => None,
            }
        });
        self.check_experts(experts)
    }

    /// Expert parallelism against the model's routed experts, `(count, width)` or `None` for a dense
    /// model: a dense model takes neither `ep` nor `expert_tp`; `ep` divides the experts, `expert_tp`
    /// their width; with experts, [`ParallelConfig::check_expert_tp`]. The one check the planner (from
    /// the model's shape) and the estimate (from the step profile) both apply.
    pub fn check_experts(&self, experts: Option<(u64, u64)>) -> Result<()> {
        if experts.is_none() && self.ep == 1 && self.expert_tp == 1 {
            return Ok(());
        }
        let Some((experts, width)) = experts else {
            return Err(CostError::InvalidConfig(format!(
                "ep {} / expert_tp {} need a mixture-of-experts model; this one has no routed experts",
                self.ep, self.expert_tp
            )));
        };
        if !experts.is_multiple_of(self.ep as u64) {
            return Err(CostError::InvalidConfig(format!(
                "ep {} does not divide the {experts} routed experts",
                self.ep
            )));
        }
        if !width.is_multiple_of(self.expert_tp as u64) {
            return Err(CostError::InvalidConfig(format!(
                "expert_tp {} does not divide the expert width {width}",
                self.expert_tp
            )));
        }
        self.check_expert_tp()
    }
}

/// An even split of `layers` decoder layers into `stages` inclusive ranges (earlier stages take the
/// remainder).
pub fn even_stages(layers: u32, stages: u32) -> Vec<(u32, u32)> {
    let stages = stages.max(1);
    let base = layers / stages;
    let extra = layers % stages;
    let mut out = Vec::with_capacity(stages as usize);
    let mut start = 0;
    for i in 0..stages {
        let n = base + u32::from(i < extra);
        out.push((start, (start + n).saturating_sub(1)));
        start += n;
    }
    out
}

/// The step profile of a configuration with per-stage recomputation: block `i` taken from the profile
/// built with its stage's policy (`profile_of(policy)`, each of the same model, micro-batch and
/// sequence). Errors when a needed profile is missing or the profiles' blocks differ.
pub fn mixed_profile<'a>(
    cfg: &ParallelConfig,
    layers: u32,
    profile_of: &dyn Fn(Recompute) -> Option<&'a StepProfile>,
) -> Result<StepProfile> {
    let missing = |r: Recompute| {
        CostError::InvalidConfig(format!(
            "no step profile with recompute {r} for a per-stage recomputation mix"
        ))
    };
    let base = profile_of(cfg.recompute).ok_or_else(|| missing(cfg.recompute))?;
    let vstages = cfg.pp.max(1) * cfg.schedule.chunks();
    let ranges = cfg.stage_ranges(layers, vstages)?;
    let kinds: Vec<_> = base.blocks.iter().map(|b| b.kind).collect();
    let mut out = base.clone();
    for (i, r) in cfg.block_recompute(&kinds, &ranges).into_iter().enumerate() {
        if r == cfg.recompute {
            continue;
        }
        let p = profile_of(r).ok_or_else(|| missing(r))?;
        let b = p
            .blocks
            .get(i)
            .filter(|b| b.kind == kinds[i])
            .ok_or_else(|| {
                CostError::InvalidConfig(format!(
                    "the step profiles for recompute {} and {r} have different blocks",
                    cfg.recompute
                ))
            })?;
        out.blocks[i] = b.clone();
    }
    out.refresh_fingerprint();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;

    #[test]
    fn a_shard_group_of_all_of_dp_is_full_sharding() {
        assert_eq!(ParallelConfig::shard_group(8, 0), 0);
        assert_eq!(ParallelConfig::shard_group(8, 8), 0);
        assert_eq!(ParallelConfig::shard_group(8, 4), 4);
        // Not a divisor: left as given, for check_dp_shard to refuse.
        assert_eq!(ParallelConfig::shard_group(8, 16), 16);
        let cfg = |dp_shard| ParallelConfig {
            dp: 8,
            dp_shard,
            distribute_optimizer: true,
            ..Default::default()
        };
        assert!(cfg(4).hybrid_shard());
        for full in [0, 8, 16, 3] {
            assert!(!cfg(full).hybrid_shard(), "{full}");
        }
        assert_eq!((cfg(8).shard_dp(), cfg(4).shard_dp()), (8, 4));
        assert!(cfg(16).check_dp_shard().is_err());
        assert!(
            !ParallelConfig {
                distribute_optimizer: false,
                ..cfg(4)
            }
            .hybrid_shard()
        );
    }

    #[test]
    fn zero_bubble_and_stage_recompute_rules() {
        let c = Cluster::new(Gpu::H100, 8).unwrap();
        let cfg = ParallelConfig {
            dp: 8,
            schedule: Schedule::ZeroBubbleH1,
            ..Default::default()
        };
        assert!(
            cfg.validate_cluster(&c)
                .unwrap_err()
                .to_string()
                .contains("schedule zb-h1 needs pp >= 2")
        );
        let mut cfg = ParallelConfig {
            dp: 2,
            pp: 4,
            recompute: Recompute::Full,
            stage_recompute: vec![Recompute::Full, Recompute::None],
            ..Default::default()
        };
        assert!(
            cfg.validate_cluster(&c)
                .unwrap_err()
                .to_string()
                .contains("2 policies for 4 pipeline stages")
        );
        cfg.stage_recompute = vec![
            Recompute::Full,
            Recompute::None,
            Recompute::None,
            Recompute::None,
        ];
        cfg.validate_cluster(&c).unwrap();
        assert!(cfg.mixed_recompute());
        assert_eq!(cfg.recompute_of_device(1), Recompute::None);
        cfg.recompute = Recompute::None;
        assert!(
            cfg.validate_cluster(&c).is_err(),
            "recompute names stage 0's policy"
        );
        // zbv: device d holds stages d and 2·pp − 1 − d.
        let v: Vec<usize> = (0..8)
            .map(|s| Schedule::ZeroBubbleV.device_of(s, 4))
            .collect();
        assert_eq!(v, vec![0, 1, 2, 3, 3, 2, 1, 0]);
        assert_eq!(Schedule::ZeroBubbleV.chunks(), 2);
        assert_eq!(Schedule::Interleaved(2).device_of(5, 4), 1);
        // JSON: absent when empty, listed otherwise.
        let text = serde_json::to_string(&ParallelConfig::default()).unwrap();
        assert!(!text.contains("stage_recompute"), "{text}");
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(
            text.contains(r#""stage_recompute":["full","none","none","none"]"#),
            "{text}"
        );
    }

    #[test]
    fn schedule_roundtrip() {
        for s in ["gpipe", "1f1b", "interleaved:2", "zb-h1", "zbv"] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        assert!("interleaved:0".parse::<Schedule>().is_err());
        assert!(
            "zigzag"
                .parse::<Schedule>()
                .unwrap_err()
                .to_string()
                .contains("unknown schedule `zigzag`")
        );
    }

    #[test]
    fn cluster_checks() {
        let c = Cluster::new(Gpu::Mi250, 32).unwrap();
        let cfg = ParallelConfig {
            dp: 3,
            ..Default::default()
        };
        assert_eq!(
            cfg.validate_cluster(&c).unwrap_err().to_string(),
            "invalid configuration: 32 devices are not divisible by dp·tp·pp = 3·1·1 = 3"
        );
        let cfg = ParallelConfig {
            dp: 2,
            tp: 16,
            ..Default::default()
        };
        assert!(
            cfg.validate_cluster(&c)
                .unwrap_err()
                .to_string()
                .contains("crosses a server")
        );
        let cfg = ParallelConfig {
            dp: 32,
            ..Default::default()
        };
        assert!(cfg.validate_cluster(&c).is_ok());
    }

    #[test]
    fn batch_and_dims() {
        assert_eq!(micro_batches_for(256, 16, 2).unwrap(), 8);
        assert!(
            micro_batches_for(256, 3, 1)
                .unwrap_err()
                .to_string()
                .contains("does not divide the batch size 256")
        );
        assert!(
            check_tp_dims(3, 32, 8, 11008)
                .unwrap_err()
                .to_string()
                .contains("tp 3 does not divide the 32 attention heads")
        );
        assert!(check_tp_dims(8, 32, 8, 11008).is_ok());
    }

    #[test]
    fn even() {
        assert_eq!(even_stages(10, 3), vec![(0, 3), (4, 6), (7, 9)]);
    }

    #[test]
    fn json_names() {
        let c: ParallelConfig = serde_json::from_str(
            r#"{"dp":2,"pp":2,"schedule":"interleaved:2","stages":[{"layers":[0,1]}],"recompute":"full"}"#,
        )
        .unwrap();
        assert_eq!(c.schedule, Schedule::Interleaved(2));
        assert_eq!(c.stages, vec![(0, 1)]);
        assert_eq!(c.recompute, Recompute::Full);
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""stages":[{"layers":[0,1]}]"#), "{text}");
        assert!(
            !text.contains("precision"),
            "bf16 is not serialized: {text}"
        );
        let fp8: ParallelConfig = serde_json::from_str(r#"{"precision":"fp8"}"#).unwrap();
        assert_eq!(fp8.precision, MatmulPrecision::Fp8);
        assert!(
            serde_json::to_string(&fp8)
                .unwrap()
                .contains(r#""precision":"fp8""#)
        );
    }

    #[test]
    fn fp8_is_refused_without_fp8_units() {
        let cfg = ParallelConfig {
            dp: 8,
            precision: MatmulPrecision::Fp8,
            ..Default::default()
        };
        cfg.validate_cluster(&Cluster::new(Gpu::H100, 8).unwrap())
            .unwrap();
        for g in [Gpu::A100, Gpu::Mi250] {
            let e = cfg
                .validate_cluster(&Cluster::new(g, 8).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("FP8 matrix units"), "{e}");
        }
    }
}
