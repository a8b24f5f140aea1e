//! LayerNorm at infinite width: the kernel map (1.53) and the LN factor (1.139) of a carried
//! NTK.

use ndarray::Array2;

use super::state::KernelState;

/// LayerNorm (1.53): F_12 = G_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε)), ε inside the root.
pub fn layer_norm(z: &KernelState, eps: f64) -> KernelState {
    let d: Vec<f64> = (0..z.len()).map(|i| (z.g[[i, i]] + eps).sqrt()).collect();
    z.with(Array2::from_shape_fn(z.g.raw_dim(), |(i, j)| {
        z.g[[i, j]] / (d[i] * d[j])
    }))
}

/// Θ ⊙ (v vᵀ): the LN factor (1.139) when v_a = 1/sqrt(G_aa + ε).
pub(crate) fn sandwich(theta: &Array2<f64>, v: &[f64]) -> Array2<f64> {
    Array2::from_shape_fn(theta.raw_dim(), |(a, b)| theta[[a, b]] * v[a] * v[b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_map_is_one_on_the_diagonal_at_zero_eps() {
        let k = KernelState::new(ndarray::arr2(&[[4.0, 1.0], [1.0, 9.0]]), 1, 2);
        let f = layer_norm(&k, 0.0);
        assert!((f.g[[0, 0]] - 1.0).abs() < 1e-15);
        assert!((f.g[[0, 1]] - 1.0 / 6.0).abs() < 1e-15);
    }
}
