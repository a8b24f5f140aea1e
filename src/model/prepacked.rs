//! Weights packed once per step and shared by the trainer's threads.
//!
//! Each thread runs the network on its part of the batch, and every product with a weight
//! used to pack that weight again, on every thread, from memory the update had left long
//! before (see [`panel`](super::panel)). [`WeightPacks`] packs each weight once for Y = X Wᵀ
//! and once for ∂X = G W, and [`Prepacked`] multiplies with them. The trainer refreshes the
//! packs from the parameters at the start of every step, so they cannot go stale.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::panel::Packed;
use super::{Params, Real, WeightOps, linalg};

/// Weights smaller than this on either side are not packed (biases, LN gains, a small
/// vocabulary's head): the kernel would not take their products.
const MIN_SIDE: usize = super::panel::NR;

/// Every parameter's packs, indexed like `Params::list`; `None` where the kernel does not
/// take its products (not f32, no AVX-512, a side that is not a multiple of 32).
#[derive(Debug, Default)]
pub struct WeightPacks {
    /// Wᵀ (fan_in × fan_out), the forward product's B.
    fwd: Vec<Option<Packed>>,
    /// W (fan_out × fan_in), the backward product's B.
    bwd: Vec<Option<Packed>>,
}

impl WeightPacks {
    /// Packs every weight of `params`, reusing the buffers of the last refresh, on `pool`'s
    /// threads when given.
    pub fn refresh<F: Real>(&mut self, params: &Params<F>, pool: Option<&rayon::ThreadPool>) {
        let len = params.list.len();
        self.fwd.resize_with(len, || None);
        self.bwd.resize_with(len, || None);
        let one = |((fwd, bwd), w): ((&mut Option<Packed>, &mut Option<Packed>), &Array2<F>)| {
            let big = w.nrows() >= MIN_SIDE && w.ncols() >= MIN_SIDE;
            refill(fwd, big.then(|| w.t()));
            refill(bwd, big.then(|| w.view()));
        };
        let slots = self.fwd.iter_mut().zip(self.bwd.iter_mut());
        let values = params.list.iter().map(|p| &p.value);
        match pool {
            Some(pool) => pool.install(|| {
                let jobs: Vec<_> = slots.zip(values).collect();
                jobs.into_par_iter().for_each(one)
            }),
            None => slots.zip(values).for_each(one),
        }
    }
}

/// `slot` ← B packed (its buffer reused), or `None` where B is not given or does not pack.
fn refill<F: Real>(slot: &mut Option<Packed>, b: Option<ArrayView2<F>>) {
    let Some(b) = b else {
        *slot = None;
        return;
    };
    let packed = match slot.as_mut() {
        Some(p) => F::repack(p, b),
        None => {
            *slot = F::pack(b);
            slot.is_some()
        }
    };
    if !packed {
        *slot = None;
    }
}

/// Materialized weights multiplied from [`WeightPacks`] refreshed from the same parameters;
/// products the packs do not cover go to [`linalg`] as in [`super::Materialized`].
pub struct Prepacked<'a> {
    pub packs: &'a WeightPacks,
}

impl<F: Real> WeightOps<F> for Prepacked<'_> {
    fn fwd(&mut self, p: &Params<F>, id: usize, x: ArrayView2<F>) -> Array2<F> {
        let w = p.get(id).view();
        pack_of(&self.packs.fwd, id, (w.ncols(), w.nrows()))
            .and_then(|b| linalg::product_packed(x, b))
            .unwrap_or_else(|| linalg::mm_t(x, w))
    }

    fn bwd(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>) -> Array2<F> {
        pack_of(&self.packs.bwd, id, p.get(id).dim())
            .and_then(|b| linalg::product_packed(g, b))
            .unwrap_or_else(|| linalg::mm(g, p.get(id).view()))
    }

    fn bwd_add(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>, acc: &mut Array2<F>) {
        if pack_of(&self.packs.bwd, id, p.get(id).dim())
            .and_then(|b| linalg::add_product_packed(g, b, &mut acc.view_mut()))
            .is_none()
        {
            *acc += &self.bwd(p, id, g);
        }
    }
}

/// Weight `id`'s pack in `packs` (the forward or the backward ones), when there is one
/// of the product's shape `dim` (B's k × n).
fn pack_of(packs: &[Option<Packed>], id: usize, dim: (usize, usize)) -> Option<&Packed> {
    packs.get(id)?.as_ref().filter(|b| b.dim() == dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;
    use crate::inputs;
    use crate::model::{Group, Network, ParamGrads, init};

    /// The packs multiply as the weights they were packed from: a forward and a backward
    /// pass through [`Prepacked`] give the bits of [`super::super::Materialized`], which
    /// packs each product's weight itself, at widths the kernel takes (64 and 128) and a
    /// part of 96 rows. A pack left from other weights would change every output.
    #[test]
    fn prepacked_passes_give_the_bits_of_materialized() {
        let mut b = ConfigBuilder::new();
        for s in [
            "model.width=64",
            "model.heads=2",
            "model.mlp_mult=2",
            "model.layers=2",
            "model.n_out=32",
            "inputs.sequences=12",
            "inputs.tokens=8",
            "inputs.dim=64",
        ] {
            b = b.set(s).unwrap();
        }
        let mut cfg = b.build().unwrap();
        let probe = inputs::probe(&mut cfg).unwrap().cast::<f32>();
        let net: Network<f32> = Network::sample(&cfg.model, &mut init::stream(5, 0)).cast();
        let mut packs = WeightPacks::default();
        packs.refresh(&net.params, None);
        let plain = net.forward(&probe);
        let packed = net.forward_with(&probe, &mut Prepacked { packs: &packs });
        assert_eq!(plain.out, packed.out);
        let mut g_plain = ParamGrads::new(&net.params);
        let mut g_packed = ParamGrads::new(&net.params);
        let d_plain = net.backward(&plain, &probe, plain.out.view(), &mut g_plain);
        let d_packed = net.backward_with(
            &packed,
            &probe,
            packed.out.view(),
            &mut g_packed,
            &mut Prepacked { packs: &packs },
        );
        assert_eq!(d_plain, d_packed);
        assert_eq!(g_plain.into_list(), g_packed.into_list());

        // Packs of other weights (a second draw) are used, and change the output; in the
        // backward pass too, where K's and V's products are added into Q's in place
        // (`bwd_add`): only their packs are stale here, and ∂s moves.
        let other: Network<f32> = Network::sample(&cfg.model, &mut init::stream(6, 0)).cast();
        packs.refresh(&other.params, None);
        let stale = net.forward_with(&probe, &mut Prepacked { packs: &packs });
        let mut mixed = other.params.clone();
        for (id, q) in net.params.list.iter().enumerate() {
            if !matches!(q.group, Group::K | Group::V) {
                mixed.list[id].value = q.value.clone();
            }
        }
        packs.refresh(&mixed, None);
        let mut g_stale = ParamGrads::new(&net.params);
        let d_stale = net.backward_with(
            &packed,
            &probe,
            packed.out.view(),
            &mut g_stale,
            &mut Prepacked { packs: &packs },
        );
        if super::super::panel::available() {
            assert_ne!(plain.out, stale.out, "the packs were not used");
            assert_ne!(d_plain, d_stale, "K's and V's packs were not used backward");
        }
    }
}
