//! Text builder for MLIR function bodies: fresh SSA names, element types, tensor values, and the
//! `linalg.generic` helper every op emission goes through.

use moai_ir::DType;
use std::fmt::Write as _;

/// Element types the emitter handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// f32
    F32,
    /// f64
    F64,
    /// f16
    F16,
    /// bf16
    BF16,
    /// i64
    I64,
    /// i32
    I32,
    /// i8 / u8
    I8,
    /// i1 (bool)
    I1,
}

impl Elem {
    /// From an IR dtype (None for f8 and unsigned wide types).
    pub fn from_dtype(d: DType) -> Option<Elem> {
        Some(match d {
            DType::F32 => Elem::F32,
            DType::F64 => Elem::F64,
            DType::F16 => Elem::F16,
            DType::BF16 => Elem::BF16,
            DType::I64 | DType::U64 => Elem::I64,
            DType::I32 | DType::U32 => Elem::I32,
            DType::I8 | DType::U8 => Elem::I8,
            DType::Bool => Elem::I1,
            _ => return None,
        })
    }

    /// MLIR spelling.
    pub fn mlir(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F64 => "f64",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
            Elem::I64 => "i64",
            Elem::I32 => "i32",
            Elem::I8 => "i8",
            Elem::I1 => "i1",
        }
    }

    /// Floating point?
    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64 | Elem::F16 | Elem::BF16)
    }

    /// Bit width.
    pub fn bits(self) -> u32 {
        match self {
            Elem::F64 | Elem::I64 => 64,
            Elem::F32 | Elem::I32 => 32,
            Elem::F16 | Elem::BF16 => 16,
            Elem::I8 => 8,
            Elem::I1 => 1,
        }
    }
}

/// A tensor SSA value with its static type.
#[derive(Clone, Debug, PartialEq)]
pub struct Tv {
    /// SSA name including `%`.
    pub name: String,
    /// Static shape.
    pub shape: Vec<i64>,
    /// Element type.
    pub elem: Elem,
}

impl Tv {
    /// `tensor<...>` type text.
    pub fn ty(&self) -> String {
        tensor_ty(&self.shape, self.elem)
    }

    /// `memref<...>` type text.
    pub fn memref_ty(&self) -> String {
        memref_ty(&self.shape, self.elem)
    }

    /// Number of elements.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// `tensor<2x3xf32>` / `tensor<f32>`.
pub fn tensor_ty(shape: &[i64], elem: Elem) -> String {
    format!("tensor<{}{}>", dims_prefix(shape), elem.mlir())
}

/// `memref<2x3xf32>`.
pub fn memref_ty(shape: &[i64], elem: Elem) -> String {
    format!("memref<{}{}>", dims_prefix(shape), elem.mlir())
}

fn dims_prefix(shape: &[i64]) -> String {
    shape.iter().map(|d| format!("{d}x")).collect()
}

/// An index expression of a `linalg.generic` operand over the loop dims `d0..dn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ix {
    /// Loop dim `d_i`.
    D(usize),
    /// `d_i floordiv c`.
    Div(usize, i64),
    /// `Σ c_k·d_k + c`.
    Lin(Vec<(usize, i64)>, i64),
    /// Constant.
    C(i64),
}

impl Ix {
    /// Affine-expression text.
    pub fn affine(&self) -> String {
        match self {
            Ix::D(i) => format!("d{i}"),
            Ix::Div(i, c) => format!("d{i} floordiv {c}"),
            Ix::C(c) => format!("{c}"),
            Ix::Lin(terms, c) => {
                let mut s = String::new();
                for (k, (d, coef)) in terms.iter().enumerate() {
                    if k > 0 {
                        s.push_str(" + ");
                    }
                    if *coef == 1 {
                        let _ = write!(s, "d{d}");
                    } else {
                        let _ = write!(s, "d{d} * {coef}");
                    }
                }
                if *c != 0 || terms.is_empty() {
                    if !s.is_empty() {
                        s.push_str(" + ");
                    }
                    let _ = write!(s, "{c}");
                }
                s
            }
        }
    }
}

/// Identity index list over the first `n` loop dims.
pub fn ident(n: usize) -> Vec<Ix> {
    (0..n).map(Ix::D).collect()
}

/// Index list broadcasting a tensor of shape `s` against output dims `out` (NumPy rules, aligned right).
pub fn bcast(s: &[i64], out: &[i64]) -> Vec<Ix> {
    let off = out.len() - s.len();
    s.iter()
        .enumerate()
        .map(|(i, d)| {
            if *d == 1 && out[off + i] != 1 {
                Ix::C(0)
            } else {
                Ix::D(off + i)
            }
        })
        .collect()
}

/// How a generic's output starts.
#[derive(Clone, Debug)]
pub enum Init<'a> {
    /// Uninitialized (`tensor.empty`); the body must not read the output argument.
    Empty,
    /// Filled with a constant (reductions).
    Fill(f64),
    /// An existing tensor.
    From(&'a Tv),
}

/// Float literal text that MLIR parses exactly (hex bit patterns for f32/f64).
pub fn float_lit(v: f64, elem: Elem) -> String {
    match elem {
        Elem::F32 => format!("0x{:08X}", (v as f32).to_bits()),
        Elem::F64 => format!("0x{:016X}", v.to_bits()),
        Elem::F16 => format!("0x{:04X}", half_bits_f16(v as f32)),
        Elem::BF16 => format!("0x{:04X}", bf16_bits(v as f32)),
        _ => format!("{}", v as i64),
    }
}

fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return 0x7FC0;
    }
    let round = ((b >> 16) & 1) + 0x7FFF;
    ((b + round) >> 16) as u16
}

fn half_bits_f16(v: f32) -> u16 {
    // round-to-nearest conversion good enough for constants (0, ±1, ±inf, eps-like values)
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    if v.is_nan() {
        return 0x7E00;
    }
    let a = v.abs();
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < 6.1e-5 {
        let m = (a / 5.960_464_5e-8).round() as u16;
        return sign | m;
    }
    let e = ((b >> 23) & 0xFF) as i32 - 127 + 15;
    let m = ((b & 0x7FFFFF) + 0x1000) >> 13;
    sign | (((e as u32) << 10) + m) as u16
}

/// A function body under construction.
#[derive(Debug, Default)]
pub struct Fb {
    /// Lines of the body.
    pub lines: Vec<String>,
    next: usize,
    indent: usize,
}

impl Fb {
    /// A new body at the given indentation (in units of two spaces).
    pub fn new(indent: usize) -> Fb {
        Fb {
            lines: Vec::new(),
            next: 0,
            indent,
        }
    }

    /// A fresh SSA name with a hint.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("%{hint}{}", self.next)
    }

    /// Appends one line at the current indentation.
    pub fn line(&mut self, s: impl AsRef<str>) {
        let pad = "  ".repeat(self.indent);
        self.lines.push(format!("{pad}{}", s.as_ref()));
    }

    /// Opens a nested region level.
    pub fn push(&mut self) {
        self.indent += 1;
    }

    /// Closes a nested region level.
    pub fn pop(&mut self) {
        self.indent = self.indent.saturating_sub(1);
    }

    /// `%n = arith.constant <lit> : <elem>`.
    pub fn cst(&mut self, v: f64, elem: Elem) -> String {
        let n = self.fresh("c");
        let lit = if elem == Elem::I1 {
            if v != 0.0 {
                "true".to_string()
            } else {
                "false".to_string()
            }
        } else {
            float_lit(v, elem)
        };
        self.line(format!("{n} = arith.constant {lit} : {}", elem.mlir()));
        n
    }

    /// `%n = arith.constant <v> : index`.
    pub fn idx(&mut self, v: i64) -> String {
        let n = self.fresh("i");
        self.line(format!("{n} = arith.constant {v} : index"));
        n
    }

    /// A unary op `%n = <op> %a : <ty>`.
    pub fn op1(&mut self, op: &str, a: &str, ty: &str) -> String {
        let n = self.fresh("v");
        self.line(format!("{n} = {op} {a} : {ty}"));
        n
    }

    /// A binary op `%n = <op> %a, %b : <ty>`.
    pub fn op2(&mut self, op: &str, a: &str, b: &str, ty: &str) -> String {
        let n = self.fresh("v");
        self.line(format!("{n} = {op} {a}, {b} : {ty}"));
        n
    }

    /// A comparison `%n = arith.cmp{f,i} <pred>, %a, %b : <ty>`.
    pub fn cmp(&mut self, float: bool, pred: &str, a: &str, b: &str, ty: &str) -> String {
        let n = self.fresh("p");
        let op = if float { "arith.cmpf" } else { "arith.cmpi" };
        self.line(format!("{n} = {op} {pred}, {a}, {b} : {ty}"));
        n
    }

    /// `%n = arith.select %c, %a, %b : <ty>`.
    pub fn select(&mut self, c: &str, a: &str, b: &str, ty: &str) -> String {
        let n = self.fresh("v");
        self.line(format!("{n} = arith.select {c}, {a}, {b} : {ty}"));
        n
    }

    /// `%n = linalg.index <d> : index` (inside a generic body).
    pub fn lindex(&mut self, d: usize) -> String {
        let n = self.fresh("ix");
        self.line(format!("{n} = linalg.index {d} : index"));
        n
    }

    /// Float helpers on one elem type.
    pub fn fadd(&mut self, a: &str, b: &str, e: Elem) -> String {
        self.op2("arith.addf", a, b, e.mlir())
    }
    /// `a - b`.
    pub fn fsub(&mut self, a: &str, b: &str, e: Elem) -> String {
        self.op2("arith.subf", a, b, e.mlir())
    }
    /// `a · b`.
    pub fn fmul(&mut self, a: &str, b: &str, e: Elem) -> String {
        self.op2("arith.mulf", a, b, e.mlir())
    }
    /// `a / b`.
    pub fn fdiv(&mut self, a: &str, b: &str, e: Elem) -> String {
        self.op2("arith.divf", a, b, e.mlir())
    }
    /// `max(a, b)` (NaN-propagating).
    pub fn fmax(&mut self, a: &str, b: &str, e: Elem) -> String {
        self.op2("arith.maximumf", a, b, e.mlir())
    }
    /// `e^a`.
    pub fn exp(&mut self, a: &str, e: Elem) -> String {
        self.op1("math.exp", a, e.mlir())
    }

    /// `tensor.empty()` of a shape.
    pub fn empty(&mut self, shape: &[i64], elem: Elem) -> Tv {
        let n = self.fresh("e");
        let t = Tv {
            name: n.clone(),
            shape: shape.to_vec(),
            elem,
        };
        self.line(format!("{n} = tensor.empty() : {}", t.ty()));
        t
    }

    /// `tensor.empty` filled with a constant.
    pub fn filled(&mut self, shape: &[i64], elem: Elem, v: f64) -> Tv {
        let e = self.empty(shape, elem);
        let c = self.cst(v, elem);
        let n = self.fresh("f");
        self.line(format!(
            "{n} = linalg.fill ins({c} : {}) outs({} : {}) -> {}",
            elem.mlir(),
            e.name,
            e.ty(),
            e.ty()
        ));
        Tv {
            name: n,
            shape: shape.to_vec(),
            elem,
        }
    }

    /// A `linalg.generic` with one output.
    ///
    /// `n_loops` loop dims; `reduction[i]` marks reduction dims; `ins` are operands with their index
    /// lists; the output is indexed by `out_ix` (identity over the first `out_shape.len()` dims when None).
    /// `body` receives the block argument names (inputs, then the output) and returns the yielded value.
    #[allow(clippy::too_many_arguments)]
    pub fn generic(
        &mut self,
        ins: &[(&Tv, Vec<Ix>)],
        out_shape: &[i64],
        out_elem: Elem,
        out_ix: Option<Vec<Ix>>,
        reduction: &[bool],
        init: Init<'_>,
        body: &mut dyn FnMut(&mut Fb, &[String]) -> String,
    ) -> Tv {
        let n_loops = reduction.len();
        let init_tv = match init {
            Init::Empty => self.empty(out_shape, out_elem),
            Init::Fill(v) => self.filled(out_shape, out_elem, v),
            Init::From(t) => t.clone(),
        };
        let dims: Vec<String> = (0..n_loops).map(|i| format!("d{i}")).collect();
        let dl = dims.join(", ");
        let map = |ix: &[Ix]| {
            format!(
                "affine_map<({dl}) -> ({})>",
                ix.iter().map(Ix::affine).collect::<Vec<_>>().join(", ")
            )
        };
        let out_ix = out_ix.unwrap_or_else(|| ident(out_shape.len()));
        let mut maps: Vec<String> = ins.iter().map(|(_, ix)| map(ix)).collect();
        maps.push(map(&out_ix));
        let iters: Vec<&str> = reduction
            .iter()
            .map(|r| if *r { "\"reduction\"" } else { "\"parallel\"" })
            .collect();
        let n = self.fresh("g");
        let out_ty = tensor_ty(out_shape, out_elem);
        let ins_txt = if ins.is_empty() {
            String::new()
        } else {
            format!(
                " ins({} : {})",
                ins.iter()
                    .map(|(t, _)| t.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                ins.iter()
                    .map(|(t, _)| t.ty())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        self.line(format!(
            "{n} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}}{ins_txt} outs({} : {}) {{",
            maps.join(", "),
            iters.join(", "),
            init_tv.name,
            out_ty
        ));
        let mut args = Vec::new();
        let mut decl = Vec::new();
        for (t, _) in ins {
            let a = self.fresh("a");
            decl.push(format!("{a}: {}", t.elem.mlir()));
            args.push(a);
        }
        let o = self.fresh("o");
        decl.push(format!("{o}: {}", out_elem.mlir()));
        args.push(o);
        self.line(format!("^bb0({}):", decl.join(", ")));
        self.push();
        let y = body(self, &args);
        self.line(format!("linalg.yield {y} : {}", out_elem.mlir()));
        self.pop();
        self.line(format!("}} -> {out_ty}"));
        Tv {
            name: n,
            shape: out_shape.to_vec(),
            elem: out_elem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_text() {
        assert_eq!(Ix::Lin(vec![(1, 4), (3, 1)], 0).affine(), "d1 * 4 + d3");
        assert_eq!(Ix::Div(2, 8).affine(), "d2 floordiv 8");
        assert_eq!(bcast(&[1, 4], &[3, 2, 4]), vec![Ix::C(0), Ix::D(2)]);
    }

    #[test]
    fn float_literals_are_exact() {
        assert_eq!(float_lit(1.0, Elem::F32), "0x3F800000");
        assert_eq!(float_lit(f64::NEG_INFINITY, Elem::F32), "0xFF800000");
        assert_eq!(float_lit(1.0, Elem::BF16), "0x3F80");
        assert_eq!(float_lit(1.0, Elem::F16), "0x3C00");
    }
}
