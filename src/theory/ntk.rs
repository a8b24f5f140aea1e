//! The backward side at infinite width: the per-group NTK recursion (1.98) with the LN factor
//! (1.139), block by block, and the gradient sizes `grad2` (SPEC §2, notes §2).
//!
//! Every block map is affine in Θ: Θ^{ℓ+1} = T^{ℓ+1}[Θ^ℓ] + additive^{ℓ+1}, and the transport
//! T uses only forward quantities (G, F, the attention draws, ⟨σ'σ'⟩). So each parameter group
//! is carried on its own (notes §2.8): its **raw** squared-gradient kernel (no learning-rate
//! factor; SPEC's Θ_g = the paper's additive term / λ_g, so it grows like the fan-in) is
//! injected at the layer its block produces and transported to the output. `grad2` at layer ℓ
//! is the transport of the identity kernel injected at z^ℓ (a fictitious bias on every
//! component of every probe point). With the trace-mode cotangent f = n_out^{-1/2} Σ u z^L,
//! both summaries are the mean of the diagonal of the transported kernel over the outputs.
//!
//! Transport maps (leading order; the skip–branch cross terms vanish, (1.159), (1.172)):
//! - LN before a branch, (1.139): Θ̄_12 = Θ_12 / (sqrt(G_11 + ε) sqrt(G_22 + ε));
//! - MLP, (1.173): C_X C_W ⟨σ'σ'⟩_{C_W F} ⊙ Θ̄; additive raw_X = Mn⟨σσ⟩, raw_W = n C_X⟨σ'σ'⟩ ⊙ F
//!   (1.168)–(1.169);
//! - MHSA, (1.161)–(1.163) as reconstructed in the notes §2.5: value path C_U C_V E[Ω Θ̄ Ωᵀ],
//!   logit path C_U C_V C_Q C_K (Θ̄ ⊙ E[S_F] + F ⊙ E[S_Θ̄]) with
//!   S_X(δ1, δ2) = Σ F_{t1't2'} J_{δ1;t1'u1'} J_{δ2;t2'u2'} X_{u1'u2'} and the softmax Jacobian
//!   J_{δ;t'u'} = Ω_{δt'}(δ_{t'u'} − Ω_{δu'}); additive raw_U = n C_V E[ΩFΩᵀ],
//!   raw_V = n C_U E[ΩFΩᵀ], raw_Q = n C_U C_V C_K F ⊙ E[S_F], raw_K = n C_U C_V C_Q F ⊙ E[S_F]
//!   (1.151)–(1.154). The expectations reuse the forward pass's logit draws;
//! - residual add: ξ² Θ + γ² (branch); post-LN divides by the LN factor of the sum;
//! - head (1.182): C_head n^{-s} Θ̄ (pre) or C_head n^{-s} Θ; raw_head = n F (1.179); pooled
//!   heads average over the tokens of each sequence (by linearity, as (1.81));
//! - stem (1.122)–(1.123): raw_stem = n_in G⁰ (dense) or G⁰ (embedding), raw_pe = δ_{t1t2};
//! - `mlp` mode, the book's frozen NTK (PDLT §8): Θ' = C_W ⟨σ'σ'⟩_K ⊙ Θ, raw_W = n⟨σσ⟩_K,
//!   raw_b = 1.
//!
//! Biases (C_b > 0), derived here beyond the paper by the same rules: the branch kernels gain
//! C_b (hidden C_W F + C_b; values V = C_V F + C_b, keys K = C_K F + C_b, queries
//! Q = C_Q F + C_b), and S takes the value kernel V in place of C_V F:
//! S_X(δ1, δ2) = Σ V_{t1't2'} J_{δ1;t1'u1'} J_{δ2;t2'u2'} X_{u1'u2'}. Then
//! raw_Q = n C_U F ⊙ E[S_K], raw_K = n C_U Q ⊙ E[S_F], raw_U = n E[ΩVΩᵀ], logit-path
//! transport C_U C_Q (Θ̄ ⊙ E[S_K]) + C_U C_K (Q ⊙ E[S_Θ̄]) (times the logit scale), all of
//! which reduce to the paper's forms at C_b = 0. The block's bias group (one `ntk_bias` per
//! layer, as the Monte Carlo sums it): attention b_U 1, b_V C_U E[Ω1Ωᵀ], b_Q C_U E[S_K],
//! b_K 0 (the softmax ignores a shift shared by a query's keys, Σ_u' J_{δ;t'u'} = 0); MLP
//! b_X 1, b_W C_X⟨σ'σ'⟩; the head's bias 1. (1 is the all-ones kernel.)
//!
//! Tied head, z^L = N W_WEᵀ s with N = n^{-(1+s)/2} ((1.24), (1.84)), pre-LN; derived here
//! beyond the paper (footnotes 19 and 32 name the double use, the paper gives no backward
//! for it). W_WE is one parameter of the group `stem` at layer 1, so its raw sum is the
//! squared norm of the total gradient: stem use² + head use² + 2 × cross. With the
//! trace-mode cotangent g (E[g_{δi} g_{δ'j}] = δ_{δδ'} δ_ij / n_out):
//! - head use: ∂z^L_{δ;i}/∂W_WE[j, i] = N s_{δ;j}, so Σ → N² n F (F the head's input
//!   kernel), added to ntk_stem;
//! - cross: E_g = (N²/n_out) Σ_{δδ'} ∂(|s_δ|²/2)/∂z¹_{δ'} · W_WE[:, id_δ'] = O(ε), since the
//!   LN output's norm is n G/(G + ε) whatever its input (checked: ntk_stem agrees without it);
//! - the stem use and every other group see the cotangent b_δ = N Σ_i g_{δi} w_i
//!   (w_i = W_WE[:, i]) at s_δ, whose component N g_{δ;id_δ} w_{id_δ} (mean square
//!   c_head/n_out) is *not* generic: s_δ holds c_δ w_{id_δ} through the skip path
//!   (c_δ = ξ^B/σ_δ, σ_δ = sqrt(G_δδ + ε), the forward's footnote-19 coefficient). The final
//!   LN's Jacobian (I − s sᵀ/n)/σ, which (1.139) treats as 1/σ, removes w's component along
//!   s. For a group whose output gradient at z^B is x_θ (Σ_θ |x_θ|² = n Θ_δδ) this output
//!   gives (N²/σ²) Σ_θ (w·x − c C (x·s))², C = C_WE, and with w generic against x:
//!   Θ_out(δ,δ) = c_head Θ_δδ/σ² · [1 − c² C/n_out] + c_head c² C/(n_out σ²) · S_coh/n,
//!   where the first bracket is the **deficit** (what an isotropic x would give) and
//!   S_coh = Σ_θ (x_θ·s_δ)² − n Θ_δδ is the part of the gradient that is coherent with s;
//! - the **logit contact**: the attention output ρ U(V Ω s) sits in s_δ with ρ = γ ξ^(blocks
//!   after), and the logit path of x_θ is ρ U V Σ_{t'} ∂Ω_{δt'}/∂θ s_{t'}; (U a)·(U b) → C_U a·b
//!   makes their overlap coherent over the channels: x_θ·s_δ = (ρ² C_U n/(H σ))
//!   Σ_{t'} ∂Ω_{δt'}/∂θ β_{t'}, β = V ω_δ (value kernel V, ω_δ the query's attention row).
//!   With Σ_θ ∂Ω ∂Ωᵀ = J L J (J the softmax Jacobian, L_{u'u''} = Σ_θ ∂logit_{δu'}
//!   ∂logit_{δu''}), S_coh/n = n (ρ² C_U/σ)² E[γᵀ L γ]/H with γ = J β = ω ⊙ (β − ω·β), and
//!   L = scale (C_Q Θ̄_δδ K + C_K Q_δδ Θ̄) for a carried kernel (as in the transport above),
//!   n scale F_δδ K for Q, n scale Q_δδ F for K, scale K for b_Q (per head; heads have their
//!   own Q, K, U, V so cross-head terms vanish, hence 1/H). Relative to Θ it is O(n/n_out): the
//!   logits are T-dimensional, so the coherent part does not spread over the channels. The
//!   same overlap through the value path or the MLP is spread over n (resp. Mn) directions
//!   and only O(1/n_out) × (the branch's share of the stream); it is neglected.
//!
//! The generic outputs' own projection, −c_head S_coh/(n² σ²) (the contact × n_out/(n c² C)),
//! is what (1.139) omits for the dense head too; it is omitted here as well (the dense
//! paper-lm head's ntk_q agrees with the MC to < 1%).
//! All of this is for the diagonal Θ(a, a) (the summaries, and the pairs mode's per-output
//! rows). Off the diagonal the cross term does not vanish (s_aᵀ ∂s_b/∂z¹ ≠ 0 for a ≠ b) and
//! the deficit and contact change form; measured, the leading form sits ~6% above the Monte
//! Carlo there (z ≈ −11 at n = 512), so the pairs mode writes no off-diagonal tied rows.
//!
//! Not covered (no rows): the tied head without pre-LN (post-LN puts an LN with its own
//! projection and contact after every block; without any LN the cross term survives) and
//! with more than one attention block (a later block's value path carries an earlier block's
//! coherent overlap to other positions, since ∂s_{t'}·s_{u'} is coherent for t' ≠ u'). MLP
//! blocks carry none: their input is an LN output at the same position, ∂s·s = 0, so the
//! hidden units' (W ∂s)_j is uncorrelated with h_j.

use ndarray::Array2;

use super::TheoryError;
use super::attention::{
    LogitSampler, attention_moments, attn_branch_draws, logit_scale, tied_logit_contact,
};
use super::head::pool;
use super::ln::{layer_norm, sandwich};
use super::mlp::{dsigma_dsigma_all, sigma_sigma_all};
use super::residual::residual;
use super::rows::PRow;
use super::state::{Consts, KernelState};
use super::stem::stem;
use crate::config::{BlockKind, HeadKind, ModelSpec, Norm, Stem};
use crate::model::Group;

/// Why a configuration has no backward theory here, if it has none.
pub fn unsupported(spec: &ModelSpec) -> Option<&'static str> {
    if spec.head != HeadKind::Tied {
        return None;
    }
    let attn = spec
        .blocks
        .iter()
        .filter(|b| **b == BlockKind::Attn)
        .count();
    if spec.norm != Norm::Pre {
        // Post-LN puts a LayerNorm after every block on the skip path of W_WE[:, id] (each
        // with its own projection and logit contact), and without any LN the head-use ×
        // stem-use cross term survives: neither is derived here.
        Some("tied head without pre-LN (only the pre-LN tied backward is derived)")
    } else if attn > 1 {
        // Blocks have their own Q and K, so the direct cross-block logit terms vanish, but a
        // later block's value path carries an earlier block's coherent overlap to other
        // positions ((∂s_t'·s_u') is coherent for t' ≠ u'): not derived here.
        Some("tied head with more than one attention block (cross-block logit contact)")
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum What {
    Group(Group),
    Grad2,
}

/// A kernel injected at `layer` and carried to the output.
struct Injection {
    layer: usize,
    what: What,
    theta: Array2<f64>,
}

/// The SGD learning-rate factor of the Monte Carlo's `ntk` rows: 1/fan-in for weights, 1 for
/// biases and embeddings (SPEC §2).
fn lambda(spec: &ModelSpec, g: Group) -> f64 {
    let n = spec.width as f64;
    match g {
        Group::Stem => match spec.stem {
            Stem::Dense => 1.0 / spec.n_in as f64,
            Stem::Embedding => 1.0,
        },
        Group::Pe | Group::Bias => 1.0,
        Group::X => 1.0 / (spec.mlp_mult as f64 * n),
        _ => 1.0 / n,
    }
}

/// The backward rows (`grad2`, `ntk_<group>`, `ntk`, `ntk_total`) in the Monte Carlo's
/// labels; `None` when [`unsupported`]. Summaries are means of the diagonal over the outputs
/// (what `trace` mode estimates); with `pairs` also every pair of outputs (a ≤ b) of each
/// NTK and each output's grad2, as the Monte Carlo's `pairs` mode writes them. Uses the same
/// logit draws as the forward pass with the same `sampler`.
pub fn backward_rows(
    spec: &ModelSpec,
    g0: &KernelState,
    sampler: LogitSampler,
    pairs: bool,
) -> Result<Option<Vec<PRow>>, TheoryError> {
    if unsupported(spec).is_some() {
        return Ok(None);
    }
    let inj = if spec.norm == Norm::Mlp {
        book(spec, g0)
    } else {
        transformer(spec, g0, sampler)?
    };
    let Some(inj) = inj else {
        return Ok(None);
    };
    let l_max = spec.head_layer();
    // The tied head's off-diagonal pairs Θ(a, b) get their own cross term and contacts (the
    // LN norm argument holds only for a = b); not derived, so only the diagonal is written.
    let tied = spec.head == HeadKind::Tied;
    let mut rows = Vec::new();
    let emit = |rows: &mut Vec<PRow>,
                layer: usize,
                site: &'static str,
                obs: String,
                th: &Array2<f64>,
                diag_only: bool| {
        let d = th.nrows();
        if pairs {
            for a in 0..d {
                for b in a..d {
                    if !diag_only || a == b {
                        rows.push(PRow {
                            layer,
                            site,
                            observable: obs.clone(),
                            i: a as i64,
                            j: b as i64,
                            value: th[[a, b]],
                        });
                    }
                }
            }
        }
        rows.push(PRow {
            layer,
            site,
            observable: obs,
            i: -1,
            j: -1,
            value: (0..d).map(|a| th[[a, a]]).sum::<f64>() / d as f64,
        });
    };
    let d_out = inj.first().map_or(0, |i| i.theta.nrows());
    let mut per_layer = vec![Array2::<f64>::zeros((d_out, d_out)); l_max + 1];
    let mut groups: Vec<(usize, Group, &Array2<f64>)> = Vec::new();
    for i in &inj {
        match i.what {
            What::Grad2 => emit(&mut rows, i.layer, "resid", "grad2".into(), &i.theta, true),
            What::Group(g) => {
                groups.push((i.layer, g, &i.theta));
                per_layer[i.layer].scaled_add(lambda(spec, g), &i.theta);
            }
        }
    }
    groups.sort_by_key(|(l, g, _)| (*l, *g));
    for (l, g, th) in &groups {
        emit(
            &mut rows,
            *l,
            "param",
            format!("ntk_{}", g.name()),
            th,
            tied,
        );
    }
    let mut total = Array2::<f64>::zeros((d_out, d_out));
    for (l, th) in per_layer.iter().enumerate() {
        if groups.iter().any(|(gl, _, _)| *gl == l) {
            emit(&mut rows, l, "param", "ntk".into(), th, tied);
            total += th;
        }
    }
    emit(&mut rows, l_max, "param", "ntk_total".into(), &total, tied);
    Ok(Some(rows))
}

/// One group's raw additive kernel from a block.
type Additive = (Group, Array2<f64>);

/// The injections carried to the output (`None`: the stream diverged).
type Carried = Option<Vec<Injection>>;

/// `mlp` mode: the book's frozen NTK per group, and grad2.
fn book(spec: &ModelSpec, g0: &KernelState) -> Carried {
    let c = Consts::of(spec);
    let n = spec.width as f64;
    let d = g0.len();
    let l_max = spec.head_layer();
    let ones = Array2::<f64>::ones((d, d));
    let mut k = stem(spec, g0);
    let mut inj = vec![Injection {
        layer: 1,
        what: What::Group(Group::Stem),
        theta: g0.g.mapv(|x| x * spec.n_in as f64),
    }];
    if spec.has_bias() {
        inj.push(Injection {
            layer: 1,
            what: What::Group(Group::Bias),
            theta: ones.clone(),
        });
    }
    inj.push(Injection {
        layer: 1,
        what: What::Grad2,
        theta: Array2::eye(d),
    });
    for l in 2..=l_max {
        let c_w = if l == l_max { c.head } else { c.w };
        let dd = dsigma_dsigma_all(spec, &k);
        let ss = sigma_sigma_all(spec, &k);
        for i in inj.iter_mut() {
            i.theta = &i.theta * &dd * c_w;
        }
        let g = if l == l_max { Group::Head } else { Group::W };
        inj.push(Injection {
            layer: l,
            what: What::Group(g),
            theta: ss.mapv(|x| n * x),
        });
        if spec.has_bias() {
            inj.push(Injection {
                layer: l,
                what: What::Group(Group::Bias),
                theta: ones.clone(),
            });
        }
        k = k.clone_with(ss.mapv(|x| c.bias + c_w * x));
        if l < l_max {
            inj.push(Injection {
                layer: l,
                what: What::Grad2,
                theta: Array2::eye(d),
            });
        }
    }
    Some(inj)
}

/// `pre`, `post` and `none` Transformers.
fn transformer(
    spec: &ModelSpec,
    g0: &KernelState,
    sampler: LogitSampler,
) -> Result<Carried, TheoryError> {
    let c = Consts::of(spec);
    let n = spec.width as f64;
    let m = spec.mlp_mult as f64 * n;
    let d = g0.len();
    let (seqs, t) = (g0.sequences, g0.tokens);
    let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
    let eps = spec.ln_eps;
    let inv_root = |z: &KernelState| -> Vec<f64> {
        (0..z.len())
            .map(|a| 1.0 / (z.g[[a, a]] + eps).sqrt())
            .collect()
    };
    let mut z = stem(spec, g0);
    let raw_stem = match spec.stem {
        Stem::Dense => g0.g.mapv(|x| x * spec.n_in as f64),
        Stem::Embedding => g0.g.clone(),
    };
    let mut inj = vec![Injection {
        layer: 1,
        what: What::Group(Group::Stem),
        theta: raw_stem,
    }];
    if c.pe > 0.0 {
        inj.push(Injection {
            layer: 1,
            what: What::Group(Group::Pe),
            theta: Array2::from_shape_fn((d, d), |(a, b)| f64::from(u8::from(a % t == b % t))),
        });
    }
    inj.push(Injection {
        layer: 1,
        what: What::Grad2,
        theta: Array2::eye(d),
    });
    let scale = logit_scale(spec)?;
    // Tied head (pre-LN): per injection and probe point, the logit contact accumulated in the
    // attention block, in units of c_head c² C_WE n / (n_out σ⁴) (see [`tied_logit_contact`]).
    let tied = spec.head == HeadKind::Tied;
    let mut contact: Vec<Vec<f64>> = Vec::new();
    for (b, kind) in spec.blocks.iter().enumerate() {
        let l = b + 2;
        // The branch input and the LN factor (1.139) of the carried kernels.
        let (input, ln) = if spec.norm == Norm::Pre {
            (layer_norm(&z, eps), inv_root(&z))
        } else {
            (z.clone(), vec![1.0; d])
        };
        let f = &input.g;
        let bars: Vec<Array2<f64>> = inj.iter().map(|i| sandwich(&i.theta, &ln)).collect();
        contact.resize(inj.len(), vec![0.0; d]);
        // The tied head's logit contact of this block's own groups (none: zero).
        let mut raw_contact: Vec<(Group, Vec<f64>)> = Vec::new();
        // cum[i]: the branch's transport of injection i; raw: this block's own groups.
        let (delta, cum, raw): (KernelState, Vec<Array2<f64>>, Vec<Additive>) = match kind {
            BlockKind::Mlp => {
                let hidden = input.clone_with(f.mapv(|x| c.w * x + c.bias));
                let ss = sigma_sigma_all(spec, &hidden);
                let dd = dsigma_dsigma_all(spec, &hidden);
                let delta = input.clone_with(ss.mapv(|x| c.x * x + c.bias));
                let cum = bars.iter().map(|th| th * &dd * (c.x * c.w)).collect();
                let mut raw = vec![
                    (Group::W, &dd * f * (n * c.x)),
                    (Group::X, ss.mapv(|x| m * x)),
                ];
                if spec.has_bias() {
                    // b_W: C_X⟨σ'σ'⟩; b_X: 1.
                    raw.push((Group::Bias, dd.mapv(|x| c.x * x + 1.0)));
                }
                (delta, cum, raw)
            }
            BlockKind::Attn => {
                let (delta, _, draws) = attn_branch_draws(spec, &input, l, sampler, true)?;
                // Value, key and query kernels (with the biases' C_b).
                let vk = f.mapv(|x| c.v * x + c.bias);
                let kk = f.mapv(|x| c.k * x + c.bias);
                let qk = f.mapv(|x| c.q * x + c.bias);
                const FIXED: usize = 4;
                let mut xs = vec![f.clone(), kk.clone(), vk.clone(), Array2::ones((d, d))];
                xs.extend(bars.iter().cloned());
                let (axa, sx) = attention_moments(&draws, &vk, &xs);
                // E[ΩFΩᵀ], E[S_F], E[S_K], E[ΩVΩᵀ], E[Ω1Ωᵀ].
                let (afa, s_f, s_k, ava, a1a) = (&axa[0], &sx[0], &sx[1], &axa[2], &axa[3]);
                let cum = (0..bars.len())
                    .map(|k| {
                        let mut v = axa[k + FIXED].clone() * (c.u * c.v);
                        v.scaled_add(c.u * c.q * scale, &(&bars[k] * s_k));
                        v.scaled_add(c.u * c.k * scale, &(&qk * &sx[k + FIXED]));
                        v
                    })
                    .collect();
                if tied {
                    // ρ⁴ C_U² with ρ = γ ξ^(blocks after): the block's output in z^B.
                    let rho = spec.gamma_res * spec.xi.powi((spec.blocks.len() - b - 1) as i32);
                    let w = rho.powi(4) * c.u * c.u / spec.heads as f64;
                    let mut ys = vec![kk.clone(), f.clone()];
                    ys.extend(bars.iter().cloned());
                    let e = tied_logit_contact(&draws, &vk, &ys);
                    let (e_k, e_f) = (&e[0], &e[1]);
                    for (k, th) in bars.iter().enumerate() {
                        for a in 0..d {
                            contact[k][a] += w
                                * scale
                                * (c.q * th[[a, a]] * e_k[a] + c.k * qk[[a, a]] * e[k + 2][a]);
                        }
                    }
                    let per = |v: &dyn Fn(usize) -> f64| (0..d).map(|a| w * v(a)).collect();
                    raw_contact.push((Group::Q, per(&|a| n * scale * f[[a, a]] * e_k[a])));
                    raw_contact.push((Group::K, per(&|a| n * scale * qk[[a, a]] * e_f[a])));
                    // b_Q: ∂logit/∂b_Q sums to K (as C_U E[S_K] in the bias group). V and U
                    // have no logit path, so no contact.
                    raw_contact.push((Group::Bias, per(&|a| scale * e_k[a])));
                }
                let mut raw = vec![
                    (Group::Q, (f * s_k).mapv(|x| n * c.u * scale * x)),
                    (Group::K, (&qk * s_f).mapv(|x| n * c.u * scale * x)),
                    (Group::V, afa.mapv(|x| n * c.u * x)),
                    (Group::U, ava.mapv(|x| n * x)),
                ];
                if spec.has_bias() {
                    // b_U: 1; b_V: C_U E[Ω1Ωᵀ]; b_Q: C_U E[S_K]; b_K: 0.
                    let mut b = a1a.mapv(|x| c.u * x + 1.0);
                    b.scaled_add(c.u * scale, s_k);
                    raw.push((Group::Bias, b));
                }
                (delta, cum, raw)
            }
        };
        let sum = residual(spec, &z, &delta);
        let post = if spec.norm == Norm::Post {
            inv_root(&sum)
        } else {
            vec![1.0; d]
        };
        for (i, cu) in inj.iter_mut().zip(cum) {
            let mut th = i.theta.mapv(|x| x2 * x);
            th.scaled_add(g2, &cu);
            i.theta = sandwich(&th, &post);
        }
        for (g, r) in raw {
            contact.push(
                raw_contact
                    .iter()
                    .find(|(cg, _)| *cg == g)
                    .map_or(vec![0.0; d], |(_, v)| v.clone()),
            );
            inj.push(Injection {
                layer: l,
                what: What::Group(g),
                theta: sandwich(&r.mapv(|x| g2 * x), &post),
            });
        }
        z = if spec.norm == Norm::Post {
            layer_norm(&sum, eps)
        } else {
            sum
        };
        if !z.g.iter().all(|x| x.is_finite()) {
            return Ok(None);
        }
        inj.push(Injection {
            layer: l,
            what: What::Grad2,
            theta: Array2::eye(d),
        });
    }
    // Head (1.182): the final LN only in `pre` mode.
    let (head_in, ln) = if spec.norm == Norm::Pre {
        (layer_norm(&z, eps), inv_root(&z))
    } else {
        (z.clone(), vec![1.0; d])
    };
    let pooled = spec.head == HeadKind::Pooled;
    let out = |th: Array2<f64>| if pooled { pool(&th, seqs, t) } else { th };
    contact.resize(inj.len(), vec![0.0; d]);
    for (i, con) in inj.iter_mut().zip(&contact) {
        let mut th = sandwich(&i.theta, &ln).mapv(|x| c.head * x);
        if tied {
            // The head's own column w = W_WE[:, id_a] (module doc): the final LN removes its
            // component along s_a, c_a² C_WE of it (the deficit), and the logit gradient's
            // coherent overlap with the attention output in s_a comes back through it (the
            // contact). c_a = ξ^B/σ_a is the stem's coefficient in s_a.
            let n_out = spec.out_dim() as f64;
            let c_we = spec.var.stem;
            for a in 0..d {
                let is2 = ln[a] * ln[a];
                let frac = (spec.xi.powi(spec.blocks.len() as i32) * ln[a]).powi(2) * c_we;
                th[[a, a]] += c.head * frac / n_out * is2 * (n * is2 * con[a] - i.theta[[a, a]]);
            }
        }
        i.theta = out(th);
    }
    if tied {
        // The head use of W_WE, one parameter with the stem's lookup, so in the stem group:
        // ∂z^L_{δ;i}/∂W_WE[j, i] = N s_{δ;j}, Σ_j → N² n F. Its cross term with the stem use
        // is N²/n_out Σ_δ ∂(|s_δ|²/2)/∂z¹ · w_id = O(ε): the LN output's norm is fixed.
        let head_use = head_in.g.mapv(|x| spec.tied_rescale().powi(2) * n * x);
        let stem = inj
            .iter_mut()
            .find(|i| i.what == What::Group(Group::Stem))
            .expect("the stem group is injected first");
        stem.theta += &head_use;
    } else {
        inj.push(Injection {
            layer: spec.head_layer(),
            what: What::Group(Group::Head),
            theta: out(head_in.g.mapv(|x| n * x)),
        });
    }
    if spec.has_bias() {
        inj.push(Injection {
            layer: spec.head_layer(),
            what: What::Group(Group::Bias),
            theta: out(Array2::ones((d, d))),
        });
    }
    Ok(Some(inj))
}
