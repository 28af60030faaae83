//! Integration tests of moai-runtime (one binary): emission, CPU JIT execution against the reference
//! interpreter, GPU code objects, bundles and snapshots.

mod support;

mod moe;

#[cfg(feature = "mlir")]
mod bundle;
#[cfg(feature = "mlir")]
mod cpu;
#[cfg(feature = "mlir")]
mod gpu;
#[cfg(feature = "mlir")]
mod tp;
#[cfg(feature = "mlir")]
mod train;
