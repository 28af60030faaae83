//! Integration tests of moai-compiler: the library API and the `moai-compile` command line.

mod bad_inputs;
mod cli;
mod codegen;
mod context;
mod current;
mod exports;
mod fp8;
mod hsdp;
mod interrupt;
mod overlap;
mod partition;
mod pipeline;
mod planner;
mod pruning;
mod report;
mod smi;
mod sweep;
mod torchtitan;
