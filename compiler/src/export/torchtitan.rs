//! The torchtitan export: a JobConfig TOML (`torchtitan.toml`) and a torchrun launch script per server
//! running `torchtitan.train` with it. The keys, choices and rules come from torchtitan's own source at
//! the commit recorded in `compiler/data/torchtitan_config.txt` (the last one that reads a TOML); a plan
//! torchtitan cannot run exactly is refused in one line ([`engine_runs`](super::engine_runs) for the
//! plan's dimensions, [`torchtitan_toml`] for the model and job).
//!
//! Mapping (moai → torchtitan):
//! - dp under ZeRO-3 → FSDP2 (`data_parallel_shard_degree = dp`, `fsdp_reshard_after_forward =
//!   "always"`: weights gathered before every forward and again before every backward, as costed);
//!   dp under ZeRO-0 → DDP (`data_parallel_replicate_degree = dp`), which torchtitan runs only alone;
//!   hybrid sharding (`dp_shard`) → HSDP (`data_parallel_shard_degree = dp_shard`,
//!   `data_parallel_replicate_degree = dp / dp_shard`).
//! - tp → `tensor_parallel_degree` (torchtitan's TP is always sequence parallel); no async TP (it needs
//!   `torch.compile`, which changes the kernels the cost model assumes, so `[compile] enable = false`).
//! - pp → `pipeline_parallel_degree`, the schedule by [`schedule_name`], the plan's exact stages as
//!   `module_fqns_per_model_part`, `pipeline_parallel_microbatch_size` = the micro-batch size.
//! - recomputation none / full → `[activation_checkpoint] mode`; moai's `selective-op` (torchtitan's
//!   per-op policy) → `mode = "selective"`, `selective_ac_option = "op"`; moai's selective
//!   recomputation (the attention core) is not torchtitan's selective AC (per-op or every-Nth-layer),
//!   so it is refused.
//! - cp and float8: see [`context_parallel_degree`] and [`float8_section`].
//! - The model is one of torchtitan's registered flavors (`[model] name, flavor`): torchtitan builds
//!   models from its flavor table, not from shapes, so a model matching none is refused. Its llama3
//!   flavors always apply Llama 3.1 RoPE scaling (`RoPEScalingArgs` defaults, not a TOML key): a model
//!   with that scaling (a Llama 3.1 config) runs exactly, one with another scaling (Llama 3.2's factor
//!   32, YaRN) is refused, and a Llama 3.0 model (no scaling) trains with other rotary frequencies at
//!   the same cost; the TOML says so.

use super::{ExportContext, PlanDims, engine_runs};
use crate::plan::PlanConfig;
use moai_costmodel::{MatmulPrecision, Recompute, Schedule, Stack};
use std::fmt::Write as _;

/// torchtitan's extracted names and rules (keys, schedules, flavors, rules).
pub const TORCHTITAN_CONFIG: &str = include_str!("../../data/torchtitan_config.txt");

/// A torchtitan model flavor from [`TORCHTITAN_CONFIG`].
#[derive(Clone, Debug, PartialEq)]
pub struct Flavor {
    /// `model.name` (`llama3`).
    pub name: String,
    /// `model.flavor` (`8B`).
    pub flavor: String,
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
    /// Vocabulary.
    pub vocab: u64,
    /// Rotary base.
    pub rope_theta: f64,
}

/// The flavors torchtitan registers (the `flavor` lines of [`TORCHTITAN_CONFIG`]).
pub fn flavors() -> Vec<Flavor> {
    TORCHTITAN_CONFIG
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("flavor ")?.split_whitespace().collect();
            if f.len() != 9 {
                return None;
            }
            Some(Flavor {
                name: f[0].into(),
                flavor: f[1].into(),
                layers: f[2].parse().ok()?,
                hidden: f[3].parse().ok()?,
                heads: f[4].parse().ok()?,
                kv_heads: f[5].parse().ok()?,
                ffn: f[6].parse().ok()?,
                vocab: f[7].parse().ok()?,
                rope_theta: f[8].parse().ok()?,
            })
        })
        .collect()
}

/// The torchtitan name of a pipeline schedule: the one mapping from moai's schedules onto
/// `parallelism.pipeline_parallel_schedule`. Extend it here when moai gains a schedule torchtitan
/// runs: `ZeroBubbleH1` → `InterleavedZeroBubble` (with two or more stages per rank) and `ZeroBubbleV`
/// → `ZBVZeroBubble` (exactly two, V-shaped) once those `Schedule` variants exist.
pub fn schedule_name(s: Schedule) -> Result<&'static str, String> {
    match s {
        Schedule::OneFOneB => Ok("1F1B"),
        Schedule::Gpipe => Ok("GPipe"),
        Schedule::Interleaved(v) if v >= 2 => Ok("Interleaved1F1B"),
        Schedule::Interleaved(v) => Err(format!(
            "torchtitan's looped schedule (Interleaved1F1B) needs at least 2 stages per rank, the plan has interleaved:{v}"
        )),
        // Two chunks per rank in a V, as moai's zbv simulation places them.
        Schedule::ZeroBubbleV => Ok("ZBVZeroBubble"),
        // PyTorch's InterleavedZeroBubble is a multi-stage-per-rank schedule; no built-in schedule
        // is ZB-H1's single chunk per rank.
        Schedule::ZeroBubbleH1 => Err(
            "torchtitan has no built-in single-chunk zero-bubble schedule (zb-h1); its InterleavedZeroBubble needs 2 or more stages per rank and ZBVZeroBubble runs zbv".into(),
        ),
    }
}

/// `parallelism.context_parallel_degree`: the ONE place the plan's context parallelism enters the
/// torchtitan export. torchtitan's CP is ring attention over `cp` ranks with head-tail load balancing
/// (seq_len divisible by 2·cp·tp, checked in [`torchtitan_toml`] through [`seq_divisor`]); moai's `p2p`
/// ring is its `context_parallel_rotate_method = "alltoall"` (each step passes the KV chunk on), and
/// all-to-all (Ulysses, heads split) has no torchtitan counterpart: refused.
pub fn context_parallel_degree(plan: &PlanConfig) -> Result<u64, String> {
    runs_context_parallelism(plan.cp, plan.cp_comm)?;
    Ok(plan.cp.max(1))
}

/// Whether torchtitan runs context parallelism of `cp` ranks communicating by `comm`: ring attention
/// only (see [`context_parallel_degree`]); the error is one line.
pub fn runs_context_parallelism(cp: u64, comm: moai_costmodel::CpComm) -> Result<(), String> {
    if cp > 1 && comm == moai_costmodel::CpComm::A2a {
        return Err("torchtitan's context parallelism is ring attention (KV rotated between ranks); all-to-all (Ulysses) context parallelism runs on Megatron-LM".into());
    }
    Ok(())
}

/// What `seq_len` must divide by (torchtitan's `ParallelDims.seq_len_divisor`): tp, times 2·cp with
/// context parallelism (its head-tail load balancing).
pub fn seq_divisor(tp: u64, cp: u64) -> u64 {
    if cp > 1 {
        tp.saturating_mul(2).saturating_mul(cp)
    } else {
        tp
    }
}

/// The `[quantize.linear.float8]` section and `model.converters` entry for the plan's GEMM precision:
/// the ONE place FP8 enters the torchtitan export. A bf16 plan writes nothing. An fp8 plan (the decoder
/// layers' linears in FP8 with per-tensor scaling, the LM head and attention in bf16, as costed) gets
/// torchao's float8 linear converter (`quantize.linear.float8`, registered in
/// `components/quantization/float8.py` at the pinned commit) with the `tensorwise` recipe (dynamic
/// per-tensor scales) and the LM head (`output`) filtered out; FSDP's float8 all-gather stays off (the
/// recipe asserts it is off, and the cost model gathers bf16 weights).
pub fn float8_section(plan: &PlanConfig) -> Result<Option<(&'static str, String)>, String> {
    Ok(match plan.precision {
        MatmulPrecision::Bf16 => None,
        MatmulPrecision::Fp8 => Some((
            "quantize.linear.float8",
            "recipe_name = \"tensorwise\"\nfilter_fqns = [\"output\"]".to_string(),
        )),
    })
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The torchtitan flavor matching the model exactly (shapes, rotary base, architecture), or why none.
pub fn flavor_for(cx: &ExportContext) -> Result<Flavor, String> {
    let s = &cx.settings;
    if !s.llama_style
        || s.activation != super::Activation::Swiglu
        || s.qkv_bias
        || s.out_bias
        || s.mlp_bias
        || cx.tied_embeddings
    {
        return Err("torchtitan's llama3 is a bias-free Llama (RMSNorm, rotary, SwiGLU, untied output); this model is not".into());
    }
    if s.head_dim.checked_mul(cx.heads) != Some(cx.hidden) {
        return Err(format!(
            "torchtitan's llama3 takes head_dim = hidden / heads; this model's head_dim is {}",
            s.head_dim
        ));
    }
    let theta = s.rope_theta.ok_or(
        "the model's rotary base (rope_theta) is unknown (an ONNX graph records it only as a plain rotary inv_freq table); pass the model's config.json or its Hugging Face directory",
    )?;
    // precompute_freqs_cis always applies RoPEScalingArgs' Llama 3.1 scaling (factor 8, low 1,
    // high 4, 8192 positions): a model with exactly that scaling (or none, see the module doc) runs.
    match &s.rope_scaling {
        None => {}
        Some(moai_models::RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) if (
            *factor,
            *low_freq_factor,
            *high_freq_factor,
            *original_max_position_embeddings,
        ) == (8.0, 1.0, 4.0, 8192) => {}
        Some(r) => {
            return Err(format!(
                "torchtitan's llama3 flavors apply Llama 3.1 rotary scaling (factor 8, low_freq_factor 1, high_freq_factor 4, 8192 positions; RoPEScalingArgs, no TOML key), not this model's {}",
                match r {
                    moai_models::RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => format!(
                        "llama3 scaling (factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, {original_max_position_embeddings} positions)"
                    ),
                    moai_models::RopeScaling::Yarn { factor, .. } =>
                        format!("YaRN scaling (factor {factor})"),
                }
            ));
        }
    }
    if let Some(eps) = s.norm_eps
        && (eps - 1e-5).abs() > 1e-12
    {
        return Err(format!(
            "torchtitan's llama3 flavors use norm_eps 1e-5; this model's is {eps:e}"
        ));
    }
    let all = flavors();
    all.iter()
        .find(|f| {
            f.layers == cx.layers
                && f.hidden == cx.hidden
                && f.heads == cx.heads
                && f.kv_heads == cx.kv_heads
                && f.ffn == cx.ffn
                && f.vocab == cx.vocab
                && f.rope_theta == theta
        })
        .cloned()
        .ok_or_else(|| {
            let names: Vec<String> = all
                .iter()
                .map(|f| format!("{} {}", f.name, f.flavor))
                .collect();
            format!(
                "torchtitan builds models from its registered flavors ({}), and this model ({} layers, hidden {}, {} heads, {} KV heads, FFN {}, vocab {}, rope_theta {theta}) matches none",
                names.join(", "),
                cx.layers,
                cx.hidden,
                cx.heads,
                cx.kv_heads,
                cx.ffn,
                cx.vocab
            )
        })
}

/// The torchtitan JobConfig TOML for the plan, or one line saying why torchtitan cannot run it as
/// planned.
pub fn torchtitan_toml(plan: &PlanConfig, cx: &ExportContext) -> Result<String, String> {
    let d = PlanDims::of_plan(plan, cx)?;
    engine_runs(Stack::Torchtitan, &d)?;
    let flavor = flavor_for(cx)?;
    let cp = context_parallel_degree(plan)?;
    let (param_dtype, master) = match cx.precision.as_str() {
        "amp-bf16" => ("bfloat16", "float32"),
        "fp32" => ("float32", "float32"),
        "bf16" => {
            return Err("pure bf16 training is torchtitan's training.dtype = \"bfloat16\" with FSDP only; plan with --precision amp-bf16".into());
        }
        p => return Err(format!("precision {p} has no torchtitan setting")),
    };
    let fsdp = d.zero() == crate::config::ZeroStage::Zero3 && d.config.dp > 1;
    if param_dtype == "bfloat16" && !fsdp && (d.config.tp > 1 || d.config.pp > 1) {
        return Err(format!(
            "torchtitan runs mixed precision with tensor or pipeline parallelism only under FSDP (maybe_enable_amp); this plan has {} data parallelism, so it would train in fp32",
            if d.config.dp > 1 {
                "replicated (ZeRO-0)"
            } else {
                "no"
            }
        ));
    }
    let optimizer = match cx.optimizer.as_str() {
        "adamw" => "AdamW",
        o => {
            return Err(format!(
                "torchtitan's build_optimizers offers Adam and AdamW only; the plan uses {o}"
            ));
        }
    };
    let div = seq_divisor(u64::from(d.config.tp), cp);
    if div == 0 || !cx.seq.is_multiple_of(div) {
        return Err(format!(
            "torchtitan needs seq_len divisible by {div} (tp{}); --seq-len {} is not",
            if cp > 1 { " · 2 · cp" } else { "" },
            cx.seq
        ));
    }
    // Batch: with pp the local batch holds every micro-batch of the step (one accumulation step);
    // without, the local batch is one micro-batch and the rest is gradient accumulation.
    let local = if d.config.pp > 1 {
        plan.micro_batch_size.saturating_mul(plan.num_micro_batches)
    } else {
        plan.micro_batch_size
    };
    if local
        .saturating_mul(u64::from(d.config.dp))
        .saturating_mul(if d.config.pp > 1 {
            1
        } else {
            plan.num_micro_batches
        })
        != cx.global_batch
    {
        return Err(format!(
            "the plan's batch split (dp {} × micro-batch {} × {} micro-batches) is not the global batch {}",
            u64::from(d.config.dp),
            plan.micro_batch_size,
            plan.num_micro_batches,
            cx.global_batch
        ));
    }
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(
        w,
        "# moai plan for torchtitan (JobConfig TOML, torchtitan commit 238fa99): {} ranks, dp {} ({}), tp {}, pp {}{}.",
        cx.devices,
        u64::from(d.config.dp),
        if fsdp && d.config.dp_shard > 0 {
            "HSDP: FSDP2 shard groups replicated"
        } else if fsdp {
            "FSDP2"
        } else if d.config.dp > 1 {
            "DDP"
        } else {
            "none"
        },
        u64::from(d.config.tp),
        u64::from(d.config.pp),
        if d.config.pp > 1 {
            format!(", schedule {}", plan.schedule)
        } else {
            String::new()
        }
    );
    let rope_note = if cx.settings.rope_scaling.is_some() {
        "# torchtitan's llama3 flavors apply Llama 3.1 RoPE scaling (factor 8 over 8192 positions), as this model's config does.\n"
    } else {
        "# torchtitan's llama3 flavors always apply Llama 3.1 RoPE scaling (factor 8 over 8192 positions), which\n\
# this TOML cannot switch off: the rotary frequencies differ from a Llama 3.0 model's, the step's cost does not.\n"
    };
    let _ = writeln!(
        w,
        "# Set model.hf_assets_path (tokenizer) and training.dataset to yours; everything else is the plan.\n{rope_note}"
    );
    let _ = writeln!(
        w,
        "[job]\ndump_folder = \"./outputs\"\ndescription = \"moai plan\"\n"
    );
    let _ = writeln!(
        w,
        "[model]\nname = {}\nflavor = {}\nhf_assets_path = \"./assets/hf/tokenizer\"",
        quote(&flavor.name),
        quote(&flavor.flavor)
    );
    let f8 = float8_section(plan)?;
    match &f8 {
        Some((conv, _)) => {
            let _ = writeln!(w, "converters = [{}]\n", quote(conv));
        }
        None => {
            let _ = writeln!(w);
        }
    }
    let _ = writeln!(
        w,
        "[optimizer]\nname = {}\nlr = 3e-4\neps = 1e-8\nweight_decay = 0.1\nimplementation = \"fused\"\n",
        quote(optimizer)
    );
    let _ = writeln!(
        w,
        "[training]\nlocal_batch_size = {local}\nglobal_batch_size = {}\nseq_len = {}\nsteps = 1000\nmax_norm = 1.0\ndataset = \"c4\"\ndtype = {}\nmixed_precision_param = {}\nmixed_precision_reduce = \"float32\"\n",
        cx.global_batch,
        cx.seq,
        quote(master),
        quote(param_dtype)
    );
    // HSDP: FSDP2 over each group of dp_shard ranks, replicated over dp / dp_shard groups (torchtitan's
    // mesh puts dp_replicate outside dp_shard, so a shard group is contiguous ranks, as costed).
    let dp = u64::from(d.config.dp);
    let (replicate, shard) = match (fsdp, u64::from(d.config.dp_shard)) {
        (true, 0) => (1, dp),
        (true, s) => (dp / s, s),
        (false, _) => (dp, 1),
    };
    let rotate = if cp > 1 {
        "\ncontext_parallel_rotate_method = \"alltoall\""
    } else {
        ""
    };
    let _ = writeln!(
        w,
        "[parallelism]\ndata_parallel_replicate_degree = {replicate}\ndata_parallel_shard_degree = {shard}\nfsdp_reshard_after_forward = \"always\"\ntensor_parallel_degree = {}\nenable_async_tensor_parallel = false\ncontext_parallel_degree = {cp}{rotate}\npipeline_parallel_degree = {}",
        u64::from(d.config.tp),
        u64::from(d.config.pp)
    );
    if d.config.pp > 1 {
        let chunks = d.config.schedule.chunks();
        let sizes = super::stage_sizes(plan, cx.layers, chunks);
        let mut next = 0u32;
        let parts: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let mut m: Vec<String> = Vec::new();
                if i == 0 {
                    m.push(quote("tok_embeddings"));
                }
                for l in next..next.saturating_add(k) {
                    m.push(quote(&format!("layers.{l}")));
                }
                next = next.saturating_add(k);
                if i + 1 == sizes.len() {
                    m.push(quote("norm"));
                    m.push(quote("output"));
                }
                format!("[{}]", m.join(", "))
            })
            .collect();
        if next != cx.layers {
            return Err(format!(
                "the plan's stages cover {next} of the model's {} layers",
                cx.layers
            ));
        }
        let _ = writeln!(
            w,
            "pipeline_parallel_schedule = {}\npipeline_parallel_microbatch_size = {}\nmodule_fqns_per_model_part = [\n  {},\n]",
            quote(schedule_name(d.config.schedule)?),
            plan.micro_batch_size,
            parts.join(",\n  ")
        );
    }
    let _ = writeln!(w);
    let mode = match d.config.recompute {
        Recompute::None => "none",
        Recompute::Full => "full",
        Recompute::SelectiveOp => "selective",
        Recompute::Selective => {
            return Err("torchtitan's selective activation checkpointing (per-op policy or every Nth layer) is not moai's selective recomputation of the attention core".into());
        }
    };
    let _ = writeln!(w, "[activation_checkpoint]\nmode = {}", quote(mode));
    if d.config.recompute == Recompute::SelectiveOp {
        // apply_ac's per-op policy: save matmul and attention outputs, rerun every second mm.
        let _ = writeln!(w, "selective_ac_option = {}", quote("op"));
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "[compile]\nenable = false\ncomponents = [\"model\", \"loss\"]\n\n[checkpoint]\nenable = false\n\n[metrics]\nlog_freq = 10"
    );
    if let Some((_, body)) = f8 {
        let _ = writeln!(w, "\n[quantize.linear.float8]\n{body}");
    }
    Ok(t)
}

/// A torchrun launch script for server `rank` running `torchtitan.train` with `torchtitan.toml`
/// (torchtitan's `run_train.sh` launch line, with exactly the plan's ranks per server).
pub fn torchtitan_script(
    plan: &PlanConfig,
    cx: &ExportContext,
    rank: u64,
) -> Result<String, String> {
    torchtitan_toml(plan, cx)?;
    Ok(super::launcher(
        cx,
        rank,
        "torchtitan",
        " and run it from a torchtitan checkout (commit 238fa99 or one that still reads TOML)",
        "export PYTORCH_ALLOC_CONF=\"expandable_segments:True\"\n",
        "--module torchtitan.train --job.config_file \"$(dirname \"$0\")/../torchtitan.toml\"",
    ))
}
