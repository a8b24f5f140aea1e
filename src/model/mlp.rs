//! The MLP block (§I 0 D): w = W s (1.20), r = X σ(w) (1.21), Var W = C_W/n (1.31),
//! Var X = C_X/(M n) (1.32), optional biases with variance C_b.
//! And the book's plain layer z^{ℓ+1} = b + W σ(z^ℓ) (PDLT (2.5)) for `mlp` mode.
//!
//! Theory (1.77): the kernel increment is C_X ⟨σ σ⟩ under the Gaussian of covariance
//! C_W F; the book's layer maps K → C_b + C_W ⟨σ σ⟩_K.

use ndarray::{Array2, ArrayView2, Zip};

use super::block::{Ctx, ResidualBlock};
use super::hyper::{Weight, spec_bias};
use super::init::Stream;
use super::{GradSink, GradTerm, Group, Params, Real};
use crate::config::ModelSpec;

/// The MLP block's tensors as drawn, for the sampler and the theory (see `model::hyper`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// (M n × n), Var C_W/n (1.31).
    pub w: Weight,
    /// (n × M n), Var C_X/(M n) (1.32): the fan-in of X is M·n.
    pub x: Weight,
    /// C_b of the biases of w (M n) and r (n), when the model has biases.
    pub bias: Option<f64>,
}

pub fn hyper(spec: &ModelSpec) -> Hyper {
    let n = spec.width;
    let m = spec.mlp_mult * n;
    Hyper {
        w: Weight::scaled(spec, spec.var.w, m, n),
        x: Weight::scaled(spec, spec.var.x, n, m),
        bias: spec_bias(spec),
    }
}

/// The book's layer's tensors: W (n × n) with Var C_W/n, and the bias C_b.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BookHyper {
    pub w: Weight,
    pub bias: Option<f64>,
}

pub fn book_hyper(spec: &ModelSpec) -> BookHyper {
    let n = spec.width;
    BookHyper {
        w: Weight::scaled(spec, spec.var.w, n, n),
        bias: spec_bias(spec),
    }
}

#[derive(Clone, Debug)]
pub struct Mlp {
    /// (M n × n)
    pub w: usize,
    /// (n × M n)
    pub x: usize,
    pub bw: Option<usize>,
    pub bx: Option<usize>,
}

/// Preactivation w (the `hidden` site) and σ(w).
#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub w: Array2<F>,
    pub a: Array2<F>,
    /// σ'(w), kept from the forward pass.
    pub da: Array2<F>,
}

impl ResidualBlock for Mlp {
    type Cache<F: Real> = Cache<F>;

    fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> Mlp {
        let h = hyper(spec);
        let w = p.linear(
            Group::W,
            layer,
            format!("block{layer}.mlp.w"),
            h.w,
            spec,
            rng,
        );
        let x = p.linear(
            Group::X,
            layer,
            format!("block{layer}.mlp.x"),
            h.x,
            spec,
            rng,
        );
        let (bw, bx) = match h.bias {
            Some(_) => {
                let bw = p.bias(
                    spec,
                    layer,
                    format!("block{layer}.mlp.bw"),
                    h.w.shape.0,
                    rng,
                );
                let bx = p.bias(
                    spec,
                    layer,
                    format!("block{layer}.mlp.bx"),
                    h.x.shape.0,
                    rng,
                );
                (Some(bw), Some(bx))
            }
            None => (None, None),
        };
        Mlp { w, x, bw, bx }
    }

    fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>, s: ArrayView2<F>) -> (Array2<F>, Cache<F>) {
        let w = cx.affine(self.w, self.bw, s);
        let (a, da) = activate(cx.spec.activation, w.view());
        let r = cx.affine(self.x, self.bx, a.view());
        (r, Cache { w, a, da })
    }

    fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        sink.term(self.x, GradTerm::linear(cache.a.view(), g));
        if let Some(bx) = self.bx {
            sink.term(bx, GradTerm::Bias { grad: g });
        }
        let mut dw = cx.bwd(self.x, g);
        dw *= &cache.da;
        sink.term(self.w, GradTerm::linear(s, dw.view()));
        if let Some(bw) = self.bw {
            sink.term(bw, GradTerm::Bias { grad: dw.view() });
        }
        cx.bwd(self.w, dw.view())
    }
}

/// The book's layer z^{ℓ+1} = b + W σ(z^ℓ), W (n × n) with Var C_W/n.
#[derive(Clone, Debug)]
pub struct BookLayer {
    pub w: usize,
    pub b: Option<usize>,
}

/// σ(z^ℓ).
#[derive(Clone, Debug)]
pub struct BookCache<F = f64> {
    pub a: Array2<F>,
    /// σ'(z^ℓ).
    pub da: Array2<F>,
}

impl ResidualBlock for BookLayer {
    type Cache<F: Real> = BookCache<F>;

    fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> BookLayer {
        let h = book_hyper(spec);
        let w = p.linear(Group::W, layer, format!("layer{layer}.w"), h.w, spec, rng);
        let b = h
            .bias
            .map(|_| p.bias(spec, layer, format!("layer{layer}.b"), spec.width, rng));
        BookLayer { w, b }
    }

    fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>, z: ArrayView2<F>) -> (Array2<F>, BookCache<F>) {
        let (a, da) = activate(cx.spec.activation, z);
        (cx.affine(self.w, self.b, a.view()), BookCache { a, da })
    }

    fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        _z: ArrayView2<F>,
        cache: &BookCache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        sink.term(self.w, GradTerm::linear(cache.a.view(), g));
        if let Some(b) = self.b {
            sink.term(b, GradTerm::Bias { grad: g });
        }
        let mut dz = cx.bwd(self.w, g);
        dz *= &cache.da;
        dz
    }
}

/// (σ(x), σ'(x)) elementwise; GELU over contiguous rows through [`Real::gelu_slices`]
/// (vectorized in f32), written straight into new memory: zeroing it first cost 2% of an
/// f32 Monte Carlo sample.
fn activate<F: Real>(
    act: crate::model::activation::Activation,
    x: ArrayView2<F>,
) -> (Array2<F>, Array2<F>) {
    if act == crate::model::activation::Activation::Gelu
        && let Some(z) = x.as_slice()
    {
        let (mut a, mut da) = (Vec::with_capacity(z.len()), Vec::with_capacity(z.len()));
        F::gelu_slices(
            z,
            &mut a.spare_capacity_mut()[..z.len()],
            &mut da.spare_capacity_mut()[..z.len()],
        );
        // SAFETY: gelu_slices wrote every element of both.
        unsafe {
            a.set_len(z.len());
            da.set_len(z.len());
        }
        let shape = |v| Array2::from_shape_vec(x.raw_dim(), v).expect("the input's shape");
        return (shape(a), shape(da));
    }
    let mut a = Array2::zeros(x.raw_dim());
    let mut da = Array2::zeros(x.raw_dim());
    Zip::from(&mut a)
        .and(&mut da)
        .and(&x)
        .for_each(|a, d, &z| (*a, *d) = act.f_df(z));
    (a, da)
}
