//! Encoder–decoder cross-attention (the paper's §II 2 B, (2.2)–(2.4)): queries from the
//! decoder's LN signal s, keys and values from the encoder's final-LN output s̃ (the block's
//! memory, `Ctx::memory`), q = Q s (2.2), k = K s̃ (2.3), v = V s̃ (2.4), logits
//! Ω̃ = q·k / C^a, a softmax over the memory tokens of the same sequence with padded memory
//! tokens masked out (`Ctx::memory_mask`), and r = U (Ω v) as in (1.19).
//! Var Q, K, V, U = C_{Q,K,V,U}/n, the same constants and groups as self-attention.
//!
//! Footnote 47: in the theory the inner products s·s of (1.61)–(1.65) become s·s̃ and s̃·s̃,
//! so the logits are jointly Gaussian with covariance C_Q C_K F_dec ⊗ F̃_enc.
//!
//! Each of K and V meets the memory once forward, Q meets s once, U meets Ω v once: the
//! conditional sampler applies to all four. The backward pass adds ∂f/∂s̃ into
//! `Ctx::memory_grad`, which the encoder stack receives from every cross-attention block.
//!
//! Shapes: s, q, o are (S·T × n); s̃, k, v are (S·T_mem × n); head h owns columns h·C …
//! (h+1)·C. Logits and weights are (S·H × T × T_mem), indexed σ·H + h.

use ndarray::{Array2, Array3, ArrayView2, Axis, s};

use super::attention::{Hyper, hyper};
use super::block::{Ctx, ResidualBlock};
use super::hyper::Weight;
use super::init::Stream;
use super::{GradSink, GradTerm, Group, Params, Real, linalg};
use crate::config::ModelSpec;

#[derive(Clone, Debug)]
pub struct CrossAttention {
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub u: usize,
    /// Biases of q, k, v and the output (1 × n each), when C_b > 0.
    pub bias: Option<[usize; 4]>,
}

#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub q: Array2<F>,
    pub k: Array2<F>,
    pub v: Array2<F>,
    /// Ω̃ before the mask, (S·H × T × T_mem).
    pub logits: Array3<F>,
    /// Ω; zero on padded memory tokens.
    pub attn: Array3<F>,
    /// Ω v, heads side by side (the input of U).
    pub o: Array2<F>,
}

/// The memory the block reads: `Ctx::memory`, which the caller must set.
fn memory<'a, F: Real>(cx: &Ctx<'a, F>) -> ArrayView2<'a, F> {
    cx.memory
        .expect("cross-attention reads the encoder's memory (Ctx::memory)")
}

impl ResidualBlock for CrossAttention {
    type Cache<F: Real> = Cache<F>;

    fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> Self {
        let h: Hyper = hyper(spec);
        let mut mat = |g: Group, name: &str, w: Weight, rng: &mut Stream| {
            p.linear(g, layer, format!("block{layer}.cross.{name}"), w, spec, rng)
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
                    format!("block{layer}.cross.{name}"),
                    spec.width,
                    rng,
                )
            })
        });
        CrossAttention { q, k, v, u, bias }
    }

    /// r (S·T × n) from the decoder's LN signal s and the memory s̃ (2.2)–(2.4).
    fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>, s: ArrayView2<F>) -> (Array2<F>, Cache<F>) {
        let spec = cx.spec;
        let mem = memory(cx);
        let seqs = cx.probe.sequences;
        let (t, tm) = (s.nrows() / seqs, mem.nrows() / seqs);
        let (h_count, c) = (spec.heads, spec.channels());
        let b = |i: usize| self.bias.map(|b| b[i]);
        let q = cx.affine(self.q, b(0), s);
        let [k, v] = cx.affine_shared([(self.k, b(1)), (self.v, b(2))], mem);
        let scale = F::of((c as f64).powf(-spec.logit_exponent));
        let mut logits = Array3::zeros((seqs * h_count, t, tm));
        let mut attn = Array3::zeros((seqs * h_count, t, tm));
        let mut o = Array2::zeros(s.raw_dim());
        for sq in 0..seqs {
            let keep = cx.memory_mask.map(|m| &m[sq * tm..(sq + 1) * tm]);
            for h in 0..h_count {
                let cols = s![.., h * c..(h + 1) * c];
                let qh = q.slice(s![sq * t..(sq + 1) * t, ..]).slice_move(cols);
                let kh = k.slice(s![sq * tm..(sq + 1) * tm, ..]).slice_move(cols);
                let vh = v.slice(s![sq * tm..(sq + 1) * tm, ..]).slice_move(cols);
                let idx = sq * h_count + h;
                let mut lg = logits.index_axis_mut(Axis(0), idx);
                linalg::gemm(scale, qh, kh.t(), F::zero(), &mut lg);
                let mut w = attn.index_axis_mut(Axis(0), idx);
                masked_softmax_rows(lg.view(), &mut w, keep);
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

    /// ∂f/∂s from ∂f/∂r = g, in the reverse order of `forward`; ∂f/∂s̃ is added into
    /// `Ctx::memory_grad` when the caller keeps one.
    fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
        cache: &Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F> {
        let mem = memory(cx);
        // r = o Uᵀ + b_u
        sink.term(self.u, GradTerm::linear(cache.o.view(), g));
        let d_o = cx.bwd(self.u, g);
        let [dq, dk, dv] = mixing_backward(cx.spec, cx.probe.sequences, cache, d_o.view());
        if let Some(b) = self.bias {
            sink.term(b[3], GradTerm::Bias { grad: g });
            sink.term(b[0], GradTerm::Bias { grad: dq.view() });
            sink.term(b[1], GradTerm::Bias { grad: dk.view() });
            sink.term(b[2], GradTerm::Bias { grad: dv.view() });
        }
        sink.term(self.q, GradTerm::linear(s, dq.view()));
        sink.term(self.k, GradTerm::linear(mem, dk.view()));
        sink.term(self.v, GradTerm::linear(mem, dv.view()));
        let ds = cx.bwd(self.q, dq.view());
        let mut dmem = cx.bwd(self.k, dk.view());
        cx.bwd_add(self.v, dv.view(), &mut dmem);
        match cx.memory_grad.as_mut() {
            Some(acc) => *acc += &dmem,
            None => cx.memory_grad = Some(dmem),
        }
        ds
    }
}

/// (∂q, ∂k, ∂v) from ∂o, o_h = Ω_h v_h per sequence and head, through the softmax and the
/// logits Ω̃ = scale · q_h k_hᵀ; Ω is (T × T_mem).
fn mixing_backward<F: Real>(
    spec: &ModelSpec,
    seqs: usize,
    cache: &Cache<F>,
    d_o: ArrayView2<F>,
) -> [Array2<F>; 3] {
    let (h_count, c) = (spec.heads, spec.channels());
    let (t, tm) = (d_o.nrows() / seqs, cache.k.nrows() / seqs);
    let scale = F::of((c as f64).powf(-spec.logit_exponent));
    let mut dq = Array2::zeros(d_o.raw_dim());
    let mut dk = Array2::zeros(cache.k.raw_dim());
    let mut dv = Array2::zeros(cache.v.raw_dim());
    let mut d_attn = Array2::zeros((t, tm));
    for sq in 0..seqs {
        for h in 0..h_count {
            let cols = h * c..(h + 1) * c;
            let dec = s![sq * t..(sq + 1) * t, cols.clone()];
            let enc = s![sq * tm..(sq + 1) * tm, cols];
            let w = cache.attn.index_axis(Axis(0), sq * h_count + h);
            let doh = d_o.slice(dec);
            // o_h = Ω v_h
            linalg::gemm(
                F::one(),
                doh,
                cache.v.slice(enc).t(),
                F::zero(),
                &mut d_attn.view_mut(),
            );
            linalg::gemm(F::one(), w.t(), doh, F::zero(), &mut dv.slice_mut(enc));
            // Softmax: ∂Ω̃_{tt'} = Ω_{tt'} (∂Ω_{tt'} − Σ_u Ω_{tu} ∂Ω_{tu}); masked Ω = 0.
            for (mut drow, wrow) in d_attn.rows_mut().into_iter().zip(w.rows()) {
                let dot: F = drow.iter().zip(wrow.iter()).map(|(&a, &b)| a * b).sum();
                drow.zip_mut_with(&wrow, |d, &wi| *d = wi * (*d - dot));
            }
            // Ω̃ = scale · q_h k_hᵀ
            linalg::gemm(
                scale,
                d_attn.view(),
                cache.k.slice(enc),
                F::zero(),
                &mut dq.slice_mut(dec),
            );
            linalg::gemm(
                scale,
                d_attn.t(),
                cache.q.slice(dec),
                F::zero(),
                &mut dk.slice_mut(enc),
            );
        }
    }
    [dq, dk, dv]
}

/// Row softmax of `logits` into `out` over the memory tokens `keep` allows (all when
/// `None`); a padded token gets weight 0. A row whose every token is padded gets all zeros
/// (its query attends to nothing), never a NaN.
fn masked_softmax_rows<F: Real>(
    logits: ArrayView2<F>,
    out: &mut ndarray::ArrayViewMut2<F>,
    keep: Option<&[bool]>,
) {
    let kept = |j: usize| keep.is_none_or(|k| k[j]);
    for (lrow, mut orow) in logits.rows().into_iter().zip(out.rows_mut()) {
        let max = lrow
            .iter()
            .enumerate()
            .filter(|(j, _)| kept(*j))
            .fold(F::neg_infinity(), |m, (_, &x)| m.max(x));
        let mut sum = F::zero();
        for (j, o) in orow.iter_mut().enumerate() {
            *o = if kept(j) {
                (lrow[j] - max).exp()
            } else {
                F::zero()
            };
            sum += *o;
        }
        if sum > F::zero() {
            orow.mapv_inplace(|x| x / sum);
        }
    }
}
