//! The residual add z^{ℓ+1} = ξ z^ℓ + γ_res R (1.3), (1.5) with footnote 3's skip weight ξ.
//!
//! ξ = γ_res = 1 is the paper; γ_res = 1/√B and similar depth rules are common.

use ndarray::{Array2, ArrayView2};

use super::real::Real;

/// ξ·z + γ·r, written over r (the branch's output, not needed after the add).
pub fn forward<F: Real>(xi: f64, gamma: f64, z: ArrayView2<F>, mut r: Array2<F>) -> Array2<F> {
    let (xi, gamma) = (F::of(xi), F::of(gamma));
    r.zip_mut_with(&z, |o, &zi| *o = xi * zi + gamma * *o);
    r
}

/// Splits the gradient of the sum: (∂/∂z, ∂/∂r) = (ξ g, γ g).
pub fn backward<F: Real>(xi: f64, gamma: f64, g: ArrayView2<F>) -> (Array2<F>, Array2<F>) {
    let (xi, gamma) = (F::of(xi), F::of(gamma));
    (g.mapv(|x| xi * x), g.mapv(|x| gamma * x))
}
