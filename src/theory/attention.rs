//! The MHSA branch at infinite width: the kernel map (1.61)–(1.65) by sampling the Gaussian
//! logit field, and the attention moments of the NTK transport (1.151)–(1.163).

use ndarray::{Array2, s};
use rand::Rng;
use rand_distr::StandardNormal;

use super::TheoryError;
use super::linalg::cholesky_psd;
use super::state::{Consts, KernelState};
use crate::config::ModelSpec;
use crate::model::init;

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

/// E[Ω X Ωᵀ] and E[S_X] for every X in `xs`, over the attention draws (see the module doc).
///
/// With a = row δ1 of Ω and b = row δ2, J_δ = diag(a) − a aᵀ (zero on masked keys), and
/// S_X(δ1,δ2) = Σ (J_δ1ᵀ F J_δ2)_{pq} X_pq expands into
/// a(F⊙X)bᵀ − aX(b ⊙ Fa) − (a ⊙ Fb)Xbᵀ + (aFbᵀ)(aXbᵀ), i.e. over all pairs at once
/// Ω(F⊙X)Ωᵀ − M − Mᵀ + (ΩFΩᵀ) ⊙ (ΩXΩᵀ) with M = ((ΩX) ⊙ (ΩF)) Ωᵀ.
pub(crate) fn attention_moments(
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

/// E[γ_aᵀ X γ_a] per probe point a for every X in `xs`, over the attention draws, with
/// β_a = V ω_a (V the value kernel, ω_a = row a of Ω) and γ_a = J_a β_a = ω_a ⊙ (β_a − ω_a·β_a).
///
/// Σ_{t'} ∂Ω_{at'}/∂θ β_{a;t'} is the part of ∂z_a/∂θ · (U V Ω s)_a that is coherent over the
/// n channels ((U a)·(U b) → C_U a·b): with X the logit-gradient covariance
/// Σ_θ ∂logit_{au'} ∂logit_{au''}, Σ_θ (Σ_{t'} ∂Ω_{at'}/∂θ β_{a;t'})² = γ_aᵀ X γ_a.
pub(crate) fn tied_logit_contact(
    draws: &[(f64, Array2<f64>)],
    vk: &Array2<f64>,
    xs: &[Array2<f64>],
) -> Vec<Vec<f64>> {
    let d = vk.nrows();
    let mut out = vec![vec![0.0; d]; xs.len()];
    for (w, a) in draws {
        // Row a of A V is β_aᵀ (V symmetric).
        let beta = a.dot(vk);
        let mut gamma = Array2::<f64>::zeros((d, d));
        for r in 0..d {
            let wb: f64 = (0..d).map(|u| a[[r, u]] * beta[[r, u]]).sum();
            for u in 0..d {
                gamma[[r, u]] = a[[r, u]] * (beta[[r, u]] - wb);
            }
        }
        for (x, o) in xs.iter().zip(out.iter_mut()) {
            let gx = gamma.dot(x);
            for (r, v) in o.iter_mut().enumerate() {
                *v += w * (0..d).map(|u| gx[[r, u]] * gamma[[r, u]]).sum::<f64>();
            }
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
