//! Integration tests of moai-ir (one binary; each area is a module).

mod import;
mod interp;
mod profile;
mod support;
mod train;
