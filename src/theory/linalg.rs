//! Small dense linear algebra for the theory (the attention block's logit sampler).

use ndarray::Array2;

/// A symmetric positive semi-definite matrix's Cholesky factor L (A = L Lᵀ), with pivots
/// below a relative tolerance set to zero. Those columns are (numerically) linear
/// combinations of earlier ones, so dropping them loses nothing: F is often singular
/// (identical tokens, or ε = 0 with G of rank < D).
pub(crate) fn cholesky_psd(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let scale = (0..n).map(|i| a[[i, i]].abs()).fold(0.0, f64::max);
    let tol = 1e-12 * scale.max(f64::MIN_POSITIVE);
    let mut l = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        let d = a[[j, j]] - (0..j).map(|k| l[[j, k]] * l[[j, k]]).sum::<f64>();
        if d <= tol {
            continue;
        }
        let r = d.sqrt();
        l[[j, j]] = r;
        for i in j + 1..n {
            let s = a[[i, j]] - (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum::<f64>();
            l[[i, j]] = s / r;
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_of_a_singular_matrix_reproduces_it() {
        // Rank 2 in 3 dimensions: the third row is the sum of the first two.
        let b = ndarray::arr2(&[[1.0, 0.2], [0.3, 1.0], [1.3, 1.2]]);
        let a = b.dot(&b.t());
        let l = cholesky_psd(&a);
        let back = l.dot(&l.t());
        for (x, y) in back.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-9, "{back:?} vs {a:?}");
        }
    }
}
