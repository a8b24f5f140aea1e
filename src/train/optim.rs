//! SGD and AdamW with per-parameter learning rates and decoupled weight decay
//! (Loshchilov & Hutter): θ ← θ − lr·wd·θ is applied to the parameter itself, not folded
//! into the gradient, so with AdamW the decay is not rescaled by 1/√v̂. This is what makes
//! "η·weight-decay kept O(1)" (SPEC §6) a statement about the table, not about Adam's
//! statistics.
//!
//! AdamW, as PyTorch's `torch.optim.AdamW` (t counts updates from 1):
//!   θ ← θ(1 − lr·wd);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
//!   θ ← θ − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε).

use ndarray::{Array2, Zip};

use crate::model::{Params, Real};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sgd,
    AdamW,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "sgd" => Some(Kind::Sgd),
            "adamw" => Some(Kind::AdamW),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sgd => "sgd",
            Kind::AdamW => "adamw",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The optimizer and its state: first and second moments per parameter (AdamW only) and
/// the number of updates taken.
/// The moments are kept in the network's precision, as PyTorch keeps them in the
/// parameters' dtype.
#[derive(Clone, Debug)]
pub struct Optimizer<F = f64> {
    pub kind: Kind,
    pub adam: Adam,
    pub m: Vec<Array2<F>>,
    pub v: Vec<Array2<F>>,
    pub t: u64,
}

impl<F: Real> Optimizer<F> {
    pub fn new(kind: Kind, adam: Adam, params: &Params<F>) -> Optimizer<F> {
        let (m, v) = match kind {
            Kind::Sgd => (Vec::new(), Vec::new()),
            Kind::AdamW => (params.zeros_like(), params.zeros_like()),
        };
        Optimizer {
            kind,
            adam,
            m,
            v,
            t: 0,
        }
    }

    /// One update of every parameter i with its own learning rate `lr[i]` (schedule already
    /// applied) and weight decay `wd[i]`.
    pub fn step(&mut self, params: &mut Params<F>, grads: &[Array2<F>], lr: &[f64], wd: &[f64]) {
        self.t += 1;
        let Adam { beta1, beta2, eps } = self.adam;
        let t = self.t as f64;
        // Scalars are formed in f64 and rounded once, so f64 runs are unchanged.
        let (c1, c2) = (F::of(1.0 - beta1.powf(t)), F::of(1.0 - beta2.powf(t)));
        let (beta1, beta2, eps) = (F::of(beta1), F::of(beta2), F::of(eps));
        let one = F::one();
        for (i, p) in params.list.iter_mut().enumerate() {
            let (lr, decay) = (F::of(lr[i]), F::of(1.0 - lr[i] * wd[i]));
            match self.kind {
                Kind::Sgd => Zip::from(&mut p.value)
                    .and(&grads[i])
                    .for_each(|th, &g| *th = *th * decay - lr * g),
                Kind::AdamW => Zip::from(&mut p.value)
                    .and(&grads[i])
                    .and(&mut self.m[i])
                    .and(&mut self.v[i])
                    .for_each(|th, &g, m, v| {
                        *m = beta1 * *m + (one - beta1) * g;
                        *v = beta2 * *v + (one - beta2) * g * g;
                        *th = *th * decay - lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                    }),
            }
        }
    }
}
