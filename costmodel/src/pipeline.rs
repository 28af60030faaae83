//! Pipeline schedule simulation: GPipe, 1F1B and Megatron's interleaved 1F1B as an event simulation
//! over per-(virtual-)stage forward and backward times with a point-to-point latency between stages.
//!
//! Every device runs its tasks in the schedule's order; a task starts when the device is free and its
//! input has arrived (the previous stage's forward, or the next stage's backward, plus the transfer).

use crate::config::Schedule;
use crate::error::{CostError, Result};
use serde::{Deserialize, Serialize};

/// Forward and backward time of one micro-batch on one (virtual) stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Forward seconds.
    pub forward_s: f64,
    /// Backward seconds (with recomputation).
    pub backward_s: f64,
}

/// Outcome of a simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineResult {
    /// Time from the first forward to the last backward.
    pub makespan_s: f64,
    /// Busy seconds of each device.
    pub busy_s: Vec<f64>,
    /// Time each device finishes its last task.
    pub end_s: Vec<f64>,
    /// The device with the most busy time.
    pub critical_device: usize,
    /// `makespan − busy` of the critical device: idle time in the bubble and waiting for transfers.
    pub bubble_s: f64,
}

#[derive(Clone, Copy)]
struct Task {
    forward: bool,
    vstage: usize,
    mb: usize,
}

fn device_order(schedule: Schedule, pp: usize, d: usize, m: usize) -> Vec<Task> {
    let v = schedule.chunks() as usize;
    let total = m * v;
    let map = |k: usize, forward: bool| {
        let group = (k / pp) % v;
        let chunk = if forward { group } else { v - 1 - group };
        let mb = (k / (pp * v)) * pp + k % pp;
        Task {
            forward,
            vstage: chunk * pp + d,
            mb,
        }
    };
    let mut out = Vec::with_capacity(2 * total);
    match schedule {
        Schedule::Gpipe => {
            out.extend((0..m).map(|j| Task {
                forward: true,
                vstage: d,
                mb: j,
            }));
            out.extend((0..m).map(|j| Task {
                forward: false,
                vstage: d,
                mb: j,
            }));
        }
        Schedule::OneFOneB | Schedule::Interleaved(_) => {
            let warm = if v == 1 {
                (pp - d - 1).min(m)
            } else {
                ((pp - d - 1) * 2 + (v - 1) * pp).min(total)
            };
            out.extend((0..warm).map(|k| map(k, true)));
            for i in 0..total - warm {
                out.push(map(warm + i, true));
                out.push(map(i, false));
            }
            out.extend((total - warm..total).map(|k| map(k, false)));
        }
    }
    out
}

/// Simulates one step of `micro_batches` micro-batches over `pp` devices. `stages` holds `pp · V`
/// virtual stages (virtual stage `c·pp + d` is chunk `c` on device `d`); `p2p_s` is the transfer
/// time between consecutive stages.
pub fn simulate(
    schedule: Schedule,
    stages: &[StageTimes],
    pp: u32,
    micro_batches: u32,
    p2p_s: f64,
) -> Result<PipelineResult> {
    let pp_us = pp.max(1) as usize;
    let v = schedule.chunks() as usize;
    let m = micro_batches as usize;
    if stages.len() != pp_us * v {
        return Err(CostError::InvalidConfig(format!(
            "pipeline simulation needs pp·chunks = {} stage times, got {}",
            pp_us * v,
            stages.len()
        )));
    }
    if m == 0 {
        return Err(CostError::InvalidConfig(
            "num_micro_batches must be at least 1".into(),
        ));
    }
    if pp_us == 1 && v == 1 {
        let busy = m as f64 * (stages[0].forward_s + stages[0].backward_s);
        return Ok(PipelineResult {
            makespan_s: busy,
            busy_s: vec![busy],
            end_s: vec![busy],
            critical_device: 0,
            bubble_s: 0.0,
        });
    }
    let nv = stages.len();
    let orders: Vec<Vec<Task>> = (0..pp_us)
        .map(|d| device_order(schedule, pp_us, d, m))
        .collect();
    let mut fend = vec![f64::NAN; nv * m];
    let mut bend = vec![f64::NAN; nv * m];
    let mut next = vec![0usize; pp_us];
    let mut free = vec![0f64; pp_us];
    let mut busy = vec![0f64; pp_us];
    let mut remaining: usize = orders.iter().map(Vec::len).sum();
    while remaining > 0 {
        let mut progressed = false;
        for d in 0..pp_us {
            while let Some(t) = orders[d].get(next[d]) {
                let ready = if t.forward {
                    if t.vstage == 0 {
                        Some(0.0)
                    } else {
                        Some(fend[(t.vstage - 1) * m + t.mb] + p2p_s)
                    }
                } else if t.vstage + 1 == nv {
                    Some(fend[t.vstage * m + t.mb])
                } else {
                    Some(bend[(t.vstage + 1) * m + t.mb] + p2p_s)
                };
                let Some(ready) = ready.filter(|r| !r.is_nan()) else {
                    break;
                };
                let dur = if t.forward {
                    stages[t.vstage].forward_s
                } else {
                    stages[t.vstage].backward_s
                };
                let end = free[d].max(ready) + dur;
                free[d] = end;
                busy[d] += dur;
                if t.forward {
                    fend[t.vstage * m + t.mb] = end;
                } else {
                    bend[t.vstage * m + t.mb] = end;
                }
                next[d] += 1;
                remaining -= 1;
                progressed = true;
            }
        }
        if !progressed {
            return Err(CostError::InvalidConfig(format!(
                "schedule {schedule} deadlocks with pp {pp} and {m} micro-batches"
            )));
        }
    }
    let makespan = free.iter().cloned().fold(0.0, f64::max);
    let critical = (0..pp_us)
        .max_by(|a, b| busy[*a].total_cmp(&busy[*b]))
        .unwrap_or(0);
    Ok(PipelineResult {
        makespan_s: makespan,
        bubble_s: makespan - busy[critical],
        busy_s: busy,
        end_s: free,
        critical_device: critical,
    })
}

/// One task of a simulated step: a forward or backward pass of one micro-batch on one virtual stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Pipeline device that ran the task.
    pub device: usize,
    /// Virtual stage (`chunk·pp + device`).
    pub vstage: usize,
    /// Micro-batch index.
    pub micro_batch: usize,
    /// Forward (`true`) or backward pass.
    pub forward: bool,
    /// Start time in seconds from the step's start.
    pub start_s: f64,
    /// End time in seconds.
    pub end_s: f64,
}

/// Like [`simulate`], but returns every task with its start and end time (for timeline charts).
/// Without pipelining the micro-batches run forward then backward on device 0, one after another.
pub fn timeline(
    schedule: Schedule,
    stages: &[StageTimes],
    pp: u32,
    micro_batches: u32,
    p2p_s: f64,
) -> Result<Vec<TaskEvent>> {
    let pp_us = pp.max(1) as usize;
    let v = schedule.chunks() as usize;
    let m = micro_batches as usize;
    if stages.len() != pp_us * v {
        return Err(CostError::InvalidConfig(format!(
            "pipeline timeline needs pp·chunks = {} stage times, got {}",
            pp_us * v,
            stages.len()
        )));
    }
    if m == 0 {
        return Err(CostError::InvalidConfig(
            "num_micro_batches must be at least 1".into(),
        ));
    }
    let nv = stages.len();
    let orders: Vec<Vec<Task>> = if pp_us == 1 && v == 1 {
        vec![
            (0..m)
                .flat_map(|mb| {
                    [
                        Task {
                            forward: true,
                            vstage: 0,
                            mb,
                        },
                        Task {
                            forward: false,
                            vstage: 0,
                            mb,
                        },
                    ]
                })
                .collect(),
        ]
    } else {
        (0..pp_us)
            .map(|d| device_order(schedule, pp_us, d, m))
            .collect()
    };
    let mut fend = vec![f64::NAN; nv * m];
    let mut bend = vec![f64::NAN; nv * m];
    let mut next = vec![0usize; pp_us];
    let mut free = vec![0f64; pp_us];
    let mut events = Vec::new();
    let mut remaining: usize = orders.iter().map(Vec::len).sum();
    while remaining > 0 {
        let mut progressed = false;
        for d in 0..pp_us {
            while let Some(t) = orders[d].get(next[d]) {
                let ready = if t.forward {
                    if t.vstage == 0 {
                        0.0
                    } else {
                        fend[(t.vstage - 1) * m + t.mb] + p2p_s
                    }
                } else if t.vstage + 1 == nv {
                    fend[t.vstage * m + t.mb]
                } else {
                    bend[(t.vstage + 1) * m + t.mb] + p2p_s
                };
                if ready.is_nan() {
                    break;
                }
                let dur = if t.forward {
                    stages[t.vstage].forward_s
                } else {
                    stages[t.vstage].backward_s
                };
                let start = free[d].max(ready);
                let end = start + dur;
                free[d] = end;
                if t.forward {
                    fend[t.vstage * m + t.mb] = end;
                } else {
                    bend[t.vstage * m + t.mb] = end;
                }
                events.push(TaskEvent {
                    device: d,
                    vstage: t.vstage,
                    micro_batch: t.mb,
                    forward: t.forward,
                    start_s: start,
                    end_s: end,
                });
                next[d] += 1;
                remaining -= 1;
                progressed = true;
            }
        }
        if !progressed {
            return Err(CostError::InvalidConfig(format!(
                "schedule {schedule} deadlocks with pp {pp} and {m} micro-batches"
            )));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(n: usize) -> Vec<StageTimes> {
        vec![
            StageTimes {
                forward_s: 1.0,
                backward_s: 2.0
            };
            n
        ]
    }

    #[test]
    fn one_f_one_b_bubble() {
        let r = simulate(Schedule::OneFOneB, &equal(4), 4, 8, 0.0).unwrap();
        assert!((r.makespan_s - (8.0 + 3.0) * 3.0).abs() < 1e-9, "{r:?}");
        assert!((r.bubble_s / r.makespan_s - 3.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn gpipe_same_makespan_as_1f1b_for_equal_stages() {
        let g = simulate(Schedule::Gpipe, &equal(4), 4, 8, 0.0).unwrap();
        assert!((g.makespan_s - 33.0).abs() < 1e-9, "{g:?}");
    }

    #[test]
    fn interleaving_shrinks_the_bubble() {
        let chunk = vec![
            StageTimes {
                forward_s: 0.5,
                backward_s: 1.0
            };
            8
        ];
        let i = simulate(Schedule::Interleaved(2), &chunk, 4, 8, 0.0).unwrap();
        let p = simulate(Schedule::OneFOneB, &equal(4), 4, 8, 0.0).unwrap();
        assert!(
            i.makespan_s < p.makespan_s,
            "{} {}",
            i.makespan_s,
            p.makespan_s
        );
        // Megatron: bubble (pp-1)/V of a micro-batch's F+B.
        assert!((i.bubble_s - 3.0 * 3.0 / 2.0).abs() < 1e-9, "{i:?}");
    }

    #[test]
    fn p2p_latency_adds_to_the_bubble() {
        let a = simulate(Schedule::OneFOneB, &equal(2), 2, 4, 0.0).unwrap();
        let b = simulate(Schedule::OneFOneB, &equal(2), 2, 4, 0.1).unwrap();
        assert!(b.makespan_s > a.makespan_s);
    }

    #[test]
    fn timeline_matches_simulate() {
        for (s, st, pp) in [
            (Schedule::OneFOneB, equal(4), 4),
            (Schedule::Gpipe, equal(4), 4),
            (Schedule::OneFOneB, equal(1), 1),
        ] {
            let r = simulate(s, &st, pp, 8, 0.05).unwrap();
            let ev = timeline(s, &st, pp, 8, 0.05).unwrap();
            assert_eq!(ev.len(), 2 * 8 * st.len());
            let end = ev.iter().map(|e| e.end_s).fold(0.0, f64::max);
            assert!((end - r.makespan_s).abs() < 1e-9, "{end} {}", r.makespan_s);
        }
    }

    #[test]
    fn wrong_stage_count_is_an_error() {
        assert!(simulate(Schedule::OneFOneB, &equal(3), 4, 8, 0.0).is_err());
    }
}
