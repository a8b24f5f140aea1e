//! Turning one sample's forward/backward pass into slots, and slots into rows.
//!
//! The same code that fills a sample's slots also describes, on the first sample, how each
//! output row is computed from slot means ([`Recipe`]), so the two cannot drift apart.

use ndarray::ArrayView2;

use super::accumulate::Accumulator;
use super::csv::Row;
use super::observable::{self, KernelSink, Observable, Site};
use crate::model::{Real, linalg};

/// Where a row lives: (layer, block, site, observable, i, j) of SPEC §3.
#[derive(Clone, Debug, PartialEq)]
pub struct RowKey {
    pub layer: usize,
    pub block: &'static str,
    pub site: Site,
    pub observable: Observable,
    pub i: i64,
    pub j: i64,
}

/// How a row's value and error follow from slot means.
#[derive(Clone, Debug)]
pub enum Recipe {
    /// The mean of one slot.
    Mean(usize),
    /// mean over pairs of G_ij / sqrt(G_ii G_jj), a ratio of ensemble means; slots
    /// (ij, ii, jj).
    Corr(Vec<(usize, usize, usize)>),
    /// width · (E[m2²] − E[m2]²): slots (m2, m2²).
    Fluct { m2: usize, m2sq: usize, width: f64 },
    /// E[m4] / (3 E[m2]²) − 1: slots (m2, m4).
    Kurtosis { m2: usize, m4: usize },
}

/// Collects one sample's slot values; on request also the row recipes.
pub struct Recorder {
    pub values: Vec<f64>,
    /// `Some` while describing the layout (first sample only).
    pub rows: Option<Vec<(RowKey, Recipe)>>,
    /// The smallest layer with a non-finite forward slot.
    pub diverged_at: Option<usize>,
    /// Off during the backward pass: an overflow there propagates to every layer and says
    /// nothing about where the forward signal diverged.
    pub track_divergence: bool,
}

impl Recorder {
    pub fn new(describe: bool) -> Self {
        Recorder {
            values: Vec::new(),
            rows: describe.then(Vec::new),
            diverged_at: None,
            track_divergence: true,
        }
    }

    /// Stores one value and returns its slot.
    pub fn slot(&mut self, layer: usize, v: f64) -> usize {
        // A value whose square overflows (|v| > ~1.3e154) is as lost as an inf: the
        // accumulator's Σx² becomes inf and the row's standard error undefined.
        if !(v * v).is_finite() && self.track_divergence {
            self.diverged_at = Some(self.diverged_at.map_or(layer, |d| d.min(layer)));
        }
        self.values.push(v);
        self.values.len() - 1
    }

    pub fn row(&mut self, key: RowKey, recipe: Recipe) {
        if let Some(rows) = &mut self.rows {
            rows.push((key, recipe));
        }
    }

    /// A slot that is also its own row.
    pub fn mean_row(&mut self, key: RowKey, v: f64) -> usize {
        let s = self.slot(key.layer, v);
        self.row(key, Recipe::Mean(s));
        s
    }

    /// The kernel G_{δ1δ2} = (1/w) Σ_i z_{δ1 i} z_{δ2 i} of a site (rows are the D probe
    /// tokens, T per sequence), its summaries, and, with `per_token`, the per-token
    /// `fluct` and `kurtosis` (SPEC §2).
    pub fn kernel<F: Real>(
        &mut self,
        layer: usize,
        block: &'static str,
        site: Site,
        z: ArrayView2<F>,
        t: usize,
        per_token: bool,
    ) {
        let d = z.nrows();
        let w = z.ncols() as f64;
        let g = linalg::gram(z).mapv(|x| x.wide() / w);
        let key = |observable: Observable, i: i64, j: i64| RowKey {
            layer,
            block,
            site,
            observable,
            i,
            j,
        };
        let idx = observable::kernel_rows(
            &mut SlotKernel {
                rec: self,
                layer,
                block,
                site,
            },
            g.view(),
            t,
        );
        if per_token {
            for i in 0..d {
                let m2 = idx[i * d + i];
                let m2sq = self.slot(layer, g[[i, i]] * g[[i, i]]);
                let m4 = self.slot(
                    layer,
                    z.row(i).iter().map(|x| x.wide().powi(4)).sum::<f64>() / w,
                );
                self.row(
                    key(Observable::Fluct, i as i64, i as i64),
                    Recipe::Fluct { m2, m2sq, width: w },
                );
                self.row(
                    key(Observable::Kurtosis, i as i64, i as i64),
                    Recipe::Kurtosis { m2, m4 },
                );
            }
        }
    }
}

/// The Monte Carlo's kernel rows: every `kernel` entry is a slot of its own, the summaries
/// are this sample's means, and `corr_offdiag` is a ratio of the entries' ensemble means.
struct SlotKernel<'a> {
    rec: &'a mut Recorder,
    layer: usize,
    block: &'static str,
    site: Site,
}

impl SlotKernel<'_> {
    fn key(&self, observable: Observable, i: i64, j: i64) -> RowKey {
        RowKey {
            layer: self.layer,
            block: self.block,
            site: self.site,
            observable,
            i,
            j,
        }
    }
}

impl KernelSink for SlotKernel<'_> {
    type Entry = usize;
    fn kernel(&mut self, i: usize, j: usize, value: f64) -> usize {
        let key = self.key(Observable::Kernel, i as i64, j as i64);
        self.rec.mean_row(key, value)
    }
    fn summary(&mut self, obs: Observable, value: f64) {
        let key = self.key(obs, -1, -1);
        self.rec.mean_row(key, value);
    }
    fn corr(&mut self, pairs: Vec<(usize, usize, usize)>) {
        let key = self.key(Observable::CorrOffdiag, -1, -1);
        self.rec.row(key, Recipe::Corr(pairs));
    }
}

/// Evaluates every recipe on the accumulated sums. Rows at or above a diverged layer
/// (forward) or of a diverged network at all (backward, see [`Observable::is_backward`]), and rows whose
/// value is not finite, are left out.
pub fn rows(
    rows: &[(RowKey, Recipe)],
    acc: &Accumulator,
    source: &str,
    config: &str,
    width: usize,
    heads: usize,
) -> Vec<Row> {
    let samples = acc.samples();
    rows.iter()
        .filter(|(k, _)| {
            acc.diverged_at
                .is_none_or(|d| k.layer < d && !k.observable.is_backward())
        })
        .filter_map(|(k, r)| {
            let (value, stderr) = evaluate(r, acc);
            value.is_finite().then(|| Row {
                source: source.to_string(),
                config: config.to_string(),
                width,
                heads,
                layer: k.layer,
                block: k.block.to_string(),
                site: k.site.to_string(),
                observable: k.observable.to_string(),
                i: k.i,
                j: k.j,
                value,
                stderr,
                samples,
            })
        })
        .collect()
}

fn evaluate(r: &Recipe, acc: &Accumulator) -> (f64, f64) {
    match r {
        Recipe::Mean(s) => (acc.mean(*s), acc.stderr(*s)),
        Recipe::Corr(pairs) => acc.jackknife(|m| {
            observable::corr_mean(pairs.iter().map(|&(ij, ii, jj)| (m(ij), m(ii), m(jj))))
        }),
        Recipe::Fluct { m2, m2sq, width } => {
            acc.jackknife(|m| width * (m(*m2sq) - m(*m2) * m(*m2)))
        }
        Recipe::Kurtosis { m2, m4 } => acc.jackknife(|m| m(*m4) / (3.0 * m(*m2) * m(*m2)) - 1.0),
    }
}
