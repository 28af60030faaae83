//! Pipeline schedule simulation: GPipe, 1F1B, Megatron's interleaved 1F1B and the zero-bubble schedules
//! ZB-H1 and ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024) as an event simulation
//! over per-(virtual-)stage forward and backward times with a point-to-point latency between stages.
//!
//! Every device runs its tasks in the schedule's order; a task starts when the device is free and its
//! input has arrived (the previous stage's forward, or the next stage's input gradient, plus the
//! transfer when the two stages are on different devices). The zero-bubble schedules split a backward
//! into an input-gradient pass B (what the previous stage waits for) and a weight-gradient pass W
//! (the weight-gradient GEMMs of the stage, see [`weight_grad_ops`]), and defer W passes into what
//! would otherwise be bubble. The optimizer-step synchronisation of the paper (its post-validation
//! that replaces the all-reduce before the step) is not modelled: the step starts after the last W.

use crate::config::Schedule;
use crate::error::{CostError, Result};
use moai_ir::cost::{BlockProfile, KernelClass, Phase, TpSplit};
use serde::{Deserialize, Serialize};

/// Forward and backward time of one micro-batch on one (virtual) stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Forward seconds.
    pub forward_s: f64,
    /// Backward seconds (with recomputation): input and weight gradients together.
    pub backward_s: f64,
    /// Of `backward_s`, the seconds of the weight-gradient pass W (weight-gradient GEMMs and the
    /// embedding's table gradient), which the zero-bubble schedules run apart from the input-gradient
    /// pass B; 0 when unknown.
    #[serde(default)]
    pub weight_grad_s: f64,
}

impl StageTimes {
    /// Times with no separate weight-gradient part.
    pub fn new(forward_s: f64, backward_s: f64) -> StageTimes {
        StageTimes {
            forward_s,
            backward_s,
            weight_grad_s: 0.0,
        }
    }

    /// Seconds of the weight-gradient pass W, within `[0, backward_s]`.
    pub fn w_s(&self) -> f64 {
        self.weight_grad_s.clamp(0.0, self.backward_s.max(0.0))
    }

    /// Seconds of the input-gradient pass B: the backward without its W part.
    pub fn b_s(&self) -> f64 {
        (self.backward_s - self.w_s()).max(0.0)
    }
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

/// What a task computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// Forward pass.
    #[default]
    Forward,
    /// Whole backward: input and weight gradients (every schedule but the zero-bubble ones, and the
    /// first stage of ZB-H1).
    Backward,
    /// Input-gradient pass B of a zero-bubble schedule.
    InputGrad,
    /// Weight-gradient pass W of a zero-bubble schedule.
    WeightGrad,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Task {
    pass: Pass,
    vstage: usize,
    mb: usize,
}

fn task(pass: Pass, vstage: usize, mb: usize) -> Task {
    Task { pass, vstage, mb }
}

/// ZB-H1 on device `d`: 1F1B's warm-up, then `d` steps of F and B whose W passes are deferred, then
/// F-B-W steps, the cool-down's B-W steps, and the deferred W passes last. The first stage runs whole
/// backwards (nothing waits for its input gradient). At most `pp` micro-batches are in flight, as in
/// 1F1B's first stage.
fn zb_h1_order(pp: usize, d: usize, m: usize) -> Vec<Task> {
    let mut out = Vec::with_capacity(3 * m);
    let (mut f, mut b, mut w) = (0, 0, 0);
    let back = |out: &mut Vec<Task>, b: &mut usize, w: &mut usize| {
        if d == 0 {
            out.push(task(Pass::Backward, d, *b));
            *w += 1;
        } else {
            out.push(task(Pass::InputGrad, d, *b));
            out.push(task(Pass::WeightGrad, d, *w));
            *w += 1;
        }
        *b += 1;
    };
    for _ in 0..(pp - d - 1).min(m) {
        out.push(task(Pass::Forward, d, f));
        f += 1;
    }
    for _ in 0..d {
        if f == m {
            break;
        }
        out.push(task(Pass::Forward, d, f));
        out.push(task(Pass::InputGrad, d, b));
        f += 1;
        b += 1;
    }
    while f < m {
        out.push(task(Pass::Forward, d, f));
        f += 1;
        back(&mut out, &mut b, &mut w);
    }
    while b < m {
        back(&mut out, &mut b, &mut w);
    }
    while w < m {
        out.push(task(Pass::WeightGrad, d, w));
        w += 1;
    }
    out
}

/// ZB-V on device `r`: chunk 0 is virtual stage `r`, chunk 1 is `2·pp − 1 − r` (the V). Warm-up
/// forwards of chunk 0, then alternating chunk-1/chunk-0 forwards, then chunk-1 F-B-W steps; the
/// steady state runs F-B-W on chunk 0 and on chunk 1 in turn; the cool-down runs the remaining B
/// passes with W passes filling the gaps. Follows the paper's handcrafted schedule (section 6) as
/// PyTorch's `ScheduleZBVZeroBubble` lays it out; with fewer than `2·pp − 1` micro-batches the
/// schedule for `2·pp − 1` is laid out and the missing micro-batches dropped.
fn zbv_order(pp: usize, r: usize, m: usize) -> Vec<Task> {
    let n = m.max(2 * pp - 1);
    let (c0, c1) = (r, 2 * pp - 1 - r);
    let mut out = Vec::with_capacity(6 * n);
    let (mut f0, mut f1, mut b0, mut b1) = (0, 0, 0, 0);
    for _ in 0..2 * (pp - r) - 1 {
        out.push(task(Pass::Forward, c0, f0));
        f0 += 1;
    }
    for _ in 0..r {
        out.push(task(Pass::Forward, c1, f1));
        out.push(task(Pass::Forward, c0, f0));
        f1 += 1;
        f0 += 1;
    }
    for _ in 0..pp - r {
        out.push(task(Pass::Forward, c1, f1));
        out.push(task(Pass::InputGrad, c1, b1));
        out.push(task(Pass::WeightGrad, c1, b1));
        f1 += 1;
        b1 += 1;
    }
    while f1 < f0 || f0 < n {
        if f0 < n {
            out.push(task(Pass::Forward, c0, f0));
            f0 += 1;
        }
        out.push(task(Pass::InputGrad, c0, b0));
        out.push(task(Pass::WeightGrad, c0, b0));
        b0 += 1;
        out.push(task(Pass::Forward, c1, f1));
        out.push(task(Pass::InputGrad, c1, b1));
        out.push(task(Pass::WeightGrad, c1, b1));
        f1 += 1;
        b1 += 1;
    }
    let (mut w0, mut w1) = (b0, b1);
    for _ in 0..r {
        out.push(task(Pass::InputGrad, c0, b0));
        out.push(task(Pass::InputGrad, c1, b1));
        b0 += 1;
        b1 += 1;
    }
    for _ in 0..pp - r {
        out.push(task(Pass::InputGrad, c0, b0));
        out.push(task(Pass::WeightGrad, c0, w0));
        b0 += 1;
        w0 += 1;
    }
    while w1 < b1 {
        out.push(task(Pass::WeightGrad, c1, w1));
        w1 += 1;
    }
    while w0 < b0 {
        out.push(task(Pass::WeightGrad, c0, w0));
        w0 += 1;
    }
    out.retain(|t| t.mb < m);
    out
}

fn device_order(schedule: Schedule, pp: usize, d: usize, m: usize) -> Vec<Task> {
    if pp <= 1 && schedule.chunks() <= 1 {
        // No pipelining: forward then backward, micro-batch by micro-batch.
        return (0..m)
            .flat_map(|mb| [task(Pass::Forward, 0, mb), task(Pass::Backward, 0, mb)])
            .collect();
    }
    let v = schedule.chunks() as usize;
    let total = m * v;
    let map = |k: usize, forward: bool| {
        let chunk = megatron_chunk(k, pp, v, forward);
        let mb = (k / (pp * v)) * pp + k % pp;
        task(
            if forward {
                Pass::Forward
            } else {
                Pass::Backward
            },
            chunk * pp + d,
            mb,
        )
    };
    let mut out = Vec::with_capacity(2 * total);
    match schedule {
        Schedule::Gpipe => {
            out.extend((0..m).map(|j| task(Pass::Forward, d, j)));
            out.extend((0..m).map(|j| task(Pass::Backward, d, j)));
        }
        Schedule::OneFOneB | Schedule::Interleaved(_) => {
            let warm = megatron_warmup(pp, d, v, total);
            out.extend((0..warm).map(|k| map(k, true)));
            for i in 0..total - warm {
                out.push(map(warm + i, true));
                out.push(map(i, false));
            }
            out.extend((total - warm..total).map(|k| map(k, false)));
        }
        Schedule::ZeroBubbleH1 => out = zb_h1_order(pp, d, m),
        Schedule::ZeroBubbleV => out = zbv_order(pp, d, m),
    }
    out
}

/// Megatron-Core's model chunk of a device's `k`-th forward (or backward) under `chunks` chunks per
/// device (`get_model_chunk_id`): groups of `pp` micro-batches per chunk, forwards from the first
/// chunk, backwards from the last.
fn megatron_chunk(k: usize, pp: usize, chunks: usize, forward: bool) -> usize {
    let group = (k / pp) % chunks;
    if forward { group } else { chunks - 1 - group }
}

/// Warm-up forwards of device `d` before its first backward in Megatron's 1F1B (`chunks` 1) and
/// interleaved schedules, at most `total` (the device's forwards).
pub(crate) fn megatron_warmup(pp: usize, d: usize, chunks: usize, total: usize) -> usize {
    if chunks == 1 {
        (pp - d - 1).min(total)
    } else {
        ((pp - d - 1) * 2 + (chunks - 1) * pp).min(total)
    }
}

/// The order in which device `device` runs its passes under `schedule`: (pass, virtual stage in layer
/// order, micro-batch) triples, what the simulation replays. An exporter can write it as PyTorch
/// pipelining's per-rank action list (`_Action` strings `{stage}{F|B|I|W}{micro-batch}`, B a whole
/// backward, I an input-gradient pass), which torchtitan loads with `pipeline_parallel_schedule_csv`.
pub fn device_tasks(
    schedule: Schedule,
    pp: u32,
    device: u32,
    micro_batches: u32,
) -> Vec<(Pass, usize, usize)> {
    let pp = pp.max(1) as usize;
    device_order(
        schedule,
        pp,
        (device as usize).min(pp - 1),
        micro_batches.max(1) as usize,
    )
    .into_iter()
    .map(|t| (t.pass, t.vstage, t.mb))
    .collect()
}

/// The most chunk-micro-batches whose activations device `device` holds at once under `schedule`
/// (forwards run minus backwards or W passes run, the largest over its task order): what
/// [`crate::memory::in_flight`] states in closed form. O(micro-batches); for tests and small counts.
pub fn peak_in_flight(schedule: Schedule, pp: u32, device: u32, micro_batches: u32) -> u32 {
    let pp = pp.max(1) as usize;
    let order = device_order(
        schedule,
        pp,
        (device as usize).min(pp - 1),
        micro_batches.max(1) as usize,
    );
    let (mut live, mut peak) = (0i64, 0i64);
    for t in order {
        match t.pass {
            Pass::Forward => live += 1,
            Pass::Backward | Pass::WeightGrad => live -= 1,
            Pass::InputGrad => {}
        }
        peak = peak.max(live);
    }
    peak.max(0) as u32
}

/// The largest activation bytes device `device` holds at once under `schedule`: over its task order,
/// the most of `Σ live(v) · bytes_of(v)` over its virtual stages `v`, where `live(v)` counts the
/// micro-batches of stage `v` forwarded and not yet released (by a whole backward or a W pass). Used
/// for zbv, whose two chunks hold very different numbers of micro-batches (the first chunk up to
/// `2·pp − 1`, the last stage's chunk on device 0 about one).
pub fn peak_live_bytes(
    schedule: Schedule,
    pp: u32,
    device: u32,
    micro_batches: u32,
    bytes_of: &dyn Fn(usize) -> f64,
) -> f64 {
    let pp = pp.max(1) as usize;
    let order = device_order(
        schedule,
        pp,
        (device as usize).min(pp - 1),
        micro_batches.max(1) as usize,
    );
    let (mut live, mut peak) = (0.0f64, 0.0f64);
    for t in order {
        match t.pass {
            Pass::Forward => live += bytes_of(t.vstage),
            Pass::Backward | Pass::WeightGrad => live -= bytes_of(t.vstage),
            Pass::InputGrad => {}
        }
        peak = peak.max(live);
    }
    peak
}

/// [`peak_live_bytes`] for Megatron's interleaved schedule with `chunks` model chunks per device,
/// without building the order: device `d`'s virtual stages are `c·pp + d`, forward `k` runs chunk
/// `(k / pp) mod chunks` and backward `k` chunk `chunks − 1 − (k / pp) mod chunks` (Megatron-Core's
/// `get_model_chunk_id`); warm-up forwards then (forward, backward) pairs, whose live bytes repeat
/// with period `pp·chunks` (every window of that many forwards or backwards covers each chunk `pp`
/// times), so one period bounds the peak. O(chunks + pp·chunks), no allocation. With equal chunks it
/// is [`crate::memory::in_flight`] chunk-micro-batches; with unequal ones (the LM head on the last
/// device's last chunk, the embedding on the first device's first) each chunk counts only the
/// micro-batches it holds at the peak: the last chunk of the last device holds one.
pub fn interleaved_peak_live_bytes(
    pp: u32,
    device: u32,
    micro_batches: u32,
    chunks: u32,
    bytes_of: &dyn Fn(usize) -> f64,
) -> f64 {
    let (pp, v) = (pp.max(1) as usize, chunks.max(1) as usize);
    let d = (device as usize).min(pp - 1);
    let total = micro_batches.max(1) as usize * v;
    let period = pp * v;
    let size = |c: usize| bytes_of(c * pp + d);
    let fwd = |k: usize| size(megatron_chunk(k, pp, v, true));
    let bwd = |k: usize| size(megatron_chunk(k, pp, v, false));
    let warm = megatron_warmup(pp, d, v, total);
    // Forwards 0..n: each full period holds every chunk pp times, the remainder the first groups.
    let forwarded = |n: usize| -> f64 {
        (0..v)
            .map(|c| {
                let extra = (n % period).saturating_sub(c * pp).min(pp);
                size(c) * ((n / period) * pp + extra) as f64
            })
            .sum()
    };
    if warm == total {
        return forwarded(total);
    }
    // After the first steady forward; then each pair adds forward warm + j + 1, frees backward j.
    let mut live = forwarded(warm + 1);
    let mut peak = live;
    for j in 0..(total - warm - 1).min(period) {
        live += fwd(warm + j + 1) - bwd(j);
        peak = peak.max(live);
    }
    peak
}

/// Marks the weight-gradient ops of a block: each weight-stationary forward matmul's `dW = xᵀ · dy`
/// (a backward matmul of the same layer scope whose output has the weight's shape and whose
/// contraction runs over the forward's rows), and the embedding's table gradient (a backward gather).
/// Everything else of the backward (input-gradient GEMMs, attention backward, norms, recomputation)
/// is the input-gradient pass. One entry per op of `block.ops`.
pub fn weight_grad_ops(block: &BlockProfile) -> Vec<bool> {
    let scope = |label: &str| label.rsplit_once(':').map_or(label, |(s, _)| s).to_string();
    // (scope, rows, out features, in features, used)
    let mut partners: Vec<(String, u64, u64, u64, bool)> = block
        .ops
        .iter()
        .filter(|o| o.phase == Phase::Forward)
        .filter_map(|o| match o.class {
            KernelClass::Matmul { batch, m, n, k, .. }
                if o.label.ends_with(":Linear")
                    || matches!(o.split, TpSplit::Column | TpSplit::Row | TpSplit::Vocab) =>
            {
                Some((scope(&o.label), batch.saturating_mul(m), n, k, false))
            }
            _ => None,
        })
        .collect();
    block
        .ops
        .iter()
        .map(|o| {
            if o.phase != Phase::Backward {
                return false;
            }
            match o.class {
                KernelClass::Gather => true,
                KernelClass::Matmul {
                    batch: 1, m, n, k, ..
                } => {
                    let s = scope(&o.label);
                    match partners
                        .iter_mut()
                        .find(|p| !p.4 && p.0 == s && m == p.3 && n == p.2 && k == p.1)
                    {
                        Some(p) => {
                            p.4 = true;
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            }
        })
        .collect()
}

/// One task of a simulated step: a forward, backward, B or W pass of one micro-batch on one virtual
/// stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Pipeline device that ran the task.
    pub device: usize,
    /// Virtual stage (in layer order; on device [`Schedule::device_of`]).
    pub vstage: usize,
    /// Micro-batch index.
    pub micro_batch: usize,
    /// Forward (`true`) or a backward pass (whole, B or W: see `pass`).
    pub forward: bool,
    /// Which pass.
    #[serde(default)]
    pub pass: Pass,
    /// Start time in seconds from the step's start.
    pub start_s: f64,
    /// End time in seconds.
    pub end_s: f64,
}

/// The event simulation behind [`simulate`] and [`timeline`]; `events` collects every task when given.
fn run(
    schedule: Schedule,
    stages: &[StageTimes],
    pp: u32,
    micro_batches: u32,
    p2p_s: f64,
    mut events: Option<&mut Vec<TaskEvent>>,
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
    if schedule.is_zero_bubble() && pp_us < 2 {
        return Err(CostError::InvalidConfig(format!(
            "schedule {schedule} needs pp >= 2"
        )));
    }
    if pp_us == 1 && v == 1 && events.is_none() {
        // No pipelining: one device runs every micro-batch back to back (in closed form, so a
        // billion micro-batches cost nothing).
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
    let device_of = |vs: usize| schedule.device_of(vs, pp_us);
    let hop = |a: usize, b: usize| {
        if device_of(a) == device_of(b) {
            0.0
        } else {
            p2p_s
        }
    };
    let orders: Vec<Vec<Task>> = (0..pp_us)
        .map(|d| device_order(schedule, pp_us, d, m))
        .collect();
    // End of each (stage, micro-batch)'s forward, and the time its input gradient is ready.
    let mut fend = vec![f64::NAN; nv * m];
    let mut gend = vec![f64::NAN; nv * m];
    let mut next = vec![0usize; pp_us];
    let mut free = vec![0f64; pp_us];
    let mut busy = vec![0f64; pp_us];
    let mut remaining: usize = orders.iter().map(Vec::len).sum();
    while remaining > 0 {
        let mut progressed = false;
        for d in 0..pp_us {
            while let Some(t) = orders[d].get(next[d]) {
                let (vs, mb) = (t.vstage, t.mb);
                let ready = match t.pass {
                    Pass::Forward if vs == 0 => 0.0,
                    Pass::Forward => fend[(vs - 1) * m + mb] + hop(vs - 1, vs),
                    Pass::Backward | Pass::InputGrad if vs + 1 == nv => fend[vs * m + mb],
                    Pass::Backward | Pass::InputGrad => gend[(vs + 1) * m + mb] + hop(vs + 1, vs),
                    Pass::WeightGrad => gend[vs * m + mb],
                };
                if ready.is_nan() {
                    break;
                }
                let st = &stages[vs];
                let dur = match t.pass {
                    Pass::Forward => st.forward_s,
                    Pass::Backward => st.backward_s,
                    Pass::InputGrad => st.b_s(),
                    Pass::WeightGrad => st.w_s(),
                };
                let start = free[d].max(ready);
                let end = start + dur;
                free[d] = end;
                busy[d] += dur;
                match t.pass {
                    Pass::Forward => fend[vs * m + mb] = end,
                    Pass::Backward | Pass::InputGrad => gend[vs * m + mb] = end,
                    Pass::WeightGrad => {}
                }
                if let Some(ev) = events.as_deref_mut() {
                    ev.push(TaskEvent {
                        device: d,
                        vstage: vs,
                        micro_batch: mb,
                        forward: t.pass == Pass::Forward,
                        pass: t.pass,
                        start_s: start,
                        end_s: end,
                    });
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

/// Simulates one step of `micro_batches` micro-batches over `pp` devices. `stages` holds `pp · V`
/// virtual stages in layer order (virtual stage `v` runs on device [`Schedule::device_of`]: `v mod
/// pp` except for zbv's V shape); `p2p_s` is the transfer time between consecutive stages on
/// different devices.
pub fn simulate(
    schedule: Schedule,
    stages: &[StageTimes],
    pp: u32,
    micro_batches: u32,
    p2p_s: f64,
) -> Result<PipelineResult> {
    run(schedule, stages, pp, micro_batches, p2p_s, None)
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
    let mut events = Vec::new();
    run(
        schedule,
        stages,
        pp,
        micro_batches,
        p2p_s,
        Some(&mut events),
    )?;
    Ok(events)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn equal(n: usize) -> Vec<StageTimes> {
        vec![StageTimes::new(1.0, 2.0); n]
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
        let chunk = vec![StageTimes::new(0.5, 1.0); 8];
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
        assert!(simulate(Schedule::ZeroBubbleV, &equal(4), 4, 8, 0.0).is_err());
        assert!(simulate(Schedule::ZeroBubbleH1, &equal(1), 1, 8, 0.0).is_err());
    }

    /// F = B = W = 1 (a backward of 2 whose weight-gradient half is W).
    fn split(n: usize) -> Vec<StageTimes> {
        vec![
            StageTimes {
                forward_s: 1.0,
                backward_s: 2.0,
                weight_grad_s: 1.0,
            };
            n
        ]
    }

    #[test]
    fn zb_h1_bubble_is_a_third_of_1f1b() {
        // The paper: 1F1B's bubble is (p−1)(F+B+W), ZB-H1's (p−1)(F+B−W).
        for (p, m) in [(4usize, 8u32), (4, 16), (8, 24)] {
            let one = simulate(Schedule::OneFOneB, &split(p), p as u32, m, 0.0).unwrap();
            let zb = simulate(Schedule::ZeroBubbleH1, &split(p), p as u32, m, 0.0).unwrap();
            let pm1 = (p - 1) as f64;
            assert!((one.bubble_s - pm1 * 3.0).abs() < 1e-9, "{one:?}");
            assert!(
                (zb.bubble_s - pm1 * 1.0).abs() < 1e-9,
                "p {p} m {m}: {zb:?}"
            );
            assert!(zb.makespan_s < one.makespan_s);
        }
        // Without a W part, ZB-H1 is 1F1B.
        let a = simulate(Schedule::ZeroBubbleH1, &equal(4), 4, 8, 0.0).unwrap();
        let b = simulate(Schedule::OneFOneB, &equal(4), 4, 8, 0.0).unwrap();
        assert!((a.makespan_s - b.makespan_s).abs() < 1e-9, "{a:?} {b:?}");
    }

    #[test]
    fn zbv_beats_zb_h1_and_puts_both_ends_on_device_0() {
        let half: Vec<StageTimes> = vec![
            StageTimes {
                forward_s: 0.5,
                backward_s: 1.0,
                weight_grad_s: 0.5,
            };
            8
        ];
        let v = simulate(Schedule::ZeroBubbleV, &half, 4, 16, 0.0).unwrap();
        let h = simulate(Schedule::ZeroBubbleH1, &split(4), 4, 16, 0.0).unwrap();
        assert!(v.makespan_s < h.makespan_s, "{v:?} {h:?}");
        // The paper's ZB-V is bubble-free in its steady state when F = B = W: what is left is the
        // start-up of the last device, (p−1) half-size forwards, half of ZB-H1's (p−1)·W.
        assert!((v.bubble_s - 3.0 * 0.5).abs() < 1e-9, "{v:?} {h:?}");
        let ev = timeline(Schedule::ZeroBubbleV, &half, 4, 16, 0.0).unwrap();
        assert!(ev.iter().any(|e| e.vstage == 0 && e.device == 0));
        assert!(ev.iter().all(|e| e.vstage != 7 || e.device == 0));
        assert!(ev.iter().all(|e| e.vstage != 4 || e.device == 3));
    }

    #[test]
    fn zero_bubble_orders_run_every_pass_once_without_deadlock() {
        for s in [Schedule::ZeroBubbleH1, Schedule::ZeroBubbleV] {
            for p in 2..=6usize {
                for m in 1..=3 * p as u32 {
                    let st = vec![
                        StageTimes {
                            forward_s: 1.0,
                            backward_s: 2.5,
                            weight_grad_s: 1.0,
                        };
                        p * s.chunks() as usize
                    ];
                    let ev = timeline(s, &st, p as u32, m, 0.1)
                        .unwrap_or_else(|e| panic!("{s} p {p} m {m}: {e}"));
                    let r = simulate(s, &st, p as u32, m, 0.1).unwrap();
                    let end = ev.iter().map(|e| e.end_s).fold(0.0, f64::max);
                    assert!((end - r.makespan_s).abs() < 1e-9);
                    let busy: f64 = ev.iter().map(|e| e.end_s - e.start_s).sum();
                    let want = st.len() as f64 * m as f64 * 3.5;
                    assert!((busy - want).abs() < 1e-6, "{s} p {p} m {m}: {busy} {want}");
                    for e in &ev {
                        assert_eq!(e.device, s.device_of(e.vstage, p));
                    }
                }
            }
        }
    }

    #[test]
    fn device_tasks_are_the_zb_h1_order() {
        // Last of 4 stages, 6 micro-batches: no warm-up, 3 F-B steps with W deferred, then F-B-W,
        // then the 3 deferred W passes.
        let t = device_tasks(Schedule::ZeroBubbleH1, 4, 3, 6);
        let s: Vec<String> = t
            .iter()
            .map(|(p, v, mb)| {
                let k = match p {
                    Pass::Forward => "F",
                    Pass::Backward => "B",
                    Pass::InputGrad => "I",
                    Pass::WeightGrad => "W",
                };
                format!("{v}{k}{mb}")
            })
            .collect();
        assert_eq!(
            s.join(" "),
            "3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3W0 3F4 3I4 3W1 3F5 3I5 3W2 3W3 3W4 3W5"
        );
        // The first stage runs whole backwards.
        assert!(
            device_tasks(Schedule::ZeroBubbleH1, 4, 0, 6)
                .iter()
                .all(|(p, _, _)| matches!(p, Pass::Forward | Pass::Backward))
        );
    }

    #[test]
    fn interleaved_peak_matches_the_order() {
        // Unequal chunk sizes (a heavy last virtual stage, a light first one, the rest varied), every
        // device, micro-batch counts below, at and above pp, multiples of pp or not.
        for pp in [2u32, 3, 4, 8] {
            for v in [2u32, 3, 5] {
                let nv = (pp * v) as usize;
                let bytes = |s: usize| -> f64 {
                    if s == nv - 1 {
                        40.0
                    } else if s == 0 {
                        0.5
                    } else {
                        1.0 + (s % 3) as f64 * 0.25
                    }
                };
                for m in [1u32, 2, pp, pp + 1, 2 * pp, 3 * pp + 2, 16] {
                    for d in 0..pp {
                        let want = peak_live_bytes(Schedule::Interleaved(v), pp, d, m, &bytes);
                        let got = interleaved_peak_live_bytes(pp, d, m, v, &bytes);
                        assert!(
                            (want - got).abs() < 1e-9,
                            "pp {pp} v {v} m {m} d {d}: {got} vs order {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn in_flight_follows_the_orders() {
        // 1F1B holds pp − d; ZB-H1 at most pp on every device (1F1B's first-stage peak); ZB-V 2·pp
        // half-size chunks.
        assert_eq!(peak_in_flight(Schedule::OneFOneB, 4, 0, 16), 4);
        assert_eq!(peak_in_flight(Schedule::OneFOneB, 4, 3, 16), 1);
        for d in 0..4 {
            assert_eq!(peak_in_flight(Schedule::ZeroBubbleH1, 4, d, 16), 4);
            assert_eq!(peak_in_flight(Schedule::ZeroBubbleV, 4, d, 16), 8);
        }
    }

    #[test]
    fn weight_gradient_ops_are_the_dw_gemms_and_the_table_gradient() {
        use moai_ir::DType;
        use moai_ir::cost::{ActivationBytes, BlockKind, OpCost, Role};
        let mm = |phase, label: &str, split, batch, m, n, k| OpCost {
            class: KernelClass::Matmul {
                batch,
                m,
                n,
                k,
                dtype: DType::BF16,
            },
            flops: 2.0 * (batch * m * n * k) as f64,
            bytes: 0.0,
            phase,
            layer: Some(0),
            split,
            label: label.into(),
            role: Role::Plain,
        };
        // q_proj: 256 tokens (2 × 128) × 256 → 512.
        let ops = vec![
            mm(
                Phase::Forward,
                "l.q:Linear",
                TpSplit::Column,
                1,
                256,
                512,
                256,
            ),
            mm(
                Phase::Backward,
                "l.q:MatMul",
                TpSplit::Row,
                2,
                128,
                256,
                512,
            ),
            mm(
                Phase::Backward,
                "l.q:MatMul",
                TpSplit::Column,
                1,
                256,
                512,
                256,
            ),
            mm(
                Phase::Recompute,
                "l.q:Linear",
                TpSplit::Column,
                1,
                256,
                512,
                256,
            ),
            OpCost {
                class: KernelClass::Gather,
                flops: 0.0,
                bytes: 1.0,
                phase: Phase::Backward,
                layer: None,
                split: TpSplit::Vocab,
                label: "embed:EmbeddingBackward".into(),
                role: Role::Plain,
            },
        ];
        let b = BlockProfile {
            kind: BlockKind::Decoder(0),
            ops,
            params: 0,
            tp_sharded_params: 0,
            expert_params: 0,
            saved: ActivationBytes::default(),
            transient: ActivationBytes::default(),
            boundary_bytes: 0.0,
        };
        assert_eq!(weight_grad_ops(&b), vec![false, false, true, false, true]);
    }
}
