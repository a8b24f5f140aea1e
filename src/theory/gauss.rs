//! Gaussian expectations ⟨F(z₁, z₂)⟩ under a 2×2 covariance (SPEC §4, first bullet).
//!
//! Every infinite-width recursion of the book (Roberts–Yaida–Hanin, arXiv 2106.10165, §4.3) and
//! of the Transformer paper (the MLP block map (1.77)) needs averages of the form
//! ⟨σ(z₁)σ(z₂)⟩_K and ⟨σ'(z₁)σ'(z₂)⟩_K over a zero-mean Gaussian (z₁, z₂) with covariance K.
//!
//! Three routes, chosen so that each result is accurate to about 1e-10 or better:
//! - closed forms where they exist: ReLU (the arc-cosine kernels of Cho & Saul), linear, and erf
//!   (Williams 1997);
//! - tensor-product Gauss–Hermite quadrature on the Cholesky factor of K ([`expect1`],
//!   [`expect2`]): cheap and spectrally accurate while σ varies slowly on the scale of one
//!   standard deviation;
//! - composite Gauss–Legendre on the truncated plane, with panels scaled to the standard
//!   deviations and split where z₁ = 0 or z₂ = 0 ([`expect1_panels`], [`expect2_panels`]).
//!
//! Why two rules: Gauss–Hermite spends its nodes in the Gaussian tails, so near the origin its
//! spacing is ≈ 0.28 standard deviations for 128 nodes. A saturating σ at large variance (tanh
//! at K = 3 has poles π/(2√K) ≈ 0.9 standard deviations from the real axis) is then resolved only
//! to ~1e-6, and ReLU's kink only algebraically. Panels sized to the features of σ, split at the
//! kink, fix both. [`moment1`] and [`moment2`] pick the rule: Gauss–Hermite for smooth σ with
//! variances ≤ [`GH_MAX_VAR`], panels otherwise. Because the two rules share no nodes, each is
//! the independent reference for the other in the tests.
//!
//! Degenerate covariances (k₁₁ = 0, or perfect correlation) are handled by a Cholesky factor with
//! zero columns, never by dividing by a zero determinant, so they give finite results.

use std::f64::consts::PI;
use std::sync::OnceLock;

use crate::model::activation::Activation;

/// Number of Gauss–Hermite nodes per dimension; polynomials of degree 255 are integrated exactly.
pub const GH_ORDER: usize = 128;

/// Largest variance for which [`moment1`]/[`moment2`] trust Gauss–Hermite on a smooth σ. Measured
/// against the panel rule at var = 1: tanh 9e-12 for ⟨σ'²⟩ (its poles at ±iπ/2 are the
/// closest of the smooth activations), gelu, silu and erf below 1e-15. At var = 2 tanh is
/// already off by 5e-8, so the threshold is not generous.
pub const GH_MAX_VAR: f64 = 1.0;

/// Half-width, in standard deviations, of the domain of the panel rule. The Gaussian mass
/// beyond 10σ is 1.5e-23, far below the 1e-10 target even after multiplication by the
/// polynomially growing integrands used here (up to σ⁴ ~ z⁴).
const GL_RADIUS: f64 = 10.0;
/// Gauss–Legendre order per panel.
const GL_ORDER: usize = 16;
/// Panel width in units of 1/(standard deviation of z), capped at 1 in units of u. The
/// closest singularity of the smooth activations (tanh, at Im z = π/2) then lies at least
/// π/4 ≈ 0.8 panel widths off the real axis, so 16-point Gauss–Legendre converges like
/// ρ^(−32) with ρ ≈ 3.4: ~1e-17.
const GL_PANEL_SCALE: f64 = 2.0;

/// A zero-mean bivariate Gaussian covariance [[k11, k12], [k12, k22]].
///
/// Must be positive semi-definite: k11 ≥ 0, k22 ≥ 0, k12² ≤ k11·k22 (up to rounding, which is
/// clamped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cov2 {
    pub k11: f64,
    pub k12: f64,
    pub k22: f64,
}

impl Cov2 {
    /// Builds a covariance from its three independent entries.
    pub fn new(k11: f64, k12: f64, k22: f64) -> Self {
        Cov2 { k11, k12, k22 }
    }

    /// The covariance of a single input: k11 = k12 = k22 = k (both points coincide).
    pub fn diag(k: f64) -> Self {
        Cov2 {
            k11: k,
            k12: k,
            k22: k,
        }
    }

    /// Correlation ρ = k12/√(k11 k22), or 0 when either variance vanishes.
    pub fn corr(&self) -> f64 {
        let d = self.k11.max(0.0).sqrt() * self.k22.max(0.0).sqrt();
        if d > 0.0 { self.k12 / d } else { 0.0 }
    }

    /// Applies `f` to every entry (used for affine maps such as C_b + C_W·⟨σσ⟩).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Cov2 {
            k11: f(self.k11),
            k12: f(self.k12),
            k22: f(self.k22),
        }
    }

    /// 1 − ρ² = det/(k11·k22), clamped to [0, 1], computed on entries scaled by √k11·√k22 so that
    /// neither overflow (k ~ 1e200 in a diverging network) nor rounding of an exactly singular
    /// covariance spoils it. Returns 1 when a variance is zero (no correlation to speak of).
    fn one_minus_rho2(&self) -> f64 {
        let s = self.k11.max(0.0).sqrt() * self.k22.max(0.0).sqrt();
        if s == 0.0 {
            return 1.0;
        }
        let (a, b, c) = (self.k11 / s, self.k22 / s, self.k12 / s);
        (a * b - c * c).clamp(0.0, 1.0)
    }

    /// Cholesky factor (l11, l21, l22) with z₁ = l11·u₁, z₂ = l21·u₁ + l22·u₂ for independent
    /// standard normals u. Zero pivots give zero columns instead of NaN: with k11 = 0, z₁ ≡ 0 and
    /// z₂ is carried by u₂ alone; with perfect correlation l22 = 0.
    fn cholesky(&self) -> (f64, f64, f64) {
        debug_assert!(
            self.k11 >= 0.0 && self.k22 >= 0.0,
            "covariance with a negative variance: {self:?}"
        );
        let l11 = self.k11.max(0.0).sqrt();
        if l11 == 0.0 {
            return (0.0, 0.0, self.k22.max(0.0).sqrt());
        }
        let l21 = self.k12 / l11;
        // l22² = det/k11 = k22·(1 − ρ²). Forming the determinant (rather than k22 − l21²) keeps
        // an exactly singular covariance exactly singular; ReLU's ⟨σ'σ'⟩ ∝ √(1 + ρ) near ρ = −1
        // would otherwise turn a rounding error of 1e-16 into an error of 1e-8.
        let l22 = (self.k22.max(0.0) * self.one_minus_rho2()).sqrt();
        (l11, l21, l22)
    }
}

/// A quadrature rule: nodes and weights.
struct Rule {
    x: Vec<f64>,
    w: Vec<f64>,
}

/// Gauss–Hermite rule for ∫ e^{−x²} f(x) dx with `n` nodes, by Newton iteration on the
/// orthonormal Hermite recurrence (which cannot overflow for n ≤ 256) from the classic
/// asymptotic initial guesses (Numerical Recipes §4.6, `gauher`).
fn gauss_hermite(n: usize) -> Rule {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    let pim4 = PI.powf(-0.25);
    let m = n.div_ceil(2);
    let nf = n as f64;
    let mut z = 0.0_f64;
    for i in 0..m {
        z = match i {
            0 => (2.0 * nf + 1.0).sqrt() - 1.85575 * (2.0 * nf + 1.0).powf(-1.0 / 6.0),
            1 => z - 1.14 * nf.powf(0.426) / z,
            2 => 1.86 * z - 0.86 * x[0],
            3 => 1.91 * z - 0.91 * x[1],
            _ => 2.0 * z - x[i - 2],
        };
        let mut pp = 0.0;
        for _ in 0..100 {
            let (p1, dp) = hermite_orthonormal(n, z, pim4);
            pp = dp;
            let dz = p1 / pp;
            z -= dz;
            if dz.abs() <= 1e-15 * z.abs().max(1.0) {
                break;
            }
        }
        let (_, dp) = hermite_orthonormal(n, z, pim4);
        if dp.is_finite() {
            pp = dp;
        }
        x[i] = z;
        x[n - 1 - i] = -z;
        w[i] = 2.0 / (pp * pp);
        w[n - 1 - i] = w[i];
    }
    Rule { x, w }
}

/// Orthonormal Hermite polynomial h_n(z) and its derivative √(2n)·h_{n−1}(z).
fn hermite_orthonormal(n: usize, z: f64, pim4: f64) -> (f64, f64) {
    let mut p1 = pim4;
    let mut p2 = 0.0;
    for j in 1..=n {
        let p3 = p2;
        p2 = p1;
        let jf = j as f64;
        p1 = z * (2.0 / jf).sqrt() * p2 - ((jf - 1.0) / jf).sqrt() * p3;
    }
    (p1, (2.0 * n as f64).sqrt() * p2)
}

/// Gauss–Legendre rule on [−1, 1] with `n` nodes, by Newton iteration on the Legendre
/// recurrence (Numerical Recipes §4.6, `gauleg`).
fn gauss_legendre(n: usize) -> Rule {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    let nf = n as f64;
    for i in 0..n.div_ceil(2) {
        let mut z = (PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
        let mut pp = 1.0;
        for _ in 0..100 {
            let mut p1 = 1.0;
            let mut p2 = 0.0;
            for j in 1..=n {
                let p3 = p2;
                p2 = p1;
                let jf = j as f64;
                p1 = ((2.0 * jf - 1.0) * z * p2 - (jf - 1.0) * p3) / jf;
            }
            pp = nf * (z * p1 - p2) / (z * z - 1.0);
            let dz = p1 / pp;
            z -= dz;
            if dz.abs() <= 1e-16 {
                break;
            }
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = 2.0 / ((1.0 - z * z) * pp * pp);
        w[n - 1 - i] = w[i];
    }
    Rule { x, w }
}

/// The Gauss–Hermite rule rescaled to a standard normal: E g(u) ≈ Σ wᵢ g(uᵢ). Computed once.
fn std_normal_gh() -> &'static Rule {
    static RULE: OnceLock<Rule> = OnceLock::new();
    RULE.get_or_init(|| to_std_normal(gauss_hermite(GH_ORDER)))
}

fn to_std_normal(r: Rule) -> Rule {
    let s = 2.0_f64.sqrt();
    let c = 1.0 / PI.sqrt();
    Rule {
        x: r.x.iter().map(|x| s * x).collect(),
        w: r.w.iter().map(|w| c * w).collect(),
    }
}

fn std_gl() -> &'static Rule {
    static RULE: OnceLock<Rule> = OnceLock::new();
    RULE.get_or_init(|| gauss_legendre(GL_ORDER))
}

/// E g(u), u ~ N(0, 1), with a Gauss–Hermite rule (`rule` already rescaled).
fn gh_std(rule: &Rule, g: impl Fn(f64) -> f64) -> f64 {
    rule.x.iter().zip(&rule.w).map(|(&u, &w)| w * g(u)).sum()
}

/// Composite Gauss–Legendre rule for E g(u), u ~ N(0, 1), on [−R, R].
struct Panels<'a> {
    rule: &'a Rule,
    /// Largest panel width in u.
    width: f64,
}

impl Panels<'_> {
    /// Panels for an integrand that varies on the scale 1/`scale` in u (scale = the standard
    /// deviation the integrand multiplies u by).
    fn for_scale(scale: f64) -> Panels<'static> {
        Panels::with(std_gl(), GL_PANEL_SCALE, scale)
    }

    fn with(rule: &Rule, panel_scale: f64, scale: f64) -> Panels<'_> {
        let width = if scale > 0.0 {
            (panel_scale / scale).min(1.0)
        } else {
            1.0
        };
        Panels { rule, width }
    }

    /// E g(u) split at `breaks` (points outside (−R, R) are ignored).
    fn integrate(&self, g: impl Fn(f64) -> f64, breaks: &[f64]) -> f64 {
        let norm = 1.0 / (2.0 * PI).sqrt();
        let mut pts: Vec<f64> = breaks
            .iter()
            .copied()
            .filter(|b| b.is_finite() && b.abs() < GL_RADIUS)
            .collect();
        pts.push(-GL_RADIUS);
        pts.push(GL_RADIUS);
        pts.sort_by(f64::total_cmp);
        let mut total = 0.0;
        for seg in pts.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            if b <= a {
                continue;
            }
            let panels = ((b - a) / self.width).ceil().max(1.0) as usize;
            let half = 0.5 * (b - a) / panels as f64;
            for p in 0..panels {
                let mid = a + (2 * p + 1) as f64 * half;
                let s: f64 = self
                    .rule
                    .x
                    .iter()
                    .zip(&self.rule.w)
                    .map(|(&x, &w)| {
                        let u = mid + half * x;
                        w * (-0.5 * u * u).exp() * g(u)
                    })
                    .sum();
                total += half * s;
            }
        }
        norm * total
    }
}

/// ⟨f(z)⟩ for z ~ N(0, var), by Gauss–Hermite quadrature ([`GH_ORDER`] nodes).
///
/// Spectrally accurate for f smooth on the scale of √var; for f with a kink, or saturating
/// at large variance, use [`expect1_panels`].
pub fn expect1(f: impl Fn(f64) -> f64, var: f64) -> f64 {
    let s = var.max(0.0).sqrt();
    gh_std(std_normal_gh(), |u| f(s * u))
}

/// ⟨f(z)⟩ for z ~ N(0, var), by composite Gauss–Legendre with panels scaled to √var and a
/// split at z = 0.
///
/// Accurate for f that is smooth except at z = 0 (ReLU and its derivative) and for saturating σ
/// at large variance; slower than [`expect1`] (≈ 300–700 evaluations).
pub fn expect1_panels(f: impl Fn(f64) -> f64, var: f64) -> f64 {
    let s = var.max(0.0).sqrt();
    Panels::for_scale(s).integrate(|u| f(s * u), &[0.0])
}

/// ⟨f(z₁, z₂)⟩ for (z₁, z₂) ~ N(0, cov), by tensor-product Gauss–Hermite quadrature on the
/// Cholesky factor ([`GH_ORDER`]² nodes).
///
/// Spectrally accurate for f smooth on the scale of the standard deviations; otherwise use
/// [`expect2_panels`]. A singular covariance reduces to one dimension.
pub fn expect2(f: impl Fn(f64, f64) -> f64, cov: Cov2) -> f64 {
    let (l11, l21, l22) = cov.cholesky();
    let rule = std_normal_gh();
    if l22 == 0.0 {
        // Perfect correlation (or k22 = 0): z₂ is a multiple of z₁, one dimension suffices.
        return gh_std(rule, |u| f(l11 * u, l21 * u));
    }
    gh_std(rule, |u1| {
        let (z1, m2) = (l11 * u1, l21 * u1);
        gh_std(rule, |u2| f(z1, m2 + l22 * u2))
    })
}

/// ⟨f(z₁, z₂)⟩ for (z₁, z₂) ~ N(0, cov), by composite Gauss–Legendre on the plane, with
/// panels scaled to the Cholesky factor and splits where z₁ = 0 and where z₂ = 0.
///
/// For f smooth except on the lines z₁ = 0 and z₂ = 0 (products of ReLU and its derivative) and
/// for saturating σ at large variance. Costs ~10⁵ evaluations: a reference and a fallback.
pub fn expect2_panels(f: impl Fn(f64, f64) -> f64, cov: Cov2) -> f64 {
    expect2_panels_with(std_gl(), GL_PANEL_SCALE, f, cov)
}

fn expect2_panels_with(
    rule: &Rule,
    panel_scale: f64,
    f: impl Fn(f64, f64) -> f64,
    cov: Cov2,
) -> f64 {
    let (l11, l21, l22) = cov.cholesky();
    let outer = Panels::with(rule, panel_scale, l11.max(l21.abs()));
    if l22 == 0.0 {
        return outer.integrate(|u| f(l11 * u, l21 * u), &[0.0]);
    }
    let inner = Panels::with(rule, panel_scale, l22);
    // After the inner integral, a kink of z₂ along u₂ = −(l21/l22)·u₁ becomes a smooth step in
    // u₁ of width w = l22/|l21|. Near perfect correlation w is tiny, so the outer rule gets
    // breaks graded geometrically towards u₁ = 0 to resolve the step.
    let mut breaks = vec![0.0];
    if l21 != 0.0 {
        let w = l22 / l21.abs();
        let mut b = 0.125 * w;
        while b < 1.0 {
            breaks.push(b);
            breaks.push(-b);
            b *= 2.0;
        }
    }
    outer.integrate(
        |u1| {
            let (z1, m2) = (l11 * u1, l21 * u1);
            // z₂ = m2 + l22·u₂ changes sign at u₂ = −m2/l22.
            inner.integrate(|u2| f(z1, m2 + l22 * u2), &[-m2 / l22])
        },
        &breaks,
    )
}

/// True when σ is smooth enough for Gauss–Hermite quadrature; ReLU's kink needs the panel rule.
fn is_smooth(act: Activation) -> bool {
    !matches!(act, Activation::Relu)
}

/// ⟨g(z)⟩ for z ~ N(0, var), with the quadrature suited to `act`: `g` is meant to be built from
/// σ = `act` (e.g. z ↦ σ(z)⁴), so it inherits σ's kinks and saturation. Gauss–Hermite for a
/// smooth σ at var ≤ [`GH_MAX_VAR`], the panel rule otherwise.
pub fn moment1(act: Activation, var: f64, g: impl Fn(f64) -> f64) -> f64 {
    if is_smooth(act) && var <= GH_MAX_VAR {
        expect1(g, var)
    } else {
        expect1_panels(g, var)
    }
}

/// ⟨g(z₁, z₂)⟩ for (z₁, z₂) ~ N(0, cov), with the quadrature suited to `act` (see [`moment1`]).
pub fn moment2(act: Activation, cov: Cov2, g: impl Fn(f64, f64) -> f64) -> f64 {
    if is_smooth(act) && cov.k11.max(cov.k22) <= GH_MAX_VAR {
        expect2(g, cov)
    } else {
        expect2_panels(g, cov)
    }
}

/// Angle θ between the two inputs, θ = arccos ρ, computed as atan2(√(1 − ρ²), ρ) so it stays
/// accurate when ρ → ±1 (where arccos loses half the digits).
fn angle(cov: Cov2) -> f64 {
    cov.one_minus_rho2().sqrt().atan2(cov.corr())
}

/// ⟨σ(z₁)σ(z₂)⟩ under `cov`: closed form for relu, linear and erf, quadrature otherwise.
///
/// ReLU: √(k11 k22)/(2π)·(sin θ + (π − θ) cos θ) (arc-cosine kernel of degree 1).
/// erf: (2/π)·asin(2k12/√((1 + 2k11)(1 + 2k22))).
pub fn sigma_sigma(act: Activation, cov: Cov2) -> f64 {
    match act {
        Activation::Linear => cov.k12,
        Activation::Relu => {
            let r = cov.k11.max(0.0).sqrt() * cov.k22.max(0.0).sqrt();
            if r == 0.0 {
                return 0.0;
            }
            let th = angle(cov);
            r / (2.0 * PI) * (th.sin() + (PI - th) * th.cos())
        }
        Activation::Erf => {
            let d = ((1.0 + 2.0 * cov.k11) * (1.0 + 2.0 * cov.k22)).sqrt();
            2.0 / PI * (2.0 * cov.k12 / d).clamp(-1.0, 1.0).asin()
        }
        _ => moment2(act, cov, |a, b| act.f(a) * act.f(b)),
    }
}

/// ⟨σ'(z₁)σ'(z₂)⟩ under `cov`: closed form for relu, linear and erf, quadrature otherwise.
///
/// ReLU: (π − θ)/(2π) (arc-cosine kernel of degree 0). When k11 = 0 or k22 = 0 the point sits
/// on the kink almost surely; with the convention σ'(0) = 0 of [`Activation::df`] the average is
/// 0 (the closed form has no limit there). erf: (4/π)/√((1 + 2k11)(1 + 2k22) − 4k12²).
pub fn dsigma_dsigma(act: Activation, cov: Cov2) -> f64 {
    match act {
        Activation::Linear => 1.0,
        Activation::Relu => {
            if cov.k11 <= 0.0 || cov.k22 <= 0.0 {
                return 0.0;
            }
            (PI - angle(cov)) / (2.0 * PI)
        }
        Activation::Erf => {
            let d = (1.0 + 2.0 * cov.k11) * (1.0 + 2.0 * cov.k22) - 4.0 * cov.k12 * cov.k12;
            4.0 / PI / d.sqrt()
        }
        _ => moment2(act, cov, |a, b| act.df(a) * act.df(b)),
    }
}

/// ⟨σ(z)²⟩ for z ~ N(0, var).
pub fn sigma2(act: Activation, var: f64) -> f64 {
    sigma_sigma(act, Cov2::diag(var))
}

/// ⟨σ'(z)²⟩ for z ~ N(0, var).
pub fn dsigma2(act: Activation, var: f64) -> f64 {
    dsigma_dsigma(act, Cov2::diag(var))
}

/// ⟨σ(z)⁴⟩ for z ~ N(0, var).
pub fn sigma4(act: Activation, var: f64) -> f64 {
    match act {
        Activation::Linear => 3.0 * var * var,
        Activation::Relu => 1.5 * var * var,
        _ => moment1(act, var, |z| act.f(z).powi(4)),
    }
}

/// ⟨z σ(z) σ'(z)⟩ for z ~ N(0, var); by Gaussian integration by parts it equals
/// (var/2)·⟨(σ²)''⟩ = var·d⟨σ²⟩/dvar, the numerator of the book's χ∥.
pub fn z_sigma_dsigma(act: Activation, var: f64) -> f64 {
    match act {
        Activation::Linear => var,
        Activation::Relu => 0.5 * var,
        _ => moment1(act, var, |z| z * act.f(z) * act.df(z)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Covariances for the tests: moderate, negative correlation, near-singular, exactly
    /// singular (both signs), unequal variances, one variance zero, large variance.
    fn covariances() -> Vec<Cov2> {
        vec![
            Cov2::new(1.0, 0.3, 1.0),
            Cov2::new(0.7, -0.5, 1.3),
            Cov2::new(2.0, -1.9, 2.5),
            Cov2::new(1.0, 1.0 - 1e-12, 1.0),
            Cov2::new(1.0, -(1.0 - 1e-12), 1.0),
            Cov2::new(1.0, 1.0, 1.0),
            Cov2::new(0.5, -0.5, 0.5),
            Cov2::new(4.0, 2.0, 1.0),
            Cov2::new(0.01, 0.002, 0.05),
            Cov2::new(0.0, 0.0, 1.5),
            Cov2::new(9.0, 3.0, 4.0),
            Cov2::new(2.0, -2.0 + 1e-9, 2.0),
        ]
    }

    /// A finer, differently-noded panel rule (32 Gauss–Legendre nodes on panels half as wide)
    /// as the reference for the default rules.
    fn fine_rule() -> Rule {
        gauss_legendre(32)
    }

    fn fine2(rule: &Rule, f: impl Fn(f64, f64) -> f64, cov: Cov2) -> f64 {
        expect2_panels_with(rule, 0.5 * GL_PANEL_SCALE, f, cov)
    }

    fn fine1(rule: &Rule, f: impl Fn(f64) -> f64, var: f64) -> f64 {
        let s = var.max(0.0).sqrt();
        Panels::with(rule, 0.5 * GL_PANEL_SCALE, s).integrate(|u| f(s * u), &[0.0])
    }

    #[test]
    fn rules_integrate_gaussian_moments() {
        // E u^{2k} = (2k − 1)!!; 128 Gauss–Hermite nodes are exact up to degree 255, so only
        // rounding remains. The panel rule truncates at 10σ, which is harmless up to u^12.
        let mut dfact = 1.0;
        let mut worst_gh: f64 = 0.0;
        let mut worst_gl: f64 = 0.0;
        for k in 1..=6 {
            dfact *= (2 * k - 1) as f64;
            let m = expect1(|z| z.powi(2 * k), 1.0);
            worst_gh = worst_gh.max((m / dfact - 1.0).abs());
            let m = Panels::for_scale(1.0).integrate(|u| u.powi(2 * k), &[0.3]);
            worst_gl = worst_gl.max((m / dfact - 1.0).abs());
        }
        let s: f64 = std_normal_gh().w.iter().sum();
        println!(
            "moments up to u^12: GH max rel err {worst_gh:.2e}, panels {worst_gl:.2e}; GH weight sum − 1 = {:.2e}",
            s - 1.0
        );
        assert!(worst_gh < 1e-12, "Gauss–Hermite max rel err {worst_gh:e}");
        assert!(worst_gl < 1e-12, "panel rule max rel err {worst_gl:e}");
        assert!((s - 1.0).abs() < 1e-14);
    }

    #[test]
    fn quadrature_matches_closed_forms() {
        let mut worst_panels: f64 = 0.0;
        let mut worst_gh: f64 = 0.0;
        for cov in covariances() {
            for act in [Activation::Relu, Activation::Linear, Activation::Erf] {
                let ss = |a: f64, b: f64| act.f(a) * act.f(b);
                let dd = |a: f64, b: f64| act.df(a) * act.df(b);
                let exact = [sigma_sigma(act, cov), dsigma_dsigma(act, cov)];
                let panels = [expect2_panels(ss, cov), expect2_panels(dd, cov)];
                let e = (exact[0] - panels[0])
                    .abs()
                    .max((exact[1] - panels[1]).abs());
                assert!(
                    e.is_finite() && e < 1e-10,
                    "{} at {cov:?}: closed {exact:?} vs panel rule {panels:?}",
                    act.name()
                );
                worst_panels = worst_panels.max(e);
                // Gauss–Hermite is only claimed for smooth σ within GH_MAX_VAR.
                if act != Activation::Relu && cov.k11.max(cov.k22) <= GH_MAX_VAR {
                    let gh = [expect2(ss, cov), expect2(dd, cov)];
                    let e = (exact[0] - gh[0]).abs().max((exact[1] - gh[1]).abs());
                    assert!(
                        e < 1e-10,
                        "{} at {cov:?}: closed {exact:?} vs Gauss–Hermite {gh:?}",
                        act.name()
                    );
                    worst_gh = worst_gh.max(e);
                }
            }
        }
        println!(
            "closed forms: max |Δ| panel rule {worst_panels:.2e}, Gauss–Hermite {worst_gh:.2e}"
        );
    }

    #[test]
    fn smooth_activations_match_reference_quadrature() {
        let rule = fine_rule();
        let mut worst: f64 = 0.0;
        let mut worst_gh: f64 = 0.0;
        for act in [
            Activation::Gelu,
            Activation::Tanh,
            Activation::Silu,
            Activation::Erf,
        ] {
            for cov in covariances() {
                let ss = |a: f64, b: f64| act.f(a) * act.f(b);
                let dd = |a: f64, b: f64| act.df(a) * act.df(b);
                // What the recursions use (closed form for erf, dispatched quadrature otherwise)
                // and the raw panel rule, against the fine reference.
                for (used, f) in [
                    (sigma_sigma(act, cov), &ss as &dyn Fn(f64, f64) -> f64),
                    (dsigma_dsigma(act, cov), &dd),
                ] {
                    let reference = fine2(&rule, f, cov);
                    let panels = expect2_panels(f, cov);
                    let e = (used - reference).abs().max((panels - reference).abs());
                    assert!(
                        e < 1e-10,
                        "{} at {cov:?}: used {used}, panels {panels}, reference {reference}",
                        act.name()
                    );
                    worst = worst.max(e);
                    if cov.k11.max(cov.k22) <= GH_MAX_VAR {
                        let gh = expect2(f, cov);
                        let e = (gh - reference).abs();
                        assert!(
                            e < 1e-10,
                            "{} at {cov:?}: GH {gh} vs {reference}",
                            act.name()
                        );
                        worst_gh = worst_gh.max(e);
                    }
                }
            }
        }
        println!(
            "smooth σ vs fine reference: max |Δ| {worst:.2e} (Gauss–Hermite alone {worst_gh:.2e})"
        );
    }

    #[test]
    fn large_variance_dispatch_stays_accurate() {
        // Where Gauss–Hermite alone fails (tanh at var 3: ~1e-6), the dispatched moments must not.
        let rule = fine_rule();
        let mut worst: f64 = 0.0;
        for act in [Activation::Gelu, Activation::Tanh, Activation::Silu] {
            for var in [0.3, 1.0, 3.0, 9.0, 25.0] {
                let e = (sigma2(act, var) - fine1(&rule, |z| act.f(z).powi(2), var))
                    .abs()
                    .max((dsigma2(act, var) - fine1(&rule, |z| act.df(z).powi(2), var)).abs());
                assert!(e < 1e-10, "{} var {var}: Δ {e:e}", act.name());
                worst = worst.max(e);
            }
        }
        println!("1-D ⟨σ²⟩, ⟨σ'²⟩ up to var 25: max |Δ| {worst:.2e}");
    }

    #[test]
    fn degenerate_covariances_are_finite() {
        for act in Activation::ALL {
            for cov in [
                Cov2::new(0.0, 0.0, 0.0),
                Cov2::new(0.0, 0.0, 1.0),
                Cov2::diag(2.0),
            ] {
                let (a, b) = (sigma_sigma(act, cov), dsigma_dsigma(act, cov));
                assert!(
                    a.is_finite() && b.is_finite(),
                    "{} at {cov:?}: {a}, {b}",
                    act.name()
                );
            }
        }
        // All mass at the origin: ⟨σσ⟩ = σ(0)² and ⟨σ'σ'⟩ = σ'(0)².
        let zero = Cov2::new(0.0, 0.0, 0.0);
        assert!((dsigma_dsigma(Activation::Gelu, zero) - 0.25).abs() < 1e-15);
        assert_eq!(sigma_sigma(Activation::Tanh, zero), 0.0);
    }

    #[test]
    fn one_dimensional_moments() {
        let rule = fine_rule();
        let mut worst: f64 = 0.0;
        for act in Activation::ALL {
            for var in [0.05, 1.0, 3.0] {
                let quad4 = fine1(&rule, |z| act.f(z).powi(4), var);
                let quadz = fine1(&rule, |z| z * act.f(z) * act.df(z), var);
                let e = (sigma4(act, var) - quad4)
                    .abs()
                    .max((z_sigma_dsigma(act, var) - quadz).abs());
                assert!(
                    e < 1e-10 * quad4.max(1.0),
                    "{} var {var}: Δ {e:e}",
                    act.name()
                );
                worst = worst.max(e);
            }
        }
        println!("1-D ⟨σ⁴⟩, ⟨zσσ'⟩ vs fine reference: max |Δ| {worst:.2e}");
    }
}
