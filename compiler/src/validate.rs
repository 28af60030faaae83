//! `validate`: predictions against measurements in a JSON-lines truth file, with models loaded from the
//! row's path (relative to the truth file) or spec.

use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::request::PlanRequest;
use crate::search::train_options;
use moai_costmodel::validate::{ValidationReport, read_truth, validate};
use moai_costmodel::{CostError, ProfiledCostModel};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Reads a truth file and compares every row with the default cost model's prediction.
pub fn validate_file(path: &Path) -> Result<ValidationReport> {
    let rows = read_truth(path)?;
    if rows.is_empty() {
        return Err(PlanError::InvalidArgument(format!(
            "{}: no truth rows",
            path.display()
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let models: Mutex<HashMap<String, std::sync::Arc<Model>>> = Mutex::new(HashMap::new());
    let load = |spec: &str| -> std::result::Result<std::sync::Arc<Model>, CostError> {
        if let Some(m) = models.lock().expect("model cache").get(spec) {
            return Ok(m.clone());
        }
        let local = base.join(spec);
        let src = if local.exists() {
            local.display().to_string()
        } else {
            spec.to_string()
        };
        let m = std::sync::Arc::new(
            Model::load(&src).map_err(|e| CostError::StepProfile(e.to_string()))?,
        );
        models
            .lock()
            .expect("model cache")
            .insert(spec.to_string(), m.clone());
        Ok(m)
    };
    let profile_for = |row: &moai_costmodel::TruthRow| {
        let model = load(&row.model)?;
        let mut req = PlanRequest::new(row.batch, row.seq);
        req.precision = row
            .precision
            .parse()
            .map_err(|e| CostError::StepProfile(format!("{}: precision: {e}", row.name)))?;
        req.optimizer = row
            .optimizer
            .parse()
            .map_err(|e| CostError::StepProfile(format!("{}: optimizer: {e}", row.name)))?;
        moai_ir::train::step_profile(
            &model.graph,
            &train_options(&req, row.config.recompute),
            row.config.micro_batch_size as u64,
            row.seq,
        )
        .map_err(|e| CostError::StepProfile(format!("{}: {e}", row.name)))
    };
    Ok(validate(&rows, &profile_for, &ProfiledCostModel::new()))
}
