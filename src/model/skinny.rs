//! Kernels for skinny products (f32, and f64 where noted): the Monte Carlo's, where one side
//! has the D ≤ a few dozen probe tokens or basis rows (Gram matrices, the conditional
//! sampler's rank-D products).
//! General GEMMs pack both operands, and at these shapes packing costs as much as the
//! arithmetic (matrixmultiply spent more time in `pack` than in its kernel in the f32
//! conditional sampler). Two shapes cover them, neither needs packing:
//!
//! - rank update C ← βC + α A·B with B row-major and k small: each C row is a sum of k
//!   scaled rows of B, accumulated 4 rows × 64 columns at a time in registers;
//! - dots C ← βC + α A·Xᵀ with the rows of A and X contiguous: m·n dot products of long rows.
//!
//! Each kernel has an AVX-512, an AVX2+FMA and a baseline version, picked at run time.

use std::mem::MaybeUninit;

use super::Real;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Compiles `$body` three times and dispatches on the CPU's features.
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?, $body:ident) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion!(pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]), axpy_body);
multiversion!(fn rank_update(alpha: f32, a: ArrayView2<f32>, b: &[f32], beta: f32, c: Out<f32>, n: usize), rank_body);
multiversion!(fn rank_update_f64(alpha: f64, a: ArrayView2<f64>, b: &[f64], beta: f64, c: Out<f64>, n: usize), rank_body);

/// Where the rank update writes C (m × n, row-major): initialized memory, which β ≠ 0 reads,
/// or new memory (β = 0), which is only written, so a fresh product needs no zeroing pass.
#[derive(Clone, Copy)]
struct Out<T = f32> {
    ptr: *mut T,
    len: usize,
    readable: bool,
}

impl<T: Real> Out<T> {
    fn init(c: &mut [T]) -> Out<T> {
        Out {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            readable: true,
        }
    }

    fn fresh(c: &mut [MaybeUninit<T>]) -> Out<T> {
        Out {
            ptr: c.as_mut_ptr().cast(),
            len: c.len(),
            readable: false,
        }
    }

    /// C[at .. at + W] ← α v + β C (β = 0: C is not read).
    #[inline(always)]
    fn store<const W: usize>(self, at: usize, alpha: T, beta: T, v: [T; W]) {
        assert!(at + W <= self.len && (self.readable || beta == T::zero()));
        // SAFETY: in bounds (checked); C is read only when initialized (checked).
        let c = unsafe { self.ptr.add(at) };
        for (l, &x) in v.iter().enumerate() {
            // SAFETY: as above.
            unsafe {
                *c.add(l) = if beta == T::zero() {
                    alpha * x
                } else {
                    alpha.mul_add(x, beta * *c.add(l))
                };
            }
        }
    }
}
multiversion!(fn dots(alpha: f32, a: ArrayView2<f32>, x: ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>), dots_body);

/// Σ a_i b_i over the common length: four vector partial sums over blocks of 4 vectors,
/// the blocks of one vector left into the first, then a scalar tail. Explicit AVX-512 and
/// AVX2 versions (the compiler kept array accumulators in memory); the portable fallback
/// sums in one pass. The rounding differs between them (as matrixmultiply's and faer's do
/// between CPUs), never the order within a machine.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::dot512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { x86::dot256(a, b) };
        }
    }
    a.iter().zip(b).fold(0.0, |s, (&x, &y)| x.mul_add(y, s))
}

/// [`dot`] of `a` with four rows at once, each result bit-identical to `dot(a, x[q])` (the
/// same partial sums in the same order): `a` is loaded once for four products. AVX-512 only
/// (four rows of four accumulators fill half its 32 registers; AVX2 has 16); elsewhere four
/// calls of `dot`.
pub fn dot4(a: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && x.iter().all(|r| r.len() == a.len()) {
            // SAFETY: the CPU has AVX-512F and the five slices have one length.
            return unsafe { x86::dot512x4(a, x) };
        }
    }
    x.map(|r| dot(a, r))
}

/// Whether AVX2 + FMA is the widest vector unit (no AVX-512F).
fn x86_avx2_only() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The dot products of two rows with four rows, on AVX2 (callers check [`x86_avx2_only`]);
/// elsewhere eight calls of [`dot`].
fn dot2x4(a0: &[f32], a1: &[f32], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        let n = a0.len();
        if x86_avx2_only() && a1.len() == n && x.iter().all(|r| r.len() == n) {
            // SAFETY: the CPU has AVX2 and FMA and the six slices have one length.
            return unsafe { x86::dot256_2x4(a0, a1, x) };
        }
    }
    [x.map(|r| dot(a0, r)), x.map(|r| dot(a1, r))]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Requires AVX2 and FMA; the six slices have one length. One accumulator per product
    /// over blocks of 8, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot256_2x4(a0: &[f32], a1: &[f32], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
        let n = a0.len();
        let body = n / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut c = 0;
        // SAFETY: every load reads 8 floats at c + 7 < body <= n.
        unsafe {
            while c < body {
                let u = _mm256_loadu_ps(a0.as_ptr().add(c));
                let v = _mm256_loadu_ps(a1.as_ptr().add(c));
                for q in 0..4 {
                    let w = _mm256_loadu_ps(x[q].as_ptr().add(c));
                    acc[0][q] = _mm256_fmadd_ps(u, w, acc[0][q]);
                    acc[1][q] = _mm256_fmadd_ps(v, w, acc[1][q]);
                }
                c += 8;
            }
        }
        let mut out = [[0.0f32; 4]; 2];
        for (r, a) in [a0, a1].into_iter().enumerate() {
            for q in 0..4 {
                let mut lanes = [0.0f32; 8];
                // SAFETY: lanes holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][q]) };
                let mut t = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                    + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
                for cc in body..n {
                    t = a[cc].mul_add(x[q][cc], t);
                }
                out[r][q] = t;
            }
        }
        out
    }

    /// Requires AVX2 and FMA; `x` holds `d` rows of `len`. One row against four at a time,
    /// four f64 lanes each, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gram_wide(x: &[f32], d: usize, len: usize, g: &mut ndarray::Array2<f64>) {
        assert!(x.len() >= d * len);
        let body = len / 4 * 4;
        let row = |i: usize| &x[i * len..(i + 1) * len];
        // Two rows against four at a time (6 loads, widened to f64, per 8 FMAs); a lone last
        // row reads itself twice and writes once. Entry (i, j) is the same dot whichever side
        // computes it.
        let mut i = 0;
        while i < d {
            let two = (d - i).min(2);
            let a = [row(i), row(i + two - 1)];
            let mut j = i;
            while j < d {
                let m = (d - j).min(4);
                let rows: [&[f32]; 4] = std::array::from_fn(|q| row(j + q.min(m - 1)));
                let mut acc = [[_mm256_setzero_pd(); 4]; 2];
                let mut c = 0;
                // SAFETY: every load reads 4 floats at c + 3 < body <= len.
                unsafe {
                    while c < body {
                        let va = _mm256_cvtps_pd(_mm_loadu_ps(a[0].as_ptr().add(c)));
                        let vb = _mm256_cvtps_pd(_mm_loadu_ps(a[1].as_ptr().add(c)));
                        for q in 0..4 {
                            let w = _mm256_cvtps_pd(_mm_loadu_ps(rows[q].as_ptr().add(c)));
                            acc[0][q] = _mm256_fmadd_pd(va, w, acc[0][q]);
                            acc[1][q] = _mm256_fmadd_pd(vb, w, acc[1][q]);
                        }
                        c += 4;
                    }
                }
                for (p, ap) in a.iter().enumerate().take(two) {
                    for q in 0..m {
                        let mut lanes = [0.0f64; 4];
                        // SAFETY: lanes holds 4 doubles.
                        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), acc[p][q]) };
                        let mut s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
                        for cc in body..len {
                            s = f64::from(ap[cc]).mul_add(f64::from(rows[q][cc]), s);
                        }
                        g[[i + p, j + q]] = s;
                        g[[j + q, i + p]] = s;
                    }
                }
                j += 4;
            }
            i += 2;
        }
    }

    /// Columns `from..len` of the output rows `range` of [`combine_wide`] in scalar
    /// arithmetic (the vector kernels' last columns): Σ_p T[i, p] x_p in p order with fused
    /// multiply-adds, as the vector bodies sum. `out` holds r × len floats; range.end <= r.
    #[inline(always)]
    unsafe fn combine_cols(
        t: &[f64],
        x: &[f32],
        rows: &[usize],
        len: usize,
        range: std::ops::Range<usize>,
        from: usize,
        out: *mut f32,
    ) {
        let r = rows.len();
        for i in range {
            for cc in from..len {
                let mut s = 0.0f64;
                for (p, &row) in rows.iter().enumerate() {
                    s = t[i * r + p].mul_add(f64::from(x[row * len + cc]), s);
                }
                // SAFETY: i * len + cc < r * len (the caller's contract).
                unsafe { out.add(i * len + cc).write(s as f32) };
            }
        }
    }

    /// Requires AVX2 and FMA; `out` is r × len writable floats. out ← T · x_rows (rounded to
    /// f32) for T (r × r, row-major) and the rows `rows` of x: four output rows × eight
    /// columns in registers, T's entries broadcast.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn combine_wide(t: &[f64], x: &[f32], rows: &[usize], len: usize, out: *mut f32) {
        let r = rows.len();
        let body = len / 8 * 8;
        let mut i0 = 0;
        while i0 < r {
            let m = (r - i0).min(4);
            let ti = |k: usize| i0 + k.min(m - 1);
            let mut c = 0;
            // SAFETY: loads and stores touch 8 doubles at c + 7 < body <= len of rows < r.
            unsafe {
                while c < body {
                    let mut acc = [[_mm256_setzero_pd(); 2]; 4];
                    for (p, &row) in rows.iter().enumerate() {
                        let at = x.as_ptr().add(row * len + c);
                        let x0 = _mm256_cvtps_pd(_mm_loadu_ps(at));
                        let x1 = _mm256_cvtps_pd(_mm_loadu_ps(at.add(4)));
                        for (k, a) in acc.iter_mut().enumerate() {
                            let b = _mm256_set1_pd(t[ti(k) * r + p]);
                            a[0] = _mm256_fmadd_pd(b, x0, a[0]);
                            a[1] = _mm256_fmadd_pd(b, x1, a[1]);
                        }
                    }
                    for (k, a) in acc.iter().enumerate().take(m) {
                        let v = _mm256_set_m128(_mm256_cvtpd_ps(a[1]), _mm256_cvtpd_ps(a[0]));
                        _mm256_storeu_ps(out.add((i0 + k) * len + c), v);
                    }
                    c += 8;
                }
            }
            // SAFETY: rows i0..i0 + m < r of `out`, which holds r × len floats.
            unsafe { combine_cols(t, x, rows, len, i0..i0 + m, body, out) };
            i0 += 4;
        }
    }

    /// The sixteen sums of v[0..16] in order (a transposing add tree: 8 + 4 + 2 + 2 adds).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn hsum16(v: &[__m512; 16]) -> __m512 {
        let w: [__m512; 8] = std::array::from_fn(|j| {
            let (a, b) = (v[2 * j], v[2 * j + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        let x: [__m512; 4] = std::array::from_fn(|j| {
            let (a, b) = (w[2 * j], w[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        });
        let y: [__m512; 2] = std::array::from_fn(|j| {
            let (a, b) = (x[2 * j], x[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        });
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(y[0], y[1]),
            _mm512_shuffle_f32x4::<0xDD>(y[0], y[1]),
        )
    }

    /// C ← βC + α A·Xᵀ on AVX-512 (the rows of A and X contiguous): 4 × 4 blocks of C, one
    /// accumulator per entry over the whole length (masked loads for the last partial
    /// vector), reduced by [`hsum16`]. An entry's value depends only on its two rows, not on
    /// where its block falls; with `gram` the upper blocks are computed and mirrored.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots512(
        alpha: f32,
        a: &[&[f32]],
        x: &[&[f32]],
        beta: f32,
        c: &mut ndarray::ArrayViewMut2<f32>,
        gram: bool,
    ) {
        let (m, n) = (a.len(), x.len());
        let k = a.first().map_or(0, |r| r.len());
        assert!(a.iter().chain(x).all(|r| r.len() == k));
        let body = k / 16 * 16;
        let tail: __mmask16 = ((1u32 << (k - body)) - 1) as __mmask16;
        let mut i0 = 0;
        while i0 < m {
            let mi = (m - i0).min(4);
            let pa: [*const f32; 4] = std::array::from_fn(|p| a[i0 + p.min(mi - 1)].as_ptr());
            let mut j0 = if gram { i0 } else { 0 };
            while j0 < n {
                let mj = (n - j0).min(4);
                let px: [*const f32; 4] = std::array::from_fn(|q| x[j0 + q.min(mj - 1)].as_ptr());
                let mut acc = [_mm512_setzero_ps(); 16];
                let mut at = 0;
                // SAFETY: full loads read 16 floats at at + 15 < body <= k; the masked load
                // reads only the k - body floats left.
                unsafe {
                    while at < body {
                        let va: [__m512; 4] =
                            std::array::from_fn(|p| _mm512_loadu_ps(pa[p].add(at)));
                        for q in 0..4 {
                            let w = _mm512_loadu_ps(px[q].add(at));
                            for p in 0..4 {
                                acc[4 * p + q] = _mm512_fmadd_ps(va[p], w, acc[4 * p + q]);
                            }
                        }
                        at += 16;
                    }
                    if tail != 0 {
                        let va: [__m512; 4] =
                            std::array::from_fn(|p| _mm512_maskz_loadu_ps(tail, pa[p].add(at)));
                        for q in 0..4 {
                            let w = _mm512_maskz_loadu_ps(tail, px[q].add(at));
                            for p in 0..4 {
                                acc[4 * p + q] = _mm512_fmadd_ps(va[p], w, acc[4 * p + q]);
                            }
                        }
                    }
                }
                let mut sums = [0f32; 16];
                // SAFETY: sums holds 16 floats.
                unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), hsum16(&acc)) };
                for p in 0..mi {
                    for q in 0..mj {
                        let v = alpha * sums[4 * p + q];
                        let e = &mut c[[i0 + p, j0 + q]];
                        *e = if beta == 0.0 { v } else { beta.mul_add(*e, v) };
                    }
                }
                j0 += 4;
            }
            i0 += 4;
        }
        if gram {
            for i in 0..m {
                for j in 0..i {
                    c[[i, j]] = c[[j, i]];
                }
            }
        }
    }

    /// [`dots512`] in f64, written into new memory (β = 0): C = α A·Xᵀ in 4 × 4 blocks with
    /// one 8-lane accumulator per entry over the whole length, each reduced on its own.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots512_f64(
        alpha: f64,
        a: &[&[f64]],
        x: &[&[f64]],
        c: &mut [std::mem::MaybeUninit<f64>],
    ) {
        let (m, n) = (a.len(), x.len());
        let k = a.first().map_or(0, |r| r.len());
        assert!(a.iter().chain(x).all(|r| r.len() == k) && c.len() == m * n);
        let body = k / 8 * 8;
        let tail: __mmask8 = ((1u32 << (k - body)) - 1) as __mmask8;
        let mut i0 = 0;
        while i0 < m {
            let mi = (m - i0).min(4);
            let pa: [*const f64; 4] = std::array::from_fn(|p| a[i0 + p.min(mi - 1)].as_ptr());
            let mut j0 = 0;
            while j0 < n {
                let mj = (n - j0).min(4);
                let px: [*const f64; 4] = std::array::from_fn(|q| x[j0 + q.min(mj - 1)].as_ptr());
                let mut acc = [_mm512_setzero_pd(); 16];
                let mut at = 0;
                // SAFETY: full loads read 8 doubles at at + 7 < body <= k; the masked load
                // reads only the k - body doubles left.
                unsafe {
                    while at < body {
                        let va: [__m512d; 4] =
                            std::array::from_fn(|p| _mm512_loadu_pd(pa[p].add(at)));
                        for q in 0..4 {
                            let w = _mm512_loadu_pd(px[q].add(at));
                            for p in 0..4 {
                                acc[4 * p + q] = _mm512_fmadd_pd(va[p], w, acc[4 * p + q]);
                            }
                        }
                        at += 8;
                    }
                    if tail != 0 {
                        let va: [__m512d; 4] =
                            std::array::from_fn(|p| _mm512_maskz_loadu_pd(tail, pa[p].add(at)));
                        for q in 0..4 {
                            let w = _mm512_maskz_loadu_pd(tail, px[q].add(at));
                            for p in 0..4 {
                                acc[4 * p + q] = _mm512_fmadd_pd(va[p], w, acc[4 * p + q]);
                            }
                        }
                    }
                }
                for p in 0..mi {
                    for q in 0..mj {
                        c[(i0 + p) * n + j0 + q]
                            .write(alpha * _mm512_reduce_add_pd(acc[4 * p + q]));
                    }
                }
                j0 += 4;
            }
            i0 += 4;
        }
    }

    /// Requires AVX-512F; `x` holds `d` rows of `len`. The upper triangle by 4 × 4 blocks of
    /// rows, eight f64 lanes per product, each row widened once per block; the diagonal
    /// blocks' lower halves are mirrored, so the matrix is exactly symmetric.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gram512(x: &[f32], d: usize, len: usize, g: &mut ndarray::Array2<f64>) {
        assert!(x.len() >= d * len);
        let body = len / 8 * 8;
        let row = |i: usize| &x[i * len..(i + 1) * len];
        let mut i0 = 0;
        while i0 < d {
            let mi = (d - i0).min(4);
            let a: [&[f32]; 4] = std::array::from_fn(|p| row(i0 + p.min(mi - 1)));
            let mut j0 = i0;
            while j0 < d {
                let mj = (d - j0).min(4);
                let b: [&[f32]; 4] = std::array::from_fn(|q| row(j0 + q.min(mj - 1)));
                let mut acc = [[_mm512_setzero_pd(); 4]; 4];
                let mut c = 0;
                // SAFETY: every load reads 8 floats at c + 7 < body <= len.
                unsafe {
                    while c < body {
                        let va: [__m512d; 4] = std::array::from_fn(|p| {
                            _mm512_cvtps_pd(_mm256_loadu_ps(a[p].as_ptr().add(c)))
                        });
                        for q in 0..4 {
                            let w = _mm512_cvtps_pd(_mm256_loadu_ps(b[q].as_ptr().add(c)));
                            for p in 0..4 {
                                acc[p][q] = _mm512_fmadd_pd(va[p], w, acc[p][q]);
                            }
                        }
                        c += 8;
                    }
                }
                for p in 0..mi {
                    for q in 0..mj {
                        let (i, j) = (i0 + p, j0 + q);
                        if j < i {
                            continue;
                        }
                        let mut s = _mm512_reduce_add_pd(acc[p][q]);
                        for cc in body..len {
                            s = f64::from(a[p][cc]).mul_add(f64::from(b[q][cc]), s);
                        }
                        g[[i, j]] = s;
                        g[[j, i]] = s;
                    }
                }
                j0 += 4;
            }
            i0 += 4;
        }
    }

    /// Requires AVX-512F; `out` is r × len writable floats. [`combine_wide`] with eight
    /// output rows × sixteen columns in registers (two f64 vectors per row).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn combine512(t: &[f64], x: &[f32], rows: &[usize], len: usize, out: *mut f32) {
        let r = rows.len();
        let body = len / 16 * 16;
        let mut i0 = 0;
        while i0 < r {
            let m = (r - i0).min(8);
            let ti = |k: usize| i0 + k.min(m - 1);
            let mut c = 0;
            // SAFETY: loads read 16 floats at c + 15 < body <= len of rows of x; stores write
            // 16 floats of rows i0 + k < r.
            unsafe {
                while c < body {
                    let mut acc = [[_mm512_setzero_pd(); 2]; 8];
                    for (p, &row) in rows.iter().enumerate() {
                        let at = x.as_ptr().add(row * len + c);
                        let x0 = _mm512_cvtps_pd(_mm256_loadu_ps(at));
                        let x1 = _mm512_cvtps_pd(_mm256_loadu_ps(at.add(8)));
                        for (k, a) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_pd(t[ti(k) * r + p]);
                            a[0] = _mm512_fmadd_pd(b, x0, a[0]);
                            a[1] = _mm512_fmadd_pd(b, x1, a[1]);
                        }
                    }
                    for (k, a) in acc.iter().enumerate().take(m) {
                        let o = out.add((i0 + k) * len + c);
                        _mm256_storeu_ps(o, _mm512_cvtpd_ps(a[0]));
                        _mm256_storeu_ps(o.add(8), _mm512_cvtpd_ps(a[1]));
                    }
                    c += 16;
                }
            }
            // SAFETY: rows i0..i0 + m < r of `out`, which holds r × len floats.
            unsafe { combine_cols(t, x, rows, len, i0..i0 + m, body, out) };
            i0 += 8;
        }
    }

    /// Writes one small-product kernel (f32 and f64 share the code): C ← βC + α A·B for
    /// m, k, n ≤ 64 with B's and C's rows contiguous and A at any strides, over columns in
    /// chunks of four vectors, four rows of C at a time, each step broadcasting A[i, p]
    /// against B's row p (read from L1), the chunk's last vector masked.
    macro_rules! small_kernel {
        ($name:ident, $rows:ident, $ops:ident, $t:ty, $v:ty, $lanes:literal, $mask:ty,
         $zero:ident, $set1:ident, $load:ident, $fmadd:ident, $mul:ident, $store:ident) => {
            /// # Safety
            /// AVX-512F present; A valid for m × k at (rsa, csa), B for k rows of n at
            /// stride ldb, C for m rows of n at stride ldc, C not overlapping A or B.
            #[target_feature(enable = "avx512f")]
            pub unsafe fn $name(
                alpha: $t,
                (a, rsa, csa): (*const $t, isize, isize),
                (m, k, n): (usize, usize, usize),
                (b, ldb): (*const $t, usize),
                beta: $t,
                (c, ldc): (*mut $t, usize),
            ) {
                for j0 in (0..n).step_by(4 * $lanes) {
                    let width = (n - j0).min(4 * $lanes);
                    let vectors = width.div_ceil($lanes);
                    let last = (u32::MAX >> (32 - (width - $lanes * (vectors - 1)))) as $mask;
                    let s = $ops {
                        alpha,
                        a: (a, rsa, csa),
                        k,
                        // SAFETY: column j0 < n of B and C.
                        b: (unsafe { b.add(j0) }, ldb),
                        last,
                        beta,
                        c: (unsafe { c.add(j0) }, ldc),
                    };
                    let mut i = 0;
                    // SAFETY: rows i.. of A and C lie inside the operands the caller
                    // vouched for.
                    unsafe {
                        macro_rules! rows {
                            ($r:literal) => {
                                match vectors {
                                    1 => $rows::<$r, 1>(&s, i),
                                    2 => $rows::<$r, 2>(&s, i),
                                    3 => $rows::<$r, 3>(&s, i),
                                    _ => $rows::<$r, 4>(&s, i),
                                }
                            };
                        }
                        while i + 4 <= m {
                            rows!(4);
                            i += 4;
                        }
                        while i < m {
                            rows!(1);
                            i += 1;
                        }
                    }
                }
            }

            /// One chunk of columns: A with its strides, B's and C's row strides, the lanes
            /// of the chunk's last vector.
            struct $ops {
                alpha: $t,
                a: (*const $t, isize, isize),
                k: usize,
                b: (*const $t, usize),
                last: $mask,
                beta: $t,
                c: (*mut $t, usize),
            }

            /// Rows i..i + R of one chunk, in V vectors (the last under `last`).
            #[target_feature(enable = "avx512f")]
            unsafe fn $rows<const R: usize, const V: usize>(s: &$ops, i: usize) {
                let $ops {
                    alpha,
                    a: (a, rsa, csa),
                    k,
                    b: (b, ldb),
                    last,
                    beta,
                    c: (c, ldc),
                } = *s;
                let lanes = |v: usize| if v + 1 == V { last } else { <$mask>::MAX };
                // SAFETY: the caller's bounds: rows i..i + R of A and C, k rows of B.
                unsafe {
                    let mut acc = [[$zero(); V]; R];
                    for p in 0..k {
                        let bp = b.add(p * ldb);
                        let bv: [$v; V] =
                            std::array::from_fn(|v| $load(lanes(v), bp.add($lanes * v)));
                        for (r, row) in acc.iter_mut().enumerate() {
                            let at = (i + r) as isize * rsa + p as isize * csa;
                            let x = $set1(*a.offset(at));
                            for (s, bv) in row.iter_mut().zip(&bv) {
                                *s = $fmadd(x, *bv, *s);
                            }
                        }
                    }
                    let (al, be) = ($set1(alpha), $set1(beta));
                    for (r, row) in acc.iter().enumerate() {
                        let cp = c.add((i + r) * ldc);
                        for (v, s) in row.iter().enumerate() {
                            let mut y = $mul(al, *s);
                            if beta != 0.0 {
                                y = $fmadd(be, $load(lanes(v), cp.add($lanes * v)), y);
                            }
                            $store(cp.add($lanes * v), lanes(v), y);
                        }
                    }
                }
            }
        };
    }

    // The per-head attention products Ω v, Ωᵀ ∂o, ∂Ω̃ k and ∂Ω̃ᵀ q, which matrixmultiply
    // packed at 30 GFLOP/s in f32 (n ≤ 64 is one chunk of four 16-lane vectors).
    small_kernel!(
        small512,
        small_rows,
        Small,
        f32,
        __m512,
        16,
        u16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_maskz_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_mul_ps,
        _mm512_mask_storeu_ps
    );
    small_kernel!(
        small512_f64,
        small_rows_f64,
        Small64,
        f64,
        __m512d,
        8,
        u8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_maskz_loadu_pd,
        _mm512_fmadd_pd,
        _mm512_mul_pd,
        _mm512_mask_storeu_pd
    );

    /// out (k × n, rows n apart) ← Xᵀ for X (n × k, rows `ldx` apart), in 16 × 16 blocks:
    /// two unpack stages and two 128-bit lane shuffles (64 shuffles per block), masked at
    /// the edges.
    ///
    /// # Safety
    /// AVX-512F present; X valid for n rows of k at stride ldx, `out` for k·n floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose512(x: *const f32, ldx: usize, n: usize, k: usize, out: *mut f32) {
        let lanes = |len: usize| (u32::MAX >> (32 - len.min(16))) as u16;
        for j0 in (0..n).step_by(16) {
            for p0 in (0..k).step_by(16) {
                let (rows, cols) = ((n - j0).min(16), (k - p0).min(16));
                // SAFETY: rows j0..j0 + rows of X, columns p0..p0 + cols (masked).
                let r: [__m512; 16] = std::array::from_fn(|i| unsafe {
                    if i < rows {
                        _mm512_maskz_loadu_ps(lanes(cols), x.add((j0 + i) * ldx + p0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let t: [__m512; 16] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm512_unpacklo_ps(a, b)
                    } else {
                        _mm512_unpackhi_ps(a, b)
                    }
                });
                // u[4i + q], lane L: rows 4i..4i + 4 of column 4L + q.
                let u: [__m512; 16] = std::array::from_fn(|i| {
                    let (base, q) = (i & !3, i & 3);
                    let (a, b) = (
                        _mm512_castps_pd(t[base + (q >> 1)]),
                        _mm512_castps_pd(t[base + 2 + (q >> 1)]),
                    );
                    _mm512_castpd_ps(if q & 1 == 0 {
                        _mm512_unpacklo_pd(a, b)
                    } else {
                        _mm512_unpackhi_pd(a, b)
                    })
                });
                let mut o = [_mm512_setzero_ps(); 16];
                for q in 0..4 {
                    let x0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
                    let x1 = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
                    let y0 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
                    let y1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
                    o[q] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
                    o[8 + q] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
                    o[4 + q] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
                    o[12 + q] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
                }
                for (c, v) in o.iter().enumerate().take(cols) {
                    // SAFETY: row p0 + c < k of out, columns j0..j0 + rows < n.
                    unsafe { _mm512_mask_storeu_ps(out.add((p0 + c) * n + j0), lanes(rows), *v) };
                }
            }
        }
    }

    /// Requires AVX-512F; `a` and `b` have the same length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 16 floats at i + 16q + 15 < n.
        unsafe {
            while i + 64 <= n {
                for (q, sq) in s.iter_mut().enumerate() {
                    let x = _mm512_loadu_ps(pa.add(i + 16 * q));
                    let y = _mm512_loadu_ps(pb.add(i + 16 * q));
                    *sq = _mm512_fmadd_ps(x, y, *sq);
                }
                i += 64;
            }
            while i + 16 <= n {
                let x = _mm512_loadu_ps(pa.add(i));
                let y = _mm512_loadu_ps(pb.add(i));
                s[0] = _mm512_fmadd_ps(x, y, s[0]);
                i += 16;
            }
        }
        let v = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
        let mut t = _mm512_reduce_add_ps(v);
        while i < n {
            t = a[i].mul_add(b[i], t);
            i += 1;
        }
        t
    }

    /// Four [`dot512`]s of `a` sharing its loads; requires AVX-512F and one common length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot512x4(a: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
        let n = a.len();
        let pa = a.as_ptr();
        let px = x.map(|r| r.as_ptr());
        // s[q][r]: partial sum q of row r, as `dot512`'s s[q].
        let mut s = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        // SAFETY: every load reads 16 floats at i + 16q + 15 < n of a slice of length n.
        unsafe {
            while i + 64 <= n {
                for (q, sq) in s.iter_mut().enumerate() {
                    let y = _mm512_loadu_ps(pa.add(i + 16 * q));
                    for (acc, p) in sq.iter_mut().zip(px) {
                        *acc = _mm512_fmadd_ps(y, _mm512_loadu_ps(p.add(i + 16 * q)), *acc);
                    }
                }
                i += 64;
            }
            while i + 16 <= n {
                let y = _mm512_loadu_ps(pa.add(i));
                for (acc, p) in s[0].iter_mut().zip(px) {
                    *acc = _mm512_fmadd_ps(y, _mm512_loadu_ps(p.add(i)), *acc);
                }
                i += 16;
            }
        }
        let mut out = [0f32; 4];
        for (r, (o, xr)) in out.iter_mut().zip(x).enumerate() {
            let v = _mm512_add_ps(
                _mm512_add_ps(s[0][r], s[1][r]),
                _mm512_add_ps(s[2][r], s[3][r]),
            );
            let mut t = _mm512_reduce_add_ps(v);
            for (&aj, &xj) in a[i..].iter().zip(&xr[i..]) {
                t = aj.mul_add(xj, t);
            }
            *o = t;
        }
        out
    }

    /// Requires AVX2 and FMA; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats at i + 8q + 7 < n.
        unsafe {
            while i + 32 <= n {
                for (q, sq) in s.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * q));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * q));
                    *sq = _mm256_fmadd_ps(x, y, *sq);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pa.add(i));
                let y = _mm256_loadu_ps(pb.add(i));
                s[0] = _mm256_fmadd_ps(x, y, s[0]);
                i += 8;
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut t = _mm_cvtss_f32(h);
        while i < n {
            t = a[i].mul_add(b[i], t);
            i += 1;
        }
        t
    }
}

/// y ← y + α x.
#[inline(always)]
fn axpy_body(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(x, *y);
    }
}

/// C (m × n, row-major `c`) ← βC + α A·B, B (k × n) row-major `b`: R rows × 64 columns of C
/// at a time in registers (R·4 vectors of 16), the remainder columns one at a time.
#[inline(always)]
fn rank_body<T: Real>(alpha: T, a: ArrayView2<T>, b: &[T], beta: T, c: Out<T>, n: usize) {
    // Tiles of four 512-bit vectors per row: 64 f32 or 32 f64 columns.
    if std::mem::size_of::<T>() == 4 {
        rank_tiles::<T, 64, 32>(alpha, a, b, beta, c, n)
    } else {
        rank_tiles::<T, 32, 16>(alpha, a, b, beta, c, n)
    }
}

/// The rank update in tiles of R rows × W columns (W2 on AVX2 alone).
#[inline(always)]
fn rank_tiles<T: Real, const W: usize, const W2: usize>(
    alpha: T,
    a: ArrayView2<T>,
    b: &[T],
    beta: T,
    c: Out<T>,
    n: usize,
) {
    let m = a.nrows();
    let mut i = 0;
    if x86_avx2_only() {
        // 16 ymm registers: a 3 × 32 tile keeps its 12 accumulators, the broadcast and a row
        // of B in registers (4 × 64, AVX-512's tile, would spill half of them).
        while i + 3 <= m {
            rank_rows::<T, 3, W2>(alpha, a, i, b, beta, c, n);
            i += 3;
        }
    }
    while i + 4 <= m {
        rank_rows::<T, 4, W>(alpha, a, i, b, beta, c, n);
        i += 4;
    }
    while i < m {
        rank_rows::<T, 1, W>(alpha, a, i, b, beta, c, n);
        i += 1;
    }
}

#[inline(always)]
fn rank_rows<T: Real, const R: usize, const W: usize>(
    alpha: T,
    a: ArrayView2<T>,
    i0: usize,
    b: &[T],
    beta: T,
    c: Out<T>,
    n: usize,
) {
    let k = a.ncols();
    assert!(k <= SKINNY, "a rank update of rank {k}");
    // A's R × k block gathered once, and B's rows and C's tiles moved by value: with the
    // accumulators indexed through a reference the compiler stored all of them to the stack
    // on every step of k.
    let mut ablk = [[T::zero(); SKINNY]; R];
    for (r, row) in ablk.iter_mut().enumerate() {
        for (p, x) in row[..k].iter_mut().enumerate() {
            *x = a[[i0 + r, p]];
        }
    }
    let mut j0 = 0;
    while j0 + W <= n {
        let mut acc = [[T::zero(); W]; R];
        for p in 0..k {
            let Ok(brow) = <[T; W]>::try_from(&b[p * n + j0..p * n + j0 + W]) else {
                unreachable!("a slice of W entries")
            };
            for r in 0..R {
                let av = ablk[r][p];
                for l in 0..W {
                    acc[r][l] = av.mul_add(brow[l], acc[r][l]);
                }
            }
        }
        for (r, accr) in acc.into_iter().enumerate() {
            c.store((i0 + r) * n + j0, alpha, beta, accr);
        }
        j0 += W;
    }
    for j in j0..n {
        for (r, arow) in ablk.iter().enumerate() {
            let mut v = T::zero();
            for (p, &av) in arow[..k].iter().enumerate() {
                v = av.mul_add(b[p * n + j], v);
            }
            c.store((i0 + r) * n + j, alpha, beta, [v]);
        }
    }
}

/// Every row of `x` as a slice, if each is contiguous.
pub(crate) fn row_slices<T>(x: ArrayView2<'_, T>) -> Option<Vec<&[T]>> {
    (0..x.nrows())
        .map(|i| x.index_axis_move(ndarray::Axis(0), i).to_slice())
        .collect()
}

/// Rows j … j + 3 of `x` as slices, if they are contiguous.
fn four_rows(x: ArrayView2<'_, f32>, j: usize) -> Option<[&[f32]; 4]> {
    let r = move |q: usize| x.index_axis_move(ndarray::Axis(0), j + q).to_slice();
    Some([r(0)?, r(1)?, r(2)?, r(3)?])
}

/// C ← βC + α A·Xᵀ with A (m × k) and X (n × k) with contiguous rows: 4 × 4 blocks of C in
/// registers on AVX-512 (`x86::dots512`: each row is loaded once per block, not once per
/// entry, which halved the time of the f32 sampler's 16 × 16 × 2048 products), else four
/// columns at a time ([`dot4`]). A Gram matrix (X the same view as A, β = 0) computes the
/// upper triangle and mirrors it.
#[inline(always)]
fn dots_body(
    alpha: f32,
    a: ArrayView2<f32>,
    x: ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let (m, n) = (a.nrows(), x.nrows());
    let gram =
        beta == 0.0 && a.as_ptr() == x.as_ptr() && a.dim() == x.dim() && a.strides() == x.strides();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && let (Some(ar), Some(xr)) = (row_slices(a), row_slices(x))
    {
        // SAFETY: the CPU has AVX-512F; the rows have one length.
        unsafe { x86::dots512(alpha, &ar, &xr, beta, c, gram) };
        return;
    }
    let store = |c: &mut f32, v: f32| {
        let v = alpha * v;
        *c = if beta == 0.0 { v } else { beta.mul_add(*c, v) };
    };
    // Two rows of A against four of X at once where AVX2 is the widest unit: 8 accumulators,
    // 6 loads per 8 FMAs instead of 2 per FMA (the rows of A, X stay contiguous).
    let mut i0 = 0;
    if x86_avx2_only() && !gram {
        while i0 + 2 <= m {
            let (Some(a0), Some(a1)) = (a.row(i0).to_slice(), a.row(i0 + 1).to_slice()) else {
                break;
            };
            let mut j = 0;
            while j + 4 <= n {
                let Some(xs) = four_rows(x, j) else {
                    break;
                };
                let v = dot2x4(a0, a1, xs);
                for (r, vr) in v.iter().enumerate() {
                    for (q, &vq) in vr.iter().enumerate() {
                        store(&mut c[[i0 + r, j + q]], vq);
                    }
                }
                j += 4;
            }
            while j < n {
                if let Some(xj) = x.row(j).to_slice() {
                    store(&mut c[[i0, j]], dot(a0, xj));
                    store(&mut c[[i0 + 1, j]], dot(a1, xj));
                }
                j += 1;
            }
            i0 += 2;
        }
    }
    for i in i0..m {
        let Some(ai) = a.row(i).to_slice() else {
            continue;
        };
        let mut j = if gram { i } else { 0 };
        while j + 4 <= n {
            let Some(xs) = four_rows(x, j) else {
                break;
            };
            for (q, v) in dot4(ai, xs).into_iter().enumerate() {
                store(&mut c[[i, j + q]], v);
            }
            j += 4;
        }
        while j < n {
            if let Some(xj) = x.row(j).to_slice() {
                store(&mut c[[i, j]], dot(ai, xj));
            }
            j += 1;
        }
    }
    if gram {
        for i in 0..m {
            for j in 0..i {
                c[[i, j]] = c[[j, i]];
            }
        }
    }
}

/// The most rows (and inner length, for the rank update) a product may have to take a
/// packing-free kernel: beyond it the packed GEMM's cache blocking wins (the trainer's
/// 512-row batches).
pub const SKINNY: usize = 64;

/// C ← βC + α A·B in f32 on a packing-free kernel when the product is skinny and the rows
/// it reads are contiguous; `None` (nothing done) otherwise.
pub fn try_gemm(
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) -> Option<()> {
    let (m, k) = a.dim();
    let n = b.ncols();
    if b.nrows() != k || c.dim() != (m, n) || m == 0 || n == 0 {
        return None;
    }
    let rows = |s: &[isize]| s[1] == 1;
    if m <= SKINNY
        && k <= SKINNY
        && n >= 64
        && c.is_standard_layout()
        && let (Some(bs), Some(cs)) = (b.as_slice(), c.as_slice_mut())
    {
        rank_update(alpha, a, bs, beta, Out::init(cs), n);
        return Some(());
    }
    #[cfg(target_arch = "x86_64")]
    if m <= SKINNY
        && k <= SKINNY
        && n <= SKINNY
        && k > 0
        && rows(c.strides())
        && c.strides()[0] >= 0
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        // B's rows contiguous (Ω v), or copied so (q kᵀ: the dots kernel made 13 GFLOP/s
        // of its 16 × 32 × 16 reductions).
        let mut copy = [MaybeUninit::<f32>::uninit(); SKINNY * SKINNY];
        let (bp, ldb) = if rows(b.strides()) && b.strides()[0] >= 0 {
            (b.as_ptr(), b.strides()[0] as usize)
        } else {
            let dst = copy.as_mut_ptr().cast::<f32>();
            let bt = b.t();
            if rows(bt.strides()) && bt.strides()[0] >= 0 {
                // Bᵀ's rows contiguous (k's rows in q kᵀ): 16 × 16 blocks transposed in
                // registers.
                // SAFETY: Bᵀ holds n rows of k at its row stride; `copy` k·n ≤ 64² floats.
                unsafe { x86::transpose512(bt.as_ptr(), bt.strides()[0] as usize, n, k, dst) };
            } else {
                for (j, col) in b.columns().into_iter().enumerate() {
                    for (p, &x) in col.iter().enumerate() {
                        copy[p * n + j].write(x);
                    }
                }
            }
            (copy.as_ptr().cast::<f32>(), n)
        };
        let (sa, ldc) = (a.strides(), c.strides()[0] as usize);
        // SAFETY: the CPU has AVX-512F; the views hold m × k and m × n entries at their
        // strides, B k rows of n at stride ldb, and C (borrowed mutably) overlaps neither.
        unsafe {
            x86::small512(
                alpha,
                (a.as_ptr(), sa[0], sa[1]),
                (m, k, n),
                (bp, ldb),
                beta,
                (c.as_mut_ptr(), ldc),
            )
        };
        return Some(());
    }
    let bt = b.t();
    if m <= SKINNY && n <= SKINNY && k >= 16 && rows(a.strides()) && rows(bt.strides()) {
        dots(alpha, a, bt, beta, c);
        return Some(());
    }
    None
}

/// out (k × n, row-major) ← Xᵀ for X (n × k) with contiguous rows, in 16 × 16 blocks
/// transposed in registers (AVX-512); false (nothing written) on other CPUs or layouts.
pub fn transpose(x: ArrayView2<f32>, out: &mut [f32]) -> bool {
    let (n, k) = x.dim();
    assert_eq!(out.len(), n * k, "transpose into {} floats", out.len());
    #[cfg(target_arch = "x86_64")]
    if x.strides()[1] == 1 && x.strides()[0] >= 0 && std::arch::is_x86_feature_detected!("avx512f")
    {
        // SAFETY: the CPU has AVX-512F; X holds n rows of k at its row stride, out n·k.
        unsafe { x86::transpose512(x.as_ptr(), x.strides()[0] as usize, n, k, out.as_mut_ptr()) };
        return true;
    }
    false
}

/// α A·B in new memory, written once with no zeroing pass, when the product takes the
/// rank-update kernel (the conditional sampler's Y = σ C M and ∂X = σ A Z); `None`
/// otherwise.
pub fn try_product(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Option<Array2<f32>> {
    rank_product(alpha, a, b, rank_update)
}

/// A rank-update kernel: C ← β C + α A·B with B's n columns row-major.
type RankUpdate<T> = fn(T, ArrayView2<T>, &[T], T, Out<T>, usize);

/// α A·B in new memory through `update` (the rank-update kernel of A's float type), written
/// once, when m, k ≤ [`SKINNY`], n ≥ 64 and B is row-major; `None` otherwise.
fn rank_product<T: Real>(
    alpha: T,
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    update: RankUpdate<T>,
) -> Option<Array2<T>> {
    let (m, k) = a.dim();
    let n = b.ncols();
    if b.nrows() != k || m == 0 || n < 64 || m > SKINNY || k > SKINNY {
        return None;
    }
    let bs = b.as_slice()?;
    let mut c = Vec::with_capacity(m * n);
    update(
        alpha,
        a,
        bs,
        T::zero(),
        Out::fresh(&mut c.spare_capacity_mut()[..m * n]),
        n,
    );
    // SAFETY: the rank update wrote all m × n entries.
    unsafe { c.set_len(m * n) };
    Array2::from_shape_vec((m, n), c).ok()
}

/// C ← βC + α A·B in f64 for rank updates with β = 0 (m, k ≤ [`SKINNY`], n ≥ 64, B's and
/// C's rows contiguous, on every CPU) and for small products (m, k, n ≤
/// [`SKINNY`], the per-head attention products) on AVX-512: B's rows contiguous on
/// [`x86::small512_f64`], or (β = 0, C contiguous) A's and Bᵀ's rows contiguous on the dots
/// kernel. matrixmultiply packed both operands of each; `None` (nothing done) for other
/// shapes, layouts or CPUs. A rank update with β ≠ 0 stays with matrixmultiply: its edge
/// tiles round α·AB and βC separately, so the rank kernel's single rounding moved an f64
/// encoder–decoder ensemble (a pivot tie in the conditional sampler went the other way).
pub fn try_gemm_f64(
    alpha: f64,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
    beta: f64,
    c: &mut ArrayViewMut2<f64>,
) -> Option<()> {
    let (m, k) = a.dim();
    let n = b.ncols();
    if b.nrows() != k || c.dim() != (m, n) || m == 0 || n == 0 || k == 0 {
        return None;
    }
    if m <= SKINNY
        && k <= SKINNY
        && n >= 64
        && beta == 0.0
        && c.is_standard_layout()
        && let (Some(bs), Some(cs)) = (b.as_slice(), c.as_slice_mut())
    {
        rank_update_f64(alpha, a, bs, beta, Out::init(cs), n);
        return Some(());
    }
    if m > SKINNY || k > SKINNY || n > SKINNY {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let rows = |s: &[isize]| s[1] == 1 && s[0] >= 0;
        if rows(b.strides()) && rows(c.strides()) {
            let (sa, ldb, ldc) = (a.strides(), b.strides()[0], c.strides()[0]);
            // SAFETY: the CPU has AVX-512F; the views hold m × k, k × n and m × n entries
            // at their strides, and C (borrowed mutably) overlaps neither input.
            unsafe {
                x86::small512_f64(
                    alpha,
                    (a.as_ptr(), sa[0], sa[1]),
                    (m, k, n),
                    (b.as_ptr(), ldb as usize),
                    beta,
                    (c.as_mut_ptr(), ldc as usize),
                )
            };
            return Some(());
        }
        if beta == 0.0
            && k >= 8
            && let (Some(ar), Some(xr)) = (row_slices(a), row_slices(b.t()))
            && let Some(cs) = c.as_slice_mut()
        {
            // SAFETY: f64 and MaybeUninit<f64> share their layout; the kernel writes every
            // entry, so C stays initialized.
            let out = unsafe {
                std::slice::from_raw_parts_mut(cs.as_mut_ptr().cast::<MaybeUninit<f64>>(), cs.len())
            };
            // SAFETY: the CPU has AVX-512F; the rows have one length k.
            unsafe { x86::dots512_f64(alpha, &ar, &xr, out) };
            return Some(());
        }
    }
    None
}

/// α A·B in new memory, written once, for two kinds of f64 products: rank ≤ [`SKINNY`]
/// updates with B's rows contiguous and n ≥ 64 (Y = σ C M, ∂X = σ A Z of the sampler) on the
/// rank-update kernel, the f32 one's body in f64; and outputs of at most [`SKINNY`] ×
/// [`SKINNY`], k ≥ 16 and contiguous rows of A and Bᵀ (Grams, G·M, Z·Q_Xᵀ) on the AVX-512
/// dots kernel (`x86::dots512_f64`). `None` for other shapes or CPUs. matrixmultiply packed
/// both operands of every such product, as long as it then took to multiply (f64
/// conditional sampler at n = 512); on these shapes its sums came out bit for bit the same.
pub fn try_product_f64(alpha: f64, a: ArrayView2<f64>, b: ArrayView2<f64>) -> Option<Array2<f64>> {
    let (m, k) = a.dim();
    let n = b.ncols();
    if b.nrows() != k || m == 0 {
        return None;
    }
    if let Some(c) = rank_product(alpha, a, b, rank_update_f64) {
        return Some(c);
    }
    #[cfg(target_arch = "x86_64")]
    if m <= SKINNY
        && n <= SKINNY
        && n > 0
        && k >= 16
        && std::arch::is_x86_feature_detected!("avx512f")
        && let (Some(ar), Some(xr)) = (row_slices(a), row_slices(b.t()))
    {
        let mut c = Vec::with_capacity(m * n);
        // SAFETY: the CPU has AVX-512F; the rows have one length k.
        unsafe { x86::dots512_f64(alpha, &ar, &xr, &mut c.spare_capacity_mut()[..m * n]) };
        // SAFETY: the kernel wrote all m × n entries.
        unsafe { c.set_len(m * n) };
        return Array2::from_shape_vec((m, n), c).ok();
    }
    None
}

/// The Gram matrix X Xᵀ of the rows of `x` (D rows of `len`, row-major, f32), in f64: the
/// f32 sampler's factorizations accumulate it in f64 ([`crate::mc::conditional`]); products
/// of f32 numbers are exact in f64.
pub fn gram_wide(x: &[f32], d: usize, len: usize) -> ndarray::Array2<f64> {
    let mut g = ndarray::Array2::<f64>::zeros((d, d));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; x holds d rows of len.
            unsafe { x86::gram512(x, d, len, &mut g) };
            return g;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; x holds d rows of len.
            unsafe { x86::gram_wide(x, d, len, &mut g) };
            return g;
        }
    }
    for i in 0..d {
        for j in i..d {
            let s: f64 = (0..len)
                .map(|c| f64::from(x[i * len + c]) * f64::from(x[j * len + c]))
                .sum();
            g[[i, j]] = s;
            g[[j, i]] = s;
        }
    }
    g
}

/// out (r × len) ← T · X_p, summed in f64 and rounded once to f32, for T (r × r,
/// row-major) and the rows p = `rows` of x (f32, rows of len): the f32 sampler forms its
/// orthonormal rows Q = L_pp⁻¹ X_p this way ([`crate::mc::conditional`]). Each entry is
/// Σ_p T[i, p] x_p in p order with fused multiply-adds on every path.
pub fn combine_wide(t: &[f64], x: &[f32], rows: &[usize], len: usize) -> Vec<f32> {
    let r = rows.len();
    assert!(t.len() >= r * r);
    assert!(rows.iter().all(|&p| (p + 1) * len <= x.len()));
    let mut out = Vec::with_capacity(r * len);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<f32>();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the kernel writes all r × len floats of `dst`.
            unsafe {
                x86::combine512(t, x, rows, len, dst);
                out.set_len(r * len);
            }
            return out;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the kernel writes all r × len floats.
            unsafe {
                x86::combine_wide(t, x, rows, len, dst);
                out.set_len(r * len);
            }
            return out;
        }
    }
    for i in 0..r {
        for c in 0..len {
            let mut s = 0.0f64;
            for (p, &row) in rows.iter().enumerate() {
                s = t[i * r + p].mul_add(f64::from(x[row * len + c]), s);
            }
            out.push(s as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The f64 kernels against plain loops: `combine_wide` bit for bit (both sum T[i, p] x_p
    /// in p order with fused multiply-adds and round once), `gram_wide` to rounding and
    /// exactly symmetric,
    /// on shapes with ragged row blocks and column tails.
    #[test]
    fn wide_kernels_match_plain_loops() {
        for (r, len) in [(1usize, 3usize), (5, 13), (16, 512), (7, 2051)] {
            let x: Vec<f32> = (0..r * len)
                .map(|k| ((k * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let t: Vec<f64> = (0..r * r)
                .map(|k| ((k * 13 % 17) as f64 - 8.0) / 3.0)
                .collect();
            // The rows in another order (the pivots).
            let rows: Vec<usize> = (0..r).map(|p| (p * 3 + 1) % r).collect();
            let got = combine_wide(&t, &x, &rows, len);
            for i in 0..r {
                for c in 0..len {
                    let mut s = 0.0f64;
                    for (p, &row) in rows.iter().enumerate() {
                        s = t[i * r + p].mul_add(f64::from(x[row * len + c]), s);
                    }
                    assert_eq!(
                        got[i * len + c].to_bits(),
                        (s as f32).to_bits(),
                        "combine r {r} len {len} ({i}, {c})"
                    );
                }
            }
            let g = gram_wide(&x, r, len);
            // The AVX2 kernels, which the dispatch passes over on an AVX-512 machine.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut c2 = vec![f32::NAN; r * len];
                let mut g2 = Array2::<f64>::zeros((r, r));
                // SAFETY: the CPU has AVX2 and FMA; c2 holds r × len floats.
                unsafe {
                    x86::combine_wide(&t, &x, &rows, len, c2.as_mut_ptr());
                    x86::gram_wide(&x, r, len, &mut g2);
                }
                assert_eq!(c2, got, "AVX2 combine r {r} len {len}");
                for (a, b) in g2.iter().zip(&g) {
                    assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "AVX2 gram r {r}");
                }
            }
            for i in 0..r {
                for j in 0..r {
                    let s: f64 = (0..len)
                        .map(|c| f64::from(x[i * len + c]) * f64::from(x[j * len + c]))
                        .sum();
                    assert!(
                        (g[[i, j]] - s).abs() <= 1e-12 * s.abs().max(1.0),
                        "gram ({i}, {j})"
                    );
                    assert_eq!(g[[i, j]], g[[j, i]]);
                }
            }
        }
    }

    /// An entry of a dots product depends only on its two rows, not on the blocking: the
    /// Gram path (upper blocks, mirrored) equals the general product of the rows with a copy
    /// of themselves bit for bit, and so does each row taken alone or the rows shifted by one
    /// (which moves every block boundary). Except on AVX2-only CPUs, whose 2 × 4 kernel sums
    /// in another order than its single rows (its accuracy is the next test's).
    #[test]
    fn dots_entries_do_not_depend_on_the_blocking() {
        for (m, k) in [(16, 512), (13, 70), (5, 16), (9, 2048), (6, 37)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| {
                (((i * 131 + j * 71) % 97) as f32 - 48.0) * 0.0173
            });
            let prod = |x: ArrayView2<f32>, y: ArrayView2<f32>| {
                let mut c = Array2::<f32>::from_elem((x.nrows(), y.nrows()), f32::NAN);
                assert!(try_gemm(1.0, x, y.t(), 0.0, &mut c.view_mut()).is_some());
                c
            };
            let g = prod(a.view(), a.view());
            let copy = a.clone();
            let full = prod(a.view(), copy.view());
            let bits = |c: &Array2<f32>| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g), bits(&full), "gram {m}x{k}");
            assert_eq!(g, g.t(), "gram {m}x{k} not symmetric");
            if x86_avx2_only() {
                continue;
            }
            for i in 0..m {
                let one = prod(a.slice(ndarray::s![i..i + 1, ..]), copy.view());
                assert_eq!(
                    bits(&one),
                    bits(&full.slice(ndarray::s![i..i + 1, ..]).to_owned())
                );
            }
            let shifted = prod(
                a.slice(ndarray::s![1.., ..]),
                copy.slice(ndarray::s![1.., ..]),
            );
            assert_eq!(
                bits(&shifted),
                bits(&full.slice(ndarray::s![1.., 1..]).to_owned()),
                "shifted {m}x{k}"
            );
        }
    }

    fn avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The kernels against the f64 product of the same f32 inputs, within the f32 bound
    /// k·2⁻²³·Σ|a||b| (forward error of a k-term dot product): B with contiguous rows, with
    /// contiguous columns (transposed into the small-product kernel in 16 × 16 blocks,
    /// partial ones at the edges) and with neither.
    #[test]
    fn kernels_match_the_f64_product() {
        for (m, k, n) in [
            (5, 3, 70),
            (16, 16, 300),
            (3, 700, 9),
            (16, 64, 64),
            (7, 40, 129),
            (4, 17, 5),
            (16, 32, 16),
            (13, 33, 17),
            (1, 1, 1),
            (64, 50, 47),
        ] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 17) % 23) as f32 - 11.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 7 + j * 5) % 19) as f32 * 0.25);
            // n × k row-major, so b = bt_ownedᵀ has contiguous columns. (`b.t().to_owned()`
            // keeps the transposed memory order, which made this case a second row-major B.)
            let bt_owned = Array2::from_shape_fn((n, k), |(j, p)| b[[p, j]]);
            for (alpha, beta) in [(1.0f32, 0.0f32), (-0.5, 1.0), (2.0, 0.3)] {
                let c0 = Array2::from_shape_fn((m, n), |(i, j)| (i + j) as f32);
                let mut exact = c0.mapv(|x| x as f64 * beta as f64);
                let mut absb = Array2::<f64>::zeros((m, n));
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            let t = a[[i, p]] as f64 * b[[p, j]] as f64;
                            exact[[i, j]] += alpha as f64 * t;
                            absb[[i, j]] += (alpha as f64 * t).abs();
                        }
                        absb[[i, j]] += (c0[[i, j]] as f64 * beta as f64).abs();
                    }
                }
                // B's columns 2 apart: neither its rows nor its columns contiguous.
                let wide = Array2::from_shape_fn((k, 2 * n), |(i, j)| b[[i, j / 2]]);
                let strided = wide.slice(ndarray::s![.., ..;2]);
                for (name, bv) in [
                    ("rank", b.view()),
                    ("dots", bt_owned.t()),
                    ("strided", strided),
                ] {
                    let mut c = c0.clone();
                    if try_gemm(alpha, a.view(), bv, beta, &mut c.view_mut()).is_none() {
                        let small = m <= SKINNY && k <= SKINNY && n <= SKINNY;
                        let must = (small && avx512())
                            || (name == "rank" && m <= SKINNY && k <= SKINNY && n >= 64)
                            || (name == "dots" && m <= SKINNY && n <= SKINNY && k >= 16);
                        assert!(!must, "{name} {m}x{k}x{n} not taken");
                        continue;
                    }
                    for ((x, e), s) in c.iter().zip(&exact).zip(&absb) {
                        let bound = (k as f64 + 2.0) * 1.2e-7 * s + 1e-30;
                        assert!(
                            (*x as f64 - e).abs() <= bound,
                            "{name} {m}x{k}x{n} α {alpha} β {beta}: {x} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// The f64 small-product kernels against a plain triple loop, within (k + 2)·ε·Σ|a||b|:
    /// B with contiguous rows (n past one chunk of 32 and masked edges), B with contiguous
    /// columns (the dots kernel, β = 0), and β ≠ 0, which that layout declines.
    #[test]
    fn f64_small_products_match_a_plain_loop() {
        if !avx512() {
            return;
        }
        for (m, k, n) in [
            (16, 64, 16),
            (16, 16, 64),
            (5, 9, 37),
            (1, 1, 1),
            (64, 64, 64),
        ] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 17) % 23) as f64 - 11.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 7 + j * 5) % 19) as f64 * 0.25);
            let bt = Array2::from_shape_fn((n, k), |(j, p)| b[[p, j]]);
            for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0)] {
                let c0 = Array2::from_shape_fn((m, n), |(i, j)| (i + 2 * j) as f64);
                for (name, bv) in [("rows", b.view()), ("columns", bt.t())] {
                    let mut c = c0.clone();
                    let taken = try_gemm_f64(alpha, a.view(), bv, beta, &mut c.view_mut());
                    if taken.is_none() {
                        assert!(
                            name == "columns" && (beta != 0.0 || k < 8),
                            "{name} declined"
                        );
                        continue;
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|p| alpha * a[[i, p]] * b[[p, j]]);
                            let want = terms.clone().sum::<f64>() + beta * c0[[i, j]];
                            let size = terms.map(f64::abs).sum::<f64>() + (beta * c0[[i, j]]).abs();
                            let bound = (k as f64 + 2.0) * f64::EPSILON * size;
                            assert!((c[[i, j]] - want).abs() <= bound, "{name} {m}x{k}x{n}");
                        }
                    }
                }
            }
        }
    }

    /// The f64 rank update (rank ≤ 64, rows of B contiguous, n ≥ 64: the conditional
    /// sampler's Y = σ C M and ∂X = σ A Z) against a plain loop within (k + 2)·ε·Σ|a||b|,
    /// into new memory and into initialized C with β = 0; tiles of 4 rows and single rows,
    /// 32-column blocks and a scalar tail, on every CPU (the body is portable). β ≠ 0 is
    /// declined (matrixmultiply keeps it, see `try_gemm_f64`).
    #[test]
    fn f64_rank_updates_match_a_plain_loop() {
        for (m, k, n) in [(16, 16, 512), (13, 9, 100), (4, 1, 64), (5, 64, 70)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 17) % 23) as f64 - 11.3);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 7 + j * 5) % 19) as f64 * 0.27);
            let fresh =
                try_product_f64(0.75, a.view(), b.view()).expect("the rank update takes it");
            let mut init = Array2::from_elem((m, n), f64::NAN);
            try_gemm_f64(0.75, a.view(), b.view(), 0.0, &mut init.view_mut())
                .expect("the rank update takes it");
            for got in [&fresh, &init] {
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|p| 0.75 * a[[i, p]] * b[[p, j]]);
                        let want = terms.clone().sum::<f64>();
                        let bound =
                            (k as f64 + 2.0) * f64::EPSILON * terms.map(f64::abs).sum::<f64>();
                        let err = (got[[i, j]] - want).abs();
                        assert!(err <= bound, "{m}x{k}x{n}: {err:e} > {bound:e}");
                    }
                }
            }
            let mut c = Array2::zeros((m, n));
            assert!(
                try_gemm_f64(0.75, a.view(), b.view(), 1.0, &mut c.view_mut()).is_none()
                    || n <= SKINNY
            );
        }
    }

    /// The f64 dots kernel against matrixmultiply, to rounding: partial blocks (m, n not
    /// multiples of 4), a masked tail (k not a multiple of 8), a transposed B, and shapes it
    /// declines.
    #[test]
    fn f64_dots_agree_with_matrixmultiply() {
        for (m, k, n) in [(16, 512, 16), (5, 29, 7), (64, 16, 3), (1, 2049, 1)] {
            let a = ndarray::Array2::from_shape_fn((m, k), |(i, j)| {
                ((i * 7 + j * 3) % 11) as f64 - 5.3
            });
            let bt =
                ndarray::Array2::from_shape_fn((n, k), |(i, j)| ((i * 5 + j) % 13) as f64 * 0.31);
            let mut want = ndarray::Array2::zeros((m, n));
            ndarray::linalg::general_mat_mul(0.7, &a, &bt.t(), 0.0, &mut want);
            let Some(got) = try_product_f64(0.7, a.view(), bt.t()) else {
                assert!(!std::arch::is_x86_feature_detected!("avx512f"));
                continue;
            };
            let scale = want.iter().fold(1.0f64, |s, x| s.max(x.abs()));
            let err = (&got - &want).iter().fold(0.0f64, |s, x| s.max(x.abs()));
            assert!(
                err < 1e-14 * scale * (k as f64).sqrt(),
                "{m}x{k}x{n}: {err:e}"
            );
        }
        let wide = ndarray::Array2::<f64>::zeros((65, 20));
        assert!(try_product_f64(1.0, wide.view(), wide.t()).is_none());
        assert!(
            try_product_f64(
                1.0,
                wide.t().slice(ndarray::s![..3, ..8]),
                wide.slice(ndarray::s![..8, ..3])
            )
            .is_none()
        );
    }
}
