//! Code-generation targets and their lowering pipelines.
//!
//! Pipelines are built from the typed [`Target`] enum only; the one piece of outside text that enters a
//! pipeline, the toolkit directory for `gpu-module-to-binary`, is validated first ([`Toolkit`]).

use crate::error::{Result, RuntimeError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// AMD GPU architectures moai emits code objects for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AmdChip {
    /// CDNA2: MI250 / MI210.
    Gfx90a,
    /// CDNA3: MI300X.
    Gfx942,
}

impl AmdChip {
    /// The LLVM processor name.
    pub fn name(self) -> &'static str {
        match self {
            AmdChip::Gfx90a => "gfx90a",
            AmdChip::Gfx942 => "gfx942",
        }
    }

    /// The `EF_AMDGPU_MACH` value in an AMDGPU ELF header's `e_flags` (low byte).
    pub fn elf_mach(self) -> u32 {
        match self {
            AmdChip::Gfx90a => 0x3f,
            AmdChip::Gfx942 => 0x4c,
        }
    }
}

/// NVIDIA architectures moai emits PTX for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NvSm {
    /// Ampere (A100).
    Sm80,
    /// Hopper (H100).
    Sm90,
}

impl NvSm {
    /// The PTX target name.
    pub fn name(self) -> &'static str {
        match self {
            NvSm::Sm80 => "sm_80",
            NvSm::Sm90 => "sm_90",
        }
    }
}

/// A code-generation target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// Host CPU through the LLVM dialect (JIT or object code).
    Cpu,
    /// AMD GPU through ROCDL into an HSACO code object.
    Rocdl {
        /// Chip.
        chip: AmdChip,
    },
    /// NVIDIA GPU through NVVM into PTX.
    Nvvm {
        /// Architecture.
        sm: NvSm,
    },
}

impl Target {
    /// Parses `cpu`, `gfx90a`, `gfx942`, `sm_80`, `sm_90` (also `rocdl:gfx90a`, `nvvm:sm_90`).
    pub fn parse(s: &str) -> Option<Target> {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("rocdl:")
            .or_else(|| s.strip_prefix("nvvm:"))
            .unwrap_or(&s);
        Some(match s {
            "cpu" | "llvm" => Target::Cpu,
            "gfx90a" => Target::Rocdl {
                chip: AmdChip::Gfx90a,
            },
            "gfx942" => Target::Rocdl {
                chip: AmdChip::Gfx942,
            },
            "sm_80" | "sm80" => Target::Nvvm { sm: NvSm::Sm80 },
            "sm_90" | "sm90" => Target::Nvvm { sm: NvSm::Sm90 },
            _ => return None,
        })
    }

    /// True for GPU targets (kernels are tiled and outlined).
    pub fn is_gpu(self) -> bool {
        !matches!(self, Target::Cpu)
    }

    /// File extension of the binary artifact (`hsaco`, `ptx`, `o`).
    pub fn binary_extension(self) -> &'static str {
        match self {
            Target::Cpu => "o",
            Target::Rocdl { .. } => "hsaco",
            Target::Nvvm { .. } => "ptx",
        }
    }

    /// The front half of every pipeline: bufferization of the tensor program.
    pub fn bufferize_pipeline(self) -> &'static str {
        "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},canonicalize,cse"
    }

    /// The full lowering pipeline after emission, as MLIR pass-pipeline text. `toolkit` is only used for
    /// ROCDL (HSACO linking needs `ld.lld` there).
    pub fn pipeline(self, toolkit: Option<&Toolkit>) -> String {
        let front = self.bufferize_pipeline();
        match self {
            Target::Cpu => format!(
                "builtin.module({front},buffer-deallocation-pipeline,convert-bufferization-to-memref,\
                 convert-linalg-to-loops,lower-affine,expand-strided-metadata,convert-scf-to-cf,\
                 math-extend-to-supported-types,arith-emulate-unsupported-floats{{source-types=bf16,f16 target-type=f32}},\
                 arith-expand{{include-bf16=true}},convert-math-to-llvm,\
                 convert-math-to-libm,\
                 finalize-memref-to-llvm,convert-arith-to-llvm,\
                 convert-index-to-llvm,convert-cf-to-llvm,\
                 convert-func-to-llvm{{use-bare-ptr-memref-call-conv=1}},reconcile-unrealized-casts)"
            ),
            Target::Rocdl { .. } | Target::Nvvm { .. } => {
                let serialize = self.serialize_passes(toolkit).unwrap_or_default();
                format!("builtin.module({front},{GPU_MAPPING},{serialize})")
            }
        }
    }

    /// The GPU pipeline as its three stages, each a `builtin.module(...)` pipeline built from the
    /// target's own pieces (never cut out of [`Target::pipeline`]'s text); `None` for the CPU. Run in
    /// order they are the full pipeline; between them the lowering rewrites the IR.
    pub fn gpu_stages(self, toolkit: Option<&Toolkit>) -> Option<GpuStages> {
        let serialize = self.serialize_passes(toolkit)?;
        Some(GpuStages {
            bufferize: format!("builtin.module({})", self.bufferize_pipeline()),
            outline: format!("builtin.module({GPU_MAPPING})"),
            serialize: format!("builtin.module({serialize})"),
        })
    }

    /// Attaching the target, conversion to ROCDL/NVVM and serialization: the passes after kernel
    /// outlining. The only outside text is the toolkit path, validated by [`Toolkit`]'s constructors.
    fn serialize_passes(self, toolkit: Option<&Toolkit>) -> Option<String> {
        match self {
            Target::Cpu => None,
            Target::Rocdl { chip } => {
                let tk = toolkit
                    .map(|t| format!(" toolkit={}", t.path_text()))
                    .unwrap_or_default();
                Some(format!(
                    "rocdl-attach-target{{chip={chip} O=3}},\
                     gpu.module(convert-scf-to-cf,convert-gpu-to-rocdl,reconcile-unrealized-casts),\
                     gpu-module-to-binary{{format=bin{tk}}}",
                    chip = chip.name()
                ))
            }
            Target::Nvvm { sm } => Some(format!(
                "nvvm-attach-target{{chip={sm} O=3}},\
                 gpu.module(convert-scf-to-cf,convert-gpu-to-nvvm,reconcile-unrealized-casts),\
                 gpu-module-to-binary{{format=isa}}",
                sm = sm.name()
            )),
        }
    }
}

/// The three stages of a GPU target's pipeline ([`Target::gpu_stages`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuStages {
    /// Bufferization of the tensor program.
    pub bufferize: String,
    /// Mapping loops onto the GPU and outlining kernels.
    pub outline: String,
    /// Attaching the target, conversion and serialization.
    pub serialize: String,
}

/// Maps what is not already a hand-tiled kernel (elementwise ops, reductions, layout changes) onto the GPU:
/// linalg to parallel loops, tiled into 16×16 thread blocks, then outlined into kernels.
/// Tiles have constant bounds with an in-bounds check inside (`no-min-max-bounds`): a partial tile's
/// `affine.min` bound would keep the loop from mapping, leaving it on the host.
const GPU_MAPPING: &str = "convert-linalg-to-parallel-loops,\
    func.func(scf-parallel-loop-tiling{parallel-loop-tile-sizes=16,16 no-min-max-bounds=true},\
    gpu-map-parallel-loops),convert-parallel-loops-to-gpu,canonicalize,lower-affine,\
    gpu-launch-sink-index-computations,gpu-kernel-outlining,canonicalize,cse";

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cpu => f.write_str("cpu"),
            Target::Rocdl { chip } => write!(f, "rocdl:{}", chip.name()),
            Target::Nvvm { sm } => write!(f, "nvvm:{}", sm.name()),
        }
    }
}

/// A validated toolkit directory for `gpu-module-to-binary`: it has `llvm/bin/ld.lld`, and its path is
/// absolute and made only of characters that cannot break out of a pipeline option.
#[derive(Clone, Debug)]
pub struct Toolkit {
    path: PathBuf,
    _temp: Option<std::sync::Arc<TempDir>>,
}

#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Toolkit {
    /// Validates an existing toolkit directory.
    pub fn new(path: &Path) -> Result<Toolkit> {
        validate_toolkit_path(path)?;
        let lld = path.join("llvm/bin/ld.lld");
        if !lld.exists() {
            return Err(RuntimeError::Toolkit {
                path: path.to_path_buf(),
                reason: "has no llvm/bin/ld.lld (HSACO linking needs it)".into(),
            });
        }
        Ok(Toolkit {
            path: path.to_path_buf(),
            _temp: None,
        })
    }

    /// Makes a temporary toolkit whose `llvm/bin/ld.lld` links to the given `ld.lld` (default: the one of
    /// LLVM 22 from `LLVM_SYS_220_PREFIX` or `/usr/lib/llvm-22`). Removed when the last clone is dropped.
    pub fn temporary(ld_lld: Option<&Path>) -> Result<Toolkit> {
        let lld = match ld_lld {
            Some(p) => p.to_path_buf(),
            None => default_ld_lld(),
        };
        if !lld.exists() {
            return Err(RuntimeError::Toolkit {
                path: lld,
                reason: "ld.lld not found (install lld-22)".into(),
            });
        }
        let base = std::env::temp_dir().join(format!(
            "moai-toolkit-{}-{}",
            std::process::id(),
            TOOLKIT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let bin = base.join("llvm/bin");
        std::fs::create_dir_all(&bin).map_err(|e| RuntimeError::Io {
            path: bin.clone(),
            source: e,
        })?;
        let link = bin.join("ld.lld");
        if !link.exists() {
            std::os::unix::fs::symlink(&lld, &link).map_err(|e| RuntimeError::Io {
                path: link.clone(),
                source: e,
            })?;
        }
        validate_toolkit_path(&base)?;
        Ok(Toolkit {
            path: base.clone(),
            _temp: Some(std::sync::Arc::new(TempDir(base))),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn path_text(&self) -> String {
        // validated in the constructors: plain characters only
        self.path.to_string_lossy().into_owned()
    }
}

static TOOLKIT_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// LLVM 22's `ld.lld`.
pub fn default_ld_lld() -> PathBuf {
    let prefix = std::env::var("LLVM_SYS_220_PREFIX").unwrap_or_else(|_| "/usr/lib/llvm-22".into());
    PathBuf::from(prefix).join("bin/ld.lld")
}

fn validate_toolkit_path(path: &Path) -> Result<()> {
    let bad = |reason: &str| RuntimeError::Toolkit {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let text = path.to_str().ok_or_else(|| bad("path is not UTF-8"))?;
    if !path.is_absolute() {
        return Err(bad("path must be absolute"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_-.+".contains(*c)))
    {
        return Err(bad(&format!(
            "character {c:?} is not allowed in a pipeline option"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "cpu",
            "rocdl:gfx90a",
            "rocdl:gfx942",
            "nvvm:sm_80",
            "nvvm:sm_90",
        ] {
            assert_eq!(Target::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Target::parse("gfx1100"), None);
    }

    #[test]
    fn toolkit_paths_are_validated() {
        assert!(validate_toolkit_path(Path::new("relative/dir")).is_err());
        assert!(validate_toolkit_path(Path::new("/tmp/a b")).is_err());
        assert!(validate_toolkit_path(Path::new("/tmp/x},canonicalize{")).is_err());
        assert!(validate_toolkit_path(Path::new("/tmp/moai-toolkit-1")).is_ok());
    }

    #[test]
    fn pipelines_name_the_chip() {
        let p = Target::Rocdl {
            chip: AmdChip::Gfx942,
        }
        .pipeline(None);
        assert!(p.contains("chip=gfx942"), "{p}");
        let p = Target::Nvvm { sm: NvSm::Sm80 }.pipeline(None);
        assert!(p.contains("chip=sm_80") && p.contains("format=isa"), "{p}");
    }

    #[test]
    fn gpu_stages_run_in_order_are_the_full_pipeline() {
        let inner = |p: &str| {
            p.strip_prefix("builtin.module(")
                .and_then(|p| p.strip_suffix(')'))
                .unwrap()
                .to_string()
        };
        for t in [
            Target::Rocdl {
                chip: AmdChip::Gfx90a,
            },
            Target::Nvvm { sm: NvSm::Sm90 },
        ] {
            let s = t.gpu_stages(None).unwrap();
            let joined = [&s.bufferize, &s.outline, &s.serialize]
                .map(|p| inner(p))
                .join(",");
            assert_eq!(format!("builtin.module({joined})"), t.pipeline(None));
            assert!(s.outline.contains("gpu-kernel-outlining"), "{}", s.outline);
            assert!(s.serialize.contains("attach-target"), "{}", s.serialize);
        }
        assert_eq!(Target::Cpu.gpu_stages(None), None);
    }
}
