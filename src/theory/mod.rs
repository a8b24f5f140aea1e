//! Infinite-width theory and its 1/n corrections (SPEC §4).
//!
//! - [`gauss`]: Gaussian expectations ⟨F(z₁, z₂)⟩ under a 2×2 covariance, the building block
//!   of every recursion (closed forms where known, quadrature otherwise).
//! - [`book`]: the plain and residual MLP theory of Roberts–Yaida–Hanin, *The Principles of Deep
//!   Learning Theory* (arXiv 2106.10165): kernel recursion, susceptibilities χ∥ and χ⊥,
//!   criticality, the four-point vertex and the frozen NTK.
//! - [`transformer`]: the Transformer's forward kernel recursion at infinite width (the
//!   paper's §I 1) over the whole probe set, and the book's MLP in `mlp` mode.
pub mod attention;
pub mod book;
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
