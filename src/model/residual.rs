//! The residual add z^{ℓ+1} = ξ z^ℓ + γ_res R (1.3), (1.5) with footnote 3's skip weight ξ.
//!
//! ξ = γ_res = 1 is the paper; γ_res = 1/√B and similar depth rules are common.

use ndarray::{Array2, ArrayView2, CowArray, Ix2};

use super::real::Real;

/// ξ·z + γ·r, written over r (the branch's output, not needed after the add).
pub fn forward<F: Real>(xi: f64, gamma: f64, z: ArrayView2<F>, mut r: Array2<F>) -> Array2<F> {
    let (xi, gamma) = (F::of(xi), F::of(gamma));
    r.zip_mut_with(&z, |o, &zi| *o = xi * zi + gamma * *o);
    r
}

/// ∂f/∂r = γ g, the branch's share of the gradient of the sum: g itself when γ = 1 (the
/// paper's), where multiplying would only copy it.
pub fn branch<'a, F: Real>(gamma: f64, g: ArrayView2<'a, F>) -> CowArray<'a, F, Ix2> {
    if gamma == 1.0 {
        return g.into();
    }
    let gamma = F::of(gamma);
    g.mapv(|x| gamma * x).into()
}

/// ∂f/∂z = ξ g + `through`, the skip's share added to what came back through the branch,
/// written over `through`: each entry rounds ξ g first and then the sum, as adding
/// `through` to a separate ξ g did (addition commutes bit for bit).
pub fn skip<F: Real>(xi: f64, g: ArrayView2<F>, mut through: Array2<F>) -> Array2<F> {
    let xi = F::of(xi);
    through.zip_mut_with(&g, |t, &gi| *t = xi * gi + *t);
    through
}
