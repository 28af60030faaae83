//! ONNX import of arbitrary bytes must return an error or a graph, never panic. The importer reads a path,
//! so each input is written to a file in a per-process temporary directory first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn model_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("moai-fuzz-onnx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir.join("model.onnx")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = model_path();
    std::fs::write(path, data).expect("write temp model");
    let _ = moai_ir::onnx::import(path);
});
