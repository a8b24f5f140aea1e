//! The one model definition: a pre-/post-/no-LN Transformer or the book's plain MLP,
//! batched over S sequences × T tokens, in f64 or f32 (SPEC §1, the paper's §I 0; see `real`).
//!
//! Dimension legend (as in llm.c): D = S·T tokens of the probe set, δ = sequence·T + token;
//! n width; H heads; C = n/H channels per head; M MLP multiplier; B residual blocks;
//! L = B + 2 the head's layer. Activations are (D × width) with one row per token.
//! Weights are stored (fan_out × fan_in), as in PyTorch, so a layer is Y = X Wᵀ.
//!
//! Layers are numbered as in the paper: ℓ = 1 the stem output, ℓ = 2 … B+1 the residual
//! stream after each block, ℓ = L the head output. Every parameter belongs to the layer
//! its block produces.

pub mod activation;
pub mod attention;
pub mod block;
pub mod cross;
pub mod fastmath;
pub mod group;
pub mod head;
pub mod hyper;
pub mod init;
pub mod linalg;
pub mod ln;
pub mod mlp;
pub mod panel;
pub mod prepacked;
pub mod real;
pub mod residual;
pub mod skinny;
pub mod stem;

use std::borrow::Cow;

use ndarray::{Array2, ArrayView2};

use crate::config::{InitDist, ModelSpec, Norm};
pub use block::{Block, Ctx, InnerTrace, ResidualBlock, Traced};
use hyper::Weight;
use init::Stream;
pub use real::Real;

/// Parameter groups of SPEC §2; the NTK is reported per group. Their names, keys, labels and
/// λ rules are in the one table [`group::GROUPS`], which follows this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Stem,
    Pe,
    Cls,
    Q,
    K,
    V,
    U,
    W,
    X,
    Head,
    Bias,
}

impl Group {
    /// Every group, in the order of the table [`group::GROUPS`].
    pub const ALL: [Group; group::GROUPS.len()] = {
        let mut all = [Group::Stem; group::GROUPS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = group::GROUPS[i].group;
            i += 1;
        }
        all
    };

    /// The public name: the configuration key `model.variances.<name>` and the CSV rows
    /// `ntk_<name>`.
    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// One parameter tensor. Biases are (1 × n); the positional embedding is (T × n);
/// the word embedding is (n × vocab).
#[derive(Clone, Debug)]
pub struct Param<F = f64> {
    pub group: Group,
    /// The layer its block produces.
    pub layer: usize,
    pub name: String,
    /// The values; empty (0 × 0) for a weight the conditional sampler never materializes.
    pub value: Array2<F>,
    /// (rows, cols) = (fan_out, fan_in) for weights.
    pub shape: (usize, usize),
    /// The variance it was drawn with.
    pub var: f64,
    /// Fan-in of a weight (its SGD learning-rate factor is 1/fan_in); 1 for biases and
    /// embeddings.
    pub fan_in: usize,
}

impl<F: Real> Param<F> {
    /// Whether the values exist (false for a lazily sampled weight).
    pub fn is_materialized(&self) -> bool {
        self.value.dim() == self.shape
    }

    /// Its SGD learning-rate factor λ (1/fan-in for weights, 1 for biases and embeddings).
    pub fn lambda(&self) -> f64 {
        hyper::sgd_factor(self.fan_in)
    }
}

/// All parameters of one network, in the order they are drawn.
#[derive(Clone, Debug, Default)]
pub struct Params<F = f64> {
    pub list: Vec<Param<F>>,
    /// Leave weights that are used as Y = X Wᵀ once forward unmaterialized: the
    /// conditional sampler draws only what the data sees.
    pub lazy: bool,
}

impl Params {
    /// Records a tensor drawn as `w` says (`value` is empty when left to the conditional
    /// sampler).
    fn add(
        &mut self,
        group: Group,
        layer: usize,
        name: String,
        w: Weight,
        value: Array2<f64>,
    ) -> usize {
        self.list.push(Param {
            group,
            layer,
            name,
            value,
            shape: w.shape,
            var: w.var,
            fan_in: w.lr_fan_in,
        });
        self.list.len() - 1
    }

    /// A weight used once forward as Y = X Wᵀ: drawn now, or left to the conditional
    /// sampler when `lazy`.
    fn linear(
        &mut self,
        group: Group,
        layer: usize,
        name: String,
        w: Weight,
        spec: &ModelSpec,
        rng: &mut Stream,
    ) -> usize {
        // Only Gaussian weights have the conditional law; uniform ones are materialized.
        if self.lazy && spec.init_of(group) == InitDist::Gaussian {
            self.add(group, layer, name, w, Array2::zeros((0, 0)))
        } else {
            self.table(group, layer, name, w, spec, rng)
        }
    }

    /// A tensor that is always drawn (a lookup table, a positional embedding, a bias).
    fn table(
        &mut self,
        group: Group,
        layer: usize,
        name: String,
        w: Weight,
        spec: &ModelSpec,
        rng: &mut Stream,
    ) -> usize {
        let value = init::draw(w.shape.0, w.shape.1, w.var, spec.init_of(group), rng);
        self.add(group, layer, name, w, value)
    }

    /// A bias (1 × len) with variance C_b.
    fn bias(
        &mut self,
        spec: &ModelSpec,
        layer: usize,
        name: String,
        len: usize,
        rng: &mut Stream,
    ) -> usize {
        let w = Weight::lookup(spec.var.bias, 1, len);
        self.table(Group::Bias, layer, name, w, spec, rng)
    }
}

impl<F: Real> Params<F> {
    pub fn get(&self, i: usize) -> &Array2<F> {
        &self.list[i].value
    }

    /// Zero arrays shaped like every parameter (a gradient buffer).
    pub fn zeros_like(&self) -> Vec<Array2<F>> {
        self.list.iter().map(|p| Array2::zeros(p.shape)).collect()
    }

    /// The same parameters in another precision (values rounded to nearest).
    pub fn cast<G: Real>(&self) -> Params<G> {
        Params {
            list: self
                .list
                .iter()
                .map(|p| Param {
                    group: p.group,
                    layer: p.layer,
                    name: p.name.clone(),
                    value: p.value.mapv(|x| G::of(x.wide())),
                    shape: p.shape,
                    var: p.var,
                    fan_in: p.fan_in,
                })
                .collect(),
            lazy: self.lazy,
        }
    }
}

/// How the weights of linear layers act: Y = X Wᵀ forward and ∂X = G W backward. The
/// dense path multiplies materialized matrices; the conditional sampler (`mc::conditional`)
/// draws Y and ∂X from their exact conditional laws without ever forming W.
pub trait WeightOps<F = f64> {
    /// Y = X Wᵀ for weight `id`, X (D × fan_in).
    fn fwd(&mut self, p: &Params<F>, id: usize, x: ArrayView2<F>) -> Array2<F>;
    /// ∂X = G W for weight `id`, G (D × fan_out).
    fn bwd(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>) -> Array2<F>;
    /// acc += G W for weight `id`: the cotangent of an input several weights read (s, read
    /// by Q, K and V), summed in place.
    fn bwd_add(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>, acc: &mut Array2<F>)
    where
        F: Real,
    {
        *acc += &self.bwd(p, id, g);
    }
    /// Y_k = X W_kᵀ for weights that read the same X (Q, K and V; cross-attention's K and
    /// V): the conditional sampler factors X once for all of them.
    fn fwd_shared(&mut self, p: &Params<F>, ids: &[usize], x: ArrayView2<F>) -> Vec<Array2<F>> {
        ids.iter().map(|&id| self.fwd(p, id, x)).collect()
    }
}

/// Y = X Wᵀ + b: a linear use of weight `w` with an optional bias (1 × fan_out).
pub fn affine<F: Real>(
    p: &Params<F>,
    ops: &mut dyn WeightOps<F>,
    w: usize,
    b: Option<usize>,
    x: ArrayView2<F>,
) -> Array2<F> {
    let mut y = ops.fwd(p, w, x);
    if let Some(b) = b {
        y += &p.get(b).row(0);
    }
    y
}

/// Materialized weights: plain matrix products.
pub struct Materialized;

impl<F: Real> WeightOps<F> for Materialized {
    fn fwd(&mut self, p: &Params<F>, id: usize, x: ArrayView2<F>) -> Array2<F> {
        linalg::mm_t(x, p.get(id).view())
    }
    fn bwd(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>) -> Array2<F> {
        linalg::mm(g, p.get(id).view())
    }
}

/// How one use of a parameter contributes to its gradient, given the cotangent `grad` of
/// the use's output. The backward pass emits these; a [`GradSink`] decides whether to
/// materialize ∂f/∂θ (the trainer, gradient checks) or only contract Gram matrices (the
/// Monte Carlo NTK), so one backward pass serves both.
pub enum GradTerm<'a, F = f64> {
    /// Y = scale · X Wᵀ with W (fan_out × fan_in): ∂W += scale · Gᵀ X.
    Linear {
        input: ArrayView2<'a, F>,
        grad: ArrayView2<'a, F>,
        scale: F,
    },
    /// Y = scale · X W with W (fan_in × fan_out), a transposed use (the tied head):
    /// ∂W += scale · Xᵀ G.
    LinearT {
        input: ArrayView2<'a, F>,
        grad: ArrayView2<'a, F>,
        scale: F,
    },
    /// Y_δ += b for every row: ∂b += Σ_δ G_δ.
    Bias { grad: ArrayView2<'a, F> },
    /// Y_{(s,t)} += P_t: ∂P_t += Σ_s G_{(s,t)}.
    Positional {
        grad: ArrayView2<'a, F>,
        tokens: usize,
    },
    /// Y_δ = W[:, id_δ] with W (n × vocab): ∂W[:, id_δ] += G_δ.
    Embedding {
        grad: ArrayView2<'a, F>,
        ids: &'a [usize],
    },
}

impl<'a, F: Real> GradTerm<'a, F> {
    /// Y = X Wᵀ (scale 1): ∂W += Gᵀ X.
    pub fn linear(input: ArrayView2<'a, F>, grad: ArrayView2<'a, F>) -> Self {
        GradTerm::Linear {
            input,
            grad,
            scale: F::one(),
        }
    }

    /// This term's ∂f/∂θ alone, in new memory shaped `shape` (the parameter's): the bits of
    /// `accumulate` into zeros, without the zeroing pass for the weights' products.
    pub fn first(&self, shape: (usize, usize)) -> Array2<F> {
        let g = match self {
            GradTerm::Linear { input, grad, scale } => linalg::product(*scale, grad.t(), *input),
            GradTerm::LinearT { input, grad, scale } => linalg::product(*scale, input.t(), *grad),
            _ => {
                let mut acc = Array2::zeros(shape);
                self.accumulate(&mut acc);
                acc
            }
        };
        assert_eq!(
            g.dim(),
            shape,
            "a gradient term shaped unlike its parameter"
        );
        g
    }

    /// Adds this term's ∂f/∂θ into `acc` (shaped like the parameter).
    pub fn accumulate(&self, acc: &mut Array2<F>) {
        match self {
            GradTerm::Linear { input, grad, scale } => {
                linalg::gemm(*scale, grad.t(), *input, F::one(), &mut acc.view_mut());
            }
            GradTerm::LinearT { input, grad, scale } => {
                linalg::gemm(*scale, input.t(), *grad, F::one(), &mut acc.view_mut());
            }
            GradTerm::Bias { grad } => {
                for row in grad.rows() {
                    acc.row_mut(0).zip_mut_with(&row, |a, &g| *a += g);
                }
            }
            GradTerm::Positional { grad, tokens } => {
                for (d, row) in grad.rows().into_iter().enumerate() {
                    acc.row_mut(d % tokens).zip_mut_with(&row, |a, &g| *a += g);
                }
            }
            GradTerm::Embedding { grad, ids } => {
                for (row, &id) in grad.rows().into_iter().zip(ids.iter()) {
                    acc.column_mut(id).zip_mut_with(&row, |a, &g| *a += g);
                }
            }
        }
    }
}

/// Receives the parameter-gradient terms of a backward pass.
pub trait GradSink<F = f64> {
    fn term(&mut self, param: usize, term: GradTerm<'_, F>);
}

/// Materializes ∂f/∂θ for every parameter.
///
/// A parameter's first weight term is written into new memory (`GradTerm::first`), later
/// terms are added to it; parameters no term reached are zeros. Zeroing every gradient
/// first, then adding, was 3% of an f32 training step (19 MB per thread at width 256).
pub struct ParamGrads<F = f64> {
    slots: Vec<Option<Array2<F>>>,
    shapes: Vec<(usize, usize)>,
}

impl<F: Real> ParamGrads<F> {
    pub fn new(params: &Params<F>) -> Self {
        ParamGrads {
            slots: params.list.iter().map(|_| None).collect(),
            shapes: params.list.iter().map(|p| p.shape).collect(),
        }
    }

    /// ∂f/∂θ of every parameter, in `Params` order.
    pub fn into_list(self) -> Vec<Array2<F>> {
        self.slots
            .into_iter()
            .zip(self.shapes)
            .map(|(g, shape)| g.unwrap_or_else(|| Array2::zeros(shape)))
            .collect()
    }
}

impl<F: Real> GradSink<F> for ParamGrads<F> {
    fn term(&mut self, param: usize, term: GradTerm<'_, F>) {
        match &mut self.slots[param] {
            Some(acc) => term.accumulate(acc),
            slot => *slot = Some(term.first(self.shapes[param])),
        }
    }
}

/// A sink that ignores parameters (gradients of the stream only).
pub struct NoParams;

impl<F> GradSink<F> for NoParams {
    fn term(&mut self, _: usize, _: GradTerm<'_, F>) {}
}

/// The probe set: S sequences of T tokens, either vectors (dense stem) or token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe<F = f64> {
    pub sequences: usize,
    pub tokens: usize,
    /// (D × n_in) for the dense stem.
    pub x: Option<Array2<F>>,
    /// D ids for the embedding stem.
    pub ids: Option<Vec<usize>>,
    /// The decoder's probe of an encoder–decoder model: the same S sequences, T_dec tokens
    /// each (its own `decoder` is `None`).
    pub decoder: Option<Box<Probe<F>>>,
    /// Which of the D tokens cross-attention may read (false: padding, `inputs.pad_id`);
    /// `None`: all.
    pub keep: Option<Vec<bool>>,
}

impl<F: Real> Probe<F> {
    /// The same probe in another precision.
    pub fn cast<G: Real>(&self) -> Probe<G> {
        Probe {
            sequences: self.sequences,
            tokens: self.tokens,
            x: self.x.as_ref().map(|x| x.mapv(|v| G::of(v.wide()))),
            ids: self.ids.clone(),
            decoder: self.decoder.as_ref().map(|d| Box::new(d.cast())),
            keep: self.keep.clone(),
        }
    }

    /// The probe as the network `spec` sees it. With the class token ((1.8)) each sequence
    /// gains a slot at t = 0 whose input vector is zero (the stem puts c + b^PE_0 there), so
    /// token t of the probe is token t + 1 of the network; unchanged otherwise, or when the
    /// slot is already there.
    pub fn for_model(&self, spec: &ModelSpec) -> Cow<'_, Probe<F>> {
        let t = self.tokens;
        if !spec.class_token || t == spec.seq_len() {
            return Cow::Borrowed(self);
        }
        let x = self.x.as_ref().map(|x| {
            let mut out = Array2::zeros((self.sequences * (t + 1), x.ncols()));
            for (d, row) in x.rows().into_iter().enumerate() {
                out.row_mut((d / t) * (t + 1) + d % t + 1).assign(&row);
            }
            out
        });
        Cow::Owned(Probe {
            sequences: self.sequences,
            tokens: t + 1,
            x,
            ids: self.ids.clone(),
            decoder: self.decoder.clone(),
            keep: self.keep.clone(),
        })
    }

    /// D = S·T.
    pub fn len(&self) -> usize {
        self.sequences * self.tokens
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one block's forward pass leaves for the backward pass and for the observables.
#[derive(Clone, Debug)]
pub struct BlockTrace<F: Real = f64> {
    /// LN of the block's input (pre mode) or of its sum (post mode).
    pub ln: Option<ln::Cache<F>>,
    pub inner: InnerTrace<F>,
}

/// What an encoder–decoder's forward pass adds to its [`Trace`]: the three extra
/// LayerNorms of §II 2 B and the memory s̃.
#[derive(Clone, Debug)]
pub struct DecoderTrace<F: Real = f64> {
    /// B_e: `Trace::blocks` holds the encoder's blocks, then the decoder's.
    pub encoder_blocks: usize,
    /// LN after the encoder's PE (`None` in `none` mode); z¹ is its output.
    pub stem_ln: Option<ln::Cache<F>>,
    /// LN after the encoder stack (pre mode): s̃ = LN(z^{B_e+1}).
    pub memory_ln: Option<ln::Cache<F>>,
    /// s̃, what every cross-attention block reads ((S·T) × n).
    pub memory: Array2<F>,
    /// LN after the decoder's PE (`None` in `none` mode); z^{B_e+2} is its output.
    pub stem_ln_dec: Option<ln::Cache<F>>,
}

/// Every site of a forward pass: the residual stream z^ℓ (ℓ = 1 … B+1, or 1 … B_e+B_d+2
/// with a decoder), each block's internals (the encoder's, then the decoder's), the final
/// LN and the output z^L.
#[derive(Clone, Debug)]
pub struct Trace<F: Real = f64> {
    /// resid[ℓ − 1] = z^ℓ, (D × n), or (D_dec × n) at decoder layers.
    pub resid: Vec<Array2<F>>,
    pub blocks: Vec<BlockTrace<F>>,
    /// The encoder–decoder's extra sites; `None` for an encoder-only model.
    pub decoder: Option<DecoderTrace<F>>,
    /// s^{L−1} = LN(z^{B+1}) in pre mode.
    pub final_ln: Option<ln::Cache<F>>,
    pub head: head::Cache<F>,
    /// z^L: (D × n_out), or (S × n_out) for a pooled head.
    pub out: Array2<F>,
}

impl<F: Real> Trace<F> {
    /// The LN output s^ℓ feeding block ℓ (pre mode) or the head (ℓ = B+1); with a decoder,
    /// s̃ at ℓ = B_e+1 and the decoder's final LN at ℓ = B_e+B_d+2.
    pub fn ln_at(&self, layer: usize) -> Option<&Array2<F>> {
        if let Some(d) = &self.decoder {
            let (be, nb) = (d.encoder_blocks, self.blocks.len());
            return if layer <= be {
                self.blocks[layer - 1].ln.as_ref().map(|c| &c.s)
            } else if layer == be + 1 {
                d.memory_ln.as_ref().map(|c| &c.s)
            } else if layer <= nb + 1 {
                self.blocks[layer - 2].ln.as_ref().map(|c| &c.s)
            } else {
                self.final_ln.as_ref().map(|c| &c.s)
            };
        }
        if layer <= self.blocks.len() {
            self.blocks[layer - 1].ln.as_ref().map(|c| &c.s)
        } else {
            self.final_ln.as_ref().map(|c| &c.s)
        }
    }
}

/// A network with materialized weights, computing in f64 unless cast (see `real`).
#[derive(Clone, Debug)]
pub struct Network<F = f64> {
    pub spec: ModelSpec,
    pub params: Params<F>,
    pub stem: stem::Stem,
    /// The encoder's blocks (all blocks of an encoder-only model).
    pub blocks: Vec<Block>,
    /// The decoder stack of an encoder–decoder (§II 2 B).
    pub decoder: Option<Decoder>,
    pub head: head::Head,
}

/// The decoder stack: its positional embedding (T_dec × n, group `pe`, layer B_e + 2) and
/// its blocks (layers B_e + 3 …). The word embedding is the stem's.
#[derive(Clone, Debug)]
pub struct Decoder {
    pub pe: Option<usize>,
    pub blocks: Vec<Block>,
}

impl Network {
    /// Draws every parameter from `rng`, stem first, then blocks in order, then the head.
    pub fn sample(spec: &ModelSpec, rng: &mut Stream) -> Network {
        Self::sample_with(spec, rng, false)
    }

    /// As `sample`; with `lazy`, weights used once as Y = X Wᵀ are left for the
    /// conditional sampler to draw as the data meets them.
    pub fn sample_with(spec: &ModelSpec, rng: &mut Stream, lazy: bool) -> Network {
        let mut params = Params {
            list: Vec::new(),
            lazy,
        };
        let stem = stem::Stem::sample(spec, &mut params, rng);
        let blocks = spec
            .blocks
            .iter()
            .enumerate()
            .map(|(b, &kind)| Block::sample(spec, kind, b + 2, &mut params, rng))
            .collect();
        // Drawn after the encoder, so an encoder-only model's stream is unchanged.
        let decoder = spec.has_decoder().then(|| {
            let layer = spec.decoder_stem_layer();
            let pe = stem::hyper(spec).pe.map(|var| {
                let table = hyper::Weight::lookup(var, spec.decoder_tokens, spec.width);
                params.table(Group::Pe, layer, "decoder.pe".into(), table, spec, rng)
            });
            let blocks = spec
                .decoder
                .iter()
                .enumerate()
                .map(|(b, &kind)| {
                    Block::sample_decoder(spec, kind, layer + 1 + b, &mut params, rng)
                })
                .collect();
            Decoder { pe, blocks }
        });
        let head = head::Head::sample(spec, &stem, &mut params, rng);
        Network {
            spec: spec.clone(),
            params,
            stem,
            blocks,
            decoder,
            head,
        }
    }
}

impl<F: Real> Network<F> {
    /// The same network computing in another precision (parameters rounded to nearest).
    pub fn cast<G: Real>(&self) -> Network<G> {
        Network {
            spec: self.spec.clone(),
            params: self.params.cast(),
            stem: self.stem.clone(),
            blocks: self.blocks.clone(),
            decoder: self.decoder.clone(),
            head: self.head.clone(),
        }
    }

    /// The forward pass with materialized weights, keeping every site.
    pub fn forward(&self, probe: &Probe<F>) -> Trace<F> {
        self.forward_with(probe, &mut Materialized)
    }

    /// The forward pass with the given weight realization.
    pub fn forward_with(&self, probe: &Probe<F>, ops: &mut dyn WeightOps<F>) -> Trace<F> {
        if let Some(dec) = &self.decoder {
            return self.forward_encdec(dec, probe, ops);
        }
        let spec = &self.spec;
        let probe = probe.for_model(spec);
        let mut cx = Ctx::new(spec, &self.params, ops, &probe);
        let mut z = self.stem.forward(&mut cx);
        let mut resid = Vec::with_capacity(self.blocks.len() + 1);
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (next, bt) = residual_forward(&mut cx, z.view(), |cx, s| block.forward(cx, s));
            resid.push(z);
            blocks.push(bt);
            z = next;
        }
        let final_ln = (spec.norm == Norm::Pre).then(|| ln::forward(z.view(), spec.ln_eps));
        let head_in = final_ln.as_ref().map_or(z.view(), |c| c.s.view());
        let (out, head) = self.head.forward(&mut cx, head_in);
        resid.push(z);
        Trace {
            resid,
            blocks,
            decoder: None,
            final_ln,
            head,
            out,
        }
    }

    /// The encoder–decoder's forward pass (§II 2 B): the stems on both inputs, LN after
    /// each PE, the encoder stack, s̃ = LN(z^{B_e+1}) (pre mode), the decoder stack with
    /// every cross-attention block reading s̃, the final LN and the head on the decoder.
    fn forward_encdec(
        &self,
        dec: &Decoder,
        probe: &Probe<F>,
        ops: &mut dyn WeightOps<F>,
    ) -> Trace<F> {
        let spec = &self.spec;
        let dp = probe
            .decoder
            .as_deref()
            .expect("an encoder–decoder's probe has the decoder's inputs");
        let stem_ln =
            |z: &Array2<F>| (spec.norm != Norm::None).then(|| ln::forward(z.view(), spec.ln_eps));
        let total = self.blocks.len() + dec.blocks.len();
        let mut resid = Vec::with_capacity(total + 2);
        let mut blocks = Vec::with_capacity(total);
        let mut cx = Ctx::new(spec, &self.params, &mut *ops, probe);
        let (ze, zd) = self.stem.forward_pair(&mut cx, dp, dec.pe);
        let enc_ln = stem_ln(&ze);
        let mut z = enc_ln.as_ref().map_or(ze, |c| c.s.clone());
        for block in &self.blocks {
            let (next, bt) = residual_forward(&mut cx, z.view(), |cx, s| block.forward(cx, s));
            resid.push(z);
            blocks.push(bt);
            z = next;
        }
        let memory_ln = (spec.norm == Norm::Pre).then(|| ln::forward(z.view(), spec.ln_eps));
        let memory = memory_ln
            .as_ref()
            .map_or_else(|| z.clone(), |c| c.s.clone());
        resid.push(z);
        let dec_ln = stem_ln(&zd);
        let mut z = dec_ln.as_ref().map_or(zd, |c| c.s.clone());
        let mut cx = Ctx::new(spec, &self.params, ops, dp);
        cx.memory = Some(memory.view());
        cx.memory_mask = probe.keep.as_deref();
        for block in &dec.blocks {
            let (next, bt) = residual_forward(&mut cx, z.view(), |cx, s| block.forward(cx, s));
            resid.push(z);
            blocks.push(bt);
            z = next;
        }
        let final_ln = (spec.norm == Norm::Pre).then(|| ln::forward(z.view(), spec.ln_eps));
        let head_in = final_ln.as_ref().map_or(z.view(), |c| c.s.view());
        let (out, head) = self.head.forward(&mut cx, head_in);
        drop(cx);
        resid.push(z);
        Trace {
            resid,
            blocks,
            decoder: Some(DecoderTrace {
                encoder_blocks: self.blocks.len(),
                stem_ln: enc_ln,
                memory_ln,
                memory,
                stem_ln_dec: dec_ln,
            }),
            final_ln,
            head,
            out,
        }
    }

    /// The backward pass for the cotangent `dout` on z^L, in the reverse order of
    /// `forward`. Returns ∂f/∂z^ℓ for ℓ = 1 … B+1 (index ℓ − 1) and sends every
    /// parameter's gradient terms to `sink`.
    pub fn backward(
        &self,
        trace: &Trace<F>,
        probe: &Probe<F>,
        dout: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
    ) -> Vec<Array2<F>> {
        self.backward_with(trace, probe, dout, sink, &mut Materialized)
    }

    /// The backward pass with the given weight realization (the one the forward used).
    pub fn backward_with(
        &self,
        trace: &Trace<F>,
        probe: &Probe<F>,
        dout: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
        ops: &mut dyn WeightOps<F>,
    ) -> Vec<Array2<F>> {
        if self.decoder.is_some() {
            return self.backward_encdec(trace, probe, dout, sink, ops);
        }
        let probe = probe.for_model(&self.spec);
        let mut cx = Ctx::new(&self.spec, &self.params, ops, &probe);
        let nb = trace.blocks.len();
        let mut grads = vec![Array2::zeros((0, 0)); nb + 1];
        let head_in = trace
            .final_ln
            .as_ref()
            .map_or(trace.resid[nb].view(), |c| c.s.view());
        let g_in = self
            .head
            .backward(&mut cx, head_in, &trace.head, dout, sink);
        let mut g = match &trace.final_ln {
            Some(c) => ln::backward(c, g_in.view()),
            None => g_in,
        };
        for (b, bt) in trace.blocks.iter().enumerate().rev() {
            let z = trace.resid[b].view();
            let gz = residual_backward(&mut cx, bt, z, g.view(), |cx, s, gr| {
                bt.inner.backward(cx, s, gr, sink)
            });
            grads[b + 1] = g;
            g = gz;
        }
        self.stem.backward(&cx, g.view(), sink);
        grads[0] = g;
        grads
    }

    /// The adjoint of [`Network::forward_encdec`], in reverse: head, decoder blocks (each
    /// cross-attention block adds ∂f/∂s̃ into `Ctx::memory_grad`), the decoder's stem LN,
    /// then ∂f/∂s̃ back through the encoder's final LN into z^{B_e+1}, the encoder blocks,
    /// its stem LN, and the shared stem. Returns ∂f/∂z^ℓ for ℓ = 1 … B_e+B_d+2.
    fn backward_encdec(
        &self,
        trace: &Trace<F>,
        probe: &Probe<F>,
        dout: ArrayView2<F>,
        sink: &mut impl GradSink<F>,
        ops: &mut dyn WeightOps<F>,
    ) -> Vec<Array2<F>> {
        let spec = &self.spec;
        let (Some(dec), Some(dt)) = (&self.decoder, &trace.decoder) else {
            unreachable!("an encoder–decoder's trace has its decoder sites")
        };
        let dp = probe
            .decoder
            .as_deref()
            .expect("an encoder–decoder's probe has the decoder's inputs");
        let (be, nb) = (self.blocks.len(), trace.blocks.len());
        let mut grads = vec![Array2::zeros((0, 0)); nb + 2];
        let mut cx = Ctx::new(spec, &self.params, &mut *ops, dp);
        cx.memory = Some(dt.memory.view());
        cx.memory_mask = probe.keep.as_deref();
        let head_in = trace
            .final_ln
            .as_ref()
            .map_or(trace.resid[nb + 1].view(), |c| c.s.view());
        let g_in = self
            .head
            .backward(&mut cx, head_in, &trace.head, dout, sink);
        let mut g = match &trace.final_ln {
            Some(c) => ln::backward(c, g_in.view()),
            None => g_in,
        };
        for b in (be..nb).rev() {
            let bt = &trace.blocks[b];
            let z = trace.resid[b + 1].view();
            let gz = residual_backward(&mut cx, bt, z, g.view(), |cx, s, gr| {
                bt.inner.backward(cx, s, gr, sink)
            });
            grads[b + 2] = g;
            g = gz;
        }
        let gd = match &dt.stem_ln_dec {
            Some(c) => ln::backward(c, g.view()),
            None => g.clone(),
        };
        grads[be + 1] = g;
        let g_mem = cx.memory_grad.take();
        drop(cx);
        // ∂f/∂z^{B_e+1}: only through s̃ (the encoder's output feeds nothing else).
        let mut g = match (g_mem, &dt.memory_ln) {
            (Some(gm), Some(c)) => ln::backward(c, gm.view()),
            (Some(gm), None) => gm,
            (None, _) => Array2::zeros(trace.resid[be].raw_dim()),
        };
        let mut cx = Ctx::new(spec, &self.params, ops, probe);
        for b in (0..be).rev() {
            let bt = &trace.blocks[b];
            let z = trace.resid[b].view();
            let gz = residual_backward(&mut cx, bt, z, g.view(), |cx, s, gr| {
                bt.inner.backward(cx, s, gr, sink)
            });
            grads[b + 1] = g;
            g = gz;
        }
        let ge = match &dt.stem_ln {
            Some(c) => ln::backward(c, g.view()),
            None => g.clone(),
        };
        self.stem
            .backward_pair(&cx, dp, dec.pe, ge.view(), gd.view(), sink);
        grads[0] = g;
        grads
    }
}

/// z^{ℓ+1} from z^ℓ around the branch `inner` (s ↦ R(s)), with the LN where `spec.norm` puts
/// it: pre ξ z + γ R(LN z) (1.3), post LN(ξ z + γ R(z)) (1.5), none ξ z + γ R(z), and the
/// book's plain layer z^{ℓ+1} = R(z^ℓ) in `mlp` mode.
fn residual_forward<F: Real>(
    cx: &mut Ctx<'_, F>,
    z: ArrayView2<F>,
    inner: impl FnOnce(&mut Ctx<'_, F>, ArrayView2<F>) -> (Array2<F>, InnerTrace<F>),
) -> (Array2<F>, BlockTrace<F>) {
    let spec = cx.spec;
    let add = |z: ArrayView2<F>, r: Array2<F>| residual::forward(spec.xi, spec.gamma_res, z, r);
    let (next, ln, inner) = match spec.norm {
        Norm::Pre => {
            let lnc = ln::forward(z, spec.ln_eps);
            let (r, it) = inner(cx, lnc.s.view());
            (add(z, r), Some(lnc), it)
        }
        Norm::Post => {
            let (r, it) = inner(cx, z);
            let lnc = ln::forward(add(z, r).view(), spec.ln_eps);
            (lnc.s.clone(), Some(lnc), it)
        }
        Norm::None => {
            let (r, it) = inner(cx, z);
            (add(z, r), None, it)
        }
        Norm::Mlp => {
            let (r, it) = inner(cx, z);
            (r, None, it)
        }
    };
    (next, BlockTrace { ln, inner })
}

/// ∂f/∂z^ℓ from ∂f/∂z^{ℓ+1} = g: the adjoint of [`residual_forward`], with `inner` the
/// branch's backward (s, ∂f/∂r) ↦ ∂f/∂s.
fn residual_backward<F: Real>(
    cx: &mut Ctx<'_, F>,
    bt: &BlockTrace<F>,
    z: ArrayView2<F>,
    g: ArrayView2<F>,
    inner: impl FnOnce(&mut Ctx<'_, F>, ArrayView2<F>, ArrayView2<F>) -> Array2<F>,
) -> Array2<F> {
    let spec = cx.spec;
    let (xi, gamma) = (spec.xi, spec.gamma_res);
    match spec.norm {
        Norm::Pre => {
            let lnc = bt.ln.as_ref().expect("pre mode keeps the LN cache");
            let gs = inner(cx, lnc.s.view(), residual::branch(gamma, g).view());
            residual::skip(xi, g, ln::backward(lnc, gs.view()))
        }
        Norm::Post => {
            let lnc = bt.ln.as_ref().expect("post mode keeps the LN cache");
            let gu = ln::backward(lnc, g);
            let through = inner(cx, z, residual::branch(gamma, gu.view()).view());
            residual::skip(xi, gu.view(), through)
        }
        Norm::None => {
            let through = inner(cx, z, residual::branch(gamma, g).view());
            residual::skip(xi, g, through)
        }
        Norm::Mlp => inner(cx, z, g),
    }
}
