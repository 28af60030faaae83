//! Integration tests of moai-models: sample configs against the fixture manifest, graph structure, bad
//! inputs, random weights.

use moai_ir::{DType, Dim, Graph, Op, ParamData, Value};
use moai_models::{
    ArchConfig, Family, RopeScaling, Weights, from_hf_config, from_hf_config_str, from_spec,
    looks_like_spec,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn config_path(name: &str) -> PathBuf {
    models_dir().join("configs").join(name).join("config.json")
}

fn manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(models_dir().join("manifest.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Trainable parameter elements of a graph, from the Param nodes' types.
fn graph_params(g: &Graph) -> u64 {
    g.params()
        .into_iter()
        .map(|p| {
            g.node(p).outputs[0]
                .shape
                .as_consts()
                .expect("parameter shapes are constant")
                .iter()
                .product::<i64>() as u64
        })
        .sum()
}

/// Canonical op histogram of the nodes tagged with decoder layer `layer`.
fn layer_histogram(g: &Graph, layer: u32) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for id in g.node_ids() {
        let n = g.node(id);
        if n.prov.layer == Some(layer) {
            *h.entry(n.op.kind_name()).or_insert(0) += 1;
        }
    }
    h
}

fn hist(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

mod configs {
    use super::*;

    #[test]
    fn manifest_configs_build_graphs_with_torch_parameter_counts() {
        for entry in manifest() {
            let name = entry["name"].as_str().unwrap();
            let path = config_path(name);
            // The sample config carries every key of the manifest's config, unchanged.
            let sample: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for (k, v) in entry["config"].as_object().unwrap() {
                assert_eq!(&sample[k], v, "{name}: key {k} differs from manifest.json");
            }
            let torch = entry["torch_params"].as_u64().unwrap();
            let cfg = ArchConfig::from_hf_config(&path).unwrap();
            assert_eq!(cfg.name, name);
            assert_eq!(cfg.params(), torch, "{name}: closed-form count");
            let g = from_hf_config(&path).unwrap();
            assert_eq!(g.name, name);
            assert_eq!(graph_params(&g), torch, "{name}: graph Param nodes");
        }
    }

    #[test]
    fn public_mistral_and_qwen2_configs_match_published_counts() {
        // Published parameter counts of mistralai/Mistral-7B-v0.1 and Qwen/Qwen2-0.5B.
        for (name, expected, family) in [
            ("mistral-7b", 7_241_732_096u64, Family::Mistral),
            ("qwen2-0.5b", 494_032_768, Family::Qwen2),
        ] {
            let cfg = ArchConfig::from_hf_config(&config_path(name)).unwrap();
            assert_eq!(cfg.family, family);
            let g = cfg.build().unwrap();
            assert_eq!(graph_params(&g), expected, "{name}");
            assert_eq!(cfg.params(), expected, "{name}");
        }
        let m = ArchConfig::from_hf_config(&config_path("mistral-7b")).unwrap();
        assert_eq!(
            (m.kv_heads, m.sliding_window, m.dtype),
            (8, Some(4096), DType::BF16)
        );
        let q = ArchConfig::from_hf_config(&config_path("qwen2-0.5b")).unwrap();
        assert_eq!(
            (q.qkv_bias, q.o_bias, q.tied, q.sliding_window),
            (true, false, true, None)
        );
    }

    #[test]
    fn specs_and_configs_describe_the_same_models() {
        let cases = [
            (
                "llama2-7b",
                "llama:layers=32,hidden=4096,heads=32,ffn=11008,vocab=32000,dtype=bf16",
            ),
            (
                "llama2-13b",
                "llama:layers=40,hidden=5120,heads=40,vocab=32000,dtype=bf16",
            ),
            (
                "tiny-llama",
                "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512",
            ),
            (
                "gpt2-xl",
                "gpt:layers=48,hidden=1600,heads=25,vocab=50257,dtype=bf16",
            ),
            (
                "mistral-7b",
                "mistral:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000,dtype=bf16",
            ),
            (
                "qwen2-0.5b",
                "qwen2:layers=24,hidden=896,heads=14,kv_heads=2,ffn=4864,vocab=151936,tied=true,dtype=bf16",
            ),
        ];
        for (name, spec) in cases {
            let from_cfg = ArchConfig::from_hf_config(&config_path(name)).unwrap();
            let from_spec = ArchConfig::from_spec(spec).unwrap();
            assert_eq!(from_spec.params(), from_cfg.params(), "{name}");
            let (a, b) = (from_spec.build().unwrap(), from_cfg.build().unwrap());
            assert_eq!(a.len(), b.len(), "{name}: node count");
            assert_eq!(layer_histogram(&a, 0), layer_histogram(&b, 0), "{name}");
        }
    }

    #[test]
    fn config_text_entry_point_uses_the_given_name() {
        let json = std::fs::read_to_string(config_path("tiny-llama")).unwrap();
        let g = from_hf_config_str(&json, "my-tiny").unwrap();
        assert_eq!(g.name, "my-tiny");
        assert_eq!(graph_params(&g), 158_016);
    }
}

mod structure {
    use super::*;

    #[test]
    fn llama_graph_has_the_canonical_interface() {
        let g = from_spec("llama:layers=3,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,name=t")
            .unwrap();
        assert_eq!(g.name, "t");
        assert_eq!(g.inputs.len(), 1);
        let input = g.node(g.inputs[0]);
        assert_eq!(
            input.op,
            Op::Input {
                name: "input_ids".into()
            }
        );
        assert_eq!(input.outputs[0].dtype, DType::I64);
        assert_eq!(
            input.outputs[0].shape.0,
            vec![Dim::sym("batch"), Dim::sym("seq")]
        );
        assert_eq!(g.outputs.len(), 1);
        let (name, logits) = &g.outputs[0];
        assert_eq!(name, "logits");
        assert_eq!(
            g.ty(*logits).shape.0,
            vec![Dim::sym("batch"), Dim::sym("seq"), Dim::constant(512)]
        );
        assert_eq!(g.topo_order().len(), g.len(), "acyclic");
    }

    #[test]
    fn llama_layers_have_the_fused_form_and_scopes() {
        let g = from_spec("llama:layers=3,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512").unwrap();
        let expected = hist(&[
            ("Param", 9),
            ("RmsNorm", 2),
            ("Linear", 7),
            ("Reshape", 6),
            ("Transpose", 4),
            ("Rotary", 2),
            ("Attention", 1),
            ("Binary.Add", 2),
            ("Binary.Mul", 1),
            ("Unary.Silu", 1),
        ]);
        assert_eq!(layer_histogram(&g, 0), expected);
        // Later layers reuse the first layer's [1, 1, seq, d] views of cos/sin, as the ONNX export does.
        let mut later = expected.clone();
        later.insert("Reshape".into(), 4);
        for layer in 1..3 {
            assert_eq!(layer_histogram(&g, layer), later, "layer {layer}");
        }
        for id in g.node_ids() {
            let n = g.node(id);
            if let Some(l) = n.prov.layer {
                assert!(
                    n.prov.scope.starts_with(&format!("model.layers.{l}")),
                    "{:?}",
                    n.prov
                );
            }
            if let Op::Attention {
                heads,
                kv_heads,
                scale,
                causal,
            } = &n.op
            {
                assert_eq!((*heads, *kv_heads, *causal), (4, 2, true));
                assert!((scale - 0.25).abs() < 1e-12);
                assert_eq!(n.outputs[1].dtype, DType::F32, "lse statistics");
            }
        }
        let q = g
            .node_ids()
            .find(|id| {
                g.node(*id).prov.scope == "model.layers.1.self_attn.q_proj"
                    && g.node(*id).op == Op::Linear { bias: false }
            })
            .expect("q_proj linear");
        let w = g.node(g.node(q).inputs[1].node);
        assert!(
            matches!(&w.op, Op::Param { name, .. } if name == "model.layers.1.self_attn.q_proj.weight")
        );
        assert_eq!(
            w.outputs[0].shape.as_consts(),
            Some(vec![64, 64]),
            "stored [in, out]"
        );
    }

    #[test]
    fn qwen2_has_qkv_biases_only() {
        let g = from_spec("qwen2:layers=1,hidden=64,heads=4,kv_heads=2,ffn=128,vocab=100").unwrap();
        let biased: Vec<String> = g
            .node_ids()
            .filter(|id| g.node(*id).op == Op::Linear { bias: true })
            .map(|id| g.node(id).prov.scope.clone())
            .collect();
        assert_eq!(
            biased,
            [
                "model.layers.0.self_attn.q_proj",
                "model.layers.0.self_attn.k_proj",
                "model.layers.0.self_attn.v_proj"
            ]
        );
    }

    #[test]
    fn gpt_layers_have_the_fused_form_and_tied_head() {
        let g = from_spec("gpt:layers=2,hidden=64,heads=4,vocab=100,max_pos=32").unwrap();
        let expected = hist(&[
            ("Param", 12),
            ("LayerNorm", 2),
            ("Linear", 4),
            ("Slice", 3),
            ("Reshape", 4),
            ("Transpose", 4),
            ("Attention", 1),
            ("Binary.Add", 2),
            ("Unary.GeluTanh", 1),
        ]);
        assert_eq!(layer_histogram(&g, 1), expected);
        for id in g.node_ids() {
            let n = g.node(id);
            if let Some(l) = n.prov.layer {
                assert!(
                    n.prov.scope.starts_with(&format!("transformer.h.{l}")),
                    "{:?}",
                    n.prov
                );
            }
        }
        // The LM head reads the token embedding's Param node, transposed to [hidden, vocab].
        let logits = g.outputs[0].1;
        let head = g.node(logits.node);
        assert_eq!(head.op, Op::Linear { bias: false });
        let t = g.node(head.inputs[1].node);
        assert_eq!(t.op, Op::Transpose(vec![1, 0]));
        let table = g.node(t.inputs[0].node);
        assert!(matches!(&table.op, Op::Param { name, .. } if name == "transformer.wte.weight"));
        let embedding_users: Vec<_> = g.users(t.inputs[0].node);
        assert_eq!(
            embedding_users.len(),
            2,
            "embedding lookup and LM head share one Param node"
        );
        let untied =
            ArchConfig::from_spec("gpt:layers=2,hidden=64,heads=4,vocab=100,max_pos=32,tied=false")
                .unwrap();
        assert_eq!(untied.params(), graph_params(&g) + 64 * 100);
        assert_eq!(graph_params(&untied.build().unwrap()), untied.params());
    }

    #[test]
    fn synthetic_parameters_declare_their_byte_length() {
        let g = from_spec("llama:layers=1,hidden=32,heads=2,ffn=64,vocab=50,dtype=bf16").unwrap();
        for p in g.params() {
            let n = g.node(p);
            let Op::Param {
                data:
                    ParamData::External {
                        location,
                        offset,
                        length,
                    },
                ..
            } = &n.op
            else {
                panic!("synthetic graphs hold no inline weights")
            };
            assert_eq!(
                (location.as_str(), *offset),
                (moai_models::SYNTHETIC_LOCATION, 0)
            );
            assert_eq!(n.outputs[0].dtype, DType::BF16);
            assert_eq!(*length as i64, n.outputs[0].bytes().as_const().unwrap());
        }
    }

    #[test]
    fn every_value_used_is_typed_consistently() {
        // Every input of a binary op, linear, norm has a last axis equal to what the op expects.
        let g = from_spec("mistral:layers=2,hidden=64,heads=8,kv_heads=2,ffn=96,vocab=40").unwrap();
        for id in g.node_ids() {
            let n = g.node(id);
            if let Op::Linear { .. } = n.op {
                let x = g.ty(n.inputs[0]).shape.0.last().unwrap().clone();
                let w = g.ty(n.inputs[1]).shape.0.clone();
                assert_eq!(x, w[0], "{:?}", n.prov);
                assert_eq!(n.outputs[0].shape.0.last().unwrap(), &w[1], "{:?}", n.prov);
            }
            if let Op::Binary(_) = n.op {
                let a: Vec<Value> = n.inputs.clone();
                assert_eq!(
                    g.ty(a[0]).shape.0.last(),
                    g.ty(a[1]).shape.0.last(),
                    "{:?}",
                    n.prov
                );
            }
        }
    }
}

mod bad_input {
    use super::*;

    fn spec_err(spec: &str) -> String {
        let e = from_spec(spec).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn spec_errors_are_one_clear_line() {
        let base = "layers=2,hidden=64,heads=4,vocab=10";
        let cases: Vec<(String, &str)> = vec![
            (
                format!("bert:{base}"),
                "unknown model family `bert` (known: llama, mistral, qwen2, gpt (gpt2, gpt3))",
            ),
            (
                format!("llama:{base},foo=1"),
                "unknown key `foo` for family `llama`",
            ),
            (
                format!("gpt:{base},kv_heads=2"),
                "unknown key `kv_heads` for family `gpt`",
            ),
            (
                format!("llama:{base},layers=3"),
                "key `layers` given more than once",
            ),
            (
                "llama:layers=two,hidden=64,heads=4,vocab=10".into(),
                "`layers` must be a positive integer, got `two`",
            ),
            (
                "llama:layers=2,hidden=64,heads=4,vocab=-10".into(),
                "`vocab` must be a positive integer, got `-10`",
            ),
            (
                "llama:layers=2,hidden=64.5,heads=4,vocab=10".into(),
                "`hidden` must be a positive integer, got `64.5`",
            ),
            (
                "llama:layers=0,hidden=64,heads=4,vocab=10".into(),
                "`layers` must be a positive integer, got `0`",
            ),
            (
                "llama:layers=2,hidden=64,heads=5,vocab=10".into(),
                "heads 5 does not divide hidden 64",
            ),
            (
                "gpt:layers=2,hidden=64,heads=6,vocab=10".into(),
                "heads 6 does not divide hidden 64",
            ),
            (
                format!("llama:{base},kv_heads=3"),
                "kv_heads 3 does not divide heads 4",
            ),
            (
                "llama:layers=2,hidden=64,vocab=10".into(),
                "missing required key `heads`",
            ),
            ("gpt:".into(), "missing required key `layers`"),
            (
                format!("llama:{base},,ffn=8"),
                "entry 5 `` is not `key=value`",
            ),
            (
                format!("llama:{base},tied=yes"),
                "`tied` must be `true` or `false`, got `yes`",
            ),
            (
                format!("llama:{base},eps=0"),
                "`eps` must be a positive number, got `0`",
            ),
            (
                format!("llama:{base},dtype=int8"),
                "`dtype` must be one of bf16, f16, f32, got `int8`",
            ),
            (
                "llama:layers=99999,hidden=64,heads=4,vocab=10".into(),
                "`layers` must be an integer in 1..=4096, got `99999`",
            ),
            (
                "llama:layers=2,hidden=64,heads=4,vocab=99999999999999999999999".into(),
                "`vocab` must be a positive integer",
            ),
            (
                format!("llama:{base},head_dim=15"),
                "head_dim 15 must be even",
            ),
            (
                "llama".into(),
                "not a model spec: expected `family:key=value,...`",
            ),
        ];
        for (spec, want) in cases {
            let e = spec_err(&spec);
            assert!(
                e.starts_with(&format!("spec `{spec}`: ")),
                "origin missing: {e}"
            );
            assert!(e.contains(want), "spec {spec}:\n got  {e}\n want {want}");
        }
    }

    #[test]
    fn huge_models_are_rejected_or_built_without_overflow() {
        let e = spec_err("llama:layers=1,hidden=16777216,heads=1,ffn=16777216,vocab=16777216");
        assert!(e.ends_with("parameters exceed the limit of 2^50"), "{e}");
        let e = spec_err(
            "llama:layers=4096,hidden=16777216,heads=16777216,head_dim=16777216,ffn=16777216,vocab=16777216",
        );
        assert!(
            e.ends_with("more than 2^63 parameters exceed the limit of 2^50"),
            "{e}"
        );
        // Just inside the limits: synthetic parameters of tens of terabytes, byte lengths exact.
        let cfg = ArchConfig::from_spec(
            "llama:layers=1,hidden=1048576,heads=8,ffn=1048576,vocab=1048576",
        )
        .unwrap();
        let g = cfg.build().unwrap();
        assert_eq!(graph_params(&g), cfg.params());
        let bytes: i64 = g
            .params()
            .into_iter()
            .map(|p| g.node(p).outputs[0].bytes().as_const().unwrap())
            .sum();
        assert_eq!(bytes as u64, cfg.params() * 4);
    }

    #[test]
    fn spec_detection_separates_specs_from_paths() {
        assert!(looks_like_spec(
            "llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=11008,vocab=32000"
        ));
        assert!(looks_like_spec(
            "gpt:layers=48,hidden=6144,heads=64,vocab=51200"
        ));
        assert!(
            looks_like_spec("bert:layers=2"),
            "unknown families are still specs, for a clear error"
        );
        assert!(!looks_like_spec("models/llama2-7b.onnx"));
        assert!(!looks_like_spec("./config.json"));
        assert!(!looks_like_spec("D:\\m\\config.json"));
    }

    fn cfg_err(json: &str) -> String {
        let e = from_hf_config_str(json, "cfg").unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn config_errors_are_one_clear_line() {
        let llama = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":10"#;
        let cases: Vec<(String, &str)> = vec![
            (format!("{{\"model_type\":\"bert\",{llama}}}"), "cfg: unsupported model_type `bert` (supported: llama, mistral, qwen2, gpt2, mixtral, qwen2_moe, deepseek_v2, deepseek_v3)"),
            (format!("{{{llama}}}"), "cfg: missing required key `model_type`"),
            (
                r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":10}"#.into(),
                "cfg: missing required key `intermediate_size`",
            ),
            (r#"{"model_type":"gpt2","n_embd":64,"n_head":4,"vocab_size":10}"#.into(), "cfg: missing required key `n_layer`"),
            ("{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 64,,\n}".into(), "cfg: invalid JSON at line 3, column 21: "),
            ("[1, 2]".into(), "cfg: config must be a JSON object, found an array"),
            ("".into(), "cfg: invalid JSON at line 1, column 0: EOF while parsing a value"),
            (
                format!("{{\"model_type\":\"llama\",{}}}", llama.replace("\"hidden_size\":64", "\"hidden_size\":\"64\"")),
                "cfg: `hidden_size` must be a positive integer, got `\"64\"`",
            ),
            (format!("{{\"model_type\":\"llama\",{llama},\"num_key_value_heads\":3}}"), "cfg: kv_heads 3 does not divide heads 4"),
            (
                format!("{{\"model_type\":\"llama\",{}}}", llama.replace("\"num_attention_heads\":4", "\"num_attention_heads\":5")),
                "cfg: num_attention_heads 5 does not divide hidden_size 64",
            ),
            (format!("{{\"model_type\":\"llama\",{llama},\"rms_norm_eps\":-1}}"), "cfg: `rms_norm_eps` must be a positive number, got `-1`"),
            (format!("{{\"model_type\":\"llama\",{llama},\"tie_word_embeddings\":1}}"), "cfg: `tie_word_embeddings` must be true or false, got `1`"),
            (format!("{{\"model_type\":\"llama\",{llama},\"torch_dtype\":\"int8\"}}"), "cfg: `torch_dtype` must be one of bf16, f16, f32, got `int8`"),
            (r#"{"model_type":7}"#.into(), "cfg: `model_type` must be a string, got `7`"),
        ];
        for (json, want) in cases {
            let e = cfg_err(&json);
            assert!(
                e.starts_with(want),
                "config {json}:\n got  {e}\n want {want}"
            );
        }
    }

    #[test]
    fn config_file_errors_name_the_path() {
        let missing = models_dir().join("configs/does-not-exist/config.json");
        let e = from_hf_config(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("moai-models-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("config.json");
        std::fs::write(&bad, "{\"model_type\": \"llama\"\n").unwrap();
        let e = from_hf_config(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: invalid JSON at line 2, column 0",
                bad.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

mod weights {
    use super::*;

    const TINY: &str = "llama:layers=2,hidden=32,heads=4,kv_heads=2,ffn=64,vocab=40";

    #[test]
    fn random_weights_are_inline_seeded_and_shaped() {
        let cfg = ArchConfig::from_spec(TINY).unwrap();
        let a = cfg
            .build_with(Weights::Random {
                seed: 1,
                std: 0.02,
                embedding_std: None,
            })
            .unwrap();
        let b = cfg
            .build_with(Weights::Random {
                seed: 1,
                std: 0.02,
                embedding_std: None,
            })
            .unwrap();
        let c = cfg
            .build_with(Weights::Random {
                seed: 2,
                std: 0.02,
                embedding_std: None,
            })
            .unwrap();
        let tensors = |g: &Graph| -> Vec<moai_ir::Tensor> {
            g.params()
                .into_iter()
                .map(|p| match &g.node(p).op {
                    Op::Param {
                        data: ParamData::Inline(t),
                        ..
                    } => t.clone(),
                    other => panic!("not inline: {other:?}"),
                })
                .collect()
        };
        let (ta, tb, tc) = (tensors(&a), tensors(&b), tensors(&c));
        assert_eq!(ta, tb, "same seed, same weights");
        assert_ne!(ta, tc, "different seed, different weights");
        for (p, t) in a.params().into_iter().zip(&ta) {
            let shape: Vec<usize> = a.node(p).outputs[0]
                .shape
                .as_consts()
                .unwrap()
                .iter()
                .map(|d| *d as usize)
                .collect();
            assert_eq!(t.shape, shape);
            let name = match &a.node(p).op {
                Op::Param { name, .. } => name.clone(),
                _ => unreachable!(),
            };
            let vals = t.to_f64_vec();
            if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
                assert!(vals.iter().all(|v| *v == 1.0), "{name}");
            } else {
                let std = (vals.iter().map(|v| v * v).sum::<f64>() / vals.len() as f64).sqrt();
                assert!((0.01..0.03).contains(&std), "{name}: std {std}");
            }
        }
    }

    #[test]
    fn random_weights_take_an_embedding_spread_of_their_own() {
        for (spec, tables) in [
            (TINY, &["model.embed_tokens.weight"][..]),
            (
                "gpt:layers=2,hidden=32,heads=4,vocab=40,max_pos=16",
                &["transformer.wte.weight", "transformer.wpe.weight"][..],
            ),
        ] {
            let cfg = ArchConfig::from_spec(spec).unwrap();
            let weights = |embedding_std| {
                let g = cfg
                    .build_with(Weights::Random {
                        seed: 4,
                        std: 0.02,
                        embedding_std,
                    })
                    .unwrap();
                g.params()
                    .into_iter()
                    .map(|p| match &g.node(p).op {
                        Op::Param {
                            name,
                            data: ParamData::Inline(t),
                        } => (name.clone(), t.to_f64_vec()),
                        other => panic!("not inline: {other:?}"),
                    })
                    .collect::<Vec<_>>()
            };
            let (plain, wide) = (weights(None), weights(Some(0.5)));
            assert_eq!(plain.len(), wide.len());
            for ((name, a), (_, b)) in plain.iter().zip(&wide) {
                if tables.contains(&name.as_str()) {
                    // The same draws at the table's own spread.
                    for (x, y) in a.iter().zip(b) {
                        assert!((y - x * 25.0).abs() <= 1e-5 * y.abs().max(1e-3), "{name}");
                    }
                    let std = (b.iter().map(|v| v * v).sum::<f64>() / b.len() as f64).sqrt();
                    assert!((0.4..0.6).contains(&std), "{spec} {name}: std {std}");
                } else {
                    assert_eq!(a, b, "{spec} {name}: only the embedding tables change");
                }
            }
        }
    }

    #[test]
    fn random_weight_graphs_execute_in_the_reference_interpreter() {
        for spec in [
            TINY,
            "gpt:layers=2,hidden=32,heads=4,vocab=40,max_pos=16",
            "qwen2:layers=1,hidden=32,heads=4,kv_heads=1,ffn=48,vocab=40",
        ] {
            let g = ArchConfig::from_spec(spec)
                .unwrap()
                .build_with(Weights::Random {
                    seed: 3,
                    std: 0.02,
                    embedding_std: None,
                })
                .unwrap();
            let ids = moai_ir::Tensor::i64(vec![2, 5], vec![1, 2, 3, 4, 5, 39, 38, 0, 7, 7]);
            let out = moai_ir::interp::Interpreter::new(&g)
                .run(&[("input_ids", ids)])
                .unwrap();
            assert_eq!(out[0].0, "logits");
            assert_eq!(out[0].1.shape, vec![2, 5, 40], "{spec}");
            let v = out[0].1.to_f64_vec();
            assert!(v.iter().all(|x| x.is_finite()), "{spec}");
            assert!(v.iter().any(|x| *x != 0.0), "{spec}");
        }
    }

    #[test]
    fn synthetic_graphs_refuse_to_execute_with_a_clear_error() {
        let g = from_spec(TINY).unwrap();
        let ids = moai_ir::Tensor::i64(vec![1, 3], vec![1, 2, 3]);
        let e = moai_ir::interp::Interpreter::new(&g)
            .run(&[("input_ids", ids)])
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("<synthetic>"), "{e}");
    }

    #[test]
    fn random_weights_refuse_large_models() {
        let cfg =
            ArchConfig::from_spec("llama:layers=32,hidden=4096,heads=32,vocab=32000").unwrap();
        let e = cfg
            .build_with(Weights::Random {
                seed: 0,
                std: 0.02,
                embedding_std: None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("random initialization of 6738415616 parameters exceeds the limit"),
            "{e}"
        );
    }
}

/// The config-built graphs against the ONNX import (with recognition) of the same architectures.
mod onnx {
    use super::*;

    fn import(name: &str) -> Graph {
        moai_ir::onnx::import(&models_dir().join(format!("{name}.onnx")))
            .unwrap()
            .graph
    }

    #[test]
    fn parameter_counts_match_the_onnx_import() {
        for entry in manifest() {
            let name = entry["name"].as_str().unwrap();
            let imported = import(name);
            let built = from_hf_config(&config_path(name)).unwrap();
            assert_eq!(graph_params(&built), graph_params(&imported), "{name}");
            // Same parameters by element type too (bf16 fixtures, f32 tiny-llama).
            let dtypes = |g: &Graph| -> Vec<DType> {
                g.params()
                    .into_iter()
                    .map(|p| g.node(p).outputs[0].dtype)
                    .collect()
            };
            let (mut a, mut b) = (dtypes(&built), dtypes(&imported));
            a.dedup();
            b.dedup();
            assert_eq!(a, b, "{name}");
        }
    }

    #[test]
    fn decoder_layers_have_the_op_histograms_of_the_onnx_import() {
        // The unoptimized ("meta") Llama exports, llama-350m and llama2-13b, still import with each
        // projection weight behind its own `Transpose` node (11 Transposes per layer instead of 4); their
        // parameters, FLOPs and summaries are compared above.
        for name in ["tiny-llama", "llama2-7b", "gpt2-xl"] {
            let imported = import(name);
            let built = from_hf_config(&config_path(name)).unwrap();
            let layers = ArchConfig::from_hf_config(&config_path(name))
                .unwrap()
                .layers as u32;
            for layer in [0, layers - 1] {
                assert_eq!(
                    layer_histogram(&built, layer),
                    layer_histogram(&imported, layer),
                    "{name} layer {layer}"
                );
            }
            assert_eq!(
                layer_histogram(&built, layers),
                BTreeMap::new(),
                "{name}: no layer past the last"
            );
        }
    }

    #[test]
    fn forward_flops_match_the_onnx_import() {
        for entry in manifest() {
            let name = entry["name"].as_str().unwrap();
            let imported = import(name);
            let built = from_hf_config(&config_path(name)).unwrap();
            for seq in [1, 37, 1024] {
                let a = moai_ir::stats::flops_per_token(&built, seq).unwrap();
                let b = moai_ir::stats::flops_per_token(&imported, seq).unwrap();
                assert!(a > 0.0);
                assert!(
                    (a - b).abs() <= 1e-9 * b,
                    "{name} seq {seq}: built {a} vs imported {b}"
                );
            }
        }
    }

    #[test]
    fn layer_summaries_match_the_onnx_import() {
        for entry in manifest() {
            let name = entry["name"].as_str().unwrap();
            let summary =
                |g: &Graph| serde_json::to_value(moai_ir::layers::summarize(g).unwrap()).unwrap();
            let (built, imported) = (
                summary(&from_hf_config(&config_path(name)).unwrap()),
                summary(&import(name)),
            );
            assert_eq!(built, imported, "{name}");
        }
    }

    #[test]
    fn tiny_llama_built_from_its_config_reproduces_onnxruntime_with_the_fixture_weights() {
        // Same module scopes and [in, out] layout on both paths (the export renames folded weights, e.g.
        // `val_92`; Llama modules hold one parameter each): load the fixture's inline weights into the
        // config-built graph by scope and compare the logits with onnxruntime's reference.
        let imported = import("tiny-llama");
        let built = from_hf_config(&config_path("tiny-llama")).unwrap();
        let mut interp = moai_ir::interp::Interpreter::new(&built);
        let mut loaded = 0;
        for p in imported.params() {
            let (scope, ty) = (&imported.node(p).prov.scope, &imported.node(p).outputs[0]);
            let Op::Param {
                data: ParamData::Inline(t),
                ..
            } = &imported.node(p).op
            else {
                panic!("tiny-llama weights are inline")
            };
            let targets: Vec<_> = built
                .params()
                .into_iter()
                .filter(|q| &built.node(*q).prov.scope == scope)
                .collect();
            assert_eq!(targets.len(), 1, "one parameter in scope `{scope}`");
            let target = built.node(targets[0]);
            assert_eq!(&target.outputs[0], ty, "{scope}");
            let Op::Param { name, .. } = &target.op else {
                unreachable!()
            };
            interp.set_param(name.clone(), t.clone());
            loaded += 1;
        }
        assert_eq!(loaded, built.params().len());
        let npy = |f: &str| moai_ir::interp::npy::read_npy(&models_dir().join(f)).unwrap();
        let out = interp
            .run(&[("input_ids", npy("tiny-llama.input_ids.b2s16.npy"))])
            .unwrap();
        let (got, want) = (
            out[0].1.to_f64_vec(),
            npy("tiny-llama.logits.b2s16.npy").to_f64_vec(),
        );
        assert_eq!(got.len(), want.len());
        let max_err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(max_err < 1e-4, "max |built - onnxruntime| = {max_err}");
    }
}

// ---- config fields that change the architecture are modeled or refused, never dropped ----

fn refused(json: &str) -> String {
    ArchConfig::from_hf_config_str(json, "m")
        .expect_err("the config must be refused")
        .to_string()
}

const MISTRAL: &str = r#""model_type":"mistral","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000"#;
const LLAMA: &str = r#""model_type":"llama","hidden_size":256,"intermediate_size":688,"num_hidden_layers":2,"num_attention_heads":8,"vocab_size":1000"#;
const QWEN2: &str = r#""model_type":"qwen2","hidden_size":256,"intermediate_size":688,"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"vocab_size":1000"#;

#[test]
fn experts_in_a_mistral_config_are_refused_by_name() {
    let e = refused(&format!(
        r#"{{{MISTRAL},"num_local_experts":8,"num_experts_per_tok":2}}"#
    ));
    assert_eq!(
        e,
        "m: `num_local_experts` = 8 is not modeled: mixture-of-experts layers; moai plans dense mistral decoders only"
    );
    for key in ["n_routed_experts", "num_experts", "moe_intermediate_size"] {
        let e = refused(&format!(r#"{{{LLAMA},"{key}":4}}"#));
        assert!(e.contains(&format!("`{key}` = 4 is not modeled")), "{e}");
    }
    // Zero or null experts are a dense model.
    assert!(
        ArchConfig::from_hf_config_str(&format!(r#"{{{MISTRAL},"num_local_experts":null}}"#), "m")
            .is_ok()
    );
    assert!(
        ArchConfig::from_hf_config_str(&format!(r#"{{{LLAMA},"num_experts":0}}"#), "m").is_ok()
    );
}

#[test]
fn activations_other_than_the_familys_are_refused() {
    let e = refused(&format!(r#"{{{LLAMA},"hidden_act":"gelu"}}"#));
    assert!(
        e.starts_with(
            "m: `hidden_act` = \"gelu\" is not modeled: the llama builder's MLP activation is silu"
        ),
        "{e}"
    );
    assert!(
        ArchConfig::from_hf_config_str(&format!(r#"{{{LLAMA},"hidden_act":"silu"}}"#), "m").is_ok()
    );
    let gpt = r#""model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,"vocab_size":100"#;
    let e = refused(&format!(r#"{{{gpt},"activation_function":"relu"}}"#));
    assert!(
        e.contains("`activation_function` = \"relu\" is not modeled"),
        "{e}"
    );
    assert!(
        ArchConfig::from_hf_config_str(
            &format!(r#"{{{gpt},"activation_function":"gelu_new"}}"#),
            "m"
        )
        .is_ok()
    );
}

#[test]
fn llama3_rope_scaling_is_carried_with_its_four_keys() {
    // Llama 3.1's published config.json (meta-llama/Llama-3.1-8B).
    let c = ArchConfig::from_hf_config_str(
        &format!(
            r#"{{{LLAMA},"rope_scaling":{{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}}}"#
        ),
        "m",
    )
    .unwrap();
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    // The older `type` key, and `default` (no scaling).
    let old = ArchConfig::from_hf_config_str(
        &format!(
            r#"{{{LLAMA},"rope_scaling":{{"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"type":"llama3"}}}}"#
        ),
        "m",
    )
    .unwrap();
    assert_eq!(old.rope_scaling.as_ref().map(|r| r.kind()), Some("llama3"));
    let plain = ArchConfig::from_hf_config_str(
        &format!(r#"{{{LLAMA},"rope_scaling":{{"rope_type":"default"}}}}"#),
        "m",
    )
    .unwrap();
    assert_eq!(plain.rope_scaling, None);
    // transformers requires all four keys of llama3 scaling.
    let e = refused(&format!(
        r#"{{{LLAMA},"rope_scaling":{{"rope_type":"llama3","factor":8.0}}}}"#
    ));
    assert!(e.contains("rope_scaling.low_freq_factor"), "{e}");
    let e = refused(&format!(
        r#"{{{LLAMA},"rope_scaling":{{"rope_type":"llama3","factor":-1,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}}}"#
    ));
    assert!(e.contains("rope_scaling.factor"), "{e}");
    // GPT-2 has learned positions.
    let e = refused(
        r#"{"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,"vocab_size":100,"rope_scaling":{"rope_type":"llama3"}}"#,
    );
    assert!(
        e.contains("`rope_scaling` = ") && e.contains("learned positions"),
        "{e}"
    );
}

#[test]
fn rope_scaling_qk_norm_and_unsupported_biases_are_refused() {
    let cases = [
        (
            format!(r#"{{{LLAMA},"rope_scaling":{{"rope_type":"linear","factor":2.0}}}}"#),
            "rope_scaling",
        ),
        (
            format!(r#"{{{LLAMA},"rope_scaling":{{"rope_type":"yarn","factor":4.0}}}}"#),
            "rope_scaling",
        ),
        (
            format!(r#"{{{LLAMA},"partial_rotary_factor":0.5}}"#),
            "partial_rotary_factor",
        ),
        (format!(r#"{{{LLAMA},"use_qk_norm":true}}"#), "use_qk_norm"),
        (
            format!(r#"{{{LLAMA},"final_logit_softcapping":30.0}}"#),
            "final_logit_softcapping",
        ),
        (
            format!(r#"{{{LLAMA},"layer_types":["full_attention","sliding_attention"]}}"#),
            "layer_types",
        ),
        (
            format!(r#"{{{MISTRAL},"attention_bias":true}}"#),
            "attention_bias",
        ),
        (format!(r#"{{{QWEN2},"mlp_bias":true}}"#), "mlp_bias"),
    ];
    for (json, key) in cases {
        let e = refused(&json);
        assert!(
            e.contains(&format!("`{key}` = ")) && e.contains("is not modeled"),
            "{key}: {e}"
        );
    }
    // Modeled: Llama's attention/MLP biases, Qwen2's QKV bias, a null rope_scaling, full-attention layer types.
    let c = ArchConfig::from_hf_config_str(
        &format!(r#"{{{LLAMA},"attention_bias":true,"mlp_bias":true,"rope_scaling":null}}"#),
        "m",
    )
    .unwrap();
    assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
    let q = ArchConfig::from_hf_config_str(
        &format!(r#"{{{QWEN2},"layer_types":["full_attention","full_attention"]}}"#),
        "m",
    )
    .unwrap();
    assert!(q.qkv_bias && !q.o_bias && !q.mlp_bias);
}

#[test]
fn the_sample_configs_are_still_accepted() {
    for name in [
        "llama2-7b",
        "llama2-13b",
        "mistral-7b",
        "qwen2-0.5b",
        "gpt2-xl",
        "llama-350m",
        "tiny-llama",
    ] {
        let p = config_path(name);
        if p.exists() {
            ArchConfig::from_hf_config(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn gpt2_cross_attention_is_refused() {
    let gpt = r#""model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,"vocab_size":100"#;
    let e = refused(&format!(r#"{{{gpt},"add_cross_attention":true}}"#));
    assert!(
        e.contains("`add_cross_attention` = true is not modeled"),
        "{e}"
    );
    assert!(
        ArchConfig::from_hf_config_str(&format!(r#"{{{gpt},"add_cross_attention":false}}"#), "m")
            .is_ok()
    );
}

mod moe {
    use super::*;
    use moai_models::RouterScore;

    /// `x` in billions, rounded to `digits` decimals, as model cards print counts.
    fn billions(x: u64, digits: i32) -> f64 {
        let scale = 10f64.powi(digits);
        (x as f64 / 1e9 * scale).round() / scale
    }

    #[test]
    fn mixtral_8x7b_has_the_published_total_and_active_counts() {
        let c = ArchConfig::from_hf_config(&config_path("mixtral-8x7b")).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!(
            (m.experts, m.topk, m.expert_ffn, m.shared_ffn),
            (8, 2, 14336, 0)
        );
        assert!(m.dense_layers.is_empty() && m.norm_topk && m.score == RouterScore::Softmax);
        assert_eq!(
            (c.family, c.kv_heads, c.rope_theta),
            (Family::Mistral, 8, 1e6)
        );
        // transformers' parameters() count of MixtralForCausalLM; the model card: 46.7B total, 12.9B
        // active per token (https://mistral.ai/news/mixtral-of-experts/).
        assert_eq!(c.params(), 46_702_792_704);
        assert_eq!(billions(c.params(), 1), 46.7);
        assert_eq!(billions(c.active_params(), 1), 12.9);
    }

    #[test]
    fn deepseek_v3_has_the_published_total_and_active_counts() {
        let c = ArchConfig::from_hf_config(&config_path("deepseek-v3")).unwrap();
        let (m, a) = (c.moe.as_ref().unwrap(), c.mla.as_ref().unwrap());
        assert_eq!(m.dense_layers, vec![0, 1, 2]);
        assert_eq!(
            (m.experts, m.topk, m.expert_ffn, m.shared_ffn),
            (256, 8, 2048, 2048)
        );
        assert!(m.router_bias && m.norm_topk && m.score == RouterScore::Sigmoid);
        assert_eq!(
            (a.q_lora_rank, a.kv_lora_rank, a.v_head_dim),
            (Some(1536), 512, 128)
        );
        assert_eq!((c.head_dim, c.kv_heads, c.layers), (192, 128, 61));
        // The config's YaRN scaling, carried to the exports.
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 40.0,
                original_max_position_embeddings: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: 1.0,
                mscale_all_dim: 1.0
            })
        );
        // DeepSeek-V3 (arXiv:2412.19437): 671B total, 37B activated per token; the weights'
        // documentation (README_WEIGHTS.md) gives the main model's activated count as 36.6B without
        // the input embedding (0.9B). The multi-token-prediction module (num_nextn_predict_layers) is
        // not part of either count, nor of ours.
        assert_eq!(billions(c.params(), 0), 671.0);
        let embedding = (c.vocab * c.hidden) as u64;
        assert_eq!(billions(c.active_params() - embedding, 1), 36.6);
        assert_eq!(billions(c.active_params() - embedding, 0), 37.0);
    }

    #[test]
    fn deepseek_v2_and_qwen_moe_have_the_published_counts() {
        // DeepSeek-V2 (arXiv:2405.04434): 236B total, 21B activated.
        let c = ArchConfig::from_hf_config(&config_path("deepseek-v2")).unwrap();
        assert_eq!(c.moe.as_ref().unwrap().dense_layers, vec![0]);
        assert_eq!(billions(c.params(), 0), 236.0);
        assert_eq!(billions(c.active_params(), 0), 21.0);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Yarn { factor, mscale, mscale_all_dim, .. })
                if factor == 40.0 && mscale == 0.707 && mscale_all_dim == 0.707),
            "{:?}",
            c.rope_scaling
        );
        // DeepSeek's other scalings (linear, dynamic) are refused; YaRN's keys take DeepSeek's
        // defaults.
        let text = std::fs::read_to_string(config_path("deepseek-v2")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 4.0});
        let e = from_hf_config_str(&json.to_string(), "m")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`rope_scaling` = ") && e.contains("YaRN"), "{e}");
        json["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        let d = ArchConfig::from_hf_config_str(&json.to_string(), "m").unwrap();
        assert_eq!(
            d.rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: 1.0,
                mscale_all_dim: 0.0
            })
        );
        // Qwen1.5-MoE-A2.7B (its model card): 14.3B total, 2.7B activated.
        let c = ArchConfig::from_hf_config(&config_path("qwen1.5-moe-a2.7b")).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!(
            (m.experts, m.topk, m.expert_ffn, m.shared_ffn),
            (60, 4, 1408, 5632)
        );
        assert!(m.shared_gate && !m.norm_topk && c.qkv_bias);
        assert_eq!(billions(c.params(), 1), 14.3);
        assert_eq!(billions(c.active_params(), 1), 2.7);
    }

    #[test]
    fn qwen3_moe_has_the_published_counts_and_query_key_norms() {
        // Qwen3-30B-A3B (its model card): 30.5B total, 29.9B without the embedding and LM head, 3.3B
        // activated (ours 3.353B: the card truncates).
        let c = ArchConfig::from_hf_config(&config_path("qwen3-30b-a3b")).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!(
            (m.experts, m.topk, m.expert_ffn, m.shared_ffn),
            (128, 8, 768, 0)
        );
        assert!(c.qk_norm && m.norm_topk && !c.qkv_bias && c.head_dim == 128);
        assert_eq!(billions(c.params(), 1), 30.5);
        let embeddings = 2 * (c.vocab * c.hidden) as u64;
        assert_eq!(billions(c.params() - embeddings, 1), 29.9);
        assert_eq!(c.active_params(), 3_353_032_704);
        assert_eq!((c.active_params() as f64 / 1e8).floor() / 10.0, 3.3);
        let g = c.build().unwrap();
        let norms = layer_histogram(&g, 0)["RmsNorm"];
        assert_eq!(norms, 4, "input, post-attention, q_norm, k_norm");
    }

    #[test]
    fn dense_configs_have_equal_total_and_active_counts() {
        let c = ArchConfig::from_hf_config(&config_path("mistral-7b")).unwrap();
        assert_eq!(c.active_params(), c.params());
    }

    #[test]
    fn moe_layer_rules_follow_each_config_class() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":6,"num_attention_heads":4,"vocab_size":100"#;
        // Qwen2-MoE: every `decoder_sparse_step`-th layer (1-based), minus `mlp_only_layers`.
        let c = ArchConfig::from_hf_config_str(
            &format!(r#"{{"model_type":"qwen2_moe",{base},"num_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":32,"shared_expert_intermediate_size":0,"decoder_sparse_step":2,"mlp_only_layers":[3]}}"#),
            "q",
        )
        .unwrap();
        let m = c.moe.unwrap();
        assert_eq!(m.dense_layers, vec![0, 2, 3, 4]);
        assert!(!m.shared_gate);
        // DeepSeek: layers from `first_k_dense_replace` on, every `moe_layer_freq`-th; without routed
        // experts it is a dense decoder, as transformers builds it.
        let mla = r#""kv_lora_rank":8,"qk_nope_head_dim":8,"qk_rope_head_dim":8,"v_head_dim":8"#;
        let c = ArchConfig::from_hf_config_str(
            &format!(r#"{{"model_type":"deepseek_v2",{base},{mla},"n_routed_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":32,"first_k_dense_replace":1,"moe_layer_freq":2}}"#),
            "d",
        )
        .unwrap();
        assert_eq!(c.moe.unwrap().dense_layers, vec![0, 1, 3, 5]);
        assert_eq!(c.mla.unwrap().q_lora_rank, None);
        let c = ArchConfig::from_hf_config_str(
            &format!(r#"{{"model_type":"deepseek_v2",{base},{mla}}}"#),
            "d",
        )
        .unwrap();
        assert!(c.moe.is_none() && c.mla.is_some());
    }

    #[test]
    fn inconsistent_moe_configs_are_one_clear_line() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100"#;
        let cases = [
            (
                format!(
                    r#"{{"model_type":"mixtral",{base},"num_local_experts":2,"num_experts_per_tok":3}}"#
                ),
                "cfg: `num_experts_per_tok` must be an integer in 1..=2, got `3`",
            ),
            (
                format!(r#"{{"model_type":"qwen2_moe",{base},"mlp_only_layers":"x"}}"#),
                "cfg: `mlp_only_layers` must be a list of non-negative integers, got `\"x\"`",
            ),
            (
                format!(
                    r#"{{"model_type":"deepseek_v3",{base},"kv_lora_rank":8,"qk_nope_head_dim":8,"qk_rope_head_dim":8,"v_head_dim":8,"n_routed_experts":4,"moe_intermediate_size":8,"scoring_func":"relu"}}"#
                ),
                "cfg: `scoring_func` must be `softmax` or `sigmoid`, got `\"relu\"`",
            ),
            (
                format!(
                    r#"{{"model_type":"deepseek_v3",{base},"kv_lora_rank":8,"qk_nope_head_dim":8,"qk_rope_head_dim":8,"v_head_dim":32}}"#
                ),
                "cfg: v_head_dim 32 wider than the query/key head 16 is not modeled",
            ),
            (
                format!(
                    r#"{{"model_type":"deepseek_v3",{base},"kv_lora_rank":8,"qk_nope_head_dim":8,"qk_rope_head_dim":8,"v_head_dim":8,"attention_bias":true}}"#
                ),
                "cfg: `attention_bias` = true is not modeled",
            ),
        ];
        for (json, want) in cases {
            let e = from_hf_config_str(&json, "cfg").unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.starts_with(want),
                "got  {e}\nwant {want}"
            );
        }
    }

    /// Tiny configs of each mixture-of-experts dialect (random weights fit).
    pub(crate) const TINY_MOE: [(&str, &str); 4] = [
        (
            "mixtral",
            r#"{"model_type":"mixtral","hidden_size":32,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":40,"num_local_experts":4,"num_experts_per_tok":2}"#,
        ),
        (
            "qwen2_moe",
            r#"{"model_type":"qwen2_moe","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":40,"num_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":16,"shared_expert_intermediate_size":24}"#,
        ),
        (
            "qwen3_moe",
            r#"{"model_type":"qwen3_moe","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"vocab_size":40,"num_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":16,"norm_topk_prob":true}"#,
        ),
        (
            "deepseek_v3",
            r#"{"model_type":"deepseek_v3","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":40,"q_lora_rank":16,"kv_lora_rank":12,"qk_nope_head_dim":8,"qk_rope_head_dim":4,"v_head_dim":8,"n_routed_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":16,"n_shared_experts":1,"first_k_dense_replace":1}"#,
        ),
    ];

    #[test]
    fn moe_graphs_hold_exactly_the_closed_form_parameters() {
        for name in [
            "mixtral-8x7b",
            "deepseek-v3",
            "deepseek-v2",
            "qwen1.5-moe-a2.7b",
            "qwen3-30b-a3b",
        ] {
            let c = ArchConfig::from_hf_config(&config_path(name)).unwrap();
            let g = c.build().unwrap();
            assert_eq!(graph_params(&g), c.params(), "{name}");
        }
        for (name, json) in TINY_MOE {
            let c = ArchConfig::from_hf_config_str(json, name).unwrap();
            assert_eq!(graph_params(&c.build().unwrap()), c.params(), "{name}");
        }
    }

    #[test]
    fn moe_layers_route_through_one_fused_expert_op() {
        let g = from_hf_config(&config_path("deepseek-v3")).unwrap();
        let dense = layer_histogram(&g, 2);
        let moe = layer_histogram(&g, 3);
        assert_eq!(dense.get("MoeExperts"), None);
        assert_eq!(moe.get("MoeExperts"), Some(&1));
        // Latent attention: q_a, q_b, kv_a, kv_b, o projections; the MoE layer adds the router and
        // the shared experts' three projections; the dense layer has its MLP's three.
        assert_eq!(dense.get("Linear"), Some(&8));
        assert_eq!(moe.get("Linear"), Some(&9));
        assert_eq!(moe.get("Attention"), Some(&1));
        let expert = g
            .node_ids()
            .find(|n| matches!(g.node(*n).op, Op::MoeExperts { .. }))
            .unwrap();
        match &g.node(expert).op {
            Op::MoeExperts {
                experts,
                topk,
                norm_topk,
                ..
            } => assert_eq!((*experts, *topk, *norm_topk), (256, 8, true)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn random_weight_moe_graphs_execute_in_the_reference_interpreter() {
        for (name, json) in TINY_MOE {
            let g = ArchConfig::from_hf_config_str(json, name)
                .unwrap()
                .build_with(Weights::Random {
                    seed: 5,
                    std: 0.2,
                    embedding_std: None,
                })
                .unwrap();
            let ids = moai_ir::Tensor::i64(vec![2, 5], vec![1, 2, 3, 4, 5, 39, 38, 0, 7, 7]);
            let out = moai_ir::interp::Interpreter::new(&g)
                .run(&[("input_ids", ids)])
                .unwrap();
            assert_eq!(out[0].1.shape, vec![2, 5, 40], "{name}");
            let v = out[0].1.to_f64_vec();
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
            assert!(v.iter().any(|x| *x != 0.0), "{name}");
        }
    }

    #[test]
    fn moe_step_profiles_mark_expert_work_and_weights() {
        use moai_ir::cost::{BlockKind, KernelClass, Phase, TpSplit};
        use moai_ir::train::{RecomputePolicy, TrainOptions, step_profile};
        let (name, json) = TINY_MOE[3];
        let c = ArchConfig::from_hf_config_str(json, name).unwrap();
        let g = c.build().unwrap();
        for recompute in [RecomputePolicy::None, RecomputePolicy::Full] {
            let opts = TrainOptions {
                recompute,
                ..TrainOptions::default()
            };
            let p = step_profile(&g, &opts, 2, 8).unwrap();
            let layer = |l: u32| {
                p.blocks
                    .iter()
                    .find(|b| b.kind == BlockKind::Decoder(l))
                    .unwrap()
            };
            // Layer 0 is dense (first_k_dense_replace = 1), layer 1 routes to 4 experts (top 2).
            assert_eq!(layer(0).expert_params, 0);
            assert_eq!(layer(1).expert_params, 3 * 4 * 32 * 16);
            assert!(layer(1).tp_sharded_params >= layer(1).expert_params);
            let experts: Vec<_> = layer(1)
                .ops
                .iter()
                .filter(|o| o.split == TpSplit::Expert && o.label.contains("MoeExperts"))
                .collect();
            let fwd = experts.iter().find(|o| o.phase == Phase::Forward).unwrap();
            let bwd = experts.iter().find(|o| o.phase == Phase::Backward).unwrap();
            // 16 tokens · top 2 / 4 experts = 8 rows per expert; gate, up, down per expert; bf16
            // under the default amp-bf16 policy.
            assert_eq!(
                fwd.class,
                KernelClass::Matmul {
                    batch: 12,
                    m: 8,
                    n: 16,
                    k: 32,
                    dtype: moai_ir::DType::BF16
                }
            );
            assert_eq!(fwd.flops, 2.0 * 12.0 * 8.0 * 16.0 * 32.0);
            assert_eq!(bwd.flops, 2.0 * fwd.flops);
            let recomputed = experts.iter().any(|o| o.phase == Phase::Recompute);
            assert_eq!(recomputed, recompute == RecomputePolicy::Full);
            // The expert weights' optimizer updates are expert work too.
            assert!(
                p.optimizer
                    .iter()
                    .any(|o| o.split == TpSplit::Expert && o.label.contains("experts"))
            );
            assert!(layer(0).ops.iter().all(|o| o.split != TpSplit::Expert));
        }
    }

    #[test]
    fn specs_describe_mixtral_style_experts() {
        let spec = "mistral:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000,experts=8,topk=2";
        let c = ArchConfig::from_spec(spec).unwrap();
        let hf = ArchConfig::from_hf_config(&config_path("mixtral-8x7b")).unwrap();
        assert_eq!(
            (c.params(), c.active_params()),
            (hf.params(), hf.active_params())
        );
        let m = c.moe.unwrap();
        assert_eq!((m.experts, m.topk, m.expert_ffn), (8, 2, 14336));
        let c = ArchConfig::from_spec(
            "llama:layers=4,hidden=64,heads=4,ffn=128,vocab=100,experts=4,expert_ffn=32,shared_ffn=32,first_dense=1",
        )
        .unwrap();
        assert_eq!(c.moe.unwrap().dense_layers, vec![0]);
        let e = ArchConfig::from_spec("llama:layers=2,hidden=64,heads=4,vocab=100,topk=2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`topk` describes mixture-of-experts layers and needs `experts`"),
            "{e}"
        );
    }
}
