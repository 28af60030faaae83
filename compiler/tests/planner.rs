//! The planner on the shared models: the acceptance checks.

use moai_compiler::{Cluster, Gpu, Model, ParallelConfig, PlanRequest, Recompute, estimate, plan};
use std::path::PathBuf;
use std::sync::OnceLock;

fn model_path(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models")
        .join(name)
        .display()
        .to_string()
}

fn llama13b() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&model_path("llama2-13b.onnx")).expect("llama2-13b imports"))
}

#[test]
fn llama13b_on_4xlarge_beats_the_platform_choice() {
    let model = llama13b();
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let req = PlanRequest::new(256, 1024);
    let report = plan(model, &cluster, &req).expect("a plan");
    let search = report.output.search.as_ref().unwrap();
    assert!(
        search.candidates >= 1000,
        "only {} candidates",
        search.candidates
    );
    assert!(
        report.output.predicted.peak_memory_bytes <= 64 * (1u64 << 30),
        "plan must fit 64 GB GCDs"
    );
    // The platform's choice: No PP, No TP, full recomputation, distribute_param.
    let platform = ParallelConfig {
        dp: 32,
        tp: 1,
        pp: 1,
        micro_batch_size: 1,
        num_micro_batches: 8,
        recompute: Recompute::Full,
        distribute_param: true,
        distribute_low_prec_param: true,
        distribute_optimizer: true,
        ..ParallelConfig::default()
    };
    let base = estimate(model, &cluster, &platform, &req)
        .expect("the platform's configuration is estimable");
    assert!(
        report.output.predicted.step_time_s <= base.predicted.step_time_s * (1.0 + 1e-9),
        "chosen {:.3} s vs platform {:.3} s",
        report.output.predicted.step_time_s,
        base.predicted.step_time_s
    );
}

#[test]
fn plan_json_is_identical_at_any_thread_count() {
    let model = llama13b();
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let mut docs = Vec::new();
    for threads in [1, 2] {
        let mut req = PlanRequest::new(256, 1024);
        req.threads = Some(threads);
        let report = plan(model, &cluster, &req).unwrap();
        docs.push(
            serde_json::to_string_pretty(&moai_compiler::emit::plan_document(&report)).unwrap(),
        );
    }
    assert_eq!(docs[0], docs[1]);
}

#[test]
fn a_model_that_fits_nowhere_names_the_smallest_flavor() {
    let model = llama13b();
    let cluster = Cluster::from_flavor("Small.64GB", Gpu::Mi250).unwrap();
    let req = PlanRequest::new(256, 1024);
    let err = plan(model, &cluster, &req).expect_err("13B does not train on one GCD");
    assert!(err.to_string().contains("fits nowhere"), "{err}");
    let f = moai_compiler::fit::smallest_fitting_flavor(model, &cluster, &req)
        .expect("some flavor fits");
    assert!(f.contains("Large"), "{f}");
}

#[test]
fn h100_llama350m_picks_the_fastest_measured_configuration() {
    // Measured on one H100 (shared/data/h100_training_truth_llama-350m.json), batch 16 at seq 1024:
    // micro-batch 16 without recomputation (0.1956 s) beats 2 × micro-batch 8 (2 × 0.106 s) and
    // 4 × micro-batch 4 (4 × 0.088 s) and micro-batch 16 with full recomputation (0.249 s).
    let model = Model::load(&model_path("llama-350m.onnx")).unwrap();
    let cluster = Cluster::new(Gpu::H100, 1).unwrap();
    let mut req = PlanRequest::new(16, 1024);
    req.constraints.recompute = vec![Recompute::None, Recompute::Full];
    let report = plan(&model, &cluster, &req).unwrap();
    let p = &report.output.plan;
    assert_eq!(
        (p.micro_batch_size, p.recompute),
        (16, Recompute::None),
        "{}",
        report.explanation
    );
}
