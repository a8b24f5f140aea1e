//! The book's plain MLP layer (PDLT §4.3) on the whole probe set.

use super::mlp::sigma_sigma_all;
use super::state::KernelState;
use crate::config::ModelSpec;

/// The book's MLP layer K' = C_b + C_W ⟨σσ⟩_K (`mlp` mode blocks, PDLT §4.3).
pub(crate) fn book_layer(spec: &ModelSpec, k: &KernelState, c_w: f64, c_b: f64) -> KernelState {
    k.with(sigma_sigma_all(spec, k).mapv(|x| c_b + c_w * x))
}
