//! ONNX import: the five fixture models, parameter counts against the manifest, bad inputs.

use moai_ir::onnx::{ImportOptions, import, import_with};
use moai_ir::{Graph, Op};
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(models_dir().join("manifest.json")).expect("models/manifest.json");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn param_count(g: &Graph) -> u64 {
    g.params().iter().map(|p| g.node(*p).outputs[0].shape.numel().as_const().expect("constant param shape") as u64).sum()
}

#[test]
fn all_models_import_with_exact_parameter_counts() {
    for m in manifest() {
        let file = models_dir().join(m["file"].as_str().unwrap());
        let imp = import_with(&file, &ImportOptions { recognize: false }).unwrap_or_else(|e| panic!("{e}"));
        let want = m["torch_params"].as_u64().unwrap();
        let got = param_count(&imp.graph);
        eprintln!("{}: {} nodes, {} params, {:.1} ms", m["name"], imp.graph.len(), got, imp.import_ms);
        assert_eq!(got, want, "{}: parameter count", m["name"]);
        assert_eq!(imp.opset, 20);
        assert_eq!(imp.onnx_ops.values().sum::<usize>() as u64, m["nodes"].as_u64().unwrap());
    }
}
