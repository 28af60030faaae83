//! GPU lowering: bufferize, map onto the GPU and outline kernels (stage 1), merge every kernel of the
//! program into one `gpu.module @moai_kernels`, then attach the target, convert to ROCDL/NVVM and
//! serialize with `gpu-module-to-binary` (stage 2) into one HSACO code object or one PTX text per program.
//! Launch metadata (grid, block, workgroup memory, arguments) is read from the stage-1 module.

use super::Mlir;
use crate::bundle::{LaunchArg, LaunchInfo};
use crate::error::{Result, RuntimeError};
use crate::target::{Target, Toolkit};
use melior::ir::attribute::AttributeLike;
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use std::collections::HashMap;

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

/// Lowers an emitted module for a GPU target.
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
    let (stage0, stage1, stage2) =
        split_pipeline(target, toolkit).ok_or_else(|| lowering("not a GPU target".into()))?;
    let mlir = Mlir::new();
    let outlined = {
        let mut m = mlir.parse(program, text)?;
        mlir.run_pipeline(&mut m, program, target, &stage0)?;
        let copies = copies_to_linalg(&m.as_operation().to_string());
        let mut m = mlir.parse(program, &copies)?;
        mlir.run_pipeline(&mut m, program, target, &stage1)?;
        m.as_operation().to_string()
    };
    let merged = merge_kernel_modules(&outlined);
    let launches = launch_metadata(&merged);
    let mut m = mlir.parse(program, &merged)?;
    mlir.run_pipeline(&mut m, program, target, &stage2)?;
    let mut objects: Vec<Vec<u8>> = Vec::new();
    m.as_operation().walk(WalkOrder::PreOrder, |op| {
        if op.name().as_string_ref().as_str().ok() == Some("gpu.binary")
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

/// The GPU pipeline in three parts: bufferization; mapping loops onto the GPU and outlining kernels;
/// attaching the target, conversion and serialization.
fn split_pipeline(target: Target, toolkit: Option<&Toolkit>) -> Option<(String, String, String)> {
    let full = target.pipeline(toolkit);
    let inner = full.strip_prefix("builtin.module(")?.strip_suffix(')')?;
    let map_at = inner.find("convert-linalg-to-parallel-loops")?;
    let attach_at = inner.find(match target {
        Target::Rocdl { .. } => "rocdl-attach-target",
        Target::Nvvm { .. } => "nvvm-attach-target",
        Target::Cpu => return None,
    })?;
    let wrap = |p: &str| format!("builtin.module({})", p.trim_end_matches(','));
    Some((
        wrap(&inner[..map_at]),
        wrap(&inner[map_at..attach_at]),
        wrap(&inner[attach_at..]),
    ))
}

/// Drops kernels whose text equals an earlier kernel's but for the name (every decoder layer of a stage
/// outlines the same kernels), returning the kept lines and `dropped name → kept name`. Fewer kernels
/// make serialization (LLVM code generation per kernel) proportionally faster.
fn dedupe_kernels(lines: &[String]) -> (Vec<String>, HashMap<String, String>) {
    let mut out = Vec::with_capacity(lines.len());
    let mut alias = HashMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(rest) = lines[i].strip_prefix("    gpu.func @") else {
            out.push(lines[i].clone());
            i += 1;
            continue;
        };
        let name = rest.split('(').next().unwrap_or("").to_string();
        let end = (i..lines.len())
            .find(|j| lines[*j] == "    }")
            .unwrap_or(lines.len() - 1);
        let mut key = lines[i].replacen(&format!("@{name}("), "@(", 1);
        for l in &lines[i + 1..=end] {
            key.push('\n');
            key.push_str(l);
        }
        match seen.get(&key) {
            Some(kept) => {
                alias.insert(name, kept.clone());
            }
            None => {
                seen.insert(key, name);
                out.extend(lines[i..=end].iter().cloned());
            }
        }
        i = end + 1;
    }
    (out, alias)
}

/// Rewrites every `memref.copy` of the bufferized module as `linalg.copy` (0-d copies through a
/// one-element view), so that copies become GPU kernels like every other loop nest instead of host
/// code touching device memory.
pub fn copies_to_linalg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fresh = 0;
    for line in text.lines() {
        let t = line.trim_start();
        let pad = &line[..line.len() - t.len()];
        let parsed = t.strip_prefix("memref.copy ").and_then(|rest| {
            let (operands, types) = rest.split_once(" : ")?;
            let (a, b) = operands.split_once(", ")?;
            let (ta, tb) = types.split_once(" to ")?;
            Some((a, b, ta, tb))
        });
        let Some((a, b, ta, tb)) = parsed else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let scalar = |ty: &str| ty.starts_with("memref<") && !ty[7..].contains('x');
        if scalar(ta) && scalar(tb) {
            let one = |ty: &str| ty.replacen("memref<", "memref<1x", 1);
            let (va, vb) = (format!("%moai_cp{fresh}a"), format!("%moai_cp{fresh}b"));
            fresh += 1;
            out.push_str(&format!(
                "{pad}{va} = memref.expand_shape {a} [] output_shape [1] : {ta} into {}\n",
                one(ta)
            ));
            out.push_str(&format!(
                "{pad}{vb} = memref.expand_shape {b} [] output_shape [1] : {tb} into {}\n",
                one(tb)
            ));
            out.push_str(&format!(
                "{pad}linalg.copy ins({va} : {}) outs({vb} : {})\n",
                one(ta),
                one(tb)
            ));
        } else {
            out.push_str(&format!(
                "{pad}linalg.copy ins({a} : {ta}) outs({b} : {tb})\n"
            ));
        }
    }
    out
}

/// Moves every top-level `gpu.module` body into one `gpu.module @moai_kernels` and rewrites the
/// `gpu.launch_func` references. Kernel outlining names every kernel after its parent function and only
/// uniquifies the *modules*, so functions that collide in the merged module are renamed (`_1`, `_2`, ...).
pub fn merge_kernel_modules(text: &str) -> String {
    let mut host = Vec::new();
    let mut kernels = Vec::new();
    let mut module: Option<String> = None;
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut renamed: HashMap<(String, String), String> = HashMap::new();
    for line in text.lines() {
        match &module {
            None => {
                if let Some(rest) = line.strip_prefix("  gpu.module @") {
                    module = Some(rest.split([' ', '{']).next().unwrap_or("").to_string());
                    continue;
                }
                host.push(line.to_string());
            }
            Some(m) => {
                if line == "  }" {
                    module = None;
                    continue;
                }
                let mut line = line.to_string();
                if let Some(rest) = line.trim_start().strip_prefix("gpu.func @") {
                    let f = rest.split('(').next().unwrap_or("").to_string();
                    let mut unique = f.clone();
                    let mut k = 0;
                    while taken.contains(&unique) {
                        k += 1;
                        unique = format!("{f}_{k}");
                    }
                    taken.insert(unique.clone());
                    if unique != f {
                        line = line.replacen(
                            &format!("gpu.func @{f}("),
                            &format!("gpu.func @{unique}("),
                            1,
                        );
                    }
                    renamed.insert((m.clone(), f), unique);
                }
                kernels.push(line);
            }
        }
    }
    let (kernels, alias) = dedupe_kernels(&kernels);
    for v in renamed.values_mut() {
        if let Some(a) = alias.get(v) {
            *v = a.clone();
        }
    }
    // host ends with the module's closing brace
    let close = host.pop().unwrap_or_default();
    let mut out = String::new();
    for l in &host {
        let mut l = l.clone();
        if let Some(at) = l.find("gpu.launch_func") {
            let rest = &l[at..];
            if let Some(sym) = rest
                .split_whitespace()
                .find(|t| t.starts_with('@') && t.contains("::@"))
            {
                let sym = sym.to_string();
                if let Some((m, f)) = sym.trim_start_matches('@').split_once("::@") {
                    let f = renamed
                        .get(&(m.to_string(), f.to_string()))
                        .cloned()
                        .unwrap_or(f.to_string());
                    l = l.replacen(&sym, &format!("@{KERNEL_MODULE}::@{f}"), 1);
                }
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    if !kernels.is_empty() {
        out.push_str(&format!("  gpu.module @{KERNEL_MODULE} {{\n"));
        for l in &kernels {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("  }\n");
    }
    out.push_str(&close);
    out.push('\n');
    out
}

/// Reads launches (grid and block from constants, arguments by type) and each kernel's workgroup memory.
pub fn launch_metadata(text: &str) -> Vec<LaunchInfo> {
    let mut consts: HashMap<String, String> = HashMap::new();
    let mut shared: HashMap<String, u64> = HashMap::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("gpu.func @") {
            let name = rest.split('(').next().unwrap_or("").to_string();
            let mut bytes = 0;
            if let Some(w) = t.split(" workgroup(").nth(1) {
                for part in w.split("memref<").skip(1) {
                    bytes += memref_bytes(part.split(',').next().unwrap_or(""));
                }
            }
            shared.insert(name, bytes);
        }
    }
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("func.func") {
            consts.clear();
        }
        if let Some((lhs, rhs)) = t.split_once(" = arith.constant ") {
            consts.insert(
                lhs.to_string(),
                rhs.split(" : ").next().unwrap_or("").to_string(),
            );
        }
        if let Some(rest) = t.strip_prefix("gpu.launch_func") {
            let kernel = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .rsplit("::@")
                .next()
                .unwrap_or("")
                .to_string();
            let triple = |key: &str| -> Vec<u32> {
                rest.split(key)
                    .nth(1)
                    .and_then(|s| s.split(')').next())
                    .map(|s| {
                        s.trim_start_matches(" (")
                            .split(',')
                            .map(|v| {
                                consts
                                    .get(v.trim())
                                    .and_then(|c| c.parse().ok())
                                    .unwrap_or(0)
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let grid = triple("blocks in");
            let block = triple("threads in");
            let mut args = Vec::new();
            if let Some(a) = rest.split(" args(").nth(1) {
                let a = a.rsplit_once(')').map(|x| x.0).unwrap_or(a);
                for part in split_args(a) {
                    let (name, ty) = part.split_once(" : ").unwrap_or((part.as_str(), ""));
                    let name = name.trim();
                    let kind = if ty.starts_with("memref") {
                        "buffer"
                    } else {
                        "scalar"
                    };
                    let value = consts
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| name.to_string());
                    args.push(LaunchArg {
                        kind: kind.into(),
                        ty: ty.trim().to_string(),
                        value,
                    });
                }
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
    }
    out
}

fn split_args(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_string());
    }
    parts
}

/// Bytes of a `16x64xf32`-style memref shape.
fn memref_bytes(spec: &str) -> u64 {
    let mut parts: Vec<&str> = spec.split('x').collect();
    let elem = parts.pop().unwrap_or("f32").trim_end_matches('>');
    let size = match elem {
        "f64" | "i64" => 8,
        "f16" | "bf16" | "i16" => 2,
        "i8" | "i1" => 1,
        _ => 4,
    };
    parts
        .iter()
        .filter_map(|d| d.parse::<u64>().ok())
        .product::<u64>()
        * size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_modules_and_reads_launches() {
        let text = "module attributes {gpu.container_module} {\n  func.func @f(%arg0: memref<4xf32>) {\n    %c1 = arith.constant 1 : index\n    %c4 = arith.constant 4 : index\n    gpu.launch_func  @f_kernel::@f_kernel blocks in (%c4, %c1, %c1) threads in (%c4, %c1, %c1)  args(%arg0 : memref<4xf32>, %c4 : index)\n    return\n  }\n  gpu.module @f_kernel {\n    gpu.func @f_kernel(%arg0: memref<4xf32>, %arg1: index) workgroup(%arg2 : memref<16x64xf32, #gpu.address_space<workgroup>>) kernel {\n      gpu.return\n    }\n  }\n}";
        let m = merge_kernel_modules(text);
        assert!(m.contains("gpu.module @moai_kernels {"), "{m}");
        assert!(m.contains("@moai_kernels::@f_kernel"), "{m}");
        let l = launch_metadata(&m);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].grid, vec![4, 1, 1]);
        assert_eq!(l[0].shared_bytes, 16 * 64 * 4);
        assert_eq!(l[0].args.len(), 2);
        assert_eq!(l[0].args[1].value, "4");
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    const OUTLINED: &str = "module {
  func.func @f(%arg0: memref<4xf32>) {
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
        let m = merge_kernel_modules(OUTLINED);
        assert_eq!(m.matches("gpu.module @").count(), 1);
        // two distinct bodies: the third kernel is the first one again
        assert_eq!(m.matches("gpu.func @").count(), 2, "{m}");
        assert!(m.contains("gpu.func @f_kernel("));
        assert!(m.contains("gpu.func @f_kernel_1("));
        let launches: Vec<&str> = m
            .lines()
            .filter(|l| l.contains("gpu.launch_func"))
            .collect();
        assert!(launches[0].contains("@moai_kernels::@f_kernel "));
        assert!(launches[1].contains("@moai_kernels::@f_kernel_1 "));
        assert!(
            launches[2].contains("@moai_kernels::@f_kernel "),
            "{}",
            launches[2]
        );
    }
}
