//! Integration tests of moai-costmodel (one binary). Profiles come from the test fixture in
//! `support/fixture.rs` until `moai_ir::train::step_profile` is wired.

mod support;

mod errors;
mod estimate;
mod fit;
mod props;
mod validation;
