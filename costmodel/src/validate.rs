//! Validation against measurements: the truth-file format and the predicted-vs-measured report.
//!
//! A truth file holds one JSON object per line (blank lines are skipped):
//! ```json
//! {"name": "llama-350m b4 s1024", "model": "llama:layers=24,hidden=1024,heads=16,kv_heads=16,ffn=2816,vocab=32000",
//!  "cluster": {"gpu": "h100", "devices": 1}, "batch": 4, "seq": 1024,
//!  "precision": "amp-bf16", "optimizer": "adamw",
//!  "config": {"dp": 1, "tp": 1, "pp": 1, "micro_batch_size": 4, "num_micro_batches": 1, "recompute": "none"},
//!  "measured": {"step_time_s": 0.08846, "tokens_per_s": 46301.2, "peak_memory_bytes": 12834357248},
//!  "source": "shared/data/h100_training_truth_llama-350m.json"}
//! ```
//! `model` is a path (relative to the truth file) or a model spec; `config` takes the fields of
//! [`ParallelConfig`]; `measured` may hold any of `step_time_s`, `tokens_per_s`, `peak_memory_bytes`
//! and `tflops_per_gpu` (which needs `flops_per_step`, the FLOPs the publication counts per step).
//! `cluster` may add `network_bytes_per_s` where the source states the run's network per GPU
//! (otherwise the GPU kind's default network link).

use crate::cluster::Cluster;
use crate::config::ParallelConfig;
use crate::device::Gpu;
use crate::error::{CostError, Result};
use crate::estimate::{CostModel, Estimate};
use moai_ir::cost::StepProfile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The cluster of a truth row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthCluster {
    /// GPU kind (`h100`, `a100`, `mi250`, ...).
    pub gpu: String,
    /// Devices.
    pub devices: u32,
    /// Network bandwidth per device and direction, bytes/s, where the source states the run's
    /// network (e.g. 400 Gb/s RDMA per GPU = 50e9); otherwise the GPU kind's default network link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_bytes_per_s: Option<f64>,
}

/// What was measured (or published).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Seconds per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time_s: Option<f64>,
    /// Tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Peak allocated bytes per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<f64>,
    /// Achieved TFLOP/s per GPU as the source counts FLOPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops_per_gpu: Option<f64>,
    /// FLOPs per step as the source counts them (needed with `tflops_per_gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_per_step: Option<f64>,
}

fn default_precision() -> String {
    "amp-bf16".into()
}
fn default_optimizer() -> String {
    "adamw".into()
}

/// One line of a truth file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthRow {
    /// Short label for the report.
    pub name: String,
    /// Model path or spec.
    pub model: String,
    /// Cluster.
    pub cluster: TruthCluster,
    /// Global batch (samples per step).
    pub batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Precision policy name (`amp-bf16`, `bf16`, `fp32`).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Optimizer name (`adamw`, `sgd`).
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Parallel configuration of the measured run.
    pub config: ParallelConfig,
    /// Measurements.
    pub measured: Measured,
    /// Where the measurement comes from.
    pub source: String,
    /// Attention implementation of the measured run: `flash` (fused, the kernel family its stack
    /// runs: the default), `flash2` (the `flash-attn` package's FlashAttention-2 where the stack
    /// would run a faster kernel: Transformer Engine on Hopper with its cuDNN attention switched
    /// off, `NVTE_FUSED_ATTN=0`; [`crate::Stack::attention_kernel`]), `triton` (LLM Foundry's Triton port of the first FlashAttention, which its
    /// 2023 benchmark tables ran; A100 and Hopper rows only: [`crate::ops::triton_flash_throughput`])
    /// or `unfused` (score matrix materialised: batched
    /// GEMMs, softmax and dropout kernels, as Megatron-LM ran before FlashAttention); see
    /// [`crate::ops::unfuse_attention`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
    /// Attention dropout probability of the measured run, when it is not zero (Megatron-LM's
    /// `--attention-dropout`, default 0.1 before Megatron-Core's Llama recipes set 0): the fused
    /// attention kernels then draw and apply a dropout mask in-kernel and run slower
    /// ([`crate::ops::apply_attention_dropout`]). Materialised (`unfused`) attention already carries
    /// its dropout kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_dropout: Option<f64>,
    /// Loss kernel of the measured run, when its model code does not compute the loss the way the
    /// training graph does (PyTorch's cross-entropy over an fp32 upcast, the default): `fused`
    /// (flash-attn's fused cross-entropy over the bf16 logits, LLM Foundry's default `loss_fn`); see
    /// [`crate::ops::fuse_cross_entropy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// Forward-only cross-entropies over the logits the run's trainer computed per micro-batch for
    /// its training metrics (LLM Foundry under Composer: 2, its `LanguageCrossEntropy` and
    /// `LanguagePerplexity`); see [`crate::ops::add_metric_cross_entropies`]. At most 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_cross_entropies: Option<u32>,
    /// The measured run used something the cost model does not model (e.g. Float8 linears and
    /// `torch.compile` in torchtitan's context-parallel table): its row is validated (predicted and
    /// reported) but never fitted on, neither by the committed joint fit nor by a cross-validation fold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validation_only: bool,
}

impl TruthRow {
    /// The training options the row's run used: its precision policy and optimizer, its
    /// recomputation, and bf16 weight copies where its stack computes on them
    /// ([`crate::Stack::computes_on_weight_copies`]).
    pub fn train_options(&self) -> Result<moai_ir::train::TrainOptions> {
        let bad = |what: &str, e: moai_ir::IrError| {
            CostError::StepProfile(format!("{}: {what}: {e}", self.name))
        };
        Ok(self.config.stack.train_options(
            self.precision.parse().map_err(|e| bad("precision", e))?,
            self.optimizer.parse().map_err(|e| bad("optimizer", e))?,
            // The same type: `Recompute` re-exports `RecomputePolicy`.
            self.config.recompute,
        ))
    }

    /// The row's step profile from `profile_for`, with its attention, loss and metric kernels as the
    /// row says they ran (`attention`, `attention_dropout`, `loss`, `metric_cross_entropies`).
    pub fn step_profile(
        &self,
        profile_for: &dyn Fn(&TruthRow) -> Result<StepProfile>,
    ) -> Result<StepProfile> {
        let mut p = profile_for(self)?;
        let dropout = self.attention_dropout.unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(CostError::StepProfile(format!(
                "{}: attention_dropout {dropout} outside [0, 1)",
                self.name
            )));
        }
        // Fused kernels (FlashAttention-class) run the dropout in-kernel; unfused attention already
        // carries its dropout kernels.
        let fused = match self.attention.as_deref() {
            None | Some("flash") => true,
            Some("triton") => {
                let gpu = self.cluster.gpu.parse::<Gpu>()?;
                let Some(speed) = crate::ops::triton_flash_throughput(gpu) else {
                    return Err(CostError::StepProfile(format!(
                        "{}: attention `triton` is costed on {} only (its speed is published for A100 and carried to Hopper, whose code path is the same)",
                        self.name,
                        Gpu::names_in_words(&crate::ops::TRITON_FLASH_GPUS)
                    )));
                };
                crate::ops::scale_attention_throughput(&mut p, speed);
                true
            }
            Some("flash2") => {
                // The flash-attn package's FlashAttention-2 where the stack would run a faster
                // kernel (Transformer Engine with cuDNN attention switched off).
                let gpu = self.cluster.gpu.parse::<Gpu>()?;
                let over_fa2 = self
                    .config
                    .stack
                    .attention_kernel(gpu)
                    .throughput_over_fa2();
                crate::ops::scale_attention_throughput(&mut p, (1.0 / over_fa2, 1.0 / over_fa2));
                true
            }
            Some("unfused") => {
                crate::ops::unfuse_attention(&mut p);
                false
            }
            Some(other) => {
                return Err(CostError::StepProfile(format!(
                    "{}: attention `{other}` (expected flash, flash2, triton or unfused)",
                    self.name
                )));
            }
        };
        if fused && dropout > 0.0 {
            crate::ops::apply_attention_dropout(&mut p);
        }
        match self.loss.as_deref() {
            None | Some("torch") => {}
            Some("fused") => {
                if !crate::ops::fuse_cross_entropy(&mut p) {
                    return Err(CostError::StepProfile(format!(
                        "{}: loss `fused`: the model's profile has no fp32 cross-entropy over LM-head logits to fuse",
                        self.name
                    )));
                }
            }
            Some(other) => {
                return Err(CostError::StepProfile(format!(
                    "{}: loss `{other}` (expected torch or fused)",
                    self.name
                )));
            }
        }
        match self.metric_cross_entropies {
            None | Some(0) => {}
            Some(n @ 1..=8) => {
                if !crate::ops::add_metric_cross_entropies(&mut p, n) {
                    return Err(CostError::StepProfile(format!(
                        "{}: metric_cross_entropies {n}: the model's profile has no LM head",
                        self.name
                    )));
                }
            }
            Some(n) => {
                return Err(CostError::StepProfile(format!(
                    "{}: metric_cross_entropies {n} (at most 8)",
                    self.name
                )));
            }
        }
        Ok(p)
    }
}

impl TruthRow {
    /// The row's cluster: default links, with the network bandwidth the row states, if any.
    pub fn cluster(&self) -> Result<Cluster> {
        let gpu: Gpu = self.cluster.gpu.parse()?;
        let mut c = Cluster::new(gpu, self.cluster.devices)?;
        if let Some(bw) = self.cluster.network_bytes_per_s {
            let lim = &crate::cluster::CLUSTER_FILE_LIMITS;
            if !(bw >= lim.min_bytes_per_s && bw <= lim.max_bytes_per_s) {
                return Err(CostError::InvalidCluster(format!(
                    "{}: `cluster.network_bytes_per_s` {bw} is out of range ({:e} to {:e} bytes/s)",
                    self.name, lim.min_bytes_per_s, lim.max_bytes_per_s
                )));
            }
            c.links.network.bytes_per_s = bw;
        }
        Ok(c)
    }

    /// The measured step time, directly or derived from throughput or TFLOP/s.
    pub fn measured_step_time(&self) -> Option<f64> {
        let m = &self.measured;
        m.step_time_s
            .or_else(|| m.tokens_per_s.map(|t| (self.batch * self.seq) as f64 / t))
            .or_else(|| {
                Some(m.flops_per_step? / (m.tflops_per_gpu? * 1e12 * self.cluster.devices as f64))
            })
    }
}

/// Parses a truth file's text; `origin` names it in errors.
pub fn parse_truth(text: &str, origin: &str) -> Result<Vec<TruthRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: TruthRow = serde_json::from_str(line).map_err(|e| CostError::Truth {
            path: origin.to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        let err = |reason: String| CostError::Truth {
            path: origin.to_string(),
            line: i + 1,
            reason,
        };
        row.cluster().map_err(|e| err(e.to_string()))?;
        if row.measured.tflops_per_gpu.is_some() && row.measured.flops_per_step.is_none() {
            return Err(err(
                "measured.tflops_per_gpu needs measured.flops_per_step".into()
            ));
        }
        if row.measured_step_time().is_none() && row.measured.peak_memory_bytes.is_none() {
            return Err(err("measured holds nothing to compare with".into()));
        }
        if row.config.global_batch() != row.batch {
            return Err(err(format!(
                "config gives a batch of dp·micro_batch_size·num_micro_batches = {}, the row says {}",
                row.config.global_batch(),
                row.batch
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Reads a truth file.
pub fn read_truth(path: &std::path::Path) -> Result<Vec<TruthRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| CostError::Truth {
        path: path.display().to_string(),
        line: 0,
        reason: e.to_string(),
    })?;
    parse_truth(&text, &path.display().to_string())
}

/// One compared quantity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    /// `step_time_s`, `tokens_per_s`, `peak_memory_bytes` or `tflops_per_gpu`.
    pub metric: String,
    /// Predicted value.
    pub predicted: f64,
    /// Measured value.
    pub measured: f64,
    /// `100 · (predicted − measured) / measured`.
    pub error_pct: f64,
}

/// The comparison of one row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowReport {
    /// Row label.
    pub name: String,
    /// Compared quantities.
    pub checks: Vec<MetricCheck>,
    /// The estimate, if one was made.
    pub estimate: Option<Estimate>,
    /// Why the row could not be estimated.
    pub error: Option<String>,
}

/// Predicted vs measured over a truth file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Per row.
    pub rows: Vec<RowReport>,
    /// Mean absolute percentage error per metric.
    pub mape: BTreeMap<String, f64>,
}

/// The predicted value of each measured metric of a row.
pub fn compare(row: &TruthRow, est: &Estimate) -> Vec<MetricCheck> {
    let m = &row.measured;
    let mut out = Vec::new();
    let mut push = |metric: &str, predicted: f64, measured: Option<f64>| {
        if let Some(measured) = measured {
            out.push(MetricCheck {
                metric: metric.into(),
                predicted,
                measured,
                error_pct: 100.0 * (predicted - measured) / measured,
            });
        }
    };
    push("step_time_s", est.step_time_s, m.step_time_s);
    push("tokens_per_s", est.tokens_per_s, m.tokens_per_s);
    push(
        "peak_memory_bytes",
        est.peak_memory_bytes as f64,
        m.peak_memory_bytes,
    );
    if let (Some(f), Some(t)) = (m.flops_per_step, m.tflops_per_gpu) {
        push(
            "tflops_per_gpu",
            f / est.step_time_s / row.cluster.devices as f64 / 1e12,
            Some(t),
        );
    }
    out
}

/// Estimates every row (with the step profile `profile_for` builds for it) and compares with the
/// measurements. Rows that cannot be estimated are reported with their error and left out of the
/// means.
pub fn validate(
    rows: &[TruthRow],
    profile_for: &dyn Fn(&TruthRow) -> Result<StepProfile>,
    model: &dyn CostModel,
) -> ValidationReport {
    let mut report = ValidationReport::default();
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for row in rows {
        let result = row.cluster().and_then(|c| {
            let p = row.step_profile(profile_for)?;
            model.estimate(&p, &c, &row.config)
        });
        match result {
            Ok(est) => {
                let checks = compare(row, &est);
                for c in &checks {
                    let e = sums.entry(c.metric.clone()).or_default();
                    e.0 += c.error_pct.abs();
                    e.1 += 1;
                }
                report.rows.push(RowReport {
                    name: row.name.clone(),
                    checks,
                    estimate: Some(est),
                    error: None,
                });
            }
            Err(e) => report.rows.push(RowReport {
                name: row.name.clone(),
                checks: vec![],
                estimate: None,
                error: Some(e.to_string()),
            }),
        }
    }
    report.mape = sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect();
    report
}

/// One row of a (cross-)validation: predicted and measured values by metric name
/// (`step_time_s`, `tokens_per_s`, `peak_memory_bytes`, `tflops_per_gpu`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvRow {
    /// Row label.
    pub name: String,
    /// The row's model (leave-one-model-out holds these out together).
    pub model: String,
    /// The truth file it came from.
    pub file: String,
    /// Predicted values of the measured metrics.
    pub predicted: BTreeMap<String, f64>,
    /// Measured values (step time derived from throughput or TFLOP/s where not given).
    pub measured: BTreeMap<String, f64>,
    /// Why the row could not be estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Mean absolute percentage errors of one set of rows: `step_time`, `peak_memory`, `tflops`
/// (absent when no row measures it).
pub type Mape = BTreeMap<String, f64>;

/// Errors of one truth file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileMape {
    /// The file.
    pub file: String,
    /// Rows estimated.
    pub rows: usize,
    /// Its MAPEs.
    pub mape: Mape,
}

/// The output of `moai-compile validate` over truth files: rows, MAPEs overall and per file, and
/// whether every prediction came from coefficients fitted without the row's model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    /// Per row.
    pub rows: Vec<CvRow>,
    /// Over every row.
    pub mape: Mape,
    /// True: leave one model out (each row predicted by coefficients fitted on the other models'
    /// rows); false: in-sample (the committed coefficients, fitted on every row).
    pub cross_validated: bool,
    /// Per truth file.
    pub files: Vec<FileMape>,
}

/// The model a truth row's `model` field names, for leave-one-model-out: a spec's `seq=` option is
/// dropped (the same architecture at another sequence length is the same model); paths stay as given.
pub fn model_key(model: &str) -> String {
    match model.split_once(':') {
        Some((family, opts)) if !model.contains('/') => {
            let kept: Vec<&str> = opts
                .split(',')
                .filter(|o| !o.trim().starts_with("seq="))
                .collect();
            format!("{family}:{}", kept.join(","))
        }
        _ => model.to_string(),
    }
}

const METRICS: [(&str, &str); 3] = [
    ("step_time", "step_time_s"),
    ("peak_memory", "peak_memory_bytes"),
    ("tflops", "tflops_per_gpu"),
];

fn cv_row(file: &str, row: &TruthRow, est: Result<Estimate>) -> CvRow {
    let mut out = CvRow {
        name: row.name.clone(),
        model: model_key(&row.model),
        file: file.to_string(),
        predicted: BTreeMap::new(),
        measured: BTreeMap::new(),
        error: None,
    };
    let est = match est {
        Ok(e) => e,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if let Some(t) = row.measured_step_time() {
        out.measured.insert("step_time_s".into(), t);
        out.predicted.insert("step_time_s".into(), est.step_time_s);
    }
    for c in compare(row, &est) {
        if c.metric != "step_time_s" {
            out.measured.insert(c.metric.clone(), c.measured);
            out.predicted.insert(c.metric, c.predicted);
        }
    }
    out
}

fn mape_of<'a>(rows: impl Iterator<Item = &'a CvRow>) -> Mape {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in rows {
        for (name, key) in METRICS {
            if let (Some(p), Some(m)) = (r.predicted.get(key), r.measured.get(key)) {
                let e = sums.entry(name.to_string()).or_default();
                e.0 += 100.0 * ((p - m) / m).abs();
                e.1 += 1;
            }
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// Validates truth rows (`(file, row)` pairs) with the time coefficients of `base` (in-sample), or,
/// with `cross`, leaving one model out: for each model, the coefficients are refitted
/// ([`crate::fit::refit`]) on every other model's rows and predict this model's rows. Rows whose
/// profile or estimate fails are reported with their error and left out of the fits and means.
pub fn cross_validate(
    rows: &[(String, TruthRow)],
    profile_for: &dyn Fn(&TruthRow) -> Result<StepProfile>,
    base: &crate::efficiency::EfficiencyFile,
    cross: bool,
) -> Result<CrossValidation> {
    use crate::estimate::ProfiledCostModel;
    use crate::fit::FitSample;
    let mut samples: Vec<Option<FitSample>> = Vec::with_capacity(rows.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(rows.len());
    for (_, row) in rows {
        match row
            .cluster()
            .and_then(|c| Ok((c, row.step_profile(profile_for)?)))
        {
            Ok((cluster, profile)) => {
                samples.push(Some(FitSample {
                    name: row.name.clone(),
                    model: model_key(&row.model),
                    profile,
                    cluster,
                    config: row.config.clone(),
                    step_time_s: row.measured_step_time(),
                    peak_memory_bytes: row.measured.peak_memory_bytes,
                }));
                errors.push(None);
            }
            Err(e) => {
                samples.push(None);
                errors.push(Some(e.to_string()));
            }
        }
    }
    let prep_model = ProfiledCostModel::with_efficiencies(base.clone());
    let preps: Vec<Option<std::sync::Arc<crate::estimate::PreparedProfile>>> = samples
        .iter()
        .map(|s| {
            s.as_ref().map(|s| {
                std::sync::Arc::new(prep_model.prepare_for(&s.profile, s.cluster.gpu, &s.config))
            })
        })
        .collect();
    let mut out: Vec<Option<CvRow>> = vec![None; rows.len()];
    let predict = |model: &ProfiledCostModel, i: usize| -> CvRow {
        let (file, row) = &rows[i];
        let est = match (&samples[i], &preps[i]) {
            (Some(s), Some(p)) => model.estimate_prepared(p, &s.profile, &s.cluster, &s.config),
            _ => Err(crate::error::CostError::StepProfile(
                errors[i].clone().unwrap_or_default(),
            )),
        };
        cv_row(file, row, est)
    };
    if cross {
        let keys: Vec<String> = rows.iter().map(|(_, r)| model_key(&r.model)).collect();
        let mut models = keys.clone();
        models.sort();
        models.dedup();
        // Folds are independent: each refits on its own rows, so they run in parallel and the
        // result does not depend on the thread count.
        use rayon::prelude::*;
        let folds = models
            .par_iter()
            .map(|held| -> Result<Vec<(usize, CvRow)>> {
                let train: Vec<usize> = (0..rows.len())
                    .filter(|i| {
                        keys[*i] != *held && samples[*i].is_some() && !rows[*i].1.validation_only
                    })
                    .collect();
                let ts: Vec<FitSample> = train.iter().filter_map(|i| samples[*i].clone()).collect();
                let tp: Vec<_> = train.iter().filter_map(|i| preps[*i].clone()).collect();
                let file = crate::fit::refit_prepared(base, &ts, &tp)?;
                let model = ProfiledCostModel::with_efficiencies(file);
                Ok((0..rows.len())
                    .filter(|i| keys[*i] == *held)
                    .map(|i| (i, predict(&model, i)))
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, row) in folds.into_iter().flatten() {
            out[i] = Some(row);
        }
    } else {
        let model = ProfiledCostModel::with_efficiencies(base.clone());
        for (i, o) in out.iter_mut().enumerate() {
            *o = Some(predict(&model, i));
        }
    }
    let rows_out: Vec<CvRow> = out.into_iter().flatten().collect();
    let ok = || rows_out.iter().filter(|r| r.error.is_none());
    let mut files: Vec<String> = rows_out.iter().map(|r| r.file.clone()).collect();
    files.dedup();
    let mut seen = Vec::new();
    files.retain(|f| {
        let new = !seen.contains(f);
        seen.push(f.clone());
        new
    });
    let files = files
        .into_iter()
        .map(|f| FileMape {
            rows: ok().filter(|r| r.file == f).count(),
            mape: mape_of(ok().filter(|r| r.file == f)),
            file: f,
        })
        .collect();
    Ok(CrossValidation {
        mape: mape_of(ok()),
        rows: rows_out,
        cross_validated: cross,
        files,
    })
}

impl fmt::Display for CrossValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = if self.cross_validated {
            "cross-validated (leave one model out)"
        } else {
            "in-sample (committed coefficients, fitted on every row)"
        };
        writeln!(f, "{label}")?;
        writeln!(
            f,
            "{:<40} {:<18} {:>14} {:>14} {:>8}",
            "row", "metric", "predicted", "measured", "error"
        )?;
        for r in &self.rows {
            if let Some(e) = &r.error {
                writeln!(f, "{:<40} error: {e}", r.name)?;
            }
            for (k, m) in &r.measured {
                let Some(p) = r.predicted.get(k) else {
                    continue;
                };
                writeln!(
                    f,
                    "{:<40} {:<18} {:>14} {:>14} {:>+7.1}%",
                    r.name,
                    k,
                    show(k, *p),
                    show(k, *m),
                    100.0 * (p - m) / m
                )?;
            }
        }
        for fm in &self.files {
            let parts: Vec<String> = fm
                .mape
                .iter()
                .map(|(k, v)| format!("{k} {v:.1}%"))
                .collect();
            writeln!(
                f,
                "MAPE {} ({} rows): {}",
                fm.file,
                fm.rows,
                parts.join(", ")
            )?;
        }
        let parts: Vec<String> = self
            .mape
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}%"))
            .collect();
        writeln!(f, "MAPE all: {}", parts.join(", "))
    }
}

fn show(metric: &str, v: f64) -> String {
    match metric {
        "peak_memory_bytes" => format!("{:.2} GiB", v / (1u64 << 30) as f64),
        "step_time_s" => format!("{:.4} s", v),
        "tokens_per_s" => format!("{:.0}", v),
        _ => format!("{v:.1}"),
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:<18} {:>14} {:>14} {:>8}",
            "row", "metric", "predicted", "measured", "error"
        )?;
        for r in &self.rows {
            if let Some(e) = &r.error {
                writeln!(f, "{:<34} error: {e}", r.name)?;
            }
            for c in &r.checks {
                writeln!(
                    f,
                    "{:<34} {:<18} {:>14} {:>14} {:>+7.1}%",
                    r.name,
                    c.metric,
                    show(&c.metric, c.predicted),
                    show(&c.metric, c.measured),
                    c.error_pct
                )?;
            }
        }
        for (k, v) in &self.mape {
            writeln!(f, "MAPE {k}: {v:.1}%")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"name":"r","model":"llama:layers=2,hidden=64,heads=4,vocab=100","cluster":{"gpu":"h100","devices":1},"batch":4,"seq":16,"config":{"micro_batch_size":4},"measured":{"step_time_s":0.1},"source":"t"}"#;

    #[test]
    fn a_rows_training_options_follow_its_stack() {
        let with = |config: &str, precision: &str| -> Result<moai_ir::train::TrainOptions> {
            let row: TruthRow =
                serde_json::from_str(&ROW.replace(r#""micro_batch_size":4"#, config).replace(
                    r#""batch":4"#,
                    &format!(r#""batch":4,"precision":"{precision}""#),
                ))
                .unwrap();
            row.train_options()
        };
        // Every engine computes on bf16 weight copies; eager autocast does not.
        for (stack, copies) in [
            ("megatron", true),
            ("deepspeed", true),
            ("fsdp", true),
            ("torchtitan", true),
            ("eager", false),
        ] {
            let o = with(
                &format!(r#""micro_batch_size":4,"recompute":"full","stack":"{stack}""#),
                "amp-bf16",
            )
            .unwrap();
            assert_eq!(o.bf16_weight_copies, copies, "{stack}");
            assert_eq!(o.reads_weight_copies(), copies, "{stack}");
            assert_eq!(o.recompute, crate::config::Recompute::Full);
        }
        // Other precisions ignore the switch; a bad one names the row in one line.
        let o = with(r#""micro_batch_size":4,"stack":"fsdp""#, "bf16").unwrap();
        assert!(!o.reads_weight_copies());
        let e = with(r#""micro_batch_size":4"#, "fp16")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r: precision") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_row_may_state_its_network() {
        let row: TruthRow = serde_json::from_str(&ROW.replace(
            r#""devices":1}"#,
            r#""devices":16,"network_bytes_per_s":50e9}"#,
        ))
        .unwrap();
        assert_eq!(row.cluster().unwrap().links.network.bytes_per_s, 50e9);
        let plain: TruthRow = serde_json::from_str(ROW).unwrap();
        assert_eq!(plain.cluster().unwrap().links.network.bytes_per_s, 25e9);
        let bad: TruthRow = serde_json::from_str(&ROW.replace(
            r#""devices":1}"#,
            r#""devices":16,"network_bytes_per_s":0}"#,
        ))
        .unwrap();
        let e = bad.cluster().unwrap_err().to_string();
        assert!(e.contains("network_bytes_per_s"), "{e}");
    }

    #[test]
    fn parses_and_names_the_line() {
        let rows = parse_truth(&format!("{ROW}\n\n{ROW}\n"), "t.jsonl").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].measured_step_time(), Some(0.1));
        let e = parse_truth(&format!("{ROW}\n{{\"name\": 1}}\n"), "t.jsonl").unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:2: "), "{e}");
        let bad_gpu = ROW.replace("h100", "v100");
        assert!(
            parse_truth(&bad_gpu, "t.jsonl")
                .unwrap_err()
                .to_string()
                .contains("unknown GPU kind `v100`")
        );
        let bad_batch = ROW.replace("\"batch\":4", "\"batch\":8");
        assert!(
            parse_truth(&bad_batch, "t.jsonl")
                .unwrap_err()
                .to_string()
                .contains("the row says 8")
        );
    }

    #[test]
    fn model_key_drops_the_sequence() {
        assert_eq!(
            model_key("gpt:layers=2,hidden=64,heads=4,vocab=100,seq=2048"),
            "gpt:layers=2,hidden=64,heads=4,vocab=100"
        );
        assert_eq!(model_key("../models/x.onnx"), "../models/x.onnx");
    }

    #[test]
    fn tflops_needs_flops() {
        let r = ROW.replace(r#"{"step_time_s":0.1}"#, r#"{"tflops_per_gpu":100}"#);
        assert!(
            parse_truth(&r, "t")
                .unwrap_err()
                .to_string()
                .contains("flops_per_step")
        );
        let r = ROW.replace(
            r#"{"step_time_s":0.1}"#,
            r#"{"tflops_per_gpu":100,"flops_per_step":1e13}"#,
        );
        let rows = parse_truth(&r, "t").unwrap();
        assert!((rows[0].measured_step_time().unwrap() - 0.1).abs() < 1e-12);
    }
}
