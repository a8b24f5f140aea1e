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
use rayon::prelude::*;

use crate::model::{Param, Params, Real};

/// The trainer's optimizer is the hparams tables' one enum.
pub use crate::hparams::Optimizer as Kind;

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
        self.update(params, grads, lr, wd, 1.0, None);
    }

    /// As `step`, with every gradient multiplied by `grad_scale` first (global-norm
    /// clipping) and the parameters spread over `pool`'s threads when given. Returns, per
    /// parameter, whether every entry's square is still finite in F after the update
    /// (false: it overflowed, beyond ~1e154 in f64 or ~1e19 in f32). One pass over each
    /// tensor does all of it, since the update is memory-bound; the check is a flag, not a
    /// sum, so the loop still vectorizes.
    pub fn update(
        &mut self,
        params: &mut Params<F>,
        grads: &[Array2<F>],
        lr: &[f64],
        wd: &[f64],
        grad_scale: f64,
        pool: Option<&rayon::ThreadPool>,
    ) -> Vec<bool> {
        self.t += 1;
        let Adam { beta1, beta2, eps } = self.adam;
        let t = self.t as f64;
        // Scalars are formed in f64 and rounded once, so f64 runs are unchanged.
        let c = Consts {
            kind: self.kind,
            c1: F::of(1.0 - beta1.powf(t)),
            c2: F::of(1.0 - beta2.powf(t)),
            beta1: F::of(beta1),
            beta2: F::of(beta2),
            eps: F::of(eps),
            scale: F::of(grad_scale),
        };
        let moments: Vec<Option<(&mut Array2<F>, &mut Array2<F>)>> = match self.kind {
            Kind::Sgd => params.list.iter().map(|_| None).collect(),
            Kind::AdamW => self.m.iter_mut().zip(self.v.iter_mut()).map(Some).collect(),
        };
        let jobs: Vec<_> = params
            .list
            .iter_mut()
            .zip(grads)
            .zip(moments)
            .enumerate()
            .map(|(i, ((p, g), mv))| (p, g, mv, F::of(lr[i]), F::of(1.0 - lr[i] * wd[i])))
            .collect();
        let one = |(p, g, mv, lr, decay)| c.apply(p, g, mv, lr, decay);
        match pool {
            Some(pool) => pool.install(|| jobs.into_par_iter().map(one).collect()),
            None => jobs.into_iter().map(one).collect(),
        }
    }
}

/// One AdamW update of one parameter: the shared [`Consts`] with its lr and decay.
#[derive(Clone, Copy)]
pub struct AdamStep<F> {
    c: Consts<F>,
    lr: F,
    decay: F,
}

impl<F: Real> AdamStep<F> {
    /// One entry (PyTorch's AdamW, module doc); false if θ² overflows. The only place the
    /// formula is written: the slice loop and the strided fallback both call it.
    #[inline(always)]
    fn entry(&self, th: &mut F, g: F, m: &mut F, v: &mut F) -> bool {
        let Consts {
            c1,
            c2,
            beta1,
            beta2,
            eps,
            scale,
            ..
        } = self.c;
        let one = F::one();
        let g = g * scale;
        *m = beta1 * *m + (one - beta1) * g;
        *v = beta2 * *v + (one - beta2) * g * g;
        *th = *th * self.decay - self.lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        (*th * *th).is_finite()
    }
}

/// The AdamW update over contiguous slices ([`AdamStep::entry`] on each entry): written over
/// slices so that it vectorizes (over ndarray's `Zip` of four arrays the compiler left the
/// divisions and the square root scalar, 9% of a training step). False if an entry's square
/// overflows.
#[inline(always)]
pub fn adamw_body<F: Real>(
    th: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
    k: &AdamStep<F>,
) -> bool {
    let mut finite = true;
    for (((th, &g), m), v) in th.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        finite &= k.entry(th, g, m, v);
    }
    finite
}

#[inline(always)]
fn adamw_body_f32(
    th: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &AdamStep<f32>,
) -> bool {
    adamw_body(th, g, m, v, k)
}

#[inline(always)]
fn adamw_body_f64(
    th: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    k: &AdamStep<f64>,
) -> bool {
    adamw_body(th, g, m, v, k)
}

crate::model::skinny::multiversion!(pub fn adamw_f32(th: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamStep<f32>) -> bool, adamw_body_f32);
crate::model::skinny::multiversion!(pub fn adamw_f64(th: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], k: &AdamStep<f64>) -> bool, adamw_body_f64);

/// Σ g² in f64 (the gradient norm that clipping reads), in 16 interleaved partial sums so
/// that the loop vectorizes; the order is fixed by the slice alone, so the result does not
/// depend on threads. A plain left-to-right sum was 5% of an f32 training step.
#[inline(always)]
pub fn sum_squares_body<F: Real>(x: &[F]) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v.wide() * v.wide();
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v.wide() * v.wide();
    }
    lanes_total(acc)
}

/// a ← a + b, and Σ a² of the result with the bits of [`sum_squares_body`] (the same lanes
/// in the same order): the trainer's last sum over batch parts and the clipping norm in one
/// pass over the gradient instead of two.
#[inline(always)]
pub fn add_sum_squares_body<F: Real>(a: &mut [F], b: &[F]) -> f64 {
    let mut acc = [0f64; LANES];
    let n = a.len().min(b.len());
    let (a, b) = (&mut a[..n], &b[..n]);
    let split = n - n % LANES;
    let (a_body, a_tail) = a.split_at_mut(split);
    let (b_body, b_tail) = b.split_at(split);
    for (ca, cb) in a_body
        .chunks_exact_mut(LANES)
        .zip(b_body.chunks_exact(LANES))
    {
        for ((s, x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *x += y;
            *s += x.wide() * x.wide();
        }
    }
    for ((s, x), &y) in acc.iter_mut().zip(a_tail).zip(b_tail) {
        *x += y;
        *s += x.wide() * x.wide();
    }
    lanes_total(acc)
}

const LANES: usize = 16;

/// The lanes' total by a fixed pairwise tree.
#[inline(always)]
fn lanes_total(mut acc: [f64; LANES]) -> f64 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

#[inline(always)]
fn sum_squares_body_f32(x: &[f32]) -> f64 {
    sum_squares_body(x)
}

#[inline(always)]
fn sum_squares_body_f64(x: &[f64]) -> f64 {
    sum_squares_body(x)
}

#[inline(always)]
fn add_sum_squares_body_f32(a: &mut [f32], b: &[f32]) -> f64 {
    add_sum_squares_body(a, b)
}

#[inline(always)]
fn add_sum_squares_body_f64(a: &mut [f64], b: &[f64]) -> f64 {
    add_sum_squares_body(a, b)
}

crate::model::skinny::multiversion!(pub fn sum_squares_f32(x: &[f32]) -> f64, sum_squares_body_f32);
crate::model::skinny::multiversion!(pub fn sum_squares_f64(x: &[f64]) -> f64, sum_squares_body_f64);
crate::model::skinny::multiversion!(pub fn add_sum_squares_f32(a: &mut [f32], b: &[f32]) -> f64, add_sum_squares_body_f32);
crate::model::skinny::multiversion!(pub fn add_sum_squares_f64(a: &mut [f64], b: &[f64]) -> f64, add_sum_squares_body_f64);

/// What one update shares across parameters.
#[derive(Clone, Copy)]
struct Consts<F> {
    kind: Kind,
    c1: F,
    c2: F,
    beta1: F,
    beta2: F,
    eps: F,
    scale: F,
}

impl<F: Real> Consts<F> {
    /// Updates one parameter in place; false if an entry's square overflows.
    fn apply(
        &self,
        p: &mut Param<F>,
        g: &Array2<F>,
        mv: Option<(&mut Array2<F>, &mut Array2<F>)>,
        lr: F,
        decay: F,
    ) -> bool {
        let mut finite = true;
        match (self.kind, mv) {
            (Kind::AdamW, Some((m, v))) => {
                let step = AdamStep {
                    c: *self,
                    lr,
                    decay,
                };
                if let (Some(th), Some(gs), Some(ms), Some(vs)) = (
                    p.value.as_slice_mut(),
                    g.as_slice(),
                    m.as_slice_mut(),
                    v.as_slice_mut(),
                ) {
                    // Contiguous (every parameter the trainer makes): the vectorized loop.
                    return F::adamw_slices(th, gs, ms, vs, &step);
                }
                Zip::from(&mut p.value)
                    .and(g)
                    .and(m)
                    .and(v)
                    .for_each(|th, &g, m, v| finite &= step.entry(th, g, m, v))
            }
            _ => Zip::from(&mut p.value).and(g).for_each(|th, &g| {
                *th = *th * decay - lr * (g * self.scale);
                finite &= (*th * *th).is_finite();
            }),
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clipping norm's Σ g²: every length's tail, against an exact reference (integers
    /// scaled by a power of two, so the f64 sum has no rounding), and the dispatched f32 and
    /// f64 versions give the generic body's bits.
    #[test]
    fn sum_squares_is_exact_on_exact_data_and_the_same_on_every_path() {
        for len in [0, 1, 15, 16, 17, 100, 1031] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let exact: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            assert_eq!(sum_squares_f32(&x), exact, "len {len}");
            assert_eq!(
                sum_squares_f32(&x).to_bits(),
                sum_squares_body(&x).to_bits()
            );
            let y: Vec<f64> = x.iter().map(|&v| v as f64 * 1.1).collect();
            let naive: f64 = y.iter().map(|v| v * v).sum();
            assert!(
                (sum_squares_f64(&y) - naive).abs() <= 1e-13 * naive.max(1.0),
                "len {len}"
            );
            assert_eq!(
                sum_squares_f64(&y).to_bits(),
                sum_squares_body(&y).to_bits()
            );
        }
    }

    /// The fused sum and norm: a + b entry by entry, and Σ (a + b)² with the bits of
    /// `sum_squares` on the sum, so fusing the trainer's passes changes no number.
    #[test]
    fn add_sum_squares_is_the_sum_then_sum_squares() {
        for len in [0, 1, 15, 16, 17, 100, 1031] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let mut fused = a.clone();
            let s = add_sum_squares_f32(&mut fused, &b);
            assert_eq!(fused, sum, "len {len}");
            assert_eq!(s.to_bits(), sum_squares_f32(&sum).to_bits(), "len {len}");
            let (a, b): (Vec<f64>, Vec<f64>) = (
                a.iter().map(|&v| v as f64 * 1.1).collect(),
                b.iter().map(|&v| v as f64 / 1.3).collect(),
            );
            let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let mut fused = a.clone();
            let s = add_sum_squares_f64(&mut fused, &b);
            assert_eq!(fused, sum, "len {len}");
            assert_eq!(s.to_bits(), sum_squares_f64(&sum).to_bits(), "len {len}");
        }
    }
}
