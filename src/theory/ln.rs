//! LayerNorm at infinite width: the kernel map (1.53) and the LN factor (1.139) of every
//! carried NTK, on one state.
//!
//! - Kernel (1.53): F_12 = G_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε)), ε inside the root.
//! - NTK (1.139): Θ̄_12 = Θ_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε)) (leading order: the LN's
//!   Jacobian (I − s sᵀ/n)/σ acts as 1/σ on a generic gradient).
//! - Tied head: the stem's coefficient c_δ in the stream is divided by σ_δ = sqrt(G_δδ + ε).
//!
//! The same map serves the pre-LN branch input, the post-LN after the add, and the final LN
//! before the head (the paper's (1.139) in all three places).

use ndarray::Array2;

use super::state::{Ctx, KernelState, State};

/// LayerNorm (1.53): F_12 = G_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε)), ε inside the root.
pub fn layer_norm(z: &KernelState, eps: f64) -> KernelState {
    let d: Vec<f64> = (0..z.len()).map(|i| (z.g[[i, i]] + eps).sqrt()).collect();
    z.with(Array2::from_shape_fn(z.g.raw_dim(), |(i, j)| {
        z.g[[i, j]] / (d[i] * d[j])
    }))
}

/// v_a = 1/sqrt(G_aa + ε), the LN factor of (1.139).
pub(crate) fn inv_root(z: &KernelState, eps: f64) -> Vec<f64> {
    (0..z.len())
        .map(|a| 1.0 / (z.g[[a, a]] + eps).sqrt())
        .collect()
}

/// Θ ⊙ (v vᵀ): the LN factor (1.139) when v_a = 1/sqrt(G_aa + ε).
pub(crate) fn sandwich(theta: &Array2<f64>, v: &[f64]) -> Array2<f64> {
    Array2::from_shape_fn(theta.raw_dim(), |(a, b)| theta[[a, b]] * v[a] * v[b])
}

/// The LN block on a whole state: G → F (1.53), Θ → Θ̄ (1.139), c_δ → c_δ/σ_δ.
///
/// `stream_out`: the output is the new residual stream (post-LN), not a branch or head input.
pub(crate) fn forward(ctx: &Ctx, z: &State, stream_out: bool) -> State {
    let eps = ctx.spec.ln_eps;
    let ntk = z.ntk.as_ref().map(|carried| {
        let v = inv_root(&z.k, eps);
        carried
            .iter()
            .map(|c| c.with(sandwich(&c.theta, &v)))
            .collect()
    });
    let stem_coef = z
        .stem_coef
        .iter()
        .enumerate()
        .map(|(a, c)| c / (z.k.g[[a, a]] + eps).sqrt())
        .collect();
    State {
        k: layer_norm(&z.k, eps),
        ntk,
        stem_coef,
        vertex: z.vertex.clone(),
        nlo: z
            .nlo
            .as_ref()
            .map(|f| f.layer_norm(eps, &z.k.g, stream_out)),
    }
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
