//! ONNX import: the five fixture models, parameter counts against the manifest, bad inputs.

use moai_ir::layers::{Family, LayerSource, MlpKind, NormKind, detect_layers, summarize};
use moai_ir::onnx::{ImportOptions, import, import_with, read_external};
use moai_ir::stats::inspect;
use moai_ir::{DType, Graph, IrError, Op, ParamData};
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn manifest() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(models_dir().join("manifest.json")).expect("models/manifest.json");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn param_count(g: &Graph) -> u64 {
    g.params()
        .iter()
        .map(|p| {
            g.node(*p).outputs[0]
                .shape
                .numel()
                .as_const()
                .expect("constant param shape") as u64
        })
        .sum()
}

#[test]
fn all_models_import_with_exact_parameter_counts() {
    for m in manifest() {
        let file = models_dir().join(m["file"].as_str().unwrap());
        let imp = import_with(&file, &ImportOptions { recognize: false })
            .unwrap_or_else(|e| panic!("{e}"));
        let want = m["torch_params"].as_u64().unwrap();
        let got = param_count(&imp.graph);
        eprintln!(
            "{}: {} nodes, {} params, {:.1} ms",
            m["name"],
            imp.graph.len(),
            got,
            imp.import_ms
        );
        assert_eq!(got, want, "{}: parameter count", m["name"]);
        assert_eq!(imp.opset, 20);
        assert_eq!(
            imp.onnx_ops.values().sum::<usize>() as u64,
            m["nodes"].as_u64().unwrap()
        );
    }
}

/// A fresh temporary directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moai-ir-import-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn value_info(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(match d.parse::<i64>() {
            Ok(v) => dimension::Value::DimValue(v),
            Err(_) => dimension::Value::DimParam(d.to_string()),
        });
        shape.dim.push(dim);
    }
    let mut t = type_proto::Tensor::new();
    t.elem_type = elem;
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(tp).into();
    vi
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opset: i64,
) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "crafted".into();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    let mut m = ModelProto::new();
    m.ir_version = 9;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m.graph = Some(g).into();
    m
}

/// An f32 `[4, 4]` weight stored externally at `location`.
fn external_weight(name: &str, location: &str) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = vec![4, 4];
    t.data_location = DataLocation::EXTERNAL.into();
    for (k, v) in [("location", location), ("offset", "0"), ("length", "64")] {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v.into();
        t.external_data.push(e);
    }
    t
}

/// `y = x · w` with `w` external at `location`.
fn matmul_model(location: &str) -> ModelProto {
    model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["batch", "4"])],
        vec![value_info("y", 1, &["batch", "4"])],
        vec![external_weight("w", location)],
        20,
    )
}

fn write(dir: &Path, file: &str, m: &ModelProto) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, m.write_to_bytes().expect("serialize")).expect("write model");
    p
}

/// Imports and expects an error; checks it is one line naming the file.
fn import_err(path: &Path) -> String {
    let e = import(path).expect_err("import must fail");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one-line error: {msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "error names the file: {msg}"
    );
    msg
}

#[test]
fn empty_file_is_rejected() {
    let d = temp_dir("empty");
    let p = d.join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    assert!(import_err(&p).contains("no graph"));
}

#[test]
fn random_bytes_are_rejected() {
    let d = temp_dir("random");
    let p = d.join("random.onnx");
    // A deterministic xorshift byte stream.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&p, bytes).unwrap();
    let msg = import_err(&p);
    assert!(
        msg.contains("not a valid ONNX model") || msg.contains("no graph"),
        "{msg}"
    );
}

/// A model the fuzzer found (fuzz/corpus/onnx_import/reshape-dim-overflow.onnx): a Reshape whose
/// constant target overflowed the symbolic dimension arithmetic (a multiply-with-overflow panic in a
/// build with overflow checks). Import must return, whatever it returns.
#[test]
fn reshape_with_absurd_dims_does_not_panic() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/onnx_import/reshape-dim-overflow.onnx");
    let r = std::panic::catch_unwind(|| moai_ir::onnx::import(&p).map(|_| ()));
    assert!(r.is_ok(), "import panicked");
}

/// A model the fuzzer found (fuzz/corpus/onnx_import/external-size-overflow.onnx): an external
/// initializer whose shape's byte size does not fit in 64 bits (a multiply-with-overflow panic in a
/// build with overflow checks). Import must return an error, not panic.
#[test]
fn external_initializer_with_absurd_shape_does_not_panic() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/onnx_import/external-size-overflow.onnx");
    let r = std::panic::catch_unwind(|| moai_ir::onnx::import(&p).map(|_| ()));
    assert!(r.is_ok(), "import panicked");
}

#[test]
fn truncated_protobuf_is_rejected() {
    let d = temp_dir("truncated");
    let full = std::fs::read(models_dir().join("tiny-llama.onnx")).unwrap();
    let p = d.join("truncated.onnx");
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    assert!(import_err(&p).contains("not a valid ONNX model"));
}

#[test]
fn every_unsupported_op_is_listed_with_an_example_node() {
    let d = temp_dir("unsupported");
    let m = model(
        vec![
            node("Relu", "ok", &["x"], &["a"]),
            node("FancyConv", "conv_1", &["a"], &["b"]),
            node("FancyConv", "conv_2", &["b"], &["c"]),
            node("Hardmax", "hm_1", &["c"], &["y"]),
        ],
        vec![value_info("x", 1, &["batch", "4"])],
        vec![value_info("y", 1, &["batch", "4"])],
        vec![],
        20,
    );
    let p = write(&d, "unsupported.onnx", &m);
    let msg = import_err(&p);
    assert!(msg.contains("FancyConv (e.g. node `conv_1`)"), "{msg}");
    assert!(msg.contains("Hardmax (e.g. node `hm_1`)"), "{msg}");
    assert!(!msg.contains("Relu"), "{msg}");
    match import(&p) {
        Err(IrError::Unsupported { ops, .. }) => assert_eq!(ops.len(), 2),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn old_opset_is_rejected() {
    let d = temp_dir("opset");
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"])],
        vec![value_info("x", 1, &["batch", "4"])],
        vec![value_info("y", 1, &["batch", "4"])],
        vec![],
        11,
    );
    let p = write(&d, "old.onnx", &m);
    let msg = import_err(&p);
    assert!(msg.contains("opset 11") && msg.contains("13"), "{msg}");
}

#[test]
fn model_without_inputs_is_rejected() {
    let d = temp_dir("noinputs");
    let mut c = node("Constant", "c", &[], &["y"]);
    let mut a = onnx_protobuf::AttributeProto::new();
    a.name = "value_float".into();
    a.f = 1.0;
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::FLOAT.into();
    c.attribute.push(a);
    let m = model(vec![c], vec![], vec![value_info("y", 1, &[])], vec![], 20);
    let p = write(&d, "noinputs.onnx", &m);
    assert!(import_err(&p).contains("no inputs"));
}

#[test]
fn external_data_may_not_escape_the_model_directory() {
    let d = temp_dir("escape");
    for (file, location) in [
        ("up.onnx", "../x"),
        ("abs.onnx", "/etc/passwd"),
        ("deep.onnx", "a/../../x"),
    ] {
        let p = write(&d, file, &matmul_model(location));
        let msg = import_err(&p);
        assert!(
            msg.contains(location) && msg.contains("external data"),
            "{msg}"
        );
    }
}

#[test]
fn external_weights_are_referenced_and_read_only_on_demand() {
    let d = temp_dir("external");
    let p = write(&d, "ext.onnx", &matmul_model("weights.bin"));
    // Import succeeds without the file: planning never reads weights.
    let imp = import(&p).expect("import without weight file");
    let g = &imp.graph;
    let w = g.params()[0];
    let Op::Param { name, data } = &g.node(w).op else {
        panic!("param")
    };
    assert_eq!(
        data,
        &ParamData::External {
            location: "weights.bin".into(),
            offset: 0,
            length: 64
        }
    );
    let dir = g.source_dir.clone().expect("source dir");
    let err = read_external(&dir, name, data, DType::F32, &[4, 4]).expect_err("missing file");
    let msg = err.to_string();
    assert!(
        msg.contains("weights.bin") && msg.contains("missing") && !msg.contains('\n'),
        "{msg}"
    );
    // With the file present the values come back.
    let bytes: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    std::fs::write(d.join("weights.bin"), bytes).unwrap();
    let t = read_external(&dir, name, data, DType::F32, &[4, 4]).expect("read");
    assert_eq!(t.to_f64_vec()[5], 5.0);
}
/// Counts canonical ops by kind name.
fn histogram(g: &Graph) -> std::collections::BTreeMap<String, usize> {
    let mut h = std::collections::BTreeMap::new();
    for n in g.node_ids() {
        *h.entry(g.node(n).op.kind_name()).or_insert(0) += 1;
    }
    h
}

#[test]
fn recognition_fuses_every_layer_of_every_model() {
    for m in manifest() {
        let file = models_dir().join(m["file"].as_str().unwrap());
        let imp = import(&file).unwrap_or_else(|e| panic!("{e}"));
        let g = &imp.graph;
        let h = histogram(g);
        let c = |k: &str| h.get(k).copied().unwrap_or(0);
        let cfg = &m["config"];
        let gpt = cfg["model_type"] == "gpt2";
        let layers = cfg[if gpt { "n_layer" } else { "num_hidden_layers" }]
            .as_u64()
            .unwrap() as usize;
        eprintln!(
            "{}: {:?} in {:.1} ms",
            m["name"], imp.recognition, imp.import_ms
        );
        assert!(
            imp.recognition.unrecognized.is_empty(),
            "{}: {:?}",
            m["name"],
            imp.recognition.unrecognized
        );
        assert_eq!(c("Attention"), layers, "{}", m["name"]);
        assert_eq!(c("Softmax"), 0);
        assert_eq!(
            c("MatMul"),
            if gpt { 0 } else { 1 },
            "{}: only the rotary frequency product stays a MatMul",
            m["name"]
        );
        if gpt {
            assert_eq!(c("LayerNorm"), 2 * layers + 1);
            assert_eq!(c("Linear"), 4 * layers + 1);
            assert_eq!(c("Unary.GeluTanh"), layers);
            assert_eq!(c("Embedding"), 2, "token and position embeddings");
        } else {
            assert_eq!(c("RmsNorm"), 2 * layers + 1);
            assert_eq!(c("Linear"), 7 * layers + 1);
            assert_eq!(c("Rotary"), 2 * layers);
            assert_eq!(c("Unary.Silu"), layers);
            assert_eq!(c("Embedding"), 1);
        }
        let heads = cfg[if gpt { "n_head" } else { "num_attention_heads" }]
            .as_u64()
            .unwrap() as usize;
        let kv = if gpt {
            heads
        } else {
            cfg["num_key_value_heads"].as_u64().unwrap() as usize
        };
        for n in g.node_ids() {
            if let Op::Attention {
                heads: h,
                kv_heads,
                causal,
                ..
            } = g.node(n).op
            {
                assert_eq!((h, kv_heads, causal), (heads, kv, true), "{}", m["name"]);
            }
        }
        assert_eq!(g.outputs[0].0, "logits");
        assert_eq!(
            param_count(g),
            m["torch_params"].as_u64().unwrap(),
            "recognition keeps every parameter"
        );
    }
}

fn cfg_u64(cfg: &serde_json::Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| cfg[*k].as_u64())
        .unwrap_or_else(|| panic!("config lacks {keys:?}"))
}

#[test]
fn summaries_match_the_manifest_configs() {
    for m in manifest() {
        let file = models_dir().join(m["file"].as_str().unwrap());
        let imp = import(&file).unwrap_or_else(|e| panic!("{e}"));
        let s = summarize(&imp.graph).unwrap();
        let cfg = &m["config"];
        let gpt = cfg["model_type"] == "gpt2";
        let name = m["name"].as_str().unwrap();
        assert_eq!(s.name, name);
        assert_eq!(s.layer_source, LayerSource::Metadata);
        assert_eq!(
            s.layers as u64,
            cfg_u64(cfg, &["num_hidden_layers", "n_layer"]),
            "{name}"
        );
        assert_eq!(s.hidden, cfg_u64(cfg, &["hidden_size", "n_embd"]), "{name}");
        assert_eq!(
            s.heads,
            cfg_u64(cfg, &["num_attention_heads", "n_head"]),
            "{name}"
        );
        let kv = if gpt {
            s.heads
        } else {
            cfg_u64(cfg, &["num_key_value_heads"])
        };
        assert_eq!(s.kv_heads, kv, "{name}");
        assert_eq!(s.head_dim * s.heads, s.hidden, "{name}");
        let ffn = if gpt {
            4 * s.hidden
        } else {
            cfg_u64(cfg, &["intermediate_size"])
        };
        assert_eq!(s.ffn, ffn, "{name}");
        assert_eq!(s.vocab, cfg_u64(cfg, &["vocab_size"]), "{name}");
        assert_eq!(s.params, m["torch_params"].as_u64().unwrap(), "{name}");
        assert_eq!(
            s.family,
            if gpt { Family::Gpt2 } else { Family::Llama },
            "{name}"
        );
        assert_eq!(s.tied_embeddings, gpt, "{name}: GPT-2 ties wte and lm_head");
        assert_eq!(s.mlp, if gpt { MlpKind::Gelu } else { MlpKind::Gated });
        assert_eq!(
            s.norm,
            if gpt {
                NormKind::LayerNorm
            } else {
                NormKind::RmsNorm
            }
        );
        assert!(
            s.layer_params.windows(2).all(|w| w[0] == w[1]),
            "{name}: identical layers"
        );
        assert_eq!(
            s.layer_params.iter().sum::<u64>() + s.embedding_params + s.head_params,
            s.params
        );
    }
}

/// Writes a copy of a model with all node metadata removed.
fn strip_metadata(src: &Path, dir: &Path) -> PathBuf {
    let mut m = ModelProto::parse_from_bytes(&std::fs::read(src).unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    for n in &mut g.node {
        n.metadata_props.clear();
    }
    write(dir, src.file_name().unwrap().to_str().unwrap(), &m)
}

#[test]
fn layers_are_found_structurally_without_metadata() {
    let d = temp_dir("stripped");
    for file in ["tiny-llama.onnx", "llama-350m.onnx", "gpt2-xl.onnx"] {
        let with = import(&models_dir().join(file)).unwrap();
        let stripped = import(&strip_metadata(&models_dir().join(file), &d)).unwrap();
        let g = &stripped.graph;
        assert!(
            g.node_ids()
                .all(|n| g.node(n).op.is_source() || g.node(n).prov.layer.is_none())
        );
        let (a, b) = (
            summarize(&with.graph).unwrap(),
            summarize(&stripped.graph).unwrap(),
        );
        assert_eq!(b.layer_source, LayerSource::Structural, "{file}");
        assert_eq!(b.layers, a.layers, "{file}");
        assert_eq!(
            b.layer_params, a.layer_params,
            "{file}: same per-layer parameters"
        );
        assert_eq!(
            (b.hidden, b.heads, b.kv_heads, b.ffn, b.vocab, b.params),
            (a.hidden, a.heads, a.kv_heads, a.ffn, a.vocab, a.params)
        );
        let la = detect_layers(&stripped.graph);
        assert_eq!(la.count, a.layers);
    }
}

#[test]
fn inspect_report_has_the_documented_shape() {
    let imp = import(&models_dir().join("llama-350m.onnx")).unwrap();
    let r = inspect(&imp, 1024).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    let model = json["model"].as_object().unwrap();
    let keys: Vec<&str> = model.keys().map(|k| k.as_str()).collect();
    for k in [
        "name",
        "params",
        "layers",
        "hidden",
        "heads",
        "kv_heads",
        "vocab",
        "ffn",
        "flops_per_token",
        "param_bytes_by_dtype",
        "onnx_ops",
        "canonical_ops",
        "import_ms",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(keys.len(), 13);
    assert_eq!(
        json["model"]["param_bytes_by_dtype"]["bf16"]
            .as_u64()
            .unwrap(),
        2 * r.model.params
    );
    assert_eq!(json["model"]["onnx_ops"]["MatMul"].as_u64().unwrap(), 218);
    assert_eq!(
        json["model"]["canonical_ops"]["Attention"]
            .as_u64()
            .unwrap(),
        24
    );
    // 2·(non-embedding parameters) for the matmuls, plus 4·s·hidden per layer for attention
    // (plus the small rotary frequency product).
    let s = summarize(&imp.graph).unwrap();
    let expect = 2.0 * (s.params - s.embedding_params) as f64
        + 4.0 * 1024.0 * s.hidden as f64 * s.layers as f64;
    let got = r.model.flops_per_token;
    assert!(
        (got - expect).abs() / expect < 1e-3,
        "flops/token {got} vs {expect}"
    );
    // Longer sequences cost more attention FLOPs per token.
    assert!(inspect(&imp, 4096).unwrap().model.flops_per_token > got);
}

/// `Unsqueeze` with a repeated axis (found by fuzzing: it panicked in `Vec::insert`) is a one-line
/// error, not a panic.
#[test]
fn unsqueeze_with_repeated_axes_is_an_error() {
    let mut axes = TensorProto::new();
    axes.name = "axes".into();
    axes.data_type = 7;
    axes.dims = vec![2];
    axes.int64_data = vec![2, 2];
    let m = model(
        vec![node("Unsqueeze", "u", &["x", "axes"], &["y"])],
        vec![value_info("x", 1, &["4"])],
        vec![value_info("y", 1, &["4", "1", "1"])],
        vec![axes],
        20,
    );
    let dir = temp_dir("unsqueeze");
    let e = import_err(&write(&dir, "unsqueeze.onnx", &m));
    assert!(e.contains("repeat an axis"), "{e}");
}
