//! The one place where matrix products happen.
//!
//! Every GEMM in sigprop goes through these helpers so the backend can be swapped after
//! measuring. Backend: `faer` 0.24, single-threaded (`Par::Seq`): the Monte Carlo engine
//! parallelizes over samples, one network per core. Measured on this machine in f64:
//! 16×512×512 at 86 GFLOP/s (matrixmultiply 0.3.11 with avx512: 20), 16×2048×512 at 104 (30),
//! 512×512×512 at 110 (87). `gemm_reference` keeps the matrixmultiply path as the check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use faer::{Accum, MatMut, MatRef, Par};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::real::Real;

/// When on (the `bench` command), every GEMM adds its flops and nanoseconds to the counters.
pub static PROFILE: AtomicBool = AtomicBool::new(false);
pub static GEMM_FLOPS: AtomicU64 = AtomicU64::new(0);
pub static GEMM_NANOS: AtomicU64 = AtomicU64::new(0);

/// Runs a product of `macs` multiply-adds, adding its flops and time to the counters when
/// the `bench` command profiles.
#[inline]
fn counted<T>(macs: usize, f: impl FnOnce() -> T) -> T {
    if !PROFILE.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let out = f();
    GEMM_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    GEMM_FLOPS.fetch_add(2 * macs as u64, Ordering::Relaxed);
    out
}

/// C ← α·A·B + β·C.
#[inline]
pub fn gemm<F: Real>(
    alpha: F,
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    counted(a.nrows() * a.ncols() * b.ncols(), || {
        F::gemm_backend(alpha, a, b, beta, c)
    })
}

/// Products with an inner dimension of at least `FAER_MIN_K` and at least `FAER_MIN_MACS`
/// multiply-adds go to faer; the rest (per-head attention, D × D Grams, the conditional
/// sampler's rank-D products) to matrixmultiply. Measured here: faer on every call made the
/// conditional sampler 2.8× slower at n = 512 (25 vs 70 samples/s, one thread), and faer on
/// products with inner dimension D = 16 made it 1.8× slower at n = 2048 (17.8 vs 32.7
/// samples/s, two threads), while products like 16 × 512 × 512 run 4× faster in faer.
/// And only for skinny products (few rows: the D tokens of a Monte Carlo sample). With the
/// trainer's 512-row batches faer measured 1.5× slower than matrixmultiply here (1197 vs 1793
/// tokens/s at width 256, one thread), though it wins on the same shapes in isolation.
const FAER_MIN_MACS: usize = 1 << 20;
const FAER_MIN_K: usize = 128;
const FAER_MAX_M: usize = 64;

/// The f64 dispatch (`Real::gemm_backend` for f64).
#[inline]
pub(super) fn backend_f64(
    alpha: f64,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
    beta: f64,
    c: &mut ArrayViewMut2<f64>,
) {
    if super::skinny::try_gemm_f64(alpha, a, b, beta, c).is_some() {
        return;
    }
    if a.nrows() <= FAER_MAX_M
        && a.ncols() >= FAER_MIN_K
        && a.nrows() * a.ncols() * b.ncols() >= FAER_MIN_MACS
    {
        faer_gemm(alpha, a, b, beta, c);
    } else {
        general_mat_mul(alpha, &a, &b, beta, c);
    }
}

/// The f64 dispatch of `product` (`Real::product_backend` for f64): small outputs on the
/// skinny dots kernel (`skinny::try_product_f64`), the rest as `backend_f64`, with
/// matrixmultiply's share written once into new memory.
pub(super) fn product_f64(alpha: f64, a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    if let Some(c) = super::skinny::try_product_f64(alpha, a, b) {
        return c;
    }
    if a.nrows() <= FAER_MAX_M
        && a.ncols() >= FAER_MIN_K
        && a.nrows() * a.ncols() * b.ncols() >= FAER_MIN_MACS
    {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        faer_gemm(alpha, a, b, 0.0, &mut c.view_mut());
        return c;
    }
    fresh(alpha, a, b, matrixmultiply::dgemm)
}

/// α A·B in new memory through matrixmultiply (f32's products beyond the skinny kernels).
pub(super) fn product_f32(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    fresh(alpha, a, b, matrixmultiply::sgemm)
}

/// matrixmultiply's `sgemm` / `dgemm`: C ← α A·B + β C on raw pointers and strides.
type RawGemm<F> = unsafe fn(
    usize,
    usize,
    usize,
    F,
    *const F,
    isize,
    isize,
    *const F,
    isize,
    isize,
    F,
    *mut F,
    isize,
    isize,
);

/// α A·B in new, row-major memory that `gemm` fills without reading: matrixmultiply with
/// β = 0 ("If β is zero, then C does not need to be initialized", its documentation; with
/// k = 0 it writes zeros). Zeroing first was 3-4% of an f32 training step, its page faults
/// included.
fn fresh<F: Real>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, gemm: RawGemm<F>) -> Array2<F> {
    let ((m, k), n) = (a.dim(), b.ncols());
    assert_eq!(b.nrows(), k, "product shapes {:?} x {:?}", a.dim(), b.dim());
    let (sa, sb) = (a.strides(), b.strides());
    let mut v = Vec::<F>::with_capacity(m * n);
    // SAFETY: the views are valid for their shapes and strides (ndarray guarantees it); C is
    // the m·n entries allocated above, row-major, which β = 0 writes without reading.
    unsafe {
        gemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            sa[0],
            sa[1],
            b.as_ptr(),
            sb[0],
            sb[1],
            F::zero(),
            v.as_mut_ptr(),
            n as isize,
            1,
        );
        v.set_len(m * n);
    }
    Array2::from_shape_vec((m, n), v).expect("m·n entries")
}

/// The same product through matrixmultiply (ndarray's own), the reference for `gemm`.
pub fn gemm_reference(
    alpha: f64,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
    beta: f64,
    c: &mut ArrayViewMut2<f64>,
) {
    general_mat_mul(alpha, &a, &b, beta, c);
}

/// C ← βC + α A·B through faer (single-threaded), in f64 (the dispatch's large skinny
/// products) or f32 (`sigprop bench --train` measures it at the trainer's shapes).
pub fn faer_gemm<F>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>, beta: F, c: &mut ArrayViewMut2<F>)
where
    F: Real + faer::traits::ComplexField + faer::traits::Conjugate<Canonical = F>,
{
    let (m, k) = a.dim();
    let n = b.ncols();
    assert!(
        b.nrows() == k && c.dim() == (m, n),
        "gemm shapes {:?} x {:?} -> {:?}",
        a.dim(),
        b.dim(),
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if beta == F::zero() {
        c.fill(F::zero());
    } else if beta != F::one() {
        c.mapv_inplace(|x| beta * x);
    }
    if k == 0 || alpha == F::zero() {
        return;
    }
    let (sa, sb) = (a.strides(), b.strides());
    let (sc0, sc1) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the views are valid for their shapes and strides (ndarray guarantees it), the
    // output does not alias the inputs (it is borrowed mutably), and the views outlive the
    // call.
    unsafe {
        let fa = MatRef::<F>::from_raw_parts(a.as_ptr(), m, k, sa[0], sa[1]);
        let fb = MatRef::<F>::from_raw_parts(b.as_ptr(), k, n, sb[0], sb[1]);
        let fc = MatMut::<F>::from_raw_parts_mut(c.as_mut_ptr(), m, n, sc0, sc1);
        faer::linalg::matmul::matmul(fc, Accum::Add, fa, fb, alpha, Par::Seq);
    }
}

/// α A·B in new memory.
pub fn product<F: Real>(alpha: F, a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    counted(a.nrows() * a.ncols() * b.ncols(), || {
        F::product_backend(alpha, a, b)
    })
}

/// A·B with B packed beforehand (a weight, once per step: `prepacked`); `None` when the
/// kernel does not take the product.
pub fn product_packed<F: Real>(a: ArrayView2<F>, b: &super::panel::Packed) -> Option<Array2<F>> {
    counted(a.nrows() * a.ncols() * b.dim().1, || {
        F::product_packed(F::one(), a, b)
    })
}

/// C += A·B with B packed beforehand; `None` (C untouched) when the kernel does not take
/// the product. With α = β = 1 the kernel rounds C + Σ once, as adding a fresh product
/// does: the bits of `C += &product_packed(A, B)`.
pub fn add_product_packed<F: Real>(
    a: ArrayView2<F>,
    b: &super::panel::Packed,
    c: &mut ArrayViewMut2<F>,
) -> Option<()> {
    counted(a.nrows() * a.ncols() * b.dim().1, || {
        F::gemm_packed(F::one(), a, b, F::one(), c)
    })
}

/// A·B.
pub fn mm<F: Real>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    product(F::one(), a, b)
}

/// A·Bᵀ: a layer's forward pass Y = X Wᵀ with W stored (fan_out × fan_in).
pub fn mm_t<F: Real>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    mm(a, b.t())
}

/// Aᵀ·B: a weight gradient Gᵀ X.
pub fn t_mm<F: Real>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    mm(a.t(), b)
}

/// The Gram matrix A·Aᵀ (rows are tokens).
pub fn gram<F: Real>(a: ArrayView2<F>) -> Array2<F> {
    mm(a, a.t())
}

/// Σ_ab A_ab B_ab.
pub fn frobenius_dot<F: Real>(a: ArrayView2<F>, b: ArrayView2<F>) -> F {
    a.iter().zip(b.iter()).map(|(&x, &y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// faer against matrixmultiply on transposed, sliced and empty operands, to rounding.
    #[test]
    fn gemm_matches_the_reference_backend() {
        let a = Array2::from_shape_fn((7, 13), |(i, j)| ((i * 31 + j * 17) % 23) as f64 - 11.0);
        let b = Array2::from_shape_fn((13, 9), |(i, j)| ((i * 7 + j * 5) % 19) as f64 * 0.25);
        for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.3)] {
            let mut c = Array2::from_shape_fn((7, 9), |(i, j)| (i + j) as f64);
            let mut r = c.clone();
            gemm(alpha, a.view(), b.view(), beta, &mut c.view_mut());
            gemm_reference(alpha, a.view(), b.view(), beta, &mut r.view_mut());
            let err = (&c - &r).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(err < 1e-12, "alpha {alpha} beta {beta}: {err}");
        }
        let at = a.t().to_owned();
        let c1 = mm(at.t(), b.view());
        let c2 = mm(a.view(), b.view());
        assert_eq!(c1, c2);
        let sliced = mm(
            a.slice(ndarray::s![1..5, 2..8]),
            b.slice(ndarray::s![2..8, ..;2]),
        );
        let mut r = Array2::zeros((4, 5));
        gemm_reference(
            1.0,
            a.slice(ndarray::s![1..5, 2..8]),
            b.slice(ndarray::s![2..8, ..;2]),
            0.0,
            &mut r.view_mut(),
        );
        assert!((&sliced - &r).iter().all(|x| x.abs() < 1e-12));
        let empty = mm(
            Array2::<f64>::zeros((3, 0)).view(),
            Array2::<f64>::zeros((0, 4)).view(),
        );
        assert_eq!(empty, Array2::<f64>::zeros((3, 4)));
    }

    /// `product` writes new memory once; it gives the bits of the zero-then-accumulate GEMM
    /// it replaced, in f32 and f64, on the trainer's shapes with transposed, sliced and
    /// reversed operands, and on an empty inner dimension (zeros).
    #[test]
    fn fresh_products_equal_the_zeroed_gemm() {
        fn check<F: Real>(m: usize, k: usize, n: usize) {
            let a = Array2::from_shape_fn((k, m + 3), |(i, j)| {
                F::of(((i * 31 + j * 17) % 23) as f64 - 11.0) / F::of(7.0)
            });
            let b = Array2::from_shape_fn((k, n), |(i, j)| {
                F::of(((i * 7 + j * 5) % 19) as f64 * 0.37 - 3.0)
            });
            let ops = [
                (a.t().slice(ndarray::s![..m, ..]).to_owned(), b.clone()),
                (
                    a.t().slice(ndarray::s![1..m + 1, ..]).to_owned(),
                    b.slice(ndarray::s![..;-1, ..]).to_owned(),
                ),
            ];
            for (x, y) in &ops {
                for (xv, yv) in [
                    (x.view(), y.view()),
                    (a.t().slice_move(ndarray::s![2..m + 2, ..]), y.view()),
                ] {
                    let mut r = Array2::<F>::zeros((m, n));
                    general_mat_mul(F::of(0.75), &xv, &yv, F::zero(), &mut r.view_mut());
                    let c = product(F::of(0.75), xv, yv);
                    assert!(
                        c.iter()
                            .zip(&r)
                            .all(|(u, v)| u.wide().to_bits() == v.wide().to_bits()),
                        "{m}x{k}x{n} in {}",
                        F::NAME
                    );
                }
            }
        }
        for (m, k, n) in [(96, 70, 80), (256, 64, 130), (70, 1, 65)] {
            check::<f32>(m, k, n);
            check::<f64>(m, k, n);
        }
        let z = product(
            1.0f32,
            Array2::zeros((80, 0)).view(),
            Array2::zeros((0, 70)).view(),
        );
        assert_eq!(z, Array2::<f32>::zeros((80, 70)));
    }
}
