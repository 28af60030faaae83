//! Decoder-layer detection (name-scope metadata with a structural fallback) and the model summary the
//! planner reads.
//!
//! - **Metadata**: the importer sets [`crate::Provenance::layer`] from scopes such as `model.layers.N` or
//!   `transformer.h.N`; when any compute node carries one, that assignment is used.
//! - **Structural fallback** (metadata stripped): on the recognized graph, normalizations lie on the
//!   residual stream in order, and a decoder layer is the repeated block between every `per`-th one, where
//!   `per = (norms − 1) / attentions` (2 for pre-norm Llama and GPT-2). A node belongs to layer
//!   `(k − 1) / per`, `k` being 1 + the index of the latest normalization it depends on; nodes that do
//!   not read the graph input (parameters, constants, weight transposes) join their users' layer when all
//!   users lie in one layer. The block is accepted only if every layer has the same
//!   canonical-op histogram.

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, Value};
use crate::op::{BinaryOp, Op, UnaryOp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How layers were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSource {
    /// From the exporter's name-scope metadata.
    Metadata,
    /// From the repeated block structure.
    Structural,
    /// No decoder layers found.
    None,
}

/// Decoder-layer index of every node.
#[derive(Clone, Debug)]
pub struct LayerAssignment {
    /// Layer of each node (absent: outside every layer).
    pub of: HashMap<NodeId, u32>,
    /// Number of layers.
    pub count: usize,
    /// How the layers were found.
    pub source: LayerSource,
}

/// Finds the decoder layers of a (recognized) graph.
pub fn detect_layers(g: &Graph) -> LayerAssignment {
    let meta: HashMap<NodeId, u32> = g
        .node_ids()
        .filter_map(|n| g.node(n).prov.layer.map(|l| (n, l)))
        .collect();
    // Parameters carry layers from their names even without node metadata; only compute nodes count.
    if meta.keys().any(|n| !g.node(*n).op.is_source()) {
        let count = meta.values().max().map_or(0, |m| *m as usize + 1);
        return LayerAssignment {
            of: meta,
            count,
            source: LayerSource::Metadata,
        };
    }
    structural(g).unwrap_or(LayerAssignment {
        of: HashMap::new(),
        count: 0,
        source: LayerSource::None,
    })
}

fn is_norm(op: &Op) -> bool {
    matches!(op, Op::RmsNorm { .. } | Op::LayerNorm { .. })
}

fn structural(g: &Graph) -> Option<LayerAssignment> {
    let order = g.topo_order();
    let attentions = order
        .iter()
        .filter(|n| matches!(g.node(**n).op, Op::Attention { .. }))
        .count();
    let norms: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|n| is_norm(&g.node(*n).op))
        .collect();
    if attentions == 0
        || norms.len() < attentions + 1
        || !(norms.len() - 1).is_multiple_of(attentions)
    {
        return None;
    }
    let per = (norms.len() - 1) / attentions;
    let norm_index: HashMap<NodeId, usize> =
        norms.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // k(n) = 1 + index of the latest normalization n depends on (0: none).
    let mut k: HashMap<NodeId, usize> = HashMap::with_capacity(g.len());
    for &n in &order {
        let mut v = g
            .node(n)
            .inputs
            .iter()
            .map(|i| k.get(&i.node).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if let Some(i) = norm_index.get(&n) {
            v = v.max(i + 1);
        }
        k.insert(n, v);
    }
    let mut of = HashMap::new();
    for &n in &order {
        let kn = k[&n];
        if kn > 0 && !g.node(n).op.is_source() {
            let l = (kn - 1) / per;
            if l < attentions {
                of.insert(n, l as u32);
            }
        }
    }
    // Nodes that do not read the graph input (parameters, constants, weight transposes) join the layer of
    // their users when those all lie in one layer; shared ones (rotary tables) stay outside.
    let mut reads_input: HashMap<NodeId, bool> = HashMap::with_capacity(g.len());
    for &n in &order {
        let node = g.node(n);
        let r =
            matches!(node.op, Op::Input { .. }) || node.inputs.iter().any(|i| reads_input[&i.node]);
        reads_input.insert(n, r);
    }
    for &n in order.iter().rev() {
        if k[&n] == 0 && !reads_input[&n] {
            let users: Vec<Option<&u32>> = g.users(n).iter().map(|u| of.get(u)).collect();
            if let Some(Some(l)) = users.first()
                && users.iter().all(|u| *u == Some(*l))
            {
                of.insert(n, **l);
            }
        }
    }
    // Accept only a genuinely repeated block.
    let mut hist: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); attentions];
    for (n, l) in &of {
        *hist[*l as usize]
            .entry(g.node(*n).op.kind_name())
            .or_insert(0) += 1;
    }
    if hist.windows(2).any(|w| w[0] != w[1]) {
        tracing::debug!("structural layer detection: blocks differ, no layers assigned");
        return None;
    }
    Some(LayerAssignment {
        of,
        count: attentions,
        source: LayerSource::Structural,
    })
}

/// Model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama-style: RMSNorm, rotary, gated SiLU MLP.
    Llama,
    /// GPT-2-style: LayerNorm, learned positions, GELU MLP.
    Gpt2,
    /// Something else.
    Unknown,
}

/// Normalization kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// RMSNorm.
    RmsNorm,
    /// LayerNorm.
    LayerNorm,
    /// Not recognized.
    Unknown,
}

/// MLP kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `down(act(gate(x)) · up(x))`.
    Gated,
    /// `proj(gelu(fc(x)))`.
    Gelu,
    /// Not recognized.
    Unknown,
}

/// What the planner needs to know about a decoder model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    /// Model name.
    pub name: String,
    /// Family.
    pub family: Family,
    /// Decoder layers.
    pub layers: usize,
    /// How the layers were found.
    pub layer_source: LayerSource,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// MLP inner width.
    pub ffn: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Trainable parameters.
    pub params: u64,
    /// Normalization kind.
    pub norm: NormKind,
    /// MLP kind.
    pub mlp: MlpKind,
    /// The LM head reuses the token embedding table.
    pub tied_embeddings: bool,
    /// Parameters of each decoder layer.
    pub layer_params: Vec<u64>,
    /// Parameters of the embedding tables (token and, for GPT-2, position).
    pub embedding_params: u64,
    /// Parameters outside the layers and embeddings (final norm, untied LM head).
    pub head_params: u64,
}

fn numel(g: &Graph, n: NodeId) -> Result<u64> {
    let d = g.node(n).outputs[0].shape.numel();
    d.as_const().map(|c| c as u64).ok_or_else(|| {
        IrError::Analysis(format!(
            "parameter `{}` has a symbolic shape {d}",
            g.node(n).prov.name
        ))
    })
}

fn dim(g: &Graph, v: Value, axis: usize) -> u64 {
    g.ty(v)
        .shape
        .0
        .get(axis)
        .and_then(|d| d.as_const())
        .unwrap_or(0) as u64
}

/// The parameter behind a weight input (itself, or the one it is a view of: [`Graph::view_source`]).
fn param_behind(g: &Graph, v: Value) -> Option<NodeId> {
    g.view_source(v)
        .filter(|n| matches!(g.node(*n).op, Op::Param { .. }))
}

/// Summarizes a recognized decoder model.
pub fn summarize(g: &Graph) -> Result<ModelSummary> {
    let la = detect_layers(g);
    let ids: Vec<NodeId> = g.topo_order();
    let find = |f: &dyn Fn(&Op) -> bool| ids.iter().copied().find(|n| f(&g.node(*n).op));
    let embeddings: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|n| matches!(g.node(*n).op, Op::Embedding))
        .collect();
    let token_emb = embeddings.iter().copied().find(|n| {
        let ids_in = g.node(*n).inputs[1];
        matches!(g.node(ids_in.node).op, Op::Input { .. })
    });
    let token_emb = token_emb.or_else(|| embeddings.first().copied());
    let (hidden, emb_vocab, emb_table) = match token_emb {
        Some(e) => {
            let t = g.node(e).inputs[0];
            (dim(g, t, 1), dim(g, t, 0), param_behind(g, t))
        }
        None => (0, 0, None),
    };
    let (heads, kv_heads, head_dim) = match find(&|o| matches!(o, Op::Attention { .. })) {
        Some(a) => match g.node(a).op {
            Op::Attention {
                heads, kv_heads, ..
            } => (
                heads as u64,
                kv_heads as u64,
                dim(g, g.node(a).inputs[0], 3),
            ),
            _ => (0, 0, 0),
        },
        None => (0, 0, 0),
    };
    // MLP: the Linear feeding the first activation.
    let act = find(&|o| {
        matches!(
            o,
            Op::Unary(UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Relu)
        )
    });
    let (ffn, mlp) = match act {
        Some(a) => {
            let x = g.node(a).inputs[0];
            let ffn = dim(g, x, g.ty(x).shape.rank().saturating_sub(1));
            let gated = g.users(a).iter().any(|u| {
                matches!(g.node(*u).op, Op::Binary(BinaryOp::Mul))
                    && g.node(*u)
                        .inputs
                        .iter()
                        .any(|i| i.node != a && matches!(g.node(i.node).op, Op::Linear { .. }))
            });
            let gelu = matches!(g.node(a).op, Op::Unary(UnaryOp::Gelu | UnaryOp::GeluTanh));
            (
                ffn,
                if gated {
                    MlpKind::Gated
                } else if gelu {
                    MlpKind::Gelu
                } else {
                    MlpKind::Unknown
                },
            )
        }
        // Only routed experts (Mixtral): their fused SwiGLU's width.
        None => match find(&|o| matches!(o, Op::MoeExperts { .. })) {
            Some(m) => (dim(g, g.node(m).inputs[2], 2), MlpKind::Gated),
            None => (0, MlpKind::Unknown),
        },
    };
    let norm = match find(&|o| is_norm(o)) {
        Some(n) if matches!(g.node(n).op, Op::RmsNorm { .. }) => NormKind::RmsNorm,
        Some(_) => NormKind::LayerNorm,
        None => NormKind::Unknown,
    };
    // LM head: the Linear producing the (first) output.
    let head = g
        .outputs
        .first()
        .map(|(_, v)| *v)
        .filter(|v| matches!(g.node(v.node).op, Op::Linear { .. }));
    let head_param = head.and_then(|h| param_behind(g, g.node(h.node).inputs[1]));
    let vocab = head
        .map(|h| dim(g, h, g.ty(h).shape.rank().saturating_sub(1)))
        .unwrap_or(emb_vocab);
    let tied = head_param.is_some() && head_param == emb_table;
    let has_rotary = find(&|o| matches!(o, Op::Rotary)).is_some();
    let family = match (norm, mlp, has_rotary) {
        (NormKind::RmsNorm, MlpKind::Gated, true) => Family::Llama,
        (NormKind::LayerNorm, MlpKind::Gelu, false) if embeddings.len() == 2 => Family::Gpt2,
        _ => Family::Unknown,
    };
    let emb_params: Vec<NodeId> = embeddings
        .iter()
        .filter_map(|e| param_behind(g, g.node(*e).inputs[0]))
        .collect();
    let mut layer_params = vec![0u64; la.count];
    let (mut params, mut embedding_params, mut head_params) = (0, 0, 0);
    for p in g.params() {
        let n = numel(g, p)?;
        params += n;
        if emb_params.contains(&p) {
            embedding_params += n;
        } else if let Some(l) = la.of.get(&p).filter(|l| (**l as usize) < la.count) {
            layer_params[*l as usize] += n;
        } else {
            head_params += n;
        }
    }
    Ok(ModelSummary {
        name: g.name.clone(),
        family,
        layers: la.count,
        layer_source: la.source,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        params,
        norm,
        mlp,
        tied_embeddings: tied,
        layer_params,
        embedding_params,
        head_params,
    })
}
