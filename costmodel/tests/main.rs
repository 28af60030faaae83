//! Integration tests of moai-costmodel (one binary). Validation and the fit use the real training
//! graph (`real.rs`); invariants and error tests use the small analytic fixture in `support/fixture.rs`.

mod support;

mod context;
mod errors;
mod estimate;
mod fit;
mod fp8;
mod hsdp;
mod megatron;
mod memory;
mod offload;
mod overlap;
mod props;
mod real;
mod regret;
mod seed;
mod truth_files;
mod validation;
