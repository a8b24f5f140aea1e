//! The one source of per-block hyperparameters: what each parameter tensor is drawn with
//! (shape, fan-in, variance (1.25)–(1.34)) and its SGD learning-rate factor λ.
//!
//! Every block file has a `hyper(spec)` function that returns its tensors as [`Weight`]s
//! (or a variance for biases and embeddings), and its `sample` draws exactly those. The rules
//! that the sampler and the theory must agree on are written there once:
//!
//! - zero-initialized queries: `attention::hyper(spec).q` has variance 0;
//! - no positional embedding in `mlp` mode: `stem::hyper(spec).pe` is `None`;
//! - the fan-in of X is M·n: `mlp::hyper(spec).x.fan_in()`;
//! - the SGD factor λ = 1/fan-in for weights, 1 for biases and embeddings: [`sgd_factor`],
//!   read by the Monte Carlo's λ-weighted `ntk` rows (`Param::lambda`) and the trainer.
//!
//! What the theory reads from here (its per-group constants C_G):
//!
//! | theory constant | source |
//! |---|---|
//! | C_stem (patchify or word embedding) | `stem::hyper(spec).w.c_eff()` |
//! | C_PE (0 when not drawn) | `stem::hyper(spec).pe.unwrap_or(0.0)` |
//! | C_Q, C_K, C_V, C_U | `attention::hyper(spec).{q,k,v,u}.c_eff()` |
//! | C_W, C_X | `mlp::hyper(spec).{w,x}.c_eff()`; the book's layer `mlp::book_hyper(spec).w` |
//! | C_head n^{-s} (dense, pooled or tied) | `head::hyper(spec).c_eff` |
//! | C_b (0 when there are no biases) | `spec_bias(spec).unwrap_or(0.0)` |
//! | λ_G of a group | `Weight::lambda()` of its tensor, [`sgd_factor`]`(1)` for biases and PE: the λ rule of its line in [`super::group::GROUPS`] |
//!
//! `c_eff` is the variance times the fan-in, so in `variance_mode = "absolute"` it is
//! C·fan-in, exactly what the theory must propagate (the sampled variance is what matters).

use super::{attention, head, mlp, stem};
use crate::config::ModelSpec;

/// Every block's tensors for one model, exactly as the sampler draws them: what the theory
/// reads as its constants C_G (the table above), built once per model by [`blocks`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blocks {
    pub stem: stem::Hyper,
    pub attention: attention::Hyper,
    pub mlp: mlp::Hyper,
    /// The book's plain layer (`mlp` mode).
    pub book: mlp::BookHyper,
    pub head: head::Hyper,
}

/// The per-block hyperparameters of `spec` (each block file's `hyper`).
pub fn blocks(spec: &ModelSpec) -> Blocks {
    Blocks {
        stem: stem::hyper(spec),
        attention: attention::hyper(spec),
        mlp: mlp::hyper(spec),
        book: mlp::book_hyper(spec),
        head: head::hyper(spec),
    }
}

/// One weight tensor (fan_out × fan_in), drawn with mean zero and variance `var`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weight {
    /// (fan_out, fan_in): the layer is Y = X Wᵀ.
    pub shape: (usize, usize),
    /// The variance it is drawn with: C/fan_in (1.25)–(1.32), or C in absolute mode.
    pub var: f64,
    /// The fan-in that sets its SGD factor (1 for a lookup such as the word embedding).
    pub lr_fan_in: usize,
}

impl Weight {
    /// A weight with constant C and the model's variance rule (C/fan_in or absolute).
    pub fn scaled(spec: &ModelSpec, c: f64, fan_out: usize, fan_in: usize) -> Weight {
        Weight {
            shape: (fan_out, fan_in),
            var: spec.weight_var(c, fan_in),
            lr_fan_in: fan_in,
        }
    }

    /// A lookup table (n × vocab) with variance C not divided by anything (1.42).
    pub fn lookup(c: f64, rows: usize, cols: usize) -> Weight {
        Weight {
            shape: (rows, cols),
            var: c,
            lr_fan_in: 1,
        }
    }

    pub fn fan_in(&self) -> usize {
        self.shape.1
    }

    /// The effective constant the theory propagates: variance × fan-in (× 1 for a lookup).
    pub fn c_eff(&self) -> f64 {
        self.var * self.lr_fan_in as f64
    }

    /// The paper's SGD learning-rate factor λ of this tensor.
    pub fn lambda(&self) -> f64 {
        sgd_factor(self.lr_fan_in)
    }
}

/// The paper's SGD learning-rate factor: λ = 1/fan-in for weights, 1 for biases and
/// embeddings (whose fan-in is recorded as 1).
pub fn sgd_factor(fan_in: usize) -> f64 {
    1.0 / fan_in as f64
}

/// The bias variance C_b, or `None` when the model has no biases (C_b = 0).
pub fn spec_bias(spec: &ModelSpec) -> Option<f64> {
    spec.has_bias().then_some(spec.var.bias)
}
