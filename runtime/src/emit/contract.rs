//! Contractions (matmul, linear, attention products): one reduction dim `K` over parallel output dims.
//! CPU: a `linalg.generic`. GPU: a hand-tiled kernel (64×64 output tile per workgroup, 16-deep K slices
//! staged in workgroup/LDS memory, 16×16 threads computing 4×4 outputs each).

use super::builder::{Elem, Fb, Init, Ix, Tv, tensor_ty};

/// Workgroup tile (rows and columns of the output per workgroup).
pub const TILE_MN: i64 = 64;
/// Depth of the K slice staged in workgroup memory.
pub const TILE_K: i64 = 16;
/// Threads per workgroup side.
pub const THREADS: i64 = 16;

/// `out[d0..d(r-1)] = Σ_k a[a_ix] · b[b_ix]`, where loop dim `r` is `k`.
#[derive(Clone, Debug)]
pub struct Contraction<'a> {
    /// Left operand and its index list over loop dims (`D(r)` is `k`).
    pub a: (&'a Tv, Vec<Ix>),
    /// Right operand.
    pub b: (&'a Tv, Vec<Ix>),
    /// Output shape (rank ≥ 2 for the tiled kernel: `[batch.., M, N]`).
    pub out: Vec<i64>,
    /// Reduction extent.
    pub k: i64,
    /// Output element type.
    pub elem: Elem,
}

impl Contraction<'_> {
    /// CPU form.
    /// 16-bit floats accumulate in f32 and are rounded once at the end, as mixed-precision matmuls do.
    pub fn emit_linalg(&self, fb: &mut Fb) -> Tv {
        let r = self.out.len();
        let mut red = vec![false; r];
        red.push(true);
        let e = self.elem;
        let acc = accumulator(e);
        let sum = fb.generic(
            &[(self.a.0, self.a.1.clone()), (self.b.0, self.b.1.clone())],
            &self.out,
            acc,
            None,
            &red,
            Init::Fill(0.0),
            &mut |fb, a| {
                let (x, y) = (widen(fb, &a[0], e), widen(fb, &a[1], e));
                let p = fb.fmul(&x, &y, acc);
                fb.fadd(&a[2], &p, acc)
            },
        );
        if acc == e {
            return sum;
        }
        let ident: Vec<Ix> = (0..r).map(Ix::D).collect();
        fb.generic(
            &[(&sum, ident)],
            &self.out,
            e,
            None,
            &vec![false; r],
            Init::Empty,
            &mut |fb, a| fb.op1("arith.truncf", &a[0], &format!("f32 to {}", e.mlir())),
        )
    }

    /// Whether the tiled GPU kernel applies: rank ≥ 2 output, `a` independent of N, `b` of M, float.
    pub fn tileable(&self) -> bool {
        let r = self.out.len();
        if r < 2
            || !self.elem.is_float()
            || self.a.0.elem != self.elem
            || self.b.0.elem != self.elem
        {
            return false;
        }
        let uses = |ix: &[Ix], d: usize| {
            ix.iter().any(|x| match x {
                Ix::D(i) | Ix::Div(i, _) => *i == d,
                Ix::Lin(t, _) => t.iter().any(|(i, _)| *i == d),
                Ix::C(_) => false,
            })
        };
        !uses(&self.a.1, r - 1) && !uses(&self.b.1, r - 2)
    }

    /// GPU form: a private helper function holding the tiled `gpu.launch`, and a call to it in `fb`.
    /// The helper's text is pushed onto `helpers`.
    pub fn emit_tiled(&self, fb: &mut Fb, helpers: &mut Vec<String>, id: usize) -> Tv {
        let r = self.out.len();
        let (m, n) = (self.out[r - 2], self.out[r - 1]);
        let batch: Vec<i64> = self.out[..r - 2].to_vec();
        let nb: i64 = batch.iter().product();
        let e = self.elem;
        let et = e.mlir();
        let out_ty = tensor_ty(&self.out, e);
        let out_mr = super::builder::memref_ty(&self.out, e);
        let (a, b) = (self.a.0, self.b.0);
        let name = format!("moai_mm{id}");
        let mut h = Fb::new(1);
        h.portable_math = true; // a GPU kernel: no device-library calls
        h.line(format!(
            "func.func private @{name}(%A: {}, %B: {}) -> {out_ty} {{",
            a.ty(),
            b.ty()
        ));
        h.push();
        h.line(format!(
            "%Am = bufferization.to_buffer %A read_only : {} to {}",
            a.ty(),
            a.memref_ty()
        ));
        h.line(format!(
            "%Bm = bufferization.to_buffer %B read_only : {} to {}",
            b.ty(),
            b.memref_ty()
        ));
        h.line(format!("%Cm = memref.alloc() : {out_mr}"));
        let gx = h.idx((n + TILE_MN - 1) / TILE_MN);
        let gy = h.idx((m + TILE_MN - 1) / TILE_MN);
        let gz = h.idx(nb);
        let t = h.idx(THREADS);
        let one = h.idx(1);
        let wg = format!("memref<{TILE_K}x{TILE_MN}x{et}, #gpu.address_space<workgroup>>");
        h.line(format!(
            "gpu.launch blocks(%bx, %by, %bz) in (%gsx = {gx}, %gsy = {gy}, %gsz = {gz}) \
             threads(%tx, %ty, %tz) in (%bsx = {t}, %bsy = {t}, %bsz = {one}) \
             workgroup(%As : {wg}, %Bs : {wg}) {{"
        ));
        h.push();
        let zero = h.cst(0.0, e);
        let acc_e = accumulator(e);
        let acc_t = acc_e.mlir();
        let acc_zero = h.cst(0.0, acc_e);
        let c0 = h.idx(0);
        let c1 = h.idx(1);
        let c4 = h.idx(4);
        let ct = h.idx(THREADS);
        let ctk = h.idx(TILE_K);
        let ctile = h.idx(TILE_MN);
        let cm = h.idx(m);
        let cn = h.idx(n);
        let ck = h.idx(self.k);
        // batch indices from blockIdx.z
        let mut bvars = vec![String::new(); batch.len()];
        let mut rest = "%bz".to_string();
        for i in (0..batch.len()).rev() {
            let d = h.idx(batch[i]);
            bvars[i] = h.op2("arith.remui", &rest, &d, "index");
            rest = h.op2("arith.divui", &rest, &d, "index");
        }
        let row0 = h.op2("arith.muli", "%by", &ctile, "index");
        let col0 = h.op2("arith.muli", "%bx", &ctile, "index");
        let tyt = h.op2("arith.muli", "%ty", &ct, "index");
        let tid = h.op2("arith.addi", &tyt, "%tx", "index");
        let ty4 = h.op2("arith.muli", "%ty", &c4, "index");
        let tx4 = h.op2("arith.muli", "%tx", &c4, "index");
        let accs: Vec<String> = (0..16).map(|i| format!("%acc{id}_{i}")).collect();
        let res = h.fresh("r");
        let k0 = h.fresh("k");
        h.line(format!(
            "{res}:16 = scf.for {k0} = {c0} to {ck} step {ctk} iter_args({}) -> ({}) {{",
            accs.iter()
                .map(|a| format!("{a} = {acc_zero}"))
                .collect::<Vec<_>>()
                .join(", "),
            vec![acc_t; 16].join(", ")
        ));
        h.push();
        let per_thread = TILE_MN * TILE_K / (THREADS * THREADS);
        // A tile: 64 (m) x 16 (k), k fastest; stored As[k][m]
        for i in 0..per_thread {
            let off = h.idx(THREADS * THREADS * i);
            let el = h.op2("arith.addi", &tid, &off, "index");
            let mm = h.op2("arith.divui", &el, &ctk, "index");
            let kk = h.op2("arith.remui", &el, &ctk, "index");
            let gm = h.op2("arith.addi", &row0, &mm, "index");
            let gk = h.op2("arith.addi", &k0, &kk, "index");
            let v = guarded_load(
                &mut h, "%Am", a, &self.a.1, &bvars, &gm, &gk, r, &cm, &ck, &zero, e, true,
            );
            h.line(format!("memref.store {v}, %As[{kk}, {mm}] : {wg}"));
        }
        // B tile: 16 (k) x 64 (n), n fastest; stored Bs[k][n]
        for i in 0..per_thread {
            let off = h.idx(THREADS * THREADS * i);
            let el = h.op2("arith.addi", &tid, &off, "index");
            let kk = h.op2("arith.divui", &el, &ctile, "index");
            let nn = h.op2("arith.remui", &el, &ctile, "index");
            let gn = h.op2("arith.addi", &col0, &nn, "index");
            let gk = h.op2("arith.addi", &k0, &kk, "index");
            let v = guarded_load(
                &mut h, "%Bm", b, &self.b.1, &bvars, &gn, &gk, r, &cn, &ck, &zero, e, false,
            );
            h.line(format!("memref.store {v}, %Bs[{kk}, {nn}] : {wg}"));
        }
        h.line("gpu.barrier");
        let inner = h.fresh("r");
        let kk = h.fresh("kk");
        let iaccs: Vec<String> = (0..16).map(|i| format!("%iacc{id}_{i}")).collect();
        h.line(format!(
            "{inner}:16 = scf.for {kk} = {c0} to {ctk} step {c1} iter_args({}) -> ({}) {{",
            iaccs
                .iter()
                .zip(&accs)
                .map(|(x, a)| format!("{x} = {a}"))
                .collect::<Vec<_>>()
                .join(", "),
            vec![acc_t; 16].join(", ")
        ));
        h.push();
        let mut av = Vec::new();
        let mut bv = Vec::new();
        for i in 0..4 {
            let ci = h.idx(i);
            let row = h.op2("arith.addi", &ty4, &ci, "index");
            let x = h.fresh("x");
            h.line(format!("{x} = memref.load %As[{kk}, {row}] : {wg}"));
            av.push(widen(&mut h, &x, e));
            let col = h.op2("arith.addi", &tx4, &ci, "index");
            let y = h.fresh("y");
            h.line(format!("{y} = memref.load %Bs[{kk}, {col}] : {wg}"));
            bv.push(widen(&mut h, &y, e));
        }
        let mut outs = Vec::new();
        for i in 0..4 {
            for j in 0..4 {
                let f = h.fma(&av[i], &bv[j], &iaccs[i * 4 + j], acc_e);
                outs.push(f);
            }
        }
        h.line(format!(
            "scf.yield {} : {}",
            outs.join(", "),
            vec![acc_t; 16].join(", ")
        ));
        h.pop();
        h.line("}");
        h.line("gpu.barrier");
        h.line(format!(
            "scf.yield {} : {}",
            (0..16)
                .map(|i| format!("{inner}#{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            vec![acc_t; 16].join(", ")
        ));
        h.pop();
        h.line("}");
        for i in 0..4 {
            for j in 0..4 {
                let ci = h.idx(i);
                let cj = h.idx(j);
                let rr = h.op2("arith.addi", &ty4, &ci, "index");
                let gm = h.op2("arith.addi", &row0, &rr, "index");
                let cc = h.op2("arith.addi", &tx4, &cj, "index");
                let gn = h.op2("arith.addi", &col0, &cc, "index");
                let pm = h.cmp(false, "ult", &gm, &cm, "index");
                let pn = h.cmp(false, "ult", &gn, &cn, "index");
                let p = h.op2("arith.andi", &pm, &pn, "i1");
                h.line(format!("scf.if {p} {{"));
                h.push();
                let mut idx = bvars.clone();
                idx.push(gm);
                idx.push(gn);
                let v = narrow(&mut h, &format!("{res}#{}", i * 4 + j), e);
                h.line(format!(
                    "memref.store {v}, %Cm[{}] : {out_mr}",
                    idx.join(", ")
                ));
                h.pop();
                h.line("}");
            }
        }
        h.line("gpu.terminator");
        h.pop();
        h.line("}");
        h.line(format!(
            "%Ct = bufferization.to_tensor %Cm restrict writable : {out_mr} to {out_ty}"
        ));
        h.line(format!("return %Ct : {out_ty}"));
        h.pop();
        h.line("}");
        helpers.push(h.lines.join("\n"));
        let res = fb.fresh("mm");
        fb.line(format!(
            "{res} = func.call @{name}({}, {}) : ({}, {}) -> {out_ty}",
            a.name,
            b.name,
            a.ty(),
            b.ty()
        ));
        Tv {
            name: res,
            shape: self.out.clone(),
            elem: e,
        }
    }
}

/// The type a contraction accumulates in: f32 for 16-bit floats, the element type otherwise.
fn accumulator(e: Elem) -> Elem {
    match e {
        Elem::BF16 | Elem::F16 => Elem::F32,
        other => other,
    }
}

/// `x` extended to the accumulator type (unchanged when they are the same).
fn widen(fb: &mut Fb, x: &str, e: Elem) -> String {
    if accumulator(e) == e {
        return x.to_string();
    }
    fb.op1("arith.extf", x, &format!("{} to f32", e.mlir()))
}

/// An accumulator value rounded back to `e` (unchanged when they are the same).
fn narrow(fb: &mut Fb, x: &str, e: Elem) -> String {
    if accumulator(e) == e {
        return x.to_string();
    }
    fb.op1("arith.truncf", x, &format!("f32 to {}", e.mlir()))
}

/// Loads `t[ix]` where loop dims are (batch vars, M-or-N var, K var), zero outside `[0, lim) × [0, K)`.
#[allow(clippy::too_many_arguments)]
fn guarded_load(
    h: &mut Fb,
    mem: &str,
    t: &Tv,
    ix: &[Ix],
    bvars: &[String],
    mn: &str,
    k: &str,
    r: usize,
    lim: &str,
    klim: &str,
    zero: &str,
    e: Elem,
    is_a: bool,
) -> String {
    let p1 = h.cmp(false, "ult", mn, lim, "index");
    let p2 = h.cmp(false, "ult", k, klim, "index");
    let p = h.op2("arith.andi", &p1, &p2, "i1");
    let v = h.fresh("ld");
    h.line(format!("{v} = scf.if {p} -> ({}) {{", e.mlir()));
    h.push();
    let var = |h: &mut Fb, d: usize| -> String {
        if d < r - 2 {
            bvars[d].clone()
        } else if d == r {
            k.to_string()
        } else if (d == r - 2 && is_a) || (d == r - 1 && !is_a) {
            mn.to_string()
        } else {
            h.idx(0)
        }
    };
    let mut idx = Vec::new();
    for x in ix {
        let s = match x {
            Ix::D(d) => var(h, *d),
            Ix::Div(d, c) => {
                let v = var(h, *d);
                let cc = h.idx(*c);
                h.op2("arith.divui", &v, &cc, "index")
            }
            Ix::C(c) => h.idx(*c),
            Ix::Lin(terms, c) => {
                let mut acc = h.idx(*c);
                for (d, coef) in terms {
                    let v = var(h, *d);
                    let cc = h.idx(*coef);
                    let p = h.op2("arith.muli", &v, &cc, "index");
                    acc = h.op2("arith.addi", &acc, &p, "index");
                }
                acc
            }
        };
        idx.push(s);
    }
    let l = h.fresh("l");
    h.line(format!(
        "{l} = memref.load {mem}[{}] : {}",
        idx.join(", "),
        t.memref_ty()
    ));
    h.line(format!("scf.yield {l} : {}", e.mlir()));
    h.pop();
    h.line("} else {");
    h.push();
    h.line(format!("scf.yield {zero} : {}", e.mlir()));
    h.pop();
    h.line("}");
    v
}
