//! `moai-compile sweep`: the best plan of one model on a range of cluster flavors, with scaling
//! efficiency against the first flavor that fits, and an SVG plot of throughput vs devices.

use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::request::PlanRequest;
use moai_costmodel::{Cluster, Gpu};
use std::fmt::Write;

/// The best plan on one flavor, or why nothing fits there.
#[derive(Clone, Debug)]
pub struct SweepRow {
    /// Flavor name.
    pub flavor: String,
    /// Devices of the flavor on the chosen GPU kind.
    pub devices: u64,
    /// Plan summary, tokens/s, step seconds, peak bytes, MFU; `Err(reason)` when nothing fits.
    pub best: std::result::Result<(String, f64, f64, u64, f64), String>,
    /// The known misses of the best plan (`moai_costmodel::known_misses`).
    pub known_misses: Vec<String>,
}

/// Expands `A..B` (inclusive, catalog order) or a comma list into flavor names; errors name the flavor.
pub fn expand_flavors(spec: &str) -> Result<Vec<String>> {
    let catalog: Vec<&str> = moai_costmodel::flavors().iter().map(|f| f.name).collect();
    let find = |n: &str| {
        catalog
            .iter()
            .position(|c| c.eq_ignore_ascii_case(n.trim()))
            .ok_or_else(|| {
                PlanError::InvalidArgument(format!(
                    "--flavors: unknown flavor `{}` (see `moai-compile flavors`)",
                    n.trim()
                ))
            })
    };
    if let Some((a, b)) = spec.split_once("..") {
        let (i, j) = (find(a)?, find(b)?);
        if i > j {
            return Err(PlanError::InvalidArgument(format!(
                "--flavors {spec}: `{}` comes after `{}` in the catalog",
                a.trim(),
                b.trim()
            )));
        }
        return Ok(catalog[i..=j].iter().map(|s| s.to_string()).collect());
    }
    let list: Vec<String> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| find(s).map(|i| catalog[i].to_string()))
        .collect::<Result<_>>()?;
    if list.is_empty() {
        return Err(PlanError::InvalidArgument("--flavors: empty list".into()));
    }
    Ok(list)
}

/// Plans the model on each flavor. A flavor where nothing fits (or that has no mapping for the GPU
/// kind) becomes a row with the reason, not an error.
///
/// Bounded like one search: `req.time_budget` covers the whole sweep (each flavor's search gets the time
/// left divided by the flavors left, so a cut-short search still returns its best plan), and
/// `req.cancel` stops it. Flavors not reached are rows saying why (`not planned: ...`).
pub fn sweep(
    model: &Model,
    flavors: &[String],
    gpu: Gpu,
    req: &PlanRequest,
) -> Result<Vec<SweepRow>> {
    let start = std::time::Instant::now();
    let mut rows = Vec::new();
    for (i, f) in flavors.iter().enumerate() {
        let cluster = match Cluster::from_flavor(f, gpu) {
            Ok(c) => c,
            Err(e) => {
                rows.push(SweepRow {
                    flavor: f.clone(),
                    devices: 0,
                    best: Err(e.to_string()),
                    known_misses: Vec::new(),
                });
                continue;
            }
        };
        let mut flavor_req = req.clone();
        let not_planned = if req.cancel.is_cancelled() {
            Some("not planned: interrupted".to_string())
        } else if let Some(total) = req.time_budget {
            let left = total.saturating_sub(start.elapsed());
            flavor_req.time_budget = Some(left / (flavors.len() - i) as u32);
            left.is_zero().then(|| {
                format!(
                    "not planned: the time budget of {:.1} s was spent",
                    total.as_secs_f64()
                )
            })
        } else {
            None
        };
        if let Some(why) = not_planned {
            rows.push(SweepRow {
                flavor: f.clone(),
                devices: cluster.devices as u64,
                best: Err(why),
                known_misses: Vec::new(),
            });
            continue;
        }
        let mut known_misses = Vec::new();
        let best = match crate::plan(model, &cluster, &flavor_req) {
            Ok(r) => {
                let p = &r.output.predicted;
                known_misses.clone_from(&p.known_misses);
                Ok((
                    r.output.plan.summary_line(),
                    p.tokens_per_s,
                    p.step_time_s,
                    p.peak_memory_bytes,
                    p.mfu,
                ))
            }
            Err(PlanError::NoFeasiblePlan(why)) => Err(format!("nothing fits: {why}")),
            Err(PlanError::Stopped(why)) => Err(format!("not planned: {why}")),
            Err(PlanError::Interrupted) => Err("not planned: interrupted".to_string()),
            Err(e) => return Err(e),
        };
        rows.push(SweepRow {
            flavor: f.clone(),
            devices: cluster.devices as u64,
            best,
            known_misses,
        });
    }
    Ok(rows)
}

/// Scaling efficiency of each row against the first row that fits: `(tps/devices)/(tps0/devices0)`.
pub fn efficiencies(rows: &[SweepRow]) -> Vec<Option<f64>> {
    let base = rows
        .iter()
        .find_map(|r| r.best.as_ref().ok().map(|b| b.1 / r.devices.max(1) as f64));
    rows.iter()
        .map(|r| Some(r.best.as_ref().ok()?.1 / r.devices.max(1) as f64 / base?))
        .collect()
}

/// The sweep as a text table.
pub fn table(rows: &[SweepRow]) -> String {
    let eff = efficiencies(rows);
    let mut s = format!(
        "{:<16} {:>7} {:>12} {:>9} {:>8} {:>6} {:>9}  plan\n",
        "flavor", "devices", "tokens/s", "step s", "peak GiB", "MFU%", "scaling"
    );
    for (r, e) in rows.iter().zip(eff) {
        match &r.best {
            Ok((plan, tps, step, peak, mfu)) => {
                let _ = writeln!(
                    s,
                    "{:<16} {:>7} {:>12.0} {:>9.3} {:>8.1} {:>6.1} {:>8.1}%  {plan}",
                    r.flavor,
                    r.devices,
                    tps,
                    step,
                    *peak as f64 / (1u64 << 30) as f64,
                    mfu * 100.0,
                    e.unwrap_or(0.0) * 100.0
                );
            }
            Err(why) => {
                let _ = writeln!(s, "{:<16} {:>7} {:>12}  {why}", r.flavor, r.devices, "-");
            }
        }
    }
    s
}

/// SVG plot of tokens/s vs devices, with the ideal-scaling line from the first fitting flavor.
pub fn plot_svg(rows: &[SweepRow]) -> String {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.best.as_ref().ok().map(|b| (r.devices as f64, b.1)))
        .collect();
    let (w, h, l, b) = (800.0, 500.0, 90.0, 50.0);
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ideal_max = pts.first().map(|p0| p0.1 / p0.0 * xmax).unwrap_or(1.0);
    let ymax = pts.iter().map(|p| p.1).fold(ideal_max, f64::max).max(1e-9) * 1.05;
    let frame = crate::svg::Frame { w, h, l, b };
    let sx = |x: f64| frame.x(x, xmax);
    let sy = |y: f64| frame.y(y, ymax);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>\n"
    );
    frame.axes(&mut s, (xmax, ymax), "devices", "tokens/s", 16.0);
    if let Some(p0) = pts.first() {
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"6,4\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#888\" text-anchor=\"end\">ideal scaling</text>",
            sx(0.0),
            sy(0.0),
            sx(xmax),
            sy(ideal_max),
            sx(xmax) - 4.0,
            sy(ideal_max) + 14.0
        );
        let _ = p0;
    }
    let path: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#4a7fd4\" stroke-width=\"2\"/>",
        path.join(" ")
    );
    for p in &pts {
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#4a7fd4\"/>",
            sx(p.0),
            sy(p.1)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists_expand() {
        let all: Vec<&str> = moai_costmodel::flavors().iter().map(|f| f.name).collect();
        let r = expand_flavors(&format!("{}..{}", all[0], all[2])).unwrap();
        assert_eq!(
            r,
            all[..3].iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
        assert!(expand_flavors(&format!("{}..{}", all[2], all[0])).is_err());
        assert!(expand_flavors("Nope.1GB..Small.64GB").is_err());
        assert_eq!(
            expand_flavors(&format!("{},{}", all[1], all[0]))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn efficiency_is_per_device_throughput_ratio() {
        let row = |d, t: f64| SweepRow {
            flavor: "f".into(),
            devices: d,
            best: Ok((String::new(), t, 1.0, 0, 0.5)),
            known_misses: Vec::new(),
        };
        let rows = vec![
            SweepRow {
                flavor: "x".into(),
                devices: 4,
                best: Err("nothing fits".into()),
                known_misses: Vec::new(),
            },
            row(8, 800.0),
            row(16, 1200.0),
        ];
        let e = efficiencies(&rows);
        assert_eq!(e[0], None);
        assert!((e[1].unwrap() - 1.0).abs() < 1e-12);
        assert!((e[2].unwrap() - 0.75).abs() < 1e-12);
    }
}
