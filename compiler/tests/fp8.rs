//! `--precision fp8`: refused in one line on GPUs without FP8 matrix units; on H100 the fp8 plan of a
//! 70B dense model predicts a step-time gain inside the published range for real FP8 recipes; the plan
//! JSON says `"precision": "fp8"` (and nothing for bf16); Megatron-LM gets Transformer Engine's FP8
//! flags, DeepSpeed and FSDP refuse the plan.

use crate::common::{Cli, fails, repo};
use moai_compiler::emit::{engine_exports, export_context};
use moai_compiler::export::{PlanDims, engine_runs, megatron_args};
use moai_compiler::{Cluster, EmitKind, Gpu, Model, PlanRequest, plan};
use moai_costmodel::{MatmulPrecision, Stack};

const SMALL: &str = "llama:layers=4,hidden=256,heads=8,kv_heads=8,ffn=688,vocab=1000";

#[test]
fn fp8_is_refused_on_mi250_and_a100_in_one_line() {
    for (cmd, cluster) in [
        ("plan", ["--gpu", "a100", "--devices", "8"]),
        ("estimate", ["--gpu", "a100", "--devices", "8"]),
        ("plan", ["--gpu", "mi250", "--devices", "8"]),
        ("estimate", ["--flavor", "4xLarge.2048GB", "--gpu", "mi250"]),
    ] {
        let mut args = vec![cmd, SMALL];
        args.extend(cluster);
        args.extend(["--batch-size", "8", "--seq-len", "64", "--precision", "fp8"]);
        let e = fails(&args);
        let gpu = cluster[cluster.iter().position(|a| *a == "--gpu").unwrap() + 1];
        assert!(
            e.contains(&format!(
                "--precision fp8: fp8 GEMMs need FP8 matrix units, which {gpu} does not have"
            )),
            "{args:?}: {e}"
        );
        assert!(e.contains("h100"), "names the GPUs that have them: {e}");
    }
    // sweep runs on flavors (mi250 by default): refused before any flavor is planned
    let e = fails(&[
        "sweep",
        SMALL,
        "--flavors",
        "Small.64GB..Medium.128GB",
        "--precision",
        "fp8",
    ]);
    assert!(e.contains("which mi250 does not have"), "{e}");
}

#[test]
fn fp8_plan_json_names_the_precision_and_bf16_stays_silent() {
    let run = |p: &str| {
        Cli::plan(SMALL)
            .on("h100", 8)
            .job(16, 128)
            .flag("--precision", p)
            .json()
            .ok_json()
    };
    let fp8 = run("fp8");
    assert_eq!(fp8["plan"]["precision"], "fp8");
    assert_eq!(
        fp8["plan"]["engine"], "megatron",
        "only Megatron-LM runs fp8"
    );
    let bf16 = run("amp-bf16");
    assert!(bf16["plan"].get("precision").is_none(), "{}", bf16["plan"]);
}

/// Published end-to-end FP8-over-BF16 speedups of real recipes on the Transformer block's linear
/// layers: 1.2–1.5× (NVIDIA Megatron-Bridge performance tuning guide, "Low Precision Training"); inside
/// it Llama-3-70B under Megatron-LM on H100 1.37× (Fujii et al., arXiv:2411.08719: 415 → 570 TFLOP/s)
/// and Llama-3 70B under FSDP2 + float8 on H100 1.50× (PyTorch blog 2024-11-25, IBM/Meta).
const PUBLISHED_GAIN: (f64, f64) = (1.2, 1.5);

/// The gain is the ratio of two predicted step times, each with its own error: the FP8 truth rows
/// (`fp8_h100_nemo.jsonl`, validated only) are predicted at 5.8% mean error (one row 10%) and the
/// bf16 Megatron-LM H100 rows at 7-8% cross-validated (README, validation table), so the ratio is held
/// to the published range widened by 5% either side, not to its exact ends.
const GAIN_TOLERANCE: f64 = 0.05;

#[test]
fn fp8_plan_of_llama2_70b_on_64_h100_gains_within_published_range() {
    let model = Model::load(repo().join("models/configs/llama2-70b").to_str().unwrap()).unwrap();
    let cluster = Cluster::new(Gpu::H100, 64).unwrap();
    let mut req = PlanRequest::new(128, 4096);
    let bf16 = plan(&model, &cluster, &req).unwrap().output;
    req.constraints.precision = MatmulPrecision::Fp8;
    let fp8 = plan(&model, &cluster, &req).unwrap().output;
    let gain = bf16.predicted.step_time_s / fp8.predicted.step_time_s;
    eprintln!(
        "Llama-2-70B, 64 H100, batch 128 x 4096: bf16 plan {:.3} s ({}), fp8 plan {:.3} s ({}), gain {gain:.3}x",
        bf16.predicted.step_time_s,
        bf16.plan.summary_line(),
        fp8.predicted.step_time_s,
        fp8.plan.summary_line()
    );
    assert!(
        gain >= PUBLISHED_GAIN.0 / (1.0 + GAIN_TOLERANCE)
            && gain <= PUBLISHED_GAIN.1 * (1.0 + GAIN_TOLERANCE),
        "fp8 gain {gain:.3} outside the published {PUBLISHED_GAIN:?} (within {GAIN_TOLERANCE})"
    );
    assert_eq!(fp8.plan.precision, MatmulPrecision::Fp8);
    assert_eq!(bf16.plan.precision, MatmulPrecision::Bf16);
    assert_eq!(fp8.plan.engine, Stack::Megatron);

    // Megatron-LM: Transformer Engine's FP8 with delayed per-tensor scaling, every flag one the pinned
    // parser has, with a value its choices accept.
    let cx = export_context(&model, &cluster, &req);
    let args = megatron_args(&fp8.plan, &cx).unwrap();
    let get = |k: &str| {
        args.iter()
            .find(|(a, _)| a == k)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {args:?}"))
    };
    assert_eq!(get("--fp8-format"), "hybrid");
    assert_eq!(get("--fp8-recipe"), "delayed");
    assert_eq!(get("--fp8-amax-history-len"), "1024");
    assert_eq!(get("--fp8-amax-compute-algo"), "max");
    assert!(args.iter().any(|(a, _)| a == "--bf16"));
    let data = |f: &str| std::fs::read_to_string(repo().join("compiler/data").join(f)).unwrap();
    let (names, kinds) = (
        data("megatron_arguments.txt"),
        data("megatron_option_kinds.txt"),
    );
    for (flag, value) in [
        ("--fp8-format", "hybrid"),
        ("--fp8-recipe", "delayed"),
        ("--fp8-amax-compute-algo", "max"),
    ] {
        assert!(names.lines().any(|l| l.trim() == flag), "{flag}");
        let kind = kinds
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} has no kind"));
        let choices = kind.split_whitespace().next().unwrap();
        assert!(
            choices
                .strip_prefix("choice:")
                .unwrap()
                .split(',')
                .any(|c| c == value),
            "{flag} {value}: {choices}"
        );
    }
    // The bf16 plan carries none of them.
    let plain = megatron_args(&bf16.plan, &cx).unwrap();
    assert!(!plain.iter().any(|(a, _)| a.starts_with("--fp8")));

    // DeepSpeed and FSDP refuse in one line; the export says so.
    let mut d = PlanDims::of_plan(&fp8.plan, &cx).unwrap();
    (d.config.tp, d.config.pp, d.config.cp, d.config.dp) = (1, 1, 1, 64);
    for e in [Stack::Deepspeed, Stack::Fsdp] {
        let why = engine_runs(e, &d).unwrap_err();
        assert!(why.contains("FP8") && !why.contains('\n'), "{e}: {why}");
    }
    d.config.precision = MatmulPrecision::Bf16;
    assert!(engine_runs(Stack::Deepspeed, &d).is_ok());
    let (files, exports) = engine_exports(
        &model,
        &cluster,
        &req,
        &fp8.plan,
        &[EmitKind::Megatron, EmitKind::Deepspeed],
    );
    assert!(files.iter().any(|(p, _)| p.ends_with("megatron_args.txt")));
    assert!(
        !files
            .iter()
            .any(|(p, _)| p.ends_with("deepspeed_config.json"))
    );
    assert_eq!(exports["megatron"]["written"], true);
    assert_eq!(exports["deepspeed"]["written"], false);
    let why = exports["deepspeed"]["why"].as_str().unwrap();
    assert!(why.starts_with("DeepSpeed export not written"), "{why}");
}

/// About 42 billion parameters: 18 bytes each under amp-bf16 + Adam (bf16 weights, fp32 gradients,
/// fp32 master weights and moments) are 94 GiB per device even sharded over 8 A100s.
const BIG: &str = "llama:layers=60,hidden=8192,heads=64,kv_heads=8,ffn=22016,vocab=32000";

#[test]
fn a_model_that_fits_nowhere_fits_with_the_optimizer_offloaded() {
    let model = Model::load(BIG).unwrap();
    let cluster = Cluster::new(Gpu::A100, 8).unwrap();
    let mut req = PlanRequest::new(64, 2048);
    let e = plan(&model, &cluster, &req).unwrap_err().to_string();
    assert!(e.contains("fits nowhere"), "{e}");
    req.constraints.offload_optimizer = true;
    let out = plan(&model, &cluster, &req).unwrap().output;
    assert!(out.plan.offload_optimizer);
    assert!(out.fits);
    let b = &out.predicted.breakdown;
    assert!(b.offload_s > 0.0 && b.offload_s <= b.optimizer_s, "{b:?}");
    // The host holds the optimizer state: each device's stage keeps none of it.
    assert!(out.predicted.stages.iter().all(|s| s.optimizer_bytes == 0));

    // Exports: Megatron-LM's hybrid device optimizer, DeepSpeed's offload_optimizer; both engines'
    // option names as their pinned sources have them.
    let cx = export_context(&model, &cluster, &req);
    let data = |f: &str| std::fs::read_to_string(repo().join("compiler/data").join(f)).unwrap();
    let names = data("megatron_arguments.txt");
    if out.plan.engine == Stack::Megatron {
        let args = megatron_args(&out.plan, &cx).unwrap();
        for f in [
            "--optimizer-cpu-offload",
            "--use-precision-aware-optimizer",
            "--optimizer-offload-fraction",
            "--use-distributed-optimizer",
        ] {
            assert!(args.iter().any(|(a, _)| a == f), "{f} missing: {args:?}");
            assert!(names.lines().any(|l| l.trim() == f), "{f}");
        }
    }
    let mut ds_plan = out.plan.clone();
    (ds_plan.tp, ds_plan.pp, ds_plan.dp) = (1, 1, 8);
    ds_plan.sequence_parallel = false;
    ds_plan.schedule = "1f1b".into();
    ds_plan.stages.clear();
    ds_plan.distribute_param = true;
    ds_plan.distribute_low_prec_param = true;
    ds_plan.distribute_optimizer = true;
    ds_plan.num_micro_batches = 64 / (8 * ds_plan.micro_batch_size);
    let ds = moai_compiler::export::deepspeed_config(&ds_plan, &cx).unwrap();
    assert_eq!(
        ds["zero_optimization"]["offload_optimizer"]["device"],
        "cpu"
    );
    let keys = data("deepspeed_config_keys.txt");
    for k in [
        "zero_optimization.offload_optimizer.device",
        "zero_optimization.offload_optimizer.pin_memory",
    ] {
        assert!(keys.lines().any(|l| l.trim() == k), "{k}");
    }
    // FSDP refuses; Megatron-LM refuses offload without its distributed optimizer.
    let d = PlanDims::of_plan(&ds_plan, &cx).unwrap();
    let why = engine_runs(Stack::Fsdp, &d).unwrap_err();
    assert!(why.contains("CPU offload"), "{why}");
    let mut z0 = d;
    moai_compiler::ZeroStage::Zero0.apply(&mut z0.config);
    assert!(
        engine_runs(Stack::Megatron, &z0)
            .unwrap_err()
            .contains("ZeRO-1")
    );
}

#[test]
fn offload_flags_are_checked_in_one_line() {
    let e = Cli::plan(SMALL)
        .on("h100", 8)
        .flag("--offload", "disk")
        .fails();
    assert!(e.contains("--offload disk: expected optimizer"), "{e}");
}
