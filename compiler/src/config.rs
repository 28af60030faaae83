//! The configuration vocabulary of the planner, typed: the ZeRO stage ([`ZeroStage`]), the `--emit`
//! artifacts ([`EmitKind`]) and the one legality check of a parallel configuration on a cluster
//! ([`checked`]) that the search space, the library's `estimate` and the command line share. The
//! recomputation policy is `moai_ir::train::RecomputePolicy` (re-exported as `Recompute`).

use crate::error::{PlanError, Result};
use crate::request::Constraints;
use crate::space::ModelShape;
use moai_costmodel::{Cluster, ParallelConfig, Schedule, Stack};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The ZeRO stage of a configuration: what data parallelism shards. Stage 2 is not offered (its
/// gradients-only sharding costs what stage 1 does in the cost model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZeroStage {
    /// Nothing sharded: every data-parallel rank holds the whole model and optimizer state.
    #[default]
    Zero0,
    /// Optimizer state (and fp32 master weights) sharded over dp (`distribute_optimizer`).
    Zero1,
    /// Parameters, gradients and optimizer state sharded over dp (ZeRO-3 / FSDP).
    Zero3,
}

impl ZeroStage {
    /// Every stage, in order.
    pub const ALL: [ZeroStage; 3] = [ZeroStage::Zero0, ZeroStage::Zero1, ZeroStage::Zero3];

    /// The stage number (0, 1 or 3).
    pub fn number(self) -> u8 {
        match self {
            ZeroStage::Zero0 => 0,
            ZeroStage::Zero1 => 1,
            ZeroStage::Zero3 => 3,
        }
    }

    /// The stage numbered `n`, or an error naming `--zero n` and the stages there are.
    pub fn from_number(n: u8) -> Result<ZeroStage> {
        match n {
            0 => Ok(ZeroStage::Zero0),
            1 => Ok(ZeroStage::Zero1),
            3 => Ok(ZeroStage::Zero3),
            _ => Err(PlanError::InvalidArgument(format!(
                "--zero {n}: expected 0 (none), 1 (optimizer state sharded) or 3 (parameters, gradients and optimizer state sharded)"
            ))),
        }
    }

    /// The one mapping of a stage onto a configuration's sharding flags: `distribute_param` and
    /// `distribute_low_prec_param` for stage 3, `distribute_optimizer` for stages 1 and 3.
    pub fn apply(self, cfg: &mut ParallelConfig) {
        cfg.distribute_param = self == ZeroStage::Zero3;
        cfg.distribute_low_prec_param = self == ZeroStage::Zero3;
        cfg.distribute_optimizer = self >= ZeroStage::Zero1;
    }

    /// The stage a configuration's sharding flags express (the inverse of [`ZeroStage::apply`]).
    pub fn of_flags(distribute_param: bool, distribute_optimizer: bool) -> ZeroStage {
        if distribute_param {
            ZeroStage::Zero3
        } else if distribute_optimizer {
            ZeroStage::Zero1
        } else {
            ZeroStage::Zero0
        }
    }
}

impl fmt::Display for ZeroStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl FromStr for ZeroStage {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<ZeroStage> {
        match s.trim().parse::<u8>() {
            Ok(n) => ZeroStage::from_number(n),
            Err(_) => Err(PlanError::InvalidArgument(format!(
                "--zero {s}: expected 0, 1 or 3"
            ))),
        }
    }
}

impl Serialize for ZeroStage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for ZeroStage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<ZeroStage, D::Error> {
        ZeroStage::from_number(u8::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One artifact `--emit` writes into `--out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum EmitKind {
    /// `plan.json` (always written with `--out`).
    Plan,
    /// `report.html`.
    Report,
    /// Megatron-LM arguments and torchrun launch scripts.
    Megatron,
    /// A DeepSpeed config and torchrun launch scripts.
    Deepspeed,
    /// FSDP arguments and torchrun launch scripts.
    Fsdp,
    /// A torchtitan JobConfig TOML and torchrun launch scripts.
    Torchtitan,
    /// The stage programs as MLIR.
    Mlir,
    /// AMD code objects of the stage programs (and the `plan.moai` bundle).
    Hsaco,
    /// NVIDIA PTX of the stage programs (and the `plan.moai` bundle).
    Ptx,
}

impl EmitKind {
    /// The name on the command line (`plan`, `report`, `megatron`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EmitKind::Plan => "plan",
            EmitKind::Report => "report",
            EmitKind::Megatron => "megatron",
            EmitKind::Deepspeed => "deepspeed",
            EmitKind::Fsdp => "fsdp",
            EmitKind::Torchtitan => "torchtitan",
            EmitKind::Mlir => "mlir",
            EmitKind::Hsaco => "hsaco",
            EmitKind::Ptx => "ptx",
        }
    }

    /// The engine an engine export writes for (`megatron`, `deepspeed`, `fsdp`, `torchtitan`), else
    /// `None`.
    pub fn engine(self) -> Option<Stack> {
        match self {
            EmitKind::Megatron => Some(Stack::Megatron),
            EmitKind::Deepspeed => Some(Stack::Deepspeed),
            EmitKind::Fsdp => Some(Stack::Fsdp),
            EmitKind::Torchtitan => Some(Stack::Torchtitan),
            _ => None,
        }
    }
}

impl fmt::Display for EmitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EmitKind {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<EmitKind> {
        <EmitKind as clap::ValueEnum>::from_str(s.trim(), false).map_err(|_| {
            PlanError::InvalidArgument(format!(
                "--emit {s}: unknown artifact (expected any of plan,report,mlir,hsaco,ptx,megatron,deepspeed,fsdp,torchtitan)"
            ))
        })
    }
}

/// The structural legality of a configuration on a cluster for a model: every degree at least 1,
/// dp·tp·pp·cp equal to the devices, tensor parallelism inside one server, an interleaved schedule's
/// micro-batches a multiple of pp, sequence parallelism only with tp > 1
/// (`ParallelConfig::validate_cluster`), and tp dividing the attention heads, KV heads and FFN width
/// (`moai_costmodel::check_tp_dims`). The search space checks every candidate with it (a failure is a
/// rejection naming the rule), and the library's `estimate` (hence the `estimate` command) checks its
/// configuration with it.
pub fn checked(cfg: &ParallelConfig, cluster: &Cluster, shape: ModelShape) -> Result<()> {
    cfg.validate_cluster(cluster)?;
    moai_costmodel::check_tp_dims(cfg.tp, shape.heads, shape.kv_heads, shape.ffn)?;
    // the same expert rules the estimate applies to the step profile
    cfg.check_experts((shape.experts > 0).then_some((shape.experts, shape.expert_ffn)))?;
    Ok(())
}

/// The part of the legality check that needs the sequence length: with cp > 1, `2·cp` divides the
/// sequence (Megatron-LM's causal load balancing), and all-to-all context parallelism needs cp to divide
/// heads/tp and KV heads/tp (`ParallelConfig::validate_cp`). The search space and the library's
/// `estimate` apply it beside [`checked`].
pub fn checked_seq(cfg: &ParallelConfig, seq: u64, shape: ModelShape) -> Result<()> {
    cfg.validate_cp(seq, shape.heads, shape.kv_heads)?;
    Ok(())
}

/// The one configuration `estimate` evaluates: the constraints' fixed values, with the rest derived (dp
/// from the devices, one micro-batch per sequence group, 1F1B, no recomputation, ZeRO-0), checked
/// against the cluster and the batch, and given the engine that runs it (`--engine` when that engine
/// does, else the first that does). Every error is one line naming the flags.
pub fn config_for(c: &Constraints, cluster: &Cluster, batch: u64) -> Result<ParallelConfig> {
    let bad = |m: String| Err(PlanError::InvalidArgument(m));
    let tp = c.tp.unwrap_or(1);
    let pp = c.pp.unwrap_or(1);
    let cp = c.cp.unwrap_or(1);
    // in u64: tp × pp (× cp) and dp × tp × pp of 32-bit flags cannot overflow
    let model_par = tp as u64 * pp as u64 * cp as u64;
    let devices = cluster.devices as u64;
    if !devices.is_multiple_of(model_par) {
        let cp_part = if cp > 1 {
            format!(" × cp {cp}")
        } else {
            String::new()
        };
        return bad(format!(
            "{} devices are not divisible by tp {tp} × pp {pp}{cp_part}",
            cluster.devices
        ));
    }
    let dp = c.dp.unwrap_or((devices / model_par) as u32);
    if dp as u64 * model_par != devices {
        let cp_part = if cp > 1 {
            format!(" × cp {cp}")
        } else {
            String::new()
        };
        return bad(format!(
            "{} devices are not divisible into dp {dp} × tp {tp} × pp {pp}{cp_part} (= {})",
            cluster.devices,
            dp as u64 * model_par
        ));
    }
    if !batch.is_multiple_of(dp as u64) {
        return bad(format!("--batch-size {batch} is not divisible by dp {dp}"));
    }
    let mbs = c.micro_batch_size.unwrap_or(1);
    let per_replica = batch / dp as u64;
    if !per_replica.is_multiple_of(mbs as u64) {
        return bad(format!(
            "--micro-batch-size {mbs} does not divide the {per_replica} sequences per data-parallel replica (batch {batch} / dp {dp})"
        ));
    }
    if c.recompute.len() > 1 {
        return bad(
            "--recompute: estimate takes one value (none, selective, selective-op or full)".into(),
        );
    }
    if c.schedules.len() > 1 {
        return bad(
            "--schedule: estimate takes one value (gpipe, 1f1b, interleaved:V, zb-h1 or zbv)"
                .into(),
        );
    }
    if c.stage_recompute_mixes {
        return bad(
            "--stage-recompute mixed: estimate takes one policy per stage (e.g. full,none)".into(),
        );
    }
    if !c.stage_recompute.is_empty() && c.stage_recompute.len() as u64 != pp as u64 {
        return bad(format!(
            "--stage-recompute lists {} policies but --pp is {pp}",
            c.stage_recompute.len()
        ));
    }
    let Ok(num_micro_batches) = u32::try_from(per_replica / mbs as u64) else {
        return bad(format!(
            "{} micro-batches per replica (batch {batch} / dp {dp} / micro-batch size {mbs}): a plan counts at most 2^32-1; raise --micro-batch-size or --dp",
            per_replica / mbs as u64
        ));
    };
    let max_mb = crate::space::MAX_PIPELINE_MICRO_BATCHES;
    if pp > 1 && num_micro_batches as u64 > max_mb {
        return bad(format!(
            "{num_micro_batches} micro-batches in a {pp}-stage pipeline: at most {max_mb} (the schedule is simulated per micro-batch); raise --micro-batch-size or --dp"
        ));
    }
    let mut cfg = ParallelConfig {
        dp,
        tp,
        pp,
        cp,
        cp_comm: c.cp_comm.unwrap_or_default(),
        micro_batch_size: mbs,
        num_micro_batches,
        recompute: c
            .recompute
            .first()
            .or(c.stage_recompute.first())
            .copied()
            .unwrap_or_default(),
        stage_recompute: c.stage_recompute.clone(),
        sequence_parallel: c.sequence_parallel.unwrap_or(false),
        schedule: c.schedules.first().copied().unwrap_or(Schedule::OneFOneB),
        stages: Vec::new(),
        precision: c.precision,
        offload_optimizer: c.offload_optimizer,
        // `activations` (all of a stage's layers but the last) needs the model: the estimate
        // command resolves it (`ActivationOffload::fixed`) once the model is loaded.
        offload_activations: match c.offload_activations {
            crate::request::ActivationOffload::Layers(n) => n,
            _ => 0,
        },
        ep: c.ep.unwrap_or(1),
        expert_tp: c.expert_tp.unwrap_or(1),
        dp_shard: c.dp_shard.unwrap_or(0),
        ..ParallelConfig::default()
    };
    c.zero.unwrap_or_default().apply(&mut cfg);
    for &(switch, on) in &c.overlap {
        switch.set(&mut cfg, on);
    }
    if let Some(n) = c.dp_shard {
        if let Err(e) = cfg.check_dp_shard() {
            let why = match e {
                moai_costmodel::CostError::InvalidConfig(m) => m,
                e => e.to_string(),
            };
            return bad(format!("--dp-shard {n}: {why}"));
        }
        // A group of all of dp is full sharding, the default.
        cfg.dp_shard = ParallelConfig::shard_group(dp, n);
    }
    crate::export::assign_engine(c.engine, cfg, cluster).map_err(PlanError::InvalidArgument)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moai_costmodel::Gpu;

    #[test]
    fn zero_stages_map_to_the_sharding_flags_and_back() {
        for z in ZeroStage::ALL {
            let mut cfg = ParallelConfig::default();
            z.apply(&mut cfg);
            assert_eq!(
                ZeroStage::of_flags(cfg.distribute_param, cfg.distribute_optimizer),
                z
            );
            assert_eq!(cfg.distribute_param, cfg.distribute_low_prec_param);
            assert_eq!(z.to_string().parse::<ZeroStage>().unwrap(), z);
            let json = serde_json::to_string(&z).unwrap();
            assert_eq!(json, z.number().to_string());
            assert_eq!(serde_json::from_str::<ZeroStage>(&json).unwrap(), z);
        }
        let e = "2".parse::<ZeroStage>().unwrap_err().to_string();
        assert!(e.starts_with("--zero 2: expected 0"), "{e}");
        assert!(serde_json::from_str::<ZeroStage>("2").is_err());
    }

    #[test]
    fn emit_kinds_round_trip_their_names() {
        use clap::ValueEnum;
        for k in EmitKind::value_variants() {
            assert_eq!(k.name().parse::<EmitKind>().unwrap(), *k);
            assert_eq!(
                k.to_possible_value().unwrap().get_name(),
                k.name(),
                "clap and Display agree"
            );
        }
        assert_eq!(EmitKind::Fsdp.engine(), Some(Stack::Fsdp));
        assert_eq!(EmitKind::Report.engine(), None);
        assert!(
            "pdf"
                .parse::<EmitKind>()
                .unwrap_err()
                .to_string()
                .contains("pdf")
        );
    }

    #[test]
    fn the_space_and_estimate_share_one_legality_check() {
        let shape = ModelShape {
            layers: 8,
            heads: 8,
            kv_heads: 8,
            ffn: 1024,
            experts: 0,
            expert_ffn: 0,
        };
        for devices in [8, 12, 16] {
            let cluster = Cluster::new(Gpu::H100, devices).unwrap();
            let space = crate::space::enumerate(shape, &cluster, 96, 4096, &Constraints::default());
            assert!(!space.candidates.is_empty());
            for c in &space.candidates {
                checked(c, &cluster, shape).unwrap();
            }
        }
        let cluster = Cluster::new(Gpu::H100, 16).unwrap();
        let mut cfg = ParallelConfig {
            dp: 1,
            tp: 16,
            pp: 1,
            ..ParallelConfig::default()
        };
        let e = checked(&cfg, &cluster, shape).unwrap_err().to_string();
        assert!(e.contains("crosses a server"), "{e}");
        cfg.tp = 8;
        cfg.dp = 2;
        checked(&cfg, &cluster, shape).unwrap();
        let odd = ModelShape { heads: 12, ..shape };
        let e = checked(&cfg, &cluster, odd).unwrap_err().to_string();
        assert!(
            e.contains("12 attention heads") || e.contains("heads"),
            "{e}"
        );
    }

    #[test]
    fn config_for_names_the_flags_it_cannot_meet() {
        let cluster = Cluster::new(Gpu::H100, 8).unwrap();
        let c = Constraints {
            tp: Some(3),
            ..Constraints::default()
        };
        let e = config_for(&c, &cluster, 32).unwrap_err().to_string();
        assert_eq!(e, "8 devices are not divisible by tp 3 × pp 1");
        let c = Constraints {
            tp: Some(2),
            zero: Some(ZeroStage::Zero1),
            ..Constraints::default()
        };
        let cfg = config_for(&c, &cluster, 32).unwrap();
        assert_eq!(
            (cfg.dp, cfg.tp, cfg.pp, cfg.num_micro_batches),
            (4, 2, 1, 8)
        );
        assert!(cfg.distribute_optimizer && !cfg.distribute_param);
        let e = config_for(&c, &cluster, 30).unwrap_err().to_string();
        assert!(e.contains("--batch-size 30"), "{e}");
    }
}
