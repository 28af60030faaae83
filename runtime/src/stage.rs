//! Stage programs and their emission to files: `stage<i>/{forward,backward,optimizer}.{mlir,hsaco,ptx}`.

use crate::bundle::KernelEntry;
use crate::emit::{Dims, EmittedModule, KernelStyle, emit_program};
use crate::error::{Result, RuntimeError};
use crate::target::{Target, Toolkit};
use moai_ir::Graph;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which program of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProgramKind {
    /// Forward pass of the stage.
    Forward,
    /// Backward pass.
    Backward,
    /// Optimizer update.
    Optimizer,
}

impl ProgramKind {
    /// `forward`, `backward`, `optimizer`.
    pub fn name(self) -> &'static str {
        match self {
            ProgramKind::Forward => "forward",
            ProgramKind::Backward => "backward",
            ProgramKind::Optimizer => "optimizer",
        }
    }
}

/// One program of a stage.
#[derive(Clone, Debug)]
pub struct Program {
    /// Which one.
    pub kind: ProgramKind,
    /// Its graph (canonical ops; symbolic dims bound by the stage's `dims`).
    pub graph: Graph,
}

/// The programs of one pipeline stage (one tensor-parallel rank), with the plan's concrete dims.
#[derive(Clone, Debug)]
pub struct StageProgram {
    /// Stage index.
    pub stage: u32,
    /// Forward, backward, optimizer (any subset).
    pub programs: Vec<Program>,
    /// Concrete values of the symbolic dims (`batch` = micro-batch size, `seq`).
    pub dims: Dims,
}

/// What [`emit_stage`] produced.
#[derive(Clone, Debug)]
pub struct EmittedStage {
    /// Stage index.
    pub stage: u32,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Bundle entries (one per program; no binary for the CPU target).
    pub kernels: Vec<KernelEntry>,
    /// The emitted modules, in program order.
    pub modules: Vec<EmittedModule>,
}

/// The kernel style a target needs.
pub fn style_for(target: Target) -> KernelStyle {
    if target.is_gpu() {
        KernelStyle::GpuTiled
    } else {
        KernelStyle::Linalg
    }
}

/// Emits, verifies and lowers one program for `target`. Returns the module and, for GPU targets, the
/// binary with its launches. The CPU target is lowered to the LLVM dialect to check it (no binary).
pub fn compile_program(
    graph: &Graph,
    dims: &Dims,
    name: &str,
    target: Target,
    toolkit: Option<&Toolkit>,
) -> Result<(EmittedModule, Option<crate::bundle::KernelEntry>)> {
    let m = emit_program(graph, dims, name, style_for(target))?;
    #[cfg(feature = "mlir")]
    {
        if target.is_gpu() {
            let tmp;
            let tk = match (target, toolkit) {
                (Target::Rocdl { .. }, None) => {
                    tmp = Toolkit::temporary(None)?;
                    Some(&tmp)
                }
                (_, t) => t,
            };
            let g = crate::mlir::gpu::lower(name, &m.text, target, tk)?;
            let entry = KernelEntry {
                name: name.to_string(),
                target: target.to_string(),
                stage: 0,
                program: name.to_string(),
                binary: g.binary,
                launches: g.launches,
                signature_json: signature_json(&m),
            };
            Ok((m, Some(entry)))
        } else {
            let mlir = crate::mlir::Mlir::new();
            let mut module = mlir.parse(name, &m.text)?;
            mlir.run_pipeline(&mut module, name, target, &target.pipeline(None))?;
            Ok((m, None))
        }
    }
    #[cfg(not(feature = "mlir"))]
    {
        let _ = (toolkit, &m);
        Err(crate::no_mlir(&format!("compiling `{name}` for {target}")))
    }
}

#[cfg_attr(not(feature = "mlir"), allow(dead_code))]
fn signature_json(m: &EmittedModule) -> String {
    serde_json::json!({"inputs": m.inputs, "outputs": m.outputs}).to_string()
}

/// Emits every program of a stage for `target` into `out_dir/stage<i>/`: `<kind>.mlir` (the emitted
/// module) and, for GPU targets, `<kind>.hsaco` or `<kind>.ptx`.
pub fn emit_stage(program: &StageProgram, target: Target, out_dir: &Path) -> Result<EmittedStage> {
    emit_stage_with(program, target, out_dir, None)
}

/// [`emit_stage`] with an explicit toolkit for HSACO linking.
pub fn emit_stage_with(
    program: &StageProgram,
    target: Target,
    out_dir: &Path,
    toolkit: Option<&Toolkit>,
) -> Result<EmittedStage> {
    let dir = out_dir.join(format!("stage{}", program.stage));
    std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let write = |p: PathBuf, bytes: &[u8]| -> Result<PathBuf> {
        std::fs::write(&p, bytes).map_err(|e| RuntimeError::Io {
            path: p.clone(),
            source: e,
        })?;
        Ok(p)
    };
    let mut files = Vec::new();
    let mut kernels = Vec::new();
    let mut modules = Vec::new();
    for p in &program.programs {
        let fname = format!("stage{}_{}", program.stage, p.kind.name());
        let (m, entry) = compile_program(&p.graph, &program.dims, &fname, target, toolkit)?;
        files.push(write(
            dir.join(format!("{}.mlir", p.kind.name())),
            m.text.as_bytes(),
        )?);
        if let Some(mut e) = entry {
            files.push(write(
                dir.join(format!("{}.{}", p.kind.name(), target.binary_extension())),
                &e.binary,
            )?);
            e.stage = program.stage;
            e.program = p.kind.name().into();
            kernels.push(e);
        }
        modules.push(m);
    }
    Ok(EmittedStage {
        stage: program.stage,
        files,
        kernels,
        modules,
    })
}
