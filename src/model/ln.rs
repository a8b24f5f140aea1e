//! LayerNorm without affine parameters (1.11), ε inside the root as in PyTorch:
//! s_i = (z_i − μ) / sqrt(mean_j (z_j − μ)² + ε), per token over the n channels.
//!
//! Theory (1.36)/(1.53): F = G / sqrt((G₁₁ + ε)(G₂₂ + ε)) at leading order; the kernel map
//! joins this file with the theory engine.

use ndarray::{Array1, Array2, ArrayView2, Zip};

use super::real::Real;

/// What the backward pass needs: the output and 1/σ per token.
#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub s: Array2<F>,
    pub inv_std: Array1<F>,
}

pub fn forward<F: Real>(z: ArrayView2<F>, eps: f64) -> Cache<F> {
    let (n, eps) = (F::of(z.ncols() as f64), F::of(eps));
    let mut s = z.to_owned();
    let mut inv_std = Array1::zeros(z.nrows());
    Zip::from(s.rows_mut())
        .and(&mut inv_std)
        .for_each(|mut row, r| {
            let mu = row.sum() / n;
            row.mapv_inplace(|x| x - mu);
            let var = row.iter().map(|&x| x * x).sum::<F>() / n;
            *r = F::one() / (var + eps).sqrt();
            let rr = *r;
            row.mapv_inplace(|x| x * rr);
        });
    Cache { s, inv_std }
}

/// ∂/∂z_i = (1/σ)[g_i − mean(g) − s_i · mean(g ⊙ s)]; holds for any ε because
/// (z_i − μ)(z_j − μ)/σ² = s_i s_j.
pub fn backward<F: Real>(cache: &Cache<F>, g: ArrayView2<F>) -> Array2<F> {
    let n = F::of(g.ncols() as f64);
    let mut dz = g.to_owned();
    Zip::from(dz.rows_mut())
        .and(cache.s.rows())
        .and(&cache.inv_std)
        .for_each(|mut row, s, &r| {
            let mean_g = row.sum() / n;
            let mean_gs = row.iter().zip(s.iter()).map(|(&a, &b)| a * b).sum::<F>() / n;
            Zip::from(&mut row)
                .and(&s)
                .for_each(|d, &si| *d = r * (*d - mean_g - si * mean_gs));
        });
    dz
}
