//! Softmax cross-entropy on the head output z^L. Its gradient with respect to z^L is the
//! cotangent `dout` that `Network::backward` pulls back through the same model code the
//! Monte Carlo engine uses.

use ndarray::{Array2, ArrayView2};

use crate::model::Real;

/// Σ over scored rows of −log softmax(z)_target, and its gradient (softmax − one-hot) per
/// scored row (zero rows for unscored outputs). Returns (sum, scored rows, gradient of the
/// sum): callers divide by the count of the whole batch, so parts of a batch computed on
/// different threads add up to the batch mean exactly. The loss is summed in f64 whatever
/// the network's precision.
pub fn cross_entropy_sum<F: Real>(
    logits: ArrayView2<F>,
    targets: &[Option<usize>],
) -> (f64, usize, Array2<F>) {
    assert_eq!(
        logits.nrows(),
        targets.len(),
        "one target slot per output row"
    );
    let mut grad = Array2::zeros(logits.raw_dim());
    let mut sum = 0.0;
    let mut count = 0;
    for ((row, mut g), t) in logits.rows().into_iter().zip(grad.rows_mut()).zip(targets) {
        let Some(t) = *t else { continue };
        // log Σ exp, shifted by the max so large logits neither overflow nor lose the target.
        let max = row.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
        let mut z = F::zero();
        for (gi, &x) in g.iter_mut().zip(row.iter()) {
            *gi = (x - max).exp();
            z += *gi;
        }
        g.mapv_inplace(|e| e / z);
        g[t] -= F::one();
        sum += (max + z.ln() - row[t]).wide();
        count += 1;
    }
    (sum, count, grad)
}

/// The mean over scored rows and its gradient (the loss of one whole batch).
pub fn cross_entropy<F: Real>(
    logits: ArrayView2<F>,
    targets: &[Option<usize>],
) -> (f64, Array2<F>) {
    let (sum, count, mut grad) = cross_entropy_sum(logits, targets);
    let c = count.max(1) as f64;
    grad /= F::of(c);
    (sum / c, grad)
}
