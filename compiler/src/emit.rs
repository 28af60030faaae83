//! Writes a plan's artifacts into `--out DIR`: `plan.json`, Megatron-LM arguments, a DeepSpeed config,
//! torchrun launch scripts, a self-contained HTML report, and (through the runtime, [`crate::codegen`])
//! the plan's compiled stage programs `stage<i>/{forward,backward,optimizer}.{mlir,hsaco,ptx}` with the
//! `plan.moai` bundle. Everything is rendered in memory first; nothing is written when any artifact
//! fails.

use crate::codegen::{CodegenRequest, compile_plan};
use crate::error::{PlanError, Result};
use crate::export::{ExportContext, deepspeed_config, megatron_command_line, torchrun_script};
use crate::model::Model;
use crate::report::PlanReport;
use crate::request::PlanRequest;
use moai_costmodel::Cluster;
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
        llama_style: matches!(s.mlp, moai_ir::layers::MlpKind::Gated),
        tied_embeddings: s.tied_embeddings,
        global_batch: req.batch,
        seq: req.seq,
        precision: req.precision.to_string(),
        optimizer: req.optimizer.to_string(),
        servers: cluster.servers as u64,
        devices_per_server: (cluster.devices as u64).min(cluster.devices_per_server as u64),
    }
}

/// The `plan.json` document: the `--json` object plus the explanation, alternatives and rejections.
/// Wall-clock timings are left out so the file is byte-identical across runs and thread counts.
pub fn plan_document(report: &PlanReport) -> serde_json::Value {
    let mut v = serde_json::to_value(&report.output).expect("plan output serializes");
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
    emits: &[String],
) -> Result<()> {
    let cx = export_context(model, cluster, req);
    let plan = &report.output.plan;
    let codegen = CodegenRequest::from_emits(emits, cluster.gpu)?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let doc = serde_json::to_string_pretty(&plan_document(report)).expect("json") + "\n";
    files.push(("plan.json".into(), doc.into_bytes()));
    let mut bundle = None;
    for e in emits {
        match e.as_str() {
            "plan" => {}
            "mlir" | "hsaco" | "ptx" => {} // compiled once below, for all three
            "megatron" => {
                let line = megatron_command_line(plan, &cx);
                files.push(("megatron_args.txt".into(), format!("{line}\n").into_bytes()));
                for rank in 0..cluster.servers as u64 {
                    files.push((
                        PathBuf::from(format!("launch/server{rank}.sh")),
                        torchrun_script(plan, &cx, rank).into_bytes(),
                    ));
                }
            }
            "deepspeed" => {
                let cfg = serde_json::to_string_pretty(&deepspeed_config(plan, &cx)).expect("json")
                    + "\n";
                files.push(("deepspeed_config.json".into(), cfg.into_bytes()));
            }
            "report" => {
                files.push((
                    "report.html".into(),
                    crate::html::render(report, cluster, req).into_bytes(),
                ));
            }
            other => {
                return Err(PlanError::InvalidArgument(format!(
                    "--emit {other}: unknown artifact (expected any of plan,report,mlir,hsaco,ptx,megatron,deepspeed)"
                )));
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
