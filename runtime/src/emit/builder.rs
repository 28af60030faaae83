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
    /// Emit f32 transcendental functions without device libraries (see [`Fb::math`]).
    pub portable_math: bool,
    /// GPU kernels: a reduction to a scalar gets a unit parallel loop so it maps to a kernel (a loop
    /// nest without parallel dims would stay on the host).
    pub gpu: bool,
    next: usize,
    indent: usize,
}

impl Fb {
    /// A new body at the given indentation (in units of two spaces).
    pub fn new(indent: usize) -> Fb {
        Fb {
            lines: Vec::new(),
            portable_math: false,
            gpu: false,
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
        self.math("exp", a, e)
    }

    /// `f(x)` for `f` in `exp`, `log`, `sqrt`, `sin`, `cos`, `absf`: the `math` dialect op, or, with
    /// [`Fb::portable_math`] on f32, plain `arith` code that needs no device library (`__ocml_*` for
    /// ROCDL, libdevice's `__nv_*` for NVVM, neither of which ships with Debian's LLVM; both GPU
    /// conversions also turn LLVM's math intrinsics into such calls): Cody-Waite range reduction with
    /// Cephes' single-precision polynomials, exponent bits set directly, Newton's iteration for roots.
    /// Denormal inputs to `log` and `sqrt` are not handled (they are flushed like GPU fast math does).
    pub fn math(&mut self, f: &str, x: &str, e: Elem) -> String {
        if self.portable_math && self.is_half(e) {
            let x = self.widen(x, e);
            let y = self.math(f, &x, Elem::F32);
            return self.narrow(&y, e);
        }
        if !self.portable_math || e != Elem::F32 {
            return self.op1(&format!("math.{f}"), x, e.mlir());
        }
        match f {
            "exp" => self.exp_f32(x),
            "log" => self.log_f32(x),
            "sqrt" => {
                let r = self.rsqrt_f32(x);
                self.fmul(x, &r, e)
            }
            "sin" => self.sincos(x, 0),
            "cos" => self.sincos(x, 1),
            "absf" => {
                let bits = self.op1("arith.bitcast", x, "f32 to i32");
                let mask = self.i32c(0x7FFF_FFFF);
                let b = self.op2("arith.andi", &bits, &mask, "i32");
                self.op1("arith.bitcast", &b, "i32 to f32")
            }
            other => self.op1(&format!("math.{other}"), x, e.mlir()),
        }
    }

    /// `a · b + c` (`math.fma`, or with portable math a contractable multiply and add).
    pub fn fma(&mut self, a: &str, b: &str, c: &str, e: Elem) -> String {
        if self.portable_math && self.is_half(e) {
            let (a, b, c) = (self.widen(a, e), self.widen(b, e), self.widen(c, e));
            let y = self.fma(&a, &b, &c, Elem::F32);
            return self.narrow(&y, e);
        }
        if self.portable_math && e == Elem::F32 {
            // `contract` lets the backends fuse the pair into one FMA instruction
            let (m, n) = (self.fresh("v"), self.fresh("fma"));
            self.line(format!(
                "{m} = arith.mulf {a}, {b} fastmath<contract> : f32"
            ));
            self.line(format!(
                "{n} = arith.addf {m}, {c} fastmath<contract> : f32"
            ));
            return n;
        }
        let n = self.fresh("fma");
        self.line(format!("{n} = math.fma {a}, {b}, {c} : {}", e.mlir()));
        n
    }

    /// `x^y` (portable: `exp(y·log|x|)`, negated for a negative base with an odd integer exponent).
    pub fn powf(&mut self, x: &str, y: &str, e: Elem) -> String {
        if self.portable_math && self.is_half(e) {
            let (x, y) = (self.widen(x, e), self.widen(y, e));
            let r = self.powf(&x, &y, Elem::F32);
            return self.narrow(&r, e);
        }
        if !self.portable_math || e != Elem::F32 {
            return self.op2("math.powf", x, y, e.mlir());
        }
        let ax = self.math("absf", x, e);
        let l = self.log_f32(&ax);
        let t = self.fmul(y, &l, e);
        let r = self.exp_f32(&t);
        // y is odd when y/2 is not a whole number (no `remf`: it is a device-library call too)
        let zero = self.cst(0.0, e);
        let one_half = self.cst(0.5, e);
        let half = self.fmul(y, &one_half, e);
        let whole = self.round_f32(&half);
        let odd = self.op2("arith.cmpf one,", &half, &whole, e.mlir());
        let neg = self.op2("arith.cmpf olt,", x, &zero, e.mlir());
        let flip = self.op2("arith.andi", &odd, &neg, "i1");
        let nr = self.op1("arith.negf", &r, e.mlir());
        self.select(&flip, &nr, &r, e.mlir())
    }

    fn is_half(&self, e: Elem) -> bool {
        matches!(e, Elem::BF16 | Elem::F16)
    }

    /// A 16-bit float extended to f32.
    fn widen(&mut self, x: &str, e: Elem) -> String {
        self.op1("arith.extf", x, &format!("{} to f32", e.mlir()))
    }

    /// An f32 rounded to a 16-bit float.
    fn narrow(&mut self, x: &str, e: Elem) -> String {
        self.op1("arith.truncf", x, &format!("f32 to {}", e.mlir()))
    }

    fn i32c(&mut self, v: i64) -> String {
        self.cst(v as f64, Elem::I32)
    }

    /// Horner evaluation of `cs[0] + z·(cs[1] + z·(...))`.
    fn horner(&mut self, z: &str, cs: &[f64]) -> String {
        let e = Elem::F32;
        let mut acc = self.cst(cs[cs.len() - 1], e);
        for c in cs[..cs.len() - 1].iter().rev() {
            let m = self.fmul(&acc, z, e);
            let k = self.cst(*c, e);
            acc = self.fadd(&m, &k, e);
        }
        acc
    }

    /// Round to nearest even for |t| < 2^22 (adding and removing 1.5·2^23).
    fn round_f32(&mut self, t: &str) -> String {
        let e = Elem::F32;
        let magic = self.cst(12582912.0, e);
        let a = self.fadd(t, &magic, e);
        self.fsub(&a, &magic, e)
    }

    /// f32 `e^x`: `x = n·ln2 + r`, `e^r` by Cephes' expf polynomial, `2^n` from exponent bits.
    fn exp_f32(&mut self, x: &str) -> String {
        let e = Elem::F32;
        let (lo, hi) = (self.cst(-87.33654, e), self.cst(88.72283, e));
        let xc = self.fmax(x, &lo, e);
        let xc = self.op2("arith.minimumf", &xc, &hi, e.mlir());
        let l2e = self.cst(std::f64::consts::LOG2_E, e);
        let t = self.fmul(&xc, &l2e, e);
        let n = self.round_f32(&t);
        let mut r = xc;
        for part in [0.693359375, -2.12194440e-4] {
            let c = self.cst(part, e);
            let p = self.fmul(&n, &c, e);
            r = self.fsub(&r, &p, e);
        }
        let z = self.fmul(&r, &r, e);
        let p = self.horner(
            &r,
            &[
                5.0000001201e-1,
                1.6666665459e-1,
                4.1665795894e-2,
                8.3334519073e-3,
                1.3981999507e-3,
                1.9875691500e-4,
            ],
        );
        let zp = self.fmul(&z, &p, e);
        let one = self.cst(1.0, e);
        let r1 = self.fadd(&r, &one, e);
        let er = self.fadd(&r1, &zp, e);
        // 2^n as (n + 127) << 23, in two halves so n = 128 (x near 88.7) does not overflow the exponent
        let ni = self.op1("arith.fptosi", &n, "f32 to i32");
        let two = self.i32c(2);
        let n1 = self.op2("arith.divsi", &ni, &two, "i32");
        let n2 = self.op2("arith.subi", &ni, &n1, "i32");
        let mut out = er;
        for k in [n1, n2] {
            let b = self.i32c(127);
            let kb = self.op2("arith.addi", &k, &b, "i32");
            let s23 = self.i32c(23);
            let bits = self.op2("arith.shli", &kb, &s23, "i32");
            let scale = self.op1("arith.bitcast", &bits, "i32 to f32");
            out = self.fmul(&out, &scale, e);
        }
        // below the clamp the true value is (nearly) zero
        let under = self.op2("arith.cmpf olt,", x, &lo, e.mlir());
        let zero = self.cst(0.0, e);
        let out = self.select(&under, &zero, &out, e.mlir());
        let over = self.op2("arith.cmpf ogt,", x, &hi, e.mlir());
        let inf = self.cst(f64::INFINITY, e);
        let out = self.select(&over, &inf, &out, e.mlir());
        // NaN in, NaN out
        let nan = self.op2("arith.cmpf uno,", x, x, e.mlir());
        self.select(&nan, x, &out, e.mlir())
    }

    /// f32 `ln x`: `x = m·2^k` with m in [√½, √2), `ln m` by Cephes' logf polynomial.
    fn log_f32(&mut self, x: &str) -> String {
        let e = Elem::F32;
        let bits = self.op1("arith.bitcast", x, "f32 to i32");
        let s23 = self.i32c(23);
        let ex = self.op2("arith.shrsi", &bits, &s23, "i32");
        let b127 = self.i32c(127);
        let k0 = self.op2("arith.subi", &ex, &b127, "i32");
        let mmask = self.i32c(0x007F_FFFF);
        let mb = self.op2("arith.andi", &bits, &mmask, "i32");
        let one_bits = self.i32c(0x3F80_0000);
        let mb = self.op2("arith.ori", &mb, &one_bits, "i32");
        let m = self.op1("arith.bitcast", &mb, "i32 to f32");
        let sqrt2 = self.cst(std::f64::consts::SQRT_2, e);
        let big = self.op2("arith.cmpf ogt,", &m, &sqrt2, e.mlir());
        let half = self.cst(0.5, e);
        let mh = self.fmul(&m, &half, e);
        let m = self.select(&big, &mh, &m, e.mlir());
        let one_i = self.i32c(1);
        let k1 = self.op2("arith.addi", &k0, &one_i, "i32");
        let k = self.select(&big, &k1, &k0, "i32");
        let one = self.cst(1.0, e);
        let f = self.fsub(&m, &one, e);
        let z = self.fmul(&f, &f, e);
        let p = self.horner(
            &f,
            &[
                3.3333331174e-1,
                -2.4999993993e-1,
                2.0000714765e-1,
                -1.6668057665e-1,
                1.4249322787e-1,
                -1.2420140846e-1,
                1.1676998740e-1,
                -1.1514610310e-1,
                7.0376836292e-2,
            ],
        );
        let fz = self.fmul(&f, &z, e);
        let y = self.fmul(&fz, &p, e);
        let hz = self.fmul(&z, &half, e);
        let y = self.fsub(&y, &hz, e);
        let lf = self.fadd(&f, &y, e);
        let kf = self.op1("arith.sitofp", &k, "i32 to f32");
        let ln2 = self.cst(std::f64::consts::LN_2, e);
        let kl = self.fmul(&kf, &ln2, e);
        let out = self.fadd(&lf, &kl, e);
        // log 0 = -inf, log of a negative = NaN, log inf = inf, NaN stays NaN
        let zero = self.cst(0.0, e);
        let is0 = self.op2("arith.cmpf oeq,", x, &zero, e.mlir());
        let ninf = self.cst(f64::NEG_INFINITY, e);
        let out = self.select(&is0, &ninf, &out, e.mlir());
        let isneg = self.op2("arith.cmpf ult,", x, &zero, e.mlir());
        let nan = self.cst(f64::NAN, e);
        let out = self.select(&isneg, &nan, &out, e.mlir());
        let inf = self.cst(f64::INFINITY, e);
        let isinf = self.op2("arith.cmpf oeq,", x, &inf, e.mlir());
        self.select(&isinf, &inf, &out, e.mlir())
    }

    /// f32 `1/√x`: the classic bit-level seed and three Newton steps.
    fn rsqrt_f32(&mut self, x: &str) -> String {
        let e = Elem::F32;
        let bits = self.op1("arith.bitcast", x, "f32 to i32");
        let one = self.i32c(1);
        let hb = self.op2("arith.shrsi", &bits, &one, "i32");
        let magic = self.i32c(0x5F37_59DF);
        let yb = self.op2("arith.subi", &magic, &hb, "i32");
        let mut y = self.op1("arith.bitcast", &yb, "i32 to f32");
        let half = self.cst(0.5, e);
        let hx = self.fmul(x, &half, e);
        let three_halves = self.cst(1.5, e);
        for _ in 0..3 {
            let yy = self.fmul(&y, &y, e);
            let t = self.fmul(&hx, &yy, e);
            let c = self.fsub(&three_halves, &t, e);
            y = self.fmul(&y, &c, e);
        }
        y
    }

    /// f32 sine (`shift` 0) or cosine (`shift` 1): `x = j·π/2 + r`, |r| ≤ π/4, quadrant `(j + shift) mod 4`.
    fn sincos(&mut self, x: &str, shift: i64) -> String {
        let e = Elem::F32;
        let two_over_pi = self.cst(std::f64::consts::FRAC_2_PI, e);
        let t = self.fmul(x, &two_over_pi, e);
        let j = self.round_f32(&t);
        // π/2 in three parts; j·PIO2_1 is exact for |j| < 2^16
        let mut r = x.to_string();
        for part in [1.5703125, 4.837_512_969_970_703e-4, 7.549789948768648e-8] {
            let c = self.cst(part, e);
            let p = self.fmul(&j, &c, e);
            r = self.fsub(&r, &p, e);
        }
        let z = self.fmul(&r, &r, e);
        // sin r = r + r·z·(s1 + z·(s2 + z·s3))
        let ps = self.horner(&z, &[-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4]);
        let rz = self.fmul(&r, &z, e);
        let sr = self.fmul(&rz, &ps, e);
        let s = self.fadd(&r, &sr, e);
        // cos r = 1 − z/2 + z²·(c1 + z·(c2 + z·c3))
        let pc = self.horner(
            &z,
            &[
                4.166664568298827e-2,
                -1.388731625493765e-3,
                2.443315711809948e-5,
            ],
        );
        let z2 = self.fmul(&z, &z, e);
        let hi = self.fmul(&z2, &pc, e);
        let half = self.cst(0.5, e);
        let hz = self.fmul(&z, &half, e);
        let one = self.cst(1.0, e);
        let c0 = self.fsub(&one, &hz, e);
        let c = self.fadd(&c0, &hi, e);
        // quadrant
        let ji = self.op1("arith.fptosi", &j, "f32 to i32");
        let sh = self.i32c(shift);
        let q = self.op2("arith.addi", &ji, &sh, "i32");
        let (m1, m2, zero) = (self.i32c(1), self.i32c(2), self.i32c(0));
        let b1 = self.op2("arith.andi", &q, &m1, "i32");
        let b2 = self.op2("arith.andi", &q, &m2, "i32");
        let swap = self.op2("arith.cmpi ne,", &b1, &zero, "i32");
        let neg = self.op2("arith.cmpi ne,", &b2, &zero, "i32");
        let v = self.select(&swap, &c, &s, e.mlir());
        let nv = self.op1("arith.negf", &v, e.mlir());
        self.select(&neg, &nv, &v, e.mlir())
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
        if self.gpu && shape.is_empty() {
            // a 0-d fill would be a host store: a one-thread kernel instead
            return self.generic(&[], shape, elem, None, &[], Init::Empty, &mut |fb, _| {
                fb.cst(v, elem)
            });
        }
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
        // a scalar result on a GPU (a full reduction or scalar arithmetic): computed as a [1] tensor over
        // an extra unit parallel loop `u`, so that it becomes a kernel instead of host code
        let unit = self.gpu && out_shape.is_empty() && reduction.iter().all(|r| *r);
        let init_tv = if unit {
            let n = self.fresh("u");
            self.line(format!(
                "{n} = tensor.expand_shape {} [] output_shape [1] : {} into {}",
                init_tv.name,
                tensor_ty(&[], out_elem),
                tensor_ty(&[1], out_elem)
            ));
            Tv {
                name: n,
                shape: vec![1],
                elem: out_elem,
            }
        } else {
            init_tv
        };
        let mut dims: Vec<String> = (0..n_loops).map(|i| format!("d{i}")).collect();
        let mut iters: Vec<&str> = reduction
            .iter()
            .map(|r| if *r { "\"reduction\"" } else { "\"parallel\"" })
            .collect();
        if self.gpu {
            // parallel loops outermost, so reduction loops run inside the kernel, not around launches
            let mut order: Vec<usize> = (0..n_loops).collect();
            order.sort_by_key(|i| reduction[*i]);
            dims = order.iter().map(|i| dims[*i].clone()).collect();
            iters = order.iter().map(|i| iters[*i]).collect();
        }
        if unit {
            dims.insert(0, "u".into());
            iters.insert(0, "\"parallel\"");
        }
        let dl = dims.join(", ");
        let map = |ix: &[Ix]| {
            format!(
                "affine_map<({dl}) -> ({})>",
                ix.iter().map(Ix::affine).collect::<Vec<_>>().join(", ")
            )
        };
        let out_ix = out_ix.unwrap_or_else(|| ident(out_shape.len()));
        let mut maps: Vec<String> = ins.iter().map(|(_, ix)| map(ix)).collect();
        if unit {
            maps.push(format!("affine_map<({dl}) -> (u)>"));
        } else {
            maps.push(map(&out_ix));
        }
        let n = self.fresh("g");
        let out_ty = tensor_ty(&init_tv.shape, out_elem);
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
        if unit {
            let c = self.fresh("s");
            self.line(format!(
                "{c} = tensor.collapse_shape {n} [] : {out_ty} into {}",
                tensor_ty(&[], out_elem)
            ));
            return Tv {
                name: c,
                shape: vec![],
                elem: out_elem,
            };
        }
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
