//! The O(1/n) theory (`theory.order = 1`): the subleading mean kernel K^{{1}} and the
//! fluctuation of the kernel (the four-point vertex), carried on the one [`super::state::State`].
//!
//! # The one idea: every layer is a Gaussian mixture over a random kernel
//!
//! Whenever a layer starts with a fresh Gaussian weight matrix (the book's z^{ℓ+1} = b + W σ(z^ℓ),
//! the MLP branch's hidden h = W s + b, its output r = X σ(h) + b, a dense head), its units are,
//! *given the layer below*, i.i.d. Gaussian with the covariance Ĝ = C_b + C_W (1/n) Σ_j σ_j σ_j:
//! a random kernel. Everything at O(1/n) then follows from the first two cumulants of Ĝ,
//! E Ĝ = K⁰ + K^{{1}}/n and n·Cov(Ĝ_{αβ}, Ĝ_{γδ}) = V_{(αβ)(γδ)} (the book's four-point vertex,
//! §4.1–4.3: E[z_{i;α1} z_{i;α2} z_{j;α3} z_{j;α4}]_conn = V/n for i ≠ j).
//! With f(G) = ⟨σσ⟩_G and δ = Ĝ − K⁰ (Taylor, Gaussian mixture):
//!
//! - mean (the book's recursion for the NLO metric G^{{1}}, §4.3–4.4, written with derivatives
//!   of the Gaussian average instead of the book's inverse-metric contractions; the two agree
//!   by Gaussian integration by parts, ⟨(zz − K)σσ⟩ ∝ ∂⟨σσ⟩/∂K):
//!   K^{{1}}_{ℓ+1} = C_W [J · K^{{1}}_ℓ + ½ H : V_ℓ], J = ∂f/∂K, H = ∂²f/∂K∂K at K⁰_ℓ;
//! - vertex (law of total covariance; the book's vertex recursion, §4.3): V_{ℓ+1} = C_W² [⟨σσσσ⟩ −
//!   ⟨σσ⟩⟨σσ⟩ + J V_ℓ Jᵀ] (one input: V' = χ∥² V + C_W²(⟨σ⁴⟩ − ⟨σ²⟩²), as [`super::book`]).
//!
//! The kernel entries K_{αβ} are treated as variables of their own (K_{αβ} = K_{βα} once), so
//! J and H are taken with respect to the three entries (αα, αβ, ββ) of a pair. Every
//! observable sigprop writes (a kernel entry, a token's `fluct` and `kurtosis`) involves at
//! most two inputs, and the recursions close on those three entries: the state keeps one 3×3
//! block per pair of probe points ([`Finite::cov`]) and never a four-input average. J and H
//! are central finite differences of the Gaussian averages of [`super::gauss`] with a fixed
//! quadrature rule (chosen once at the centre, so the differences see a smooth function):
//! truncation ~η² with η = 1e-3, rounding ~1e-16/η² — both far below the Monte Carlo errors.
//!
//! # Residual streams and LayerNorm (derived here; not in the paper, not in the book)
//!
//! A residual stream z' = ξ z + γ r is *not* a Gaussian mixture, so on it the state keeps
//! F = n·Cov of the *empirical* kernel Ĝ = (1/n) Σ_i z_i z_i instead (for a mixture
//! F = K⊗K + K⊗K + V: [`gauss_block`] + V). The rules, each exact at this order:
//!
//! - MLP branch (hidden width M·n): Ĝ_H = C_W Ĝ_s + C_b is a linear function of the input's
//!   empirical kernel, so the hidden units are a mixture with V_H = C_W² F_s, and the
//!   branch's random kernel Ĝ_R = C_b + C_X (1/Mn) Σ_k σσ has V_R = C_X² [fresh/M + J V_H Jᵀ].
//! - residual add: F' = ξ⁴ F_z + γ⁴ F_r + ξ²γ² (X + Xᵀ + K_z⊗K_R terms), where F_r = K_R⊗K_R +
//!   V_R and X = n·Cov(Ĝ_z, Ĝ_R) = C_W C_X Y Jᵀ (Y = n·Cov(Ĝ_z, Ĝ_s), carried as
//!   [`Finite::cross`]); the K_z⊗K_R terms are the variance of (1/n) Σ_i z_i r_i, whose mean
//!   vanishes (r ends in a fresh mean-zero X).
//! - LayerNorm s = (z − μ)/√(var + ε): the empirical kernel of s is the deterministic map
//!   Φ(G)_{αβ} = G_{αβ}/√((G_αα + ε)(G_ββ + ε)) of the *centred* empirical kernel, whose mean
//!   is K − E μ_α μ_β, with n E μμ = M carried as [`Finite::mean`] (M = K for independent
//!   mean-zero units, M = 0 on a post-LN stream, ξ² M_z + γ² K_R after an add). So
//!   K^{{1}}_s = J_Φ (K^{{1}} − M) + ½ H_Φ : F and
//!   F_s = J_Φ F J_Φᵀ. The ½ H_Φ : F term is the normalizer's 1/n fluctuation, and on the
//!   diagonal (Φ = G/(G + ε)) it is the ε-level correction of `ln kernel_diag`.
//!
//! # Attention blocks
//!
//! An attention increment is, given every head's values and attention, a Gaussian mixture
//! with random kernel Ĝ_Δ = C_U (1/H) Σ_h B̂^h + C_b; its vertex (O(1/H) over heads, 1/n
//! through the input every head shares) and its covariance with the stream are estimated from
//! the logit draws in [`super::attention`] (`FluctSums`), which also draws the input's
//! empirical kernel at width n with each draw. K^{{1}} of the increment is 0: its 1/n mean
//! shift is inside the sampled kernel itself. The residual add then goes on as for an MLP
//! branch.
//!
//! # Observables
//!
//! - kernel rows: K⁰ + K^{{1}}/n.
//! - `fluct` = w·Var((1/w) Σ_i z_i²) over the w units the Monte Carlo averages (n, or n_out at
//!   the head). For a mixture it is exactly 2(E Ĝ)² + (w + 2) Var Ĝ; on a residual stream it is
//!   F_{αα,αα}.
//! - `kurtosis` = E z⁴/(3 (E z²)²) − 1 = Var Ĝ/(E Ĝ)² exactly for a mixture (E z⁴ = 3 E Ĝ²);
//!   not derived on a residual stream (a single unit there is not a mixture).
//!
//! For one input of the book's MLP the state also carries the next order of the vertex
//! ([`Tok`]: V^{{1}} and the third cumulant T = n² κ₃(Ĝ), the six-point vertex at leading
//! order), so that `fluct` and `kurtosis` are correct to O(1/n) as well (the book stops at V).

use ndarray::Array2;

use super::gauss::{Cov2, GH_MAX_VAR, expect1, expect1_panels, expect2, expect2_panels};
use crate::model::activation::Activation;

/// A 3×3 block over the entries (αα, αβ, ββ) of a pair of probe points.
pub type Block = [[f64; 3]; 3];

/// Relative finite-difference step.
const ETA: f64 = 1e-3;
/// Pairs closer than this to perfect correlation (1 − |ρ|) are treated as one input.
const DEGENERATE: f64 = 1e-7;

/// Per token, the book MLP's vertex beyond leading order (one input, a Gaussian mixture).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tok {
    /// V^{{1}}: n Var Ĝ = V + V^{{1}}/n.
    pub v1: f64,
    /// T = n² κ₃(Ĝ), the third cumulant of the random kernel (the six-point vertex).
    pub t: f64,
}

/// The order-1 part of a state (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Finite {
    /// K^{{1}}: the mean kernel is K⁰ + K^{{1}}/n (D×D).
    pub k1: Array2<f64>,
    /// One 3×3 block per pair a ≤ b ([`pair_index`]): V = n·Cov(Ĝ) of the random kernel when
    /// `mixture`, F = n·Cov of the empirical kernel otherwise. Diagonal pairs hold the scalar
    /// in every entry.
    pub cov: Vec<Block>,
    /// The units are i.i.d. Gaussian given a random kernel with vertex `cov`.
    pub mixture: bool,
    /// For a branch input or output: n·Cov(Ĝ_stream, Ĝ_this) per pair (rows: the stream's
    /// entries); `None` for the stream itself.
    pub cross: Option<Vec<Block>>,
    /// The book MLP's per-token vertex beyond leading order; `None` once any other block acts.
    pub tok: Option<Vec<Tok>>,
    /// n·E[μ_α μ_β] (μ the mean over the units; leading order): what LayerNorm's centring
    /// removes from the kernel. K for units that are independent with mean zero, 0 right
    /// after a LayerNorm (its output has μ = 0 exactly).
    pub mean: Array2<f64>,
}

/// Index of the pair (a, b), a ≤ b, among the D(D + 1)/2 pairs in row order.
pub fn pair_index(d: usize, a: usize, b: usize) -> usize {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    a * d - a * (a + 1) / 2 + b
}

/// Every pair (a, b), a ≤ b, in [`pair_index`] order.
fn pairs(d: usize) -> Vec<(usize, usize)> {
    (0..d).flat_map(|a| (a..d).map(move |b| (a, b))).collect()
}

/// The entries (αα, αβ, ββ) of a pair.
fn entries(a: usize, b: usize) -> [(usize, usize); 3] {
    [(a, a), (a, b), (b, b)]
}

fn at(k: &Array2<f64>, a: usize, b: usize) -> [f64; 3] {
    entries(a, b).map(|(i, j)| k[[i, j]])
}

/// n·Cov of the empirical kernel of n i.i.d. Gaussian units with kernel K:
/// K_ik K_jl + K_il K_jk for entries (ij), (kl).
fn gauss_pair(k: &Array2<f64>, a: usize, b: usize) -> Block {
    let e = entries(a, b);
    let mut out = [[0.0; 3]; 3];
    for (p, &(i, j)) in e.iter().enumerate() {
        for (q, &(u, v)) in e.iter().enumerate() {
            out[p][q] = k[[i, u]] * k[[j, v]] + k[[i, v]] * k[[j, u]];
        }
    }
    out
}

/// [`gauss_pair`] for every pair: the empirical-kernel covariance of a Gaussian layer.
pub fn gauss_block(k: &Array2<f64>) -> Vec<Block> {
    pairs(k.nrows())
        .into_iter()
        .map(|(a, b)| gauss_pair(k, a, b))
        .collect()
}

fn add(x: &Block, y: &Block, cx: f64, cy: f64) -> Block {
    let mut o = [[0.0; 3]; 3];
    for p in 0..3 {
        for q in 0..3 {
            o[p][q] = cx * x[p][q] + cy * y[p][q];
        }
    }
    o
}

/// A Bᵀ (rows of A against rows of B): Σ_r A_pr B_qr.
fn mul_t(a: &Block, b: &Block) -> Block {
    let mut o = [[0.0; 3]; 3];
    for p in 0..3 {
        for q in 0..3 {
            o[p][q] = (0..3).map(|r| a[p][r] * b[q][r]).sum();
        }
    }
    o
}

/// J C Jᵀ.
fn sandwich(j: &Block, c: &Block) -> Block {
    let jc = mul_t(j, &transpose(c));
    mul_t(&jc, j)
}

fn transpose(a: &Block) -> Block {
    let mut o = [[0.0; 3]; 3];
    for p in 0..3 {
        for q in 0..3 {
            o[p][q] = a[q][p];
        }
    }
    o
}

fn scalar_block(x: f64) -> Block {
    [[x; 3]; 3]
}

/// Value, Jacobian and Hessians of a map R³ → R³ by central differences with steps `h`.
struct Jet {
    val: [f64; 3],
    jac: Block,
    hess: [Block; 3],
}

impl Jet {
    /// J·k1 + ½ H:C for output p.
    fn shift(&self, p: usize, k1: &[f64; 3], c: &Block) -> f64 {
        let lin: f64 = (0..3).map(|r| self.jac[p][r] * k1[r]).sum();
        let quad: f64 = (0..3)
            .flat_map(|r| (0..3).map(move |s| (r, s)))
            .map(|(r, s)| self.hess[p][r][s] * c[r][s])
            .sum();
        lin + 0.5 * quad
    }
}

fn jet(f: impl Fn([f64; 3]) -> [f64; 3], x: [f64; 3], h: [f64; 3]) -> Jet {
    let shifted = |moves: &[(usize, f64)]| {
        let mut y = x;
        for &(r, s) in moves {
            y[r] += s * h[r];
        }
        f(y)
    };
    let val = f(x);
    let mut jac = [[0.0; 3]; 3];
    let mut hess = [[[0.0; 3]; 3]; 3];
    for r in 0..3 {
        let (up, dn) = (shifted(&[(r, 1.0)]), shifted(&[(r, -1.0)]));
        for p in 0..3 {
            jac[p][r] = (up[p] - dn[p]) / (2.0 * h[r]);
            hess[p][r][r] = (up[p] - 2.0 * val[p] + dn[p]) / (h[r] * h[r]);
        }
        for s in r + 1..3 {
            let pp = shifted(&[(r, 1.0), (s, 1.0)]);
            let pm = shifted(&[(r, 1.0), (s, -1.0)]);
            let mp = shifted(&[(r, -1.0), (s, 1.0)]);
            let mm = shifted(&[(r, -1.0), (s, -1.0)]);
            for p in 0..3 {
                let v = (pp[p] - pm[p] - mp[p] + mm[p]) / (4.0 * h[r] * h[s]);
                hess[p][r][s] = v;
                hess[p][s][r] = v;
            }
        }
    }
    Jet { val, jac, hess }
}

/// (f, f', f'', f''') of a scalar function at x > 0 by central differences with step ηx.
fn jet1(f: impl Fn(f64) -> f64, x: f64) -> [f64; 4] {
    let h = 2.0 * ETA * x.abs().max(f64::MIN_POSITIVE);
    let (f0, p1, m1, p2, m2) = (f(x), f(x + h), f(x - h), f(x + 2.0 * h), f(x - 2.0 * h));
    [
        f0,
        (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * h),
        (p1 - 2.0 * f0 + m1) / (h * h),
        (p2 - 2.0 * p1 + 2.0 * m1 - m2) / (2.0 * h * h * h),
    ]
}

/// Finite-difference steps for the entries (k11, k12, k22) of a pair that keep every
/// displaced covariance positive definite; `None` for a (nearly) perfectly correlated pair.
fn steps(x: [f64; 3]) -> Option<[f64; 3]> {
    let s = (x[0] * x[2]).max(0.0).sqrt();
    if s <= 0.0 {
        return None;
    }
    let gap = 1.0 - (x[1] / s).abs();
    if gap < DEGENERATE {
        return None;
    }
    let eta = ETA.min(gap / 4.0);
    Some([eta * x[0], eta * s, eta * x[2]])
}

/// The quadrature for one set of finite differences, chosen once at the centre (the rule of
/// [`super::gauss::moment2`], with room for the displacements).
#[derive(Clone, Copy)]
enum Rule {
    Hermite,
    Panels,
}

fn rule(act: Activation, max_var: f64) -> Rule {
    if act != Activation::Relu && max_var * (1.0 + 4.0 * ETA) <= GH_MAX_VAR {
        Rule::Hermite
    } else {
        Rule::Panels
    }
}

fn avg1(rule: Rule, var: f64, g: impl Fn(f64) -> f64) -> f64 {
    match rule {
        Rule::Hermite => expect1(g, var),
        Rule::Panels => expect1_panels(g, var),
    }
}

fn avg2(rule: Rule, cov: Cov2, g: impl Fn(f64, f64) -> f64) -> f64 {
    match rule {
        Rule::Hermite => expect2(g, cov),
        Rule::Panels => expect2_panels(g, cov),
    }
}

/// The Gaussian averages of one nonlinear layer with activation σ.
#[derive(Clone, Copy)]
pub struct Nonlinear {
    pub act: Activation,
}

impl Nonlinear {
    fn closed(&self) -> bool {
        matches!(
            self.act,
            Activation::Relu | Activation::Linear | Activation::Erf
        )
    }
    fn ss(&self, rule: Rule, x: [f64; 3]) -> f64 {
        let cov = Cov2::new(x[0], x[1], x[2]);
        if self.closed() {
            super::gauss::sigma_sigma(self.act, cov)
        } else {
            let act = self.act;
            avg2(rule, cov, |a, b| act.f(a) * act.f(b))
        }
    }
    fn moment(&self, rule: Rule, var: f64, p: i32) -> f64 {
        let act = self.act;
        match (act, p) {
            (Activation::Linear | Activation::Relu | Activation::Erf, 2) => {
                super::gauss::sigma2(act, var)
            }
            _ => avg1(rule, var, |z| act.f(z).powi(p)),
        }
    }

    /// One input: [g, g', g'', g'''] of g = ⟨σ²⟩, [h, h', h''] of h = ⟨σ⁴⟩ − ⟨σ²⟩², and the
    /// third cumulant of σ², ⟨σ⁶⟩ − 3⟨σ⁴⟩⟨σ²⟩ + 2⟨σ²⟩³, at K.
    fn single(&self, k: f64) -> ([f64; 4], [f64; 4], f64) {
        let r = rule(self.act, k);
        let g = jet1(|x| self.moment(r, x, 2), k);
        let h = jet1(
            |x| {
                let s2 = self.moment(r, x, 2);
                self.moment(r, x, 4) - s2 * s2
            },
            k,
        );
        let (s2, s4, s6) = (g[0], self.moment(r, k, 4), self.moment(r, k, 6));
        (g, h, s6 - 3.0 * s4 * s2 + 2.0 * s2 * s2 * s2)
    }

    /// A pair: the jet of (⟨σ_α²⟩, ⟨σ_ασ_β⟩, ⟨σ_β²⟩) in (K_αα, K_αβ, K_ββ) and the fresh
    /// covariance ⟨σσσσ⟩ − ⟨σσ⟩⟨σσ⟩ over those entries.
    fn pair(&self, x: [f64; 3], h: [f64; 3]) -> (Jet, Block) {
        let r = rule(self.act, x[0].max(x[2]));
        let j = jet(
            |y| {
                [
                    self.moment(r, y[0], 2),
                    self.ss(r, y),
                    self.moment(r, y[2], 2),
                ]
            },
            x,
            h,
        );
        let act = self.act;
        let cov = Cov2::new(x[0], x[1], x[2]);
        // m[k] = ⟨σ_α^k σ_β^(4−k)⟩.
        let mut m = [0.0; 5];
        m[4] = self.moment(r, x[0], 4);
        m[0] = self.moment(r, x[2], 4);
        for (k, mk) in m.iter_mut().enumerate().take(4).skip(1) {
            *mk = avg2(r, cov, |a, b| {
                act.f(a).powi(k as i32) * act.f(b).powi(4 - k as i32)
            });
        }
        // Powers of σ_α in the entries (αα, αβ, ββ).
        let pow = [2, 1, 0];
        let mut fresh = [[0.0; 3]; 3];
        for p in 0..3 {
            for q in 0..3 {
                fresh[p][q] = m[pow[p] + pow[q]] - j.val[p] * j.val[q];
            }
        }
        (j, fresh)
    }
}

/// Result of a Gaussian-mixture layer K → C_b + C ⟨σσ⟩: the new K^{{1}}, the new vertex V,
/// and the cross-covariance factor J (to be applied to the caller's Y).
pub struct MixtureOut {
    pub k1: Array2<f64>,
    pub v: Vec<Block>,
    /// Per pair, J of the map at the input (for cross-covariances).
    pub jac: Vec<Block>,
    pub tok: Option<Vec<Tok>>,
}

/// One Gaussian-mixture layer: the units' random kernel Ĝ_in has mean K0 + k1/n and vertex
/// `v_in`; the output's random kernel is C_b + c ⟨σσ⟩_{Ĝ_in} averaged over `fan` = M·n units
/// (`m` = M), so its vertex is c²[fresh/M + J V Jᵀ] and its K^{{1}} = c [J k1 + ½ H : V].
/// `tok` (one input, book MLP) is advanced when given.
pub fn mixture_layer(
    act: Activation,
    c: f64,
    m: f64,
    k0: &Array2<f64>,
    k1: &Array2<f64>,
    v_in: &[Block],
    tok: Option<&[Tok]>,
) -> MixtureOut {
    let d = k0.nrows();
    let nl = Nonlinear { act };
    let mut k1_out = Array2::zeros((d, d));
    let mut v = vec![[[0.0; 3]; 3]; v_in.len()];
    let mut jac = vec![[[0.0; 3]; 3]; v_in.len()];
    let mut tok_out = tok.map(|t| t.to_vec());
    let mut singles = Vec::with_capacity(d);
    for a in 0..d {
        let i = pair_index(d, a, a);
        let (x, vv, kk1) = (k0[[a, a]], v_in[i][0][0], k1[[a, a]]);
        let (g, h, kappa) = nl.single(x);
        let (g1, g2, g3) = (g[1], g[2], g[3]);
        k1_out[[a, a]] = c * (g1 * kk1 + 0.5 * g2 * vv);
        v[i] = scalar_block(c * c * (h[0] / m + g1 * g1 * vv));
        jac[i] = scalar_block(g1);
        if let (Some(out), Some(t_in)) = (tok_out.as_mut(), tok) {
            let Tok { v1, t } = t_in[a];
            // n Var g(Ĝ) and E h(Ĝ) to O(1/n), Ĝ = K⁰ + K^{{1}}/n + δ (module doc).
            out[a] = Tok {
                v1: c
                    * c
                    * (g1 * g1 * v1
                        + (h[1] * kk1 + 0.5 * h[2] * vv) / m
                        + 2.0 * g1 * g2 * kk1 * vv
                        + g1 * g2 * t
                        + 0.5 * g2 * g2 * vv * vv
                        + g1 * g3 * vv * vv),
                t: c * c
                    * c
                    * (kappa / (m * m)
                        + 3.0 * g1 * h[1] * vv / m
                        + g1 * g1 * g1 * t
                        + 3.0 * g1 * g1 * g2 * vv * vv),
            };
        }
        singles.push(v[i][0][0]);
    }
    for (a, b) in pairs(d) {
        if a == b {
            continue;
        }
        let i = pair_index(d, a, b);
        let x = at(k0, a, b);
        let Some(h) = steps(x) else {
            // One input seen twice: the pair moves as its diagonal.
            let s = x[1].signum() * (x[2] / x[0].max(f64::MIN_POSITIVE)).sqrt();
            k1_out[[a, b]] = s * k1_out[[a, a]];
            k1_out[[b, a]] = k1_out[[a, b]];
            v[i] = scalar_block(singles[a]);
            jac[i] = jac[pair_index(d, a, a)];
            continue;
        };
        let (j, fresh) = nl.pair(x, h);
        let shift = j.shift(1, &at(k1, a, b), &v_in[i]);
        k1_out[[a, b]] = c * shift;
        k1_out[[b, a]] = c * shift;
        let mut blk = add(&fresh, &sandwich(&j.jac, &v_in[i]), c * c / m, c * c);
        // The corners are the single-input recursion's (exactly the same quantity).
        blk[0][0] = singles[a];
        blk[2][2] = singles[b];
        v[i] = blk;
        jac[i] = j.jac;
    }
    MixtureOut {
        k1: k1_out,
        v,
        jac,
        tok: tok_out,
    }
}

impl Finite {
    /// Layer 1 (a Gaussian layer with a deterministic kernel): K^{{1}} = 0, V = 0.
    pub fn first(k0: &Array2<f64>, book: bool) -> Self {
        let d = k0.nrows();
        Finite {
            mean: k0.clone(),
            k1: Array2::zeros((d, d)),
            cov: vec![[[0.0; 3]; 3]; d * (d + 1) / 2],
            mixture: true,
            cross: None,
            tok: book.then(|| vec![Tok::default(); d]),
        }
    }

    /// n·Cov of the empirical kernel (F), given the leading kernel `k0` of this state.
    pub fn empirical(&self, k0: &Array2<f64>) -> Vec<Block> {
        if !self.mixture {
            return self.cov.clone();
        }
        gauss_block(k0)
            .iter()
            .zip(&self.cov)
            .map(|(g, v)| add(g, v, 1.0, 1.0))
            .collect()
    }

    /// The vertex V of the random kernel (for a stream that is not a mixture, F − K⊗K, the
    /// part of the empirical fluctuation beyond the Gaussian one).
    pub fn vertex(&self, k0: &Array2<f64>) -> Vec<Block> {
        if self.mixture {
            return self.cov.clone();
        }
        gauss_block(k0)
            .iter()
            .zip(&self.cov)
            .map(|(g, f)| add(f, g, 1.0, -1.0))
            .collect()
    }

    /// n·Cov(Ĝ_stream, Ĝ_this): `cross`, or the state's own F when it is the stream.
    fn stream_cross(&self, k0: &Array2<f64>) -> Vec<Block> {
        self.cross.clone().unwrap_or_else(|| self.empirical(k0))
    }

    /// The mean kernel K⁰ + K^{{1}}/n.
    pub fn corrected(&self, k0: &Array2<f64>, n: f64) -> Array2<f64> {
        k0 + &(&self.k1 / n)
    }

    /// Per token (fluct, kurtosis) averaged over `w` units (module doc); kurtosis only for a
    /// mixture.
    pub fn observables(&self, k0: &Array2<f64>, n: f64, w: f64) -> Vec<(f64, Option<f64>)> {
        let d = k0.nrows();
        (0..d)
            .map(|a| {
                let k = k0[[a, a]] + self.k1[[a, a]] / n;
                let c = self.cov[pair_index(d, a, a)][0][0];
                if self.mixture {
                    let v = c + self.tok.as_ref().map_or(0.0, |t| t[a].v1 / n);
                    (2.0 * k * k + (w + 2.0) * v / n, Some(v / (n * k * k)))
                } else {
                    (c, None)
                }
            })
            .collect()
    }

    /// The book's plain layer z' = b + W σ(z) with weight constant `c_w` (the units of z are a
    /// mixture; a stream that is not one is treated through its vertex F − K⊗K).
    pub fn plain(
        &self,
        act: Activation,
        c_w: f64,
        k0: &Array2<f64>,
        k_out: &Array2<f64>,
    ) -> Finite {
        let v_in = self.vertex(k0);
        let tok = if self.mixture {
            self.tok.as_deref()
        } else {
            None
        };
        let out = mixture_layer(act, c_w, 1.0, k0, &self.k1, &v_in, tok);
        Finite {
            mean: k_out.clone(),
            k1: out.k1,
            cov: out.v,
            mixture: true,
            cross: None,
            tok: out.tok,
        }
    }

    /// The MLP branch on its input s (this state): hidden Ĝ_H = C_W Ĝ_s + C_b, output
    /// Ĝ_R = C_b + C_X (1/Mn) Σ σσ. Returns the hidden site's K^{{1}} and the branch output's
    /// state (an empirical F, with its cross-covariance with the stream).
    pub fn mlp_branch(
        &self,
        act: Activation,
        (c_w, c_x, m): (f64, f64, f64),
        k_s: &Array2<f64>,
        k_h: &Array2<f64>,
        k_r: &Array2<f64>,
    ) -> (Array2<f64>, Finite) {
        let f_s = self.empirical(k_s);
        let y = self.stream_cross(k_s);
        let k1_h = &self.k1 * c_w;
        let v_h: Vec<Block> = f_s.iter().map(|b| add(b, b, c_w * c_w, 0.0)).collect();
        let out = mixture_layer(act, c_x, m, k_h, &k1_h, &v_h, None);
        let d = k_s.nrows();
        let cross = pairs(d)
            .into_iter()
            .zip(y.iter().zip(&out.jac))
            .map(|((a, b), (y, j))| {
                // A diagonal pair is one variable stored in all nine entries.
                let x = if a == b {
                    scalar_block(y[0][0] * j[0][0])
                } else {
                    mul_t(y, j)
                };
                add(&x, &x, c_w * c_x, 0.0)
            })
            .collect();
        let branch = Finite {
            mean: k_r.clone(),
            k1: out.k1,
            cov: out.v,
            mixture: true,
            cross: Some(cross),
            tok: None,
        };
        (
            k1_h,
            Finite {
                cov: branch.empirical(k_r),
                mixture: false,
                ..branch
            },
        )
    }

    /// The residual add z' = ξ z + γ r of the stream (this state, kernel `k_z`) and a branch
    /// output `r` (kernel `k_r`, with its cross-covariance).
    pub fn residual(
        &self,
        r: &Finite,
        (xi, gamma): (f64, f64),
        k_z: &Array2<f64>,
        k_r: &Array2<f64>,
    ) -> Finite {
        let d = k_z.nrows();
        let (x2, g2) = (xi * xi, gamma * gamma);
        let f_z = self.empirical(k_z);
        let f_r = r.empirical(k_r);
        let zero = vec![[[0.0; 3]; 3]; f_z.len()];
        let x = r.cross.as_ref().unwrap_or(&zero);
        let cov = pairs(d)
            .into_iter()
            .enumerate()
            .map(|(i, (a, b))| {
                let e = entries(a, b);
                let mut o = add(&f_z[i], &f_r[i], x2 * x2, g2 * g2);
                for (p, &(s, t)) in e.iter().enumerate() {
                    for (q, &(u, w)) in e.iter().enumerate() {
                        // Var of (1/n) Σ z r + r z: the four K_z K_R pairings.
                        let zr = k_z[[s, u]] * k_r[[t, w]]
                            + k_z[[s, w]] * k_r[[t, u]]
                            + k_z[[t, u]] * k_r[[s, w]]
                            + k_z[[t, w]] * k_r[[s, u]];
                        o[p][q] += x2 * g2 * (x[i][p][q] + x[i][q][p] + zr);
                    }
                }
                o
            })
            .collect();
        Finite {
            mean: &self.mean * x2 + &(&r.mean * g2),
            k1: &self.k1 * x2 + &(&r.k1 * g2),
            cov,
            mixture: false,
            cross: None,
            tok: None,
        }
    }

    /// LayerNorm with mean subtraction and ε inside the root, on the state of its input
    /// (kernel `k_z`). `stream_out`: the output is the new stream (post-LN) rather than a
    /// branch input (pre-LN, final LN).
    pub fn layer_norm(&self, eps: f64, k_z: &Array2<f64>, stream_out: bool) -> Finite {
        let d = k_z.nrows();
        let f = self.empirical(k_z);
        let y = self.stream_cross(k_z);
        // Centring: E Ĝ_c = K⁰ + (K^{{1}} − n E[μμ])/n.
        let k1c = &self.k1 - &self.mean;
        let mut k1 = Array2::zeros((d, d));
        let mut cov = vec![[[0.0; 3]; 3]; f.len()];
        let mut cross = vec![[[0.0; 3]; 3]; f.len()];
        let mut diag = vec![0.0; d];
        for a in 0..d {
            let i = pair_index(d, a, a);
            let x = k_z[[a, a]];
            let [_, p1, p2, _] = jet1(|g| g / (g + eps), x);
            k1[[a, a]] = p1 * k1c[[a, a]] + 0.5 * p2 * f[i][0][0];
            diag[a] = p1 * p1 * f[i][0][0];
            cov[i] = scalar_block(diag[a]);
            cross[i] = scalar_block(y[i][0][0] * p1);
        }
        let phi = |y: [f64; 3]| {
            let (u, w) = ((y[0] + eps).sqrt(), (y[2] + eps).sqrt());
            [y[0] / (u * u), y[1] / (u * w), y[2] / (w * w)]
        };
        for (a, b) in pairs(d) {
            if a == b {
                continue;
            }
            let i = pair_index(d, a, b);
            let x = at(k_z, a, b);
            let Some(h) = steps(x) else {
                let s = x[1].signum();
                k1[[a, b]] = s * k1[[a, a]];
                k1[[b, a]] = k1[[a, b]];
                cov[i] = scalar_block(diag[a]);
                cross[i] = cross[pair_index(d, a, a)];
                continue;
            };
            let j = jet(phi, x, h);
            let shift = j.shift(1, &at(&k1c, a, b), &f[i]);
            k1[[a, b]] = shift;
            k1[[b, a]] = shift;
            let mut blk = sandwich(&j.jac, &f[i]);
            blk[0][0] = diag[a];
            blk[2][2] = diag[b];
            cov[i] = blk;
            cross[i] = mul_t(&y[i], &j.jac);
        }
        Finite {
            mean: Array2::zeros((d, d)),
            k1,
            cov,
            mixture: false,
            cross: (!stream_out).then_some(cross),
            tok: None,
        }
    }

    /// A dense linear readout y = U s + b with weight constant `c` (the head): a mixture with
    /// V = c² F_s.
    pub fn readout(&self, c: f64, k_s: &Array2<f64>) -> Finite {
        Finite {
            mean: k_s * c,
            k1: &self.k1 * c,
            cov: self
                .empirical(k_s)
                .iter()
                .map(|b| add(b, b, c * c, 0.0))
                .collect(),
            mixture: true,
            cross: None,
            tok: None,
        }
    }
}

/// Attention weights that are exactly uniform (zero logit variance: C_Q C_K = 0 without
/// biases, or a logit exponent above 1/2); order 1 does not carry such a block.
pub fn uniform_attention(spec: &crate::config::ModelSpec) -> bool {
    let h = crate::model::hyper::blocks(spec).attention;
    let bias = h.bias.unwrap_or(0.0);
    spec.logit_exponent > 0.5 || (h.q.c_eff() + bias) * (h.k.c_eff() + bias) <= 0.0
}

/// What order 1 does not derive for this model, one line each (the walk falls back to the
/// leading order there, and for everything downstream of an attention block).
pub fn gaps(spec: &crate::config::ModelSpec, backward: bool) -> Vec<String> {
    use crate::config::{BlockKind, HeadKind, Norm};
    let mut out = Vec::new();
    if spec.has_decoder() {
        // The encoder–decoder's theory is leading order only: the whole walk falls back.
        out.push(
            "no 1/n theory for an encoder–decoder: every row is leading order (as theory.order = 0)"
                .into(),
        );
        return out;
    }
    if spec.norm != Norm::Mlp {
        if let Some(b) = spec.blocks.iter().position(|k| *k == BlockKind::Attn) {
            if spec.blocks[b + 1..].contains(&BlockKind::Attn) {
                out.push(
                    "attention blocks draw their input kernel as that of independent Gaussian units: from the second attention block on, the stream's non-Gaussian (vertex) fluctuation does not reach the logits".into(),
                );
            }
            if uniform_attention(spec) {
                out.push(format!(
                    "attention with exactly uniform weights is not carried at order 1: from layer {} on every other row is leading order",
                    b + 2
                ));
            }
        }
        if spec.head != HeadKind::Dense {
            out.push(
                "no 1/n correction for pooled or tied heads: the head is leading order".into(),
            );
        }
    }
    if backward {
        out.push(
            "grad2 and the NTK rows are leading order, except inside attention blocks (finite input and head width in the value and logit paths); the LayerNorms' 1/n backward is not included"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_index_is_row_order() {
        let d = 4;
        for (k, (a, b)) in pairs(d).into_iter().enumerate() {
            assert_eq!(pair_index(d, a, b), k);
            assert_eq!(pair_index(d, b, a), k);
        }
    }

    #[test]
    fn single_input_vertex_matches_the_book_recursion() {
        // The mixture layer's diagonal is the book's V' = χ∥² V + C_W²(⟨σ⁴⟩ − ⟨σ²⟩²).
        use super::super::book::Mlp;
        for act in Activation::ALL {
            let (c_w, k, v) = (1.7, 0.6, 0.9);
            let k0 = Array2::from_elem((1, 1), k);
            let out = mixture_layer(
                act,
                c_w,
                1.0,
                &k0,
                &Array2::zeros((1, 1)),
                &[scalar_block(v)],
                None,
            );
            let m = Mlp::new(act, 0.0, c_w);
            let s2 = super::super::gauss::sigma2(act, k);
            let chi = m.chi_parallel(k);
            let want = chi * chi * v + c_w * c_w * (super::super::gauss::sigma4(act, k) - s2 * s2);
            let got = out.v[0][0][0];
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1e-3),
                "{}: {got} vs {want}",
                act.name()
            );
        }
    }

    #[test]
    fn linear_layers_have_no_mean_shift() {
        // σ = z: ⟨σσ⟩ is linear in K, H = 0, so K^{{1}} stays 0 whatever V is.
        let k0 = ndarray::arr2(&[[1.0, 0.4], [0.4, 0.8]]);
        let v = gauss_block(&k0);
        let out = mixture_layer(
            Activation::Linear,
            1.0,
            1.0,
            &k0,
            &Array2::zeros((2, 2)),
            &v,
            None,
        );
        assert!(out.k1.iter().all(|x| x.abs() < 1e-8), "{:?}", out.k1);
        // And the vertex of a linear layer is the Gaussian pairing plus V (J = identity).
        for (o, (g, vi)) in out.v.iter().zip(gauss_block(&k0).iter().zip(&v)) {
            for p in 0..3 {
                for q in 0..3 {
                    assert!((o[p][q] - g[p][q] - vi[p][q]).abs() < 1e-7);
                }
            }
        }
    }
}
