//! Exports of a plan to the engines that run it: Megatron-LM (arguments and a torchrun launch script
//! per server), DeepSpeed (a JSON config and a torchrun launch script per server for a Hugging Face
//! Trainer-style script), PyTorch FSDP (an FSDP config and a torchrun launch script per server) and
//! torchtitan (a JobConfig TOML and a torchrun launch script per server, [`torchtitan`]).
//!
//! Every dimension of a plan is either expressed exactly in an export or the export is not written for
//! that engine: [`engine_runs`] says, in one line, why an engine cannot run a plan, and
//! [`engines_for`] lists the engines that can. The rules follow the engines' own code at the commits
//! recorded in `compiler/data/` (Megatron-LM's `validate_args` and `TransformerConfig`, DeepSpeed's
//! ZeRO config, torchrun's launcher arguments); the planner's search only keeps configurations some
//! engine runs (see [`assign_engine`]).

use crate::config::ZeroStage;
use crate::plan::PlanConfig;
use moai_costmodel::{
    Cluster, MatmulPrecision, OverlapSwitch, ParallelConfig, Recompute, Schedule, Stack,
};
use serde_json::json;

pub mod torchtitan;

/// The activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (`down(silu(gate(x)) · up(x))`), Llama-style.
    Swiglu,
    /// GELU with the tanh approximation (GPT-2's `gelu_new`), in a plain two-matrix MLP.
    GeluTanh,
}

/// The model settings an engine needs besides the shapes, read from the model (config or graph).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    /// Rotary positions, RMSNorm and a gated MLP (Llama, Mistral, Qwen2); otherwise GPT-2 style
    /// (learned positions, LayerNorm).
    pub llama_style: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Biases on the query/key/value projections (Qwen2).
    pub qkv_bias: bool,
    /// Biases on the attention output projection.
    pub out_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// Rotary base (`rope_theta`); `None` when the model does not say (an ONNX graph, or one whose
    /// `inv_freq` table is not plain rotary).
    pub rope_theta: Option<f64>,
    /// Scaled rotary positions (the config's `rope_scaling`); `None`: plain rotary, or unknown with
    /// `rope_theta` (a graph).
    pub rope_scaling: Option<moai_models::RopeScaling>,
    /// Normalization epsilon; `None` when unknown.
    pub norm_eps: Option<f64>,
    /// Maximum positions of the model (rows of GPT-2's position table); `None` when unknown.
    pub max_positions: Option<u64>,
    /// Head dimension.
    pub head_dim: u64,
}

impl ModelSettings {
    /// Biases on every linear layer besides the QKV projections (Megatron-LM's `add_bias_linear`).
    pub fn linear_bias(&self) -> bool {
        self.out_bias && self.mlp_bias
    }
}

/// What the exporters need to know about the model and job besides the plan.
#[derive(Clone, Debug)]
pub struct ExportContext {
    /// Decoder layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// FFN width.
    pub ffn: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Tied input/output embeddings.
    pub tied_embeddings: bool,
    /// Architecture settings.
    pub settings: ModelSettings,
    /// Global batch (sequences).
    pub global_batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Precision policy name (`amp-bf16`, `bf16`, `fp32`).
    pub precision: String,
    /// Optimizer name (`adamw`, `sgd`).
    pub optimizer: String,
    /// Devices in the cluster (the plan's ranks).
    pub devices: u64,
    /// Devices per full server.
    pub devices_per_server: u64,
    /// The mixture-of-experts layers, from the model's config (`None`: dense, or an ONNX graph).
    pub moe: Option<moai_models::MoeConfig>,
    /// Multi-head latent attention, from the model's config.
    pub mla: Option<moai_models::MlaConfig>,
    /// Per-head query/key RMSNorm (Qwen3), from the model's config.
    pub qk_norm: bool,
}

impl ExportContext {
    /// Servers the plan's ranks occupy (the last one may be partial).
    pub fn servers(&self) -> u64 {
        self.devices.div_ceil(self.devices_per_server.max(1))
    }

    /// Processes started on server `rank`: a full server's devices, or the remainder on the last one.
    pub fn procs_on(&self, rank: u64) -> u64 {
        let per = self.devices_per_server.max(1);
        self.devices
            .saturating_sub(rank.saturating_mul(per))
            .min(per)
    }
}

/// What the engines' rules look at: a plan's configuration, as the cost model holds it, plus what the
/// cluster and the model add. A view, not a copy: a new plan dimension is a field of
/// [`ParallelConfig`] that [`engine_runs`] reads from [`PlanDims::config`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlanDims {
    /// The configuration (its `stack` is not read by the rules: they are asked about an engine).
    pub config: ParallelConfig,
    /// Devices in the cluster.
    pub devices: u64,
    /// Devices per full server.
    pub devices_per_server: u64,
    /// The model has routed experts (mixture of experts).
    pub moe: bool,
}

impl PlanDims {
    /// The ZeRO stage the configuration's sharding flags express.
    pub fn zero(&self) -> ZeroStage {
        ZeroStage::of_flags(
            self.config.distribute_param,
            self.config.distribute_optimizer,
        )
    }

    /// The pipeline stages do not all use the same recomputation policy (`stage_recompute`).
    pub fn mixed_recompute(&self) -> bool {
        self.config.mixed_recompute()
    }

    /// The value of an overlap switch.
    pub fn overlap(&self, s: OverlapSwitch) -> bool {
        s.get(&self.config)
    }

    /// Whether an overlap switch changes anything for this plan on `engine`: the gradient reduce
    /// with dp > 1; the parameter gather with dp > 1 under ZeRO-3 (every engine's prefetch) or ZeRO-1
    /// (Megatron-LM's distributed-optimizer gather); TP overlap with tp > 1 and sequence parallelism.
    pub fn switch_applies(&self, engine: Stack, s: OverlapSwitch) -> bool {
        let c = &self.config;
        match s {
            OverlapSwitch::GradReduce => c.dp > 1,
            OverlapSwitch::ParamGather => {
                c.dp > 1
                    && (self.zero() == ZeroStage::Zero3
                        || (self.zero() == ZeroStage::Zero1 && engine == Stack::Megatron))
            }
            OverlapSwitch::TpComm => c.tp > 1 && c.sequence_parallel,
        }
    }

    /// The dimensions of a search candidate on a cluster (a dense model; set [`PlanDims::moe`] for
    /// one with routed experts).
    pub fn of_config(c: &ParallelConfig, cluster: &Cluster) -> PlanDims {
        PlanDims {
            config: c.clone(),
            devices: cluster.devices as u64,
            devices_per_server: cluster.devices_per_server as u64,
            moe: false,
        }
    }

    /// The dimensions of an output plan ([`PlanConfig::to_config`]); an error when its schedule is
    /// unknown, a number does not fit, or its ranks are not the cluster's devices.
    pub fn of_plan(p: &PlanConfig, cx: &ExportContext) -> Result<PlanDims, String> {
        let cp = p.cp.max(1);
        let ranks =
            p.dp.checked_mul(p.tp)
                .and_then(|x| x.checked_mul(p.pp))
                .and_then(|x| x.checked_mul(cp));
        if ranks != Some(cx.devices) {
            return Err(if cp > 1 {
                format!(
                    "the plan's dp·tp·pp·cp = {}·{}·{}·{cp} does not equal the {} devices",
                    p.dp, p.tp, p.pp, cx.devices
                )
            } else {
                format!(
                    "the plan's dp·tp·pp = {}·{}·{} does not equal the {} devices",
                    p.dp, p.tp, p.pp, cx.devices
                )
            });
        }
        let mut config = p.to_config().map_err(|e| e.to_string())?;
        config
            .check_dp_shard()
            .map_err(|e| format!("the plan: {e}"))?;
        config.cp = config.cp.max(1);
        // Checked above, so a group is either hybrid sharding or full sharding (0).
        if !config.hybrid_shard() {
            config.dp_shard = 0;
        }
        Ok(PlanDims {
            config,
            devices: cx.devices,
            devices_per_server: cx.devices_per_server,
            moe: cx.moe.is_some(),
        })
    }
}

/// The engine's display name.
pub fn engine_title(e: Stack) -> &'static str {
    match e {
        Stack::Megatron => "Megatron-LM",
        Stack::Deepspeed => "DeepSpeed",
        Stack::Fsdp => "PyTorch FSDP",
        Stack::Torchtitan => "torchtitan",
        Stack::Eager => "eager PyTorch",
    }
}

/// The engines the search assigns a plan to by default ([`preference`]); torchtitan is chosen with
/// `--engine torchtitan` (it is costed as the FSDP stack, see `Stack::costed_as`), so the default
/// space is what these three run.
pub const EXPORT_ENGINES: [Stack; 3] = [Stack::Megatron, Stack::Deepspeed, Stack::Fsdp];

/// Every engine a plan can be exported to (`--emit megatron,deepspeed,fsdp,torchtitan`).
pub const ALL_EXPORT_ENGINES: [Stack; 4] = [
    Stack::Megatron,
    Stack::Deepspeed,
    Stack::Fsdp,
    Stack::Torchtitan,
];

/// The engines in order of preference for a plan: ZeRO-3 goes first to DeepSpeed's stage 3 (then FSDP,
/// then Megatron-LM's own fully sharded data parallel, which also combines with tp); everything else
/// first to Megatron-LM.
pub fn preference(d: &PlanDims) -> [Stack; 3] {
    if d.zero() == ZeroStage::Zero3 {
        [Stack::Deepspeed, Stack::Fsdp, Stack::Megatron]
    } else {
        EXPORT_ENGINES
    }
}

/// Whether `engine` runs a plan with these dimensions exactly; the error is one line saying why not.
pub fn engine_runs(engine: Stack, d: &PlanDims) -> Result<(), String> {
    let c = &d.config;
    let zero = d.zero();
    // Tensor-parallel groups are consecutive ranks; they must not straddle a (partial) server.
    let last = d.devices % d.devices_per_server.max(1);
    if c.tp > 1 && last != 0 && !last.is_multiple_of(c.tp as u64) {
        return Err(format!(
            "tp {} does not divide the {last} devices of the partial last server, so a tensor-parallel group would cross servers",
            c.tp
        ));
    }
    // An overlap switched off where it matters runs only on an engine that has the switch.
    for s in OverlapSwitch::ALL {
        if !d.overlap(s) && d.switch_applies(engine, s) && !engine.has_overlap_switch(s) {
            return Err(format!(
                "{} has no switch to turn off the {} overlap (the plan runs it serially); Megatron-LM{} does",
                engine_title(engine),
                s,
                if s == OverlapSwitch::TpComm {
                    ""
                } else {
                    " or DeepSpeed"
                }
            ));
        }
    }
    // torchtitan's per-op selective checkpointing is torchtitan's alone.
    if engine != Stack::Torchtitan
        && (c.recompute == Recompute::SelectiveOp
            || c.stage_recompute.contains(&Recompute::SelectiveOp))
    {
        return Err(format!(
            "{} has no per-op selective activation checkpointing (recompute selective-op); torchtitan runs it",
            engine_title(engine)
        ));
    }
    match engine {
        Stack::Megatron => {
            if c.overlap_param_gather
                && !c.overlap_grad_reduce
                && d.switch_applies(engine, OverlapSwitch::ParamGather)
            {
                return Err("Megatron-LM overlaps the parameter all-gather only together with the gradient reduce (--overlap-param-gather needs --overlap-grad-reduce)".into());
            }
            if c.schedule == Schedule::Gpipe {
                return Err(
                    "Megatron-LM has no GPipe schedule (it runs 1f1b and interleaved)".into(),
                );
            }
            if zero == ZeroStage::Zero3 && c.pp > 1 {
                return Err(
                    "Megatron-LM's fully sharded data parallel (--use-megatron-fsdp) is not run with pipeline parallelism here".into(),
                );
            }
            if c.offload_optimizer && zero != ZeroStage::Zero1 {
                return Err(format!(
                    "Megatron-LM's optimizer offload (--optimizer-cpu-offload) is exported with its distributed optimizer (ZeRO-1) only, not ZeRO-{}; DeepSpeed offloads the optimizer at ZeRO-1 and 3",
                    zero
                ));
            }
            if c.schedule.is_zero_bubble() {
                // compiler/data/megatron_arguments.txt: --delay-wgrad-compute and
                // --defer-embedding-wgrad-compute defer weight gradients for communication overlap
                // inside 1F1B; no option selects a zero-bubble pipeline schedule.
                return Err(format!(
                    "Megatron-LM has no zero-bubble pipeline schedule ({}); PyTorch's pipelining runs it ({})",
                    c.schedule,
                    if c.schedule == Schedule::ZeroBubbleV {
                        "ZBVZeroBubble"
                    } else {
                        "as a per-rank action list, torchtitan's pipeline_parallel_schedule_csv"
                    }
                ));
            }
            if d.mixed_recompute() {
                return Err(
                    "Megatron-LM recomputes alike on every pipeline stage (--recompute-method block takes one --recompute-num-layers for all of them), so a per-stage recomputation mix is not expressible".into(),
                );
            }
            if zero == ZeroStage::Zero3 && c.cp > 1 {
                return Err(
                    "Megatron-LM's fully sharded data parallel (--use-megatron-fsdp) is not run with context parallelism here".into(),
                );
            }
            // megatron/core/transformer/transformer_config.py (pinned commit) refuses CPU offloading
            // with pipeline parallelism and with activation recomputation.
            if d.config.offload_activations > 0 && c.pp > 1 {
                return Err(format!(
                    "Megatron-LM's activation offload (--cpu-offloading-num-layers) does not run with pipeline parallelism (pp {}); plan it with pp 1",
                    c.pp
                ));
            }
            if d.config.offload_activations > 0
                && (c.recompute != Recompute::None || d.mixed_recompute())
            {
                return Err(format!(
                    "Megatron-LM's activation offload (--cpu-offloading-num-layers) does not work with activation recomputation ({}); plan it with --recompute none",
                    c.recompute
                ));
            }
            if c.dp_shard > 0 && (c.ep > 1 || c.expert_tp > 1) {
                // parallel_state.py: the expert data-parallel group is cut into the same number of
                // distributed-optimizer instances.
                let expert_dp = (c.dp * c.cp * c.tp) / (c.ep * c.expert_tp).max(1);
                let instances = c.dp / c.dp_shard;
                if !expert_dp.is_multiple_of(instances) {
                    return Err(format!(
                        "Megatron-LM cuts the expert data-parallel group ({expert_dp} ranks) into the {instances} distributed-optimizer instances of dp_shard {}, which does not divide it",
                        c.dp_shard
                    ));
                }
            }
            Ok(())
        }
        Stack::Deepspeed | Stack::Fsdp => {
            let name = engine_title(engine);
            if c.cp > 1 {
                return Err(format!(
                    "{name} with a generic training script has no context parallelism; Megatron-LM runs it"
                ));
            }
            if c.tp > 1 {
                return Err(format!(
                    "{name} has no tensor parallelism for training (tp {}); Megatron-LM runs it",
                    c.tp
                ));
            }
            if c.pp > 1 {
                return Err(format!(
                    "{name} with a generic training script has no pipeline parallelism (pp {}); Megatron-LM runs it",
                    c.pp
                ));
            }
            if c.ep > 1 || c.expert_tp > 1 {
                return Err(format!(
                    "{name} with a generic training script has no expert parallelism (ep {}, expert_tp {}); Megatron-LM runs it",
                    c.ep, c.expert_tp
                ));
            }
            if d.moe {
                return Err(format!(
                    "{name} with a generic training script runs the Hugging Face experts one by one, not the grouped GEMMs and all-to-all dispatch the plan is costed for; Megatron-LM runs it"
                ));
            }
            if c.recompute == Recompute::Selective {
                return Err(format!(
                    "{name} checkpoints whole decoder layers; selective recomputation of the attention core is Megatron-LM's"
                ));
            }
            if c.precision == MatmulPrecision::Fp8 {
                return Err(format!(
                    "{name} with a generic training script runs its linear layers in bf16; FP8 GEMMs with Transformer Engine's per-tensor scaling are Megatron-LM's (--fp8-format)"
                ));
            }
            if d.config.offload_activations > 0 {
                return Err(if engine == Stack::Deepspeed {
                    "DeepSpeed's activation offload (activation_checkpointing.cpu_checkpointing) moves only checkpoints taken with deepspeed.checkpointing (Megatron-DeepSpeed), not the Hugging Face Trainer's gradient checkpointing this export runs; Megatron-LM runs activation offload".to_string()
                } else {
                    "PyTorch FSDP's CPU offload (CPUOffload) moves parameters and gradients, not activations, and the Trainer's FSDP config has no activation-offload key; Megatron-LM runs activation offload".to_string()
                });
            }
            if c.offload_optimizer && engine == Stack::Fsdp {
                return Err(
                    "PyTorch FSDP's CPU offload (CPUOffload) moves the parameters too, not the optimizer alone; DeepSpeed offloads the optimizer".into(),
                );
            }
            if c.offload_optimizer && zero == ZeroStage::Zero0 {
                return Err(format!(
                    "{name} offloads the optimizer only with ZeRO stage 1 or more (zero_optimization.offload_optimizer)"
                ));
            }
            if engine == Stack::Fsdp && zero != ZeroStage::Zero3 {
                return Err(format!(
                    "PyTorch FSDP here runs full sharding (ZeRO-3) only; a ZeRO-{} plan runs on Megatron-LM or DeepSpeed",
                    zero
                ));
            }
            if c.dp_shard > 0 && engine == Stack::Deepspeed {
                // deepspeed/runtime/zero/mics.py (MiCS_Optimizer) asserts that the parameters were
                // built under deepspeed.zero.MiCS_Init, which a Hugging Face Trainer script does not do.
                return Err(format!(
                    "DeepSpeed shards over a partial group only with MiCS (zero_optimization.mics_shard_size), whose parameters must be built under deepspeed.zero.MiCS_Init, which the generic training script does not do (dp_shard {}); Megatron-LM or torchtitan run hybrid sharding",
                    c.dp_shard
                ));
            }
            if c.dp_shard > 0
                && engine == Stack::Fsdp
                && (u64::from(c.dp_shard) != d.devices_per_server
                    || !d.devices.is_multiple_of(d.devices_per_server.max(1)))
            {
                return Err(format!(
                    "PyTorch FSDP's HYBRID_SHARD shards inside one full server ({} devices), not over dp_shard {} ranks{}; torchtitan runs any shard group",
                    d.devices_per_server,
                    c.dp_shard,
                    if d.devices.is_multiple_of(d.devices_per_server.max(1)) {
                        ""
                    } else {
                        " (and the last server is partial)"
                    }
                ));
            }
            Ok(())
        }
        Stack::Torchtitan => {
            if zero == ZeroStage::Zero1 {
                return Err("torchtitan shards data parallelism fully (FSDP2, ZeRO-3) or replicates it (DDP); ZeRO-1 runs on Megatron-LM or DeepSpeed".into());
            }
            if zero == ZeroStage::Zero0 && c.dp > 1 && (c.tp > 1 || c.pp > 1) {
                return Err("torchtitan's DDP (replicated data parallelism) runs only alone, not with tensor or pipeline parallelism; plan with --zero 3 for FSDP2".into());
            }
            if c.tp > 1 && !c.sequence_parallel {
                return Err("torchtitan's tensor parallelism always shards the norms along the sequence (sequence parallel); plan with --sequence-parallel".into());
            }
            if d.mixed_recompute() {
                return Err("torchtitan checkpoints every layer alike ([activation_checkpoint] mode), so a per-stage recomputation mix is not expressible".into());
            }
            if c.recompute == Recompute::Selective {
                return Err("torchtitan's selective activation checkpointing (per-op policy or every Nth layer) is not moai's selective recomputation of the attention core".into());
            }
            if d.config.offload_activations > 0 {
                // compiler/data/torchtitan_config.txt: training.enable_cpu_offload is FSDP2's
                // CPUOffloadPolicy (parameters, gradients, optimizer step); no key offloads activations.
                return Err("torchtitan's config has no activation-offload key (training.enable_cpu_offload offloads FSDP parameters and gradients); Megatron-LM runs activation offload".into());
            }
            torchtitan::runs_context_parallelism(c.cp as u64, c.cp_comm)?;
            if c.pp > 1 {
                torchtitan::schedule_name(c.schedule)?;
            }
            Ok(())
        }
        Stack::Eager => Err("eager PyTorch is not an export engine".into()),
    }
}

/// Whether the engine a candidate was assigned ([`assign_engine`]) runs it exactly. `false` only for
/// the dimensions no engine runs yet (zero-bubble schedules other than torchtitan's zbv, per-stage
/// recomputation mixes), which are costed on the stack of their 1F1B / uniform twin's engine.
pub fn runs_as_planned(c: &ParallelConfig, cluster: &Cluster) -> bool {
    engine_runs(c.stack, &PlanDims::of_config(c, cluster)).is_ok()
}

/// The engines that run a plan exactly, in order of preference ([`preference`]).
pub fn engines_for(d: &PlanDims) -> Vec<Stack> {
    preference(d)
        .into_iter()
        .filter(|e| engine_runs(*e, d).is_ok())
        .collect()
}

/// Sets a candidate's stack: `fixed` (`--engine`) when that engine runs it, else the most preferred
/// engine that does ([`engines_for`]). The error is the reason the candidate is dropped from the space.
///
/// Zero-bubble schedules and per-stage recomputation mixes are only in the space when the user asks
/// for them (`--schedule zb-h1,zbv`, `--stage-recompute`). Without `--engine`, such a candidate goes to
/// torchtitan when it runs it (zbv as `ZBVZeroBubble`, with FSDP2 or DDP alone); otherwise it is costed
/// on the stack of the engine that runs the same plan with 1F1B (interleaved:2 for zbv) and uniform
/// recomputation, and its exports refuse in one line.
pub fn assign_engine(
    fixed: Option<Stack>,
    c: ParallelConfig,
    cluster: &Cluster,
) -> Result<ParallelConfig, String> {
    assign_engine_for(fixed, c, cluster, false)
}

/// [`assign_engine`] for a model with (`moe`) or without routed experts.
pub fn assign_engine_for(
    fixed: Option<Stack>,
    mut c: ParallelConfig,
    cluster: &Cluster,
    moe: bool,
) -> Result<ParallelConfig, String> {
    let d = PlanDims {
        moe,
        ..PlanDims::of_config(&c, cluster)
    };
    let schedule = d.config.schedule;
    match fixed {
        Some(e) => {
            engine_runs(e, &d).map_err(|why| format!("--engine {e}: {why}"))?;
            c.stack = e;
        }
        None => {
            let Some(e) = engines_for(&d).first().copied().or_else(|| {
                if !schedule.is_zero_bubble() && !d.mixed_recompute() {
                    return None;
                }
                // torchtitan runs zbv (ZBVZeroBubble) but is only chosen when no preferred engine
                // runs the plan: here.
                if engine_runs(Stack::Torchtitan, &d).is_ok() {
                    return Some(Stack::Torchtitan);
                }
                // The 1F1B / uniform twin: the same plan without the zero-bubble schedule and
                // without the per-stage mix.
                let mut plain = d.clone();
                plain.config.schedule = match schedule {
                    Schedule::ZeroBubbleV => Schedule::Interleaved(2),
                    Schedule::ZeroBubbleH1 => Schedule::OneFOneB,
                    s => s,
                };
                plain.config.stage_recompute.clear();
                engines_for(&plain).first().copied()
            }) else {
                let why = engine_runs(Stack::Megatron, &d).err().unwrap_or_default();
                return Err(format!("no engine runs it: {why}"));
            };
            c.stack = e;
        }
    }
    Ok(c)
}

/// Decoder layers per (virtual) stage, in layer order (`pp · V` entries for `interleaved:V`).
fn stage_sizes(plan: &PlanConfig, layers: u32, chunks: u32) -> Vec<u32> {
    let vstages = u32::try_from(plan.pp)
        .unwrap_or(u32::MAX)
        .max(1)
        .saturating_mul(chunks);
    if plan.stages.len() == vstages as usize {
        plan.stages
            .iter()
            .map(|s| s.layers[1].saturating_sub(s.layers[0]).saturating_add(1))
            .collect()
    } else {
        moai_costmodel::config::even_stages(layers, vstages)
            .into_iter()
            .map(|(a, b)| b.saturating_sub(a).saturating_add(1))
            .collect()
    }
}

/// Megatron-LM's `--pipeline-model-parallel-layout` string for per-virtual-stage layer counts
/// (`E` embedding, `t` decoder layer, `L` loss, `|` between virtual stages in layer order).
fn pipeline_layout(sizes: &[u32]) -> String {
    let n = sizes.len();
    sizes
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let mut s = String::new();
            if i == 0 {
                s.push('E');
            }
            if k > 0 {
                s.push_str(&format!("t*{k}"));
            }
            if i + 1 == n {
                s.push('L');
            }
            s
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Megatron-LM command-line arguments for `pretrain_gpt.py`, as (flag, optional value) pairs, or one
/// line saying why Megatron-LM cannot run the plan as planned.
pub fn megatron_args(
    plan: &PlanConfig,
    cx: &ExportContext,
) -> Result<Vec<(String, Option<String>)>, String> {
    let d = PlanDims::of_plan(plan, cx)?;
    engine_runs(Stack::Megatron, &d)?;
    if cx.precision == "bf16" {
        return Err("pure bf16 training (bf16 weights without fp32 master copies) is not what Megatron-LM's --bf16 runs; plan with --precision amp-bf16".into());
    }
    let s = &cx.settings;
    let mut a: Vec<(String, Option<String>)> = Vec::new();
    let kv = |a: &mut Vec<(String, Option<String>)>, k: &str, v: String| {
        a.push((k.to_string(), Some(v)))
    };
    let flag = |a: &mut Vec<(String, Option<String>)>, k: &str| a.push((k.to_string(), None));
    kv(&mut a, "--tensor-model-parallel-size", plan.tp.to_string());
    kv(
        &mut a,
        "--pipeline-model-parallel-size",
        plan.pp.to_string(),
    );
    if d.config.cp > 1 {
        // Megatron-LM splits each sequence into 2·cp chunks for causal load balancing.
        if !cx.seq.is_multiple_of(2 * u64::from(d.config.cp)) {
            return Err(format!(
                "--seq-len {} is not a multiple of 2·cp = {} (Megatron-LM's context parallelism cuts it into 2·cp chunks)",
                cx.seq,
                2 * u64::from(d.config.cp)
            ));
        }
        kv(
            &mut a,
            "--context-parallel-size",
            u64::from(d.config.cp).to_string(),
        );
        kv(&mut a, "--cp-comm-type", plan.cp_comm.to_string());
    }
    kv(
        &mut a,
        "--micro-batch-size",
        plan.micro_batch_size.to_string(),
    );
    kv(&mut a, "--global-batch-size", cx.global_batch.to_string());
    kv(&mut a, "--seq-length", cx.seq.to_string());
    let max_pos = s.max_positions.unwrap_or(cx.seq).max(cx.seq);
    if let Some(m) = s.max_positions.filter(|m| !s.llama_style && *m < cx.seq) {
        return Err(format!(
            "--seq-len {} exceeds the model's {m} learned positions",
            cx.seq
        ));
    }
    kv(&mut a, "--max-position-embeddings", max_pos.to_string());
    kv(&mut a, "--num-layers", cx.layers.to_string());
    kv(&mut a, "--hidden-size", cx.hidden.to_string());
    kv(&mut a, "--ffn-hidden-size", cx.ffn.to_string());
    kv(&mut a, "--num-attention-heads", cx.heads.to_string());
    if s.head_dim.checked_mul(cx.heads) != Some(cx.hidden) {
        kv(&mut a, "--kv-channels", s.head_dim.to_string());
    }
    if cx.kv_heads != cx.heads {
        flag(&mut a, "--group-query-attention");
        kv(&mut a, "--num-query-groups", cx.kv_heads.to_string());
    }
    kv(
        &mut a,
        "--optimizer",
        if cx.optimizer == "sgd" { "sgd" } else { "adam" }.into(),
    );
    // Pipeline split: even (nothing), interleaved even (layers per virtual stage), uneven first/last
    // stage (Megatron's flags for it), anything else as an explicit layout.
    let chunks = d.config.schedule.chunks();
    let sizes = stage_sizes(plan, cx.layers, chunks);
    let even = sizes.windows(2).all(|w| w[0] == w[1]);
    if plan.pp > 1 {
        if even {
            if chunks > 1 {
                kv(
                    &mut a,
                    "--num-layers-per-virtual-pipeline-stage",
                    sizes[0].to_string(),
                );
            }
        } else if chunks == 1
            && sizes.len() >= 2
            && sizes[1..sizes.len() - 1].windows(2).all(|w| w[0] == w[1])
        {
            let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
            let middle = &sizes[1..sizes.len() - 1];
            let mid = middle.first().copied();
            // Megatron gives every middle stage the same count; name first/last when they differ from it.
            if mid.is_none_or(|m| m != first) {
                kv(
                    &mut a,
                    "--decoder-first-pipeline-num-layers",
                    first.to_string(),
                );
            }
            if mid.is_none_or(|m| m != last) {
                kv(
                    &mut a,
                    "--decoder-last-pipeline-num-layers",
                    last.to_string(),
                );
            }
        } else {
            kv(
                &mut a,
                "--pipeline-model-parallel-layout",
                pipeline_layout(&sizes),
            );
        }
    }
    match d.config.recompute {
        Recompute::Full => {
            kv(&mut a, "--recompute-granularity", "full".into());
            kv(&mut a, "--recompute-method", "uniform".into());
            kv(&mut a, "--recompute-num-layers", "1".into());
        }
        Recompute::Selective => kv(&mut a, "--recompute-granularity", "selective".into()),
        // Refused by the engine check above; never reached.
        Recompute::None | Recompute::SelectiveOp => {}
    }
    if plan.sequence_parallel {
        flag(&mut a, "--sequence-parallel");
    }
    match d.zero() {
        ZeroStage::Zero3 => {
            flag(&mut a, "--use-megatron-fsdp");
            kv(
                &mut a,
                "--data-parallel-sharding-strategy",
                "optim_grads_params".into(),
            );
            // Megatron-FSDP v1 (the default) runs on the distributed optimizer and needs this format.
            flag(&mut a, "--use-distributed-optimizer");
            kv(&mut a, "--ckpt-format", "fsdp_dtensor".into());
        }
        ZeroStage::Zero1 => flag(&mut a, "--use-distributed-optimizer"),
        ZeroStage::Zero0 => {}
    }
    // Hybrid sharding: parallel_state.py cuts each dp·cp group into this many contiguous instances
    // of dp_shard·cp ranks, the distributed optimizer (or Megatron-FSDP, as HSDP) shards inside one,
    // and the gradients are all-reduced across them.
    if let Some(instances) = d.config.dp.checked_div(d.config.dp_shard) {
        kv(
            &mut a,
            "--num-distributed-optimizer-instances",
            instances.to_string(),
        );
    }
    // The overlap switches the plan was costed with (Megatron-LM has all three).
    if plan.overlap_grad_reduce {
        flag(&mut a, "--overlap-grad-reduce");
    }
    if plan.overlap_param_gather && d.switch_applies(Stack::Megatron, OverlapSwitch::ParamGather) {
        flag(&mut a, "--overlap-param-gather");
    }
    if plan.tp_comm_overlap && d.switch_applies(Stack::Megatron, OverlapSwitch::TpComm) {
        flag(&mut a, "--tp-comm-overlap");
    }
    if d.config.offload_optimizer {
        if cx.optimizer == "sgd" {
            return Err(
                "Megatron-LM's optimizer offload runs Adam only (--use-precision-aware-optimizer)"
                    .into(),
            );
        }
        // The hybrid device optimizer runs on the precision-aware optimizer's code path
        // (arguments.py:1885); the whole optimizer state goes to the host.
        flag(&mut a, "--optimizer-cpu-offload");
        flag(&mut a, "--use-precision-aware-optimizer");
        kv(&mut a, "--optimizer-offload-fraction", "1.0".into());
    }
    if d.config.offload_activations > 0 {
        // Transformer Engine's CPU offload context offloads the activations of the first N layers
        // (cpu_offloading_activations defaults to true, weights to false); transformer_config.py
        // requires N below the layer count.
        if d.config.offload_activations >= cx.layers {
            return Err(format!(
                "Megatron-LM offloads the activations of fewer layers than the model's {} (--cpu-offloading-num-layers {} must be below the layer count)",
                cx.layers, d.config.offload_activations
            ));
        }
        kv(
            &mut a,
            "--cpu-offloading-num-layers",
            d.config.offload_activations.to_string(),
        );
    }
    if cx.precision != "fp32" {
        flag(&mut a, "--bf16");
    }
    if d.config.precision == MatmulPrecision::Fp8 {
        if cx.precision != "amp-bf16" {
            return Err(format!(
                "fp8 GEMMs are planned on the amp-bf16 policy, not {}",
                cx.precision
            ));
        }
        // Transformer Engine's per-tensor delayed scaling as the cost model prices it: E4M3 forward,
        // E5M2 gradients, the maximum over an amax history of AMAX_HISTORY_LEN steps.
        kv(&mut a, "--fp8-format", "hybrid".into());
        kv(&mut a, "--fp8-recipe", "delayed".into());
        kv(
            &mut a,
            "--fp8-amax-history-len",
            moai_costmodel::precision::AMAX_HISTORY_LEN.to_string(),
        );
        kv(&mut a, "--fp8-amax-compute-algo", "max".into());
    }
    if s.llama_style {
        flag(&mut a, "--swiglu");
        kv(&mut a, "--normalization", "RMSNorm".into());
        kv(&mut a, "--position-embedding-type", "rope".into());
        let theta = s.rope_theta.ok_or(
            "the model's rotary base (rope_theta) is unknown (an ONNX graph records it only as a plain rotary inv_freq table); pass the model's config.json or its Hugging Face directory",
        )?;
        if theta.fract() != 0.0 || !(1.0..=1e15).contains(&theta) {
            return Err(format!(
                "rope_theta {theta} is not an integer, and Megatron-LM's --rotary-base takes an integer"
            ));
        }
        kv(&mut a, "--rotary-base", format!("{}", theta as u64));
        megatron_rope_args(&mut a, cx)?;
        // Llama-style models train without dropout; Megatron's default is 0.1.
        kv(&mut a, "--attention-dropout", "0.0".into());
        kv(&mut a, "--hidden-dropout", "0.0".into());
    } else if s.activation == Activation::GeluTanh {
        flag(&mut a, "--openai-gelu");
    }
    if s.activation == Activation::Swiglu && !s.llama_style {
        return Err(
            "a gated MLP without rotary positions is not a model Megatron-LM's GPT builds here"
                .into(),
        );
    }
    if let Some(eps) = s.norm_eps {
        kv(&mut a, "--norm-epsilon", format!("{eps:e}"));
    }
    if s.out_bias != s.mlp_bias {
        return Err(format!(
            "biases on the {} projections only cannot be expressed with Megatron-LM's bias flags (--disable-bias-linear covers both)",
            if s.out_bias {
                "attention output"
            } else {
                "MLP"
            }
        ));
    }
    if !s.linear_bias() {
        flag(&mut a, "--disable-bias-linear");
        if s.qkv_bias {
            flag(&mut a, "--add-qkv-bias");
        }
    } else if !s.qkv_bias {
        return Err("biases on the output and MLP projections without QKV biases cannot be expressed with Megatron-LM's bias flags".into());
    }
    if !cx.tied_embeddings {
        flag(&mut a, "--untie-embeddings-and-output-weights");
    }
    megatron_moe_args(&mut a, plan, cx);
    Ok(a)
}

/// Megatron-LM's flags for the model's rotary scaling (after `--rotary-base`), or one line saying why
/// the pinned release cannot express it (compiler/data/megatron_arguments.txt's commit).
///
/// - Standard attention: `pretrain_gpt.py` builds the model through `gpt_builders.py`, which passes
///   `rope_scaling=args.use_rope_scaling` and no factor, so `--use-rope-scaling` runs
///   `RotaryEmbedding._apply_scaling` with its fixed Llama 3.1 constants (factor 8, low 1, high 4,
///   8192 original positions; `--rope-scaling-factor` is not read on this path). Any other Llama 3.x
///   scaling (Llama 3.2's factor 32) is refused, and so is YaRN on standard attention (moai carries
///   DeepSeek's, on latent attention).
/// - Latent attention: `core_transformer_config_from_args` copies the arguments named like
///   `MLATransformerConfig` fields, so `--rope-type`, `--rotary-scaling-factor`, `--mscale` and
///   `--mscale-all-dim` reach its YaRN; its `original_max_position_embeddings`, `beta_fast` and
///   `beta_slow` have no such argument (the `--yarn-*` flags set the non-MLA `yarn_*` attributes only,
///   in `_apply_yarn_config_from_args`) and keep their defaults 4096, 32 and 1, so a config with other
///   values is refused. Without scaling, latent attention runs plain rotary (`--rope-type rope`,
///   which `MLATransformerConfig` accepts only without the fused YaRN kernel: `--no-rope-fusion`);
///   left alone, it would run YaRN with the command line's defaults.
fn megatron_rope_args(
    a: &mut Vec<(String, Option<String>)>,
    cx: &ExportContext,
) -> Result<(), String> {
    let kv = |a: &mut Vec<(String, Option<String>)>, k: &str, v: String| {
        a.push((k.to_string(), Some(v)))
    };
    let scaling = cx.settings.rope_scaling.as_ref();
    match (scaling, cx.mla.is_some()) {
        (None, false) => {}
        (None, true) => {
            kv(a, "--rope-type", "rope".into());
            a.push(("--no-rope-fusion".into(), None));
        }
        (
            Some(&moai_models::RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }),
            false,
        ) => {
            if (
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ) != (8.0, 1.0, 4.0, 8192)
            {
                return Err(format!(
                    "the model's Llama 3.x rotary scaling (factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original_max_position_embeddings {original_max_position_embeddings}) is not the one Megatron-LM's pretrain_gpt.py applies with --use-rope-scaling (factor 8, 1, 4, 8192 fixed; --rope-scaling-factor is not passed to the model)"
                ));
            }
            a.push(("--use-rope-scaling".into(), None));
        }
        (
            Some(&moai_models::RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
            }),
            true,
        ) => {
            if (original_max_position_embeddings, beta_fast, beta_slow) != (4096, 32.0, 1.0) {
                return Err(format!(
                    "the model's YaRN scaling has original_max_position_embeddings {original_max_position_embeddings}, beta_fast {beta_fast}, beta_slow {beta_slow}, and Megatron-LM's latent attention takes these from MLATransformerConfig's defaults (4096, 32, 1), which no command-line flag sets"
                ));
            }
            kv(a, "--rope-type", "yarn".into());
            kv(a, "--rotary-scaling-factor", format!("{factor}"));
            kv(a, "--mscale", format!("{mscale}"));
            kv(a, "--mscale-all-dim", format!("{mscale_all_dim}"));
        }
        (Some(r), mla) => {
            return Err(format!(
                "{} rotary scaling on {} attention is not a model moai exports to Megatron-LM",
                r.kind(),
                if mla { "latent" } else { "standard" }
            ));
        }
    }
    Ok(())
}

/// `([0]*3+[1]*58)`: Megatron's `--moe-layer-freq` pattern (1: a MoE layer) as runs of equal values.
fn moe_layer_pattern(moe: &moai_models::MoeConfig, layers: u32) -> String {
    let mut runs: Vec<(u8, u32)> = Vec::new();
    for l in 0..layers as usize {
        let v = u8::from(moe.is_moe_layer(l));
        match runs.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => runs.push((v, 1)),
        }
    }
    let parts: Vec<String> = runs.iter().map(|(v, n)| format!("[{v}]*{n}")).collect();
    format!("({})", parts.join("+"))
}

/// Megatron-Core's mixture-of-experts and latent-attention flags: experts, router, grouped GEMMs with
/// all-to-all token dispatch (what the cost model prices), the expert-parallel sizes, shared experts,
/// dense layers, and MLA's ranks and head widths.
fn megatron_moe_args(a: &mut Vec<(String, Option<String>)>, plan: &PlanConfig, cx: &ExportContext) {
    let kv = |a: &mut Vec<(String, Option<String>)>, k: &str, v: String| {
        a.push((k.to_string(), Some(v)))
    };
    let flag = |a: &mut Vec<(String, Option<String>)>, k: &str| a.push((k.to_string(), None));
    if cx.qk_norm {
        flag(a, "--qk-layernorm");
    }
    if let Some(m) = &cx.mla {
        flag(a, "--multi-latent-attention");
        if let Some(r) = m.q_lora_rank {
            kv(a, "--q-lora-rank", r.to_string());
        }
        kv(a, "--kv-lora-rank", m.kv_lora_rank.to_string());
        kv(a, "--qk-head-dim", m.qk_nope_head_dim.to_string());
        kv(a, "--qk-pos-emb-head-dim", m.qk_rope_head_dim.to_string());
        kv(a, "--v-head-dim", m.v_head_dim.to_string());
    }
    let Some(m) = &cx.moe else {
        return;
    };
    kv(a, "--num-experts", m.experts.to_string());
    kv(a, "--moe-router-topk", m.topk.to_string());
    kv(a, "--moe-ffn-hidden-size", m.expert_ffn.to_string());
    if !m.dense_layers.is_empty() {
        kv(a, "--moe-layer-freq", moe_layer_pattern(m, cx.layers));
    }
    if m.shared_ffn > 0 {
        kv(
            a,
            "--moe-shared-expert-intermediate-size",
            m.shared_ffn.to_string(),
        );
        if m.shared_gate {
            flag(a, "--moe-shared-expert-gate");
        }
    }
    match m.score {
        moai_models::RouterScore::Sigmoid => {
            kv(a, "--moe-router-score-function", "sigmoid".into());
        }
        // Megatron's default softmax runs over the chosen top-k (renormalized); softmax over all
        // experts before the choice is `--moe-router-pre-softmax`.
        moai_models::RouterScore::Softmax if !m.norm_topk => {
            flag(a, "--moe-router-pre-softmax");
        }
        moai_models::RouterScore::Softmax => {}
    }
    if m.router_bias {
        flag(a, "--moe-router-enable-expert-bias");
    }
    flag(a, "--moe-grouped-gemm");
    kv(a, "--moe-token-dispatcher-type", "alltoall".into());
    kv(a, "--expert-model-parallel-size", plan.ep.to_string());
    kv(
        a,
        "--expert-tensor-parallel-size",
        plan.expert_tp.to_string(),
    );
}

/// A value quoted for the shell when it holds anything but letters, digits and `._-+`.
fn shell_word(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// The Megatron-LM arguments as one shell-ready line (values quoted where the shell would read them,
/// such as a pipeline layout's `*` and `|`).
pub fn megatron_command_line(plan: &PlanConfig, cx: &ExportContext) -> Result<String, String> {
    Ok(megatron_args(plan, cx)?
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} {}", shell_word(&v)),
            None => k,
        })
        .collect::<Vec<_>>()
        .join(" "))
}

fn check_generic(engine: Stack, plan: &PlanConfig, cx: &ExportContext) -> Result<PlanDims, String> {
    let d = PlanDims::of_plan(plan, cx)?;
    engine_runs(engine, &d)?;
    if cx.precision == "bf16" {
        return Err(format!(
            "pure bf16 training (bf16 weights without fp32 master copies) is not what {}'s bf16 mode runs; plan with --precision amp-bf16",
            engine_title(engine)
        ));
    }
    Ok(d)
}

/// A DeepSpeed JSON config for the plan (ZeRO stage 0, 1 or 3; data parallelism only), or one line
/// saying why DeepSpeed cannot run it as planned.
pub fn deepspeed_config(
    plan: &PlanConfig,
    cx: &ExportContext,
) -> Result<serde_json::Value, String> {
    let d = check_generic(Stack::Deepspeed, plan, cx)?;
    let optimizer = if cx.optimizer == "sgd" {
        json!({"type": "SGD", "params": {"lr": 1e-4, "momentum": 0.9}})
    } else {
        json!({"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}})
    };
    let mut zero = json!({"stage": d.zero(), "overlap_comm": plan.overlap_grad_reduce, "contiguous_gradients": true});
    if d.zero() == ZeroStage::Zero3 {
        // A prefetch bucket of 0 turns ZeRO-3's parameter prefetch off.
        let prefetch: u64 = if plan.overlap_param_gather {
            50_000_000
        } else {
            0
        };
        zero["stage3_prefetch_bucket_size"] = json!(prefetch);
        zero["stage3_param_persistence_threshold"] = json!(100_000u64);
    }
    if d.config.offload_optimizer {
        // ZeRO-Offload: optimizer state in pinned host memory, DeepSpeed's CPU Adam.
        zero["offload_optimizer"] = json!({"device": "cpu", "pin_memory": true});
    }
    Ok(json!({
        "train_batch_size": cx.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.num_micro_batches,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": cx.precision != "fp32"},
        "optimizer": optimizer,
        "zero_optimization": zero,
        "steps_per_print": 10,
        "wall_clock_breakdown": false,
    }))
}

/// The FSDP config (Hugging Face Trainer's `--fsdp_config` file) for a ZeRO-3 plan, or one line
/// saying why PyTorch FSDP cannot run it as planned. Each decoder layer is one FSDP unit.
pub fn fsdp_config(plan: &PlanConfig, cx: &ExportContext) -> Result<serde_json::Value, String> {
    check_generic(Stack::Fsdp, plan, cx)?;
    // No transformer_layer_cls_to_wrap: the Trainer then wraps the model's own decoder-layer class
    // (`_no_split_modules`), right for every family.
    Ok(json!({
        "backward_prefetch": "backward_pre",
        "forward_prefetch": false,
        "use_orig_params": true,
        "sync_module_states": true,
        "activation_checkpointing": plan.recompute == Recompute::Full,
    }))
}

/// The torchrun launcher arguments for server `rank`: exactly the plan's ranks, per server.
pub fn torchrun_args(cx: &ExportContext, rank: u64) -> Vec<(String, String)> {
    vec![
        ("--nnodes".into(), cx.servers().to_string()),
        ("--nproc-per-node".into(), cx.procs_on(rank).to_string()),
        ("--node-rank".into(), rank.to_string()),
        ("--master-addr".into(), "\"$MASTER_ADDR\"".into()),
        ("--master-port".into(), "\"$MASTER_PORT\"".into()),
    ]
}

pub(crate) fn launcher(
    cx: &ExportContext,
    rank: u64,
    what: &str,
    needs: &str,
    env: &str,
    program: &str,
) -> String {
    let servers = cx.servers();
    let procs = cx.procs_on(rank);
    let tr = torchrun_args(cx, rank)
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "#!/usr/bin/env bash\n\
# moai launch script ({what}) for server {rank} of {servers}: {procs} processes here, {devices} ranks in all.\n\
# Set MASTER_ADDR to server 0's address{needs}; data and tokenizer arguments are yours to add.\n\
set -euo pipefail\n\
: \"${{MASTER_ADDR:?set MASTER_ADDR to the address of server 0}}\"\n\
{env}MASTER_PORT=${{MASTER_PORT:-29500}}\n\
exec torchrun {tr} \\\n  {program} \"$@\"\n",
        devices = cx.devices,
    )
}

/// A torchrun launch script for server `rank`, running Megatron-LM with the plan's arguments.
pub fn torchrun_script(plan: &PlanConfig, cx: &ExportContext, rank: u64) -> Result<String, String> {
    let args = megatron_command_line(plan, cx)?;
    let mut env = ": \"${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}\"\n".to_string();
    if plan.distribute_param {
        // Megatron-FSDP asserts CUDA_DEVICE_MAX_CONNECTIONS != 1.
        env.push_str("unset CUDA_DEVICE_MAX_CONNECTIONS\n");
    } else if plan.tp > 1 || plan.sequence_parallel || plan.cp > 1 {
        // Megatron-LM asks for one connection with tensor or context parallelism before Blackwell
        // (arguments.py:1453).
        env.push_str("export CUDA_DEVICE_MAX_CONNECTIONS=1\n");
    }
    Ok(launcher(
        cx,
        rank,
        "Megatron-LM",
        " and MEGATRON_LM to a Megatron-LM checkout",
        &env,
        &format!("\"$MEGATRON_LM/pretrain_gpt.py\" \\\n  {args}"),
    ))
}

/// Hugging Face Trainer arguments that carry the plan's batch split, precision and recomputation.
/// With FSDP, recomputation is the FSDP config's `activation_checkpointing` (the Trainer asks not to
/// combine it with `--gradient_checkpointing`), so `checkpointing_flag` is false there.
fn trainer_args(plan: &PlanConfig, cx: &ExportContext, checkpointing_flag: bool) -> String {
    let mut v = vec![
        format!("--per_device_train_batch_size {}", plan.micro_batch_size),
        format!("--gradient_accumulation_steps {}", plan.num_micro_batches),
    ];
    if cx.precision != "fp32" {
        v.push("--bf16".into());
    }
    v.push(format!(
        "--optim {}",
        if cx.optimizer == "sgd" {
            "sgd"
        } else {
            "adamw_torch"
        }
    ));
    if checkpointing_flag && plan.recompute == Recompute::Full {
        v.push("--gradient_checkpointing".into());
    }
    v.join(" ")
}

/// A torchrun launch script for server `rank` running `$TRAIN_SCRIPT` (a Hugging Face Trainer script)
/// under DeepSpeed with `deepspeed_config.json`.
pub fn deepspeed_script(
    plan: &PlanConfig,
    cx: &ExportContext,
    rank: u64,
) -> Result<String, String> {
    deepspeed_config(plan, cx)?;
    Ok(launcher(
        cx,
        rank,
        "DeepSpeed",
        " and TRAIN_SCRIPT to a Hugging Face Trainer training script",
        ": \"${TRAIN_SCRIPT:?set TRAIN_SCRIPT to a Hugging Face Trainer script}\"\n",
        &format!(
            "\"$TRAIN_SCRIPT\" --deepspeed \"$(dirname \"$0\")/../deepspeed_config.json\" {}",
            trainer_args(plan, cx, true)
        ),
    ))
}

/// A torchrun launch script for server `rank` running `$TRAIN_SCRIPT` (a Hugging Face Trainer script)
/// under PyTorch FSDP full sharding with `fsdp_config.json`, or hybrid sharding (`hybrid_shard`:
/// FSDP's `HYBRID_SHARD`, sharded inside each server and replicated across servers) for a plan whose
/// shard group is one server.
pub fn fsdp_script(plan: &PlanConfig, cx: &ExportContext, rank: u64) -> Result<String, String> {
    fsdp_config(plan, cx)?;
    let d = PlanDims::of_plan(plan, cx)?;
    let strategy = if d.config.dp_shard > 0 {
        "hybrid_shard"
    } else {
        "full_shard"
    };
    Ok(launcher(
        cx,
        rank,
        "PyTorch FSDP",
        " and TRAIN_SCRIPT to a Hugging Face Trainer training script",
        ": \"${TRAIN_SCRIPT:?set TRAIN_SCRIPT to a Hugging Face Trainer script}\"\n",
        &format!(
            "\"$TRAIN_SCRIPT\" --fsdp \"{strategy} auto_wrap\" --fsdp_config \"$(dirname \"$0\")/../fsdp_config.json\" {}",
            trainer_args(plan, cx, false)
        ),
    ))
}

/// Every file of one engine's export (relative path, contents), or one line saying why the engine does
/// not run the plan as planned.
pub fn export_files(
    engine: Stack,
    plan: &PlanConfig,
    cx: &ExportContext,
) -> Result<Vec<(String, String)>, String> {
    let mut files = Vec::new();
    match engine {
        Stack::Megatron => {
            files.push((
                "megatron_args.txt".into(),
                megatron_command_line(plan, cx)? + "\n",
            ));
            for r in 0..cx.servers() {
                files.push((
                    format!("launch/server{r}.sh"),
                    torchrun_script(plan, cx, r)?,
                ));
            }
        }
        Stack::Deepspeed => {
            let c = deepspeed_config(plan, cx)?;
            files.push((
                "deepspeed_config.json".into(),
                serde_json::to_string_pretty(&c).map_err(|e| e.to_string())? + "\n",
            ));
            for r in 0..cx.servers() {
                files.push((
                    format!("launch/deepspeed_server{r}.sh"),
                    deepspeed_script(plan, cx, r)?,
                ));
            }
        }
        Stack::Fsdp => {
            let c = fsdp_config(plan, cx)?;
            files.push((
                "fsdp_config.json".into(),
                serde_json::to_string_pretty(&c).map_err(|e| e.to_string())? + "\n",
            ));
            for r in 0..cx.servers() {
                files.push((
                    format!("launch/fsdp_server{r}.sh"),
                    fsdp_script(plan, cx, r)?,
                ));
            }
        }
        Stack::Torchtitan => {
            files.push((
                "torchtitan.toml".into(),
                torchtitan::torchtitan_toml(plan, cx)?,
            ));
            for r in 0..cx.servers() {
                files.push((
                    format!("launch/torchtitan_server{r}.sh"),
                    torchtitan::torchtitan_script(plan, cx, r)?,
                ));
            }
        }
        Stack::Eager => return Err("eager PyTorch is not an export engine".into()),
    }
    Ok(files)
}

/// The one line written instead of an engine's export: why it does not run the plan and which engine
/// does.
pub fn refusal(engine: Stack, why: &str, plan: &PlanConfig, cx: &ExportContext) -> String {
    let others: Vec<&str> = ALL_EXPORT_ENGINES
        .into_iter()
        .filter(|e| *e != engine && export_files(*e, plan, cx).is_ok())
        .map(|e| e.name())
        .collect();
    let alt = if others.is_empty() {
        "no exported engine runs this plan".to_string()
    } else {
        format!("run it with --emit {}", others.join(" or --emit "))
    };
    format!("{} export not written: {why}; {alt}", engine_title(engine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StageInfo;

    /// The planner builds one step profile per candidate shape whatever its engine
    /// (`search::train_options`), which holds only while every engine runs the same options.
    #[test]
    fn every_export_engine_runs_the_same_training_options() {
        use moai_ir::train::{OptimizerKind, PrecisionPolicy, RecomputePolicy};
        for precision in [
            PrecisionPolicy::AmpBf16,
            PrecisionPolicy::Bf16,
            PrecisionPolicy::Fp32,
        ] {
            let of =
                |s: Stack| s.train_options(precision, OptimizerKind::AdamW, RecomputePolicy::Full);
            let first = of(ALL_EXPORT_ENGINES[0]);
            for engine in ALL_EXPORT_ENGINES {
                assert_eq!(of(engine), first, "{engine} {precision}");
            }
            // Eager autocast is no engine, and runs other options under amp-bf16.
            if precision == PrecisionPolicy::AmpBf16 {
                assert_ne!(
                    of(Stack::Eager).reads_weight_copies(),
                    first.reads_weight_copies()
                );
            }
        }
    }

    pub(crate) fn sample() -> (PlanConfig, ExportContext) {
        (
            PlanConfig::of_config(
                &ParallelConfig {
                    dp: 4,
                    tp: 2,
                    pp: 4,
                    num_micro_batches: 64,
                    recompute: Recompute::Full,
                    distribute_optimizer: true,
                    sequence_parallel: true,
                    schedule: Schedule::Interleaved(2),
                    stages: (0..8).map(|i| (i * 5, i * 5 + 4)).collect(),
                    ..Default::default()
                },
                40,
            ),
            ExportContext {
                layers: 40,
                hidden: 5120,
                heads: 40,
                kv_heads: 8,
                ffn: 13824,
                vocab: 32000,
                tied_embeddings: false,
                settings: ModelSettings {
                    llama_style: true,
                    activation: Activation::Swiglu,
                    qkv_bias: false,
                    out_bias: false,
                    mlp_bias: false,
                    rope_theta: Some(10000.0),
                    rope_scaling: None,
                    norm_eps: Some(1e-5),
                    max_positions: Some(4096),
                    head_dim: 128,
                },
                global_batch: 256,
                seq: 1024,
                precision: "amp-bf16".into(),
                optimizer: "adamw".into(),
                devices: 32,
                devices_per_server: 8,
                moe: None,
                mla: None,
                qk_norm: false,
            },
        )
    }

    #[test]
    fn megatron_args_follow_the_plan() {
        let (p, cx) = sample();
        let line = megatron_command_line(&p, &cx).unwrap();
        for want in [
            "--tensor-model-parallel-size 2",
            "--pipeline-model-parallel-size 4",
            "--micro-batch-size 1",
            "--global-batch-size 256",
            "--recompute-granularity full",
            "--sequence-parallel",
            "--use-distributed-optimizer",
            "--num-layers-per-virtual-pipeline-stage 5",
            "--num-query-groups 8",
            "--rotary-base 10000",
            "--norm-epsilon 1e-5",
        ] {
            assert!(line.contains(want), "missing `{want}` in {line}");
        }
    }

    #[test]
    fn uneven_stages_use_megatrons_flags() {
        let (mut p, mut cx) = sample();
        cx.layers = 32;
        p.pp = 3;
        p.dp = 4;
        p.tp = 2;
        cx.devices = 24;
        p.schedule = "1f1b".into();
        p.stages = [[0, 10], [11, 21], [22, 31]]
            .into_iter()
            .map(|layers| StageInfo { layers })
            .collect();
        let line = megatron_command_line(&p, &cx).unwrap();
        assert!(
            line.contains("--decoder-last-pipeline-num-layers 10"),
            "{line}"
        );
        assert!(
            !line.contains("--decoder-first-pipeline-num-layers"),
            "{line}"
        );
        // 9/9/8/8 has unequal middle stages: an explicit layout.
        p.pp = 4;
        p.dp = 3;
        cx.layers = 34;
        p.stages = [[0, 8], [9, 17], [18, 25], [26, 33]]
            .into_iter()
            .map(|layers| StageInfo { layers })
            .collect();
        let line = megatron_command_line(&p, &cx).unwrap();
        assert!(
            line.contains("--pipeline-model-parallel-layout 'Et*9|t*9|t*8|t*8L'"),
            "{line}"
        );
    }

    #[test]
    fn zero3_goes_to_fsdp_flags_and_deepspeed_refuses_tp() {
        let (mut p, cx) = sample();
        p.distribute_param = true;
        p.pp = 1;
        p.dp = 16;
        p.schedule = "1f1b".into();
        p.stages = vec![StageInfo { layers: [0, 39] }];
        let line = megatron_command_line(&p, &cx).unwrap();
        assert!(line.contains("--use-megatron-fsdp"), "{line}");
        assert!(line.contains("--data-parallel-sharding-strategy optim_grads_params"));
        let e = deepspeed_config(&p, &cx).unwrap_err();
        assert!(e.contains("no tensor parallelism"), "{e}");
        p.tp = 1;
        p.sequence_parallel = false;
        p.dp = 32;
        assert_eq!(
            deepspeed_config(&p, &cx).unwrap()["zero_optimization"]["stage"],
            3
        );
    }

    #[test]
    fn zero_bubble_and_per_stage_recompute_are_refused_in_one_line() {
        let (mut p, cx) = sample();
        for (sched, name) in [
            ("zb-h1", "pipeline_parallel_schedule_csv"),
            ("zbv", "ZBVZeroBubble"),
        ] {
            p.schedule = sched.into();
            let e = megatron_args(&p, &cx).unwrap_err();
            assert!(
                e.contains("no zero-bubble pipeline schedule") && e.contains(name),
                "{e}"
            );
            assert!(!e.contains('\n'));
        }
        let (mut p, cx) = sample();
        p.recompute = Recompute::Full;
        p.stage_recompute = vec![
            Recompute::Full,
            Recompute::None,
            Recompute::None,
            Recompute::None,
        ];
        let e = megatron_args(&p, &cx).unwrap_err();
        assert!(e.contains("per-stage recomputation mix"), "{e}");
        // A uniform list is the uniform policy.
        p.stage_recompute = vec![Recompute::Full; 4];
        assert!(megatron_args(&p, &cx).is_ok());
        // torchtitan's per-op selective checkpointing is torchtitan's alone.
        p.stage_recompute.clear();
        p.recompute = Recompute::SelectiveOp;
        let e = megatron_args(&p, &cx).unwrap_err();
        assert!(e.contains("per-op selective") && !e.contains('\n'), "{e}");
        // Without --engine, a zero-bubble candidate is costed on the stack of its 1F1B twin; with
        // --engine megatron it is dropped.
        let cluster = Cluster::new(moai_costmodel::Gpu::H100, 32).unwrap();
        let c = ParallelConfig {
            dp: 8,
            pp: 4,
            num_micro_batches: 8,
            schedule: Schedule::ZeroBubbleH1,
            ..ParallelConfig::default()
        };
        assert_eq!(
            assign_engine(None, c.clone(), &cluster).unwrap().stack,
            Stack::Megatron
        );
        let e = assign_engine(Some(Stack::Megatron), c, &cluster).unwrap_err();
        assert!(
            e.starts_with("--engine megatron: Megatron-LM has no zero-bubble"),
            "{e}"
        );
    }

    #[test]
    fn partial_servers_start_exactly_the_plans_ranks() {
        let (_, mut cx) = sample();
        cx.devices = 12;
        assert_eq!(cx.servers(), 2);
        assert_eq!((cx.procs_on(0), cx.procs_on(1)), (8, 4));
        // A plan whose ranks are not the cluster's devices is not exported.
        let (mut p, cx) = sample();
        p.dp = 5;
        let e = megatron_args(&p, &cx).unwrap_err();
        assert!(e.contains("does not equal the 32 devices"), "{e}");
        p.pp = u64::MAX;
        assert!(deepspeed_config(&p, &cx).is_err());
    }
}
