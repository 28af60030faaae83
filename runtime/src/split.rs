//! Splitting one graph into consecutive programs (forward / backward / optimizer of a training step, or
//! pipeline stages): values that cross from an earlier program to a later one become outputs of the
//! producer and inputs of the consumers, under the same name; source nodes are copied where used.

use crate::emit::EmittedModule;
use crate::error::{Result, RuntimeError};
use crate::executor::Executor;
use moai_ir::{Graph, NodeId, Op, Provenance, Tensor, Value};
use std::collections::HashMap;

/// The name a crossing value gets (`x<node>_<output>`).
pub fn link_name(v: Value) -> String {
    format!("x{}_{}", v.node.index(), v.output)
}

/// Splits `g` into `n` graphs; `part(id)` gives the program of every non-source node, and must not
/// decrease along edges. Graph outputs go to the program that produces them (sources: the last one).
pub fn split_graph(g: &Graph, n: usize, part: &dyn Fn(NodeId) -> usize) -> Result<Vec<Graph>> {
    let is_source = |id: NodeId| {
        matches!(
            g.node(id).op,
            Op::Input { .. } | Op::Param { .. } | Op::Constant(_)
        )
    };
    let mut parts: Vec<Graph> = (0..n)
        .map(|i| {
            let mut p = Graph::new(format!("{}.{i}", g.name));
            p.buffers = g.buffers.clone();
            p.source_dir = g.source_dir.clone();
            p
        })
        .collect();
    let mut map: Vec<HashMap<Value, Value>> = vec![HashMap::new(); n];
    let mut exports: Vec<Vec<Value>> = vec![Vec::new(); n];
    let owner = |id: NodeId| if is_source(id) { None } else { Some(part(id)) };
    let order = g.topo_order();
    // make sure graph inputs keep their declaration order in each part that uses them
    for id in order.iter().copied().filter(|id| !is_source(*id)) {
        let p = part(id);
        if p >= n {
            return Err(RuntimeError::Exec {
                program: g.name.clone(),
                reason: format!("node {} assigned to part {p} of {n}", id.index()),
            });
        }
        let node = g.node(id).clone();
        let mut ins = Vec::with_capacity(node.inputs.len());
        for v in &node.inputs {
            ins.push(import(
                g,
                &mut parts,
                &mut map,
                &mut exports,
                p,
                *v,
                &owner,
            )?);
        }
        let new = parts[p].add(
            node.op.clone(),
            ins,
            node.outputs.clone(),
            node.prov.clone(),
        );
        for o in 0..node.outputs.len() {
            map[p].insert(
                Value {
                    node: id,
                    output: o as u32,
                },
                Value {
                    node: new,
                    output: o as u32,
                },
            );
        }
    }
    for (name, v) in &g.outputs {
        let p = owner(v.node).unwrap_or(n - 1);
        let nv = import(g, &mut parts, &mut map, &mut exports, p, *v, &owner)?;
        parts[p].outputs.push((name.clone(), nv));
    }
    for (p, ex) in exports.iter().enumerate() {
        for v in ex {
            let nv = map[p][v];
            parts[p].outputs.push((link_name(*v), nv));
        }
    }
    Ok(parts)
}

#[allow(clippy::too_many_arguments)]
fn import(
    g: &Graph,
    parts: &mut [Graph],
    map: &mut [HashMap<Value, Value>],
    exports: &mut [Vec<Value>],
    p: usize,
    v: Value,
    owner: &dyn Fn(NodeId) -> Option<usize>,
) -> Result<Value> {
    if let Some(x) = map[p].get(&v) {
        return Ok(*x);
    }
    let node = g.node(v.node);
    let nv = match owner(v.node) {
        None => Value::of(parts[p].add(
            node.op.clone(),
            vec![],
            node.outputs.clone(),
            node.prov.clone(),
        )),
        Some(q) if q == p => {
            return Err(RuntimeError::Exec {
                program: g.name.clone(),
                reason: format!("value of node {} used before it is defined", v.node.index()),
            });
        }
        Some(q) if q > p => {
            return Err(RuntimeError::Exec {
                program: g.name.clone(),
                reason: format!(
                    "node {} of part {q} feeds an earlier part {p}",
                    v.node.index()
                ),
            });
        }
        Some(q) => {
            if !exports[q].contains(&v) {
                exports[q].push(v);
            }
            let ty = g.ty(v).clone();
            Value::of(parts[p].add(
                Op::Input { name: link_name(v) },
                vec![],
                vec![ty],
                Provenance {
                    name: link_name(v),
                    ..Default::default()
                },
            ))
        }
    };
    map[p].insert(v, nv);
    Ok(nv)
}

/// Runs programs in order with `exec`, taking every argument by name from `values` (inputs, parameters,
/// optimizer state, values linked from earlier programs) and storing every output back under its name
/// (so updated parameters replace the old ones after the optimizer program).
pub fn run_chain(
    exec: &mut dyn Executor,
    programs: &[&EmittedModule],
    values: &mut HashMap<String, Tensor>,
) -> Result<()> {
    for m in programs {
        let mut args = Vec::with_capacity(m.inputs.len());
        for a in &m.inputs {
            let t = values
                .get(&a.name)
                .cloned()
                .ok_or_else(|| RuntimeError::BadInput {
                    program: m.func_name.clone(),
                    reason: format!("no value named `{}`", a.name),
                })?;
            args.push(t);
        }
        let outs = exec.run(m, &args)?;
        for (a, t) in m.outputs.iter().zip(outs) {
            values.insert(a.name.clone(), t);
        }
    }
    Ok(())
}
