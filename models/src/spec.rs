//! Spec strings: `family:key=value,key=value,...`, e.g.
//! `llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=11008,vocab=32000` or
//! `gpt:layers=48,hidden=6144,heads=64,vocab=51200`.
//!
//! Families: `llama`, `mistral`, `qwen2` (rotary, RMSNorm, SwiGLU) and `gpt` (alias `gpt2`, `gpt3`:
//! learned positions, LayerNorm, GELU). Keys, with defaults:
//!
//! | key | families | default |
//! |---|---|---|
//! | `layers`, `hidden`, `heads`, `vocab` | all | required |
//! | `kv_heads` | rotary | `heads` |
//! | `head_dim` | rotary | `hidden / heads` (then `heads` must divide `hidden`) |
//! | `ffn` | all | llama-like: `2/3·4·hidden` rounded up to a multiple of 256; gpt: `4·hidden` |
//! | `max_pos` (alias `seq`) | all | rotary: 4096 (recorded only); gpt: 1024 (rows of the position table) |
//! | `tied` | all | rotary: `false`; gpt: `true` |
//! | `eps` | all | rotary: `1e-6` (Hugging Face's default); gpt: `1e-5` |
//! | `qkv_bias` | rotary | `true` for qwen2, else `false` |
//! | `rope_theta` | rotary | 10000 (qwen2: 1000000) |
//! | `window` | rotary | none (recorded only) |
//! | `dtype` | all | `f32` (`bf16`, `f16`, `f32`) |
//! | `name` | all | `family-<layers>l-<hidden>h` |

use crate::arch::{ArchConfig, Family};
use crate::error::{ErrorKind, ModelError};
use moai_ir::DType;
use std::collections::BTreeMap;

/// Families a spec may name, for messages.
const FAMILIES: &str = "llama, mistral, qwen2, gpt (gpt2, gpt3)";

const ROTARY_KEYS: &[&str] = &[
    "layers",
    "hidden",
    "heads",
    "kv_heads",
    "head_dim",
    "ffn",
    "vocab",
    "max_pos",
    "tied",
    "eps",
    "qkv_bias",
    "rope_theta",
    "window",
    "dtype",
    "name",
    "experts",
    "topk",
    "expert_ffn",
    "shared_ffn",
    "first_dense",
];
const GPT_KEYS: &[&str] = &[
    "layers", "hidden", "heads", "ffn", "vocab", "max_pos", "tied", "eps", "dtype", "name",
];

/// True when `s` is meant as a spec rather than a path: an identifier of two or more letters, digits or
/// `_`/`-` (starting with a letter) before the first `:`, no path separator, and either nothing or a
/// `key=value` list after the colon. Unknown families still count, so that [`crate::from_spec`] can say
/// which families exist.
pub fn looks_like_spec(s: &str) -> bool {
    let Some((family, rest)) = s.trim().split_once(':') else {
        return false;
    };
    let ident = family.len() >= 2
        && family
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ident && !s.contains(['/', '\\']) && (rest.trim().is_empty() || rest.contains('='))
}

fn family_of(name: &str) -> Option<Family> {
    Some(match name.to_ascii_lowercase().as_str() {
        "llama" => Family::Llama,
        "mistral" => Family::Mistral,
        "qwen2" => Family::Qwen2,
        "gpt" | "gpt2" | "gpt3" => Family::Gpt,
        _ => return None,
    })
}

/// Parses a spec into a validated [`ArchConfig`].
pub fn parse(spec: &str) -> Result<ArchConfig, ModelError> {
    let origin = format!("spec `{}`", shorten(spec));
    parse_inner(spec).map_err(|kind| ModelError::new(origin, kind))
}

/// Keeps error lines short for very long (e.g. fuzzed) specs.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn parse_inner(spec: &str) -> Result<ArchConfig, ErrorKind> {
    let Some((family_name, body)) = spec.trim().split_once(':') else {
        return Err(ErrorKind::NotASpec {
            known: FAMILIES.into(),
        });
    };
    let family_name = family_name.trim();
    let family = family_of(family_name).ok_or_else(|| ErrorKind::UnknownFamily {
        family: shorten(family_name),
        known: FAMILIES.into(),
    })?;
    let allowed = if family.is_llama_like() {
        ROTARY_KEYS
    } else {
        GPT_KEYS
    };
    let mut kv: BTreeMap<&'static str, String> = BTreeMap::new();
    let body = body.trim();
    if !body.is_empty() {
        for (i, entry) in body.split(',').enumerate() {
            let Some((k, v)) = entry.split_once('=') else {
                return Err(ErrorKind::BadEntry {
                    index: i + 1,
                    entry: shorten(entry.trim()),
                });
            };
            let (k, v) = (k.trim(), v.trim());
            let canonical = if k == "seq" { "max_pos" } else { k };
            let Some(key) = allowed.iter().copied().find(|a| *a == canonical) else {
                return Err(ErrorKind::UnknownKey {
                    key: shorten(k),
                    family: family.name().into(),
                    known: allowed.join(", "),
                });
            };
            if kv.insert(key, v.to_string()).is_some() {
                return Err(ErrorKind::DuplicateKey { key: key.into() });
            }
        }
    }
    let int = |key: &str| -> Result<Option<usize>, ErrorKind> {
        kv.get(key).map(|v| parse_int(key, v)).transpose()
    };
    let required = |key: &str| -> Result<usize, ErrorKind> {
        int(key)?.ok_or(ErrorKind::MissingKey { key: key.into() })
    };
    let layers = required("layers")?;
    let hidden = required("hidden")?;
    let heads = required("heads")?;
    let vocab = required("vocab")?;
    let kv_heads = int("kv_heads")?.unwrap_or(heads);
    let head_dim = match int("head_dim")? {
        Some(d) => d,
        None => {
            if !hidden.is_multiple_of(heads) {
                return Err(ErrorKind::Inconsistent(format!(
                    "heads {heads} does not divide hidden {hidden}"
                )));
            }
            hidden / heads
        }
    };
    let gpt = family == Family::Gpt;
    let ffn = match int("ffn")? {
        Some(f) => f,
        None if gpt => hidden.saturating_mul(4),
        None => ArchConfig::llama_default_ffn(hidden.min(crate::arch::MAX_DIM * 2)),
    };
    let max_pos = int("max_pos")?.unwrap_or(if gpt { 1024 } else { 4096 });
    let tied = kv
        .get("tied")
        .map(|v| parse_bool("tied", v))
        .transpose()?
        .unwrap_or(gpt);
    let eps = kv
        .get("eps")
        .map(|v| parse_float("eps", v))
        .transpose()?
        .unwrap_or(if gpt { 1e-5 } else { 1e-6 });
    let qkv_bias = kv
        .get("qkv_bias")
        .map(|v| parse_bool("qkv_bias", v))
        .transpose()?
        .unwrap_or(family == Family::Qwen2);
    let rope_theta = kv
        .get("rope_theta")
        .map(|v| parse_float("rope_theta", v))
        .transpose()?
        .unwrap_or(if family == Family::Qwen2 {
            1_000_000.0
        } else {
            10_000.0
        });
    let sliding_window = int("window")?;
    // Mixture of experts (Mixtral-style: softmax router, top-k renormalized, SwiGLU experts).
    let moe = match int("experts")? {
        Some(experts) => Some(crate::arch::MoeConfig {
            experts,
            topk: int("topk")?.unwrap_or(2),
            expert_ffn: int("expert_ffn")?.unwrap_or(ffn),
            shared_ffn: int("shared_ffn")?.unwrap_or(0),
            shared_gate: false,
            router_bias: false,
            score: crate::arch::RouterScore::Softmax,
            norm_topk: true,
            capacity_factor: 1.0,
            dense_layers: (0..int("first_dense")?.unwrap_or(0).min(layers)).collect(),
        }),
        None => {
            if let Some(k) = ["topk", "expert_ffn", "shared_ffn", "first_dense"]
                .into_iter()
                .find(|k| kv.contains_key(k))
            {
                return Err(ErrorKind::Inconsistent(format!(
                    "`{k}` describes mixture-of-experts layers and needs `experts`"
                )));
            }
            None
        }
    };
    let dtype = kv
        .get("dtype")
        .map(|v| parse_dtype("dtype", v))
        .transpose()?
        .unwrap_or(DType::F32);
    let name = match kv.get("name") {
        Some(n) if n.is_empty() => {
            return Err(ErrorKind::BadValue {
                key: "name".into(),
                value: String::new(),
                expected: "non-empty".into(),
            });
        }
        Some(n) => n.clone(),
        None => format!("{}-{layers}l-{hidden}h", family.name()),
    };
    let cfg = ArchConfig {
        name,
        family,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        max_pos,
        tied,
        eps,
        qkv_bias,
        o_bias: false,
        mlp_bias: false,
        rope_theta,
        sliding_window,
        dtype,
        qk_norm: false,
        moe,
        mla: None,
        rope_scaling: None,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A positive decimal integer (no sign, no separators).
fn parse_int(key: &str, v: &str) -> Result<usize, ErrorKind> {
    let bad = || ErrorKind::BadValue {
        key: key.into(),
        value: shorten(v),
        expected: "a positive integer".into(),
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match v.parse::<usize>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    }
}

fn parse_float(key: &str, v: &str) -> Result<f64, ErrorKind> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(ErrorKind::BadValue {
            key: key.into(),
            value: shorten(v),
            expected: "a positive number".into(),
        }),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ErrorKind> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ErrorKind::BadValue {
            key: key.into(),
            value: shorten(v),
            expected: "`true` or `false`".into(),
        }),
    }
}

/// `bf16`, `f16`, `f32` and the torch spellings `bfloat16`, `float16`, `float32`.
pub(crate) fn parse_dtype(key: &str, v: &str) -> Result<DType, ErrorKind> {
    match v {
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        _ => Err(ErrorKind::BadValue {
            key: key.into(),
            value: shorten(v),
            expected: "one of bf16, f16, f32".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_examples_parse() {
        let c =
            parse("llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=11008,vocab=32000").unwrap();
        assert_eq!(
            (c.layers, c.hidden, c.heads, c.kv_heads, c.ffn, c.vocab),
            (32, 4096, 32, 8, 11008, 32000)
        );
        assert_eq!(c.head_dim, 128);
        let g = parse("gpt:layers=48,hidden=6144,heads=64,vocab=51200").unwrap();
        assert_eq!(
            (g.ffn, g.max_pos, g.tied, g.family),
            (4 * 6144, 1024, true, Family::Gpt)
        );
    }

    #[test]
    fn spec_detection() {
        assert!(looks_like_spec("llama:layers=2"));
        assert!(looks_like_spec("foo:x=1"));
        assert!(looks_like_spec("gpt:"));
        assert!(!looks_like_spec("models/llama2-7b.onnx"));
        assert!(!looks_like_spec("C:\\models\\x.onnx"));
        assert!(!looks_like_spec("config.json"));
        assert!(!looks_like_spec("a:b"));
    }

    #[test]
    fn seq_is_an_alias_of_max_pos() {
        assert_eq!(
            parse("gpt:layers=1,hidden=8,heads=2,vocab=10,seq=77")
                .unwrap()
                .max_pos,
            77
        );
        let e = parse("gpt:layers=1,hidden=8,heads=2,vocab=10,seq=77,max_pos=3").unwrap_err();
        assert!(
            e.to_string().contains("`max_pos` given more than once"),
            "{e}"
        );
    }

    #[test]
    fn long_inputs_are_shortened_in_errors() {
        let spec = format!("llama:{}", "x".repeat(10_000));
        let e = parse(&spec).unwrap_err().to_string();
        assert!(e.len() < 600, "{}", e.len());
    }
}
