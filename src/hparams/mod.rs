//! Hyperparameter scaling tables (SPEC §6): for a family of parameterizations and
//! an optimizer, every parameter group's initialization variance and learning rate at each
//! target width, from the paper's rules (1.25)–(1.34), (1.99)–(1.116) and footnote 26, and
//! the same table *measured*: the width exponent of each raw `ntk_<group>` from Monte Carlo.
//!
//! Conventions (the paper's (1.88) and (1.94)):
//! - group g's learning rate is lr_g = η · λ_g(n), with the paper's factor λ_g (Λ_G = 1) and a
//!   global η that does not depend on the width (that is the point of the scaling);
//! - weight decay is the paper's global decoupled factor (1 − η·wd) with η·wd = O(1)
//!   (footnote 22). A trainer that decays θ ← θ − lr_g·wd_g·θ reproduces it exactly with
//!   wd_g = wd / λ_g, which is what the JSON carries.

pub mod coord;
pub mod format;
pub mod measure;
pub mod rules;
pub mod table;

use std::fmt;
use std::str::FromStr;

use crate::config::{ModelSpec, Variances};
use crate::model::Group;
pub use rules::{Dims, Monomial};
pub use table::{GroupHparams, HparamTable, TableError, parse_json};

/// A parameterization family.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Family {
    /// Every weight std 0.02 at every width, one global learning rate (BART-style code).
    Standard,
    /// The paper's family with head variance C_head/n^{1+s}: s = 0 neural tangent, s = 1 μP,
    /// anything else by footnote 26.
    Scaling(f64),
}

impl Family {
    /// s of the head scaling; 0 for `standard` (whose head is not scaled at all).
    pub fn s(self) -> f64 {
        match self {
            Family::Standard => 0.0,
            Family::Scaling(s) => s,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Standard => write!(f, "standard"),
            Family::Scaling(s) if *s == 0.0 => write!(f, "ntk"),
            Family::Scaling(s) if *s == 1.0 => write!(f, "mup"),
            Family::Scaling(s) => write!(f, "s={s}"),
        }
    }
}

impl FromStr for Family {
    type Err = anyhow::Error;
    fn from_str(t: &str) -> anyhow::Result<Self> {
        let t = t.trim();
        match t {
            "standard" | "sp" => return Ok(Family::Standard),
            "ntk" | "nt" | "neural-tangent" => return Ok(Family::Scaling(0.0)),
            "mup" | "μp" | "maximal-update" => return Ok(Family::Scaling(1.0)),
            _ => {}
        }
        let bad = || {
            anyhow::anyhow!(
                "--family `{t}`: expected standard, ntk, mup or s=<number> (e.g. s=0.5)"
            )
        };
        let v = t.strip_prefix("s=").ok_or_else(bad)?;
        let s: f64 = v.trim().parse().map_err(|_| bad())?;
        if !s.is_finite() {
            return Err(bad());
        }
        Ok(Family::Scaling(s))
    }
}

/// The optimizer: one enum for the width-scaling rules, the trainer (`train::optim::Kind`)
/// and its checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    #[value(name = "adamw", alias = "adam")]
    AdamW,
}

impl Optimizer {
    /// The `train.optimizer` spelling (exactly `sgd` or `adamw`, as the schema allows).
    pub fn from_name(name: &str) -> Option<Optimizer> {
        match name {
            "sgd" => Some(Optimizer::Sgd),
            "adamw" => Some(Optimizer::AdamW),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::AdamW => "adamw",
        }
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where Λ_G is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Anchor {
    /// The paper's convention: Λ_G = 1, so lr_g = η·λ_g(n) exactly as in (1.99)–(1.116)
    /// (e.g. the ViT's NT optimum η = 20 gives Q the rate 20·768^{-3/2}).
    Paper,
    /// Λ_G = 1/λ_g(n_base): every group has the rate η at the base width and scales from
    /// there like (n/n_base)^{exponent} (tuned-at-base values carried to other widths).
    Base,
}

/// Everything a table is made from.
#[derive(Clone, Debug)]
pub struct Setup {
    pub family: Family,
    pub optimizer: Optimizer,
    pub base_width: usize,
    pub widths: Vec<usize>,
    /// The global learning rate η (width-independent).
    pub lr: f64,
    /// The global weight decay wd (η·wd is what the paper keeps O(1)).
    pub weight_decay: f64,
    /// The O(1) constants C_G (from a preset; ignored by `standard`).
    pub var: Variances,
    pub dims: Dims,
    /// false: footnote 41's simplification, no M in W's and X's factors.
    pub m_factors: bool,
    pub anchor: Anchor,
}

impl Setup {
    /// Reads C_G, M, n_patch, n_out, stem and head kind from a model.
    pub fn dims_of(m: &ModelSpec) -> Dims {
        Dims {
            mlp_mult: m.mlp_mult,
            n_patch: m.n_in,
            n_out: m.out_dim(),
            stem: m.stem,
            head: m.head,
            class_token: m.class_token,
            decoder: m.has_decoder(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.base_width == 0 {
            anyhow::bail!("--base-width 0: expected a width ≥ 1");
        }
        if self.widths.is_empty() || self.widths.contains(&0) {
            anyhow::bail!("--widths: expected a comma-separated list of widths ≥ 1, e.g. 256,512");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            anyhow::bail!("--lr {}: expected a positive number", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            anyhow::bail!("--wd {}: expected a number ≥ 0", self.weight_decay);
        }
        Ok(())
    }

    /// The groups the table has rows for, in the paper's order.
    pub fn groups(&self) -> Vec<Group> {
        Group::ALL
            .iter()
            .copied()
            .filter(|g| rules::has_group(*g, &self.dims))
            .collect()
    }

    pub fn init_rule(&self, g: Group) -> Monomial {
        rules::init(g, self.family, &self.var, &self.dims)
    }

    pub fn lr_rule(&self, g: Group) -> Monomial {
        rules::lr(g, self.family, self.optimizer, &self.dims, self.m_factors)
    }

    /// λ_g at width n with the anchor applied.
    pub fn factor(&self, g: Group, n: usize) -> f64 {
        let r = self.lr_rule(g);
        match self.anchor {
            Anchor::Paper => r.eval(n, &self.dims),
            Anchor::Base => r.eval(n, &self.dims) / r.eval(self.base_width, &self.dims),
        }
    }

    /// The per-group weight decay that makes lr_g·wd_g = η·wd, the paper's (1.94).
    /// The bias row (b^head) gets none: the ViT runs exclude head biases from weight decay.
    pub fn group_weight_decay(&self, g: Group, n: usize) -> f64 {
        if g == Group::Bias {
            0.0
        } else {
            self.weight_decay / self.factor(g, n)
        }
    }

    /// The trainer's table at width n, every field and every group's three numbers given.
    pub fn table(&self, n: usize) -> HparamTable {
        let groups = self
            .groups()
            .into_iter()
            .map(|g| {
                (
                    g.name().to_string(),
                    GroupHparams {
                        init_variance: Some(self.init_rule(g).eval(n, &self.dims)),
                        lr: Some(self.lr * self.factor(g, n)),
                        weight_decay: Some(self.group_weight_decay(g, n)),
                    },
                )
            })
            .collect();
        HparamTable {
            family: self.family.to_string(),
            s: self.family.s(),
            optimizer: self.optimizer.to_string(),
            base_width: self.base_width,
            width: n,
            mlp_mult: self.dims.mlp_mult,
            lr: self.lr,
            weight_decay: self.weight_decay,
            groups,
            output_rescale: self.output_rescale(n),
        }
    }

    /// The tied head's N_rescale at width n (1.33)/(1.34); `None` without a tied head.
    pub fn output_rescale(&self, n: usize) -> Option<f64> {
        (self.dims.head == crate::config::HeadKind::Tied)
            .then(|| rules::tied_rescale(self.family).eval(n, &self.dims))
    }

    pub fn tables(&self) -> Vec<HparamTable> {
        self.widths.iter().map(|&n| self.table(n)).collect()
    }
}

/// The paper's tuned ViT optima (lr*, wd*) (§II 1, Table II 1 E), used as default base values
/// where the paper has one: standard (1e-3, 0.8), NT (20, 4e-5), √(NT·μP) (4, 2e-4), μP
/// (0.4, 1e-3). These are AdamW values.
pub fn paper_vit_optimum(f: Family) -> Option<(f64, f64)> {
    match f {
        Family::Standard => Some((1e-3, 0.8)),
        Family::Scaling(0.0) => Some((20.0, 4e-5)),
        Family::Scaling(0.5) => Some((4.0, 2e-4)),
        Family::Scaling(1.0) => Some((0.4, 1e-3)),
        Family::Scaling(_) => None,
    }
}
