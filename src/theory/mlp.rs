//! The MLP branch at infinite width: its kernel map (1.70), (1.76)–(1.77) and its NTK
//! transport (1.168)–(1.173), side by side.
//!
//! - Kernel: the preactivation kernel C_W F + C_b (the `hidden` site) and the increment
//!   ΔG = C_X ⟨σσ⟩_{C_W F + C_b} + C_b. M drops out: it is inside Var X = C_X/(Mn).
//! - NTK (1.173): C_X C_W ⟨σ'σ'⟩_{C_W F} ⊙ Θ̄; additive raw_X = Mn⟨σσ⟩,
//!   raw_W = n C_X⟨σ'σ'⟩ ⊙ F (1.168)–(1.169).
//! - Biases (C_b > 0, derived beyond the paper by the same rules): the hidden kernel gains
//!   C_b; the block's bias group sums b_W: C_X⟨σ'σ'⟩ and b_X: 1.
//!
//! - Order 1: [`super::finite::Finite::mlp_branch`] (the hidden site's K^{{1}} and the
//!   branch output's fluctuation and cross-covariance with the stream).
//!
//! F is the branch input's kernel (LN(z) in `pre` mode, z otherwise) and Θ̄ its carried NTK.

use ndarray::Array2;

use super::contact::{Lam, Step};
use super::gauss::{Cov2, dsigma_dsigma, dsigma2, sigma_sigma, sigma2};
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::config::ModelSpec;
use crate::model::Group;

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

/// The MLP branch on a state: the increment's state and the `hidden` site's kernel. `stream`
/// is the block's input stream z (for the tied head's contact, [`super::contact`]).
pub(crate) fn branch(
    ctx: &Ctx,
    input: &State,
    stream: &KernelState,
    layer: usize,
) -> (State, KernelState) {
    let (spec, h) = (ctx.spec, &ctx.hyper.mlp);
    // The effective constants of the tensors the sampler draws; X's fan-in is M·n there.
    let (c_w, c_x, c_b) = (h.w.c_eff(), h.x.c_eff(), h.bias.unwrap_or(0.0));
    let f = &input.k.g;
    let hidden = input.k.with(f.mapv(|x| c_w * x + c_b));
    let ss = sigma_sigma_all(spec, &hidden);
    let delta = input.k.with(ss.mapv(|x| c_x * x + c_b));
    let ntk = input.ntk.as_ref().map(|bars| {
        // The raw kernels grow like the fan-ins (1/λ): n for W, M·n for X.
        let n = h.w.fan_in() as f64;
        let m = h.x.fan_in() as f64;
        let dd = dsigma_dsigma_all(spec, &hidden);
        ctx.record(|| Step::Mlp {
            lam: Lam::of(stream, &input.k, spec.ln_eps),
            coef: dd.mapv(|x| c_x * c_w * x),
        });
        let mut out: Vec<Carried> = bars
            .iter()
            .map(|th| th.with(&th.theta * &dd * (c_x * c_w)))
            .collect();
        let mut raw = vec![
            (Group::W, &dd * f * (n * c_x)),
            (Group::X, ss.mapv(|x| m * x)),
        ];
        if h.bias.is_some() {
            // b_W: C_X⟨σ'σ'⟩; b_X: 1.
            raw.push((Group::Bias, dd.mapv(|x| c_x * x + 1.0)));
        }
        out.extend(
            raw.into_iter()
                .map(|(g, r)| Carried::new(layer, What::Group(g), r)),
        );
        out
    });
    // Order 1 ([`super::finite`]): the hidden units and the branch output are Gaussian
    // mixtures over C_W Ĝ_s + C_b and C_b + C_X (1/Mn) Σ σσ.
    let mut out = State::branch(delta, ntk);
    let mut hidden = hidden;
    if let Some(f) = &input.nlo {
        let m = h.x.fan_in() as f64 / h.w.fan_in() as f64;
        let (k1_h, r) = f.mlp_branch(
            spec.activation,
            (c_w, c_x, m),
            &input.k.g,
            &hidden.g,
            &out.k.g,
        );
        // The hidden site's row is the corrected mean kernel.
        hidden.g += &(k1_h / spec.width as f64);
        out.nlo = Some(r);
    }
    (out, hidden)
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
