//! The theory's state, which every block map takes and returns, and the context it reads.
//!
//! As neural-tangents' `Kernel{nngp, ntk}`, one [`State`] carries everything a later block or
//! the head needs, over the whole probe set (D = S·T points, δ = sequence·T + token, cross-
//! sequence entries included: the weights and the positional embedding are shared, so
//! F_{(α1;t)(α2;t')} ≠ 0 for α1 ≠ α2):
//!
//! - `k`: the kernel G of the site (the residual stream z^ℓ, an LN output, a branch's
//!   increment ΔG or the head's output);
//! - `ntk`: every carried NTK kernel Θ, one [`Carried`] per parameter group and injection
//!   layer, plus the `grad2` probes (see [`super::ntk`] for why each group travels on its own);
//!   `None` when the backward is not asked for, or has no theory here;
//! - `stem_coef`: for the tied head, how much of the stem's own W_WE[:, id_δ] z_δ carries
//!   along the skip path (the footnote-19 coefficient c_δ, [`super::head`]);
//! - `vertex`: the four-point vertex V per probe point at order 1/n (the book's plain MLP;
//!   `None` where it is not derived);
//! - `nlo`: at `theory.order = 1`, the 1/n part ([`super::finite::Finite`]): K^{{1}}, the
//!   fluctuation of the kernel per pair of probe points, and what a branch needs to add it.
//!
//! A block reads the state of its input and returns the state of its output; a branch's
//! output state (an increment) is combined with the skip path's by [`super::residual::add`].

use std::cell::RefCell;

use ndarray::Array2;

use super::TheoryError;
use super::attention::{LogitSampler, logit_scale};
use super::contact::{Step, Tape};
use super::finite::Finite;
use crate::config::{ModelSpec, Norm};
use crate::model::{Group, hyper};

/// The kernel G_{δ1 δ2} = E[(1/n) Σ_i z_{δ1;i} z_{δ2;i}] of one site over the probe set:
/// D×D with D = sequences·tokens and δ = sequence·tokens + token (the Monte Carlo's order).
/// A pooled head output has `tokens = 1` (one output per sequence).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelState {
    pub g: Array2<f64>,
    pub sequences: usize,
    pub tokens: usize,
}

impl KernelState {
    pub fn new(g: Array2<f64>, sequences: usize, tokens: usize) -> Self {
        KernelState {
            g,
            sequences,
            tokens,
        }
    }
    /// D = S·T.
    pub fn len(&self) -> usize {
        self.g.nrows()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn finite(&self) -> bool {
        self.g.iter().all(|x| x.is_finite())
    }
    /// The same shape with another matrix.
    pub fn clone_with(&self, g: Array2<f64>) -> Self {
        self.with(g)
    }
    pub(crate) fn with(&self, g: Array2<f64>) -> Self {
        KernelState::new(g, self.sequences, self.tokens)
    }
}

/// What a carried kernel is: a parameter group's raw NTK, or the `grad2` probe (the identity
/// kernel injected at z^ℓ: a fictitious bias on every component of every probe point).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum What {
    Group(Group),
    Grad2,
}

/// One carried kernel: injected at `layer` and transported block by block to the output.
#[derive(Clone, Debug)]
pub struct Carried {
    pub layer: usize,
    pub what: What,
    pub theta: Array2<f64>,
}

impl Carried {
    pub(crate) fn new(layer: usize, what: What, theta: Array2<f64>) -> Self {
        Carried { layer, what, theta }
    }
    /// The same kernel (layer, group) with a transported Θ.
    pub(crate) fn with(&self, theta: Array2<f64>) -> Self {
        Carried {
            layer: self.layer,
            what: self.what,
            theta,
        }
    }
}

/// The state every theory block takes and returns (see the module doc).
#[derive(Clone, Debug)]
pub struct State {
    pub k: KernelState,
    pub ntk: Option<Vec<Carried>>,
    pub stem_coef: Vec<f64>,
    pub vertex: Option<Vec<f64>>,
    /// At `theory.order = 1`: K^{{1}} and the kernel's fluctuation ([`super::finite`]);
    /// `None` at order 0 and after a block whose correction is not derived.
    pub nlo: Option<Finite>,
}

impl State {
    /// A branch's output: an increment, with no skip path of its own (no stem coefficient,
    /// no vertex).
    pub(crate) fn branch(k: KernelState, ntk: Option<Vec<Carried>>) -> Self {
        State {
            k,
            ntk,
            stem_coef: Vec::new(),
            vertex: None,
            nlo: None,
        }
    }
    pub(crate) fn finite(&self) -> bool {
        self.k.finite()
            && self
                .vertex
                .as_ref()
                .is_none_or(|v| v.iter().all(|x| x.is_finite()))
            && self
                .nlo
                .as_ref()
                .is_none_or(|f| f.k1.iter().all(|x| x.is_finite()))
    }
    /// Starts carrying a kernel injected at `layer` (no-op without a backward).
    pub(crate) fn inject(&mut self, layer: usize, what: What, theta: impl FnOnce() -> Array2<f64>) {
        if let Some(c) = self.ntk.as_mut() {
            c.push(Carried::new(layer, what, theta()));
        }
    }
}

/// What every block reads besides the state: the model, its blocks' tensors, the logit sampler
/// and whether the NTK is carried.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub spec: &'a ModelSpec,
    /// Every block's tensors as the sampler draws them ([`crate::model::hyper`]): the theory's
    /// constants are their effective C = variance × fan-in (`Weight::c_eff`), which is the C
    /// of (1.25)–(1.33) in the default `fan_in` variance mode and C_abs·fan-in in the
    /// `absolute` one, and a missing tensor (no PE in `mlp` mode, no biases) has C = 0.
    pub(crate) hyper: hyper::Blocks,
    pub sampler: LogitSampler,
    /// Carry the NTK (asked for, and derived for this configuration).
    pub backward: bool,
    /// `theory.order`: 0 (infinite width) or 1 (with the O(1/n) corrections).
    pub order: u8,
    /// The tied head's record of the walk ([`super::contact`]), with a tied head's backward.
    pub(crate) tape: Option<&'a RefCell<Tape>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        spec: &'a ModelSpec,
        sampler: LogitSampler,
        backward: bool,
    ) -> Result<Self, TheoryError> {
        let backward = backward && super::ntk::unsupported(spec).is_none();
        if backward && spec.norm != Norm::Mlp {
            // The backward transport of a Transformer needs the logit scale even without an
            // attention block (it always did): an exponent a < 1/2 is reported here.
            logit_scale(spec)?;
        }
        Ok(Ctx {
            spec,
            hyper: hyper::blocks(spec),
            sampler,
            backward,
            order: 0,
            tape: None,
        })
    }

    /// The same context at `theory.order` = `order`.
    pub fn with_order(self, order: u8) -> Self {
        Ctx { order, ..self }
    }

    /// Records a block for the tied head's contact (no-op without a tape).
    pub(crate) fn record(&self, step: impl FnOnce() -> Step) {
        if let Some(t) = self.tape {
            t.borrow_mut().push(step());
        }
    }
}
