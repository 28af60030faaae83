//! GPU code generation (not executed: no GPU here): HSACO code objects for gfx90a/gfx942 and PTX for
//! sm_80/sm_90, with tiled matmul kernels staged in workgroup memory.

use crate::support::*;
use moai_ir::{DType, Op};
use moai_runtime::elf::{self, EM_AMDGPU};
use moai_runtime::{AmdChip, Dims, NvSm, Target, compile_program};

/// A `[m, k] · [k, n]` matmul program.
pub fn matmul_graph(m: i64, k: i64, n: i64) -> moai_ir::Graph {
    let mut b = B::new("mm");
    let x = b.input("x", DType::F32, &[m, k]);
    let w = b.input("w", DType::F32, &[k, n]);
    let y = b.op1(Op::MatMul, &[x, w], DType::F32, &[m, n]);
    b.out("y", y);
    b.g
}

#[test]
fn hsaco_is_an_amdgpu_code_object_for_the_chip() {
    let g = matmul_graph(128, 96, 160);
    for chip in [AmdChip::Gfx90a, AmdChip::Gfx942] {
        let (m, entry) = compile_program(&g, &Dims::new(), "mm", Target::Rocdl { chip }, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.tiled_kernels, 1);
        let e = entry.expect("GPU targets give a binary");
        let info = elf::parse(&e.binary).expect("HSACO is ELF64");
        assert_eq!(info.machine, EM_AMDGPU, "e_machine");
        assert_eq!(
            info.flags & 0xff,
            chip.elf_mach(),
            "EF_AMDGPU_MACH for {}",
            chip.name()
        );
        assert_eq!(info.os_abi, 64, "ELFOSABI_AMDGPU_HSA");
        assert!(
            info.symbols.iter().any(|s| s.starts_with("moai_mm1")),
            "kernel symbols: {:?}",
            info.symbols
        );
        // the tiled matmul launch: 64×64 tiles, 16×16 threads, two 16×64 f32 tiles in LDS
        let l = e
            .launches
            .iter()
            .find(|l| l.kernel.starts_with("moai_mm1"))
            .expect("matmul launch");
        assert_eq!(l.grid, vec![3, 2, 1]);
        assert_eq!(l.block, vec![16, 16, 1]);
        assert_eq!(l.shared_bytes, 2 * 16 * 64 * 4);
    }
}

#[test]
fn ptx_targets_the_requested_sm() {
    let g = matmul_graph(64, 32, 64);
    for sm in [NvSm::Sm80, NvSm::Sm90] {
        let (_, entry) = compile_program(&g, &Dims::new(), "mm", Target::Nvvm { sm }, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let ptx = String::from_utf8(entry.expect("binary").binary).expect("PTX is text");
        assert!(
            ptx.contains(&format!(".target {}", sm.name())),
            "{}",
            &ptx[..ptx.len().min(400)]
        );
        assert!(ptx.contains(".visible .entry moai_mm1"), "kernel entry");
        assert!(
            ptx.contains(".shared"),
            "workgroup tiles live in shared memory"
        );
        assert!(
            ptx.contains("bar.sync"),
            "tiles are synchronized with barriers"
        );
    }
}

/// Every program of a tiny-llama training step (forward, backward, AdamW) lowers for every GPU target,
/// without device-library calls (HSACO linking would fail on `__ocml_*`; PTX would not load with `__nv_*`).
#[test]
fn tiny_llama_step_lowers_for_every_gpu_target() {
    lowers_for_every_gpu_target(moai_ir::train::PrecisionPolicy::Fp32);
}

/// The same under mixed precision (bf16 compute, fp32 master weights), as plans train.
#[test]
fn tiny_llama_amp_bf16_step_lowers_for_every_gpu_target() {
    lowers_for_every_gpu_target(moai_ir::train::PrecisionPolicy::AmpBf16);
}

/// And in pure bf16 (bf16 weights and gradients, fp32 moments).
#[test]
fn tiny_llama_bf16_step_lowers_for_every_gpu_target() {
    lowers_for_every_gpu_target(moai_ir::train::PrecisionPolicy::Bf16);
}

fn lowers_for_every_gpu_target(precision: moai_ir::train::PrecisionPolicy) {
    let (_, parts) = tiny_llama_step(precision);
    // seq 128: the rotary tables are not constant-folded, so sine and cosine reach the kernels
    let dims: Dims = [("batch".to_string(), 2), ("seq".to_string(), 128)].into();
    let targets = [
        Target::Rocdl {
            chip: AmdChip::Gfx90a,
        },
        Target::Rocdl {
            chip: AmdChip::Gfx942,
        },
        Target::Nvvm { sm: NvSm::Sm80 },
        Target::Nvvm { sm: NvSm::Sm90 },
    ];
    for target in targets {
        for (g, name) in parts.iter().zip(["forward", "backward", "optimizer"]) {
            let (m, entry) = compile_program(g, &dims, name, target, None)
                .unwrap_or_else(|e| panic!("{name} for {target}: {e}"));
            let e = entry.expect("GPU targets give a binary");
            assert!(!e.launches.is_empty(), "{name} for {target}: no launches");
            if let Target::Nvvm { .. } = target {
                // no libdevice (`__nv_*`) calls left unresolved in the PTX
                let ptx = String::from_utf8(e.binary.clone()).expect("PTX is text");
                assert!(
                    !ptx.contains(".extern .func") && !ptx.contains("__nv_"),
                    "{name} for {target}: PTX calls an external function: {:?}",
                    ptx.lines()
                        .filter(|l| l.contains(".extern") || l.contains("__nv_"))
                        .take(5)
                        .collect::<Vec<_>>()
                );
            }
            if name != "optimizer" {
                assert!(m.tiled_kernels > 0, "{name}: no tiled contraction");
            }
        }
    }
}

/// Nothing of a training step is left to host code: after mapping and outlining, the host function only
/// allocates, makes views and launches kernels (no loops, copies, loads or stores on device memory), so the
/// bundle's launch list is the whole computation.
#[test]
fn every_computation_of_the_step_is_a_kernel() {
    use moai_runtime::{KernelStyle, Toolkit, emit_program};
    let (_, parts) = tiny_llama_step(moai_ir::train::PrecisionPolicy::AmpBf16);
    let dims: Dims = [("batch".to_string(), 2), ("seq".to_string(), 128)].into();
    let tk = Toolkit::temporary(None).expect("ld.lld");
    let target = Target::Rocdl {
        chip: AmdChip::Gfx90a,
    };
    for (g, name) in parts.iter().zip(["forward", "backward", "optimizer"]) {
        let m = emit_program(g, &dims, name, KernelStyle::GpuTiled).expect("emits");
        let b = moai_runtime::mlir::gpu::lower(name, &m.text, target, Some(&tk))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let host = b
            .outlined_mlir
            .split("gpu.module @moai_kernels")
            .next()
            .expect("host part");
        for op in [
            "scf.for",
            "scf.parallel",
            "memref.copy",
            "memref.load",
            "memref.store",
            "linalg.",
        ] {
            assert!(!host.contains(op), "{name}: host code still has `{op}`");
        }
        assert_eq!(
            host.matches("gpu.launch_func").count(),
            b.launches.len(),
            "{name}: every launch is in the metadata"
        );
    }
}
