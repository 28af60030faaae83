//! Spec strings (`llama:layers=...`): parsing and, when valid and small, graph building must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = moai_models::looks_like_spec(s);
    if let Ok(cfg) = moai_models::ArchConfig::from_spec(s) {
        // The closed-form count must agree with the graph it describes. Synthetic graphs cost nothing per
        // parameter, so any size builds; keep layers and the rotary table (head_dim) small so that each
        // input stays fast.
        if cfg.layers <= 4 && cfg.head_dim <= 4096 {
            let g = cfg.build().expect("a validated config builds");
            let n: u64 = g
                .params()
                .into_iter()
                .map(|p| {
                    g.node(p).outputs[0]
                        .shape
                        .as_consts()
                        .unwrap()
                        .iter()
                        .product::<i64>() as u64
                })
                .sum();
            assert_eq!(n, cfg.params(), "{s}");
        }
    }
});
