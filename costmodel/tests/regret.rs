//! Planner regret on the shared H100 measurements (issue 11): for each model, sequence and global
//! batch, the configuration the cost model would choose among the measured ones (micro-batch and
//! recompute, one H100, eager stack) is within 3% of the best measured one.
//!
//! The measured runs have no gradient accumulation, so a global batch `G` run with micro-batch `b`
//! takes `G/b` measured steps of `b` (the measured side repeats the optimizer step `G/b` times, a
//! slight penalty on small micro-batches). The cost model estimates the configuration the planner
//! would actually run: micro-batch `b`, `G/b` accumulated micro-batches, and it must fit the
//! device's memory by the cost model's own peak.

use crate::real::real_samples;
use moai_costmodel::fit::FitSample;
use moai_costmodel::{CostModel, ParallelConfig, ProfiledCostModel};

/// One candidate: the measured row and its cost for the global batch.
struct Candidate<'a> {
    row: &'a FitSample,
    predicted_s: f64,
    measured_s: f64,
    fits: bool,
}

#[test]
fn planner_regret_on_h100_measurements_within_3_percent() {
    let model = ProfiledCostModel::new();
    let mut worst: f64 = 0.0;
    let mut report = Vec::new();
    for file in ["truth/h100_llama350m.jsonl", "truth/h100_llama1b.jsonl"] {
        let rows = real_samples(file);
        let mut groups: Vec<(u64, u64)> = rows
            .iter()
            .map(|r| (r.profile.seq, r.config.global_batch()))
            .collect();
        groups.sort();
        groups.dedup();
        for (seq, batch) in groups {
            let cands: Vec<Candidate> = rows
                .iter()
                .filter(|r| {
                    r.profile.seq == seq
                        && r.config.num_micro_batches == 1
                        && batch.is_multiple_of(r.config.micro_batch_size as u64)
                        && r.config.micro_batch_size as u64 <= batch
                })
                .map(|r| {
                    let m = (batch / r.config.micro_batch_size as u64) as u32;
                    let cfg = ParallelConfig {
                        num_micro_batches: m,
                        ..r.config.clone()
                    };
                    let e = model.estimate(&r.profile, &r.cluster, &cfg).unwrap();
                    Candidate {
                        row: r,
                        predicted_s: e.step_time_s,
                        measured_s: m as f64 * r.step_time_s.unwrap(),
                        fits: (e.peak_memory_bytes as f64)
                            <= r.cluster.memory_per_device_bytes as f64,
                    }
                })
                .collect();
            let best = cands
                .iter()
                .map(|c| c.measured_s)
                .fold(f64::INFINITY, f64::min);
            let chosen = cands
                .iter()
                .filter(|c| c.fits)
                .min_by(|a, b| a.predicted_s.total_cmp(&b.predicted_s))
                .expect("some measured configuration fits");
            let regret = chosen.measured_s / best - 1.0;
            worst = worst.max(regret);
            let line = format!(
                "{file} seq {seq} batch {batch}: {} candidates, chose {} (predicted {:.4} s, measured {:.4} s), best measured {:.4} s, regret {:.1}%",
                cands.len(),
                chosen.row.name,
                chosen.predicted_s,
                chosen.measured_s,
                best,
                100.0 * regret
            );
            eprintln!("{line}");
            report.push(line);
        }
    }
    eprintln!("worst regret {:.1}%", 100.0 * worst);
    assert!(
        worst <= 0.03,
        "planner regret {:.1}% > 3%:\n{}",
        100.0 * worst,
        report.join("\n")
    );
}
