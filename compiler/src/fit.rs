//! When a model fits nowhere: find the smallest flavor of the catalog on which it does.

use crate::model::Model;
use crate::request::PlanRequest;
use crate::search::{NoProgress, search};
use moai_costmodel::{Cluster, Recompute};

/// The smallest catalog flavor larger than `cluster` (same GPU kind) on which some plan fits, searching
/// only the memory-lean part of each space (full recomputation, ZeRO-1 or ZeRO-3). With a time budget in
/// `req`, all the flavors' searches together get that budget once more (then `None`); Ctrl-C (the
/// request's token) ends them too.
pub fn smallest_fitting_flavor(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
) -> Option<String> {
    let mut lean = req.clone();
    lean.constraints.recompute = vec![Recompute::Full];
    let deadline = req
        .time_budget
        .and_then(|b| std::time::Instant::now().checked_add(b));
    let cost = req.cost_model();
    for row in moai_costmodel::flavors() {
        if req.cancel.is_cancelled() {
            return None;
        }
        if let Some(d) = deadline {
            match d.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => lean.time_budget = Some(left),
                _ => return None,
            }
        }
        let Ok(c) = Cluster::from_flavor(row.name, cluster.gpu) else {
            continue;
        };
        if c.devices <= cluster.devices {
            continue;
        }
        let mut c = c;
        c.links = cluster.links;
        if search(model, &c, &lean, &cost, &NoProgress).is_ok() {
            return Some(format!("{} ({} × {})", row.name, c.devices, c.gpu));
        }
    }
    None
}
