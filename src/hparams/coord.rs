//! Coordinate check: take one AdamW step (or a few SGD steps) from
//! initialization with materialized weights and the table's per-group learning rates, and
//! measure how the output change Δf and the feature changes Δz^ℓ scale with width.
//!
//! The "loss" is the linear functional f = n_out^{-1/2} Σ u·z^L of a fixed Gaussian u (the
//! same scalar the Monte Carlo differentiates), so one step moves every output by
//! Δz^L = −η Σ_g λ_g Θ_g u + O(η²): the NTK of (1.90) at work.
//!
//! What each family claims (the paper's §I 3 and footnotes 21, 26):
//! - any s: the output change is O(1) — that is what λ_g was chosen for;
//! - the features move like n^{(s−1)/2}: n^{-1/2} at s = 0 (neural tangent: the NTK is
//!   frozen, footnote 23), O(1) at s = 1 (maximal update).
//!
//! Measured exception (README, "Hyperparameter tables"): at s = 0 the queries and keys,
//! updated alone, move the features O(1) in n at fixed head count H, with a size ∝ H^{-1/2}.
//! At a fixed head width C = n/H they move them like n^{-1/2}. The H logits per token pair
//! are a width-H readout whose NTK the rule keeps O(1), so the logits move O(1). The check
//! flags those rows instead of hiding them.
//!
//! The first AdamW step with bias correction is θ ← θ − η λ̃ g/√(g² + ε): a sign step. We
//! take ε → 0 (1e-300): the paper's ε = 1e-8 inside the root would floor √(g²) at 1e-4,
//! and small gradients at large n would then be measured against ε, not against width.

use anyhow::bail;
use ndarray::Array2;
use rand::Rng;
use rand_distr::StandardNormal;
use toml::Value;

use super::measure::fit_slope;
use super::{Family, Optimizer, Setup};
use crate::config::{ConfigBuilder, Norm};
use crate::model::{Group, Network, ParamGrads, init};

/// A quantity's change per width, and its fitted exponent.
#[derive(Clone, Debug)]
pub struct CoordFit {
    /// "all" (every group updated together) or a group name (only that group updated).
    pub update: String,
    /// "Δf" or "Δz^ℓ".
    pub quantity: String,
    pub points: Vec<(usize, f64, f64)>,
    pub exponent: f64,
    pub stderr: f64,
    /// The family's claim, if it makes one.
    pub claim: Option<f64>,
}

impl CoordFit {
    pub fn verdict(&self) -> &'static str {
        match self.claim {
            None => "—",
            Some(c) if (self.exponent - c).abs() <= 0.15 => "yes",
            Some(c) if (self.exponent - c).abs() > 0.15 + 3.0 * self.stderr => "NO",
            Some(_) => "?",
        }
    }
    /// "O(1)", "vanishes" or "grows" by the fitted exponent (±0.15 counts as O(1)).
    pub fn behaviour(&self) -> &'static str {
        if self.exponent.abs() <= 0.15 {
            "O(1)"
        } else if self.exponent < 0.0 {
            "vanishes"
        } else {
            "grows"
        }
    }
}

#[derive(Clone, Debug)]
pub struct CoordOpts {
    pub widths: Vec<usize>,
    pub samples: usize,
    /// SGD steps (AdamW always takes one).
    pub sgd_steps: usize,
    pub layers: usize,
    pub tokens: usize,
    pub seed: u64,
    /// Also update one group at a time.
    pub per_group: bool,
}

impl Default for CoordOpts {
    fn default() -> Self {
        CoordOpts {
            widths: vec![64, 128, 256, 512, 1024],
            samples: 4,
            sgd_steps: 3,
            layers: 1,
            tokens: 4,
            seed: 0,
            per_group: true,
        }
    }
}

/// RMS over entries.
fn rms(a: &Array2<f64>) -> f64 {
    (a.iter().map(|x| x * x).sum::<f64>() / a.len().max(1) as f64).sqrt()
}

/// Runs the check for the table `setup` (its family, optimizer and per-group rates; the
/// rates are scaled by `lr_scale` so one step stays in the linear regime).
pub fn coord_check(
    base: &dyn Fn() -> anyhow::Result<ConfigBuilder>,
    setup: &Setup,
    lr_scale: f64,
    o: &CoordOpts,
) -> anyhow::Result<Vec<CoordFit>> {
    if o.widths.len() < 2 || o.samples < 2 {
        bail!("--coord-check needs at least two widths and two samples");
    }
    let fam = setup.family;
    // updates: "all" then each group; per width, per update: (Δf, Δz^ℓ...) sample lists.
    let mut updates: Vec<Option<Group>> = vec![None];
    if o.per_group {
        updates.extend(setup.groups().into_iter().map(Some));
    }
    let mut data: Vec<Vec<(usize, Vec<Vec<f64>>)>> = vec![Vec::new(); updates.len()];
    let mut nsites = 0;
    for &n in &o.widths {
        let mut b = base()?;
        let i = |x: usize| Value::from(x as i64);
        for (k, v) in [
            ("model.width", i(n)),
            ("model.layers", i(o.layers)),
            ("inputs.tokens", i(o.tokens)),
            ("inputs.sequences", i(1)),
            ("model.init", Value::from("gaussian")),
            ("model.head_s", Value::from(fam.s())),
        ] {
            b = b.value(k, v)?;
        }
        if fam == Family::Standard {
            b = b.value("model.variance_mode", Value::from("absolute"))?;
            for g in Group::ALL {
                let v = if g == Group::Bias { 0.0 } else { 0.02 * 0.02 };
                b = b.value(g.key(), Value::from(v))?;
            }
        }
        let mut cfg = b.build()?;
        if cfg.model.norm == Norm::Mlp {
            bail!("--coord-check needs a Transformer preset (model.norm pre, post or none)");
        }
        let probe = crate::inputs::probe(&mut cfg)?;
        for (ui, upd) in updates.iter().enumerate() {
            let mut per: Vec<Vec<f64>> = Vec::new();
            for k in 0..o.samples {
                let mut rng = init::stream(o.seed, k as u64);
                let net = Network::sample(&cfg.model, &mut rng);
                let t0 = net.forward(&probe);
                let u: Array2<f64> = Array2::from_shape_simple_fn(t0.out.dim(), || {
                    rng.sample::<f64, _>(StandardNormal)
                }) / (cfg.model.out_dim() as f64).sqrt();
                let steps = match setup.optimizer {
                    Optimizer::AdamW => 1,
                    Optimizer::Sgd => o.sgd_steps.max(1),
                };
                let mut moved = net.clone();
                for _ in 0..steps {
                    let tr = moved.forward(&probe);
                    let mut pg = ParamGrads::new(&moved.params);
                    moved.backward(&tr, &probe, u.view(), &mut pg);
                    for (p, g) in moved.params.list.iter_mut().zip(&pg.into_list()) {
                        if upd.is_some_and(|x| x != p.group) || !p.is_materialized() {
                            continue;
                        }
                        let lr = lr_scale * setup.lr * setup.factor(p.group, n);
                        match setup.optimizer {
                            Optimizer::Sgd => p.value.scaled_add(-lr, g),
                            Optimizer::AdamW => p.value.zip_mut_with(g, |v, &gi| {
                                *v -= lr * gi / (gi * gi + 1e-300).sqrt()
                            }),
                        }
                    }
                }
                let t1 = moved.forward(&probe);
                // Δf: the change of the differentiated scalar f = Σ u·z^L (u already carries
                // n_out^{-1/2}): the first-order term −η Σ_g λ_g Θ_g of (1.90).
                let df = ((&t1.out - &t0.out) * &u).sum().abs();
                let mut row = vec![df];
                for (a, b) in t1.resid.iter().zip(&t0.resid) {
                    row.push(rms(&(a - b)));
                }
                nsites = row.len();
                per.push(row);
            }
            data[ui].push((n, per));
        }
    }
    let mut out = Vec::new();
    for (ui, upd) in updates.iter().enumerate() {
        for site in 0..nsites {
            let points: Vec<(usize, f64, f64)> = data[ui]
                .iter()
                .map(|(n, per)| {
                    let xs: Vec<f64> = per.iter().map(|r| r[site]).collect();
                    let m = xs.iter().sum::<f64>() / xs.len() as f64;
                    let var =
                        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0);
                    (*n, m, (var / xs.len() as f64).sqrt().max(1e-3 * m))
                })
                .collect();
            if points.iter().any(|p| p.1.is_nan() || p.1 <= 1e-200) {
                continue;
            }
            let (exponent, stderr, _) = fit_slope(&points);
            let claim = match fam {
                Family::Standard => None,
                Family::Scaling(_) if site == 0 => Some(0.0),
                Family::Scaling(s) => Some((s - 1.0) / 2.0),
            };
            out.push(CoordFit {
                update: upd.map_or("all".to_string(), |g| g.name().to_string()),
                quantity: if site == 0 {
                    "Δf".into()
                } else {
                    format!("Δz^{site}")
                },
                points,
                exponent,
                stderr,
                claim,
            });
        }
    }
    Ok(out)
}

/// A Markdown table of the fits.
pub fn markdown(setup: &Setup, fits: &[CoordFit]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let widths: Vec<String> = fits
        .first()
        .map(|f| f.points.iter().map(|p| p.0.to_string()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "Coordinate check, {} family, {} ({}), widths {}: RMS change of the output (Δf) and of the residual stream at layer ℓ (Δz^ℓ) after the update (mean over networks, per width), fitted ∝ n^e. Claim: Δf O(1), features n^((s−1)/2).\n",
        setup.family,
        setup.optimizer,
        match setup.optimizer {
            Optimizer::AdamW => "one step".to_string(),
            Optimizer::Sgd => "SGD steps".to_string(),
        },
        widths.join(", ")
    );
    let head: String = widths.iter().map(|w| format!(" n={w} |")).collect();
    let rule: String = widths.iter().map(|_| "---:|").collect();
    let _ = writeln!(
        o,
        "| update | quantity |{head} exponent | behaviour | claim | agrees |"
    );
    let _ = writeln!(o, "|---|---|{rule}---:|---|---:|---|");
    for f in fits {
        let values: String = f.points.iter().map(|p| format!(" {:.3e} |", p.1)).collect();
        let _ = writeln!(
            o,
            "| {} | {} |{values} {:.3} ± {:.3} | {} | {} | {} |",
            f.update,
            f.quantity,
            f.exponent,
            f.stderr,
            f.behaviour(),
            f.claim.map_or("—".into(), |c| format!("{c:.2}")),
            f.verdict()
        );
    }
    o
}
