//! The Transformer's theory at infinite width, leading order in 1/n (the paper's §I 1,
//! equations (1.35)–(1.86) forward and (1.98)–(1.182) backward; SPEC §4), and the book's
//! plain MLP in `mlp` mode (PDLT §4, §8): [`predict`] runs the one walk ([`super::walk`]) over
//! the blocks and turns it into rows with their errors.
//!
//! The blocks live in one file each, as in `src/model/`: [`super::stem`], [`super::ln`],
//! [`super::attention`], [`super::mlp`], [`super::residual`], [`super::head`] and the book's
//! [`super::plain`] layer; each holds its kernel map and its NTK transport on the one
//! [`super::state::State`].

use super::TheoryError;
use super::state::Ctx;
use super::walk::{walk, walk_with};
use crate::config::ModelSpec;
use crate::model::Probe;
use crate::stats::Row;

pub use super::attention::{AttnStats, Draws, LogitSampler};
pub use super::ln::layer_norm;
pub use super::residual::residual;
pub use super::rows::{PRow, prediction_rows};
pub use super::state::KernelState;
pub use super::stem::input_kernel;
pub use super::walk::{LayerPrediction, Prediction};

/// Runs the forward recursion alone (no NTK) from the input kernel G⁰ through the head.
pub fn forward(
    spec: &ModelSpec,
    g0: &KernelState,
    sampler: LogitSampler,
) -> Result<Prediction, TheoryError> {
    Ok(walk(&Ctx::new(spec, sampler, false)?, g0)?.prediction)
}

/// Options of [`predict`].
#[derive(Clone, Copy, Debug)]
pub struct TheoryOptions {
    /// Logit-field draws per attention block (`theory.logit_samples`).
    pub logit_samples: usize,
    /// Independent batches for the inner Monte Carlo error (`theory.error_batches`).
    pub error_batches: usize,
    pub seed: u64,
    /// Also predict the backward rows (grad2, ntk_<group>, ntk, ntk_total), as the Monte
    /// Carlo does unless `run.backward = "none"`.
    pub backward: bool,
    /// With `backward`: also every pair of outputs, as the Monte Carlo's `pairs` mode.
    pub pairs: bool,
    /// `theory.order`: 0, or 1 for the O(1/n) corrections ([`super::finite`]).
    pub order: u8,
}

/// The theory's rows for a probe set, with `source = theory`.
///
/// Values come from one run with all `logit_samples` draws. When attention is sampled, the
/// error of every row is estimated from `error_batches` further independent runs with
/// `logit_samples / error_batches` draws each: the standard deviation of a batch result,
/// divided by sqrt(batches), is the standard error of the full-sample result (batch means;
/// the recursion is nonlinear in E[ΩΩ], so the error of a block propagates into every later
/// layer, and this carries it there). Deterministic rows have stderr 0 and samples 0.
pub fn predict(
    spec: &ModelSpec,
    probe: &Probe,
    opts: TheoryOptions,
    config_name: &str,
) -> Result<(Vec<Row>, Option<usize>), TheoryError> {
    predict_with(spec, probe, opts, config_name, &|_, _| {})
}

/// [`predict`], reporting progress as (logit draws done, logit draws in all) after each walk:
/// the full walk counts `logit_samples`, each error batch its share.
pub fn predict_with(
    spec: &ModelSpec,
    probe: &Probe,
    opts: TheoryOptions,
    config_name: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<(Vec<Row>, Option<usize>), TheoryError> {
    // The tokens the network sees: the class token's slot at t = 0 has input zero (1.8).
    let g0 = input_kernel(spec, &probe.for_model(spec))?;
    // An encoder–decoder's decoder tokens, and the encoder tokens cross-attention may see.
    let g0_dec = match (&probe.decoder, spec.has_decoder()) {
        (Some(p), true) => Some(input_kernel(spec, p)?),
        _ => None,
    };
    let decoder = g0_dec.as_ref().map(|g| (g, probe.keep.as_deref()));
    // The O(1/n) theory is not derived on an encoder–decoder: leading order (the caller
    // says so in its notes, `finite::gaps`).
    let order = if spec.has_decoder() { 0 } else { opts.order };
    let batches = opts.error_batches.max(2);
    let per_batch = (opts.logit_samples / batches).max(1);
    let total = (opts.logit_samples + batches * per_batch) as u64;
    let sampler = |samples: usize, batch: u64| LogitSampler {
        samples,
        seed: opts.seed,
        batch,
    };
    // One walk gives the forward rows and, from the same logit draws, the backward rows.
    let run = |sampler: LogitSampler| -> Result<(Prediction, Vec<PRow>), TheoryError> {
        let ctx = Ctx::new(spec, sampler, opts.backward)?.with_order(order);
        let w = walk_with(&ctx, &g0, decoder)?;
        let mut rows = prediction_rows(&w.prediction);
        if let Some(carried) = &w.ntk {
            rows.extend(super::ntk::rows(spec, carried, opts.pairs));
        }
        Ok((w.prediction, rows))
    };
    let (full, rows) = run(sampler(opts.logit_samples, 0))?;
    let sampled = full
        .layers
        .iter()
        .any(|l| l.attn.as_ref().is_some_and(|a| a.sampled));
    let mut done = opts.logit_samples as u64;
    progress(done, if sampled { total } else { done });
    let mut stderr = vec![0.0; rows.len()];
    if sampled {
        let (r, per) = (batches, per_batch);
        // Rows that do not depend on the logit draws must get an error of exactly 0.
        let mut vals = vec![Vec::with_capacity(r); rows.len()];
        for b in 1..=r {
            let (_, rb) = run(sampler(per, b as u64))?;
            done += per as u64;
            progress(done, total);
            for (k, row) in rows.iter().enumerate() {
                // A batch that diverged earlier lacks rows: its error stays NaN there.
                let v = rb
                    .get(k)
                    .filter(|x| x.observable == row.observable && x.layer == row.layer)
                    .map_or(f64::NAN, |x| x.value);
                vals[k].push(v);
            }
        }
        let rf = r as f64;
        for (se, v) in stderr.iter_mut().zip(&vals) {
            // Shifted by the first batch, so identical values give exactly 0.
            let v0 = v.first().copied().unwrap_or(0.0);
            let mean = v.iter().map(|x| x - v0).sum::<f64>() / rf;
            let var = v.iter().map(|x| (x - v0 - mean).powi(2)).sum::<f64>() / (rf - 1.0);
            *se = (var / rf).sqrt();
        }
    }
    let samples = if sampled {
        opts.logit_samples as u64
    } else {
        0
    };
    let out = rows
        .into_iter()
        .zip(stderr)
        .filter(|(r, _)| r.value.is_finite())
        .map(|(r, se)| Row {
            source: "theory".into(),
            config: config_name.to_string(),
            width: spec.width,
            heads: spec.heads,
            layer: r.layer,
            block: spec.block_name(r.layer).to_string(),
            site: r.site.to_string(),
            observable: r.observable.to_string(),
            i: r.i,
            j: r.j,
            value: r.value,
            stderr: se,
            samples,
        })
        .collect();
    Ok((out, full.diverged_at))
}
