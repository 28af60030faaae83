//! MLIR through melior: one context per thread with every dialect, pass and translation registered;
//! parsing and verification of emitted modules; pass pipelines parsed from text built by [`Target`].

pub mod gpu;
pub mod jit;

use crate::error::{Result, RuntimeError};
use crate::target::Target;
use melior::Context;
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::ir::operation::OperationLike;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use std::cell::RefCell;
use std::rc::Rc;

/// A context with everything registered and a diagnostics sink.
pub struct Mlir {
    /// The melior context.
    pub context: Context,
    diags: Rc<RefCell<Vec<String>>>,
}

impl Mlir {
    /// A fresh context (passes are registered once per process).
    pub fn new() -> Mlir {
        register_all_passes();
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new();
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        let diags = Rc::new(RefCell::new(Vec::new()));
        let sink = diags.clone();
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(d.to_string());
            true
        });
        Mlir { context, diags }
    }

    fn take_diags(&self) -> String {
        let d: Vec<String> = self.diags.borrow_mut().drain(..).collect();
        if d.is_empty() {
            "no diagnostic".into()
        } else {
            d.join("; ")
        }
    }

    /// Parses and verifies a module.
    pub fn parse<'c>(&'c self, program: &str, text: &str) -> Result<Module<'c>> {
        self.diags.borrow_mut().clear();
        let m = Module::parse(&self.context, text).ok_or_else(|| RuntimeError::InvalidModule {
            program: program.into(),
            reason: self.take_diags(),
        })?;
        if !m.as_operation().verify() {
            return Err(RuntimeError::InvalidModule {
                program: program.into(),
                reason: self.take_diags(),
            });
        }
        Ok(m)
    }

    /// Runs a textual pass pipeline (`builtin.module(...)`) on a module.
    pub fn run_pipeline(
        &self,
        module: &mut Module<'_>,
        program: &str,
        target: Target,
        pipeline: &str,
    ) -> Result<()> {
        self.diags.borrow_mut().clear();
        let pm = PassManager::new(&self.context);
        let lowering = |reason: String| RuntimeError::Lowering {
            program: program.into(),
            target: target.to_string(),
            pipeline: pipeline.into(),
            reason,
        };
        let inner = pipeline
            .strip_prefix("builtin.module(")
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| lowering("pipeline must be builtin.module(...)".into()))?;
        parse_pass_pipeline(
            pm.as_operation_pass_manager(),
            &format!("builtin.module({inner})"),
        )
        .map_err(|e| lowering(format!("pipeline does not parse: {e}")))?;
        pm.run(module).map_err(|_| lowering(self.take_diags()))?;
        Ok(())
    }
}

impl Default for Mlir {
    fn default() -> Self {
        Mlir::new()
    }
}
