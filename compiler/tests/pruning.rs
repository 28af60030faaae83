//! The bounded search against the exhaustive one: the same plan, the same alternatives, on several jobs;
//! every cost-model bound below its prediction; counts that add up and do not depend on the thread count;
//! and a cost model whose bounds lie still gets the exhaustive answer.

use moai_compiler::search::{
    Bound, NoProgress, Outcome, Pruning, RANKED, SearchResult, search_with,
};
use moai_compiler::{
    Cluster, Constraints, CostModel, Gpu, Model, ParallelConfig, PlanRequest, ProfiledCostModel,
    ZeroStage,
};
use moai_costmodel::{BlockCost, Estimate, LowerBounds};
use moai_ir::cost::StepProfile;
use std::path::PathBuf;
use std::sync::OnceLock;

fn model(name: &str) -> &'static Model {
    static MODELS: OnceLock<std::sync::Mutex<Vec<(String, &'static Model)>>> = OnceLock::new();
    let m = MODELS.get_or_init(Default::default);
    let mut m = m.lock().unwrap();
    if let Some((_, x)) = m.iter().find(|(n, _)| n == name) {
        return x;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("models")
        .join(name);
    let x: &'static Model = Box::leak(Box::new(
        Model::load(&path.display().to_string()).expect("model imports"),
    ));
    m.push((name.to_string(), x));
    x
}

/// (name, model file, cluster, request) of the jobs the bounded search is checked on.
fn jobs() -> Vec<(&'static str, &'static str, Cluster, PlanRequest)> {
    let pp_job = PlanRequest {
        constraints: Constraints {
            zero: Some(ZeroStage::Zero0),
            ..Default::default()
        },
        ..PlanRequest::new(256, 1024)
    };
    vec![
        (
            "main job: llama2-13b on 4xLarge.2048GB",
            "llama2-13b.onnx",
            Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap(),
            PlanRequest::new(256, 1024),
        ),
        (
            "pipeline job: llama2-13b without ZeRO on 2xLarge.1024GB",
            "llama2-13b.onnx",
            Cluster::from_flavor("2xLarge.1024GB", Gpu::Mi250).unwrap(),
            pp_job,
        ),
        (
            "small model: llama-350m on 8 MI250 GCDs",
            "llama-350m.onnx",
            Cluster::new(Gpu::Mi250, 8).unwrap(),
            PlanRequest::new(64, 1024),
        ),
        (
            "H100 job: llama2-7b on 16 H100, sequence 4096",
            "llama2-7b.onnx",
            Cluster::new(Gpu::H100, 16).unwrap(),
            PlanRequest::new(256, 4096),
        ),
    ]
}

fn run(
    file: &str,
    cluster: &Cluster,
    req: &PlanRequest,
    cost: &dyn CostModel,
    pruning: Pruning,
) -> SearchResult {
    search_with(model(file), cluster, req, cost, &NoProgress, pruning).expect("a plan")
}

/// The winner and the alternatives the report shows, with their stages and predictions.
fn head(r: &SearchResult) -> Vec<(ParallelConfig, Estimate)> {
    r.ranking
        .iter()
        .take(RANKED)
        .map(|&i| {
            let e = &r.evaluated[i];
            (e.config.clone(), e.estimate().expect("costed").clone())
        })
        .collect()
}

#[test]
fn bounded_search_returns_the_exhaustive_plan_on_every_job() {
    let cost = ProfiledCostModel::new();
    let mut pruned_somewhere = (0, 0);
    for (name, file, cluster, req) in jobs() {
        let full = run(file, &cluster, &req, &cost, Pruning::Off);
        let fast = run(file, &cluster, &req, &cost, Pruning::Bounds);
        assert_eq!(
            full.evaluated[full.best].config, fast.evaluated[fast.best].config,
            "{name}: another plan"
        );
        assert_eq!(head(&full), head(&fast), "{name}: another ranking head");
        assert!(full.pruned.is_empty(), "{name}: {:?}", full.pruned);
        assert_eq!(
            full.compiled,
            full.evaluated.len() as u64,
            "{name}: the exhaustive search partitions every candidate"
        );
        assert!(fast.compiled >= fast.costed, "{name}");
        assert!(fast.costed < full.costed, "{name}: nothing saved");
        pruned_somewhere.0 += fast
            .pruned
            .get(Bound::Memory.as_str())
            .copied()
            .unwrap_or(0);
        pruned_somewhere.1 += fast.pruned.get(Bound::Time.as_str()).copied().unwrap_or(0);
        // every candidate is accounted for once
        let pruned: u64 = fast.pruned.values().sum();
        let rejected_after_enumeration: u64 = fast.rejected.values().sum::<u64>() - fast.structural;
        assert_eq!(
            pruned + rejected_after_enumeration + fast.ranking.len() as u64,
            fast.evaluated.len() as u64,
            "{name}: {:?} {:?}",
            fast.pruned,
            fast.rejected
        );
        assert_eq!(
            fast.enumerated,
            fast.evaluated.len() as u64 + fast.structural,
            "{name}"
        );
        for e in &fast.evaluated {
            if let Outcome::Pruned(_) = e.outcome {
                assert!(e.estimate().is_none());
            }
        }
    }
    assert!(
        pruned_somewhere.0 > 0 && pruned_somewhere.1 > 0,
        "both bounds prune on some job: {pruned_somewhere:?}"
    );
}

#[test]
fn lower_bounds_never_exceed_the_prediction() {
    let cost = ProfiledCostModel::new();
    for (name, file, cluster, req) in jobs() {
        let full = run(file, &cluster, &req, &cost, Pruning::Off);
        let mut profiles = std::collections::HashMap::new();
        let mut checked = 0;
        for e in &full.evaluated {
            let Some(est) = e.estimate() else { continue };
            let c = &e.config;
            let p = profiles
                .entry((c.micro_batch_size, c.recompute))
                .or_insert_with(|| {
                    let keys = [(c.micro_batch_size, c.recompute)];
                    moai_compiler::search::profiles_for(model(file), &req, &keys).unwrap()[&keys[0]]
                        .clone()
                });
            let lb = cost
                .lower_bounds(p, &cluster, c)
                .expect("the default model bounds");
            assert!(
                lb.step_time_s <= est.step_time_s
                    && lb.peak_memory_bytes <= est.peak_memory_bytes as f64,
                "{name}: {c:?}: bound {lb:?} vs {} s, {} B",
                est.step_time_s,
                est.peak_memory_bytes
            );
            assert!(lb.step_time_s > 0.0 && lb.peak_memory_bytes > 0.0, "{lb:?}");
            checked += 1;
        }
        assert!(checked > 100, "{name}: {checked}");
    }
}

#[test]
fn counts_and_plan_do_not_depend_on_the_thread_count() {
    let cost = ProfiledCostModel::new();
    let (_, file, cluster, req) = jobs().swap_remove(0);
    let at = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(file, &cluster, &req, &cost, Pruning::Bounds))
    };
    let (one, two) = (at(1), at(2));
    assert_eq!(head(&one), head(&two));
    assert_eq!(one.pruned, two.pruned);
    assert_eq!(one.rejected, two.rejected);
    assert_eq!((one.costed, one.compiled), (two.costed, two.compiled));
}

/// The default model with time bounds `.1` times its own, for the candidates `.2` picks.
struct LyingBounds(ProfiledCostModel, f64, fn(&ParallelConfig) -> bool);

impl CostModel for LyingBounds {
    fn estimate(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> moai_costmodel::Result<Estimate> {
        self.0.estimate(profile, cluster, cfg)
    }
    fn block_costs(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> moai_costmodel::Result<Vec<BlockCost>> {
        self.0.block_costs(profile, cluster, cfg)
    }
    fn lower_bounds(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Option<LowerBounds> {
        self.0
            .lower_bounds(profile, cluster, cfg)
            .map(|b| LowerBounds {
                step_time_s: b.step_time_s * if (self.2)(cfg) { self.1 } else { 1.0 },
                peak_memory_bytes: b.peak_memory_bytes,
            })
    }
}

#[test]
fn bounds_shown_wrong_by_a_prediction_are_dropped() {
    let (_, file, cluster, req) = jobs().swap_remove(2);
    let honest = ProfiledCostModel::new();
    let full = run(file, &cluster, &req, &honest, Pruning::Off);
    // Time bounds 100 times the prediction: the first batch costed shows them wrong, and every
    // candidate they pruned is costed after all.
    let liar = LyingBounds(ProfiledCostModel::new(), 100.0, |_| true);
    let got = run(file, &cluster, &req, &liar, Pruning::Bounds);
    assert_eq!(head(&full), head(&got));
    assert!(
        !got.pruned.contains_key(Bound::Time.as_str()),
        "{:?}",
        got.pruned
    );
    // Wrong only for full recomputation: those sort last and are pruned without being costed, but
    // the audit of what the time bound pruned costs the last of them and finds the bound wrong.
    let liar = LyingBounds(ProfiledCostModel::new(), 100.0, |c| {
        c.recompute == moai_compiler::Recompute::Full
    });
    let got = run(file, &cluster, &req, &liar, Pruning::Bounds);
    assert_eq!(head(&full), head(&got));
    assert!(
        !got.pruned.contains_key(Bound::Time.as_str()),
        "{:?}",
        got.pruned
    );
}

/// `plan --exhaustive` costs every candidate and prints the same plan as the default bounded search,
/// whose JSON counts what was enumerated, rejected, pruned and costed.
#[test]
fn exhaustive_flag_gives_the_same_plan_and_the_counts_are_printed() {
    let args = [
        "plan",
        "models/llama-350m.onnx",
        "--gpu",
        "mi250",
        "--devices",
        "8",
        "--batch-size",
        "64",
        "--json",
    ];
    let json = |extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(extra);
        let out = crate::common::moai(&a);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let (fast, full) = (json(&[]), json(&["--exhaustive"]));
    assert_eq!(fast["plan"], full["plan"]);
    assert_eq!(fast["predicted"], full["predicted"]);
    let (s, f) = (&fast["search"], &full["search"]);
    assert_eq!(s["candidates"], f["candidates"]);
    assert_eq!(f["pruned"], serde_json::json!({}), "{f}");
    assert!(s["pruned"]["time"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["costed"].as_u64().unwrap() < f["costed"].as_u64().unwrap(),
        "{s} vs {f}"
    );
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert_eq!(
        n(s, "enumerated"),
        n(s, "candidates") + n(s, "rejected_by_structure"),
        "{s}"
    );
}

/// The 405B benchmark's model: Meta's Llama-3.1-405B config builds with 126 layers and 405.85 billion
/// parameters (the closed form of its dimensions: untied 128,256 × 16,384 embedding and head, 126 layers
/// of GQA attention with 8 KV heads and a 53,248-wide SwiGLU MLP; Meta reports "405B").
#[test]
fn llama31_405b_config_has_its_parameter_count() {
    let m = model("configs/llama3.1-405b/config.json");
    assert_eq!(m.summary.layers, 126);
    assert_eq!(m.summary.params, 405_853_388_800);
    assert_eq!((m.summary.heads, m.summary.kv_heads), (128, 8));
}
