//! Context parallelism end to end: the issue's long-context check (Llama-3-8B at 128K tokens on 64 H100),
//! the `cp` flags of `estimate`, the plan JSON and the Megatron-LM export.

use crate::common::Cli;
use crate::exports::megatron_validate;
use moai_compiler::export::megatron_args;
use moai_compiler::{Cluster, Gpu, Model, PlanError, PlanRequest, estimate, plan};
use moai_costmodel::CpComm;
use std::path::PathBuf;
use std::sync::OnceLock;

fn llama3_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models/configs/llama3-8b/config.json")
        .display()
        .to_string()
}

fn llama3() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&llama3_path()).expect("the Llama-3-8B config loads"))
}

#[test]
fn llama3_8b_config_has_its_published_size() {
    let s = &llama3().summary;
    assert_eq!(
        (s.layers, s.hidden, s.heads, s.kv_heads, s.ffn, s.vocab),
        (32, 4096, 32, 8, 14336, 128256)
    );
    // 8.03B (Meta's model card): untied 128256 × 4096 embedding and head, 32 GQA layers.
    assert_eq!(s.params, 8_030_261_248);
}

/// Llama-3-8B at 131,072 tokens, batch 16, on 64 H100: the chosen plan splits the sequence (cp > 1),
/// fits, and beats the best plan with cp fixed to 1 (which fits only with full recomputation); its
/// Megatron-LM export carries the cp flags and passes Megatron-LM's argument checks.
#[test]
fn llama3_8b_at_128k_on_64_h100_uses_context_parallelism() {
    let model = llama3();
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let req = PlanRequest::new(16, 131072);
    let report = plan(model, &cluster, &req).expect("a plan");
    let chosen = &report.output;
    let p = &chosen.plan;
    assert!(p.cp > 1, "chosen plan without cp: {}", p.summary_line());
    assert_eq!(p.dp * p.tp * p.pp * p.cp, 64);
    assert!(chosen.fits);
    let usable = cluster.memory_per_device_bytes as f64 * req.memory_fraction;
    assert!((chosen.predicted.peak_memory_bytes as f64) <= usable);
    assert!(chosen.predicted.breakdown.cp_comm_s > 0.0);

    let mut no_cp = req.clone();
    no_cp.constraints.cp = Some(1);
    match plan(model, &cluster, &no_cp) {
        Ok(best) => {
            assert_eq!(best.output.plan.cp, 1);
            assert!(
                chosen.predicted.step_time_s < 0.9 * best.output.predicted.step_time_s,
                "cp {:.2} s vs best without cp {:.2} s",
                chosen.predicted.step_time_s,
                best.output.predicted.step_time_s
            );
        }
        Err(PlanError::NoFeasiblePlan(_)) => {}
        Err(e) => panic!("cp = 1 search failed: {e}"),
    }

    let cx = moai_compiler::emit::export_context(model, &cluster, &req);
    let args = megatron_args(p, &cx).expect("Megatron-LM runs the plan");
    let get = |k: &str| {
        args.iter()
            .find(|(a, _)| a == k)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(get("--context-parallel-size"), Some(p.cp.to_string()));
    assert_eq!(get("--cp-comm-type"), Some(p.cp_comm.to_string()));
    let run = megatron_validate(&args, cx.devices, true).expect("Megatron-LM accepts it");
    assert_eq!((run.tp, run.pp, run.cp, run.dp), (p.tp, p.pp, p.cp, p.dp));
    assert_eq!(run.cp_comm, p.cp_comm.to_string());
    // DeepSpeed and FSDP refuse it in one line.
    for e in [
        moai_costmodel::Stack::Deepspeed,
        moai_costmodel::Stack::Fsdp,
    ] {
        let mut d = moai_compiler::export::PlanDims::of_plan(p, &cx).unwrap();
        // (an overlap switch turned off is refused first by engines without it)
        d.config.tp_comm_overlap = true;
        let why = moai_compiler::export::engine_runs(e, &d).unwrap_err();
        assert!(why.contains("no context parallelism"), "{why}");
    }
}

#[test]
fn estimate_takes_cp_and_checks_it() {
    let model = llama3();
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let req = PlanRequest::new(16, 131072);
    let mut c = moai_compiler::Constraints {
        tp: Some(8),
        cp: Some(8),
        sequence_parallel: Some(true),
        recompute: vec![moai_compiler::Recompute::Selective],
        ..Default::default()
    };
    let cfg = moai_compiler::config::config_for(&c, &cluster, req.batch).unwrap();
    assert_eq!((cfg.dp, cfg.cp, cfg.num_micro_batches), (1, 8, 16));
    let out = estimate(model, &cluster, &cfg, &req).unwrap();
    assert_eq!(out.plan.cp, 8);
    let json = serde_json::to_string(&out.plan).unwrap();
    assert!(
        json.contains(r#""cp":8"#) && !json.contains("cp_comm"),
        "{json}"
    );
    // All-to-all needs cp to divide the heads per tp rank (4 query heads, 1 KV head): refused, naming
    // the numbers.
    c.cp_comm = Some(CpComm::A2a);
    let cfg = moai_compiler::config::config_for(&c, &cluster, req.batch).unwrap();
    let e = estimate(model, &cluster, &cfg, &req)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs the 32 attention heads / tp 8 to be a multiple of cp"),
        "{e}"
    );
    // 2·cp must divide the sequence.
    let odd = PlanRequest::new(16, 131080);
    c.cp_comm = None;
    let cfg = moai_compiler::config::config_for(&c, &cluster, odd.batch).unwrap();
    let e = estimate(model, &cluster, &cfg, &odd)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 2·cp = 16"), "{e}");
}

#[test]
fn the_cli_estimates_and_exports_a_cp_plan() {
    let job = || Cli::estimate(&llama3_path()).on("h100", 64).job(16, 131072);
    let v = job()
        .flag("--tp", 2)
        .flag("--cp", 4)
        .flag("--cp-comm", "a2a")
        .switch("--sequence-parallel")
        .json()
        .ok_json();
    assert_eq!(v["plan"]["cp"], 4);
    assert_eq!(v["plan"]["cp_comm"], "a2a");
    assert_eq!(v["plan"]["dp"], 8);
    assert!(v["predicted"]["breakdown"]["cp_comm_s"].as_f64().unwrap() > 0.0);
    // One error line (besides the logs).
    let err = job().flag("--cp", 3).fails();
    assert!(err.contains("cp 3"), "{err}");
    let err = job().flag("--cp-comm", "ring").fails();
    assert!(err.contains("--cp-comm ring: expected p2p or a2a"), "{err}");
}

/// `smi` on a context-parallel plan: every device appears once, ranks in Megatron-LM's tp-cp-dp-pp order.
#[test]
fn smi_shows_a_cp_plan() {
    let dir = std::env::temp_dir().join(format!("moai-cp-smi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Cli::plan(&llama3_path())
        .on("h100", 64)
        .job(16, 131072)
        .flag("--tp", 2)
        .flag("--cp", 8)
        .flag("--out", dir.display())
        .ok();
    let v = Cli::new("smi", &dir.display().to_string()).json().ok_json();
    let rows = v["devices"].as_array().unwrap();
    assert_eq!(rows.len(), 64);
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
    let (dp, pp) = (
        plan["plan"]["dp"].as_u64().unwrap(),
        plan["plan"]["pp"].as_u64().unwrap(),
    );
    assert_eq!(plan["plan"]["cp"], 8);
    for (rank, r) in rows.iter().enumerate() {
        let rank = rank as u64;
        assert_eq!(r["tp_rank"].as_u64().unwrap(), rank % 2);
        assert_eq!(r["dp_rank"].as_u64().unwrap(), (rank / 16) % dp);
        assert_eq!(r["stage"].as_u64().unwrap(), rank / (16 * dp));
        assert!(r["stage"].as_u64().unwrap() < pp);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plan whose ring attention runs on PyTorch's context parallelism (torchtitan) over 4 ranks or
/// more is told on stderr, and in its JSON's `predicted.known_misses`, that its predictions are known
/// to be fast (torchtitan's Llama 3.1 8B rows at cp 4 and 8 on one host took 24-31% longer), in one
/// line; the same job without context parallelism, with a ring of 2, or on Megatron-LM's ring, is not.
#[test]
fn pytorch_ring_plans_warn_that_predictions_are_fast() {
    let run = |engine: &str, cp: u32| {
        Cli::estimate(&llama3_path())
            .on("h100", 64)
            .job(16, 65536)
            .flag("--tp", 4)
            .switch("--sequence-parallel")
            .flag("--cp", cp)
            .flag("--zero", if engine == "torchtitan" { 3 } else { 1 })
            .flag("--engine", engine)
    };
    let warns = |engine: &str, cp: u32| -> Vec<String> {
        let out = run(engine, cp).run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("known to be slower than predicted"))
            .map(str::to_string)
            .collect()
    };
    assert!(warns("torchtitan", 1).is_empty());
    assert!(warns("torchtitan", 2).is_empty());
    assert!(warns("megatron", 4).is_empty());
    let w = warns("torchtitan", 4);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("[warn] --seq-len 65536 with cp 4 on torchtitan: ")
            && w[0].contains("README: Long context")
    );
    // The JSON carries the same line for library users and scripts, and omits the field when none applies.
    let json = |engine: &str, cp: u32| run(engine, cp).json().ok_json();
    assert!(
        json("megatron", 4)["predicted"]
            .get("known_misses")
            .is_none()
    );
    let v = json("torchtitan", 4);
    let m = v["predicted"]["known_misses"].as_array().unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(format!("[warn] {}", m[0].as_str().unwrap()), w[0]);
}
