//! The residual add at infinite width (1.65), (1.77).

use super::state::KernelState;
use crate::config::ModelSpec;

/// Residual add (1.65), (1.77) with SPEC's weights: G' = ξ² G + γ² ΔG (cross terms vanish).
pub fn residual(spec: &ModelSpec, z: &KernelState, delta: &KernelState) -> KernelState {
    let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
    let mut g = z.g.mapv(|x| x2 * x);
    g.scaled_add(g2, &delta.g);
    z.with(g)
}
