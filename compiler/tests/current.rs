//! The current flavor (`use`, MOAI_FLAVOR, the config file) and `--cluster-file`, through the binary.
//! Every spawned binary gets its own MOAI_CONFIG in a temporary directory: the machine's real
//! ~/.config is never read or written.

use crate::common::{isolate, repo};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";

/// A fresh temporary directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moai-current-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs moai-compile with MOAI_CONFIG = `config` and the extra environment `env`.
fn run(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moai-compile"));
    isolate(&mut c).env("MOAI_CONFIG", config);
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("runs moai-compile")
}

fn ok(o: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "failed: {err}");
    (out, err)
}

fn one_error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    lines[0].to_string()
}

/// A small plan without --flavor: (devices, flavor, first stderr line).
fn plan_without_flavor(config: &Path, env: &[(&str, &str)]) -> (u64, String, String) {
    let o = run(
        config,
        env,
        &[
            "plan",
            SMALL,
            "--batch-size",
            "128",
            "--seq-len",
            "128",
            "--json",
        ],
    );
    let (out, err) = ok(&o);
    let v: serde_json::Value = serde_json::from_str(&out).expect("plan --json");
    (
        v["cluster"]["devices"].as_u64().expect("devices"),
        v["cluster"]["flavor"].as_str().unwrap_or("").to_string(),
        err.lines().next().unwrap_or("").to_string(),
    )
}

#[test]
fn use_then_plan_without_flavor_plans_on_64_gcds() {
    let d = tmp("use8x");
    let cfg = d.join("moai").join("config.toml");
    let (out, _) = ok(&run(&cfg, &[], &["use", "8xLarge.4096GB"]));
    assert!(
        out.contains("The MoAI Accelerator model is successfully switched to \"8xLarge.4096GB\"."),
        "{out}"
    );
    let text = std::fs::read_to_string(&cfg).expect("config written");
    assert!(text.contains("flavor = \"8xLarge.4096GB\""), "{text}");
    let (devices, flavor, first) = plan_without_flavor(&cfg, &[]);
    assert_eq!((devices, flavor.as_str()), (64, "8xLarge.4096GB"));
    assert_eq!(
        first,
        format!(
            "[info] flavor 8xLarge.4096GB on mi250: 64 devices (from the config file {})",
            cfg.display()
        )
    );
    // XDG_CONFIG_HOME is where the file lives when MOAI_CONFIG is not set.
    let mut c = Command::new(env!("CARGO_BIN_EXE_moai-compile"));
    let o = isolate(&mut c)
        .env_remove("MOAI_CONFIG")
        .env("XDG_CONFIG_HOME", &d)
        .args(["smi", "--json"])
        .output()
        .expect("runs");
    let (out, _) = ok(&o);
    assert!(out.contains("\"flavor\": \"8xLarge.4096GB\""), "{out}");
}

#[test]
fn moai_flavor_overrides_the_file_and_the_flag_overrides_both() {
    let d = tmp("prec");
    let cfg = d.join("config.toml");
    ok(&run(&cfg, &[], &["use", "8xLarge.4096GB"]));
    let (devices, _, first) = plan_without_flavor(&cfg, &[("MOAI_FLAVOR", "xLarge.512GB")]);
    assert_eq!(devices, 8);
    assert!(
        first.ends_with("(from MOAI_FLAVOR in the environment)"),
        "{first}"
    );
    let o = run(
        &cfg,
        &[("MOAI_FLAVOR", "xLarge.512GB")],
        &[
            "estimate",
            SMALL,
            "--flavor",
            "Large.256GB",
            "--batch-size",
            "32",
            "--seq-len",
            "128",
            "--json",
        ],
    );
    let (out, err) = ok(&o);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cluster"]["devices"], 4);
    assert!(
        err.lines()
            .next()
            .unwrap()
            .ends_with("(from the command line)"),
        "{err}"
    );
    // Without any of them: the built-in default, said so.
    let (devices, flavor, first) = plan_without_flavor(&d.join("none.toml"), &[]);
    assert_eq!((devices, flavor.as_str()), (32, "4xLarge.2048GB"));
    assert!(first.contains("the built-in default"), "{first}");
    // A bad MOAI_FLAVOR is one line naming it.
    let e = one_error_line(&run(
        &cfg,
        &[("MOAI_FLAVOR", "4xLarg.2048GB")],
        &["plan", SMALL],
    ));
    assert!(
        e.contains("MOAI_FLAVOR: unknown flavor `4xLarg.2048GB` (did you mean `4xLarge.2048GB`?)"),
        "{e}"
    );
}

#[test]
fn corrupt_config_is_one_line_naming_the_file_and_breaks_nothing_else() {
    let d = tmp("corrupt");
    let cfg = d.join("config.toml");
    std::fs::write(&cfg, "flavor = 8xLarge.4096GB\n").unwrap();
    let name = cfg.display().to_string();
    for args in [
        &["plan", SMALL, "--batch-size", "32", "--seq-len", "128"][..],
        &["smi"][..],
        &["use", "xLarge.512GB"][..],
    ] {
        let e = one_error_line(&run(&cfg, &[], args));
        assert!(
            e.starts_with(&format!("error: config file {name}: line 1: `flavor`")),
            "{args:?}: {e}"
        );
    }
    // `use` did not overwrite what it could not read.
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "flavor = 8xLarge.4096GB\n"
    );
    // Commands that do not need it still work.
    ok(&run(
        &cfg,
        &[],
        &[
            "estimate",
            SMALL,
            "--flavor",
            "Large.256GB",
            "--batch-size",
            "32",
            "--seq-len",
            "128",
        ],
    ));
    ok(&run(&cfg, &[], &["inspect", SMALL]));
    let (out, err) = ok(&run(&cfg, &[], &["flavors"]));
    assert!(out.contains("4xLarge.2048GB"), "{out}");
    assert!(
        !out.contains('*'),
        "no star without a readable config: {out}"
    );
    assert!(err.contains(&name), "the warning names the file: {err}");
    // Unwritable: a directory where the file should be.
    let dir_cfg = d.join("is-a-dir");
    std::fs::create_dir_all(dir_cfg.join("x")).unwrap();
    let e = one_error_line(&run(&dir_cfg, &[], &["use", "xLarge.512GB"]));
    assert!(
        e.starts_with(&format!("error: config file {}", dir_cfg.display())),
        "{e}"
    );
}

#[test]
fn flavors_stars_the_current_flavor_and_use_lists_without_a_terminal() {
    let d = tmp("star");
    let cfg = d.join("config.toml");
    ok(&run(&cfg, &[], &["use", "12xLarge.6144GB"]));
    let (out, _) = ok(&run(&cfg, &[], &["flavors"]));
    let starred: Vec<&str> = out.lines().filter(|l| l.contains(" * ")).collect();
    assert_eq!(starred.len(), 1, "{out}");
    assert!(starred[0].starts_with("12xLarge.6144GB "), "{out}");
    let (out, _) = ok(&run(&cfg, &[], &["use"]));
    assert!(
        out.starts_with("Current MoAI Accelerator: 12xLarge.6144GB\n\n1. Small.64GB\n"),
        "{out}"
    );
    assert!(out.contains("\n11. 12xLarge.6144GB  *\n"), "{out}");
    assert_eq!(out.matches('*').count(), 1, "{out}");
    assert!(
        !out.contains("Selection"),
        "no prompt without a terminal: {out}"
    );
    // --gpu keeps the flavor and switches the kind; a flavor without a whole-device mapping is refused.
    let (out, _) = ok(&run(&cfg, &[], &["use", "--gpu", "mi300x"]));
    assert!(
        out.starts_with(
            "The MoAI Accelerator model is successfully switched to \"12xLarge.6144GB\" on mi300x."
        ),
        "{out}"
    );
    assert!(
        out.contains("1. Small.64GB  (no whole-device mapping on mi300x)"),
        "{out}"
    );
    let (devices, _, _) = plan_without_flavor(&cfg, &[]);
    assert_eq!(devices, 24, "12xLarge.6144GB = 24 MI300X");
    let e = one_error_line(&run(&cfg, &[], &["use", "Small.64GB"]));
    assert!(e.contains("no whole-device mapping on mi300x"), "{e}");
    let e = one_error_line(&run(&cfg, &[], &["use", "Huge.1GB"]));
    assert!(e.contains("unknown flavor `Huge.1GB`"), "{e}");
}

/// The interactive selection in a pseudo-terminal (`script` from util-linux runs the binary on one):
/// starting from xLarge.512GB, typing `8` at the prompt switches to 4xLarge.2048GB and the list shows the
/// star on it; `q` quits. Each answer is typed only once the program has printed its prompt.
#[test]
fn interactive_use_in_a_pseudo_terminal() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let d = tmp("pty");
    let cfg = d.join("config.toml");
    ok(&run(&cfg, &[], &["use", "xLarge.512GB"]));
    let bin = env!("CARGO_BIN_EXE_moai-compile");
    let mut c = Command::new("script");
    isolate(&mut c).env("MOAI_CONFIG", &cfg);
    let mut child = c
        .args(["-q", "-e", "-c", &format!("'{bin}' use"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("`script` (util-linux) runs: it provides the pseudo-terminal of this test");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = Arc::clone(&seen);
        let mut stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                seen.lock().unwrap().push_str(&text);
            }
        })
    };
    let prompt = "Selection (1-13, q, Q): ";
    let wait_for = |prompts: usize, child: &mut std::process::Child| {
        let start = Instant::now();
        while seen.lock().unwrap().matches(prompt).count() < prompts {
            if start.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("no prompt #{prompts}: {}", seen.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    wait_for(1, &mut child);
    stdin.write_all(b"8\n").unwrap();
    wait_for(2, &mut child);
    stdin.write_all(b"q\n").unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("`use` did not quit on q: {}", seen.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    assert!(status.success(), "{out}");
    assert!(
        out.starts_with("Current MoAI Accelerator: xLarge.512GB\n"),
        "{out}"
    );
    assert!(out.contains("\n4. xLarge.512GB  *\n"), "{out}");
    let after = out
        .split("The MoAI Accelerator model is successfully switched to \"4xLarge.2048GB\".")
        .nth(1)
        .unwrap_or_else(|| panic!("no switch message: {out}"));
    assert!(
        after.contains("Current MoAI Accelerator: 4xLarge.2048GB\n"),
        "{out}"
    );
    assert!(after.contains("\n8. 4xLarge.2048GB  *\n"), "{out}");
    assert!(
        after.contains("\n4. xLarge.512GB\n"),
        "the old star is gone: {out}"
    );
    assert_eq!(after.matches('*').count(), 1, "{out}");
    assert_eq!(after.matches(prompt).count(), 1, "{out}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("flavor = \"4xLarge.2048GB\""), "{text}");
}

/// A cluster file for the estimate below.
fn write_cluster(d: &Path, name: &str, json: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, json).unwrap();
    p
}

fn estimate_with(cluster: &Path, extra: &[&str]) -> Output {
    let c = cluster.to_str().unwrap();
    let mut args = vec![
        "estimate",
        SMALL,
        "--cluster-file",
        c,
        "--batch-size",
        "48",
        "--seq-len",
        "128",
        "--json",
    ];
    args.extend_from_slice(extra);
    crate::common::moai(&args)
}

#[test]
fn cluster_file_fields_are_honoured() {
    let d = tmp("cluster-ok");
    let f = write_cluster(
        &d,
        "c.json",
        r#"{"gpu": "mi250", "devices": 12, "devices_per_server": 4,
            "memory_per_device_bytes": 34359738368,
            "flavor": "1.5xLarge.768GB",
            "links": {"network": {"bytes_per_s": 1e9, "latency_s": 1e-4, "efficiency": 0.5}}}"#,
    );
    let (out, err) = ok(&estimate_with(&f, &[]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v["cluster"];
    assert_eq!(c["devices"], 12);
    assert_eq!(c["devices_per_server"], 4);
    assert_eq!(c["servers"], 3);
    assert_eq!(c["memory_per_device_bytes"], 34359738368u64);
    assert_eq!(c["flavor"], "1.5xLarge.768GB");
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains(&format!("(from the cluster file {})", f.display())),
        "{err}"
    );
    // The links are used: a faster network makes the same dp=12 step faster.
    let fast = write_cluster(
        &d,
        "fast.json",
        r#"{"gpu": "mi250", "devices": 12, "devices_per_server": 4,
            "links": {"network": {"bytes_per_s": 1e11, "latency_s": 1e-6, "efficiency": 1.0}}}"#,
    );
    let (out2, _) = ok(&estimate_with(&fast, &[]));
    let v2: serde_json::Value = serde_json::from_str(&out2).unwrap();
    let (slow_t, fast_t) = (
        v["predicted"]["step_time_s"].as_f64().unwrap(),
        v2["predicted"]["step_time_s"].as_f64().unwrap(),
    );
    assert!(fast_t < slow_t, "network ignored: {fast_t} vs {slow_t}");
    // devices_per_server bounds tp: tp 6 does not fit servers of 4.
    let e = one_error_line(&estimate_with(&f, &["--tp", "6"]));
    assert!(e.contains("tp 6") && e.contains('4'), "{e}");
    // The memory per device is the file's: smi of a plan on it shows 32768 MiB per device.
    let out_dir = d.join("out");
    let o = crate::common::moai(&[
        "plan",
        SMALL,
        "--cluster-file",
        f.to_str().unwrap(),
        "--batch-size",
        "48",
        "--seq-len",
        "128",
        "--no-progress",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    ok(&o);
    let (out, _) = ok(&crate::common::moai(&[
        "smi",
        out_dir.to_str().unwrap(),
        "--json",
    ]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["accelerator"]["memory_total_mib"], 12 * 32768);
    assert_eq!(s["devices"].as_array().unwrap().len(), 12);
    assert_eq!(s["devices"][11]["server"], 2);
    assert_eq!(s["devices"][11]["device"], 3);
}

#[test]
fn cluster_file_bad_fields_are_rejected_by_name() {
    let d = tmp("cluster-bad");
    let cases = [
        (
            r#"{"gpu":"mi250","devices":8,"links":{"network":{"bytes_per_s":12.5e9,"latency_s":1.5e-5,"efficiency":50}}}"#,
            "`links.network.efficiency` 50 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":0}"#,
            "`devices` 0 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"devices_per_server":0}"#,
            "`devices_per_server` 0 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"memory_per_device_bytes":1000}"#,
            "`memory_per_device_bytes` 1000 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"links":{"pair":{"bytes_per_s":-1,"latency_s":0}}}"#,
            "`links.pair.bytes_per_s` -1 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"links":{"server":{"bytes_per_s":5e10,"latency_s":7}}}"#,
            "`links.server.latency_s` 7 is out of range",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"memory_per_device":1}"#,
            "unknown field `memory_per_device`",
        ),
        (
            r#"{"gpu":"mi250","devices":8,"flavor":"4xLarge.2048GB"}"#,
            "`flavor` 4xLarge.2048GB is 32 mi250 devices, but `devices` is 8",
        ),
        (
            r#"{"gpu":"v100","devices":8}"#,
            "`gpu`: unknown GPU kind `v100`",
        ),
        (r#"{"devices":8}"#, "missing field `gpu`"),
        ("not json", "expected"),
    ];
    for (i, (json, want)) in cases.iter().enumerate() {
        let f = write_cluster(&d, &format!("c{i}.json"), json);
        let e = one_error_line(&estimate_with(&f, &[]));
        assert!(
            e.starts_with(&format!("error: cluster file {}: ", f.display())),
            "{json}: {e}"
        );
        assert!(e.contains(want), "{json}: {e}");
    }
    // Flags that disagree with the file are one line naming both.
    let f = write_cluster(&d, "ok.json", r#"{"gpu":"mi250","devices":8}"#);
    let e = one_error_line(&estimate_with(&f, &["--devices", "16"]));
    assert!(
        e.contains("--devices 16 disagrees with the cluster file"),
        "{e}"
    );
    let e = one_error_line(&estimate_with(&f, &["--gpu", "h100"]));
    assert!(e.contains("its `gpu` is mi250"), "{e}");
    let e = one_error_line(&estimate_with(&f, &["--flavor", "Large.256GB"]));
    assert!(e.contains("`devices` 8"), "{e}");
    let (out, _) = ok(&estimate_with(&f, &["--flavor", "xLarge.512GB"]));
    assert!(out.contains("\"flavor\": \"xLarge.512GB\""), "{out}");
}
