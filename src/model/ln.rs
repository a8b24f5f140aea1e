//! LayerNorm without affine parameters (1.11), ε inside the root as in PyTorch:
//! s_i = (z_i − μ) / sqrt(mean_j (z_j − μ)² + ε), per token over the n channels.
//!
//! Theory (1.36)/(1.53): F = G / sqrt((G₁₁ + ε)(G₂₂ + ε)) at leading order; the kernel map
//! joins this file with the theory engine.

use ndarray::{Array1, Array2, ArrayView2, Zip};

/// What the backward pass needs: the output and 1/σ per token.
#[derive(Clone, Debug)]
pub struct Cache {
    pub s: Array2<f64>,
    pub inv_std: Array1<f64>,
}

pub fn forward(z: ArrayView2<f64>, eps: f64) -> Cache {
    let n = z.ncols() as f64;
    let mut s = z.to_owned();
    let mut inv_std = Array1::zeros(z.nrows());
    Zip::from(s.rows_mut())
        .and(&mut inv_std)
        .for_each(|mut row, r| {
            let mu = row.sum() / n;
            row.mapv_inplace(|x| x - mu);
            let var = row.iter().map(|x| x * x).sum::<f64>() / n;
            *r = 1.0 / (var + eps).sqrt();
            let rr = *r;
            row.mapv_inplace(|x| x * rr);
        });
    Cache { s, inv_std }
}

/// ∂/∂z_i = (1/σ)[g_i − mean(g) − s_i · mean(g ⊙ s)]; holds for any ε because
/// (z_i − μ)(z_j − μ)/σ² = s_i s_j.
pub fn backward(cache: &Cache, g: ArrayView2<f64>) -> Array2<f64> {
    let n = g.ncols() as f64;
    let mut dz = g.to_owned();
    Zip::from(dz.rows_mut())
        .and(cache.s.rows())
        .and(&cache.inv_std)
        .for_each(|mut row, s, &r| {
            let mean_g = row.sum() / n;
            let mean_gs = row.iter().zip(s.iter()).map(|(a, b)| a * b).sum::<f64>() / n;
            Zip::from(&mut row)
                .and(&s)
                .for_each(|d, &si| *d = r * (*d - mean_g - si * mean_gs));
        });
    dz
}
