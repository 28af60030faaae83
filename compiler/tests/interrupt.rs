//! Ctrl-C and the time budget at any phase keep what is finished: the binary prints the best plan found so
//! far, writes it to `--out` with `search.complete: false` and `stopped_by`, and exits 0; code generation
//! cut short names the programs not written.
//!
//! The search is made long by its input, not by any test hook: 512 devices and a global batch of 262144
//! sequences give about 4400 candidates with up to 256 micro-batches each, which take about 33 s to cost on
//! one thread (`--threads 1`, measured on a 2-core box). SIGINT is sent once the cost phase has started
//! (its log line is on stderr) and a few candidates have had time to be costed. If the search ends before
//! the signal arrives, the output lacks the interruption notes and the test fails rather than passing.

use crate::common::repo;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an interrupted run left: exit status, stdout, stderr, seconds from SIGINT to exit.
struct Interrupted {
    status: std::process::ExitStatus,
    out: String,
    err: String,
    after_signal: Duration,
}

/// Runs the long search into `out_dir` and sends SIGINT `delay` after the first stderr line containing
/// `trigger`.
fn run_and_interrupt(out_dir: &std::path::Path, trigger: &str, delay: Duration) -> Interrupted {
    let _ = std::fs::remove_dir_all(out_dir);
    let child = crate::common::isolate(&mut Command::new(env!("CARGO_BIN_EXE_moai-compile")))
        .args([
            "plan",
            "models/llama2-13b.onnx",
            "--gpu",
            "mi250",
            "--devices",
            "512",
            "--batch-size",
            "262144",
            "--threads",
            "1",
            "--no-progress",
            // every candidate compiled and costed: a search long enough to interrupt
            "--exhaustive",
            "--out",
        ])
        .arg(out_dir)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts moai-compile");
    let mut guard = Guard(child);
    let pid = guard.0.id();

    // Forward stderr lines to this thread; keep them all for the assertions.
    let stderr = guard.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdout = guard.0.stdout.take().expect("piped stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });

    let mut err_lines = Vec::new();
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let started = line.contains(trigger);
                err_lines.push(line);
                if started {
                    break;
                }
            }
            Err(e) => panic!(
                "no `{trigger}` on stderr ({e:?} after {:?}); stderr so far:\n{}",
                start.elapsed(),
                err_lines.join("\n")
            ),
        }
    }
    std::thread::sleep(delay);
    let sent_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("runs kill");
    assert!(kill.success(), "kill -INT {pid} failed");

    // The interrupted search must end promptly, far sooner than the full search would.
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(30),
            "moai-compile still running 30 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed_after_signal = sent_at.elapsed();
    reader.join().expect("stderr reader");
    err_lines.extend(rx.try_iter());
    let err = err_lines.join("\n");
    let out = stdout_reader.join().expect("stdout reader");
    Interrupted {
        status,
        out,
        err,
        after_signal: elapsed_after_signal,
    }
}

#[test]
fn ctrl_c_prints_and_writes_the_best_plan_so_far() {
    let out_dir = std::env::temp_dir().join(format!("moai-interrupt-{}", std::process::id()));
    // Let the first candidates be costed (each takes milliseconds), then interrupt.
    let Interrupted {
        status,
        out,
        err,
        after_signal: elapsed_after_signal,
    } = run_and_interrupt(
        &out_dir,
        "SelectBestGraphFromCandidates start",
        Duration::from_millis(1500),
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert!(
        err.contains("[warn] interrupted: finishing with the best plan found so far"),
        "no interrupt notice on stderr (did the search end before the signal?):\n{err}"
    );
    assert!(
        status.success(),
        "exit status {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(
            "The search stopped early (interrupted): this is the best plan among those evaluated."
        ),
        "stdout lacks the early-stop note:\n{out}"
    );
    let chosen = out
        .lines()
        .find(|l| l.starts_with("step time "))
        .unwrap_or_else(|| panic!("no prediction line in stdout:\n{out}"));
    assert!(
        elapsed_after_signal < Duration::from_secs(30),
        "{elapsed_after_signal:?}"
    );

    // --out holds the same plan, with the interruption recorded.
    let plan_path = out_dir.join("plan.json");
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(&plan_path)
            .unwrap_or_else(|e| panic!("{}: {e}", plan_path.display())),
    )
    .expect("plan.json parses");
    assert!(
        out.contains(&format!("wrote {}", plan_path.display())),
        "{out}"
    );
    let explanation = plan["explanation"].as_str().expect("explanation");
    assert!(
        explanation.contains("The search stopped early (interrupted)"),
        "{explanation}"
    );
    let not_evaluated = plan["rejected"]["not evaluated (time budget or interrupt)"]
        .as_u64()
        .expect("a count of candidates left unevaluated");
    let candidates = plan["search"]["candidates"].as_u64().expect("candidates");
    assert_eq!(plan["search"]["complete"], false, "{}", plan["search"]);
    assert_eq!(
        plan["search"]["stopped_by"], "interrupt",
        "{}",
        plan["search"]
    );
    assert!(
        not_evaluated > 0 && not_evaluated < candidates,
        "{not_evaluated} of {candidates} not evaluated"
    );
    let step = plan["predicted"]["step_time_s"]
        .as_f64()
        .expect("step time");
    assert!(
        chosen.starts_with(&format!("step time {step:.3} s")),
        "stdout '{chosen}' vs plan.json step time {step}"
    );
    assert_eq!(plan["cluster"]["devices"].as_u64(), Some(512));
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// Ctrl-C while candidates are still being profiled and compiled (before any is costed): the search keeps
/// what is finished (the first profile, a few compiled candidates), costs until one fits, prints that plan
/// and writes it, saying the search was interrupted.
#[test]
fn ctrl_c_while_compiling_candidates_keeps_a_plan() {
    let out_dir = std::env::temp_dir().join(format!("moai-interrupt-c-{}", std::process::id()));
    let r = run_and_interrupt(&out_dir, "Parallel Graph Compile start", Duration::ZERO);
    assert!(!r.err.contains("panicked"), "panicked:\n{}", r.err);
    assert!(
        r.status.success(),
        "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
        r.status,
        r.out,
        r.err
    );
    assert!(
        r.after_signal < Duration::from_secs(30),
        "{:?}",
        r.after_signal
    );
    assert!(
        r.out.contains("The search stopped early (interrupted)"),
        "stdout lacks the early-stop note:\n{}",
        r.out
    );
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("plan.json")).expect("plan.json written"),
    )
    .expect("plan.json parses");
    assert_eq!(plan["search"]["complete"], false, "{}", plan["search"]);
    assert_eq!(plan["search"]["stopped_by"], "interrupt");
    let feasible = plan["search"]["feasible"].as_u64().expect("feasible");
    let candidates = plan["search"]["candidates"].as_u64().expect("candidates");
    assert!(
        feasible >= 1 && feasible < candidates,
        "{feasible} of {candidates}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// A time budget that runs out during the search leaves `--emit mlir` nothing to do: the plan is printed
/// and written with `search.complete: false`, and every stage program is reported as not written.
#[test]
fn time_budget_covers_code_generation() {
    let out_dir = std::env::temp_dir().join(format!("moai-budget-cg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let o = out_dir.to_str().expect("utf-8 temp dir");
    let run = crate::common::moai(&[
        "plan",
        "models/tiny-llama.onnx",
        "--tp",
        "2",
        "--pp",
        "2",
        "--batch-size",
        "32",
        "--seq-len",
        "64",
        "--time-budget",
        "0.000001",
        "--emit",
        "mlir",
        "--json",
        "--out",
        o,
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let printed: Value = serde_json::from_slice(&run.stdout).expect("--json");
    assert_eq!(
        printed["search"]["complete"], false,
        "{}",
        printed["search"]
    );
    assert_eq!(printed["search"]["stopped_by"], "time-budget");
    assert!(err.contains("codegen stopped (time-budget)"), "{err}");
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("plan.json")).expect("plan.json written"),
    )
    .expect("plan.json parses");
    assert_eq!(plan["plan"], printed["plan"]);
    assert_eq!(plan["codegen"]["complete"], false);
    let missing: Vec<&str> = plan["codegen"]["not_written"]
        .as_array()
        .expect("not_written")
        .iter()
        .map(|m| m.as_str().expect("path"))
        .collect();
    assert_eq!(missing.len(), 6, "{missing:?}");
    assert!(missing.contains(&"stage1/backward.mlir"), "{missing:?}");
    for m in &missing {
        assert!(!out_dir.join(m).exists(), "{m}");
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// Ctrl-C during `--emit mlir` code generation (no LLVM needed): the programs finished are written, the
/// ones not started are named as not written on stderr and in `plan.json`'s `codegen`, the plan is printed
/// and written, exit 0. llama2-13b's two-stage programs take about 0.3 s each to emit on one thread; SIGINT
/// is sent when the first is done, so at least the last ones are never started.
#[test]
fn ctrl_c_during_mlir_emission_keeps_the_plan_and_finished_programs() {
    let out_dir = std::env::temp_dir().join(format!("moai-interrupt-cg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let child = crate::common::isolate(&mut Command::new(env!("CARGO_BIN_EXE_moai-compile")))
        .args([
            "plan",
            "models/llama2-13b.onnx",
            "--pp",
            "2",
            "--threads",
            "1",
            "--emit",
            "mlir",
            "--no-progress",
            "--out",
        ])
        .arg(&out_dir)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts moai-compile");
    let mut guard = Guard(child);
    let pid = guard.0.id().to_string();
    let stderr = guard.0.stderr.take().expect("piped stderr");
    let mut stdout = guard.0.stdout.take().expect("piped stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut signalled = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if !signalled && line.contains("codegen [1/6]") {
            let ok = Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("runs kill")
                .success();
            assert!(ok, "kill -INT {pid} failed");
            signalled = true;
        }
        lines.push(line);
    }
    let status = guard.0.wait().expect("waits");
    let out = stdout_reader.join().expect("stdout reader");
    let err = lines.join("\n");
    assert!(signalled, "no program was emitted:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "exit {status:?}:\n{err}");
    assert!(
        !err.contains("codegen [6/6]"),
        "all six programs were emitted:\n{err}"
    );
    assert!(
        err.contains("codegen stopped (interrupt)") && err.contains("not written: stage"),
        "{err}"
    );
    assert!(
        out.contains("wrote "),
        "the plan was not reported as written:\n{out}"
    );
    let plan: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("plan.json")).expect("plan.json written"),
    )
    .expect("plan.json parses");
    assert_eq!(plan["codegen"]["complete"], false, "{}", plan["codegen"]);
    assert_eq!(plan["codegen"]["stopped_by"], "interrupt");
    let missing: Vec<&str> = plan["codegen"]["not_written"]
        .as_array()
        .expect("not_written")
        .iter()
        .map(|m| m.as_str().expect("a path"))
        .collect();
    assert!(!missing.is_empty() && missing.len() < 6, "{missing:?}");
    for m in &missing {
        assert!(
            !out_dir.join(m).exists(),
            "{m} is listed as not written but exists"
        );
    }
    assert!(
        out_dir.join("stage0/forward.mlir").exists(),
        "the finished program was not written"
    );
    // the search itself had finished before the signal
    assert_eq!(plan["search"]["complete"], true, "{}", plan["search"]);
    let _ = std::fs::remove_dir_all(&out_dir);
}
