//! The current flavor: the virtual accelerator `moai-compile use` switches to and every later command
//! uses without naming it, like the platform's `moreh-switch-model`.
//!
//! The choice (flavor and GPU kind) lives in a small TOML file, `$XDG_CONFIG_HOME/moai/config.toml`, else
//! `~/.config/moai/config.toml`; `MOAI_CONFIG` names another file. `MOAI_FLAVOR` overrides the file's
//! flavor for one command. Precedence: `--flavor` (or `--gpu K --devices N`, or `--cluster-file`) >
//! `MOAI_FLAVOR` > the config file > the built-in default ([`BUILTIN_FLAVOR`] on [`BUILTIN_GPU`]).
//!
//! ```toml
//! # written by `moai-compile use`
//! flavor = "8xLarge.4096GB"
//! gpu = "mi250"
//! ```
//!
//! The file is read only by commands that need it (a command given `--flavor` never opens it); a
//! corrupt or unreadable file is a one-line error naming it.

use crate::cli::ClusterArgs;
use moai_costmodel::flavor::{FLAVORS, devices_for, flavor};
use moai_costmodel::{Cluster, CostError, Gpu};
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The flavor used when no flag, `MOAI_FLAVOR` or config file names one.
pub const BUILTIN_FLAVOR: &str = "4xLarge.2048GB";
/// The GPU kind used when neither `--gpu` nor the config file names one.
pub const BUILTIN_GPU: Gpu = Gpu::Mi250;

/// What can go wrong with the current flavor: every message is one line naming the file or flag.
#[derive(Debug, Error)]
pub enum CurrentError {
    /// Neither `MOAI_CONFIG`, `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error(
        "no place for the config file: set MOAI_CONFIG (a file), XDG_CONFIG_HOME or HOME, or give --flavor"
    )]
    NoConfigPath,
    /// The config file is not the small TOML file `use` writes.
    #[error(
        "config file {path}: line {line}: {reason} (fix it, or delete it and run `moai-compile use`)"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The config file exists but cannot be read.
    #[error("config file {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file cannot be written.
    #[error("config file {path}: cannot write it: {source}")]
    Write {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Flags or environment that contradict each other or name nothing valid.
    #[error("{0}")]
    Invalid(String),
    /// The cost model rejected a flavor, GPU kind or cluster file.
    #[error(transparent)]
    Cost(#[from] CostError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CurrentError>;

/// The environment the current flavor depends on (captured once, so tests can supply their own).
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `MOAI_CONFIG`: the config file itself.
    pub moai_config: Option<OsString>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<OsString>,
    /// `HOME`.
    pub home: Option<OsString>,
    /// `MOAI_FLAVOR`: the flavor for this command.
    pub moai_flavor: Option<String>,
}

fn non_empty(v: Option<OsString>) -> Option<OsString> {
    v.filter(|s| !s.is_empty())
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Env {
        Env {
            moai_config: non_empty(std::env::var_os("MOAI_CONFIG")),
            xdg_config_home: non_empty(std::env::var_os("XDG_CONFIG_HOME")),
            home: non_empty(std::env::var_os("HOME")),
            moai_flavor: std::env::var("MOAI_FLAVOR")
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }

    /// Where the config file is: `MOAI_CONFIG`, else `$XDG_CONFIG_HOME/moai/config.toml` (an absolute
    /// XDG_CONFIG_HOME only, as the XDG spec says), else `$HOME/.config/moai/config.toml`.
    pub fn config_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.moai_config {
            return Ok(PathBuf::from(p));
        }
        if let Some(x) = &self.xdg_config_home {
            let x = PathBuf::from(x);
            if x.is_absolute() {
                return Ok(x.join("moai").join("config.toml"));
            }
        }
        if let Some(h) = &self.home {
            return Ok(PathBuf::from(h)
                .join(".config")
                .join("moai")
                .join("config.toml"));
        }
        Err(CurrentError::NoConfigPath)
    }
}

/// The contents of the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The current flavor (its catalog spelling).
    pub flavor: Option<String>,
    /// The GPU kind the flavor maps to.
    pub gpu: Option<Gpu>,
}

/// Parses one TOML string value (`"..."` with `\"` and `\\` escapes, or `'...'`).
fn toml_string(v: &str) -> std::result::Result<String, String> {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if inner.contains('\'') {
            return Err(format!("bad string {v}"));
        }
        return Ok(inner.to_string());
    }
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| format!("expected a quoted string, found `{v}`"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                other => {
                    return Err(format!(
                        "unsupported escape `\\{}`",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            },
            '"' => return Err(format!("bad string {v}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Strips a `#` comment that is not inside a string.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

impl Config {
    /// Parses the config file's text (`flavor = "..."`, `gpu = "..."`, comments, blank lines); `path`
    /// names the file in errors. Unknown keys, repeated keys, unknown flavors or GPU kinds are errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let corrupt = |line: usize, reason: String| CurrentError::Corrupt {
            path: path.display().to_string(),
            line,
            reason,
        };
        let mut c = Config::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                return Err(corrupt(
                    n,
                    format!(
                        "unexpected table `{line}` (expected flavor = \"...\" and gpu = \"...\")"
                    ),
                ));
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| corrupt(n, format!("expected `key = \"value\"`, found `{line}`")))?;
            let key = key.trim();
            let value = toml_string(value).map_err(|r| corrupt(n, format!("`{key}`: {r}")))?;
            match key {
                "flavor" => {
                    if c.flavor.is_some() {
                        return Err(corrupt(n, "`flavor` given twice".into()));
                    }
                    let f = flavor(&value).map_err(|e| corrupt(n, format!("`flavor`: {e}")))?;
                    c.flavor = Some(f.name.to_string());
                }
                "gpu" => {
                    if c.gpu.is_some() {
                        return Err(corrupt(n, "`gpu` given twice".into()));
                    }
                    let g: Gpu = value
                        .parse()
                        .map_err(|e: CostError| corrupt(n, format!("`gpu`: {e}")))?;
                    c.gpu = Some(g);
                }
                other => {
                    return Err(corrupt(
                        n,
                        format!("unknown key `{other}` (expected flavor, gpu)"),
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The file's text as `use` writes it.
    pub fn render(&self) -> String {
        let mut s = String::from("# moai's current flavor, written by `moai-compile use`\n");
        if let Some(f) = &self.flavor {
            s.push_str(&format!("flavor = \"{f}\"\n"));
        }
        if let Some(g) = self.gpu {
            s.push_str(&format!("gpu = \"{g}\"\n"));
        }
        s
    }

    /// Reads the config file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Config>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| CurrentError::Corrupt {
                    path: path.display().to_string(),
                    line: 1,
                    reason: "not UTF-8 text".into(),
                })?;
                Config::parse(&text, path).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CurrentError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the config file (creating its directory), atomically: a temporary file renamed over it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let werr = |source| CurrentError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.render()).map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })
    }
}

/// Where a flavor (or cluster) came from; the first log line of every command that plans says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--flavor` (or `--gpu K --devices N`).
    Flag,
    /// `--cluster-file`.
    ClusterFile(PathBuf),
    /// `MOAI_FLAVOR`.
    Environment,
    /// The config file `use` wrote.
    ConfigFile(PathBuf),
    /// Nothing named one.
    BuiltinDefault,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("from the command line"),
            Source::ClusterFile(p) => write!(f, "from the cluster file {}", p.display()),
            Source::Environment => f.write_str("from MOAI_FLAVOR in the environment"),
            Source::ConfigFile(p) => write!(f, "from the config file {}", p.display()),
            Source::BuiltinDefault => f.write_str(
                "the built-in default; no --flavor, MOAI_FLAVOR or config file: choose one with `moai-compile use`",
            ),
        }
    }
}

/// The current flavor and GPU kind, and where the flavor came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// Flavor name (catalog spelling).
    pub flavor: String,
    /// GPU kind.
    pub gpu: Gpu,
    /// Where the flavor came from.
    pub source: Source,
}

/// The current flavor without flags: `MOAI_FLAVOR` > config file > built-in default. The GPU kind is the
/// config file's (mi250 without one). Reads the config file unless nothing needs it.
pub fn current(env: &Env) -> Result<Current> {
    let path = env.config_path();
    let file = match &path {
        Ok(p) => Config::load(p)?,
        // No place for a file: nothing to read (an error only where one must be written).
        Err(_) => None,
    };
    let gpu = file.as_ref().and_then(|c| c.gpu).unwrap_or(BUILTIN_GPU);
    if let Some(f) = &env.moai_flavor {
        let fl = flavor(f).map_err(|e| CurrentError::Invalid(format!("MOAI_FLAVOR: {e}")))?;
        return Ok(Current {
            flavor: fl.name.to_string(),
            gpu,
            source: Source::Environment,
        });
    }
    if let (
        Some(Config {
            flavor: Some(f), ..
        }),
        Ok(p),
    ) = (&file, &path)
    {
        return Ok(Current {
            flavor: f.clone(),
            gpu,
            source: Source::ConfigFile(p.clone()),
        });
    }
    Ok(Current {
        flavor: BUILTIN_FLAVOR.to_string(),
        gpu,
        source: Source::BuiltinDefault,
    })
}

fn parse_gpu_flag(s: &str) -> Result<Gpu> {
    s.parse::<Gpu>()
        .map_err(|e| CurrentError::Invalid(format!("--gpu: {e}")))
}

/// The cluster a command runs on: `--cluster-file` (with any of `--flavor`, `--gpu`, `--devices` that
/// must agree with it), `--flavor [--gpu K]`, `--gpu K --devices N`, or else the current flavor. Logs
/// where it came from (the first log line of the command).
pub fn resolve_cluster(a: &ClusterArgs, env: &Env) -> Result<Cluster> {
    let (cluster, source) = resolve_cluster_quiet(a, env)?;
    let what = match &cluster.flavor {
        Some(f) => format!("flavor {f} on {}: {} devices", cluster.gpu, cluster.devices),
        None => format!("{} {} devices", cluster.devices, cluster.gpu),
    };
    tracing::info!("{what} ({source})");
    Ok(cluster)
}

/// [`resolve_cluster`] without the log line: the cluster and where it came from.
pub fn resolve_cluster_quiet(a: &ClusterArgs, env: &Env) -> Result<(Cluster, Source)> {
    if let Some(path) = &a.cluster_file {
        let mut c = Cluster::load(path)?;
        let p = path.display();
        if let Some(g) = &a.gpu {
            let g = parse_gpu_flag(g)?;
            if g != c.gpu {
                return Err(CurrentError::Invalid(format!(
                    "--gpu {g} disagrees with the cluster file {p}: its `gpu` is {}",
                    c.gpu
                )));
            }
        }
        if let Some(n) = a.devices
            && n != c.devices as u64
        {
            return Err(CurrentError::Invalid(format!(
                "--devices {n} disagrees with the cluster file {p}: its `devices` is {}",
                c.devices
            )));
        }
        if let Some(f) = &a.flavor {
            let (fl, n) = devices_for(f, c.gpu)?;
            if n != c.devices {
                return Err(CurrentError::Invalid(format!(
                    "--flavor {} is {n} {} devices, but the cluster file {p} has `devices` {}",
                    fl.name, c.gpu, c.devices
                )));
            }
            c.flavor = Some(fl.name.to_string());
        }
        return Ok((c, Source::ClusterFile(path.clone())));
    }
    match (&a.flavor, &a.gpu, a.devices) {
        (Some(_), _, Some(_)) => Err(CurrentError::Invalid(
            "--flavor and --devices are exclusive: a flavor fixes the device count".into(),
        )),
        (Some(f), g, None) => {
            let gpu = g
                .as_deref()
                .map(parse_gpu_flag)
                .transpose()?
                .unwrap_or(BUILTIN_GPU);
            Ok((Cluster::from_flavor(f, gpu)?, Source::Flag))
        }
        (None, Some(g), Some(n)) => {
            let n = u32::try_from(n)
                .map_err(|_| CurrentError::Invalid(format!("--devices {n}: too many devices")))?;
            Ok((Cluster::new(parse_gpu_flag(g)?, n)?, Source::Flag))
        }
        (None, Some(_), None) => Err(CurrentError::Invalid(
            "--gpu needs --devices N (or use --flavor NAME)".into(),
        )),
        (None, None, Some(_)) => Err(CurrentError::Invalid(format!(
            "--devices needs --gpu K (one of {})",
            Gpu::NAMES
        ))),
        (None, None, None) => {
            let cur = current(env)?;
            let c = Cluster::from_flavor(&cur.flavor, cur.gpu).map_err(|e| match &cur.source {
                Source::ConfigFile(p) => CurrentError::Invalid(format!(
                    "config file {}: {e} (run `moai-compile use` to choose another)",
                    p.display()
                )),
                Source::Environment => CurrentError::Invalid(format!("MOAI_FLAVOR: {e}")),
                _ => CurrentError::Cost(e),
            })?;
            Ok((c, cur.source))
        }
    }
}

/// The numbered catalog as `use` shows it, the current flavor starred; flavors with no whole-device
/// mapping on `gpu` say so.
pub fn numbered_list(current: &str, gpu: Gpu) -> String {
    let mut s = String::new();
    for (i, f) in FLAVORS.iter().enumerate() {
        s.push_str(&format!("{}. {}", i + 1, f.name));
        if f.name == current {
            s.push_str("  *");
        }
        if devices_for(f.name, gpu).is_err() {
            s.push_str(&format!("  (no whole-device mapping on {gpu})"));
        }
        s.push('\n');
    }
    s
}

fn accelerator_line(flavor: &str, gpu: Gpu) -> String {
    if gpu == BUILTIN_GPU {
        format!("Current MoAI Accelerator: {flavor}")
    } else {
        format!("Current MoAI Accelerator: {flavor} on {gpu}")
    }
}

/// What `use` switches between: the flavor and GPU kind it starts from, and where it saves them.
#[derive(Clone, Debug)]
pub struct Switcher {
    /// The config file.
    pub path: PathBuf,
    /// What the file holds now (defaults filled in).
    pub flavor: String,
    /// GPU kind.
    pub gpu: Gpu,
}

impl Switcher {
    /// Loads the config file (a corrupt one is an error: `use` does not overwrite what it cannot read).
    pub fn open(env: &Env) -> Result<Switcher> {
        let path = env.config_path()?;
        let c = Config::load(&path)?.unwrap_or_default();
        Ok(Switcher {
            path,
            flavor: c.flavor.unwrap_or_else(|| BUILTIN_FLAVOR.to_string()),
            gpu: c.gpu.unwrap_or(BUILTIN_GPU),
        })
    }

    /// Switches to `flavor` (and `gpu` when given) and saves; returns the success line.
    pub fn switch(&mut self, flavor_name: &str, gpu: Option<Gpu>) -> Result<String> {
        let gpu = gpu.unwrap_or(self.gpu);
        let (f, _) = devices_for(flavor_name, gpu)?;
        Config {
            flavor: Some(f.name.to_string()),
            gpu: Some(gpu),
        }
        .save(&self.path)?;
        self.flavor = f.name.to_string();
        self.gpu = gpu;
        let on = if gpu == BUILTIN_GPU {
            String::new()
        } else {
            format!(" on {gpu}")
        };
        Ok(format!(
            "The MoAI Accelerator model is successfully switched to \"{}\"{on}.",
            f.name
        ))
    }

    /// The current accelerator line, a blank line and the numbered list.
    pub fn listing(&self) -> String {
        format!(
            "{}\n\n{}",
            accelerator_line(&self.flavor, self.gpu),
            numbered_list(&self.flavor, self.gpu)
        )
    }

    /// The interactive selection: the list, then `Selection (1-N, q, Q): ` until `q`, `Q` or end of
    /// input. A number switches and prints the list again; anything else re-prompts with one line.
    pub fn interactive(&mut self, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
        let io = |source| CurrentError::Write {
            path: "standard output".into(),
            source,
        };
        let n = FLAVORS.len();
        write!(out, "{}", self.listing()).map_err(io)?;
        loop {
            write!(out, "\nSelection (1-{n}, q, Q): ").map_err(io)?;
            out.flush().map_err(io)?;
            let mut line = String::new();
            if input.read_line(&mut line).map_err(io)? == 0 {
                writeln!(out).map_err(io)?;
                return Ok(());
            }
            let answer = line.trim();
            if answer == "q" || answer == "Q" {
                return Ok(());
            }
            match answer.parse::<usize>() {
                Ok(k) if (1..=n).contains(&k) => match self.switch(FLAVORS[k - 1].name, None) {
                    Ok(msg) => {
                        writeln!(out, "{msg}\n").map_err(io)?;
                        write!(out, "{}", self.listing()).map_err(io)?;
                    }
                    Err(CurrentError::Cost(e)) => writeln!(out, "{e}").map_err(io)?,
                    Err(e) => return Err(e),
                },
                _ => writeln!(
                    out,
                    "Invalid selection \"{answer}\": enter a number from 1 to {n}, q or Q."
                )
                .map_err(io)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moai-current-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn env_with(config: &Path) -> Env {
        Env {
            moai_config: Some(config.into()),
            ..Env::default()
        }
    }

    #[test]
    fn config_path_precedence() {
        let e = Env {
            moai_config: Some("/a/c.toml".into()),
            xdg_config_home: Some("/x".into()),
            home: Some("/h".into()),
            moai_flavor: None,
        };
        assert_eq!(e.config_path().unwrap(), PathBuf::from("/a/c.toml"));
        let e = Env {
            moai_config: None,
            ..e
        };
        assert_eq!(
            e.config_path().unwrap(),
            PathBuf::from("/x/moai/config.toml")
        );
        let e = Env {
            xdg_config_home: Some("relative".into()),
            ..e
        };
        assert_eq!(
            e.config_path().unwrap(),
            PathBuf::from("/h/.config/moai/config.toml")
        );
        assert!(matches!(
            Env::default().config_path(),
            Err(CurrentError::NoConfigPath)
        ));
    }

    #[test]
    fn parse_and_render_round_trip() {
        let p = Path::new("c.toml");
        let c = Config::parse(
            "# comment\n\nflavor = \"8xlarge.4096gb\" # trailing\ngpu = 'MI300X'\n",
            p,
        )
        .unwrap();
        assert_eq!(c.flavor.as_deref(), Some("8xLarge.4096GB"));
        assert_eq!(c.gpu, Some(Gpu::Mi300x));
        assert_eq!(Config::parse(&c.render(), p).unwrap(), c);
    }

    #[test]
    fn corrupt_files_name_the_file_and_line() {
        let p = Path::new("/cfg/moai.toml");
        for (text, want) in [
            (
                "flavor = 4xLarge\n",
                "line 1: `flavor`: expected a quoted string",
            ),
            (
                "\nflavor = \"9xHuge\"\n",
                "line 2: `flavor`: unknown flavor `9xHuge`",
            ),
            ("gpu = \"tpu\"\n", "line 1: `gpu`: unknown GPU kind `tpu`"),
            ("colour = \"red\"\n", "line 1: unknown key `colour`"),
            ("[moai]\n", "line 1: unexpected table"),
            ("garbage\n", "line 1: expected `key = \"value\"`"),
            (
                "gpu = \"h100\"\ngpu = \"a100\"\n",
                "line 2: `gpu` given twice",
            ),
        ] {
            let e = Config::parse(text, p).unwrap_err().to_string();
            assert!(e.starts_with("config file /cfg/moai.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn precedence_env_over_file_over_default() {
        let d = tmp("prec");
        let cfg = d.join("config.toml");
        let mut env = env_with(&cfg);
        let c = current(&env).unwrap();
        assert_eq!(
            (c.flavor.as_str(), c.gpu, c.source),
            (BUILTIN_FLAVOR, Gpu::Mi250, Source::BuiltinDefault)
        );
        Switcher::open(&env)
            .unwrap()
            .switch("8xLarge.4096GB", None)
            .unwrap();
        let c = current(&env).unwrap();
        assert_eq!(c.flavor, "8xLarge.4096GB");
        assert_eq!(c.source, Source::ConfigFile(cfg.clone()));
        env.moai_flavor = Some("xlarge.512gb".into());
        let c = current(&env).unwrap();
        assert_eq!(
            (c.flavor.as_str(), c.source),
            ("xLarge.512GB", Source::Environment)
        );
        // The flag wins over both.
        let args = ClusterArgs {
            flavor: Some("Large.256GB".into()),
            gpu: None,
            devices: None,
            cluster_file: None,
        };
        let (cl, src) = resolve_cluster_quiet(&args, &env).unwrap();
        assert_eq!((cl.devices, src), (4, Source::Flag));
        let none = ClusterArgs {
            flavor: None,
            ..args
        };
        assert_eq!(resolve_cluster_quiet(&none, &env).unwrap().0.devices, 8);
        env.moai_flavor = None;
        assert_eq!(resolve_cluster_quiet(&none, &env).unwrap().0.devices, 64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_flag_never_reads_a_corrupt_file() {
        let d = tmp("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, "flavor = [\n").unwrap();
        let env = env_with(&cfg);
        let flag = ClusterArgs {
            flavor: Some("Large.256GB".into()),
            gpu: None,
            devices: None,
            cluster_file: None,
        };
        assert!(resolve_cluster_quiet(&flag, &env).is_ok());
        let none = ClusterArgs {
            flavor: None,
            ..flag
        };
        let e = resolve_cluster_quiet(&none, &env).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}: line 1", cfg.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unwritable_config_is_one_line() {
        let d = tmp("ro");
        std::fs::create_dir_all(&d).unwrap();
        // A directory where the file should be: cannot be replaced by a file.
        let cfg = d.join("config.toml");
        std::fs::create_dir_all(cfg.join("x")).unwrap();
        let env = env_with(&cfg);
        let e = Switcher::open(&env).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}", cfg.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn interactive_selection() {
        let d = tmp("inter");
        let env = env_with(&d.join("c.toml"));
        let mut s = Switcher::open(&env).unwrap();
        let mut out = Vec::new();
        s.interactive(&mut "x\n99\n10\nq\n".as_bytes(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Current MoAI Accelerator: 4xLarge.2048GB\n\n1. Small.64GB\n"));
        assert!(text.contains("8. 4xLarge.2048GB  *\n"), "{text}");
        assert_eq!(text.matches("Selection (1-13, q, Q): ").count(), 4);
        assert!(text.contains("Invalid selection \"x\": enter a number from 1 to 13, q or Q.\n"));
        assert!(text.contains("Invalid selection \"99\""));
        assert!(text.contains("successfully switched to \"8xLarge.4096GB\""));
        assert!(text.contains("10. 8xLarge.4096GB  *\n"), "{text}");
        assert_eq!(
            current(&env).unwrap().flavor,
            "8xLarge.4096GB",
            "the choice persists"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn cluster_file_must_agree_with_flags() {
        let d = tmp("cf");
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("c.json");
        std::fs::write(&f, r#"{"gpu":"mi250","devices":16,"devices_per_server":4}"#).unwrap();
        let env = env_with(&d.join("none.toml"));
        let a = |flavor: Option<&str>, gpu: Option<&str>, devices: Option<u64>| ClusterArgs {
            flavor: flavor.map(String::from),
            gpu: gpu.map(String::from),
            devices,
            cluster_file: Some(f.clone()),
        };
        let (c, src) = resolve_cluster_quiet(&a(None, None, None), &env).unwrap();
        assert_eq!((c.devices, c.devices_per_server, c.servers), (16, 4, 4));
        assert_eq!(src, Source::ClusterFile(f.clone()));
        let (c, _) = resolve_cluster_quiet(&a(Some("2xLarge.1024GB"), None, None), &env).unwrap();
        assert_eq!(c.flavor.as_deref(), Some("2xLarge.1024GB"));
        let e = resolve_cluster_quiet(&a(Some("4xLarge.2048GB"), None, None), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`devices` 16"), "{e}");
        let e = resolve_cluster_quiet(&a(None, Some("h100"), None), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its `gpu` is mi250"), "{e}");
        let e = resolve_cluster_quiet(&a(None, None, Some(8)), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its `devices` is 16"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
