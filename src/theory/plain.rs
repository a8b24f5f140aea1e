//! The book's plain MLP layer at infinite width and order 1/n (PDLT §4, §8): its kernel map,
//! its four-point vertex and its frozen-NTK transport, side by side, on the whole probe set.
//! This is the `mlp` mode's block and head ([`super::book`] holds the same recursions for
//! one or two inputs, with criticality and the susceptibilities).
//!
//! - Kernel (§4.3): K^{ℓ+1} = C_b + C_W ⟨σσ⟩_{K^ℓ}, with the stem's C_W at ℓ = 1,
//!   `variances.w` for the blocks and the head's C_head n^{-s} at ℓ = L.
//! - Vertex, per token: V^{ℓ+1} = χ∥(K^ℓ)² V^ℓ + C_W² (⟨σ⁴⟩ − ⟨σ²⟩²)_{K^ℓ}, V¹ = 0 (equal
//!   widths n, [`BookMlp::vertex`] with the layer's own C_W). Observables ([`observables`]):
//!   kurtosis = V/(n K²) and fluct = 2K² + V·w_ℓ/n where w_ℓ is the width the Monte Carlo
//!   averages over (n, or n_out at the head): n_ℓ Var[(1/n_ℓ)Σ z²] = 2K² + 3V/n + (n_ℓ − 1)V/n.
//! - Frozen NTK (§8): Θ' = C_W ⟨σ'σ'⟩_K ⊙ Θ, raw_W = n⟨σσ⟩_K, raw_b = 1.

use super::book::Mlp as BookMlp;
use super::gauss::{sigma2, sigma4};
use super::mlp::{dsigma_dsigma_all, sigma_sigma_all};
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::model::Group;

/// One plain layer on a state, producing `layer` with weight constant `c_w` and weight group
/// `group` (W for a block, Head for the head).
pub(crate) fn forward(ctx: &Ctx, st: &State, layer: usize, c_w: f64, group: Group) -> State {
    let (spec, c_b) = (ctx.spec, ctx.hyper.book.bias.unwrap_or(0.0));
    let act = spec.activation;
    let k = &st.k;
    let ss = sigma_sigma_all(spec, k);
    let vertex = st.vertex.as_ref().map(|v| {
        let mlp = BookMlp::new(act, c_b, c_w);
        v.iter()
            .enumerate()
            .map(|(a, va)| {
                let kk = k.g[[a, a]];
                let s2 = sigma2(act, kk);
                let chi = mlp.chi_parallel(kk);
                chi * chi * *va + c_w * c_w * (sigma4(act, kk) - s2 * s2)
            })
            .collect()
    });
    let ntk = st.ntk.as_ref().map(|carried| {
        let n = spec.width as f64;
        let d = k.len();
        let dd = dsigma_dsigma_all(spec, k);
        let mut out: Vec<Carried> = carried
            .iter()
            .map(|i| i.with(&i.theta * &dd * c_w))
            .collect();
        out.push(Carried::new(layer, What::Group(group), ss.mapv(|x| n * x)));
        if ctx.hyper.book.bias.is_some() {
            let ones = ndarray::Array2::ones((d, d));
            out.push(Carried::new(layer, What::Group(Group::Bias), ones));
        }
        out
    });
    let k_out = ss.mapv(|x| c_b + c_w * x);
    let nlo = st.nlo.as_ref().map(|f| f.plain(act, c_w, &k.g, &k_out));
    State {
        k: k.with(k_out),
        ntk,
        stem_coef: st.stem_coef.clone(),
        vertex,
        nlo,
    }
}

/// Per token (fluct, kurtosis) of a state with a vertex, averaged over `width` units.
pub(crate) fn observables(k: &KernelState, v: &[f64], n: f64, width: f64) -> Vec<(f64, f64)> {
    (0..k.len())
        .map(|a| {
            let kk = k.g[[a, a]];
            (2.0 * kk * kk + v[a] * width / n, v[a] / (n * kk * kk))
        })
        .collect()
}
