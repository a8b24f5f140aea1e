//! The head at infinite width: its kernel map, dense (1.80), pooled (1.81), tied (1.84) with
//! the tied head's contact term, and its NTK transport (1.179)–(1.182), side by side.
//!
//! - Kernel: G^L = C_head n^{-s} F (dense), its token average (pooled), or C_WE n^{-s} F
//!   (tied, plus the footnote-19 contact term that (1.84) ignores, [`tied_contact`]). F is the
//!   head's input: LN(z) in `pre` mode, z itself in `post` and `none`.
//! - NTK (1.182): C_head n^{-s} Θ̄ (pre) or C_head n^{-s} Θ; raw_head = n F (1.179); pooled
//!   heads average over the tokens of each sequence (by linearity, as (1.81)); the head's
//!   bias adds 1.
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
//!   L = scale (C_Q Θ̄_δδ K + C_K Q_δδ Θ̄) for a carried kernel (as in [`super::attention`]'s transport),
//!   n scale F_δδ K for Q, n scale Q_δδ F for K, scale K for b_Q (per head; heads have their
//!   own Q, K, U, V so cross-head terms vanish, hence 1/H). Relative to Θ it is O(n/n_out): the
//!   logits are T-dimensional, so the coherent part does not spread over the channels. This
//!   is the one-block form; [`super::contact`] carries the overlap through every later block
//!   (a later value path moves an earlier block's overlap between positions) and through
//!   an encoder–decoder's cross-attention, and gives S_coh/n = n con/σ² per carried kernel.
//!
//! The generic outputs' own projection, −c_head S_coh/(n² σ²) (the contact × n_out/(n c² C)),
//! is what (1.139) omits for the dense head too; it is omitted here as well (the dense
//! paper-lm head's ntk_q agrees with the MC to < 1%).
//! All of this is for the diagonal Θ(a, a) (the summaries, and the pairs mode's per-output
//! rows). Off the diagonal the cross term does not vanish (s_aᵀ ∂s_b/∂z¹ ≠ 0 for a ≠ b) and
//! the deficit and contact change form; measured, the leading form sits ~6% above the Monte
//! Carlo there (z ≈ −11 at n = 512), so the pairs mode writes no off-diagonal tied rows.

use ndarray::{Array2, s};

use super::ln::inv_root;
use super::state::{Carried, Ctx, KernelState, State, What};
use crate::config::{HeadKind, ModelSpec};
use crate::model::Group;

/// The head on states: `z` is the stream z^B (before the final LN), `input` the head's input
/// (LN(z) in `pre` mode, z otherwise), `g0` the input kernel (the tied head's contact).
pub(crate) fn forward(ctx: &Ctx, z: &State, input: &State, g0: &KernelState) -> State {
    let spec = ctx.spec;
    let mut k = kernel(ctx, &input.k);
    if spec.head == HeadKind::Tied {
        tied_contact(ctx, g0, &input.stem_coef, &mut k);
    }
    let ntk = input
        .ntk
        .as_ref()
        .map(|bars| transport(ctx, z, input, bars, g0));
    // Order 1: a dense head is a readout of its input; pooled and tied heads are not derived.
    let nlo = match spec.head {
        HeadKind::Dense => input
            .nlo
            .as_ref()
            .map(|f| f.readout(ctx.hyper.head.c_eff, &input.k.g)),
        _ => None,
    };
    State {
        k,
        ntk,
        stem_coef: Vec::new(),
        vertex: None,
        nlo,
    }
}

/// The head's NTK transport (1.182) of every carried kernel, then the head's own groups.
fn transport(
    ctx: &Ctx,
    z: &State,
    input: &State,
    bars: &[Carried],
    g0: &KernelState,
) -> Vec<Carried> {
    // A tied head's [pad] output has no gradient but its bias's (`live_outputs`).
    let (spec, c_head) = (ctx.spec, ctx.hyper.head.c_eff * live_outputs(ctx.spec));
    let n = spec.width as f64;
    let d = input.k.len();
    let (seqs, t) = (input.k.sequences, input.k.tokens);
    let tied = spec.head == HeadKind::Tied;
    let out = |th: Array2<f64>| match spec.head {
        HeadKind::Pooled => pool(&th, seqs, t),
        HeadKind::Class => class_rows(&th, seqs, t),
        _ => th,
    };
    // The final LN's factor (1.139); the tied head is derived in `pre` mode only.
    let ln = inv_root(&z.k, spec.ln_eps);
    let pre = z.ntk.as_deref().unwrap_or(&[]);
    // con_a = Σ_θ k̂_aa² per carried kernel, from the whole walk ([`super::contact`]).
    let contacts = match ctx.tape {
        Some(tape) if tied => tape.borrow().contacts(ctx, t, d, bars.len()),
        _ => Vec::new(),
    };
    let mut carried: Vec<Carried> = bars
        .iter()
        .enumerate()
        .map(|(i, bar)| {
            let mut th = bar.theta.mapv(|x| c_head * x);
            if let Some(con) = contacts.get(i) {
                // The head's own column w = W_WE[:, id_a] (module doc): the final LN removes
                // its component along s_a, c_a² C_WE of it (the deficit), and the gradient's
                // coherent overlap with s_a comes back through it (the contact). c_a is the
                // stem's coefficient in s_a; a [pad] token's column is zero (G⁰_aa = 0), so
                // its output has neither, and the pad output itself is dead for every a.
                let n_out = spec.out_dim() as f64;
                let c_we = ctx.hyper.stem.w.c_eff();
                for a in 0..d {
                    let is2 = ln[a] * ln[a];
                    let frac = input.stem_coef[a].powi(2) * c_we * g0.g[[a, a]];
                    th[[a, a]] += ctx.hyper.head.c_eff * frac / n_out
                        * is2
                        * (n * is2 * con[a] - pre[i].theta[[a, a]]);
                }
            }
            bar.with(out(th))
        })
        .collect();
    let layer = spec.head_layer();
    if tied {
        // The head use of W_WE, one parameter with the stem's lookup, so in the stem group:
        // ∂z^L_{δ;i}/∂W_WE[j, i] = N s_{δ;j}, Σ_j → N² n F. Its cross term with the stem use
        // is N²/n_out Σ_δ ∂(|s_δ|²/2)/∂z¹ · w_id = O(ε): the LN output's norm is fixed.
        let head_use = input
            .k
            .g
            .mapv(|x| spec.tied_rescale().powi(2) * n * x * live_outputs(spec));
        let stem = carried
            .iter_mut()
            .find(|i| i.what == What::Group(Group::Stem))
            .expect("the stem group is injected first");
        stem.theta += &head_use;
    } else {
        let raw = out(input.k.g.mapv(|x| n * x));
        carried.push(Carried::new(layer, What::Group(Group::Head), raw));
    }
    if ctx.hyper.head.bias.is_some() {
        carried.push(Carried::new(
            layer,
            What::Group(Group::Bias),
            out(Array2::ones((d, d))),
        ));
    }
    carried
}

/// Head (1.80), pooled (1.81), tied (1.84): from the head's input kernel (F in `pre` mode,
/// the stream itself in `post` and `none`). In `mlp` mode the head is a plain layer
/// ([`super::plain`]).
fn kernel(ctx: &Ctx, input: &KernelState) -> KernelState {
    let (spec, h) = (ctx.spec, &ctx.hyper.head);
    let (c_head, c_b) = (h.c_eff * live_outputs(spec), h.bias.unwrap_or(0.0));
    let dense = input.g.mapv(|f| c_head * f);
    let g = if spec.head == HeadKind::Pooled {
        // (1.81): G̃_{α1α2} = (1/T²) Σ_{t1,t2} G_{(α1;t1)(α2;t2)}; the bias adds C_b once.
        let (sq, t) = (input.sequences, input.tokens);
        let g = Array2::from_shape_fn((sq, sq), |(a1, a2)| {
            dense
                .slice(s![a1 * t..(a1 + 1) * t, a2 * t..(a2 + 1) * t])
                .sum()
                / (t * t) as f64
                + c_b
        });
        return KernelState::new(g, sq, 1);
    } else if spec.head == HeadKind::Class {
        // The class head reads t = 0 of each sequence: G̃_{α1α2} = C_head G_{(α1;0)(α2;0)} + C_b.
        let g = class_rows(&dense, input.sequences, input.tokens).mapv(|x| x + c_b);
        return KernelState::new(g, input.sequences, 1);
    } else {
        dense.mapv(|x| x + c_b)
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
fn tied_contact(ctx: &Ctx, g0: &KernelState, coef: &[f64], out: &mut KernelState) {
    let spec = ctx.spec;
    let n = spec.width as f64;
    // C_WE: the word embedding's drawn variance (a lookup, not divided by n_vocab).
    let amp = spec.tied_rescale() * n * ctx.hyper.stem.w.c_eff();
    let n_out = spec.out_dim() as f64;
    // G⁰ of the embedding stem is exactly [id_δ1 = id_δ2].
    for a in 0..out.len() {
        for b in 0..out.len() {
            out.g[[a, b]] += g0.g[[a, b]] * amp * amp * coef[a] * coef[b] / n_out;
        }
    }
}

/// The share of the outputs W_WE reaches: (n_out − 1)/n_out for a tied head with a [pad]
/// token, whose column W_WE[:, pad] is zero and frozen (footnote 48), so that output is its
/// bias alone and adds nothing to a mean over outputs but C_b; 1 otherwise.
fn live_outputs(spec: &ModelSpec) -> f64 {
    match (spec.head, spec.pad_id) {
        (HeadKind::Tied, Some(_)) => {
            let n_out = spec.out_dim() as f64;
            (n_out - 1.0) / n_out
        }
        _ => 1.0,
    }
}

/// The class tokens' entries (t = 0 of each sequence), (D×D) → (S×S), as the class head.
fn class_rows(theta: &Array2<f64>, seqs: usize, t: usize) -> Array2<f64> {
    Array2::from_shape_fn((seqs, seqs), |(a, b)| theta[[a * t, b * t]])
}

/// Mean over tokens of each sequence, (D×D) → (S×S), as the pooled head (1.81).
fn pool(theta: &Array2<f64>, seqs: usize, t: usize) -> Array2<f64> {
    Array2::from_shape_fn((seqs, seqs), |(a, b)| {
        theta
            .slice(s![a * t..(a + 1) * t, b * t..(b + 1) * t])
            .sum()
            / (t * t) as f64
    })
}
