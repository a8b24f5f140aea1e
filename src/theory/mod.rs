//! Infinite-width theory and its 1/n corrections (SPEC §4).
//!
//! The Transformer's theory mirrors `src/model/` block for block. Each block file holds the
//! block's forward kernel map **and** its NTK transport, side by side, on one
//! [`state::State`] (the kernel G, every carried Θ_g, the tied head's bookkeeping and, at
//! order 1, the four-point vertex); one walk ([`walk`]) runs them once each, in the order of
//! `Network::forward`.
//!
//! - Blocks: [`stem`] (1.40)–(1.45), [`ln`] (1.53)/(1.139), [`attention`] (1.61)–(1.65) and
//!   (1.151)–(1.163), [`mlp`] (1.70)–(1.77) and (1.168)–(1.173), [`residual`] (1.65)/(1.77),
//!   [`head`] (1.80)–(1.84) and (1.179)–(1.182), and the book's [`plain`] layer (`mlp` mode);
//!   an encoder–decoder's [`cross`]-attention (§II 2 B, (2.2)–(2.4), footnote 47).
//! - [`state`]: the state and the context ([`state::Ctx`]: the model, its effective
//!   constants, the logit sampler) every block reads.
//! - [`walk`]: the one walk; [`transformer`]: [`transformer::predict`], rows with errors;
//!   [`rows`]: the forward rows; [`ntk`]: where the backward is derived, and its rows.
//! - [`finite`]: the O(1/n) corrections (`theory.order = 1`): the book's subleading kernel
//!   and four-point vertex for several inputs, carried through the residual MLP stack and
//!   LayerNorm.
//! - [`gauss`]: Gaussian expectations ⟨F(z₁, z₂)⟩ under a 2×2 covariance, the building block
//!   of every recursion (closed forms where known, quadrature otherwise); [`linalg`]: a PSD
//!   Cholesky for the logit sampler.
//! - [`book`]: the plain and residual MLP theory of Roberts–Yaida–Hanin, *The Principles of Deep
//!   Learning Theory* (arXiv 2106.10165) for one or two inputs: kernel recursion,
//!   susceptibilities χ∥ and χ⊥, criticality, the four-point vertex and the frozen NTK.
pub mod attention;
pub mod book;
pub(crate) mod contact;
pub mod cross;
pub mod finite;
pub mod gauss;
pub mod head;
pub mod linalg;
pub mod ln;
pub mod mlp;
pub mod ntk;
pub mod plain;
pub mod residual;
pub mod rows;
pub mod state;
pub mod stem;
pub mod transformer;
pub mod walk;

use crate::model::activation::Activation;

/// Numerical failures of the theory recursions: data problems, not programmer errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TheoryError {
    /// No (C_b ≥ 0, C_W > 0) makes χ∥ = χ⊥ = 1 at a fixed point of the kernel recursion.
    #[error(
        "activation `{activation}` has no criticality: {reason} (critical activations: relu, linear, tanh, erf, gelu, silu)"
    )]
    NoCriticality {
        activation: &'static str,
        reason: String,
    },
    /// The configuration has no leading-order theory here (a fact about the model, not a bug).
    #[error("no theory: {0}")]
    Unsupported(String),
    /// A recursion produced a non-finite value; layers before `layer` are finite.
    #[error("theory recursion diverged at layer {layer}: {quantity} = {value}")]
    Diverged {
        layer: usize,
        quantity: &'static str,
        value: f64,
    },
}

impl TheoryError {
    pub(crate) fn no_criticality(act: Activation, reason: impl Into<String>) -> Self {
        TheoryError::NoCriticality {
            activation: act.name(),
            reason: reason.into(),
        }
    }
}
