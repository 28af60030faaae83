//! `--offload activations[=N]`: a job that fits nowhere without it fits with it and pays the exposed
//! copies in its step time; the plan JSON carries `offload_activations` (absent when 0); Megatron-LM gets
//! `--cpu-offloading-num-layers` (checked against the pinned argument list) and refuses pipelines and
//! recomputation with it; DeepSpeed, FSDP and torchtitan refuse it in one line; bad counts are one-line
//! errors.

use crate::common::{fails, moai, repo};
use moai_compiler::emit::export_context;
use moai_compiler::export::{PlanDims, engine_runs, megatron_args};
use moai_compiler::request::ActivationOffload;
use moai_compiler::{Cluster, Gpu, Model, PlanRequest, plan};
use moai_costmodel::{Recompute, Stack};

const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";

/// Llama-3-8B (its Hugging Face config) at batch 8 × 16,384 on 8 H100 as pure data parallelism
/// without recomputation: 32 layers of 34·s·h = 2.3 GB of activations do not fit beside the weights.
fn job() -> (Model, Cluster, PlanRequest) {
    let model = Model::load(repo().join("models/configs/llama3-8b").to_str().unwrap()).unwrap();
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let mut req = PlanRequest::new(8, 16384);
    req.constraints.tp = Some(1);
    req.constraints.pp = Some(1);
    req.constraints.cp = Some(1);
    req.constraints.recompute = vec![Recompute::None];
    (model, cluster, req)
}

#[test]
fn a_job_that_fits_nowhere_fits_with_activations_offloaded() {
    let (model, cluster, mut req) = job();
    let e = plan(&model, &cluster, &req).unwrap_err().to_string();
    assert!(e.contains("fits nowhere"), "{e}");
    assert!(!e.contains('\n'));
    req.constraints.offload_activations = ActivationOffload::Auto;
    let report = plan(&model, &cluster, &req).unwrap();
    let out = &report.output;
    assert!(out.fits);
    // every layer but the last, as Megatron-LM counts them
    assert_eq!(out.plan.offload_activations, 31);
    assert_eq!(out.plan.engine, Stack::Megatron);
    let b = &out.predicted.breakdown;
    assert!(b.offload_s > 0.0, "{b:?}");
    assert!(
        out.predicted.step_time_s + 1e-9
            >= b.compute_s + b.exposed_comm_s + b.bubble_s + b.optimizer_s + b.offload_s,
        "the step includes the exposed copies: {} vs {b:?}",
        out.predicted.step_time_s
    );
    assert!(
        report
            .explanation
            .contains("31 decoder layers per stage go to host memory")
    );
    let j = serde_json::to_value(&out.plan).unwrap();
    assert_eq!(j["offload_activations"], 31);

    // Megatron-LM's flag, as the pinned arguments.py names it.
    let cx = export_context(&model, &cluster, &req);
    let args = megatron_args(&out.plan, &cx).unwrap();
    assert!(
        args.iter()
            .any(|(a, v)| a == "--cpu-offloading-num-layers" && v.as_deref() == Some("31")),
        "{args:?}"
    );
    let names =
        std::fs::read_to_string(repo().join("compiler/data/megatron_arguments.txt")).unwrap();
    assert!(
        names
            .lines()
            .any(|l| l.trim() == "--cpu-offloading-num-layers")
    );
    // Every layer offloaded is not what Megatron-LM runs (the count must stay below the layers).
    let mut all = out.plan.clone();
    all.offload_activations = 32;
    let why = megatron_args(&all, &cx).unwrap_err();
    assert!(why.contains("below the layer count"), "{why}");

    // The other engines refuse, each in one line; Megatron-LM refuses pp > 1 and recomputation.
    let d = PlanDims::of_plan(&out.plan, &cx).unwrap();
    for (engine, says) in [
        (Stack::Deepspeed, "cpu_checkpointing"),
        (Stack::Fsdp, "CPUOffload"),
        (Stack::Torchtitan, "no activation-offload key"),
    ] {
        // torchtitan shards data parallelism fully: ask it of the ZeRO-3 twin
        let mut d = d.clone();
        d.config.distribute_param = true;
        let why = engine_runs(engine, &d).unwrap_err();
        assert!(why.contains(says) && !why.contains('\n'), "{engine}: {why}");
    }
    let mut piped = d.clone();
    (piped.config.pp, piped.config.dp) = (2, 4);
    assert!(
        engine_runs(Stack::Megatron, &piped)
            .unwrap_err()
            .contains("pipeline parallelism")
    );
    let mut full = d.clone();
    full.config.recompute = Recompute::Full;
    assert!(
        engine_runs(Stack::Megatron, &full)
            .unwrap_err()
            .contains("recomputation")
    );
    assert!(engine_runs(Stack::Megatron, &d).is_ok());
}

#[test]
fn plain_plans_do_not_change_and_a_fitting_job_keeps_its_activations() {
    // A job that fits without offload: `activations` is tried, and losing time it is not chosen.
    let model = Model::load(SMALL).unwrap();
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let mut req = PlanRequest::new(8, 1024);
    let plain = plan(&model, &cluster, &req).unwrap().output;
    req.constraints.offload_activations = ActivationOffload::Auto;
    let tried = plan(&model, &cluster, &req).unwrap();
    assert_eq!(tried.output.plan.offload_activations, 0);
    assert_eq!(tried.output.plan, plain.plan);
    let j = serde_json::to_string(&plain.plan).unwrap();
    assert!(!j.contains("offload_activations"), "{j}");
}

#[test]
fn activation_offload_flags_are_checked_in_one_line() {
    let base = [
        "--gpu",
        "h100",
        "--devices",
        "8",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
    ];
    let run = |cmd: &str, offload: &str| {
        let mut a = vec![cmd, SMALL];
        a.extend(base);
        a.extend(["--offload", offload]);
        fails(&a)
    };
    for cmd in ["plan", "estimate"] {
        let e = run(cmd, "activations=0");
        assert!(
            e.contains("--offload activations=0: offloads no layer"),
            "{e}"
        );
        let e = run(cmd, "activations=4");
        assert!(
            e.contains("--offload activations=4: at most 3 of the model's 4 decoder layers"),
            "{e}"
        );
        let e = run(cmd, "activations=4000000000000");
        assert!(e.contains("expected a number of decoder layers"), "{e}");
        let e = run(cmd, "disk");
        assert!(
            e.contains("expected optimizer, activations or activations=N"),
            "{e}"
        );
    }
    // pipelined estimate: Megatron-LM does not offload with pp > 1, and no other engine offloads
    let mut a = vec!["estimate", SMALL];
    a.extend(base);
    a.extend(["--pp", "2", "--offload", "activations"]);
    let e = fails(&a);
    assert!(e.contains("pipeline parallelism"), "{e}");
    // estimate with both offloads prints the plan with both fields
    let mut a = vec!["estimate", SMALL];
    a.extend(base);
    a.extend([
        "--zero",
        "1",
        "--offload",
        "optimizer,activations=2",
        "--json",
    ]);
    let out = moai(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["plan"]["offload_activations"], 2, "{j}");
    assert_eq!(j["plan"]["offload_optimizer"], true, "{j}");
}
