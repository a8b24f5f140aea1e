//! The one table of parameter groups (SPEC §2): every list of groups in sigprop reads
//! [`GROUPS`].
//!
//! One line per group gives its name (the configuration key `model.variances.<name>` and
//! the CSV rows `ntk_<name>`, `grad_norm_<name>`), the default constant C_G of (1.25)–(1.34),
//! its symbol and the paper's name of its tensors (for `sigprop hparams`), the field of
//! [`Variances`] it sets, and its SGD learning-rate factor λ_G read off the tensor its block
//! draws ([`super::hyper`]).
//!
//! Readers: [`Group::ALL`] and [`Group::name`], the configuration schema's
//! `model.variances.*` keys and their parsing into [`Variances`], the `standard` preset,
//! `hparams` (constants, labels, the keys it sets), the `ntk_groups` plot and the theory's
//! λ-weighted `ntk` rows.
//!
//! Adding a group: a variant of [`Group`], one line here, and the block that draws it
//! (its `hyper`, `sample` and theory map), which injects it into the NTK.

use super::Group;
use super::hyper::{Blocks, sgd_factor};
use crate::config::{ModelSpec, Stem, Variances};

/// One parameter group's line of the table.
pub struct GroupInfo {
    pub group: Group,
    /// The public name: `model.variances.<name>`, `ntk_<name>`.
    pub name: &'static str,
    /// The configuration key of its constant C_G.
    pub key: &'static str,
    /// The configuration key of its initialization distribution,
    /// `model.init_groups.<name>` (absent: `model.init`).
    pub init_key: &'static str,
    /// The default C_G (the SPEC's example file; presets override it).
    pub default: f64,
    /// The constant's symbol in `sigprop hparams` ("C_Q").
    pub symbol: &'static str,
    /// The paper's name of its tensors, (plain, LaTeX math); the dense stem's for the stem.
    pub label: (&'static str, &'static str),
    /// The word embedding's name where the stem is one.
    pub embedding_label: Option<(&'static str, &'static str)>,
    /// Its field of [`Variances`].
    pub var: fn(&Variances) -> f64,
    pub var_mut: fn(&mut Variances) -> &mut f64,
    /// The λ rule: λ_G read off the tensor the block draws (1/fan-in for weights, 1 for
    /// biases and embeddings), as the Monte Carlo's `Param::lambda` gives it.
    pub lambda: fn(&Blocks, &ModelSpec) -> f64,
}

macro_rules! group {
    ($g:ident, $name:literal, $field:ident, $default:expr, $sym:literal, $label:expr, $lambda:expr) => {
        GroupInfo {
            group: Group::$g,
            name: $name,
            key: concat!("model.variances.", $name),
            init_key: concat!("model.init_groups.", $name),
            default: $default,
            symbol: $sym,
            label: $label,
            embedding_label: None,
            var: |v| v.$field,
            var_mut: |v| &mut v.$field,
            lambda: $lambda,
        }
    };
}

/// Every parameter group, in the order blocks draw them (the order of [`Group`]).
pub const GROUPS: [GroupInfo; 11] = [
    GroupInfo {
        embedding_label: Some(("W^WE", "W^{\\mathrm{WE}}")),
        ..group!(
            Stem,
            "stem",
            stem,
            1.0,
            "C_stem",
            ("W^patch", "W^{\\mathrm{patch}}"),
            |b, _| b.stem.w.lambda()
        )
    },
    group!(
        Pe,
        "pe",
        pe,
        0.0,
        "C_PE",
        ("b^PE", "b^{\\mathrm{PE}}"),
        |_, _| sgd_factor(1)
    ),
    // The class token c of (1.8): an additive embedding like b^PE (λ = 1); C_cls = 0.02²
    // as the ViT's std 0.02.
    group!(Cls, "cls", cls, 0.02 * 0.02, "C_cls", ("c", "c"), |_, _| {
        sgd_factor(1)
    }),
    group!(Q, "q", q, 0.5, "C_Q", ("Q", "Q"), |b, _| b
        .attention
        .q
        .lambda()),
    group!(K, "k", k, 0.5, "C_K", ("K", "K"), |b, _| b
        .attention
        .k
        .lambda()),
    group!(V, "v", v, 0.5, "C_V", ("V", "V"), |b, _| b
        .attention
        .v
        .lambda()),
    group!(U, "u", u, 1.0 / 3.0, "C_U", ("U", "U"), |b, _| b
        .attention
        .u
        .lambda()),
    // The book's plain layer has the same fan-in n as the Transformer's W.
    group!(W, "w", w, 0.4, "C_W", ("W", "W"), |b, _| b.mlp.w.lambda()),
    group!(X, "x", x, 1.6, "C_X", ("X", "X"), |b, _| b.mlp.x.lambda()),
    // A tied head has no matrix of its own (it reuses W_WE); its group keeps 1/n.
    group!(
        Head,
        "head",
        head,
        1.0,
        "C_head",
        ("W^head", "W^{\\mathrm{head}}"),
        |b, s| b.head.w.map_or(sgd_factor(s.width), |w| w.lambda())
    ),
    group!(
        Bias,
        "bias",
        bias,
        0.0,
        "C_b",
        ("b^head", "b^{\\mathrm{head}}"),
        |_, _| { sgd_factor(1) }
    ),
];

impl Group {
    /// Its line of [`GROUPS`].
    pub fn info(self) -> &'static GroupInfo {
        &GROUPS[self as usize]
    }

    /// The configuration key of its constant, `model.variances.<name>`.
    pub fn key(self) -> &'static str {
        self.info().key
    }

    /// The paper's name of its tensors: (plain, LaTeX math).
    pub fn label(self, stem: Stem) -> (&'static str, &'static str) {
        let info = self.info();
        match (stem, info.embedding_label) {
            (Stem::Embedding, Some(l)) => l,
            _ => info.label,
        }
    }

    /// Its SGD learning-rate factor λ_G in the model `spec` with tensors `blocks`.
    pub fn lambda(self, blocks: &Blocks, spec: &ModelSpec) -> f64 {
        (self.info().lambda)(blocks, spec)
    }
}

impl Variances {
    /// C_G of a group.
    pub fn get(&self, g: Group) -> f64 {
        (g.info().var)(self)
    }

    /// Every C_G from a lookup by configuration key.
    pub fn from_keys(mut value: impl FnMut(&'static str) -> f64) -> Variances {
        let mut v = Variances::default();
        for g in &GROUPS {
            *(g.var_mut)(&mut v) = value(g.key);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Group::info` indexes the table by the enum's discriminant: the lines must follow the
    /// enum's order, and every field accessor must address its own group.
    #[test]
    fn table_follows_the_enum() {
        for (i, g) in GROUPS.iter().enumerate() {
            assert_eq!(g.group as usize, i, "line {i} is {:?}", g.group);
            assert_eq!(g.key, format!("model.variances.{}", g.name));
            assert_eq!(g.init_key, format!("model.init_groups.{}", g.name));
            let v = Variances::from_keys(|k| if k == g.key { 1.0 } else { 0.0 });
            assert_eq!(v.get(g.group), 1.0, "{}", g.name);
            let total: f64 = GROUPS.iter().map(|h| v.get(h.group)).sum();
            assert_eq!(total, 1.0, "{} sets another field too", g.name);
        }
    }
}
