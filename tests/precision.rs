//! `run.precision = "f32"` against the f64 reference: every row of several configurations
//! agrees within 5 combined standard errors plus the f32 rounding bound, on both samplers.
//!
//! The float bound (`common::f32_bound`): a sample's f32 pass carries a relative error of a
//! few ulp (2⁻²³ ≈ 1.2e-7) per operation, and its systematic part does not average out over
//! the ensemble: LN at ε puts kernel_diag at 1 − 8e-7 with a standard error of 1e-8, where
//! f32 moves it by ~4e-8; post-LN's per-token fluctuation is ~1e-13 in f64 and ~1e-12 in f32.

mod common;

use sigprop::config::{Config, ConfigBuilder};
use sigprop::mc::Job;
use sigprop::model::Probe;
use sigprop::stats::{Row, recorder};

fn config(sets: &[&str], extra: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in [
        "model.width=32",
        "model.heads=4",
        "model.layers=2",
        "model.n_out=8",
        "model.mlp_mult=2",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=12",
        "model.variances.pe=0.05",
    ]
    .iter()
    .chain(sets)
    .chain(extra)
    {
        b = b.set(s).unwrap();
    }
    b.build().unwrap()
}

fn run(sets: &[&str], extra: &[&str], samples: u64) -> (Vec<Row>, &'static str) {
    let mut cfg = config(sets, extra);
    let probe: Probe = sigprop::inputs::probe(&mut cfg).unwrap();
    let job = Job::new(&cfg, &probe);
    let precision = job.precision();
    let mut ens = job.start(0, samples);
    job.run(&mut ens, 2, |_| Ok(())).unwrap();
    let rows = recorder::rows(
        &ens.rows,
        &ens.acc,
        "mc",
        &cfg.run.name,
        cfg.model.width,
        cfg.model.heads,
    );
    (rows, precision)
}

/// f64 dense (the reference) against f32 with `sampler`, on every row.
fn agree(sets: &[&str], sampler: &str) {
    let n = 2000;
    let s = format!("run.sampler={sampler}");
    let (reference, p64) = run(sets, &["run.sampler=dense"], n);
    let (fast, p32) = run(sets, &[&s, "run.precision=f32"], n);
    assert_eq!((p64, p32), ("f64", "f32"));
    assert_eq!(reference.len(), fast.len(), "{sets:?}: row sets differ");
    let mut worst = (0.0f64, String::new());
    for (a, b) in reference.iter().zip(&fast) {
        assert_eq!(
            (a.layer, &a.site, &a.observable, a.i, a.j),
            (b.layer, &b.site, &b.observable, b.i, b.j)
        );
        let se = (a.stderr.powi(2) + b.stderr.powi(2)).sqrt();
        let tol = (5.0 * se + common::f32_bound(a, &reference)).max(1e-300);
        let miss = (a.value - b.value).abs() / tol;
        if miss > worst.0 {
            worst = (
                miss,
                format!(
                    "{} {} layer {} ({},{}): f64 {} ± {:.2e} vs f32 {} ± {:.2e}",
                    a.site, a.observable, a.layer, a.i, a.j, a.value, a.stderr, b.value, b.stderr
                ),
            );
        }
    }
    assert!(
        worst.0 < 1.0,
        "{sets:?} {sampler}: f32 misses by {:.2} of (5 SE + float bound) at {}",
        worst.0,
        worst.1
    );
}

fn both(sets: &[&str]) {
    agree(sets, "conditional");
    agree(sets, "dense");
}

#[test]
fn f32_matches_f64_pre_ln_causal_gelu() {
    both(&[
        "model.norm=pre",
        "model.causal=true",
        "model.activation=gelu",
    ]);
}

#[test]
fn f32_matches_f64_post_ln_pooled() {
    both(&[
        "model.norm=post",
        "model.head=pooled",
        "model.activation=relu",
    ]);
}

#[test]
fn f32_matches_f64_no_ln_biases_pairs() {
    both(&[
        "model.norm=none",
        "model.activation=relu",
        "model.variances.bias=0.1",
        "run.backward=pairs",
    ]);
}

#[test]
fn f32_matches_f64_tied_head_embedding_stem() {
    both(&[
        "model.preset=paper-lm",
        "model.width=32",
        "model.heads=4",
        "model.layers=1",
        "inputs.vocab=40",
        "model.n_out=40",
    ]);
}

#[test]
fn f32_matches_f64_book_mlp() {
    both(&[
        "model.preset=mlp-book",
        "model.width=32",
        "model.n_out=8",
        "model.layers=4",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=12",
    ]);
}

/// The precision is part of what a run is: an f32 run is not resumed or merged as an f64 one,
/// and an f64 run keeps the fingerprint it had before the key existed.
#[test]
fn precision_enters_the_fingerprint_and_f64_keeps_the_old_one() {
    use sigprop::config::fingerprint::{Fingerprint, Purpose};
    let mut a = config(&[], &[]);
    let mut b = config(&[], &["run.precision=f32"]);
    let probe = sigprop::inputs::probe(&mut a).unwrap();
    let _ = sigprop::inputs::probe(&mut b).unwrap();
    let fa = Fingerprint::of(&a, &probe, Purpose::MonteCarlo);
    let fb = Fingerprint::of(&b, &probe, Purpose::MonteCarlo);
    assert_ne!(fa.hash, fb.hash);
    assert!(
        fa.difference(&fb)
            .is_some_and(|d| d.starts_with("run.precision"))
    );
    assert!(fa.pairs.iter().all(|(k, _)| k != "run.precision"));
    // A theory prediction does not depend on it, and an f32 Monte Carlo compares with it.
    for p in [Purpose::Theory, Purpose::Compare] {
        assert_eq!(
            Fingerprint::of(&a, &probe, p).hash,
            Fingerprint::of(&b, &probe, p).hash
        );
    }
}
