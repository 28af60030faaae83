//! CPU: lower an emitted module to the LLVM dialect and JIT it with melior's `ExecutionEngine`.

use super::Mlir;
use crate::emit::{ArgSpec, EmittedModule};
use crate::error::{Result, RuntimeError};
use crate::target::Target;
use melior::ExecutionEngine;
use moai_ir::{DType, Tensor, TensorData};

/// A JIT-compiled program, callable on host tensors.
pub struct JitProgram {
    engine: ExecutionEngine,
    _mlir: Mlir,
    func: String,
    inputs: Vec<ArgSpec>,
    outputs: Vec<ArgSpec>,
}

/// `__truncsfbf2`: f32 → bf16, round to nearest even. On x86-64 a `bfloat` is returned in the low 16 bits
/// of xmm0, which is where the bit pattern lands when returned as the low half of an f32.
extern "C" fn truncsfbf2(x: f32) -> f32 {
    f32::from_bits(u32::from(half::bf16::from_f32(x).to_bits()))
}

impl JitProgram {
    /// Parses, verifies, lowers (CPU pipeline) and JIT-compiles an emitted module.
    pub fn compile(m: &EmittedModule) -> Result<JitProgram> {
        let mlir = Mlir::new();
        let engine = {
            let mut module = mlir.parse(&m.func_name, &m.text)?;
            let pipeline = Target::Cpu.pipeline(None);
            mlir.run_pipeline(&mut module, &m.func_name, Target::Cpu, &pipeline)?;
            let engine = ExecutionEngine::new(&module, 2, &[], false, false);
            for (name, ptr) in crate::collective::symbols() {
                // SAFETY: the symbols are `extern "C"` functions with the signatures the emitter declares.
                unsafe { engine.register_symbol(name, ptr) };
            }
            // SAFETY: the compiler-rt/libgcc conversion LLVM's x86 backend may call for f32 → bf16, which
            // this process does not otherwise export (libgcc < 13); same C signature.
            unsafe { engine.register_symbol("__truncsfbf2", truncsfbf2 as *mut ()) };
            engine
        };
        Ok(JitProgram {
            engine,
            _mlir: mlir,
            func: m.func_name.clone(),
            inputs: m.inputs.clone(),
            outputs: m.outputs.clone(),
        })
    }

    /// Runs on inputs given in argument order (inputs, then parameters); returns the outputs in order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let bad = |reason: String| RuntimeError::BadInput {
            program: self.func.clone(),
            reason,
        };
        if inputs.len() != self.inputs.len() {
            return Err(bad(format!(
                "{} inputs given, the program takes {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let mut bufs: Vec<Buf> = Vec::with_capacity(inputs.len() + self.outputs.len());
        for (t, spec) in inputs.iter().zip(&self.inputs) {
            if t.shape != spec.shape {
                return Err(bad(format!(
                    "input `{}` has shape {:?}, expected {:?}",
                    spec.name, t.shape, spec.shape
                )));
            }
            bufs.push(Buf::from_tensor(t, spec).map_err(bad)?);
        }
        for spec in &self.outputs {
            bufs.push(Buf::zeros(spec).map_err(bad)?);
        }
        let mut ptrs: Vec<*mut u8> = bufs.iter_mut().map(|b| b.ptr()).collect();
        let mut args: Vec<*mut ()> = ptrs
            .iter_mut()
            .map(|p| p as *mut *mut u8 as *mut ())
            .collect();
        let _ = crate::collective::take_error();
        // The packed wrapper `_mlir_<func>(void**)` the engine generates; called directly because
        // `mlirExecutionEngineInvokePacked` reports failure for it in LLVM 22 even though it resolves.
        let packed = self.engine.lookup(&format!("_mlir_{}", self.func));
        if packed.is_null() {
            return Err(RuntimeError::Exec {
                program: self.func.clone(),
                reason: "JIT has no packed entry point".into(),
            });
        }
        // SAFETY: `packed` is the engine's `void(void**)` wrapper of the entry function; every argument
        // slot points at a pointer to a live buffer of the exact static size the function was compiled
        // for (checked above); the function has no results.
        unsafe {
            let f: extern "C" fn(*mut *mut ()) = std::mem::transmute(packed);
            f(args.as_mut_ptr());
        }
        if let Some(e) = crate::collective::take_error() {
            return Err(RuntimeError::Exec {
                program: self.func.clone(),
                reason: e,
            });
        }
        let outs = bufs.split_off(inputs.len());
        Ok(outs
            .into_iter()
            .zip(&self.outputs)
            .map(|(b, s)| b.into_tensor(s))
            .collect())
    }

    /// Entry function name.
    pub fn name(&self) -> &str {
        &self.func
    }

    /// Input signature.
    pub fn inputs(&self) -> &[ArgSpec] {
        &self.inputs
    }

    /// Output signature.
    pub fn outputs(&self) -> &[ArgSpec] {
        &self.outputs
    }
}

/// A host buffer in the element layout the JIT expects.
enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    /// bf16 or f16 bit patterns.
    U16(Vec<u16>),
}

impl Buf {
    fn from_tensor(t: &Tensor, spec: &ArgSpec) -> std::result::Result<Buf, String> {
        let v = t.to_f64_vec();
        Ok(match (spec.dtype, &t.data) {
            (DType::F32, TensorData::F32(x)) => Buf::F32(x.clone()),
            (DType::F32, _) => Buf::F32(v.iter().map(|x| *x as f32).collect()),
            (DType::F64, _) => Buf::F64(v),
            (DType::BF16, _) => Buf::U16(
                v.iter()
                    .map(|x| half::bf16::from_f64(*x).to_bits())
                    .collect(),
            ),
            (DType::F16, _) => Buf::U16(
                v.iter()
                    .map(|x| half::f16::from_f64(*x).to_bits())
                    .collect(),
            ),
            (DType::I64 | DType::U64, TensorData::I64(x)) => Buf::I64(x.clone()),
            (DType::I64 | DType::U64, _) => Buf::I64(v.iter().map(|x| *x as i64).collect()),
            (DType::I32 | DType::U32, _) => Buf::I32(v.iter().map(|x| *x as i32).collect()),
            (DType::Bool | DType::I8 | DType::U8, _) => {
                Buf::U8(v.iter().map(|x| *x as i64 as u8).collect())
            }
            (d, _) => {
                return Err(format!(
                    "input `{}` of dtype {d} cannot be passed to the CPU executor",
                    spec.name
                ));
            }
        })
    }

    fn zeros(spec: &ArgSpec) -> std::result::Result<Buf, String> {
        let n = spec.numel();
        Ok(match spec.dtype {
            DType::F32 => Buf::F32(vec![0.0; n]),
            DType::F64 => Buf::F64(vec![0.0; n]),
            DType::BF16 | DType::F16 => Buf::U16(vec![0; n]),
            DType::I64 | DType::U64 => Buf::I64(vec![0; n]),
            DType::I32 | DType::U32 => Buf::I32(vec![0; n]),
            DType::Bool | DType::I8 | DType::U8 => Buf::U8(vec![0; n]),
            d => {
                return Err(format!(
                    "output `{}` of dtype {d} cannot be returned by the CPU executor",
                    spec.name
                ));
            }
        })
    }

    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buf::F32(v) => v.as_mut_ptr() as *mut u8,
            Buf::F64(v) => v.as_mut_ptr() as *mut u8,
            Buf::I64(v) => v.as_mut_ptr() as *mut u8,
            Buf::I32(v) => v.as_mut_ptr() as *mut u8,
            Buf::U8(v) => v.as_mut_ptr(),
            Buf::U16(v) => v.as_mut_ptr() as *mut u8,
        }
    }

    fn into_tensor(self, spec: &ArgSpec) -> Tensor {
        let shape = spec.shape.clone();
        let (dtype, data) = match self {
            Buf::F32(v) => (spec.dtype, TensorData::F32(v)),
            Buf::F64(v) => (DType::F64, TensorData::F64(v)),
            Buf::I64(v) => (spec.dtype, TensorData::I64(v)),
            Buf::I32(v) => (
                spec.dtype,
                TensorData::I64(v.into_iter().map(i64::from).collect()),
            ),
            Buf::U8(v) if spec.dtype == DType::Bool => (
                DType::Bool,
                TensorData::Bool(v.into_iter().map(|x| x != 0).collect()),
            ),
            Buf::U8(v) => (
                spec.dtype,
                TensorData::I64(v.into_iter().map(i64::from).collect()),
            ),
            Buf::U16(v) => {
                let f: Vec<f32> = if spec.dtype == DType::F16 {
                    v.into_iter()
                        .map(|b| half::f16::from_bits(b).to_f32())
                        .collect()
                } else {
                    v.into_iter()
                        .map(|b| half::bf16::from_bits(b).to_f32())
                        .collect()
                };
                (spec.dtype, TensorData::F32(f))
            }
        };
        Tensor { dtype, shape, data }
    }
}
