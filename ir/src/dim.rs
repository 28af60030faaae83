//! Symbolic dimensions: integer polynomials over named symbols (`batch`, `seq`) and the opaque terms
//! (floor division, modulo, max, min) that PyTorch's shape subgraphs produce.
//!
//! A [`Dim`] is kept in a canonical form (a sorted sum of monomials with non-zero coefficients), so two
//! dims are equal exactly when their canonical forms are equal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// An indivisible factor of a monomial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    /// A named symbol such as `batch` or `seq`; every symbol is a positive integer.
    Sym(Arc<str>),
    /// `floor(a / b)` that could not be simplified.
    FloorDiv(Box<Dim>, Box<Dim>),
    /// `a mod b` that could not be simplified.
    Mod(Box<Dim>, Box<Dim>),
    /// `max(a, b)` that could not be decided.
    Max(Box<Dim>, Box<Dim>),
    /// `min(a, b)` that could not be decided.
    Min(Box<Dim>, Box<Dim>),
}

/// A product of atoms with exponents, sorted by atom.
type Monomial = Vec<(Atom, u32)>;

/// A symbolic, non-negative integer dimension.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    /// Monomial → coefficient; the empty monomial is the constant term. No zero coefficients.
    terms: BTreeMap<Monomial, i64>,
}

impl Dim {
    /// A constant dimension.
    pub fn constant(v: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if v != 0 {
            terms.insert(Vec::new(), v);
        }
        Dim { terms }
    }

    /// A named symbol.
    pub fn sym(name: &str) -> Dim {
        Dim::atom(Atom::Sym(Arc::from(name)))
    }

    fn atom(a: Atom) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![(a, 1)], 1);
        Dim { terms }
    }

    /// The value if the dim is a constant.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// True when the dim contains no symbols.
    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// The names of all symbols this dim mentions.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for mono in self.terms.keys() {
            for (a, _) in mono {
                a.collect_symbols(&mut out);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Evaluates with the given symbol values; `None` if a symbol is unbound or a division is by zero.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut total: i64 = 0;
        for (mono, c) in &self.terms {
            let mut p = *c;
            for (a, e) in mono {
                let v = a.eval(env)?;
                for _ in 0..*e {
                    p = p.checked_mul(v)?;
                }
            }
            total = total.checked_add(p)?;
        }
        Some(total)
    }

    /// Substitutes symbols by dims and re-canonicalizes.
    pub fn substitute(&self, map: &dyn Fn(&str) -> Option<Dim>) -> Dim {
        let mut acc = Dim::constant(0);
        for (mono, c) in &self.terms {
            let mut p = Dim::constant(*c);
            for (a, e) in mono {
                let v = a.substitute(map);
                for _ in 0..*e {
                    p = p.mul(&v);
                }
            }
            acc = acc.add(&p);
        }
        acc
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            // Coefficients saturate: absurd sizes from a corrupt model stay absurd instead of panicking
            // (the importer's own checks then reject them).
            *e = e.saturating_add(*c);
            if *e == 0 {
                terms.remove(m);
            }
        }
        Dim { terms }
    }

    /// `self - other`.
    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.scale(-1))
    }

    /// `self * k` for a constant `k`.
    pub fn scale(&self, k: i64) -> Dim {
        if k == 0 {
            return Dim::constant(0);
        }
        Dim {
            terms: self
                .terms
                .iter()
                .map(|(m, c)| (m.clone(), c.saturating_mul(k)))
                .collect(),
        }
    }

    /// `self * other`.
    pub fn mul(&self, other: &Dim) -> Dim {
        let mut acc = Dim::constant(0);
        for (m1, c1) in &self.terms {
            for (m2, c2) in &other.terms {
                let mono = mul_monomials(m1, m2);
                let mut terms = BTreeMap::new();
                terms.insert(mono, c1.saturating_mul(*c2));
                acc = acc.add(&Dim { terms });
            }
        }
        acc
    }

    /// `floor(self / other)`, simplified when the division is exact term by term.
    pub fn floor_div(&self, other: &Dim) -> Dim {
        if let (Some(a), Some(b)) = (self.as_const(), other.as_const())
            && let Some(q) = a.checked_div_euclid(b)
        {
            return Dim::constant(q);
        }
        if other.as_const() == Some(1) {
            return self.clone();
        }
        if let Some(q) = self.exact_div(other) {
            return q;
        }
        Dim::atom(Atom::FloorDiv(
            Box::new(self.clone()),
            Box::new(other.clone()),
        ))
    }

    /// `self mod other`, simplified when the division is exact.
    pub fn rem(&self, other: &Dim) -> Dim {
        if let (Some(a), Some(b)) = (self.as_const(), other.as_const())
            && let Some(r) = a.checked_rem_euclid(b)
        {
            return Dim::constant(r);
        }
        if self.exact_div(other).is_some() {
            return Dim::constant(0);
        }
        Dim::atom(Atom::Mod(Box::new(self.clone()), Box::new(other.clone())))
    }

    /// `max(self, other)`; decided when one side is provably at least the other (every symbol ≥ 1).
    pub fn maximum(&self, other: &Dim) -> Dim {
        if self.provably_ge(other) {
            self.clone()
        } else if other.provably_ge(self) {
            other.clone()
        } else {
            Dim::atom(Atom::Max(Box::new(self.clone()), Box::new(other.clone())))
        }
    }

    /// `min(self, other)`, decided as [`Dim::maximum`] is.
    pub fn minimum(&self, other: &Dim) -> Dim {
        if self.provably_ge(other) {
            other.clone()
        } else if other.provably_ge(self) {
            self.clone()
        } else {
            Dim::atom(Atom::Min(Box::new(self.clone()), Box::new(other.clone())))
        }
    }

    /// True when `self >= other` for every assignment of symbols ≥ 1 (a sufficient test, not complete).
    pub fn provably_ge(&self, other: &Dim) -> bool {
        let d = self.sub(other);
        if let Some(c) = d.as_const() {
            return c >= 0;
        }
        // With only symbol atoms and non-negative coefficients on non-constant terms, the difference is
        // smallest when every symbol is 1.
        let polynomial = d
            .terms
            .keys()
            .all(|m| m.iter().all(|(a, _)| matches!(a, Atom::Sym(_))));
        let increasing = d.terms.iter().all(|(m, c)| m.is_empty() || *c > 0);
        polynomial && increasing && d.eval(&|_| Some(1)).is_some_and(|v| v >= 0)
    }

    /// `self / other` if every term divides exactly (constant or monomial divisor).
    fn exact_div(&self, other: &Dim) -> Option<Dim> {
        if other.terms.len() != 1 {
            if self == other && !self.terms.is_empty() {
                return Some(Dim::constant(1));
            }
            return None;
        }
        let (dm, dc) = other.terms.iter().next()?;
        if *dc == 0 {
            return None;
        }
        let mut terms = BTreeMap::new();
        for (m, c) in &self.terms {
            if c.checked_rem(*dc)? != 0 {
                return None;
            }
            let q = div_monomial(m, dm)?;
            terms.insert(q, c.checked_div(*dc)?);
        }
        Some(Dim { terms })
    }
}

fn mul_monomials(a: &Monomial, b: &Monomial) -> Monomial {
    let mut map: BTreeMap<Atom, u32> = a.iter().cloned().collect();
    for (atom, e) in b {
        let x = map.entry(atom.clone()).or_insert(0);
        *x = x.saturating_add(*e);
    }
    map.into_iter().collect()
}

fn div_monomial(a: &Monomial, b: &Monomial) -> Option<Monomial> {
    let mut map: BTreeMap<Atom, u32> = a.iter().cloned().collect();
    for (atom, e) in b {
        let have = map.get_mut(atom)?;
        if *have < *e {
            return None;
        }
        *have -= e;
        if *have == 0 {
            map.remove(atom);
        }
    }
    Some(map.into_iter().collect())
}

impl Atom {
    fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        match self {
            Atom::Sym(s) => env(s),
            Atom::FloorDiv(a, b) => {
                let d = b.eval(env)?;
                a.eval(env)?.checked_div_euclid(d)
            }
            Atom::Mod(a, b) => {
                let d = b.eval(env)?;
                a.eval(env)?.checked_rem_euclid(d)
            }
            Atom::Max(a, b) => Some(a.eval(env)?.max(b.eval(env)?)),
            Atom::Min(a, b) => Some(a.eval(env)?.min(b.eval(env)?)),
        }
    }

    fn substitute(&self, map: &dyn Fn(&str) -> Option<Dim>) -> Dim {
        match self {
            Atom::Sym(s) => map(s).unwrap_or_else(|| Dim::sym(s)),
            Atom::FloorDiv(a, b) => a.substitute(map).floor_div(&b.substitute(map)),
            Atom::Mod(a, b) => a.substitute(map).rem(&b.substitute(map)),
            Atom::Max(a, b) => a.substitute(map).maximum(&b.substitute(map)),
            Atom::Min(a, b) => a.substitute(map).minimum(&b.substitute(map)),
        }
    }

    fn collect_symbols(&self, out: &mut Vec<Arc<str>>) {
        match self {
            Atom::Sym(s) => out.push(s.clone()),
            Atom::FloorDiv(a, b) | Atom::Mod(a, b) | Atom::Max(a, b) | Atom::Min(a, b) => {
                out.extend(a.symbols());
                out.extend(b.symbols());
            }
        }
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::constant(v)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Sym(s) => write!(f, "{s}"),
            Atom::FloorDiv(a, b) => write!(f, "floor(({a})/({b}))"),
            Atom::Mod(a, b) => write!(f, "(({a}) mod ({b}))"),
            Atom::Max(a, b) => write!(f, "max({a}, {b})"),
            Atom::Min(a, b) => write!(f, "min({a}, {b})"),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return write!(f, "0");
        }
        // Highest-degree terms first, constant last.
        let mut first = true;
        for (mono, c) in self.terms.iter().rev() {
            let (sign, mag) = if *c < 0 { ("-", -c) } else { ("+", *c) };
            if first {
                if sign == "-" {
                    write!(f, "-")?;
                }
            } else {
                write!(f, " {sign} ")?;
            }
            first = false;
            let mut parts: Vec<String> = Vec::new();
            if mag != 1 || mono.is_empty() {
                parts.push(mag.to_string());
            }
            for (a, e) in mono {
                parts.push(if *e == 1 {
                    a.to_string()
                } else {
                    format!("{a}^{e}")
                });
            }
            write!(f, "{}", parts.join("*"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_const() {
            Some(c) => s.serialize_i64(c),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dim, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(i64),
            Sym(String),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Int(v) => Dim::constant(v),
            Repr::Sym(s) if s.chars().all(|c| c.is_alphanumeric() || c == '_') => Dim::sym(&s),
            Repr::Sym(s) => {
                return Err(serde::de::Error::custom(format!(
                    "cannot parse dim expression `{s}`"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(b: i64, s: i64) -> impl Fn(&str) -> Option<i64> {
        move |n| match n {
            "batch" => Some(b),
            "seq" => Some(s),
            _ => None,
        }
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_panicking() {
        let big = Dim::constant(i64::MAX / 2);
        assert_eq!(big.mul(&big).as_const(), Some(i64::MAX));
        assert_eq!(big.add(&big).add(&big).as_const(), Some(i64::MAX));
        assert_eq!(Dim::constant(i64::MIN).scale(-1).as_const(), Some(i64::MAX));
        // i64::MIN / -1 overflows: the division stays symbolic instead of panicking.
        let q = Dim::constant(i64::MIN).floor_div(&Dim::constant(-1));
        assert_eq!(q.as_const(), None);
        let r = Dim::constant(i64::MIN).rem(&Dim::constant(-1));
        assert_eq!(r.as_const(), None);
        assert_eq!(q.eval(&|_| None), None);
    }

    #[test]
    fn canonical_forms_are_equal() {
        let b = Dim::sym("batch");
        let s = Dim::sym("seq");
        let x = b.mul(&s).scale(64);
        let y = s.scale(16).mul(&b).scale(4);
        assert_eq!(x, y);
        assert_eq!(x.floor_div(&Dim::constant(64)), b.mul(&s));
        assert_eq!(x.floor_div(&s), b.scale(64));
        assert_eq!(s.add(&Dim::constant(1)).sub(&Dim::constant(1)), s);
        assert_eq!(x.to_string(), "64*batch*seq");
    }

    #[test]
    fn max_min_decide_with_positive_symbols() {
        let s = Dim::sym("seq");
        assert_eq!(s.maximum(&Dim::constant(0)), s);
        assert_eq!(s.minimum(&Dim::constant(0)), Dim::constant(0));
        assert_eq!(
            s.add(&Dim::constant(1)).maximum(&s),
            s.add(&Dim::constant(1))
        );
        assert!(s.maximum(&Dim::constant(7)).as_const().is_none());
    }

    proptest! {
        #[test]
        fn arithmetic_agrees_with_evaluation(a in 1i64..50, b in 1i64..50, k in -5i64..5, bb in 1i64..9, ss in 1i64..40) {
            let bs = Dim::sym("batch");
            let sq = Dim::sym("seq");
            let x = bs.scale(a).add(&sq.scale(k));
            let y = sq.scale(b).add(&Dim::constant(k));
            let e = env(bb, ss);
            prop_assert_eq!(x.add(&y).eval(&e), Some(x.eval(&e).unwrap() + y.eval(&e).unwrap()));
            prop_assert_eq!(x.mul(&y).eval(&e), Some(x.eval(&e).unwrap() * y.eval(&e).unwrap()));
            let yv = y.eval(&e).unwrap();
            if yv != 0 {
                prop_assert_eq!(x.floor_div(&y).eval(&e), Some(x.eval(&e).unwrap().div_euclid(yv)));
                prop_assert_eq!(x.rem(&y).eval(&e), Some(x.eval(&e).unwrap().rem_euclid(yv)));
            }
            prop_assert_eq!(x.maximum(&y).eval(&e), Some(x.eval(&e).unwrap().max(yv)));
        }
    }
}
