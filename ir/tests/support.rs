//! Test models, built by moai-models' decoder builder (the one builder of models; this crate's
//! integration tests may use it, its unit tests may not, since moai-models depends on moai-ir).

use moai_ir::Graph;
use moai_models::{ArchConfig, Weights};

/// The geometry of `models/tiny-llama.onnx` (2 layers, hidden 64, 4 heads, 2 KV heads, ffn 176,
/// vocab 512), f32, seeded random weights the interpreter runs.
pub fn tiny_llama() -> Graph {
    ArchConfig::from_spec(
        "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,eps=1e-6,rope_theta=10000,dtype=f32",
    )
    .and_then(|c| c.build_with(Weights::Random { seed: 7, std: 0.1, embedding_std: None }))
    .expect("tiny llama builds")
}

/// A planning-sized Llama: bf16, no weights (shapes only).
pub fn planning_llama(
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
) -> Graph {
    ArchConfig::from_spec(&format!(
        "llama:layers={layers},hidden={hidden},heads={heads},kv_heads={kv_heads},ffn={ffn},vocab={vocab},eps=1e-5,dtype=bf16"
    ))
    .and_then(|c| c.build())
    .expect("planning llama builds")
}
