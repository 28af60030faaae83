//! Hugging Face `config.json` front end for the `llama`, `mistral`, `qwen2` and `gpt2` model types.
//!
//! Required keys are the ones that fix the parameter shapes (`hidden_size`, `intermediate_size`,
//! `num_hidden_layers`, `num_attention_heads`, `vocab_size`; GPT-2: `n_embd`, `n_layer`, `n_head`,
//! `vocab_size`). Optional keys take the defaults of the `transformers` config classes:
//! `num_key_value_heads` (= heads), `head_dim` (= hidden / heads), `rms_norm_eps` (1e-6),
//! `tie_word_embeddings` (false; GPT-2: true), `max_position_embeddings`, `rope_theta`, `attention_bias`,
//! `mlp_bias`, `sliding_window` (Mistral; Qwen2 only with `use_sliding_window`), `torch_dtype`;
//! GPT-2: `n_inner` (4 · n_embd), `n_positions` (1024), `layer_norm_epsilon` (1e-5). `null` means absent.
//! `rope_scaling` is carried as [`RopeScaling`] when it is Llama 3.x's (`llama3`) or, for DeepSeek, YaRN;
//! any other scaling is refused as unmodeled.

use crate::arch::{ArchConfig, Family, MlaConfig, MoeConfig, RopeScaling, RouterScore};
use crate::error::{ErrorKind, ModelError};
use moai_ir::DType;
use serde_json::{Map, Value};

const MODEL_TYPES: &str =
    "llama, mistral, qwen2, gpt2, mixtral, qwen2_moe, deepseek_v2, deepseek_v3";

/// The mixture-of-experts config dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moe {
    /// A dense decoder.
    Dense,
    /// `MixtralForCausalLM`.
    Mixtral,
    /// `Qwen2MoeForCausalLM`.
    Qwen2,
    /// `Qwen3MoeForCausalLM`: Qwen2-MoE's routing without the shared expert, Llama attention (no q/k/v
    /// biases) with per-head query/key RMSNorm.
    Qwen3,
    /// `DeepseekV2ForCausalLM` (`v3: false`) and `DeepseekV3ForCausalLM`.
    DeepSeek { v3: bool },
}

/// Parses a config's JSON text; `origin` names it in errors (a path or a model name), `name` becomes the
/// graph name.
pub fn parse(json: &str, origin: &str, name: &str) -> Result<ArchConfig, ModelError> {
    parse_inner(json, name).map_err(|kind| ModelError::new(origin, kind))
}

fn parse_inner(json: &str, name: &str) -> Result<ArchConfig, ErrorKind> {
    let value: Value = serde_json::from_str(json).map_err(|e| ErrorKind::Json {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })?;
    let obj = match &value {
        Value::Object(m) => m,
        other => {
            return Err(ErrorKind::NotAnObject {
                found: json_type(other),
            });
        }
    };
    let c = Cfg(obj);
    let model_type = c.string("model_type")?.ok_or(ErrorKind::MissingKey {
        key: "model_type".into(),
    })?;
    let (family, moe) = match model_type {
        "llama" => (Family::Llama, Moe::Dense),
        "mistral" => (Family::Mistral, Moe::Dense),
        "qwen2" => (Family::Qwen2, Moe::Dense),
        "gpt2" => (Family::Gpt, Moe::Dense),
        "mixtral" => (Family::Mistral, Moe::Mixtral),
        "qwen2_moe" => (Family::Qwen2, Moe::Qwen2),
        "qwen3_moe" => (Family::Llama, Moe::Qwen3),
        "deepseek_v2" => (Family::Llama, Moe::DeepSeek { v3: false }),
        "deepseek_v3" => (Family::Llama, Moe::DeepSeek { v3: true }),
        other => {
            return Err(ErrorKind::UnknownModelType {
                model_type: other.chars().take(100).collect(),
                known: MODEL_TYPES.into(),
            });
        }
    };
    check_unmodeled(&c, family, moe)?;
    let dtype = match c.string("torch_dtype")? {
        Some(s) => crate::spec::parse_dtype("torch_dtype", s)?,
        None => DType::F32,
    };
    let name = name.to_string();
    let cfg = if family == Family::Gpt {
        let hidden = c.required_int("n_embd")?;
        let heads = c.required_int("n_head")?;
        if !hidden.is_multiple_of(heads) {
            return Err(ErrorKind::Inconsistent(format!(
                "n_head {heads} does not divide n_embd {hidden}"
            )));
        }
        ArchConfig {
            name,
            family,
            layers: c.required_int("n_layer")?,
            hidden,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
            ffn: c.int("n_inner")?.unwrap_or(hidden.saturating_mul(4)),
            vocab: c.required_int("vocab_size")?,
            max_pos: c.int("n_positions")?.unwrap_or(1024),
            tied: c.bool("tie_word_embeddings")?.unwrap_or(true),
            eps: c.float("layer_norm_epsilon")?.unwrap_or(1e-5),
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            rope_theta: 10_000.0,
            sliding_window: None,
            dtype,
            qk_norm: false,
            moe: None,
            mla: None,
            rope_scaling: None,
        }
    } else {
        let hidden = c.required_int("hidden_size")?;
        let heads = c.required_int("num_attention_heads")?;
        let head_dim = match c.int("head_dim")? {
            Some(d) => d,
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => {
                return Err(ErrorKind::Inconsistent(format!(
                    "num_attention_heads {heads} does not divide hidden_size {hidden}"
                )));
            }
        };
        let attention_bias = c.bool("attention_bias")?.unwrap_or(false);
        let sliding_window = match family {
            Family::Mistral => c.int("sliding_window")?,
            Family::Qwen2 if c.bool("use_sliding_window")?.unwrap_or(false) => {
                c.int("sliding_window")?
            }
            _ => None,
        };
        let default_pos = match (family, moe) {
            (_, Moe::DeepSeek { v3: true }) => 4096,
            (_, Moe::Qwen3) => 32768,
            (Family::Mistral, _) => 4096 * 32,
            (Family::Qwen2, _) => 32768,
            _ => 2048,
        };
        let layers = c.required_int("num_hidden_layers")?;
        let mla = match moe {
            Moe::DeepSeek { .. } => Some(MlaConfig {
                q_lora_rank: c.int("q_lora_rank")?,
                kv_lora_rank: c.required_int("kv_lora_rank")?,
                qk_nope_head_dim: c.required_int("qk_nope_head_dim")?,
                qk_rope_head_dim: c.required_int("qk_rope_head_dim")?,
                v_head_dim: c.required_int("v_head_dim")?,
            }),
            _ => None,
        };
        let head_dim = mla
            .as_ref()
            .map_or(head_dim, |m| m.qk_nope_head_dim + m.qk_rope_head_dim);
        ArchConfig {
            name,
            family,
            layers,
            hidden,
            heads,
            kv_heads: if mla.is_some() {
                heads
            } else {
                c.int("num_key_value_heads")?.unwrap_or(heads)
            },
            head_dim,
            ffn: c.required_int("intermediate_size")?,
            vocab: c.required_int("vocab_size")?,
            max_pos: c.int("max_position_embeddings")?.unwrap_or(default_pos),
            tied: c.bool("tie_word_embeddings")?.unwrap_or(false),
            eps: c.float("rms_norm_eps")?.unwrap_or(1e-6),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family == Family::Llama && attention_bias,
            mlp_bias: family == Family::Llama && c.bool("mlp_bias")?.unwrap_or(false),
            rope_theta: c.float("rope_theta")?.unwrap_or(
                if family == Family::Qwen2 || moe == Moe::Mixtral {
                    1_000_000.0
                } else {
                    10_000.0
                },
            ),
            sliding_window,
            dtype,
            qk_norm: moe == Moe::Qwen3,
            moe: moe_config(&c, moe, layers)?,
            mla,
            rope_scaling: rope_scaling(&c, moe)?,
        }
    };
    cfg.validate().map_err(|e| rename_keys(e, family))?;
    Ok(cfg)
}

/// The mixture-of-experts part of a config, with the `transformers` defaults of each config class.
/// `None` for dense model types, and for DeepSeek configs without routed experts (which `transformers`
/// builds as dense decoders).
fn moe_config(c: &Cfg<'_>, moe: Moe, layers: usize) -> Result<Option<MoeConfig>, ErrorKind> {
    let cfg = match moe {
        Moe::Dense => return Ok(None),
        Moe::Mixtral => MoeConfig {
            experts: c.int("num_local_experts")?.unwrap_or(8),
            topk: c.int("num_experts_per_tok")?.unwrap_or(2),
            expert_ffn: c.required_int("intermediate_size")?,
            shared_ffn: 0,
            shared_gate: false,
            router_bias: false,
            score: RouterScore::Softmax,
            norm_topk: true,
            capacity_factor: 1.0,
            dense_layers: Vec::new(),
        },
        Moe::Qwen2 | Moe::Qwen3 => {
            let qwen3 = moe == Moe::Qwen3;
            let step = c.int("decoder_sparse_step")?.unwrap_or(1);
            let only = c.int_list("mlp_only_layers")?;
            let shared_ffn = if qwen3 {
                0
            } else {
                c.uint("shared_expert_intermediate_size")?.unwrap_or(5632)
            };
            MoeConfig {
                experts: c
                    .int("num_experts")?
                    .unwrap_or(if qwen3 { 128 } else { 60 }),
                topk: c
                    .int("num_experts_per_tok")?
                    .unwrap_or(if qwen3 { 8 } else { 4 }),
                expert_ffn: c.int("moe_intermediate_size")?.unwrap_or(if qwen3 {
                    768
                } else {
                    1408
                }),
                shared_ffn,
                shared_gate: shared_ffn > 0,
                router_bias: false,
                score: RouterScore::Softmax,
                norm_topk: c.bool("norm_topk_prob")?.unwrap_or(false),
                capacity_factor: 1.0,
                dense_layers: (0..layers)
                    .filter(|l| only.contains(l) || !(l + 1).is_multiple_of(step))
                    .collect(),
            }
        }
        Moe::DeepSeek { v3 } => {
            let Some(experts) = c.int("n_routed_experts")? else {
                return Ok(None);
            };
            let expert_ffn = c.required_int("moe_intermediate_size")?;
            let shared = c
                .uint("n_shared_experts")?
                .unwrap_or(if v3 { 1 } else { 0 });
            let first_dense = c
                .uint("first_k_dense_replace")?
                .unwrap_or(if v3 { 3 } else { 0 });
            let freq = c.int("moe_layer_freq")?.unwrap_or(1);
            let score =
                match c
                    .string("scoring_func")?
                    .unwrap_or(if v3 { "sigmoid" } else { "softmax" })
                {
                    "softmax" => RouterScore::Softmax,
                    "sigmoid" => RouterScore::Sigmoid,
                    _ => {
                        return Err(Cfg::bad(
                            "scoring_func",
                            c.get("scoring_func").unwrap_or(&Value::Null),
                            "`softmax` or `sigmoid`",
                        ));
                    }
                };
            MoeConfig {
                experts,
                topk: c
                    .int("num_experts_per_tok")?
                    .unwrap_or(if v3 { 8 } else { 1 }),
                expert_ffn,
                shared_ffn: shared.saturating_mul(expert_ffn),
                shared_gate: false,
                router_bias: c.string("topk_method")?.unwrap_or(if v3 {
                    "noaux_tc"
                } else {
                    "greedy"
                }) == "noaux_tc",
                score,
                norm_topk: c.bool("norm_topk_prob")?.unwrap_or(v3),
                capacity_factor: 1.0,
                dense_layers: (0..layers)
                    .filter(|l| *l < first_dense || !l.is_multiple_of(freq))
                    .collect(),
            }
        }
    };
    Ok(Some(cfg))
}

/// The config's `rope_scaling` (`rope_type`, or the older `type`; `default` and `null` mean none): Llama
/// 3.x scaling (`llama3`, its four keys required as `transformers` requires them) for the rotary
/// families, YaRN (`yarn`) for DeepSeek with the defaults of DeepSeek's YaRN rotary embedding; any
/// other scaling is refused as unmodeled. GPT-2 has learned positions (a `rope_scaling` key there
/// is refused too).
fn rope_scaling(c: &Cfg<'_>, moe: Moe) -> Result<Option<RopeScaling>, ErrorKind> {
    let Some(v) = c.get("rope_scaling") else {
        return Ok(None);
    };
    let deepseek = matches!(moe, Moe::DeepSeek { .. });
    let unmodeled = |why: &str| ErrorKind::Unmodeled {
        key: "rope_scaling".into(),
        value: short(v),
        why: why.into(),
    };
    let Value::Object(m) = v else {
        return Err(Cfg::bad("rope_scaling", v, "an object"));
    };
    let s = Cfg(m);
    let kind = match s.string("rope_type")? {
        Some(k) => Some(k),
        None => s.string("type")?,
    };
    let carried = if deepseek {
        "scaled rotary positions other than YaRN; moai carries DeepSeek's YaRN (`yarn`) scaling"
    } else {
        "scaled rotary positions other than Llama 3.x's; moai carries `llama3` scaling (and YaRN for DeepSeek)"
    };
    let key = |k: &str| format!("rope_scaling.{k}");
    let rename = |e: ErrorKind| match e {
        ErrorKind::BadValue {
            key: k,
            value,
            expected,
        } => ErrorKind::BadValue {
            key: key(&k),
            value,
            expected,
        },
        ErrorKind::MissingKey { key: k } => ErrorKind::MissingKey { key: key(&k) },
        other => other,
    };
    let scaling = match kind {
        None if m.is_empty() => return Ok(None),
        Some("default") => return Ok(None),
        Some("llama3") if !deepseek => {
            let f = |k: &str| s.float(k)?.ok_or(ErrorKind::MissingKey { key: k.into() });
            RopeScaling::Llama3 {
                factor: f("factor").map_err(rename)?,
                low_freq_factor: f("low_freq_factor").map_err(rename)?,
                high_freq_factor: f("high_freq_factor").map_err(rename)?,
                original_max_position_embeddings: s
                    .required_int("original_max_position_embeddings")
                    .map_err(rename)?,
            }
        }
        Some("yarn") if deepseek => {
            let f = |k: &str, d: f64| s.float(k).map(|x| x.unwrap_or(d)).map_err(rename);
            // mscale_all_dim may be 0 (DeepSeek's default: no softmax rescaling).
            let mscale_all_dim = match s.get("mscale_all_dim") {
                None => 0.0,
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| Cfg::bad(&key("mscale_all_dim"), x, "a non-negative number"))?,
            };
            RopeScaling::Yarn {
                factor: s
                    .float("factor")
                    .and_then(|x| {
                        x.ok_or(ErrorKind::MissingKey {
                            key: "factor".into(),
                        })
                    })
                    .map_err(rename)?,
                original_max_position_embeddings: s
                    .int("original_max_position_embeddings")
                    .map_err(rename)?
                    .unwrap_or(4096),
                beta_fast: f("beta_fast", 32.0)?,
                beta_slow: f("beta_slow", 1.0)?,
                mscale: f("mscale", 1.0)?,
                mscale_all_dim,
            }
        }
        _ => return Err(unmodeled(carried)),
    };
    Ok(Some(scaling))
}

/// Keys of mixture-of-experts configs (Mixtral, DeepSeek, Qwen2-MoE, ...).
const EXPERT_KEYS: &[&str] = &[
    "num_local_experts",
    "n_routed_experts",
    "num_experts",
    "moe_num_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
];

/// Refuses config fields that change the architecture in ways moai does not model, naming the field:
/// experts, an activation other than the family's, rotary scaling, partial rotary, QK norms, logit
/// soft-capping, per-layer attention types other than full, and biases the family does not have.
/// (A sliding window is recorded and refused by the planner only when the sequence exceeds it.)
fn check_unmodeled(c: &Cfg<'_>, family: Family, moe: Moe) -> Result<(), ErrorKind> {
    let fam = family.name();
    let unmodeled = |key: &str, v: &Value, why: String| ErrorKind::Unmodeled {
        key: key.into(),
        value: short(v),
        why,
    };
    let active = |v: &Value| match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Null => false,
    };
    for key in EXPERT_KEYS.iter().filter(|_| moe == Moe::Dense) {
        if let Some(v) = c.get(key).filter(|v| active(v)) {
            return Err(unmodeled(
                key,
                v,
                format!("mixture-of-experts layers; moai plans dense {fam} decoders only"),
            ));
        }
    }
    let act_key = if family == Family::Gpt {
        "activation_function"
    } else {
        "hidden_act"
    };
    let allowed: &[&str] = if family == Family::Gpt {
        &["gelu_new", "gelu_pytorch_tanh"]
    } else {
        &["silu", "swish"]
    };
    if let Some(v) = c.get(act_key) {
        let ok = v.as_str().is_some_and(|a| allowed.contains(&a));
        if !ok {
            return Err(unmodeled(
                act_key,
                v,
                format!(
                    "the {fam} builder's MLP activation is {} ({})",
                    allowed[0],
                    if family == Family::Gpt {
                        "GELU, tanh approximation"
                    } else {
                        "SwiGLU"
                    }
                ),
            ));
        }
    }
    // A rotary family's `rope_scaling` is read by `rope_scaling` (the scalings moai carries) or
    // refused there; GPT-2 has learned positions.
    let deepseek = matches!(moe, Moe::DeepSeek { .. });
    if family == Family::Gpt
        && let Some(v) = c.get("rope_scaling").filter(|v| active(v))
    {
        return Err(unmodeled(
            "rope_scaling",
            v,
            "scaled rotary positions; the gpt family has learned positions".into(),
        ));
    }
    if let Some(v) = c.get("partial_rotary_factor")
        && v.as_f64() != Some(1.0)
    {
        return Err(unmodeled(
            "partial_rotary_factor",
            v,
            "rotary on part of each head; moai rotates whole heads".into(),
        ));
    }
    for key in ["qk_layernorm", "use_qk_norm", "qk_norm"] {
        if let Some(v) = c.get(key).filter(|v| active(v)) {
            return Err(unmodeled(
                key,
                v,
                "normalization of queries and keys; moai's attention has none".into(),
            ));
        }
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(v) = c.get(key).filter(|v| active(v)) {
            return Err(unmodeled(
                key,
                v,
                "logit soft-capping; moai's attention and head have none".into(),
            ));
        }
    }
    if let Some(v @ Value::Array(types)) = c.get("layer_types")
        && types.iter().any(|t| t.as_str() != Some("full_attention"))
    {
        return Err(unmodeled(
            "layer_types",
            v,
            "layers with other than full attention; moai models full attention in every layer"
                .into(),
        ));
    }
    if family == Family::Gpt
        && let Some(v) = c.get("add_cross_attention").filter(|v| active(v))
    {
        return Err(unmodeled(
            "add_cross_attention",
            v,
            "cross-attention blocks; moai plans decoder-only models".into(),
        ));
    }
    if deepseek && let Some(v) = c.get("attention_bias").filter(|v| active(v)) {
        return Err(unmodeled(
            "attention_bias",
            v,
            "biases on the latent attention projections; moai builds DeepSeek without them".into(),
        ));
    }
    if matches!(family, Family::Mistral | Family::Qwen2) {
        for key in ["attention_bias", "mlp_bias"] {
            if let Some(v) = c.get(key).filter(|v| active(v)) {
                return Err(unmodeled(
                    key,
                    v,
                    format!(
                        "{fam} has {}; moai builds {fam} as transformers does",
                        if family == Family::Qwen2 {
                            "biases on q/k/v only"
                        } else {
                            "no biases"
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    let mut value = v.to_string();
    if value.len() > 60 {
        value = format!("{}...", value.chars().take(60).collect::<String>());
    }
    value
}

/// Validation speaks in spec keys; say the config's key instead.
fn rename_keys(e: ErrorKind, family: Family) -> ErrorKind {
    match e {
        ErrorKind::BadValue {
            key,
            value,
            expected,
        } => {
            let hf = match (family, key.as_str()) {
                (Family::Gpt, "layers") => "n_layer",
                (Family::Gpt, "hidden") => "n_embd",
                (Family::Gpt, "heads") => "n_head",
                (Family::Gpt, "ffn") => "n_inner",
                (Family::Gpt, "max_pos") => "n_positions",
                (Family::Gpt, "eps") => "layer_norm_epsilon",
                (_, "layers") => "num_hidden_layers",
                (_, "hidden") => "hidden_size",
                (_, "heads") => "num_attention_heads",
                (_, "kv_heads") => "num_key_value_heads",
                (_, "ffn") => "intermediate_size",
                (_, "max_pos") => "max_position_embeddings",
                (_, "eps") => "rms_norm_eps",
                (_, "vocab") => "vocab_size",
                (_, "topk") => "num_experts_per_tok",
                (_, "expert_ffn") => "moe_intermediate_size",
                _ => key.as_str(),
            }
            .to_string();
            ErrorKind::BadValue {
                key: hf,
                value,
                expected,
            }
        }
        other => other,
    }
}

/// serde_json appends " at line L column C"; the error says the position itself.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to config keys; `null` reads as absent.
struct Cfg<'a>(&'a Map<String, Value>);

impl<'a> Cfg<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn bad(key: &str, v: &Value, expected: &str) -> ErrorKind {
        let mut value = v.to_string();
        if value.len() > 60 {
            value = format!("{}...", value.chars().take(60).collect::<String>());
        }
        ErrorKind::BadValue {
            key: key.into(),
            value,
            expected: expected.into(),
        }
    }

    fn int(&self, key: &str) -> Result<Option<usize>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if n > 0 => usize::try_from(n)
                .map(Some)
                .map_err(|_| Self::bad(key, v, "a positive integer")),
            _ => Err(Self::bad(key, v, "a positive integer")),
        }
    }

    /// A non-negative integer (0 allowed).
    fn uint(&self, key: &str) -> Result<Option<usize>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Self::bad(key, v, "a non-negative integer"))
    }

    /// A list of non-negative integers (absent: empty).
    fn int_list(&self, key: &str) -> Result<Vec<usize>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let bad = || Self::bad(key, v, "a list of non-negative integers");
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(bad)
            })
            .collect()
    }

    fn required_int(&self, key: &str) -> Result<usize, ErrorKind> {
        self.int(key)?
            .ok_or(ErrorKind::MissingKey { key: key.into() })
    }

    fn float(&self, key: &str) -> Result<Option<f64>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(Self::bad(key, v, "a positive number")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| Self::bad(key, v, "true or false"))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ErrorKind> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| Self::bad(key, v, "a string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_llama_config() {
        let c = parse(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":176,"num_hidden_layers":2,
               "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":512}"#,
            "t",
            "t",
        )
        .unwrap();
        assert_eq!(
            (c.kv_heads, c.head_dim, c.eps, c.tied),
            (2, 16, 1e-6, false)
        );
        assert_eq!(c.params(), 158_016);
    }

    #[test]
    fn json_errors_have_positions() {
        let e = parse("{\n \"model_type\": \"llama\",\n oops }", "cfg.json", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cfg.json: invalid JSON at line 3, column 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_config_key() {
        let e = parse(
            r#"{"model_type":"gpt2","n_embd":64,"n_layer":0,"n_head":4,"vocab_size":10}"#,
            "g.json",
            "g",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "g.json: `n_layer` must be a positive integer, got `0`");
    }
}
