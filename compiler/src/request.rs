//! What a user asks the planner: the job (batch, sequence, precision, optimizer) and constraints on the
//! search.

use crate::error::{PlanError, Result};
use moai_costmodel::{Recompute, Schedule};
use moai_ir::train::{OptimizerKind, PrecisionPolicy};
use std::time::Duration;

/// Constraints that fix or restrict dimensions of the search (every field optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constraints {
    /// Fixed data-parallel degree.
    pub dp: Option<u32>,
    /// Fixed tensor-parallel degree.
    pub tp: Option<u32>,
    /// Fixed pipeline-parallel degree.
    pub pp: Option<u32>,
    /// Fixed micro-batch size.
    pub micro_batch_size: Option<u32>,
    /// Allowed recomputation policies (empty: all).
    pub recompute: Vec<Recompute>,
    /// Fixed ZeRO stage (0, 1 or 3).
    pub zero: Option<u8>,
    /// Fixed sequence parallelism.
    pub sequence_parallel: Option<bool>,
    /// Allowed schedules (empty: gpipe, 1f1b and interleaved:2).
    pub schedules: Vec<Schedule>,
    /// The engine (`--engine`): only configurations it runs are searched, and they are costed for it.
    /// `None`: each candidate goes to the first engine that runs it (Megatron-LM, DeepSpeed, FSDP).
    pub engine: Option<moai_costmodel::Stack>,
}

impl Constraints {
    /// Parses a comma list of recomputation policies (`none,full`).
    pub fn parse_recompute_list(s: &str) -> Result<Vec<Recompute>> {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<Recompute>()
                    .map_err(|e| PlanError::InvalidArgument(format!("--recompute: {e}")))
            })
            .collect()
    }

    /// Parses a comma list of schedules (`1f1b,interleaved:2`).
    pub fn parse_schedule_list(s: &str) -> Result<Vec<Schedule>> {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<Schedule>()
                    .map_err(|e| PlanError::InvalidArgument(format!("--schedule: {e}")))
            })
            .collect()
    }

    /// Checks the ZeRO stage.
    pub fn check_zero(z: u8) -> Result<u8> {
        match z {
            0 | 1 | 3 => Ok(z),
            _ => Err(PlanError::InvalidArgument(format!(
                "--zero {z}: expected 0 (none), 1 (optimizer state sharded) or 3 (parameters, gradients and optimizer state sharded)"
            ))),
        }
    }
}

/// A planning request.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Global batch in sequences.
    pub batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Precision policy.
    pub precision: PrecisionPolicy,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Search constraints.
    pub constraints: Constraints,
    /// Stop evaluating after this long and return the best plan so far.
    pub time_budget: Option<Duration>,
    /// Worker threads (None: all cores).
    pub threads: Option<usize>,
    /// Fraction of device memory a plan may use (the rest is headroom for the allocator and runtime).
    pub memory_fraction: f64,
}

impl PlanRequest {
    /// A request with defaults: amp-bf16, AdamW, no constraints, 95% of device memory usable.
    pub fn new(batch: u64, seq: u64) -> PlanRequest {
        PlanRequest {
            batch,
            seq,
            precision: "amp-bf16".parse().expect("amp-bf16 is a precision policy"),
            optimizer: "adamw".parse().expect("adamw is an optimizer"),
            constraints: Constraints::default(),
            time_budget: None,
            threads: None,
            memory_fraction: 0.95,
        }
    }

    /// Checks the job's own numbers.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(PlanError::InvalidArgument(
                "--batch-size 0: the global batch must be at least 1".into(),
            ));
        }
        if self.seq == 0 {
            return Err(PlanError::InvalidArgument(
                "--seq-len 0: the sequence length must be at least 1".into(),
            ));
        }
        if let Some(t) = self.time_budget {
            if t.is_zero() {
                return Err(PlanError::InvalidArgument(
                    "--time-budget must be positive".into(),
                ));
            }
        }
        if self.threads == Some(0) {
            return Err(PlanError::InvalidArgument(
                "--threads 0: need at least one thread".into(),
            ));
        }
        Ok(())
    }
}
