//! `moai-compile`: the command line over the moai-compiler library. It parses the arguments, sets up
//! logging and Ctrl-C, runs the subcommand (`moai_compiler::commands`) and prints errors as one line.

use anyhow::{Result, anyhow};
use clap::Parser;
use moai_compiler::cli::{Cli, Command, with_default_subcommand};
use moai_compiler::request::CancelToken;
use std::fmt;
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

/// Ctrl-C cancels `cancel` (the search and code generation finish with what they have); a second
/// Ctrl-C exits with status 130.
fn on_ctrl_c(cancel: &CancelToken) {
    let cancel = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if cancel.cancel() {
            std::process::exit(130);
        }
        eprintln!(
            "[warn] interrupted: finishing with the best plan found so far and the programs already compiled (Ctrl-C again to abort)"
        );
    });
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
    let cancel = CancelToken::new();
    if matches!(cli.command, Command::Plan(_) | Command::Sweep(_)) {
        on_ctrl_c(&cancel);
    }
    match moai_compiler::commands::run(cli.command, &cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined.
            let msg = format!("{:#}", anyhow::Error::from(e)).replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
