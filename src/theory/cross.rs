//! The encoder–decoder cross-attention branch at infinite width (the paper's §II 2 B,
//! (2.2)–(2.4), and footnote 47): its kernel map and its NTK transport, side by side, the
//! theory of `model/cross.rs`.
//!
//! Queries come from the decoder's LN signal s (q = Q s, (2.2)), keys and values from the
//! encoder's final-LN output s̃ (k = K s̃, v = V s̃, (2.3)–(2.4)), the block's *memory*
//! ([`Memory`]). Footnote 47: the analysis of (1.61)–(1.65) stays intact, with the inner
//! products s·s replaced by s̃·s̃ where keys and values meet. So, with F the decoder's LN
//! kernel (D_dec × D_dec) and F̃ the memory's (D_enc × D_enc):
//!
//! - Logits (A3 with footnote 47): jointly Gaussian, zero mean, independent across heads,
//!   Cov[Ω̃_{δ1 u1}, Ω̃_{δ2 u2}] = C^{1−2a} (C_Q F + C_b)_{δ1δ2} (C_K F̃ + C_b)_{u1u2}, a
//!   D_dec × D_enc field (queries δ, keys u) sampled exactly as √(C^{1−2a}) L_A Z L_Bᵀ with
//!   a rectangular Z, keeping the entries whose query and key are in the same sequence; the
//!   softmax runs over that sequence's unpadded encoder tokens (the probe's `keep`).
//! - Kernel increment (1.64) with footnote 47: ΔG = C_U Σ_{u1,u2} E[Ω_{δ1u1} Ω_{δ2u2}]
//!   (C_V F̃ + C_b)_{u1u2} + C_b, the expectation a sample mean over the logit draws (its
//!   error reported by the error batches, as for self-attention).
//! - NTK, (1.151)–(1.163) with footnote 47: the value path carries the memory's Θ̃ (the NTK of
//!   s̃ of each carried kernel), C_U C_V E[Ω Θ̃ Ωᵀ]; the logit path has a query part
//!   C_U C_Q (Θ̄ ⊙ E[S_K̃]) with the decoder's carried Θ̄ and a key part C_U C_K (Q ⊙ E[S_Θ̃])
//!   with the memory's, where S_X(δ1, δ2) = Σ V_{u1u2} J_{δ1;u1w1} J_{δ2;u2w2} X_{w1w2} over
//!   encoder tokens (V = C_V F̃ + C_b the value kernel, J the softmax Jacobian). The block's
//!   own groups: raw_Q = n C_U F ⊙ E[S_K̃], raw_K = n C_U Q ⊙ E[S_F̃], raw_V = n C_U E[Ω F̃ Ωᵀ],
//!   raw_U = n E[Ω V Ωᵀ] (all × the logit scale on the logit path), and with biases
//!   b_U 1, b_V C_U E[Ω1Ωᵀ], b_Q C_U E[S_K̃], b_K 0, exactly as self-attention's.
//!
//! This is how the encoder's parameters reach the output: every carried kernel injected in
//! the encoder is transported to s̃ (its Θ̃) and enters the decoder through K and V of every
//! cross-attention block; `grad2` at an encoder layer is the identity injected there and
//! carried the same way.
//!
//! Which cross terms vanish at leading order (the decoder × encoder cross-kernel):
//! - Forward: none is needed. The decoder's stream and the memory share the word embedding
//!   (both stems multiply it), so E[z_dec·z_enc]/n = C_WE [id = id'] ≠ 0 at the stems, and
//!   every branch adds a fresh zero-mean U or X, so it stays that (times the LNs' factors).
//!   But no block multiplies a decoder vector and an encoder vector by the *same* weight:
//!   cross-attention's Q reads only s and K, V only s̃, so the logit and value statistics
//!   involve F and F̃ separately, never F_{dec×enc}.
//! - Backward: the gradient reaching the encoder runs through K or V of a cross block, the
//!   decoder's through its skip path, Q, or the other blocks. The products of the two
//!   contain an odd power of a fresh U, V, Q or K (value path against the skip or query
//!   path), or, key path against query path, Σ_i (Kᵀq)_i (Qᵀk)_i = O(1/n) relative. So the
//!   shared embedding's enc × dec cross term in Θ_WE vanishes at leading order, and Θ_WE is
//!   the sum of its encoder-stem and decoder-stem uses, plus a tied head's use (its cross
//!   terms with the stem uses are O(ε), [`super::head`]).
//! - As for self-attention, the query–key cross term of the logit gradient,
//!   E[(dq·k)(q'·dk')], is dropped (the paper's (1.161)–(1.163) have none).

use ndarray::{Array2, s};
use rand::Rng;
use rand_distr::StandardNormal;

use super::TheoryError;
use super::attention::{AttnStats, THEORY_DOMAIN, logit_scale};
use super::contact::{self, Logits, Step};
use super::linalg::cholesky_psd;
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::model::{Group, init};

/// What every cross-attention block reads of the encoder: the memory s̃'s kernel F̃
/// (D_enc × D_enc), the NTK of s̃ of every kernel carried at the end of the encoder (in the
/// order of the decoder's carried list, which starts with them), and the padding mask.
#[derive(Clone, Debug)]
pub struct Memory {
    pub f: KernelState,
    /// Θ̃ per carried kernel: `bars[k]` is the memory's NTK of the decoder's carried entry k;
    /// entries injected in the decoder (k ≥ bars.len()) do not reach s̃ (zero).
    pub bars: Vec<Array2<f64>>,
    /// Encoder tokens cross-attention may attend to (`None`: all).
    pub keep: Option<Vec<bool>>,
}

/// The block's effective constants (the self-attention's tensors: `model/cross.rs` draws Q,
/// K, V, U with the same hyperparameters and groups).
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

/// One block's cross-attention matrices Ω (D_dec × D_enc, zero across sequences and on
/// padded keys), one per logit draw, with its weight in the average.
type CrossDraws = Vec<(f64, Array2<f64>)>;

/// A softmax over all of `logits` (the caller passes only the visible keys).
fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// The encoder tokens query `a` sees: its sequence's, minus the padded ones.
fn visible(mem: &Memory, a: usize, t_dec: usize) -> Vec<usize> {
    let t_enc = mem.f.tokens;
    let seq = a / t_dec;
    (seq * t_enc..(seq + 1) * t_enc)
        .filter(|&u| mem.keep.as_ref().is_none_or(|k| k[u]))
        .collect()
}

/// The cross-attention branch on the decoder's state `input` (its LN output in `pre` mode)
/// and the memory: the increment's state and the block's attention statistics. `layer` is
/// the layer the block produces (it seeds the block's logit stream).
pub(crate) fn branch(
    ctx: &Ctx,
    input: &State,
    mem: &Memory,
    layer: usize,
) -> Result<(State, AttnStats), TheoryError> {
    let (spec, c) = (ctx.spec, C::of(ctx));
    let f = &input.k;
    let (d, t_dec) = (f.len(), f.tokens);
    let (de, t_enc) = (mem.f.len(), mem.f.tokens);
    if f.sequences != mem.f.sequences {
        return Err(TheoryError::Unsupported(format!(
            "cross-attention needs as many decoder sequences as encoder sequences ({} vs {})",
            f.sequences, mem.f.sequences
        )));
    }
    let scale = logit_scale(spec)?;
    let qk = f.g.mapv(|x| c.q * x + c.bias);
    let kk = mem.f.g.mapv(|x| c.k * x + c.bias);
    let vk = mem.f.g.mapv(|x| c.v * x + c.bias);
    let logit_var = Array2::from_shape_fn((d, t_enc), |(a, tk)| {
        let key = (a / t_dec) * t_enc + tk;
        scale * qk[[a, a]] * kk[[key, key]]
    });
    let sampled = logit_var.iter().any(|&v| v > 0.0);
    let vis: Vec<Vec<usize>> = (0..d).map(|a| visible(mem, a, t_dec)).collect();
    if let Some(a) = vis.iter().position(Vec::is_empty) {
        return Err(TheoryError::Unsupported(format!(
            "decoder token {a} has no unpadded encoder token to attend to"
        )));
    }
    let mut draws: CrossDraws = Vec::new();
    let mut e_pp = Array2::<f64>::zeros((d, d));
    let mut entropy = vec![0.0; d];
    let mut max = vec![0.0; d];
    let mut add = |attn: &Array2<f64>, w: f64| {
        e_pp.scaled_add(w, &attn.dot(&vk).dot(&attn.t()));
        for a in 0..d {
            let row = attn.row(a);
            let h: f64 = -row
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p * p.ln())
                .sum::<f64>();
            entropy[a] += w * h;
            max[a] += w * row.iter().fold(0.0f64, |m, &p| m.max(p));
        }
    };
    if !sampled {
        // Zero logit variance: exactly uniform over each query's visible keys.
        let mut attn = Array2::<f64>::zeros((d, de));
        for (a, keys) in vis.iter().enumerate() {
            for &u in keys {
                attn[[a, u]] = 1.0 / keys.len() as f64;
            }
        }
        add(&attn, 1.0);
        draws.push((1.0, attn));
    } else {
        let la = cholesky_psd(&qk);
        let lb = cholesky_psd(&kk);
        let root = scale.sqrt();
        let sampler = ctx.sampler;
        let mut rng = init::stream(
            sampler.seed ^ THEORY_DOMAIN,
            (layer as u64) << 32 | sampler.batch,
        );
        let weight = 1.0 / sampler.samples as f64;
        for _ in 0..sampler.samples {
            let z = Array2::from_shape_simple_fn((d, de), || rng.sample::<f64, _>(StandardNormal));
            let mut attn = Array2::<f64>::zeros((d, de));
            for sq in 0..f.sequences {
                let (rows, cols) = (sq * t_dec..(sq + 1) * t_dec, sq * t_enc..(sq + 1) * t_enc);
                // Cov[(L_A Z L_Bᵀ)_{ab}, (L_A Z L_Bᵀ)_{cd}] = A_ac B_bd, restricted to the block.
                let lg = la
                    .slice(s![rows.clone(), ..])
                    .dot(&z)
                    .dot(&lb.slice(s![cols.clone(), ..]).t());
                for (r, a) in rows.enumerate() {
                    let keys: Vec<usize> = vis[a].iter().map(|u| u - cols.start).collect();
                    let logits: Vec<f64> = keys.iter().map(|&k| root * lg[[r, k]]).collect();
                    let w = softmax(&logits);
                    for (&k, p) in keys.iter().zip(w) {
                        attn[[a, cols.start + k]] = p;
                    }
                }
            }
            add(&attn, weight);
            draws.push((weight, attn));
        }
    }
    let delta = f.with(e_pp.mapv(|x| c.u * x + c.bias));
    let stats = AttnStats {
        logit_var,
        entropy,
        max,
        sampled,
    };
    let ntk = input.ntk.as_ref().map(|bars| {
        let x = Inputs {
            f: &f.g,
            mem,
            qk: &qk,
            kk: &kk,
            vk: &vk,
            draws: &draws,
            scale,
        };
        ctx.record(|| Step::Cross {
            logits: logits(ctx, &x, bars, (t_dec, t_enc)),
        });
        transport(ctx, &x, bars, layer)
    });
    Ok((State::branch(delta, ntk), stats))
}

/// What the transport reads: the decoder's F, the memory, the query/key/value kernels, the
/// forward pass's draws and the logit scale.
struct Inputs<'a> {
    f: &'a Array2<f64>,
    mem: &'a Memory,
    qk: &'a Array2<f64>,
    kk: &'a Array2<f64>,
    vk: &'a Array2<f64>,
    draws: &'a CrossDraws,
    scale: f64,
}

/// Every carried kernel through the value and logit paths, then the block's own groups
/// (module doc).
fn transport(ctx: &Ctx, x: &Inputs, bars: &[Carried], layer: usize) -> Vec<Carried> {
    let (spec, c) = (ctx.spec, C::of(ctx));
    let n = spec.width as f64;
    let de = x.mem.f.len();
    let zero = Array2::<f64>::zeros((de, de));
    // Over encoder tokens: F̃, K̃, V, 1, then every carried kernel's Θ̃.
    const FIXED: usize = 4;
    let mut xs = vec![
        x.mem.f.g.clone(),
        x.kk.clone(),
        x.vk.clone(),
        Array2::ones((de, de)),
    ];
    xs.extend((0..bars.len()).map(|k| x.mem.bars.get(k).unwrap_or(&zero).clone()));
    let (axa, sx) = cross_moments(x.draws, x.vk, &xs);
    let (afa, ava, a1a) = (&axa[0], &axa[2], &axa[3]);
    let (s_f, s_k) = (&sx[0], &sx[1]);
    let mut out: Vec<Carried> = bars
        .iter()
        .enumerate()
        .map(|(k, th)| {
            // Value path with the memory's Θ̃; query part with the decoder's Θ̄; key part with
            // the memory's Θ̃ through S.
            let mut v = axa[k + FIXED].clone() * (c.u * c.v);
            v.scaled_add(c.u * c.q * x.scale, &(&th.theta * s_k));
            v.scaled_add(c.u * c.k * x.scale, &(x.qk * &sx[k + FIXED]));
            th.with(v)
        })
        .collect();
    let mut raw = vec![
        (Group::Q, (x.f * s_k).mapv(|v| n * c.u * x.scale * v)),
        (Group::K, (x.qk * s_f).mapv(|v| n * c.u * x.scale * v)),
        (Group::V, afa.mapv(|v| n * c.u * v)),
        (Group::U, ava.mapv(|v| n * v)),
    ];
    if ctx.hyper.attention.bias.is_some() {
        // b_U: 1; b_V: C_U E[Ω1Ωᵀ]; b_Q: C_U E[S_K̃]; b_K: 0 (a shift shared by a query's keys).
        let mut bias = a1a.mapv(|v| c.u * v + 1.0);
        bias.scaled_add(c.u * x.scale, s_k);
        raw.push((Group::Bias, bias));
    }
    out.extend(
        raw.into_iter()
            .map(|(g, r)| Carried::new(layer, What::Group(g), r)),
    );
    out
}

/// What the tied head's contact reads of this block ([`super::contact`]): its draws, the
/// memory's value kernel, and the logit-gradient kernel of every carried kernel (the
/// decoder's Θ̄ on the query side, the memory's Θ̃ on the key side) and of its own Q, K, b_Q
/// (indexed as in the carried list [`transport`] returns).
fn logits(ctx: &Ctx, x: &Inputs, bars: &[Carried], (tq, tk): (usize, usize)) -> Logits {
    let (spec, c) = (ctx.spec, C::of(ctx));
    let de = x.mem.f.len();
    let zero = Array2::<f64>::zeros((de, de));
    let carried: Vec<_> = bars
        .iter()
        .enumerate()
        .map(|(i, th)| (&th.theta, x.mem.bars.get(i).unwrap_or(&zero)))
        .collect();
    let terms = contact::terms(
        &carried,
        (c.q, c.k, x.scale, spec.width as f64),
        (x.f, x.qk),
        (&x.mem.f.g, x.kk),
        ctx.hyper.attention.bias.is_some(),
    );
    Logits::new((spec.heads, c.u, c.v), x.vk, x.draws, terms, (tq, tk))
}

/// E[Ω X Ωᵀ] (D_dec × D_dec) and E[S_X] for every X (D_enc × D_enc) in `xs`, over the draws,
/// with V the value kernel: the rectangular form of self-attention's contraction,
/// S_X = Ω(V⊙X)Ωᵀ − M − Mᵀ + (ΩVΩᵀ) ⊙ (ΩXΩᵀ), M = ((ΩX) ⊙ (ΩV)) Ωᵀ
/// (J_δ = diag(ω_δ) − ω_δ ω_δᵀ over the encoder tokens).
fn cross_moments(
    draws: &[(f64, Array2<f64>)],
    v: &Array2<f64>,
    xs: &[Array2<f64>],
) -> (Vec<Array2<f64>>, Vec<Array2<f64>>) {
    let d = draws.first().map_or(0, |(_, a)| a.nrows());
    let mut axa = vec![Array2::<f64>::zeros((d, d)); xs.len()];
    let mut sx = vec![Array2::<f64>::zeros((d, d)); xs.len()];
    let vx: Vec<Array2<f64>> = xs.iter().map(|x| v * x).collect();
    for (w, a) in draws {
        let av = a.dot(v);
        let ava = av.dot(&a.t());
        for (k, x) in xs.iter().enumerate() {
            let ax = a.dot(x);
            let axat = ax.dot(&a.t());
            let m = (&ax * &av).dot(&a.t());
            let mut s = a.dot(&vx[k]).dot(&a.t());
            s -= &m;
            s -= &m.t();
            s += &(&ava * &axat);
            axa[k].scaled_add(*w, &axat);
            sx[k].scaled_add(*w, &s);
        }
    }
    (axa, sx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rectangular S_X against its six-index definition with the softmax Jacobian over
    /// the encoder tokens, for a 3-query × 4-key Ω.
    #[test]
    fn rectangular_contraction_matches_the_index_sum() {
        let (d, de) = (3, 4);
        let sym = |seed: f64| {
            let b = Array2::from_shape_fn((de, de), |(i, j)| ((i * 7 + j * 3) as f64 * seed).sin());
            b.dot(&b.t())
        };
        let (v, x) = (sym(0.37), sym(1.13));
        let mut a = Array2::<f64>::zeros((d, de));
        for q in 0..d {
            let w: Vec<f64> = (0..de)
                .map(|k| 1.0 + ((q * 5 + k) as f64).cos().abs())
                .collect();
            let z: f64 = w.iter().sum();
            for k in 0..de {
                a[[q, k]] = w[k] / z;
            }
        }
        let jac =
            |q: usize, t: usize, u: usize| a[[q, t]] * (f64::from(u8::from(t == u)) - a[[q, u]]);
        let (axa, sx) = cross_moments(&[(1.0, a.clone())], &v, std::slice::from_ref(&x));
        for q1 in 0..d {
            for q2 in 0..d {
                let mut want = 0.0;
                let mut want_axa = 0.0;
                for t1 in 0..de {
                    for t2 in 0..de {
                        want_axa += a[[q1, t1]] * x[[t1, t2]] * a[[q2, t2]];
                        for u1 in 0..de {
                            for u2 in 0..de {
                                want +=
                                    v[[t1, t2]] * jac(q1, t1, u1) * jac(q2, t2, u2) * x[[u1, u2]];
                            }
                        }
                    }
                }
                assert!((sx[0][[q1, q2]] - want).abs() < 1e-12, "S[{q1},{q2}]");
                assert!((axa[0][[q1, q2]] - want_axa).abs() < 1e-12);
            }
        }
    }
}

#[cfg(test)]
mod reduces {
    use super::*;
    use crate::config::Config;
    use crate::theory::attention::{self, LogitSampler};
    use crate::theory::{ln, stem};

    /// A cross-attention block whose memory is its own input (F̃ = F, Θ̃ = Θ̄, no padding) is
    /// bidirectional self-attention: the same logit law, draw for draw (same stream), so the
    /// increment, the statistics, every carried kernel (query part + key part = the logit
    /// path) and the block's raw Q, K, V, U agree to rounding.
    #[test]
    fn memory_equal_to_the_input_is_self_attention() {
        let mut cfg = Config::preset("paper-vit").unwrap();
        cfg.model.causal = false;
        cfg.model.width = 64;
        let spec = &cfg.model;
        let sampler = LogitSampler {
            samples: 64,
            seed: 7,
            batch: 0,
        };
        let ctx = Ctx::new(spec, sampler, true).unwrap();
        let (s, t) = (2, 3);
        let d = s * t;
        let g0 = KernelState::new(
            Array2::from_shape_fn((d, d), |(a, b)| {
                if a == b {
                    1.0
                } else {
                    0.3 + 0.1 * ((a + b) % 3) as f64
                }
            }),
            s,
            t,
        );
        let z = stem::forward(&ctx, &g0);
        let input = ln::forward(&ctx, &z, false);
        let mem = Memory {
            f: input.k.clone(),
            bars: input
                .ntk
                .iter()
                .flatten()
                .map(|c| c.theta.clone())
                .collect(),
            keep: None,
        };
        let layer = 2;
        let (cross, cs) = branch(&ctx, &input, &mem, layer).unwrap();
        let (selfa, ss) = attention::branch(&ctx, &input, &z, layer).unwrap();
        let close = |a: &Array2<f64>, b: &Array2<f64>, what: &str| {
            let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
            let err = (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                err <= 1e-12 * scale,
                "{what}: max |Δ| = {err:e} of {scale:e}"
            );
        };
        close(&cross.k.g, &selfa.k.g, "kernel increment");
        close(&cs.logit_var, &ss.logit_var, "logit_var");
        for (a, b) in cs.entropy.iter().zip(&ss.entropy) {
            assert!((a - b).abs() < 1e-12);
        }
        let (cn, sn) = (cross.ntk.unwrap(), selfa.ntk.unwrap());
        assert_eq!(cn.len(), sn.len());
        assert!(cn.len() > mem.bars.len() + 3, "carried + Q, K, V, U");
        for (a, b) in cn.iter().zip(&sn) {
            assert_eq!((a.layer, a.what), (b.layer, b.what));
            close(
                &a.theta,
                &b.theta,
                &format!("{:?} of layer {}", a.what, a.layer),
            );
        }
    }
}
