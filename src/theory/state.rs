//! The theory's state over the probe set: the kernel of one site ([`KernelState`]) and the
//! effective constants the block maps read ([`Consts`]).

use ndarray::Array2;

use crate::config::{HeadKind, ModelSpec, Norm, Stem};

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
    pub(crate) fn same_seq(&self, a: usize, b: usize) -> bool {
        a / self.tokens == b / self.tokens
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

/// Effective O(1) constants at the configured width (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Consts {
    pub(crate) stem: f64,
    pub(crate) pe: f64,
    pub(crate) q: f64,
    pub(crate) k: f64,
    pub(crate) v: f64,
    pub(crate) u: f64,
    pub(crate) w: f64,
    pub(crate) x: f64,
    pub(crate) head: f64,
    pub(crate) bias: f64,
}

impl Consts {
    pub(crate) fn of(spec: &ModelSpec) -> Self {
        let n = spec.width;
        let eff = |c: f64, fan_in: usize| spec.weight_var(c, fan_in) * fan_in as f64;
        let m = spec.mlp_mult * n;
        Consts {
            stem: match spec.stem {
                Stem::Dense => eff(spec.var.stem, spec.n_in),
                Stem::Embedding => spec.var.stem,
            },
            // The MC draws no positional embedding in `mlp` mode.
            pe: if spec.norm == Norm::Mlp {
                0.0
            } else {
                spec.var.pe
            },
            q: if spec.zero_queries {
                0.0
            } else {
                eff(spec.var.q, n)
            },
            k: eff(spec.var.k, n),
            v: eff(spec.var.v, n),
            u: eff(spec.var.u, n),
            w: eff(spec.var.w, n),
            x: eff(spec.var.x, m),
            head: match spec.head {
                // z = N W_WEᵀ s: N² · C_WE · n channels = C_WE n^{-s} (1.83)–(1.84).
                HeadKind::Tied => spec.tied_rescale().powi(2) * spec.var.stem * n as f64,
                // Var C_head/n^{1+s} times n channels of s: C_head n^{-s} (1.80) with (1.34).
                _ => spec.head_var() * n as f64,
            },
            bias: if spec.has_bias() { spec.var.bias } else { 0.0 },
        }
    }
}
