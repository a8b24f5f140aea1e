//! The head block ℓ = L (§I 0 E): z^L = W_head s (1.22) with Var C_head/n^{1+s} (1.33)/(1.34),
//! optional mean pooling over tokens (1.23), or the tied head z^L = N_rescale W_WEᵀ s (1.24)
//! with N_rescale = n^{-(1+s)/2}. In `mlp` mode it is one more book layer b + W σ(z).
//!
//! Theory (1.80)/(1.84), pooling (1.81).

use ndarray::{Array2, ArrayView2, Axis, Zip};

use super::init::{self, Stream};
use super::stem::Stem;
use super::{GradSink, GradTerm, Group, Params, Probe, Real, WeightOps, linalg};
use crate::config::{HeadKind, ModelSpec, Norm};

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
        let w = match spec.head {
            HeadKind::Tied => stem.w,
            _ => p.linear(
                Group::Head,
                layer,
                "head.w".into(),
                (spec.n_out, spec.width),
                spec.head_var(),
                spec.init,
                rng,
                spec.width,
            ),
        };
        let b = spec.has_bias().then(|| {
            p.push(
                Group::Bias,
                layer,
                "head.b".into(),
                init::draw(1, spec.out_dim(), spec.var.bias, spec.init, rng),
                1,
            )
        });
        Head { w, b }
    }

    /// z^L from s (D × n): (D × n_out), or (S × n_out) pooled.
    pub fn forward<F: Real>(
        &self,
        spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        s: ArrayView2<F>,
        probe: &Probe<F>,
    ) -> (Array2<F>, Cache<F>) {
        let input = match (spec.head, spec.norm) {
            (HeadKind::Pooled, _) => pool(s, probe.tokens),
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
            _ => ops.fwd(p, self.w, input.view()),
        };
        if let Some(b) = self.b {
            z += &p.get(b).row(0);
        }
        (z, Cache { input })
    }

    /// ∂f/∂s from ∂f/∂z^L = g.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(
        &self,
        spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        probe: &Probe<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        let d_in = match spec.head {
            HeadKind::Tied => {
                let rho = F::of(spec.tied_rescale());
                sink.term(
                    self.w,
                    GradTerm::LinearT {
                        input: cache.input.view(),
                        grad: g,
                        scale: rho,
                    },
                );
                let mut d = linalg::mm_t(g, p.get(self.w).view());
                d *= rho;
                d
            }
            _ => {
                sink.term(
                    self.w,
                    GradTerm::Linear {
                        input: cache.input.view(),
                        grad: g,
                        scale: F::one(),
                    },
                );
                ops.bwd(p, self.w, g)
            }
        };
        if let Some(b) = self.b {
            sink.term(b, GradTerm::Bias { grad: g });
        }
        match (spec.head, spec.norm) {
            (HeadKind::Pooled, _) => unpool(d_in.view(), probe.tokens),
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
