//! End-to-end validation against the shipped truth files with the real training graph
//! (`moai_models::from_spec` + `moai_ir::train::step_profile`): the targets of issue 4.
//! Note: the H100 and A100 coefficients are fitted to these same rows (in-sample errors).

use crate::real::real_profile as profile_for;
use crate::support::truth;
use moai_costmodel::{ProfiledCostModel, validate};

#[test]
fn h100_llama350m_within_targets() {
    let rows = truth("truth/h100_llama350m.jsonl");
    let report = validate(&rows, &profile_for, &ProfiledCostModel::new());
    eprintln!("{report}");
    assert!(report.rows.iter().all(|r| r.error.is_none()), "{report}");
    assert!(report.mape["step_time_s"] <= 10.0, "{report}");
    assert!(report.mape["peak_memory_bytes"] <= 10.0, "{report}");
}

#[test]
fn megatron_table1_within_target() {
    let rows = truth("truth/megatron_sc21_table1.jsonl");
    let report = validate(&rows, &profile_for, &ProfiledCostModel::new());
    eprintln!("{report}");
    assert!(report.rows.iter().all(|r| r.error.is_none()), "{report}");
    assert!(report.mape["tflops_per_gpu"] <= 15.0, "{report}");
}

/// The analytic fixture used by the invariant tests stays close to the training graph it imitates.
#[test]
fn fixture_flops_match_training_graph() {
    use moai_ir::cost::Phase;
    let flops = |p: &moai_ir::cost::StepProfile| -> f64 {
        p.blocks
            .iter()
            .flat_map(|b| &b.ops)
            .filter(|o| o.phase != Phase::Optimizer)
            .map(|o| o.flops)
            .sum()
    };
    for row in truth("truth/h100_llama350m.jsonl") {
        let (real, fixture) = (
            profile_for(&row).unwrap(),
            crate::support::profile_for(&row).unwrap(),
        );
        let ratio = flops(&fixture) / flops(&real);
        assert!(
            (ratio - 1.0).abs() < 0.1,
            "{}: fixture/real FLOPs {ratio}",
            row.name
        );
    }
}
