//! The tied head's logit contact through any stack of blocks **[derived here, beyond the
//! paper]**: the coherent overlap of a gradient with the stream that the final LN turns into
//! the contact term of [`super::head`], for any number of attention blocks, MLPs and, on an
//! encoder–decoder, cross-attention blocks reading the encoder's memory.
//!
//! For one carried kernel (a parameter group, or a `grad2` probe) write, per parameter θ,
//! k̂_{ac}(θ) = (∂z_a/∂θ · z_c)/n for two points a, c of one sequence (ordered: the derivative
//! sits on a). Generic gradients make it O(n^{-1/2}); what survives at infinite width is its
//! *coherent* part, which only an attention block's logit path creates: the block's output
//! o_a = Σ_h U_h V_h Σ_v Ω^h_{av} s_v and its logit derivative U_h V_h Σ_v ∂Ω^h_{av} s_v share
//! U_h and V_h, whose products average over the channels, (U_h V_h s_v)·(U_h V_h s_w)/n →
//! (C_U/H) 𝒱_{vw}, which makes
//!
//!   k̂_{ac} += γ² (C_U/H) Σ_h Σ_q ∂Ω̃^h_{aq} (J^h_a β^h_c)_q,   β^h_c = 𝒱 ω^h_c,
//!
//! with Ω̃ the logits, J_a the softmax Jacobian of query a, ω_c row c of Ω^h and 𝒱 = C_V F + C_b
//! the value kernel (the one-block form of [`super::head`] is the case c = a). Blocks that
//! follow carry it like an NTK, because k̂ is bilinear in (∂z, z) along their linear paths:
//! - the skip multiplies it by ξ²;
//! - a pre-LN maps it to the LN output's λ̂_{vw} = k̂_{vw}/(σ_v σ_w) − F_{vw} k̂_{vv}/σ_v²
//!   (the Jacobian (I − s sᵀ/n)/σ removes the part along s_v, which is coherent here);
//! - an attention block's value path adds γ² (C_U C_V/H) Σ_h (Ω^h λ̂ Ω^hᵀ)_{ac};
//! - an MLP adds γ² C_W C_X ⟨σ'(h_a) σ'(h_c)⟩ λ̂_{ac} (Gaussian integration by parts over the
//!   hidden units; the λ̂_{aa} ⟨σ''σ⟩ term is O(ε), since λ̂_{aa} = k̂_{aa} ε/(G + ε)/σ²);
//! - cross-attention's value path brings the memory's λ̂ in, its logits add their own term
//!   (keys and values over the encoder's tokens), and the memory's λ̂ is the encoder's final
//!   LN map of the encoder stream's k̂.
//!
//! Everything else is generic: a branch's output against another branch's (independent U or
//! X), the stem, the MLP's and the value path's own weights (a single unit each).
//!
//! The head needs con_a = Σ_θ k̂_{aa}(θ)² at the final stream. k̂ is linear in the logit
//! derivatives of every attention block, and Σ_θ ∂Ω̃^{b,h}_{aq} ∂Ω̃^{b',h'}_{a'q'} vanishes for
//! different blocks or heads (independent Q and K); for the same one it is the logit-gradient
//! kernel L_{(aq),(a'q')} = scale (C_Q Θ̄_{aa'} K_{qq'} + C_K Q_{aa'} Θ̄_{qq'}) of the
//! carried Θ̄ (n scale F K for the block's own Q, n scale Q F for K, scale K for b_Q), as in
//! [`super::attention`]'s transport. So con_a = Σ_b E[cᵀ L^b c] with c the coefficient of
//! block b's logits in k̂_{aa}: the readout e_{(a,a)} carried back through the later blocks
//! (the adjoint of the maps above). The later blocks' attention is random and enters
//! squared, so the expectation is over *joint* draws: draw j of every block (one per head)
//! together, which is exact in distribution since blocks and heads are independent at
//! infinite width. [`Tape`] records each block's maps and draws on the forward walk;
//! [`Tape::contacts`] runs the adjoint per joint draw and readout.

use ndarray::{Array2, s};
use rayon::prelude::*;

use super::state::{Ctx, KernelState};

/// The pre-LN map of the coherent overlaps (module doc): the stream's σ_v = sqrt(G_vv + ε)
/// and the LN output's kernel F.
#[derive(Clone, Debug)]
pub(crate) struct Lam {
    sigma: Vec<f64>,
    f: Array2<f64>,
    tokens: usize,
}

impl Lam {
    pub(crate) fn of(stream: &KernelState, out: &KernelState, eps: f64) -> Self {
        Lam {
            sigma: (0..stream.len())
                .map(|a| (stream.g[[a, a]] + eps).sqrt())
                .collect(),
            f: out.g.clone(),
            tokens: stream.tokens,
        }
    }

    /// Λᵀρ for one sequence starting at point `off`: from the LN output's pairs back to the
    /// stream's (λ̂_{vw} reads k̂_{vw} and k̂_{vv}).
    fn adjoint(&self, rho: &Array2<f64>, off: usize) -> Array2<f64> {
        let t = rho.nrows();
        Array2::from_shape_fn((t, t), |(v, w)| {
            let (sv, sw) = (self.sigma[off + v], self.sigma[off + w]);
            if v != w {
                rho[[v, w]] / (sv * sw)
            } else {
                let along: f64 = (0..t)
                    .map(|u| self.f[[off + v, off + u]] * rho[[v, u]])
                    .sum();
                (rho[[v, v]] - along) / (sv * sv)
            }
        })
    }
}

/// One logit-gradient kernel L = coef · P ⊗ R of the carried kernel at `index`: P over the
/// queries (D_q × D_q), R over the keys (D_k × D_k).
#[derive(Clone, Debug)]
pub(crate) struct Term {
    pub index: usize,
    pub coef: f64,
    pub query: Array2<f64>,
    pub key: Array2<f64>,
}

/// The logit-gradient kernels of one attention block (module doc): for carried kernel i its
/// query part scale C_Q Θ̄_i ⊗ K and its key part scale C_K Q ⊗ Θ̃_i (`carried[i]` = (Θ̄_i,
/// Θ̃_i): Θ̃ = Θ̄ for self-attention, the memory's for cross-attention), then the block's own
/// Q (n scale F ⊗ K), K (n scale Q ⊗ F̃) and, with biases, b_Q (scale 1 ⊗ K), indexed as the
/// transport appends them (Q, K, V, U, bias after the carried kernels). (F, Q) are over the
/// queries, (F̃, K) over the keys.
pub(crate) fn terms(
    carried: &[(&Array2<f64>, &Array2<f64>)],
    (cq, ck, scale, n): (f64, f64, f64, f64),
    (f, q): (&Array2<f64>, &Array2<f64>),
    (f_key, k): (&Array2<f64>, &Array2<f64>),
    bias: bool,
) -> Vec<Term> {
    let term = |index: usize, coef: f64, query: &Array2<f64>, key: &Array2<f64>| Term {
        index,
        coef,
        query: query.clone(),
        key: key.clone(),
    };
    let mut out = Vec::with_capacity(2 * carried.len() + 3);
    for (i, (th, th_key)) in carried.iter().enumerate() {
        out.push(term(i, scale * cq, th, k));
        out.push(term(i, scale * ck, q, th_key));
    }
    let own = carried.len();
    out.push(term(own, n * scale, f, k));
    out.push(term(own + 1, n * scale, q, f_key));
    if bias {
        out.push(term(own + 4, scale, &Array2::ones(f.raw_dim()), k));
    }
    out
}

/// What one attention block (self or cross) adds and passes on: its heads' draws, its value
/// kernel over the keys, and every carried kernel's logit-gradient kernels.
#[derive(Clone, Debug)]
pub(crate) struct Logits {
    heads: usize,
    /// C_U C_V and C_U.
    cu_cv: f64,
    cu: f64,
    /// 𝒱 = C_V F + C_b over the keys of each sequence (tk × tk, row-major, per sequence).
    value: Vec<f64>,
    /// Ω per kept draw and sequence (tq × tk, row-major): draw i, sequence s at
    /// `(i · sequences + s) · tq · tk`. One draw means exact (uniform) attention.
    draws: Vec<f64>,
    count: usize,
    sequences: usize,
    terms: Vec<Term>,
    /// Tokens per sequence of the queries and of the keys.
    tq: usize,
    tk: usize,
}

/// The most draw entries one block keeps for the adjoint (32 MB): beyond it the contact uses
/// fewer joint draws than the rest of the theory, and its error bar is an underestimate.
const MAX_KEPT: usize = 1 << 22;

impl Logits {
    /// A block's record: `draws` are its Ω (D_q × D_k, zero across sequences) with their
    /// weights, `value` the value kernel (D_k × D_k), `tokens` (tq, tk) per sequence.
    pub(crate) fn new(
        (heads, cu, cv): (usize, f64, f64),
        value: &Array2<f64>,
        draws: &[(f64, Array2<f64>)],
        terms: Vec<Term>,
        (tq, tk): (usize, usize),
    ) -> Self {
        let sequences = value.nrows() / tk.max(1);
        let per = sequences * tq * tk;
        let count = draws.len().min((MAX_KEPT / per.max(1)).max(heads));
        let mut flat = Vec::with_capacity(count * per);
        for (_, a) in &draws[..count] {
            for sq in 0..sequences {
                let blk = a.slice(s![sq * tq..(sq + 1) * tq, sq * tk..(sq + 1) * tk]);
                flat.extend(blk.iter());
            }
        }
        let mut v = Vec::with_capacity(sequences * tk * tk);
        for sq in 0..sequences {
            v.extend(
                value
                    .slice(s![sq * tk..(sq + 1) * tk, sq * tk..(sq + 1) * tk])
                    .iter(),
            );
        }
        Logits {
            heads: heads.max(1),
            cu_cv: cu * cv,
            cu,
            value: v,
            draws: flat,
            count,
            sequences,
            terms,
            tq,
            tk,
        }
    }

    /// Head h of joint draw j on sequence `seq` (tq × tk, row-major).
    fn omega(&self, j: usize, h: usize, seq: usize) -> &[f64] {
        let per = self.tq * self.tk;
        let i = (j * self.heads + h) % self.count;
        let at = (i * self.sequences + seq) * per;
        &self.draws[at..at + per]
    }

    /// The joint draws this block supports (`None`: exact, any number).
    fn joint(&self) -> Option<usize> {
        (self.count > 1).then(|| (self.count / self.heads).max(1))
    }
}

/// One block of the walk, as the adjoint reads it.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// k̂ → ξ² k̂ + γ² coef ⊙ Λk̂, coef = C_W C_X ⟨σ'σ'⟩ (D × D).
    Mlp { lam: Lam, coef: Array2<f64> },
    /// Self-attention: k̂ → ξ² k̂ + γ² (value path of Λk̂ + the logits' own term).
    Attn { lam: Lam, logits: Logits },
    /// Cross-attention: k̂ → ξ² k̂ + γ² (value path of the memory's λ̂ + the logits' term).
    Cross { logits: Logits },
    /// The handoff from the encoder: the memory's λ̂ is the final LN map of the encoder's k̂;
    /// the decoder's stream starts with no coherent overlap.
    Memory { lam: Lam },
}

/// The steps of one walk, in order (module doc).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tape {
    steps: Vec<Step>,
}

impl Tape {
    pub(crate) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// con_a = Σ_θ k̂_{aa}(θ)² of every carried kernel (`carried` of them, by index) at each of
    /// the `d` readout points of the final stream (`tokens` per sequence). The readouts run
    /// in parallel, each over every joint draw in order, so the result does not depend on
    /// the thread count.
    pub(crate) fn contacts(
        &self,
        ctx: &Ctx,
        tokens: usize,
        d: usize,
        carried: usize,
    ) -> Vec<Vec<f64>> {
        let spec = ctx.spec;
        let (x2, g2) = (spec.xi * spec.xi, spec.gamma_res * spec.gamma_res);
        let joint = self
            .steps
            .iter()
            .filter_map(logits)
            .filter_map(Logits::joint)
            .min()
            .unwrap_or(1);
        let accs: Vec<Vec<Vec<f64>>> = (0..d)
            .into_par_iter()
            .map(|a| self.adjoint(a, tokens, joint, (x2, g2)))
            .collect();
        let mut out = vec![vec![0.0; d]; carried];
        for (k, st) in self.steps.iter().enumerate() {
            let Some(l) = logits(st) else { continue };
            let fac = (g2 * l.cu / l.heads as f64).powi(2) / joint as f64;
            for (a, acc) in accs.iter().enumerate() {
                let seq = a / tokens;
                for term in l.terms.iter().filter(|t| t.index < carried) {
                    out[term.index][a] += fac * term.coef * contract(&acc[k], term, l, seq);
                }
            }
        }
        out
    }

    /// Readout a = (a, a) carried back through every step for each joint draw: per step,
    /// Σ_j Σ_h c cᵀ (upper triangle, c over the step's (query, key) pairs of a's sequence).
    fn adjoint(
        &self,
        a: usize,
        tokens: usize,
        joint: usize,
        (x2, g2): (f64, f64),
    ) -> Vec<Vec<f64>> {
        let seq = a / tokens;
        let mut acc: Vec<Vec<f64>> = self
            .steps
            .iter()
            .map(|st| logits(st).map_or_else(Vec::new, |l| vec![0.0; (l.tq * l.tk).pow(2)]))
            .collect();
        let mut scratch = Scratch::default();
        for j in 0..joint {
            let mut r = Array2::<f64>::zeros((tokens, tokens));
            r[[a % tokens, a % tokens]] = 1.0;
            let mut rm: Option<Array2<f64>> = None;
            for (k, st) in self.steps.iter().enumerate().rev() {
                match st {
                    Step::Mlp { lam, coef } => {
                        let off = seq * lam.tokens;
                        let blk = coef.slice(s![off..off + lam.tokens, off..off + lam.tokens]);
                        let rho = &r * &blk * g2;
                        r = r * x2 + lam.adjoint(&rho, off);
                    }
                    Step::Attn { lam, logits } => {
                        let rho = heads_back(logits, &r, j, seq, &mut acc[k], &mut scratch);
                        r = r * x2 + lam.adjoint(&(rho * g2), seq * lam.tokens);
                    }
                    Step::Cross { logits } => {
                        let rho = heads_back(logits, &r, j, seq, &mut acc[k], &mut scratch) * g2;
                        rm = Some(match rm.take() {
                            Some(m) => m + rho,
                            None => rho,
                        });
                        r *= x2;
                    }
                    Step::Memory { lam } => {
                        let te = lam.tokens;
                        let m = rm.take().unwrap_or_else(|| Array2::zeros((te, te)));
                        r = lam.adjoint(&m, seq * te);
                    }
                }
            }
        }
        for (st, m) in self.steps.iter().zip(acc.iter_mut()) {
            if let Some(l) = logits(st) {
                let n = l.tq * l.tk;
                for x in 0..n {
                    for y in 0..x {
                        m[x * n + y] = m[y * n + x];
                    }
                }
            }
        }
        acc
    }
}

/// An attention step's logits (self or cross).
fn logits(st: &Step) -> Option<&Logits> {
    match st {
        Step::Attn { logits, .. } | Step::Cross { logits } => Some(logits),
        _ => None,
    }
}

/// Reused buffers of [`heads_back`].
#[derive(Default)]
struct Scratch {
    b: Vec<f64>,
    y: Vec<f64>,
    c: Vec<f64>,
    ro: Vec<f64>,
}

/// One attention step of the adjoint for readout vector `r` (tq × tq) and joint draw `j`:
/// adds each head's c cᵀ to `acc` (upper triangle; c_{a'q} = ω_{a'q}(y_{a'q} − ω_{a'}·y_{a'}),
/// y_{a'} = Σ_{c'} r_{a'c'} β_{c'}, the coefficient of ∂Ω̃_{a'q} in ⟨r, k̂⟩ up to γ² C_U/H)
/// and returns the value path's C_U C_V/H Σ_h Ωᵀ r Ω over the keys' pairs (tk × tk).
fn heads_back(
    l: &Logits,
    r: &Array2<f64>,
    j: usize,
    seq: usize,
    acc: &mut [f64],
    sc: &mut Scratch,
) -> Array2<f64> {
    let (tq, tk) = (l.tq, l.tk);
    let m = tq * tk;
    let value = &l.value[seq * tk * tk..(seq + 1) * tk * tk];
    let r = r.as_standard_layout();
    let r = r.as_slice().expect("standard layout");
    sc.b.resize(m, 0.0);
    sc.y.resize(m, 0.0);
    sc.c.resize(m, 0.0);
    sc.ro.resize(tq * tk, 0.0);
    let mut rho = vec![0.0; tk * tk];
    for h in 0..l.heads {
        let om = l.omega(j, h, seq);
        // B = Ω 𝒱: row c' is β_{c'} (𝒱 symmetric).
        for c in 0..tq {
            for q in 0..tk {
                sc.b[c * tk + q] = (0..tk).map(|u| om[c * tk + u] * value[u * tk + q]).sum();
            }
        }
        // Y = r B; c = ω ⊙ (Y − (ω·Y) 1) row by row.
        for a in 0..tq {
            let yr = &mut sc.y[a * tk..(a + 1) * tk];
            yr.fill(0.0);
            for c in 0..tq {
                let w = r[a * tq + c];
                if w != 0.0 {
                    for (y, b) in yr.iter_mut().zip(&sc.b[c * tk..(c + 1) * tk]) {
                        *y += w * b;
                    }
                }
            }
            let wy: f64 = (0..tk).map(|q| om[a * tk + q] * yr[q]).sum();
            for q in 0..tk {
                sc.c[a * tk + q] = om[a * tk + q] * (yr[q] - wy);
            }
        }
        for x in 0..m {
            let cx = sc.c[x];
            if cx != 0.0 {
                let row = &mut acc[x * m + x..(x + 1) * m];
                for (o, cy) in row.iter_mut().zip(&sc.c[x..]) {
                    *o += cx * cy;
                }
            }
        }
        // Ωᵀ r Ω: first r Ω (tq × tk), then Ωᵀ (r Ω).
        for a in 0..tq {
            for q in 0..tk {
                sc.ro[a * tk + q] = (0..tq).map(|c| r[a * tq + c] * om[c * tk + q]).sum();
            }
        }
        for v in 0..tk {
            for w in 0..tk {
                rho[v * tk + w] += (0..tq)
                    .map(|a| om[a * tk + v] * sc.ro[a * tk + w])
                    .sum::<f64>();
            }
        }
    }
    let f = l.cu_cv / l.heads as f64;
    Array2::from_shape_vec((tk, tk), rho.into_iter().map(|x| x * f).collect()).expect("tk × tk")
}

/// ⟨acc, P ⊗ R⟩ over sequence `seq`: Σ acc_{(a'q),(a''q')} P_{a'a''} R_{qq'}.
fn contract(acc: &[f64], term: &Term, l: &Logits, seq: usize) -> f64 {
    let (tq, tk) = (l.tq, l.tk);
    let m = tq * tk;
    let (oq, ok) = (seq * tq, seq * tk);
    let mut sum = 0.0;
    for a1 in 0..tq {
        for a2 in 0..tq {
            let p = term.query[[oq + a1, oq + a2]];
            if p == 0.0 {
                continue;
            }
            let mut inner = 0.0;
            for q1 in 0..tk {
                for q2 in 0..tk {
                    inner += acc[(a1 * tk + q1) * m + a2 * tk + q2] * term.key[[ok + q1, ok + q2]];
                }
            }
            sum += p * inner;
        }
    }
    sum
}
