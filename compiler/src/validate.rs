//! `validate`: predictions against measurements in JSON-lines truth files, with models loaded from the
//! row's path (relative to its truth file) or spec; in-sample or cross-validated (leave one model
//! out, see [`moai_costmodel::validate::cross_validate`]).

use crate::error::{PlanError, Result};
use crate::model::Model;
use moai_costmodel::CostError;
use moai_costmodel::validate::{CrossValidation, TruthRow, cross_validate, read_truth};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Reads truth files and compares every row with the cost model's prediction: with the committed
/// coefficients (in-sample), or with `cross` leaving each model out of the fit that predicts it.
pub fn validate_files(paths: &[std::path::PathBuf], cross: bool) -> Result<CrossValidation> {
    let mut rows: Vec<(String, TruthRow)> = Vec::new();
    let mut bases: Vec<std::path::PathBuf> = Vec::new();
    for path in paths {
        let file_rows = read_truth(path)?;
        if file_rows.is_empty() {
            return Err(PlanError::InvalidArgument(format!(
                "{}: no truth rows",
                path.display()
            )));
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for r in file_rows {
            rows.push((path.display().to_string(), r));
            bases.push(base.clone());
        }
    }
    let profiles = ProfileLoader::default();
    // The cost model calls back with references into `rows`: find each row's file by address, once.
    let index: HashMap<usize, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, r))| (r as *const TruthRow as usize, i))
        .collect();
    let profile_for = |row: &TruthRow| {
        let i = index
            .get(&(row as *const TruthRow as usize))
            .copied()
            .unwrap_or(0);
        profiles.profile(row, &bases[i])
    };
    Ok(cross_validate(
        &rows,
        &profile_for,
        moai_costmodel::efficiency::committed(),
        cross,
    )?)
}

/// Loads each row's model once and builds its step profile.
#[derive(Default)]
struct ProfileLoader {
    models: Mutex<HashMap<String, std::sync::Arc<Model>>>,
}

impl ProfileLoader {
    fn profile(
        &self,
        row: &TruthRow,
        base: &Path,
    ) -> std::result::Result<moai_ir::cost::StepProfile, CostError> {
        let key = base.join(&row.model).display().to_string();
        let cached = self.models.lock().expect("model cache").get(&key).cloned();
        let model = match cached {
            Some(m) => m,
            None => {
                let local = base.join(&row.model);
                let src = if local.exists() {
                    local.display().to_string()
                } else {
                    row.model.clone()
                };
                let m = std::sync::Arc::new(
                    Model::load(&src).map_err(|e| CostError::StepProfile(e.to_string()))?,
                );
                self.models
                    .lock()
                    .expect("model cache")
                    .insert(key, m.clone());
                m
            }
        };
        moai_ir::train::step_profile(
            &model.graph,
            &row.train_options()?,
            row.config.micro_batch_size as u64,
            row.seq,
        )
        .map_err(|e| CostError::StepProfile(format!("{}: {e}", row.name)))
    }
}
