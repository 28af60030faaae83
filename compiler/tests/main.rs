//! Integration tests of moai-compiler: the library API and the `moai-compile` command line.

mod bad_inputs;
mod cli;
mod codegen;
mod common;
mod context;
mod current;
mod exports;
mod fp8;
mod hsdp;
mod interrupt;
mod mfu;
mod offload;
mod overlap;
mod partition;
mod pipeline;
mod planner;
mod pruning;
mod report;
mod smi;
mod sweep;
mod torchtitan;
