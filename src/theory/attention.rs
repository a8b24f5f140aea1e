//! The MHSA branch at infinite width: its kernel map (1.61)–(1.65) and its NTK transport
//! (1.151)–(1.163), side by side.
//!
//! - Kernel (1.61)–(1.65): ΔG = C_U C_V Σ_{t1',t2'} E[Ω_{t1 t1'} Ω_{t2 t2'}] F_{t1' t2'} with
//!   the logits jointly Gaussian of covariance C_Q C_K F_{t1 t2} F_{t1' t2'}, independent
//!   across heads, computed by sampling the logit field ([`LogitSampler`], [`forward`]).
//! - NTK, (1.161)–(1.163) as reconstructed in the notes §2.5: value path C_U C_V E[Ω Θ̄ Ωᵀ],
//!   logit path C_U C_V C_Q C_K (Θ̄ ⊙ E[S_F] + F ⊙ E[S_Θ̄]) with
//!   S_X(δ1, δ2) = Σ F_{t1't2'} J_{δ1;t1'u1'} J_{δ2;t2'u2'} X_{u1'u2'} and the softmax Jacobian
//!   J_{δ;t'u'} = Ω_{δt'}(δ_{t'u'} − Ω_{δu'}); additive raw_U = n C_V E[ΩFΩᵀ],
//!   raw_V = n C_U E[ΩFΩᵀ], raw_Q = n C_U C_V C_K F ⊙ E[S_F], raw_K = n C_U C_V C_Q F ⊙ E[S_F]
//!   (1.151)–(1.154). The expectations reuse the forward pass's logit draws
//!   (`Block::transport`).
//! - Biases (C_b > 0), derived beyond the paper by the same rules: the branch kernels gain
//!   C_b (values V = C_V F + C_b, keys K = C_K F + C_b, queries Q = C_Q F + C_b), and S takes
//!   the value kernel V in place of C_V F:
//!   S_X(δ1, δ2) = Σ V_{t1't2'} J_{δ1;t1'u1'} J_{δ2;t2'u2'} X_{u1'u2'}. Then
//!   raw_Q = n C_U F ⊙ E[S_K], raw_K = n C_U Q ⊙ E[S_F], raw_U = n E[ΩVΩᵀ], logit-path
//!   transport C_U C_Q (Θ̄ ⊙ E[S_K]) + C_U C_K (Q ⊙ E[S_Θ̄]) (times the logit scale), all of
//!   which reduce to the paper's forms at C_b = 0. The block's bias group (one `ntk_bias` per
//!   layer, as the Monte Carlo sums it): b_U 1, b_V C_U E[Ω1Ωᵀ], b_Q C_U E[S_K], b_K 0 (the
//!   softmax ignores a shift shared by a query's keys, Σ_u' J_{δ;t'u'} = 0). (1 is the
//!   all-ones kernel.)
//! - Tied head: the block records its draws and logit-gradient kernels for the contact
//!   ([`super::contact`], `Block::logits`).
//!
//! - Order 1 (`theory.order = 1`, docs/finite-width.md): each logit draw first draws its own
//!   input kernel F̂ at width n ([`InputLaw`], Wishart), then q and k at head width C given
//!   F̂; the increment, the value and logit paths and the raw groups use each draw's F̂, Q̂,
//!   K̂, V̂ ([`finite_moments`]). The curvature of S in F is what the leading order misses in
//!   `ntk_q`/`ntk_k` (a 1/n effect with a coefficient of 5–20). The increment is carried as a
//!   Gaussian mixture over its random kernel ([`FluctSums`]: O(1/H) over heads, 1/n through
//!   the shared F̂) with its covariance with the stream, for [`super::finite`].
//!
//! F is the branch input's kernel (LN(z) in `pre` mode, z otherwise) and Θ̄ its carried NTK.

use ndarray::{Array2, s};
use rand::Rng;
use rand_distr::StandardNormal;

use super::TheoryError;
use super::contact::{self, Lam, Logits, Step};
use super::finite::Finite;
use super::linalg::cholesky_psd;
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::config::ModelSpec;
use crate::model::{Group, init};

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
pub(crate) const THEORY_DOMAIN: u64 = 0x7EE0_4A11_C0DE_0002;

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
pub(crate) fn softmax_row(logits: &[f64], last: usize, w: &mut [f64]) {
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

/// One block's attention matrices Ω (D×D, block-diagonal over sequences, rows = queries),
/// one per logit draw, each with its weight in the average (the NTK's E[ΩΩ] and E[JJ]
/// reuse exactly the forward pass's draws).
pub type Draws = Vec<(f64, Array2<f64>)>;

/// The block's effective constants C = variance × fan-in, read off the tensors the sampler
/// draws (`model::attention::hyper`): C_Q is 0 there with zero-initialized queries, C_b is 0
/// without biases.
#[derive(Clone, Copy)]
struct C {
    q: f64,
    k: f64,
    v: f64,
    u: f64,
    bias: f64,
}

impl C {
    fn of(ctx: &Ctx) -> Self {
        let h = &ctx.hyper.attention;
        C {
            q: h.q.c_eff(),
            k: h.k.c_eff(),
            v: h.v.c_eff(),
            u: h.u.c_eff(),
            bias: h.bias.unwrap_or(0.0),
        }
    }
}

/// The query, key and value kernels C_Q F + C_b, C_K F + C_b, C_V F + C_b.
struct Qkv {
    q: Array2<f64>,
    k: Array2<f64>,
    v: Array2<f64>,
}

impl Qkv {
    fn of(ctx: &Ctx, f: &Array2<f64>) -> Self {
        let c = C::of(ctx);
        Qkv {
            q: f.mapv(|f| c.q * f + c.bias),
            k: f.mapv(|f| c.k * f + c.bias),
            v: f.mapv(|f| c.v * f + c.bias),
        }
    }
}

/// The running sums over the draws: E[Ω V Ωᵀ], and each query's entropy and max.
struct Moments {
    e_pp: Array2<f64>,
    entropy: Vec<f64>,
    max: Vec<f64>,
}

impl Moments {
    fn add(&mut self, attn: &Array2<f64>, value: &Array2<f64>, weight: f64) -> Array2<f64> {
        // Σ_{t1',t2'} Ω_{δ1 t1'} Ω_{δ2 t2'} V_{t1' t2'} = (Ω V Ωᵀ)_{δ1 δ2}, Ω block-diagonal.
        let p = attn.dot(value).dot(&attn.t());
        self.e_pp.scaled_add(weight, &p);
        for a in 0..attn.nrows() {
            let row = attn.row(a);
            let h: f64 = -row
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p * p.ln())
                .sum::<f64>();
            let m = row.iter().fold(0.0f64, |m, &p| m.max(p));
            self.entropy[a] += weight * h;
            self.max[a] += weight * m;
        }
        p
    }
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
///
/// At `theory.order = 1` each draw first draws the input's empirical kernel F̂ at width n
/// ([`InputLaw`]; two consecutive draws share one, as two heads do), and the logits follow
/// their exact law at finite head width C = n/H given F̂ (docs/finite-width.md):
/// Ω̃ = sqrt(C^{1−2a}) (L_Â Z₁)(L_B̂ Z₂)ᵀ/√C with Â = C_Q F̂ + C_b, B̂ = C_K F̂ + C_b and Z₁,
/// Z₂ i.i.d. N(0,1) D×C matrices, i.e. q_c ~ N(0, Â) and k_c ~ N(0, B̂) for each of the C
/// channels and the logit their scaled dot product; its n, C → ∞ limit is the Gaussian field
/// above. The draws' Q̂, K̂ and F̂ are kept for the NTK ([`Hats`]), and the sums for the
/// increment's fluctuation are returned ([`FluctSums`]). `stream` is the residual stream's
/// kernel (the LN's input in `pre` mode).
///
/// Returns the increment, the block's attention statistics and, with `keep`, the draws.
pub(crate) fn forward(
    ctx: &Ctx,
    input: &KernelState,
    stream: &Array2<f64>,
    layer: usize,
    keep: bool,
) -> Result<(KernelState, AttnStats, Draws, Hats, Option<FluctSums>), TheoryError> {
    let (spec, c) = (ctx.spec, C::of(ctx));
    let mut draws: Draws = Vec::new();
    let mut hats: Hats = Vec::new();
    let mut fluct: Option<FluctSums> = None;
    let (d, t) = (input.len(), input.tokens);
    let scale = logit_scale(spec)?;
    let qkv = Qkv::of(ctx, &input.g);
    let logit_var = Array2::from_shape_fn((d, t), |(a, tk)| {
        let key = (a / t) * t + tk;
        scale * qkv.q[[a, a]] * qkv.k[[key, key]]
    });
    let sampled = logit_var.iter().any(|&v| v > 0.0);
    let mut mom = Moments {
        e_pp: Array2::zeros((d, d)),
        entropy: vec![0.0; d],
        max: vec![0.0; d],
    };
    if !sampled {
        let attn = uniform(spec, d, t);
        let _ = mom.add(&attn, &qkv.v, 1.0);
        if keep {
            draws.push((1.0, attn));
        }
    } else {
        let la = cholesky_psd(&qkv.q);
        let lb = cholesky_psd(&qkv.k);
        let root = scale.sqrt();
        let sampler = ctx.sampler;
        let mut rng = init::stream(
            sampler.seed ^ THEORY_DOMAIN,
            (layer as u64) << 32 | sampler.batch,
        );
        let weight = 1.0 / sampler.samples as f64;
        let mut attn = Array2::<f64>::zeros((d, d));
        let channels = (spec.width / spec.heads.max(1)).max(1);
        let law = (ctx.order == 1).then(|| InputLaw::of(ctx, &input.g, stream, layer));
        let mut shared = (Array2::zeros((d, d)), Array2::zeros((d, d)));
        for i in 0..sampler.samples {
            if let Some(law) = &law {
                // Order 1: first the draw's own input kernel F̂ at width n, then its queries
                // and keys at head width C given F̂ (both exact for a Gaussian stream). Two
                // consecutive draws share F̂, as two heads of one network do (FluctSums).
                if i.is_multiple_of(2) {
                    shared = law.draw(&mut rng);
                }
                let (fh, gz) = (shared.0.clone(), &shared.1);
                let qkv_d = Qkv::of(ctx, &fh);
                let (la, lb) = (cholesky_psd(&qkv_d.q), cholesky_psd(&qkv_d.k));
                let mut normal = || rng.sample::<f64, _>(StandardNormal);
                let q = la.dot(&Array2::from_shape_simple_fn((d, channels), &mut normal));
                let k = lb.dot(&Array2::from_shape_simple_fn((d, channels), &mut normal));
                let cf = channels as f64;
                // draw() forms la·zlb per sequence; with la = I it is q·kᵀ/√C.
                let zlb = k.t().mapv(|x| x / cf.sqrt());
                draw(spec, input, &q, &zlb, root, &mut attn);
                // E[Ω V̂ Ωᵀ] with the draw's value kernel C_V F̂ + C_b: the values are
                // independent of Ω given F̂, so this is the exact mean of the increment.
                let p = mom.add(&attn, &qkv_d.v, weight);
                fluct
                    .get_or_insert_with(|| FluctSums::new(d))
                    .add(i, &p, gz);
                if keep {
                    draws.push((weight, attn.clone()));
                    hats.push(Hat {
                        q: q.dot(&q.t()) / cf,
                        k: k.dot(&k.t()) / cf,
                        f: fh,
                    });
                }
            } else {
                let z =
                    Array2::from_shape_simple_fn((d, d), || rng.sample::<f64, _>(StandardNormal));
                let zlb = z.dot(&lb.t());
                draw(spec, input, &la, &zlb, root, &mut attn);
                let _ = mom.add(&attn, &qkv.v, weight);
                if keep {
                    draws.push((weight, attn.clone()));
                }
            }
        }
    }
    let delta = input.with(mom.e_pp.mapv(|x| c.u * x + c.bias));
    let stats = AttnStats {
        logit_var,
        entropy: mom.entropy,
        max: mom.max,
        sampled,
    };
    Ok((delta, stats, draws, hats, fluct))
}

/// Per draw at order 1: the empirical query and key kernels Q̂, K̂ of one head and the
/// draw's input kernel F̂ (D×D each).
#[derive(Clone, Debug)]
pub struct Hat {
    pub q: Array2<f64>,
    pub k: Array2<f64>,
    pub f: Array2<f64>,
}

/// The order-1 draws' [`Hat`]s, one per entry of [`Draws`].
pub type Hats = Vec<Hat>;

/// Order 1: the law of the branch input's empirical kernel F̂ = (1/n) Σ_i s_i s_iᵀ at width
/// n, for a stream whose units are i.i.d. Gaussian with kernel F (exact for the first
/// block's input, the Gaussian stem output; for later blocks the Gaussian part of the
/// stream's fluctuation, without its vertex). Without a LayerNorm in front, F̂ ~ W_n(F)/n
/// (Wishart). After one (pre-LN, and the post-LN stream after its first block) the units
/// are centred and normalized: the centred sum is W_{n−1}(F) and F̂ is its correlation
/// matrix rescaled to F's diagonal (the map Φ of docs/finite-width.md with ε absorbed in
/// F's diagonal; the ε-dependence of the fluctuation itself is O(ε/n)).
///
/// This is what moves `ntk_q`/`ntk_k` at O(1/n): the logit path S is a strongly curved
/// function of F (it measures how much the keys' values differ, ∝ (1 − ρ)² in the token
/// correlation ρ), so E[F̂ ⊙ S(F̂)] − F ⊙ S(F) = (J·K^{{1}} + ½ H : Cov F̂) is of the
/// same order as the mean kernel's own 1/n correction but with a coefficient of 5–20.
struct InputLaw {
    /// F = L Lᵀ.
    l: Array2<f64>,
    /// Degrees of freedom: n − 1 after a LayerNorm's centring, n otherwise.
    dof: usize,
    /// F's diagonal when F̂ is a (rescaled) correlation matrix; `None` for W/n.
    diag: Option<Vec<f64>>,
    /// With `diag`: the stream's diagonal (the LN's input), to put the draw's W back on the
    /// stream's scale for its covariance with the increment.
    stream: Option<Vec<f64>>,
    n: f64,
}

impl InputLaw {
    fn of(ctx: &Ctx, f: &Array2<f64>, stream: &Array2<f64>, layer: usize) -> Self {
        use crate::config::Norm;
        let spec = ctx.spec;
        // pre: s = LN(z); post: the stream is an LN output from the second block on.
        let normalized = spec.norm == Norm::Pre || (spec.norm == Norm::Post && layer > 2);
        let n = spec.width.max(1);
        InputLaw {
            l: cholesky_psd(f),
            dof: if normalized {
                n.saturating_sub(1).max(1)
            } else {
                n
            },
            diag: normalized.then(|| (0..f.nrows()).map(|a| f[[a, a]]).collect()),
            // pre: the stream is the LN's input; post: the stream is the LN output itself.
            stream: (spec.norm == Norm::Pre)
                .then(|| (0..stream.nrows()).map(|a| stream[[a, a]]).collect()),
            n: n as f64,
        }
    }

    /// One F̂, and the stream's empirical kernel Ĝ_z it came from up to a part independent of
    /// F̂ (the centred W/n on the stream's scale; the mean μμᵀ that LN removes is independent
    /// of it): Bartlett's decomposition W = L A Aᵀ Lᵀ (A lower triangular,
    /// A_ii² ~ χ²_{m−i}, A_ij ~ N(0, 1) below the diagonal) when m ≥ D, else m Gaussian
    /// vectors.
    fn draw(&self, rng: &mut impl Rng) -> (Array2<f64>, Array2<f64>) {
        let d = self.l.nrows();
        let m = self.dof;
        let chi = |rng: &mut dyn rand::RngCore, k: usize| -> Option<f64> {
            rand_distr::ChiSquared::new(k as f64)
                .ok()
                .map(|c| rng.sample::<f64, _>(c).sqrt())
        };
        let mut a = Array2::<f64>::zeros((d, m.min(d)));
        let bartlett = m >= d
            && (0..d).all(|i| match chi(rng, m - i) {
                Some(x) => {
                    a[[i, i]] = x;
                    for j in 0..i {
                        a[[i, j]] = rng.sample::<f64, _>(StandardNormal);
                    }
                    true
                }
                None => false,
            });
        let a = if bartlett {
            a
        } else {
            Array2::from_shape_simple_fn((d, m), || rng.sample::<f64, _>(StandardNormal))
        };
        let la = self.l.dot(&a);
        let w = la.dot(&la.t());
        match &self.diag {
            None => {
                let f = w / self.n;
                (f.clone(), f)
            }
            Some(diag) => {
                let f = Array2::from_shape_fn((d, d), |(x, y)| {
                    let den = w[[x, x]] * w[[y, y]];
                    if den > 0.0 {
                        w[[x, y]] / den.sqrt() * (diag[x] * diag[y]).sqrt()
                    } else {
                        0.0
                    }
                });
                let g = match &self.stream {
                    Some(k) => Array2::from_shape_fn((d, d), |(x, y)| {
                        let den = diag[x] * diag[y];
                        if den > 0.0 {
                            w[[x, y]] / self.n * (k[x] * k[y] / den).sqrt()
                        } else {
                            0.0
                        }
                    }),
                    None => f.clone(),
                };
                (f, g)
            }
        }
    }
}

/// Causal: query t sees keys 0..=t (1.18); bidirectional: all T keys (1.17).
fn last_key(spec: &ModelSpec, a: usize, t: usize) -> usize {
    if spec.causal { a % t } else { t - 1 }
}

/// Exactly uniform attention over each query's visible keys (zero logit variance).
fn uniform(spec: &ModelSpec, d: usize, t: usize) -> Array2<f64> {
    let mut attn = Array2::<f64>::zeros((d, d));
    for a in 0..d {
        let seq0 = (a / t) * t;
        let l = last_key(spec, a, t);
        for tk in 0..=l {
            attn[[a, seq0 + tk]] = 1.0 / (l + 1) as f64;
        }
    }
    attn
}

/// One draw of Ω from Z L_Bᵀ: per sequence the logits (L_A)_{rows} Z (L_B)_{rows}ᵀ (query ×
/// key, scaled by sqrt(C^{1−2a})), then the softmax of each query's row.
fn draw(
    spec: &ModelSpec,
    input: &KernelState,
    la: &Array2<f64>,
    zlb: &Array2<f64>,
    root: f64,
    attn: &mut Array2<f64>,
) {
    let t = input.tokens;
    let mut row_w = vec![0.0; t];
    attn.fill(0.0);
    for sq in 0..input.sequences {
        let rows = s![sq * t..(sq + 1) * t, ..];
        let lg = la.slice(rows).dot(&zlb.slice(s![.., sq * t..(sq + 1) * t]));
        for tq in 0..t {
            let a = sq * t + tq;
            let lrow: Vec<f64> = lg.row(tq).iter().map(|x| root * x).collect();
            softmax_row(&lrow, last_key(spec, a, t), &mut row_w);
            for (tk, w) in row_w.iter().enumerate() {
                attn[[a, sq * t + tk]] = *w;
            }
        }
    }
}

/// The MHSA branch on a state: the increment's state (kernel and NTK transport, from the
/// same logit draws) and the block's attention statistics. `stream` is the block's input
/// stream z (its LN output is `input` in `pre` mode).
pub(crate) fn branch(
    ctx: &Ctx,
    input: &State,
    stream: &State,
    layer: usize,
) -> Result<(State, AttnStats), TheoryError> {
    let (delta, stats, draws, hats, fluct) =
        forward(ctx, &input.k, &stream.k.g, layer, input.ntk.is_some())?;
    let ntk = match &input.ntk {
        Some(bars) => {
            let blk = Block {
                ctx,
                f: &input.k.g,
                qkv: Qkv::of(ctx, &input.k.g),
                draws: &draws,
                hats: &hats,
                scale: logit_scale(ctx.spec)?,
                tokens: input.k.tokens,
            };
            ctx.record(|| Step::Attn {
                lam: Lam::of(&stream.k, &input.k, ctx.spec.ln_eps),
                logits: blk.logits(bars),
            });
            Some(blk.transport(bars, layer))
        }
        None => None,
    };
    // Order 1: the increment as a Gaussian mixture over its random kernel, with its
    // covariance with the stream, so that the residual add carries the stream's 1/n state on.
    let nlo = match (&stream.nlo, fluct) {
        (Some(_), Some(f)) => Some(f.finish(ctx, &delta.g)),
        _ => None,
    };
    let mut out = State::branch(delta, ntk);
    out.nlo = nlo;
    Ok((out, stats))
}

/// Order 1: running sums over the draws for the fluctuation of the increment's random kernel
/// and its covariance with the stream, per pair of probe points (entries αα, αβ, ββ).
///
/// Given the values and the attention of every head, the increment's units are i.i.d.
/// Gaussian with the random kernel Ĝ_Δ = C_U (1/H) Σ_h B̂^h + C_b, where
/// B̂^h = (1/C) Σ_c (Ω^h v_c)(Ω^h v_c)ᵀ has mean P^h = Ω^h V̂ Ω^hᵀ given (Ω^h, F̂) and
/// covariance (P P + P P)/C (Gaussian values). The heads are i.i.d. given F̂, so
///
///   n Cov(Ĝ_Δ) = C_U² [ (n/H)(Cov(P) + E[P P + P P]/C) + n (1 − 1/H) Cov(P¹, P²) ],
///
/// the first term the O(1/H) fluctuation over the heads (O(C) in these units: each head's
/// attention is an O(1) random matrix), the second the 1/n fluctuation of the shared input,
/// estimated from pairs of draws that share F̂ (Cov(P¹, P²) = Var E[P | F̂]). The stream
/// covariance is X = n Cov(Ĝ_z, Ĝ_Δ) = n C_U Cov(Ĝ_z, P), with Ĝ_z drawn jointly with F̂.
pub(crate) struct FluctSums {
    d: usize,
    count: f64,
    p: Vec<[f64; 3]>,
    g: Vec<[f64; 3]>,
    pp: Vec<Block3>,
    gauss: Vec<Block3>,
    gp: Vec<Block3>,
    pairs: f64,
    pair: Vec<Block3>,
    /// P of the first draw of the current pair.
    first: Option<Array2<f64>>,
}

type Block3 = [[f64; 3]; 3];

impl FluctSums {
    fn new(d: usize) -> Self {
        let m = d * (d + 1) / 2;
        FluctSums {
            d,
            count: 0.0,
            p: vec![[0.0; 3]; m],
            g: vec![[0.0; 3]; m],
            pp: vec![[[0.0; 3]; 3]; m],
            gauss: vec![[[0.0; 3]; 3]; m],
            gp: vec![[[0.0; 3]; 3]; m],
            pairs: 0.0,
            pair: vec![[[0.0; 3]; 3]; m],
            first: None,
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, [(usize, usize); 3])> + use<> {
        let d = self.d;
        (0..d)
            .flat_map(move |a| (a..d).map(move |b| (a, b)))
            .enumerate()
            .map(|(k, (a, b))| (k, [(a, a), (a, b), (b, b)]))
    }

    /// Draw `i` (draws 2k and 2k + 1 share F̂) with its P and the stream's Ĝ_z.
    fn add(&mut self, i: usize, p: &Array2<f64>, gz: &Array2<f64>) {
        self.count += 1.0;
        let first = if i.is_multiple_of(2) {
            None
        } else {
            self.first.take()
        };
        for (k, e) in self.pairs() {
            for (x, &(a, b)) in e.iter().enumerate() {
                self.p[k][x] += p[[a, b]];
                self.g[k][x] += gz[[a, b]];
                for (y, &(c, d)) in e.iter().enumerate() {
                    self.pp[k][x][y] += p[[a, b]] * p[[c, d]];
                    self.gauss[k][x][y] += p[[a, c]] * p[[b, d]] + p[[a, d]] * p[[b, c]];
                    self.gp[k][x][y] += gz[[a, b]] * p[[c, d]];
                    if let Some(f) = &first {
                        self.pair[k][x][y] += 0.5 * (f[[a, b]] * p[[c, d]] + p[[a, b]] * f[[c, d]]);
                    }
                }
            }
        }
        if first.is_some() {
            self.pairs += 1.0;
        } else if i.is_multiple_of(2) {
            self.first = Some(p.clone());
        }
    }

    /// The increment's order-1 state (see the type's doc); `k_delta` its kernel.
    fn finish(&self, ctx: &Ctx, k_delta: &Array2<f64>) -> Finite {
        let (spec, c) = (ctx.spec, C::of(ctx));
        let n = spec.width as f64;
        let h = spec.heads.max(1) as f64;
        let ch = (spec.width / spec.heads.max(1)).max(1) as f64;
        let (cnt, np) = (self.count.max(1.0), self.pairs.max(1.0));
        let m = self.p.len();
        let mut cov = vec![[[0.0; 3]; 3]; m];
        let mut cross = vec![[[0.0; 3]; 3]; m];
        for k in 0..m {
            let (ep, eg) = (self.p[k].map(|x| x / cnt), self.g[k].map(|x| x / cnt));
            for x in 0..3 {
                for y in 0..3 {
                    let mean = ep[x] * ep[y];
                    let single = self.pp[k][x][y] / cnt - mean;
                    let values = self.gauss[k][x][y] / cnt / ch;
                    let shared = self.pair[k][x][y] / np - mean;
                    cov[k][x][y] = c.u
                        * c.u
                        * ((n / h) * (single + values)
                            + if self.pairs > 0.0 {
                                n * (1.0 - 1.0 / h) * shared
                            } else {
                                0.0
                            });
                    cross[k][x][y] = n * c.u * (self.gp[k][x][y] / cnt - eg[x] * ep[y]);
                }
            }
        }
        Finite {
            k1: Array2::zeros((self.d, self.d)),
            cov,
            mixture: true,
            cross: Some(cross),
            tok: None,
            // The units are independent with mean zero given the kernel: n E[μμ] = K.
            mean: k_delta.clone(),
        }
    }
}

/// What the NTK transport of one block reads: the input kernel F, the Q/K/V kernels, the
/// forward pass's draws and the logit scale.
struct Block<'a> {
    ctx: &'a Ctx<'a>,
    f: &'a Array2<f64>,
    qkv: Qkv,
    draws: &'a Draws,
    /// Order 1: the draws' Q̂, K̂ (empty otherwise).
    hats: &'a Hats,
    scale: f64,
    /// Tokens per sequence.
    tokens: usize,
}

impl Block<'_> {
    /// Every carried Θ̄ through the value and logit paths, then the block's own groups.
    fn transport(&self, bars: &[Carried], layer: usize) -> Vec<Carried> {
        let (spec, c) = (self.ctx.spec, C::of(self.ctx));
        let (f, qk, scale) = (self.f, &self.qkv.q, self.scale);
        let n = spec.width as f64;
        let d = f.nrows();
        const FIXED: usize = 4;
        let mut xs = vec![
            f.clone(),
            self.qkv.k.clone(),
            self.qkv.v.clone(),
            Array2::ones((d, d)),
        ];
        xs.extend(bars.iter().map(|th| th.theta.clone()));
        let (axa, sx) = if self.hats.is_empty() {
            attention_moments(self.draws, &self.qkv.v, &xs)
        } else {
            (Vec::new(), Vec::new())
        };
        // Order 1 (finite n and C): every kernel per draw, correlated with its attention.
        let fin =
            (!self.hats.is_empty()).then(|| finite_moments(self.ctx, self.draws, self.hats, bars));
        let (axa, s_k) = match &fin {
            Some(m) => (&m.axa, &m.s_k),
            None => (&axa, &sx[1]),
        };
        // E[ΩFΩᵀ], E[ΩVΩᵀ], E[Ω1Ωᵀ].
        let (afa, ava, a1a) = (&axa[0], &axa[2], &axa[3]);
        // Q ⊙ E[S_X] at infinite width, E[Q̂ ⊙ S_X] at finite width.
        let q_s = |k: usize| match &fin {
            Some(m) => m.q_s[k].clone(),
            None => qk * &sx[k],
        };
        // F ⊙ E[S_K], or E[F̂ ⊙ S_K̂].
        let f_s_k = match &fin {
            Some(m) => m.f_s_k.clone(),
            None => f * s_k,
        };
        let mut out: Vec<Carried> = bars
            .iter()
            .enumerate()
            .map(|(k, th)| {
                let mut v = axa[k + FIXED].clone() * (c.u * c.v);
                v.scaled_add(c.u * c.q * scale, &(&th.theta * s_k));
                v.scaled_add(c.u * c.k * scale, &q_s(k + FIXED));
                th.with(v)
            })
            .collect();
        let mut raw = vec![
            (Group::Q, f_s_k.mapv(|x| n * c.u * scale * x)),
            (Group::K, q_s(0).mapv(|x| n * c.u * scale * x)),
            (Group::V, afa.mapv(|x| n * c.u * x)),
            (Group::U, ava.mapv(|x| n * x)),
        ];
        if self.ctx.hyper.attention.bias.is_some() {
            // b_U: 1; b_V: C_U E[Ω1Ωᵀ]; b_Q: C_U E[S_K]; b_K: 0.
            let mut bias = a1a.mapv(|x| c.u * x + 1.0);
            bias.scaled_add(c.u * scale, s_k);
            raw.push((Group::Bias, bias));
        }
        out.extend(
            raw.into_iter()
                .map(|(g, r)| Carried::new(layer, What::Group(g), r)),
        );
        out
    }

    /// What the tied head's contact reads of this block ([`super::contact`]): its draws, its
    /// value kernel and the logit-gradient kernel of every carried Θ̄ and of its own Q, K, b_Q
    /// (indexed as in the carried list the transport returns).
    fn logits(&self, bars: &[Carried]) -> Logits {
        let (spec, c) = (self.ctx.spec, C::of(self.ctx));
        let (f, qk, kk, scale) = (self.f, &self.qkv.q, &self.qkv.k, self.scale);
        let carried: Vec<_> = bars.iter().map(|th| (&th.theta, &th.theta)).collect();
        let terms = contact::terms(
            &carried,
            (c.q, c.k, scale, spec.width as f64),
            (f, qk),
            (f, kk),
            self.ctx.hyper.attention.bias.is_some(),
        );
        Logits::new(
            (spec.heads, c.u, c.v),
            &self.qkv.v,
            self.draws,
            terms,
            (self.tokens, self.tokens),
        )
    }
}

/// E[Ω X Ωᵀ] and E[S_X] for every X in `xs`, over the attention draws (see the module doc).
///
/// With a = row δ1 of Ω and b = row δ2, J_δ = diag(a) − a aᵀ (zero on masked keys), and
/// S_X(δ1,δ2) = Σ (J_δ1ᵀ F J_δ2)_{pq} X_pq expands into
/// a(F⊙X)bᵀ − aX(b ⊙ Fa) − (a ⊙ Fb)Xbᵀ + (aFbᵀ)(aXbᵀ), i.e. over all pairs at once
/// Ω(F⊙X)Ωᵀ − M − Mᵀ + (ΩFΩᵀ) ⊙ (ΩXΩᵀ) with M = ((ΩX) ⊙ (ΩF)) Ωᵀ.
fn attention_moments(
    draws: &[(f64, Array2<f64>)],
    f: &Array2<f64>,
    xs: &[Array2<f64>],
) -> (Vec<Array2<f64>>, Vec<Array2<f64>>) {
    let d = f.nrows();
    let mut axa = vec![Array2::<f64>::zeros((d, d)); xs.len()];
    let mut sx = vec![Array2::<f64>::zeros((d, d)); xs.len()];
    let fx: Vec<Array2<f64>> = xs.iter().map(|x| f * x).collect();
    for (w, a) in draws {
        let af = a.dot(f);
        let afa = af.dot(&a.t());
        for (k, x) in xs.iter().enumerate() {
            let ax = a.dot(x);
            let axat = ax.dot(&a.t());
            let m = (&ax * &af).dot(&a.t());
            let mut s = a.dot(&fx[k]).dot(&a.t());
            s -= &m;
            s -= &m.t();
            s += &(&afa * &axat);
            axa[k].scaled_add(*w, &axat);
            sx[k].scaled_add(*w, &s);
        }
    }
    (axa, sx)
}

/// Order 1 (finite n and C): the transport's expectations with every kernel taken per draw
/// ([`Hat`]): the value kernel V̂ = C_V F̂ + C_b, the key kernel K̂ in S_K and the query
/// kernel Q̂ multiplying S_X are the draw's own, and so is F̂ wherever F enters.
struct FiniteMoments {
    /// E[Ω X Ωᵀ] for X = F̂, (unused), V̂, 1, then every carried Θ̄.
    axa: Vec<Array2<f64>>,
    /// E[S_K̂].
    s_k: Array2<f64>,
    /// E[F̂ ⊙ S_K̂] (raw_Q).
    f_s_k: Array2<f64>,
    /// E[Q̂ ⊙ S_X] for X = F̂, (unused), V̂, 1, then every carried Θ̄.
    q_s: Vec<Array2<f64>>,
}

fn finite_moments(ctx: &Ctx, draws: &Draws, hats: &[Hat], bars: &[Carried]) -> FiniteMoments {
    let c = C::of(ctx);
    let d = hats.first().map_or(0, |h| h.f.nrows());
    let m = 4 + bars.len();
    let mut out = FiniteMoments {
        axa: vec![Array2::zeros((d, d)); m],
        s_k: Array2::zeros((d, d)),
        f_s_k: Array2::zeros((d, d)),
        q_s: vec![Array2::zeros((d, d)); m],
    };
    for ((w, a), hat) in draws.iter().zip(hats) {
        let one = [(*w, a.clone())];
        let v = hat.f.mapv(|f| c.v * f + c.bias);
        let mut xs = vec![
            hat.f.clone(),
            hat.k.clone(),
            v.clone(),
            Array2::ones((d, d)),
        ];
        xs.extend(bars.iter().map(|th| th.theta.clone()));
        let (axa, sx) = attention_moments(&one, &v, &xs);
        out.s_k += &sx[1];
        out.f_s_k += &(&hat.f * &sx[1]);
        for (k, (ax, s)) in axa.iter().zip(&sx).enumerate() {
            out.axa[k] += ax;
            out.q_s[k] += &(&hat.q * s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S_X from its definition, the six-index sum over (t1', u1', t2', u2') with the softmax
    /// Jacobian J_{δ;t'u'} = Ω_{δt'}(δ_{t'u'} − Ω_{δu'}), against the matrix form.
    #[test]
    fn logit_path_contraction_matches_the_index_sum() {
        let d = 5;
        let sym = |seed: f64| {
            let b = Array2::from_shape_fn((d, d), |(i, j)| ((i * 7 + j * 3) as f64 * seed).sin());
            b.dot(&b.t())
        };
        let (f, x) = (sym(0.37), sym(1.13));
        // Two "sequences" (rows 0-2 and 3-4), softmax-like rows that sum to 1 within each.
        let mut a = Array2::<f64>::zeros((d, d));
        for q in 0..d {
            let keys: Vec<usize> = if q < 3 {
                (0..3).collect()
            } else {
                (3..5).collect()
            };
            let w: Vec<f64> = keys
                .iter()
                .map(|&k| 1.0 + ((q * 5 + k) as f64).cos().abs())
                .collect();
            let z: f64 = w.iter().sum();
            for (k, wk) in keys.iter().zip(&w) {
                a[[q, *k]] = wk / z;
            }
        }
        let jac =
            |q: usize, t: usize, u: usize| a[[q, t]] * (f64::from(u8::from(t == u)) - a[[q, u]]);
        let (axa, sx) = attention_moments(&[(1.0, a.clone())], &f, std::slice::from_ref(&x));
        for q1 in 0..d {
            for q2 in 0..d {
                let mut want = 0.0;
                for t1 in 0..d {
                    for u1 in 0..d {
                        for t2 in 0..d {
                            for u2 in 0..d {
                                want +=
                                    f[[t1, t2]] * jac(q1, t1, u1) * jac(q2, t2, u2) * x[[u1, u2]];
                            }
                        }
                    }
                }
                assert!((sx[0][[q1, q2]] - want).abs() < 1e-12, "S[{q1},{q2}]");
                let v: f64 = (0..d)
                    .flat_map(|t1| (0..d).map(move |t2| (t1, t2)))
                    .map(|(t1, t2)| a[[q1, t1]] * x[[t1, t2]] * a[[q2, t2]])
                    .sum();
                assert!((axa[0][[q1, q2]] - v).abs() < 1e-12);
            }
        }
    }
}
