//! The residual add at infinite width (1.65), (1.77): kernel and NTK.
//!
//! - Kernel: G' = ξ² G + γ² ΔG. The cross term 2ξγ E[z R] vanishes at leading order because
//!   R ends in a fresh mean-zero weight (U or X) that is independent of z (notes §1.5; the
//!   same argument as (1.62) for E[r] = 0).
//! - NTK: Θ' = ξ² Θ + γ² (the branch's transport of Θ); the branch's own groups enter with
//!   γ² alone (the skip–branch cross terms vanish, (1.159), (1.172)).
//! - Tied head: the stem's coefficient c_δ in the stream is multiplied by ξ.

use super::state::{Carried, Ctx, KernelState, State};
use crate::config::ModelSpec;

/// Residual add (1.65), (1.77) with SPEC's weights: G' = ξ² G + γ² ΔG (cross terms vanish).
pub fn residual(spec: &ModelSpec, z: &KernelState, delta: &KernelState) -> KernelState {
    let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
    let mut g = z.g.mapv(|x| x2 * x);
    g.scaled_add(g2, &delta.g);
    z.with(g)
}

/// The add on whole states: `skip` is the stream z, `branch` the branch's output state (its
/// carried list is the branch's transport of every kernel of `skip`, in order, followed by
/// the block's own groups; its contacts already include what came in).
pub(crate) fn add(ctx: &Ctx, skip: State, branch: State) -> State {
    let spec = ctx.spec;
    let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
    let ntk = match (skip.ntk, branch.ntk) {
        (Some(s), Some(b)) => {
            let carried = s.len();
            let mut out: Vec<Carried> = Vec::with_capacity(b.len());
            for (i, cu) in s.iter().zip(&b) {
                let mut th = i.theta.mapv(|x| x2 * x);
                th.scaled_add(g2, &cu.theta);
                out.push(cu.with(th));
            }
            out.extend(
                b[carried..]
                    .iter()
                    .map(|r| r.with(r.theta.mapv(|x| g2 * x))),
            );
            Some(out)
        }
        _ => None,
    };
    // Order 1: only a branch with a derived correction (an MLP) keeps the stream's.
    let nlo = match (&skip.nlo, &branch.nlo) {
        (Some(z), Some(r)) => {
            Some(z.residual(r, (spec.xi, spec.gamma_res), &skip.k.g, &branch.k.g))
        }
        _ => None,
    };
    State {
        k: residual(spec, &skip.k, &branch.k),
        ntk,
        stem_coef: skip.stem_coef.iter().map(|c| c * spec.xi).collect(),
        vertex: skip.vertex,
        nlo,
    }
}
