//! The one walk: the theory's forward recursion over the configured blocks, in the order of
//! the model's `Network::forward`, carrying the whole [`State`] (kernel, NTKs, vertex)
//! through each block once.
//!
//! stem → for each block: [pre: LN] → branch (MLP or MHSA) → residual add → [post: LN]
//! (`mlp` mode: the book's plain layer instead) → [pre: final LN] → head (`mlp` mode: a
//! plain layer with the head's constant). After the stem and after every block the walk
//! injects the `grad2` probe of that layer. Each layer's forward observables are recorded
//! on the way ([`LayerPrediction`]).

use ndarray::Array2;

use super::TheoryError;
use super::attention::{self, AttnStats};
use super::state::{Carried, Ctx, KernelState, State, What};
use super::{head, ln, mlp, plain, residual, stem};
use crate::config::{BlockKind, Norm};
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
            let (branch, hidden) = mlp::branch(ctx, input, l);
            rec.hidden = Some(hidden);
            branch
        }
        BlockKind::Attn => {
            let (branch, stats) = attention::branch(ctx, input, &z, b, l)?;
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
/// kernel G⁰ through the head.
pub fn walk(ctx: &Ctx, g0: &KernelState) -> Result<Walked, TheoryError> {
    let spec = ctx.spec;
    let mut out = Vec::with_capacity(spec.num_blocks() + 2);
    let mut z = stem::forward(ctx, g0);
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
    // The head's input: the final LN in `pre` mode.
    let final_ln = (spec.norm == Norm::Pre).then(|| ln::forward(ctx, &z, false));
    cur.ln = final_ln.as_ref().map(|s| reported(ctx, s));
    if !z.finite() {
        return Ok(diverged(out, cur.layer));
    }
    out.push(cur);
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
