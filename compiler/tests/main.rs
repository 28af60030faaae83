//! Integration tests of moai-compiler: the library API and the `moai-compile` command line.

mod bad_inputs;
mod cli;
mod codegen;
mod current;
mod exports;
mod interrupt;
mod partition;
mod planner;
mod pruning;
mod report;
mod smi;
mod sweep;
