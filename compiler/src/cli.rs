//! Command-line arguments of `moai-compile` (clap derive) and their meaning: each argument group turns
//! itself into the library's types (`ClusterArgs::resolve`, `JobArgs::to_request`,
//! `ConfigArgs::to_constraints`), and `crate::commands` runs each subcommand. The binary only parses,
//! sets up logging and Ctrl-C, dispatches and prints errors.

use crate::config::{EmitKind, ZeroStage};
use crate::error::{PlanError, Result};
use crate::request::{ActivationOffload, Constraints, PlanRequest};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// moai-compile: find the fastest parallel training plan that fits, predict its step time and memory,
/// compile its stages, and export launch configs.
#[derive(Debug, Parser)]
#[command(name = "moai-compile", version, about, long_about = None,
    after_help = "MODEL is an .onnx file, a Hugging Face config.json or model directory, or a spec such as\n  \
llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=11008,vocab=32000\n  \
gpt:layers=48,hidden=6144,heads=64,vocab=51200\n\
`moai-compile MODEL ...` without a subcommand runs `plan`.")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log verbosity (error, warn, info, debug, trace); logs go to stderr.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Search the plan space and print the best plan (the default command).
    Plan(PlanArgs),
    /// Predict step time, throughput and memory of one configuration.
    Estimate(EstimateArgs),
    /// Summarize a model: parameters, layers, sizes, FLOPs per token, op histograms.
    Inspect(InspectArgs),
    /// List the flavor catalog.
    Flavors(FlavorsArgs),
    /// Compare predictions against measurements in a JSON-lines truth file.
    Validate(ValidateArgs),
    /// Best plan per flavor over a range of flavors, with scaling efficiency.
    Sweep(SweepArgs),
    /// Switch the current flavor (the virtual accelerator later commands use without --flavor).
    Use(UseArgs),
    /// The virtual accelerator and its devices: memory and utilization, predicted for a plan.
    Smi(SmiArgs),
}

/// Where the job runs: a flavor, or a GPU kind and device count.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Virtual accelerator size, e.g. 4xLarge.2048GB (see `moai-compile flavors`). Without --flavor
    /// and --gpu/--devices: MOAI_FLAVOR, else the current flavor (`moai-compile use`), else 4xLarge.2048GB.
    #[arg(long)]
    pub flavor: Option<String>,
    /// GPU kind (the list is `Gpu::NAMES`; default mi250 with --flavor).
    #[arg(long, help = gpu_help())]
    pub gpu: Option<String>,
    /// Number of devices (with --gpu, instead of --flavor).
    #[arg(long)]
    pub devices: Option<u64>,
    /// JSON file defining the cluster: gpu, devices, devices_per_server, memory_per_device_bytes,
    /// flavor and link bandwidths/latencies (README: "Cluster files"); --flavor/--gpu/--devices must
    /// agree with it.
    #[arg(long)]
    pub cluster_file: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster these flags name, or the current flavor (`MOAI_FLAVOR`, the config file of
    /// `moai-compile use`, the built-in default) when they name none; logs where it came from.
    pub fn resolve(&self) -> crate::current::Result<moai_costmodel::Cluster> {
        crate::current::resolve_cluster(self, &crate::current::Env::from_process())
    }
}

/// Training job shape shared by plan and estimate.
#[derive(Debug, Args, Clone)]
pub struct JobArgs {
    /// Global batch size in sequences (1 to 2^40; batch × sequence length at most 2^50 tokens).
    #[arg(long, default_value_t = 256)]
    pub batch_size: u64,
    /// Sequence length in tokens (1 to 2^24).
    #[arg(long, default_value_t = 1024)]
    pub seq_len: u64,
    /// Precision: amp-bf16 (fp32 master weights, gradients and optimizer state; the step computes on
    /// bf16 copies of the weights, as every export engine runs it), bf16, fp32, or fp8 (amp-bf16 with
    /// FP8 GEMMs in the decoder layers' linears, per-tensor scaling as Transformer Engine runs it; GPUs
    /// with FP8 matrix units only: h100, h200, b200, mi300x, mi325x, mi355x). The search plans fp8
    /// only when asked for it here.
    #[arg(long, default_value = "amp-bf16")]
    pub precision: String,
    /// Optimizer: adamw, sgd.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Print one JSON object on stdout (logs stay on stderr).
    #[arg(long)]
    pub json: bool,
    /// Mixture-of-experts routing imbalance: tokens at the busiest expert over the average (1 to 64;
    /// default 1.25, the capacity factor Switch Transformers train with).
    #[arg(long)]
    pub moe_imbalance: Option<f64>,
}

impl JobArgs {
    /// The GEMM precision `--precision` asks for: fp8 for `fp8`, bf16 for every other policy.
    pub fn matmul_precision(&self) -> moai_costmodel::MatmulPrecision {
        if self.precision.trim().eq_ignore_ascii_case("fp8") {
            moai_costmodel::MatmulPrecision::Fp8
        } else {
            moai_costmodel::MatmulPrecision::Bf16
        }
    }

    /// The planning request of these flags (checked: batch, sequence length, precision, optimizer).
    /// `--precision fp8` is the amp-bf16 policy with [`moai_costmodel::MatmulPrecision::Fp8`] GEMMs
    /// (in the request's constraints); whether the GPU runs it is checked against the cluster
    /// ([`PlanRequest::validate_for`]).
    pub fn to_request(&self) -> Result<PlanRequest> {
        let mut r = PlanRequest::new(self.batch_size, self.seq_len);
        r.constraints.precision = self.matmul_precision();
        let policy = if r.constraints.precision == moai_costmodel::MatmulPrecision::Fp8 {
            "amp-bf16"
        } else {
            self.precision.as_str()
        };
        r.precision = policy.parse().map_err(|e| {
            PlanError::InvalidArgument(format!(
                "--precision {}: {e} (or fp8: amp-bf16 with FP8 GEMMs)",
                self.precision
            ))
        })?;
        r.optimizer = self.optimizer.parse().map_err(|e| {
            PlanError::InvalidArgument(format!("--optimizer {}: {e}", self.optimizer))
        })?;
        r.moe_imbalance = self.moe_imbalance;
        r.validate()?;
        Ok(r)
    }
}

/// Configuration flags: in `estimate` they define the configuration, in `plan` they constrain the search.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// Data-parallel degree.
    #[arg(long)]
    pub dp: Option<u64>,
    /// Tensor-parallel degree.
    #[arg(long)]
    pub tp: Option<u64>,
    /// Pipeline-parallel degree (number of stages).
    #[arg(long)]
    pub pp: Option<u64>,
    /// Context-parallel degree: each sequence split over N ranks (2·N must divide --seq-len).
    #[arg(long)]
    pub cp: Option<u64>,
    /// Context-parallel communication: p2p (ring attention) or a2a (Ulysses all-to-all).
    #[arg(long, value_name = "p2p|a2a")]
    pub cp_comm: Option<String>,
    /// Micro-batch size (sequences per device per micro-batch).
    #[arg(long)]
    pub micro_batch_size: Option<u64>,
    /// Recomputation: none, selective (Megatron-LM's: the attention core), selective-op (torchtitan's
    /// per-op policy: every second matmul and the memory-bound ops of each layer; torchtitan only),
    /// full (plan: a comma list of allowed values; with --engine torchtitan the default list has
    /// selective-op instead of selective).
    #[arg(long)]
    pub recompute: Option<String>,
    /// ZeRO stage: 0 (none), 1 (optimizer state sharded), 3 (parameters, gradients, optimizer sharded).
    #[arg(long)]
    pub zero: Option<ZeroStage>,
    /// Sequence parallelism (with tp > 1).
    #[arg(long)]
    pub sequence_parallel: bool,
    /// Pipeline schedule: gpipe, 1f1b, interleaved:V, zb-h1, zbv (plan: a comma list; the zero-bubble
    /// schedules zb-h1 and zbv are searched only when listed, and no export engine runs them yet).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Offload to host memory, a comma list: `optimizer` (ZeRO-Offload: optimizer state and master
    /// weights on the host, the step on the CPU; Megatron-LM with ZeRO-1 or DeepSpeed; plan: every
    /// candidate offloads), `activations` (the saved activations of every decoder layer of a stage but
    /// the last; plan: tried beside no offload) or `activations=N` (the first N layers of each
    /// pipeline stage; plan: every candidate). Activation offload runs on Megatron-LM
    /// (--cpu-offloading-num-layers: pp 1, no recomputation). The search does not try offload unless
    /// asked.
    #[arg(long, value_delimiter = ',')]
    pub offload: Vec<String>,
    /// Recomputation per pipeline stage: a comma list with one of none, selective, selective-op, full per stage
    /// (e.g. full,full,none,none), or `mixed` (plan: also try full recomputation on the first k
    /// stages of pipelined candidates, which hold the most in-flight micro-batches). No export engine
    /// runs a per-stage mix yet.
    #[arg(long)]
    pub stage_recompute: Option<String>,
    /// Engine the plan runs on and is costed for: megatron, deepspeed, fsdp or torchtitan (costed as
    /// the FSDP stack). plan: only what that engine runs is searched; without it each candidate goes
    /// to the first engine that runs it (Megatron-LM, then DeepSpeed, then FSDP; torchtitan only when
    /// named) and the output names the engine.
    #[arg(long)]
    pub engine: Option<String>,
    /// Overlap switches, a comma list of SWITCH=on|off (or all=on|off): grad-reduce (Megatron-LM
    /// --overlap-grad-reduce, DeepSpeed overlap_comm), param-gather (Megatron-LM
    /// --overlap-param-gather, DeepSpeed ZeRO-3 prefetch), tp-comm (Megatron-LM --tp-comm-overlap,
    /// with sequence parallelism). Default: on where the engine overlaps; off is run only by an engine
    /// with the switch. plan: fixes them for every candidate.
    #[arg(long)]
    pub overlap: Option<String>,
    /// Expert-parallel degree (mixture-of-experts models): each MoE layer's routed experts spread over
    /// this many data-parallel ranks (Megatron-LM's --expert-model-parallel-size).
    #[arg(long)]
    pub ep: Option<u64>,
    /// Expert tensor-parallel degree: each routed expert's width split over this many ranks
    /// (Megatron-LM's --expert-tensor-parallel-size).
    #[arg(long)]
    pub expert_tp: Option<u64>,
    /// Hybrid sharding (HSDP): shard ZeRO-1/ZeRO-3 state over groups of N data-parallel ranks and
    /// replicate it over dp/N groups (N must divide dp; the plan must shard). plan: fixes it for every
    /// candidate, which then shards; without it the search tries full sharding and whole-server groups.
    #[arg(long, value_name = "N")]
    pub dp_shard: Option<u64>,
}

impl ConfigArgs {
    /// The constraints these flags set (each degree at least 1 and within 32 bits; lists parsed).
    pub fn to_constraints(&self) -> Result<Constraints> {
        let to_u32 = |name: &str, v: Option<u64>| -> Result<Option<u32>> {
            match v {
                None => Ok(None),
                Some(0) => Err(PlanError::InvalidArgument(format!(
                    "--{name} 0: must be at least 1"
                ))),
                Some(x) => u32::try_from(x)
                    .map(Some)
                    .map_err(|_| PlanError::InvalidArgument(format!("--{name} {x}: too large"))),
            }
        };
        let (offload_optimizer, offload_activations) = parse_offload(&self.offload)?;
        Ok(Constraints {
            dp: to_u32("dp", self.dp)?,
            tp: to_u32("tp", self.tp)?,
            pp: to_u32("pp", self.pp)?,
            cp: to_u32("cp", self.cp)?,
            cp_comm: self
                .cp_comm
                .as_deref()
                .map(|s| {
                    s.parse::<moai_costmodel::CpComm>().map_err(|_| {
                        PlanError::InvalidArgument(format!("--cp-comm {s}: expected p2p or a2a"))
                    })
                })
                .transpose()?,
            micro_batch_size: to_u32("micro-batch-size", self.micro_batch_size)?,
            recompute: self
                .recompute
                .as_deref()
                .map(Constraints::parse_recompute_list)
                .transpose()?
                .unwrap_or_default(),
            zero: self.zero,
            sequence_parallel: self.sequence_parallel.then_some(true),
            schedules: self
                .schedule
                .as_deref()
                .map(Constraints::parse_schedule_list)
                .transpose()?
                .unwrap_or_default(),
            engine: self.engine.as_deref().map(parse_engine).transpose()?,
            // `--precision` is a job flag (JobArgs): the commands copy it in.
            precision: Default::default(),
            offload_optimizer,
            offload_activations,
            stage_recompute: match self.stage_recompute.as_deref().map(str::trim) {
                None | Some("mixed") => Vec::new(),
                Some(list) => Constraints::parse_recompute_list(list).map_err(|e| {
                    PlanError::InvalidArgument(
                        e.to_string().replace("--recompute", "--stage-recompute"),
                    )
                })?,
            },
            stage_recompute_mixes: self.stage_recompute.as_deref().map(str::trim) == Some("mixed"),
            overlap: self
                .overlap
                .as_deref()
                .map(Constraints::parse_overlap_list)
                .transpose()?
                .unwrap_or_default(),
            ep: to_u32("ep", self.ep)?,
            expert_tp: to_u32("expert-tp", self.expert_tp)?,
            dp_shard: to_u32("dp-shard", self.dp_shard)?,
        })
    }
}

/// `--offload LIST`: whether the optimizer is offloaded, and the activation offload
/// (`activations` or `activations=N`, N at least 1); anything else is refused in one line.
/// `--gpu`'s help: the kinds from the one list of them ([`moai_costmodel::Gpu::NAMES`]).
fn gpu_help() -> String {
    format!(
        "GPU kind: {} (default mi250 with --flavor; flavors are defined for mi250, mi210 and mi300x)",
        moai_costmodel::Gpu::NAMES
    )
}

fn parse_offload(list: &[String]) -> Result<(bool, ActivationOffload)> {
    let mut optimizer = false;
    let mut activations = ActivationOffload::Off;
    for item in list {
        match item.trim() {
            "optimizer" => optimizer = true,
            "activations" => activations = ActivationOffload::Auto,
            other => match other.strip_prefix("activations=") {
                Some(n) => {
                    let n = n.trim();
                    match n.parse::<u32>() {
                        Ok(0) => {
                            return Err(PlanError::InvalidArgument(
                                "--offload activations=0: offloads no layer; leave activations out for no activation offload".into(),
                            ));
                        }
                        Ok(k) => activations = ActivationOffload::Layers(k),
                        Err(_) => {
                            return Err(PlanError::InvalidArgument(format!(
                                "--offload activations={n}: expected a number of decoder layers per pipeline stage (at least 1)"
                            )));
                        }
                    }
                }
                None => {
                    return Err(PlanError::InvalidArgument(format!(
                        "--offload {other}: expected optimizer, activations or activations=N"
                    )));
                }
            },
        }
    }
    Ok((optimizer, activations))
}

/// `--engine`: an engine plans are exported to (eager is a cost-model stack, not an export engine).
fn parse_engine(s: &str) -> Result<moai_costmodel::Stack> {
    match s.parse::<moai_costmodel::Stack>() {
        Ok(moai_costmodel::Stack::Eager) | Err(_) => Err(PlanError::InvalidArgument(format!(
            "--engine {s}: expected megatron, deepspeed, fsdp or torchtitan"
        ))),
        Ok(e) => Ok(e),
    }
}

/// A `--gpu` flag.
pub fn parse_gpu(s: &str) -> Result<moai_costmodel::Gpu> {
    s.parse::<moai_costmodel::Gpu>()
        .map_err(|e| PlanError::InvalidArgument(format!("--gpu: {e}")))
}

/// `plan` arguments.
#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// Model: .onnx, config.json, Hugging Face model directory or spec string.
    pub model: String,
    /// Where the job runs.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Batch, sequence, precision, optimizer.
    #[command(flatten)]
    pub job: JobArgs,
    /// Configuration flags that fix dimensions of the search.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output directory for plan.json and the emitted artifacts.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Artifacts to write into --out: plan,report,mlir,hsaco,ptx,megatron,deepspeed,fsdp,torchtitan.
    ///
    /// megatron, deepspeed, fsdp and torchtitan (a JobConfig TOML) are engine exports (arguments or config plus a torchrun launch
    /// script per server starting exactly the plan's ranks); an engine that does not run the plan as
    /// planned is not written, with one line (stderr and plan.json's "exports") saying why and which
    /// engine does.
    ///
    /// mlir, hsaco (AMD GPUs: gfx90a for mi250/mi210, gfx942 for mi300x) and ptx (NVIDIA: sm_80 for a100,
    /// sm_90 for h100) compile the chosen plan's code: tensor-parallel rank 0's forward, backward and
    /// optimizer programs per pipeline stage, as out/stage<i>/{forward,backward,optimizer}.{mlir,hsaco,ptx};
    /// hsaco/ptx also write the bundle out/plan.moai (plan, kernels, launch metadata). Kernels compute in
    /// --precision. Lowering llama2-13b's
    /// default plan (40 layers in one stage) takes about 40 s on 2 cores; progress and timings are logged
    /// per program.
    #[arg(long, value_delimiter = ',')]
    pub emit: Vec<EmitKind>,
    /// Worker threads for the search and for lowering --emit hsaco/ptx programs (default: all cores; at
    /// most cores × 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many seconds (at most 604800) and return the best plan found so far. Counted from
    /// the start of the search, it covers every phase: profiles, candidate compilation, costing and
    /// --emit code generation (programs not started are reported as not written). Ctrl-C does the same.
    #[arg(long)]
    pub time_budget: Option<f64>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Compile and cost every candidate instead of skipping those a memory or step-time lower bound
    /// rules out (same plan, slower; for checking the bounds).
    #[arg(long)]
    pub exhaustive: bool,
}

/// `estimate` arguments. A configuration whose predicted peak memory exceeds the usable device memory
/// still exits 0: the JSON says `"fits": false`, and the text says by how many GiB and the cheapest
/// change that fits (the planner's search under the flags given).
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "Exit status 0 also when the configuration does not fit in memory: read \"fits\" in --json, or the DOES NOT FIT line with the overflow and the cheapest change that fits."
)]
pub struct EstimateArgs {
    /// Model: .onnx, config.json, Hugging Face model directory or spec string.
    pub model: String,
    /// Where the job runs.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Batch, sequence, precision, optimizer.
    #[command(flatten)]
    pub job: JobArgs,
    /// Configuration flags that fix dimensions of the search.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `inspect` arguments.
#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    /// Model: .onnx, config.json, Hugging Face model directory or spec string.
    pub model: String,
    /// Sequence length for FLOPs per token.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `flavors` arguments.
#[derive(Debug, Args, Clone)]
pub struct FlavorsArgs {
    /// Only this GPU kind.
    #[arg(long)]
    pub gpu: Option<String>,
}

/// `use` arguments.
#[derive(Debug, Args, Clone)]
pub struct UseArgs {
    /// Flavor to switch to. Without it: on a terminal, a numbered list to choose from; otherwise the
    /// current flavor and the list.
    pub flavor: Option<String>,
    /// GPU kind the flavor maps to (mi250, mi210, mi300x); kept until changed.
    #[arg(long)]
    pub gpu: Option<String>,
}

/// `smi` arguments.
#[derive(Debug, Args, Clone)]
pub struct SmiArgs {
    /// A plan.json or the --out directory holding it; without it, the current flavor before any job.
    pub plan: Option<PathBuf>,
    /// Per device: weights, gradients, optimizer state, activations and transients.
    #[arg(long)]
    pub breakdown: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `validate` arguments.
#[derive(Debug, Args, Clone)]
pub struct ValidateArgs {
    /// JSON-lines truth files (one measured run per line).
    #[arg(required = true, num_args = 1..)]
    pub truth: Vec<PathBuf>,
    /// Leave one model out: predict each model's rows with time coefficients refitted on every
    /// other model's rows (default: in-sample, the committed coefficients).
    #[arg(long)]
    pub cross_validate: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `sweep` arguments.
#[derive(Debug, Args, Clone)]
pub struct SweepArgs {
    /// Model: .onnx, config.json, Hugging Face model directory or spec string.
    pub model: String,
    /// Flavors: a range `A..B` of the catalog or a comma list.
    #[arg(long)]
    pub flavors: String,
    /// GPU kind.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Batch, sequence, precision, optimizer.
    #[command(flatten)]
    pub job: JobArgs,
    /// Write an SVG plot of throughput vs devices here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many seconds (at most 604800) for the whole sweep: each flavor's search gets the
    /// time left divided by the flavors left; flavors not reached say so. Ctrl-C does the same.
    #[arg(long)]
    pub time_budget: Option<f64>,
}

/// Inserts the implicit `plan` subcommand: `moai-compile MODEL ...` means `moai-compile plan MODEL ...`.
pub fn with_default_subcommand(mut args: Vec<String>) -> Vec<String> {
    const SUBS: &[&str] = &[
        "plan", "estimate", "inspect", "flavors", "validate", "sweep", "use", "smi", "help",
    ];
    // The first argument that is not a global option decides.
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--log" {
            i += 2;
            continue;
        }
        if a.starts_with("--log=") {
            i += 1;
            continue;
        }
        break;
    }
    if let Some(first) = args.get(i) {
        let is_flag = first.starts_with('-');
        if !is_flag && !SUBS.contains(&first.as_str()) {
            args.insert(i, "plan".to_string());
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn plan_is_the_default_subcommand() {
        assert_eq!(
            with_default_subcommand(v(&["m", "x.onnx", "--flavor", "A"]))[1],
            "plan"
        );
        assert_eq!(
            with_default_subcommand(v(&["m", "inspect", "x.onnx"]))[1],
            "inspect"
        );
        assert_eq!(with_default_subcommand(v(&["m", "--help"]))[1], "--help");
        assert_eq!(
            with_default_subcommand(v(&["m", "--log", "debug", "x.onnx"]))[3],
            "plan"
        );
    }

    #[test]
    fn flags_become_typed_constraints_and_emits() {
        let cli = Cli::try_parse_from(v(&[
            "m",
            "plan",
            "x.onnx",
            "--zero",
            "3",
            "--tp",
            "2",
            "--recompute",
            "none,full",
            "--emit",
            "plan,megatron",
            "--emit",
            "report",
        ]))
        .unwrap();
        let Command::Plan(a) = cli.command else {
            panic!("plan expected")
        };
        assert_eq!(
            a.emit,
            vec![EmitKind::Plan, EmitKind::Megatron, EmitKind::Report]
        );
        let c = a.config.to_constraints().unwrap();
        assert_eq!(c.zero, Some(ZeroStage::Zero3));
        assert_eq!(c.tp, Some(2));
        use moai_ir::train::RecomputePolicy;
        assert_eq!(
            c.recompute,
            vec![RecomputePolicy::None, RecomputePolicy::Full]
        );
        for bad in [["--zero", "2"], ["--emit", "pdf"]] {
            let mut args = v(&["m", "plan", "x.onnx"]);
            args.extend(v(&bad));
            let e = Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(e.contains(bad[1]), "{e}");
        }
        let tp0 = ConfigArgs {
            tp: Some(0),
            ..ConfigArgs::default()
        };
        assert_eq!(
            tp0.to_constraints().unwrap_err().to_string(),
            "--tp 0: must be at least 1"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
