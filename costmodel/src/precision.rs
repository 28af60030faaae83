//! The GEMM precision of a plan ([`MatmulPrecision`]): bf16, or FP8 with per-tensor scaling as
//! Transformer Engine runs it under Megatron-LM (`--fp8-format hybrid`, delayed scaling with an amax
//! history).
//!
//! What an FP8 plan changes in the cost model (the training graph itself stays amp-bf16):
//! - **Which GEMMs**: the linear layers of the decoder blocks (QKV, attention output, MLP), in forward,
//!   recomputation and both backward GEMMs (input and weight gradient), as Transformer Engine's
//!   `Linear`/`LayerNormLinear`/`LayerNormMLP` modules do. Attention (the fused kernel, or the score
//!   GEMMs of unfused attention), the embedding and the LM head stay bf16 ([`is_fp8_gemm`]).
//! - **Their rate**: the same shape-dependent GEMM model ([`crate::ops::gemm_shape_efficiency`]) up to
//!   the device's maximum achievable *fp8* matmul rate (`matmul_max_achievable.csv`), scaled by the
//!   device's fitted matmul coefficient and by [`FP8_GEMM_EFFICIENCY`]; operands move one byte per
//!   element instead of two ([`fp8_gemm_bytes`]).
//! - **Scaling work** (memory-bound kernels at the fitted HBM bandwidth), one kernel per Transformer
//!   Engine *module* ([`te_module_casts`]; Megatron-Core fuses q, k, v into one module and gate, up
//!   into another): a row-parallel module cast-transposes its bf16 input in forward
//!   ([`CAST_TRANSPOSE_BYTES_PER_ELEMENT`] bytes per element, amax fused); a column-parallel
//!   `LayerNormLinear` module gets its fp8 input from the norm kernel and transposes it in backward
//!   ([`FP8_TRANSPOSE_BYTES_PER_ELEMENT`]); every module cast-transposes its output gradient once in
//!   backward. Per step a cast-transpose of every fp8 weight (Transformer Engine casts weights once
//!   per step and caches them across micro-batches) and one all-reduce of the amaxes over the data-
//!   and tensor-parallel group.
//! - **Tensor-parallel traffic**: under sequence parallelism the all-gathers move fp8 copies (the
//!   norm output before a column-parallel module, the output gradient before a row-parallel one's
//!   backward GEMMs), half the bytes; the reduce-scatters stay bf16
//!   ([`crate::estimate::PhaseSums::tp_gather_bytes`]).
//! - **Memory**: the fp8 weight copies and their transposes ([`FP8_WEIGHT_BYTES_PER_PARAM`]) and the
//!   scaling state (scale, inverse scale and an amax history of [`AMAX_HISTORY_LEN`] per tensor, three
//!   tensors per linear: [`scaling_state_bytes`]); the saved inputs of the linear layers are kept in
//!   fp8 instead of bf16, which shrinks Megatron-LM's activation bytes ([`megatron_fp8_saved_bytes`]).
//!   The memory model's coefficients were fitted on bf16 runs only.
//!
//! Calibration: the end-to-end gain is checked against published FP8-vs-BF16 speedups of real recipes,
//! not the 2× peak ratio: NVIDIA's Megatron-Bridge performance tuning guide ("typically achieving a
//! speedup of 1.2–1.5X" with FP8 on the Transformer block's linear layers), Fujii et al. 2024
//! (arXiv:2411.08719, Llama-3-70B under Megatron-LM on H100: 415 → 570 TFLOP/s, 1.37×) and IBM/Meta's
//! float8 FSDP2 blog (PyTorch blog 2024-11-25, Llama-3 70B on H100: 956 → 1430 tokens/s/GPU, 1.50×);
//! see `data/truth/fp8_h100_nemo.jsonl` and the tests `fp8::fp8_gain_on_70b_lies_in_published_range`
//! (moai-costmodel) and `fp8::fp8_plan_of_llama2_70b_on_64_h100_gains_within_published_range` (moai-compiler).

use crate::device::Gpu;
use crate::error::{CostError, Result};
use moai_ir::DType;
use moai_ir::cost::{BlockKind, KernelClass, OpCost, Phase, TpSplit};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The precision of a plan's linear-layer GEMMs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// bf16 GEMMs (the training graph's amp-bf16 policy as it is).
    #[default]
    Bf16,
    /// FP8 GEMMs with per-tensor scaling on GPUs with FP8 matrix units (E4M3 forward, E5M2 gradients:
    /// Megatron-LM's `--fp8-format hybrid`).
    Fp8,
}

impl MatmulPrecision {
    /// The name in JSON and on the command line (`bf16`, `fp8`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Bf16 => "bf16",
            MatmulPrecision::Fp8 => "fp8",
        }
    }

    /// True for the default (bf16): what serialization skips.
    pub fn is_bf16(&self) -> bool {
        *self == MatmulPrecision::Bf16
    }

    /// Checks that `gpu` runs this precision: FP8 needs FP8 matrix units ([`Gpu::has_fp8`]).
    pub fn check_gpu(self, gpu: Gpu) -> Result<()> {
        if self == MatmulPrecision::Fp8 && !gpu.has_fp8() {
            let with: Vec<&str> = Gpu::ALL
                .iter()
                .filter(|g| g.has_fp8())
                .map(|g| g.name())
                .collect();
            return Err(CostError::InvalidConfig(format!(
                "fp8 GEMMs need FP8 matrix units, which {gpu} does not have (GPUs with them: {})",
                with.join(", ")
            )));
        }
        Ok(())
    }
}

impl fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MatmulPrecision {
    type Err = CostError;
    fn from_str(s: &str) -> Result<MatmulPrecision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bf16" => Ok(MatmulPrecision::Bf16),
            "fp8" => Ok(MatmulPrecision::Fp8),
            _ => Err(CostError::InvalidConfig(format!(
                "unknown matmul precision `{s}` (expected bf16 or fp8)"
            ))),
        }
    }
}

/// Bytes per element a Transformer Engine cast-transpose moves: reads the bf16 tensor (2), writes its
/// fp8 copy (1) and the fp8 transpose the other GEMM of the pair reads (1); the amax is computed in
/// the same pass.
pub const CAST_TRANSPOSE_BYTES_PER_ELEMENT: f64 = 4.0;

/// Device bytes per fp8 weight element held through the step: the fp8 copy and its transpose
/// (Transformer Engine caches both across the micro-batches of a step; torchao's per-GEMM casts keep
/// none, [`crate::memory::device_memory`]).
pub const FP8_WEIGHT_BYTES_PER_PARAM: f64 = 2.0;

/// Length of the amax history of delayed scaling (Megatron-LM's `--fp8-amax-history-len` that moai
/// exports; Transformer Engine's recipe default is 1024).
pub const AMAX_HISTORY_LEN: u32 = 1024;

/// Fraction of the fitted bf16 GEMM efficiency that FP8 GEMMs reach relative to their own maximum
/// achievable rate in training. 1.0: the maximum achievable fp8 rates of `matmul_max_achievable.csv`
/// (mamf-finder and AMD's hipBLASLt sweep, `float8_e4m3fn` inputs) already carry the lower fp8 efficiency
/// (H100: 70.9% of peak vs 80.3% for bf16), and with them the predicted 70B gain lies inside the
/// published 1.2–1.5× range (the test named in the module docs); no further factor was fitted.
pub const FP8_GEMM_EFFICIENCY: f64 = 1.0;

/// Device bytes of the per-tensor scaling state of `linears` fp8 linear layers: for each of the three
/// scaled tensors (input, weight, output gradient) an fp32 scale, inverse scale and amax history of
/// [`AMAX_HISTORY_LEN`] entries.
pub fn scaling_state_bytes(linears: f64) -> f64 {
    linears * 3.0 * (AMAX_HISTORY_LEN as f64 + 2.0) * 4.0
}

/// Activation bytes one transformer layer and micro-batch saves *less* in an FP8 plan, in the terms of
/// Korthikanti et al.'s count ([`crate::memory::megatron_layer_bytes`]): Transformer Engine saves the
/// inputs of the QKV, attention-output, FC1 and FC2 GEMMs as their fp8 copies (one byte per element
/// instead of two): half of `2 + 2 + 2 + 8` bytes per `s·b·h`, i.e. `7·s·b·h/t` with sequence
/// parallelism; without it the QKV and FC1 inputs are replicated over the tensor-parallel group
/// (`(2 + 5/t)·s·b·h`). Nothing under full recomputation (only the layer input is kept).
pub fn megatron_fp8_saved_bytes(
    dims: crate::memory::LayerDims,
    tp: f64,
    sequence_parallel: bool,
    recompute: crate::config::Recompute,
) -> f64 {
    if recompute == crate::config::Recompute::Full {
        return 0.0;
    }
    let sbh = dims.seq * dims.batch * dims.hidden;
    let t = tp.max(1.0);
    if sequence_parallel {
        7.0 * sbh / t
    } else {
        sbh * (2.0 + 5.0 / t)
    }
}

/// True when `op` of a block of kind `kind` runs as an FP8 GEMM in an FP8 plan: a matmul of a linear
/// layer (column- or row-parallel weight) inside a decoder block. Attention score GEMMs (split by
/// heads), the embedding and the LM head stay bf16.
pub fn is_fp8_gemm(kind: BlockKind, op: &OpCost) -> bool {
    matches!(kind, BlockKind::Decoder(_))
        && matches!(op.class, KernelClass::Matmul { .. })
        && matches!(op.split, TpSplit::Column | TpSplit::Row)
}

/// The bytes an FP8 GEMM of `class` moves: fp8 operands (one byte per element) and a 16-bit output.
/// `None` for a class that is not a matmul.
pub fn fp8_gemm_bytes(class: &KernelClass) -> Option<f64> {
    match class {
        KernelClass::Matmul { batch, m, n, k, .. } => {
            let (b, m, n, k) = (*batch as f64, *m as f64, *n as f64, *k as f64);
            Some(b * (m * k + k * n) + 2.0 * b * m * n)
        }
        _ => None,
    }
}

/// Bytes per element of the transpose of an fp8 tensor (reads one byte, writes one): what a
/// `LayerNormLinear` module runs for its weight-gradient GEMM on the fp8 input its norm kernel wrote.
pub const FP8_TRANSPOSE_BYTES_PER_ELEMENT: f64 = 2.0;

/// The scaling kernels of one fp8 GEMM of a decoder layer, as Transformer Engine's modules under
/// Megatron-LM run them: one kernel per *module*, not per GEMM. Megatron-Core's Transformer Engine
/// layer spec fuses the query, key and value projections into one `TELayerNormColumnParallelLinear`
/// (`linear_qkv`) and the gate and up projections into another (`linear_fc1`); the output projection
/// (`linear_proj`) and the down projection (`linear_fc2`) are `TERowParallelLinear`s.
/// - A column-parallel module's input comes from its norm, whose kernel writes the fp8 copy directly
///   (`layernorm_fwd_fp8`): no forward cast; its backward transposes that fp8 input for the
///   weight-gradient GEMM ([`FP8_TRANSPOSE_BYTES_PER_ELEMENT`]).
/// - A row-parallel module casts and transposes its bf16 input in one kernel (forward and
///   recomputation; [`CAST_TRANSPOSE_BYTES_PER_ELEMENT`]).
/// - Every module casts and transposes its output gradient once in backward, over the outputs of all
///   its GEMMs.
///
/// The training graph lists the fused modules' GEMMs one by one (q, k, v; gate, up) and marks those
/// that read the input of an earlier one ([`moai_ir::cost::Role::SharedInputLinear`]): on a stack
/// that runs Transformer Engine modules ([`crate::Stack::runs_te_modules`]) such a column-parallel
/// GEMM right after a column-parallel fp8 GEMM of the same phase belongs to that GEMM's module
/// (`same_module`); elsewhere every linear is its own module.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fp8Casts {
    /// Elements cast and transposed in the forward (or recomputation) pass, in one kernel.
    pub forward_cast_elements: f64,
    /// Elements transposed (fp8 to fp8) in backward, in one kernel.
    pub backward_transpose_elements: f64,
    /// Elements of output gradient cast and transposed in backward, in one kernel.
    pub backward_cast_elements: f64,
    /// Kernels this GEMM adds: forward (or recomputation), backward.
    pub kernels: (f64, f64),
}

/// The scaling kernels [`Fp8Casts`] one fp8 GEMM `op` (its unsharded class) adds on one of `tp`
/// tensor-parallel ranks, given whether it joins the module of the previous fp8 GEMM (`same_module`,
/// see [`Fp8Casts`]). A
/// column-parallel GEMM holds the whole input (gathered under sequence parallelism) and `1/tp` of the
/// output; a row-parallel one `1/tp` of the input and the whole output gradient. `None` for a class
/// that is not a matmul.
pub fn te_module_casts(op: &OpCost, tp: u64, same_module: bool) -> Option<Fp8Casts> {
    let KernelClass::Matmul { batch, m, n, k, .. } = op.class else {
        return None;
    };
    let t = tp.max(1) as f64;
    let column = op.split == TpSplit::Column;
    let (input, output) = if column {
        ((batch * m * k) as f64, (batch * m * n) as f64 / t)
    } else {
        ((batch * m * k) as f64 / t, (batch * m * n) as f64)
    };
    let mut c = Fp8Casts::default();
    match op.phase {
        Phase::Forward => {
            // The output gradient is cast once per module, over all its GEMMs' outputs.
            c.backward_cast_elements = output;
            if !same_module {
                c.kernels.1 += 1.0;
                if column {
                    c.backward_transpose_elements = input;
                    c.kernels.1 += 1.0;
                } else {
                    c.forward_cast_elements = input;
                    c.kernels.0 += 1.0;
                }
            }
        }
        Phase::Recompute if !column && !same_module => {
            c.forward_cast_elements = input;
            c.kernels.0 += 1.0;
        }
        _ => {}
    }
    Some(c)
}

/// Rewrites a (sharded) matmul class to an 8-bit input dtype, so the GEMM model times it at the fp8
/// rate.
pub fn as_fp8(class: &KernelClass) -> KernelClass {
    match class {
        KernelClass::Matmul { batch, m, n, k, .. } => KernelClass::Matmul {
            batch: *batch,
            m: *m,
            n: *n,
            k: *k,
            dtype: DType::F8E4M3FN,
        },
        c => c.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moai_ir::cost::{Phase, Role};

    fn op(split: TpSplit) -> OpCost {
        OpCost {
            class: KernelClass::Matmul {
                batch: 1,
                m: 4096,
                n: 1024,
                k: 512,
                dtype: DType::BF16,
            },
            flops: 2.0 * 4096.0 * 1024.0 * 512.0,
            bytes: 0.0,
            phase: Phase::Forward,
            layer: Some(0),
            split,
            label: "x".into(),
            role: Role::Plain,
        }
    }

    #[test]
    fn names_round_trip_and_default_is_bf16() {
        for p in [MatmulPrecision::Bf16, MatmulPrecision::Fp8] {
            assert_eq!(p.name().parse::<MatmulPrecision>().unwrap(), p);
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{p}\""));
        }
        assert_eq!(MatmulPrecision::default(), MatmulPrecision::Bf16);
        let e = "fp4".parse::<MatmulPrecision>().unwrap_err().to_string();
        assert!(e.contains("unknown matmul precision `fp4`"), "{e}");
    }

    #[test]
    fn fp8_needs_fp8_units() {
        for g in [Gpu::A100, Gpu::Mi250, Gpu::Mi210] {
            let e = MatmulPrecision::Fp8.check_gpu(g).unwrap_err().to_string();
            assert!(e.contains(&format!("which {g} does not have")), "{e}");
            assert!(!e.contains('\n'));
            MatmulPrecision::Bf16.check_gpu(g).unwrap();
        }
        for g in [
            Gpu::H100,
            Gpu::H200,
            Gpu::B200,
            Gpu::Mi300x,
            Gpu::Mi325x,
            Gpu::Mi355x,
        ] {
            MatmulPrecision::Fp8.check_gpu(g).unwrap();
        }
    }

    #[test]
    fn only_decoder_linears_are_fp8() {
        assert!(is_fp8_gemm(BlockKind::Decoder(3), &op(TpSplit::Column)));
        assert!(is_fp8_gemm(BlockKind::Decoder(3), &op(TpSplit::Row)));
        assert!(!is_fp8_gemm(BlockKind::Decoder(3), &op(TpSplit::Heads)));
        assert!(!is_fp8_gemm(BlockKind::Head, &op(TpSplit::Column)));
        assert!(!is_fp8_gemm(BlockKind::Head, &op(TpSplit::Vocab)));
        // fp8 operands, bf16 output: 4096·512 + 512·1024 + 2·4096·1024 bytes.
        let b = fp8_gemm_bytes(&op(TpSplit::Column).class).unwrap();
        assert_eq!(b, 4096.0 * 512.0 + 512.0 * 1024.0 + 2.0 * 4096.0 * 1024.0);
        assert!(matches!(
            as_fp8(&op(TpSplit::Column).class),
            KernelClass::Matmul {
                dtype: DType::F8E4M3FN,
                ..
            }
        ));
        assert_eq!(scaling_state_bytes(1.0), 3.0 * 1026.0 * 4.0);
    }

    #[test]
    fn scaling_casts_are_per_transformer_engine_module() {
        let column = op(TpSplit::Column);
        let row = op(TpSplit::Row);
        let (input, output) = (4096.0 * 512.0, 4096.0 * 1024.0);
        // The first GEMM of a column-parallel module: its norm writes the fp8 input (no forward
        // kernel); backward transposes it and casts the output gradient.
        let c = te_module_casts(&column, 1, false).unwrap();
        assert_eq!(c.forward_cast_elements, 0.0);
        assert_eq!(c.backward_transpose_elements, input);
        assert_eq!(c.backward_cast_elements, output);
        assert_eq!(c.kernels, (0.0, 2.0));
        // A further GEMM of the same module (k after q; up after gate) adds only its output
        // gradient's elements to the module's one cast kernel.
        let c = te_module_casts(&column, 1, true).unwrap();
        assert_eq!(c.backward_transpose_elements, 0.0);
        assert_eq!(c.backward_cast_elements, output);
        assert_eq!(c.kernels, (0.0, 0.0));
        // A row-parallel module casts and transposes its bf16 input in forward.
        let c = te_module_casts(&row, 1, false).unwrap();
        assert_eq!(c.forward_cast_elements, input);
        assert_eq!(c.backward_cast_elements, output);
        assert_eq!(c.kernels, (1.0, 1.0));
        // Recomputation recasts a row-parallel input only; backward ops and non-matmuls add nothing.
        let rec = OpCost {
            phase: Phase::Recompute,
            ..row.clone()
        };
        let c = te_module_casts(&rec, 1, false).unwrap();
        assert_eq!((c.forward_cast_elements, c.kernels), (input, (1.0, 0.0)));
        let rec = OpCost {
            phase: Phase::Recompute,
            ..column.clone()
        };
        assert_eq!(
            te_module_casts(&rec, 1, false).unwrap(),
            Fp8Casts::default()
        );
        let back = OpCost {
            phase: Phase::Backward,
            ..row.clone()
        };
        assert_eq!(
            te_module_casts(&back, 1, false).unwrap(),
            Fp8Casts::default()
        );
        let copy = OpCost {
            class: KernelClass::Copy,
            ..row.clone()
        };
        assert!(te_module_casts(&copy, 1, false).is_none());
        // Under tensor parallelism a column-parallel rank holds the whole input, a row-parallel
        // rank the whole output gradient.
        let c = te_module_casts(&column, 4, false).unwrap();
        assert_eq!(
            (c.backward_transpose_elements, c.backward_cast_elements),
            (input, output / 4.0)
        );
        let c = te_module_casts(&row, 4, false).unwrap();
        assert_eq!(
            (c.forward_cast_elements, c.backward_cast_elements),
            (input / 4.0, output)
        );
    }
}
