//! Stem: the input kernel G⁰ (1.40)/(1.44) and the stem's kernel map (1.41)/(1.45).

use ndarray::Array2;

use super::TheoryError;
use super::state::{Consts, KernelState};
use crate::config::{ModelSpec, Norm, Stem};
use crate::model::Probe;

/// Input kernel G⁰: x·x/n_in (1.40) for the dense stem, [id₁ = id₂] for the embedding (1.44).
pub fn input_kernel(spec: &ModelSpec, probe: &Probe) -> Result<KernelState, TheoryError> {
    let d = probe.len();
    let g = match spec.stem {
        Stem::Dense => {
            let x = probe.x.as_ref().ok_or_else(|| bad_input("vectors"))?;
            x.dot(&x.t()) / x.ncols() as f64
        }
        Stem::Embedding => {
            let ids = probe.ids.as_ref().ok_or_else(|| bad_input("token ids"))?;
            Array2::from_shape_fn((d, d), |(a, b)| f64::from(u8::from(ids[a] == ids[b])))
        }
    };
    Ok(KernelState::new(g, probe.sequences, probe.tokens))
}

pub(crate) fn bad_input(what: &str) -> TheoryError {
    TheoryError::Unsupported(format!("the probe set has no {what} for this stem"))
}

/// Stem (1.41)/(1.45): G¹ = C_stem G⁰ + C_PE δ_{t1 t2}; in `mlp` mode K¹ = C_b + C_W G⁰
/// (the book's first layer, no positional embedding).
pub fn stem(spec: &ModelSpec, g0: &KernelState) -> KernelState {
    let c = Consts::of(spec);
    let t = g0.tokens;
    let b = if spec.norm == Norm::Mlp { c.bias } else { 0.0 };
    let g = Array2::from_shape_fn(g0.g.raw_dim(), |(i, j)| {
        let pe = if i % t == j % t { c.pe } else { 0.0 };
        c.stem * g0.g[[i, j]] + pe + b
    });
    g0.with(g)
}
