//! The O(1/n) theory (`theory.order = 1`, docs/finite-width.md) against the Monte Carlo, at
//! two widths per model (release mode, fixed seeds).
//!
//! Each test checks every row of the chosen observables on every layer:
//!
//!   |mc − order 1| < 5·se + A,   A = |order 1 − order 0| · (κ + 4/n),
//!
//! where A is the O(1/n²) allowance. The 1/n series of every quantity here is a series in the
//! vertex per width, κ = V/(nK²) (the layer's excess kurtosis, the book's ℓ/n), so the term
//! after the computed 1/n shift δ₁ is δ₁·O(κ); the 4/n is the part that survives at κ = 0: for
//! an exactly Gaussian layer LayerNorm's centred kernel is K χ²_{n−1}/n and
//! E[1/Ĝ] = n/((n − 3)K) = (1 + 3/n + 9/n² + …)/K, whose 1/n² term is (3/n)·δ₁. Rows without
//! an order-0 value (the residual stream's `fluct`, new at order 1 and only leading there) get
//! A = value · (κ + 4/n), the size of their own 1/n correction.
//!
//! (The attention test below has no vertex at its layer, so κ = 0 there.)
//!
//! Each test also demands that order 0 is resolved as wrong somewhere (max |mc − order 0|/se
//! ≥ 10 at each width), so it cannot pass without the corrections: run with
//! `FINITE_WIDTH_ORDER=0` to check the same rows against order 0 (A = 0), which fails.

use std::collections::HashMap;

use sigprop::config::{Backward, Config, ConfigBuilder};
use sigprop::inputs;
use sigprop::mc;
use sigprop::stats::{Row, recorder};
use sigprop::theory::transformer::{self, TheoryOptions};

fn config(sets: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in sets {
        b = b.set(s).unwrap();
    }
    b.build().unwrap()
}

type Key = (usize, String, String, i64, i64);

fn keyed(rows: Vec<Row>) -> HashMap<Key, Row> {
    rows.into_iter()
        .map(|r| ((r.layer, r.site.clone(), r.observable.clone(), r.i, r.j), r))
        .collect()
}

/// Monte Carlo, order 0 and order 1 of one configuration.
struct Run {
    n: f64,
    mc: Vec<Row>,
    t0: HashMap<Key, Row>,
    t1: HashMap<Key, Row>,
}

fn run(sets: &[&str], samples: u64, seed: u64) -> Run {
    run_with(sets, samples, seed, false, 100_000)
}

/// [`run`], with the backward rows (`ntk_<group>`, `grad2`) when `backward`, and
/// `logit_samples` draws per attention block.
fn run_with(sets: &[&str], samples: u64, seed: u64, backward: bool, logit_samples: usize) -> Run {
    let mut cfg = config(sets);
    let probe = inputs::probe(&mut cfg).unwrap();
    let job = mc::Job {
        spec: &cfg.model,
        probe: &probe,
        backward: if backward {
            Backward::Trace
        } else {
            Backward::None
        },
        seed,
        sampler: mc::resolve_sampler(&cfg, &probe).unwrap(),
        probe_f32: None,
    };
    let mut ens = job.start(0, samples);
    job.run(&mut ens, 2, |_| Ok(())).unwrap();
    let mc = recorder::rows(&ens.rows, &ens.acc, "mc", "test", cfg.model.width, 1);
    let theory = |order: u8| {
        let opts = TheoryOptions {
            // Only attention samples the logit field; its error is then checked below.
            logit_samples,
            error_batches: 4,
            seed: 1,
            backward,
            pairs: false,
            order,
        };
        let (rows, diverged) = transformer::predict(&cfg.model, &probe, opts, "test").unwrap();
        assert_eq!(diverged, None);
        keyed(rows)
    };
    Run {
        n: cfg.model.width as f64,
        mc,
        t0: theory(0),
        t1: theory(1),
    }
}

/// The order the rows are checked against (1 unless `FINITE_WIDTH_ORDER=0`).
fn order() -> u8 {
    match std::env::var("FINITE_WIDTH_ORDER").as_deref() {
        Ok("0") => 0,
        _ => 1,
    }
}

/// κ at a row's layer: the order-1 kurtosis of its tokens, or (fluct − 2K²)/(nK²) where the
/// kurtosis is not derived.
fn kappa(run: &Run, r: &Row) -> f64 {
    let tok = |a: i64| {
        let k = |obs: &str| {
            run.t1
                .get(&(r.layer, "resid".to_string(), obs.to_string(), a, a))
                .map(|x| x.value)
        };
        match (k("kurtosis"), k("fluct"), k("kernel")) {
            (Some(ku), _, _) => ku.max(0.0),
            (None, Some(f), Some(kk)) => ((f - 2.0 * kk * kk) / (run.n * kk * kk)).max(0.0),
            _ => 0.0,
        }
    };
    let (i, j) = if r.i >= 0 { (r.i, r.j) } else { (0, 0) };
    tok(i).max(tok(j))
}

/// Checks every MC row of `observables` at `sites` (see the module doc); returns the worst
/// |z| against order 0 and order 1.
fn check(label: &str, run: &Run, sites: &[&str], observables: &[&str]) -> (f64, f64) {
    let against = order();
    let (mut worst0, mut worst1): (f64, f64) = (0.0, 0.0);
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in &run.mc {
        if !sites.contains(&r.site.as_str()) || !observables.contains(&r.observable.as_str()) {
            continue;
        }
        let key = (r.layer, r.site.clone(), r.observable.clone(), r.i, r.j);
        let Some(t1) = run.t1.get(&key) else { continue };
        if r.stderr <= 0.0 {
            continue;
        }
        checked += 1;
        let t0 = run.t0.get(&key).map(|x| x.value);
        if let Some(v0) = t0 {
            worst0 = worst0.max(((r.value - v0) / r.stderr).abs());
        }
        // The theory's own sampling error (attention), added in quadrature.
        let se = r.stderr.hypot(t1.stderr);
        let z1 = (r.value - t1.value) / se;
        worst1 = worst1.max(z1.abs());
        let (value, allowance) = match (against, t0) {
            (0, Some(v0)) => (v0, 0.0),
            (0, None) => continue,
            (_, Some(v0)) => (
                t1.value,
                (t1.value - v0).abs() * (kappa(run, r) + 4.0 / run.n),
            ),
            (_, None) => (t1.value, t1.value.abs() * (kappa(run, r) + 4.0 / run.n)),
        };
        let miss = (r.value - value).abs();
        if miss >= 5.0 * se + allowance {
            failures.push(format!(
                "ℓ={} {} {} ({},{}): mc {:.6e} ± {:.2e}, order {against} {value:.6e} (z {:.1}, allowance {allowance:.2e})",
                r.layer,
                r.site,
                r.observable,
                r.i,
                r.j,
                r.value,
                r.stderr,
                (r.value - value) / r.stderr
            ));
        }
    }
    println!(
        "{label}: {checked} rows, worst |z| order 0 {worst0:.1}, order 1 {worst1:.1}, {} failures",
        failures.len()
    );
    assert!(checked > 0, "{label}: no rows checked");
    assert!(
        failures.is_empty(),
        "{label}: {} rows miss:\n{}",
        failures.len(),
        failures.join("\n")
    );
    (worst0, worst1)
}

/// Runs `sets` at two widths and checks them; the shift must be resolved at both.
fn two_widths(
    label: &str,
    sets: &[&str],
    widths: [(usize, u64); 2],
    sites: &[&str],
    observables: &[&str],
) {
    for (n, samples) in widths {
        let w = format!("model.width={n}");
        let mut all: Vec<&str> = sets.to_vec();
        all.push(&w);
        let r = run(&all, samples, 11 + n as u64);
        let (z0, _) = check(&format!("{label} n={n}"), &r, sites, observables);
        assert!(
            z0 >= 10.0,
            "{label} n={n}: the 1/n shift is not resolved (worst order-0 |z| {z0:.1} < 10)"
        );
    }
}

const BOOK: [&str; 9] = [
    "model.preset=mlp-book",
    "model.n_out=16",
    "inputs.sequences=2",
    "inputs.tokens=1",
    "inputs.dim=32",
    "inputs.correlation=0.6",
    "run.backward=none",
    "model.layers=6",
    "model.variances.bias=0",
];

/// tanh at criticality (C_W = 1, K* = 0 class): the mean kernel falls below the leading order
/// on and off the diagonal (the book's K^{{1}}, §4.3/§5.4).
#[test]
fn book_mlp_tanh_mean_kernel() {
    let mut sets = BOOK.to_vec();
    sets.extend([
        "model.activation=tanh",
        "model.variances.stem=1",
        "model.variances.w=1",
        "model.variances.head=1",
    ]);
    two_widths(
        "tanh MLP",
        &sets,
        [(32, 60_000), (64, 40_000)],
        &["resid"],
        &["kernel"],
    );
}

/// ReLU at criticality (C_W = 2): the diagonal has no shift (⟨σ²⟩ is linear in K), the
/// off-diagonal one falls 5–10% below leading order; fluct and kurtosis get their own 1/n
/// (V^{{1}} and the six-point vertex, module doc of `theory::finite`).
#[test]
fn book_mlp_relu_kernel_fluct_kurtosis() {
    let mut sets = BOOK.to_vec();
    sets.extend([
        "model.activation=relu",
        "model.variances.stem=2",
        "model.variances.w=2",
        "model.variances.head=2",
    ]);
    two_widths(
        "ReLU MLP",
        &sets,
        [(32, 60_000), (64, 30_000)],
        &["resid"],
        &["kernel", "fluct", "kurtosis"],
    );
}

/// GELU at its half-stable criticality, with biases, three inputs (every pair of them).
#[test]
fn book_mlp_gelu_with_bias_three_inputs() {
    let mut sets = BOOK.to_vec();
    sets.retain(|s| !s.starts_with("inputs.sequences") && !s.starts_with("model.variances.bias"));
    sets.extend([
        "inputs.sequences=3",
        "model.layers=5",
        "model.activation=gelu",
        "model.variances.stem=1.98305826",
        "model.variances.w=1.98305826",
        "model.variances.head=1.98305826",
        "model.variances.bias=0.17292239",
    ]);
    two_widths(
        "GELU MLP",
        &sets,
        // At n = 64, 30,000 samples resolved the shift at order-0 |z| 9.4-13.8 over seven
        // seeds and two normal streams.
        [(32, 50_000), (64, 60_000)],
        &["resid"],
        &["kernel", "fluct", "kurtosis"],
    );
}

const RESIDUAL: [&str; 17] = [
    "model.pattern=M",
    "model.activation=relu",
    "model.mlp_mult=2",
    "model.layers=5",
    "model.n_out=16",
    "model.variances.stem=1",
    "model.variances.pe=0",
    "model.variances.w=2",
    "model.variances.x=1",
    "model.variances.bias=0",
    "model.variances.head=1",
    "inputs.sequences=2",
    "inputs.tokens=1",
    "inputs.dim=32",
    "inputs.correlation=0.5",
    "run.backward=none",
    "model.head=dense",
];

/// No LayerNorm: the stream's kernel doubles per block; its off-diagonal entry falls below
/// the leading order through the MLP's ⟨σσ⟩ curvature and the stream–branch covariance.
#[test]
fn residual_relu_stack_without_ln() {
    let mut sets = RESIDUAL.to_vec();
    sets.retain(|s| !s.starts_with("model.layers"));
    sets.extend(["model.norm=none", "model.layers=6"]);
    two_widths(
        "residual ReLU, no LN",
        &sets,
        // At n = 48, 80,000 samples resolved the shift at order-0 |z| 8.4-11.8 over seven
        // seeds and two normal streams, too close to the bar of 10.
        [(24, 80_000), (48, 160_000)],
        &["resid", "hidden"],
        &["kernel", "fluct"],
    );
}

/// Pre-LN: the off-diagonal stream kernel sits above the leading order, and the LN output's
/// diagonal G/(G + ε) below it by the normalizer's fluctuation (the ε-level misses of
/// `ln kernel_diag`).
#[test]
fn residual_relu_stack_pre_ln() {
    let mut sets = RESIDUAL.to_vec();
    sets.push("model.norm=pre");
    two_widths(
        "residual ReLU, pre-LN",
        &sets,
        [(32, 60_000), (64, 30_000)],
        &["resid", "ln", "hidden"],
        &["kernel", "fluct"],
    );
}

/// Post-LN: the stream is an LN output (its unit mean is exactly 0, so the next LN's centring
/// removes only the branch's share); the off-diagonal kernel falls below the leading order.
#[test]
fn residual_relu_stack_post_ln() {
    let mut sets = RESIDUAL.to_vec();
    sets.push("model.norm=post");
    two_widths(
        "residual ReLU, post-LN",
        &sets,
        [(32, 60_000), (64, 30_000)],
        &["resid", "hidden"],
        &["kernel"],
    );
}

/// Attention at finite head width C = n/H: order 1 draws the logits from their exact law
/// (q, k as C-dimensional Gaussians given the kernel, their dot product over √C), which moves
/// each query's largest attention weight below the Gaussian-field value by O(1/C). The logit
/// law is exact in C; the allowance covers the input kernel's own 1/n fluctuation (not
/// derived through attention), as elsewhere |δ₁|·4/n. `attn_entropy` is not checked: its
/// 1/C shift is small and that 1/n remainder is of the same size.
#[test]
fn attention_max_weight_at_finite_head_width() {
    let sets = [
        "model.preset=paper-vit",
        "model.heads=8",
        "model.pattern=A",
        "model.layers=1",
        "model.n_out=16",
        "inputs.tokens=4",
        "run.backward=none",
    ];
    two_widths(
        "attention, H = 8",
        &sets,
        [(32, 30_000), (64, 30_000)],
        &["logits"],
        &["attn_max"],
    );
}

/// The Q/K NTK of one attention block (no LayerNorm, so the block's input is the Gaussian stem
/// output and nothing after it normalizes): the logit path S_X is a strongly curved function
/// of the input kernel F (it measures how much the keys' values differ), so the 1/n
/// fluctuation of the empirical F̂ = (1/n) Σ s sᵀ raises `ntk_q` and `ntk_k` by ~5% at n = 64
/// and ~10% at n = 32 (5 to 10 times the size of the kernel's own 1/n shifts). Order 1 draws
/// F̂ from its exact Wishart law with each logit draw. The allowance is the module's
/// |δ₁|·4/n (κ = 0 at a Gaussian input); `ntk_v`/`ntk_u`, linear in F̂, hardly move and are
/// checked too.
#[test]
fn attention_qk_ntk_at_finite_width() {
    let sets = [
        "model.preset=paper-vit",
        "model.norm=none",
        "model.heads=8",
        "model.pattern=A",
        "model.layers=1",
        "model.n_out=16",
        "inputs.tokens=4",
    ];
    let obs = ["ntk_q", "ntk_k", "ntk_v", "ntk_u"];
    for (n, samples) in [(32, 12_000), (64, 24_000)] {
        let w = format!("model.width={n}");
        let mut all: Vec<&str> = sets.to_vec();
        all.push(&w);
        let r = run_with(&all, samples, 11 + n as u64, true, 20_000);
        let (z0, _) = check(&format!("attention Q/K NTK n={n}"), &r, &["param"], &obs);
        assert!(
            z0 >= 10.0,
            "attention Q/K NTK n={n}: the 1/n shift is not resolved (worst order-0 |z| {z0:.1} < 10)"
        );
    }
}

/// The kernel's fluctuation through attention: two attention blocks without LayerNorm.
/// Order 1 carries each increment as a Gaussian mixture over its random kernel, whose
/// fluctuation has an O(1/H) part (each head's attention is an O(1) random matrix) and a 1/n
/// part (the shared input F̂), plus its covariance with the stream; `fluct` on the stream then
/// exceeds the Gaussian 2K² by ~10% at n = 64. The reference "order 0" for `fluct` is that
/// Gaussian value 2K₀² (a stream with no vertex); the kernel rows are checked as well. The
/// allowance is the module's |δ₁|·(κ + 4/n).
#[test]
fn attention_kernel_fluctuation() {
    let sets = [
        "model.preset=paper-vit",
        "model.norm=none",
        "model.heads=8",
        "model.pattern=A",
        "model.layers=2",
        "model.n_out=16",
        "inputs.tokens=4",
        "run.backward=none",
    ];
    for (n, samples) in [(32, 20_000), (64, 30_000)] {
        let w = format!("model.width={n}");
        let mut all: Vec<&str> = sets.to_vec();
        all.push(&w);
        let mut r = run_with(&all, samples, 11 + n as u64, false, 20_000);
        // The Gaussian value of `fluct` at leading order: 2K₀² per token.
        let gauss: Vec<(Key, Row)> =
            r.t1.iter()
                .filter(|(k, _)| k.1 == "resid" && k.2 == "fluct")
                .filter_map(|(k, row)| {
                    let kk =
                        r.t0.get(&(k.0, "resid".into(), "kernel".into(), k.3, k.3))?;
                    let mut g = row.clone();
                    g.value = 2.0 * kk.value * kk.value;
                    Some((k.clone(), g))
                })
                .collect();
        r.t0.extend(gauss);
        let (z0, _) = check(
            &format!("attention fluct n={n}"),
            &r,
            &["resid"],
            &["fluct", "kernel"],
        );
        assert!(
            z0 >= 10.0,
            "attention fluct n={n}: the shift is not resolved (worst order-0 |z| {z0:.1} < 10)"
        );
    }
}
