//! Stage partitioning and memory pruning take their costs from the plugged-in cost model.

use moai_compiler::search::NoProgress;
use moai_compiler::{
    BlockCost, Cluster, CostModel, Estimate, Gpu, Model, ParallelConfig, PlanRequest,
    ProfiledCostModel, Recompute, Schedule, plan, plan_with,
};
use moai_costmodel::Result;
use moai_ir::cost::{BlockKind, StepProfile};

const LAYERS: u32 = 8;

fn model() -> Model {
    Model::load(&format!(
        "llama:layers={LAYERS},hidden=256,heads=4,kv_heads=4,ffn=688,vocab=1000"
    ))
    .expect("the spec builds")
}

/// One candidate: 2 H100s as a 2-stage pipeline, everything else fixed.
fn request() -> PlanRequest {
    let mut req = PlanRequest::new(8, 128);
    let c = &mut req.constraints;
    c.dp = Some(1);
    c.tp = Some(1);
    c.pp = Some(2);
    c.micro_batch_size = Some(1);
    c.recompute = vec![Recompute::None];
    c.zero = Some(moai_compiler::ZeroStage::Zero0);
    c.sequence_parallel = Some(false);
    c.schedules = vec![Schedule::OneFOneB];
    req
}

/// The default model, except that one decoder layer takes `factor` times as long and every block's static
/// memory is scaled by `static_factor`.
struct Skewed {
    inner: ProfiledCostModel,
    layer: u32,
    factor: f64,
    static_factor: f64,
}

impl CostModel for Skewed {
    fn estimate(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Estimate> {
        self.inner.estimate(profile, cluster, cfg)
    }

    fn block_costs(
        &self,
        profile: &StepProfile,
        cluster: &Cluster,
        cfg: &ParallelConfig,
    ) -> Result<Vec<BlockCost>> {
        let mut blocks = self.inner.block_costs(profile, cluster, cfg)?;
        for b in &mut blocks {
            if b.kind == BlockKind::Decoder(self.layer) {
                b.forward_s *= self.factor;
                b.backward_s *= self.factor;
            }
            b.static_bytes *= self.static_factor;
        }
        Ok(blocks)
    }
}

fn stages(report: &moai_compiler::PlanReport) -> Vec<[u32; 2]> {
    report.output.plan.stages.iter().map(|s| s.layers).collect()
}

#[test]
fn an_expensive_layer_moves_the_pipeline_split() {
    let model = model();
    let cluster = Cluster::new(Gpu::H100, 2).unwrap();
    let req = request();
    let default = plan(&model, &cluster, &req).expect("a plan");
    let even = stages(&default);
    assert_eq!(even.len(), 2);
    assert!(
        even[0][1] + 1 >= LAYERS / 2 - 1 && even[0][1] < LAYERS - 2,
        "uniform layers split about evenly: {even:?}"
    );
    let skewed = Skewed {
        inner: ProfiledCostModel::new(),
        layer: LAYERS - 1,
        factor: 3.0 * LAYERS as f64,
        static_factor: 1.0,
    };
    let report = plan_with(&model, &cluster, &req, &skewed, &NoProgress).expect("a plan");
    assert_eq!(
        stages(&report),
        vec![[0, LAYERS - 2], [LAYERS - 1, LAYERS - 1]],
        "the expensive last layer gets a stage of its own (default split {even:?})"
    );
    let first = Skewed { layer: 0, ..skewed };
    let report = plan_with(&model, &cluster, &req, &first, &NoProgress).expect("a plan");
    assert_eq!(stages(&report), vec![[0, 0], [1, LAYERS - 1]]);
}

#[test]
fn static_memory_from_the_cost_model_prunes_candidates() {
    let model = model();
    let cluster = Cluster::new(Gpu::H100, 2).unwrap();
    let req = request();
    let huge = Skewed {
        inner: ProfiledCostModel::new(),
        layer: 0,
        factor: 1.0,
        static_factor: 1e6,
    };
    plan(&model, &cluster, &req).expect("the default cost model finds a plan");
    let err = plan_with(&model, &cluster, &req, &huge, &NoProgress).expect_err("nothing fits");
    let report = err.to_string();
    assert!(
        report.contains("rejected before costing"),
        "the cost model's static bytes reject the only candidate before costing: {report}"
    );
}
