//! The committed coefficients are reproducible from the truth files.

use crate::real::{fit_samples as samples, truth_files};
use moai_costmodel::efficiency::{EFFICIENCY_JSON, EfficiencyFile};
use moai_costmodel::fit::refit;

#[test]
fn fitted_coefficients_match_committed() {
    let committed = EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap();
    let all: Vec<_> = truth_files().iter().flat_map(|f| samples(f)).collect();
    let t = std::time::Instant::now();
    let fitted = refit(&committed, &all).unwrap();
    eprintln!(
        "joint fit over {} rows: {:.1} s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    if std::env::var_os("MOAI_WRITE_FIT").is_some() {
        let text = serde_json::to_string_pretty(&fitted).unwrap() + "\n";
        std::fs::write(crate::support::data("efficiency.json"), text).unwrap();
        eprintln!(
            "wrote data/efficiency.json:\n{}",
            serde_json::to_string_pretty(&fitted).unwrap()
        );
        return;
    }
    let hint = "run MOAI_WRITE_FIT=1 cargo test -p moai-costmodel --test main fit::";
    for (a, b) in fitted.devices.iter().zip(&committed.devices) {
        assert_eq!(a.gpu, b.gpu);
        for (x, y) in [
            (a.matmul, b.matmul),
            (a.attention, b.attention),
            (a.memory, b.memory),
        ] {
            assert!(
                (x / y - 1.0).abs() < 1e-3,
                "{:?}: refit {x} vs committed {y}; {hint}",
                a.gpu
            );
        }
    }
    for (a, b) in fitted.stacks.iter().zip(&committed.stacks) {
        assert_eq!(a.stack, b.stack);
        for (x, y) in [
            (a.launch_overhead_s, b.launch_overhead_s),
            (a.step_overhead_s, b.step_overhead_s),
            (a.fused_bytes, b.fused_bytes),
            (
                a.te_fused_bytes.unwrap_or(1.0),
                b.te_fused_bytes.unwrap_or(1.0),
            ),
        ] {
            assert!(
                (x / y - 1.0).abs() < 1e-3,
                "{:?}: refit {x} vs committed {y}; {hint}",
                a.stack
            );
        }
    }
    assert!(
        (fitted.allocator.loss_bytes_per_logit / committed.allocator.loss_bytes_per_logit - 1.0)
            .abs()
            < 1e-3,
        "{hint}"
    );
    assert!(
        (fitted.allocator.workspace_bytes - committed.allocator.workspace_bytes).abs()
            <= 1e-3 * committed.allocator.workspace_bytes.abs().max(1e6),
        "{hint}"
    );
}

/// The committed fit costs every row as `validate` does: rows recorded with `"attention": "unfused"`
/// (Megatron SC21 and Korthikanti et al., the LUMI MI250X runs without flash attention) have no
/// fused attention kernel in their fit samples, and the flash rows keep theirs.
#[test]
fn fit_samples_cost_attention_as_the_rows_record_it() {
    use moai_ir::cost::KernelClass;
    let fused = |s: &moai_costmodel::fit::FitSample| {
        s.profile
            .blocks
            .iter()
            .flat_map(|b| &b.ops)
            .any(|o| matches!(o.class, KernelClass::Attention { .. }))
    };
    for f in [
        "truth/megatron_sc21_table1.jsonl",
        "truth/megatron_a100_korthikanti2022.jsonl",
        "truth/lumi_mi250x_megatron_deepspeed.jsonl",
        "truth/lumi_mi250x_gptneox.jsonl",
    ] {
        let rows = samples(f);
        assert!(!rows.is_empty(), "{f}");
        for s in &rows {
            assert!(!fused(s), "{f}: {} keeps a fused attention kernel", s.name);
        }
    }
    assert!(samples("truth/mi250_mosaicml.jsonl").iter().all(fused));
}

/// Transformer Engine's fusion fraction is fitted on the rows that run it (Megatron-LM on Hopper:
/// FlagPerf's BF16 rows) and the older fusions' fraction on the others (SC21's A100 rows); neither
/// reaches the other's rows.
#[test]
fn te_fusion_is_fitted_on_the_rows_that_run_it() {
    use moai_costmodel::Stack;
    use moai_costmodel::fit::{Param, free_params};
    let hopper = samples("truth/megatron_h100_flagperf.jsonl");
    let a100 = samples("truth/megatron_sc21_table1.jsonl");
    assert!(!hopper.is_empty() && !a100.is_empty());
    let h = free_params(&hopper);
    assert!(h.contains(&Param::TeFusedBytes(Stack::Megatron)), "{h:?}");
    assert!(!h.contains(&Param::FusedBytes(Stack::Megatron)), "{h:?}");
    let a = free_params(&a100);
    assert!(a.contains(&Param::FusedBytes(Stack::Megatron)), "{a:?}");
    assert!(!a.contains(&Param::TeFusedBytes(Stack::Megatron)), "{a:?}");
    let committed = EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap();
    let te = committed.stack(Stack::Megatron).te_fused_bytes;
    assert!(te.is_some_and(|t| t > 0.2 && t < 1.0), "{te:?}");
}
