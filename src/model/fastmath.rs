//! Vectorizable f32 `exp`, `erf` and GELU (σ, σ') for the f32 Monte Carlo and the f32 trainer,
//! and the GELU in f64 (`gelu64`, to 4e-16 of libm's: accuracy at its definition).
//!
//! libm's `erff` branches on the argument's range and runs one element at a time; in the f32
//! conditional sampler the MLP's GELU (σ and σ' of every hidden unit) took a fifth of the
//! time. These versions evaluate every branch's polynomial and select, with no table, so a
//! loop over a slice compiles to straight-line SIMD. `exp32` and `erf32` use separate
//! multiplies and adds (Rust never contracts them into FMA); the GELU's polynomial uses
//! `mul_add`, which rounds once on every target (a hardware FMA at both SIMD levels). So
//! every dispatch level gives the same bits.
//!
//! Accuracy (tested against f64 libm in this file's tests, over a dense grid):
//! - `exp32`: range reduction by ln 2 (split in two parts) and the Taylor polynomial to r⁷
//!   on |r| ≤ ln2/2 (truncation < 6e-9 relative): within 2.5e-7 relative for
//!   −87 ≤ x ≤ 88; outside it the argument is clamped (e^−87 ≈ 1.6e-38 stands in for
//!   smaller values, which every caller multiplies by something bounded).
//! - `erf32`: for |x| ≤ 1 the Taylor series of erf(x)/x in x² to x¹⁸ (truncation < 1.3e-8);
//!   for |x| > 1, erfc(x) = t·exp(−x² + P(t)), t = 1/(1 + x/2), with the Chebyshev-fitted P
//!   of Numerical Recipes' `erfcc` (fractional error < 1.2e-7). Within 2.5e-7 absolute
//!   (measured 1.2e-7).
//! - The GELU's Φ(z) = ½ erfc(−z/√2) = ½ t·R(t)·e^(−x²) with x = |z|/√2 on both sides of 0
//!   ([`ERFCX_T`]), and φ(z) from the same e^(−x²). Φ is within 2.5e-7 absolute everywhere
//!   (measured 1.8e-7: `exp32`'s error on the ½ near z = 0), σ' within 2.5e-7·(1 + |z|)
//!   (measured 1.8e-7), and Φ within 1e-6 + 3e-7·x² relative in the lower tail: rounding
//!   x = z/√2 and x² in f32 moves the exponent by up to ≈ 2.3e-7·x² (measured), the rest is
//!   the fit and `exp32`.

use std::mem::MaybeUninit;

/// e^x in f32 (see the module doc for the accuracy and the clamped range). NaN stays NaN.
#[inline(always)]
pub fn exp32(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds x·log₂e to the nearest integer k, which then sits in the
    // low mantissa bits (exact while |k| < 2²²).
    const SHIFT: f32 = 12_582_912.0;
    // ln 2 = LN2_HI + LN2_LO with LN2_HI to 9 bits, so k·LN2_HI is exact (Cephes' expf).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = r * (1.0 / 5040.0) + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^k: the biased exponent k + 127 ∈ [1, 254] from the low bits of `shifted` (its
    // mantissa holds 2²² + k, whose low 9 bits are k mod 512).
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    p * scale
}

/// Taylor coefficients of erf(x)/x in x²: (2/√π)·(−1)ⁿ/(n!·(2n + 1)), n = 0..9.
const ERF_SMALL: [f32; 10] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_126_4,
    0.112_837_92,
    -0.026_866_171,
    0.005_223_977_6,
    -8.548_327e-4,
    1.205_533_3e-4,
    -1.492_565e-5,
    1.646_211_4e-6,
    -1.636_584_5e-7,
];

/// P(t) of Numerical Recipes' `erfcc`, lowest power first.
const ERFC_P: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_204,
    1.488_515_9,
    -0.822_152_23,
    0.170_872_77,
];

/// (erf(x) for |x| ≤ 1 from the series, erfc(|x|) for |x| > 1 from `erfcc`) of x with
/// x2 = x·x; [`erf32`] selects.
#[inline(always)]
fn erf_parts(x: f32, x2: f32) -> (f32, f32) {
    let mut p = ERF_SMALL[9];
    for &c in ERF_SMALL[..9].iter().rev() {
        p = p * x2 + c;
    }
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut q = ERFC_P[9];
    for &c in ERFC_P[..9].iter().rev() {
        q = q * t + c;
    }
    (x * p, t * exp32(q - x2))
}

/// erf(x) in f32, vectorizable (accuracy in the module doc).
#[inline(always)]
pub fn erf32(x: f32) -> f32 {
    let (small, erfc) = erf_parts(x, x * x);
    if x.abs() <= 1.0 {
        small
    } else {
        (1.0 - erfc).copysign(x)
    }
}

/// erfcx(x)/t = eˣ² erfc(x)/t with t = 1/(1 + x/2), x ≥ 0, as a polynomial in t ∈ (0, 1],
/// lowest power first: a relative least-squares fit of degree 10 (reweighted towards minimax)
/// to scipy's `erfcx` at 4,000 Chebyshev nodes (`scripts/erfcx_fit.py f32`), relative error
/// 1.1e-8 in exact arithmetic and 1.3e-7 evaluated in f32 over t ∈ [1e-9, 1]. It is `erfcc`'s e^P(t) without the
/// exponential, so Φ and φ share one e^(−x²).
const ERFCX_T: [f32; 11] = [
    0.282_094_8,
    0.282_093_85,
    0.246_880_59,
    0.175_376_83,
    0.093_000_59,
    -0.057_232_507,
    0.127_089_52,
    -0.446_977_5,
    0.486_178_9,
    -0.230_857_66,
    0.042_352_594,
];

/// The exact GELU's (z·Φ(z), Φ(z) + z·φ(z)) in f32, vectorizable. With x = |z|/√2 and
/// E = e^(−x²): erfc(x) = t·R(t)·E ([`ERFCX_T`]) gives Φ on either side of 0, and
/// φ(z) = E/√(2π). One exponential and one polynomial per entry, where erf's series, `erfcc`
/// and a second exponential for φ took twice as long (the GELU was 10% of an f32 sample).
#[inline(always)]
pub fn gelu32(z: f32) -> (f32, f32) {
    let x = z * std::f32::consts::FRAC_1_SQRT_2;
    let x2 = x * x;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let mut r = ERFCX_T[10];
    for &c in ERFCX_T[..10].iter().rev() {
        r = r.mul_add(t, c);
    }
    let e = exp32(-x2);
    let erfc = t * r * e;
    let cdf = if z > 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    };
    // 1/√(2π)
    let pdf = e * 0.398_942_3;
    (z * cdf, cdf + z * pdf)
}

super::skinny::multiversion!(pub fn gelu_slices(z: &[f32], a: &mut [MaybeUninit<f32>], da: &mut [MaybeUninit<f32>]), gelu_body);

/// a ← GELU(z), da ← GELU'(z) over the common length; the outputs may be uninitialized
/// (written, never read).
#[inline(always)]
fn gelu_body(z: &[f32], a: &mut [MaybeUninit<f32>], da: &mut [MaybeUninit<f32>]) {
    for ((&z, a), d) in z.iter().zip(a.iter_mut()).zip(da.iter_mut()) {
        let (f, df) = gelu32(z);
        a.write(f);
        d.write(df);
    }
}

/// erfcx(x)/t for x ≥ 0 as a Chebyshev series in u = 2t − 1, t = 1/(1 + x/2) ∈ (0, 1]: the
/// interpolant of degree 26 at Chebyshev nodes, computed with mpmath at 40 digits
/// (`scripts/erfcx_fit.py f64`; relative error 1.4e-17 over a dense grid, below f64
/// rounding). The f64 twin of [`ERFCX_T`].
const ERFCX_CHEB: [f64; 27] = [
    0.5770337386164697,
    0.3554369212704985,
    0.06509515882878653,
    0.003671142395836639,
    -0.0011128447433526325,
    -0.0001607582991537808,
    3.278031574173137e-05,
    5.442441645505016e-06,
    -1.5154665553171482e-06,
    -1.4297608181169865e-07,
    8.234608827419493e-08,
    -1.2962846852306563e-09,
    -4.154721631015198e-09,
    6.347058278362807e-10,
    1.4320822712256186e-10,
    -6.160390105204003e-11,
    2.061213855454474e-12,
    3.571493148853462e-12,
    -8.586422841639744e-13,
    -6.145600278608936e-14,
    7.418725813999685e-14,
    -1.289503818578191e-14,
    -2.358749974817618e-15,
    1.5729694020928286e-15,
    -2.2768935232161333e-16,
    -6.401363903646336e-17,
    3.7449217643130414e-17,
];

/// e^y for y ≤ 0 in f64, vectorizable: k = round(y·log₂e) (in the low mantissa bits of
/// y·log₂e + 1.5·2⁵²), r = y − k·ln2 in two fused steps (|r| ≤ ln2/2), Taylor to r¹³
/// (truncation < 1e-17 relative) and 2^k from k's bits. y is clamped at −708, so e^y never
/// goes subnormal (e^−708 ≈ 3e-308 stands in for smaller values, which every caller
/// multiplies by something bounded).
#[inline(always)]
fn exp64_nonpositive(y: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // ln 2 = LN2_HI + LN2_LO (fdlibm's split).
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const INV_FACT: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let y = y.max(-708.0);
    let shifted = y.mul_add(std::f64::consts::LOG2_E, SHIFT);
    let k = shifted - SHIFT;
    let r = k.mul_add(-LN2_HI, y);
    let r = k.mul_add(-LN2_LO, r);
    let mut p = INV_FACT[13];
    for &c in INV_FACT[..13].iter().rev() {
        p = p.mul_add(r, c);
    }
    // The biased exponent k + 1023 ∈ [1, 1023] from the low bits of `shifted` (its mantissa
    // holds 2⁵¹ + k, whose low 12 bits are k mod 4096).
    let scale = f64::from_bits(shifted.to_bits().wrapping_add(1023) << 52);
    p * scale
}

/// The exact GELU's (z·Φ(z), Φ(z) + z·φ(z)) in f64, vectorizable: as [`gelu32`], with
/// erfc(x) = t·R(t)·e^(−x²) from [`ERFCX_CHEB`] (Clenshaw's recurrence) and φ from the same
/// e^(−x²). Against libm's `erf` (the scalar [`Activation::f_df`]): Φ within 4e-16 absolute
/// and σ' within 4e-16·(1 + |z|) (tested), where libm's erf and exp took 12% of an f64
/// sample one entry at a time.
///
/// [`Activation::f_df`]: super::activation::Activation::f_df
#[inline(always)]
pub fn gelu64(z: f64) -> (f64, f64) {
    let x = z * std::f64::consts::FRAC_1_SQRT_2;
    let x2 = x * x;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let u = 2.0 * t - 1.0;
    let (mut b1, mut b2) = (0.0f64, 0.0f64);
    for &c in ERFCX_CHEB[1..].iter().rev() {
        let b0 = (2.0 * u).mul_add(b1, c - b2);
        b2 = b1;
        b1 = b0;
    }
    let r = u.mul_add(b1, ERFCX_CHEB[0] - b2);
    let e = exp64_nonpositive(-x2);
    let erfc = t * r * e;
    let cdf = if z > 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    };
    // 1/√(2π)
    let pdf = e * 0.398_942_280_401_432_7;
    (z * cdf, cdf + z * pdf)
}

super::skinny::multiversion!(pub fn gelu_slices_f64(z: &[f64], a: &mut [MaybeUninit<f64>], da: &mut [MaybeUninit<f64>]), gelu64_body);

/// a ← GELU(z), da ← GELU'(z) in f64 over the common length; the outputs may be
/// uninitialized (written, never read).
#[inline(always)]
fn gelu64_body(z: &[f64], a: &mut [MaybeUninit<f64>], da: &mut [MaybeUninit<f64>]) {
    for ((&z, a), d) in z.iter().zip(a.iter_mut()).zip(da.iter_mut()) {
        let (f, df) = gelu64(z);
        a.write(f);
        d.write(df);
    }
}

super::skinny::multiversion!(pub fn erf_slice(x: &mut [f32]), erf_body);

/// x ← erf(x).
#[inline(always)]
fn erf_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = erf32(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ(z) in f64 from libm (the reference).
    fn phi(z: f64) -> f64 {
        0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
    }

    #[test]
    fn exp32_is_within_its_bound() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f64 / 400_000.0;
            let x32 = x as f32;
            let exact = (x32 as f64).exp();
            worst = worst.max((exp32(x32) as f64 - exact).abs() / exact);
        }
        assert!(worst < 2.5e-7, "exp32 relative error {worst:e}");
        assert!(exp32(f32::NAN).is_nan());
        assert!(exp32(-1000.0) < 2e-38 && exp32(-1000.0) >= 0.0);
    }

    /// erf32 and Φ against libm over z ∈ [−14, 14] (every f32 near 0, dense elsewhere): the
    /// absolute bound 2.5e-7 (two f32 ulp at 1) everywhere, and in the lower tail the relative
    /// bound of the module doc; σ' against the f64 formula within the same absolute bound
    /// (scaled by 1 + |z|, the size of z·φ's rounding).
    #[test]
    fn erf_and_gelu_are_within_their_bounds() {
        let (mut worst_abs, mut worst_rel, mut worst_erf, mut worst_d) = (0f64, 0f64, 0f64, 0f64);
        let n = 1_400_000;
        for i in 0..=n {
            let z = (-14.0 + 28.0 * i as f64 / n as f64) as f32;
            let zw = z as f64;
            let (f, df) = gelu32(z);
            let cdf = phi(zw);
            // Φ from σ = z·Φ where z is not tiny; otherwise from σ' at z = 0.
            if zw.abs() > 1e-3 {
                let got = f as f64 / zw;
                worst_abs = worst_abs.max((got - cdf).abs());
                if zw < -1.0 && cdf > 1e-35 {
                    let x2 = zw * zw / 2.0;
                    worst_rel = worst_rel.max((got - cdf).abs() / cdf / (1e-6 + 3e-7 * x2));
                }
            }
            let pdf = (-0.5 * zw * zw).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst_d = worst_d.max((df as f64 - (cdf + zw * pdf)).abs() / (1.0 + zw.abs()));
            let e = erf32(z) as f64;
            worst_erf = worst_erf.max((e - libm::erf(zw)).abs());
        }
        eprintln!(
            "Φ abs {worst_abs:e}, tail rel {worst_rel} of bound, erf {worst_erf:e}, σ' {worst_d:e}"
        );
        assert!(worst_abs < 2.5e-7, "Φ absolute error {worst_abs:e}");
        assert!(
            worst_rel < 1.0,
            "Φ tail relative error {worst_rel} of the bound"
        );
        assert!(worst_erf < 2.5e-7, "erf absolute error {worst_erf:e}");
        assert!(worst_d < 2.5e-7, "GELU' error {worst_d:e}");
        let (f, df) = gelu32(f32::NAN);
        assert!(f.is_nan() && df.is_nan());
    }

    /// The f64 GELU against libm's (`Activation::f_df`, the definition the theory integrates)
    /// over z ∈ [−40, 40]: Φ within 4e-16 absolute, σ' within 4e-16·(1 + |z|); and the
    /// exponential alone within 2 ulp-scale relative error down to e^−700.
    #[test]
    fn gelu64_matches_libm() {
        use crate::model::activation::Activation;
        let (mut worst_phi, mut worst_d) = (0f64, 0f64);
        let n = 2_000_000;
        for i in 0..=n {
            let z = -40.0 + 80.0 * i as f64 / n as f64;
            let (f, df) = gelu64(z);
            let (rf, rdf) = Activation::Gelu.f_df(z);
            if z.abs() > 1e-3 {
                worst_phi = worst_phi.max((f / z - rf / z).abs());
            }
            worst_d = worst_d.max((df - rdf).abs() / (1.0 + z.abs()));
        }
        eprintln!("f64 GELU: Φ {worst_phi:e}, σ' {worst_d:e}");
        assert!(worst_phi < 4e-16, "Φ absolute error {worst_phi:e}");
        assert!(worst_d < 4e-16, "σ' error {worst_d:e}");
        let mut worst_exp = 0f64;
        for i in 0..=700_000 {
            let y = -(i as f64) / 1000.0;
            worst_exp = worst_exp.max((exp64_nonpositive(y) / y.exp() - 1.0).abs());
        }
        eprintln!("exp64: {worst_exp:e}");
        assert!(worst_exp < 4.5e-16, "exp64 relative error {worst_exp:e}");
        let (f, df) = gelu64(f64::NAN);
        assert!(f.is_nan() && df.is_nan());
    }

    #[test]
    fn slices_match_the_scalar_functions() {
        let z: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let (mut a, mut d) = (
            vec![MaybeUninit::new(0f32); 1000],
            vec![MaybeUninit::new(0f32); 1000],
        );
        gelu_slices(&z, &mut a, &mut d);
        // SAFETY: initialized above (and written by gelu_slices).
        let (a, d): (Vec<f32>, Vec<f32>) = unsafe {
            (
                a.iter().map(|v| v.assume_init()).collect(),
                d.iter().map(|v| v.assume_init()).collect(),
            )
        };
        let mut e = z.clone();
        erf_slice(&mut e);
        for i in 0..1000 {
            let (f, df) = gelu32(z[i]);
            assert_eq!(
                (a[i].to_bits(), d[i].to_bits()),
                (f.to_bits(), df.to_bits())
            );
            assert_eq!(e[i].to_bits(), erf32(z[i]).to_bits());
        }
    }
}
