//! Property tests of cost-model invariants.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::cluster::Link;
use moai_costmodel::pipeline::{StageTimes, simulate};
use moai_costmodel::{
    Cluster, CostModel, Gpu, ParallelConfig, ProfiledCostModel, Recompute, Schedule,
};
use proptest::prelude::*;

fn free_comm(gpu: Gpu, devices: u32) -> Cluster {
    let mut c = Cluster::new(gpu, devices).unwrap();
    let free = Link {
        bytes_per_s: 1e30,
        latency_s: 0.0,
        efficiency: 1.0,
        mesh: false,
        class: None,
    };
    c.links.pair = free;
    c.links.server = free;
    c.links.network = free;
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn one_f_one_b_bubble_fraction(pp in 1u32..9, m in 1u32..33, f in 0.1f64..2.0, b in 0.1f64..4.0) {
        let stages = vec![StageTimes::new(f, b); pp as usize];
        let r = simulate(Schedule::OneFOneB, &stages, pp, m, 0.0).unwrap();
        let expected = (pp - 1) as f64 / (m + pp - 1) as f64;
        prop_assert!((r.bubble_s / r.makespan_s - expected).abs() < 1e-9);
    }

    #[test]
    fn more_dp_never_slower_per_token_when_comm_is_free(k in 0u32..4, mb in 1u64..4, gpu in 0usize..5) {
        let gpu = Gpu::ALL[gpu];
        let spec = parse_spec("llama:layers=4,hidden=512,heads=8,kv_heads=8,ffn=1536,vocab=8000").unwrap();
        let p = step_profile(&spec, mb, 256, Recompute::None, "amp-bf16");
        let m = ProfiledCostModel::new();
        let per_token = |dp: u32| {
            let cfg = ParallelConfig { dp, micro_batch_size: mb as u32, ..Default::default() };
            let e = m.estimate(&p, &free_comm(gpu, dp), &cfg).unwrap();
            1.0 / e.tokens_per_s
        };
        let (a, b) = (per_token(1 << k), per_token(2 << k));
        prop_assert!(b <= a * (1.0 + 1e-9), "{a} {b}");
    }

    #[test]
    fn memory_decreases_with_zero_stages(dp in 2u32..9, mb in 1u64..3) {
        let spec = parse_spec("llama:layers=4,hidden=512,heads=8,kv_heads=8,ffn=1536,vocab=8000").unwrap();
        let p = step_profile(&spec, mb, 256, Recompute::None, "bf16");
        let c = Cluster::new(Gpu::Mi250, dp).unwrap();
        let m = ProfiledCostModel::new();
        let peak = |z1: bool, lp: bool, z3: bool| {
            let cfg = ParallelConfig { dp, micro_batch_size: mb as u32, distribute_optimizer: z1, distribute_low_prec_param: lp, distribute_param: z3, ..Default::default() };
            m.estimate(&p, &c, &cfg).unwrap().memory[0].clone()
        };
        let static_bytes = |s: &moai_costmodel::StageMemory| s.weights_bytes + s.grads_bytes + s.optimizer_bytes;
        let (z0, z1, z1lp, z3) = (peak(false, false, false), peak(true, false, false), peak(true, true, false), peak(true, true, true));
        prop_assert!(static_bytes(&z1) < static_bytes(&z0));
        prop_assert!(static_bytes(&z1lp) < static_bytes(&z1));
        prop_assert!(static_bytes(&z3) < static_bytes(&z1lp));
    }

    #[test]
    fn recompute_never_raises_saved_activations(mb in 1u64..4, layers in 2u64..6) {
        let spec = parse_spec(&format!("llama:layers={layers},hidden=256,heads=4,vocab=1000")).unwrap();
        let c = Cluster::new(Gpu::H100, 1).unwrap();
        let m = ProfiledCostModel::new();
        let est = |r: Recompute| {
            let cfg = ParallelConfig { micro_batch_size: mb as u32, recompute: r, ..Default::default() };
            m.estimate(&step_profile(&spec, mb, 128, r, "amp-bf16"), &c, &cfg).unwrap()
        };
        prop_assert!(est(Recompute::Full).memory[0].activations_bytes < est(Recompute::None).memory[0].activations_bytes);
    }
}
