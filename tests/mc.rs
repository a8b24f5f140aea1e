//! The Monte Carlo engine against known results, and its reproducibility.
//! Every tolerance is a multiple of the reported standard error (|z| < 5 at a fixed seed)
//! or an exact-arithmetic bound.

use sigprop::config::{Config, ConfigBuilder};
use sigprop::mc::{Ensemble, Job};
use sigprop::model::Probe;
use sigprop::stats::{Row, recorder};

fn config(sets: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in sets {
        b = b.set(s).unwrap();
    }
    b.build().unwrap()
}

fn probe(cfg: &mut Config) -> Probe {
    sigprop::inputs::probe(cfg).unwrap()
}

/// Runs samples [first, end) and returns the ensemble.
fn ensemble(cfg: &Config, probe: &Probe, first: u64, end: u64, threads: usize) -> Ensemble {
    let job = Job::new(cfg, probe);
    let mut ens = job.start(first, end);
    job.run(&mut ens, threads, |_| Ok(())).unwrap();
    ens
}

fn rows(cfg: &Config, ens: &Ensemble) -> Vec<Row> {
    recorder::rows(
        &ens.rows,
        &ens.acc,
        "mc",
        &cfg.run.name,
        cfg.model.width,
        cfg.model.heads,
    )
}

fn find<'a>(rows: &'a [Row], layer: usize, site: &str, obs: &str, i: i64, j: i64) -> &'a Row {
    rows.iter()
        .find(|r| r.layer == layer && r.site == site && r.observable == obs && r.i == i && r.j == j)
        .unwrap_or_else(|| panic!("no row layer {layer} {site} {obs} ({i},{j})"))
}

fn z(r: &Row, expect: f64) -> f64 {
    (r.value - expect) / r.stderr
}

/// Layer 1: G¹ = C_stem x·x/n_in + C_PE δ_{tt'} (1.41), every pair within 5σ.
#[test]
fn stem_kernel_matches_the_input_kernel() {
    let mut cfg = config(&[
        "model.width=64",
        "model.heads=4",
        "model.layers=1",
        "model.variances.stem=1.3",
        "model.variances.pe=0.4",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=24",
        "run.backward=none",
    ]);
    let p = probe(&mut cfg);
    let ens = ensemble(&cfg, &p, 0, 1500, 2);
    let rows = rows(&cfg, &ens);
    let x = p.x.as_ref().unwrap();
    let d = p.len();
    let mut worst: f64 = 0.0;
    for i in 0..d {
        for j in i..d {
            let g0 = x.row(i).dot(&x.row(j)) / x.ncols() as f64;
            let pe = if i % p.tokens == j % p.tokens {
                0.4
            } else {
                0.0
            };
            let zz = z(
                find(&rows, 1, "resid", "kernel", i as i64, j as i64),
                1.3 * g0 + pe,
            );
            worst = worst.max(zz.abs());
        }
    }
    assert!(worst < 5.0, "worst |z| = {worst:.2} over the stem kernel");
}

/// Deep linear MLP (PDLT (3.21), (3.25)): E z⁴ / (3 (E z²)²) = (1 + 2/n)^{ℓ−1} exactly.
#[test]
fn deep_linear_mlp_kurtosis_is_exact() {
    let n = 16usize;
    let mut cfg = config(&[
        "model.preset=mlp-book",
        "model.activation=linear",
        "model.width=16",
        "model.n_out=16",
        "model.layers=4",
        "model.variances.stem=1",
        "model.variances.w=1",
        "model.variances.head=1",
        "inputs.sequences=1",
        "inputs.dim=16",
        "run.backward=none",
    ]);
    let p = probe(&mut cfg);
    let ens = ensemble(&cfg, &p, 0, 40_000, 2);
    let rows = rows(&cfg, &ens);
    let mut report = Vec::new();
    for layer in 1..=6usize {
        let expect = (1.0 + 2.0 / n as f64).powi(layer as i32 - 1) - 1.0;
        let r = find(&rows, layer, "resid", "kurtosis", 0, 0);
        let zz = if r.stderr > 0.0 { z(r, expect) } else { 0.0 };
        report.push(format!(
            "ℓ={layer}: {:.4}±{:.4} vs {expect:.4} (z={zz:.2})",
            r.value, r.stderr
        ));
        assert!(zz.abs() < 5.0, "{}", report.join("; "));
    }
}

/// ReLU MLP at criticality: for a single input |σ(z^{ℓ+1})|²/|σ(z^ℓ)|² is an independent
/// (C_W/n)·Σ relu(g)² per layer, so the kurtosis is exactly (1 + 5/n)^{ℓ−1} − 1, whose
/// leading order is the book's 5(ℓ−1)/n. Checked at n = 128, depths 2 to 8.
#[test]
fn relu_mlp_kurtosis_grows_like_five_ell_over_n() {
    let n = 128.0f64;
    let mut cfg = config(&[
        "model.preset=mlp-book",
        "model.layers=7",
        "inputs.sequences=1",
        "run.backward=none",
    ]);
    let p = probe(&mut cfg);
    let ens = ensemble(&cfg, &p, 0, 8000, 2);
    let rows = rows(&cfg, &ens);
    for layer in 2..=8usize {
        let l = layer as f64 - 1.0;
        let exact = (1.0 + 5.0 / n).powf(l) - 1.0;
        let leading = 5.0 * l / n;
        let r = find(&rows, layer, "resid", "kurtosis", 0, 0);
        // The O(ℓ²/n²) term, bounded by its exact value.
        let higher = exact - leading;
        assert!(
            higher >= 0.0 && higher < 0.5 * (5.0 * l / n).powi(2) * 1.1,
            "ℓ={layer}: higher order {higher}"
        );
        assert!(
            z(r, exact).abs() < 5.0,
            "ℓ={layer}: {:.4}±{:.4} vs exact {exact:.4}",
            r.value,
            r.stderr
        );
        assert!(
            (r.value - leading).abs() < 5.0 * r.stderr + higher,
            "ℓ={layer}: {:.4}±{:.4} vs 5(ℓ−1)/n = {leading:.4} (+{higher:.4})",
            r.value,
            r.stderr
        );
    }
}

/// Pre-LN: the stream's kernel grows linearly with depth (each AM pair adds the same
/// increment, the paper after (1.65) and (1.77)), and the final LN brings the head's
/// kernel back to C_head·G/(G+ε) ≈ 1.
#[test]
fn pre_ln_kernel_grows_linearly_and_final_ln_resets_it() {
    let mut cfg = config(&[
        "model.preset=paper-vit",
        "model.width=256",
        "model.layers=5",
        "model.n_out=64",
        "inputs.tokens=4",
        "run.backward=none",
    ]);
    let p = probe(&mut cfg);
    let ens = ensemble(&cfg, &p, 0, 400, 2);
    let rows = rows(&cfg, &ens);
    let g = |l: usize| find(&rows, l, "resid", "kernel_diag", -1, -1);
    // Increments over one AM pair; layers 1, 3, 5, … 11.
    let inc: Vec<(f64, f64)> = (0..5)
        .map(|k| {
            (
                g(2 * k + 3).value - g(2 * k + 1).value,
                g(2 * k + 3).stderr + g(2 * k + 1).stderr,
            )
        })
        .collect();
    let mean = inc.iter().map(|x| x.0).sum::<f64>() / inc.len() as f64;
    assert!(mean > 0.1, "the kernel should grow: increments {inc:?}");
    for (d, se) in &inc {
        assert!(
            (d - mean).abs() < 5.0 * se,
            "increments not constant: {inc:?}"
        );
    }
    let last = g(11).value;
    assert!(last > 2.0 * g(1).value, "G^11 = {last}");
    let head = g(12);
    let expect = 1.0 * last / (last + cfg.model.ln_eps);
    assert!(
        z(head, expect).abs() < 5.0,
        "head kernel {:.4}±{:.4} vs {expect:.4}",
        head.value,
        head.stderr
    );
}

/// `trace` and `pairs` estimate the same summaries.
#[test]
fn trace_and_pairs_modes_agree() {
    let base = [
        "model.width=32",
        "model.heads=4",
        "model.layers=2",
        "model.n_out=8",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=16",
        "model.variances.pe=0.1",
        "model.variances.bias=0.2",
    ];
    let run = |mode: &str| {
        let mut sets = base.to_vec();
        let m = format!("run.backward={mode}");
        sets.push(&m);
        let mut cfg = config(&sets);
        let p = probe(&mut cfg);
        let ens = ensemble(&cfg, &p, 0, 3000, 2);
        rows(&cfg, &ens)
    };
    let (tr, pa) = (run("trace"), run("pairs"));
    let mut compared = 0;
    let mut worst: (f64, String) = (0.0, String::new());
    for a in tr
        .iter()
        .filter(|r| r.i == -1 && (r.observable == "grad2" || r.observable.starts_with("ntk")))
    {
        let b = find(&pa, a.layer, &a.site, &a.observable, -1, -1);
        let zz = (a.value - b.value) / (a.stderr.powi(2) + b.stderr.powi(2)).sqrt();
        if zz.abs() > worst.0 {
            worst = (zz.abs(), format!("{} layer {}", a.observable, a.layer));
        }
        compared += 1;
    }
    assert!(compared > 20, "only {compared} summaries compared");
    assert!(
        worst.0 < 5.0,
        "trace vs pairs: |z| = {:.2} at {}",
        worst.0,
        worst.1
    );
}

/// `stats.csv` does not depend on the thread count; shards merge into the unsharded
/// result; a run stopped and continued equals an uninterrupted one.
#[test]
fn threads_shards_and_resume_reproduce_the_same_statistics() {
    let mut cfg = config(&[
        "model.width=32",
        "model.heads=4",
        "model.layers=2",
        "model.n_out=8",
        "inputs.tokens=4",
        "inputs.dim=16",
    ]);
    let p = probe(&mut cfg);
    let n = 203;
    let one = rows(&cfg, &ensemble(&cfg, &p, 0, n, 1));
    let two = rows(&cfg, &ensemble(&cfg, &p, 0, n, 2));
    assert_eq!(one, two, "threads 1 and 2 differ");

    let mut merged = ensemble(&cfg, &p, 0, 70, 2);
    for (a, b) in [(70, 150), (150, n)] {
        merged.acc.merge(&ensemble(&cfg, &p, a, b, 2).acc);
    }
    let merged = rows(&cfg, &merged);
    assert_eq!(merged.len(), one.len());
    for (a, b) in merged.iter().zip(&one) {
        let rel = (a.value - b.value).abs() / b.value.abs().max(1e-300);
        assert!(
            rel < 1e-12,
            "{} layer {}: sharded {} vs {}",
            a.observable,
            a.layer,
            a.value,
            b.value
        );
    }

    // Resume: stop after 90 samples, then continue the same ensemble to the end.
    let job = Job::new(&cfg, &p);
    let mut ens = job.start(0, 90);
    job.run(&mut ens, 2, |_| Ok(())).unwrap();
    ens.end = n;
    job.run(&mut ens, 1, |_| Ok(())).unwrap();
    assert_eq!(rows(&cfg, &ens), one, "resumed run differs");
}

/// The f32 path (the vectorized normals, GELU and skinny kernels, picked at run time) does
/// not depend on the thread count either, on both samplers: width 128 puts every product on
/// the skinny kernels and every hidden unit through the vectorized GELU.
#[test]
fn f32_statistics_do_not_depend_on_threads() {
    for sampler in ["conditional", "dense"] {
        let mut cfg = config(&[
            "model.width=128",
            "model.heads=4",
            "model.layers=2",
            "model.activation=gelu",
            "inputs.tokens=8",
            "inputs.dim=16",
            "run.precision=f32",
            &format!("run.sampler={sampler}"),
        ]);
        let p = probe(&mut cfg);
        let one = rows(&cfg, &ensemble(&cfg, &p, 0, 37, 1));
        let two = rows(&cfg, &ensemble(&cfg, &p, 0, 37, 2));
        assert!(!one.is_empty());
        assert_eq!(one, two, "{sampler}: threads 1 and 2 differ");
    }
}

/// A no-LN ReLU stack with C_W = 3 overflows; the finite layers are kept and reported.
#[test]
fn divergence_keeps_the_finite_layers() {
    let mut cfg = config(&[
        "model.norm=none",
        "model.pattern=M",
        "model.activation=relu",
        "model.layers=400",
        "model.width=16",
        "model.heads=1",
        "model.mlp_mult=1",
        "model.n_out=4",
        "model.variances.w=3",
        "model.variances.x=3",
        "inputs.tokens=2",
        "inputs.dim=8",
    ]);
    let p = probe(&mut cfg);
    let ens = ensemble(&cfg, &p, 0, 8, 2);
    let d = ens.acc.diverged_at.expect("this network must overflow");
    assert!(d > 10 && d < 400, "diverged at layer {d}");
    let rows = rows(&cfg, &ens);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.value.is_finite() && r.layer < d));
    assert!(
        rows.iter()
            .any(|r| r.layer == d - 1 && r.observable == "kernel_diag")
    );
}
