//! The stem block ℓ = 1 (§I 0 A): patchify z = W x + b_PE (1.7), or word embedding
//! z = W_WE[:, id] + b_PE (1.9), Var W = C_patch/n_in (1.25), Var W_WE = C_WE not divided
//! by the vocabulary (1.42), Var b_PE = C_PE per (token, channel) (1.37).
//! In `mlp` mode it is the book's first layer z¹ = b + W x.
//!
//! Theory: G¹ = C_patch G⁰ + C_PE δ_{t1 t2} (1.41), or C_WE G⁰ + C_PE δ (1.45).

use ndarray::{Array2, ArrayView2};

use super::init::{self, Stream};
use super::{GradSink, GradTerm, Group, Params, Probe, Real, WeightOps};
use crate::config::{ModelSpec, Norm, Stem as StemKind};

#[derive(Clone, Debug)]
pub struct Stem {
    /// (n × n_in): patchify weight, or word embedding (n × vocab).
    pub w: usize,
    /// (T × n), present when C_PE > 0.
    pub pe: Option<usize>,
    /// (1 × n): the book's first-layer bias (`mlp` mode with C_b > 0).
    pub b: Option<usize>,
}

impl Stem {
    pub fn sample(spec: &ModelSpec, params: &mut Params, rng: &mut Stream) -> Stem {
        let n = spec.width;
        let (var, fan_in) = match spec.stem {
            StemKind::Dense => (spec.weight_var(spec.var.stem, spec.n_in), spec.n_in),
            StemKind::Embedding => (spec.var.stem, 1),
        };
        // The word embedding is a lookup (and the tied head's matrix): always materialized.
        let w = match spec.stem {
            StemKind::Dense => params.linear(
                Group::Stem,
                1,
                "stem.w".into(),
                (n, spec.n_in),
                var,
                spec.init,
                rng,
                fan_in,
            ),
            StemKind::Embedding => params.push(
                Group::Stem,
                1,
                "stem.w".into(),
                init::draw(n, spec.n_in, var, spec.init, rng),
                fan_in,
            ),
        };
        let pe = (spec.var.pe > 0.0 && spec.norm != Norm::Mlp).then(|| {
            params.push(
                Group::Pe,
                1,
                "stem.pe".into(),
                init::draw(spec.tokens, n, spec.var.pe, spec.init, rng),
                1,
            )
        });
        let b = (spec.norm == Norm::Mlp && spec.has_bias()).then(|| {
            params.push(
                Group::Bias,
                1,
                "stem.b".into(),
                init::draw(1, n, spec.var.bias, spec.init, rng),
                1,
            )
        });
        Stem { w, pe, b }
    }

    /// z¹ (D × n).
    pub fn forward<F: Real>(
        &self,
        spec: &ModelSpec,
        p: &Params<F>,
        ops: &mut dyn WeightOps<F>,
        probe: &Probe<F>,
    ) -> Array2<F> {
        let mut z = match spec.stem {
            StemKind::Dense => ops.fwd(
                p,
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
        z
    }

    pub fn backward<F: Real>(
        &self,
        spec: &ModelSpec,
        probe: &Probe<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) {
        match spec.stem {
            StemKind::Dense => {
                let x = probe.x.as_ref().expect("dense stem needs vectors");
                sink.term(
                    self.w,
                    GradTerm::Linear {
                        input: x.view(),
                        grad: g,
                        scale: F::one(),
                    },
                );
            }
            StemKind::Embedding => {
                let ids = probe.ids.as_ref().expect("embedding stem needs ids");
                sink.term(self.w, GradTerm::Embedding { grad: g, ids });
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
    }
}
