//! The `plan.moai` bundle: the plan (JSON), every kernel binary with its target, and launch metadata.
//! Protobuf through prost, with the message structs written by hand (no protoc).

use crate::error::{Result, RuntimeError};
use std::path::Path;

/// Bundle format version written by this crate.
pub const BUNDLE_VERSION: u32 = 1;

/// The whole artifact.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bundle {
    /// Format version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The chosen plan as JSON.
    #[prost(string, tag = "2")]
    pub plan_json: String,
    /// Every compiled program's kernels.
    #[prost(message, repeated, tag = "3")]
    pub kernels: Vec<KernelEntry>,
}

/// One compiled program for one target: a code object (HSACO), PTX text or host object.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KernelEntry {
    /// Program name (`stage0.forward`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Target (`rocdl:gfx90a`, `nvvm:sm_90`, `cpu`).
    #[prost(string, tag = "2")]
    pub target: String,
    /// Pipeline stage index.
    #[prost(uint32, tag = "3")]
    pub stage: u32,
    /// `forward`, `backward` or `optimizer`.
    #[prost(string, tag = "4")]
    pub program: String,
    /// Binary bytes (HSACO ELF, PTX text).
    #[prost(bytes = "vec", tag = "5")]
    pub binary: Vec<u8>,
    /// Kernel launches in program order.
    #[prost(message, repeated, tag = "6")]
    pub launches: Vec<LaunchInfo>,
    /// Names and shapes of the program's inputs and outputs (JSON of `ArgSpec`s).
    #[prost(string, tag = "7")]
    pub signature_json: String,
}

/// One kernel launch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LaunchInfo {
    /// Kernel symbol in the code object.
    #[prost(string, tag = "1")]
    pub kernel: String,
    /// Grid (workgroups) x, y, z.
    #[prost(uint32, repeated, tag = "2")]
    pub grid: Vec<u32>,
    /// Block (threads per workgroup) x, y, z.
    #[prost(uint32, repeated, tag = "3")]
    pub block: Vec<u32>,
    /// Static workgroup (shared / LDS) memory in bytes.
    #[prost(uint32, tag = "4")]
    pub shared_bytes: u32,
    /// Kernel arguments in order.
    #[prost(message, repeated, tag = "5")]
    pub args: Vec<LaunchArg>,
    /// Position in the program.
    #[prost(uint32, tag = "6")]
    pub order: u32,
}

/// One kernel argument.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LaunchArg {
    /// `buffer` or `scalar`.
    #[prost(string, tag = "1")]
    pub kind: String,
    /// MLIR type (`memref<64x48xf32>`, `index`, `f32`).
    #[prost(string, tag = "2")]
    pub ty: String,
    /// The constant value for scalars, else the host SSA value that provides the buffer.
    #[prost(string, tag = "3")]
    pub value: String,
}

/// Writes a bundle file.
pub fn write_bundle(path: &Path, plan_json: &str, kernels: Vec<KernelEntry>) -> Result<()> {
    use prost::Message;
    let b = Bundle {
        version: BUNDLE_VERSION,
        plan_json: plan_json.to_string(),
        kernels,
    };
    std::fs::write(path, b.encode_to_vec()).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Reads a bundle file.
pub fn read_bundle(path: &Path) -> Result<Bundle> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let b = Bundle::decode(bytes.as_slice()).map_err(|e| RuntimeError::Bundle {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if b.version != BUNDLE_VERSION {
        return Err(RuntimeError::Bundle {
            path: path.to_path_buf(),
            reason: format!("version {} (expected {BUNDLE_VERSION})", b.version),
        });
    }
    Ok(b)
}
