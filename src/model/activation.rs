//! Elementwise activation functions σ and their derivatives σ'.
//!
//! Used by the MLP block (1.20)–(1.21) and by the book's plain MLP. The theory engine
//! takes Gaussian expectations of the same functions, so both sides read this one enum.

use std::f64::consts::{FRAC_2_SQRT_PI, PI, SQRT_2};

use super::real::Real;

/// σ ∈ {relu, gelu (exact, erf form), tanh, linear, erf, silu} (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
    Linear,
    Erf,
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    pub const ALL: [Activation; 6] = [
        Activation::Relu,
        Activation::Gelu,
        Activation::Tanh,
        Activation::Linear,
        Activation::Erf,
        Activation::Silu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
            Activation::Linear => "linear",
            Activation::Erf => "erf",
            Activation::Silu => "silu",
        }
    }

    pub fn from_name(s: &str) -> Option<Activation> {
        match s {
            "swish" => Some(Activation::Silu),
            _ => Self::ALL.into_iter().find(|a| a.name() == s),
        }
    }

    /// σ(z).
    #[inline]
    pub fn f<F: Real>(self, z: F) -> F {
        let half = F::of(0.5);
        match self {
            Activation::Relu => z.max(F::zero()),
            // Exact GELU z·Φ(z), as torch.nn.GELU(approximate='none').
            Activation::Gelu => half * z * (F::one() + (z / F::of(SQRT_2)).erf()),
            Activation::Tanh => z.tanh(),
            Activation::Linear => z,
            Activation::Erf => z.erf(),
            Activation::Silu => z * sigmoid(z),
        }
    }

    /// (σ(z), σ'(z)) together: for GELU one erf serves both (the forward pass keeps σ' for
    /// the backward pass instead of evaluating erf a second time).
    #[inline]
    pub fn f_df<F: Real>(self, z: F) -> (F, F) {
        match self {
            Activation::Gelu => {
                let cdf = F::of(0.5) * (F::one() + (z / F::of(SQRT_2)).erf());
                let pdf = (F::of(-0.5) * z * z).exp() / F::of((2.0 * PI).sqrt());
                (z * cdf, cdf + z * pdf)
            }
            _ => (self.f(z), self.df(z)),
        }
    }

    /// σ'(z). At the ReLU kink we take σ'(0) = 0, as PyTorch does.
    #[inline]
    pub fn df<F: Real>(self, z: F) -> F {
        match self {
            Activation::Relu => {
                if z > F::zero() {
                    F::one()
                } else {
                    F::zero()
                }
            }
            Activation::Gelu => self.f_df(z).1,
            Activation::Tanh => {
                let t = z.tanh();
                F::one() - t * t
            }
            Activation::Linear => F::one(),
            Activation::Erf => F::of(FRAC_2_SQRT_PI) * (-z * z).exp(),
            Activation::Silu => {
                let s = sigmoid(z);
                s * (F::one() + z * (F::one() - s))
            }
        }
    }
}

#[inline]
fn sigmoid<F: Real>(z: F) -> F {
    if z >= F::zero() {
        F::one() / (F::one() + (-z).exp())
    } else {
        let e = z.exp();
        e / (F::one() + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_central_differences() {
        let h = 1e-6;
        for a in Activation::ALL {
            for &z in &[-2.3f64, -0.7, 0.31, 1.9] {
                let fd = (a.f(z + h) - a.f(z - h)) / (2.0 * h);
                let err = (fd - a.df(z)).abs();
                let (f, df) = a.f_df(z);
                assert!(
                    (f - a.f(z)).abs() < 1e-15 && (df - a.df(z)).abs() < 1e-15,
                    "{}",
                    a.name()
                );
                assert!(err < 1e-8, "{} at {z}: fd {fd} vs df {}", a.name(), a.df(z));
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for a in Activation::ALL {
            assert_eq!(Activation::from_name(a.name()), Some(a));
        }
        assert_eq!(Activation::from_name("swish"), Some(Activation::Silu));
        assert_eq!(Activation::from_name("sigmoid"), None);
    }
}
