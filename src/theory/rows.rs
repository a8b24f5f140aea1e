//! The theory's rows before the error and the labels are attached, in the Monte Carlo
//! recorder's order.

use super::attention::AttnStats;
use super::state::KernelState;
use super::walk::Prediction;
use crate::stats::observable::{self, AttnValues, KernelSink};
use crate::stats::{Observable, Site};

/// A theory row before the error and the labels are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct PRow {
    pub layer: usize,
    pub site: Site,
    pub observable: Observable,
    pub i: i64,
    pub j: i64,
    pub value: f64,
}

/// The theory's kernel rows: plain values, `corr_offdiag` the mean of the predicted
/// entries' ratios.
struct ValueKernel<'a> {
    out: &'a mut Vec<PRow>,
    layer: usize,
    site: Site,
}

impl ValueKernel<'_> {
    fn push(&mut self, observable: Observable, i: i64, j: i64, value: f64) {
        self.out.push(PRow {
            layer: self.layer,
            site: self.site,
            observable,
            i,
            j,
            value,
        });
    }
}

impl KernelSink for ValueKernel<'_> {
    type Entry = f64;
    fn kernel(&mut self, i: usize, j: usize, value: f64) -> f64 {
        self.push(Observable::Kernel, i as i64, j as i64, value);
        value
    }
    fn summary(&mut self, obs: Observable, value: f64) {
        self.push(obs, -1, -1, value);
    }
    fn corr(&mut self, pairs: Vec<(f64, f64, f64)>) {
        let v = observable::corr_mean(pairs.into_iter());
        self.push(Observable::CorrOffdiag, -1, -1, v);
    }
}

/// The kernel rows of one site, in the Monte Carlo recorder's order
/// ([`observable::kernel_rows`]).
pub(crate) fn kernel_rows(out: &mut Vec<PRow>, layer: usize, site: Site, k: &KernelState) {
    observable::kernel_rows(&mut ValueKernel { out, layer, site }, k.g.view(), k.tokens);
}

/// The attention rows of one block ([`observable::attention_rows`]); the `logit_var`
/// summary is the mean of the predicted D × T matrix.
pub(crate) fn attn_rows(out: &mut Vec<PRow>, layer: usize, a: &AttnStats) {
    let values = AttnValues {
        logit_var: a.logit_var.view(),
        entropy: &a.entropy,
        max: &a.max,
    };
    let mean = a.logit_var.mean().unwrap_or(0.0);
    observable::attention_rows(&values, mean, |observable, i, j, value| {
        out.push(PRow {
            layer,
            site: Site::Logits,
            observable,
            i,
            j,
            value,
        })
    });
}

/// Every row of a prediction, layer by layer, in a fixed order (so that independent error
/// batches line up row for row).
/// A cross-attention block's rows: as [`attn_rows`], with the `logit_var` entries indexed
/// (decoder query i = σ·T_dec + t, encoder key j = σ·T_enc + t') (docs/architecture.md).
pub(crate) fn cross_rows(
    out: &mut Vec<PRow>,
    layer: usize,
    a: &AttnStats,
    (t_dec, t_enc): (usize, usize),
) {
    let mut push = |observable, i: i64, j: i64, value| {
        out.push(PRow {
            layer,
            site: Site::Logits,
            observable,
            i,
            j,
            value,
        })
    };
    for q in 0..a.logit_var.nrows() {
        for tk in 0..t_enc {
            let key = (q / t_dec) * t_enc + tk;
            push(
                Observable::LogitVar,
                q as i64,
                key as i64,
                a.logit_var[[q, tk]],
            );
        }
    }
    push(
        Observable::LogitVar,
        -1,
        -1,
        a.logit_var.mean().unwrap_or(0.0),
    );
    for (q, (e, m)) in a.entropy.iter().zip(&a.max).enumerate() {
        push(Observable::AttnEntropy, q as i64, q as i64, *e);
        push(Observable::AttnMax, q as i64, q as i64, *m);
    }
    push(
        Observable::AttnEntropy,
        -1,
        -1,
        observable::mean_in_order(&a.entropy),
    );
    push(
        Observable::AttnMax,
        -1,
        -1,
        observable::mean_in_order(&a.max),
    );
}

pub fn prediction_rows(p: &Prediction) -> Vec<PRow> {
    let mut out = Vec::new();
    for l in &p.layers {
        kernel_rows(&mut out, l.layer, Site::Resid, &l.resid);
        if let Some(f) = &l.ln {
            kernel_rows(&mut out, l.layer, Site::Ln, f);
        }
        if let Some(h) = &l.hidden {
            kernel_rows(&mut out, l.layer, Site::Hidden, h);
        }
        match (&l.attn, l.cross) {
            (Some(a), Some(tokens)) => cross_rows(&mut out, l.layer, a, tokens),
            (Some(a), None) => attn_rows(&mut out, l.layer, a),
            _ => {}
        }
        if let Some(v) = &l.vertex {
            for (a, (fl, ku)) in v.iter().enumerate() {
                let (i, j) = (a as i64, a as i64);
                let rows = [(Observable::Fluct, Some(*fl)), (Observable::Kurtosis, *ku)];
                for (observable, value) in rows.into_iter().filter_map(|(o, v)| v.map(|v| (o, v))) {
                    out.push(PRow {
                        layer: l.layer,
                        site: Site::Resid,
                        observable,
                        i,
                        j,
                        value,
                    });
                }
            }
        }
    }
    out
}
