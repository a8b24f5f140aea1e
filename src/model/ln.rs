//! LayerNorm without affine parameters (1.11), ε inside the root as in PyTorch:
//! s_i = (z_i − μ) / sqrt(mean_j (z_j − μ)² + ε), per token over the n channels.
//!
//! Theory (1.36)/(1.53): F = G / sqrt((G₁₁ + ε)(G₂₂ + ε)) at leading order; the kernel map
//! joins this file with the theory engine.

use ndarray::{Array1, Array2, ArrayView2, Axis, CowArray, Ix2, Zip};

use super::real::Real;
use super::skinny::row_slices;

/// What the backward pass needs: the output and 1/σ per token.
#[derive(Clone, Debug)]
pub struct Cache<F = f64> {
    pub s: Array2<F>,
    pub inv_std: Array1<F>,
}

pub fn forward<F: Real>(z: ArrayView2<F>, eps: f64) -> Cache<F> {
    let (n, eps) = (F::of(z.ncols() as f64), F::of(eps));
    // z − μ written straight into new memory (a copy of z first was one more pass).
    let z = rows_in_place(z);
    let mut s = Array2::uninit(z.raw_dim());
    Zip::from(s.rows_mut())
        .and(z.rows())
        .for_each(|mut out, row| {
            let mu = row.sum() / n;
            Zip::from(&mut out).and(&row).for_each(|o, &x| {
                o.write(x - mu);
            });
        });
    // SAFETY: every row of s was written above.
    let mut s = unsafe { s.assume_init() };
    let squares = row_dots(s.view(), s.view());
    let mut inv_std = Array1::zeros(z.nrows());
    Zip::from(s.rows_mut())
        .and(&mut inv_std)
        .and(&squares)
        .for_each(|mut row, r, &sq| {
            *r = F::one() / (sq / n + eps).sqrt();
            let rr = *r;
            row.mapv_inplace(|x| x * rr);
        });
    Cache { s, inv_std }
}

/// ∂/∂z_i = (1/σ)[g_i − mean(g) − s_i · mean(g ⊙ s)]; holds for any ε because
/// (z_i − μ)(z_j − μ)/σ² = s_i s_j.
pub fn backward<F: Real>(cache: &Cache<F>, g: ArrayView2<F>) -> Array2<F> {
    let n = F::of(g.ncols() as f64);
    let g = rows_in_place(g);
    let mut dz = Array2::uninit(g.raw_dim());
    let gs = row_dots(g.view(), cache.s.view());
    Zip::from(dz.rows_mut())
        .and(g.rows())
        .and(cache.s.rows())
        .and(&cache.inv_std)
        .and(&gs)
        .for_each(|mut out, row, s, &r, &gs| {
            let mean_g = row.sum() / n;
            let mean_gs = gs / n;
            Zip::from(&mut out)
                .and(&row)
                .and(&s)
                .for_each(|d, &gi, &si| {
                    d.write(r * (gi - mean_g - si * mean_gs));
                });
        });
    // SAFETY: every row of dz was written above.
    unsafe { dz.assume_init() }
}

/// `x` itself when its rows are contiguous, else a copy (as the row sums were taken over a
/// copy before, so a strided input's sums keep their bits).
fn rows_in_place<'a, F: Real>(x: ArrayView2<'a, F>) -> CowArray<'a, F, Ix2> {
    if x.strides()[1] == 1 {
        x.into()
    } else {
        x.to_owned().into()
    }
}

/// Σ_j a_ij b_ij of every row i, each summed left to right from −0 (the bits of the row's
/// `iter().map(a·b).sum()`), four rows side by side where the rows are contiguous. A row's
/// additions are one chain of dependent operations, and row by row its latency set the pace
/// (4–5% of an f32 Monte Carlo sample in the LN sums); four chains share one vector.
fn row_dots<F: Real>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array1<F> {
    const ROWS: usize = 4;
    let one = |x: ndarray::ArrayView1<F>, y: ndarray::ArrayView1<F>| {
        x.iter().zip(y.iter()).map(|(&p, &q)| p * q).sum::<F>()
    };
    let mut out = Vec::with_capacity(a.nrows());
    let blocks = a
        .axis_chunks_iter(Axis(0), ROWS)
        .zip(b.axis_chunks_iter(Axis(0), ROWS));
    for (x, y) in blocks {
        let xr = row_slices(x).and_then(|v| <[&[F]; ROWS]>::try_from(v).ok());
        let yr = row_slices(y).and_then(|v| <[&[F]; ROWS]>::try_from(v).ok());
        match (xr, yr) {
            (Some(xr), Some(yr)) => {
                let len = x.ncols();
                assert!(xr.iter().chain(&yr).all(|r| r.len() == len));
                let [x0, x1, x2, x3] = xr;
                let [y0, y1, y2, y3] = yr;
                let (x0, x1, x2, x3) = (&x0[..len], &x1[..len], &x2[..len], &x3[..len]);
                let (y0, y1, y2, y3) = (&y0[..len], &y1[..len], &y2[..len], &y3[..len]);
                // Four named accumulators: held in an array, they were stored to the stack
                // and reloaded on every step.
                let (mut a0, mut a1, mut a2, mut a3) =
                    (-F::zero(), -F::zero(), -F::zero(), -F::zero());
                for j in 0..len {
                    a0 += x0[j] * y0[j];
                    a1 += x1[j] * y1[j];
                    a2 += x2[j] * y2[j];
                    a3 += x3[j] * y3[j];
                }
                out.push(a0);
                out.push(a1);
                out.push(a2);
                out.push(a3);
            }
            // Fewer rows than a block, or rows that are not contiguous: row by row.
            _ => out.extend(x.rows().into_iter().zip(y.rows()).map(|(p, q)| one(p, q))),
        }
    }
    Array1::from(out)
}

#[cfg(test)]
mod tests {
    use super::row_dots;
    use ndarray::Array2;

    /// Four rows side by side give each row's own left-to-right sum from −0, bit for bit:
    /// row counts that are and are not multiples of four, a transposed (non-contiguous)
    /// view, f32 and f64, and rows of exact zeros of both signs (whose sum keeps −0).
    #[test]
    fn row_dots_are_each_rows_own_sum() {
        for (d, n) in [(16, 512), (13, 37), (1, 5), (4, 1)] {
            let a = Array2::from_shape_fn((d, n), |(i, j)| {
                ((i * 7919 + j * 104_729) % 1009) as f64 / 1009.0 * 3.0 - 1.5
            });
            let b = Array2::from_shape_fn((d, n), |(i, j)| ((i * 31 + j * 17) % 23) as f64 - 11.0);
            let each = |a: &Array2<f64>, b: &Array2<f64>| -> Vec<f64> {
                a.rows()
                    .into_iter()
                    .zip(b.rows())
                    .map(|(x, y)| x.iter().zip(y.iter()).map(|(&p, &q)| p * q).sum::<f64>())
                    .collect()
            };
            assert_eq!(row_dots(a.view(), b.view()).to_vec(), each(&a, &b));
            let (at, bt) = (a.t().to_owned(), b.t().to_owned());
            assert_eq!(row_dots(at.t(), bt.t()).to_vec(), each(&a, &b));
            let (a32, b32) = (a.mapv(|x| x as f32), b.mapv(|x| x as f32));
            let want: Vec<f32> = a32
                .rows()
                .into_iter()
                .zip(b32.rows())
                .map(|(x, y)| x.iter().zip(y.iter()).map(|(&p, &q)| p * q).sum::<f32>())
                .collect();
            assert_eq!(row_dots(a32.view(), b32.view()).to_vec(), want);
        }
        let z = Array2::from_shape_fn((4, 3), |(i, _)| if i % 2 == 0 { -0.0f64 } else { 0.0 });
        let neg = Array2::from_elem((4, 3), -1.0f64);
        let got = row_dots(z.view(), neg.view());
        let signs: Vec<bool> = got.iter().map(|x| x.is_sign_negative()).collect();
        assert_eq!(signs, [false, true, false, true]);
    }
}
