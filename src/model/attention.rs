//! Multi-head self-attention (§I 0 C): q, k, v = Q s, K s, V s per head (1.13)–(1.15),
//! logits Ω̃ = q·k / C^a (1.16) with a = 1/2 (the paper) or 1 (μP), softmax over keys,
//! bidirectional (1.17) or causal (1.18), and r = U (Ω v) (1.19).
//! Var Q, K, V, U = C_{Q,K,V,U}/n (1.27)–(1.30); zero-initialized queries set Q = 0.
//!
//! Theory (1.61)–(1.65): logits are jointly Gaussian with covariance C_Q C_K F⊗F,
//! independent across heads; the kernel increment is C_U C_V Σ E[Ω Ω] F.
//!
//! Shapes: s, q, k, v, o are (D × n); head h owns columns h·C … (h+1)·C; sequence σ owns
//! rows σ·T … (σ+1)·T. Logits and weights are (S·H × T × T), indexed σ·H + h.

use ndarray::{Array2, Array3, ArrayView2, Axis, s};

use super::block::{Ctx, ResidualBlock};
use super::hyper::{Weight, spec_bias};
use super::init::Stream;
use super::{GradSink, GradTerm, Group, Params, Real, linalg};
use crate::config::ModelSpec;

/// The block's tensors as drawn, for the sampler and the theory (see `model::hyper`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Variance 0 with zero-initialized queries (the μP choice), C_Q/n otherwise (1.27).
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub u: Weight,
    /// C_b of the q, k, v and output biases, when the model has biases.
    pub bias: Option<f64>,
}

/// Q, K, V, U are (n × n) with Var C/n (1.27)–(1.30).
pub fn hyper(spec: &ModelSpec) -> Hyper {
    let n = spec.width;
    let w = |c: f64| Weight::scaled(spec, c, n, n);
    Hyper {
        q: w(if spec.zero_queries { 0.0 } else { spec.var.q }),
        k: w(spec.var.k),
        v: w(spec.var.v),
        u: w(spec.var.u),
        bias: spec_bias(spec),
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub u: usize,
    /// Biases of q, k, v and the output (1 × n each), when C_b > 0.
    pub bias: Option<[usize; 4]>,
    /// Causal (1.18): `model.causal` in the encoder, always in a decoder (masked
    /// self-attention, §II 2 B).
    pub causal: bool,
}

#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub q: Array2<F>,
    pub k: Array2<F>,
    pub v: Array2<F>,
    /// Ω̃, before the mask.
    pub logits: Array3<F>,
    /// Ω; zero above the diagonal when causal.
    pub attn: Array3<F>,
    /// Ω v, heads side by side (the input of U).
    pub o: Array2<F>,
}

impl ResidualBlock for Attention {
    type Cache<F: Real> = Cache<F>;

    fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> Attention {
        let h = hyper(spec);
        let mut mat = |g: Group, name: &str, w: Weight, rng: &mut Stream| {
            p.linear(g, layer, format!("block{layer}.attn.{name}"), w, spec, rng)
        };
        let q = mat(Group::Q, "q", h.q, rng);
        let k = mat(Group::K, "k", h.k, rng);
        let v = mat(Group::V, "v", h.v, rng);
        let u = mat(Group::U, "u", h.u, rng);
        let bias = h.bias.map(|_| {
            ["bq", "bk", "bv", "bu"].map(|name| {
                p.bias(
                    spec,
                    layer,
                    format!("block{layer}.attn.{name}"),
                    spec.width,
                    rng,
                )
            })
        });
        Attention {
            q,
            k,
            v,
            u,
            bias,
            causal: spec.causal,
        }
    }

    /// r (D × n) from the block input s (D × n).
    fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>, s: ArrayView2<F>) -> (Array2<F>, Cache<F>) {
        let spec = cx.spec;
        let (seqs, t) = (cx.probe.sequences, cx.probe.tokens);
        let (h_count, c) = (spec.heads, spec.channels());
        let b = |i: usize| self.bias.map(|b| b[i]);
        let [q, k, v] = cx.affine_shared([(self.q, b(0)), (self.k, b(1)), (self.v, b(2))], s);
        let scale = F::of((c as f64).powf(-spec.logit_exponent));
        let mut logits = Array3::zeros((seqs * h_count, t, t));
        let mut attn = Array3::zeros((seqs * h_count, t, t));
        let mut o = Array2::zeros(s.raw_dim());
        for sq in 0..seqs {
            let rows = s![sq * t..(sq + 1) * t, ..];
            for h in 0..h_count {
                let cols = s![.., h * c..(h + 1) * c];
                let qh = q.slice(rows).slice_move(cols);
                let kh = k.slice(rows).slice_move(cols);
                let vh = v.slice(rows).slice_move(cols);
                let idx = sq * h_count + h;
                let mut lg = logits.index_axis_mut(Axis(0), idx);
                linalg::gemm(scale, qh, kh.t(), F::zero(), &mut lg);
                let mut w = attn.index_axis_mut(Axis(0), idx);
                softmax_rows(lg.view(), &mut w, self.causal);
                let mut oh = o.slice_mut(s![sq * t..(sq + 1) * t, h * c..(h + 1) * c]);
                linalg::gemm(F::one(), w.view(), vh, F::zero(), &mut oh);
            }
        }
        let r = cx.affine(self.u, b(3), o.view());
        (
            r,
            Cache {
                q,
                k,
                v,
                logits,
                attn,
                o,
            },
        )
    }

    /// ∂f/∂s from ∂f/∂r = g; parameter terms go to `sink`.
    fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        // r = o Uᵀ + b_u
        sink.term(self.u, GradTerm::linear(cache.o.view(), g));
        let d_o = cx.bwd(self.u, g);
        let [dq, dk, dv] = mixing_backward(cx.spec, cx.probe.tokens, cache, d_o.view());
        if let Some(b) = self.bias {
            sink.term(b[3], GradTerm::Bias { grad: g });
            sink.term(b[0], GradTerm::Bias { grad: dq.view() });
            sink.term(b[1], GradTerm::Bias { grad: dk.view() });
            sink.term(b[2], GradTerm::Bias { grad: dv.view() });
        }
        sink.term(self.q, GradTerm::linear(s, dq.view()));
        sink.term(self.k, GradTerm::linear(s, dk.view()));
        sink.term(self.v, GradTerm::linear(s, dv.view()));
        let mut ds = cx.bwd(self.q, dq.view());
        cx.bwd_add(self.k, dk.view(), &mut ds);
        cx.bwd_add(self.v, dv.view(), &mut ds);
        ds
    }
}

/// (∂q, ∂k, ∂v) from ∂o, o_h = Ω_h v_h per sequence and head, through the softmax and the
/// logits Ω̃ = scale · q_h k_hᵀ (1.16)–(1.19).
fn mixing_backward<F: Real>(
    spec: &ModelSpec,
    t: usize,
    cache: &Cache<F>,
    d_o: ArrayView2<F>,
) -> [Array2<F>; 3] {
    let (h_count, c) = (spec.heads, spec.channels());
    let seqs = d_o.nrows() / t;
    let scale = F::of((c as f64).powf(-spec.logit_exponent));
    let mut dq = Array2::zeros(d_o.raw_dim());
    let mut dk = Array2::zeros(d_o.raw_dim());
    let mut dv = Array2::zeros(d_o.raw_dim());
    let mut d_attn = Array2::zeros((t, t));
    for sq in 0..seqs {
        for h in 0..h_count {
            let blk = s![sq * t..(sq + 1) * t, h * c..(h + 1) * c];
            let idx = sq * h_count + h;
            let w = cache.attn.index_axis(Axis(0), idx);
            let doh = d_o.slice(blk);
            // o_h = Ω v_h
            linalg::gemm(
                F::one(),
                doh,
                cache.v.slice(blk).t(),
                F::zero(),
                &mut d_attn.view_mut(),
            );
            linalg::gemm(F::one(), w.t(), doh, F::zero(), &mut dv.slice_mut(blk));
            // Softmax: ∂Ω̃_{tt'} = Ω_{tt'} (∂Ω_{tt'} − Σ_u Ω_{tu} ∂Ω_{tu}); masked Ω = 0.
            for (mut drow, wrow) in d_attn.rows_mut().into_iter().zip(w.rows()) {
                let dot: F = drow.iter().zip(wrow.iter()).map(|(&a, &b)| a * b).sum();
                drow.zip_mut_with(&wrow, |d, &wi| *d = wi * (*d - dot));
            }
            // Ω̃ = scale · q_h k_hᵀ
            linalg::gemm(
                scale,
                d_attn.view(),
                cache.k.slice(blk),
                F::zero(),
                &mut dq.slice_mut(blk),
            );
            linalg::gemm(
                scale,
                d_attn.t(),
                cache.q.slice(blk),
                F::zero(),
                &mut dk.slice_mut(blk),
            );
        }
    }
    [dq, dk, dv]
}

/// Row softmax of `logits` into `out`; with `causal`, key t' > query t gets weight 0 (1.18).
fn softmax_rows<F: Real>(logits: ArrayView2<F>, out: &mut ndarray::ArrayViewMut2<F>, causal: bool) {
    for (t, (lrow, mut orow)) in logits.rows().into_iter().zip(out.rows_mut()).enumerate() {
        let keys = if causal { t + 1 } else { lrow.len() };
        let max = lrow
            .iter()
            .take(keys)
            .fold(F::neg_infinity(), |m, &x| m.max(x));
        let mut sum = F::zero();
        for (j, o) in orow.iter_mut().enumerate() {
            *o = if j < keys {
                (lrow[j] - max).exp()
            } else {
                F::zero()
            };
            sum += *o;
        }
        orow.mapv_inplace(|x| x / sum);
    }
}
