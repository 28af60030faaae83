//! Executors: run an emitted program on a device. CPU (LLVM JIT) is always available with feature `mlir`;
//! CUDA and HIP are behind features and say clearly what is missing.

use crate::emit::EmittedModule;
use crate::error::{Result, RuntimeError};
use moai_ir::Tensor;

/// Runs emitted programs on concrete tensors.
pub trait Executor {
    /// Backend name (`cpu`, `cuda`, `hip`).
    fn name(&self) -> &'static str;
    /// Runs `program` on `inputs` (program inputs then parameters, in argument order) and returns its
    /// outputs in order.
    fn run(&mut self, program: &EmittedModule, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
}

/// The CPU executor: JIT-compiles each distinct program once (per executor) and runs it on this thread.
/// Collectives run against the communicator bound to this thread ([`crate::collective::bind`]).
#[derive(Default)]
pub struct CpuExecutor {
    #[cfg(feature = "mlir")]
    cache: std::collections::HashMap<(String, u64), crate::mlir::jit::JitProgram>,
}

impl CpuExecutor {
    /// A new executor with an empty compile cache.
    pub fn new() -> CpuExecutor {
        CpuExecutor::default()
    }
}

impl Executor for CpuExecutor {
    fn name(&self) -> &'static str {
        "cpu"
    }

    #[cfg(feature = "mlir")]
    fn run(&mut self, program: &EmittedModule, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        program.text.hash(&mut h);
        let key = (program.func_name.clone(), h.finish());
        if !self.cache.contains_key(&key) {
            let jit = crate::mlir::jit::JitProgram::compile(program)?;
            self.cache.insert(key.clone(), jit);
        }
        match self.cache.get(&key) {
            Some(jit) => jit.run(inputs),
            None => Err(RuntimeError::Exec {
                program: program.func_name.clone(),
                reason: "compile cache lost the program".into(),
            }),
        }
    }

    #[cfg(not(feature = "mlir"))]
    fn run(&mut self, program: &EmittedModule, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(crate::no_mlir(&format!(
            "running `{}` on the CPU",
            program.func_name
        )))
    }
}

/// Runs one program per rank of a tensor-parallel group, each rank on its own thread with its own JIT,
/// collectives reduced in-process. `ranks[r]` is rank `r`'s program and inputs.
pub fn run_ranks(ranks: &[(&EmittedModule, Vec<Tensor>)]) -> Result<Vec<Vec<Tensor>>> {
    let comm = crate::collective::Comm::new(ranks.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter()
            .enumerate()
            .map(|(r, (prog, ins))| {
                let comm = comm.clone();
                s.spawn(move || {
                    crate::collective::bind(Some(comm), r);
                    let mut ex = CpuExecutor::new();
                    let out = ex.run(prog, ins);
                    crate::collective::bind(None, 0);
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RuntimeError::Exec {
                        program: "rank".into(),
                        reason: "rank thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// The NVIDIA executor (CUDA driver API through cudarc). Loads PTX and launches kernels.
pub struct CudaExecutor {
    _private: (),
}

impl CudaExecutor {
    /// Opens device `ordinal`. Errors when the crate was built without feature `cuda` or no device
    /// (or driver) is present.
    pub fn new(ordinal: usize) -> Result<CudaExecutor> {
        #[cfg(feature = "cuda")]
        {
            match cudarc::driver::CudaContext::new(ordinal) {
                Ok(_) => Ok(CudaExecutor { _private: () }),
                Err(e) => Err(RuntimeError::NoDevice {
                    backend: "cuda",
                    reason: e.to_string(),
                }),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(RuntimeError::FeatureDisabled {
                what: "the CUDA executor".into(),
                feature: "cuda",
                hint: "rebuild with `cargo build -p moai-runtime --features cuda` on a machine with the NVIDIA driver",
            })
        }
    }
}

impl Executor for CudaExecutor {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn run(&mut self, program: &EmittedModule, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(RuntimeError::Exec {
            program: program.func_name.clone(),
            reason: "the CUDA host orchestration (device buffers, kernel launches from the bundle's launch \
                     metadata) has not been run on a GPU yet; no NVIDIA device was available to test it"
                .into(),
        })
    }
}

/// The AMD executor (HIP runtime loaded at run time). Loads HSACO code objects and launches kernels.
pub struct HipExecutor {
    _private: (),
}

impl HipExecutor {
    /// Opens the HIP runtime. Errors when built without feature `hip` or when `libamdhip64.so` or a device
    /// is missing.
    pub fn new() -> Result<HipExecutor> {
        #[cfg(feature = "hip")]
        {
            // SAFETY: loading a well-known system library; no symbol is called here.
            match unsafe { libloading::Library::new("libamdhip64.so") } {
                Ok(_) => Ok(HipExecutor { _private: () }),
                Err(e) => Err(RuntimeError::NoDevice {
                    backend: "hip",
                    reason: e.to_string(),
                }),
            }
        }
        #[cfg(not(feature = "hip"))]
        Err(RuntimeError::FeatureDisabled {
            what: "the HIP executor".into(),
            feature: "hip",
            hint: "rebuild with `cargo build -p moai-runtime --features hip` on a machine with ROCm",
        })
    }
}

impl Executor for HipExecutor {
    fn name(&self) -> &'static str {
        "hip"
    }
    fn run(&mut self, program: &EmittedModule, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(RuntimeError::Exec {
            program: program.func_name.clone(),
            reason: "the HIP host orchestration has not been run on an AMD GPU; none was available to test it".into(),
        })
    }
}
