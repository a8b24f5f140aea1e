//! The MLP branch at infinite width: kernel map (1.70), (1.76)–(1.77).

use ndarray::Array2;

use super::gauss::{Cov2, dsigma_dsigma, dsigma2, sigma_sigma, sigma2};
use super::state::{Consts, KernelState};
use crate::config::ModelSpec;

/// ⟨σ(w_a) σ(w_b)⟩ for every pair under the Gaussian of covariance `k` (entrywise 2×2).
pub(crate) fn sigma_sigma_all(spec: &ModelSpec, k: &KernelState) -> Array2<f64> {
    let act = spec.activation;
    let d = k.len();
    let mut out = Array2::zeros((d, d));
    for a in 0..d {
        out[[a, a]] = sigma2(act, k.g[[a, a]]);
        for b in a + 1..d {
            let v = sigma_sigma(act, Cov2::new(k.g[[a, a]], k.g[[a, b]], k.g[[b, b]]));
            out[[a, b]] = v;
            out[[b, a]] = v;
        }
    }
    out
}

/// MLP branch (1.70), (1.76): the preactivation kernel C_W F + C_b (the `hidden` site) and
/// the increment C_X ⟨σσ⟩_{C_W F + C_b} + C_b. M drops out: it is inside Var X = C_X/(Mn).
pub fn mlp_branch(spec: &ModelSpec, input: &KernelState) -> (KernelState, KernelState) {
    let c = Consts::of(spec);
    let hidden = input.with(input.g.mapv(|f| c.w * f + c.bias));
    let delta = input.with(sigma_sigma_all(spec, &hidden).mapv(|x| c.x * x + c.bias));
    (hidden, delta)
}

/// ⟨σ'(w_a) σ'(w_b)⟩ for every pair under the Gaussian of covariance `k`.
pub(crate) fn dsigma_dsigma_all(spec: &ModelSpec, k: &KernelState) -> Array2<f64> {
    let act = spec.activation;
    let d = k.len();
    let mut out = Array2::zeros((d, d));
    for a in 0..d {
        out[[a, a]] = dsigma2(act, k.g[[a, a]]);
        for b in a + 1..d {
            let v = dsigma_dsigma(act, Cov2::new(k.g[[a, a]], k.g[[a, b]], k.g[[b, b]]));
            out[[a, b]] = v;
            out[[b, a]] = v;
        }
    }
    out
}
