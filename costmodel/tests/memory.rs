//! The mechanistic memory model against the H100 measurements (leave one model out), its per-stage
//! breakdown, its stacks and ZeRO stages.

use crate::real::real_samples;
use moai_costmodel::fit::FitSample;
use moai_costmodel::memory::{MemoryCoefficients, PeakPhase, fit_memory};
use moai_costmodel::{
    Cluster, CostModel, EfficiencyFile, Estimate, Gpu, ParallelConfig, ProfiledCostModel,
    Recompute, Schedule, Stack,
};
use moai_ir::train::{RecomputePolicy, TrainOptions, step_profile};

/// The H100 truth files with measured peaks, one per model.
const H100: [(&str, &str); 2] = [
    ("llama-350m", "truth/h100_llama350m.jsonl"),
    ("llama-1b", "truth/h100_llama1b.jsonl"),
];

fn model_with(coef: MemoryCoefficients) -> ProfiledCostModel {
    let mut file: EfficiencyFile = moai_costmodel::efficiency::committed().clone();
    file.allocator = coef;
    ProfiledCostModel::with_efficiencies(file)
}

/// Mean absolute percentage error of the peaks of `rows` predicted with `coef`; prints each row.
fn peak_mape(rows: &[FitSample], coef: &MemoryCoefficients, label: &str) -> f64 {
    let m = model_with(coef.clone());
    let mut sum = 0.0;
    for s in rows {
        let e = m.estimate(&s.profile, &s.cluster, &s.config).unwrap();
        let meas = s.peak_memory_bytes.unwrap();
        let err = 100.0 * (e.peak_memory_bytes as f64 - meas) / meas;
        eprintln!(
            "{label}: {:<32} predicted {:>6.2} GiB measured {:>6.2} GiB error {:+5.1}% (peak at {:?})",
            s.name,
            e.peak_memory_bytes as f64 / (1u64 << 30) as f64,
            meas / (1u64 << 30) as f64,
            err,
            e.memory[0].peak_phase
        );
        sum += err.abs();
    }
    sum / rows.len() as f64
}

#[test]
fn peak_memory_leave_one_model_out_within_5_percent() {
    let per_model: Vec<(&str, Vec<FitSample>)> =
        H100.iter().map(|(m, f)| (*m, real_samples(f))).collect();
    let mut all = Vec::new();
    for (held, rows) in &per_model {
        let train: Vec<FitSample> = per_model
            .iter()
            .filter(|(m, _)| m != held)
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        let coef = fit_memory(&train).unwrap();
        let mape = peak_mape(rows, &coef, &format!("{held} from the others' fit"));
        eprintln!(
            "held out {held}: fit {:.3} B/logit, workspace {:.3} GB -> peak-memory MAPE {mape:.2}%",
            coef.loss_bytes_per_logit,
            coef.workspace_bytes / 1e9
        );
        assert!(
            mape <= 5.0,
            "{held}: cross-validated peak-memory MAPE {mape:.2}% > 5%"
        );
        all.extend(rows.iter().cloned());
    }
    // In sample, over every H100 row, the committed coefficients.
    let joint = fit_memory(&all).unwrap();
    eprintln!("joint fit over every H100 row: {joint:?}");
    let committed = moai_costmodel::efficiency::committed().allocator.clone();
    let mape = peak_mape(&all, &committed, "in sample");
    eprintln!("in sample (committed coefficients): peak-memory MAPE {mape:.2}%");
    assert!(mape <= 5.0, "in-sample peak-memory MAPE {mape:.2}%");
}

#[test]
fn fit_memory_recovers_coefficients_it_generated() {
    // Peaks produced by known coefficients are fitted back (the fit is not a constant).
    let rows: Vec<FitSample> = H100.iter().flat_map(|(_, f)| real_samples(f)).collect();
    let truth = MemoryCoefficients {
        loss_bytes_per_logit: 9.0,
        workspace_bytes: 3e8,
        source: "synthetic".into(),
    };
    let m = model_with(truth.clone());
    let synthetic: Vec<FitSample> = rows
        .into_iter()
        .map(|mut s| {
            let e = m.estimate(&s.profile, &s.cluster, &s.config).unwrap();
            s.peak_memory_bytes = Some(e.peak_memory_bytes as f64);
            s
        })
        .collect();
    let fit = fit_memory(&synthetic).unwrap();
    assert!((fit.loss_bytes_per_logit - 9.0).abs() < 0.01, "{fit:?}");
    assert!((fit.workspace_bytes - 3e8).abs() < 2e6, "{fit:?}");
    assert!(fit_memory(&synthetic[..1]).is_err());
}

fn llama13b(mb: u64, recompute: RecomputePolicy) -> moai_ir::cost::StepProfile {
    let graph = moai_models::from_spec(
        "llama:layers=40,hidden=5120,heads=40,kv_heads=40,ffn=13824,vocab=32000",
    )
    .unwrap();
    let opts = TrainOptions {
        recompute,
        ..Default::default()
    };
    step_profile(&graph, &opts, mb, 1024).unwrap()
}

fn check_adds_up(e: &Estimate) {
    let peak = e.memory.iter().map(|s| s.peak_bytes).fold(0.0, f64::max);
    assert!((peak.round() - e.peak_memory_bytes as f64).abs() <= 1.0);
    for s in &e.memory {
        let sum = s.weights_bytes
            + s.grads_bytes
            + s.optimizer_bytes
            + s.activations_bytes
            + s.transients_bytes;
        assert!((sum - s.peak_bytes).abs() <= 1e-6 * s.peak_bytes, "{s:?}");
        for v in [
            s.weights_bytes,
            s.grads_bytes,
            s.optimizer_bytes,
            s.activations_bytes,
            s.transients_bytes,
        ] {
            assert!(v >= 0.0 && v.is_finite(), "{s:?}");
        }
    }
}

#[test]
fn zero3_and_zero1_differ_in_memory_for_llama2_13b_on_4xlarge() {
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let p = llama13b(1, RecomputePolicy::Full);
    let m = ProfiledCostModel::new();
    for stack in [Stack::Deepspeed, Stack::Fsdp, Stack::Megatron] {
        let cfg = |z3: bool| ParallelConfig {
            dp: 32,
            micro_batch_size: 1,
            num_micro_batches: 8,
            recompute: Recompute::Full,
            distribute_optimizer: true,
            distribute_low_prec_param: z3,
            distribute_param: z3,
            stack,
            ..Default::default()
        };
        let (z1, z3) = (
            m.estimate(&p, &cluster, &cfg(false)).unwrap(),
            m.estimate(&p, &cluster, &cfg(true)).unwrap(),
        );
        check_adds_up(&z1);
        check_adds_up(&z3);
        let (a, b) = (&z1.memory[0], &z3.memory[0]);
        eprintln!("{stack} ZeRO-1: {a:?}\n{stack} ZeRO-3: {b:?}");
        // ZeRO-1 keeps every low-precision weight; ZeRO-3 a 1/dp shard plus two gathered layers.
        assert!(b.weights_bytes < a.weights_bytes / 8.0, "{stack}");
        assert!(
            b.transients_bytes > a.transients_bytes,
            "{stack}: gather buffers"
        );
        assert!(z3.peak_memory_bytes < z1.peak_memory_bytes, "{stack}");
        // The gather buffers: two decoder layers in bf16 (13B: 2 · 2 · 12 · 5120² · ... bytes).
        let layer_params = 4.0 * 5120.0 * 5120.0 + 3.0 * 5120.0 * 13824.0;
        assert!(b.transients_bytes - a.transients_bytes >= 2.0 * 2.0 * layer_params * 0.99);
    }
}

#[test]
fn breakdown_adds_up_for_every_stack_and_schedule() {
    let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
    let m = ProfiledCostModel::new();
    for (mb, rp, r) in [
        (1u64, RecomputePolicy::None, Recompute::None),
        (2, RecomputePolicy::Selective, Recompute::Selective),
        (1, RecomputePolicy::Full, Recompute::Full),
    ] {
        let p = llama13b(mb, rp);
        for stack in Stack::ALL {
            for (tp, pp, schedule, sp) in [
                (1u32, 1u32, Schedule::OneFOneB, false),
                (4, 2, Schedule::OneFOneB, true),
                (2, 4, Schedule::Interleaved(2), false),
            ] {
                let dp = 32 / (tp * pp);
                let cfg = ParallelConfig {
                    dp,
                    tp,
                    pp,
                    micro_batch_size: mb as u32,
                    num_micro_batches: 8,
                    recompute: r,
                    sequence_parallel: sp,
                    schedule,
                    distribute_optimizer: true,
                    stack,
                    ..Default::default()
                };
                let e = m.estimate(&p, &cluster, &cfg).unwrap();
                check_adds_up(&e);
                assert_eq!(e.memory.len(), pp as usize);
                if pp > 1 && schedule == Schedule::OneFOneB && r == Recompute::None {
                    assert!(
                        e.memory[0].activations_bytes > e.memory[1].activations_bytes,
                        "{stack} {r:?}: stage 0 holds more micro-batches"
                    );
                }
            }
        }
    }
}

#[test]
fn eager_peak_holds_the_autocast_cache_and_the_loss_buffers() {
    // llama-1b, one H100, eager: with full recomputation the graph saves no decoder weight copies,
    // but the autocast cache holds all of them while the loss is computed.
    let rows = real_samples("truth/h100_llama1b.jsonl");
    let s = rows
        .iter()
        .find(|s| s.config.recompute == Recompute::Full)
        .unwrap();
    assert_eq!(s.config.stack, Stack::Eager);
    let e = ProfiledCostModel::new()
        .estimate(&s.profile, &s.cluster, &s.config)
        .unwrap();
    let d = &e.memory[0];
    assert_eq!(d.peak_phase, PeakPhase::Forward);
    let params = 1_100_048_384f64;
    let embed = 32000.0 * 2048.0;
    // fp32 weights and the bf16 copy of every matmul weight (all but the embedding table).
    let want = 4.0 * params + 2.0 * (params - embed);
    assert!((d.weights_bytes / want - 1.0).abs() < 1e-3, "{d:?}");
    assert_eq!(d.optimizer_bytes, 8.0 * params);
    assert_eq!(
        d.grads_bytes, 0.0,
        "set_to_none: no gradients at the end of forward"
    );
    let tokens = (s.profile.micro_batch * s.profile.seq) as f64;
    assert_eq!(d.loss_logits, tokens * 32000.0);
    // The same run on the Megatron stack keeps bf16 weights, an fp32 gradient buffer and 12 bytes
    // of optimizer state, and no autocast cache.
    let cfg = ParallelConfig {
        stack: Stack::Megatron,
        ..s.config.clone()
    };
    let mg = ProfiledCostModel::new()
        .estimate(&s.profile, &s.cluster, &cfg)
        .unwrap();
    let d = &mg.memory[0];
    assert_eq!(d.weights_bytes, 2.0 * params);
    assert_eq!(d.optimizer_bytes, 12.0 * params);
    assert_eq!(d.grads_bytes, 4.0 * params);
}

#[test]
fn tiny_batches_peak_at_the_optimizer_step() {
    // llama-1b, one token sequence of 64: the activations are far below the 4 bytes per parameter
    // of gradients that exist at the optimizer step, so the step is the peak (16 bytes per parameter).
    let graph = moai_models::from_spec(
        "llama:layers=22,hidden=2048,heads=32,kv_heads=4,ffn=5632,vocab=32000",
    )
    .unwrap();
    let p = step_profile(&graph, &TrainOptions::default(), 1, 64).unwrap();
    let cfg = ParallelConfig {
        stack: Stack::Eager,
        persistent_grads: false,
        ..Default::default()
    };
    let e = ProfiledCostModel::new()
        .estimate(&p, &Cluster::new(Gpu::H100, 1).unwrap(), &cfg)
        .unwrap();
    let d = &e.memory[0];
    let params = 1_100_048_384f64;
    assert_eq!(d.peak_phase, PeakPhase::Optimizer, "{d:?}");
    assert_eq!(d.grads_bytes, 4.0 * params);
    assert_eq!(d.weights_bytes + d.optimizer_bytes, 12.0 * params);
    assert_eq!(d.activations_bytes, 0.0);
    check_adds_up(&e);
}

/// Every published or measured run in the truth files ran, so its configuration fits its devices.
/// moai's peak memory says so for all but the rows listed here, the level reached (the test prints
/// them: `cargo test --release -p moai-costmodel --test main memory::configurations_that_ran --
/// --nocapture`): torchtitan's Llama 2 13B without checkpointing on A100 (2% over; 22% before the
/// engines' bf16 weight copies were modelled), NeMo's Llama 2 7B FP8 at 4K tokens on 4 GPUs (4% over;
/// recompute and Apex's optimizer buffers not published), and the 405B DGX Cloud recipe on 576 GPUs
/// (interleaved, VP 7, 2% over). LLM Foundry's runs all fit since the engines compute on bf16 copies
/// of the weights (`TrainOptions::bf16_weight_copies`: bf16 residual stream and checkpointed layer
/// inputs); seven were 0-8% over when the FSDP stack's activations were autocast's fp32. Megatron-LM's
/// other interleaved recipes (GPT-3 175B at VP 12, Llama 3 70B at VP 5) fit since each model chunk
/// counts only its own in-flight micro-batches (up to 25% over before); no interleaved recipe may be
/// 5% over.
#[test]
fn configurations_that_ran_fit_their_devices() {
    let model =
        ProfiledCostModel::with_efficiencies(moai_costmodel::efficiency::committed().clone());
    let mut over = Vec::new();
    for file in crate::real::truth_files() {
        for s in real_samples(&file) {
            let e = model.estimate(&s.profile, &s.cluster, &s.config).unwrap();
            let cap = s.cluster.memory_per_device_bytes as f64;
            if e.peak_memory_bytes as f64 > cap {
                assert!(
                    !matches!(s.config.schedule, Schedule::Interleaved(_))
                        || (e.peak_memory_bytes as f64) < 1.05 * cap,
                    "{}: an interleaved recipe that ran, predicted at {:.1} GiB",
                    s.name,
                    e.peak_memory_bytes as f64 / (1u64 << 30) as f64
                );
                over.push(format!(
                    "{} ({:.0}%)",
                    s.name,
                    100.0 * e.peak_memory_bytes as f64 / cap
                ));
            }
        }
    }
    eprintln!(
        "{} truth rows predicted over their devices: {over:?}",
        over.len()
    );
    assert!(
        over.len() <= 3,
        "{} rows predicted over their devices: {over:?}",
        over.len()
    );
}

/// A fully sharded pipeline stage on torchtitan (PyTorch's pipelining with FSDP2 stages) gathers its
/// weights once per step and keeps them, and its fp32-accumulated gradients, unsharded until the last
/// micro-batch's backward (`Stack::keeps_pipelined_stage_unsharded`): its memory holds the stage's
/// bf16 weights and fp32 gradients whole, and its ZeRO-3 traffic does not grow with the micro-batches.
/// Megatron-LM's ZeRO-3 (not pipelined by its export) and unpipelined FSDP keep the per-layer gathers.
#[test]
fn a_pipelined_fsdp2_stage_keeps_its_weights_and_gradients_unsharded() {
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let p = llama13b(1, RecomputePolicy::Full);
    let m = ProfiledCostModel::new();
    let cfg = |stack, pp: u32, micro: u32| ParallelConfig {
        dp: 64 / (pp * 2),
        tp: 2,
        pp,
        sequence_parallel: true,
        micro_batch_size: 1,
        num_micro_batches: micro,
        recompute: Recompute::Full,
        distribute_param: true,
        distribute_low_prec_param: true,
        distribute_optimizer: true,
        schedule: Schedule::OneFOneB,
        stack,
        ..Default::default()
    };
    let e = |stack, pp, micro| m.estimate(&p, &cluster, &cfg(stack, pp, micro)).unwrap();
    let (tt, mg) = (e(Stack::Torchtitan, 4, 8), e(Stack::Megatron, 4, 8));
    check_adds_up(&tt);
    check_adds_up(&mg);
    // Stage 1 (no embedding, no head): its share of the 40 layers' weights over tp 2.
    let params = p
        .blocks
        .iter()
        .filter(|b| matches!(b.kind, moai_ir::cost::BlockKind::Decoder(l) if (10..20).contains(&l)))
        .map(|b| b.params as f64)
        .sum::<f64>()
        / 2.0;
    let s = &tt.memory[1];
    let sharded = 4.0 * params / 8.0;
    assert!(
        (s.weights_bytes - sharded - 2.0 * params).abs() < 0.02 * params,
        "weights {} vs {} sharded + {} unsharded bf16",
        s.weights_bytes,
        sharded,
        2.0 * params
    );
    assert!(s.grads_bytes >= 4.0 * params, "{s:?}");
    assert!(mg.memory[1].weights_bytes < s.weights_bytes - params);
    // Gathered once and reduce-scattered once per step, whatever the micro-batches.
    let more = e(Stack::Torchtitan, 4, 16);
    assert_eq!(tt.breakdown.zero3_gather_s, more.breakdown.zero3_gather_s);
    assert_eq!(tt.breakdown.dp_comm_s, more.breakdown.dp_comm_s);
    let unpiped = (e(Stack::Torchtitan, 1, 8), e(Stack::Torchtitan, 1, 16));
    assert!(unpiped.1.breakdown.zero3_gather_s > 1.9 * unpiped.0.breakdown.zero3_gather_s);
}
