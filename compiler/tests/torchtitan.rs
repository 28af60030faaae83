//! The torchtitan export, checked by torchtitan's own rules as extracted from its source at the commit in
//! `compiler/data/torchtitan_config.txt` (JobConfig keys and choices, `ParallelDims._validate`, the
//! pipeline split and schedule checks, the batch checks, the DDP and mixed-precision rules): every key
//! moai writes exists there with a legal value, for every plan kind torchtitan runs, and the plan read
//! back from the TOML is the plan (`exports::check_case` also estimates it and compares).

use crate::common::{Case, Pin, case, h100, pinned};
use crate::exports::check_case;
use moai_compiler::export::torchtitan::{flavors, schedule_name, torchtitan_toml};
use moai_compiler::export::{ExportContext, PlanDims, engine_runs};
use moai_compiler::plan::PlanConfig;
use moai_compiler::{
    Constraints, Model, ParallelConfig, PlanRequest, Recompute, Schedule, ZeroStage, estimate,
};
use moai_costmodel::Stack;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A TOML value of the subset torchtitan's configs use.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Value>),
}

fn parse_value(t: &str) -> Result<(Value, &str), String> {
    let t = t.trim_start();
    if let Some(rest) = t.strip_prefix('"') {
        let end = rest.find('"').ok_or("unterminated string")?;
        return Ok((Value::Str(rest[..end].to_string()), &rest[end + 1..]));
    }
    if let Some(mut rest) = t.strip_prefix('[') {
        let mut items = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(']') {
                return Ok((Value::List(items), r));
            }
            let (v, r) = parse_value(rest)?;
            items.push(v);
            rest = r.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let end = t
        .find(|c: char| c == ',' || c == ']' || c.is_whitespace())
        .unwrap_or(t.len());
    let (word, rest) = t.split_at(end);
    let v = match word {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        w if w.parse::<i64>().is_ok() => Value::Int(w.parse().unwrap()),
        w if w.parse::<f64>().is_ok() => Value::Float(w.parse().unwrap()),
        w => return Err(format!("`{w}` is not a TOML value")),
    };
    Ok((v, rest))
}

/// `section.key` → value, for the TOML subset torchtitan's configs use (sections, `key = value`,
/// strings, numbers, booleans, nested arrays over several lines, `#` comments).
fn parse_toml(text: &str) -> Result<HashMap<String, Value>, String> {
    let mut out = HashMap::new();
    let mut section = String::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(format!("line `{line}`"))?;
        let mut v = v.trim().to_string();
        // A multi-line array: read until the brackets balance.
        while v.matches('[').count() > v.matches(']').count() && i < lines.len() {
            v.push(' ');
            v.push_str(lines[i].trim());
            i += 1;
        }
        let (value, rest) = parse_value(&v)?;
        let rest = rest.trim();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(format!("trailing `{rest}` after {k}"));
        }
        let key = format!("{section}.{}", k.trim());
        if out.insert(key.clone(), value).is_some() {
            return Err(format!("{key} given twice"));
        }
    }
    Ok(out)
}

fn data() -> &'static str {
    moai_compiler::export::torchtitan::TORCHTITAN_CONFIG
}

fn key_kinds() -> &'static HashMap<String, String> {
    static K: OnceLock<HashMap<String, String>> = OnceLock::new();
    K.get_or_init(|| {
        data()
            .lines()
            .filter_map(|l| l.strip_prefix("key "))
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                )
            })
            .collect()
    })
}

fn check_kind(key: &str, kind: &str, v: &Value) -> Result<(), String> {
    let ok = match (kind, v) {
        ("bool", Value::Bool(_)) | ("int", Value::Int(_)) | ("str", Value::Str(_)) => true,
        ("float", Value::Float(_) | Value::Int(_)) => true,
        ("list-str", Value::List(l)) => l.iter().all(|x| matches!(x, Value::Str(_))),
        ("list-list-str", Value::List(l)) => l
            .iter()
            .all(|x| matches!(x, Value::List(m) if m.iter().all(|y| matches!(y, Value::Str(_))))),
        (k, Value::Str(s)) if k.starts_with("choice:") => {
            k["choice:".len()..].split(',').any(|c| c == s)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{key} = {v:?} is not a {kind}"))
    }
}

/// What torchtitan runs for a TOML on `world` ranks.
pub(crate) struct TitanRun {
    pub dp: u64,
    pub tp: u64,
    pub pp: u64,
    pub cp: u64,
    pub micro: u64,
    pub micro_batches: u64,
    pub stage_sizes: Vec<u32>,
    pub chunks: u32,
    pub schedule: Schedule,
    pub recompute: Recompute,
    pub zero: u8,
    /// HSDP: FSDP2's shard degree when replicated too (0: FSDP over all of dp, or no FSDP).
    pub dp_shard: u64,
    /// The decoder linears' GEMM precision: fp8 when torchao's float8 linear converter runs them with
    /// per-tensor (tensorwise) scales and the LM head (`output`) filtered out, as costed.
    pub precision: moai_costmodel::MatmulPrecision,
}

/// torchtitan's config parsing and the rules of the `rule` lines of torchtitan_config.txt.
pub(crate) fn torchtitan_validate(text: &str, world: u64) -> Result<TitanRun, String> {
    let t = parse_toml(text)?;
    for (k, v) in &t {
        let kind = key_kinds()
            .get(k)
            .ok_or_else(|| format!("{k}: not a JobConfig key at the pinned commit"))?;
        check_kind(k, kind, v)?;
    }
    let int = |k: &str, d: i64| match t.get(k) {
        Some(Value::Int(i)) => *i,
        _ => d,
    };
    let st = |k: &str, d: &str| match t.get(k) {
        Some(Value::Str(s)) => s.clone(),
        _ => d.to_string(),
    };
    let boolean = |k: &str| matches!(t.get(k), Some(Value::Bool(true)));
    // model: a registered flavor.
    let (name, flavor) = (st("model.name", "llama3"), st("model.flavor", "debugmodel"));
    let f = flavors()
        .into_iter()
        .find(|f| f.name == name && f.flavor == flavor)
        .ok_or(format!("no flavor {name} {flavor}"))?;
    // ParallelDims._validate
    let (rep, mut shard) = (
        int("parallelism.data_parallel_replicate_degree", 1),
        int("parallelism.data_parallel_shard_degree", -1),
    );
    let (cp, tp, pp) = (
        int("parallelism.context_parallel_degree", 1),
        int("parallelism.tensor_parallel_degree", 1),
        int("parallelism.pipeline_parallel_degree", 1),
    );
    if [rep, cp, tp, pp].iter().any(|d| *d < 1) || !(shard == -1 || shard >= 1) {
        return Err("parallelism degree < 1".into());
    }
    if shard < 0 {
        shard = world as i64 / (rep * cp * tp * pp);
    }
    if rep * shard * cp * tp * pp != world as i64 {
        return Err(format!(
            "dp_replicate {rep} * dp_shard {shard} * cp {cp} * tp {tp} * pp {pp} != world {world}"
        ));
    }
    let fsdp = shard * cp > 1;
    if !fsdp && rep > 1 && (tp > 1 || pp > 1 || cp > 1) {
        return Err("DDP has not supported > 1D parallelism".into());
    }
    let seq = int("training.seq_len", 2048);
    let div = if cp > 1 { tp * 2 * cp } else { tp };
    if seq % div != 0 {
        return Err(format!("seq_len {seq} not divisible by {div}"));
    }
    if boolean("parallelism.enable_async_tensor_parallel") && !boolean("compile.enable") {
        return Err("async TP requires compile".into());
    }
    if st("training.mixed_precision_param", "bfloat16") == "bfloat16" && !fsdp && (tp > 1 || pp > 1)
    {
        return Err("mixed precision with TP or PP without FSDP is disabled".into());
    }
    // Batch: train.py and build_pipeline_schedule.
    let local = int("training.local_batch_size", 8);
    let dp = rep * shard;
    let global = match int("training.global_batch_size", -1) {
        g if g < 0 => local * dp,
        g => g,
    };
    if global <= 0 || global % (local * dp) != 0 {
        return Err(format!(
            "global batch {global} not divisible by local {local} * dp {dp}"
        ));
    }
    let accumulation = global / (local * dp);
    let (micro, micro_batches, schedule, stage_sizes, chunks) = if pp > 1 {
        let mb = int("parallelism.pipeline_parallel_microbatch_size", 1);
        if local % mb != 0 {
            return Err(format!(
                "local batch {local} not divisible by microbatch {mb}"
            ));
        }
        let sname = st("parallelism.pipeline_parallel_schedule", "1F1B");
        let style = data()
            .lines()
            .filter_map(|l| l.strip_prefix("schedule "))
            .find_map(|l| {
                let (n, s) = l.split_once(' ')?;
                (n == sname).then(|| s.trim().to_string())
            })
            .ok_or(format!("unknown schedule {sname}"))?;
        let Some(Value::List(parts)) = t.get("parallelism.module_fqns_per_model_part") else {
            return Err("no module_fqns_per_model_part".into());
        };
        if parts.len() as i64 % pp != 0 {
            return Err(format!("{} stages not divisible by pp {pp}", parts.len()));
        }
        let per_rank = parts.len() as i64 / pp;
        match style.as_str() {
            "single" if per_rank != 1 => return Err("single-stage schedule".into()),
            "multi" if per_rank < 2 => return Err("multi-stage schedule needs 2 per rank".into()),
            "v" if per_rank != 2 => return Err("v schedule needs 2 per rank".into()),
            _ => {}
        }
        // Every module exactly once, in order: embeddings first, norm and output last.
        let mut next = 0u32;
        let mut sizes = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let Value::List(m) = part else {
                return Err("a part is not a list".into());
            };
            let names: Vec<&str> = m
                .iter()
                .map(|v| match v {
                    Value::Str(s) => s.as_str(),
                    _ => "",
                })
                .collect();
            let mut k = 0;
            for n in &names {
                match *n {
                    "tok_embeddings" if i == 0 => {}
                    "norm" | "output" if i + 1 == parts.len() => {}
                    l => {
                        let idx: u32 = l
                            .strip_prefix("layers.")
                            .and_then(|x| x.parse().ok())
                            .ok_or(format!("module {l} in stage {i}"))?;
                        if idx != next {
                            return Err(format!("layer {idx} out of order"));
                        }
                        next += 1;
                        k += 1;
                    }
                }
            }
            sizes.push(k);
        }
        if next != f.layers || !names_complete(parts) {
            return Err(format!("stages cover {next} of {} layers", f.layers));
        }
        let schedule = match sname.as_str() {
            "1F1B" => Schedule::OneFOneB,
            "GPipe" => Schedule::Gpipe,
            "Interleaved1F1B" => Schedule::Interleaved(per_rank as u32),
            s => return Err(format!("schedule {s} is not one moai plans")),
        };
        if accumulation != 1 {
            return Err("pp with gradient accumulation is not what moai writes".into());
        }
        (
            mb as u64,
            (local / mb) as u64,
            schedule,
            sizes,
            per_rank as u32,
        )
    } else {
        (
            local as u64,
            accumulation as u64,
            Schedule::OneFOneB,
            vec![f.layers],
            1,
        )
    };
    let recompute = match st("activation_checkpoint.mode", "selective").as_str() {
        "none" => Recompute::None,
        "full" => Recompute::Full,
        // apply_ac: selective with the "op" option is the per-op policy; an integer is every Nth layer.
        "selective" if st("activation_checkpoint.selective_ac_option", "2") == "op" => {
            Recompute::SelectiveOp
        }
        m => return Err(format!("activation checkpointing {m} is not a moai mode")),
    };
    // components/quantization: the converters registered at the pinned commit; float8 linears with a
    // recipe name assert that FSDP's float8 all-gather is off.
    let converters: Vec<String> = match t.get("model.converters") {
        Some(Value::List(l)) => l
            .iter()
            .map(|v| match v {
                Value::Str(s) => s.clone(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut precision = moai_costmodel::MatmulPrecision::Bf16;
    for c in &converters {
        match c.as_str() {
            "quantize.linear.float8" => {
                if st("quantize.linear.float8.recipe_name", "") != "tensorwise" {
                    return Err("float8 linears without the tensorwise (per-tensor) recipe are not what moai costs".into());
                }
                if boolean("quantize.linear.float8.enable_fsdp_float8_all_gather") {
                    return Err(
                        "enable_fsdp_float8_all_gather together with recipe_name is not supported"
                            .into(),
                    );
                }
                let head_filtered = matches!(
                    t.get("quantize.linear.float8.filter_fqns"),
                    Some(Value::List(l)) if l.iter().any(|v| matches!(v, Value::Str(s) if s == "output"))
                );
                if !head_filtered {
                    return Err(
                        "float8 converts the LM head (output) too, which moai costs in bf16".into(),
                    );
                }
                precision = moai_costmodel::MatmulPrecision::Fp8;
            }
            other => return Err(format!("model converter {other} is not one moai writes")),
        }
    }
    if fsdp && st("parallelism.fsdp_reshard_after_forward", "default") != "always" {
        return Err("FSDP without resharding after every forward is not ZeRO-3 as costed".into());
    }
    Ok(TitanRun {
        dp: dp as u64,
        tp: tp as u64,
        pp: pp as u64,
        cp: cp as u64,
        micro,
        micro_batches,
        stage_sizes,
        chunks,
        schedule,
        precision,
        recompute,
        zero: if fsdp { 3 } else { 0 },
        dp_shard: if fsdp && rep > 1 { shard as u64 } else { 0 },
    })
}

fn names_complete(parts: &[Value]) -> bool {
    let has = |i: usize, n: &str| matches!(parts.get(i), Some(Value::List(m)) if m.contains(&Value::Str(n.into())));
    has(0, "tok_embeddings") && has(parts.len() - 1, "norm") && has(parts.len() - 1, "output")
}

/// Llama 3 8B as torchtitan's `llama3 8B` flavor.
fn llama3_8b() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load("llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=128256,rope_theta=500000,eps=1e-5")
            .unwrap()
    })
}

/// torchtitan's `llama3 debugmodel` flavor.
fn debugmodel() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load("llama:layers=6,hidden=256,heads=16,kv_heads=16,ffn=768,vocab=2048,rope_theta=500000,eps=1e-5")
            .unwrap()
    })
}

fn titan_case(devices: u32, batch: u64, seq: u64, c: Constraints) -> Case {
    titan_case_of(llama3_8b(), devices, batch, seq, c)
}

fn titan_case_of(
    model: &'static Model,
    devices: u32,
    batch: u64,
    seq: u64,
    c: Constraints,
) -> Case {
    let mut r = case(model, h100(devices), batch, c.engine(Stack::Torchtitan));
    r.req.seq = seq;
    r
}

#[test]
fn the_toml_parser_reads_what_torchtitan_ships() {
    let t = parse_toml(
        "[parallelism]\ndata_parallel_shard_degree = -1 # comment\nmodule_fqns_per_model_part = [\n [\"a\", \"b\"],\n [\"c\"],\n]\n[quantize.linear.float8]\nfilter_fqns = [\"output\"]\n",
    )
    .unwrap();
    assert_eq!(t["parallelism.data_parallel_shard_degree"], Value::Int(-1));
    assert_eq!(
        t["quantize.linear.float8.filter_fqns"],
        Value::List(vec![Value::Str("output".into())])
    );
    assert!(matches!(&t["parallelism.module_fqns_per_model_part"], Value::List(l) if l.len() == 2));
    assert!(parse_toml("[a]\nx = bogus\n").is_err());
    // The data file's flavors reproduce torchtitan's FFN rule (FeedForward in model.py).
    for f in flavors() {
        let (mult, mo) = match f.flavor.as_str() {
            "8B" => (Some(1.3), 1024),
            "70B" => (Some(1.3), 4096),
            "405B" => (Some(1.2), 4096),
            _ => (None, 256),
        };
        let mut h = 2 * 4 * f.hidden / 3;
        if let Some(m) = mult {
            h = (m * h as f64) as u64;
        }
        assert_eq!(f.ffn, mo * h.div_ceil(mo), "{}", f.flavor);
    }
}

#[test]
fn every_plan_kind_torchtitan_runs_is_exported_as_planned() {
    let sp = Some(true);
    let kinds: Vec<(&str, Case)> = vec![
        (
            "FSDP2 over 16 ranks, full recompute",
            titan_case(
                16,
                32,
                4096,
                pinned(ZeroStage::Zero3, 1, 1).recompute(Recompute::Full),
            ),
        ),
        (
            "FSDP2 over 16 ranks, per-op selective activation checkpointing",
            titan_case(
                16,
                32,
                4096,
                pinned(ZeroStage::Zero3, 1, 1).recompute(Recompute::SelectiveOp),
            ),
        ),
        (
            "DDP alone (the debug flavor: 8B does not fit replicated)",
            titan_case_of(
                debugmodel(),
                8,
                64,
                1024,
                pinned(ZeroStage::Zero0, 1, 1).recompute(Recompute::Full),
            ),
        ),
        (
            "FSDP2 + TP (2D)",
            titan_case(
                16,
                32,
                4096,
                pinned(ZeroStage::Zero3, 4, 1).sequence_parallel(sp),
            ),
        ),
        (
            "FSDP2 + TP + CP (ring attention over 2 ranks)",
            titan_case(
                16,
                8,
                16384,
                pinned(ZeroStage::Zero3, 2, 1)
                    .cp(2)
                    .cp_comm(moai_costmodel::CpComm::P2p)
                    .sequence_parallel(sp),
            ),
        ),
        (
            "FSDP2 + TP with float8 linears (--precision fp8)",
            titan_case(
                16,
                32,
                4096,
                pinned(ZeroStage::Zero3, 2, 1)
                    .sequence_parallel(sp)
                    .precision(moai_costmodel::MatmulPrecision::Fp8),
            ),
        ),
        (
            "FSDP2 + PP 1F1B",
            titan_case(
                16,
                64,
                4096,
                pinned(ZeroStage::Zero3, 1, 4).schedule(Schedule::OneFOneB),
            ),
        ),
        (
            "FSDP2 + TP + PP interleaved",
            titan_case(
                32,
                64,
                4096,
                pinned(ZeroStage::Zero3, 2, 4)
                    .sequence_parallel(sp)
                    .schedule(Schedule::Interleaved(2)),
            ),
        ),
        (
            "FSDP2 + PP GPipe on a partial server",
            titan_case(
                12,
                48,
                2048,
                pinned(ZeroStage::Zero3, 1, 3).schedule(Schedule::Gpipe),
            ),
        ),
    ];
    for (what, c) in &kinds {
        let (p, written) = check_case(c);
        assert_eq!(p.engine, Stack::Torchtitan, "{what}");
        assert!(written.contains(&Stack::Torchtitan), "{what}: {p:?}");
    }
}

fn plan_of(tp: u64, pp: u64, dp: u64) -> (PlanConfig, ExportContext) {
    let c = titan_case(
        (tp * pp * dp) as u32,
        dp * 4,
        4096,
        pinned(ZeroStage::Zero3, tp as u32, pp as u32)
            .sequence_parallel((tp > 1).then_some(true))
            .recompute(Recompute::Full),
    );
    let report = moai_compiler::plan(c.model, &c.cluster, &c.req).unwrap();
    let cx = moai_compiler::emit::export_context(c.model, &c.cluster, &c.req);
    (report.output.plan, cx)
}

#[test]
fn what_torchtitan_cannot_run_exactly_is_refused_in_one_line() {
    let (p, cx) = plan_of(2, 1, 4);
    torchtitan_toml(&p, &cx).unwrap();
    let refuse = |p: &PlanConfig, cx: &ExportContext, want: &str| {
        let e = torchtitan_toml(p, cx).unwrap_err();
        assert!(e.contains(want) && !e.contains('\n'), "{e}");
    };
    let mut q = p.clone();
    q.recompute = Recompute::Selective;
    refuse(&q, &cx, "selective");
    let mut q = p.clone();
    q.distribute_param = false;
    q.distribute_low_prec_param = false;
    refuse(&q, &cx, "ZeRO-1");
    q.distribute_optimizer = false;
    refuse(&q, &cx, "DDP");
    let mut q = p.clone();
    q.sequence_parallel = false;
    refuse(&q, &cx, "sequence parallel");
    let mut q = p.clone();
    q.overlap_grad_reduce = false;
    refuse(&q, &cx, "no switch to turn off the grad-reduce overlap");
    let mut cx2 = cx.clone();
    cx2.optimizer = "sgd".into();
    refuse(&p, &cx2, "Adam and AdamW");
    let mut cx2 = cx.clone();
    cx2.precision = "bf16".into();
    refuse(&p, &cx2, "amp-bf16");
    let mut cx2 = cx.clone();
    cx2.seq = 4095;
    refuse(&p, &cx2, "divisible by 2");
    let mut cx2 = cx.clone();
    cx2.ffn = 11008;
    refuse(&p, &cx2, "matches none");
    let mut cx2 = cx.clone();
    cx2.settings.rope_theta = None;
    refuse(&p, &cx2, "rope_theta");
    // Rotary scaling: the llama3 flavors apply Llama 3.1's (exact for a Llama 3.1 config, said so);
    // any other is refused. Without scaling (Llama 3.0) the TOML says the frequencies differ.
    assert!(
        torchtitan_toml(&p, &cx)
            .unwrap()
            .contains("differ from a Llama 3.0 model's")
    );
    let llama3 = |factor: f64| moai_models::RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let mut cx2 = cx.clone();
    cx2.settings.rope_scaling = Some(llama3(8.0));
    let toml = torchtitan_toml(&p, &cx2).unwrap();
    assert!(
        toml.contains("as this model's config does") && !toml.contains("Llama 3.0"),
        "{toml}"
    );
    cx2.settings.rope_scaling = Some(llama3(32.0));
    refuse(&p, &cx2, "not this model's llama3 scaling (factor 32");
    cx2.settings.rope_scaling = Some(moai_models::RopeScaling::Yarn {
        factor: 40.0,
        original_max_position_embeddings: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim: 1.0,
    });
    refuse(&p, &cx2, "YaRN scaling (factor 40)");
    // The other engines say torchtitan runs what they cannot.
    let why = moai_compiler::export::refusal(Stack::Fsdp, "x", &p, &cx);
    assert!(why.contains("--emit torchtitan"), "{why}");
}

#[test]
fn schedules_map_through_one_match() {
    assert_eq!(schedule_name(Schedule::OneFOneB).unwrap(), "1F1B");
    assert_eq!(schedule_name(Schedule::Gpipe).unwrap(), "GPipe");
    assert_eq!(
        schedule_name(Schedule::Interleaved(3)).unwrap(),
        "Interleaved1F1B"
    );
    assert!(schedule_name(Schedule::Interleaved(1)).is_err());
    // Every name it writes is one the data file lists.
    for s in [
        Schedule::OneFOneB,
        Schedule::Gpipe,
        Schedule::Interleaved(2),
    ] {
        let n = schedule_name(s).unwrap();
        assert!(
            data().lines().any(|l| l
                .strip_prefix("schedule ")
                .is_some_and(|r| r.starts_with(&format!("{n} ")))),
            "{n}"
        );
    }
}

#[test]
fn torchtitan_is_costed_as_the_fsdp_stack_without_its_fusion() {
    let model = llama3_8b();
    let cluster = h100(16);
    let req = PlanRequest::new(32, 4096);
    let mut cfg = ParallelConfig {
        dp: 16,
        recompute: Recompute::Full,
        num_micro_batches: 2,
        ..ParallelConfig::default()
    };
    ZeroStage::Zero3.apply(&mut cfg);
    cfg.stack = Stack::Fsdp;
    let fsdp = estimate(model, &cluster, &cfg, &req).unwrap();
    cfg.stack = Stack::Torchtitan;
    let titan = estimate(model, &cluster, &cfg, &req).unwrap();
    // The same overheads; without torch.compile every fusable byte moves, so only the memory-bound
    // share is slower, by at most the FSDP stack's fitted fusion.
    let fused = moai_costmodel::efficiency::committed()
        .stack(Stack::Fsdp)
        .fused_bytes;
    assert!(fused < 1.0);
    let (f, t) = (fsdp.predicted.step_time_s, titan.predicted.step_time_s);
    assert!(t > f && t < f / fused, "fsdp {f} s, torchtitan {t} s");
    assert_eq!(
        fsdp.predicted.peak_memory_bytes,
        titan.predicted.peak_memory_bytes
    );
    // Engine rules: the same dims run on torchtitan, which also takes tp and pp.
    let d = PlanDims::of_config(&cfg, &cluster);
    engine_runs(Stack::Torchtitan, &d).unwrap();
}
