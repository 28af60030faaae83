//! Which initializers are trainable parameters, and how shared initializers map to parameters.
//!
//! Rules (matching `sum(p.numel() for p in model.parameters())` of the exported PyTorch model):
//! - A floating-point initializer is a **parameter** when its name ends in `.weight` or `.bias` (except
//!   known buffers: `inv_freq`, `masked_bias`, rank-4 `attn.bias` causal masks), or when it has ≥ 2 dims and
//!   feeds (directly or through one `Transpose`/`Cast`/`Identity`) a `MatMul`/`Gemm` weight slot or a
//!   `Gather` table (the optimizer's folded `val_N` weights), or when it is a `Gemm` bias or a
//!   `LayerNormalization` scale/bias.
//! - Everything else is a constant; external non-parameters (e.g. `model.rotary_emb.inv_freq`) become
//!   [`crate::Op::Param`] nodes listed in [`crate::Graph::buffers`], so that their bytes stay unread.
//! - Exporters deduplicate initializers with identical values (freshly initialised RMSNorm weights are
//!   all ones), so one initializer can feed several modules that PyTorch counts separately. A parameter
//!   consumed from several module scopes is split into one parameter per scope, except when one use is a
//!   `Gather` table (tied input embedding and LM head: genuinely one parameter).

use super::proto;
use onnx_protobuf::GraphProto;
use std::collections::{BTreeMap, HashMap};

/// Classification of an initializer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitKind {
    /// Trainable parameter.
    Param,
    /// Constant or buffer.
    Const,
}

/// The plan for every initializer, computed before building nodes.
#[derive(Debug, Default)]
pub(crate) struct InitPlan {
    kinds: HashMap<String, InitKind>,
    /// (initializer, consumer node index) → parameter name, for split initializers only.
    groups: HashMap<(String, usize), String>,
    /// Module scope of each node, by index.
    pub scopes: Vec<String>,
}

fn is_float(code: i32) -> bool {
    matches!(code, 1 | 10 | 11 | 16 | 17 | 18 | 19 | 20)
}

fn is_buffer_name(name: &str, rank: usize) -> bool {
    name.ends_with("inv_freq")
        || name.ends_with("masked_bias")
        || (name.ends_with("attn.bias") && rank == 4)
}

impl InitPlan {
    /// Classifies the initializers of a graph.
    pub fn new(graph: &GraphProto) -> InitPlan {
        let scopes: Vec<String> = graph
            .node
            .iter()
            .map(|n| {
                proto::metadata(n, "pkg.torch.onnx.name_scopes")
                    .map(proto::innermost_scope)
                    .unwrap_or_default()
            })
            .collect();
        // value name → (consumer node index, op type, slot)
        let mut consumers: HashMap<&str, Vec<(usize, &str, usize)>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for (slot, inp) in n.input.iter().enumerate() {
                consumers
                    .entry(inp.as_str())
                    .or_default()
                    .push((i, n.op_type.as_str(), slot));
            }
        }
        let weight_use = |name: &str| -> bool {
            let direct = consumers.get(name).map(Vec::as_slice).unwrap_or(&[]);
            direct.iter().any(|(i, op, slot)| {
                matches!((*op, *slot), ("MatMul", 1) | ("Gemm", 1) | ("Gather", 0))
                    || (matches!(*op, "Transpose" | "Cast" | "Identity")
                        && graph.node[*i].output.first().is_some_and(|o| {
                            consumers.get(o.as_str()).is_some_and(|c| {
                                c.iter().any(|(_, op2, s2)| {
                                    matches!((*op2, *s2), ("MatMul", 1) | ("Gemm", 1))
                                })
                            })
                        }))
            })
        };
        let mut plan = InitPlan {
            scopes,
            ..Default::default()
        };
        let names: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        for t in &graph.initializer {
            let rank = t.dims.len();
            let uses = consumers
                .get(t.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let named = (t.name.ends_with(".weight") || t.name.ends_with(".bias"))
                && !is_buffer_name(&t.name, rank);
            let slot_param = uses.iter().any(|(_, op, slot)| {
                matches!(
                    (*op, *slot),
                    ("Gemm", 2) | ("LayerNormalization", 1) | ("LayerNormalization", 2)
                )
            });
            let param = is_float(t.data_type)
                && (named || (rank >= 2 && weight_use(&t.name)) || (rank >= 1 && slot_param));
            plan.kinds.insert(
                t.name.clone(),
                if param {
                    InitKind::Param
                } else {
                    InitKind::Const
                },
            );
            if !param
                || uses.len() < 2
                || uses
                    .iter()
                    .any(|(_, op, slot)| *op == "Gather" && *slot == 0)
            {
                continue;
            }
            // Group consumers by module scope (node name when there is no scope metadata).
            let mut by_scope: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, _, _) in uses {
                let key = if plan.scopes[*i].is_empty() {
                    graph.node[*i].name.clone()
                } else {
                    plan.scopes[*i].clone()
                };
                by_scope.entry(key).or_default().push(*i);
            }
            if by_scope.len() < 2 {
                continue;
            }
            let home = by_scope
                .keys()
                .find(|s| t.name.starts_with(&format!("{s}.")))
                .cloned();
            let suffix = match &home {
                Some(h) => t.name[h.len() + 1..].to_string(),
                None => t.name.clone(),
            };
            let first = by_scope.keys().next().cloned().unwrap_or_default();
            for (scope, nodes) in &by_scope {
                let keep = home.as_ref().map_or(*scope == first, |h| h == scope);
                let mut pname = if keep {
                    t.name.clone()
                } else {
                    format!("{scope}.{suffix}")
                };
                let mut k = 1;
                while !keep && names.contains(pname.as_str()) {
                    pname = format!("{scope}.{suffix}#{k}");
                    k += 1;
                }
                for i in nodes {
                    plan.groups.insert((t.name.clone(), *i), pname.clone());
                }
            }
        }
        plan
    }

    /// The kind of an initializer.
    pub fn kind(&self, name: &str) -> InitKind {
        self.kinds.get(name).copied().unwrap_or(InitKind::Const)
    }

    /// The parameter name an initializer takes when consumed by node `node_index`.
    pub fn group(&self, name: &str, node_index: usize) -> String {
        self.groups
            .get(&(name.to_string(), node_index))
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// The module scope a parameter name belongs to (`a.b.weight` → `a.b`).
    pub fn scope_of(&self, param: &str) -> String {
        match param.rsplit_once('.') {
            Some((s, _)) if !param.starts_with("val_") => s.to_string(),
            _ => String::new(),
        }
    }
}
