//! `inspect`: a model's summary, for ONNX files (with the ONNX op histogram and import time) and for
//! config/spec models alike (empty ONNX histogram, load time instead of import time).

use crate::error::Result;
use crate::model::Model;
use moai_ir::stats::{InspectReport, InspectSource, report};

/// The inspect report of a loaded model at sequence length `seq` (assembled by
/// [`moai_ir::stats::report`], as an imported ONNX file's is).
pub fn inspect(model: &Model, seq: u64) -> Result<InspectReport> {
    let source = InspectSource {
        name: model.name.clone(),
        onnx_ops: model
            .onnx
            .as_ref()
            .map(|o| o.ops.clone())
            .unwrap_or_default(),
        import_ms: model
            .onnx
            .as_ref()
            .map(|o| o.import_ms)
            .unwrap_or(model.load_ms),
    };
    Ok(report(&model.graph, &model.summary, source, seq)?)
}

/// Human-readable rendering of an inspect report.
pub fn render(r: &InspectReport) -> String {
    let m = &r.model;
    let mut s = String::new();
    s.push_str(&format!("model            {}\n", m.name));
    s.push_str(&format!(
        "parameters       {} ({:.3} B)\n",
        m.params,
        m.params as f64 / 1e9
    ));
    if let Some(a) = m.active_params {
        s.push_str(&format!(
            "active/token     {} ({:.3} B)\n",
            a,
            a as f64 / 1e9
        ));
    }
    s.push_str(&format!("layers           {}\n", m.layers));
    s.push_str(&format!("hidden           {}\n", m.hidden));
    s.push_str(&format!("heads / kv heads {} / {}\n", m.heads, m.kv_heads));
    s.push_str(&format!("ffn              {}\n", m.ffn));
    s.push_str(&format!("vocab            {}\n", m.vocab));
    s.push_str(&format!("forward FLOPs/token {:.3e}\n", m.flops_per_token));
    let bytes: Vec<String> = m
        .param_bytes_by_dtype
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    s.push_str(&format!("parameter bytes  {}\n", bytes.join(", ")));
    if !m.onnx_ops.is_empty() {
        let ops: Vec<String> = m.onnx_ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!("ONNX ops         {}\n", ops.join(", ")));
    }
    let ops: Vec<String> = m
        .canonical_ops
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    s.push_str(&format!("canonical ops    {}\n", ops.join(", ")));
    s.push_str(&format!("import           {:.1} ms\n", m.import_ms));
    s
}
