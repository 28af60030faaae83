//! End-to-end validation against the shipped truth files (fixture profiles until the training
//! graph's `step_profile` is wired; see the README of `data/truth/`).

use crate::support::{profile_for, truth};
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
