//! Hybrid sharding (`dp_shard`, HSDP): the planner chooses a shard group smaller than dp where the
//! network is the wall and the state still fits, keeps full sharding where it does not fit, the
//! exports carry it (Megatron-LM's distributed-optimizer instances, torchtitan's replicate and shard
//! degrees, FSDP's HYBRID_SHARD) or refuse it in one line, and bad `--dp-shard` values are named.

use crate::common::fails;
use crate::common::{Case, case};
use crate::exports::check_case;
use moai_compiler::export::{ExportContext, PlanDims, engine_runs, megatron_args};
use moai_compiler::{
    Cluster, Constraints, Model, ParallelConfig, Recompute, ZeroStage, estimate, plan,
};
use moai_costmodel::Stack;
use std::sync::OnceLock;

/// Llama 3 8B (torchtitan's `llama3 8B` flavor).
fn llama3_8b() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load("llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=128256,rope_theta=500000,eps=1e-5")
            .unwrap()
    })
}

/// Llama-2-70B's layers, 48 of them: 41.6B parameters.
fn llama42b() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load("llama:layers=48,hidden=8192,heads=64,kv_heads=8,ffn=28672,vocab=32000,rope_theta=10000,eps=1e-5")
            .unwrap()
    })
}

/// 64 H100 in servers of 8 on two 100 GbE ports per server (3.125 GB/s per device).
fn slow_network() -> Cluster {
    slow_network_of(64)
}

fn slow_network_of(devices: u32) -> Cluster {
    Cluster::from_json(
        &format!(
            r#"{{"gpu": "h100", "devices": {devices}, "devices_per_server": 8,
                "links": {{"network": {{"bytes_per_s": 3.125e9, "latency_s": 15e-6}}}}}}"#
        ),
        "test",
    )
    .unwrap()
}

/// ZeRO-3, no tp or pp, full recomputation, 4,096-token sequences.
fn zero3_case(model: &'static Model, engine: Option<Stack>, dp_shard: Option<u32>) -> Case {
    let mut c = case(
        model,
        slow_network(),
        64,
        Constraints {
            zero: Some(ZeroStage::Zero3),
            tp: Some(1),
            pp: Some(1),
            cp: Some(1),
            recompute: vec![Recompute::Full],
            engine,
            dp_shard,
            ..Constraints::default()
        },
    );
    c.req.seq = 4096;
    c
}

#[test]
fn shard_groups_inside_a_server_move_the_gathers_onto_nvlink_for_the_same_network_bytes() {
    // Shard groups of one server (Megatron-LM's FSDP with tp 4 and groups of 2; torchtitan's and
    // PyTorch FSDP's HSDP with groups of 8) against full sharding over the slow network. The
    // gathers move onto NVLink and the state grows; the network bytes stay the same under
    // amp-bf16: full sharding's hierarchical collectives send a server's share of the bf16
    // gathers (2 + 2 bytes per parameter) and the fp32 reduce-scatter (4), the shard groups
    // all-reduce their fp32 gradient shards across the replicas (2 × 4 over the group's 8 ranks):
    // 1 byte per parameter per device either way. So the step times agree within 8% (the
    // collectives' latency and ring steps), and the search may pick either (the tie this test once
    // broke in favour of the groups came from gathers priced at the fp32 gradients' width).
    for (engine, tp) in [
        (None, 4u32),
        (Some(Stack::Torchtitan), 1),
        (Some(Stack::Fsdp), 1),
    ] {
        let mut c = zero3_case(llama3_8b(), engine, Some(8 / tp));
        c.req.constraints.tp = Some(tp);
        if engine.is_none() {
            c.req.constraints.recompute = Vec::new();
        }
        let (p, written) = check_case(&c);
        assert!(p.dp_shard > 1 && p.dp_shard < p.dp, "{engine:?}: {p:?}");
        assert_eq!(p.dp_shard * p.tp, 8, "{engine:?}: {p:?}");
        assert_eq!(
            p.engine,
            engine.unwrap_or(Stack::Megatron),
            "{engine:?}: {written:?}"
        );
        assert!(written.contains(&p.engine));
        let hybrid = plan(c.model, &c.cluster, &c.req).unwrap().output;
        let mut full_case = zero3_case(llama3_8b(), engine, Some(p.dp as u32));
        full_case.req.constraints = Constraints {
            dp: Some(p.dp as u32),
            dp_shard: Some(p.dp as u32),
            ..c.req.constraints.clone()
        };
        let full = plan(full_case.model, &full_case.cluster, &full_case.req)
            .unwrap()
            .output;
        assert_eq!(full.plan.dp_shard, 0);
        let (h, f) = (hybrid.predicted.step_time_s, full.predicted.step_time_s);
        assert!((h / f - 1.0).abs() < 0.08, "{engine:?}: {h} vs {f}");
        assert!(
            hybrid.predicted.breakdown.zero3_gather_s
                < 0.5 * full.predicted.breakdown.zero3_gather_s
        );
        assert!(hybrid.predicted.peak_memory_bytes > full.predicted.peak_memory_bytes);
        // plan.json names the group only when it is one.
        let json = serde_json::to_value(&hybrid.plan).unwrap();
        assert_eq!(json["dp_shard"], p.dp_shard);
        assert!(
            serde_json::to_value(&full.plan)
                .unwrap()
                .get("dp_shard")
                .is_none()
        );
    }
    // The default engine order gives a tp 1 ZeRO-3 candidate to DeepSpeed, which keeps it fully
    // sharded: its hybrid twin is rejected by name, not moved to another engine.
    let c = zero3_case(llama3_8b(), None, None);
    let report = plan(c.model, &c.cluster, &c.req).unwrap();
    assert_eq!(report.output.plan.engine, Stack::Deepspeed);
    assert_eq!(report.output.plan.dp_shard, 0);
    assert!(
        report.rejected.contains_key(
            "hybrid sharding: DeepSpeed runs the fully sharded twin but not this shard group"
        ),
        "{:?}",
        report.rejected
    );
}

#[test]
fn the_planner_keeps_full_sharding_when_a_server_cannot_hold_the_state() {
    // 41.6B on two servers: 16 bytes of state per parameter over one server's 8 ranks is 83 GB per
    // device, more than an H100 holds; over all 16 ranks 42 GB.
    let mut c = zero3_case(llama42b(), Some(Stack::Torchtitan), None);
    c.cluster = slow_network_of(16);
    let mut req = c.req.clone();
    req.batch = 16;
    req.seq = 1024;
    let report = plan(c.model, &c.cluster, &req).unwrap();
    assert_eq!(report.output.plan.dp, 16);
    assert_eq!(report.output.plan.dp_shard, 0);
    let cfg = ParallelConfig {
        dp: 16,
        micro_batch_size: report.output.plan.micro_batch_size as u32,
        num_micro_batches: report.output.plan.num_micro_batches as u32,
        recompute: Recompute::Full,
        distribute_param: true,
        distribute_low_prec_param: true,
        distribute_optimizer: true,
        stack: Stack::Torchtitan,
        dp_shard: 8,
        ..ParallelConfig::default()
    };
    let e = estimate(c.model, &c.cluster, &cfg, &req).unwrap();
    assert!(!e.fits, "{}", e.predicted.peak_memory_bytes);
}

#[test]
fn megatron_runs_hybrid_sharding_as_distributed_optimizer_instances() {
    for (zero, engine) in [
        (ZeroStage::Zero1, None),
        (ZeroStage::Zero3, Some(Stack::Megatron)),
    ] {
        let mut c = zero3_case(llama3_8b(), engine, Some(8));
        c.req.constraints.zero = Some(zero);
        let (p, written) = check_case(&c);
        assert_eq!((p.engine, p.dp_shard), (Stack::Megatron, 8), "{p:?}");
        assert!(written.contains(&Stack::Megatron));
        let cx: ExportContext = moai_compiler::emit::export_context(c.model, &c.cluster, &c.req);
        let args = megatron_args(&p, &cx).unwrap();
        assert!(
            args.contains(&(
                "--num-distributed-optimizer-instances".into(),
                Some("8".into())
            )),
            "{args:?}"
        );
    }
}

#[test]
fn engines_without_a_matching_shard_group_refuse_in_one_line() {
    let c = zero3_case(llama3_8b(), Some(Stack::Torchtitan), Some(8));
    let p = plan(c.model, &c.cluster, &c.req).unwrap().output.plan;
    let cx: ExportContext = moai_compiler::emit::export_context(c.model, &c.cluster, &c.req);
    let d = PlanDims::of_plan(&p, &cx).unwrap();
    assert_eq!(d.config.dp_shard, 8);
    let why = engine_runs(Stack::Deepspeed, &d).unwrap_err();
    assert!(why.contains("MiCS_Init") && !why.contains('\n'), "{why}");
    assert!(engine_runs(Stack::Fsdp, &d).is_ok());
    assert!(engine_runs(Stack::Torchtitan, &d).is_ok());
    // FSDP's HYBRID_SHARD is one server per group: 16 ranks is not.
    let mut two_servers = d.clone();
    two_servers.config.dp_shard = 16;
    let why = engine_runs(Stack::Fsdp, &two_servers).unwrap_err();
    assert!(why.contains("HYBRID_SHARD") && !why.contains('\n'), "{why}");
    assert!(engine_runs(Stack::Torchtitan, &two_servers).is_ok());
    // A plan file whose dp_shard does not divide dp, or that shards nothing, is refused by name.
    let mut bad = p.clone();
    bad.dp_shard = 3;
    assert!(
        PlanDims::of_plan(&bad, &cx)
            .unwrap_err()
            .contains("dp_shard 3")
    );
    let mut replicated = p.clone();
    (
        replicated.distribute_param,
        replicated.distribute_low_prec_param,
    ) = (false, false);
    replicated.distribute_optimizer = false;
    assert!(
        PlanDims::of_plan(&replicated, &cx)
            .unwrap_err()
            .contains("needs ZeRO-1 or ZeRO-3")
    );
}

#[test]
fn bad_dp_shard_values_are_named_in_one_line() {
    const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";
    let job = [
        "--gpu",
        "h100",
        "--devices",
        "16",
        "--batch-size",
        "32",
        "--seq-len",
        "128",
    ];
    let with = |cmd: &str, extra: &[&str]| -> Vec<String> {
        [cmd, SMALL]
            .iter()
            .chain(job.iter())
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |v: Vec<String>| fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(with("estimate", &["--zero", "3", "--dp-shard", "3"]));
    assert!(
        e.contains("--dp-shard 3") && e.contains("does not divide dp 16"),
        "{e}"
    );
    let e = run(with("estimate", &["--dp-shard", "8"]));
    assert!(
        e.contains("--dp-shard 8") && e.contains("sharded plan"),
        "{e}"
    );
    let e = run(with("plan", &["--dp-shard", "3"]));
    assert!(
        e.contains("--dp-shard 3 does not divide the 16 devices"),
        "{e}"
    );
    let e = run(with("plan", &["--zero", "0", "--dp-shard", "8"]));
    assert!(e.contains("--dp-shard 8 needs a sharded plan"), "{e}");
    let e = run(with("plan", &["--dp-shard", "0"]));
    assert!(e.contains("dp-shard"), "{e}");
}
