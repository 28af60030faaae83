//! Code generation for the chosen plan (`--emit mlir,hsaco,ptx`): tensor-parallel rank 0's pipeline-stage
//! programs (forward, backward, optimizer) emitted as MLIR and lowered through moai-runtime to the job's
//! GPU: HSACO code objects for AMD (MI250/MI210 → gfx90a, MI300X → gfx942), PTX for NVIDIA (A100 →
//! sm_80, H100 → sm_90).
//!
//! Every tensor-parallel rank runs the same code on its own weight shard, so one rank's programs are the
//! whole of the plan's code. What the programs contain, and what they leave to the launcher, is listed by
//! [`CompiledPlan::notes`].
//!
//! Precision: the kernels are emitted in the plan's precision (fp32, amp-bf16, bf16): 16-bit contractions
//! accumulate in f32, 16-bit activations are all-reduced in f32, optimizer moments stay fp32. Each
//! policy's training step is checked against the reference interpreter by moai-runtime's tests on the CPU.
//! [`kernel_precision`] is the one place that decides (and would name a fallback).

use crate::config::EmitKind;
use crate::error::{PlanError, Result};
use crate::model::Model;
use crate::plan::PlanConfig;
use crate::request::{PlanRequest, StopReason, WorkBounds};
use moai_costmodel::Gpu;
use moai_ir::cost::TpSplit;
use moai_ir::train::tp::linear_class;
use moai_ir::train::{PrecisionPolicy, TrainOptions};
use moai_ir::{Graph, NodeId, Op, ParamData, Provenance, Tensor, TensorData, Value};
use moai_runtime::{
    AmdChip, Dims, EmittedModule, KernelEntry, NvSm, Program, StageLayout, StageProgram, Target,
    emit_program,
};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// True when this build can lower to GPU binaries (moai-runtime's `mlir` feature, LLVM/MLIR 22).
pub const GPU_LOWERING: bool = cfg!(feature = "mlir");

/// How to get a build that lowers to GPU binaries.
pub const ENABLE_MLIR_HINT: &str = "install LLVM/MLIR 22 (Debian: libmlir-22-dev mlir-22-tools llvm-22-dev lld-22, see runtime/README.md) and rebuild with the `mlir` feature: `cargo build --release -p moai-compiler --features mlir`";

/// Which code artifacts `--emit` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodegenRequest {
    /// Write `stage<i>/<program>.mlir` (the emitted module, GPU-styled for a GPU target).
    pub mlir: bool,
    /// Lower to the target's binary: `stage<i>/<program>.{hsaco,ptx}` and the `plan.moai` bundle.
    pub binary: bool,
}

impl CodegenRequest {
    /// The code artifacts among `emits` for a job on `gpu`, checked before anything is searched or
    /// written: `hsaco` on an NVIDIA GPU or `ptx` on an AMD one is an error naming the right choice, and
    /// a binary in a build without the `mlir` feature is an error saying how to enable it.
    /// `None` when no code artifact was asked for.
    pub fn from_emits(emits: &[EmitKind], gpu: Gpu) -> Result<Option<CodegenRequest>> {
        if !emits
            .iter()
            .any(|e| matches!(e, EmitKind::Mlir | EmitKind::Hsaco | EmitKind::Ptx))
        {
            return Ok(None);
        }
        let target = target_for(gpu)?;
        let mut want = CodegenRequest::default();
        for &e in emits {
            match e {
                EmitKind::Mlir => want.mlir = true,
                EmitKind::Hsaco | EmitKind::Ptx => {
                    if e.name() != target.binary_extension() {
                        return Err(PlanError::InvalidArgument(mismatch(e.name(), gpu, target)));
                    }
                    if !GPU_LOWERING {
                        return Err(PlanError::InvalidArgument(format!(
                            "--emit {e} needs moai-compile built with the `mlir` feature, and this build has it off: {ENABLE_MLIR_HINT}"
                        )));
                    }
                    want.binary = true;
                }
                _ => {}
            }
        }
        Ok((want.mlir || want.binary).then_some(want))
    }
}

fn mismatch(asked: &str, gpu: Gpu, target: Target) -> String {
    let (vendor, what) = match target {
        Target::Rocdl { .. } => ("AMD", "HSACO code objects"),
        Target::Nvvm { .. } => ("NVIDIA", "PTX"),
        Target::Cpu => ("CPU", "host code"),
    };
    let chip = target.to_string();
    let chip = chip.split(':').next_back().unwrap_or(&chip);
    format!(
        "--emit {asked}: the job runs on {gpu} ({vendor} {chip}), which takes {what}; use --emit {}",
        target.binary_extension()
    )
}

/// The code-generation target of a GPU kind: MI250/MI210/MI250X → `rocdl:gfx90a`, MI300X/MI325X →
/// `rocdl:gfx942`, A100 → `nvvm:sm_80`, H100/H200 → `nvvm:sm_90`. B200 (sm_100) and MI355X (gfx950)
/// have no code-generation target yet: an error naming the chip (they are planned and costed, not
/// compiled).
pub fn target_for(gpu: Gpu) -> Result<Target> {
    Ok(match gpu {
        Gpu::Mi250 | Gpu::Mi210 | Gpu::Mi250x => Target::Rocdl {
            chip: AmdChip::Gfx90a,
        },
        Gpu::Mi300x | Gpu::Mi325x => Target::Rocdl {
            chip: AmdChip::Gfx942,
        },
        Gpu::A100 => Target::Nvvm { sm: NvSm::Sm80 },
        Gpu::H100 | Gpu::H200 | Gpu::H100Hbm2e => Target::Nvvm { sm: NvSm::Sm90 },
        Gpu::B200 | Gpu::Mi355x => {
            let chip = if gpu == Gpu::B200 { "sm_100" } else { "gfx950" };
            return Err(PlanError::InvalidArgument(format!(
                "--emit: moai has no code-generation target for {gpu} ({chip}) yet; plan and export without --emit mlir/hsaco/ptx"
            )));
        }
    })
}

/// The plan's code, rendered in memory.
#[derive(Clone, Debug)]
pub struct CompiledPlan {
    /// The target compiled for.
    pub target: Target,
    /// Files relative to `--out` (`stage0/forward.mlir`, `stage0/forward.hsaco`, ...) and their bytes.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// One bundle entry per program (empty without `binary`).
    pub kernels: Vec<KernelEntry>,
    /// What the emitted code does and does not contain (printed on stderr, one line each).
    pub notes: Vec<String>,
    /// Wall time per program: `(stage, program, seconds)`.
    pub timings: Vec<(u32, &'static str, f64)>,
    /// Precision the kernels compute in (see the module docs).
    pub precision: PrecisionPolicy,
    /// Tensor-parallel degree and the rank whose programs these are (0).
    pub tp: (u64, u64),
    /// Programs left unfinished because the time budget ran out or Ctrl-C stopped the work, as the files
    /// they would have been (`stage1/backward.hsaco`); empty when every program was compiled.
    pub not_written: Vec<String>,
    /// Why programs were left unfinished, when some were.
    pub stopped_by: Option<StopReason>,
}

impl CompiledPlan {
    /// What the bundle records about the code next to the plan: target, rank, precision, notes.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target.to_string(),
            "tp": self.tp.0,
            "rank": self.tp.1,
            "precision": self.precision.to_string(),
            "notes": self.notes,
        })
    }
}

/// The precision the kernels are emitted in for a plan trained in `plan`, with the warning to print
/// when they differ.
pub fn kernel_precision(plan: PrecisionPolicy) -> (PrecisionPolicy, Option<String>) {
    // every policy's step is validated against the reference interpreter by moai-runtime's tests
    (plan, None)
}

/// Makes every tensor-parallel linear layer's weight a parameter named after its module
/// (`model.layers.0.self_attn.q_proj.weight`) stored `[in, out]`, the form the runtime's tensor-parallel
/// split recognizes (it classes linears by weight name and slices parameters). ONNX imports give two
/// other forms: a transposed initializer folded into a constant named after the folded value (`val_92`:
/// renamed), and, for external weights, `Transpose(W[out, in])` (replaced by one `[in, out]` parameter,
/// so the emitted programs take that weight pre-transposed, like the folded ones; external data is not
/// read for code generation and keeps its file reference). Returns (renamed, pre-transposed).
pub fn canonical_linear_weights(g: &mut Graph) -> (usize, usize) {
    let splits = |c: TpSplit| matches!(c, TpSplit::Column | TpSplit::Row);
    let mut users = std::collections::HashMap::<NodeId, usize>::new();
    for id in g.node_ids() {
        for v in &g.node(id).inputs {
            *users.entry(v.node).or_default() += 1;
        }
    }
    let (mut renamed, mut transposed) = (0, 0);
    for id in g.topo_order() {
        let n = g.node(id).clone();
        if !matches!(n.op, Op::Linear { .. }) || !splits(linear_class(&n.prov.scope)) {
            continue;
        }
        let new_name = format!("{}.weight", n.prov.scope);
        let w = n.inputs[1];
        let wn = g.node(w.node).clone();
        match &wn.op {
            Op::Param { name, .. } if linear_class(name) != linear_class(&n.prov.scope) => {
                if let Op::Param { name, .. } = &mut g.node_mut(w.node).op {
                    *name = new_name;
                }
                renamed += 1;
            }
            Op::Transpose(perm) if perm == &[1, 0] => {
                let src = wn.inputs[0];
                let Op::Param { data, .. } = &g.node(src.node).op else {
                    continue;
                };
                if users.get(&src.node) != Some(&1) {
                    continue; // shared (tied) weight: leave it whole
                }
                let data = match data {
                    ParamData::Inline(t) => ParamData::Inline(transpose2(t)),
                    external => external.clone(),
                };
                let prov = Provenance {
                    name: new_name.clone(),
                    scope: n.prov.scope.clone(),
                    layer: n.prov.layer,
                };
                let ty = g.ty(w).clone();
                let p = g.add(
                    Op::Param {
                        name: new_name,
                        data,
                    },
                    vec![],
                    vec![ty],
                    prov,
                );
                g.replace_uses(w, Value::of(p));
                transposed += 1;
            }
            _ => {}
        }
    }
    if transposed > 0 {
        g.remove_dead();
    }
    (renamed, transposed)
}

/// A 2-D tensor transposed.
fn transpose2(t: &Tensor) -> Tensor {
    fn tr<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
        (0..r * c).map(|k| v[(k % r) * c + k / r]).collect()
    }
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = t.clone();
    out.shape = vec![c, r];
    out.data = match &t.data {
        TensorData::F32(v) => TensorData::F32(tr(v, r, c)),
        TensorData::F64(v) => TensorData::F64(tr(v, r, c)),
        TensorData::I64(v) => TensorData::I64(tr(v, r, c)),
        TensorData::Bool(v) => TensorData::Bool(tr(v, r, c)),
    };
    out
}

/// Pipeline layout of a plan: layers per stage from its inclusive ranges.
pub fn stage_counts(plan: &PlanConfig) -> Result<Vec<u32>> {
    let mut counts = Vec::with_capacity(plan.stages.len());
    for (i, s) in plan.stages.iter().enumerate() {
        let [lo, hi] = s.layers;
        if hi < lo {
            return Err(PlanError::InvalidArgument(format!(
                "plan stage {i}: layer range {lo}..={hi} is empty"
            )));
        }
        counts.push(hi - lo + 1);
    }
    if counts.is_empty() {
        return Err(PlanError::InvalidArgument(
            "plan has no pipeline stages".into(),
        ));
    }
    Ok(counts)
}

/// What the emitted programs leave out of the plan, in words (honest about the parallel dimensions the
/// kernels do not implement themselves).
fn notes(plan: &PlanConfig, req: &PlanRequest, target: Target) -> Vec<String> {
    let mut n = vec![if plan.tp > 1 {
        format!(
            "code is tensor-parallel rank 0's: each of the {} tp ranks runs these same kernels on its own weight shard (the tp all-reduces are calls into the runtime)",
            plan.tp
        )
    } else {
        "no tensor parallelism: one device runs each stage's kernels".to_string()
    }];
    n.push(format!(
        "programs are per micro-batch ({} sequences × {} tokens); the step's {} micro-batch{}, the pipeline schedule ({}) and the transfers between stages are the launcher's",
        plan.micro_batch_size,
        req.seq,
        plan.num_micro_batches,
        if plan.num_micro_batches == 1 { "" } else { "es" },
        plan.schedule
    ));
    if plan.dp > 1 {
        let zero = if plan.distribute_param {
            " (with ZeRO-3 parameter gathering)"
        } else if plan.distribute_optimizer {
            " (with ZeRO-1 optimizer-state sharding)"
        } else {
            ""
        };
        n.push(format!(
            "data parallelism (dp={}) is not in the kernels: the gradient all-reduce across replicas{zero} is the launcher's; the optimizer program updates this rank's whole shard",
            plan.dp
        ));
    }
    if plan.sequence_parallel {
        n.push("sequence parallelism is not emitted: activations stay replicated across tp ranks and the tp collectives are all-reduces (same results, more activation memory)".into());
    }
    if target.is_gpu() {
        n.push(format!(
            "kernels for {target}: matmuls and attention as workgroup-tiled kernels, the rest as 16×16-thread elementwise/reduction kernels"
        ));
    }
    n
}

/// Builds rank 0's stage programs of `plan` for `model` and emits them for `gpu`: MLIR text, and with
/// `want.binary` the lowered binaries with their launch metadata. Progress and timing go to the log
/// (stderr), one line per program.
///
/// `bounds` (the search's: its time budget and the request's cancellation token) stop the work between
/// programs: the programs finished are returned, the others are listed in
/// [`CompiledPlan::not_written`] with the reason in [`CompiledPlan::stopped_by`].
pub fn compile_plan(
    model: &Model,
    req: &PlanRequest,
    plan: &PlanConfig,
    gpu: Gpu,
    want: CodegenRequest,
    bounds: &WorkBounds,
) -> Result<CompiledPlan> {
    let target = target_for(gpu)?;
    let counts = stage_counts(plan)?;
    let ext = if want.binary {
        target.binary_extension()
    } else {
        "mlir"
    };
    // stopped before the step is built (e.g. a search cut short): no program is compiled
    let unstarted = |why: StopReason| {
        let (precision, _) = kernel_precision(req.precision);
        let not_written: Vec<String> = (0..counts.len())
            .flat_map(|i| {
                ["forward", "backward", "optimizer"].map(|k| format!("stage{i}/{k}.{ext}"))
            })
            .collect();
        tracing::warn!(
            "codegen: stopped ({why}) before compiling any of the {} programs",
            not_written.len()
        );
        CompiledPlan {
            target,
            files: Vec::new(),
            kernels: Vec::new(),
            notes: Vec::new(),
            timings: Vec::new(),
            precision,
            tp: (plan.tp, 0),
            not_written,
            stopped_by: Some(why),
        }
    };
    if let Some(why) = bounds.check() {
        return Ok(unstarted(why));
    }
    let tp = u32::try_from(plan.tp)
        .map_err(|_| PlanError::InvalidArgument(format!("plan tp {}: too large", plan.tp)))?;
    let (precision, fallback) = kernel_precision(req.precision);
    let opts = TrainOptions {
        precision,
        ..crate::search::train_options(req, plan.recompute)
    };
    let dims: Dims = [
        ("batch".to_string(), plan.micro_batch_size as i64),
        ("seq".to_string(), req.seq as i64),
    ]
    .into();
    let mut notes = notes(plan, req, target);
    for line in &notes {
        tracing::info!("codegen: {line}");
    }
    if let Some(w) = fallback {
        tracing::warn!("codegen: {w}");
        notes.push(w);
    }

    let t0 = Instant::now();
    let mut named = model.graph.clone();
    let (renamed, transposed) = canonical_linear_weights(&mut named);
    if renamed + transposed > 0 {
        tracing::info!(
            "codegen: linear weights are [in, out] parameters named `<module>.weight`: {renamed} folded ones renamed, {transposed} transposed ones taken pre-transposed"
        );
    }
    let rank = if tp > 1 {
        // errors itself when no linear layer splits (never unsplit code as rank 0's)
        moai_runtime::shard_tensor_parallel(&named, tp, 0)?
    } else {
        named
    };
    let tg = moai_ir::train::build_training_graph(&rank, &opts)?;
    let layout = StageLayout::from_counts(&counts)?;
    let stages = moai_runtime::stage_programs(&tg, &layout, &dims)?;
    if let Some(why) = bounds.check() {
        return Ok(unstarted(why));
    }
    let n = stages.len();
    tracing::info!(
        "codegen: {} training step ({}, {}, recompute {}) split into {n} stage{} in {:.1} s; emitting its programs for {target}",
        model.name,
        precision,
        req.optimizer,
        plan.recompute,
        if n == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64(),
    );

    let style = moai_runtime::stage::style_for(target);
    let mut out = CompiledPlan {
        target,
        files: Vec::new(),
        kernels: Vec::new(),
        notes,
        timings: Vec::new(),
        precision,
        tp: (plan.tp, 0),
        not_written: Vec::new(),
        stopped_by: None,
    };
    let jobs: Vec<(&StageProgram, &Program)> = stages
        .iter()
        .flat_map(|sp| sp.programs.iter().map(move |p| (sp, p)))
        .collect();
    let total = jobs.len();
    let done = AtomicUsize::new(0);
    // programs are independent: lower them on the worker threads (--threads), results in program order.
    // The time budget or Ctrl-C skips the programs not yet started (they are reported as not written);
    // a second Ctrl-C exits at once (the binary's handler).
    let compile = |(sp, p): &(&StageProgram, &Program)| -> Result<Skipped<Compiled>> {
        let kind = p.kind.name();
        if let Some(why) = bounds.check() {
            return Ok(Err(why));
        }
        let fname = format!("stage{}_{kind}", sp.stage);
        let started = Instant::now();
        let (module, entry) = if want.binary {
            tracing::info!(
                "codegen: stage{} {kind}: emitting MLIR and lowering it to {ext} ...",
                sp.stage
            );
            moai_runtime::compile_program(&p.graph, &sp.dims, &fname, target, None)?
        } else {
            (emit_program(&p.graph, &sp.dims, &fname, style)?, None)
        };
        let secs = started.elapsed().as_secs_f64();
        let k = done.fetch_add(1, Ordering::SeqCst) + 1;
        let mut summary = format!(
            "codegen [{k}/{total}] stage{} {kind}: {} tiled contractions",
            sp.stage, module.tiled_kernels
        );
        if let Some(e) = &entry {
            summary += &format!(
                ", {} kernel launches, {} KiB {ext}",
                e.launches.len(),
                e.binary.len().div_ceil(1024)
            );
        }
        tracing::info!("{summary} in {secs:.1} s");
        Ok(Ok((module, entry, secs)))
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(req.threads.unwrap_or(0))
        .build()
        .map_err(|e| PlanError::InvalidArgument(format!("--threads: {e}")))?;
    let results: Vec<Result<Skipped<Compiled>>> =
        pool.install(|| jobs.par_iter().with_max_len(1).map(compile).collect());
    for ((sp, p), r) in jobs.iter().zip(results) {
        let kind = p.kind.name();
        let (module, entry, secs) = match r? {
            Ok(c) => c,
            Err(why) => {
                out.stopped_by.get_or_insert(why);
                out.not_written
                    .push(format!("stage{}/{kind}.{ext}", sp.stage));
                continue;
            }
        };
        let dir = PathBuf::from(format!("stage{}", sp.stage));
        if want.mlir {
            out.files
                .push((dir.join(format!("{kind}.mlir")), module.text.into_bytes()));
        }
        if let Some(mut e) = entry {
            out.files
                .push((dir.join(format!("{kind}.{ext}")), e.binary.clone()));
            e.stage = sp.stage;
            e.program = kind.to_string();
            out.kernels.push(e);
        }
        out.timings.push((sp.stage, kind, secs));
    }
    Ok(out)
}

/// A unit of work done, or skipped for the reason the work stopped.
type Skipped<T> = std::result::Result<T, StopReason>;

/// One program's emitted module, its binary (GPU) and the seconds it took.
type Compiled = (EmittedModule, Option<KernelEntry>, f64);

#[cfg(test)]
mod tests {
    use super::*;

    fn emits(s: &[&str]) -> Vec<EmitKind> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn targets_follow_the_gpu() {
        assert_eq!(target_for(Gpu::Mi250).unwrap().to_string(), "rocdl:gfx90a");
        assert_eq!(target_for(Gpu::Mi210).unwrap().to_string(), "rocdl:gfx90a");
        assert_eq!(target_for(Gpu::Mi250x).unwrap().to_string(), "rocdl:gfx90a");
        assert_eq!(target_for(Gpu::Mi300x).unwrap().to_string(), "rocdl:gfx942");
        assert_eq!(target_for(Gpu::A100).unwrap().to_string(), "nvvm:sm_80");
        assert_eq!(target_for(Gpu::H100).unwrap().to_string(), "nvvm:sm_90");
        assert_eq!(target_for(Gpu::H200).unwrap().to_string(), "nvvm:sm_90");
        assert_eq!(target_for(Gpu::Mi325x).unwrap().to_string(), "rocdl:gfx942");
        for g in [Gpu::B200, Gpu::Mi355x] {
            let e = target_for(g).unwrap_err().to_string();
            assert!(e.contains("no code-generation target"), "{e}");
        }
    }

    #[test]
    fn wrong_binary_kind_names_the_gpu_and_the_right_choice() {
        let e = CodegenRequest::from_emits(&emits(&["hsaco"]), Gpu::H100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("h100") && e.contains("sm_90") && e.contains("--emit ptx"),
            "{e}"
        );
        let e = CodegenRequest::from_emits(&emits(&["mlir", "ptx"]), Gpu::Mi300x)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mi300x") && e.contains("gfx942") && e.contains("--emit hsaco"),
            "{e}"
        );
    }

    #[test]
    fn code_artifacts_are_recognized() {
        assert_eq!(
            CodegenRequest::from_emits(&emits(&["plan", "report"]), Gpu::Mi250).unwrap(),
            None
        );
        assert_eq!(
            CodegenRequest::from_emits(&emits(&["mlir"]), Gpu::A100).unwrap(),
            Some(CodegenRequest {
                mlir: true,
                binary: false
            })
        );
        let r = CodegenRequest::from_emits(&emits(&["mlir", "hsaco"]), Gpu::Mi250);
        if GPU_LOWERING {
            assert_eq!(
                r.unwrap(),
                Some(CodegenRequest {
                    mlir: true,
                    binary: true
                })
            );
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("--features mlir"), "{e}");
        }
    }

    #[test]
    fn stage_counts_from_ranges() {
        let mut p = crate::plan::PlanConfig::of_config(
            &moai_costmodel::ParallelConfig {
                pp: 2,
                stages: vec![(0, 20), (21, 39)],
                ..Default::default()
            },
            40,
        );
        assert_eq!(stage_counts(&p).unwrap(), vec![21, 19]);
        p.stages[1].layers = [21, 20];
        assert!(stage_counts(&p).is_err());
    }

    /// tiny-llama's geometry, built by moai-models with seeded random weights.
    fn tiny_llama() -> moai_ir::Graph {
        moai_models::ArchConfig::from_spec(
            "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,eps=1e-6,rope_theta=10000,dtype=f32",
        )
        .and_then(|c| c.build_with(moai_models::Weights::Random { seed: 7, std: 0.1, embedding_std: None }))
        .unwrap()
    }

    #[test]
    fn folded_weight_names_are_restored_from_the_module() {
        let mut g = tiny_llama();
        let mut folded = 0;
        for id in g.node_ids().collect::<Vec<_>>() {
            if let Op::Param { name, .. } = &mut g.node_mut(id).op
                && name.contains("_proj")
            {
                *name = format!("val_{}", id.index());
                folded += 1;
            }
        }
        assert!(folded >= 14, "{folded}");
        assert_eq!(canonical_linear_weights(&mut g), (folded, 0));
        let names: Vec<String> = g
            .node_ids()
            .filter_map(|id| match &g.node(id).op {
                Op::Param { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        assert!(names.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("val_")), "{names:?}");
        assert_eq!(canonical_linear_weights(&mut g), (0, 0));
    }

    #[test]
    fn transposed_weights_become_in_out_parameters() {
        let mut g = tiny_llama();
        // rewrite q_proj of layer 0 as the ONNX import gives external weights: Transpose(W[out, in])
        let lin = g
            .node_ids()
            .find(|id| {
                matches!(g.node(*id).op, Op::Linear { .. })
                    && g.node(*id).prov.scope == "model.layers.0.self_attn.q_proj"
            })
            .expect("q_proj");
        let w = g.node(lin).inputs[1];
        let Op::Param {
            data: ParamData::Inline(t),
            ..
        } = g.node(w.node).op.clone()
        else {
            panic!("inline weight")
        };
        let t_out_in = transpose2(&t);
        let ty_out_in = moai_ir::TensorType {
            dtype: t.dtype,
            shape: moai_ir::Shape(
                t_out_in
                    .shape
                    .iter()
                    .map(|d| moai_ir::Dim::constant(*d as i64))
                    .collect(),
            ),
        };
        let p = g.add(
            Op::Param {
                name: "onnx::W".into(),
                data: ParamData::Inline(t_out_in),
            },
            vec![],
            vec![ty_out_in],
            Provenance::default(),
        );
        let tr = g.add(
            Op::Transpose(vec![1, 0]),
            vec![Value::of(p)],
            vec![g.ty(w).clone()],
            Provenance::default(),
        );
        g.replace_uses(w, Value::of(tr));
        g.remove_dead();
        assert_eq!(canonical_linear_weights(&mut g), (0, 1));
        let w = g.node(lin).inputs[1];
        match &g.node(w.node).op {
            Op::Param {
                name,
                data: ParamData::Inline(back),
            } => {
                assert_eq!(name, "model.layers.0.self_attn.q_proj.weight");
                assert_eq!(back, &t, "values transposed back to [in, out]");
            }
            other => panic!("{other:?}"),
        }
        let rank = moai_runtime::shard_tensor_parallel(&g, 2, 0).expect("splits");
        assert!(
            rank.node_ids()
                .any(|id| matches!(rank.node(id).op, Op::Collective { .. }))
        );
    }
}
