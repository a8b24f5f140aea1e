//! The exact fast path (SPEC §9): at initialization a Gaussian weight W (fan_out × fan_in,
//! i.i.d. N(0, σ²)) meets the data twice, once forward (Y = X Wᵀ) and once backward
//! (∂X = G W). Both are drawn from their exact conditional laws without forming W.
//!
//! Forward. Let Q_X (r × fan_in) be orthonormal rows spanning the rows of X, X = C Q_X.
//! Then M = W Q_Xᵀ / σ (fan_out × r) has i.i.d. N(0, 1) entries and Y = σ C Mᵀ. Cost
//! O(D² fan_in + D r fan_out) and r·fan_out normals instead of fan_in·fan_out.
//!
//! Backward. W = σ M Q_X + W_⊥ with W_⊥ = W (I − Q_Xᵀ Q_X) independent of M, hence of
//! everything the forward pass produced, and so ∂X = σ (G M) Q_X + G W_⊥. For the second
//! term, let Q_G (k × fan_out) be orthonormal rows spanning every cotangent seen so far
//! (G = A Q_G): then N = Q_G Z (I − Q_Xᵀ Q_X), with W_⊥ = σ Z (I − Q_Xᵀ Q_X), has i.i.d.
//! N(0, 1) rows projected off span(X), fresh for each new basis row, and G W_⊥ = σ A N.
//! Several cotangents (`pairs` mode) extend the same basis, so their ∂X are drawn jointly:
//! O(n·D⁴) per matrix for D cotangents of D tokens.
//!
//! Rank: a row whose residual after projection is below [`McReal::RANK_TOL`] of its norm is
//! taken to lie in the span (identical tokens, the first causal token, uniform attention).
//! The error this makes in Y is below RANK_TOL relative: 1e-10 in f64 (≈ 450 ulp), 3e-5 in
//! f32 (≈ 250 ulp; MGS-twice leaves residuals of a few ulp on exactly dependent rows).
//!
//! In f32 the factorization of an input is one pass from the Gram matrix accumulated in
//! f64: a pivoted Cholesky factor L with the same rank rule, Q = L⁻¹X computed in f64 and
//! rounded once ([`gram_qr`]). Exact to f64 rounding in the Gram, it needs no
//! re-orthogonalization for the condition numbers the rank tolerance lets through. f64
//! inputs keep block Gram–Schmidt, twice, as do extensions of a non-empty basis (`pairs`
//! mode). In `trace` mode (one cotangent per weight), in both precisions, the backward needs
//! no basis of G at all: G W_⊥ = σ A Z (I − Q_Xᵀ Q_X) for any A with A Aᵀ = G Gᵀ (the
//! pivoted Cholesky factor of G's Gram, [`cotangent_factor`]), and the projection folds
//! into the product with Q_X.
//!
//! Normals: both precisions draw from the vectorized generator ([`FastNormals`]), seeded from
//! the sample's stream (52-bit uniforms and ≈1e-15 transcendental polynomials in f64).
//!
//! Tied embeddings are used twice forward and are materialized (the dense path) instead.

use ndarray::{Array2, ArrayView2, Axis, CowArray, Ix2, concatenate, s};

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::normal::FastNormals;
use super::{McReal, profile};
use crate::model::init::Stream;
use crate::model::linalg::GEMM_NANOS;
use crate::model::{Params, WeightOps, linalg, skinny};

/// Relative residual below which a row counts as linearly dependent, in f64.
pub const RANK_TOL: f64 = <f64 as McReal>::RANK_TOL;

/// (C, Q_X) of an input X = C Q_X, shared by the weights that read X.
type Factors<F> = (Rc<Array2<F>>, Rc<Array2<F>>);

struct State<F> {
    sd: F,
    /// Orthonormal rows spanning X (r × fan_in), shared by the weights that read X.
    qx: Rc<Array2<F>>,
    /// W Q_Xᵀ / σ (fan_out × r; stored transposed, r × fan_out, in f32).
    m: Array2<F>,
    /// Orthonormal rows spanning the cotangents so far (k × fan_out).
    qg: Array2<F>,
    /// Q_G Z (I − Q_Xᵀ Q_X) (k × fan_in).
    n_perp: Array2<F>,
}

/// Weight realization by conditional Gaussian sampling; one per network sample.
pub struct Conditional<F = f64> {
    /// The vectorized normal generator, seeded from the sample's stream (both precisions).
    rng: Box<FastNormals>,
    state: Vec<Option<State<F>>>,
    /// With one backward pass a weight's state is dropped once used (memory O(B n D)).
    single_pass: bool,
}

impl<F: McReal> Conditional<F> {
    pub fn new(params: &Params<F>, mut rng: Stream, single_pass: bool) -> Self {
        Conditional {
            rng: Box::new(FastNormals::new(&mut rng)),
            state: (0..params.list.len()).map(|_| None).collect(),
            single_pass,
        }
    }

    /// (C, Q_X) with X = C Q_X, shared by the weights that read X
    /// ([`WeightOps::fwd_shared`]).
    fn factor(&mut self, x: ArrayView2<F>) -> Factors<F> {
        let (c, q) = if F::GRAM_FACTORS {
            basis_time(|| gram_qr(x))
        } else {
            let mut q = Array2::zeros((0, x.ncols()));
            (extend_basis(&mut q, x), q)
        };
        (Rc::new(c), Rc::new(q))
    }

    /// A (rows × cols) array of i.i.d. N(0, 1), filled in row-major order.
    fn normals(&mut self, rows: usize, cols: usize) -> Array2<F> {
        if profile::on() {
            let t = std::time::Instant::now();
            let a = self.draw(rows, cols);
            profile::NORMAL_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            profile::NORMAL_COUNT.fetch_add((rows * cols) as u64, Ordering::Relaxed);
            return a;
        }
        self.draw(rows, cols)
    }

    fn draw(&mut self, rows: usize, cols: usize) -> Array2<F> {
        Array2::from_shape_vec((rows, cols), F::fast_vec(&mut self.rng, rows * cols))
            .unwrap_or_else(|_| Array2::zeros((rows, cols)))
    }
}

/// Extends the orthonormal `basis` (k × len) to span the rows of `v` (D × len) and returns
/// the coefficients C (D × k') with v = C · basis' (block classical Gram–Schmidt with
/// re-orthogonalization, then modified Gram–Schmidt within the block).
pub fn extend_basis<F: McReal>(basis: &mut Array2<F>, v: ArrayView2<F>) -> Array2<F> {
    basis_time(|| extend(basis, v))
}

/// Runs a basis computation, adding its own time (not its GEMMs') to the profile's basis
/// share when `sigprop bench` profiles.
fn basis_time<T>(f: impl FnOnce() -> T) -> T {
    if profile::on() {
        let (t, g) = (
            std::time::Instant::now(),
            GEMM_NANOS.load(Ordering::Relaxed),
        );
        let out = f();
        let own =
            (t.elapsed().as_nanos() as u64).saturating_sub(GEMM_NANOS.load(Ordering::Relaxed) - g);
        profile::BASIS_NANOS.fetch_add(own, Ordering::Relaxed);
        return out;
    }
    f()
}

fn extend<F: McReal>(basis: &mut Array2<F>, v: ArrayView2<F>) -> Array2<F> {
    let k = basis.nrows();
    let d = v.nrows();
    let mut resid = v.to_owned();
    let mut coef_old = Array2::zeros((d, k));
    if k > 0 {
        for _ in 0..2 {
            let c = linalg::mm(resid.view(), basis.t());
            F::gemm(
                -F::one(),
                c.view(),
                basis.view(),
                F::one(),
                &mut resid.view_mut(),
            );
            coef_old += &c;
        }
    }
    // Modified Gram–Schmidt within the block, twice, with vectorized dot/axpy on rows.
    let len = v.ncols();
    let mut fresh = Array2::<F>::zeros((d, len));
    let mut added = 0usize;
    let mut coef_new = Array2::<F>::zeros((d, d));
    let tol = F::of(F::RANK_TOL);
    for i in 0..d {
        let norm0 = F::dot(v.row(i), v.row(i)).sqrt();
        let mut r = resid.row_mut(i);
        let rows = fresh.as_slice().expect("fresh array");
        match (r.as_slice_mut(), coef_new.row_mut(i).into_slice()) {
            (Some(r), Some(c)) => F::project_twice(&rows[..added * len], r, &mut c[..added]),
            _ => {
                for _ in 0..2 {
                    for j in 0..added {
                        let q = fresh.row(j);
                        let dot = F::dot(q, r.view());
                        F::axpy(r.view_mut(), -dot, q);
                        coef_new[[i, j]] += dot;
                    }
                }
            }
        }
        let norm = F::dot(r.view(), r.view()).sqrt();
        if norm0 > F::zero() && norm > tol * norm0 {
            fresh.row_mut(added).assign(&(&r / norm));
            coef_new[[i, added]] = norm;
            added += 1;
        }
    }
    let mut coef = Array2::zeros((d, k + added));
    coef.slice_mut(s![.., ..k]).assign(&coef_old);
    coef.slice_mut(s![.., k..])
        .assign(&coef_new.slice(s![.., ..added]));
    if added > 0 {
        *basis = concatenate(Axis(0), &[basis.view(), fresh.slice(s![..added, ..])])
            .expect("same width");
    }
    coef
}

/// The pivoted Cholesky factor of the Gram matrix of `v`'s rows, accumulated in f64:
/// L (D × r) with v vᵀ = L Lᵀ to f64 rounding, and the pivot rows p (r of them, in order),
/// whose block L[p, ..] is lower triangular. A row whose residual after the rows chosen
/// before it is below `RANK_TOL` of its own norm is taken to lie in their span, as in
/// [`extend_basis`]. The f32 sampler's one-pass alternative to Gram–Schmidt: with the Gram
/// in f64 the factor is exact to f64 rounding whatever the condition number the rank
/// tolerance lets through (1/RANK_TOL ≈ 3e4), so one pass suffices (mixed-precision
/// CholeskyQR; Yamazaki, Tomov & Dongarra, SIAM J. Sci. Comput. 37 (2015) C307).
fn gram_cholesky<F: McReal>(
    v: ArrayView2<'_, F>,
) -> (Array2<f64>, Vec<usize>, CowArray<'_, f32, Ix2>) {
    let narrow = F::narrow(v);
    let d = narrow.nrows();
    let g = skinny::gram_wide(
        narrow.as_slice().expect("standard layout"),
        d,
        narrow.ncols(),
    );
    let (l, piv) = pivoted_cholesky(&g, F::RANK_TOL);
    (l, piv, narrow)
}

/// Relative residual below which a cotangent row adds no column to its Gram factor in f64.
/// The f64 Gram resolves squared residuals down to ~1e-16 of a row's squared norm, so a
/// dependent row leaves a residual of that order, not zero; dropping residuals below
/// GRAM_TOL² = 1e-14 of the squared norm changes A Aᵀ by at most that, relative.
const GRAM_TOL: f64 = 1e-7;

/// Some A (D × r) with A Aᵀ = G Gᵀ, all the `trace` backward needs of a cotangent G: the
/// pivoted Cholesky factor of G's Gram matrix. In f32 the Gram of the f32 rows is exact in
/// f64 ([`gram_cholesky`]); in f64 it is the f64 product, so A Aᵀ = G Gᵀ to f64 rounding,
/// which is what fixes the law of G W_⊥ (its covariance is σ² G Gᵀ ⊗ (I − Q_Xᵀ Q_X)).
fn cotangent_factor<F: McReal>(g: ArrayView2<F>) -> Array2<F> {
    if F::GRAM_FACTORS {
        return gram_cholesky(g).0.mapv(F::of);
    }
    pivoted_cholesky(&linalg::gram(g).mapv(F::wide), GRAM_TOL)
        .0
        .mapv(F::of)
}

/// The pivoted Cholesky factor of a Gram matrix `g` (D × D): L (D × r) with g = L Lᵀ and the
/// pivot rows (see [`gram_cholesky`]); a row whose residual falls below `tol` of its norm
/// adds no column.
fn pivoted_cholesky(g: &Array2<f64>, tol: f64) -> (Array2<f64>, Vec<usize>) {
    let d = g.nrows();
    let tol2 = tol * tol;
    let norm2: Vec<f64> = (0..d).map(|i| g[[i, i]]).collect();
    // resid[i]: squared residual of row i after the pivots so far. L is kept row-major in a
    // flat vector (row i's first j entries are a slice; this loop ran on bounds-checked 2-D
    // indexing at 2-3% of an f32 sample).
    let mut resid = norm2.clone();
    let mut l = vec![0.0f64; d * d];
    let mut piv = Vec::with_capacity(d);
    let mut done = vec![false; d];
    for j in 0..d {
        // The next pivot: the largest residual among rows not yet dependent.
        let next = (0..d)
            .filter(|&i| !done[i] && resid[i] > tol2 * norm2[i] && resid[i] > 0.0)
            .max_by(|&a, &b| resid[a].total_cmp(&resid[b]));
        let Some(p) = next else { break };
        done[p] = true;
        let lpp = resid[p].sqrt();
        l[p * d + j] = lpp;
        for i in 0..d {
            if done[i] {
                continue;
            }
            let (li, lp) = (&l[i * d..i * d + j], &l[p * d..p * d + j]);
            let mut s = g[[i, p]];
            for (a, b) in li.iter().zip(lp) {
                s -= a * b;
            }
            let lij = s / lpp;
            l[i * d + j] = lij;
            resid[i] -= lij * lij;
        }
        piv.push(p);
    }
    let r = piv.len();
    let l = Array2::from_shape_vec((d, d), l).expect("d × d");
    (l.slice(s![.., ..r]).to_owned(), piv)
}

/// X = C Q with orthonormal rows Q (r × len) and C (D × r) from the Gram matrix of X in
/// f64 ([`gram_cholesky`]): Q = L_pp⁻¹ X_p, computed in f64 and rounded once. The same
/// factorization as `extend_basis` on an empty basis, for the f32 sampler.
fn gram_qr<F: McReal>(v: ArrayView2<F>) -> (Array2<F>, Array2<F>) {
    let (l, piv, narrow) = gram_cholesky(v);
    let r = piv.len();
    // L_pp⁻¹ by forward substitution (r × r, lower triangular).
    let mut inv = Array2::<f64>::zeros((r, r));
    for c in 0..r {
        for i in c..r {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for m in c..i {
                s -= l[[piv[i], m]] * inv[[m, c]];
            }
            inv[[i, c]] = s / l[[piv[i], i]];
        }
    }
    // Q's rows as f64 combinations of X's pivot rows, rounded once.
    let len = narrow.ncols();
    let q = skinny::combine_wide(
        inv.as_slice().expect("fresh array"),
        narrow.as_slice().expect("standard layout"),
        &piv,
        len,
    );
    let q = F::of_f32(Array2::from_shape_vec((r, len), q).expect("r rows of len"));
    (l.mapv(F::of), q)
}

impl<F: McReal> WeightOps<F> for Conditional<F> {
    fn fwd(&mut self, p: &Params<F>, id: usize, x: ArrayView2<F>) -> Array2<F> {
        let mut y = self.fwd_shared(p, &[id], x);
        y.pop().expect("one output")
    }

    fn fwd_shared(&mut self, p: &Params<F>, ids: &[usize], x: ArrayView2<F>) -> Vec<Array2<F>> {
        let mut factored: Option<Factors<F>> = None;
        let mut ys = Vec::with_capacity(ids.len());
        for &id in ids {
            let param = &p.list[id];
            if param.is_materialized() {
                ys.push(linalg::mm_t(x, param.value.view()));
                continue;
            }
            assert!(
                self.state[id].is_none(),
                "weight {} used twice forward; the conditional sampler needs one use",
                param.name
            );
            let (fan_out, fan_in) = param.shape;
            let sd = F::of(param.var.sqrt());
            let (c, qx) = match &factored {
                Some(f) => f.clone(),
                None => factored.insert(self.factor(x)).clone(),
            };
            // M is kept transposed (r × fan_out; i.i.d., so the layout is free): both of
            // its products then read rows.
            let m = self.normals(qx.nrows(), fan_out);
            ys.push(linalg::product(sd, c.view(), m.view()));
            self.state[id] = Some(State {
                sd,
                qx,
                m,
                qg: Array2::zeros((0, fan_out)),
                n_perp: Array2::zeros((0, fan_in)),
            });
        }
        ys
    }

    fn bwd(&mut self, p: &Params<F>, id: usize, g: ArrayView2<F>) -> Array2<F> {
        let param = &p.list[id];
        if param.is_materialized() {
            return linalg::mm(g, param.value.view());
        }
        let mut st = self.state[id]
            .take()
            .expect("backward of a weight the forward pass did not use");
        // The part fixed by the forward pass: σ (G M) Q_X.
        let mut gm = linalg::mm(g, st.m.t());
        if self.single_pass && st.qg.nrows() == 0 {
            // One cotangent, never extended: G W_⊥ needs only some A with A Aᵀ = G Gᵀ (the
            // Gram's Cholesky factor, no basis of G), and with N = Z (I − Q_Xᵀ Q_X)
            // the projection folds into the product with Q_X:
            // ∂X = σ [(G M − A Z Q_Xᵀ) Q_X + A Z].
            let a = basis_time(|| cotangent_factor(g));
            let mut dx = if a.ncols() > 0 {
                let z = self.normals(a.ncols(), st.qx.ncols());
                let zq = linalg::mm(z.view(), st.qx.t());
                F::gemm(-F::one(), a.view(), zq.view(), F::one(), &mut gm.view_mut());
                linalg::product(st.sd, a.view(), z.view())
            } else {
                Array2::zeros((g.nrows(), st.qx.ncols()))
            };
            F::gemm(st.sd, gm.view(), st.qx.view(), F::one(), &mut dx.view_mut());
            return dx;
        }
        let mut dx = linalg::mm(gm.view(), st.qx.view());
        // The fresh part: σ A N with G = A Q_G.
        let k_old = st.qg.nrows();
        let a = extend_basis(&mut st.qg, g);
        let added = st.qg.nrows() - k_old;
        if added > 0 {
            let mut fresh = self.normals(added, st.qx.ncols());
            let proj = linalg::mm(fresh.view(), st.qx.t());
            F::gemm(
                -F::one(),
                proj.view(),
                st.qx.view(),
                F::one(),
                &mut fresh.view_mut(),
            );
            st.n_perp =
                concatenate(Axis(0), &[st.n_perp.view(), fresh.view()]).expect("same width");
        }
        F::gemm(
            F::one(),
            a.view(),
            st.n_perp.view(),
            F::one(),
            &mut dx.view_mut(),
        );
        dx *= st.sd;
        if !self.single_pass {
            self.state[id] = Some(st);
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::StandardNormal;

    /// The f64 projection kernel (vectorized, fused) agrees with the row-by-row loop on
    /// ndarray's `dot` and `scaled_add` to rounding, for lengths with and without 32- and
    /// 8-element tails, projecting off orthonormal rows as the sampler does.
    #[test]
    fn f64_projection_kernel_agrees_with_the_ndarray_loop() {
        use ndarray::Array1;
        let mut rng = crate::model::init::stream(5, 1);
        for len in [1, 7, 8, 29, 40, 512, 515, 2048] {
            let v = Array2::from_shape_simple_fn((5, len), || rng.sample::<f64, _>(StandardNormal));
            let mut q = Array2::zeros((0, len));
            extend_basis(&mut q, v.view());
            let k = q.nrows();
            let r0 = Array1::from_shape_simple_fn(len, || rng.sample::<f64, _>(StandardNormal));
            let (mut r, mut coef) = (r0.clone(), vec![0.5; k]);
            <f64 as McReal>::project_twice(
                q.as_slice().unwrap(),
                r.as_slice_mut().unwrap(),
                &mut coef,
            );
            let (mut e, mut ecoef) = (r0, vec![0.5; k]);
            for _ in 0..2 {
                for (j, c) in ecoef.iter_mut().enumerate() {
                    let dot = q.row(j).dot(&e);
                    e.scaled_add(-dot, &q.row(j));
                    *c += dot;
                }
            }
            let tol = 1e-14 * (len as f64).sqrt() * 10.0;
            let worst = r.iter().zip(&e).chain(coef.iter().zip(&ecoef));
            let worst = worst.fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < tol, "len {len}: {worst:e}");
            // The residual is orthogonal to the rows (the kernel projects, not just agrees).
            for j in 0..k {
                assert!(q.row(j).dot(&r).abs() < tol, "len {len}");
            }
        }
    }

    #[test]
    fn extend_basis_reconstructs_rank_deficient_rows() {
        let mut rng = crate::model::init::stream(1, 2);
        let mut v = Array2::from_shape_simple_fn((5, 7), || rng.sample::<f64, _>(StandardNormal));
        // Row 3 repeats row 1; row 4 is a combination of rows 0 and 2.
        let r1 = v.row(1).to_owned();
        v.row_mut(3).assign(&r1);
        let comb = &v.row(0) * 2.0 - v.row(2);
        v.row_mut(4).assign(&comb);
        let mut basis = Array2::zeros((0, 7));
        let c = extend_basis(&mut basis, v.view());
        assert_eq!(basis.nrows(), 3);
        let back = linalg::mm(c.view(), basis.view());
        let err = (&back - &v).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(err < 1e-12, "reconstruction error {err}");
        let gram = linalg::gram(basis.view());
        let off = (&gram - &Array2::<f64>::eye(3))
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(off < 1e-14, "basis not orthonormal: {off}");
    }
    #[test]
    fn gram_qr_reconstructs_rank_deficient_rows_in_f32() {
        let mut rng = crate::model::init::stream(1, 3);
        let mut v = Array2::from_shape_simple_fn((6, 300), || rng.sample::<f64, _>(StandardNormal));
        // Row 3 repeats row 1; row 4 is a combination of rows 0 and 2; row 5 is zero; row 2
        // is nearly row 0 (correlation 1 − 5e-7, condition number ~1e3).
        let r1 = v.row(1).to_owned();
        v.row_mut(3).assign(&r1);
        let near = &v.row(0) + &(&v.row(2) * 1e-3);
        v.row_mut(2).assign(&near);
        let comb = &v.row(0) * 2.0 - v.row(2);
        v.row_mut(4).assign(&comb);
        v.row_mut(5).fill(0.0);
        let v32 = v.mapv(|x| x as f32);
        let (c, q) = gram_qr(v32.view());
        assert_eq!(q.nrows(), 3);
        let back = linalg::mm(c.view(), q.view()).mapv(f64::from);
        let scale = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = (&back - &v32.mapv(f64::from))
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(err < 1e-5 * scale, "reconstruction error {err}");
        let gram = linalg::gram(q.mapv(f64::from).view());
        let off = (&gram - &Array2::<f64>::eye(3))
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()));
        // f32 rounding of Q only: the Gram in f64 keeps the near-dependent direction.
        assert!(off < 1e-6, "basis not orthonormal: {off}");
    }
}
