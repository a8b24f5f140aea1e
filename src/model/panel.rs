//! f32 products at the trainer's shapes (a batch of a few hundred rows against a weight): an
//! AVX-512 kernel that reads A where it lies and B from panels 32 columns wide.
//!
//! matrixmultiply's sgemm packs both operands on every call. In a training step the
//! operands were last touched long before (a weight at the previous update, an activation in
//! the forward pass), so its packing waits on memory: 26% of its kernel's time in a step,
//! against 7% on the same shapes in a hot loop. Here only B, the operand a tile reads
//! k × 32 at a time, is packed (a weight once per update, shared by every thread: see
//! [`Packed`]), and A streams from its rows, or its columns when it is a transposed
//! cotangent, while the tile multiplies.
//!
//! Tile: 12 rows × 32 columns, 24 AVX-512 accumulators. Each k step loads 2 vectors of B and
//! broadcasts 12 entries of A into 24 FMAs. Measured here, hot, on B packed beforehand:
//! 153–176 GFLOP/s at 256 × {256, 1024} × {256, 768, 1024}, against matrixmultiply's
//! 134–148 packing included.

use std::cell::RefCell;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Columns of a panel (two AVX-512 vectors of f32).
pub const NR: usize = 32;
/// Rows of a tile.
const MR: usize = 12;
/// Fewer rows than this stay with the skinny kernels and matrixmultiply: packing B for a
/// handful of rows (a Monte Carlo sample's D tokens) costs more than it saves.
pub const MIN_ROWS: usize = 65;

/// B (k × n, n a multiple of [`NR`]) as n / NR panels of k rows × NR columns: entry (p, j)
/// at (j / NR)·k·NR + p·NR + j % NR, so a tile reads its panel front to back.
#[derive(Clone, Debug, Default)]
pub struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    /// B packed; `None` when its columns do not fill whole panels.
    pub fn new(b: ArrayView2<f32>) -> Option<Packed> {
        let mut p = Packed::default();
        p.fill(b).then_some(p)
    }

    /// (k, n) of the packed B.
    pub fn dim(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The packed k × n floats: the n / NR panels (the buffer may be longer).
    fn packed(&self) -> &[f32] {
        &self.data[..self.k * self.n]
    }

    /// Packs `b` into this buffer, reusing its allocation; false (nothing packed) when the
    /// columns do not fill whole panels.
    pub fn fill(&mut self, b: ArrayView2<f32>) -> bool {
        let (k, n) = b.dim();
        if !n.is_multiple_of(NR) || k == 0 {
            return false;
        }
        (self.k, self.n) = (k, n);
        // The buffer only grows: a weight repacked every update has the same size, and a
        // thread's scratch, packed for products of several sizes in turn, would otherwise
        // zero its grown part at every alternation (0.8% of a training step).
        if self.data.len() < k * n {
            self.data.resize(k * n, 0.0);
        }
        let (rs, cs) = (b.strides()[0], b.strides()[1]);
        let panels = self.data[..k * n].chunks_exact_mut(k * NR);
        if cs == 1 {
            // Rows of B contiguous (a weight in the backward pass, an activation): 32 at a time.
            for (jj, panel) in panels.enumerate() {
                let cols = b.slice(ndarray::s![.., jj * NR..(jj + 1) * NR]);
                for (dst, src) in panel.chunks_exact_mut(NR).zip(cols.rows()) {
                    let src = src.to_slice().expect("unit column stride");
                    // As arrays, so the copy is two vector moves, not a call to memmove.
                    let dst: &mut [f32; NR] = dst.try_into().expect("a panel row");
                    *dst = src.try_into().expect("a panel row");
                }
            }
        } else if rs == 1 {
            // Columns contiguous (Wᵀ in the forward pass): W's 32 rows of the panel
            // transposed in 16 × 16 blocks, or each column scattered down its panel.
            let w = b.t();
            for (jj, panel) in panels.enumerate() {
                if super::skinny::transpose(w.slice(ndarray::s![jj * NR..(jj + 1) * NR, ..]), panel)
                {
                    continue;
                }
                for j in 0..NR {
                    let col = b.column(jj * NR + j);
                    let src = col.to_slice().expect("unit row stride");
                    for (p, &x) in src.iter().enumerate() {
                        panel[p * NR + j] = x;
                    }
                }
            }
        } else {
            for (jj, panel) in panels.enumerate() {
                for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = b[[p, jj * NR + j]];
                    }
                }
            }
        }
        true
    }
}

/// How the kernel reads A (m × k): its rows contiguous (stride `ld` between rows), or its
/// columns (stride `ld` between columns, a transposed row-major matrix), or packed by
/// [`pack_columns`] (`ld` = [`MR`], blocks of MR rows `block` entries apart).
#[derive(Clone, Copy)]
struct Lhs {
    ptr: *const f32,
    ld: usize,
    columns: bool,
    block: Option<usize>,
}

impl Lhs {
    fn of(a: &ArrayView2<f32>) -> Option<Lhs> {
        let (rs, cs) = (a.strides()[0], a.strides()[1]);
        let (ptr, block) = (a.as_ptr(), None);
        match (rs, cs) {
            (_, 1) if rs >= 0 => Some(Lhs {
                ptr,
                ld: rs as usize,
                columns: false,
                block,
            }),
            (1, _) if cs >= 0 => Some(Lhs {
                ptr,
                ld: cs as usize,
                columns: true,
                block,
            }),
            _ => None,
        }
    }

    /// Where rows i.. (i a multiple of MR) start.
    fn row(&self, i: usize) -> usize {
        match (self.block, self.columns) {
            (Some(block), _) => i / MR * block,
            (None, true) => i,
            (None, false) => i * self.ld,
        }
    }
}

thread_local! {
    /// Each thread's buffer for a column-major A packed per call.
    static SCRATCH_A: RefCell<Vec<f32>> = RefCell::default();
}

/// Blocks of [`MR`] rows that [`pack_columns`] fills side by side.
const GROUP: usize = 8;

/// Copies a column-major A (m × k, columns `a.ld` apart) into blocks of MR rows, each k
/// columns of MR contiguous entries, and runs `f` on it. A tile reads its 12 entries per
/// column from one cache line instead of k lines `ld` apart, which map to a few L1 sets
/// (the gradient Gᵀ X, with G's rows 1–4 KB apart) and evict each other.
fn pack_columns<T>(a: Lhs, m: usize, k: usize, f: impl FnOnce(Lhs) -> T) -> T {
    SCRATCH_A.with_borrow_mut(|buf| {
        let blocks = m.div_ceil(MR);
        // Grown only, as `Packed::fill`'s buffer.
        if buf.len() < blocks * k * MR {
            buf.resize(blocks * k * MR, 0.0);
        }
        // Eight blocks at a time (96 rows, six cache lines of each column): each block's
        // copy is written front to back, where a column at a time wrote 48 bytes into every
        // block, a partial line each (2.2-2.8% of a training step in the profile, now
        // 1.7-2.2%).
        let blocks_of = buf[..blocks * k * MR].chunks_mut(GROUP * k * MR);
        for (gi, group) in blocks_of.enumerate() {
            let r0 = gi * GROUP * MR;
            for p in 0..k {
                // SAFETY: column p of A holds m entries from p·ld (the caller's view).
                let col = unsafe { std::slice::from_raw_parts(a.ptr.add(p * a.ld), m) };
                let col = &col[r0..m.min(r0 + GROUP * MR)];
                for (block, src) in group.chunks_mut(k * MR).zip(col.chunks(MR)) {
                    let dst = &mut block[p * MR..p * MR + src.len()];
                    match <&[f32; MR]>::try_from(src) {
                        // A whole block's column as an array: vector moves, not memmove.
                        Ok(src) => *<&mut [f32; MR]>::try_from(dst).expect("MR") = *src,
                        Err(_) => dst.copy_from_slice(src),
                    }
                }
            }
        }
        f(Lhs {
            ptr: buf.as_ptr(),
            ld: MR,
            columns: true,
            block: Some(k * MR),
        })
    })
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether C = A·B with A (m × k) and B (k × n) goes to the kernel.
pub fn takes(m: usize, k: usize, n: usize) -> bool {
    m >= MIN_ROWS && k > 0 && n.is_multiple_of(NR) && n > 0 && available()
}

thread_local! {
    /// Each thread's buffer for a B packed per call (its allocation kept between calls).
    static SCRATCH: RefCell<Packed> = RefCell::default();
}

/// C ← α A·B + β C on the kernel, B packed for this call, when the shapes suit it, A has a
/// contiguous axis and C contiguous rows; `None` (nothing done) otherwise.
pub fn try_gemm(
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) -> Option<()> {
    let ((m, k), n) = (a.dim(), b.ncols());
    if b.nrows() != k || c.dim() != (m, n) || !takes(m, k, n) {
        return None;
    }
    let (lhs, ldc) = layouts(&a, c)?;
    with_rhs(b, |rhs| {
        // SAFETY: the kernel is available (`takes`); A's view covers m × k at its strides,
        // B's k × n, C's m rows of n at stride ldc, and C does not alias A or B.
        unsafe { run(alpha, lhs, m, rhs, beta, c.as_mut_ptr(), ldc) };
    });
    Some(())
}

/// How the kernel reads A and C's row stride, when A has a contiguous axis and C's rows are
/// contiguous.
fn layouts(a: &ArrayView2<f32>, c: &ArrayViewMut2<f32>) -> Option<(Lhs, usize)> {
    let ldc = usize::try_from(c.strides()[0])
        .ok()
        .filter(|_| c.strides()[1] == 1)?;
    Some((Lhs::of(a)?, ldc))
}

/// B packed into this thread's buffer for one call. (Read in place, a row-major B's rows
/// 1–4 KB apart fall into a few L1 sets; it measured 2–3% slower in a training step.)
fn with_rhs<T>(b: ArrayView2<f32>, f: impl FnOnce(&Packed) -> T) -> T {
    SCRATCH.with_borrow_mut(|packed| {
        packed.fill(b);
        f(packed)
    })
}

/// α A·B in new memory (written once, no zeroing pass) on the kernel, B packed for this
/// call; `None` when the product does not suit it.
pub fn try_product(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Option<Array2<f32>> {
    let ((m, k), n) = (a.dim(), b.ncols());
    if b.nrows() != k || !takes(m, k, n) {
        return None;
    }
    let lhs = Lhs::of(&a)?;
    Some(with_rhs(b, |rhs| fresh(alpha, lhs, m, rhs)))
}

/// α A·B into new row-major memory, every entry written once (β = 0 reads nothing).
fn fresh(alpha: f32, a: Lhs, m: usize, b: &Packed) -> Array2<f32> {
    let n = b.n;
    let mut c = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the callers checked the shapes and that the kernel is available; with β = 0
    // the kernel writes all m × n entries of the new C without reading them.
    unsafe {
        run(alpha, a, m, b, 0.0, c.as_mut_ptr(), n);
        c.set_len(m * n);
    }
    Array2::from_shape_vec((m, n), c).expect("m·n entries")
}

/// α A·B in new memory with B packed beforehand (a weight packed once per update); `None`
/// when the kernel does not take the product or A has no contiguous axis.
pub fn product_packed(alpha: f32, a: ArrayView2<f32>, b: &Packed) -> Option<Array2<f32>> {
    let (m, k) = a.dim();
    if b.k != k || !takes(m, k, b.n) {
        return None;
    }
    Some(fresh(alpha, Lhs::of(&a)?, m, b))
}

/// C ← α A·B + β C with B packed beforehand, when the kernel takes the product, A has a
/// contiguous axis and C contiguous rows; `None` (nothing done) otherwise.
pub fn gemm_packed(
    alpha: f32,
    a: ArrayView2<f32>,
    b: &Packed,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) -> Option<()> {
    let (m, k) = a.dim();
    if b.k != k || c.dim() != (m, b.n) || !takes(m, k, b.n) {
        return None;
    }
    let (lhs, ldc) = layouts(&a, c)?;
    // SAFETY: the kernel is available (`takes`); A's view covers m × k at its strides, B is
    // k × n packed, C m rows of n at stride ldc, and C (borrowed mutably) aliases neither.
    unsafe { run(alpha, lhs, m, b, beta, c.as_mut_ptr(), ldc) };
    Some(())
}

/// The loop over tiles: panel by panel (its k × 32 floats stay in cache while every row
/// block of A passes), 12 rows at a time.
///
/// # Safety
/// AVX-512F present; `a` valid for m × k at its layout, `c` for m
/// rows of n at stride `ldc`, not overlapping A or B.
unsafe fn run(alpha: f32, a: Lhs, m: usize, b: &Packed, beta: f32, c: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: passed on from the caller.
    unsafe {
        if a.columns && a.block.is_none() {
            pack_columns(a, m, b.k, |a| x86::run(alpha, a, m, b, beta, c, ldc))
        } else {
            x86::run(alpha, a, m, b, beta, c, ldc)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (alpha, a, m, b, beta, c, ldc);
        unreachable!("the kernel is x86-64 only (`available`)")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Lhs, MR, NR, Packed};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        alpha: f32,
        a: Lhs,
        m: usize,
        b: &Packed,
        beta: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let k = b.k;
        // The next panel's cache lines (two per row, 16 floats each), fetched into L2 a share before each
        // tile of this one: a weight packed at the start of the step is no longer in
        // cache, and the tiles' arithmetic hides the fetch.
        let lines = 2 * k;
        let share = lines.div_ceil(m.div_ceil(MR));
        let data = b.packed();
        for (jj, panel) in data.chunks_exact(k * NR).enumerate() {
            let next = data.get((jj + 1) * k * NR..(jj + 2) * k * NR);
            let mut fetched = 0;
            let mut prefetch = || {
                if let Some(next) = next {
                    let end = (fetched + share).min(lines);
                    for line in fetched..end {
                        // SAFETY: a prefetch of an address inside `next`.
                        unsafe { _mm_prefetch::<_MM_HINT_T1>(next.as_ptr().add(line * 16).cast()) };
                    }
                    fetched = end;
                }
            };
            let bq = (panel.as_ptr(), NR);
            let mut i = 0;
            // SAFETY (the tiles): rows i..i + R of A and C and columns jj·NR.. of C lie
            // inside the operands the caller vouched for.
            unsafe {
                while i + MR <= m {
                    prefetch();
                    let (aq, cq) = ((a.ptr.add(a.row(i)), a.ld), (c.add(i * ldc + jj * NR), ldc));
                    if a.columns {
                        tile::<MR, true>(k, aq, bq, alpha, beta, cq);
                    } else {
                        tile::<MR, false>(k, aq, bq, alpha, beta, cq);
                    }
                    i += MR;
                }
                prefetch();
                let (aq, cq) = ((a.ptr.add(a.row(i)), a.ld), (c.add(i * ldc + jj * NR), ldc));
                macro_rules! rest {
                    ($($r:literal)*) => {
                        match (m - i, a.columns) {
                            $(
                                ($r, true) => tile::<$r, true>(k, aq, bq, alpha, beta, cq),
                                ($r, false) => tile::<$r, false>(k, aq, bq, alpha, beta, cq),
                            )*
                            _ => {}
                        }
                    };
                }
                rest!(1 2 3 4 5 6 7 8 9 10 11);
            }
        }
    }

    /// C[0..R, 0..32] ← α Σ_p A[0..R, p] B[p, 0..32] + β C (β = 0: C only written). Each
    /// operand is (pointer, stride): B's rows and C's rows `ld` apart; A's entry (i, p) at
    /// p·ld + i when `COLUMNS`, at i·ld + p otherwise.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const COLUMNS: bool>(
        k: usize,
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        alpha: f32,
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) {
        // SAFETY: the caller's: R rows of A over k, k rows of the panel, R rows of C.
        unsafe {
            let mut lo = [_mm512_setzero_ps(); R];
            let mut hi = [_mm512_setzero_ps(); R];
            for p in 0..k {
                let b0 = _mm512_loadu_ps(b.add(p * ldb));
                let b1 = _mm512_loadu_ps(b.add(p * ldb + 16));
                for i in 0..R {
                    let x = if COLUMNS {
                        *a.add(p * lda + i)
                    } else {
                        *a.add(i * lda + p)
                    };
                    let x = _mm512_set1_ps(x);
                    lo[i] = _mm512_fmadd_ps(x, b0, lo[i]);
                    hi[i] = _mm512_fmadd_ps(x, b1, hi[i]);
                }
            }
            let al = _mm512_set1_ps(alpha);
            let be = _mm512_set1_ps(beta);
            for i in 0..R {
                let ci = c.add(i * ldc);
                let (mut y0, mut y1) = (_mm512_mul_ps(al, lo[i]), _mm512_mul_ps(al, hi[i]));
                if beta != 0.0 {
                    y0 = _mm512_fmadd_ps(be, _mm512_loadu_ps(ci), y0);
                    y1 = _mm512_fmadd_ps(be, _mm512_loadu_ps(ci.add(16)), y1);
                }
                _mm512_storeu_ps(ci, y0);
                _mm512_storeu_ps(ci.add(16), y1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Entries in [−½, ½) from a fixed hash: no randomness needed to test a product.
    fn matrix(m: usize, n: usize, salt: usize) -> Array2<f32> {
        Array2::from_shape_fn((m, n), |(i, j)| {
            let h = (i * 7919 + j * 104_729 + salt * 15_485_863) % 10_007;
            h as f32 / 10_007.0 - 0.5
        })
    }

    /// The product in f64 entry by entry (the independent computation), and α Σ_p |a||b|.
    fn reference(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<(f64, f64)> {
        let (m, k) = a.dim();
        Array2::from_shape_fn((m, b.ncols()), |(i, j)| {
            let terms = (0..k).map(|p| alpha as f64 * a[[i, p]] as f64 * b[[p, j]] as f64);
            (terms.clone().sum(), terms.map(f64::abs).sum())
        })
    }

    /// Within Higham's bound γ_(k+2) α Σ|a||b| (γ_j = jε/(1 − jε), ε = 2⁻²⁴: k FMAs, the
    /// scaling by α and the β add) of the f64 product: the layouts the trainer feeds the
    /// kernel, edge tiles included. The shapes run in this order on one thread, so the
    /// smaller products after 256 × 256 × 256 read a scratch buffer longer than they fill.
    #[test]
    fn products_match_f64_for_every_layout_and_edge() {
        if !available() {
            return;
        }
        for &(m, k, n) in &[(65, 7, 32), (256, 256, 256), (77, 300, 96), (130, 64, 1024)] {
            let a = matrix(m, k, 1);
            let at = matrix(k, m, 2);
            let b = matrix(k, n, 3);
            let bt = matrix(n, k, 4);
            let cases: [(ArrayView2<f32>, ArrayView2<f32>); 4] = [
                (a.view(), b.view()),
                (at.t(), b.view()),
                (a.view(), bt.t()),
                (at.t(), bt.t()),
            ];
            for (a, b) in cases {
                let want = reference(0.75, a, b);
                let got = try_product(0.75, a, b).expect("the kernel takes it");
                let mut acc = matrix(m, n, 5);
                let before = acc.mapv(f64::from);
                try_gemm(0.75, a, b, 1.0, &mut acc.view_mut()).expect("takes it");
                let u = f32::EPSILON as f64 / 2.0;
                let gamma = (k + 2) as f64 * u / (1.0 - (k + 2) as f64 * u);
                for ((g, &(w, abs)), (s, b0)) in got.iter().zip(&want).zip(acc.iter().zip(&before))
                {
                    let bound = gamma * abs;
                    assert!((*g as f64 - w).abs() <= bound, "{m}×{k}×{n}: {g} vs {w}");
                    let bound = gamma * (abs + b0.abs());
                    assert!(
                        (*s as f64 - (w + b0)).abs() <= bound,
                        "β = 1: {s} vs {}",
                        w + b0
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_it_cannot_take_are_declined() {
        let a = matrix(100, 8, 1);
        assert!(try_product(1.0, a.view(), matrix(8, 33, 2).view()).is_none());
        assert!(try_product(1.0, matrix(64, 8, 1).view(), matrix(8, 32, 2).view()).is_none());
        assert!(Packed::new(matrix(8, 48, 2).view()).is_none());
    }
}
