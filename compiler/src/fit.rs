//! When a model fits nowhere: find the smallest flavor of the catalog on which it does.

use crate::model::Model;
use crate::request::PlanRequest;
use crate::search::{NoProgress, search};
use moai_costmodel::{Cluster, ProfiledCostModel, Recompute};

/// The smallest catalog flavor larger than `cluster` (same GPU kind) on which some plan fits, searching
/// only the memory-lean part of each space (full recomputation, ZeRO-1 or ZeRO-3).
pub fn smallest_fitting_flavor(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
) -> Option<String> {
    let mut lean = req.clone();
    lean.constraints.recompute = vec![Recompute::Full];
    lean.time_budget = None;
    let cost = ProfiledCostModel::new();
    for row in moai_costmodel::flavors() {
        let Ok(c) = Cluster::from_flavor(&row.name, cluster.gpu) else {
            continue;
        };
        if c.devices <= cluster.devices {
            continue;
        }
        let mut c = c;
        c.links = cluster.links.clone();
        if search(model, &c, &lean, &cost, &NoProgress).is_ok() {
            return Some(format!("{} ({} × {})", row.name, c.devices, c.gpu));
        }
    }
    None
}
