//! The paper's width-scaling rules as monomials in the width n (and M, n_patch, n_out).
//!
//! Sources (equation numbers are the paper's, arXiv 2304.02034v1; see
//! `/work/notes/theory-notes.md` §3):
//! - initialization (1.25)–(1.33), with the head's C_head/n^{1+s} and the tied-head rescale
//!   N_rescale = n^{-(1+s)/2} of footnote 8 / (1.34);
//! - SGD learning-rate factors λ_G (1.99)–(1.107);
//! - AdamW learning-rate factors λ̃_G (1.108)–(1.116);
//! - footnote 26: for s ≠ 0 multiply every non-head SGD factor by n^s and every non-head
//!   AdamW factor by n^{s/2} (the head's rule (1.107)/(1.116) does not change);
//! - footnote 41: the experiments dropped the M factors of W and X (λ̃_W = λ̃_X = 1/(n√n)).

use std::fmt::Write as _;

use super::{Family, Optimizer};
use crate::config::{HeadKind, Stem};
use crate::model::Group;

/// A symbol a rule can depend on. Only `N` (the width) varies across a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sym {
    /// The width n.
    N,
    /// The MLP multiplier M (hidden width M·n).
    M,
    /// The dense stem's fan-in n_patch (`inputs.dim`).
    NPatch,
    /// The head's output dimension n_out.
    NOut,
}

impl Sym {
    fn plain(self) -> &'static str {
        match self {
            Sym::N => "n",
            Sym::M => "M",
            Sym::NPatch => "n_patch",
            Sym::NOut => "n_out",
        }
    }
    fn tex(self) -> &'static str {
        match self {
            Sym::N => "n",
            Sym::M => "M",
            Sym::NPatch => "n_{\\mathrm{patch}}",
            Sym::NOut => "n_{\\mathrm{out}}",
        }
    }
}

/// The sizes a rule is evaluated with, besides the width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub mlp_mult: usize,
    pub n_patch: usize,
    pub n_out: usize,
    pub stem: Stem,
    pub head: HeadKind,
    /// Whether the model has a class token (a `cls` row).
    pub class_token: bool,
    /// Whether the model has a decoder stack with cross-attention ((2.2)–(2.4)). Its Q, K,
    /// V, U are the `q`, `k`, `v`, `u` groups (the model draws them as such) and its second
    /// b^PE is the `pe` group, so the rows do not change, only their labels and notes: every
    /// fan-in is n (Q reads the decoder's s, K and V the encoder's s̃, U reads Ω v), so
    /// (1.27)–(1.30) and (1.101)–(1.104)/(1.110)–(1.113) hold as written (footnote 47).
    pub decoder: bool,
}

/// constant · Π sym^exponent. `constant` is an O(1) number (C_G, or 0.02² for the standard
/// parameterization); `label` names it in the symbolic form ("C_Q"), or is empty when 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Monomial {
    pub constant: f64,
    pub label: &'static str,
    pub factors: Vec<(Sym, f64)>,
}

impl Monomial {
    pub fn one() -> Self {
        Monomial {
            constant: 1.0,
            label: "",
            factors: Vec::new(),
        }
    }

    fn c(constant: f64, label: &'static str) -> Self {
        Monomial {
            constant,
            label,
            factors: Vec::new(),
        }
    }

    /// Multiplies by sym^e (merging with an existing power of the same symbol).
    fn times(mut self, sym: Sym, e: f64) -> Self {
        if e == 0.0 {
            return self;
        }
        match self.factors.iter_mut().find(|(s, _)| *s == sym) {
            Some((_, x)) => *x += e,
            None => self.factors.push((sym, e)),
        }
        self.factors.retain(|(_, x)| *x != 0.0);
        self
    }

    /// The exponent of n: what a width-scaling table shows ("n^{-1}").
    pub fn width_exponent(&self) -> f64 {
        self.power(Sym::N)
    }

    pub fn power(&self, sym: Sym) -> f64 {
        self.factors
            .iter()
            .filter(|(s, _)| *s == sym)
            .map(|(_, e)| e)
            .sum()
    }

    /// The value at width n.
    pub fn eval(&self, n: usize, d: &Dims) -> f64 {
        self.factors.iter().fold(self.constant, |acc, &(s, e)| {
            let base = match s {
                Sym::N => n,
                Sym::M => d.mlp_mult,
                Sym::NPatch => d.n_patch,
                Sym::NOut => d.n_out,
            } as f64;
            acc * base.powf(e)
        })
    }

    /// Plain text, e.g. `C_X M^-1 n^-1` or `n^-3/2`.
    pub fn plain(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.label.is_empty() {
            parts.push(self.label.to_string());
        }
        for (s, e) in self.ordered() {
            parts.push(if e == 1.0 {
                s.plain().to_string()
            } else {
                format!("{}^{}", s.plain(), frac(e))
            });
        }
        if parts.is_empty() {
            "1".into()
        } else {
            parts.join(" ")
        }
    }

    /// LaTeX math (without the dollars), e.g. `C_{X}\, M^{-1} n^{-1}`.
    pub fn tex(&self) -> String {
        let mut s = String::new();
        if !self.label.is_empty() {
            s.push_str(&tex_label(self.label));
        }
        for (sym, e) in self.ordered() {
            if !s.is_empty() {
                s.push_str("\\, ");
            }
            if e == 1.0 {
                s.push_str(sym.tex());
            } else {
                let _ = write!(s, "{}^{{{}}}", sym.tex(), frac(e));
            }
        }
        if s.is_empty() { "1".into() } else { s }
    }

    /// Symbols in a fixed reading order: n_patch, n_out, M, n.
    fn ordered(&self) -> Vec<(Sym, f64)> {
        let order = [Sym::NPatch, Sym::NOut, Sym::M, Sym::N];
        order
            .iter()
            .filter_map(|o| {
                let e = self.power(*o);
                (e != 0.0).then_some((*o, e))
            })
            .collect()
    }
}

/// "C_Q" → "C_{Q}", "0.02²" → "0.02^2", "C_head" → "C_{\mathrm{head}}".
fn tex_label(l: &str) -> String {
    if let Some(rest) = l.strip_prefix("C_") {
        if rest.chars().count() == 1 {
            format!("C_{{{rest}}}")
        } else {
            format!("C_{{\\mathrm{{{rest}}}}}")
        }
    } else {
        l.replace('²', "^2")
    }
}

/// An exponent as a small fraction when it is one (−3/2, 1/4), else a decimal.
pub fn frac(e: f64) -> String {
    for den in [1i64, 2, 3, 4, 6, 8] {
        let num = e * den as f64;
        if (num - num.round()).abs() < 1e-9 {
            let num = num.round() as i64;
            return if den == 1 {
                format!("{num}")
            } else {
                format!("{num}/{den}")
            };
        }
    }
    let s = format!("{e:.4}");
    s.trim_end_matches('0').to_string()
}

/// Whether the table has a separate row for `g` under these dims: a tied head has no
/// head matrix of its own (it reuses W^WE, rescaled by N_rescale).
pub fn has_group(g: Group, d: &Dims) -> bool {
    match g {
        Group::Head => d.head != HeadKind::Tied,
        Group::Cls => d.class_token,
        _ => true,
    }
}

/// The O(1) constants C_G a family's init uses, from a preset's `Variances`, with its symbol
/// (the group table's).
pub fn constant(g: Group, v: &crate::config::Variances) -> (f64, &'static str) {
    (v.get(g), g.info().symbol)
}

/// The variance of each entry of group `g` at initialization.
///
/// - `standard`: std 0.02 for every weight and embedding at every width (BART-style; the
///   paper's §II 2 C), zero biases, and N_rescale = 1 for a tied head.
/// - neural-tangent family (any s): C_G / fan-in (1.25)–(1.32): the dense stem's fan-in is
///   n_patch, the embedding's C_WE is *not* divided by n_vocab (1.25), b^PE has C_PE
///   (1.26), X has fan-in M·n (1.32), and the head C_head / n^{1+s} (1.33)/(1.34) — the only
///   place s enters the initialization (footnote 8). Biases C_b (the paper: 0, (1.33)).
pub fn init(g: Group, family: Family, v: &crate::config::Variances, d: &Dims) -> Monomial {
    let Family::Scaling(s) = family else {
        return if g == Group::Bias {
            Monomial::c(0.0, "0")
        } else {
            Monomial::c(0.02 * 0.02, "0.02²")
        };
    };
    let (c, label) = constant(g, v);
    let m = Monomial::c(c, label);
    match g {
        Group::Stem => match d.stem {
            Stem::Dense => m.times(Sym::NPatch, -1.0),
            Stem::Embedding => m,
        },
        // The class token c (1.8) is an additive embedding like b^PE: C_cls, not divided.
        Group::Pe | Group::Cls | Group::Bias => m,
        Group::Q | Group::K | Group::V | Group::U | Group::W => m.times(Sym::N, -1.0),
        Group::X => m.times(Sym::M, -1.0).times(Sym::N, -1.0),
        Group::Head => m.times(Sym::N, -(1.0 + s)),
    }
}

/// The tied head's rescale N_rescale = n^{-(1+s)/2} (1.33)/(1.34); 1 in `standard`.
pub fn tied_rescale(family: Family) -> Monomial {
    match family {
        Family::Standard => Monomial::one(),
        Family::Scaling(s) => Monomial::one().times(Sym::N, -(1.0 + s) / 2.0),
    }
}

/// The learning-rate factor λ_G (SGD) or λ̃_G (AdamW), with Λ_G = 1.
///
/// `m_factors = false` is the experiments' simplification (footnote 41): M is dropped from
/// W's and X's factors. In SGD that makes λ_X = 1/n instead of 1/(Mn) (1.106) — the paper
/// only states the simplification for AdamW; we apply "drop M" to both for consistency.
pub fn lr(g: Group, family: Family, opt: Optimizer, d: &Dims, m_factors: bool) -> Monomial {
    let Family::Scaling(s) = family else {
        // Standard: one global learning rate, λ_G = 1 for every group (no width scaling).
        return Monomial::one();
    };
    let mf = if m_factors { 1.0 } else { 0.0 };
    let one = Monomial::one();
    // The neural-tangent (s = 0) factors.
    let base = match (opt, g) {
        // (1.99): 1/n_patch for the patch matrix ∥ 1 for W^WE.
        (Optimizer::Sgd, Group::Stem) => match d.stem {
            Stem::Dense => one.times(Sym::NPatch, -1.0),
            Stem::Embedding => one,
        },
        // (1.100): b^PE.
        (Optimizer::Sgd, Group::Pe) => one,
        // The class token follows b^PE's rule (an additive embedding, (1.100)).
        (Optimizer::Sgd, Group::Cls) => one,
        // (1.101)–(1.105): Q, K, V, U, W all 1/n.
        (Optimizer::Sgd, Group::Q | Group::K | Group::V | Group::U | Group::W) => {
            one.times(Sym::N, -1.0)
        }
        // (1.106): X is 1/(Mn).
        (Optimizer::Sgd, Group::X) => one.times(Sym::M, -mf).times(Sym::N, -1.0),
        // (1.107): W^head 1/n ...
        (Optimizer::Sgd, Group::Head) => one.times(Sym::N, -1.0),
        // ... and b^head 1. The `bias` row follows b^head, the only bias the paper keeps.
        (Optimizer::Sgd, Group::Bias) => one,
        // (1.108): 1/(n_patch √n) ∥ 1/√n.
        (Optimizer::AdamW, Group::Stem) => match d.stem {
            Stem::Dense => one.times(Sym::NPatch, -1.0).times(Sym::N, -0.5),
            Stem::Embedding => one.times(Sym::N, -0.5),
        },
        // (1.109): b^PE 1/√n.
        (Optimizer::AdamW, Group::Pe) => one.times(Sym::N, -0.5),
        // The class token as b^PE (1.109).
        (Optimizer::AdamW, Group::Cls) => one.times(Sym::N, -0.5),
        // (1.110)–(1.113): Q, K, V, U 1/(n√n).
        (Optimizer::AdamW, Group::Q | Group::K | Group::V | Group::U) => one.times(Sym::N, -1.5),
        // (1.114): W 1/(n√(Mn)).
        (Optimizer::AdamW, Group::W) => one.times(Sym::M, -0.5 * mf).times(Sym::N, -1.5),
        // (1.115): X 1/(Mn√n).
        (Optimizer::AdamW, Group::X) => one.times(Sym::M, -mf).times(Sym::N, -1.5),
        // (1.116): W^head 1/(n√n_out), b^head 1/√n_out.
        (Optimizer::AdamW, Group::Head) => one.times(Sym::NOut, -0.5).times(Sym::N, -1.0),
        (Optimizer::AdamW, Group::Bias) => one.times(Sym::NOut, -0.5),
    };
    // Footnote 26: × n^s (SGD) or × n^{s/2} (AdamW) on every group except the head's
    // (1.107)/(1.116). AdamW gets half the power because the non-head gradient magnitudes
    // |g^μ| pick up √(n^{-s}) from the head init (1.34), and λ̃_G ∼ λ_G |g^μ|.
    match g {
        Group::Head | Group::Bias => base,
        _ => {
            let p = match opt {
                Optimizer::Sgd => s,
                Optimizer::AdamW => s / 2.0,
            };
            base.times(Sym::N, p)
        }
    }
}

/// The width exponent the raw `ntk_<group>` summary Σ(∂f/∂θ)² should have in a model
/// initialized by this family: under SGD the group's NTK contribution λ_G·Θ_G is O(1)
/// (the paper's step (i) after (1.98): λ_G is chosen so that the additive term is O(1)), so
/// raw Θ_G ∝ 1/λ_G, i.e. minus the SGD rule's width exponent. For `standard` there is no
/// such claim; we still report −0 = 0 (λ = 1 would need an O(1) raw NTK), and the
/// measurement shows how far that is from the truth.
pub fn expected_raw_ntk_exponent(g: Group, family: Family, d: &Dims, m_factors: bool) -> f64 {
    -lr(g, family, Optimizer::Sgd, d, m_factors).width_exponent()
}
