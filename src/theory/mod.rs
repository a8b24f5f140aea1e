//! Infinite-width theory and its 1/n corrections (SPEC §4).
//!
//! - [`gauss`]: Gaussian expectations ⟨F(z₁, z₂)⟩ under a 2×2 covariance, the building block
//!   of every recursion (closed forms where known, quadrature otherwise).

pub mod gauss;
