//! The forward kernel recursion of a Transformer at infinite width, leading order in 1/n
//! (the paper's §I 1, equations (1.35)–(1.86); SPEC §4), and the book's plain MLP in `mlp`
//! mode (PDLT §4; [`super::book`]).
//!
//! The state is the D×D kernel of the residual stream over the whole probe set
//! ([`KernelState`], D = S·T, δ = sequence·T + token), cross-sequence entries included: the
//! weights and the positional embedding are shared, so F_{(α1;t)(α2;t')} ≠ 0 for α1 ≠ α2.
//! Every block map takes a state and returns one:
//!
//! - stem (1.41)/(1.45): G¹ = C_stem G⁰ + C_PE δ_{t1 t2} (no δ_{α1 α2}: the PE is shared);
//! - LayerNorm (1.53): F = G_12 / sqrt((G_11 + ε)(G_22 + ε));
//! - MLP (1.77): ΔG = C_X ⟨σσ⟩ under the Gaussian of covariance C_W F (the `hidden` site);
//! - MHSA (1.61)–(1.65): ΔG = C_U C_V Σ_{t1',t2'} E[Ω_{t1 t1'} Ω_{t2 t2'}] F_{t1' t2'} with
//!   the logits jointly Gaussian of covariance C_Q C_K F_{t1 t2} F_{t1' t2'}, independent
//!   across heads, computed by sampling the logit field ([`LogitSampler`]);
//! - residual add: G' = ξ² G + γ² ΔG. The cross term 2ξγ E[z R] vanishes at leading order
//!   because R ends in a fresh mean-zero weight (U or X) that is independent of z (notes
//!   §1.5; the same argument as (1.62) for E[r] = 0). Post-LN applies the LN map after the
//!   add; `none` feeds G itself to the branch;
//! - head (1.80)/(1.81)/(1.84): G^L = C_head n^{-s} F (dense), its token average (pooled),
//!   or C_WE n^{-s} F (tied; the footnote-19 contact term is ignored, as in (1.84)).
//!
//! Constants are the *effective* ones at the configured width: C_eff = (weight variance) ×
//! (fan-in), which is the C of (1.25)–(1.33) in the default `fan_in` variance mode and
//! C_abs·fan-in in the `absolute` (standard-parameterization) mode.

use super::TheoryError;
use super::book::Mlp as BookMlp;
use super::gauss::{sigma2, sigma4};
use super::head::tied_contact;
use super::plain::book_layer;
use super::state::Consts;
use crate::config::{BlockKind, HeadKind, ModelSpec, Norm};
use crate::model::Probe;
use crate::stats::Row;

pub use super::attention::{AttnStats, Draws, LogitSampler, attn_branch, attn_branch_draws};
pub use super::head::head;
pub use super::ln::layer_norm;
pub use super::mlp::mlp_branch;
pub use super::residual::residual;
pub use super::rows::{PRow, prediction_rows};
pub use super::state::KernelState;
pub use super::stem::{input_kernel, stem};

/// What the theory predicts at one layer ℓ.
#[derive(Clone, Debug)]
pub struct LayerPrediction {
    pub layer: usize,
    /// z^ℓ (the head output at ℓ = L).
    pub resid: KernelState,
    /// s^ℓ = LN(z^ℓ), `pre` mode, ℓ ≤ B+1.
    pub ln: Option<KernelState>,
    /// The MLP preactivation of the block that produces ℓ.
    pub hidden: Option<KernelState>,
    pub attn: Option<AttnStats>,
    /// Per token (fluct, kurtosis) from the four-point vertex (`mlp` mode only).
    pub vertex: Option<Vec<(f64, f64)>>,
}

/// The whole forward prediction; `diverged_at` is the first non-finite layer, if any
/// (the layers before it are kept).
#[derive(Clone, Debug)]
pub struct Prediction {
    pub layers: Vec<LayerPrediction>,
    pub diverged_at: Option<usize>,
}

fn layer(layer: usize, resid: KernelState) -> LayerPrediction {
    LayerPrediction {
        layer,
        resid,
        ln: None,
        hidden: None,
        attn: None,
        vertex: None,
    }
}

/// Runs the forward recursion from the input kernel G⁰ through the head.
pub fn forward(
    spec: &ModelSpec,
    g0: &KernelState,
    sampler: LogitSampler,
) -> Result<Prediction, TheoryError> {
    if spec.norm == Norm::Mlp {
        return Ok(book_forward(spec, g0));
    }
    let mut out = Vec::with_capacity(spec.num_blocks() + 2);
    let mut z = stem(spec, g0);
    // How much of the stem's own W_WE[:, id_δ] the stream z_δ carries along the skip path
    // (for the tied head's contact term, see [`tied_contact`]).
    let mut stem_coef = vec![1.0; z.len()];
    let ln_of = |z: &KernelState| layer_norm(z, spec.ln_eps);
    let mut cur = layer(1, z.clone());
    for (b, kind) in spec.blocks.iter().enumerate() {
        let l = b + 2;
        if spec.norm == Norm::Pre {
            cur.ln = Some(ln_of(&z));
        }
        if !cur.resid.finite() {
            return Ok(Prediction {
                layers: out,
                diverged_at: Some(cur.layer),
            });
        }
        // The branch input: s = LN(z) (pre), or z itself (post, none).
        let input = cur.ln.clone().unwrap_or_else(|| z.clone());
        out.push(cur);
        let mut next = layer(l, z.clone());
        let delta = match kind {
            BlockKind::Mlp => {
                let (hidden, delta) = mlp_branch(spec, &input);
                next.hidden = Some(hidden);
                delta
            }
            BlockKind::Attn => {
                let (delta, stats) = attn_branch(spec, &input, l, sampler)?;
                next.attn = Some(stats);
                delta
            }
        };
        z = residual(spec, &z, &delta);
        stem_coef.iter_mut().for_each(|c| *c *= spec.xi);
        if spec.norm == Norm::Post {
            for (a, c) in stem_coef.iter_mut().enumerate() {
                *c /= (z.g[[a, a]] + spec.ln_eps).sqrt();
            }
            z = ln_of(&z);
        }
        next.resid = z.clone();
        cur = next;
    }
    let head_in = if spec.norm == Norm::Pre {
        for (a, c) in stem_coef.iter_mut().enumerate() {
            *c /= (z.g[[a, a]] + spec.ln_eps).sqrt();
        }
        let f = ln_of(&z);
        cur.ln = Some(f.clone());
        f
    } else {
        z
    };
    if !cur.resid.finite() {
        return Ok(Prediction {
            layers: out,
            diverged_at: Some(cur.layer),
        });
    }
    out.push(cur);
    let mut out_g = head(spec, &head_in);
    if spec.head == HeadKind::Tied {
        tied_contact(spec, g0, &stem_coef, &mut out_g);
    }
    let out_l = layer(spec.head_layer(), out_g);
    let diverged_at = (!out_l.resid.finite()).then_some(out_l.layer);
    if diverged_at.is_none() {
        out.push(out_l);
    }
    Ok(Prediction {
        layers: out,
        diverged_at,
    })
}

/// `mlp` mode: the book's kernel recursion K^{ℓ+1} = C_b + C_W ⟨σσ⟩_{K^ℓ} with the stem's
/// C_W at ℓ = 1, `variances.w` for the blocks and the head's C_head n^{-s} at ℓ = L, and per
/// token the four-point vertex V^{ℓ+1} = χ∥(K^ℓ)² V^ℓ + C_W² (⟨σ⁴⟩ − ⟨σ²⟩²)_{K^ℓ}, V¹ = 0
/// (equal widths n, [`BookMlp::vertex`] with the layer's own C_W). Observables:
/// kurtosis = V/(n K²) and fluct = 2K² + V·w_ℓ/n where w_ℓ is the width the Monte Carlo
/// averages over (n, or n_out at the head): n_ℓ Var[(1/n_ℓ)Σ z²] = 2K² + 3V/n + (n_ℓ − 1)V/n.
fn book_forward(spec: &ModelSpec, g0: &KernelState) -> Prediction {
    let c = Consts::of(spec);
    let n = spec.width as f64;
    let l_max = spec.head_layer();
    let d = g0.len();
    let act = spec.activation;
    let mut k = stem(spec, g0);
    let mut v = vec![0.0; d];
    let mut out = Vec::with_capacity(l_max);
    for l in 1..=l_max {
        let width = if l == l_max { spec.out_dim() as f64 } else { n };
        let vertex = (0..d)
            .map(|a| {
                let kk = k.g[[a, a]];
                (2.0 * kk * kk + v[a] * width / n, v[a] / (n * kk * kk))
            })
            .collect();
        if !k.finite() || v.iter().any(|x| !x.is_finite()) {
            return Prediction {
                layers: out,
                diverged_at: Some(l),
            };
        }
        let mut p = layer(l, k.clone());
        p.vertex = Some(vertex);
        out.push(p);
        if l == l_max {
            break;
        }
        let c_w = if l + 1 == l_max { c.head } else { c.w };
        let mlp = BookMlp::new(act, c.bias, c_w);
        for (a, va) in v.iter_mut().enumerate() {
            let kk = k.g[[a, a]];
            let s2 = sigma2(act, kk);
            let chi = mlp.chi_parallel(kk);
            *va = chi * chi * *va + c_w * c_w * (sigma4(act, kk) - s2 * s2);
        }
        k = book_layer(spec, &k, c_w, c.bias);
    }
    Prediction {
        layers: out,
        diverged_at: None,
    }
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
    let g0 = input_kernel(spec, probe)?;
    let sampler = |samples: usize, batch: u64| LogitSampler {
        samples,
        seed: opts.seed,
        batch,
    };
    let full = forward(spec, &g0, sampler(opts.logit_samples, 0))?;
    let sampled = full
        .layers
        .iter()
        .any(|l| l.attn.as_ref().is_some_and(|a| a.sampled));
    let all_rows = |p: &Prediction, sampler: LogitSampler| -> Result<Vec<PRow>, TheoryError> {
        let mut rows = prediction_rows(p);
        if opts.backward
            && p.diverged_at.is_none()
            && let Some(b) = super::ntk::backward_rows(spec, &g0, sampler, opts.pairs)?
        {
            rows.extend(b);
        }
        Ok(rows)
    };
    let rows = all_rows(&full, sampler(opts.logit_samples, 0))?;
    let mut stderr = vec![0.0; rows.len()];
    if sampled {
        let r = opts.error_batches.max(2);
        let per = (opts.logit_samples / r).max(1);
        // Rows that do not depend on the logit draws must get an error of exactly 0.
        let mut vals = vec![Vec::with_capacity(r); rows.len()];
        for b in 1..=r {
            let sb = sampler(per, b as u64);
            let rb = all_rows(&forward(spec, &g0, sb)?, sb)?;
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
            block: crate::mc::observe::block_name(spec, r.layer).to_string(),
            site: r.site.to_string(),
            observable: r.observable,
            i: r.i,
            j: r.j,
            value: r.value,
            stderr: se,
            samples,
        })
        .collect();
    Ok((out, full.diverged_at))
}
