//! One sample's observables (SPEC §2): forward kernels at every site and layer, attention
//! statistics, and in `trace` or `pairs` mode the gradient sizes and per-group NTK.

use ndarray::{Array2, Axis};
use rand::Rng;
use rand_distr::StandardNormal;

use super::ntk::NtkCollector;
use crate::config::{Backward, ModelSpec, Norm};
use crate::model::init::Stream;
use crate::model::{InnerTrace, Network, Probe, Real, Trace, WeightOps};
use crate::stats::observable::{self, AttnValues, NtkLayout, NtkPart};
use crate::stats::{Observable, Recorder, RowKey, Site};

/// The block that produces layer ℓ: stem, attn, mlp, cross or head.
pub fn block_name(spec: &ModelSpec, layer: usize) -> &'static str {
    spec.block_name(layer)
}

/// The index in `Trace::blocks` of the block that produces layer ℓ, `None` for a stem
/// (ℓ = 1, and the decoder's ℓ = B_e + 2) and the head.
fn block_index(spec: &ModelSpec, layer: usize) -> Option<usize> {
    let be = spec.num_blocks();
    match layer {
        1 => None,
        l if l <= be + 1 => Some(l - 2),
        l if spec.in_decoder(l) && l > be + 2 => Some(l - 3),
        _ => None,
    }
}

/// Draws one network's worth of statistics into `rec`.
pub fn observe<F: Real>(
    net: &Network<F>,
    probe: &Probe<F>,
    backward: Backward,
    ops: &mut dyn WeightOps<F>,
    rng: &mut Stream,
    rec: &mut Recorder,
) {
    // Every row numbers the tokens the network sees (the class token is t = 0).
    let probe = &*probe.for_model(&net.spec);
    let trace = net.forward_with(probe, ops);
    forward_stats(net, probe, &trace, rec);
    if backward != Backward::None {
        rec.track_divergence = false;
        backward_stats(net, probe, &trace, backward, ops, rng, rec);
    }
}

fn forward_stats<F: Real>(
    net: &Network<F>,
    probe: &Probe<F>,
    trace: &Trace<F>,
    rec: &mut Recorder,
) {
    let spec = &net.spec;
    let t_enc = probe.tokens;
    let t_dec = probe.decoder.as_ref().map_or(t_enc, |d| d.tokens);
    let last = spec.head_layer() - 1;
    for layer in 1..=last {
        let block = block_name(spec, layer);
        // Decoder layers' rows index decoder tokens.
        let t = if spec.in_decoder(layer) { t_dec } else { t_enc };
        rec.kernel(
            layer,
            block,
            Site::Resid,
            trace.resid[layer - 1].view(),
            t,
            true,
        );
        if spec.norm == Norm::Pre
            && let Some(s) = trace.ln_at(layer)
        {
            rec.kernel(layer, block, Site::Ln, s.view(), t, false);
        }
        if let Some(b) = block_index(spec, layer) {
            let seqs = probe.sequences;
            match &trace.blocks[b].inner {
                InnerTrace::Mlp(m) => {
                    rec.kernel(layer, block, Site::Hidden, m.cache.w.view(), t, false)
                }
                InnerTrace::Attn(a) => attention_stats(
                    spec,
                    (layer, block),
                    (seqs, t, t),
                    &a.cache.logits,
                    &a.cache.attn,
                    rec,
                ),
                // (decoder query, encoder key) pairs.
                InnerTrace::Cross(c) => attention_stats(
                    spec,
                    (layer, block),
                    (seqs, t, t_enc),
                    &c.cache.logits,
                    &c.cache.attn,
                    rec,
                ),
                InnerTrace::Book(_) => {}
            }
        }
    }
    let t_out = if spec.per_sequence_head() {
        1
    } else if spec.has_decoder() {
        t_dec
    } else {
        t_enc
    };
    rec.kernel(
        spec.head_layer(),
        "head",
        Site::Resid,
        trace.out.view(),
        t_out,
        true,
    );
}

/// Logit second moments per (query, key) pair, attention entropy and max weight per query;
/// `shape` = (S, query tokens, key tokens): (S, T, T) for self-attention, (S, T_dec, T) for
/// cross-attention.
fn attention_stats<F: Real>(
    spec: &ModelSpec,
    (layer, block): (usize, &'static str),
    (seqs, t, tk): (usize, usize, usize),
    logits: &ndarray::Array3<F>,
    attn: &ndarray::Array3<F>,
    rec: &mut Recorder,
) {
    let h = spec.heads;
    let mut logit_var = Array2::<f64>::zeros((seqs * t, tk));
    for sq in 0..seqs {
        for t1 in 0..t {
            for t2 in 0..tk {
                logit_var[[sq * t + t1, t2]] = (0..h)
                    .map(|hh| logits[[sq * h + hh, t1, t2]].wide().powi(2))
                    .sum::<f64>()
                    / h as f64;
            }
        }
    }
    let (mut entropy, mut max) = (Vec::with_capacity(seqs * t), Vec::with_capacity(seqs * t));
    for sq in 0..seqs {
        for t1 in 0..t {
            let (mut ent, mut mx) = (0.0, 0.0);
            for hh in 0..h {
                let row = attn.index_axis(Axis(0), sq * h + hh);
                let row = row.row(t1);
                ent -= row
                    .iter()
                    .map(|&p| p.wide())
                    .filter(|&p| p > 0.0)
                    .map(|p| p * p.ln())
                    .sum::<f64>();
                mx += row.iter().fold(0.0f64, |m, &p| m.max(p.wide()));
            }
            entropy.push(ent / h as f64);
            max.push(mx / h as f64);
        }
    }
    // This sample's pairs in row order; the ensemble mean of these is the row's value.
    let logit_var_mean = logit_var.iter().sum::<f64>() / logit_var.len() as f64;
    let values = AttnValues {
        logit_var: logit_var.view(),
        entropy: &entropy,
        max: &max,
    };
    observable::attention_rows_qk(&values, t, logit_var_mean, |observable, i, j, v| {
        let key = RowKey {
            layer,
            block,
            site: Site::Logits,
            observable,
            i,
            j,
        };
        rec.mean_row(key, v);
    });
}

/// `trace`: one pass with a Gaussian cotangent on every output, f = n_out^{-1/2} Σ u z^L.
/// `pairs`: one pass per output δ with f_δ = n_out^{-1/2} Σ_i u_i z^L_{δ;i}.
fn backward_stats<F: Real>(
    net: &Network<F>,
    probe: &Probe<F>,
    trace: &Trace<F>,
    mode: Backward,
    ops: &mut dyn WeightOps<F>,
    rng: &mut Stream,
    rec: &mut Recorder,
) {
    let spec = &net.spec;
    let (d_out, n_out) = trace.out.dim();
    let norm = 1.0 / (n_out as f64).sqrt();
    let passes = if mode == Backward::Pairs { d_out } else { 1 };
    let mut ntk = NtkCollector::new(net, passes);
    // grad2[pass][layer − 1] = Σ_{δ', i} (∂f/∂z^ℓ)²
    let mut grad2: Vec<Vec<f64>> = Vec::new();
    // Drawn in f64 whatever F is (then rounded), so both precisions see the same cotangents.
    let cotangents: Vec<Array2<F>> = match mode {
        Backward::Trace => vec![Array2::from_shape_simple_fn((d_out, n_out), || {
            F::of(norm * rng.sample::<f64, _>(StandardNormal))
        })],
        _ => {
            let u: Vec<f64> = (0..n_out)
                .map(|_| norm * rng.sample::<f64, _>(StandardNormal))
                .collect();
            (0..d_out)
                .map(|d| {
                    let mut g = Array2::zeros((d_out, n_out));
                    g.row_mut(d)
                        .iter_mut()
                        .zip(&u)
                        .for_each(|(a, b)| *a = F::of(*b));
                    g
                })
                .collect()
        }
    };
    for g in &cotangents {
        ntk.begin_pass();
        let dz = net.backward_with(trace, probe, g.view(), &mut ntk, ops);
        grad2.push(
            dz.iter()
                .map(|a| a.iter().map(|x| x.wide() * x.wide()).sum())
                .collect(),
        );
    }
    let theta = ntk.finish();
    // In trace mode the one pass carries all D outputs: divide by D (SPEC §2).
    let per_output = if mode == Backward::Trace {
        d_out as f64
    } else {
        1.0
    };

    let layout = NtkLayout {
        pairs: mode == Backward::Pairs,
        diag_only: false,
        per_output,
    };
    for layer in 1..spec.head_layer() {
        let block = block_name(spec, layer);
        let diag: Vec<f64> = grad2.iter().map(|g| g[layer - 1]).collect();
        layout.grad2_rows(&diag, |i, j, v| {
            let key = RowKey {
                layer,
                block,
                site: Site::Resid,
                observable: Observable::Grad2,
                i,
                j,
            };
            rec.mean_row(key, v);
        });
    }

    // Θ_p of every parameter, with the paper's SGD factor λ from the model's per-block
    // source (`model::hyper`).
    let parts = net.params.list.iter().zip(&theta).map(|(p, th)| NtkPart {
        layer: p.layer,
        group: p.group,
        lambda: p.lambda(),
        theta: th,
    });
    layout.ntk_rows(
        parts,
        passes,
        spec.head_layer(),
        |layer, observable, i, j, v| {
            let key = RowKey {
                layer,
                block: block_name(spec, layer),
                site: Site::Param,
                observable,
                i,
                j,
            };
            rec.mean_row(key, v);
        },
    );
}
