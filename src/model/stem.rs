//! The stem block ℓ = 1 (§I 0 A): patchify z = W x + b_PE (1.7), or word embedding
//! z = W_WE[:, id] + b_PE (1.9), Var W = C_patch/n_in (1.25), Var W_WE = C_WE not divided
//! by the vocabulary (1.42), Var b_PE = C_PE per (token, channel) (1.37).
//! In `mlp` mode it is the book's first layer z¹ = b + W x. With a [pad] token
//! (`ModelSpec::pad_id`, footnote 48) the column W_WE[:, pad] is zero and not a parameter.
//!
//! Theory: G¹ = C_patch G⁰ + C_PE δ_{t1 t2} (1.41), or C_WE G⁰ + C_PE δ (1.45).

use ndarray::{Array2, ArrayView2, Axis, concatenate, s};

use super::block::Ctx;
use super::hyper::{Weight, spec_bias};
use super::init::Stream;
use super::{GradSink, GradTerm, Group, Params, Probe, Real};
use crate::config::{ModelSpec, Norm, Stem as StemKind};

/// The stem's tensors as drawn, for the sampler and the theory (see `model::hyper`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Patchify (n × n_in) with Var C_patch/n_in (1.25), or the word embedding (n × vocab)
    /// with Var C_WE (1.42), a lookup whose SGD factor is 1.
    pub w: Weight,
    /// Var C_PE of the positional embedding (T × n) (1.37); `None` when C_PE = 0 and always
    /// in `mlp` mode (the book's network has no positions).
    pub pe: Option<f64>,
    /// C_b of the book's first-layer bias (`mlp` mode only).
    pub bias: Option<f64>,
    /// Var C_cls of the class token c (1 × n) (1.8), when the model has one.
    pub cls: Option<f64>,
}

pub fn hyper(spec: &ModelSpec) -> Hyper {
    let n = spec.width;
    let mlp_mode = spec.norm == Norm::Mlp;
    Hyper {
        w: match spec.stem {
            StemKind::Dense => Weight::scaled(spec, spec.var.stem, n, spec.n_in),
            StemKind::Embedding => Weight::lookup(spec.var.stem, n, spec.n_in),
        },
        pe: (spec.var.pe > 0.0 && !mlp_mode).then_some(spec.var.pe),
        bias: spec_bias(spec).filter(|_| mlp_mode),
        cls: spec.class_token.then_some(spec.var.cls),
    }
}

#[derive(Clone, Debug)]
pub struct Stem {
    /// (n × n_in): patchify weight, or word embedding (n × vocab).
    pub w: usize,
    /// (T × n), present when C_PE > 0.
    pub pe: Option<usize>,
    /// (1 × n): the book's first-layer bias (`mlp` mode with C_b > 0).
    pub b: Option<usize>,
    /// (1 × n): the class token c, added at t = 0 of every sequence (1.8).
    pub cls: Option<usize>,
}

impl Stem {
    pub fn sample(spec: &ModelSpec, params: &mut Params, rng: &mut Stream) -> Stem {
        let h = hyper(spec);
        // The word embedding is a lookup (and the tied head's matrix): always materialized.
        let w = match spec.stem {
            StemKind::Dense => params.linear(Group::Stem, 1, "stem.w".into(), h.w, spec, rng),
            StemKind::Embedding => params.table(Group::Stem, 1, "stem.w".into(), h.w, spec, rng),
        };
        // The [pad] column is drawn with the others (the stream is unchanged), then zeroed.
        zero_pad(spec, w, params);
        let pe = h.pe.map(|var| {
            // One row per token the network sees: the class token has its own b^PE_0 (1.8).
            let table = Weight::lookup(var, spec.seq_len(), spec.width);
            params.table(Group::Pe, 1, "stem.pe".into(), table, spec, rng)
        });
        let b = h
            .bias
            .map(|_| params.bias(spec, 1, "stem.b".into(), spec.width, rng));
        let cls = h.cls.map(|var| {
            let c = Weight::lookup(var, 1, spec.width);
            params.table(Group::Cls, 1, "stem.cls".into(), c, spec, rng)
        });
        Stem { w, pe, b, cls }
    }

    /// z¹ (D × n).
    pub fn forward<F: Real>(&self, cx: &mut Ctx<'_, F>) -> Array2<F> {
        let (spec, p, probe) = (cx.spec, cx.params, cx.probe);
        let mut z = match spec.stem {
            StemKind::Dense => cx.fwd(
                self.w,
                probe.x.as_ref().expect("dense stem needs vectors").view(),
            ),
            StemKind::Embedding => {
                let ids = probe.ids.as_ref().expect("embedding stem needs ids");
                let w = p.get(self.w);
                let mut z = Array2::zeros((ids.len(), spec.width));
                for (mut row, &id) in z.rows_mut().into_iter().zip(ids) {
                    row.assign(&w.column(id));
                }
                z
            }
        };
        if let Some(pe) = self.pe {
            let pe = p.get(pe);
            for (d, mut row) in z.rows_mut().into_iter().enumerate() {
                row += &pe.row(d % probe.tokens);
            }
        }
        if let Some(b) = self.b {
            z += &p.get(b).row(0);
        }
        // The class slot's input is zero (`Probe::for_model`), so z_{(s,0)} = c + b^PE_0.
        if let Some(c) = self.cls {
            let c = p.get(c).row(0);
            for mut row in z.rows_mut().into_iter().step_by(probe.tokens) {
                row += &c;
            }
        }
        z
    }

    /// The encoder's and the decoder's stems of an encoder–decoder (§II 2 B): one weight W
    /// (patchify or word embedding) applied to both inputs stacked, [x; x_dec] Wᵀ, so it
    /// meets the data once forward; each side adds its own positional embedding (the
    /// decoder's `dec_pe`, T_dec × n). Returns (z_enc, z_dec) before the stems' LNs.
    pub fn forward_pair<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        dec: &Probe<F>,
        dec_pe: Option<usize>,
    ) -> (Array2<F>, Array2<F>) {
        let (spec, p, probe) = (cx.spec, cx.params, cx.probe);
        let de = probe.len();
        let z = match spec.stem {
            StemKind::Dense => {
                let x = stacked_x(probe, dec);
                cx.fwd(self.w, x.view())
            }
            StemKind::Embedding => {
                let ids = stacked_ids(probe, dec);
                let w = p.get(self.w);
                let mut z = Array2::zeros((ids.len(), spec.width));
                for (mut row, &id) in z.rows_mut().into_iter().zip(&ids) {
                    row.assign(&w.column(id));
                }
                z
            }
        };
        let mut ze = z.slice(s![..de, ..]).to_owned();
        let mut zd = z.slice(s![de.., ..]).to_owned();
        for (z, pe, t) in [
            (&mut ze, self.pe, probe.tokens),
            (&mut zd, dec_pe, dec.tokens),
        ] {
            if let Some(pe) = pe {
                let pe = p.get(pe);
                for (d, mut row) in z.rows_mut().into_iter().enumerate() {
                    row += &pe.row(d % t);
                }
            }
        }
        (ze, zd)
    }

    /// The adjoint of [`Stem::forward_pair`] for cotangents `ge` on z_enc and `gd` on
    /// z_dec: one term for W over both inputs (with a tied head, W's third use is the
    /// head's term), one per positional embedding.
    pub fn backward_pair<F: Real>(
        &self,
        cx: &Ctx<'_, F>,
        dec: &Probe<F>,
        dec_pe: Option<usize>,
        ge: ArrayView2<F>,
        gd: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) {
        let (spec, probe) = (cx.spec, cx.probe);
        let g = concatenate![Axis(0), ge, gd];
        match spec.stem {
            StemKind::Dense => {
                let x = stacked_x(probe, dec);
                sink.term(self.w, GradTerm::linear(x.view(), g.view()));
            }
            StemKind::Embedding => {
                let ids = stacked_ids(probe, dec);
                lookup_term(spec, self.w, g.view(), &ids, sink);
            }
        }
        for (pe, grad, tokens) in [(self.pe, ge, probe.tokens), (dec_pe, gd, dec.tokens)] {
            if let Some(pe) = pe {
                sink.term(pe, GradTerm::Positional { grad, tokens });
            }
        }
    }

    pub fn backward<F: Real>(
        &self,
        cx: &Ctx<'_, F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) {
        let (spec, probe) = (cx.spec, cx.probe);
        match spec.stem {
            StemKind::Dense => {
                let x = probe.x.as_ref().expect("dense stem needs vectors");
                sink.term(self.w, GradTerm::linear(x.view(), g));
            }
            StemKind::Embedding => {
                let ids = probe.ids.as_ref().expect("embedding stem needs ids");
                lookup_term(spec, self.w, g, ids, sink);
            }
        }
        if let Some(pe) = self.pe {
            sink.term(
                pe,
                GradTerm::Positional {
                    grad: g,
                    tokens: probe.tokens,
                },
            );
        }
        if let Some(b) = self.b {
            sink.term(b, GradTerm::Bias { grad: g });
        }
        // ∂c = Σ_s G_{(s,0)}: a bias over the class rows only.
        if let Some(c) = self.cls {
            let rows = g.slice_move(ndarray::s![..;probe.tokens, ..]);
            sink.term(c, GradTerm::Bias { grad: rows });
        }
    }
}

/// Zeroes the [pad] token's column W_WE[:, pad] of the word embedding `w` when the model
/// has one (`ModelSpec::pad_id`, the paper's footnote 48: BART zero-initializes it, as
/// PyTorch's `padding_idx`). It is not a parameter: [`lookup_term`] and the tied head give
/// it no gradient, so it stays zero under training.
pub fn zero_pad<F: Real>(spec: &ModelSpec, w: usize, params: &mut Params<F>) {
    if let (StemKind::Embedding, Some(pad)) = (spec.stem, spec.pad_id) {
        params.list[w].value.column_mut(pad).fill(F::zero());
    }
}

/// The lookup's gradient term, ∂W[:, id_δ] += G_δ, without the rows that read the frozen
/// [pad] column (footnote 48): it is not a parameter, so it gets no gradient and adds
/// nothing to ntk_stem.
fn lookup_term<F: Real>(
    spec: &ModelSpec,
    w: usize,
    grad: ArrayView2<F>,
    ids: &[usize],
    sink: &mut impl GradSink<F>,
) {
    match spec.pad_id.filter(|p| ids.contains(p)) {
        None => sink.term(w, GradTerm::Embedding { grad, ids }),
        Some(pad) => {
            let rows: Vec<usize> = (0..ids.len()).filter(|&d| ids[d] != pad).collect();
            let kept = grad.select(Axis(0), &rows);
            let kept_ids: Vec<usize> = rows.iter().map(|&d| ids[d]).collect();
            sink.term(
                w,
                GradTerm::Embedding {
                    grad: kept.view(),
                    ids: &kept_ids,
                },
            );
        }
    }
}

/// The encoder's input vectors above the decoder's, (D + D_dec) × n_in.
fn stacked_x<F: Real>(enc: &Probe<F>, dec: &Probe<F>) -> Array2<F> {
    let (xe, xd) = (
        enc.x.as_ref().expect("dense stem needs vectors"),
        dec.x.as_ref().expect("dense stem needs decoder vectors"),
    );
    concatenate![Axis(0), xe.view(), xd.view()]
}

/// The encoder's ids, then the decoder's.
fn stacked_ids<F>(enc: &Probe<F>, dec: &Probe<F>) -> Vec<usize> {
    let (ie, id) = (
        enc.ids.as_ref().expect("embedding stem needs ids"),
        dec.ids.as_ref().expect("embedding stem needs decoder ids"),
    );
    ie.iter().chain(id).copied().collect()
}
