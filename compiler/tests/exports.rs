//! The engine exports, checked by the engines' own rules: Megatron-LM's argument parser and
//! `validate_args` / `TransformerConfig` checks, DeepSpeed's config keys and batch/ZeRO assertions, and
//! torchrun's launcher arguments, as extracted from the pinned sources in `compiler/data/` (installing
//! the engines themselves needs PyTorch, whose wheel bundles CUDA: too big for CI here). Every plan kind
//! the planner chooses is covered, and `estimate` of exactly the configuration read back from each
//! export fits and predicts what the plan predicted.

use crate::common::{Case, Cli, Pin, case, h100, pin, pinned};
use moai_compiler::emit::{emit_engine, engine_exports, export_context};
use moai_compiler::export::{ExportContext, PlanDims, engine_runs, megatron_args};
use moai_compiler::plan::PlanConfig;
use moai_compiler::{
    Cluster, Constraints, EmitKind, Gpu, Model, ParallelConfig, PlanRequest, Recompute, Schedule,
    ZeroStage, estimate, plan,
};
use moai_costmodel::{OverlapSwitch, Stack};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn rows(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// How Megatron-LM's argparse parses each option moai emits (megatron_option_kinds.txt), restricted to
/// options its parser has at the pinned commit (megatron_arguments.txt).
fn megatron_kinds() -> &'static HashMap<String, String> {
    static K: OnceLock<HashMap<String, String>> = OnceLock::new();
    K.get_or_init(|| {
        let names: HashSet<String> = rows(&data("megatron_arguments.txt"))
            .map(str::to_string)
            .collect();
        let mut m = HashMap::new();
        for l in rows(&data("megatron_option_kinds.txt")) {
            let mut it = l.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                names.contains(name),
                "{name} is not in Megatron-LM's parser"
            );
            m.insert(name.to_string(), kind.to_string());
        }
        m
    })
}

fn check_kind(opt: &str, kind: &str, value: Option<&str>) -> Result<(), String> {
    match (kind, value) {
        ("flag", None) => Ok(()),
        ("flag", Some(v)) => Err(format!("{opt} is a flag but got `{v}`")),
        (_, None) => Err(format!("{opt} needs a value")),
        ("int", Some(v)) => v
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| format!("{opt}: `{v}` is not an int")),
        ("float", Some(v)) => v
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| format!("{opt}: `{v}` is not a float")),
        ("str", Some(_)) => Ok(()),
        (k, Some(v)) if k.starts_with("choice:") => {
            if k["choice:".len()..].split(',').any(|c| c == v) {
                Ok(())
            } else {
                Err(format!(
                    "{opt}: `{v}` is not one of {}",
                    &k["choice:".len()..]
                ))
            }
        }
        (k, _) => Err(format!("{opt}: unknown kind {k}")),
    }
}

/// Expands Megatron's layout string (`x*n`, `(..)*n`, commas) and returns decoder layers per virtual
/// stage, checking `E` first and `L` last exactly once (PipelineParallelLayerLayout.parse_str_to_list
/// and validate_layer_layout).
fn parse_layout(s: &str) -> Result<Vec<u32>, String> {
    let mut s = s.replace(',', "");
    // (group)*n
    while let Some(open) = s.find('(') {
        let close = s[open..].find(')').ok_or("unbalanced (")? + open;
        let rest = &s[close + 1..];
        let rest = rest.strip_prefix('*').ok_or("(..) without *n")?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let n: usize = digits.parse().map_err(|_| "bad repeat")?;
        let expanded = s[open + 1..close].repeat(n);
        s = format!("{}{}{}", &s[..open], expanded, &rest[digits.len()..]);
    }
    // x*n
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if i + 1 < chars.len() && chars[i + 1] == '*' {
            let digits: String = chars[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            let n: usize = digits.parse().map_err(|_| "bad repeat")?;
            out.push_str(&c.to_string().repeat(n));
            i += 2 + digits.len();
        } else {
            out.push(c);
            i += 1;
        }
    }
    let stages: Vec<&str> = out.split('|').collect();
    for st in &stages {
        if let Some(bad) = st.chars().find(|c| !"ELtm".contains(*c)) {
            return Err(format!("invalid layer character {bad}"));
        }
    }
    if !out.starts_with('E') || !out.ends_with('L') {
        return Err("the layout must start with E and end with L".into());
    }
    if out.matches('E').count() != 1 || out.matches('L').count() != 1 {
        return Err("E and L exactly once".into());
    }
    Ok(stages
        .iter()
        .map(|st| st.matches('t').count() as u32)
        .collect())
}

/// What Megatron-LM makes of the arguments: the plan it runs.
#[derive(Debug, PartialEq)]
pub(crate) struct MegatronRun {
    pub(crate) tp: u64,
    pub(crate) pp: u64,
    /// Context-parallel size (`--context-parallel-size`, 1 when absent).
    pub(crate) cp: u64,
    /// The context-parallel communication type (`--cp-comm-type`, `p2p` when absent).
    pub(crate) cp_comm: String,
    pub(crate) dp: u64,
    micro: u64,
    micro_batches: u64,
    /// Decoder layers per virtual stage in layer order.
    stage_sizes: Vec<u32>,
    chunks: u32,
    recompute: Recompute,
    zero: u8,
    sequence_parallel: bool,
    qkv_bias: bool,
    linear_bias: bool,
    overlap_grad_reduce: bool,
    overlap_param_gather: bool,
    tp_comm_overlap: bool,
    ep: u64,
    expert_tp: u64,
    /// Data-parallel ranks per distributed-optimizer instance (`dp / --num-distributed-optimizer-instances`),
    /// 0 with one instance.
    pub(crate) dp_shard: u64,
}

/// Megatron-LM's parser and the `validate_args` / `TransformerConfig` rules that matter for plans, at
/// commit d98e8a64 (line numbers of megatron/training/arguments.py and
/// megatron/core/transformer/transformer_config.py there).
pub(crate) fn megatron_validate(
    args: &[(String, Option<String>)],
    world: u64,
    env_max_connections_1: bool,
) -> Result<MegatronRun, String> {
    let kinds = megatron_kinds();
    let mut a: HashMap<&str, Option<&str>> = HashMap::new();
    for (k, v) in args {
        let kind = kinds
            .get(k)
            .ok_or_else(|| format!("{k}: not an option moai's data knows"))?;
        check_kind(k, kind, v.as_deref())?;
        if a.insert(k, v.as_deref()).is_some() {
            return Err(format!("{k} given twice"));
        }
    }
    let int = |k: &str| a.get(k).and_then(|v| v.and_then(|v| v.parse::<u64>().ok()));
    let has = |k: &str| a.contains_key(k);
    let s = |k: &str| a.get(k).copied().flatten();
    let tp = int("--tensor-model-parallel-size").unwrap_or(1);
    let pp = int("--pipeline-model-parallel-size").unwrap_or(1);
    let cp = int("--context-parallel-size").unwrap_or(1);
    // arguments.py:432 world size divisible by the model-parallel size (tp·pp·cp, arguments.py:445).
    if !world.is_multiple_of(tp * pp * cp) {
        return Err(format!(
            "world size {world} is not divisible by tp·pp·cp {}",
            tp * pp * cp
        ));
    }
    let dp = world / (tp * pp * cp);
    let cp_comm = s("--cp-comm-type").unwrap_or("p2p").to_string();
    if cp > 1 {
        // arguments.py:1335: the sequence is cut into 2·cp chunks.
        let seq = int("--seq-length").ok_or("--seq-length missing")?;
        if !seq.is_multiple_of(2 * cp) {
            return Err(format!(
                "seq-length {seq} is not a multiple of 2·cp {}",
                2 * cp
            ));
        }
        // transformer_config.py:1034 the types; arguments.py:583 a2a+p2p needs hierarchical sizes.
        match cp_comm.as_str() {
            "p2p" | "all_gather" | "a2a" => {}
            x => return Err(format!("--cp-comm-type {x} (without hierarchical sizes)")),
        }
    }
    let micro = int("--micro-batch-size").ok_or("--micro-batch-size missing")?;
    let global = int("--global-batch-size").ok_or("--global-batch-size missing")?;
    // megatron/core/num_microbatches_calculator.py: the global batch is divisible by micro-batch × data-parallel size.
    if !global.is_multiple_of(micro * dp) {
        return Err(format!(
            "global batch {global} not divisible by micro {micro} × dp {dp}"
        ));
    }
    let layers = int("--num-layers").ok_or("--num-layers missing")? as u32;
    let heads = int("--num-attention-heads").ok_or("--num-attention-heads missing")?;
    if !heads.is_multiple_of(tp) {
        return Err(format!("tp {tp} does not divide {heads} heads"));
    }
    if has("--group-query-attention") {
        let groups = int("--num-query-groups").ok_or("--num-query-groups missing")?;
        if !groups.is_multiple_of(tp) || !heads.is_multiple_of(groups) {
            return Err(format!(
                "{groups} query groups vs tp {tp} and {heads} heads"
            ));
        }
    } else if has("--num-query-groups") {
        return Err("--num-query-groups without --group-query-attention is ignored".into());
    }
    // Rotary scaling. argument_utils.py:339: standard attention takes --rope-type rope only (MLA
    // also yarn); arguments.py:1628: rope fusion stays on with rope positions unless
    // --no-rope-fusion; transformer_config.py:3345 (MLATransformerConfig): latent attention with rope
    // fusion needs yarn; the MLA-only YaRN flags (arguments.py:3558-3562) reach no config without
    // --multi-latent-attention (argument_utils.py:384 reads them only for --position-embedding-type
    // yarn); --use-rope-scaling is GPTModel's standard-attention rotary (gpt_model.py:183).
    let mla = has("--multi-latent-attention");
    let rope_type = s("--rope-type").unwrap_or(if mla { "yarn" } else { "rope" });
    if !mla && rope_type != "rope" {
        return Err(format!(
            "--rope-type {rope_type}: common attention only supports rope"
        ));
    }
    let fusion = s("--position-embedding-type") == Some("rope") && !has("--no-rope-fusion");
    if mla && fusion && rope_type != "yarn" {
        return Err(
            "apply_rope_fusion for MLA only works with YARN RoPE (add --no-rope-fusion)".into(),
        );
    }
    for k in ["--rotary-scaling-factor", "--mscale", "--mscale-all-dim"] {
        if has(k) && !mla {
            return Err(format!("{k} is read only by multi-latent attention"));
        }
    }
    if has("--use-rope-scaling") && (mla || s("--position-embedding-type") != Some("rope")) {
        return Err("--use-rope-scaling applies to standard attention with rope positions".into());
    }
    // arguments.py:933 at most one of the virtual-pipeline options.
    let vp_opts = [
        "--num-layers-per-virtual-pipeline-stage",
        "--num-virtual-stages-per-pipeline-rank",
        "--pipeline-model-parallel-layout",
    ];
    if vp_opts.iter().filter(|o| has(o)).count() > 1 {
        return Err("more than one of the virtual-pipeline options".into());
    }
    let first = int("--decoder-first-pipeline-num-layers").map(|x| x as u32);
    let last = int("--decoder-last-pipeline-num-layers").map(|x| x as u32);
    let pp32 = pp as u32;
    let (sizes, chunks) = if let Some(layout) = s("--pipeline-model-parallel-layout") {
        // transformer_config.py:2241 layout conflicts with first/last.
        if first.is_some() || last.is_some() {
            return Err("layout with first/last stage layers".into());
        }
        let sizes = parse_layout(layout)?;
        // arguments.py:946 the layout's stages are a multiple of pp.
        if !(sizes.len() as u32).is_multiple_of(pp32) {
            return Err(format!("{} layout stages, pp {pp}", sizes.len()));
        }
        if sizes.iter().sum::<u32>() != layers {
            return Err("layout decoder layers differ from --num-layers".into());
        }
        let chunks = sizes.len() as u32 / pp32;
        (sizes, chunks)
    } else if let Some(per) = int("--num-layers-per-virtual-pipeline-stage") {
        let per = per as u32;
        // arguments.py:956 uneven splits need --num-virtual-stages-per-pipeline-rank.
        if first.is_some() || last.is_some() {
            return Err("--num-layers-per-virtual-pipeline-stage with uneven first/last".into());
        }
        // arguments.py:973
        if !layers.is_multiple_of(pp32) || !(layers / pp32).is_multiple_of(per) {
            return Err(format!("{layers} layers, pp {pp}, {per} per virtual stage"));
        }
        let chunks = layers / pp32 / per;
        (vec![per; (pp32 * chunks) as usize], chunks)
    } else if first.is_some() || last.is_some() {
        // transformer_config.py:2290-2365
        let mut rest = layers;
        let mut stages = pp32;
        for x in [first, last].into_iter().flatten() {
            if x == 0 {
                return Err("first/last stage layers must be > 0".into());
            }
            rest = rest.checked_sub(x).ok_or("first/last exceed the layers")?;
            stages -= 1;
        }
        if (rest == 0) != (stages == 0) {
            return Err(format!("{rest} middle layers for {stages} middle stages"));
        }
        if stages > 0 && !rest.is_multiple_of(stages) {
            return Err(format!(
                "{rest} middle layers not divisible by {stages} middle stages"
            ));
        }
        let mid = rest.checked_div(stages).unwrap_or(0);
        let mut sizes = Vec::new();
        sizes.push(first.unwrap_or(mid));
        for _ in 0..pp32.saturating_sub(2) {
            sizes.push(mid);
        }
        if pp32 >= 2 {
            sizes.push(last.unwrap_or(mid));
        }
        (sizes, 1)
    } else {
        // arguments.py:998 even split.
        if !layers.is_multiple_of(pp32) {
            return Err(format!(
                "Number of layers should be divisible by the pipeline-model-parallel size ({layers}, {pp})"
            ));
        }
        (vec![layers / pp32; pp as usize], 1)
    };
    if chunks > 1 && pp < 2 {
        // arguments.py:1001 (overlap_p2p_comm defaults on: pp > 1).
        return Err("interleaved schedule needs pp > 1".into());
    }
    if chunks > 1 && pp < 3 && has("--no-overlap-p2p-communication") {
        // arguments.py:1005 without p2p overlap, interleaving needs pp > 2.
        return Err("interleaved schedule without p2p overlap needs pp > 2".into());
    }
    let recompute = match s("--recompute-granularity") {
        None => Recompute::None,
        Some("selective") => {
            // arguments.py:1425
            if has("--recompute-method") {
                return Err("selective recompute with a recompute method".into());
            }
            Recompute::Selective
        }
        Some("full") => {
            if s("--recompute-method") != Some("uniform")
                || int("--recompute-num-layers") != Some(1)
            {
                return Err("full recompute that is not one layer at a time".into());
            }
            Recompute::Full
        }
        Some(x) => return Err(format!("recompute {x}")),
    };
    // arguments.py:1434: sequence parallelism is silently switched off when tp = 1.
    let sequence_parallel = has("--sequence-parallel");
    if sequence_parallel && tp == 1 {
        return Err("--sequence-parallel with tp 1 is dropped by Megatron-LM".into());
    }
    let dist_opt = has("--use-distributed-optimizer");
    if has("--overlap-param-gather") && !(dist_opt || has("--use-megatron-fsdp")) {
        // arguments.py:1025
        return Err(
            "--overlap-param-gather needs the distributed optimizer or Megatron-FSDP".into(),
        );
    }
    if has("--overlap-param-gather") && !has("--overlap-grad-reduce") {
        // arguments.py:1028
        return Err("--overlap-param-gather needs --overlap-grad-reduce".into());
    }
    if has("--tp-comm-overlap") && !sequence_parallel {
        // arguments.py:1441-1442
        return Err("--tp-comm-overlap needs --sequence-parallel".into());
    }
    if has("--use-torch-fsdp2") {
        // arguments.py:1031-1045
        if pp > 1 {
            return Err("--use-torch-fsdp2 is not supported with pipeline parallelism".into());
        }
        if dist_opt {
            return Err("--use-torch-fsdp2 is not supported with the distributed optimizer".into());
        }
        if !has("--untie-embeddings-and-output-weights") {
            return Err("--use-torch-fsdp2 requires --untie-embeddings-and-output-weights".into());
        }
    }
    if has("--use-megatron-fsdp") && s("--megatron-fsdp-version") == Some("2") && dist_opt {
        // arguments.py:1124
        return Err(
            "--megatron-fsdp-version 2 is not compatible with --use-distributed-optimizer".into(),
        );
    }
    let fsdp = has("--use-megatron-fsdp");
    let zero = if fsdp {
        // arguments.py:1118-1170
        if s("--ckpt-format") != Some("fsdp_dtensor") {
            return Err("Megatron-FSDP requires --ckpt-format fsdp_dtensor".into());
        }
        if !matches!(s("--optimizer"), Some("adam" | "sgd") | None) {
            return Err("Megatron-FSDP supports adam and sgd".into());
        }
        if env_max_connections_1 {
            return Err("FSDP requires CUDA_DEVICE_MAX_CONNECTIONS > 1 or unset".into());
        }
        match s("--data-parallel-sharding-strategy") {
            Some("optim_grads_params") | None => 3,
            Some(x) => return Err(format!("sharding strategy {x} is not ZeRO-3")),
        }
    } else if has("--use-distributed-optimizer") {
        1
    } else {
        0
    };
    if s("--ckpt-format") == Some("fsdp_dtensor") && !fsdp {
        // arguments.py:1676
        return Err("--ckpt-format fsdp_dtensor without Megatron-FSDP".into());
    }
    // arguments.py:587 the expert tensor-parallel size defaults to tp; 1655 experts divide over ep;
    // parallel_state.py:881 the world divides by expert_tp · ep · pp.
    let ep = int("--expert-model-parallel-size").unwrap_or(1);
    // (A dense model has no experts to split: moai records expert_tp 1 for it.)
    let expert_tp =
        int("--expert-tensor-parallel-size").unwrap_or(if has("--num-experts") { tp } else { 1 });
    if ep > 1 {
        let experts = int("--num-experts").ok_or("expert parallelism without --num-experts")?;
        if !experts.is_multiple_of(ep) {
            return Err(format!("{experts} experts are not a multiple of ep {ep}"));
        }
    }
    if !world.is_multiple_of(expert_tp * ep * pp) {
        return Err(format!(
            "world size {world} is not divisible by expert_tp·ep·pp {}",
            expert_tp * ep * pp
        ));
    }
    // parallel_state.py:924: the dp·cp ranks split into contiguous distributed-optimizer instances
    // (1448: and the expert data-parallel ranks too); megatron/core/distributed: each instance
    // reduce-scatters inside and all-reduces across (Megatron-FSDP: HSDP, mcore_fsdp_adapter.py:346).
    let instances = int("--num-distributed-optimizer-instances").unwrap_or(1);
    if instances == 0 || !(dp * cp).is_multiple_of(instances) {
        return Err(format!(
            "dp·cp {} is not divisible by {instances} distributed-optimizer instances",
            dp * cp
        ));
    }
    let expert_dp = dp * cp * tp / (ep * expert_tp).max(1);
    if instances > 1 && !expert_dp.is_multiple_of(instances) {
        return Err(format!(
            "expert data-parallel size {expert_dp} is not divisible by {instances} instances"
        ));
    }
    if instances > 1 && zero == 0 {
        return Err("distributed-optimizer instances without a sharded optimizer".into());
    }
    let dp_shard = if instances > 1 { dp / instances } else { 0 };
    // arguments.py:1608: add_bias_linear implies add_qkv_bias.
    let linear_bias = !has("--disable-bias-linear");
    let qkv_bias = linear_bias || has("--add-qkv-bias");
    Ok(MegatronRun {
        tp,
        pp,
        cp,
        cp_comm,
        dp,
        micro,
        micro_batches: global / (micro * dp),
        stage_sizes: sizes,
        chunks,
        recompute,
        zero,
        sequence_parallel,
        qkv_bias,
        linear_bias,
        overlap_grad_reduce: has("--overlap-grad-reduce"),
        overlap_param_gather: has("--overlap-param-gather"),
        tp_comm_overlap: has("--tp-comm-overlap"),
        ep,
        expert_tp,
        dp_shard,
    })
}

/// torchrun's launcher argument rules (torch/distributed/run.py) for one script line; returns
/// (nnodes, nproc, node_rank) and the program's arguments.
fn torchrun_validate(script: &str) -> Result<(u64, u64, u64, Vec<String>), String> {
    let kinds: HashMap<String, String> = rows(&data("torchrun_arguments.txt"))
        .map(|l| {
            let mut it = l.split_whitespace();
            (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            )
        })
        .collect();
    let joined = script.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("exec torchrun "))
        .ok_or("no torchrun line")?;
    let toks: Vec<&str> = line.split_whitespace().skip(2).collect();
    let mut i = 0;
    let mut got: HashMap<String, String> = HashMap::new();
    while i < toks.len() && toks[i].starts_with("--") {
        let name = toks[i].replace('_', "-");
        let kind = kinds
            .get(&name)
            .ok_or_else(|| format!("{name} is not a torchrun option"))?;
        if kind == "flag" {
            i += 1;
            continue;
        }
        let v = toks.get(i + 1).ok_or(format!("{name} needs a value"))?;
        let ok = match kind.as_str() {
            "int" => v.parse::<i64>().is_ok() || v.starts_with("\"$"),
            "float" => v.parse::<f64>().is_ok(),
            "nnodes" => v.parse::<u64>().is_ok_and(|n| n > 0),
            "nproc" => v.parse::<u64>().is_ok_and(|n| n > 0),
            _ => true,
        };
        if !ok {
            return Err(format!("{name} {v}: not a {kind}"));
        }
        got.insert(name, v.to_string());
        i += 2;
    }
    let n = |k: &str| got.get(k).and_then(|v| v.parse::<u64>().ok());
    let nnodes = n("--nnodes").ok_or("--nnodes missing")?;
    let nproc = n("--nproc-per-node").ok_or("--nproc-per-node missing")?;
    let rank = n("--node-rank").unwrap_or(0);
    if rank >= nnodes {
        return Err(format!("--node-rank {rank} >= --nnodes {nnodes}"));
    }
    let program: Vec<String> = toks[i..].iter().map(|s| s.to_string()).collect();
    Ok((nnodes, nproc, rank, program))
}

/// DeepSpeed's config rules (keys from deepspeed_config_keys.txt; runtime/config.py:919-934 _batch_assertion;
/// ZeRO stage 0-3; bf16 and fp16 exclusive) at commit 38327e07; returns the ZeRO stage.
fn deepspeed_validate(c: &serde_json::Value, dp_world: u64) -> Result<u8, String> {
    let keys: HashSet<String> = rows(&data("deepspeed_config_keys.txt"))
        .map(str::to_string)
        .collect();
    let obj = c.as_object().ok_or("not an object")?;
    for (k, v) in obj {
        if !keys.contains(k) {
            return Err(format!("{k} is not a DeepSpeed config key"));
        }
        if let Some(inner) = v
            .as_object()
            .filter(|_| k == "zero_optimization" || k == "bf16")
        {
            for ik in inner.keys() {
                if !keys.contains(&format!("{k}.{ik}")) {
                    return Err(format!("{k}.{ik} is not a DeepSpeed config key"));
                }
            }
        }
    }
    let u = |k: &str| c[k].as_u64().ok_or(format!("{k} missing"));
    let (tb, mb, ga) = (
        u("train_batch_size")?,
        u("train_micro_batch_size_per_gpu")?,
        u("gradient_accumulation_steps")?,
    );
    if tb == 0 || mb == 0 || ga == 0 || tb != mb * ga * dp_world {
        return Err(format!("train_batch_size {tb} != {mb} * {ga} * {dp_world}"));
    }
    if c["bf16"]["enabled"] == true && c["fp16"]["enabled"] == true {
        return Err("bf16 and fp16 both enabled".into());
    }
    let stage = c["zero_optimization"]["stage"].as_u64().unwrap_or(0);
    if stage > 3 {
        return Err(format!("ZeRO stage {stage}"));
    }
    Ok(stage as u8)
}

/// Splits a line as the shell does for plain words and single-quoted strings.
fn shell_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match (c, quoted) {
            ('\'', _) => {
                quoted = !quoted;
                in_word = true;
            }
            (' ', false) => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (c, _) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn zero_of(p: &PlanConfig) -> u8 {
    if p.distribute_param {
        3
    } else if p.distribute_optimizer {
        1
    } else {
        0
    }
}

fn ranges(sizes: &[u32]) -> Vec<(u32, u32)> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&k| {
            let r = (start, start + k - 1);
            start += k;
            r
        })
        .collect()
}

fn plan_sizes(p: &PlanConfig, layers: u32) -> Vec<u32> {
    let chunks: u32 = p.schedule.parse::<Schedule>().unwrap().chunks();
    let v = p.pp as u32 * chunks;
    if p.stages.len() as u32 == v {
        p.stages
            .iter()
            .map(|s| s.layers[1] - s.layers[0] + 1)
            .collect()
    } else {
        moai_costmodel::config::even_stages(layers, v)
            .into_iter()
            .map(|(a, b)| b - a + 1)
            .collect()
    }
}

/// Plans the case, writes every engine export in memory, and checks each written one by the engine's
/// rules, that it is the plan, and that `estimate` of the configuration read back from it fits and
/// predicts the plan's step time. Returns the plan and which engines were written.
pub(crate) fn check_case(c: &Case) -> (PlanConfig, Vec<Stack>) {
    let report = plan(c.model, &c.cluster, &c.req).expect("a plan");
    let p = report.output.plan.clone();
    let cx: ExportContext = export_context(c.model, &c.cluster, &c.req);
    let emits = [
        EmitKind::Megatron,
        EmitKind::Deepspeed,
        EmitKind::Fsdp,
        EmitKind::Torchtitan,
    ];
    let (files, notes) = engine_exports(c.model, &c.cluster, &c.req, &p, &emits);
    let files: HashMap<String, String> = files
        .into_iter()
        .map(|(k, v)| (k.display().to_string(), String::from_utf8(v).unwrap()))
        .collect();
    let mut written = Vec::new();
    let d = PlanDims::of_plan(&p, &cx).unwrap();
    // The engine the plan was costed for runs it.
    assert!(
        engine_runs(p.engine, &d).is_ok(),
        "the plan's own engine {} does not run it: {p:?}",
        p.engine
    );
    for e in &emits {
        let engine = emit_engine(e.name()).unwrap();
        let note = &notes[engine.name()];
        if note["written"] == false {
            let why = note["why"].as_str().unwrap();
            assert!(
                why.contains("export not written:") && !why.contains('\n'),
                "{why}"
            );
            continue;
        }
        written.push(engine);
        // Launch scripts: exactly the plan's ranks, per server.
        let scripts: Vec<&String> = files
            .iter()
            .filter(|(k, _)| {
                k.starts_with("launch/")
                    && match engine {
                        Stack::Megatron => k.starts_with("launch/server"),
                        Stack::Deepspeed => k.starts_with("launch/deepspeed_server"),
                        Stack::Torchtitan => k.starts_with("launch/torchtitan_server"),
                        _ => k.starts_with("launch/fsdp_server"),
                    }
            })
            .map(|(_, v)| v)
            .collect();
        let mut total = 0;
        let mut ranks = HashSet::new();
        let mut megatron_line = None;
        for s in &scripts {
            let (nnodes, nproc, rank, program) = torchrun_validate(s).unwrap();
            assert_eq!(nnodes as usize, scripts.len());
            assert!(nproc <= cx.devices_per_server);
            total += nproc;
            assert!(ranks.insert(rank));
            let max_conn_1 = s.contains("export CUDA_DEVICE_MAX_CONNECTIONS=1");
            if engine == Stack::Megatron {
                let args = &program[1..];
                let line = args
                    .iter()
                    .filter(|a| *a != "\"$@\"")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(!max_conn_1 || !p.distribute_param);
                megatron_line = Some(line);
            }
        }
        assert_eq!(
            total, c.cluster.devices as u64,
            "launch scripts start {total} ranks"
        );
        let stack_cfg = |tp: u64,
                         pp: u64,
                         dp: u64,
                         micro: u64,
                         nmb: u64,
                         sizes: &[u32],
                         chunks: u32,
                         recompute,
                         zero: u8,
                         sp: bool| {
            let mut c = ParallelConfig {
                dp: dp as u32,
                tp: tp as u32,
                pp: pp as u32,
                micro_batch_size: micro as u32,
                num_micro_batches: nmb as u32,
                recompute,
                sequence_parallel: sp,
                schedule: if chunks > 1 {
                    Schedule::Interleaved(chunks)
                } else {
                    Schedule::OneFOneB
                },
                stages: if pp > 1 { ranges(sizes) } else { Vec::new() },
                stack: engine,
                ..ParallelConfig::default()
            };
            ZeroStage::from_number(zero).unwrap().apply(&mut c);
            c
        };
        let cfg = match engine {
            Stack::Megatron => {
                let args = megatron_args(&p, &cx).unwrap();
                let line = megatron_line.expect("a Megatron launch script");
                let flat = moai_compiler::export::megatron_command_line(&p, &cx).unwrap();
                // The shell reads the line back into exactly the arguments.
                assert_eq!(
                    shell_split(&flat),
                    args.iter()
                        .flat_map(|(k, v)| std::iter::once(k.clone()).chain(v.clone()))
                        .collect::<Vec<_>>()
                );
                assert_eq!(line, flat, "the launch script runs the exported arguments");
                assert_eq!(files["megatron_args.txt"].trim(), flat);
                let run = megatron_validate(&args, cx.devices, false)
                    .unwrap_or_else(|e| panic!("Megatron-LM rejects {flat}: {e}"));
                // It is the plan.
                assert_eq!(
                    (run.tp, run.pp, run.dp, run.micro, run.micro_batches),
                    (p.tp, p.pp, p.dp, p.micro_batch_size, p.num_micro_batches),
                    "{flat}"
                );
                assert_eq!(run.cp, p.cp, "{flat}");
                assert_eq!(run.stage_sizes, plan_sizes(&p, cx.layers), "{flat}");
                assert_eq!(run.recompute, p.recompute);
                assert_eq!(run.zero, zero_of(&p));
                assert_eq!(run.sequence_parallel, p.sequence_parallel);
                assert_eq!(run.qkv_bias, cx.settings.qkv_bias, "{flat}");
                assert_eq!(run.linear_bias, cx.settings.linear_bias(), "{flat}");
                assert_eq!((run.ep, run.expert_tp), (p.ep, p.expert_tp), "{flat}");
                let mut cfg = stack_cfg(
                    run.tp,
                    run.pp,
                    run.dp,
                    run.micro,
                    run.micro_batches,
                    &run.stage_sizes,
                    run.chunks,
                    run.recompute,
                    run.zero,
                    run.sequence_parallel,
                );
                // The overlap switches the flags turn on; a switch that does not apply to the plan
                // keeps its (inert) default.
                cfg.overlap_grad_reduce = run.overlap_grad_reduce;
                let dims = PlanDims::of_config(&cfg, &c.cluster);
                for (sw, on) in [
                    (OverlapSwitch::ParamGather, run.overlap_param_gather),
                    (OverlapSwitch::TpComm, run.tp_comm_overlap),
                ] {
                    if dims.switch_applies(Stack::Megatron, sw) {
                        sw.set(&mut cfg, on);
                    }
                }
                (cfg.ep, cfg.expert_tp) = (run.ep as u32, run.expert_tp as u32);
                assert_eq!(run.dp_shard, p.dp_shard, "{flat}");
                cfg.dp_shard = run.dp_shard as u32;
                cfg.cp = run.cp as u32;
                cfg.cp_comm = run.cp_comm.parse().unwrap();
                cfg
            }
            Stack::Torchtitan => {
                let run =
                    crate::torchtitan::torchtitan_validate(&files["torchtitan.toml"], cx.devices)
                        .unwrap_or_else(|e| panic!("torchtitan rejects its TOML: {e}"));
                for s in &scripts {
                    assert!(
                        s.contains("--module torchtitan.train --job.config_file"),
                        "{s}"
                    );
                }
                assert_eq!(
                    (run.tp, run.pp, run.dp, run.micro, run.micro_batches),
                    (p.tp, p.pp, p.dp, p.micro_batch_size, p.num_micro_batches)
                );
                assert_eq!(run.stage_sizes, plan_sizes(&p, cx.layers));
                let mut cfg = stack_cfg(
                    run.tp,
                    run.pp,
                    run.dp,
                    run.micro,
                    run.micro_batches,
                    &run.stage_sizes,
                    run.chunks,
                    run.recompute,
                    run.zero,
                    run.tp > 1,
                );
                // torchtitan also runs GPipe, which the read-back helper does not name.
                cfg.schedule = run.schedule;
                assert_eq!(run.cp, p.cp);
                cfg.cp = run.cp as u32;
                assert_eq!(run.dp_shard, p.dp_shard);
                cfg.dp_shard = run.dp_shard as u32;
                assert_eq!(run.precision, p.precision);
                cfg.precision = run.precision;
                cfg
            }
            Stack::Deepspeed | Stack::Fsdp => {
                // DeepSpeed's overlap switches: overlap_comm, and ZeRO-3's prefetch bucket (0 = off).
                let mut overlaps = (true, true);
                let (micro, nmb, zero) = if engine == Stack::Deepspeed {
                    let c: serde_json::Value =
                        serde_json::from_str(&files["deepspeed_config.json"]).unwrap();
                    let stage = deepspeed_validate(&c, cx.devices).unwrap();
                    let z = &c["zero_optimization"];
                    overlaps = (
                        z["overlap_comm"].as_bool().unwrap(),
                        z["stage3_prefetch_bucket_size"]
                            .as_u64()
                            .is_none_or(|b| b > 0),
                    );
                    (
                        c["train_micro_batch_size_per_gpu"].as_u64().unwrap(),
                        c["gradient_accumulation_steps"].as_u64().unwrap(),
                        stage,
                    )
                } else {
                    let c: serde_json::Value =
                        serde_json::from_str(&files["fsdp_config.json"]).unwrap();
                    assert_eq!(
                        c["activation_checkpointing"],
                        p.recompute == Recompute::Full
                    );
                    (p.micro_batch_size, p.num_micro_batches, 3)
                };
                // The Trainer arguments in the scripts carry the batch split and recomputation.
                for s in &scripts {
                    assert!(s.contains(&format!("--per_device_train_batch_size {micro}")));
                    assert!(s.contains(&format!("--gradient_accumulation_steps {nmb}")));
                    let flag = engine == Stack::Deepspeed && p.recompute == Recompute::Full;
                    assert_eq!(s.contains("--gradient_checkpointing"), flag);
                }
                assert_eq!(zero, zero_of(&p));
                let recompute = if p.recompute == Recompute::Full {
                    Recompute::Full
                } else {
                    Recompute::None
                };
                let mut cfg =
                    stack_cfg(1, 1, cx.devices, micro, nmb, &[], 1, recompute, zero, false);
                (cfg.overlap_grad_reduce, cfg.overlap_param_gather) = overlaps;
                // The Trainer's `--fsdp hybrid_shard`: FSDP's HYBRID_SHARD, one server a shard group.
                if scripts.iter().any(|s| s.contains("--fsdp \"hybrid_shard")) {
                    cfg.dp_shard = cx.devices_per_server as u32;
                }
                assert_eq!(cfg.dp_shard as u64, p.dp_shard);
                cfg
            }
            Stack::Eager => unreachable!(),
        };
        // estimate of exactly the exported configuration fits.
        let est = estimate(c.model, &c.cluster, &cfg, &c.req)
            .unwrap_or_else(|e| panic!("estimate of the {engine} export: {e}: {cfg:?}"));
        assert!(est.fits, "the {engine} export does not fit: {cfg:?}");
        if engine == p.engine {
            let (a, b) = (
                est.predicted.step_time_s,
                report.output.predicted.step_time_s,
            );
            assert!(
                (a - b).abs() <= 1e-9 * b.max(1.0),
                "estimate of the {engine} export predicts {a} s, the plan {b} s"
            );
        }
    }
    assert!(
        written.contains(&p.engine) || p.engine == Stack::Megatron,
        "the plan's engine {} was not written: {notes:?}",
        p.engine
    );
    (p, written)
}

fn spec_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load("llama:layers=32,hidden=2048,heads=16,kv_heads=4,ffn=5632,vocab=32000,rope_theta=500000,eps=1e-5")
            .unwrap()
    })
}

/// The main job's model as a user exports it: the llama2-13b ONNX in a Hugging Face directory beside its
/// `config.json`, which supplies what the graph does not record (the rotary base: the bare ONNX file's
/// Megatron-LM export is refused naming it, see `bare_onnx_megatron_export_names_the_rotary_base`).
fn main_job_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("moai-main-job-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let onnx = dir.join("llama2-13b.onnx");
    if !onnx.exists() {
        std::fs::copy(root.join("models/llama2-13b.onnx"), &onnx).unwrap();
    }
    std::fs::copy(
        root.join("models/configs/llama2-13b/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn bare_onnx_megatron_export_names_the_rotary_base() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/llama2-13b.onnx");
    static B: OnceLock<Model> = OnceLock::new();
    let m = B.get_or_init(|| Model::load(path.to_str().unwrap()).unwrap());
    let mut c = case(
        m,
        Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap(),
        256,
        Constraints::default(),
    );
    c.req.constraints.engine = Some(Stack::Megatron);
    let report = plan(c.model, &c.cluster, &c.req).expect("a plan");
    let emits = [EmitKind::Megatron];
    let (files, notes) = engine_exports(c.model, &c.cluster, &c.req, &report.output.plan, &emits);
    assert!(files.is_empty());
    let why = notes["megatron"]["why"].as_str().unwrap();
    assert!(why.contains("rope_theta") && !why.contains('\n'), "{why}");
}

#[test]
fn main_job_exports_run_as_planned() {
    static M: OnceLock<Model> = OnceLock::new();
    let m = M.get_or_init(|| Model::load(main_job_dir().to_str().unwrap()).unwrap());
    let c = case(
        m,
        Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap(),
        256,
        Constraints::default(),
    );
    let (p, written) = check_case(&c);
    assert!(!written.is_empty(), "{p:?}");
}

#[test]
fn zero3_with_tp_runs_on_megatron_fsdp() {
    let c = case(
        spec_model(),
        h100(8),
        64,
        pin().zero(ZeroStage::Zero3).tp(2),
    );
    let (p, written) = check_case(&c);
    assert!(p.distribute_param && p.tp == 2 && p.engine == Stack::Megatron);
    assert_eq!(written, vec![Stack::Megatron]);
}

#[test]
fn zero3_data_parallel_runs_on_deepspeed_stage3_and_fsdp() {
    let c = case(
        spec_model(),
        h100(8),
        64,
        pin()
            .zero(ZeroStage::Zero3)
            .tp(1)
            .recompute(Recompute::Full),
    );
    let (p, written) = check_case(&c);
    assert_eq!(p.engine, Stack::Deepspeed);
    assert_eq!(
        written,
        vec![Stack::Megatron, Stack::Deepspeed, Stack::Fsdp]
    );
}

#[test]
fn tp_pp_interleaved_and_sequence_parallel() {
    for (tp, pp, sched, sp) in [
        (2, 2, Schedule::OneFOneB, false),
        (2, 4, Schedule::Interleaved(2), false),
        (4, 1, Schedule::OneFOneB, true),
    ] {
        let c = case(
            spec_model(),
            h100(16),
            64,
            pin()
                .tp(tp)
                .pp(pp)
                .schedule(sched)
                .sequence_parallel(Some(sp)),
        );
        let (p, written) = check_case(&c);
        assert_eq!(
            (p.tp, p.pp, p.sequence_parallel),
            (tp as u64, pp as u64, sp)
        );
        assert_eq!(p.schedule, sched.to_string());
        assert_eq!(written, vec![Stack::Megatron], "tp/pp only on Megatron-LM");
    }
}

#[test]
fn plain_dp_zero1_and_every_recompute_mode() {
    // Plain data parallelism (no ZeRO): Megatron-LM's DDP and DeepSpeed stage 0.
    let c = case(spec_model(), h100(8), 64, pinned(ZeroStage::Zero0, 1, 1));
    let (p, written) = check_case(&c);
    assert!(p.dp == 8 && !p.distribute_optimizer && !p.distribute_param);
    assert!(written.contains(&Stack::Megatron) && !written.contains(&Stack::Fsdp));
    for r in [Recompute::None, Recompute::Selective, Recompute::Full] {
        let c = case(
            spec_model(),
            h100(8),
            64,
            pinned(ZeroStage::Zero1, 1, 1).recompute(r),
        );
        let (p, written) = check_case(&c);
        assert_eq!(p.recompute, r);
        assert!(p.distribute_optimizer && !p.distribute_param);
        let want = if r == Recompute::Selective {
            vec![Stack::Megatron]
        } else {
            vec![Stack::Megatron, Stack::Deepspeed]
        };
        assert_eq!(written, want);
    }
}

#[test]
fn uneven_stages_on_a_partial_server() {
    // 12 H100s = 8 + 4; 32 layers on pp 3 cannot split evenly.
    let c = case(
        spec_model(),
        h100(12),
        48,
        pin().pp(3).tp(2).schedule(Schedule::OneFOneB),
    );
    let (p, written) = check_case(&c);
    let sizes = plan_sizes(&p, 32);
    assert_eq!(sizes.iter().sum::<u32>(), 32);
    assert!(sizes.windows(2).any(|w| w[0] != w[1]), "{sizes:?}");
    assert_eq!(written, vec![Stack::Megatron]);
}

#[test]
fn partial_flavor_servers() {
    let c = case(
        spec_model(),
        Cluster::from_flavor("1.5xLarge.768GB", Gpu::Mi250).unwrap(),
        48,
        Constraints::default(),
    );
    assert_eq!(c.cluster.devices, 12);
    let (_, written) = check_case(&c);
    assert!(!written.is_empty());
}

#[test]
fn qwen2_directory_keeps_its_qkv_bias() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/qwen2-0.5b");
    static M: OnceLock<Model> = OnceLock::new();
    let m = M.get_or_init(|| Model::load(dir.to_str().unwrap()).unwrap());
    let c = case(m, h100(8), 64, pin().tp(2));
    let (p, written) = check_case(&c);
    assert!(written.contains(&Stack::Megatron), "{p:?}");
    let cx = export_context(m, &c.cluster, &c.req);
    let line = moai_compiler::export::megatron_command_line(&p, &cx).unwrap();
    for want in [
        "--disable-bias-linear",
        "--add-qkv-bias",
        "--rotary-base 1000000",
        "--norm-epsilon 1e-6",
        "--num-query-groups 2",
    ] {
        assert!(line.contains(want), "missing {want}: {line}");
    }
    assert!(
        !line.contains("--untie-embeddings-and-output-weights"),
        "qwen2-0.5b ties: {line}"
    );
}

#[test]
fn engine_flag_restricts_the_search() {
    for (engine, check) in [
        (
            Stack::Deepspeed,
            (|p: &PlanConfig| p.tp == 1 && p.pp == 1) as fn(&PlanConfig) -> bool,
        ),
        (Stack::Fsdp, |p: &PlanConfig| {
            p.tp == 1 && p.pp == 1 && p.distribute_param
        }),
        (Stack::Megatron, |p: &PlanConfig| p.schedule != "gpipe"),
    ] {
        let c = case(spec_model(), h100(8), 64, pin().engine(engine));
        let (p, written) = check_case(&c);
        assert_eq!(p.engine, engine);
        assert!(check(&p), "{engine}: {p:?}");
        assert!(written.contains(&engine));
    }
}

#[test]
fn gpipe_has_no_engine_and_says_so() {
    let c = case(
        spec_model(),
        h100(8),
        64,
        pin().pp(2).schedule(Schedule::Gpipe),
    );
    let e = plan(c.model, &c.cluster, &c.req).unwrap_err().to_string();
    assert!(e.contains("Megatron-LM has no GPipe schedule"), "{e}");
}

#[test]
fn the_rules_reject_what_megatron_rejects() {
    let base = |extra: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        let mut v: Vec<(String, Option<String>)> = [
            ("--tensor-model-parallel-size", Some("2")),
            ("--pipeline-model-parallel-size", Some("3")),
            ("--micro-batch-size", Some("1")),
            ("--global-batch-size", Some("64")),
            ("--num-layers", Some("32")),
            ("--num-attention-heads", Some("16")),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .collect();
        v.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(String::from))),
        );
        v
    };
    // 32 layers on pp 3 without the uneven-split flags.
    assert!(
        megatron_validate(&base(&[]), 24, false)
            .unwrap_err()
            .contains("divisible")
    );
    // Unequal middle stages.
    assert!(
        megatron_validate(
            &base(&[("--decoder-first-pipeline-num-layers", Some("9"))]),
            24,
            false
        )
        .is_err_and(|e| e.contains("middle"))
    );
    assert!(
        megatron_validate(
            &base(&[("--decoder-last-pipeline-num-layers", Some("10"))]),
            24,
            false
        )
        .is_ok()
    );
    // A flag with a value, an unknown option, a bad choice.
    assert!(megatron_validate(&base(&[("--swiglu", Some("1"))]), 24, false).is_err());
    assert!(megatron_validate(&base(&[("--zero-stage", Some("3"))]), 24, false).is_err());
    assert!(megatron_validate(&base(&[("--normalization", Some("rmsnorm"))]), 24, false).is_err());
    // Megatron-FSDP without its checkpoint format, or with CUDA_DEVICE_MAX_CONNECTIONS=1.
    let fsdp = [
        ("--use-megatron-fsdp", None),
        ("--decoder-last-pipeline-num-layers", Some("10")),
    ];
    assert!(
        megatron_validate(&base(&fsdp), 24, false)
            .unwrap_err()
            .contains("fsdp_dtensor")
    );
    let mut ok = fsdp.to_vec();
    ok.push(("--ckpt-format", Some("fsdp_dtensor")));
    assert!(
        megatron_validate(&base(&ok), 24, true)
            .unwrap_err()
            .contains("CUDA_DEVICE_MAX_CONNECTIONS")
    );
    // Distributed optimizer against the FSDP flags.
    let mut v = base(&[]);
    v[1].1 = Some("1".into());
    let with = |extra: &[(&str, Option<&str>)]| {
        let mut w = v.clone();
        w.extend(
            extra
                .iter()
                .map(|(k, x)| (k.to_string(), x.map(String::from))),
        );
        megatron_validate(&w, 8, false)
    };
    assert!(with(&[]).is_ok());
    assert!(
        with(&[
            ("--use-torch-fsdp2", None),
            ("--use-distributed-optimizer", None),
            ("--untie-embeddings-and-output-weights", None)
        ])
        .unwrap_err()
        .contains("distributed optimizer")
    );
    assert!(
        with(&[("--use-torch-fsdp2", None)])
            .unwrap_err()
            .contains("untie")
    );
    assert!(
        with(&[
            ("--use-megatron-fsdp", None),
            ("--megatron-fsdp-version", Some("2")),
            ("--use-distributed-optimizer", None),
            ("--ckpt-format", Some("fsdp_dtensor"))
        ])
        .unwrap_err()
        .contains("version 2")
    );
    assert!(
        with(&[
            ("--use-megatron-fsdp", None),
            ("--use-distributed-optimizer", None),
            ("--ckpt-format", Some("fsdp_dtensor"))
        ])
        .is_ok()
    );
    assert!(
        with(&[("--overlap-param-gather", None)])
            .unwrap_err()
            .contains("distributed optimizer")
    );
    // Interleaving on pp 2 needs the (default) p2p overlap.
    let mut il = base(&[("--num-layers-per-virtual-pipeline-stage", Some("4"))]);
    il[1].1 = Some("2".into());
    assert!(megatron_validate(&il, 8, false).is_ok());
    il.push(("--no-overlap-p2p-communication".into(), None));
    assert!(
        megatron_validate(&il, 8, false)
            .unwrap_err()
            .contains("pp > 2")
    );
    // Layouts.
    assert_eq!(parse_layout("Et*11|t*11|t*10L").unwrap(), vec![11, 11, 10]);
    assert_eq!(parse_layout("E(tt|)*2,tL").unwrap(), vec![2, 2, 1]);
    assert!(parse_layout("t*11|t*11|t*10L").is_err());
    // Sequence parallel with tp 1 would be dropped.
    let mut sp = base(&[
        ("--sequence-parallel", None),
        ("--decoder-last-pipeline-num-layers", Some("10")),
    ]);
    sp[0].1 = Some("1".into());
    assert!(
        megatron_validate(&sp, 12, false)
            .unwrap_err()
            .contains("dropped")
    );
    // torchrun: node rank past the nodes, an unknown option.
    assert!(
        torchrun_validate("exec torchrun --nnodes 2 --nproc-per-node 8 --node-rank 2 x.py")
            .is_err()
    );
    assert!(torchrun_validate("exec torchrun --nodes 2 x.py").is_err());
    // DeepSpeed: batch assertion.
    let c = serde_json::json!({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "zero_optimization": {"stage": 3}});
    assert!(deepspeed_validate(&c, 8).is_ok());
    assert!(deepspeed_validate(&c, 16).is_err());
}

// ---- the command line: estimate says whether it fits; --engine; model directories ----

use crate::common::{fails, moai};

const BIG: &str = "llama:layers=40,hidden=5120,heads=40,ffn=13824,vocab=32000";

#[test]
fn estimate_says_when_it_does_not_fit() {
    let args = [
        "estimate",
        BIG,
        "--gpu",
        "h100",
        "--devices",
        "8",
        "--tp",
        "1",
        "--pp",
        "1",
        "--zero",
        "0",
        "--batch-size",
        "64",
        "--seq-len",
        "1024",
    ];
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = moai(&json_args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fits"], false, "{v}");
    assert_eq!(v["plan"]["engine"], "megatron");
    let out = moai(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let line = text
        .lines()
        .find(|l| l.starts_with("DOES NOT FIT: needs "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("GiB over"), "{line}");
    let change = text
        .lines()
        .find(|l| l.starts_with("cheapest change that fits"))
        .unwrap_or_else(|| panic!("{text}"));
    // The user's tp/pp/zero leave nothing that fits, so the change names at least one of them.
    assert!(
        change.contains("(the flags given leave nothing that fits)")
            && (change.contains("zero 0 → ")
                || change.contains("tp 1 → ")
                || change.contains("pp 1 → ")),
        "{change}"
    );
    // A configuration that fits says so.
    let v = Cli::estimate(BIG)
        .on("h100", 8)
        .batch(64)
        .flag("--zero", 3)
        .flag("--recompute", "full")
        .json()
        .ok_json();
    assert_eq!(v["fits"], true, "{v}");
    assert_eq!(
        v["plan"]["engine"], "deepspeed",
        "ZeRO-3 data parallel goes to DeepSpeed"
    );
}

#[test]
fn engine_flag_on_the_command_line() {
    let e = Cli::estimate(BIG)
        .on("h100", 8)
        .flag("--engine", "torch")
        .fails();
    assert_eq!(
        e,
        "error: --engine torch: expected megatron, deepspeed, fsdp or torchtitan"
    );
    let e = Cli::estimate(BIG)
        .on("h100", 8)
        .flag("--tp", 2)
        .flag("--engine", "deepspeed")
        .fails();
    assert!(
        e.contains("--engine deepspeed: DeepSpeed has no tensor parallelism"),
        "{e}"
    );
    let v: serde_json::Value =
        Cli::plan("llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000")
            .on("h100", 8)
            .batch(16)
            .flag("--engine", "fsdp")
            .json()
            .ok_json();
    assert_eq!(v["plan"]["engine"], "fsdp");
    assert_eq!(v["plan"]["distribute_param"], true);
}

#[test]
fn refused_exports_leave_one_line_and_no_files() {
    let dir = std::env::temp_dir().join(format!("moai-exports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Cli::plan("llama:layers=8,hidden=512,heads=8,kv_heads=8,ffn=1376,vocab=1000")
        .on("h100", 8)
        .batch(16)
        .flag("--tp", 2)
        .flag("--emit", "megatron,deepspeed")
        .flag("--out", dir.to_str().unwrap())
        .run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("DeepSpeed export not written"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("no tensor parallelism") && line.contains("--emit megatron"),
        "{line}"
    );
    assert!(dir.join("megatron_args.txt").exists() && dir.join("launch/server0.sh").exists());
    assert!(!dir.join("deepspeed_config.json").exists());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    assert_eq!(doc["exports"]["deepspeed"]["written"], false);
    assert_eq!(doc["exports"]["megatron"]["written"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_directories_and_unmodeled_fields() {
    let out = moai(&["inspect", "models/configs/llama2-13b", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"]["layers"], 40, "{v}");
    let dir = std::env::temp_dir().join(format!("moai-moe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"mistral","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
           "num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,"num_local_experts":8}"#,
    )
    .unwrap();
    let e = fails(&["inspect", dir.to_str().unwrap()]);
    assert!(e.contains("`num_local_experts` = 8 is not modeled"), "{e}");
    let e = fails(&["inspect", dir.join("config.json").to_str().unwrap()]);
    assert!(e.contains("`num_local_experts` = 8 is not modeled"), "{e}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = fails(&["inspect", dir.to_str().unwrap()]);
    assert!(e.contains("a directory without a config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    // Mistral's 4096-token sliding window: modeled as full attention up to the window, refused past it.
    let e = Cli::estimate("models/configs/mistral-7b")
        .on("h100", 8)
        .job(8, 8192)
        .fails();
    assert!(
        e.contains("`sliding_window` = 4096 is active at --seq-len 8192"),
        "{e}"
    );
    Cli::estimate("models/configs/mistral-7b")
        .on("h100", 8)
        .job(8, 4096)
        .flag("--zero", 3)
        .json()
        .ok();
}

#[test]
fn a_model_directory_with_an_onnx_file_takes_settings_from_its_config() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("moai-hfdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("models/tiny-llama.onnx"), dir.join("model.onnx")).unwrap();
    std::fs::copy(
        root.join("models/configs/tiny-llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let m = Model::load(dir.to_str().unwrap()).unwrap();
    assert!(
        matches!(&m.source, moai_compiler::ModelSource::HfDir { onnx: Some(p), .. } if p.ends_with("model.onnx")),
        "{:?}",
        m.source
    );
    assert!(m.onnx.is_some(), "the graph comes from the ONNX file");
    let arch = m.arch.as_ref().expect("the config is read");
    let s = m.settings();
    assert_eq!(s.rope_theta, Some(arch.rope_theta));
    assert_eq!(s.norm_eps, Some(arch.eps));
    // Two ONNX files: which one is meant is not guessed.
    std::fs::copy(dir.join("model.onnx"), dir.join("other.onnx")).unwrap();
    let e = Model::load(dir.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("2 ONNX files in the directory (model.onnx, other.onnx)"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn biases_megatron_cannot_express_are_refused_not_dropped() {
    let dir = std::env::temp_dir().join(format!("moai-bias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |extra: &str| {
        let p = dir.join(format!("llama{}.json", extra.len()));
        std::fs::write(
            &p,
            format!(
                r#"{{"model_type":"llama","hidden_size":512,"intermediate_size":1376,"num_hidden_layers":4,
                   "num_attention_heads":8,"vocab_size":1000{extra}}}"#
            ),
        )
        .unwrap();
        Model::load(p.to_str().unwrap()).unwrap()
    };
    let cluster = h100(8);
    let req = PlanRequest::new(16, 512);
    for (extra, want) in [
        (
            r#","attention_bias":true"#,
            Err("attention output projections only"),
        ),
        (r#","mlp_bias":true"#, Err("MLP projections only")),
        (r#","attention_bias":true,"mlp_bias":true"#, Ok(false)),
        ("", Ok(true)),
    ] {
        let m = cfg(extra);
        let report = plan(&m, &cluster, &req).unwrap();
        let cx = export_context(&m, &cluster, &req);
        match (megatron_args(&report.output.plan, &cx), want) {
            (Err(e), Err(w)) => assert!(e.contains(w), "{extra}: {e}"),
            (Ok(args), Ok(disabled)) => {
                let has = args.iter().any(|(k, _)| k == "--disable-bias-linear");
                assert_eq!(has, disabled, "{extra}");
                let run = megatron_validate(&args, 8, false).unwrap();
                assert_eq!(run.linear_bias, !disabled);
            }
            (got, w) => panic!("{extra}: got {got:?}, want {w:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_beside_an_onnx_file_must_describe_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("moai-sibling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("model.onnx");
    std::fs::copy(root.join("models/tiny-llama.onnx"), &onnx).unwrap();
    let config =
        std::fs::read_to_string(root.join("models/configs/tiny-llama/config.json")).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let m = Model::load(onnx.to_str().unwrap()).unwrap();
    assert!(m.arch.is_some(), "the sibling config is read");
    // A config for another model is an error, not a silent mix.
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["num_hidden_layers"] = serde_json::json!(7);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = Model::load(onnx.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("says num_hidden_layers 7, the graph has 2"),
        "{e}"
    );
    // And its unmodeled fields are refused.
    v["num_hidden_layers"] = serde_json::json!(2);
    v["num_local_experts"] = serde_json::json!(4);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = Model::load(onnx.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("`num_local_experts` = 4 is not modeled"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mixtral-8x7B (its Hugging Face config) on 64 H100: the plan spreads the experts (ep > 1), the
/// Megatron-LM export carries the MoE flags and passes Megatron's rules, `estimate` of the exported
/// configuration predicts the plan, and DeepSpeed/FSDP refuse in one line.
#[test]
fn mixtral_on_64_h100_plans_expert_parallelism_and_exports_the_moe_flags() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/mixtral-8x7b");
    static M: OnceLock<Model> = OnceLock::new();
    let m = M.get_or_init(|| Model::load(dir.to_str().unwrap()).unwrap());
    let mut c = case(m, h100(64), 256, Constraints::default());
    c.req.seq = 4096;
    c.req.constraints.recompute = vec![Recompute::None, Recompute::Selective];
    let (p, written) = check_case(&c);
    assert!(p.ep > 1, "{p:?}");
    assert_eq!(written, vec![Stack::Megatron], "{p:?}");
    let cx = export_context(m, &c.cluster, &c.req);
    let line = moai_compiler::export::megatron_command_line(&p, &cx).unwrap();
    for want in [
        "--num-experts 8".to_string(),
        "--moe-router-topk 2".into(),
        "--moe-ffn-hidden-size 14336".into(),
        "--moe-grouped-gemm".into(),
        "--moe-token-dispatcher-type alltoall".into(),
        format!("--expert-model-parallel-size {}", p.ep),
        format!("--expert-tensor-parallel-size {}", p.expert_tp),
    ] {
        assert!(line.contains(&want), "missing {want}: {line}");
    }
    assert!(
        !line.contains("--moe-layer-freq"),
        "every layer is MoE: {line}"
    );
    // The prediction says how much of the step is dispatch.
    let report = plan(m, &c.cluster, &c.req).unwrap();
    let b = &report.output.predicted.breakdown;
    assert!(
        b.moe_dispatch_s > 0.0 && b.moe_dispatch_s <= b.exposed_comm_s,
        "{b:?}"
    );
    assert!(
        report.explanation.contains("dispatch"),
        "{}",
        report.explanation
    );
}

/// DeepSeek-V3's export names its dense first layers, shared expert, sigmoid router with expert bias
/// and latent attention; engines without expert parallelism refuse it.
#[test]
fn deepseek_v3_megatron_export_carries_latent_attention_and_moe_flags() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/deepseek-v3");
    let m = Model::load(dir.to_str().unwrap()).unwrap();
    let cluster = h100(1024);
    let req = PlanRequest::new(1024, 4096);
    let cx = export_context(&m, &cluster, &req);
    let cfg = ParallelConfig {
        dp: 64,
        tp: 2,
        pp: 8,
        micro_batch_size: 1,
        num_micro_batches: 16,
        sequence_parallel: true,
        ep: 64,
        expert_tp: 1,
        ..ParallelConfig::default()
    };
    let p = moai_compiler::plan::PlanConfig::of_config(&cfg, 61);
    let args = megatron_args(&p, &cx).unwrap();
    let run = megatron_validate(&args, 1024, false).unwrap();
    assert_eq!((run.ep, run.expert_tp), (64, 1));
    let line = moai_compiler::export::megatron_command_line(&p, &cx).unwrap();
    for want in [
        "--num-experts 256",
        "--moe-router-topk 8",
        "--moe-ffn-hidden-size 2048",
        "--moe-layer-freq '([0]*3+[1]*58)'",
        "--moe-shared-expert-intermediate-size 2048",
        "--moe-router-score-function sigmoid",
        "--moe-router-enable-expert-bias",
        "--multi-latent-attention",
        "--q-lora-rank 1536",
        "--kv-lora-rank 512",
        "--qk-head-dim 128",
        "--qk-pos-emb-head-dim 64",
        "--v-head-dim 128",
    ] {
        assert!(line.contains(want), "missing {want}: {line}");
    }
    // The config's YaRN (factor 40, mscale 1, mscale_all_dim 1; original positions 4096 and betas
    // 32/1 are MLATransformerConfig's defaults), not the command line's defaults (1, 1, 0).
    let val = |args: &[(String, Option<String>)], k: &str| {
        args.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone().unwrap_or_default())
    };
    for (k, v) in [
        ("--rotary-base", "10000"),
        ("--rope-type", "yarn"),
        ("--rotary-scaling-factor", "40"),
        ("--mscale", "1"),
        ("--mscale-all-dim", "1"),
    ] {
        assert_eq!(val(&args, k).as_deref(), Some(v), "{k}: {line}");
    }
    assert_eq!(val(&args, "--no-rope-fusion"), None, "{line}");
    // A YaRN the flags cannot reach is refused in one line; no scaling is plain rotary, said so.
    let mut other = cx.clone();
    let Some(moai_models::RopeScaling::Yarn { beta_fast, .. }) =
        other.settings.rope_scaling.as_mut()
    else {
        panic!("DeepSeek-V3's config has YaRN scaling")
    };
    *beta_fast = 16.0;
    let why = megatron_args(&p, &other).unwrap_err();
    assert!(
        why.contains("beta_fast 16") && why.contains("MLATransformerConfig") && !why.contains('\n'),
        "{why}"
    );
    other.settings.rope_scaling = None;
    let plain = megatron_args(&p, &other).unwrap();
    megatron_validate(&plain, 1024, false).unwrap();
    assert_eq!(val(&plain, "--rope-type").as_deref(), Some("rope"));
    assert_eq!(val(&plain, "--no-rope-fusion").as_deref(), Some(""));
    assert_eq!(val(&plain, "--rotary-scaling-factor"), None);
    let mut d = PlanDims::of_plan(&p, &cx).unwrap();
    (d.config.tp, d.config.pp, d.config.dp) = (1, 1, 1024);
    ZeroStage::Zero3.apply(&mut d.config);
    for e in [Stack::Deepspeed, Stack::Fsdp] {
        let why = engine_runs(e, &d).unwrap_err();
        assert!(
            why.contains("no expert parallelism") && !why.contains('\n'),
            "{why}"
        );
    }
    let mut dense_ep = d;
    dense_ep.config.ep = 1;
    let why = engine_runs(Stack::Fsdp, &dense_ep).unwrap_err();
    assert!(why.contains("grouped GEMMs"), "{why}");
}

/// Llama 3.x rotary scaling: Megatron-LM's pretrain_gpt.py applies only Llama 3.1's (`--use-rope-scaling`
/// with its fixed constants); another (Llama 3.2's factor 32) and YaRN on standard attention are
/// refused in one line; the Hugging Face Trainer exports build the model from its config, which
/// carries the scaling.
#[test]
fn megatron_exports_the_rotary_scaling_it_can_express_and_refuses_the_rest() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/llama3-8b");
    let m = Model::load(dir.to_str().unwrap()).unwrap();
    let cluster = h100(8);
    let req = PlanRequest::new(64, 8192);
    let mut cx = export_context(&m, &cluster, &req);
    assert_eq!(cx.settings.rope_scaling, None, "Llama 3.0 has none");
    let cfg = ParallelConfig {
        dp: 8,
        micro_batch_size: 1,
        num_micro_batches: 8,
        recompute: moai_costmodel::Recompute::Full,
        distribute_optimizer: true,
        ..ParallelConfig::default()
    };
    let p = moai_compiler::plan::PlanConfig::of_config(&cfg, 32);
    let plain = megatron_args(&p, &cx).unwrap();
    assert!(
        !plain
            .iter()
            .any(|(k, _)| k.contains("rope-scaling") || k == "--rope-type"),
        "{plain:?}"
    );
    let llama31 = |factor: f64| moai_models::RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    cx.settings.rope_scaling = Some(llama31(8.0));
    let args = megatron_args(&p, &cx).unwrap();
    megatron_validate(&args, 8, false).unwrap();
    assert!(
        args.contains(&("--use-rope-scaling".to_string(), None)),
        "{args:?}"
    );
    assert_eq!(args.len(), plain.len() + 1);
    cx.settings.rope_scaling = Some(llama31(32.0));
    let why = megatron_args(&p, &cx).unwrap_err();
    assert!(
        why.contains("factor 32") && why.contains("--use-rope-scaling") && !why.contains('\n'),
        "{why}"
    );
    let files = engine_exports_of(Stack::Megatron, &p, &cx);
    assert!(files.is_err());
    // DeepSpeed and FSDP run the Hugging Face model, built from the config with its scaling.
    let mut z3 = cfg.clone();
    ZeroStage::Zero3.apply(&mut z3);
    let p3 = moai_compiler::plan::PlanConfig::of_config(&z3, 32);
    for e in [Stack::Deepspeed, Stack::Fsdp] {
        engine_exports_of(e, &p3, &cx).unwrap();
    }
    cx.settings.rope_scaling = Some(moai_models::RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 32768,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim: 0.0,
    });
    let why = megatron_args(&p, &cx).unwrap_err();
    assert!(
        why.contains("yarn rotary scaling on standard attention"),
        "{why}"
    );
    // The validator catches a flag the export would misuse.
    let mut bad = plain.clone();
    bad.push(("--rotary-scaling-factor".into(), Some("8".into())));
    assert!(megatron_validate(&bad, 8, false).is_err());
}

/// A graph's rotary base is read from its `inv_freq` table only when the whole table is plain rotary:
/// a scaled table (Llama 3.1's low frequencies divided by 8 keep `inv_freq[1]`) leaves the base
/// unknown, so Megatron-LM and torchtitan refuse instead of exporting unscaled rotary.
#[test]
fn a_graph_with_a_scaled_inv_freq_table_has_no_rotary_base() {
    // A graph without a config, holding a rotary inv_freq table (as an ONNX export may).
    let mut m = Model::load(
        "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,rope_theta=500000,eps=1e-5",
    )
    .unwrap();
    m.arch = None;
    let table = |scaled: bool| {
        let v = (0..8)
            .map(|i| {
                let f = 500_000f64.powf(-(i as f64) / 8.0);
                (if scaled && i >= 4 { f / 8.0 } else { f }) as f32
            })
            .collect();
        moai_ir::Op::Constant(moai_ir::Tensor::f32(vec![8], v))
    };
    let id = m.graph.add(
        table(false),
        vec![],
        vec![moai_ir::TensorType::new(
            moai_ir::DType::F32,
            moai_ir::Shape::from_consts(&[8]),
        )],
        moai_ir::Provenance {
            name: "model.rotary_emb.inv_freq".into(),
            ..Default::default()
        },
    );
    assert_eq!(m.settings().rope_theta, Some(500_000.0));
    m.graph.node_mut(id).op = table(true);
    assert_eq!(m.settings().rope_theta, None);
}

fn engine_exports_of(
    e: Stack,
    p: &moai_compiler::plan::PlanConfig,
    cx: &ExportContext,
) -> Result<Vec<(String, String)>, String> {
    moai_compiler::export::export_files(e, p, cx)
}

/// Expert parallelism in the cost model: spreading Mixtral's experts over more ranks cuts the expert
/// weights each device holds and adds all-to-all dispatch time; a higher routing imbalance slows the
/// step; a dense model refuses ep in one line.
#[test]
fn expert_parallelism_trades_memory_for_dispatch_and_imbalance_costs_time() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/mixtral-8x7b");
    let m = Model::load(dir.to_str().unwrap()).unwrap();
    let cluster = h100(64);
    let req = PlanRequest::new(256, 4096);
    let cfg = |ep: u32| ParallelConfig {
        dp: 16,
        tp: 1,
        pp: 4,
        micro_batch_size: 1,
        num_micro_batches: 16,
        distribute_optimizer: true,
        schedule: Schedule::Interleaved(8),
        ep,
        ..ParallelConfig::default()
    };
    let one = estimate(&m, &cluster, &cfg(1), &req).unwrap();
    let eight = estimate(&m, &cluster, &cfg(8), &req).unwrap();
    assert_eq!(one.predicted.breakdown.moe_dispatch_s, 0.0);
    assert!(eight.predicted.breakdown.moe_dispatch_s > 0.0);
    assert!(
        eight.predicted.peak_memory_bytes * 2 < one.predicted.peak_memory_bytes,
        "ep 8 {} vs ep 1 {}",
        eight.predicted.peak_memory_bytes,
        one.predicted.peak_memory_bytes
    );
    let mut balanced = req.clone();
    balanced.moe_imbalance = Some(1.0);
    let b = estimate(&m, &cluster, &cfg(8), &balanced).unwrap();
    assert!(b.predicted.step_time_s < eight.predicted.step_time_s);
    let mut bad = req.clone();
    bad.moe_imbalance = Some(0.5);
    let e = estimate(&m, &cluster, &cfg(8), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--moe-imbalance 0.5"), "{e}");
    let e = estimate(
        spec_model(),
        &h100(8),
        &ParallelConfig {
            dp: 8,
            ep: 2,
            ..ParallelConfig::default()
        },
        &PlanRequest::new(8, 1024),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("need a mixture-of-experts model"), "{e}");
}

/// Qwen3-30B-A3B: 128 experts without a shared expert, per-head query/key norms (`--qk-layernorm`).
#[test]
fn qwen3_moe_megatron_export_has_qk_layernorm() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/qwen3-30b-a3b");
    let m = Model::load(dir.to_str().unwrap()).unwrap();
    let cluster = h100(16);
    let req = PlanRequest::new(512, 4096);
    let cx = export_context(&m, &cluster, &req);
    let cfg = ParallelConfig {
        dp: 8,
        pp: 2,
        num_micro_batches: 64,
        ep: 8,
        distribute_optimizer: true,
        ..ParallelConfig::default()
    };
    let p = moai_compiler::plan::PlanConfig::of_config(&cfg, 48);
    let args = megatron_args(&p, &cx).unwrap();
    megatron_validate(&args, 16, false).unwrap();
    let line = moai_compiler::export::megatron_command_line(&p, &cx).unwrap();
    for want in [
        "--qk-layernorm",
        "--num-experts 128",
        "--moe-router-topk 8",
        "--moe-ffn-hidden-size 768",
        "--kv-channels 128",
        "--expert-model-parallel-size 8",
    ] {
        assert!(line.contains(want), "missing {want}: {line}");
    }
    assert!(!line.contains("--moe-shared-expert"), "{line}");
    assert!(!line.contains("--moe-router-pre-softmax"), "{line}");
}
