//! The floating-point element type the interpreter computes in (f32 reference or f64 for gradient checks).

use crate::dtype::DType;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float the interpreter can compute in.
pub trait Float:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Send
    + Sync
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Converts from f64 (rounding).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64.
    fn to_f64(self) -> f64;
    /// `e^x`.
    fn exp(self) -> Self;
    /// `ln x`.
    fn ln(self) -> Self;
    /// `√x`.
    fn sqrt(self) -> Self;
    /// `tanh x`.
    fn tanh(self) -> Self;
    /// `sin x`.
    fn sin(self) -> Self;
    /// `cos x`.
    fn cos(self) -> Self;
    /// `|x|`.
    fn abs(self) -> Self;
    /// `x^y`.
    fn powf(self, y: Self) -> Self;
    /// NaN test.
    fn is_nan(self) -> bool;
    /// Rounds to the precision of a narrower float dtype (bf16, f16, f8 are rounded through bf16/f16).
    fn round_to(self, dtype: DType) -> Self;
    /// `erf x`.
    fn erf(self) -> Self {
        Self::from_f64(erf64(self.to_f64()))
    }
    /// Larger of two (NaN-propagating).
    fn maxf(self, o: Self) -> Self {
        if self.is_nan() || self >= o { self } else { o }
    }
    /// Smaller of two (NaN-propagating).
    fn minf(self, o: Self) -> Self {
        if self.is_nan() || self <= o { self } else { o }
    }
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn tanh(self) -> f32 {
        f32::tanh(self)
    }
    fn sin(self) -> f32 {
        f32::sin(self)
    }
    fn cos(self) -> f32 {
        f32::cos(self)
    }
    fn abs(self) -> f32 {
        f32::abs(self)
    }
    fn powf(self, y: f32) -> f32 {
        f32::powf(self, y)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn round_to(self, dtype: DType) -> f32 {
        match dtype {
            DType::BF16
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ => half::bf16::from_f32(self).to_f32(),
            DType::F16 => half::f16::from_f32(self).to_f32(),
            _ => self,
        }
    }
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    fn sin(self) -> f64 {
        f64::sin(self)
    }
    fn cos(self) -> f64 {
        f64::cos(self)
    }
    fn abs(self) -> f64 {
        f64::abs(self)
    }
    fn powf(self, y: f64) -> f64 {
        f64::powf(self, y)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    /// The f64 mode exists for gradient checks: casts between float types do not round.
    fn round_to(self, _dtype: DType) -> f64 {
        self
    }
}

/// `erf x` to about 1e-14: Taylor series for |x| < 3, continued fraction of erfc beyond.
pub fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 300.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a > 27.0 {
        1.0
    } else {
        // erfc(x) = e^{-x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))), evaluated bottom-up.
        let mut f = a;
        for k in (1..80).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 { -r } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Reference values from the standard tables.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!(
                (erf64(x) - e).abs() < 1e-13,
                "erf({x}) = {} want {e}",
                erf64(x)
            );
            assert!((erf64(-x) + e).abs() < 1e-13);
        }
    }

    #[test]
    fn bf16_rounding_only_in_f32_mode() {
        let v = 1.0f32 + 1.0 / 1024.0;
        assert_eq!(v.round_to(DType::BF16), 1.0);
        assert_eq!((v as f64).round_to(DType::BF16), v as f64);
    }
}
