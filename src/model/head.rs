//! The head block ℓ = L (§I 0 E): z^L = W_head s (1.22) with Var C_head/n^{1+s} (1.33)/(1.34),
//! optional mean pooling over tokens (1.23), or the tied head z^L = N_rescale W_WEᵀ s (1.24)
//! with N_rescale = n^{-(1+s)/2}. In `mlp` mode it is one more book layer b + W σ(z).
//!
//! Theory (1.80)/(1.84), pooling (1.81).

use ndarray::{Array2, ArrayView2, Axis, Zip};

use super::block::Ctx;
use super::hyper::{Weight, spec_bias};
use super::init::Stream;
use super::stem::Stem;
use super::{GradSink, GradTerm, Group, Params, Real, linalg};
use crate::config::{HeadKind, ModelSpec, Norm};

/// The head's tensors as drawn, for the sampler and the theory (see `model::hyper`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// W_head (n_out × n) with Var C_head/n^{1+s} (1.34); `None` for the tied head, which
    /// reuses the stem's word embedding.
    pub w: Option<Weight>,
    /// The constant the theory propagates, C_head n^{-s}: Var times the n channels of s
    /// (1.80), or N_rescale² C_WE n for the tied head (1.83)–(1.84).
    pub c_eff: f64,
    /// C_b of the output bias (1 × out_dim), when the model has biases.
    pub bias: Option<f64>,
}

pub fn hyper(spec: &ModelSpec) -> Hyper {
    let n = spec.width;
    let (w, c_eff) = match spec.head {
        HeadKind::Tied => (None, spec.tied_rescale().powi(2) * spec.var.stem * n as f64),
        _ => {
            let w = Weight {
                shape: (spec.n_out, n),
                var: spec.head_var(),
                lr_fan_in: n,
            };
            (Some(w), w.c_eff())
        }
    };
    Hyper {
        w,
        c_eff,
        bias: spec_bias(spec),
    }
}

#[derive(Clone, Debug)]
pub struct Head {
    /// (n_out × n) for dense and pooled heads; the stem's word embedding (n × vocab) when tied.
    pub w: usize,
    pub b: Option<usize>,
}

/// The head's actual input: the pooled LN output, or σ(z) in `mlp` mode.
#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub input: Array2<F>,
}

impl Head {
    pub fn sample(spec: &ModelSpec, stem: &Stem, p: &mut Params, rng: &mut Stream) -> Head {
        let layer = spec.head_layer();
        let h = hyper(spec);
        let w = match h.w {
            None => stem.w,
            Some(w) => p.linear(Group::Head, layer, "head.w".into(), w, spec, rng),
        };
        let b = h
            .bias
            .map(|_| p.bias(spec, layer, "head.b".into(), spec.out_dim(), rng));
        Head { w, b }
    }

    /// z^L from s (D × n): (D × n_out), or (S × n_out) pooled.
    pub fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>, s: ArrayView2<F>) -> (Array2<F>, Cache<F>) {
        let (spec, p) = (cx.spec, cx.params);
        let input = match (spec.head, spec.norm) {
            (HeadKind::Pooled, _) => pool(s, cx.probe.tokens),
            (HeadKind::Class, _) => s.slice(ndarray::s![..;cx.probe.tokens, ..]).to_owned(),
            (_, Norm::Mlp) => {
                let act = spec.activation;
                s.mapv(|x| act.f(x))
            }
            _ => s.to_owned(),
        };
        let mut z = match spec.head {
            HeadKind::Tied => {
                // The tied word embedding is always materialized (used twice forward).
                let mut z = linalg::mm(input.view(), p.get(self.w).view());
                z *= F::of(spec.tied_rescale());
                z
            }
            _ => cx.fwd(self.w, input.view()),
        };
        if let Some(b) = self.b {
            z += &p.get(b).row(0);
        }
        (z, Cache { input })
    }

    /// ∂f/∂s from ∂f/∂z^L = g.
    pub fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        let (spec, p) = (cx.spec, cx.params);
        let d_in = match spec.head {
            HeadKind::Tied => {
                let rho = F::of(spec.tied_rescale());
                // The [pad] column of W_WE is not a parameter (footnote 48, `stem::zero_pad`):
                // its output's cotangent does not reach the gradient. It is zero, so ∂s below
                // is the same either way.
                let masked = spec.pad_id.map(|pad| {
                    let mut m = g.to_owned();
                    m.column_mut(pad).fill(F::zero());
                    m
                });
                sink.term(
                    self.w,
                    GradTerm::LinearT {
                        input: cache.input.view(),
                        grad: masked.as_ref().map_or(g, |m| m.view()),
                        scale: rho,
                    },
                );
                let mut d = linalg::mm_t(g, p.get(self.w).view());
                d *= rho;
                d
            }
            _ => {
                sink.term(self.w, GradTerm::linear(cache.input.view(), g));
                cx.bwd(self.w, g)
            }
        };
        if let Some(b) = self.b {
            sink.term(b, GradTerm::Bias { grad: g });
        }
        match (spec.head, spec.norm) {
            (HeadKind::Pooled, _) => unpool(d_in.view(), cx.probe.tokens),
            (HeadKind::Class, _) => {
                let mut d = Array2::zeros(s.raw_dim());
                d.slice_mut(ndarray::s![..;cx.probe.tokens, ..])
                    .assign(&d_in);
                d
            }
            (_, Norm::Mlp) => {
                let act = spec.activation;
                let mut d = d_in;
                Zip::from(&mut d).and(&s).for_each(|d, &x| *d *= act.df(x));
                d
            }
            _ => d_in,
        }
    }
}

/// Mean over the T tokens of each sequence: (D × n) → (S × n).
pub fn pool<F: Real>(s: ArrayView2<F>, t: usize) -> Array2<F> {
    let seqs = s.nrows() / t;
    let mut out = Array2::zeros((seqs, s.ncols()));
    for (sq, mut row) in out.rows_mut().into_iter().enumerate() {
        let block = s.slice(ndarray::s![sq * t..(sq + 1) * t, ..]);
        row.assign(&block.mean_axis(Axis(0)).expect("T ≥ 1"));
    }
    out
}

/// The adjoint of `pool`: each token gets g/T.
fn unpool<F: Real>(g: ArrayView2<F>, t: usize) -> Array2<F> {
    let mut out = Array2::zeros((g.nrows() * t, g.ncols()));
    for (d, mut row) in out.rows_mut().into_iter().enumerate() {
        row.assign(&g.row(d / t));
        row /= F::of(t as f64);
    }
    out
}
