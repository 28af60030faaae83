//! Integration tests of moai-compiler: the library API and the `moai-compile` command line.

mod cli;
mod planner;
