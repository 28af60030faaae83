//! Test support: the analytic step-profile fixture and truth-file helpers.

pub mod fixture;

use moai_costmodel::validate::{TruthRow, read_truth};
use moai_costmodel::{CostError, Result};
use moai_ir::cost::StepProfile;
use std::path::PathBuf;

/// Path of a file under `costmodel/data/`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(rel)
}

/// The fixture profile of a truth row (model must be a spec).
pub fn profile_for(row: &TruthRow) -> Result<StepProfile> {
    let spec = fixture::parse_spec(&row.model).map_err(CostError::StepProfile)?;
    Ok(fixture::step_profile(
        &spec,
        row.config.micro_batch_size as u64,
        row.seq,
        row.config.recompute,
        &row.precision,
    ))
}

/// Truth rows of a shipped file.
pub fn truth(rel: &str) -> Vec<TruthRow> {
    read_truth(&data(rel)).unwrap()
}
