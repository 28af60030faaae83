//! moai-runtime: turns a plan's stage programs (`moai_ir::Graph`s in the canonical op set) into code.
//!
//! - [`emit`]: MLIR emission (func + linalg/tensor/arith/math on tensors), symbolic dims specialized.
//! - [`target`]: typed targets (`cpu`, `rocdl:gfx90a|gfx942`, `nvvm:sm_80|sm_90`) and their pipelines.
//! - `mlir` (feature `mlir`): melior context, verification, lowering, the CPU JIT and GPU binaries.
//! - [`shard`]: one tensor-parallel rank's forward program (Megatron-style column/row/head split).
//! - [`pipeline`]: a training step cut into pipeline stages' forward/backward/optimizer programs, and
//!   running them stage by stage on the CPU with every tensor-parallel rank on its own thread.
//! - [`stage`]: `emit_stage` writes `stage<i>/{forward,backward,optimizer}.{mlir,hsaco,ptx}`.
//! - [`bundle`]: the `plan.moai` artifact (prost): plan JSON, kernels, launch metadata.
//! - [`executor`]: the [`Executor`] trait; CPU always (with `mlir`), CUDA/HIP behind features.
//! - [`collective`]: in-process collectives the CPU executor provides to emitted code.
//!
//! Without feature `mlir` every entry point that needs MLIR returns [`RuntimeError::FeatureDisabled`]
//! saying how to enable it; emission to MLIR text still works.

#![warn(missing_docs)]
mod bundle;
pub mod collective;
pub mod elf;
pub mod emit;
mod error;
mod executor;
#[cfg(feature = "mlir")]
pub mod mlir;
mod pipeline;
pub mod shard;
mod split;
pub mod stage;
mod target;

pub use bundle::{Bundle, KernelEntry, LaunchArg, LaunchInfo, read_bundle, write_bundle};
pub use emit::{
    ArgSpec, Dims, EmittedModule, KernelStyle, MathLowering, emit_program, emit_program_with,
};
pub use error::{Result, RuntimeError};
pub use executor::{CpuExecutor, CudaExecutor, Executor, HipExecutor, run_ranks};
pub use pipeline::{StageLayout, run_step, stage_programs, step_order};
pub use shard::shard_tensor_parallel;
pub use split::{run_chain, split_graph};
pub use stage::{EmittedStage, Program, ProgramKind, StageProgram, compile_program, emit_stage};
pub use target::{AmdChip, NvSm, Target, Toolkit};

/// The error every MLIR-dependent entry point returns in a build without feature `mlir`.
#[allow(dead_code)]
pub(crate) fn no_mlir(what: &str) -> RuntimeError {
    RuntimeError::FeatureDisabled {
        what: what.into(),
        feature: "mlir",
        hint: "install LLVM/MLIR 22 (Debian: libmlir-22-dev mlir-22-tools llvm-22-dev lld-22, see runtime/README.md) \
               and build moai-runtime with its `mlir` feature (`--features mlir`)",
    }
}
