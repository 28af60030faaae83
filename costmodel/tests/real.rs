//! Validation with the real training graph: models built from specs by `moai_models::from_spec`, step
//! profiles from `moai_ir::train::step_profile` (the product path `moai-compile validate` uses).

use crate::support::truth;
use moai_costmodel::fit::FitSample;
use moai_costmodel::validate::TruthRow;
use moai_costmodel::{CostError, Result};
use moai_ir::cost::StepProfile;
use moai_ir::train::step_profile;

/// The training graph's step profile of a truth row.
pub fn real_profile(row: &TruthRow) -> Result<StepProfile> {
    let graph =
        moai_models::from_spec(&row.model).map_err(|e| CostError::StepProfile(e.to_string()))?;
    let opts = row.train_options()?;
    step_profile(&graph, &opts, row.config.micro_batch_size as u64, row.seq)
        .map_err(|e| CostError::StepProfile(e.to_string()))
}

/// Every shipped truth file, as `truth/NAME.jsonl`, sorted.
pub fn truth_files() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(crate::support::data("truth"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".jsonl").then(|| format!("truth/{name}"))
        })
        .collect();
    out.sort();
    out
}

/// Every shipped truth row with its file.
pub fn all_rows() -> Vec<(String, TruthRow)> {
    truth_files()
        .into_iter()
        .flat_map(|f| truth(&f).into_iter().map(move |r| (f.clone(), r)))
        .collect()
}

/// The rows of a truth file the committed joint fit is fitted on (every row not marked
/// `validation_only`), as fit samples.
pub fn fit_samples(rel: &str) -> Vec<FitSample> {
    let names: Vec<String> = truth(rel)
        .into_iter()
        .filter(|r| r.validation_only)
        .map(|r| r.name)
        .collect();
    real_samples(rel)
        .into_iter()
        .filter(|s| !names.contains(&s.name))
        .collect()
}

/// Fit samples with real profiles, each row's attention as the row records it
/// ([`TruthRow::step_profile`]: `"attention": "unfused"` rows get the materialised-score kernels, as
/// `validate` and `cross_validate` cost them).
pub fn real_samples(rel: &str) -> Vec<FitSample> {
    truth(rel)
        .iter()
        .map(|r| FitSample {
            name: r.name.clone(),
            model: moai_costmodel::validate::model_key(&r.model),
            profile: r.step_profile(&real_profile).unwrap(),
            cluster: r.cluster().unwrap(),
            config: r.config.clone(),
            step_time_s: r.measured_step_time(),
            peak_memory_bytes: r.measured.peak_memory_bytes,
        })
        .collect()
}
