//! The overlap switches as plan dimensions: `--overlap` on the command line (estimate and plan), the
//! search trying TP overlap off where Megatron-LM has it, and every export carrying the switches (or
//! refusing a plan whose switch the engine does not have).

use crate::common::{Cli, case, h100};
use crate::exports::check_case;
use moai_compiler::export::{ExportContext, PlanDims, engine_runs, megatron_command_line};
use moai_compiler::{Constraints, Model, Recompute, ZeroStage};
use moai_costmodel::{OverlapSwitch, Stack};
use std::sync::OnceLock;

const MODEL: &str = "llama:layers=16,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000,rope_theta=500000,eps=1e-5";

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(MODEL).unwrap())
}

fn estimate_json(overlap: Option<&str>) -> serde_json::Value {
    let cli = Cli::estimate(MODEL)
        .on("h100", 8)
        .job(16, 2048)
        .flag("--tp", 4)
        .switch("--sequence-parallel")
        .flag("--zero", 1)
        .json();
    match overlap {
        Some(o) => cli.flag("--overlap", o),
        None => cli,
    }
    .ok_json()
}

#[test]
fn estimate_takes_the_switches_and_prints_them_when_off() {
    let on = estimate_json(None);
    let off = estimate_json(Some("tp-comm=off,grad-reduce=off,param-gather=off"));
    assert!(
        on["plan"].get("tp_comm_overlap").is_none(),
        "{}",
        on["plan"]
    );
    assert_eq!(off["plan"]["tp_comm_overlap"], false);
    assert_eq!(off["plan"]["overlap_grad_reduce"], false);
    assert_eq!(off["plan"]["overlap_param_gather"], false);
    let step = |v: &serde_json::Value| v["predicted"]["step_time_s"].as_f64().unwrap();
    let exposed = |v: &serde_json::Value| {
        v["predicted"]["breakdown"]["exposed_comm_s"]
            .as_f64()
            .unwrap()
    };
    assert!(exposed(&off) > exposed(&on));
    assert_ne!(step(&off), step(&on));
    // all=off, then one back on: later entries win.
    let mixed = estimate_json(Some("all=off,grad-reduce=on"));
    assert_eq!(mixed["plan"]["tp_comm_overlap"], false);
    assert_eq!(mixed["plan"]["overlap_param_gather"], false);
    assert!(mixed["plan"].get("overlap_grad_reduce").is_none());
    // Megatron-LM cannot overlap the ZeRO-1 gather without the gradient reduce: refused in one line.
    let e = Cli::estimate(MODEL)
        .on("h100", 8)
        .batch(16)
        .flag("--zero", 1)
        .flag("--engine", "megatron")
        .flag("--overlap", "grad-reduce=off")
        .fails();
    assert!(
        e.contains("--overlap-param-gather needs --overlap-grad-reduce"),
        "{e}"
    );
    // Without --engine the plan goes to DeepSpeed, whose ZeRO-1 has the gradient switch only.
    let ds = Cli::estimate(MODEL)
        .on("h100", 8)
        .batch(16)
        .flag("--zero", 1)
        .flag("--overlap", "grad-reduce=off")
        .json()
        .ok_json();
    assert_eq!(ds["plan"]["engine"], "deepspeed");
    assert_eq!(ds["plan"]["overlap_grad_reduce"], false);
    for (bad, want) in [
        ("tp-comm", "is not SWITCH=on|off"),
        ("tp-comm=maybe", "`maybe` is not on or off"),
        ("dp=off", "unknown overlap switch `dp`"),
    ] {
        let e = Cli::estimate(MODEL)
            .on("h100", 8)
            .flag("--overlap", bad)
            .fails();
        assert!(e.contains(want) && e.contains("--overlap"), "{e}");
    }
    // An engine without the switch does not run the plan, in one line.
    let e = Cli::estimate(MODEL)
        .on("h100", 8)
        .batch(16)
        .flag("--zero", 3)
        .flag("--engine", "fsdp")
        .flag("--overlap", "grad-reduce=off")
        .fails();
    assert!(
        e.contains("no switch to turn off the grad-reduce overlap"),
        "{e}"
    );
}

#[test]
fn the_search_tries_tp_overlap_off_only_where_megatron_has_it() {
    let cluster = h100(16);
    let shape = moai_compiler::space::ModelShape::of(model());
    let space = moai_compiler::space::enumerate(shape, &cluster, 32, 4096, &Constraints::default());
    let mut off = 0;
    for c in &space.candidates {
        if !c.tp_comm_overlap {
            off += 1;
            assert_eq!(c.stack, Stack::Megatron);
            assert!(c.tp > 1 && c.sequence_parallel, "{c:?}");
            let mut on = c.clone();
            on.tp_comm_overlap = true;
            assert!(
                space.candidates.contains(&on),
                "its overlapped twin is a candidate"
            );
        }
        // The other switches stay on unless fixed.
        assert!(c.overlap_grad_reduce && c.overlap_param_gather);
    }
    assert!(off > 0);
    // Fixed by the user: no variants, every candidate carries the value.
    let fixed = Constraints {
        overlap: vec![(OverlapSwitch::TpComm, true)],
        ..Constraints::default()
    };
    let space = moai_compiler::space::enumerate(shape, &cluster, 32, 4096, &fixed);
    assert!(space.candidates.iter().all(|c| c.tp_comm_overlap));
}

#[test]
fn exports_carry_the_switches() {
    // Megatron-LM: the three flags, each only where it applies; read back and estimated by check_case.
    let c = case(
        model(),
        h100(16),
        32,
        Constraints {
            tp: Some(2),
            pp: Some(1),
            sequence_parallel: Some(true),
            zero: Some(ZeroStage::Zero1),
            recompute: vec![Recompute::None],
            ..Constraints::default()
        },
    );
    let (p, _) = check_case(&c);
    let cx: ExportContext = moai_compiler::emit::export_context(c.model, &c.cluster, &c.req);
    let line = megatron_command_line(&p, &cx).unwrap();
    for f in ["--overlap-grad-reduce", "--overlap-param-gather"] {
        assert!(line.contains(f), "{line}");
    }
    assert_eq!(
        line.contains("--tp-comm-overlap"),
        p.tp_comm_overlap,
        "{line}"
    );
    // Switched off by the user: the flags go, and the export still runs as planned.
    let c = case(
        model(),
        h100(16),
        32,
        Constraints {
            tp: Some(2),
            pp: Some(1),
            sequence_parallel: Some(true),
            zero: Some(ZeroStage::Zero1),
            overlap: vec![
                (OverlapSwitch::GradReduce, false),
                (OverlapSwitch::ParamGather, false),
                (OverlapSwitch::TpComm, false),
            ],
            ..Constraints::default()
        },
    );
    let (p, written) = check_case(&c);
    assert!(!p.overlap_grad_reduce && !p.tp_comm_overlap);
    assert_eq!(
        written,
        vec![Stack::Megatron],
        "only Megatron-LM has every switch"
    );
    let line = megatron_command_line(&p, &cx).unwrap();
    assert!(
        !line.contains("--overlap-") && !line.contains("--tp-comm-overlap"),
        "{line}"
    );
    // DeepSpeed: overlap_comm and the ZeRO-3 prefetch bucket; FSDP and torchtitan refuse.
    let c = case(
        model(),
        h100(16),
        32,
        Constraints {
            tp: Some(1),
            pp: Some(1),
            zero: Some(ZeroStage::Zero3),
            recompute: vec![Recompute::Full],
            overlap: vec![
                (OverlapSwitch::GradReduce, false),
                (OverlapSwitch::ParamGather, false),
            ],
            ..Constraints::default()
        },
    );
    let (p, written) = check_case(&c);
    assert!(written.contains(&Stack::Deepspeed), "{written:?}");
    let z = &moai_compiler::export::deepspeed_config(&p, &cx).unwrap()["zero_optimization"];
    assert_eq!(z["overlap_comm"], false);
    assert_eq!(z["stage3_prefetch_bucket_size"], 0);
    let d = PlanDims::of_plan(&p, &cx).unwrap();
    for e in [Stack::Fsdp, Stack::Torchtitan] {
        let why = engine_runs(e, &d).unwrap_err();
        assert!(why.contains("no switch to turn off"), "{why}");
    }
    // Megatron-LM overlaps the parameter gather only with the gradient reduce.
    let mut d2 = d;
    d2.config.overlap_param_gather = true;
    let why = engine_runs(Stack::Megatron, &d2).unwrap_err();
    assert!(
        why.contains("--overlap-param-gather needs --overlap-grad-reduce"),
        "{why}"
    );
}
