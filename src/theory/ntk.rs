//! The backward side at infinite width: the per-group NTK recursion (1.98) with the LN factor
//! (1.139), block by block, and the gradient sizes `grad2` (SPEC §2, notes §2).
//!
//! Every block map is affine in Θ: Θ^{ℓ+1} = T^{ℓ+1}[Θ^ℓ] + additive^{ℓ+1}, and the transport
//! T uses only forward quantities (G, F, the attention draws, ⟨σ'σ'⟩). So each parameter group
//! is carried on its own (notes §2.8): its **raw** squared-gradient kernel (no learning-rate
//! factor; SPEC's Θ_g = the paper's additive term / λ_g, so it grows like the fan-in) is
//! injected at the layer its block produces and transported to the output. `grad2` at layer ℓ
//! is the transport of the identity kernel injected at z^ℓ (a fictitious bias on every
//! component of every probe point). With the trace-mode cotangent f = n_out^{-1/2} Σ u z^L,
//! both summaries are the mean of the diagonal of the transported kernel over the outputs.
//!
//! The transport maps live with their blocks, next to each block's kernel map: the LN factor
//! (1.139) in [`super::ln`], the MLP (1.168)–(1.173) in [`super::mlp`], the MHSA
//! (1.151)–(1.163) in [`super::attention`], the residual add in [`super::residual`], the head
//! (1.179)–(1.182) with the tied head's derivation in [`super::head`], the stem's injections
//! (1.122)–(1.123) in [`super::stem`] and the book's frozen NTK in [`super::plain`]. One walk
//! ([`super::walk`]) carries every kernel through them (leading order; the skip–branch cross
//! terms vanish, (1.159), (1.172)). This module says which configurations have a backward
//! theory and writes the carried kernels as rows.
//!
//! Not covered (no rows): the tied head without pre-LN (post-LN puts an LN with its own
//! projection and contact after every block; without any LN the cross term survives). With
//! pre-LN the tied head's contact is carried through any stack of blocks, an
//! encoder–decoder's included, by [`super::contact`].

use super::rows::PRow;
use super::state::{Carried, What};
use crate::config::{HeadKind, ModelSpec, Norm};
use crate::stats::observable::{NtkLayout, NtkPart};
use crate::stats::{Observable, Site};

/// Why a configuration has no backward theory here, if it has none.
pub fn unsupported(spec: &ModelSpec) -> Option<&'static str> {
    // Post-LN puts a LayerNorm after every block on the skip path of W_WE[:, id] (each with
    // its own projection and logit contact), and without any LN the head-use × stem-use
    // cross term survives: neither is derived here.
    (spec.head == HeadKind::Tied && spec.norm != Norm::Pre)
        .then_some("tied head without pre-LN (only the pre-LN tied backward is derived)")
}

/// The backward rows (`grad2`, `ntk_<group>`, `ntk`, `ntk_total`) in the Monte Carlo's
/// labels, from the kernels the walk carried to the output (in injection order). Summaries are means of the diagonal over the outputs
/// (what `trace` mode estimates); with `pairs` also every pair of outputs (a ≤ b) of each
/// NTK and each output's grad2, as the Monte Carlo's `pairs` mode writes them.
pub(crate) fn rows(spec: &ModelSpec, inj: &[Carried], pairs: bool) -> Vec<PRow> {
    // The λ_G of the Monte Carlo's `ntk` rows: the group table's λ rule, read off the tensors
    // the sampler draws.
    let hyper = crate::model::hyper::blocks(spec);
    // The tied head's off-diagonal pairs Θ(a, b) get their own cross term and contacts (the
    // LN norm argument holds only for a = b); not derived, so only the diagonal is written.
    let layout = NtkLayout {
        pairs,
        diag_only: spec.head == HeadKind::Tied,
        per_output: 1.0,
    };
    let mut rows = Vec::new();
    let row = |layer: usize, site: Site, observable: Observable, i: i64, j: i64, value: f64| PRow {
        layer,
        site,
        observable,
        i,
        j,
        value,
    };
    for c in inj.iter().filter(|c| c.what == What::Grad2) {
        let diag: Vec<f64> = c.theta.diag().to_vec();
        layout.grad2_rows(&diag, |i, j, v| {
            rows.push(row(c.layer, Site::Resid, Observable::Grad2, i, j, v))
        });
    }
    let parts = inj.iter().filter_map(|c| match c.what {
        What::Group(g) => Some(NtkPart {
            layer: c.layer,
            group: g,
            lambda: g.lambda(&hyper, spec),
            theta: &c.theta,
        }),
        What::Grad2 => None,
    });
    let d_out = inj.first().map_or(0, |i| i.theta.nrows());
    layout.ntk_rows(parts, d_out, spec.head_layer(), |layer, obs, i, j, v| {
        rows.push(row(layer, Site::Param, obs, i, j, v))
    });
    rows
}
