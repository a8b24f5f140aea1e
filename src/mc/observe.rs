//! One sample's observables (SPEC §2): forward kernels at every site and layer, attention
//! statistics, and in `trace` or `pairs` mode the gradient sizes and per-group NTK.

use ndarray::{Array2, Axis};
use rand::Rng;
use rand_distr::StandardNormal;

use super::ntk::NtkCollector;
use crate::config::{Backward, BlockKind, HeadKind, ModelSpec, Norm};
use crate::model::init::Stream;
use crate::model::{Group, InnerTrace, Network, Probe, Trace, WeightOps};
use crate::stats::{Recorder, RowKey};

/// The block that produces layer ℓ: stem, attn, mlp or head.
pub fn block_name(spec: &ModelSpec, layer: usize) -> &'static str {
    if layer == 1 {
        "stem"
    } else if layer == spec.head_layer() {
        "head"
    } else {
        match spec.blocks[layer - 2] {
            BlockKind::Attn => "attn",
            BlockKind::Mlp => "mlp",
        }
    }
}

/// Draws one network's worth of statistics into `rec`.
pub fn observe(
    net: &Network,
    probe: &Probe,
    backward: Backward,
    ops: &mut dyn WeightOps,
    rng: &mut Stream,
    rec: &mut Recorder,
) {
    let trace = net.forward_with(probe, ops);
    forward_stats(net, probe, &trace, rec);
    if backward != Backward::None {
        rec.track_divergence = false;
        backward_stats(net, probe, &trace, backward, ops, rng, rec);
    }
}

fn forward_stats(net: &Network, probe: &Probe, trace: &Trace, rec: &mut Recorder) {
    let spec = &net.spec;
    let t = probe.tokens;
    let last = spec.num_blocks() + 1;
    for layer in 1..=last {
        let block = block_name(spec, layer);
        rec.kernel(
            layer,
            block,
            "resid",
            trace.resid[layer - 1].view(),
            t,
            true,
        );
        if spec.norm == Norm::Pre
            && let Some(s) = trace.ln_at(layer)
        {
            rec.kernel(layer, block, "ln", s.view(), t, false);
        }
        if layer >= 2 {
            match &trace.blocks[layer - 2].inner {
                InnerTrace::Mlp(m) => {
                    rec.kernel(layer, block, "hidden", m.cache.w.view(), t, false)
                }
                InnerTrace::Attn(a) => {
                    attention_stats(spec, layer, probe, &a.cache.logits, &a.cache.attn, rec)
                }
                InnerTrace::Book(_) => {}
            }
        }
    }
    let t_out = if spec.head == HeadKind::Pooled { 1 } else { t };
    rec.kernel(
        spec.head_layer(),
        "head",
        "resid",
        trace.out.view(),
        t_out,
        true,
    );
}

/// Logit second moments per (query, key) pair, attention entropy and max weight per query.
fn attention_stats(
    spec: &ModelSpec,
    layer: usize,
    probe: &Probe,
    logits: &ndarray::Array3<f64>,
    attn: &ndarray::Array3<f64>,
    rec: &mut Recorder,
) {
    let (h, t, seqs) = (spec.heads, probe.tokens, probe.sequences);
    let key = |obs: &str, i: i64, j: i64| RowKey {
        layer,
        block: "attn",
        site: "logits",
        observable: obs.to_string(),
        i,
        j,
    };
    let mut all = 0.0;
    for sq in 0..seqs {
        for t1 in 0..t {
            for t2 in 0..t {
                let v = (0..h)
                    .map(|hh| logits[[sq * h + hh, t1, t2]].powi(2))
                    .sum::<f64>()
                    / h as f64;
                all += v;
                rec.mean_row(
                    key("logit_var", (sq * t + t1) as i64, (sq * t + t2) as i64),
                    v,
                );
            }
        }
    }
    rec.mean_row(key("logit_var", -1, -1), all / (seqs * t * t) as f64);
    let (mut ent_all, mut max_all) = (0.0, 0.0);
    let mut per_query = Vec::with_capacity(seqs * t);
    for sq in 0..seqs {
        for t1 in 0..t {
            let (mut ent, mut mx) = (0.0, 0.0);
            for hh in 0..h {
                let row = attn.index_axis(Axis(0), sq * h + hh);
                let row = row.row(t1);
                ent -= row
                    .iter()
                    .filter(|&&p| p > 0.0)
                    .map(|&p| p * p.ln())
                    .sum::<f64>();
                mx += row.iter().fold(0.0f64, |m, &p| m.max(p));
            }
            per_query.push((ent / h as f64, mx / h as f64));
            ent_all += ent / h as f64;
            max_all += mx / h as f64;
        }
    }
    for (d, (e, m)) in per_query.iter().enumerate() {
        rec.mean_row(key("attn_entropy", d as i64, d as i64), *e);
        rec.mean_row(key("attn_max", d as i64, d as i64), *m);
    }
    let n = (seqs * t) as f64;
    rec.mean_row(key("attn_entropy", -1, -1), ent_all / n);
    rec.mean_row(key("attn_max", -1, -1), max_all / n);
}

/// `trace`: one pass with a Gaussian cotangent on every output, f = n_out^{-1/2} Σ u z^L.
/// `pairs`: one pass per output δ with f_δ = n_out^{-1/2} Σ_i u_i z^L_{δ;i}.
fn backward_stats(
    net: &Network,
    probe: &Probe,
    trace: &Trace,
    mode: Backward,
    ops: &mut dyn WeightOps,
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
    let cotangents: Vec<Array2<f64>> = match mode {
        Backward::Trace => vec![Array2::from_shape_simple_fn((d_out, n_out), || {
            norm * rng.sample::<f64, _>(StandardNormal)
        })],
        _ => {
            let u: Vec<f64> = (0..n_out)
                .map(|_| norm * rng.sample::<f64, _>(StandardNormal))
                .collect();
            (0..d_out)
                .map(|d| {
                    let mut g = Array2::zeros((d_out, n_out));
                    g.row_mut(d).iter_mut().zip(&u).for_each(|(a, b)| *a = *b);
                    g
                })
                .collect()
        }
    };
    for g in &cotangents {
        ntk.begin_pass();
        let dz = net.backward_with(trace, probe, g.view(), &mut ntk, ops);
        grad2.push(dz.iter().map(|a| a.iter().map(|x| x * x).sum()).collect());
    }
    let theta = ntk.finish();
    // In trace mode the one pass carries all D outputs: divide by D (SPEC §2).
    let per_output = if mode == Backward::Trace {
        d_out as f64
    } else {
        1.0
    };

    for layer in 1..=spec.num_blocks() + 1 {
        let block = block_name(spec, layer);
        let key = |obs: &str, i: i64, j: i64| RowKey {
            layer,
            block,
            site: "resid",
            observable: obs.to_string(),
            i,
            j,
        };
        let vals: Vec<f64> = grad2.iter().map(|g| g[layer - 1] / per_output).collect();
        if mode == Backward::Pairs {
            for (d, v) in vals.iter().enumerate() {
                rec.mean_row(key("grad2", d as i64, d as i64), *v);
            }
        }
        rec.mean_row(
            key("grad2", -1, -1),
            vals.iter().sum::<f64>() / passes as f64,
        );
    }

    // Sum Θ_p over the parameters of each (group, layer), and λ-weighted over each layer.
    let l_max = spec.head_layer();
    let mut by_group: Vec<((Group, usize), Array2<f64>)> = Vec::new();
    let mut by_layer: Vec<Array2<f64>> = vec![Array2::zeros((passes, passes)); l_max + 1];
    for (p, th) in net.params.list.iter().zip(&theta) {
        match by_group.iter_mut().find(|(k, _)| *k == (p.group, p.layer)) {
            Some((_, acc)) => *acc += th,
            None => by_group.push(((p.group, p.layer), th.clone())),
        }
        // The paper's SGD factors λ, from the model's per-block source (`model::hyper`).
        by_layer[p.layer].scaled_add(p.lambda(), th);
    }
    by_group.sort_by_key(|((g, l), _)| (*l, *g));
    let emit = |rec: &mut Recorder, layer: usize, obs: String, th: &Array2<f64>| {
        let block = block_name(spec, layer);
        let key = |i: i64, j: i64| RowKey {
            layer,
            block,
            site: "param",
            observable: obs.clone(),
            i,
            j,
        };
        if mode == Backward::Pairs {
            for a in 0..passes {
                for b in a..passes {
                    rec.mean_row(key(a as i64, b as i64), th[[a, b]]);
                }
            }
        }
        let diag = (0..passes).map(|a| th[[a, a]]).sum::<f64>() / passes as f64 / per_output;
        rec.mean_row(key(-1, -1), diag);
    };
    for ((g, layer), th) in &by_group {
        emit(rec, *layer, format!("ntk_{}", g.name()), th);
    }
    let mut total = Array2::zeros((passes, passes));
    for (layer, th) in by_layer.iter().enumerate().skip(1) {
        if by_group.iter().any(|((_, l), _)| *l == layer) {
            emit(rec, layer, "ntk".into(), th);
            total += th;
        }
    }
    emit(rec, l_max, "ntk_total".into(), &total);
}
