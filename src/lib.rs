//! sigprop: signal propagation in wide and deep Transformers at initialization.
//!
//! Data flows one way (SPEC §0): `config` → `model` → `mc` (Monte Carlo ensembles) →
//! `stats` (the CSV of SPEC §3), with `theory` predictions in the same schema; `compare`
//! holds them against each other, `hparams` turns the scalings into tables, `train` uses
//! the same model to train, and `plot` draws from the CSV only.
//!
//! A small ensemble, end to end:
//! ```
//! use sigprop::config::ConfigBuilder;
//! use sigprop::mc::Job;
//! use sigprop::stats::recorder;
//!
//! let mut cfg = ConfigBuilder::new()
//!     .set("model.preset=paper-vit").unwrap()
//!     .set("model.width=64").unwrap()
//!     .set("model.layers=1").unwrap()
//!     .set("inputs.tokens=4").unwrap()
//!     .build()
//!     .unwrap();
//! let probe = sigprop::inputs::probe(&mut cfg).unwrap();
//! let job = Job::new(&cfg, &probe);
//! let mut ens = job.start(0, 64);
//! job.run(&mut ens, 1, |_| Ok(())).unwrap();
//! let rows = recorder::rows(&ens.rows, &ens.acc, "mc", "doc", 64, 8);
//! // The stem kernel's diagonal is C_stem·|x|²/n_in ≈ 1 for unit Gaussian inputs.
//! let g = rows.iter().find(|r| r.layer == 1 && r.observable == "kernel_diag").unwrap();
//! assert!((g.value - 1.0).abs() < 0.2 && g.stderr > 0.0);
//! ```

pub mod api;
pub mod compare;
pub mod config;
pub mod hparams;
pub mod inputs;
pub mod limits;
pub mod mc;
pub mod model;
pub mod plot;
pub mod stats;
pub mod theory;
pub mod train;
