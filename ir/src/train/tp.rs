//! How each node of a training graph divides under tensor parallelism (Megatron-style): q/k/v/gate/up
//! column-parallel, o/down row-parallel, attention by heads, embedding/LM head/loss by vocabulary, norms
//! and residual adds replicated (or split by sequence parallelism).

use super::build::TrainingGraph;
use crate::cost::{Phase, Role, TpSplit};
use crate::graph::{Graph, NodeId, Value};
use crate::op::Op;

/// The tensor-parallel class of a linear layer, from its weight's name.
pub fn linear_class(weight_name: &str) -> TpSplit {
    let n = weight_name.to_ascii_lowercase();
    let has = |keys: &[&str]| keys.iter().any(|k| n.contains(k));
    // Routed experts (`mlp.experts.gate_proj`, ...; not DeepSeek's `shared_experts` nor Qwen's
    // `shared_expert`, which are ordinary tensor-parallel MLPs).
    if n.contains(".experts.") {
        return TpSplit::Expert;
    }
    if has(&["lm_head", "embed_out", "output.weight", "wte"]) {
        TpSplit::Vocab
    } else if has(&[
        "q_proj",
        "k_proj",
        "v_proj",
        "gate_proj",
        "up_proj",
        "c_attn",
        "c_fc",
        "query_key_value",
        "w1",
        "w3",
        "fc1",
        "qkv",
        "q_b_proj",
        "kv_b_proj",
    ]) {
        TpSplit::Column
    } else if has(&[
        "o_proj",
        "down_proj",
        "c_proj",
        "dense",
        "w2",
        "fc2",
        "out_proj",
    ]) {
        TpSplit::Row
    } else {
        TpSplit::Replicated
    }
}

/// The parameter behind a value (through casts and transposes: a tied LM head multiplies by the
/// embedding table transposed, and splits by vocabulary as the table does).
pub fn param_name(g: &Graph, mut v: Value) -> Option<&str> {
    loop {
        let n = g.node(v.node);
        match &n.op {
            Op::Param { name, .. } => return Some(name),
            Op::Cast(_) | Op::Transpose(_) => v = n.inputs[0],
            _ => return None,
        }
    }
}

/// Per-node split and whether each node's first output is divided across the tensor-parallel group.
pub struct TpInfo {
    /// Split of each node, by node index.
    pub split: Vec<TpSplit>,
    /// Whether output 0 of each node is tp-sharded, by node index.
    pub sharded: Vec<bool>,
}

/// Linear class of a forward Linear node.
fn linear_node_class(g: &Graph, id: NodeId) -> TpSplit {
    let n = g.node(id);
    n.inputs
        .get(1)
        .and_then(|w| param_name(g, *w))
        .map(linear_class)
        .unwrap_or(TpSplit::Replicated)
}

/// Classifies every node of the training graph.
pub fn analyze(tg: &TrainingGraph) -> TpInfo {
    let g = &tg.graph;
    let n = tg.meta.len();
    let mut split = vec![TpSplit::Replicated; n];
    let mut sharded = vec![false; n];
    for id in &tg.schedule {
        let i = id.index();
        let node = g.node(*id);
        let meta = tg.meta(*id);
        // The forward node this one comes from (itself in forward).
        let origin = match meta.phase {
            Phase::Forward => *id,
            _ => meta.origin.unwrap_or(*id),
        };
        let onode = g.node(origin);
        let in_sharded = node
            .inputs
            .iter()
            .any(|v| g.ty(*v).dtype.is_float() && sharded[v.node.index()]);
        let (s, sh) = match (&node.op, meta.role) {
            (Op::Param { name, .. }, _) => {
                let c = linear_class(name);
                let table = name.contains("embed_tokens") || name.contains("wte");
                (
                    if table { TpSplit::Vocab } else { c },
                    c != TpSplit::Replicated || table,
                )
            }
            (_, Role::WeightCast) => {
                let p = sharded[node.inputs[0].node.index()];
                (
                    if split[node.inputs[0].node.index()] == TpSplit::Expert {
                        TpSplit::Expert
                    } else if p {
                        TpSplit::Column
                    } else {
                        TpSplit::Replicated
                    },
                    p,
                )
            }
            (Op::Linear { .. }, _) => match linear_node_class(g, *id) {
                TpSplit::Column => (TpSplit::Column, true),
                TpSplit::Row => (TpSplit::Row, false),
                TpSplit::Vocab => (TpSplit::Vocab, true),
                _ => (TpSplit::Replicated, false),
            },
            (_, Role::LinearDx) => match linear_node_class(g, origin) {
                TpSplit::Column => (TpSplit::Row, false),
                TpSplit::Row => (TpSplit::Column, true),
                TpSplit::Vocab => (TpSplit::Vocab, false),
                _ => (TpSplit::Replicated, false),
            },
            (_, Role::LinearDw) => match linear_node_class(g, origin) {
                TpSplit::Column => (TpSplit::Column, true),
                TpSplit::Row => (TpSplit::Row, true),
                TpSplit::Vocab => (TpSplit::Vocab, true),
                _ => (TpSplit::Replicated, false),
            },
            (Op::Attention { .. } | Op::AttentionBackward { .. }, _) => (TpSplit::Heads, true),
            (Op::Embedding, _) => (TpSplit::Vocab, false),
            (Op::EmbeddingBackward { .. }, _) => (TpSplit::Vocab, true),
            (Op::CrossEntropy { .. }, _) => (TpSplit::Vocab, false),
            (Op::CrossEntropyBackward { .. }, _) => (TpSplit::Vocab, true),
            (Op::MoeExperts { .. } | Op::MoeExpertsBackward { .. }, _) => (TpSplit::Expert, false),
            (Op::AdamW { .. } | Op::SgdMomentum { .. }, _) => {
                let p = sharded[node.inputs[0].node.index()];
                (
                    if split[node.inputs[0].node.index()] == TpSplit::Expert {
                        TpSplit::Expert
                    } else if p {
                        TpSplit::Column
                    } else {
                        TpSplit::Replicated
                    },
                    p,
                )
            }
            (_, _) if matches!(onode.op, Op::Linear { .. }) && meta.phase == Phase::Backward => {
                // Bias gradients and reshapes around a linear's backward.
                (
                    if in_sharded {
                        TpSplit::Column
                    } else {
                        TpSplit::Sequence
                    },
                    in_sharded,
                )
            }
            _ => {
                let out = node.outputs.first();
                let scalar = out.is_none_or(|t| t.shape.rank() == 0 || !t.dtype.is_float());
                if in_sharded {
                    (
                        if out.is_some_and(|t| t.shape.rank() == 4) {
                            TpSplit::Heads
                        } else {
                            TpSplit::Column
                        },
                        !scalar,
                    )
                } else if scalar {
                    (TpSplit::Replicated, false)
                } else {
                    (TpSplit::Sequence, false)
                }
            }
        };
        split[i] = s;
        sharded[i] = sh;
    }
    TpInfo { split, sharded }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_and_gpt_names_classify() {
        assert_eq!(
            linear_class("model.layers.3.self_attn.q_proj.weight"),
            TpSplit::Column
        );
        assert_eq!(
            linear_class("model.layers.3.mlp.down_proj.weight"),
            TpSplit::Row
        );
        assert_eq!(
            linear_class("transformer.h.0.attn.c_attn.weight"),
            TpSplit::Column
        );
        assert_eq!(
            linear_class("transformer.h.0.mlp.c_proj.weight"),
            TpSplit::Row
        );
        assert_eq!(linear_class("lm_head.weight"), TpSplit::Vocab);
        assert_eq!(linear_class("model.norm.weight"), TpSplit::Replicated);
    }
}
