//! The committed coefficients are reproducible from the truth files.

use crate::real::real_samples as samples;
use moai_costmodel::efficiency::{EFFICIENCY_JSON, EfficiencyFile};
use moai_costmodel::fit::refit;

#[test]
fn fitted_coefficients_match_committed() {
    let committed = EfficiencyFile::from_json(EFFICIENCY_JSON, "data/efficiency.json").unwrap();
    let h100 = samples("truth/h100_llama350m.jsonl");
    let a100 = samples("truth/megatron_sc21_table1.jsonl");
    let fitted = refit(&committed, &h100, &a100).unwrap();
    if std::env::var_os("MOAI_WRITE_FIT").is_some() {
        let text = serde_json::to_string_pretty(&fitted).unwrap() + "\n";
        std::fs::write(crate::support::data("efficiency.json"), text).unwrap();
        eprintln!(
            "wrote data/efficiency.json:\n{}",
            serde_json::to_string_pretty(&fitted).unwrap()
        );
        return;
    }
    for (a, b) in fitted.devices.iter().zip(&committed.devices) {
        for (x, y) in [
            (a.matmul, b.matmul),
            (a.attention, b.attention),
            (a.memory, b.memory),
            (a.launch_overhead_s, b.launch_overhead_s),
        ] {
            assert!(
                (x / y - 1.0).abs() < 1e-3,
                "{:?}: refit {x} vs committed {y}; run MOAI_WRITE_FIT=1 cargo test -p moai-costmodel --test main fit::",
                a.gpu
            );
        }
    }
    assert!(
        (fitted.allocator.loss_bytes_per_logit / committed.allocator.loss_bytes_per_logit - 1.0)
            .abs()
            < 1e-3
    );
    assert!(
        (fitted.allocator.workspace_bytes - committed.allocator.workspace_bytes).abs()
            <= 1e-3 * committed.allocator.workspace_bytes.abs().max(1e6)
    );
}
