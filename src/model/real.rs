//! The floating-point type a network computes in.
//!
//! The Monte Carlo engine and the theory work in f64: the observables are differences of
//! O(1/n) between O(1) numbers, and the ensemble sums are double-double. The trainer works
//! in f32 by default, as PyTorch does: the GEMMs run at twice the f64 rate here (≈ 200 vs
//! 100 GFLOP/s per core at the trainer's 512 × 256 × 1024 shapes, matrixmultiply with
//! AVX-512), and a training step does not need more than f32's 24 bits. One model definition
//! serves both: every block is generic over `Real`.

use std::iter::Sum;
use std::mem::MaybeUninit;

use ndarray::{Array2, ArrayView2, ArrayViewMut2, NdFloat};

pub trait Real: NdFloat + num_traits::FromPrimitive + Sum + Default + 'static {
    /// The name in configs and logs: "f32" or "f64".
    const NAME: &'static str;
    /// A constant or a config value (always given in f64).
    fn of(x: f64) -> Self;
    /// Widened to f64, exactly.
    fn wide(self) -> f64;
    /// The error function.
    fn erf(self) -> Self;
    /// GELU's (σ, σ') over the common length of three slices, vectorized
    /// ([`fastmath`](super::fastmath): `gelu64` agrees with the scalar
    /// [`Activation::f_df`](super::activation::Activation::f_df) to 4e-16, `gelu32` to f32
    /// rounding). The outputs may be uninitialized: every element is written, none read.
    fn gelu_slices(z: &[Self], a: &mut [MaybeUninit<Self>], da: &mut [MaybeUninit<Self>]);
    /// One AdamW update over contiguous slices ([`crate::train::optim::adamw_body`]);
    /// f32 and f64 compile it for the CPU's widest vectors.
    fn adamw_slices(
        th: &mut [Self],
        g: &[Self],
        m: &mut [Self],
        v: &mut [Self],
        k: &crate::train::optim::AdamStep<Self>,
    ) -> bool {
        crate::train::optim::adamw_body(th, g, m, v, k)
    }
    /// Σ x² in f64 over a slice ([`crate::train::optim::sum_squares_body`]); f32 and f64
    /// compile it for the CPU's widest vectors.
    fn sum_squares(x: &[Self]) -> f64;
    /// a ← a + b over the common length, returning Σ a² of the result with the bits of
    /// `sum_squares` ([`crate::train::optim::add_sum_squares_body`]).
    fn add_sum_squares(a: &mut [Self], b: &[Self]) -> f64;
    /// C ← α·A·B + β·C on the fastest backend for this type and shape.
    fn gemm_backend(
        alpha: Self,
        a: ArrayView2<Self>,
        b: ArrayView2<Self>,
        beta: Self,
        c: &mut ArrayViewMut2<Self>,
    );
    /// α A·B in new memory (`linalg::product`).
    fn product_backend(alpha: Self, a: ArrayView2<Self>, b: ArrayView2<Self>) -> Array2<Self>;
    /// B packed for [`panel`](super::panel)'s kernel, where this type and CPU have one and
    /// the shape suits it.
    fn pack(_b: ArrayView2<Self>) -> Option<super::panel::Packed> {
        None
    }
    /// Refills `packed` with B; false (left as it was) where [`Real::pack`] gives `None`.
    fn repack(_packed: &mut super::panel::Packed, _b: ArrayView2<Self>) -> bool {
        false
    }
    /// α A·B in new memory from a B packed by [`Real::pack`]; `None` when the kernel does
    /// not take the product.
    fn product_packed(
        _alpha: Self,
        _a: ArrayView2<Self>,
        _b: &super::panel::Packed,
    ) -> Option<Array2<Self>> {
        None
    }
    /// C ← α A·B + β C from a B packed by [`Real::pack`]; `None` (C untouched) when the
    /// kernel does not take the product.
    fn gemm_packed(
        _alpha: Self,
        _a: ArrayView2<Self>,
        _b: &super::panel::Packed,
        _beta: Self,
        _c: &mut ndarray::ArrayViewMut2<Self>,
    ) -> Option<()> {
        None
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline]
    fn of(x: f64) -> f64 {
        x
    }
    #[inline]
    fn wide(self) -> f64 {
        self
    }
    #[inline]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    fn adamw_slices(
        th: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        k: &crate::train::optim::AdamStep<f64>,
    ) -> bool {
        crate::train::optim::adamw_f64(th, g, m, v, k)
    }
    fn gelu_slices(z: &[f64], a: &mut [MaybeUninit<f64>], da: &mut [MaybeUninit<f64>]) {
        super::fastmath::gelu_slices_f64(z, a, da)
    }
    fn sum_squares(x: &[f64]) -> f64 {
        crate::train::optim::sum_squares_f64(x)
    }
    fn add_sum_squares(a: &mut [f64], b: &[f64]) -> f64 {
        crate::train::optim::add_sum_squares_f64(a, b)
    }
    #[inline]
    fn gemm_backend(
        alpha: f64,
        a: ArrayView2<f64>,
        b: ArrayView2<f64>,
        beta: f64,
        c: &mut ArrayViewMut2<f64>,
    ) {
        super::linalg::backend_f64(alpha, a, b, beta, c)
    }
    fn product_backend(alpha: f64, a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
        super::linalg::product_f64(alpha, a, b)
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline]
    fn of(x: f64) -> f32 {
        x as f32
    }
    #[inline]
    fn wide(self) -> f64 {
        self as f64
    }
    /// The vectorizable polynomial of `fastmath` (within 2.5e-7 of libm's erf).
    #[inline]
    fn erf(self) -> f32 {
        super::fastmath::erf32(self)
    }
    fn gelu_slices(z: &[f32], a: &mut [MaybeUninit<f32>], da: &mut [MaybeUninit<f32>]) {
        super::fastmath::gelu_slices(z, a, da)
    }
    fn adamw_slices(
        th: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        k: &crate::train::optim::AdamStep<f32>,
    ) -> bool {
        crate::train::optim::adamw_f32(th, g, m, v, k)
    }
    fn sum_squares(x: &[f32]) -> f64 {
        crate::train::optim::sum_squares_f32(x)
    }
    fn add_sum_squares(a: &mut [f32], b: &[f32]) -> f64 {
        crate::train::optim::add_sum_squares_f32(a, b)
    }
    /// Skinny products (the Monte Carlo's) on the packing-free kernels of `skinny`; the rest
    /// on matrixmultiply: the trainer's products have hundreds of rows, where it beat faer
    /// in f64 (see `linalg`).
    #[inline]
    fn gemm_backend(
        alpha: f32,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        beta: f32,
        c: &mut ArrayViewMut2<f32>,
    ) {
        if super::skinny::try_gemm(alpha, a, b, beta, c).is_none()
            && super::panel::try_gemm(alpha, a, b, beta, c).is_none()
        {
            ndarray::linalg::general_mat_mul(alpha, &a, &b, beta, c)
        }
    }
    /// Rank-update shapes and matrixmultiply's products are written once into new memory;
    /// small outputs as `gemm_backend`.
    fn product_backend(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
        if let Some(c) = super::skinny::try_product(alpha, a, b) {
            return c;
        }
        if a.nrows() <= super::skinny::SKINNY && b.ncols() <= super::skinny::SKINNY {
            // A small output, which `gemm_backend` may give to the dots kernel.
            let mut c = Array2::zeros((a.nrows(), b.ncols()));
            Self::gemm_backend(alpha, a, b, 0.0, &mut c.view_mut());
            return c;
        }
        if let Some(c) = super::panel::try_product(alpha, a, b) {
            return c;
        }
        super::linalg::product_f32(alpha, a, b)
    }
    fn pack(b: ArrayView2<f32>) -> Option<super::panel::Packed> {
        super::panel::available().then(|| super::panel::Packed::new(b))?
    }
    fn repack(packed: &mut super::panel::Packed, b: ArrayView2<f32>) -> bool {
        super::panel::available() && packed.fill(b)
    }
    fn product_packed(
        alpha: f32,
        a: ArrayView2<f32>,
        b: &super::panel::Packed,
    ) -> Option<Array2<f32>> {
        super::panel::product_packed(alpha, a, b)
    }
    fn gemm_packed(
        alpha: f32,
        a: ArrayView2<f32>,
        b: &super::panel::Packed,
        beta: f32,
        c: &mut ndarray::ArrayViewMut2<f32>,
    ) -> Option<()> {
        super::panel::gemm_packed(alpha, a, b, beta, c)
    }
}
