//! The MLP block (§I 0 D): w = W s (1.20), r = X σ(w) (1.21), Var W = C_W/n (1.31),
//! Var X = C_X/(M n) (1.32), optional biases with variance C_b.
//! And the book's plain layer z^{ℓ+1} = b + W σ(z^ℓ) (PDLT (2.5)) for `mlp` mode.
//!
//! Theory (1.77): the kernel increment is C_X ⟨σ σ⟩ under the Gaussian of covariance
//! C_W F; the book's layer maps K → C_b + C_W ⟨σ σ⟩_K.

use ndarray::{Array2, ArrayView2, Zip};

use super::init::{self, Stream};
use super::{GradSink, GradTerm, Group, Params, Real, WeightOps, affine};
use crate::config::ModelSpec;

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

impl Mlp {
    pub fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> Mlp {
        let n = spec.width;
        let m = spec.mlp_mult * n;
        let w = p.linear(
            Group::W,
            layer,
            format!("block{layer}.mlp.w"),
            (m, n),
            spec.weight_var(spec.var.w, n),
            spec.init,
            rng,
            n,
        );
        let x = p.linear(
            Group::X,
            layer,
            format!("block{layer}.mlp.x"),
            (n, m),
            spec.weight_var(spec.var.x, m),
            spec.init,
            rng,
            m,
        );
        let (bw, bx) = if spec.has_bias() {
            let bw = p.push(
                Group::Bias,
                layer,
                format!("block{layer}.mlp.bw"),
                init::draw(1, m, spec.var.bias, spec.init, rng),
                1,
            );
            let bx = p.push(
                Group::Bias,
                layer,
                format!("block{layer}.mlp.bx"),
                init::draw(1, n, spec.var.bias, spec.init, rng),
                1,
            );
            (Some(bw), Some(bx))
        } else {
            (None, None)
        };
        Mlp { w, x, bw, bx }
    }

    pub fn forward<F: Real>(
        &self,
        spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        s: ArrayView2<F>,
    ) -> (Array2<F>, Cache<F>) {
        let w = affine(p, ops, self.w, self.bw, s);
        let act = spec.activation;
        let (a, da) = activate(act, w.view());
        let r = affine(p, ops, self.x, self.bx, a.view());
        (r, Cache { w, a, da })
    }

    pub fn backward<F: Real>(
        &self,
        _spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        sink.term(
            self.x,
            GradTerm::Linear {
                input: cache.a.view(),
                grad: g,
                scale: F::one(),
            },
        );
        if let Some(bx) = self.bx {
            sink.term(bx, GradTerm::Bias { grad: g });
        }
        let mut dw = ops.bwd(p, self.x, g);
        dw *= &cache.da;
        sink.term(
            self.w,
            GradTerm::Linear {
                input: s,
                grad: dw.view(),
                scale: F::one(),
            },
        );
        if let Some(bw) = self.bw {
            sink.term(bw, GradTerm::Bias { grad: dw.view() });
        }
        ops.bwd(p, self.w, dw.view())
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

impl BookLayer {
    pub fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> BookLayer {
        let n = spec.width;
        let w = p.linear(
            Group::W,
            layer,
            format!("layer{layer}.w"),
            (n, n),
            spec.weight_var(spec.var.w, n),
            spec.init,
            rng,
            n,
        );
        let b = spec.has_bias().then(|| {
            p.push(
                Group::Bias,
                layer,
                format!("layer{layer}.b"),
                init::draw(1, n, spec.var.bias, spec.init, rng),
                1,
            )
        });
        BookLayer { w, b }
    }

    pub fn forward<F: Real>(
        &self,
        spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        z: ArrayView2<F>,
    ) -> (Array2<F>, BookCache<F>) {
        let act = spec.activation;
        let (a, da) = activate(act, z);
        (
            affine(p, ops, self.w, self.b, a.view()),
            BookCache { a, da },
        )
    }

    pub fn backward<F: Real>(
        &self,
        _spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        _z: ArrayView2<F>,
        cache: &BookCache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        sink.term(
            self.w,
            GradTerm::Linear {
                input: cache.a.view(),
                grad: g,
                scale: F::one(),
            },
        );
        if let Some(b) = self.b {
            sink.term(b, GradTerm::Bias { grad: g });
        }
        let mut dz = ops.bwd(p, self.w, g);
        dz *= &cache.da;
        dz
    }
}

/// (σ(x), σ'(x)) elementwise.
fn activate<F: Real>(
    act: crate::model::activation::Activation,
    x: ArrayView2<F>,
) -> (Array2<F>, Array2<F>) {
    let mut a = Array2::zeros(x.raw_dim());
    let mut da = Array2::zeros(x.raw_dim());
    Zip::from(&mut a)
        .and(&mut da)
        .and(&x)
        .for_each(|a, d, &z| (*a, *d) = act.f_df(z));
    (a, da)
}
