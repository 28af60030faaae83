//! What the test modules share: the repository root, the isolated `moai-compile` runner ([`moai`],
//! [`fails`]), the command-line builder [`Cli`] for the argument lists the tests repeat (subcommand,
//! model, cluster, job, flags), the library-level planning case ([`Case`], [`case`], [`h100`]), and
//! the constraints builders [`pin`] and [`pinned`] for the plan tables.

use moai_compiler::{
    Cluster, Constraints, Gpu, Model, PlanRequest, Recompute, Schedule, ZeroStage,
};
use moai_costmodel::{CpComm, MatmulPrecision, Stack};
use std::path::PathBuf;
use std::process::{Command, Output};

/// The workspace root (the binary runs there, so model paths are relative to it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A config-file path that never exists: every binary the tests spawn gets it as MOAI_CONFIG, so no test
/// reads or writes the machine's real ~/.config/moai/config.toml, and none depends on what it holds.
pub fn no_config() -> PathBuf {
    std::env::temp_dir()
        .join(format!("moai-tests-{}", std::process::id()))
        .join("no-such-dir")
        .join("config.toml")
}

/// Isolates a spawned moai-compile from the user's current flavor: MOAI_CONFIG points at [`no_config`]
/// and MOAI_FLAVOR / XDG_CONFIG_HOME are removed. Tests of the current flavor set their own afterwards.
pub fn isolate(c: &mut Command) -> &mut Command {
    c.env("MOAI_CONFIG", no_config())
        .env_remove("MOAI_FLAVOR")
        .env_remove("XDG_CONFIG_HOME")
}

/// Runs moai-compile isolated ([`isolate`]) in the workspace root.
pub fn moai<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    isolate(&mut Command::new(env!("CARGO_BIN_EXE_moai-compile")))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("runs moai-compile")
}

/// Runs a command expected to fail; returns its stderr after checking the one-line, non-zero contract.
pub fn fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = moai(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "{args:?}: expected one error line, got: {err}"
    );
    error_lines[0].to_string()
}

/// One `moai-compile` command line, built from the parts the tests repeat:
/// `Cli::estimate(MODEL).on("h100", 8).job(16, 2048).flag("--tp", 4).json().ok_json()`.
#[derive(Clone, Debug)]
pub struct Cli {
    args: Vec<String>,
}

impl Cli {
    /// `moai-compile SUBCOMMAND INPUT` (a model; a plan for `smi`).
    pub fn new(subcommand: &str, input: &str) -> Cli {
        Cli {
            args: vec![subcommand.to_string(), input.to_string()],
        }
    }

    /// `moai-compile estimate MODEL`.
    pub fn estimate(model: &str) -> Cli {
        Cli::new("estimate", model)
    }

    /// `moai-compile plan MODEL --no-progress`.
    pub fn plan(model: &str) -> Cli {
        Cli::new("plan", model).switch("--no-progress")
    }

    /// `--gpu GPU --devices N`.
    pub fn on(self, gpu: &str, devices: u32) -> Cli {
        self.flag("--gpu", gpu).flag("--devices", devices)
    }

    /// `--batch-size BATCH` (the default sequence length).
    pub fn batch(self, batch: u64) -> Cli {
        self.flag("--batch-size", batch)
    }

    /// `--batch-size BATCH --seq-len SEQ`.
    pub fn job(self, batch: u64, seq: u64) -> Cli {
        self.batch(batch).flag("--seq-len", seq)
    }

    /// `NAME VALUE`.
    pub fn flag(mut self, name: &str, value: impl ToString) -> Cli {
        self.args.push(name.to_string());
        self.args.push(value.to_string());
        self
    }

    /// `NAME` alone.
    pub fn switch(mut self, name: &str) -> Cli {
        self.args.push(name.to_string());
        self
    }

    /// `--json`.
    pub fn json(self) -> Cli {
        self.switch("--json")
    }

    /// Runs it ([`moai`]).
    pub fn run(&self) -> Output {
        moai(&self.args)
    }

    /// Runs it, checks that it succeeded and returns its stdout.
    pub fn ok(&self) -> String {
        let out = self.run();
        assert!(
            out.status.success(),
            "{:?}: {}",
            self.args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs it, checks that it succeeded and parses its stdout as JSON.
    pub fn ok_json(&self) -> serde_json::Value {
        let text = self.ok();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{:?}: {e}: {text}", self.args))
    }

    /// Runs a command expected to fail; its one error line ([`fails`]).
    pub fn fails(&self) -> String {
        fails(&self.args)
    }
}

/// A planning job for the library API: a model, a cluster and a request.
pub struct Case {
    /// The model.
    pub model: &'static Model,
    /// The cluster.
    pub cluster: Cluster,
    /// The request (batch, sequence, constraints).
    pub req: PlanRequest,
}

/// A case of `batch` sequences of 1024 tokens under the constraints `c`.
pub fn case(model: &'static Model, cluster: Cluster, batch: u64, c: Constraints) -> Case {
    let mut req = PlanRequest::new(batch, 1024);
    req.constraints = c;
    Case {
        model,
        cluster,
        req,
    }
}

/// `n` H100s.
pub fn h100(n: u32) -> Cluster {
    Cluster::new(Gpu::H100, n).unwrap()
}

/// No constraints, to pin what a case needs with [`Pin`]'s setters:
/// `pin().zero(ZeroStage::Zero3).tp(2).pp(1)`.
pub fn pin() -> Constraints {
    Constraints::default()
}

/// Constraints pinning the ZeRO stage and the tensor- and pipeline-parallel sizes (the plan tables'
/// usual start): `pin().zero(zero).tp(tp).pp(pp)`.
pub fn pinned(zero: ZeroStage, tp: u32, pp: u32) -> Constraints {
    pin().zero(zero).tp(tp).pp(pp)
}

/// Setters of [`Constraints`] for test tables: each pins one choice and keeps the others.
pub trait Pin: Sized {
    /// The ZeRO stage.
    fn zero(self, z: ZeroStage) -> Self;
    /// The tensor-parallel size.
    fn tp(self, n: u32) -> Self;
    /// The pipeline-parallel size.
    fn pp(self, n: u32) -> Self;
    /// The context-parallel size.
    fn cp(self, n: u32) -> Self;
    /// Context parallelism's communication.
    fn cp_comm(self, c: CpComm) -> Self;
    /// The one recomputation policy allowed.
    fn recompute(self, r: Recompute) -> Self;
    /// The one pipeline schedule allowed.
    fn schedule(self, s: Schedule) -> Self;
    /// Sequence parallelism on or off (`None`: either).
    fn sequence_parallel(self, on: Option<bool>) -> Self;
    /// The engine.
    fn engine(self, e: Stack) -> Self;
    /// The GEMM precision.
    fn precision(self, p: MatmulPrecision) -> Self;
}

impl Pin for Constraints {
    fn zero(self, z: ZeroStage) -> Self {
        Constraints {
            zero: Some(z),
            ..self
        }
    }
    fn tp(self, n: u32) -> Self {
        Constraints {
            tp: Some(n),
            ..self
        }
    }
    fn pp(self, n: u32) -> Self {
        Constraints {
            pp: Some(n),
            ..self
        }
    }
    fn cp(self, n: u32) -> Self {
        Constraints {
            cp: Some(n),
            ..self
        }
    }
    fn cp_comm(self, c: CpComm) -> Self {
        Constraints {
            cp_comm: Some(c),
            ..self
        }
    }
    fn recompute(self, r: Recompute) -> Self {
        Constraints {
            recompute: vec![r],
            ..self
        }
    }
    fn schedule(self, s: Schedule) -> Self {
        Constraints {
            schedules: vec![s],
            ..self
        }
    }
    fn sequence_parallel(self, on: Option<bool>) -> Self {
        Constraints {
            sequence_parallel: on,
            ..self
        }
    }
    fn engine(self, e: Stack) -> Self {
        Constraints {
            engine: Some(e),
            ..self
        }
    }
    fn precision(self, p: MatmulPrecision) -> Self {
        Constraints {
            precision: p,
            ..self
        }
    }
}
