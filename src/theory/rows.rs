//! The theory's rows before the error and the labels are attached, in the Monte Carlo
//! recorder's order.

use super::attention::AttnStats;
use super::state::KernelState;
use super::walk::Prediction;

/// A theory row before the error and the labels are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct PRow {
    pub layer: usize,
    pub site: &'static str,
    pub observable: String,
    pub i: i64,
    pub j: i64,
    pub value: f64,
}

/// The kernel rows of one site, in the Monte Carlo recorder's order: `kernel` for i ≤ j,
/// `kernel_diag`, `kernel_offdiag`, `corr_offdiag` (a ratio of the kernel's entries, as the
/// MC's ratio of means), `kernel_cross`.
pub(crate) fn kernel_rows(out: &mut Vec<PRow>, layer: usize, site: &'static str, k: &KernelState) {
    let d = k.len();
    let mut push = |obs: &str, i: i64, j: i64, value: f64| {
        out.push(PRow {
            layer,
            site,
            observable: obs.to_string(),
            i,
            j,
            value,
        })
    };
    for i in 0..d {
        for j in i..d {
            push("kernel", i as i64, j as i64, k.g[[i, j]]);
        }
    }
    let mean = |pred: &dyn Fn(usize, usize) -> bool| {
        let (mut s, mut c) = (0.0, 0usize);
        for i in 0..d {
            for j in 0..d {
                if pred(i, j) {
                    s += k.g[[i, j]];
                    c += 1;
                }
            }
        }
        (c > 0).then(|| s / c as f64)
    };
    if let Some(v) = mean(&|i, j| i == j) {
        push("kernel_diag", -1, -1, v);
    }
    if let Some(v) = mean(&|i, j| i != j && k.same_seq(i, j)) {
        push("kernel_offdiag", -1, -1, v);
        let pairs: Vec<f64> = (0..d)
            .flat_map(|i| (i + 1..d).map(move |j| (i, j)))
            .filter(|&(i, j)| k.same_seq(i, j))
            .map(|(i, j)| k.g[[i, j]] / (k.g[[i, i]] * k.g[[j, j]]).sqrt())
            .collect();
        push(
            "corr_offdiag",
            -1,
            -1,
            pairs.iter().sum::<f64>() / pairs.len() as f64,
        );
    }
    if let Some(v) = mean(&|i, j| !k.same_seq(i, j)) {
        push("kernel_cross", -1, -1, v);
    }
}

pub(crate) fn attn_rows(out: &mut Vec<PRow>, layer: usize, a: &AttnStats, tokens: usize) {
    let d = a.entropy.len();
    let mut push = |obs: &str, i: usize, j: usize, value: f64, summary: bool| {
        let (i, j) = if summary {
            (-1, -1)
        } else {
            (i as i64, j as i64)
        };
        out.push(PRow {
            layer,
            site: "logits",
            observable: obs.to_string(),
            i,
            j,
            value,
        })
    };
    for q in 0..d {
        for tk in 0..tokens {
            push(
                "logit_var",
                q,
                (q / tokens) * tokens + tk,
                a.logit_var[[q, tk]],
                false,
            );
        }
    }
    push("logit_var", 0, 0, a.logit_var.mean().unwrap_or(0.0), true);
    for q in 0..d {
        push("attn_entropy", q, q, a.entropy[q], false);
        push("attn_max", q, q, a.max[q], false);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    push("attn_entropy", 0, 0, mean(&a.entropy), true);
    push("attn_max", 0, 0, mean(&a.max), true);
}

/// Every row of a prediction, layer by layer, in a fixed order (so that independent error
/// batches line up row for row).
pub fn prediction_rows(p: &Prediction) -> Vec<PRow> {
    let mut out = Vec::new();
    for l in &p.layers {
        kernel_rows(&mut out, l.layer, "resid", &l.resid);
        if let Some(f) = &l.ln {
            kernel_rows(&mut out, l.layer, "ln", f);
        }
        if let Some(h) = &l.hidden {
            kernel_rows(&mut out, l.layer, "hidden", h);
        }
        if let Some(a) = &l.attn {
            attn_rows(&mut out, l.layer, a, l.resid.tokens);
        }
        if let Some(v) = &l.vertex {
            for (a, (fl, ku)) in v.iter().enumerate() {
                let (i, j) = (a as i64, a as i64);
                for (obs, value) in [("fluct", *fl), ("kurtosis", *ku)] {
                    out.push(PRow {
                        layer: l.layer,
                        site: "resid",
                        observable: obs.to_string(),
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
