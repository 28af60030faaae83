//! The rewrites: each left-hand side is a PyTorch decomposition, each right-hand side a fused op.
//! Conditions check constants (within bf16 rounding) and shapes before a rewrite may fire (tensat's
//! "validate the right-hand side first").

use super::lang::{Konst, Rec, Shapes};
use crate::dim::Dim;
use crate::dtype::DType;
use egg::{
    Applier, ConditionalApplier, EGraph, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var,
};

type EG = EGraph<Rec, Shapes>;

fn var(s: &str) -> Var {
    s.parse().unwrap_or_else(|_| unreachable_var(s))
}

/// Variable names are literals of this file; a malformed one is a programming error caught by the unit
/// test `rules_build`.
fn unreachable_var(s: &str) -> Var {
    panic!("bad pattern variable {s}")
}

fn konst(eg: &EG, id: Id) -> Option<f64> {
    eg[id].data.konst
}

fn approx(eg: &EG, id: Id, want: f64, rel: f64) -> bool {
    konst(eg, id).is_some_and(|c| (c - want).abs() <= rel * want.abs().max(1e-12))
}

fn rank(eg: &EG, id: Id) -> Option<usize> {
    eg[id].data.ty.as_ref().map(|t| t.shape.rank())
}

fn last_dim(eg: &EG, id: Id) -> Option<Dim> {
    eg[id]
        .data
        .ty
        .as_ref()
        .and_then(|t| t.shape.0.last().cloned())
}

fn is_param(eg: &EG, id: Id, want_rank: usize) -> bool {
    eg[id].data.param && rank(eg, id) == Some(want_rank)
}

/// A linear weight: a rank-2 parameter, or the `[1,0]` transpose of one.
fn is_weight(eg: &EG, id: Id) -> bool {
    is_param(eg, id, 2)
        || eg[id]
            .nodes
            .iter()
            .any(|n| matches!(n, Rec::T(p) if is_param(eg, *p, 2)))
}

fn rw(
    name: &str,
    lhs: &str,
    rhs: &str,
    cond: impl Fn(&mut EG, Id, &Subst) -> bool + Send + Sync + 'static,
) -> Result<Rewrite<Rec, Shapes>, String> {
    let l: Pattern<Rec> = lhs.parse().map_err(|e| format!("{name}: {e}"))?;
    let r: Pattern<Rec> = rhs.parse().map_err(|e| format!("{name}: {e}"))?;
    Rewrite::new(
        name,
        l,
        ConditionalApplier {
            condition: cond,
            applier: r,
        },
    )
}

const RMS_CORE: &str = "(recip (sqrt (+ (mean (pow ?x ?p)) ?eps)))";

fn rms_ok(eg: &mut EG, _root: Id, s: &Subst) -> bool {
    let (x, w, p, eps) = (s[var("?x")], s[var("?w")], s[var("?p")], s[var("?eps")]);
    approx(eg, p, 2.0, 0.0)
        && konst(eg, eps).is_some_and(|e| e >= 0.0)
        && is_param(eg, w, 1)
        && last_dim(eg, w) == last_dim(eg, x)
}

/// All rewrites.
pub fn rules() -> Result<Vec<Rewrite<Rec, Shapes>>, String> {
    let mut v = vec![
        rw("comm-mul", "(* ?a ?b)", "(* ?b ?a)", |_, _, _| true)?,
        rw("comm-add", "(+ ?a ?b)", "(+ ?b ?a)", |_, _, _| true)?,
        rw(
            "rmsnorm",
            &format!("(* ?w (* ?x {RMS_CORE}))"),
            "(rmsnorm ?x ?w ?eps)",
            rms_ok,
        )?,
        rw(
            "rmsnorm-div",
            "(* ?w (/ ?x (sqrt (+ (mean (pow ?x ?p)) ?eps))))",
            "(rmsnorm ?x ?w ?eps)",
            rms_ok,
        )?,
        rw(
            "rmsnorm-f32",
            "(* ?w (cast (* (cast ?x) (recip (sqrt (+ (mean (pow (cast ?x) ?p)) ?eps))))))",
            "(rmsnorm ?x ?w ?eps)",
            |eg, root, s| {
                let x = s[var("?x")];
                let same_dtype = eg[x].data.ty.as_ref().map(|t| t.dtype)
                    == eg[root].data.ty.as_ref().map(|t| t.dtype);
                same_dtype && {
                    let (w, p, eps) = (s[var("?w")], s[var("?p")], s[var("?eps")]);
                    approx(eg, p, 2.0, 0.0)
                        && konst(eg, eps).is_some_and(|e| e >= 0.0)
                        && is_param(eg, w, 1)
                        && last_dim(eg, w) == last_dim(eg, x)
                }
            },
        )?,
        rw("silu", "(* ?x (sigmoid ?x))", "(silu ?x)", |_, _, _| true)?,
        rw(
            "gelu-tanh",
            "(* (* ?x ?h) (+ (tanh (* (+ ?x (* (pow ?x ?p) ?c)) ?k)) ?one))",
            "(gelu_tanh ?x)",
            |eg, _, s| {
                // Constants may be rounded to bf16 (relative error ≤ 2⁻⁸).
                approx(eg, s[var("?h")], 0.5, 0.0)
                    && approx(eg, s[var("?p")], 3.0, 0.0)
                    && approx(eg, s[var("?c")], 0.044715, 0.01)
                    && approx(eg, s[var("?k")], (2.0 / std::f64::consts::PI).sqrt(), 0.01)
                    && approx(eg, s[var("?one")], 1.0, 0.0)
            },
        )?,
        rw(
            "gelu-erf-div",
            "(* (* ?x ?h) (+ (erf (/ ?x ?r)) ?one))",
            "(gelu ?x)",
            |eg, _, s| {
                approx(eg, s[var("?h")], 0.5, 0.0)
                    && approx(eg, s[var("?r")], std::f64::consts::SQRT_2, 0.01)
                    && approx(eg, s[var("?one")], 1.0, 0.0)
            },
        )?,
        rw(
            "gelu-erf-mul",
            "(* (* ?x ?h) (+ (erf (* ?x ?r)) ?one))",
            "(gelu ?x)",
            |eg, _, s| {
                approx(eg, s[var("?h")], 0.5, 0.0)
                    && approx(eg, s[var("?r")], std::f64::consts::FRAC_1_SQRT_2, 0.01)
                    && approx(eg, s[var("?one")], 1.0, 0.0)
            },
        )?,
        rw("linear", "(matmul ?x ?w)", "(linear ?x ?w)", |eg, _, s| {
            let (x, w) = (s[var("?x")], s[var("?w")]);
            is_weight(eg, w) && rank(eg, x).is_some_and(|r| r >= 2)
        })?,
        rw(
            "linear-bias",
            "(+ (linear ?x ?w) ?b)",
            "(linear_b ?x ?w ?b)",
            |eg, root, s| {
                let b = s[var("?b")];
                is_param(eg, b, 1) && last_dim(eg, b) == last_dim(eg, root)
            },
        )?,
        rw(
            "embedding",
            "(gather ?t ?ids)",
            "(embedding ?t ?ids)",
            |eg, _, s| {
                let (t, ids) = (s[var("?t")], s[var("?ids")]);
                is_param(eg, t, 2)
                    && eg[ids]
                        .data
                        .ty
                        .as_ref()
                        .is_some_and(|ty| !ty.dtype.is_float() && ty.dtype != DType::Bool)
            },
        )?,
        rw(
            "rotary",
            "(+ (* ?x ?c) (* (cat (neg (hi ?x)) (lo ?x)) ?s))",
            "(rotary ?x ?c ?s)",
            |eg, _, s| {
                let (x, c, sn) = (s[var("?x")], s[var("?c")], s[var("?s")]);
                let (Some(tx), Some(tc), Some(ts)) = (
                    eg[x].data.ty.clone(),
                    eg[c].data.ty.clone(),
                    eg[sn].data.ty.clone(),
                ) else {
                    return false;
                };
                tx.shape.rank() == 4
                    && crate::onnx::broadcast(&tx.shape, &tc.shape).ok().as_ref() == Some(&tx.shape)
                    && crate::onnx::broadcast(&tx.shape, &ts.shape).ok().as_ref() == Some(&tx.shape)
            },
        )?,
    ];
    // Scaled-dot-product attention, as PyTorch decomposes it: three ways of scaling, with or without an
    // additive mask, with or without the NaN guard after the softmax.
    let scores = [
        ("split", "(matmul (* ?q ?c1) (* ?kt ?c2))"),
        ("post", "(* (matmul ?q ?kt) ?c1)"),
        ("div", "(/ (matmul ?q ?kt) ?c1)"),
    ];
    for (sname, sc) in scores {
        for masked in [true, false] {
            let s = if masked {
                format!("(+ {sc} ?m)")
            } else {
                sc.to_string()
            };
            let p = format!("(softmax {s})");
            for guard in [true, false] {
                let root = if guard {
                    format!("(matmul (where (isnan {p}) ?z {p}) ?v)")
                } else {
                    format!("(matmul {p} ?v)")
                };
                let name = format!(
                    "attention-{sname}{}{}",
                    if masked { "-mask" } else { "" },
                    if guard { "-guard" } else { "" }
                );
                let lhs: Pattern<Rec> = root.parse().map_err(|e| format!("{name}: {e}"))?;
                let applier = AttentionApplier {
                    scale: sname,
                    masked,
                    guard,
                };
                v.push(Rewrite::new(name, lhs, applier)?);
            }
        }
    }
    Ok(v)
}

/// Builds `(attention q k v mask scale)` after checking constants and shapes; drops `rep` (GQA).
struct AttentionApplier {
    scale: &'static str,
    masked: bool,
    guard: bool,
}

fn find_child(eg: &EG, id: Id, f: impl Fn(&Rec) -> Option<Id>) -> Option<Id> {
    eg[id].nodes.iter().find_map(f)
}

impl Applier<Rec, Shapes> for AttentionApplier {
    fn apply_one(
        &self,
        eg: &mut EG,
        eclass: Id,
        s: &Subst,
        _ast: Option<&PatternAst<Rec>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        if self.guard && !approx(eg, s[var("?z")], 0.0, 0.0) {
            return vec![];
        }
        let c1 = konst(eg, s[var("?c1")]);
        let scale = match self.scale {
            "split" => c1.zip(konst(eg, s[var("?c2")])).map(|(a, b)| a * b),
            "post" => c1,
            _ => c1.filter(|c| *c != 0.0).map(|c| 1.0 / c),
        };
        let Some(mut scale) = scale else {
            return vec![];
        };
        let Some(k) = find_child(eg, s[var("?kt")], |n| {
            if let Rec::Kt(k) = n { Some(*k) } else { None }
        }) else {
            return vec![];
        };
        let k =
            find_child(eg, k, |n| if let Rec::Rep(x) = n { Some(*x) } else { None }).unwrap_or(k);
        let v0 = s[var("?v")];
        let v = find_child(
            eg,
            v0,
            |n| if let Rec::Rep(x) = n { Some(*x) } else { None },
        )
        .unwrap_or(v0);
        let q = s[var("?q")];
        let (Some(tq), Some(tk), Some(tv)) = (
            eg[q].data.ty.clone(),
            eg[k].data.ty.clone(),
            eg[v].data.ty.clone(),
        ) else {
            return vec![];
        };
        if tq.shape.rank() != 4
            || tk.shape != tv.shape
            || tk.shape.rank() != 4
            || tq.shape.0[3] != tk.shape.0[3]
        {
            return vec![];
        }
        let (Some(h), Some(kv), Some(d)) = (
            tq.shape.0[1].as_const(),
            tk.shape.0[1].as_const(),
            tq.shape.0[3].as_const(),
        ) else {
            return vec![];
        };
        if kv == 0
            || h % kv != 0
            || tq.shape.0[0] != tk.shape.0[0]
            || tq.shape.0[2] != tk.shape.0[2]
        {
            return vec![];
        }
        // Snap to 1/√d when the exported factor is that value rounded (bf16 rounds √scale per side).
        let exact = 1.0 / (d as f64).sqrt();
        if (scale - exact).abs() <= 0.01 * exact {
            scale = exact;
        }
        let m = if self.masked {
            s[var("?m")]
        } else {
            eg.add(Rec::Num(Konst::of(0.0)))
        };
        let sc = eg.add(Rec::Num(Konst::of(scale)));
        let att = eg.add(Rec::Attention([q, k, v, m, sc]));
        if eg.union(eclass, att) {
            vec![att]
        } else {
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_build() {
        let r = rules().expect("all patterns parse");
        assert!(r.len() > 20);
    }
}
