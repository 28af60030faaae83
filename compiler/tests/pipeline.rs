//! Pipeline schedules and stages: zero-bubble schedules (the backward split into input- and
//! weight-gradient passes), uneven first and last stages, and recomputation chosen per stage.

use crate::common::Cli;
use moai_compiler::export::{PlanDims, engine_runs};
use moai_compiler::html::plan_timeline;
use moai_compiler::search::train_options;
use moai_compiler::{
    Cluster, Constraints, CostModel, Gpu, Model, ParallelConfig, PlanRequest, ProfiledCostModel,
    Recompute, Schedule, ZeroStage, estimate, plan,
};
use moai_costmodel::pipeline::Pass;
use moai_costmodel::{Estimate, Stack};

/// 16 Llama-3-8B-sized layers on 8 H100s as dp 2 × pp 4, eight micro-batches per step.
const MODEL: &str = "llama:layers=16,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000";

fn model(spec: &str) -> Model {
    Model::load(spec).expect("the spec builds")
}

fn config(schedule: Schedule) -> ParallelConfig {
    ParallelConfig {
        dp: 2,
        pp: 4,
        micro_batch_size: 1,
        num_micro_batches: 8,
        schedule,
        ..ParallelConfig::default()
    }
}

/// The cost model's estimate (with its stage times) of `cfg`.
fn estimate_of(m: &Model, cluster: &Cluster, req: &PlanRequest, cfg: &ParallelConfig) -> Estimate {
    let p = moai_ir::train::step_profile(
        &m.graph,
        &train_options(req, cfg.recompute),
        cfg.micro_batch_size as u64,
        req.seq,
    )
    .expect("profile");
    ProfiledCostModel::new()
        .estimate(&p, cluster, cfg)
        .expect("estimate")
}

#[test]
fn zb_h1_has_a_smaller_bubble_than_1f1b_for_the_same_plan() {
    let m = model(MODEL);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let req = PlanRequest::new(16, 2048);
    let one = estimate(&m, &cluster, &config(Schedule::OneFOneB), &req).expect("1f1b");
    let zb = estimate(&m, &cluster, &config(Schedule::ZeroBubbleH1), &req).expect("zb-h1");
    assert_eq!(zb.plan.schedule, "zb-h1");
    let (b1, bz) = (
        one.predicted.breakdown.bubble_s,
        zb.predicted.breakdown.bubble_s,
    );
    eprintln!(
        "bubble 1f1b {b1:.5} s, zb-h1 {bz:.5} s; step {:.5} s vs {:.5} s",
        one.predicted.step_time_s, zb.predicted.step_time_s
    );
    assert!(b1 > 0.0);
    // The paper: ZB-H1's bubble is (p−1)(F+B−W) against 1F1B's (p−1)(F+B+W) (a third when F = B =
    // W, see the costmodel's pipeline tests); here W, the weight-gradient GEMMs, is about a fifth of
    // a stage's F+B+W (attention backward and the input-gradient GEMMs are B), so about 0.6–0.7.
    assert!(bz < 0.8 * b1, "zb-h1 bubble {bz} vs 1f1b {b1}");
    assert!(zb.predicted.step_time_s < one.predicted.step_time_s);
    // Same in-flight micro-batches as 1F1B's first stage: the peak does not grow past it.
    assert!(zb.fits && one.fits);

    // The timeline the report draws shows B and W tasks, W filling the cool-down.
    let cfg = ParallelConfig {
        stack: Stack::Megatron,
        ..config(Schedule::ZeroBubbleH1)
    };
    let e = estimate_of(&m, &cluster, &req, &cfg);
    eprintln!("stage times {:?}", e.stage_times);
    assert!(
        e.stage_times
            .iter()
            .all(|s| s.weight_grad_s > 0.0 && s.weight_grad_s < s.backward_s),
        "every stage has a W part: {:?}",
        e.stage_times
    );
    // The simulated bubble follows the paper's formula for these stage times, on a pipeline of equal
    // stages (the formula's assumption: here the last stage also runs the LM head and is heavier) with
    // free transfers.
    let st = e.stage_times[1];
    let (f, w) = (st.forward_s, st.weight_grad_s);
    let b = st.backward_s - w;
    let equal = vec![st; 4];
    let sim = |s| moai_costmodel::pipeline::simulate(s, &equal, 4, 8, 0.0).unwrap();
    let ratio = sim(Schedule::ZeroBubbleH1).bubble_s / sim(Schedule::OneFOneB).bubble_s;
    let paper = (f + b - w) / (f + b + w);
    assert!(
        (ratio - paper).abs() < 1e-3 * paper,
        "{ratio} vs the paper's {paper}"
    );
    let ev = plan_timeline(&cfg, &e).expect("timeline");
    for pass in [Pass::Forward, Pass::InputGrad, Pass::WeightGrad] {
        assert!(ev.iter().any(|t| t.pass == pass), "{pass:?} tasks");
    }
    let w_last = ev
        .iter()
        .filter(|t| t.device == 3 && t.pass == Pass::WeightGrad)
        .map(|t| t.end_s)
        .fold(0.0, f64::max);
    let b_last = ev
        .iter()
        .filter(|t| t.device == 3 && t.pass == Pass::InputGrad)
        .map(|t| t.end_s)
        .fold(0.0, f64::max);
    assert!(
        w_last > b_last,
        "the last stage's deferred W passes run after its last B"
    );
    let one_cfg = ParallelConfig {
        stack: Stack::Megatron,
        ..config(Schedule::OneFOneB)
    };
    let e1 = estimate_of(&m, &cluster, &req, &one_cfg);
    let idle = |ev: &[moai_costmodel::pipeline::TaskEvent], d: usize| {
        let end = ev.iter().map(|t| t.end_s).fold(0.0, f64::max);
        end - ev
            .iter()
            .filter(|t| t.device == d)
            .map(|t| t.end_s - t.start_s)
            .sum::<f64>()
    };
    let ev1 = plan_timeline(&one_cfg, &e1).expect("timeline");
    assert!(
        idle(&ev, 0) < idle(&ev1, 0),
        "stage 0 idles less under zb-h1"
    );
}

#[test]
fn the_report_draws_b_and_w_tasks_of_a_zero_bubble_plan() {
    let m = model(MODEL);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let mut req = PlanRequest::new(16, 2048);
    req.constraints = Constraints {
        pp: Some(4),
        dp: Some(2),
        micro_batch_size: Some(1),
        recompute: vec![Recompute::None],
        zero: Some(ZeroStage::Zero1),
        schedules: vec![Schedule::ZeroBubbleH1],
        ..Constraints::default()
    };
    let report = plan(&m, &cluster, &req).expect("zb-h1 is planned when asked for");
    assert_eq!(report.output.plan.schedule, "zb-h1");
    let html = moai_compiler::html::render(&report, &cluster, &req);
    assert!(html.contains("<title>W "), "W tasks drawn");
    assert!(html.contains("<title>B "), "B tasks drawn");
    assert!(html.contains("weight-gradient pass W"), "legend");
    // No engine exports it yet: Megatron-LM refuses in one line.
    let d = PlanDims::of_config(
        &ParallelConfig {
            stack: Stack::Megatron,
            ..config(Schedule::ZeroBubbleH1)
        },
        &cluster,
    );
    let why = engine_runs(Stack::Megatron, &d).unwrap_err();
    assert!(
        why.contains("no zero-bubble") && !why.contains('\n'),
        "{why}"
    );
    // Without asking, the search does not enumerate zero-bubble schedules.
    req.constraints.schedules = Vec::new();
    let report = plan(&m, &cluster, &req).expect("a plan");
    assert!(!report.output.plan.schedule.starts_with("zb"));
}

#[test]
fn zbv_puts_two_chunks_per_device_in_a_v_and_fits_like_1f1b() {
    let m = model(MODEL);
    let cluster = Cluster::new(Gpu::H100, 8).unwrap();
    let req = PlanRequest::new(32, 2048);
    let cfg = |s| ParallelConfig {
        num_micro_batches: 16,
        ..config(s)
    };
    let one = estimate(&m, &cluster, &cfg(Schedule::OneFOneB), &req).expect("1f1b");
    let v = estimate(&m, &cluster, &cfg(Schedule::ZeroBubbleV), &req).expect("zbv");
    let h = estimate(&m, &cluster, &cfg(Schedule::ZeroBubbleH1), &req).expect("zb-h1");
    // The plan lists zbv's 8 virtual stages in layer order; memory and compute stay per device.
    assert_eq!(v.plan.stages.len(), 8);
    assert_eq!(v.plan.stages[7].layers, [14, 15]);
    assert_eq!(v.predicted.stages.len(), 4);
    let b = |o: &moai_compiler::PlanOutput| o.predicted.breakdown.bubble_s;
    eprintln!("bubble 1f1b {} zb-h1 {} zbv {}", b(&one), b(&h), b(&v));
    assert!(b(&v) < b(&one));
    // Device 0 holds the first chunk (embedding, up to 2·pp − 1 micro-batches of half a stage) and the
    // last (head, about one): about 1F1B's first stage, as the paper states, plus the head's logits.
    let acts = |o: &moai_compiler::PlanOutput| o.predicted.stages[0].activations_bytes as f64;
    assert!(
        acts(&v) >= 0.8 * acts(&one),
        "{} vs {}",
        acts(&v),
        acts(&one)
    );
    assert!(
        acts(&v) <= 1.15 * acts(&one),
        "{} vs {}",
        acts(&v),
        acts(&one)
    );
}

/// A large vocabulary makes the head as costly as several decoder layers.
const BIG_VOCAB: &str = "llama:layers=16,hidden=1024,heads=8,kv_heads=8,ffn=2816,vocab=128000";

#[test]
fn uneven_stages_are_chosen_where_faster_and_exported_with_megatrons_flags() {
    let m = model(BIG_VOCAB);
    let cluster = Cluster::new(Gpu::H100, 4).unwrap();
    let mut req = PlanRequest::new(16, 2048);
    req.constraints = Constraints {
        pp: Some(4),
        tp: Some(1),
        micro_batch_size: Some(1),
        recompute: vec![Recompute::None],
        zero: Some(ZeroStage::Zero0),
        schedules: vec![Schedule::OneFOneB],
        ..Constraints::default()
    };
    let report = plan(&m, &cluster, &req).expect("a plan");
    let p = &report.output.plan;
    let sizes: Vec<u32> = p
        .stages
        .iter()
        .map(|s| s.layers[1] - s.layers[0] + 1)
        .collect();
    eprintln!("stages {sizes:?}");
    assert_eq!(sizes.len(), 4);
    assert!(
        sizes[3] < sizes[1],
        "the last stage, holding the LM head, gets fewer layers: {sizes:?}"
    );
    // The even split of the same plan is predicted slower.
    let best = &report.search.evaluated[report.search.best];
    let even = ParallelConfig {
        stages: Vec::new(),
        ..best.config.clone()
    };
    let e = estimate(&m, &cluster, &even, &req).expect("even split");
    assert!(
        report.output.predicted.step_time_s < e.predicted.step_time_s,
        "uneven {} s vs even {} s",
        report.output.predicted.step_time_s,
        e.predicted.step_time_s
    );
    // Megatron-LM runs it with its uneven-pipeline flags (first/last stage layer counts, or a layout).
    let cx = moai_compiler::emit::export_context(&m, &cluster, &req);
    let line = moai_compiler::export::megatron_command_line(p, &cx).expect("exported");
    assert!(
        line.contains("--decoder-last-pipeline-num-layers")
            || line.contains("--pipeline-model-parallel-layout"),
        "{line}"
    );
}

/// A 36-layer model of Llama-2-7B width at sequence 4096 on 4 H100s as a 4-stage pipeline: activations dominate the first stage.
const LONG: &str = "llama:layers=36,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000";

#[test]
fn recomputation_per_stage_fits_where_uniform_none_does_not_and_beats_uniform_full() {
    let m = model(LONG);
    let cluster = Cluster::new(Gpu::H100, 4).unwrap();
    let req = PlanRequest::new(32, 4096);
    let base = ParallelConfig {
        dp: 1,
        pp: 4,
        micro_batch_size: 2,
        num_micro_batches: 16,
        distribute_optimizer: false,
        ..ParallelConfig::default()
    };
    let with = |recompute, stage_recompute: Vec<Recompute>| ParallelConfig {
        recompute,
        stage_recompute,
        ..base.clone()
    };
    let none = estimate(&m, &cluster, &with(Recompute::None, vec![]), &req).expect("none");
    let full = estimate(&m, &cluster, &with(Recompute::Full, vec![]), &req).expect("full");
    let f = Recompute::Full;
    let n = Recompute::None;
    let mixed = estimate(&m, &cluster, &with(f, vec![f, n, n, n]), &req).expect("mixed");
    let gib = |o: &moai_compiler::PlanOutput| o.predicted.peak_memory_bytes as f64 / 2f64.powi(30);
    eprintln!(
        "none {:.3} s {:.1} GiB fits {}; full {:.3} s {:.1} GiB; mixed {:.3} s {:.1} GiB fits {}",
        none.predicted.step_time_s,
        gib(&none),
        none.fits,
        full.predicted.step_time_s,
        gib(&full),
        mixed.predicted.step_time_s,
        gib(&mixed),
        mixed.fits
    );
    assert!(!none.fits, "uniform none does not fit");
    assert!(full.fits && mixed.fits);
    assert!(mixed.predicted.step_time_s < full.predicted.step_time_s);
    assert_eq!(mixed.plan.stage_recompute, vec![f, n, n, n]);
    // Stage 0 recomputes (its activations are a layer input per layer), the others keep theirs.
    let s = &mixed.predicted.stages;
    assert!(s[0].activations_bytes < s[1].activations_bytes, "{s:?}");
    // No engine expresses the mix: Megatron-LM refuses in one line.
    let d = PlanDims::of_config(&with(f, vec![f, n, n, n]), &cluster);
    let why = engine_runs(Stack::Megatron, &d).unwrap_err();
    assert!(why.contains("per-stage recomputation mix"), "{why}");
}

#[test]
fn the_search_chooses_a_per_stage_mix_when_asked_and_the_uniform_policy_does_not_fit() {
    let m = model(LONG);
    let cluster = Cluster::new(Gpu::H100, 4).unwrap();
    let mut req = PlanRequest::new(32, 4096);
    req.constraints = Constraints {
        dp: Some(1),
        pp: Some(4),
        micro_batch_size: Some(2),
        recompute: vec![Recompute::None, Recompute::Full],
        zero: Some(ZeroStage::Zero0),
        schedules: vec![Schedule::OneFOneB],
        ..Constraints::default()
    };
    let uniform = plan(&m, &cluster, &req).expect("uniform full fits");
    assert_eq!(uniform.output.plan.recompute, Recompute::Full);
    assert!(uniform.output.plan.stage_recompute.is_empty());
    req.constraints.stage_recompute_mixes = true;
    let mixed = plan(&m, &cluster, &req).expect("a plan");
    let p = &mixed.output.plan;
    eprintln!(
        "uniform {:.3} s, mixed {:.3} s {:?} stages {:?}",
        uniform.output.predicted.step_time_s,
        mixed.output.predicted.step_time_s,
        p.stage_recompute,
        p.stages
    );
    assert_eq!(p.stage_recompute.first(), Some(&Recompute::Full));
    assert_eq!(p.stage_recompute.last(), Some(&Recompute::None));
    assert!(mixed.output.predicted.step_time_s < uniform.output.predicted.step_time_s);
    assert!(mixed.output.fits);
    assert!(
        mixed
            .explanation
            .contains("recompute per stage full/none/none/none")
            && mixed
                .explanation
                .contains("no export engine runs its per-stage recomputation"),
        "{}",
        mixed.explanation
    );
    assert!(
        mixed.output.plan.summary_line().contains("per stage [full"),
        "{}",
        mixed.output.plan.summary_line()
    );
}

#[test]
fn estimate_on_the_command_line_reports_the_smaller_bubble() {
    let bubble = |schedule: &str| {
        let v: serde_json::Value = Cli::estimate(MODEL)
            .on("h100", 8)
            .job(16, 2048)
            .flag("--pp", 4)
            .flag("--schedule", schedule)
            .json()
            .ok_json();
        assert_eq!(v["plan"]["schedule"], schedule);
        v["predicted"]["breakdown"]["bubble_s"]
            .as_f64()
            .expect("bubble")
    };
    let (one, zb) = (bubble("1f1b"), bubble("zb-h1"));
    assert!(zb < 0.8 * one, "zb-h1 {zb} vs 1f1b {one}");
    let e = Cli::estimate(MODEL)
        .on("h100", 8)
        .batch(16)
        .flag("--pp", 4)
        .flag("--stage-recompute", "full,none")
        .fails();
    assert!(
        e.contains("--stage-recompute lists 2 policies but --pp is 4"),
        "{e}"
    );
}

#[test]
fn the_weight_gradient_pass_is_one_dw_gemm_per_linear_layer() {
    use moai_ir::cost::{BlockKind, KernelClass, Phase};
    for (spec, mbs, seq) in [
        (MODEL, 1, 4096),
        (MODEL, 2, 512),
        ("gpt:layers=2,hidden=256,heads=4,vocab=1000", 1, 256),
    ] {
        let m = model(spec);
        for r in [Recompute::None, Recompute::Full] {
            let req = PlanRequest::new(8, seq);
            let p = moai_ir::train::step_profile(&m.graph, &train_options(&req, r), mbs, seq)
                .expect("profile");
            for b in &p.blocks {
                let mask = moai_costmodel::pipeline::weight_grad_ops(b);
                // 2·rows·in·out of each forward linear (its flops also count a bias add).
                let linear_flops: f64 = b
                    .ops
                    .iter()
                    .filter(|o| o.phase == Phase::Forward && o.label.ends_with(":Linear"))
                    .map(|o| match o.class {
                        KernelClass::Matmul { batch, m, n, k, .. } => {
                            2.0 * (batch * m * n * k) as f64
                        }
                        _ => 0.0,
                    })
                    .sum();
                let w_gemm_flops: f64 = b
                    .ops
                    .iter()
                    .zip(&mask)
                    .filter(|(o, w)| **w && matches!(o.class, KernelClass::Matmul { .. }))
                    .map(|(o, _)| o.flops)
                    .sum();
                assert!(
                    (w_gemm_flops - linear_flops).abs() <= 1e-9 * linear_flops.max(1.0),
                    "{spec} mbs {mbs} {r} {:?}: W GEMMs {w_gemm_flops} vs forward linears {linear_flops}",
                    b.kind
                );
                if b.kind == BlockKind::Embedding {
                    assert!(mask.iter().any(|w| *w), "the table gradient is W");
                }
                if matches!(b.kind, BlockKind::Decoder(_)) {
                    assert!(linear_flops > 0.0);
                }
            }
        }
    }
}

/// Under Megatron's interleaved schedule each model chunk holds only the micro-batches it has in
/// flight at the device's peak: the last device's last chunk (the LM head's) holds one, not the
/// device's whole in-flight count. NVIDIA's published GPT-3 175B recipe on 128 H100 (TP 4, PP 8,
/// VP 12, micro-batch 1, no recomputation; `nemo_dgxc_h100_bf16.jsonl`) ran on 80 GB devices; charging
/// the head's chunk for every in-flight chunk-micro-batch put its last stage at 100 GiB.
#[test]
fn the_interleaved_last_stage_holds_one_micro_batch_of_the_head() {
    let v = Cli::estimate("gpt:layers=96,hidden=12288,heads=96,vocab=50688")
        .on("h100", 128)
        .job(256, 2048)
        .flag("--dp", 4)
        .flag("--tp", 4)
        .flag("--pp", 8)
        .flag("--micro-batch-size", 1)
        .flag("--recompute", "none")
        .flag("--zero", 1)
        .switch("--sequence-parallel")
        .flag("--schedule", "interleaved:12")
        .flag("--engine", "megatron")
        .json()
        .ok_json();
    assert_eq!(v["fits"], true);
    let stages = v["predicted"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 8);
    let gib = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap() / (1u64 << 30) as f64;
    for s in stages {
        assert!(gib(s, "peak_bytes") < 76.0, "{s}");
    }
    // The first device holds the most chunk-micro-batches (its warm-up is longest); the last, with
    // the head, is no heavier.
    let (first, last) = (&stages[0], &stages[7]);
    assert!(gib(last, "activations_bytes") <= gib(first, "activations_bytes"));
}
