//! The vectorized normal generator (`mc::normal`) against N(0, 1), in f32 and f64, at fixed
//! seeds. Sample sizes are stated in each test; tolerances are |z| < 5 from the exact
//! standard errors, and the Kolmogorov–Smirnov statistic below its α = 0.001 critical value.

use sigprop::mc::normal::FastNormals;

fn draws(precision: &str, n: usize, seed: u64) -> Vec<f64> {
    let mut g = FastNormals::from_seed(seed);
    if precision == "f32" {
        let mut v = vec![0f32; n];
        g.fill_f32(&mut v);
        v.into_iter().map(f64::from).collect()
    } else {
        let mut v = vec![0f64; n];
        g.fill_f64(&mut v);
        v
    }
}

fn phi(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// KS on 10⁶ draws: √n·D < 1.949 (the α = 0.001 critical value of the Kolmogorov law).
#[test]
fn kolmogorov_smirnov_on_a_million_draws() {
    for p in ["f32", "f64"] {
        let n = 1_000_000;
        let mut v = draws(p, n, 11);
        v.sort_by(f64::total_cmp);
        let mut d = 0.0f64;
        for (i, &x) in v.iter().enumerate() {
            let f = phi(x);
            d = d.max((f - i as f64 / n as f64).abs());
            d = d.max(((i + 1) as f64 / n as f64 - f).abs());
        }
        let stat = d * (n as f64).sqrt();
        assert!(stat < 1.949, "{p}: KS √n·D = {stat:.3} at n = {n}");
    }
}

/// Moments on 10⁷ draws: E z, E z², E z⁴, E z⁶ against 0, 1, 3, 15 with the exact standard
/// errors √(Var z^k / n) (Var z^k = E z^{2k} − (E z^k)²: 1, 2, 96, 10170).
#[test]
fn moments_through_the_sixth_on_ten_million_draws() {
    for p in ["f32", "f64"] {
        let n = 10_000_000;
        let v = draws(p, n, 12);
        let mean = |f: &dyn Fn(f64) -> f64| v.iter().map(|&x| f(x)).sum::<f64>() / n as f64;
        let checks: [(&str, f64, f64, f64); 4] = [
            ("E z", mean(&|x| x), 0.0, 1.0),
            ("E z²", mean(&|x| x * x), 1.0, 2.0),
            ("E z⁴", mean(&|x| x.powi(4)), 3.0, 96.0),
            ("E z⁶", mean(&|x| x.powi(6)), 15.0, 10170.0),
        ];
        for (name, got, want, var) in checks {
            let z = (got - want) / (var / n as f64).sqrt();
            assert!(
                z.abs() < 5.0,
                "{p}: {name} = {got} (want {want}), z = {z:.2}, n = {n}"
            );
        }
    }
}

/// Tails on 10⁷ draws: P(|z| > k) for k = 2, 3, 4, 5 against 2(1 − Φ(k)) with binomial
/// standard errors (expected counts 455 000, 27 000, 633 and 5.7).
#[test]
fn tails_to_five_sigma_on_ten_million_draws() {
    for p in ["f32", "f64"] {
        let n = 10_000_000;
        let v = draws(p, n, 13);
        for k in [2.0, 3.0, 4.0, 5.0] {
            let want = 2.0 * (1.0 - phi(k));
            let got = v.iter().filter(|x| x.abs() > k).count() as f64 / n as f64;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            let z = (got - want) / se;
            assert!(
                z.abs() < 5.0,
                "{p}: P(|z| > {k}) = {got:e} vs {want:e}, z = {z:.2}"
            );
        }
    }
}

/// No serial dependence on 10⁷ draws: lag correlations of z (SE 1/√n) and of z² − 1
/// (SE 2/√n) at lags 1 (within a Box–Muller pair), 2, 7, 8 (lane), 16 (block row) and 513
/// (across refills) vanish.
#[test]
fn no_serial_correlation_on_ten_million_draws() {
    for p in ["f32", "f64"] {
        let n = 10_000_000;
        let v = draws(p, n, 14);
        for lag in [1usize, 2, 7, 8, 16, 513] {
            let m = n - lag;
            let c1 = (0..m).map(|i| v[i] * v[i + lag]).sum::<f64>() / m as f64;
            let c2 = (0..m)
                .map(|i| (v[i] * v[i] - 1.0) * (v[i + lag] * v[i + lag] - 1.0))
                .sum::<f64>()
                / m as f64;
            let z1 = c1 * (m as f64).sqrt();
            let z2 = c2 * (m as f64).sqrt() / 2.0;
            assert!(
                z1.abs() < 5.0 && z2.abs() < 5.0,
                "{p}: lag {lag}: z·z' z = {z1:.2}, (z²−1)(z'²−1) z = {z2:.2}"
            );
        }
    }
}

/// Different seeds give unrelated streams (the per-sample seeding of the Monte Carlo).
#[test]
fn neighbouring_seeds_are_uncorrelated() {
    let n = 1_000_000;
    let a = draws("f32", n, 100);
    let b = draws("f32", n, 101);
    let c = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / n as f64;
    let z = c * (n as f64).sqrt();
    assert!(z.abs() < 5.0, "seeds 100 and 101: z = {z:.2}");
}
