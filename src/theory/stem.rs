//! Stem at infinite width: the input kernel G⁰ (1.40)/(1.44), the stem's kernel map
//! (1.41)/(1.45), and the NTK it injects (1.122)–(1.123).
//!
//! - Kernel: G¹ = C_stem G⁰ + C_PE δ_{t1 t2} (no δ_{α1 α2}: the PE is shared), plus C_cls
//!   δ_{t1 0} δ_{t2 0} with the class token (1.8), whose slot has G⁰ = 0; in `mlp` mode
//!   the book's first layer K¹ = C_b + C_W G⁰ (no positional embedding).
//! - The [pad] token (`inputs.pad_id`, footnote 48): its column of W_WE is zero and frozen,
//!   so G⁰ = [id₁ = id₂ ≠ pad] carries it into the kernel and into raw_stem alike.
//! - NTK: raw_stem = n_in G⁰ (dense) or G⁰ (embedding), raw_pe = δ_{t1t2}, raw_cls =
//!   δ_{t1 0} δ_{t2 0}; in `mlp` mode
//!   raw_W = n_in G⁰ and raw_b = 1 (the book's frozen NTK, PDLT §8).

use ndarray::Array2;

use super::TheoryError;
use super::finite::Finite;
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::config::{ModelSpec, Norm, Stem};
use crate::model::{Group, Probe};

/// Input kernel G⁰: x·x/n_in (1.40) for the dense stem, [id₁ = id₂] for the embedding (1.44),
/// [id₁ = id₂ ≠ pad] when the model has a [pad] token, whose column W_WE[:, pad] is zero
/// (footnote 48): a pad token's z¹ is its positional embedding alone.
pub fn input_kernel(spec: &ModelSpec, probe: &Probe) -> Result<KernelState, TheoryError> {
    let d = probe.len();
    let g = match spec.stem {
        Stem::Dense => {
            let x = probe.x.as_ref().ok_or_else(|| bad_input("vectors"))?;
            x.dot(&x.t()) / x.ncols() as f64
        }
        Stem::Embedding => {
            let ids = probe.ids.as_ref().ok_or_else(|| bad_input("token ids"))?;
            let live = |id: usize| spec.pad_id != Some(id);
            Array2::from_shape_fn((d, d), |(a, b)| {
                f64::from(u8::from(ids[a] == ids[b] && live(ids[a])))
            })
        }
    };
    Ok(KernelState::new(g, probe.sequences, probe.tokens))
}

fn bad_input(what: &str) -> TheoryError {
    TheoryError::Unsupported(format!("the probe set has no {what} for this stem"))
}

/// The stem block: G⁰ → the state at layer 1 (kernel, the stem's NTK injections, c_δ = 1 and
/// V¹ = 0 in `mlp` mode).
pub(crate) fn forward(ctx: &Ctx, g0: &KernelState) -> State {
    let (spec, h) = (ctx.spec, &ctx.hyper.stem);
    let t = g0.tokens;
    let d = g0.len();
    let book = spec.norm == Norm::Mlp;
    // What the sampler draws: no PE in `mlp` mode, the first-layer bias only there.
    let (c_stem, c_pe, b) = (h.w.c_eff(), h.pe.unwrap_or(0.0), h.bias.unwrap_or(0.0));
    // The class token c sits at t = 0 of every sequence, shared like the PE, and its slot's
    // input is zero (1.8): it adds C_cls between class slots, of any two sequences.
    let c_cls = h.cls.unwrap_or(0.0);
    let both_cls =
        |i: usize, j: usize| h.cls.is_some() && i.is_multiple_of(t) && j.is_multiple_of(t);
    let g = Array2::from_shape_fn(g0.g.raw_dim(), |(i, j)| {
        let pe = if i % t == j % t { c_pe } else { 0.0 };
        let cls = if both_cls(i, j) { c_cls } else { 0.0 };
        c_stem * g0.g[[i, j]] + pe + cls + b
    });
    let ntk = ctx.backward.then(|| {
        let raw_stem = match spec.stem {
            Stem::Embedding if !book => g0.g.clone(),
            _ => g0.g.mapv(|x| x * h.w.fan_in() as f64),
        };
        let mut carried = vec![Carried::new(1, What::Group(Group::Stem), raw_stem)];
        if h.bias.is_some() {
            carried.push(Carried::new(
                1,
                What::Group(Group::Bias),
                Array2::ones((d, d)),
            ));
        }
        if h.pe.is_some() {
            let pe = Array2::from_shape_fn((d, d), |(a, b)| f64::from(u8::from(a % t == b % t)));
            carried.push(Carried::new(1, What::Group(Group::Pe), pe));
        }
        if h.cls.is_some() {
            let cls = Array2::from_shape_fn((d, d), |(a, b)| f64::from(u8::from(both_cls(a, b))));
            carried.push(Carried::new(1, What::Group(Group::Cls), cls));
        }
        carried
    });
    let nlo = (ctx.order == 1).then(|| Finite::first(&g, book));
    State {
        k: g0.with(g),
        ntk,
        stem_coef: vec![1.0; d],
        vertex: book.then(|| vec![0.0; d]),
        // Layer 1 is exactly Gaussian with a deterministic kernel: K^{{1}} = 0, V = 0.
        nlo,
    }
}
