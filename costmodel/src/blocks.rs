//! Per-block costs and memory for stage partitioning and memory pruning: what the planner needs from the
//! cost model before it knows the stages.
//!
//! [`CostModel::block_costs`] returns one [`BlockCost`] per block of the
//! step profile (embedding, each decoder layer, head). The default implementation reduces the profile with
//! `ProfiledCostModel::prepare` (the same per-op times the estimator uses, tensor-parallel collectives
//! priced by [`crate::collective::tp_collectives_time`]) and the static bytes with [`static_bytes`], so
//! the planner cuts stages by the model that scores them.

use crate::cluster::Cluster;
use crate::config::ParallelConfig;
use crate::error::{CostError, Result};
use crate::estimate::{CostModel, PhaseSums, PreparedProfile, ProfiledCostModel};
use crate::memory::static_bytes;
use moai_ir::cost::{BlockKind, StepProfile};
use std::sync::OnceLock;

/// Cost and memory of one block (embedding, one decoder layer, or the head) on one device of a
/// configuration, for one micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockCost {
    /// Which block.
    pub kind: BlockKind,
    /// Forward seconds of one micro-batch on one device, tensor-parallel communication included.
    pub forward_s: f64,
    /// Backward (and recomputation) seconds of one micro-batch on one device, tensor-parallel
    /// communication included.
    pub backward_s: f64,
    /// Parameters held by one device (after tensor-parallel sharding, before ZeRO sharding).
    pub params: f64,
    /// Static bytes on one device under the configuration's ZeRO sharding: weights, persistent
    /// gradients and optimizer state.
    pub static_bytes: f64,
    /// Activation bytes one micro-batch saves for backward on one device.
    pub saved_bytes: f64,
}

impl BlockCost {
    /// Forward plus backward seconds of one micro-batch.
    pub fn time_s(&self) -> f64 {
        self.forward_s + self.backward_s
    }
}

/// Per-block costs of `cfg` from a prepared profile: kernel time as the cost model computes it
/// (`kernel_s`, host-bounded), plus the part of the tensor-parallel collectives at the cluster's
/// bandwidth that the stack does not overlap (`exposed_tp`: a phase, its collective seconds and
/// whether it is a backward, as [`PhaseSums::exposed_tp_s`]); static bytes by [`static_bytes`].
/// `cfg.stages`, `pp`, the schedule and the micro-batch count are not read.
pub fn from_prepared(
    prep: &PreparedProfile,
    kernel_s: &dyn Fn(&PhaseSums) -> f64,
    exposed_tp: &dyn Fn(&PhaseSums, f64, bool) -> f64,
    profile: &StepProfile,
    cluster: &Cluster,
    cfg: &ParallelConfig,
) -> Result<Vec<BlockCost>> {
    if profile.blocks.is_empty() || prep.blocks.len() != profile.blocks.len() {
        return Err(CostError::StepProfile(format!(
            "no blocks to cost ({} in the profile, {} prepared)",
            profile.blocks.len(),
            prep.blocks.len()
        )));
    }
    let tp_time = |s: &PhaseSums| s.tp_time(cluster, cfg);
    // The same phase time as the estimator's: kernels (host-bounded by the caller's `kernel_s`), plus
    // the part of the tensor-parallel collectives the stack does not hide behind them.
    let cp = cfg.cp.max(1);
    let phase = |s: &PhaseSums, backward: bool| {
        // One context-parallel rank's share (`crate::context`).
        let s = &s.context_shard(cp);
        let k = kernel_s(s);
        let t = tp_time(s);
        k + exposed_tp(s, t, backward) + s.a2a_time(cluster, cfg.ep, cfg.tp)
    };
    Ok(prep
        .blocks
        .iter()
        .map(|b| {
            let st = static_bytes(profile, cfg, b.params);
            BlockCost {
                kind: b.kind,
                forward_s: phase(&b.forward, false),
                backward_s: phase(&b.backward, true),
                params: b.params,
                static_bytes: st.weights + st.persistent_grads + st.optimizer,
                saved_bytes: b.saved_bytes / cp as f64,
            }
        })
        .collect())
}

/// The block costs of the default cost model (committed efficiencies, no measured profile): what
/// [`CostModel::block_costs`] returns for a cost model that does not override it. (`ProfiledCostModel`
/// overrides it with its own efficiencies and profiles, so this does not recurse.)
pub fn default_block_costs(
    profile: &StepProfile,
    cluster: &Cluster,
    cfg: &ParallelConfig,
) -> Result<Vec<BlockCost>> {
    static DEFAULT: OnceLock<ProfiledCostModel> = OnceLock::new();
    DEFAULT
        .get_or_init(ProfiledCostModel::new)
        .block_costs(profile, cluster, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Gpu;
    use moai_ir::train::{RecomputePolicy, TrainOptions};

    fn profile(recompute: RecomputePolicy) -> StepProfile {
        let g = moai_models::from_spec(
            "llama:layers=4,hidden=512,heads=8,kv_heads=8,ffn=1376,vocab=8000",
        )
        .expect("spec builds");
        let opts = TrainOptions {
            recompute,
            ..Default::default()
        };
        moai_ir::train::step_profile(&g, &opts, 2, 256).expect("profile")
    }

    fn cluster() -> Cluster {
        Cluster::new(Gpu::H100, 8).unwrap()
    }

    #[test]
    fn one_cost_per_block_in_profile_order() {
        let p = profile(RecomputePolicy::None);
        let c = default_block_costs(&p, &cluster(), &ParallelConfig::default()).unwrap();
        assert_eq!(c.len(), p.blocks.len());
        for (b, bc) in p.blocks.iter().zip(&c) {
            assert_eq!(b.kind, bc.kind);
            assert!(bc.forward_s > 0.0 && bc.backward_s > 0.0, "{bc:?}");
            assert_eq!(bc.params, b.params as f64);
        }
        let total: f64 = c.iter().map(|b| b.static_bytes).sum();
        let params: f64 = p.blocks.iter().map(|b| b.params as f64).sum();
        let st = static_bytes(&p, &ParallelConfig::default(), params);
        let want = st.weights + st.persistent_grads + st.optimizer;
        assert!((total - want).abs() <= 1e-6 * total, "{total} vs {want}");
    }

    #[test]
    fn zero3_and_tp_shrink_a_layer_and_tp_adds_communication() {
        let p = profile(RecomputePolicy::None);
        let layer = |cfg: &ParallelConfig| {
            default_block_costs(&p, &cluster(), cfg)
                .unwrap()
                .into_iter()
                .find(|b| b.kind == BlockKind::Decoder(1))
                .unwrap()
        };
        let base = layer(&ParallelConfig::default());
        let z3 = layer(&ParallelConfig {
            dp: 4,
            distribute_param: true,
            ..Default::default()
        });
        assert!(
            z3.static_bytes < base.static_bytes / 3.0,
            "{z3:?} vs {base:?}"
        );
        assert_eq!(z3.time_s(), base.time_s());
        let tp = ParallelConfig {
            tp: 4,
            ..Default::default()
        };
        let sharded = layer(&tp);
        assert!(sharded.params < base.params / 3.0);
        assert!(sharded.saved_bytes < base.saved_bytes);
        let prep = ProfiledCostModel::new().prepare(&p, Gpu::H100, 4, false);
        let d = prep
            .blocks
            .iter()
            .find(|b| b.kind == BlockKind::Decoder(1))
            .unwrap();
        assert!(d.forward.tp_collectives > 0.0);
        // Above the layer's kernels alone on the stack it is costed for (which may skip some of
        // the graph's kernels, as Megatron-LM skips the autocast casts).
        let f = crate::efficiency::committed();
        let (kernels_s, _) = d
            .forward
            .kernel_time(f.get(Gpu::H100), &f.costed(tp.stack, Gpu::H100));
        assert!(
            sharded.forward_s > kernels_s,
            "the all-reduces are part of the layer's time"
        );
    }

    #[test]
    fn recompute_moves_time_into_backward_and_saves_less() {
        let none = default_block_costs(
            &profile(RecomputePolicy::None),
            &cluster(),
            &Default::default(),
        )
        .unwrap();
        let full = default_block_costs(
            &profile(RecomputePolicy::Full),
            &cluster(),
            &Default::default(),
        )
        .unwrap();
        assert!(full[1].backward_s > none[1].backward_s);
        assert!(full[1].saved_bytes < none[1].saved_bytes);
    }

    #[test]
    fn empty_profile_is_an_error() {
        let mut p = profile(RecomputePolicy::None);
        p.blocks.clear();
        let e = default_block_costs(&p, &cluster(), &Default::default()).unwrap_err();
        assert!(e.to_string().contains("no blocks"), "{e}");
    }
}
