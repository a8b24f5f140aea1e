//! The one place where matrix products happen.
//!
//! Every GEMM in sigprop goes through these helpers so the backend can be swapped after
//! measuring. Backend: `matrixmultiply` 0.3.11 (ndarray's own) with its avx512 f64 kernel,
//! single-threaded: the Monte Carlo engine parallelizes over samples, one network per core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// When on (the `bench` command), every GEMM adds its flops and nanoseconds to the counters.
pub static PROFILE: AtomicBool = AtomicBool::new(false);
pub static GEMM_FLOPS: AtomicU64 = AtomicU64::new(0);
pub static GEMM_NANOS: AtomicU64 = AtomicU64::new(0);

/// C ← α·A·B + β·C.
#[inline]
pub fn gemm(
    alpha: f64,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
    beta: f64,
    c: &mut ArrayViewMut2<f64>,
) {
    if PROFILE.load(Ordering::Relaxed) {
        let t = Instant::now();
        general_mat_mul(alpha, &a, &b, beta, c);
        GEMM_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        GEMM_FLOPS.fetch_add(
            2 * (a.nrows() * a.ncols() * b.ncols()) as u64,
            Ordering::Relaxed,
        );
    } else {
        general_mat_mul(alpha, &a, &b, beta, c);
    }
}

/// A·B.
pub fn mm(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(1.0, a, b, 0.0, &mut c.view_mut());
    c
}

/// A·Bᵀ: a layer's forward pass Y = X Wᵀ with W stored (fan_out × fan_in).
pub fn mm_t(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    mm(a, b.t())
}

/// Aᵀ·B: a weight gradient Gᵀ X.
pub fn t_mm(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    mm(a.t(), b)
}

/// The Gram matrix A·Aᵀ (rows are tokens).
pub fn gram(a: ArrayView2<f64>) -> Array2<f64> {
    mm(a, a.t())
}

/// Σ_ab A_ab B_ab.
pub fn frobenius_dot(a: ArrayView2<f64>, b: ArrayView2<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}
