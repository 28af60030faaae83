//! GPU lowering: bufferize, map onto the GPU and outline kernels, merge every kernel of the program into
//! one `gpu.module @moai_kernels`, then attach the target, convert to ROCDL/NVVM and serialize with
//! `gpu-module-to-binary` into one HSACO code object or one PTX text per program. The three pipeline
//! stages come from [`Target::gpu_stages`]; the module is parsed once and every step between the stages
//! is an IR rewrite through melior's operation API (walks, built operations, moved and renamed
//! functions, rewritten symbol references), never an edit of printed text. Launch metadata (grid, block,
//! workgroup memory, arguments) is read from the merged module's IR.
use super::Mlir;
use crate::bundle::{LaunchArg, LaunchInfo};
use crate::error::{Result, RuntimeError};
use crate::target::{Target, Toolkit};
use melior::ir::attribute::{
    ArrayAttribute, AttributeLike, DenseI32ArrayAttribute, DenseI64ArrayAttribute,
    IntegerAttribute, StringAttribute,
};
use melior::ir::operation::{
    OperationBuilder, OperationLike, OperationMutLike, OperationRef, OperationRefMut, WalkOrder,
    WalkResult,
};
use melior::ir::r#type::{DimSize, MemRefType, ShapedTypeLike, TypeLike};
use melior::ir::{
    Attribute, Block, BlockLike, BlockRef, Identifier, Location, Module, Operation, Region,
    RegionLike, Value, ValueLike,
};
use mlir_sys::MlirOperation;
use std::collections::{HashMap, HashSet};

/// Name of the merged kernel module.
pub const KERNEL_MODULE: &str = "moai_kernels";

/// A program lowered for a GPU.
#[derive(Clone, Debug)]
pub struct GpuBinary {
    /// HSACO bytes (ROCDL) or PTX text bytes (NVVM).
    pub binary: Vec<u8>,
    /// Kernel launches of the entry function, in program order.
    pub launches: Vec<LaunchInfo>,
    /// The outlined module before serialization (host code with `gpu.launch_func`, kernels as `gpu.func`).
    pub outlined_mlir: String,
}

/// Lowers an emitted module for a GPU target. The module is parsed once and stays IR from there: the
/// passes of the three stages run on it in place, and the rewrites between them ([`copies_to_linalg`],
/// [`merge_kernel_modules`]) and the reading of [`launch_metadata`] are operations on the IR.
pub fn lower(
    program: &str,
    text: &str,
    target: Target,
    toolkit: Option<&Toolkit>,
) -> Result<GpuBinary> {
    let lowering = |reason: String| RuntimeError::Lowering {
        program: program.into(),
        target: target.to_string(),
        pipeline: "(merge)".into(),
        reason,
    };
    let stages = target
        .gpu_stages(toolkit)
        .ok_or_else(|| lowering("not a GPU target".into()))?;
    let mlir = Mlir::new();
    let mut m = mlir.parse(program, text)?;
    mlir.run_pipeline(&mut m, program, target, &stages.bufferize)?;
    copies_to_linalg(&m).map_err(lowering)?;
    mlir.run_pipeline(&mut m, program, target, &stages.outline)?;
    merge_kernel_modules(&m).map_err(lowering)?;
    if !m.as_operation().verify() {
        return Err(lowering("the merged kernel module does not verify".into()));
    }
    let launches = launch_metadata(&m);
    let merged = m.as_operation().to_string();
    mlir.run_pipeline(&mut m, program, target, &stages.serialize)?;
    let mut objects: Vec<Vec<u8>> = Vec::new();
    m.as_operation().walk(WalkOrder::PreOrder, |op| {
        if op_is(&op, "gpu.binary")
            && let Ok(arr) = op.attribute("objects")
        {
            let raw = arr.to_raw();
            // SAFETY: plain C API accessors on a live attribute of this context.
            unsafe {
                let n = mlir_sys::mlirArrayAttrGetNumElements(raw);
                for i in 0..n {
                    let obj = mlir_sys::mlirArrayAttrGetElement(raw, i);
                    if mlir_sys::mlirAttributeIsAGPUObjectAttr(obj) {
                        let s = mlir_sys::mlirGPUObjectAttrGetObject(obj);
                        objects.push(
                            std::slice::from_raw_parts(s.data as *const u8, s.length).to_vec(),
                        );
                    }
                }
            }
        }
        WalkResult::Advance
    });
    if objects.len() != 1 {
        return Err(lowering(format!(
            "expected one serialized kernel object, found {}",
            objects.len()
        )));
    }
    Ok(GpuBinary {
        binary: objects.remove(0),
        launches,
        outlined_mlir: merged,
    })
}

/// True if `op` is the operation `name` (`memref.copy`).
fn op_is<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>, name: &str) -> bool {
    op.name().as_string_ref().as_str().ok() == Some(name)
}

/// The operations named `name` anywhere in `root`, in pre-order (collected first, so that the caller may
/// rewrite them).
fn collect<'c: 'a, 'a>(root: &impl OperationLike<'c, 'a>, name: &str) -> Vec<MlirOperation> {
    let mut found = Vec::new();
    root.walk(WalkOrder::PreOrder, |op| {
        if op_is(&op, name) {
            found.push(op.to_raw());
        }
        WalkResult::Advance
    });
    found
}

/// A string reference's text (empty if it is not UTF-8).
fn sref(s: mlir_sys::MlirStringRef) -> String {
    // SAFETY: MLIR string references point at `length` live bytes.
    let bytes = unsafe { std::slice::from_raw_parts(s.data as *const u8, s.length) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// An MLIR string reference borrowing `s`.
fn to_sref(s: &str) -> mlir_sys::MlirStringRef {
    mlir_sys::MlirStringRef {
        data: s.as_ptr() as *const _,
        length: s.len(),
    }
}

/// A symbol's name (`sym_name`).
fn symbol_name<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>) -> Option<String> {
    let a = op.attribute("sym_name").ok()?;
    StringAttribute::try_from(a)
        .ok()
        .map(|s| s.value().to_string())
}

/// Rewrites every `memref.copy` of the bufferized module as `linalg.copy` (0-d copies through a
/// one-element `memref.expand_shape` view), so that copies become GPU kernels like every other loop nest
/// instead of host code touching device memory. An IR rewrite: the copies are found by a walk, the new
/// operations built with their operands and types, and the copies erased.
pub fn copies_to_linalg(module: &Module<'_>) -> std::result::Result<(), String> {
    let ctx = module.context();
    let ctx = unsafe { ctx.to_ref() };
    for raw in collect(&module.as_operation(), "memref.copy") {
        // SAFETY: collected from the live module just above; erased once, at the end of this iteration.
        let copy = unsafe { OperationRef::from_raw(raw) };
        let loc = copy.location();
        let block = copy
            .block()
            .ok_or_else(|| "a memref.copy outside any block".to_string())?;
        let (mut a, mut b) = (
            copy.operand(0).map_err(|e| e.to_string())?,
            copy.operand(1).map_err(|e| e.to_string())?,
        );
        let (ta, tb) = (
            MemRefType::try_from(a.r#type()).map_err(|e| e.to_string())?,
            MemRefType::try_from(b.r#type()).map_err(|e| e.to_string())?,
        );
        if ta.rank() == 0 && tb.rank() == 0 {
            a = one_element_view(ctx, &block, copy, loc, a, ta)?;
            b = one_element_view(ctx, &block, copy, loc, b, tb)?;
        }
        let body = Block::new(&[(ta.element(), loc), (tb.element(), loc)]);
        let input = body.argument(0).map_err(|e| e.to_string())?;
        body.append_operation(
            OperationBuilder::new("linalg.yield", loc)
                .add_operands(&[input.into()])
                .build()
                .map_err(|e| format!("linalg.yield: {e}"))?,
        );
        let region = Region::new();
        region.append_block(body);
        let op = OperationBuilder::new("linalg.copy", loc)
            .add_operands(&[a, b])
            .add_attributes(&[(
                Identifier::new(ctx, "operandSegmentSizes"),
                DenseI32ArrayAttribute::new(ctx, &[1, 1]).into(),
            )])
            .add_regions([region])
            .build()
            .map_err(|e| format!("linalg.copy: {e}"))?;
        block.insert_operation_before(copy, op);
        // SAFETY: the copy has no results and is not referenced anymore.
        unsafe { mlir_sys::mlirOperationDestroy(raw) };
    }
    Ok(())
}

/// A `memref.expand_shape` of the 0-d memref `v` into a one-element 1-d memref of the same element type
/// and memory space, inserted before `before`.
fn one_element_view<'c, 'a>(
    ctx: &'c melior::Context,
    block: &BlockRef<'c, 'a>,
    before: OperationRef<'c, 'a>,
    loc: Location<'c>,
    v: Value<'c, 'a>,
    t: MemRefType<'c>,
) -> std::result::Result<Value<'c, 'a>, String> {
    // SAFETY: accessor on a live type.
    let space =
        unsafe { Attribute::from_option_raw(mlir_sys::mlirMemRefTypeGetMemorySpace(t.to_raw())) };
    let one = MemRefType::new(t.element(), &[1], None, space);
    let op = OperationBuilder::new("memref.expand_shape", loc)
        .add_operands(&[v])
        .add_attributes(&[
            (
                Identifier::new(ctx, "reassociation"),
                ArrayAttribute::new(ctx, &[]).into(),
            ),
            (
                Identifier::new(ctx, "static_output_shape"),
                DenseI64ArrayAttribute::new(ctx, &[1]).into(),
            ),
        ])
        .add_results(&[one.into()])
        .build()
        .map_err(|e| format!("memref.expand_shape: {e}"))?;
    let op = block.insert_operation_before(before, op);
    op.result(0).map(Value::from).map_err(|e| e.to_string())
}

/// Moves every top-level `gpu.module`'s body into one `gpu.module @moai_kernels` (appended to the
/// module) and rewrites the `gpu.launch_func` references. Kernel outlining names every kernel after its
/// parent function and only uniquifies the *modules*, so functions that collide in the merged module are
/// renamed (`_1`, `_2`, ...). A kernel structurally equal to an earlier one but for its name (every
/// decoder layer of a stage outlines the same kernels) is dropped and its launches retargeted to the
/// earlier one: fewer kernels make serialization (LLVM code generation per kernel) proportionally
/// faster. Equality is that of the kernels' printed forms under one placeholder name, each printed alone.
pub fn merge_kernel_modules(module: &Module<'_>) -> std::result::Result<(), String> {
    let ctx = module.context();
    let ctx = unsafe { ctx.to_ref() };
    let body = module.body();
    let mut modules = Vec::new();
    let mut op = body.first_operation();
    while let Some(o) = op {
        if op_is(&o, "gpu.module") {
            modules.push(o.to_raw());
        }
        op = o.next_in_block();
    }
    if modules.is_empty() {
        return Ok(());
    }
    let loc = Location::unknown(ctx);
    let kernels = Block::new(&[]);
    let region = Region::new();
    let merged = OperationBuilder::new("gpu.module", loc)
        .add_attributes(&[(
            Identifier::new(ctx, "sym_name"),
            StringAttribute::new(ctx, KERNEL_MODULE).into(),
        )])
        .add_regions([region])
        .build()
        .map_err(|e| format!("gpu.module: {e}"))?;
    let merged = body.append_operation(merged);
    merged
        .region(0)
        .map_err(|e| e.to_string())?
        .append_block(kernels);
    let kernels = merged
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| "the merged module has no block".to_string())?;
    let mut taken: HashSet<String> = HashSet::new();
    let mut renamed: HashMap<(String, String), String> = HashMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for raw in modules {
        // SAFETY: a top-level operation of the live module, erased at the end of this iteration.
        let gm = unsafe { OperationRef::from_raw(raw) };
        let m = symbol_name(&gm).unwrap_or_default();
        let inner = gm
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| format!("gpu.module @{m} has no body"))?;
        while let Some(first) = inner.first_operation() {
            let mut first = unsafe { OperationRefMut::from_raw(first.to_raw()) };
            let is_func = op_is(&first, "gpu.func");
            let f = symbol_name(&first).unwrap_or_default();
            // detach, then either keep (in the merged module) or drop (a duplicate)
            first.remove_from_parent();
            // SAFETY: detached just above; owned from here on.
            let owned = unsafe { Operation::from_raw(first.to_raw()) };
            if !is_func {
                kernels.append_operation(owned);
                continue;
            }
            let mut unique = f.clone();
            let mut k = 0;
            while taken.contains(&unique) {
                k += 1;
                unique = format!("{f}_{k}");
            }
            taken.insert(unique.clone());
            let key = {
                let mut probe = owned.clone();
                probe.set_attribute("sym_name", StringAttribute::new(ctx, "").into());
                probe.to_string()
            };
            match seen.get(&key) {
                Some(kept) => {
                    renamed.insert((m.clone(), f), kept.clone());
                    drop(owned);
                }
                None => {
                    let mut owned = owned;
                    if unique != f {
                        owned.set_attribute("sym_name", StringAttribute::new(ctx, &unique).into());
                    }
                    seen.insert(key, unique.clone());
                    renamed.insert((m.clone(), f), unique);
                    kernels.append_operation(owned);
                }
            }
        }
        // SAFETY: the now empty gpu.module is not referenced once the launches are retargeted below.
        unsafe { mlir_sys::mlirOperationDestroy(raw) };
    }
    for raw in collect(&module.as_operation(), "gpu.launch_func") {
        let mut launch = unsafe { OperationRefMut::from_raw(raw) };
        let sym = launch
            .attribute("kernel")
            .map_err(|_| "a gpu.launch_func without a kernel".to_string())?
            .to_raw();
        // SAFETY: accessors on a live symbol reference attribute; new attributes of this context.
        let attr = unsafe {
            let m = sref(mlir_sys::mlirSymbolRefAttrGetRootReference(sym));
            let f = sref(mlir_sys::mlirSymbolRefAttrGetLeafReference(sym));
            let f = renamed.get(&(m, f.clone())).cloned().unwrap_or(f);
            let leaf = mlir_sys::mlirFlatSymbolRefAttrGet(ctx.to_raw(), to_sref(&f));
            Attribute::from_raw(mlir_sys::mlirSymbolRefAttrGet(
                ctx.to_raw(),
                to_sref(KERNEL_MODULE),
                1,
                &leaf,
            ))
        };
        launch.set_attribute("kernel", attr);
    }
    Ok(())
}

/// Operand groups of `gpu.launch_func` (its `operandSegmentSizes`): async dependencies, grid x/y/z,
/// block x/y/z, cluster x/y/z, dynamic shared memory, kernel operands, async object.
const LAUNCH_SEGMENTS: usize = 13;
/// Index of the kernel operands among [`LAUNCH_SEGMENTS`].
const KERNEL_OPERANDS: usize = 11;

/// Reads the launches of the module in program order (grid and block from constants, arguments by
/// type) and each launched kernel's workgroup memory, by walking the IR.
pub fn launch_metadata(module: &Module<'_>) -> Vec<LaunchInfo> {
    let root = module.as_operation();
    let mut shared: HashMap<String, u64> = HashMap::new();
    for raw in collect(&root, "gpu.func") {
        let f = unsafe { OperationRef::from_raw(raw) };
        shared.insert(symbol_name(&f).unwrap_or_default(), workgroup_bytes(&f));
    }
    // SAFETY: an AsmState over the live module names values as the module's printer does; destroyed below.
    let state = unsafe {
        let flags = mlir_sys::mlirOpPrintingFlagsCreate();
        let s = mlir_sys::mlirAsmStateCreateForOperation(root.to_raw(), flags);
        mlir_sys::mlirOpPrintingFlagsDestroy(flags);
        s
    };
    let mut out = Vec::new();
    for raw in collect(&root, "gpu.launch_func") {
        let l = unsafe { OperationRef::from_raw(raw) };
        let kernel = l
            .attribute("kernel")
            .map(|a| unsafe { sref(mlir_sys::mlirSymbolRefAttrGetLeafReference(a.to_raw())) })
            .unwrap_or_default();
        let segments: Vec<usize> = l
            .attribute("operandSegmentSizes")
            .ok()
            .and_then(|a| DenseI32ArrayAttribute::try_from(a).ok())
            .map(|a| {
                (0..a.len())
                    .map(|i| a.element(i).unwrap_or(0).max(0) as usize)
                    .collect()
            })
            .unwrap_or_default();
        if segments.len() != LAUNCH_SEGMENTS {
            continue;
        }
        let start = |s: usize| segments[..s].iter().sum::<usize>();
        let operand = |i: usize| l.operand(i).ok();
        let dim = |s: usize| -> u32 {
            operand(start(s))
                .and_then(|v| constant_text(v))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        };
        let grid = (1..4).map(dim).collect();
        let block = (4..7).map(dim).collect();
        let first = start(KERNEL_OPERANDS);
        let mut args = Vec::new();
        for i in first..first + segments[KERNEL_OPERANDS] {
            let Some(v) = operand(i) else { continue };
            let ty = v.r#type().to_string();
            let kind = if MemRefType::try_from(v.r#type()).is_ok() {
                "buffer"
            } else {
                "scalar"
            };
            let value = constant_text(v).unwrap_or_else(|| value_name(v, state));
            args.push(LaunchArg {
                kind: kind.into(),
                ty,
                value,
            });
        }
        let shared_bytes = shared.get(&kernel).copied().unwrap_or(0) as u32;
        out.push(LaunchInfo {
            kernel,
            grid,
            block,
            shared_bytes,
            args,
            order: out.len() as u32,
        });
    }
    unsafe { mlir_sys::mlirAsmStateDestroy(state) };
    out
}

/// The value of an `arith.constant` as it is written (`4`, `1.000000e+00`), `None` for other values.
fn constant_text(v: Value<'_, '_>) -> Option<String> {
    // SAFETY: accessors on a live value.
    let def = unsafe {
        if !mlir_sys::mlirValueIsAOpResult(v.to_raw()) {
            return None;
        }
        OperationRef::from_raw(mlir_sys::mlirOpResultGetOwner(v.to_raw()))
    };
    if !op_is(&def, "arith.constant") {
        return None;
    }
    let a = def.attribute("value").ok()?;
    if let Ok(i) = IntegerAttribute::try_from(a) {
        let ty = a.r#type();
        // SAFETY: accessors on a live type.
        let bool_like = unsafe {
            mlir_sys::mlirTypeIsAInteger(ty.to_raw())
                && mlir_sys::mlirIntegerTypeGetWidth(ty.to_raw()) == 1
        };
        return Some(if bool_like {
            (i.value() != 0).to_string()
        } else {
            i.value().to_string()
        });
    }
    let text = a.to_string();
    let ty = format!(" : {}", a.r#type());
    Some(text.strip_suffix(&ty).unwrap_or(&text).to_string())
}

/// The name the module's printer gives a value (`%alloc_3`, `%arg0`).
fn value_name(v: Value<'_, '_>, state: mlir_sys::MlirAsmState) -> String {
    unsafe extern "C" fn push(s: mlir_sys::MlirStringRef, data: *mut std::ffi::c_void) {
        // SAFETY: `data` is the `String` passed below; `s` is live for this call.
        unsafe { (*(data as *mut String)).push_str(&sref(s)) };
    }
    let mut name = String::new();
    // SAFETY: a live value and state; the callback only appends to `name`.
    unsafe {
        mlir_sys::mlirValuePrintAsOperand(
            v.to_raw(),
            state,
            Some(push),
            &mut name as *mut String as *mut _,
        )
    };
    name
}

/// Bytes of a `gpu.func`'s workgroup attributions (the block arguments after its inputs).
fn workgroup_bytes<'c: 'a, 'a>(f: &impl OperationLike<'c, 'a>) -> u64 {
    let count = f
        .attribute("workgroup_attributions")
        .ok()
        .and_then(|a| IntegerAttribute::try_from(a).ok())
        .map(|a| a.value().max(0) as usize)
        .unwrap_or(0);
    let inputs = f
        .attribute("function_type")
        .map(|a| unsafe {
            mlir_sys::mlirFunctionTypeGetNumInputs(mlir_sys::mlirTypeAttrGetValue(a.to_raw()))
                as usize
        })
        .unwrap_or(0);
    let Some(entry) = f.region(0).ok().and_then(|r| r.first_block()) else {
        return 0;
    };
    (inputs..inputs + count)
        .filter_map(|i| entry.argument(i).ok())
        .filter_map(|a| MemRefType::try_from(a.r#type()).ok())
        .map(|t| memref_bytes(&t))
        .sum()
}

/// Bytes of a statically shaped memref (dynamic dimensions count as 1; sub-byte elements as a byte;
/// `index` as 4 bytes).
fn memref_bytes(t: &MemRefType<'_>) -> u64 {
    let e = t.element().to_raw();
    // SAFETY: accessors on a live type.
    let bits = unsafe {
        if mlir_sys::mlirTypeIsAInteger(e) {
            mlir_sys::mlirIntegerTypeGetWidth(e) as u64
        } else if mlir_sys::mlirTypeIsAFloat(e) {
            mlir_sys::mlirFloatTypeGetWidth(e) as u64
        } else {
            32
        }
    };
    let size = bits.div_ceil(8).max(1);
    (0..t.rank())
        .filter_map(|i| t.dim_size(i).ok())
        .filter_map(|d| match d {
            DimSize::Static(n) => Some(n),
            DimSize::Dynamic => None,
        })
        .product::<u64>()
        * size
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAUNCH: &str = "module attributes {gpu.container_module} {
  func.func @f(%arg0: memref<4xf32>) {
    %c1 = arith.constant 1 : index
    %c4 = arith.constant 4 : index
    gpu.launch_func  @f_kernel::@f_kernel blocks in (%c4, %c1, %c1) threads in (%c4, %c1, %c1)  args(%arg0 : memref<4xf32>, %c4 : index)
    return
  }
  gpu.module @f_kernel {
    gpu.func @f_kernel(%arg0: memref<4xf32>, %arg1: index) workgroup(%arg2 : memref<16x64xf32, #gpu.address_space<workgroup>>) kernel {
      gpu.return
    }
  }
}";

    #[test]
    fn merges_modules_and_reads_launches() {
        let mlir = Mlir::new();
        let m = mlir.parse("t", LAUNCH).unwrap();
        merge_kernel_modules(&m).unwrap();
        assert!(m.as_operation().verify());
        let text = m.as_operation().to_string();
        assert!(text.contains("gpu.module @moai_kernels {"), "{text}");
        assert!(text.contains("@moai_kernels::@f_kernel"), "{text}");
        let l = launch_metadata(&m);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "f_kernel");
        assert_eq!(l[0].grid, vec![4, 1, 1]);
        assert_eq!(l[0].block, vec![4, 1, 1]);
        assert_eq!(l[0].shared_bytes, 16 * 64 * 4);
        assert_eq!(l[0].args.len(), 2);
        assert_eq!(
            (l[0].args[0].kind.as_str(), l[0].args[0].ty.as_str()),
            ("buffer", "memref<4xf32>")
        );
        assert_eq!(l[0].args[0].value, "%arg0");
        assert_eq!(
            (l[0].args[1].kind.as_str(), l[0].args[1].value.as_str()),
            ("scalar", "4")
        );
    }

    const OUTLINED: &str = "module attributes {gpu.container_module} {
  func.func @f(%arg0: memref<4xf32>) {
    %c1 = arith.constant 1 : index
    %c4 = arith.constant 4 : index
    gpu.launch_func  @f_kernel::@f_kernel blocks in (%c1, %c1, %c1) threads in (%c4, %c1, %c1)  args(%arg0 : memref<4xf32>)
    gpu.launch_func  @f_kernel_0::@f_kernel blocks in (%c1, %c1, %c1) threads in (%c4, %c1, %c1)  args(%arg0 : memref<4xf32>)
    gpu.launch_func  @f_kernel_1::@f_kernel blocks in (%c1, %c1, %c1) threads in (%c4, %c1, %c1)  args(%arg0 : memref<4xf32>)
    return
  }
  gpu.module @f_kernel {
    gpu.func @f_kernel(%arg0: memref<4xf32>) kernel {
      gpu.return
    }
  }
  gpu.module @f_kernel_0 {
    gpu.func @f_kernel(%arg0: memref<4xf32>) kernel {
      %c0 = arith.constant 0 : index
      gpu.return
    }
  }
  gpu.module @f_kernel_1 {
    gpu.func @f_kernel(%arg0: memref<4xf32>) kernel {
      gpu.return
    }
  }
}";

    #[test]
    fn outlined_kernels_are_renamed_apart_and_duplicates_dropped() {
        let mlir = Mlir::new();
        let m = mlir.parse("t", OUTLINED).unwrap();
        merge_kernel_modules(&m).unwrap();
        assert!(m.as_operation().verify());
        let text = m.as_operation().to_string();
        assert_eq!(text.matches("gpu.module @").count(), 1, "{text}");
        // two distinct bodies: the third kernel is the first one again
        assert_eq!(text.matches("gpu.func @").count(), 2, "{text}");
        assert!(text.contains("gpu.func @f_kernel("), "{text}");
        assert!(text.contains("gpu.func @f_kernel_1("), "{text}");
        let kernels: Vec<String> = launch_metadata(&m).into_iter().map(|l| l.kernel).collect();
        assert_eq!(kernels, ["f_kernel", "f_kernel_1", "f_kernel"]);
    }

    #[test]
    fn copies_become_linalg_copies_with_0d_through_a_view() {
        let text = "module {
  func.func @f(%a: memref<4xf32>, %b: memref<4xf32>, %s: memref<f32>, %t: memref<f32>) {
    memref.copy %a, %b : memref<4xf32> to memref<4xf32>
    memref.copy %s, %t : memref<f32> to memref<f32>
    return
  }
}";
        let mlir = Mlir::new();
        let m = mlir.parse("t", text).unwrap();
        copies_to_linalg(&m).unwrap();
        assert!(m.as_operation().verify());
        let out = m.as_operation().to_string();
        assert!(!out.contains("memref.copy"), "{out}");
        assert_eq!(out.matches("linalg.copy").count(), 2, "{out}");
        assert_eq!(out.matches("memref.expand_shape").count(), 2, "{out}");
        assert!(
            out.contains("linalg.copy ins(%arg0 : memref<4xf32>) outs(%arg1 : memref<4xf32>)"),
            "{out}"
        );
        assert!(out.contains("into memref<1xf32>"), "{out}");
        // the rewritten module parses back (what the printer wrote is valid MLIR)
        mlir.parse("t", &out).unwrap();
    }
}
