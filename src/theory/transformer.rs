//! The forward kernel recursion of a Transformer at infinite width, leading order in 1/n
//! (the paper's §I 1, equations (1.35)–(1.86); SPEC §4), and the book's plain MLP in `mlp`
//! mode (PDLT §4; [`super::book`]).
//!
//! The state is the D×D kernel of the residual stream over the whole probe set
//! ([`KernelState`], D = S·T, δ = sequence·T + token), cross-sequence entries included: the
//! weights and the positional embedding are shared, so F_{(α1;t)(α2;t')} ≠ 0 for α1 ≠ α2.
//! Every block map takes a state and returns one:
//!
//! - stem (1.41)/(1.45): G¹ = C_stem G⁰ + C_PE δ_{t1 t2} (no δ_{α1 α2}: the PE is shared);
//! - LayerNorm (1.53): F = G_12 / sqrt((G_11 + ε)(G_22 + ε));
//! - MLP (1.77): ΔG = C_X ⟨σσ⟩ under the Gaussian of covariance C_W F (the `hidden` site);
//! - MHSA (1.61)–(1.65): ΔG = C_U C_V Σ_{t1',t2'} E[Ω_{t1 t1'} Ω_{t2 t2'}] F_{t1' t2'} with
//!   the logits jointly Gaussian of covariance C_Q C_K F_{t1 t2} F_{t1' t2'}, independent
//!   across heads, computed by sampling the logit field ([`LogitSampler`]);
//! - residual add: G' = ξ² G + γ² ΔG. The cross term 2ξγ E[z R] vanishes at leading order
//!   because R ends in a fresh mean-zero weight (U or X) that is independent of z (notes
//!   §1.5; the same argument as (1.62) for E[r] = 0). Post-LN applies the LN map after the
//!   add; `none` feeds G itself to the branch;
//! - head (1.80)/(1.81)/(1.84): G^L = C_head n^{-s} F (dense), its token average (pooled),
//!   or C_WE n^{-s} F (tied; the footnote-19 contact term is ignored, as in (1.84)).
//!
//! Constants are the *effective* ones at the configured width: C_eff = (weight variance) ×
//! (fan-in), which is the C of (1.25)–(1.33) in the default `fan_in` variance mode and
//! C_abs·fan-in in the `absolute` (standard-parameterization) mode.

use ndarray::{Array2, s};
use rand::Rng;
use rand_distr::StandardNormal;

use super::TheoryError;
use super::book::Mlp as BookMlp;
use super::gauss::{Cov2, sigma_sigma, sigma2, sigma4};
use crate::config::{BlockKind, HeadKind, ModelSpec, Norm, Stem};
use crate::model::Probe;
use crate::model::init;
use crate::stats::Row;

/// The kernel G_{δ1 δ2} = E[(1/n) Σ_i z_{δ1;i} z_{δ2;i}] of one site over the probe set:
/// D×D with D = sequences·tokens and δ = sequence·tokens + token (the Monte Carlo's order).
/// A pooled head output has `tokens = 1` (one output per sequence).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelState {
    pub g: Array2<f64>,
    pub sequences: usize,
    pub tokens: usize,
}

impl KernelState {
    pub fn new(g: Array2<f64>, sequences: usize, tokens: usize) -> Self {
        KernelState {
            g,
            sequences,
            tokens,
        }
    }
    /// D = S·T.
    pub fn len(&self) -> usize {
        self.g.nrows()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn same_seq(&self, a: usize, b: usize) -> bool {
        a / self.tokens == b / self.tokens
    }
    fn finite(&self) -> bool {
        self.g.iter().all(|x| x.is_finite())
    }
    /// The same shape with another matrix.
    pub fn clone_with(&self, g: Array2<f64>) -> Self {
        self.with(g)
    }
    fn with(&self, g: Array2<f64>) -> Self {
        KernelState::new(g, self.sequences, self.tokens)
    }
}

/// Effective O(1) constants at the configured width (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Consts {
    pub(crate) stem: f64,
    pub(crate) pe: f64,
    pub(crate) q: f64,
    pub(crate) k: f64,
    pub(crate) v: f64,
    pub(crate) u: f64,
    pub(crate) w: f64,
    pub(crate) x: f64,
    pub(crate) head: f64,
    pub(crate) bias: f64,
}

impl Consts {
    pub(crate) fn of(spec: &ModelSpec) -> Self {
        let n = spec.width;
        let eff = |c: f64, fan_in: usize| spec.weight_var(c, fan_in) * fan_in as f64;
        let m = spec.mlp_mult * n;
        Consts {
            stem: match spec.stem {
                Stem::Dense => eff(spec.var.stem, spec.n_in),
                Stem::Embedding => spec.var.stem,
            },
            // The MC draws no positional embedding in `mlp` mode.
            pe: if spec.norm == Norm::Mlp {
                0.0
            } else {
                spec.var.pe
            },
            q: if spec.zero_queries {
                0.0
            } else {
                eff(spec.var.q, n)
            },
            k: eff(spec.var.k, n),
            v: eff(spec.var.v, n),
            u: eff(spec.var.u, n),
            w: eff(spec.var.w, n),
            x: eff(spec.var.x, m),
            head: match spec.head {
                // z = N W_WEᵀ s: N² · C_WE · n channels = C_WE n^{-s} (1.83)–(1.84).
                HeadKind::Tied => spec.tied_rescale().powi(2) * spec.var.stem * n as f64,
                // Var C_head/n^{1+s} times n channels of s: C_head n^{-s} (1.80) with (1.34).
                _ => spec.head_var() * n as f64,
            },
            bias: if spec.has_bias() { spec.var.bias } else { 0.0 },
        }
    }
}

/// Input kernel G⁰: x·x/n_in (1.40) for the dense stem, [id₁ = id₂] for the embedding (1.44).
pub fn input_kernel(spec: &ModelSpec, probe: &Probe) -> Result<KernelState, TheoryError> {
    let d = probe.len();
    let g = match spec.stem {
        Stem::Dense => {
            let x = probe.x.as_ref().ok_or_else(|| bad_input("vectors"))?;
            x.dot(&x.t()) / x.ncols() as f64
        }
        Stem::Embedding => {
            let ids = probe.ids.as_ref().ok_or_else(|| bad_input("token ids"))?;
            Array2::from_shape_fn((d, d), |(a, b)| f64::from(u8::from(ids[a] == ids[b])))
        }
    };
    Ok(KernelState::new(g, probe.sequences, probe.tokens))
}

fn bad_input(what: &str) -> TheoryError {
    TheoryError::Unsupported(format!("the probe set has no {what} for this stem"))
}

/// Stem (1.41)/(1.45): G¹ = C_stem G⁰ + C_PE δ_{t1 t2}; in `mlp` mode K¹ = C_b + C_W G⁰
/// (the book's first layer, no positional embedding).
pub fn stem(spec: &ModelSpec, g0: &KernelState) -> KernelState {
    let c = Consts::of(spec);
    let t = g0.tokens;
    let b = if spec.norm == Norm::Mlp { c.bias } else { 0.0 };
    let g = Array2::from_shape_fn(g0.g.raw_dim(), |(i, j)| {
        let pe = if i % t == j % t { c.pe } else { 0.0 };
        c.stem * g0.g[[i, j]] + pe + b
    });
    g0.with(g)
}

/// LayerNorm (1.53): F_12 = G_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε)), ε inside the root.
pub fn layer_norm(z: &KernelState, eps: f64) -> KernelState {
    let d: Vec<f64> = (0..z.len()).map(|i| (z.g[[i, i]] + eps).sqrt()).collect();
    z.with(Array2::from_shape_fn(z.g.raw_dim(), |(i, j)| {
        z.g[[i, j]] / (d[i] * d[j])
    }))
}

/// ⟨σ(w_a) σ(w_b)⟩ for every pair under the Gaussian of covariance `k` (entrywise 2×2).
pub(crate) fn sigma_sigma_all(spec: &ModelSpec, k: &KernelState) -> Array2<f64> {
    let act = spec.activation;
    let d = k.len();
    let mut out = Array2::zeros((d, d));
    for a in 0..d {
        out[[a, a]] = sigma2(act, k.g[[a, a]]);
        for b in a + 1..d {
            let v = sigma_sigma(act, Cov2::new(k.g[[a, a]], k.g[[a, b]], k.g[[b, b]]));
            out[[a, b]] = v;
            out[[b, a]] = v;
        }
    }
    out
}

/// MLP branch (1.70), (1.76): the preactivation kernel C_W F + C_b (the `hidden` site) and
/// the increment C_X ⟨σσ⟩_{C_W F + C_b} + C_b. M drops out: it is inside Var X = C_X/(Mn).
pub fn mlp_branch(spec: &ModelSpec, input: &KernelState) -> (KernelState, KernelState) {
    let c = Consts::of(spec);
    let hidden = input.with(input.g.mapv(|f| c.w * f + c.bias));
    let delta = input.with(sigma_sigma_all(spec, &hidden).mapv(|x| c.x * x + c.bias));
    (hidden, delta)
}

/// A symmetric positive semi-definite matrix's Cholesky factor L (A = L Lᵀ), with pivots
/// below a relative tolerance set to zero. Those columns are (numerically) linear
/// combinations of earlier ones, so dropping them loses nothing: F is often singular
/// (identical tokens, or ε = 0 with G of rank < D).
fn cholesky_psd(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let scale = (0..n).map(|i| a[[i, i]].abs()).fold(0.0, f64::max);
    let tol = 1e-12 * scale.max(f64::MIN_POSITIVE);
    let mut l = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        let d = a[[j, j]] - (0..j).map(|k| l[[j, k]] * l[[j, k]]).sum::<f64>();
        if d <= tol {
            continue;
        }
        let r = d.sqrt();
        l[[j, j]] = r;
        for i in j + 1..n {
            let s = a[[i, j]] - (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum::<f64>();
            l[[i, j]] = s / r;
        }
    }
    l
}

/// Attention statistics of one MHSA block at infinite width.
#[derive(Clone, Debug)]
pub struct AttnStats {
    /// E[Ω̃²] per (query δ, key t'): row δ, column t' of the query's sequence (D × T).
    pub logit_var: Array2<f64>,
    /// Mean entropy −Σ_{t'} Ω log Ω of each query's attention row (D).
    pub entropy: Vec<f64>,
    /// Mean of max_{t'} Ω of each query's row (D).
    pub max: Vec<f64>,
    /// Whether the statistics came from sampling (false: exact uniform attention).
    pub sampled: bool,
}

/// How the Gaussian logit field is sampled: draws per block, and the stream that makes the
/// theory reproducible (a fixed-seed Xoshiro stream per block and batch).
#[derive(Clone, Copy, Debug)]
pub struct LogitSampler {
    pub samples: usize,
    pub seed: u64,
    /// Stream index offset, distinct for every error batch.
    pub batch: u64,
}

/// Keeps the theory's logit streams apart from the Monte Carlo's parameter streams.
const THEORY_DOMAIN: u64 = 0x7EE0_4A11_C0DE_0002;

/// The variance factor of the logits relative to C_Q C_K F F: the logit Σ_c q_c k_c / C^a is
/// a sum of C products with per-channel covariance (C_Q F)(C_K F), so its covariance is
/// C^{1−2a} C_Q C_K F F. At a = 1/2 (the paper, (1.61)) it is O(1); for a > 1/2 (μP uses
/// a = 1, footnote 12) it vanishes as n → ∞ and attention becomes exactly uniform at
/// infinite width (SPEC §4); a < 1/2 makes the logits diverge.
pub(crate) fn logit_scale(spec: &ModelSpec) -> Result<f64, TheoryError> {
    let a = spec.logit_exponent;
    if (a - 0.5).abs() < 1e-12 {
        Ok(1.0)
    } else if a > 0.5 {
        Ok(0.0)
    } else {
        Err(TheoryError::Unsupported(format!(
            "model.logit_exponent = {a} < 1/2 makes the logit variance C^(1-2a) diverge at infinite width"
        )))
    }
}

/// Softmax of one query row over keys 0..=last (causal) or all keys, in place into `w`.
fn softmax_row(logits: &[f64], last: usize, w: &mut [f64]) {
    let m = logits[..=last]
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let mut z = 0.0;
    for (t, wt) in w.iter_mut().enumerate() {
        *wt = if t <= last {
            (logits[t] - m).exp()
        } else {
            0.0
        };
        z += *wt;
    }
    w.iter_mut().for_each(|x| *x /= z);
}

/// MHSA branch (1.61)–(1.65) and footnote 14's factorized form (1.64):
/// ΔG_{δ1δ2} = C_U Σ_{t1',t2'} E[Ω_{δ1 t1'} Ω_{δ2 t2'}] (C_V F + C_b)_{(α1;t1')(α2;t2')} + C_b.
///
/// The logit field of one head has covariance
/// Cov[Ω̃_{(α1;t1)(α1;t1')}, Ω̃_{(α2;t2)(α2;t2')}] = C^{1−2a} A_{(α1;t1)(α2;t2)} B_{(α1;t1')(α2;t2')}
/// with A = C_Q F + C_b (queries) and B = C_K F + C_b (keys), jointly over all sequences.
/// It is sampled exactly as Ω̃ = sqrt(C^{1−2a}) L_A Z L_Bᵀ with A = L_A L_Aᵀ, B = L_B L_Bᵀ
/// and Z an i.i.d. N(0,1) D×D matrix (notes §1.3: Cov[(L_A Z L_Bᵀ)_{ab}, (L_A Z L_Bᵀ)_{cd}]
/// = A_ac B_bd), keeping the entries whose query and key lie in the same sequence. The
/// expectation is then a sample mean over `sampler.samples` draws. When the logit variance
/// is zero (zero queries without biases, C_Q C_K = 0, or a > 1/2) attention is exactly
/// uniform and nothing is sampled.
pub fn attn_branch(
    spec: &ModelSpec,
    input: &KernelState,
    block: usize,
    sampler: LogitSampler,
) -> Result<(KernelState, AttnStats), TheoryError> {
    attn_branch_draws(spec, input, block, sampler, false).map(|(d, s, _)| (d, s))
}

/// One block's attention matrices Ω (D×D, block-diagonal over sequences, rows = queries),
/// one per logit draw, each with its weight in the average (the NTK's E[ΩΩ] and E[JJ]
/// reuse exactly the forward pass's draws).
pub type Draws = Vec<(f64, Array2<f64>)>;

/// [`attn_branch`], also returning the draws when `keep` is set.
pub fn attn_branch_draws(
    spec: &ModelSpec,
    input: &KernelState,
    block: usize,
    sampler: LogitSampler,
    keep: bool,
) -> Result<(KernelState, AttnStats, Draws), TheoryError> {
    let mut draws: Draws = Vec::new();
    let c = Consts::of(spec);
    let (d, t) = (input.len(), input.tokens);
    let scale = logit_scale(spec)?;
    let qk = input.g.mapv(|f| c.q * f + c.bias);
    let kk = input.g.mapv(|f| c.k * f + c.bias);
    let value = input.g.mapv(|f| c.v * f + c.bias);
    let logit_var = Array2::from_shape_fn((d, t), |(a, tk)| {
        let key = (a / t) * t + tk;
        scale * qk[[a, a]] * kk[[key, key]]
    });
    let sampled = logit_var.iter().any(|&v| v > 0.0);
    // Causal: query t sees keys 0..=t (1.18); bidirectional: all T keys (1.17).
    let last = |a: usize| if spec.causal { a % t } else { t - 1 };

    let mut e_pp = Array2::<f64>::zeros((d, d));
    let mut entropy = vec![0.0; d];
    let mut max = vec![0.0; d];
    let mut attn = Array2::<f64>::zeros((d, d));
    let mut accumulate = |attn: &Array2<f64>, weight: f64| {
        // Σ_{t1',t2'} Ω_{δ1 t1'} Ω_{δ2 t2'} V_{t1' t2'} = (Ω V Ωᵀ)_{δ1 δ2}, Ω block-diagonal.
        let p = attn.dot(&value).dot(&attn.t());
        e_pp.scaled_add(weight, &p);
        for a in 0..d {
            let row = attn.row(a);
            let h: f64 = -row
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p * p.ln())
                .sum::<f64>();
            let m = row.iter().fold(0.0f64, |m, &p| m.max(p));
            entropy[a] += weight * h;
            max[a] += weight * m;
        }
    };
    if !sampled {
        for a in 0..d {
            let seq0 = (a / t) * t;
            let l = last(a);
            for tk in 0..=l {
                attn[[a, seq0 + tk]] = 1.0 / (l + 1) as f64;
            }
        }
        accumulate(&attn, 1.0);
        if keep {
            draws.push((1.0, attn.clone()));
        }
    } else {
        let la = cholesky_psd(&qk);
        let lb = cholesky_psd(&kk);
        let root = scale.sqrt();
        let mut rng = init::stream(
            sampler.seed ^ THEORY_DOMAIN,
            (block as u64) << 32 | sampler.batch,
        );
        let weight = 1.0 / sampler.samples as f64;
        let mut row_w = vec![0.0; t];
        for _ in 0..sampler.samples {
            let z = Array2::from_shape_simple_fn((d, d), || rng.sample::<f64, _>(StandardNormal));
            let zlb = z.dot(&lb.t());
            attn.fill(0.0);
            for sq in 0..input.sequences {
                let rows = s![sq * t..(sq + 1) * t, ..];
                // Logits of this sequence: (L_A)_{rows} Z (L_B)_{rows}ᵀ, query × key.
                let lg = la.slice(rows).dot(&zlb.slice(s![.., sq * t..(sq + 1) * t]));
                for tq in 0..t {
                    let a = sq * t + tq;
                    let lrow: Vec<f64> = lg.row(tq).iter().map(|x| root * x).collect();
                    softmax_row(&lrow, last(a), &mut row_w);
                    for (tk, w) in row_w.iter().enumerate() {
                        attn[[a, sq * t + tk]] = *w;
                    }
                }
            }
            accumulate(&attn, weight);
            if keep {
                draws.push((weight, attn.clone()));
            }
        }
    }
    let delta = input.with(e_pp.mapv(|x| c.u * x + c.bias));
    Ok((
        delta,
        AttnStats {
            logit_var,
            entropy,
            max,
            sampled,
        },
        draws,
    ))
}

/// Residual add (1.65), (1.77) with SPEC's weights: G' = ξ² G + γ² ΔG (cross terms vanish).
pub fn residual(spec: &ModelSpec, z: &KernelState, delta: &KernelState) -> KernelState {
    let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
    let mut g = z.g.mapv(|x| x2 * x);
    g.scaled_add(g2, &delta.g);
    z.with(g)
}

/// Head (1.80), pooled (1.81), tied (1.84): from the head's input kernel (F in `pre` mode,
/// the stream itself in `post` and `none`). In `mlp` mode it is one more book layer.
pub fn head(spec: &ModelSpec, input: &KernelState) -> KernelState {
    let c = Consts::of(spec);
    if spec.norm == Norm::Mlp {
        return input.with(sigma_sigma_all(spec, input).mapv(|x| c.bias + c.head * x));
    }
    let dense = input.g.mapv(|f| c.head * f);
    let g = if spec.head == HeadKind::Pooled {
        // (1.81): G̃_{α1α2} = (1/T²) Σ_{t1,t2} G_{(α1;t1)(α2;t2)}; the bias adds C_b once.
        let (sq, t) = (input.sequences, input.tokens);
        let g = Array2::from_shape_fn((sq, sq), |(a1, a2)| {
            dense
                .slice(s![a1 * t..(a1 + 1) * t, a2 * t..(a2 + 1) * t])
                .sum()
                / (t * t) as f64
                + c.bias
        });
        return KernelState::new(g, sq, 1);
    } else {
        dense.mapv(|x| x + c.bias)
    };
    input.with(g)
}

/// The tied head's contact term **[derived from footnote 19 and (1.140), not in (1.84)]**.
///
/// The head reads z^L_{δ;i} = N Σ_j W_WE[j, i] s_{δ;j}, and s_δ still contains the stem's
/// own column c_δ W_WE[:, id_δ] through the skip path (c_δ = ξ^B/sqrt(G_δδ + ε) in `pre`
/// mode, with a 1/sqrt(G + ε) per post-LN, ξ^B without LN). So the output component
/// i = id_δ has a *mean* N c_δ Σ_j W_WE[j, id_δ]² = N c_δ n C_WE, and the kernel
/// (1/n_out) Σ_i z_{δ1;i} z_{δ2;i} gains [id_δ1 = id_δ2] N² (n C_WE)² c_δ1 c_δ2 / n_out,
/// which is O(n/n_vocab) relative to (1.84): not negligible unless n ≪ n_vocab. The
/// branches add no such mean: each ends in a fresh mean-zero weight.
fn tied_contact(spec: &ModelSpec, g0: &KernelState, coef: &[f64], out: &mut KernelState) {
    let n = spec.width as f64;
    let amp = spec.tied_rescale() * n * spec.var.stem;
    let n_out = spec.out_dim() as f64;
    // G⁰ of the embedding stem is exactly [id_δ1 = id_δ2].
    for a in 0..out.len() {
        for b in 0..out.len() {
            out.g[[a, b]] += g0.g[[a, b]] * amp * amp * coef[a] * coef[b] / n_out;
        }
    }
}

/// The book's MLP layer K' = C_b + C_W ⟨σσ⟩_K (`mlp` mode blocks, PDLT §4.3).
fn book_layer(spec: &ModelSpec, k: &KernelState, c_w: f64, c_b: f64) -> KernelState {
    k.with(sigma_sigma_all(spec, k).mapv(|x| c_b + c_w * x))
}

/// What the theory predicts at one layer ℓ.
#[derive(Clone, Debug)]
pub struct LayerPrediction {
    pub layer: usize,
    /// z^ℓ (the head output at ℓ = L).
    pub resid: KernelState,
    /// s^ℓ = LN(z^ℓ), `pre` mode, ℓ ≤ B+1.
    pub ln: Option<KernelState>,
    /// The MLP preactivation of the block that produces ℓ.
    pub hidden: Option<KernelState>,
    pub attn: Option<AttnStats>,
    /// Per token (fluct, kurtosis) from the four-point vertex (`mlp` mode only).
    pub vertex: Option<Vec<(f64, f64)>>,
}

/// The whole forward prediction; `diverged_at` is the first non-finite layer, if any
/// (the layers before it are kept).
#[derive(Clone, Debug)]
pub struct Prediction {
    pub layers: Vec<LayerPrediction>,
    pub diverged_at: Option<usize>,
}

fn layer(layer: usize, resid: KernelState) -> LayerPrediction {
    LayerPrediction {
        layer,
        resid,
        ln: None,
        hidden: None,
        attn: None,
        vertex: None,
    }
}

/// Runs the forward recursion from the input kernel G⁰ through the head.
pub fn forward(
    spec: &ModelSpec,
    g0: &KernelState,
    sampler: LogitSampler,
) -> Result<Prediction, TheoryError> {
    if spec.norm == Norm::Mlp {
        return Ok(book_forward(spec, g0));
    }
    let mut out = Vec::with_capacity(spec.num_blocks() + 2);
    let mut z = stem(spec, g0);
    // How much of the stem's own W_WE[:, id_δ] the stream z_δ carries along the skip path
    // (for the tied head's contact term, see [`tied_contact`]).
    let mut stem_coef = vec![1.0; z.len()];
    let ln_of = |z: &KernelState| layer_norm(z, spec.ln_eps);
    let mut cur = layer(1, z.clone());
    for (b, kind) in spec.blocks.iter().enumerate() {
        let l = b + 2;
        if spec.norm == Norm::Pre {
            cur.ln = Some(ln_of(&z));
        }
        if !cur.resid.finite() {
            return Ok(Prediction {
                layers: out,
                diverged_at: Some(cur.layer),
            });
        }
        // The branch input: s = LN(z) (pre), or z itself (post, none).
        let input = cur.ln.clone().unwrap_or_else(|| z.clone());
        out.push(cur);
        let mut next = layer(l, z.clone());
        let delta = match kind {
            BlockKind::Mlp => {
                let (hidden, delta) = mlp_branch(spec, &input);
                next.hidden = Some(hidden);
                delta
            }
            BlockKind::Attn => {
                let (delta, stats) = attn_branch(spec, &input, l, sampler)?;
                next.attn = Some(stats);
                delta
            }
        };
        z = residual(spec, &z, &delta);
        stem_coef.iter_mut().for_each(|c| *c *= spec.xi);
        if spec.norm == Norm::Post {
            for (a, c) in stem_coef.iter_mut().enumerate() {
                *c /= (z.g[[a, a]] + spec.ln_eps).sqrt();
            }
            z = ln_of(&z);
        }
        next.resid = z.clone();
        cur = next;
    }
    let head_in = if spec.norm == Norm::Pre {
        for (a, c) in stem_coef.iter_mut().enumerate() {
            *c /= (z.g[[a, a]] + spec.ln_eps).sqrt();
        }
        let f = ln_of(&z);
        cur.ln = Some(f.clone());
        f
    } else {
        z
    };
    if !cur.resid.finite() {
        return Ok(Prediction {
            layers: out,
            diverged_at: Some(cur.layer),
        });
    }
    out.push(cur);
    let mut out_g = head(spec, &head_in);
    if spec.head == HeadKind::Tied {
        tied_contact(spec, g0, &stem_coef, &mut out_g);
    }
    let out_l = layer(spec.head_layer(), out_g);
    let diverged_at = (!out_l.resid.finite()).then_some(out_l.layer);
    if diverged_at.is_none() {
        out.push(out_l);
    }
    Ok(Prediction {
        layers: out,
        diverged_at,
    })
}

/// `mlp` mode: the book's kernel recursion K^{ℓ+1} = C_b + C_W ⟨σσ⟩_{K^ℓ} with the stem's
/// C_W at ℓ = 1, `variances.w` for the blocks and the head's C_head n^{-s} at ℓ = L, and per
/// token the four-point vertex V^{ℓ+1} = χ∥(K^ℓ)² V^ℓ + C_W² (⟨σ⁴⟩ − ⟨σ²⟩²)_{K^ℓ}, V¹ = 0
/// (equal widths n, [`BookMlp::vertex`] with the layer's own C_W). Observables:
/// kurtosis = V/(n K²) and fluct = 2K² + V·w_ℓ/n where w_ℓ is the width the Monte Carlo
/// averages over (n, or n_out at the head): n_ℓ Var[(1/n_ℓ)Σ z²] = 2K² + 3V/n + (n_ℓ − 1)V/n.
fn book_forward(spec: &ModelSpec, g0: &KernelState) -> Prediction {
    let c = Consts::of(spec);
    let n = spec.width as f64;
    let l_max = spec.head_layer();
    let d = g0.len();
    let act = spec.activation;
    let mut k = stem(spec, g0);
    let mut v = vec![0.0; d];
    let mut out = Vec::with_capacity(l_max);
    for l in 1..=l_max {
        let width = if l == l_max { spec.out_dim() as f64 } else { n };
        let vertex = (0..d)
            .map(|a| {
                let kk = k.g[[a, a]];
                (2.0 * kk * kk + v[a] * width / n, v[a] / (n * kk * kk))
            })
            .collect();
        if !k.finite() || v.iter().any(|x| !x.is_finite()) {
            return Prediction {
                layers: out,
                diverged_at: Some(l),
            };
        }
        let mut p = layer(l, k.clone());
        p.vertex = Some(vertex);
        out.push(p);
        if l == l_max {
            break;
        }
        let c_w = if l + 1 == l_max { c.head } else { c.w };
        let mlp = BookMlp::new(act, c.bias, c_w);
        for (a, va) in v.iter_mut().enumerate() {
            let kk = k.g[[a, a]];
            let s2 = sigma2(act, kk);
            let chi = mlp.chi_parallel(kk);
            *va = chi * chi * *va + c_w * c_w * (sigma4(act, kk) - s2 * s2);
        }
        k = book_layer(spec, &k, c_w, c.bias);
    }
    Prediction {
        layers: out,
        diverged_at: None,
    }
}

/// A theory row before the error and the labels are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct PRow {
    pub layer: usize,
    pub site: &'static str,
    pub observable: String,
    pub i: i64,
    pub j: i64,
    pub value: f64,
}

/// The kernel rows of one site, in the Monte Carlo recorder's order: `kernel` for i ≤ j,
/// `kernel_diag`, `kernel_offdiag`, `corr_offdiag` (a ratio of the kernel's entries, as the
/// MC's ratio of means), `kernel_cross`.
fn kernel_rows(out: &mut Vec<PRow>, layer: usize, site: &'static str, k: &KernelState) {
    let d = k.len();
    let mut push = |obs: &str, i: i64, j: i64, value: f64| {
        out.push(PRow {
            layer,
            site,
            observable: obs.to_string(),
            i,
            j,
            value,
        })
    };
    for i in 0..d {
        for j in i..d {
            push("kernel", i as i64, j as i64, k.g[[i, j]]);
        }
    }
    let mean = |pred: &dyn Fn(usize, usize) -> bool| {
        let (mut s, mut c) = (0.0, 0usize);
        for i in 0..d {
            for j in 0..d {
                if pred(i, j) {
                    s += k.g[[i, j]];
                    c += 1;
                }
            }
        }
        (c > 0).then(|| s / c as f64)
    };
    if let Some(v) = mean(&|i, j| i == j) {
        push("kernel_diag", -1, -1, v);
    }
    if let Some(v) = mean(&|i, j| i != j && k.same_seq(i, j)) {
        push("kernel_offdiag", -1, -1, v);
        let pairs: Vec<f64> = (0..d)
            .flat_map(|i| (i + 1..d).map(move |j| (i, j)))
            .filter(|&(i, j)| k.same_seq(i, j))
            .map(|(i, j)| k.g[[i, j]] / (k.g[[i, i]] * k.g[[j, j]]).sqrt())
            .collect();
        push(
            "corr_offdiag",
            -1,
            -1,
            pairs.iter().sum::<f64>() / pairs.len() as f64,
        );
    }
    if let Some(v) = mean(&|i, j| !k.same_seq(i, j)) {
        push("kernel_cross", -1, -1, v);
    }
}

fn attn_rows(out: &mut Vec<PRow>, layer: usize, a: &AttnStats, tokens: usize) {
    let d = a.entropy.len();
    let mut push = |obs: &str, i: usize, j: usize, value: f64, summary: bool| {
        let (i, j) = if summary {
            (-1, -1)
        } else {
            (i as i64, j as i64)
        };
        out.push(PRow {
            layer,
            site: "logits",
            observable: obs.to_string(),
            i,
            j,
            value,
        })
    };
    for q in 0..d {
        for tk in 0..tokens {
            push(
                "logit_var",
                q,
                (q / tokens) * tokens + tk,
                a.logit_var[[q, tk]],
                false,
            );
        }
    }
    push("logit_var", 0, 0, a.logit_var.mean().unwrap_or(0.0), true);
    for q in 0..d {
        push("attn_entropy", q, q, a.entropy[q], false);
        push("attn_max", q, q, a.max[q], false);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    push("attn_entropy", 0, 0, mean(&a.entropy), true);
    push("attn_max", 0, 0, mean(&a.max), true);
}

/// Every row of a prediction, layer by layer, in a fixed order (so that independent error
/// batches line up row for row).
pub fn prediction_rows(p: &Prediction) -> Vec<PRow> {
    let mut out = Vec::new();
    for l in &p.layers {
        kernel_rows(&mut out, l.layer, "resid", &l.resid);
        if let Some(f) = &l.ln {
            kernel_rows(&mut out, l.layer, "ln", f);
        }
        if let Some(h) = &l.hidden {
            kernel_rows(&mut out, l.layer, "hidden", h);
        }
        if let Some(a) = &l.attn {
            attn_rows(&mut out, l.layer, a, l.resid.tokens);
        }
        if let Some(v) = &l.vertex {
            for (a, (fl, ku)) in v.iter().enumerate() {
                let (i, j) = (a as i64, a as i64);
                for (obs, value) in [("fluct", *fl), ("kurtosis", *ku)] {
                    out.push(PRow {
                        layer: l.layer,
                        site: "resid",
                        observable: obs.to_string(),
                        i,
                        j,
                        value,
                    });
                }
            }
        }
    }
    out
}

/// Options of [`predict`].
#[derive(Clone, Copy, Debug)]
pub struct TheoryOptions {
    /// Logit-field draws per attention block (`theory.logit_samples`).
    pub logit_samples: usize,
    /// Independent batches for the inner Monte Carlo error (`theory.error_batches`).
    pub error_batches: usize,
    pub seed: u64,
    /// Also predict the backward rows (grad2, ntk_<group>, ntk, ntk_total), as the Monte
    /// Carlo does unless `run.backward = "none"`.
    pub backward: bool,
    /// With `backward`: also every pair of outputs, as the Monte Carlo's `pairs` mode.
    pub pairs: bool,
}

/// The theory's rows for a probe set, with `source = theory`.
///
/// Values come from one run with all `logit_samples` draws. When attention is sampled, the
/// error of every row is estimated from `error_batches` further independent runs with
/// `logit_samples / error_batches` draws each: the standard deviation of a batch result,
/// divided by sqrt(batches), is the standard error of the full-sample result (batch means;
/// the recursion is nonlinear in E[ΩΩ], so the error of a block propagates into every later
/// layer, and this carries it there). Deterministic rows have stderr 0 and samples 0.
pub fn predict(
    spec: &ModelSpec,
    probe: &Probe,
    opts: TheoryOptions,
    config_name: &str,
) -> Result<(Vec<Row>, Option<usize>), TheoryError> {
    let g0 = input_kernel(spec, probe)?;
    let sampler = |samples: usize, batch: u64| LogitSampler {
        samples,
        seed: opts.seed,
        batch,
    };
    let full = forward(spec, &g0, sampler(opts.logit_samples, 0))?;
    let sampled = full
        .layers
        .iter()
        .any(|l| l.attn.as_ref().is_some_and(|a| a.sampled));
    let all_rows = |p: &Prediction, sampler: LogitSampler| -> Result<Vec<PRow>, TheoryError> {
        let mut rows = prediction_rows(p);
        if opts.backward
            && p.diverged_at.is_none()
            && let Some(b) = super::ntk::backward_rows(spec, &g0, sampler, opts.pairs)?
        {
            rows.extend(b);
        }
        Ok(rows)
    };
    let rows = all_rows(&full, sampler(opts.logit_samples, 0))?;
    let mut stderr = vec![0.0; rows.len()];
    if sampled {
        let r = opts.error_batches.max(2);
        let per = (opts.logit_samples / r).max(1);
        // Rows that do not depend on the logit draws must get an error of exactly 0.
        let mut vals = vec![Vec::with_capacity(r); rows.len()];
        for b in 1..=r {
            let sb = sampler(per, b as u64);
            let rb = all_rows(&forward(spec, &g0, sb)?, sb)?;
            for (k, row) in rows.iter().enumerate() {
                // A batch that diverged earlier lacks rows: its error stays NaN there.
                let v = rb
                    .get(k)
                    .filter(|x| x.observable == row.observable && x.layer == row.layer)
                    .map_or(f64::NAN, |x| x.value);
                vals[k].push(v);
            }
        }
        let rf = r as f64;
        for (se, v) in stderr.iter_mut().zip(&vals) {
            // Shifted by the first batch, so identical values give exactly 0.
            let v0 = v.first().copied().unwrap_or(0.0);
            let mean = v.iter().map(|x| x - v0).sum::<f64>() / rf;
            let var = v.iter().map(|x| (x - v0 - mean).powi(2)).sum::<f64>() / (rf - 1.0);
            *se = (var / rf).sqrt();
        }
    }
    let samples = if sampled {
        opts.logit_samples as u64
    } else {
        0
    };
    let out = rows
        .into_iter()
        .zip(stderr)
        .filter(|(r, _)| r.value.is_finite())
        .map(|(r, se)| Row {
            source: "theory".into(),
            config: config_name.to_string(),
            width: spec.width,
            heads: spec.heads,
            layer: r.layer,
            block: crate::mc::observe::block_name(spec, r.layer).to_string(),
            site: r.site.to_string(),
            observable: r.observable,
            i: r.i,
            j: r.j,
            value: r.value,
            stderr: se,
            samples,
        })
        .collect();
    Ok((out, full.diverged_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_of_a_singular_matrix_reproduces_it() {
        // Rank 2 in 3 dimensions: the third row is the sum of the first two.
        let b = ndarray::arr2(&[[1.0, 0.2], [0.3, 1.0], [1.3, 1.2]]);
        let a = b.dot(&b.t());
        let l = cholesky_psd(&a);
        let back = l.dot(&l.t());
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-9, "{back:?} vs {a:?}");
        }
    }

    #[test]
    fn layer_norm_map_is_one_on_the_diagonal_at_zero_eps() {
        let k = KernelState::new(ndarray::arr2(&[[4.0, 1.0], [1.0, 9.0]]), 1, 2);
        let f = layer_norm(&k, 0.0);
        assert!((f.g[[0, 0]] - 1.0).abs() < 1e-15);
        assert!((f.g[[0, 1]] - 1.0 / 6.0).abs() < 1e-15);
    }
}
