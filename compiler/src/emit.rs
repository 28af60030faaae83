//! Writes a plan's artifacts into `--out DIR`: `plan.json`, the engine exports (Megatron-LM arguments,
//! a DeepSpeed config, an FSDP config, torchrun launch scripts; an engine that does not run the plan as
//! planned gets one line in `plan.json`'s `exports` instead), a self-contained HTML report, and (through the runtime, [`crate::codegen`])
//! the plan's compiled stage programs `stage<i>/{forward,backward,optimizer}.{mlir,hsaco,ptx}` with the
//! `plan.moai` bundle. Everything is rendered in memory first; nothing is written when any artifact
//! fails.

use crate::codegen::{CodegenRequest, compile_plan};
use crate::config::EmitKind;
use crate::error::{PlanError, Result};
use crate::export::{ExportContext, export_files, refusal};
use crate::model::Model;
use crate::report::PlanReport;
use crate::request::PlanRequest;
use moai_costmodel::Cluster;
use moai_costmodel::Stack;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The export context of a model and job.
pub fn export_context(model: &Model, cluster: &Cluster, req: &PlanRequest) -> ExportContext {
    let s = &model.summary;
    ExportContext {
        layers: s.layers as u32,
        hidden: s.hidden,
        heads: s.heads,
        kv_heads: s.kv_heads,
        ffn: s.ffn,
        vocab: s.vocab,
        tied_embeddings: s.tied_embeddings,
        settings: model.settings(),
        global_batch: req.batch,
        seq: req.seq,
        precision: req.precision.to_string(),
        optimizer: req.optimizer.to_string(),
        devices: cluster.devices as u64,
        devices_per_server: (cluster.devices_per_server as u64).max(1),
        moe: model.arch.as_ref().and_then(|a| a.moe.clone()),
        mla: model.arch.as_ref().and_then(|a| a.mla.clone()),
        qk_norm: model.arch.as_ref().is_some_and(|a| a.qk_norm),
    }
}

/// The engine an `--emit` artifact named `emit` exports to, if it is an engine export
/// ([`EmitKind::engine`] by name).
pub fn emit_engine(emit: &str) -> Option<Stack> {
    emit.parse::<EmitKind>().ok().and_then(EmitKind::engine)
}

/// Files to write (path relative to `--out`, contents).
pub type OutFiles = Vec<(PathBuf, Vec<u8>)>;

/// What became of each requested engine export: the files written, or the one line saying why the
/// engine does not run the plan as planned and which engine does. Recorded in `plan.json` as
/// `"exports"`.
pub fn engine_exports(
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    plan: &crate::plan::PlanConfig,
    emits: &[EmitKind],
) -> (OutFiles, serde_json::Map<String, serde_json::Value>) {
    let cx = export_context(model, cluster, req);
    let mut files = Vec::new();
    let mut notes = serde_json::Map::new();
    for e in emits {
        let Some(engine) = e.engine() else {
            continue;
        };
        match export_files(engine, plan, &cx) {
            Ok(fs) => {
                let names: Vec<String> = fs.iter().map(|(n, _)| n.clone()).collect();
                notes.insert(
                    engine.name().into(),
                    json!({"written": true, "files": names, "costed_for": plan.engine == engine}),
                );
                files.extend(
                    fs.into_iter()
                        .map(|(n, c)| (PathBuf::from(n), c.into_bytes())),
                );
            }
            Err(why) => {
                let line = refusal(engine, &why, plan, &cx);
                tracing::warn!("{line}");
                notes.insert(engine.name().into(), json!({"written": false, "why": line}));
            }
        }
    }
    (files, notes)
}

/// The version of the `plan.json` format; `moai-compile smi` reads only this version. 2: `format_version`,
/// `cluster.devices_per_server` and `predicted.stages` (per-stage memory and compute) were added.
pub const PLAN_FORMAT_VERSION: u64 = 2;

/// The `plan.json` document: `format_version`, the `--json` object plus the explanation, alternatives and
/// rejections. Wall-clock timings are left out so the file is byte-identical across runs and thread
/// counts.
pub fn plan_document(report: &PlanReport) -> serde_json::Value {
    let mut v = serde_json::to_value(&report.output).expect("plan output serializes");
    if let Some(o) = v.as_object_mut() {
        o.insert("format_version".into(), json!(PLAN_FORMAT_VERSION));
    }
    if let Some(search) = v.get_mut("search").and_then(|s| s.as_object_mut()) {
        search.remove("compile_ms");
        search.remove("cost_ms");
    }
    v["explanation"] = json!(report.explanation);
    v["alternatives"] = serde_json::to_value(&report.alternatives).expect("alternatives serialize");
    v["rejected"] = serde_json::to_value(&report.rejected).expect("rejections serialize");
    v
}

/// Renders every requested artifact, then writes them all. `plan.json` is always written.
pub fn write_outputs(
    out: &Path,
    model: &Model,
    cluster: &Cluster,
    req: &PlanRequest,
    report: &PlanReport,
    emits: &[EmitKind],
) -> Result<()> {
    let plan = &report.output.plan;
    let codegen = CodegenRequest::from_emits(emits, cluster.gpu)?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let (mut exported, notes) = engine_exports(model, cluster, req, plan, emits);
    let mut document = plan_document(report);
    if !notes.is_empty() {
        document["exports"] = serde_json::Value::Object(notes);
    }
    let doc = serde_json::to_string_pretty(&document).expect("json") + "\n";
    files.push(("plan.json".into(), doc.into_bytes()));
    files.append(&mut exported);
    let mut bundle = None;
    for e in emits {
        match e {
            EmitKind::Plan => {}
            EmitKind::Mlir | EmitKind::Hsaco | EmitKind::Ptx => {} // compiled once below, for all three
            EmitKind::Megatron | EmitKind::Deepspeed | EmitKind::Fsdp | EmitKind::Torchtitan => {} // engine exports, above
            EmitKind::Report => {
                files.push((
                    "report.html".into(),
                    crate::html::render(report, cluster, req).into_bytes(),
                ));
            }
        }
    }
    let mut code_summary = None;
    if let Some(want) = codegen {
        let mut compiled =
            compile_plan(model, req, plan, cluster.gpu, want, &report.search.bounds)?;
        if let Some(why) = compiled.stopped_by {
            // keep what is finished: plan.json says which programs are missing, no bundle is written
            tracing::warn!(
                "codegen stopped ({why}): {} program files written, not written: {}; {BUNDLE} not written",
                compiled.files.len(),
                compiled.not_written.join(", ")
            );
            let mut doc = plan_document(report);
            doc["codegen"] = json!({
                "complete": false,
                "stopped_by": why.as_str(),
                "not_written": compiled.not_written,
            });
            files[0].1 = (serde_json::to_string_pretty(&doc).expect("json") + "\n").into_bytes();
            files.append(&mut compiled.files);
            return write_files(out, files);
        }
        code_summary = Some(format!(
            "codegen: wrote {} program files under {}/stage<i>/{}",
            compiled.files.len(),
            out.display(),
            if want.binary {
                format!(
                    " and {BUNDLE} ({} programs, {} kernel launches)",
                    compiled.kernels.len(),
                    compiled
                        .kernels
                        .iter()
                        .map(|k| k.launches.len())
                        .sum::<usize>()
                )
            } else {
                String::new()
            }
        ));
        files.append(&mut compiled.files);
        if want.binary {
            let mut with_code = plan_document(report);
            with_code["codegen"] = compiled.describe();
            let text = serde_json::to_string_pretty(&with_code).expect("json") + "\n";
            bundle = Some((text, compiled.kernels));
        }
    }
    write_files(out, files)?;
    if let Some((plan_json, kernels)) = bundle {
        moai_runtime::write_bundle(&out.join(BUNDLE), &plan_json, kernels)?;
    }
    if let Some(line) = code_summary {
        tracing::info!("{line}");
    }
    Ok(())
}

/// Writes rendered files under `out`, creating directories.
fn write_files(out: &Path, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    for (rel, bytes) in files {
        let path = out.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| PlanError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        std::fs::write(&path, bytes).map_err(|source| PlanError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The bundle's file name inside `--out`: plan JSON, every kernel binary, launch metadata (prost).
pub const BUNDLE: &str = "plan.moai";
