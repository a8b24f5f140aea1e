//! sigprop: signal propagation in wide and deep Transformers at initialization.
//!
//! Data flows one way (SPEC §0): `config` → `model` → `mc` (Monte Carlo ensembles) →
//! `stats` (the CSV of SPEC §3), with `theory` predictions in the same schema.

pub mod cmd;
pub mod compare;
pub mod config;
pub mod hparams;
pub mod inputs;
pub mod mc;
pub mod model;
pub mod plot;
pub mod stats;
pub mod theory;
pub mod train;
