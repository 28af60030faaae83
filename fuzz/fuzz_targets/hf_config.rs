//! Hugging Face `config.json` text: parsing and, when valid and small, graph building must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = moai_models::ArchConfig::from_hf_config_str(s, "fuzz") {
        if cfg.layers <= 4 && cfg.head_dim <= 4096 {
            let g = cfg.build().expect("a validated config builds");
            assert_eq!(g.outputs.len(), 1);
        }
    }
});
