//! moai-compiler: the planner. Search space, per-candidate compilation (egg tensor-parallel rewrites,
//! stage partitioning), parallel evaluation, selection, plans and exports. The `moai-compile` binary is a
//! thin layer over this library.

pub mod cli;
pub mod shard;
