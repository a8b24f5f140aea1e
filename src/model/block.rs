//! The residual-block interface: every block kind is one type implementing
//! [`ResidualBlock`] in its own file, one line in the `registry!` below (which makes the
//! `Block` and `InnerTrace` variants and their dispatch), and one line in [`Block::sample`]
//! that says which configured kind builds it.
//!
//! A block sees the model through a [`Ctx`]: the spec, the parameters, how weights are
//! realized (dense or the conditional sampler), the probe, and an optional second input
//! stream for blocks that read one (cross-attention reads the encoder's memory).
//! The residual add and the LayerNorm placement are the model's (`Network::forward`), not
//! the block's: a block maps its input s to its branch output r = R(s).

use std::fmt::Debug;

use ndarray::{Array2, ArrayView2};

use super::init::Stream;
use super::{GradSink, Params, Probe, Real, WeightOps, affine, attention, cross, mlp};
use crate::config::{BlockKind, DecoderBlock, ModelSpec, Norm};

/// Everything a block reads besides its own parameter indices and its input.
pub struct Ctx<'a, F = f64> {
    pub spec: &'a ModelSpec,
    pub params: &'a Params<F>,
    /// The weight realization; the backward pass must get the one its forward pass used.
    pub ops: &'a mut dyn WeightOps<F>,
    /// S sequences × T tokens (the rows of every activation).
    pub probe: &'a Probe<F>,
    /// A second input stream, (S·T_mem × n): the encoder's memory that a cross-attention
    /// block attends to. `None` for the shipped blocks, which read only the residual stream.
    /// A block that reads it adds ∂f/∂memory into `memory_grad` in its backward pass.
    pub memory: Option<ArrayView2<'a, F>>,
    /// The gradient accumulator for `memory` (same shape), when the caller wants it.
    pub memory_grad: Option<Array2<F>>,
    /// Which memory tokens a cross-attention block may attend to (false: padding), one per
    /// row of `memory`; `None`: all.
    pub memory_mask: Option<&'a [bool]>,
}

impl<'a, F: Real> Ctx<'a, F> {
    /// A context without a second input stream.
    pub fn new(
        spec: &'a ModelSpec,
        params: &'a Params<F>,
        ops: &'a mut dyn WeightOps<F>,
        probe: &'a Probe<F>,
    ) -> Self {
        Ctx {
            spec,
            params,
            ops,
            probe,
            memory: None,
            memory_grad: None,
            memory_mask: None,
        }
    }

    /// Y = X Wᵀ + b for weight `w` and optional bias `b`.
    pub fn affine(&mut self, w: usize, b: Option<usize>, x: ArrayView2<F>) -> Array2<F> {
        affine(self.params, self.ops, w, b, x)
    }

    /// [`affine`](Self::affine) for weights that read the same X, in order
    /// ([`WeightOps::fwd_shared`](super::WeightOps::fwd_shared)).
    pub fn affine_shared<const K: usize>(
        &mut self,
        ws: [(usize, Option<usize>); K],
        x: ArrayView2<F>,
    ) -> [Array2<F>; K] {
        let mut ys = self
            .ops
            .fwd_shared(self.params, &ws.map(|(w, _)| w), x)
            .into_iter();
        ws.map(|(_, b)| {
            let mut y = ys.next().expect("one output per weight");
            if let Some(b) = b {
                y += &self.params.get(b).row(0);
            }
            y
        })
    }

    /// Y = X Wᵀ for weight `w`.
    pub fn fwd(&mut self, w: usize, x: ArrayView2<F>) -> Array2<F> {
        self.ops.fwd(self.params, w, x)
    }

    /// ∂X = G W for weight `w`.
    pub fn bwd(&mut self, w: usize, g: ArrayView2<F>) -> Array2<F> {
        self.ops.bwd(self.params, w, g)
    }

    /// acc += G W for weight `w` (an input read by several weights).
    pub fn bwd_add(&mut self, w: usize, g: ArrayView2<F>, acc: &mut Array2<F>) {
        self.ops.bwd_add(self.params, w, g, acc)
    }
}

/// A residual block's branch R: s (D × n) → r (D × n), its hand-written backward pass and
/// how it draws its parameters (from its file's `hyper`).
pub trait ResidualBlock: Clone + Debug {
    /// What the forward pass keeps for the backward pass and the observables.
    type Cache<F: Real>: Clone + Debug;

    /// Draws the block's parameters for `layer` into `p`, in a fixed order.
    fn sample(spec: &ModelSpec, layer: usize, p: &mut Params, rng: &mut Stream) -> Self;

    /// r = R(s).
    fn forward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
    ) -> (Array2<F>, Self::Cache<F>);

    /// ∂f/∂s from ∂f/∂r = g, in the reverse order of `forward`; parameter terms go to `sink`.
    fn backward<F: Real>(
        &self,
        cx: &mut Ctx<'_, F>,
        s: ArrayView2<F>,
        cache: &Self::Cache<F>,
        g: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Array2<F>;
}

/// A block together with the cache of its forward pass: the backward pass dispatches on
/// this one value, so block and cache cannot disagree.
#[derive(Clone, Debug)]
pub struct Traced<B: ResidualBlock, F: Real> {
    pub block: B,
    pub cache: B::Cache<F>,
}

/// Makes the `Block` enum (one variant per block type), the `InnerTrace` enum (the same
/// variants holding a [`Traced`]) and the one forward and one backward dispatch.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($ty:ty)),+ $(,)?) => {
        /// One residual block's parameters.
        #[derive(Clone, Debug)]
        pub enum Block {
            $($(#[$doc])* $variant($ty)),+
        }

        /// One block's forward pass, kept for its backward pass and the observables.
        #[derive(Clone, Debug)]
        pub enum InnerTrace<F: Real = f64> {
            $($variant(Box<Traced<$ty, F>>)),+
        }

        impl Block {
            /// r = R(s) and the trace its backward pass needs.
            pub fn forward<F: Real>(
                &self,
                cx: &mut Ctx<'_, F>,
                s: ArrayView2<F>,
            ) -> (Array2<F>, InnerTrace<F>) {
                match self {
                    $(Block::$variant(b) => {
                        let (r, cache) = b.forward(cx, s);
                        let traced = Traced { block: b.clone(), cache };
                        (r, InnerTrace::$variant(Box::new(traced)))
                    })+
                }
            }
        }

        impl<F: Real> InnerTrace<F> {
            /// ∂f/∂s from ∂f/∂r = g for the block that made this trace.
            pub fn backward(
                &self,
                cx: &mut Ctx<'_, F>,
                s: ArrayView2<F>,
                g: ArrayView2<F>,
                sink: &mut impl GradSink<F>,
            ) -> Array2<F> {
                match self {
                    $(InnerTrace::$variant(t) => t.block.backward(cx, s, &t.cache, g, sink)),+
                }
            }
        }
    };
}

registry! {
    /// Multi-head self-attention (1.13)–(1.19).
    Attn(attention::Attention),
    /// The Transformer MLP (1.20)–(1.21).
    Mlp(mlp::Mlp),
    /// The book's layer z^{ℓ+1} = b + W σ(z^ℓ) (`mlp` mode).
    Book(mlp::BookLayer),
    /// Encoder–decoder cross-attention (2.2)–(2.4); reads `Ctx::memory`.
    Cross(cross::CrossAttention),
}

impl Block {
    /// The registry from configured kinds to block types: draws block `layer`.
    pub fn sample(
        spec: &ModelSpec,
        kind: BlockKind,
        layer: usize,
        p: &mut Params,
        rng: &mut Stream,
    ) -> Block {
        match (spec.norm, kind) {
            (Norm::Mlp, _) => Block::Book(mlp::BookLayer::sample(spec, layer, p, rng)),
            (_, BlockKind::Attn) => Block::Attn(attention::Attention::sample(spec, layer, p, rng)),
            (_, BlockKind::Mlp) => Block::Mlp(mlp::Mlp::sample(spec, layer, p, rng)),
        }
    }

    /// The decoder's registry (§II 2 B): draws decoder block `layer`. Its self-attention is
    /// masked (causal) whatever `model.causal` says of the encoder's.
    pub fn sample_decoder(
        spec: &ModelSpec,
        kind: DecoderBlock,
        layer: usize,
        p: &mut Params,
        rng: &mut Stream,
    ) -> Block {
        match kind {
            DecoderBlock::Masked => {
                let mut a = attention::Attention::sample(spec, layer, p, rng);
                a.causal = true;
                Block::Attn(a)
            }
            DecoderBlock::Cross => Block::Cross(cross::CrossAttention::sample(spec, layer, p, rng)),
            DecoderBlock::Mlp => Block::Mlp(mlp::Mlp::sample(spec, layer, p, rng)),
        }
    }
}
