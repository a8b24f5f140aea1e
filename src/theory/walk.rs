//! The one walk: the theory's forward recursion over the configured blocks, in the order of
//! the model's `Network::forward`, carrying the whole [`State`] (kernel, NTKs, vertex)
//! through each block once.
//!
//! stem → for each block: [pre: LN] → branch (MLP or MHSA) → residual add → [post: LN]
//! (`mlp` mode: the book's plain layer instead) → [pre: final LN] → head (`mlp` mode: a
//! plain layer with the head's constant). After the stem and after every block the walk
//! injects the `grad2` probe of that layer. Each layer's forward observables are recorded
//! on the way ([`LayerPrediction`]).
//!
//! An encoder–decoder (§II 2 B, docs/architecture.md) walks the encoder as above, with the
//! stem's extra LayerNorm after the PE (not in `none` mode), up to the memory s̃ (the final
//! LN's output in `pre` mode, z^{B_e+1} otherwise); then the decoder: its stem on the
//! decoder's probe (the shared embedding's use counts to layer 1, its own b^PE to B_e + 2)
//! and LN, the decoder blocks (masked self-attention, always causal; cross-attention
//! ([`super::cross`]) reading s̃; MLP), the final LN and the head on the decoder's tokens.
//! Every kernel carried out of the encoder enters the decoder with Θ = 0 on the decoder's
//! tokens and its Θ̃ at s̃ in the [`Memory`], which the cross blocks read.

use std::cell::RefCell;

use ndarray::Array2;

use super::TheoryError;
use super::attention::{self, AttnStats};
use super::contact::{Lam, Step, Tape};
use super::cross::{self, Memory};
use super::state::{Carried, Ctx, KernelState, State, What};
use super::{head, ln, mlp, plain, residual, stem};
use crate::config::{BlockKind, DecoderBlock, HeadKind, ModelSpec, Norm};
use crate::model::Group;

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
    /// A cross-attention block's (decoder, encoder) tokens per sequence: its `attn` rows
    /// pair decoder queries with encoder keys.
    pub cross: Option<(usize, usize)>,
    /// Per token (fluct, kurtosis) from the four-point vertex (`mlp` mode; at order 1 also the
    /// residual MLP stacks, whose kurtosis is not derived).
    pub vertex: Option<Vec<(f64, Option<f64>)>>,
}

/// The whole forward prediction; `diverged_at` is the first non-finite layer, if any
/// (the layers before it are kept).
#[derive(Clone, Debug)]
pub struct Prediction {
    pub layers: Vec<LayerPrediction>,
    pub diverged_at: Option<usize>,
}

/// The walk's result: the per-layer prediction and, with a backward and no divergence, every
/// carried kernel at the output in injection order.
#[derive(Clone, Debug)]
pub struct Walked {
    pub prediction: Prediction,
    pub ntk: Option<Vec<Carried>>,
}

/// The kernel a row reports: K⁰, or K⁰ + K^{{1}}/n at order 1.
fn reported(ctx: &Ctx, st: &State) -> KernelState {
    match &st.nlo {
        Some(f) => st.k.with(f.corrected(&st.k.g, ctx.spec.width as f64)),
        None => st.k.clone(),
    }
}

/// The record of layer ℓ: the state's kernel and, in `mlp` mode or at order 1, its vertex
/// observables.
fn record(ctx: &Ctx, layer: usize, st: &State) -> LayerPrediction {
    let spec = ctx.spec;
    let n = spec.width as f64;
    // The width the Monte Carlo averages over: n, or n_out at the head.
    let width = if layer == spec.head_layer() {
        spec.out_dim() as f64
    } else {
        n
    };
    let vertex = match &st.nlo {
        Some(f) => Some(f.observables(&st.k.g, n, width)),
        None => st.vertex.as_ref().map(|v| {
            plain::observables(&st.k, v, n, width)
                .into_iter()
                .map(|(fl, ku)| (fl, Some(ku)))
                .collect()
        }),
    };
    LayerPrediction {
        layer,
        resid: reported(ctx, st),
        ln: None,
        hidden: None,
        attn: None,
        cross: None,
        vertex,
    }
}

fn diverged(layers: Vec<LayerPrediction>, at: usize) -> Walked {
    Walked {
        prediction: Prediction {
            layers,
            diverged_at: Some(at),
        },
        ntk: None,
    }
}

fn grad2(st: &mut State, layer: usize) {
    let d = st.k.len();
    st.inject(layer, What::Grad2, || Array2::eye(d));
}

/// A block's own observables: the MLP's `hidden` site or the attention statistics.
#[derive(Default)]
struct BlockObs {
    hidden: Option<KernelState>,
    attn: Option<AttnStats>,
}

/// One block on the stream z (mirrors `Network::block_forward`): the next stream state,
/// with the block's observables recorded into `rec`.
fn block(
    ctx: &Ctx,
    z: State,
    (b, kind): (usize, BlockKind),
    pre_ln: Option<State>,
    rec: &mut BlockObs,
) -> Result<State, TheoryError> {
    let l = b + 2;
    if ctx.spec.norm == Norm::Mlp {
        return Ok(plain::forward(
            ctx,
            &z,
            l,
            ctx.hyper.book.w.c_eff(),
            Group::W,
        ));
    }
    // The branch input: s = LN(z) (pre), or z itself (post, none).
    let input = pre_ln.as_ref().unwrap_or(&z);
    let branch = match kind {
        BlockKind::Mlp => {
            let (branch, hidden) = mlp::branch(ctx, input, &z.k, l);
            rec.hidden = Some(hidden);
            branch
        }
        BlockKind::Attn => {
            let (branch, stats) = attention::branch(ctx, input, &z, l)?;
            rec.attn = Some(stats);
            branch
        }
    };
    let sum = residual::add(ctx, z, branch);
    Ok(if ctx.spec.norm == Norm::Post {
        ln::forward(ctx, &sum, true)
    } else {
        sum
    })
}

/// Runs the forward recursion (and, with `ctx.backward`, the NTK transport) from the input
/// kernel G⁰ through the head (an encoder-only model).
pub fn walk(ctx: &Ctx, g0: &KernelState) -> Result<Walked, TheoryError> {
    walk_with(ctx, g0, None)
}

/// [`walk`] with the decoder's input kernel and the encoder's padding mask (an
/// encoder–decoder needs them; an encoder-only model ignores them).
pub fn walk_with(
    ctx: &Ctx,
    g0: &KernelState,
    decoder: Option<(&KernelState, Option<&[bool]>)>,
) -> Result<Walked, TheoryError> {
    // A tied head's backward records the walk for its contact ([`super::contact`]).
    let tape = RefCell::new(Tape::default());
    let tied = ctx.backward && ctx.spec.head == HeadKind::Tied;
    let ctx = &Ctx {
        tape: tied.then_some(&tape),
        ..*ctx
    };
    let spec = ctx.spec;
    let mut out = Vec::with_capacity(spec.head_layer());
    let mut z = stem::forward(ctx, g0);
    if spec.has_decoder() && spec.norm != Norm::None {
        // The encoder–decoder's LayerNorm right after the first PE (§II 2 B).
        z = ln::forward(ctx, &z, true);
    }
    grad2(&mut z, 1);
    let mut cur = record(ctx, 1, &z);
    for (b, kind) in spec.blocks.iter().enumerate() {
        let pre_ln = (spec.norm == Norm::Pre).then(|| ln::forward(ctx, &z, false));
        cur.ln = pre_ln.as_ref().map(|s| reported(ctx, s));
        if !z.finite() {
            return Ok(diverged(out, cur.layer));
        }
        out.push(cur);
        let mut obs = BlockObs::default();
        z = block(ctx, z, (b, *kind), pre_ln, &mut obs)?;
        grad2(&mut z, b + 2);
        cur = LayerPrediction {
            hidden: obs.hidden,
            attn: obs.attn,
            ..record(ctx, b + 2, &z)
        };
    }
    // The head's input: the final LN in `pre` mode (the memory s̃ with a decoder).
    let final_ln = (spec.norm == Norm::Pre).then(|| ln::forward(ctx, &z, false));
    cur.ln = final_ln.as_ref().map(|s| reported(ctx, s));
    if !z.finite() {
        return Ok(diverged(out, cur.layer));
    }
    out.push(cur);
    if spec.has_decoder() {
        let (g0_dec, keep) = decoder.ok_or_else(|| {
            TheoryError::Unsupported("the encoder–decoder's probe has no decoder tokens".into())
        })?;
        if let Some(s) = &final_ln {
            ctx.record(|| Step::Memory {
                lam: Lam::of(&z.k, &s.k, spec.ln_eps),
            });
        }
        let memory = final_ln.unwrap_or(z);
        return decode(ctx, memory, g0_dec, keep, out);
    }
    let l_max = spec.head_layer();
    let y = if spec.norm == Norm::Mlp {
        plain::forward(ctx, &z, l_max, ctx.hyper.head.c_eff, Group::Head)
    } else {
        head::forward(ctx, &z, final_ln.as_ref().unwrap_or(&z), g0)
    };
    if !y.finite() {
        return Ok(diverged(out, l_max));
    }
    out.push(record(ctx, l_max, &y));
    Ok(Walked {
        prediction: Prediction {
            layers: out,
            diverged_at: None,
        },
        ntk: y.ntk,
    })
}

/// The decoder's walk (module doc), from the memory s̃'s state to the head, appending its
/// layers to `out`.
fn decode(
    ctx: &Ctx,
    memory: State,
    g0: &KernelState,
    keep: Option<&[bool]>,
    mut out: Vec<LayerPrediction>,
) -> Result<Walked, TheoryError> {
    let spec = ctx.spec;
    // Decoder self-attention is always masked (1.18), whatever `model.causal` says.
    let causal = ModelSpec {
        causal: true,
        ..spec.clone()
    };
    let masked = Ctx {
        spec: &causal,
        ..*ctx
    };
    let be = spec.num_blocks();
    let stem_layer = spec.decoder_stem_layer();
    let mut z = stem::forward(ctx, g0);
    // The stem's injections: the shared embedding (and a stem bias) belong to layer 1, the
    // decoder's own b^PE to its stem layer.
    if let Some(c) = z.ntk.as_mut() {
        for e in c.iter_mut().filter(|e| e.what == What::Group(Group::Pe)) {
            e.layer = stem_layer;
        }
    }
    if spec.norm != Norm::None {
        // The LayerNorm right after the second PE (§II 2 B).
        z = ln::forward(ctx, &z, true);
    }
    let d = z.k.len();
    // The kernels carried out of the encoder come first, with Θ = 0 on the decoder's tokens
    // (they reach it only through cross-attention); their Θ̃ at s̃ is the memory's.
    let mem = Memory {
        f: memory.k.clone(),
        bars: memory
            .ntk
            .iter()
            .flatten()
            .map(|c| c.theta.clone())
            .collect(),
        keep: keep.map(<[bool]>::to_vec),
    };
    if let (Some(enc), Some(own)) = (memory.ntk, z.ntk.take()) {
        let mut all: Vec<Carried> = enc
            .iter()
            .map(|c| Carried::new(c.layer, c.what, Array2::zeros((d, d))))
            .collect();
        all.extend(own);
        z.ntk = Some(all);
    }
    grad2(&mut z, stem_layer);
    let mut cur = record(ctx, stem_layer, &z);
    for (j, kind) in spec.decoder.iter().enumerate() {
        let l = be + 3 + j;
        let pre_ln = (spec.norm == Norm::Pre).then(|| ln::forward(ctx, &z, false));
        cur.ln = pre_ln.as_ref().map(|s| reported(ctx, s));
        if !z.finite() {
            return Ok(diverged(out, cur.layer));
        }
        out.push(cur);
        let input = pre_ln.as_ref().unwrap_or(&z);
        let (mut hidden, mut attn, mut cross_tokens) = (None, None, None);
        let branch = match kind {
            DecoderBlock::Mlp => {
                let (branch, h) = mlp::branch(ctx, input, &z.k, l);
                hidden = Some(h);
                branch
            }
            DecoderBlock::Masked => {
                let (branch, stats) = attention::branch(&masked, input, &z, l)?;
                attn = Some(stats);
                branch
            }
            DecoderBlock::Cross => {
                let (branch, stats) = cross::branch(ctx, input, &mem, l)?;
                attn = Some(stats);
                cross_tokens = Some((input.k.tokens, mem.f.tokens));
                branch
            }
        };
        let sum = residual::add(ctx, z, branch);
        z = if spec.norm == Norm::Post {
            ln::forward(ctx, &sum, true)
        } else {
            sum
        };
        grad2(&mut z, l);
        cur = LayerPrediction {
            hidden,
            attn,
            cross: cross_tokens,
            ..record(ctx, l, &z)
        };
    }
    let final_ln = (spec.norm == Norm::Pre).then(|| ln::forward(ctx, &z, false));
    cur.ln = final_ln.as_ref().map(|s| reported(ctx, s));
    if !z.finite() {
        return Ok(diverged(out, cur.layer));
    }
    out.push(cur);
    let l_max = spec.head_layer();
    let y = head::forward(ctx, &z, final_ln.as_ref().unwrap_or(&z), g0);
    if !y.finite() {
        return Ok(diverged(out, l_max));
    }
    out.push(record(ctx, l_max, &y));
    Ok(Walked {
        prediction: Prediction {
            layers: out,
            diverged_at: None,
        },
        ntk: y.ntk,
    })
}
