//! The `--emit report` artifact: one self-contained HTML page (inline SVG, no scripts, no network) with
//! the chosen plan's pipeline timeline, a scatter of every costed candidate, the per-stage memory
//! breakdown and the rejection reasons.

use crate::report::PlanReport;
use crate::request::PlanRequest;
use crate::search::Outcome;
use moai_costmodel::pipeline::{Pass, TaskEvent, timeline};
use moai_costmodel::{Cluster, Estimate, ParallelConfig};
use std::fmt::Write;

const GIB: f64 = (1u64 << 30) as f64;

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The pipeline timeline of a costed plan: the cost model's own pipeline simulation replayed task by task
/// from the per-virtual-stage forward/backward times and point-to-point latency it ran on.
pub fn plan_timeline(
    cfg: &ParallelConfig,
    est: &Estimate,
) -> moai_costmodel::Result<Vec<TaskEvent>> {
    timeline(
        cfg.schedule,
        &est.stage_times,
        cfg.pp,
        cfg.num_micro_batches,
        est.p2p_s,
    )
}

/// Renders the report page for a plan.
pub fn render(report: &PlanReport, cluster: &Cluster, req: &PlanRequest) -> String {
    let search = &report.search;
    let best = &search.evaluated[search.best];
    let cfg = &best.config;
    let est = best.estimate();
    let out = &report.output;
    let mut h = String::new();
    let title = format!("moai plan: {}", out.model.name);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
body{{font-family:sans-serif;margin:24px;color:#222}} h2{{margin-top:28px}} table{{border-collapse:collapse}} \
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}} .fig{{border:1px solid #ddd}}</style></head><body>\n",
        esc(&title)
    );
    let flavor = cluster.flavor.clone().unwrap_or_else(|| "custom".into());
    let _ = writeln!(
        h,
        "<h1>{}</h1>\n<p><b>{}</b> on {} ({} × {}), global batch {} × seq {}</p>",
        esc(&title),
        esc(&out.plan.summary_line()),
        esc(&flavor),
        cluster.devices,
        cluster.gpu,
        req.batch,
        req.seq
    );
    if let Some(e) = est {
        let _ = writeln!(
            h,
            "<p>Predicted: {:.0} tokens/s, step {:.3} s, peak {:.1} GiB, MFU {:.1}%. Compute {:.3} s, exposed \
             communication {:.3} s, bubble {:.3} s, optimizer {:.3} s.</p>",
            e.tokens_per_s,
            e.step_time_s,
            e.peak_memory_bytes as f64 / GIB,
            e.mfu * 100.0,
            e.breakdown.compute_s,
            e.breakdown.exposed_comm_s,
            e.breakdown.bubble_s,
            e.breakdown.optimizer_s
        );
    }
    let _ = writeln!(h, "<p>{}</p>", esc(&report.explanation));

    h.push_str("<h2>Pipeline timeline</h2>\n");
    match est.map(|e| plan_timeline(cfg, e)) {
        Some(Ok(ev)) => {
            h.push_str(&gantt(&ev, cfg.pp.max(1) as usize));
            let colors = if cfg.schedule.is_zero_bubble() {
                "Blue: forward, dark orange: input-gradient pass B, green: weight-gradient pass W, orange: \
                 whole backward (the first stage of zb-h1)"
            } else {
                "Blue: forward, orange: backward"
            };
            let _ = writeln!(
                h,
                "<p>Schedule {}, {} micro-batches of {}. {colors}, gaps: pipeline bubble ({:.3} s on the \
                 critical device). Stage times and the point-to-point latency are those the cost model's \
                 pipeline simulation ran on.</p>",
                cfg.schedule,
                cfg.num_micro_batches,
                cfg.micro_batch_size,
                est.map(|e| e.breakdown.bubble_s).unwrap_or(0.0)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(h, "<p>timeline unavailable: {}</p>", esc(&e.to_string()));
        }
        None => h.push_str("<p>the chosen plan has no estimate</p>\n"),
    }

    h.push_str("<h2>Candidates: throughput vs peak memory</h2>\n");
    let capacity = cluster.memory_per_device_bytes as f64 * req.memory_fraction;
    h.push_str(&scatter(report, capacity));

    h.push_str("<h2>Memory per pipeline stage</h2>\n");
    if let Some(e) = est {
        h.push_str(&memory_bars(e, capacity));
    }

    h.push_str(
        "<h2>Rejected candidates</h2>\n<table><tr><th>reason</th><th>candidates</th></tr>\n",
    );
    for (reason, n) in &report.rejected {
        let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(reason));
    }
    if report.rejected.is_empty() {
        h.push_str("<tr><td>none</td><td>0</td></tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

fn gantt(ev: &[TaskEvent], devices: usize) -> String {
    let (w, left, row) = (1200.0, 70.0, 30.0);
    let end = ev.iter().map(|e| e.end_s).fold(0.0, f64::max).max(1e-12);
    let height = devices as f64 * row + 40.0;
    let sx = |t: f64| left + t / end * (w - left - 10.0);
    let mut s = format!(
        "<svg class=\"fig\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\">\n"
    );
    for d in 0..devices {
        let y = 10.0 + d as f64 * row;
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"#eee\"/><text x=\"5\" y=\"{}\" font-size=\"12\">stage {d}</text>",
            w - left - 10.0,
            row - 4.0,
            y + row / 2.0 + 2.0
        );
    }
    for e in ev {
        let (x0, x1) = (sx(e.start_s), sx(e.end_s));
        let y = 10.0 + e.device as f64 * row;
        let (fill, label) = match e.pass {
            Pass::Forward => ("#4a7fd4", "F"),
            Pass::Backward => ("#f0a040", "BW"),
            Pass::InputGrad => ("#e07b39", "B"),
            Pass::WeightGrad => ("#2a9d4b", "W"),
        };
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.2}\" y=\"{y}\" width=\"{:.2}\" height=\"{}\" fill=\"{fill}\" stroke=\"#fff\" stroke-width=\"0.5\"><title>{label} {}</title></rect>",
            (x1 - x0).max(0.5),
            row - 4.0,
            e.micro_batch
        );
        if x1 - x0 > 14.0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.2}\" y=\"{}\" font-size=\"10\" fill=\"#fff\" text-anchor=\"middle\">{}</text>",
                (x0 + x1) / 2.0,
                y + row / 2.0 + 1.0,
                e.micro_batch
            );
        }
    }
    let y = 10.0 + devices as f64 * row + 14.0;
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{y}\" font-size=\"11\">0 s</text><text x=\"{}\" y=\"{y}\" font-size=\"11\" text-anchor=\"end\">{end:.3} s</text>",
        w - 10.0
    );
    s.push_str("</svg>\n");
    s
}

fn scatter(report: &PlanReport, capacity: f64) -> String {
    let (w, hgt, l, b) = (900.0, 500.0, 80.0, 50.0);
    let pts: Vec<(f64, f64, bool)> = report
        .search
        .evaluated
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Feasible(x) => Some((x.peak_memory_bytes as f64 / GIB, x.tokens_per_s, true)),
            Outcome::OutOfMemory(x) => {
                Some((x.peak_memory_bytes as f64 / GIB, x.tokens_per_s, false))
            }
            _ => None,
        })
        .collect();
    let cap = capacity / GIB;
    let xmax = pts.iter().map(|p| p.0).fold(cap, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let frame = crate::svg::Frame { w, h: hgt, l, b };
    // Points past the axis (none but the capacity line can be) are drawn at its end.
    let sx = |x: f64| frame.x(x.min(xmax), xmax);
    let sy = |y: f64| frame.y(y, ymax);
    let mut s = format!(
        "<svg class=\"fig\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\">\n"
    );
    frame.axes(
        &mut s,
        (xmax, ymax),
        "predicted peak memory per device (GiB)",
        "tokens/s",
        14.0,
    );
    let cx = sx(cap);
    let _ = writeln!(
        s,
        "<line x1=\"{cx:.1}\" y1=\"20\" x2=\"{cx:.1}\" y2=\"{}\" stroke=\"#c00\" stroke-dasharray=\"6,4\"/><text x=\"{:.1}\" y=\"32\" font-size=\"11\" fill=\"#c00\">capacity {cap:.1} GiB</text>",
        hgt - b,
        cx + 4.0
    );
    for (x, y, ok) in &pts {
        let fill = if *ok { "#2a9d4b" } else { "#d62728" };
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{fill}\" fill-opacity=\"0.6\"/>",
            sx(*x),
            sy(*y)
        );
    }
    if let Some(e) = report
        .search
        .evaluated
        .get(report.search.best)
        .and_then(|e| e.estimate())
    {
        let (x, y) = (sx(e.peak_memory_bytes as f64 / GIB), sy(e.tokens_per_s));
        let _ = writeln!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"9\" fill=\"none\" stroke=\"#000\" stroke-width=\"2.5\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" font-weight=\"bold\">chosen</text>",
            x + 11.0,
            y - 6.0
        );
    }
    let feasible = pts.iter().filter(|p| p.2).count();
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" font-size=\"12\" text-anchor=\"end\"><tspan fill=\"#2a9d4b\">● feasible ({feasible})</tspan>  <tspan fill=\"#d62728\">● out of memory ({})</tspan></text>",
        w - 30.0,
        pts.len() - feasible
    );
    s.push_str("</svg>\n");
    s
}

fn memory_bars(e: &Estimate, capacity: f64) -> String {
    let parts: [(&str, &str); 5] = [
        ("weights", "#4a7fd4"),
        ("gradients", "#7fb3ff"),
        ("optimizer state", "#2a9d4b"),
        ("activations", "#f0a040"),
        ("transients", "#9467bd"),
    ];
    let n = e.memory.len().max(1) as f64;
    let (w, hgt, l, b) = (900.0, 420.0, 80.0, 60.0);
    let total = |m: &moai_costmodel::StageMemory| {
        m.weights_bytes
            + m.grads_bytes
            + m.optimizer_bytes
            + m.activations_bytes
            + m.transients_bytes
    };
    let ymax = e
        .memory
        .iter()
        .map(|m| total(m).max(m.peak_bytes))
        .fold(capacity, f64::max)
        / GIB
        * 1.08;
    let sy = |g: f64| hgt - b - g / ymax * (hgt - b - 20.0);
    let bw = ((w - l - 20.0) / n * 0.6).min(90.0);
    let mut s = format!(
        "<svg class=\"fig\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\">\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/>",
        hgt - b,
        w - 20.0,
        hgt - b
    );
    for i in 0..=4 {
        let g = ymax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{g:.0} GiB</text>",
            l - 4.0,
            sy(g) + 4.0
        );
    }
    for (i, m) in e.memory.iter().enumerate() {
        let x = l + (i as f64 + 0.2) * (w - l - 20.0) / n;
        let vals = [
            m.weights_bytes,
            m.grads_bytes,
            m.optimizer_bytes,
            m.activations_bytes,
            m.transients_bytes,
        ];
        let mut acc = 0.0;
        for ((_, color), v) in parts.iter().zip(vals) {
            let (g0, g1) = (acc / GIB, (acc + v) / GIB);
            acc += v;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                sy(g1),
                (sy(g0) - sy(g1)).max(0.0)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">stage {}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">peak {:.1}</text>",
            x + bw / 2.0,
            hgt - b + 15.0,
            m.stage,
            x + bw / 2.0,
            sy(total(m).max(m.peak_bytes) / GIB) - 4.0,
            m.peak_bytes / GIB
        );
    }
    let cy = sy(capacity / GIB);
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{cy:.1}\" x2=\"{}\" y2=\"{cy:.1}\" stroke=\"#c00\" stroke-dasharray=\"6,4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" fill=\"#c00\" text-anchor=\"end\">usable capacity</text>",
        w - 20.0,
        w - 22.0,
        cy - 4.0
    );
    for (i, (name, color)) in parts.iter().enumerate() {
        let x = l + i as f64 * 150.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{name}</text>",
            hgt - 28.0,
            x + 16.0,
            hgt - 18.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }

    #[test]
    fn timeline_replays_the_estimate_simulation() {
        use moai_costmodel::pipeline::{StageTimes, simulate};
        let cfg = ParallelConfig {
            pp: 2,
            num_micro_batches: 4,
            ..ParallelConfig::default()
        };
        let e = Estimate {
            stage_times: vec![StageTimes::new(1.0, 2.0), StageTimes::new(0.5, 1.0)],
            p2p_s: 0.1,
            ..Estimate::default()
        };
        let ev = plan_timeline(&cfg, &e).unwrap();
        assert_eq!(
            ev.len(),
            2 * 2 * 4,
            "forward and backward of 4 micro-batches on 2 stages"
        );
        let end = ev.iter().map(|t| t.end_s).fold(0.0, f64::max);
        let sim = simulate(cfg.schedule, &e.stage_times, 2, 4, 0.1).unwrap();
        assert!(
            (end - sim.makespan_s).abs() < 1e-12,
            "{end} vs {}",
            sim.makespan_s
        );
        let svg = gantt(&ev, 2);
        assert!(svg.contains(&format!("{end:.3} s</text>")), "{svg}");
        // No stage times (an estimate from before they were recorded): an error, not a panic.
        assert!(plan_timeline(&cfg, &Estimate::default()).is_err());
    }
}
