//! End-to-end validation against every shipped truth file with the real training graph
//! (`moai_models::from_spec` + `moai_ir::train::step_profile`): the targets of issue 11, measured
//! leaving one model out (each model's rows predicted by coefficients fitted on the other models').

use crate::real::{all_rows, real_profile as profile_for};
use moai_costmodel::efficiency::committed;
use moai_costmodel::validate::{CrossValidation, CvRow, cross_validate};
use std::sync::OnceLock;

/// The leave-one-model-out validation over every truth row, computed once for the tests below.
fn cv() -> &'static CrossValidation {
    static CV: OnceLock<CrossValidation> = OnceLock::new();
    CV.get_or_init(|| {
        let t = std::time::Instant::now();
        let cv = cross_validate(&all_rows(), &profile_for, committed(), true).unwrap();
        eprintln!("{cv}\ncross-validation: {:.1} s", t.elapsed().as_secs_f64());
        cv
    })
}

fn file_mape(cv: &CrossValidation, file: &str, metric: &str) -> f64 {
    let f = cv
        .files
        .iter()
        .find(|f| f.file.ends_with(file))
        .unwrap_or_else(|| panic!("no rows of {file}"));
    f.mape[metric]
}

/// The cross-validated rows of the truth files whose name contains `part`.
fn rows_of<'a>(cv: &'a CrossValidation, part: &str) -> Vec<&'a CvRow> {
    cv.rows.iter().filter(|r| r.file.contains(part)).collect()
}

/// A row's signed step-time error in percent (positive: predicted slow).
fn step_error_pct(r: &CvRow) -> f64 {
    100.0 * (r.predicted["step_time_s"] / r.measured["step_time_s"] - 1.0)
}

#[test]
fn every_row_is_estimated() {
    let cv = cv();
    assert!(cv.cross_validated);
    let failed: Vec<_> = cv.rows.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(cv.rows.len() >= 50);
}

#[test]
fn h100_step_time_cross_validated() {
    // Issue 11: at most 8% on the two H100 models (llama-350m and llama-1b), leave one model out.
    let cv = cv();
    let rows = rows_of(cv, "h100_llama");
    let mape = rows.iter().map(|r| step_error_pct(r).abs()).sum::<f64>() / rows.len() as f64;
    eprintln!("H100 llama-350m + llama-1b cross-validated step-time MAPE {mape:.1}%");
    // The target is 8%; met (7.4%: llama-1b 8.6%, llama-350m 5.2%, as `validate
    // --cross-validate` prints them per file; the README's validation table).
    assert!(mape <= 8.0, "{mape:.1}%");
}

#[test]
fn megatron_sc21_cross_validated() {
    let m = file_mape(cv(), "megatron_sc21_table1.jsonl", "step_time");
    assert!(m <= 10.0, "Megatron SC21 Table 1 step time MAPE {m:.1}%");
}

#[test]
fn every_other_truth_file_cross_validated() {
    let cv = cv();
    // The target is 12% on every file; each file's figure is the README's validation table
    // (`validate --cross-validate`, checked by `scripts/readme-check.sh --cross-validate`), so no
    // figure is repeated here. Notes on the files that needed a mechanism to meet it:
    // - Megatron-Core's H100 weak scaling: micro-batch and schedule assumed (see its rows).
    // - The FP8 rows (validated only, never fitted): Transformer Engine's fused kernels costed at
    //   Megatron's fusion prior on Hopper, FlagPerf's attention dropout costed.
    // - The CDNA2 files (MI250 and MI250X GCDs): the family coefficients rest on 12 rows of 7 models;
    //   MosaicML's MPT-7B recipe (no activation checkpointing at micro-batch 4) is assumed from LLM
    //   Foundry's benchmark practice and memory (see the rows' source); LUMI GPT-NeoX ran without
    //   flash attention, fusions off.
    // - The MI325X file meets it with its three FP8 rows (validated only); its one BF16 row is the
    //   file's worst, slow cross-validated (leaving its model out leaves CDNA3 at the fit's priors:
    //   see `cdna3_rows_cross_validated`).
    // - The FlashAttention-2 paper's A100 rows (validated only): activation gradients costed as the
    //   one kernel every engine runs.
    // - NeMo's Llama 2 7B long-sequence rows (validated only): costed on the FlashAttention-2 their
    //   launcher ran (`attention: flash2`); see `nemo_long_sequence_rows_within_8_percent`.
    // - torchtitan's long-context rows (validated only): PyTorch's ring costed with the bytes it moves
    //   (keys and values at the query heads' width, fp32 gradients, one all-gather per pass) and
    //   their compiled step's waits at issue; see `long_context_rows_within_12_percent`, which also
    //   holds the two rows still 20-24% fast.
    let mut bad = Vec::new();
    for f in &cv.files {
        if f.file.contains("h100_llama") || f.file.contains("megatron_sc21") {
            continue;
        }
        if let Some(m) = f.mape.get("step_time")
            && *m > 12.0
        {
            bad.push(format!("{}: {m:.1}% > 12%", f.file));
        }
    }
    assert!(bad.is_empty(), "step-time MAPE above target: {bad:?}");
}

/// torchtitan's long-context rows (Llama 3.1 8B, FSDP2 + context parallelism at 32K-256K tokens on
/// 8 H100; Llama 3.1 405B, FSDP2 + TP 8 + PP 8 + context parallelism on 512 H100; Float8 linears and
/// `torch.compile`), validated only.
const LONG_CONTEXT: &str = "long_context_torchtitan.jsonl";

/// The rows ran on the 500 W, 96 GB HBM2e H100s of Meta's Grand Teton servers, costed as that part
/// (`h100-hbm2e`: its memory bandwidth, and its power limit as a sustained clock fitted on the three
/// torchtitan rows of the same servers), blind: validated only, Float8 and `torch.compile` included.
/// PyTorch's ring is costed with what it moves (keys and values repeated to the query heads, fp32
/// key/value gradients after every step, one all-gather of the keys and values per pass) and, since
/// the runs compiled each block with the ring inside, with every transfer waited where it is issued
/// (`cp_comm_overlap: false`). That brings the 405B rows, whose rings cross hosts, from 13-28% fast
/// to within 8%, and the file from 15.0% to 9.0%. Still missed: the 8B rings of 4 and 8 ranks inside
/// one host, 20-24% fast. From cp 2 to cp 4 the measured step grows 2.37× where the per-rank
/// attention work only doubles (tokens per rank, chunk size and memory are the same at every cp) and
/// the host's NVLink moves the ring's bytes in a few percent of the step, so something beyond the
/// modelled ring slows PyTorch's ring of four ranks or more on one host; a profile would say what.
/// This test holds every other row within ±10% cross-validated, those two within -30..-10% (fails
/// if they turn slow or further off), and the file within 10%.
#[test]
fn long_context_rows_within_12_percent() {
    let in_host_ring = |name: &str| {
        name.starts_with("llama3.1-8b") && (name.contains(" cp4 ") || name.contains(" cp8 "))
    };
    hold_known_miss(
        LONG_CONTEXT,
        8,
        |name| !in_host_ring(name),
        10.0,
        (-30.0, -10.0),
        10.0,
    );
}

/// Holds a file at the level reached (a known miss, or a file that meets its target): `file` has
/// `rows` rows; those `near` picks are within ±`near_pct` cross-validated, the others within `far`
/// (percent, signed: negative is predicted fast); the file's step-time MAPE is at most `mape`.
fn hold_known_miss(
    file: &str,
    rows: usize,
    near: impl Fn(&str) -> bool,
    near_pct: f64,
    far: (f64, f64),
    mape: f64,
) {
    let cv = cv();
    let of_file = rows_of(cv, file);
    assert_eq!(of_file.len(), rows);
    for r in of_file {
        let e = step_error_pct(r);
        let (lo, hi) = if near(&r.name) {
            (-near_pct, near_pct)
        } else {
            far
        };
        assert!(
            (lo..=hi).contains(&e),
            "{}: {e:+.1}% (bound {lo}..{hi}%)",
            r.name
        );
    }
    let m = file_mape(cv, file, "step_time");
    assert!(m <= mape, "{file}: {m:.1}% > {mape}%");
}

/// NeMo's long-sequence table (Llama 2 7B, Megatron-Core with Transformer Engine, FP8 linears, on
/// DGX H100 at 4K-1M tokens with context parallelism up to 32), validated only.
const LONG_SEQUENCE_MEGATRON: &str = "nemo_long_sequence_h100.jsonl";

/// The table holds the attention FLOPs per GPU per step fixed (4M tokens per step, GPUs in
/// proportion to the sequence) while the dense FLOPs per GPU fall as 1/seq, so each row's error
/// measures more of the attention as the sequence grows: from a tenth of the step at 4K tokens to
/// nearly all of it at 1M. Costed on the cuDNN-class kernel Transformer Engine selects on Hopper,
/// the rows came out 13-36% fast from 16K on; their launcher ran with cuDNN attention switched off
/// (`NVTE_FUSED_ATTN=0`, the rows' `source`), and costed on that FlashAttention-2 every row is
/// within 8% cross-validated (+0.8 to +5.6% at this commit), flat from 4K to 1M tokens.
#[test]
fn nemo_long_sequence_rows_within_8_percent() {
    hold_known_miss(LONG_SEQUENCE_MEGATRON, 9, |_| true, 8.0, (-8.0, 8.0), 6.0);
}

/// The same torchtitan job (Llama 3.1 8B, FSDP2, selective activation checkpointing, no
/// `torch.compile`) on the full-power 80 GB HBM3 H100 (AWS p5) and on the 500 W HBM2e H100 (Meta's
/// Grand Teton) ran 18-21% apart per GPU; costed as two kinds of device, both are predicted within
/// 8% cross-validated.
#[test]
fn torchtitan_h100_rows_on_both_parts_cross_validated() {
    let cv = cv();
    let mut seen = 0;
    for r in rows_of(cv, "torchtitan")
        .into_iter()
        .filter(|r| r.name.starts_with("llama3.1-8b fsdp") && !r.name.contains(" cp"))
        .filter(|r| !r.name.contains("compile") && r.name.contains("h100"))
    {
        let e = step_error_pct(r);
        assert!(e.abs() <= 8.0, "{}: {e:+.1}%", r.name);
        seen += 1;
    }
    assert_eq!(seen, 3);
}

/// CDNA3 (MI300X, MI325X) has one BF16 model among the fitted rows (Llama 3.1 70B on 64 MI325X). The
/// FP8 Llama 3.1 8B rows of the same AMD table (1 and 8 nodes, validated only) are predicted, with their
/// model left out, by CDNA3 coefficients fitted on that BF16 70B row alone: within 8% (-7.2%, -6.0%
/// since the engines' bf16 weight copies; -6.9%, -5.6% before; -3.2%, -2.1% before activation gradients
/// were costed as one kernel). The 70B rows (BF16 and FP8), left out, fall back to the fit's priors:
/// BF16 14.6% slow, FP8 5.0% slow; the
/// bound on them is the level reached, rounded up.
#[test]
fn cdna3_rows_cross_validated() {
    let cv = cv();
    let rows = rows_of(cv, "mi325x_primus_megatron.jsonl");
    assert_eq!(rows.len(), 4);
    for r in rows {
        let e = step_error_pct(r);
        let limit = if r.name.starts_with("llama3.1-8b") {
            8.0
        } else {
            18.0
        };
        assert!(e.abs() <= limit, "{}: {e:+.1}% (limit {limit}%)", r.name);
    }
}

/// In-sample (the committed coefficients) is at least as good as cross-validated overall: a sanity
/// check that the committed fit is the fit of these rows.
#[test]
fn in_sample_is_labelled_and_no_worse() {
    let rows = all_rows();
    let ins = cross_validate(&rows, &profile_for, committed(), false).unwrap();
    eprintln!("{ins}");
    assert!(!ins.cross_validated);
    assert!(ins.mape["step_time"] <= cv().mape["step_time"] + 0.5);
}

/// The analytic fixture used by the invariant tests stays close to the training graph it imitates.
#[test]
fn fixture_flops_match_training_graph() {
    use moai_ir::cost::Phase;
    let flops = |p: &moai_ir::cost::StepProfile| -> f64 {
        p.blocks
            .iter()
            .flat_map(|b| &b.ops)
            .filter(|o| o.phase != Phase::Optimizer)
            .map(|o| o.flops)
            .sum()
    };
    for row in crate::support::truth("truth/h100_llama350m.jsonl") {
        let (real, fixture) = (
            profile_for(&row).unwrap(),
            crate::support::profile_for(&row).unwrap(),
        );
        let ratio = flops(&fixture) / flops(&real);
        assert!(
            (ratio - 1.0).abs() < 0.1,
            "{}: fixture/real FLOPs {ratio}",
            row.name
        );
    }
}

/// `"attention": "triton"` costs LLM Foundry's Triton FlashAttention on A100 at the published
/// fractions of FlashAttention-2's throughput (each attention kernel's work divided by 1/1.4
/// forward and 1/2 backward, no other kernel touched), the same on the H100 rows of its benchmark
/// tables (the same instruction path on Hopper), and is refused on any other GPU.
#[test]
fn triton_attention_is_costed_on_a100_and_hopper_only() {
    use moai_ir::cost::KernelClass;
    let row = crate::support::truth("truth/llmfoundry_a100_80gb.jsonl")
        .into_iter()
        .find(|r| r.attention.as_deref() == Some("triton"))
        .expect("a triton row");
    let mut flash_row = row.clone();
    flash_row.attention = None;
    let triton = row.step_profile(&profile_for).unwrap();
    let flash = flash_row.step_profile(&profile_for).unwrap();
    let mut attention_ops = 0;
    for (bt, bf) in triton.blocks.iter().zip(&flash.blocks) {
        assert_eq!(bt.ops.len(), bf.ops.len());
        for (t, f) in bt.ops.iter().zip(&bf.ops) {
            let ratio = t.flops / f.flops.max(f64::MIN_POSITIVE);
            match t.class {
                KernelClass::Attention { backward, .. } => {
                    attention_ops += 1;
                    let want = if backward { 2.0 } else { 1.4 };
                    assert!((ratio - want).abs() < 1e-9, "{ratio} vs {want}");
                }
                _ => assert_eq!(t.flops, f.flops),
            }
        }
    }
    assert!(attention_ops > 0);
    let mut h100 = row.clone();
    h100.cluster.gpu = "h100".into();
    let mut h100_flash = flash_row.clone();
    h100_flash.cluster.gpu = "h100".into();
    assert_eq!(
        h100.step_profile(&profile_for).unwrap().blocks,
        row.step_profile(&profile_for).unwrap().blocks
    );
    assert_ne!(
        h100.step_profile(&profile_for).unwrap().blocks,
        h100_flash.step_profile(&profile_for).unwrap().blocks
    );
    for gpu in ["mi250", "mi300x", "b200"] {
        let mut other = row.clone();
        other.cluster.gpu = gpu.into();
        let e = other.step_profile(&profile_for).unwrap_err().to_string();
        assert!(
            e.contains("a100, h100, h200 and h100-hbm2e only"),
            "{gpu}: {e}"
        );
    }
}

/// `"attention": "flash2"` costs a Transformer Engine row on Hopper at FlashAttention-2's
/// throughput: each attention kernel's work multiplied by the cuDNN-class kernel's gain over it
/// (`AttentionKernel::throughput_over_fa2`), no other kernel touched; where the stack already runs
/// a FlashAttention-2-class kernel (Megatron-LM on A100) the mark changes nothing.
#[test]
fn flash2_attention_undoes_the_hopper_kernel_gain_only() {
    use moai_ir::cost::KernelClass;
    let row = crate::support::truth("truth/nemo_long_sequence_h100.jsonl")
        .into_iter()
        .find(|r| r.attention.as_deref() == Some("flash2"))
        .expect("a flash2 row");
    let mut cudnn_row = row.clone();
    cudnn_row.attention = None;
    let gain = moai_costmodel::AttentionKernel::HopperFused.throughput_over_fa2();
    let flash2 = row.step_profile(&profile_for).unwrap();
    let cudnn = cudnn_row.step_profile(&profile_for).unwrap();
    let mut attention_ops = 0;
    for (a, b) in flash2.blocks.iter().zip(&cudnn.blocks) {
        assert_eq!(a.ops.len(), b.ops.len());
        for (x, y) in a.ops.iter().zip(&b.ops) {
            if matches!(x.class, KernelClass::Attention { .. }) {
                attention_ops += 1;
                assert!((x.flops / y.flops - gain).abs() < 1e-9);
            } else {
                assert_eq!(x.flops, y.flops);
            }
        }
    }
    assert!(attention_ops > 0);
    let (mut a100, mut a100_cudnn) = (row.clone(), cudnn_row.clone());
    a100.cluster.gpu = "a100".into();
    a100_cudnn.cluster.gpu = "a100".into();
    assert_eq!(
        a100.step_profile(&profile_for).unwrap().blocks,
        a100_cudnn.step_profile(&profile_for).unwrap().blocks
    );
}

/// The logits per micro-batch of an LM-head block: its forward matmul's output elements.
fn head_logits(head: &moai_ir::cost::BlockProfile) -> f64 {
    use moai_ir::cost::{KernelClass, Phase};
    head.ops
        .iter()
        .find_map(|o| match o.class {
            KernelClass::Matmul { batch, m, n, .. } if o.phase == Phase::Forward => {
                Some((batch.max(1) * m * n) as f64)
            }
            _ => None,
        })
        .expect("an LM head's forward matmul")
}

/// `"loss": "fused"` (LLM Foundry's default flash-attn cross-entropy over the bf16 logits): the head
/// loses its two 6-byte-per-logit casts, its cross-entropy kernels move 4 bytes per logit each way,
/// it saves the bf16 logits (2 bytes per logit less than the fp32 copy), and nothing outside the
/// head changes; the peak memory of an FSDP run falls, the step gets no slower, and Megatron-LM's
/// own loss ignores it. A tied LM head (the MPT rows) and an untied one (Llama) both fuse; unknown
/// loss names are refused.
#[test]
fn fused_cross_entropy_rewrites_the_head_only() {
    use moai_costmodel::{CostModel, ProfiledCostModel, Stack};
    use moai_ir::cost::{BlockKind, KernelClass, LossKernel};
    let model = ProfiledCostModel::with_efficiencies(committed().clone());
    let mpt = crate::support::truth("truth/llmfoundry_a100_80gb.jsonl")
        .into_iter()
        .find(|r| r.name == "mpt-13b s16384 n8 a100-80gb")
        .expect("the MPT-13B 16K row");
    let mut llama = crate::support::truth("truth/h100_llama1b.jsonl").remove(0);
    llama.loss = Some("fused".into());
    for mut row in [mpt, llama] {
        // The loss alone (the metrics' kernels are the next test's).
        row.metric_cross_entropies = None;
        let mut torch_row = row.clone();
        torch_row.loss = None;
        let (fused, torch) = (
            row.step_profile(&profile_for).unwrap(),
            torch_row.step_profile(&profile_for).unwrap(),
        );
        assert_eq!(
            (fused.loss, torch.loss),
            (LossKernel::FusedBf16, LossKernel::Fp32Upcast)
        );
        let n = fused.blocks.len();
        assert_eq!(fused.blocks[..n - 1], torch.blocks[..n - 1], "{}", row.name);
        let (fh, th) = (&fused.blocks[n - 1], &torch.blocks[n - 1]);
        assert_eq!(fh.kind, BlockKind::Head);
        let logits = head_logits(fh);
        let copies = |ops: &[moai_ir::cost::OpCost]| {
            ops.iter()
                .filter(|o| o.class == KernelClass::Copy && o.bytes == 6.0 * logits)
                .count()
        };
        assert!(copies(&th.ops) >= 1, "{}", row.name);
        assert_eq!(copies(&fh.ops), 0, "{}", row.name);
        assert_eq!(fh.ops.len() + copies(&th.ops), th.ops.len());
        for o in fh
            .ops
            .iter()
            .filter(|o| o.class == KernelClass::Reduce && o.bytes > logits)
        {
            assert_eq!(o.bytes, 4.0 * logits, "{}: {}", row.name, o.label);
        }
        let saved = |b: &moai_ir::cost::BlockProfile| b.saved.tp_sharded + b.saved.tp_replicated;
        assert_eq!(saved(th) - saved(fh), 2.0 * logits, "{}", row.name);
        let c = row.cluster().unwrap();
        let mut cfg = row.config.clone();
        let (ef, et) = (
            model.estimate(&fused, &c, &cfg).unwrap(),
            model.estimate(&torch, &c, &cfg).unwrap(),
        );
        assert!(ef.peak_memory_bytes < et.peak_memory_bytes, "{}", row.name);
        assert!(ef.step_time_s <= et.step_time_s, "{}", row.name);
        // Megatron-LM computes its own vocab-parallel loss: only the saved logits differ.
        cfg.stack = Stack::Megatron;
        let (mf, mt) = (
            model.estimate(&fused, &c, &cfg).unwrap(),
            model.estimate(&torch, &c, &cfg).unwrap(),
        );
        assert!(mf.peak_memory_bytes <= mt.peak_memory_bytes, "{}", row.name);
    }
    let mut bogus = crate::support::truth("truth/h100_llama1b.jsonl").remove(0);
    bogus.loss = Some("liger".into());
    let e = bogus.step_profile(&profile_for).unwrap_err().to_string();
    assert!(e.contains("loss `liger` (expected torch or fused)"), "{e}");
}

/// `"metric_cross_entropies": 2` (Composer's two training metrics, `LanguageCrossEntropy` and
/// `LanguagePerplexity`, each a forward-only PyTorch cross-entropy over the logits after every
/// micro-batch): the head gains a cast and a log-softmax kernel per metric, 6 and 8 bytes per logit,
/// nothing else changes, the step gets slower and the peak moves by the allocator's rounding only;
/// more than 8 is refused.
#[test]
fn metric_cross_entropies_add_forward_kernels_to_the_head() {
    use moai_costmodel::{CostModel, ProfiledCostModel};
    use moai_ir::cost::{BlockKind, KernelClass, Phase};
    let model = ProfiledCostModel::with_efficiencies(committed().clone());
    let row = crate::support::truth("truth/llmfoundry_h100.jsonl")
        .into_iter()
        .find(|r| r.metric_cross_entropies == Some(2))
        .expect("an LLM Foundry row with its metrics");
    let mut bare = row.clone();
    bare.metric_cross_entropies = None;
    let (with, without) = (
        row.step_profile(&profile_for).unwrap(),
        bare.step_profile(&profile_for).unwrap(),
    );
    let n = with.blocks.len();
    assert_eq!(with.blocks[..n - 1], without.blocks[..n - 1]);
    let (hw, ho) = (&with.blocks[n - 1], &without.blocks[n - 1]);
    assert_eq!(hw.kind, BlockKind::Head);
    assert_eq!(hw.ops[..ho.ops.len()], ho.ops[..]);
    let added = &hw.ops[ho.ops.len()..];
    assert_eq!(added.len(), 4);
    let logits = head_logits(ho);
    for pair in added.chunks(2) {
        assert_eq!(pair[0].class, KernelClass::Copy);
        assert_eq!(pair[0].bytes, 6.0 * logits);
        assert_eq!(pair[1].class, KernelClass::Reduce);
        assert_eq!(pair[1].bytes, 8.0 * logits);
        assert!(pair.iter().all(|o| o.phase == Phase::Forward));
    }
    assert_eq!(hw.saved, ho.saved);
    let c = row.cluster().unwrap();
    let (ew, eo) = (
        model.estimate(&with, &c, &row.config).unwrap(),
        model.estimate(&without, &c, &row.config).unwrap(),
    );
    assert!(ew.step_time_s > eo.step_time_s);
    // The peak moves only by the allocator rounding the memory model applies per forward op.
    assert!(ew.peak_memory_bytes.abs_diff(eo.peak_memory_bytes) <= 4096);
    let mut absurd = row.clone();
    absurd.metric_cross_entropies = Some(9);
    let e = absurd.step_profile(&profile_for).unwrap_err().to_string();
    assert!(e.contains("metric_cross_entropies 9 (at most 8)"), "{e}");
}
