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
/// (Megatron SC21, the LUMI MI250X runs without flash attention) have no fused attention kernel in
/// their fit samples, and the flash rows keep theirs.
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
