//! `moai-compile`: the command line over the moai-compiler library.

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use moai_compiler::cli::{
    Cli, ClusterArgs, Command, ConfigArgs, EstimateArgs, FlavorsArgs, InspectArgs, JobArgs,
    PlanArgs, SmiArgs, SweepArgs, UseArgs, ValidateArgs, with_default_subcommand,
};
use moai_compiler::search::Progress;
use moai_compiler::{
    Cluster, Constraints, Gpu, Model, ParallelConfig, PlanRequest, ProfiledCostModel, Recompute,
    Schedule,
};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, format::Writer};
use tracing_subscriber::registry::LookupSpan;

/// Prints `[info] message` like the platform's logs.
struct PlatformFormat;

impl<S, N> FormatEvent<S, N> for PlatformFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        write!(w, "[{level}] ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn init_logging(level: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("warn,moai_compile={level},moai_compiler={level},moai_costmodel={level},moai_ir={level},moai_runtime={level},moai_models={level}"))
        .map_err(|e| anyhow!("--log {level}: {e}"))?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .event_format(PlatformFormat)
        .init();
    Ok(())
}

fn main() -> ExitCode {
    let args = with_default_subcommand(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Plan(a) => cmd_plan(a),
        Command::Estimate(a) => cmd_estimate(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Flavors(a) => cmd_flavors(a),
        Command::Validate(a) => cmd_validate(a),
        Command::Sweep(a) => cmd_sweep(a),
        Command::Use(a) => cmd_use(a),
        Command::Smi(a) => cmd_smi(a),
    }
}

fn parse_gpu(s: &str) -> Result<Gpu> {
    s.parse::<Gpu>().map_err(|e| anyhow!("--gpu: {e}"))
}

/// The cluster of the flags, or the current flavor (see `moai_compiler::current`).
fn cluster_from(a: &ClusterArgs) -> Result<Cluster> {
    Ok(a.resolve()?)
}

fn request_from(job: &JobArgs) -> Result<PlanRequest> {
    let mut r = PlanRequest::new(job.batch_size, job.seq_len);
    r.precision = job
        .precision
        .parse()
        .map_err(|e| anyhow!("--precision {}: {e}", job.precision))?;
    r.optimizer = job
        .optimizer
        .parse()
        .map_err(|e| anyhow!("--optimizer {}: {e}", job.optimizer))?;
    r.validate()?;
    Ok(r)
}

fn constraints_from(c: &ConfigArgs) -> Result<Constraints> {
    let to_u32 = |name: &str, v: Option<u64>| -> Result<Option<u32>> {
        match v {
            None => Ok(None),
            Some(0) => bail!("--{name} 0: must be at least 1"),
            Some(x) => Ok(Some(
                u32::try_from(x).map_err(|_| anyhow!("--{name} {x}: too large"))?,
            )),
        }
    };
    Ok(Constraints {
        dp: to_u32("dp", c.dp)?,
        tp: to_u32("tp", c.tp)?,
        pp: to_u32("pp", c.pp)?,
        micro_batch_size: to_u32("micro-batch-size", c.micro_batch_size)?,
        recompute: c
            .recompute
            .as_deref()
            .map(Constraints::parse_recompute_list)
            .transpose()?
            .unwrap_or_default(),
        zero: c.zero.map(Constraints::check_zero).transpose()?,
        sequence_parallel: c.sequence_parallel.then_some(true),
        schedules: c
            .schedule
            .as_deref()
            .map(Constraints::parse_schedule_list)
            .transpose()?
            .unwrap_or_default(),
        engine: c.engine.as_deref().map(parse_engine).transpose()?,
    })
}

/// `--engine`: an engine plans are exported to (eager is a cost-model stack, not an export engine).
fn parse_engine(s: &str) -> Result<moai_costmodel::Stack> {
    match s.parse::<moai_costmodel::Stack>() {
        Ok(moai_costmodel::Stack::Eager) | Err(_) => {
            bail!("--engine {s}: expected megatron, deepspeed or fsdp")
        }
        Ok(e) => Ok(e),
    }
}

/// The configuration `estimate` evaluates: flags, with the rest derived.
fn config_from(c: &Constraints, cluster: &Cluster, batch: u64) -> Result<ParallelConfig> {
    let tp = c.tp.unwrap_or(1);
    let pp = c.pp.unwrap_or(1);
    // in u64: tp × pp and dp × tp × pp of 32-bit flags cannot overflow
    let model_par = tp as u64 * pp as u64;
    let devices = cluster.devices as u64;
    if !devices.is_multiple_of(model_par) {
        bail!(
            "{} devices are not divisible by tp {tp} × pp {pp}",
            cluster.devices
        );
    }
    let dp = c.dp.unwrap_or((devices / model_par) as u32);
    if dp as u64 * model_par != devices {
        bail!(
            "{} devices are not divisible into dp {dp} × tp {tp} × pp {pp} (= {})",
            cluster.devices,
            dp as u64 * model_par
        );
    }
    if batch % dp as u64 != 0 {
        bail!("--batch-size {batch} is not divisible by dp {dp}");
    }
    let mbs = c.micro_batch_size.unwrap_or(1);
    let per_replica = batch / dp as u64;
    if per_replica % mbs as u64 != 0 {
        bail!(
            "--micro-batch-size {mbs} does not divide the {per_replica} sequences per data-parallel replica (batch {batch} / dp {dp})"
        );
    }
    if c.recompute.len() > 1 {
        bail!("--recompute: estimate takes one value (none, selective or full)");
    }
    if c.schedules.len() > 1 {
        bail!("--schedule: estimate takes one value (gpipe, 1f1b or interleaved:V)");
    }
    let Ok(num_micro_batches) = u32::try_from(per_replica / mbs as u64) else {
        bail!(
            "{} micro-batches per replica (batch {batch} / dp {dp} / micro-batch size {mbs}): a plan counts at most 2^32-1; raise --micro-batch-size or --dp",
            per_replica / mbs as u64
        );
    };
    let max_mb = moai_compiler::space::MAX_PIPELINE_MICRO_BATCHES;
    if pp > 1 && num_micro_batches as u64 > max_mb {
        bail!(
            "{num_micro_batches} micro-batches in a {pp}-stage pipeline: at most {max_mb} (the schedule is simulated per micro-batch); raise --micro-batch-size or --dp"
        );
    }
    let zero = c.zero.unwrap_or(0);
    let cfg = ParallelConfig {
        dp,
        tp,
        pp,
        micro_batch_size: mbs,
        num_micro_batches,
        recompute: c.recompute.first().copied().unwrap_or(Recompute::None),
        distribute_param: zero == 3,
        distribute_low_prec_param: zero == 3,
        distribute_optimizer: zero >= 1,
        sequence_parallel: c.sequence_parallel.unwrap_or(false),
        schedule: c.schedules.first().copied().unwrap_or(Schedule::OneFOneB),
        stages: Vec::new(),
        ..ParallelConfig::default()
    };
    // The engine it runs on: --engine when that engine runs it, else the first that does.
    moai_compiler::export::assign_engine(c.engine, cfg, cluster).map_err(|e| anyhow!("{e}"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn print_prediction(p: &moai_compiler::PlanOutput) {
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
    println!(
        "breakdown: compute {:.3} s, exposed communication {:.3} s, bubble {:.3} s, optimizer {:.3} s",
        b.compute_s, b.exposed_comm_s, b.bubble_s, b.optimizer_s
    );
}

fn cmd_estimate(a: EstimateArgs) -> Result<()> {
    let cluster = cluster_from(&a.cluster)?;
    let req = request_from(&a.job)?;
    let cons = constraints_from(&a.config)?;
    let cfg = config_from(&cons, &cluster, req.batch)?;
    let model = Model::load(&a.model)?;
    let out = moai_compiler::estimate(&model, &cluster, &cfg, &req)?;
    if a.job.json {
        print_json(&out)?;
    } else {
        println!("{}", out.plan.summary_line());
        println!(
            "engine: {}",
            moai_compiler::export::engine_title(out.plan.engine)
        );
        print_prediction(&out);
        if !out.fits {
            let usable = moai_compiler::api::usable_memory(&cluster, &req);
            let peak = out.predicted.peak_memory_bytes as f64;
            println!(
                "DOES NOT FIT: needs {:.2} GiB of {:.2} GiB usable per device ({:.2} GiB over)",
                peak / (1u64 << 30) as f64,
                usable / (1u64 << 30) as f64,
                (peak - usable) / (1u64 << 30) as f64
            );
            match moai_compiler::api::cheapest_fitting_change(&model, &cluster, &req, &cfg, &cons) {
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
    }
    Ok(())
}

fn cmd_flavors(a: FlavorsArgs) -> Result<()> {
    let gpu = a.gpu.as_deref().map(parse_gpu).transpose()?;
    // The star is a courtesy: a broken config file is a warning here, never a failure.
    let current = match moai_compiler::current::current(&moai_compiler::current::Env::from_process())
    {
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

fn cmd_use(a: UseArgs) -> Result<()> {
    use moai_compiler::current::{Env, Switcher};
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

fn cmd_smi(a: SmiArgs) -> Result<()> {
    let (report, source) = match &a.plan {
        Some(p) => moai_compiler::smi::from_plan_file(p, a.breakdown)?,
        None => {
            let cur =
                moai_compiler::current::current(&moai_compiler::current::Env::from_process())?;
            tracing::info!("flavor {} on {} ({})", cur.flavor, cur.gpu, cur.source);
            moai_compiler::smi::for_current(&cur)?
        }
    };
    if a.json {
        print_json(&report)?;
    } else {
        print!(
            "{}",
            moai_compiler::smi::render(&report, &source, a.breakdown)
        );
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    if a.seq_len == 0 {
        bail!("--seq-len 0: the sequence length must be at least 1");
    }
    let max = moai_compiler::request::MAX_SEQ;
    if a.seq_len > max {
        bail!("--seq-len {}: at most {max} tokens (2^24)", a.seq_len);
    }
    let model = Model::load(&a.model)?;
    let report = moai_compiler::inspect::inspect(&model, a.seq_len)?;
    if a.json {
        print_json(&report)?;
    } else {
        print!("{}", moai_compiler::inspect::render(&report));
    }
    Ok(())
}

fn cmd_validate(a: ValidateArgs) -> Result<()> {
    let report = moai_compiler::validate::validate_files(&a.truth, a.cross_validate)?;
    if a.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(())
}

fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let flavors = moai_compiler::sweep::expand_flavors(&a.flavors)?;
    let gpu = match &a.gpu {
        Some(g) => parse_gpu(g)?,
        None => Gpu::Mi250,
    };
    let mut req = request_from(&a.job)?;
    req.threads = a
        .threads
        .map(moai_compiler::request::check_threads)
        .transpose()?;
    req.validate()?;
    let model = Model::load(&a.model)?;
    let rows = moai_compiler::sweep::sweep(&model, &flavors, gpu, &req)?;
    print!("{}", moai_compiler::sweep::table(&rows));
    if let Some(p) = &a.plot {
        std::fs::write(p, moai_compiler::sweep::plot_svg(&rows))
            .map_err(|e| anyhow::anyhow!("--plot {}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
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

fn cmd_plan(a: PlanArgs) -> Result<()> {
    let emits = parse_emits(&a.emit)?;
    if !emits.is_empty() && a.out.is_none() {
        bail!("--emit needs --out DIR to write into");
    }
    let cluster = cluster_from(&a.cluster)?;
    // --emit hsaco on NVIDIA, ptx on AMD, or a binary without the `mlir` feature: fail before searching
    moai_compiler::codegen::CodegenRequest::from_emits(&emits, cluster.gpu)?;
    let mut req = request_from(&a.job)?;
    req.constraints = constraints_from(&a.config)?;
    req.threads = a
        .threads
        .map(moai_compiler::request::check_threads)
        .transpose()?;
    req.time_budget = a
        .time_budget
        .map(moai_compiler::request::time_budget_from_secs)
        .transpose()?;
    req.validate()?;
    let model = Model::load(&a.model)?;
    let cancel = req.cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if cancel.cancel() {
            std::process::exit(130);
        }
        eprintln!(
            "[warn] interrupted: finishing with the best plan found so far and the programs already compiled (Ctrl-C again to abort)"
        );
    });
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
    let report = match moai_compiler::plan_with(
        &model,
        &cluster,
        &req,
        &ProfiledCostModel::new(),
        &Bar(bar),
    ) {
        Ok(r) => r,
        Err(moai_compiler::PlanError::NoFeasiblePlan(msg)) => {
            let hint = moai_compiler::fit::smallest_fitting_flavor(&model, &cluster, &req)
                .map(|f| format!("; the smallest flavor that fits is {f}"))
                .unwrap_or_else(|| "; no flavor in the catalog fits it either".into());
            bail!("{msg}{hint}");
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!("Configuration for parallelism is selected.");
    tracing::info!("{}", report.output.plan.summary_line());
    if let Some(out) = &a.out {
        moai_compiler::emit::write_outputs(out, &model, &cluster, &req, &report, &emits)
            .with_context(|| format!("writing into {}", out.display()))?;
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

fn parse_emits(list: &[String]) -> Result<Vec<String>> {
    const KNOWN: &[&str] = &[
        "plan",
        "report",
        "mlir",
        "hsaco",
        "ptx",
        "megatron",
        "deepspeed",
        "fsdp",
    ];
    let mut out = Vec::new();
    for e in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !KNOWN.contains(&e) {
            bail!(
                "--emit {e}: unknown artifact (expected any of {})",
                KNOWN.join(",")
            );
        }
        out.push(e.to_string());
    }
    Ok(out)
}
