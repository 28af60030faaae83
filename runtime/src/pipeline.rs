//! A training step cut into pipeline stages: every node of a [`TrainingGraph`] goes to one stage's
//! forward, backward or optimizer program, and the step runs those programs in pipeline order.
//!
//! Decoder-layer nodes go to the stage holding their layer. Other forward nodes (embedding, rotary tables,
//! weight casts, final norm, LM head, loss) go to the earliest stage that uses them, or for the tail of the
//! model the stage of what they consume. Backward and recomputed nodes go to the stage of the forward node
//! they differentiate; optimizer updates to the stage of their gradient. Values crossing stages become
//! named outputs of the producer and inputs of the consumer ([`crate::split`]); on the CPU the host passes
//! them from stage to stage (the point-to-point transfer), and tensor-parallel collectives run inside the
//! emitted code against the in-process communicator ([`crate::run_ranks`]).

use crate::emit::{Dims, EmittedModule};
use crate::error::{Result, RuntimeError};
use crate::split::split_graph;
use crate::stage::{Program, ProgramKind, StageProgram};
use moai_ir::cost::Phase;
use moai_ir::train::TrainingGraph;
use moai_ir::{NodeId, Op, Tensor};
use std::collections::HashMap;

/// Which decoder layers each pipeline stage holds: stage `s` has layers `first[s] .. first[s + 1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageLayout {
    first: Vec<u32>,
    layers: u32,
}

impl StageLayout {
    /// Stages holding `counts[s]` consecutive layers each (a plan's partition).
    pub fn from_counts(counts: &[u32]) -> Result<StageLayout> {
        if counts.is_empty() || counts.contains(&0) {
            return Err(RuntimeError::Exec {
                program: "pipeline layout".into(),
                reason: format!("every stage needs at least one layer, got {counts:?}"),
            });
        }
        let mut first = Vec::with_capacity(counts.len());
        let mut at = 0;
        for c in counts {
            first.push(at);
            at += c;
        }
        Ok(StageLayout { first, layers: at })
    }

    /// `layers` split into `stages` contiguous stages as evenly as possible (earlier stages get the extra).
    pub fn even(layers: u32, stages: u32) -> Result<StageLayout> {
        if stages == 0 || stages > layers {
            return Err(RuntimeError::Exec {
                program: "pipeline layout".into(),
                reason: format!("{layers} layers cannot fill {stages} pipeline stages"),
            });
        }
        let counts: Vec<u32> = (0..stages)
            .map(|s| layers / stages + u32::from(s < layers % stages))
            .collect();
        StageLayout::from_counts(&counts)
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.first.len()
    }

    /// The stage holding decoder layer `l` (layers past the end go to the last stage).
    pub fn stage_of(&self, l: u32) -> usize {
        self.first.iter().rposition(|f| *f <= l).unwrap_or(0)
    }

    /// Total decoder layers covered.
    pub fn layers(&self) -> u32 {
        self.layers
    }
}

/// The order a step runs its programs in: every forward (stage 0 first), every backward (last stage
/// first), every optimizer update. Index `k` of this list is part `k` of [`stage_programs`]' split.
pub fn step_order(stages: usize) -> Vec<(u32, ProgramKind)> {
    let s = stages as u32;
    let fwd = (0..s).map(|i| (i, ProgramKind::Forward));
    let bwd = (0..s).rev().map(|i| (i, ProgramKind::Backward));
    let opt = (0..s).rev().map(|i| (i, ProgramKind::Optimizer));
    fwd.chain(bwd).chain(opt).collect()
}

/// The stage programs of a training step under `layout`, each with the plan's concrete `dims`.
pub fn stage_programs(
    tg: &TrainingGraph,
    layout: &StageLayout,
    dims: &Dims,
) -> Result<Vec<StageProgram>> {
    let parts = assign_parts(tg, layout)?;
    let n = layout.stages();
    let order = step_order(n);
    let graphs = split_graph(&tg.graph, order.len(), &|id| parts[id.index()])?;
    let mut stages: Vec<StageProgram> = (0..n as u32)
        .map(|stage| StageProgram {
            stage,
            programs: Vec::new(),
            dims: dims.clone(),
        })
        .collect();
    for ((stage, kind), graph) in order.iter().zip(graphs) {
        stages[*stage as usize]
            .programs
            .push(Program { kind: *kind, graph });
    }
    for s in &mut stages {
        s.programs.sort_by_key(|p| p.kind as u8);
    }
    Ok(stages)
}

/// Part (index into [`step_order`]) of every node, by node index; sources get 0 (they are copied).
fn assign_parts(tg: &TrainingGraph, layout: &StageLayout) -> Result<Vec<usize>> {
    let g = &tg.graph;
    let n = layout.stages();
    let last = n - 1;
    let size = g.node_ids().map(|id| id.index() + 1).max().unwrap_or(0);
    let is_source = |id: NodeId| {
        matches!(
            g.node(id).op,
            Op::Input { .. } | Op::Param { .. } | Op::Constant(_)
        )
    };
    let order = g.topo_order();
    let phase = |id: NodeId| tg.meta(id).phase;
    let forward = |id: NodeId| phase(id) == Phase::Forward;
    let layer = |id: NodeId| g.node(id).prov.layer.map(|l| layout.stage_of(l));

    // forward stages: layer nodes fixed; the rest as late as their forward users allow
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); size];
    for id in &order {
        for v in &g.node(*id).inputs {
            users[v.node.index()].push(*id);
        }
    }
    let mut fstage: Vec<Option<usize>> = vec![None; size];
    for id in order.iter().rev().copied() {
        if is_source(id) || !forward(id) {
            continue;
        }
        fstage[id.index()] = Some(layer(id).unwrap_or_else(|| {
            users[id.index()]
                .iter()
                .filter_map(|u| fstage[u.index()])
                .min()
                .unwrap_or(last)
        }));
    }
    // ... but never before what they consume
    for id in order.iter().copied() {
        if let Some(s) = fstage[id.index()] {
            let after = g
                .node(id)
                .inputs
                .iter()
                .filter_map(|v| fstage[v.node.index()])
                .max()
                .unwrap_or(0);
            fstage[id.index()] = Some(s.max(after));
        }
    }

    let fpart = |s: usize| s;
    let bpart = |s: usize| n + (last - s);
    let opart = |s: usize| 2 * n + (last - s);
    let mut part = vec![0usize; size];
    for id in order.iter().copied() {
        if is_source(id) {
            continue;
        }
        let inputs_max = g
            .node(id)
            .inputs
            .iter()
            .filter(|v| !is_source(v.node))
            .map(|v| part[v.node.index()])
            .max();
        let p = match phase(id) {
            Phase::Forward => fpart(fstage[id.index()].unwrap_or(0)),
            Phase::Backward | Phase::Recompute => {
                let own = tg
                    .meta(id)
                    .origin
                    .and_then(|o| fstage[o.index()])
                    .map(bpart)
                    .unwrap_or(bpart(last));
                own.max(inputs_max.unwrap_or(0))
            }
            Phase::Optimizer => {
                // the stage of the gradient it applies: the latest backward part among its inputs
                let from = inputs_max.unwrap_or(bpart(last));
                let stage = if from >= n && from < 2 * n {
                    last - (from - n)
                } else {
                    last
                };
                opart(stage).max(from)
            }
        };
        part[id.index()] = p;
    }
    Ok(part)
}

/// Runs one training step stage by stage: `programs[r][k]` is tensor-parallel rank `r`'s module for part
/// `k` of [`step_order`]. Each part runs on every rank at once (one thread per rank, collectives
/// in-process); arguments are taken by name from `values[r]` and outputs stored back there.
pub fn run_step(
    programs: &[Vec<EmittedModule>],
    values: &mut [HashMap<String, Tensor>],
) -> Result<()> {
    let parts = programs.first().map(Vec::len).unwrap_or(0);
    if programs.iter().any(|p| p.len() != parts) || values.len() != programs.len() {
        return Err(RuntimeError::Exec {
            program: "training step".into(),
            reason: format!(
                "{} ranks of programs with differing part counts, or {} value sets",
                programs.len(),
                values.len()
            ),
        });
    }
    for k in 0..parts {
        let mut ranks = Vec::with_capacity(programs.len());
        for (r, progs) in programs.iter().enumerate() {
            let m = &progs[k];
            let args = m
                .inputs
                .iter()
                .map(|a| {
                    values[r]
                        .get(&a.name)
                        .cloned()
                        .ok_or_else(|| RuntimeError::BadInput {
                            program: m.func_name.clone(),
                            reason: format!("rank {r}: no value named `{}`", a.name),
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            ranks.push((m, args));
        }
        let outs = crate::executor::run_ranks(&ranks)?;
        for (r, (o, (m, _))) in outs.into_iter().zip(&ranks).enumerate() {
            for (a, t) in m.outputs.iter().zip(o) {
                values[r].insert(a.name.clone(), t);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = StageLayout::even(5, 2).unwrap();
        assert_eq!(l.stages(), 2);
        assert_eq!((l.stage_of(0), l.stage_of(2), l.stage_of(3)), (0, 0, 1));
        assert_eq!(l.layers(), 5);
        assert!(StageLayout::even(2, 3).is_err());
        assert!(StageLayout::from_counts(&[2, 0]).is_err());
        assert_eq!(
            step_order(2),
            vec![
                (0, ProgramKind::Forward),
                (1, ProgramKind::Forward),
                (1, ProgramKind::Backward),
                (0, ProgramKind::Backward),
                (1, ProgramKind::Optimizer),
                (0, ProgramKind::Optimizer),
            ]
        );
    }
}
