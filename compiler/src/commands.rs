//! The subcommands of `moai-compile`, one function each: they turn the parsed arguments
//! (`crate::cli`) into the library's types, run the library and print the result on stdout. Errors
//! are [`PlanError`]s, one line each; the binary prints them.

use crate::cli::{
    Command, EstimateArgs, FlavorsArgs, InspectArgs, PlanArgs, SmiArgs, SweepArgs, UseArgs,
    ValidateArgs, parse_gpu,
};
use crate::error::{PlanError, Result};
use crate::request::CancelToken;
use crate::search::Progress;
use crate::{Gpu, Model};
use std::io::Write;
use std::path::Path;

/// Runs one subcommand. `cancel` is the token the caller's Ctrl-C handler cancels; `plan` carries it
/// in its request.
pub fn run(cmd: Command, cancel: &CancelToken) -> Result<()> {
    match cmd {
        Command::Plan(a) => plan(a, cancel),
        Command::Estimate(a) => estimate(a),
        Command::Inspect(a) => inspect(a),
        Command::Flavors(a) => flavors(a),
        Command::Validate(a) => validate(a),
        Command::Sweep(a) => sweep(a, cancel),
        Command::Use(a) => use_flavor(a),
        Command::Smi(a) => smi(a),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let stdout = |e: std::io::Error| PlanError::Io {
        path: "stdout".into(),
        source: e,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| stdout(e.into()))?;
    writeln!(out).map_err(stdout)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn print_prediction(p: &crate::PlanOutput) {
    let pr = &p.predicted;
    let b = &pr.breakdown;
    println!(
        "step time {:.3} s | {:.0} tokens/s | peak memory {:.2} GiB of {:.0} GiB per device | MFU {:.1}%",
        pr.step_time_s,
        pr.tokens_per_s,
        gib(pr.peak_memory_bytes),
        gib(p.cluster.memory_per_device_bytes),
        pr.mfu * 100.0
    );
    // Activation offload's exposed copies are outside the four parts (the optimizer offload is
    // inside `optimizer`).
    let copies = if p.plan.offload_activations > 0 {
        format!(
            ", offload {:.3} s{}",
            b.offload_s,
            if p.plan.offload_optimizer {
                " (optimizer offload and activation copies)"
            } else {
                " (exposed activation copies)"
            }
        )
    } else {
        String::new()
    };
    println!(
        "breakdown: compute {:.3} s, exposed communication {:.3} s, bubble {:.3} s, optimizer {:.3} s{copies}",
        b.compute_s, b.exposed_comm_s, b.bubble_s, b.optimizer_s
    );
    println!("{}", kernels_line(&b.kernels));
}

/// Where the critical device's kernel time goes, by kernel class (classes at zero left out).
fn kernels_line(k: &moai_costmodel::KernelClasses) -> String {
    let parts: Vec<String> = [
        ("matmul", k.matmul_s),
        ("attention", k.attention_s),
        ("fused memory-bound", k.fused_memory_s),
        ("other memory-bound", k.memory_s),
        ("measured", k.measured_s),
        ("kernel floors", k.kernel_floor_s),
        ("TP overlap SM margin", k.tp_sm_margin_s),
    ]
    .iter()
    .filter(|(_, s)| *s > 0.0)
    .map(|(name, s)| format!("{name} {s:.3} s"))
    .collect();
    format!("kernels: {}", parts.join(", "))
}

/// `estimate`: one configuration's prediction, and when it does not fit, by how much and the cheapest
/// change that fits.
pub fn estimate(a: EstimateArgs) -> Result<()> {
    let cluster = a.cluster.resolve()?;
    let req = a.job.to_request()?;
    req.validate_for(&cluster)?;
    let mut cons = a.config.to_constraints()?;
    cons.precision = req.constraints.precision;
    let mut cfg = crate::config::config_for(&cons, &cluster, req.batch)?;
    let model = Model::load(&a.model)?;
    let layers = model.summary.layers as u32;
    cons.offload_activations.check_layers(layers)?;
    if cons.offload_activations != crate::request::ActivationOffload::Off {
        cfg.offload_activations = cons.offload_activations.fixed(layers, cfg.pp);
        if cfg.offload_activations == 0 {
            return Err(crate::error::PlanError::InvalidArgument(format!(
                "--offload activations: a stage of pp {} holds one decoder layer, whose activations stay on the device (give activations=N to offload it)",
                cfg.pp
            )));
        }
        // the engine may change with the offload (only Megatron-LM runs it)
        cfg = crate::export::assign_engine(cons.engine, cfg, &cluster)
            .map_err(crate::error::PlanError::InvalidArgument)?;
    }
    let out = crate::estimate(&model, &cluster, &cfg, &req)?;
    warn_known_misses(&out.predicted.known_misses);
    if a.job.json {
        return print_json(&out);
    }
    println!("{}", out.plan.summary_line());
    // Zero-bubble schedules and per-stage mixes that no engine runs are costed on the stack of the
    // engine that runs their 1F1B / uniform twin (`export::assign_engine`).
    let unexported = !crate::export::runs_as_planned(&cfg, &cluster);
    println!(
        "engine: {}{}",
        crate::export::engine_title(out.plan.engine),
        if unexported {
            " (costed on its stack; no export engine runs this schedule or per-stage recomputation yet)"
        } else {
            ""
        }
    );
    print_prediction(&out);
    if !out.fits {
        let usable = crate::api::usable_memory(&cluster, &req);
        let peak = out.predicted.peak_memory_bytes as f64;
        println!(
            "DOES NOT FIT: needs {:.2} GiB of {:.2} GiB usable per device ({:.2} GiB over)",
            peak / (1u64 << 30) as f64,
            usable / (1u64 << 30) as f64,
            (peak - usable) / (1u64 << 30) as f64
        );
        match crate::api::cheapest_fitting_change(&model, &cluster, &req, &cfg, &cons) {
            Some((best, changes, kept)) => println!(
                "cheapest change that fits{}: {} ({:.3} s/step, peak {:.2} GiB)",
                if kept {
                    ""
                } else {
                    " (the flags given leave nothing that fits)"
                },
                if changes.is_empty() {
                    "none".to_string()
                } else {
                    changes.join(", ")
                },
                best.predicted.step_time_s,
                gib(best.predicted.peak_memory_bytes)
            ),
            None => println!("no configuration of this model fits this cluster"),
        }
    }
    Ok(())
}

/// `flavors`: the catalog, the current flavor starred.
pub fn flavors(a: FlavorsArgs) -> Result<()> {
    let gpu = a.gpu.as_deref().map(parse_gpu).transpose()?;
    // The star is a courtesy: a broken config file is a warning here, never a failure.
    let current = match crate::current::current(&crate::current::Env::from_process()) {
        Ok(c) => Some(c.flavor),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    print!(
        "{}",
        moai_costmodel::render_flavors_marked(gpu, current.as_deref())?
    );
    Ok(())
}

/// `use`: switch the current flavor, or list the flavors (a numbered choice on a terminal).
pub fn use_flavor(a: UseArgs) -> Result<()> {
    use crate::current::{Env, Switcher};
    use std::io::IsTerminal;
    let env = Env::from_process();
    let gpu = a.gpu.as_deref().map(parse_gpu).transpose()?;
    let mut sw = Switcher::open(&env)?;
    let switched = match (&a.flavor, gpu) {
        (Some(f), g) => Some(sw.switch(f, g)?),
        (None, Some(g)) => Some(sw.switch(&sw.flavor.clone(), Some(g))?),
        (None, None) => None,
    };
    if let Some(msg) = &switched {
        println!("{msg}");
        tracing::info!("saved in {}", sw.path.display());
    }
    if let Some(f) = &env.moai_flavor {
        tracing::warn!("MOAI_FLAVOR={f} overrides the config file while it is set");
    }
    if a.flavor.is_none() {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            sw.interactive(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())?;
        } else {
            if switched.is_some() {
                println!();
            }
            print!("{}", sw.listing());
        }
    }
    Ok(())
}

/// `smi`: the virtual accelerator's devices, for a plan file or the current flavor.
pub fn smi(a: SmiArgs) -> Result<()> {
    let (report, source) = match &a.plan {
        Some(p) => crate::smi::from_plan_file(p, a.breakdown)?,
        None => {
            let cur = crate::current::current(&crate::current::Env::from_process())?;
            tracing::info!("flavor {} on {} ({})", cur.flavor, cur.gpu, cur.source);
            crate::smi::for_current(&cur)?
        }
    };
    if a.json {
        print_json(&report)
    } else {
        print!("{}", crate::smi::render(&report, &source, a.breakdown));
        Ok(())
    }
}

/// `inspect`: a model's parameters, layers, sizes and FLOPs per token.
pub fn inspect(a: InspectArgs) -> Result<()> {
    if a.seq_len == 0 {
        return Err(PlanError::InvalidArgument(
            "--seq-len 0: the sequence length must be at least 1".into(),
        ));
    }
    let max = crate::request::MAX_SEQ;
    if a.seq_len > max {
        return Err(PlanError::InvalidArgument(format!(
            "--seq-len {}: at most {max} tokens (2^24)",
            a.seq_len
        )));
    }
    let model = Model::load(&a.model)?;
    let report = crate::inspect::inspect(&model, a.seq_len)?;
    if a.json {
        print_json(&report)
    } else {
        print!("{}", crate::inspect::render(&report));
        Ok(())
    }
}

/// `validate`: predictions against the measurements of a truth file.
pub fn validate(a: ValidateArgs) -> Result<()> {
    let report = crate::validate::validate_files(&a.truth, a.cross_validate)?;
    if a.json {
        print_json(&report)
    } else {
        print!("{report}");
        Ok(())
    }
}

/// `sweep`: the best plan per flavor, a table and optionally an SVG plot.
pub fn sweep(a: SweepArgs, cancel: &CancelToken) -> Result<()> {
    let flavors = crate::sweep::expand_flavors(&a.flavors)?;
    let gpu = match &a.gpu {
        Some(g) => parse_gpu(g)?,
        None => Gpu::Mi250,
    };
    let mut req = a.job.to_request()?;
    crate::request::check_precision(req.constraints.precision, gpu)?;
    bound_request(&mut req, a.threads, a.time_budget, cancel)?;
    req.validate()?;
    let model = Model::load(&a.model)?;
    let rows = crate::sweep::sweep(&model, &flavors, gpu, &req)?;
    // Each flavor's best plan's, once each.
    let mut misses: Vec<String> = rows.iter().flat_map(|r| r.known_misses.clone()).collect();
    misses.sort();
    misses.dedup();
    warn_known_misses(&misses);
    print!("{}", crate::sweep::table(&rows));
    if let Some(p) = &a.plot {
        std::fs::write(p, crate::sweep::plot_svg(&rows))
            .map_err(|e| PlanError::InvalidArgument(format!("--plot {}: {e}", p.display())))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The `--threads`, `--time-budget` and Ctrl-C bounds of a search request (`plan` and `sweep`).
fn bound_request(
    req: &mut crate::request::PlanRequest,
    threads: Option<usize>,
    time_budget: Option<f64>,
    cancel: &CancelToken,
) -> Result<()> {
    req.threads = threads.map(crate::request::check_threads).transpose()?;
    req.time_budget = time_budget
        .map(crate::request::time_budget_from_secs)
        .transpose()?;
    req.cancel = cancel.clone();
    Ok(())
}

/// An indicatif progress bar on stderr (hidden when stderr is not a terminal).
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(phase.to_string());
    }
    fn tick(&self) {
        self.0.inc(1);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Says, on stderr, where the predictions for this job are known to miss published runs.
fn warn_known_misses(misses: &[String]) {
    for w in misses {
        tracing::warn!("{w}");
    }
}

/// `plan`: search, print the best plan, and write `--out` with the `--emit` artifacts. The request
/// carries `cancel`: once cancelled, the search and code generation finish with what they have.
pub fn plan(a: PlanArgs, cancel: &CancelToken) -> Result<()> {
    let emits = a.emit.clone();
    if !emits.is_empty() && a.out.is_none() {
        return Err(PlanError::InvalidArgument(
            "--emit needs --out DIR to write into".into(),
        ));
    }
    let cluster = a.cluster.resolve()?;
    // --emit hsaco on NVIDIA, ptx on AMD, or a binary without the `mlir` feature: fail before searching
    crate::codegen::CodegenRequest::from_emits(&emits, cluster.gpu)?;
    let mut req = a.job.to_request()?;
    req.constraints = crate::request::Constraints {
        precision: req.constraints.precision,
        ..a.config.to_constraints()?
    };
    if a.exhaustive {
        req.pruning = crate::search::Pruning::Off;
    }
    bound_request(&mut req, a.threads, a.time_budget, cancel)?;
    req.validate_for(&cluster)?;
    let model = Model::load(&a.model)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    if a.no_progress || a.job.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let report = match crate::plan_with(&model, &cluster, &req, &req.cost_model(), &Bar(bar)) {
        Ok(r) => r,
        Err(PlanError::NoFeasiblePlan(msg)) => {
            let hint = crate::fit::smallest_fitting_flavor(&model, &cluster, &req)
                .map(|f| format!("; the smallest flavor that fits is {f}"))
                .unwrap_or_else(|| "; no flavor in the catalog fits it either".into());
            return Err(PlanError::NoFeasiblePlan(format!("{msg}{hint}")));
        }
        Err(e) => return Err(e),
    };
    tracing::info!("Configuration for parallelism is selected.");
    tracing::info!("{}", report.output.plan.summary_line());
    warn_known_misses(&report.output.predicted.known_misses);
    if let Some(out) = &a.out {
        crate::emit::write_outputs(out, &model, &cluster, &req, &report, &emits)
            .map_err(|e| e.context(format!("writing into {}", out.display())))?;
    }
    if a.job.json {
        print_json(&report.output)?;
    } else {
        println!("{}", report.output.plan.summary_line());
        print_prediction(&report.output);
        println!("{}", report.explanation);
        if let Some(out) = &a.out {
            println!("wrote {}", Path::new(out).join("plan.json").display());
        }
    }
    Ok(())
}
