//! The conditional sampler's fast standard-normal generator, in f32 and f64.
//!
//! Box–Muller on eight interleaved Xoshiro256++ lanes. Each lane update is the same integer
//! arithmetic on eight independent states, and the transform uses polynomial `ln`, `sin` and
//! `cos` with no table and no branch (the quadrant comes from the mantissa bits of 4t + 2²³,
//! not from a float-to-int conversion), so a block is straight-line SIMD. In f32 an explicit
//! AVX2+FMA body does eight lanes per instruction, its polynomials as fused multiply-adds,
//! which the portable body spells `mul_add` (correctly rounded everywhere, in software on a
//! CPU without FMA); the f64 refill is compiled for AVX-512, AVX2 or the baseline with
//! separate multiplies and adds, which the compiler may not fuse. Every path runs the same
//! IEEE operations in the same order, so every machine gives the same bits.
//!
//! Seeding: eight lane states from SplitMix64 of one word of the sample's stream, so the draws
//! depend only on (seed, sample) and never on the thread that runs the sample.
//!
//! Accuracy. One u64 gives one pair (z₁, z₂) = r (cos θ, sin θ), r = √(−2 ln u), with
//! u = (k + ½)·2⁻³¹ from the top 31 bits and θ/2π = (j + ½)·2⁻²³ from 23 low bits. The
//! radius is truncated at r_max = √(2·32·ln 2) = 6.66: P(|z| > 6.66) = 2.7e-11 for an exact
//! normal, far below anything an ensemble resolves (the fourth moment moves by < 1e-8
//! relative). u keeps full f32 resolution near 0 (k < 2²⁴ converts exactly), so the tail is
//! not quantized; there are 2²³ equally likely directions. f32 `ln` and `sincos` are accurate
//! to a few ulp (tested against f64 libm below), so each z is within ~4e-7 relative of the
//! exact transform of its uniforms. The f64 variant uses two words per pair, 52-bit uniforms
//! (u = (k + ½)·2⁻⁵²), an f64 polynomial `ln` and `sincos` (≈1e-15), and truncates at
//! √(2·53·ln 2) = 8.57.

use std::mem::MaybeUninit;

use rand::RngCore;

use crate::model::init::Stream;

const LANES: usize = 8;
/// Pairs per refill of the f32 buffer (LANES words per step).
const STEPS: usize = 32;
const BLOCK: usize = 2 * LANES * STEPS;

/// Eight Xoshiro256++ lanes and a buffer of ready normals.
pub struct FastNormals {
    s: [[u64; LANES]; 4],
    buf32: Box<[f32; BLOCK]>,
    buf64: Box<[f64; BLOCK]>,
    at32: usize,
    at64: usize,
}

fn splitmix(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Appends `count` elements to `out`, written by `fill` straight into its spare capacity
/// (no zeroing pass). `fill` must write every element it is given (both fills do).
fn append<T>(out: &mut Vec<T>, count: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) {
    out.reserve(count);
    let len = out.len();
    fill(&mut out.spare_capacity_mut()[..count]);
    // SAFETY: `fill` wrote all `count` elements after `len`.
    unsafe { out.set_len(len + count) };
}

/// Writes every element of `out`: the buffer's ready draws first (from `at` on), then whole
/// blocks generated in place by `refill` (no copy), then a refilled buffer for the tail. The
/// order of the draws is the buffer's whatever the split, in either precision.
fn fill_blocks<T: Copy>(
    out: &mut [MaybeUninit<T>],
    s: &mut [[u64; LANES]; 4],
    buf: &mut [T; BLOCK],
    at: &mut usize,
    refill: fn(&mut [[u64; LANES]; 4], &mut [MaybeUninit<T>; BLOCK]),
) {
    let mut i = 0;
    while i < out.len() {
        if *at == BLOCK {
            if out.len() - i >= BLOCK {
                let dst: &mut [MaybeUninit<T>; BLOCK] =
                    (&mut out[i..i + BLOCK]).try_into().expect("BLOCK elements");
                refill(s, dst);
                i += BLOCK;
                continue;
            }
            // SAFETY: an initialized array is a valid uninitialized one.
            refill(s, unsafe {
                &mut *(buf as *mut [T; BLOCK] as *mut [MaybeUninit<T>; BLOCK])
            });
            *at = 0;
        }
        let take = (BLOCK - *at).min(out.len() - i);
        for (o, &v) in out[i..i + take].iter_mut().zip(&buf[*at..*at + take]) {
            o.write(v);
        }
        *at += take;
        i += take;
    }
}

impl FastNormals {
    /// A generator seeded from one word of `rng`.
    pub fn new(rng: &mut Stream) -> Self {
        Self::from_seed(rng.next_u64())
    }

    /// A generator from a 64-bit seed (SplitMix64 fills the 8 × 4 state words; no state is
    /// all zero because SplitMix64 is a bijection of distinct counters).
    pub fn from_seed(seed: u64) -> Self {
        let mut z = seed;
        let mut s = [[0u64; LANES]; 4];
        for lane in 0..LANES {
            for w in s.iter_mut() {
                w[lane] = splitmix(&mut z);
            }
        }
        FastNormals {
            s,
            buf32: Box::new([0.0; BLOCK]),
            buf64: Box::new([0.0; BLOCK]),
            at32: BLOCK,
            at64: BLOCK,
        }
    }

    /// Fills `out` with i.i.d. N(0, 1) in f32.
    pub fn fill_f32(&mut self, out: &mut [f32]) {
        // SAFETY: an initialized slice is a valid uninitialized one, and `fill` only writes.
        self.fill(unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) });
    }

    /// Appends `count` i.i.d. N(0, 1) in f32 to `out`: the same draws as [`fill_f32`]
    /// (Self::fill_f32) of a slice of that length, without zeroing the memory first.
    pub fn extend_f32(&mut self, out: &mut Vec<f32>, count: usize) {
        append(out, count, |o| self.fill(o));
    }

    /// Writes every element of `out` in f32 ([`fill_blocks`]).
    fn fill(&mut self, out: &mut [MaybeUninit<f32>]) {
        fill_blocks(out, &mut self.s, &mut self.buf32, &mut self.at32, refill32);
    }

    /// Fills `out` with i.i.d. N(0, 1) in f64.
    pub fn fill_f64(&mut self, out: &mut [f64]) {
        // SAFETY: an initialized slice is a valid uninitialized one, and `fill64` only writes.
        self.fill64(unsafe { &mut *(out as *mut [f64] as *mut [MaybeUninit<f64>]) });
    }

    /// Appends `count` i.i.d. N(0, 1) in f64 to `out`: the same draws as [`fill_f64`]
    /// (Self::fill_f64) of a slice of that length, without zeroing the memory first.
    pub fn extend_f64(&mut self, out: &mut Vec<f64>, count: usize) {
        append(out, count, |o| self.fill64(o));
    }

    /// Writes every element of `out` in f64 ([`fill_blocks`]; zeroing the f64 sample's
    /// normals first and copying each out of the buffer was 3% of its time).
    fn fill64(&mut self, out: &mut [MaybeUninit<f64>]) {
        fill_blocks(out, &mut self.s, &mut self.buf64, &mut self.at64, refill64);
    }
}

/// One Xoshiro256++ step on every lane: the LANES outputs.
#[inline(always)]
fn step(s: &mut [[u64; LANES]; 4]) -> [u64; LANES] {
    let mut out = [0u64; LANES];
    for l in 0..LANES {
        out[l] = s[0][l]
            .wrapping_add(s[3][l])
            .rotate_left(23)
            .wrapping_add(s[0][l]);
        let t = s[1][l] << 17;
        s[2][l] ^= s[0][l];
        s[3][l] ^= s[1][l];
        s[1][l] ^= s[2][l];
        s[0][l] ^= s[3][l];
        s[2][l] ^= t;
        s[3][l] = s[3][l].rotate_left(45);
    }
    out
}

/// The f32 refill: explicit AVX-512 or AVX2 on x86-64 machines that have them (LLVM left the
/// portable body half scalar: 4-wide, with the quadrant's float-to-int conversions one lane
/// at a time), the portable body elsewhere. All are the same IEEE operations in the same
/// order, the polynomials' steps as fused multiply-adds (`mul_add`, a correctly rounded libm
/// call on a CPU without FMA), so every machine gives the same bits (tested below). AVX-512
/// transforms two steps' pairs in one 16-lane pass.
fn refill32(s: &mut [[u64; LANES]; 4], out: &mut [MaybeUninit<f32>; BLOCK]) {
    let ptr = out.as_mut_ptr().cast::<f32>();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `ptr` is BLOCK writable floats.
            return unsafe { x86::refill32_512(s, ptr) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; `ptr` is BLOCK writable floats.
            return unsafe { x86::refill32(s, ptr) };
        }
    }
    let mut buf = [0f32; BLOCK];
    refill32_body(s, &mut buf);
    for (o, v) in out.iter_mut().zip(buf) {
        o.write(v);
    }
}

/// Multiversioned: the same body compiled for AVX-512, AVX2 and the baseline, picked at run
/// time (the f64 refill). No FMA is enabled, so all three give the same bits.
macro_rules! dispatch {
    ($name:ident, $body:ident, $buf:ty) => {
        fn $name(s: &mut [[u64; LANES]; 4], buf: &mut $buf) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2")]
                unsafe fn wide(s: &mut [[u64; LANES]; 4], buf: &mut $buf) {
                    $body(s, buf)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2(s: &mut [[u64; LANES]; 4], buf: &mut $buf) {
                    $body(s, buf)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide(s, buf) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2(s, buf) };
                }
            }
            $body(s, buf)
        }
    };
}

dispatch!(refill64, refill64_body, [MaybeUninit<f64>; BLOCK]);

/// 2²³: adding it to a float in [0, 2²²) rounds that float to an integer, which the low
/// mantissa bits then hold (the quadrant without a float-to-int conversion).
const ROUND32: f32 = 8_388_608.0;
/// 2⁵², the same for f64.
const ROUND64: f64 = 4_503_599_627_370_496.0;

#[inline(always)]
fn refill32_body(s: &mut [[u64; LANES]; 4], buf: &mut [f32; BLOCK]) {
    const TWO_M31: f32 = 1.0 / 2_147_483_648.0;
    for k in 0..STEPS {
        let w = step(s);
        let mut z1 = [0f32; LANES];
        let mut z2 = [0f32; LANES];
        for l in 0..LANES {
            // u from the top 31 bits through a signed conversion (exact below 2²⁴, so the
            // tail keeps its resolution; one instruction on every SIMD level).
            let u = (((w[l] >> 33) as i32) as f32 + 0.5) * TWO_M31;
            // The turn fraction θ/(2π) in (0, 1) from 23 bits of the low word, by the
            // exponent trick (exact).
            let t = f32::from_bits(0x3F80_0000 | ((w[l] as u32) >> 9)) - (1.0 - 1.0 / 16_777_216.0);
            let r = (-2.0 * ln32(u)).sqrt();
            let (sn, cs) = sincos_turn32(t);
            z1[l] = r * cs;
            z2[l] = r * sn;
        }
        let o = k * 2 * LANES;
        buf[o..o + LANES].copy_from_slice(&z1);
        buf[o + LANES..o + 2 * LANES].copy_from_slice(&z2);
    }
}

/// (0, 1) with 52 bits from a word, by the exponent trick (exact, no integer conversion).
#[inline(always)]
fn open01_64(x: u64) -> f64 {
    f64::from_bits(0x3FF0_0000_0000_0000 | (x >> 12)) - (1.0 - 1.0 / 9_007_199_254_740_992.0)
}

#[inline(always)]
fn refill64_body(s: &mut [[u64; LANES]; 4], buf: &mut [MaybeUninit<f64>; BLOCK]) {
    for k in 0..STEPS {
        let a = step(s);
        let b = step(s);
        let mut z1 = [0f64; LANES];
        let mut z2 = [0f64; LANES];
        for l in 0..LANES {
            let u = open01_64(a[l]);
            let t = open01_64(b[l]);
            let r = (-2.0 * ln64(u)).sqrt();
            let (sn, cs) = sincos_turn64(t);
            z1[l] = r * cs;
            z2[l] = r * sn;
        }
        let o = k * 2 * LANES;
        for (d, &z) in buf[o..o + 2 * LANES].iter_mut().zip(z1.iter().chain(&z2)) {
            d.write(z);
        }
    }
}

/// ln x for x in (0, 1] (normal, positive): x = 2^e·m with m in [√½, √2), then
/// ln m = 2 atanh(f), f = (m − 1)/(m + 1), |f| ≤ 0.172, by an odd series to f⁹
/// (truncation < 2e-9 relative, below half an f32 ulp).
#[inline(always)]
pub fn ln32(x: f32) -> f32 {
    let bits = x.to_bits();
    // Shift the mantissa range to [√½, √2) by biasing with the bits of √½.
    let adj = bits.wrapping_sub(0x3F35_04F3);
    let e = (adj as i32) >> 23;
    let m = f32::from_bits(bits.wrapping_sub((e as u32) << 23));
    let f = (m - 1.0) / (m + 1.0);
    let f2 = f * f;
    let p: f32 = 2.0 / 9.0;
    let p = p.mul_add(f2, 2.0 / 7.0);
    let p = p.mul_add(f2, 2.0 / 5.0);
    let p = p.mul_add(f2, 2.0 / 3.0);
    let p = p.mul_add(f2, 2.0);
    p.mul_add(f, e as f32 * std::f32::consts::LN_2)
}

/// ln x in f64, as [`ln32`] with the series to f²¹ (truncation < 1e-17 relative).
#[inline(always)]
pub fn ln64(x: f64) -> f64 {
    let bits = x.to_bits();
    let adj = bits.wrapping_sub(0x3FE6_A09E_667F_3BCD);
    let e = (adj as i64) >> 52;
    let m = f64::from_bits(bits.wrapping_sub((e as u64) << 52));
    let f = (m - 1.0) / (m + 1.0);
    let f2 = f * f;
    let mut p = 2.0 / 21.0;
    for k in (0..10).rev() {
        p = p * f2 + 2.0 / (2 * k + 1) as f64;
    }
    // ln 2 split in two so e·ln 2 is exact to f64 rounding for |e| ≤ 1100.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let e = e as f64;
    e * LN2_HI + (p * f + e * LN2_LO)
}

/// (sin 2πt, cos 2πt) for t in (0, 1): reduced to the quarter turn nearest t, then Taylor
/// polynomials of sin and cos on |x| ≤ π/4 (truncation < 4e-9 at x⁹ and x¹⁰).
#[inline(always)]
pub fn sincos_turn32(t: f32) -> (f32, f32) {
    // q = round(4t) ∈ 0..=4 (ties to even; either neighbour leaves |x| ≤ π/4).
    let big = t * 4.0 + ROUND32;
    let q = big.to_bits();
    let x = (t - (big - ROUND32) * 0.25) * std::f32::consts::TAU;
    let x2 = x * x;
    let s = x2.mul_add(1.0 / 362_880.0, -1.0 / 5040.0);
    let s = s.mul_add(x2, 1.0 / 120.0);
    let s = s.mul_add(x2, -1.0 / 6.0);
    let s = (s * x2).mul_add(x, x);
    let c = x2.mul_add(-1.0 / 3_628_800.0, 1.0 / 40320.0);
    let c = c.mul_add(x2, -1.0 / 720.0);
    let c = c.mul_add(x2, 1.0 / 24.0);
    let c = c.mul_add(x2, -0.5);
    let c = c.mul_add(x2, 1.0);
    let (a, b) = if q & 1 != 0 { (c, s) } else { (s, c) };
    let sa = (q & 2) << 30;
    let sb = ((q + 1) & 2) << 30;
    (
        f32::from_bits(a.to_bits() ^ sa),
        f32::from_bits(b.to_bits() ^ sb),
    )
}

/// (sin 2πt, cos 2πt) in f64, Taylor to x¹⁷ and x¹⁸ (truncation < 1e-17).
#[inline(always)]
pub fn sincos_turn64(t: f64) -> (f64, f64) {
    let big = t * 4.0 + ROUND64;
    let q = big.to_bits();
    let x = (t - (big - ROUND64) * 0.25) * std::f64::consts::TAU;
    let x2 = x * x;
    // sin: Σ (−1)^k x^{2k+1}/(2k+1)!, k = 0..8; cos: k = 0..9.
    let mut s = 0.0;
    let mut c = 0.0;
    for k in (0..9).rev() {
        s = s * x2 + SIN_COEF[k];
    }
    for k in (0..10).rev() {
        c = c * x2 + COS_COEF[k];
    }
    let s = s * x;
    let (a, b) = if q & 1 != 0 { (c, s) } else { (s, c) };
    let sa = (q & 2) << 62;
    let sb = ((q + 1) & 2) << 62;
    (
        f64::from_bits(a.to_bits() ^ sa),
        f64::from_bits(b.to_bits() ^ sb),
    )
}

const SIN_COEF: [f64; 9] = [
    1.0,
    -1.0 / 6.0,
    1.0 / 120.0,
    -1.0 / 5040.0,
    1.0 / 362_880.0,
    -1.0 / 39_916_800.0,
    1.0 / 6_227_020_800.0,
    -1.0 / 1_307_674_368_000.0,
    1.0 / 355_687_428_096_000.0,
];
const COS_COEF: [f64; 10] = [
    1.0,
    -0.5,
    1.0 / 24.0,
    -1.0 / 720.0,
    1.0 / 40320.0,
    -1.0 / 3_628_800.0,
    1.0 / 479_001_600.0,
    -1.0 / 87_178_291_200.0,
    1.0 / 20_922_789_888_000.0,
    -1.0 / 6_402_373_705_728_000.0,
];

/// The AVX2 refill: [`refill32_body`] eight lanes at a time, operation for operation.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, ROUND32, STEPS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotl<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi64::<L>(x), _mm256_srli_epi64::<R>(x))
    }

    /// One Xoshiro256++ step on four lanes (`s` = words 0..3 of those lanes).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn step(s: &mut [__m256i; 4]) -> __m256i {
        let out = _mm256_add_epi64(rotl::<23, 41>(_mm256_add_epi64(s[0], s[3])), s[0]);
        let t = _mm256_slli_epi64::<17>(s[1]);
        s[2] = _mm256_xor_si256(s[2], s[0]);
        s[3] = _mm256_xor_si256(s[3], s[1]);
        s[1] = _mm256_xor_si256(s[1], s[2]);
        s[0] = _mm256_xor_si256(s[0], s[3]);
        s[2] = _mm256_xor_si256(s[2], t);
        s[3] = rotl::<45, 19>(s[3]);
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn refill32(st: &mut [[u64; LANES]; 4], buf: *mut f32) {
        // SAFETY: each word holds 8 lanes; 4 are read from 0 or 4.
        let load =
            |w: usize, h: usize| unsafe { _mm256_loadu_si256(st[w][4 * h..].as_ptr().cast()) };
        let mut a = [load(0, 0), load(1, 0), load(2, 0), load(3, 0)];
        let mut b = [load(0, 1), load(1, 1), load(2, 1), load(3, 1)];
        let c = |x: f32| _mm256_set1_ps(x);
        let ci = |x: u32| _mm256_set1_epi32(x as i32);
        for k in 0..STEPS {
            let (wa, wb) = (step(&mut a), step(&mut b));
            // The high and the low 32-bit halves of the eight words, in lane order.
            let pick = |hi: bool| {
                let (fa, fb) = (_mm256_castsi256_ps(wa), _mm256_castsi256_ps(wb));
                let v = if hi {
                    _mm256_shuffle_ps::<0xDD>(fa, fb)
                } else {
                    _mm256_shuffle_ps::<0x88>(fa, fb)
                };
                _mm256_permute4x64_epi64::<0xD8>(_mm256_castps_si256(v))
            };
            let (hi, lo) = (pick(true), pick(false));
            let u = _mm256_mul_ps(
                _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32::<1>(hi)), c(0.5)),
                c(1.0 / 2_147_483_648.0),
            );
            let t = _mm256_sub_ps(
                _mm256_castsi256_ps(_mm256_or_si256(_mm256_srli_epi32::<9>(lo), ci(0x3F80_0000))),
                c(1.0 - 1.0 / 16_777_216.0),
            );
            // ln u (super::ln32).
            let bits = _mm256_castps_si256(u);
            let e = _mm256_srai_epi32::<23>(_mm256_sub_epi32(bits, ci(0x3F35_04F3)));
            let m = _mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32::<23>(e)));
            let f = _mm256_div_ps(_mm256_sub_ps(m, c(1.0)), _mm256_add_ps(m, c(1.0)));
            let f2 = _mm256_mul_ps(f, f);
            let mut p = c(2.0 / 9.0);
            for k in [2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0, 2.0] {
                p = _mm256_fmadd_ps(p, f2, c(k));
            }
            let ln = _mm256_fmadd_ps(
                p,
                f,
                _mm256_mul_ps(_mm256_cvtepi32_ps(e), c(std::f32::consts::LN_2)),
            );
            let r = _mm256_sqrt_ps(_mm256_mul_ps(c(-2.0), ln));
            // sin and cos of the turn t (super::sincos_turn32).
            let big = _mm256_add_ps(_mm256_mul_ps(t, c(4.0)), c(ROUND32));
            let q = _mm256_castps_si256(big);
            let x = _mm256_mul_ps(
                _mm256_sub_ps(t, _mm256_mul_ps(_mm256_sub_ps(big, c(ROUND32)), c(0.25))),
                c(std::f32::consts::TAU),
            );
            let x2 = _mm256_mul_ps(x, x);
            let mut s = _mm256_fmadd_ps(x2, c(1.0 / 362_880.0), c(-1.0 / 5040.0));
            s = _mm256_fmadd_ps(s, x2, c(1.0 / 120.0));
            s = _mm256_fmadd_ps(s, x2, c(-1.0 / 6.0));
            s = _mm256_fmadd_ps(_mm256_mul_ps(s, x2), x, x);
            let mut co = _mm256_fmadd_ps(x2, c(-1.0 / 3_628_800.0), c(1.0 / 40320.0));
            co = _mm256_fmadd_ps(co, x2, c(-1.0 / 720.0));
            co = _mm256_fmadd_ps(co, x2, c(1.0 / 24.0));
            co = _mm256_fmadd_ps(co, x2, c(-0.5));
            co = _mm256_fmadd_ps(co, x2, c(1.0));
            let odd = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, ci(1)), ci(1)));
            let sa = _mm256_slli_epi32::<30>(_mm256_and_si256(q, ci(2)));
            let sb = _mm256_slli_epi32::<30>(_mm256_and_si256(_mm256_add_epi32(q, ci(1)), ci(2)));
            let sn = _mm256_xor_ps(_mm256_blendv_ps(s, co, odd), _mm256_castsi256_ps(sa));
            let cs = _mm256_xor_ps(_mm256_blendv_ps(co, s, odd), _mm256_castsi256_ps(sb));
            let o = k * 2 * LANES;
            // SAFETY: o + 2 LANES <= BLOCK floats at `buf`.
            unsafe {
                _mm256_storeu_ps(buf.add(o), _mm256_mul_ps(r, cs));
                _mm256_storeu_ps(buf.add(o + LANES), _mm256_mul_ps(r, sn));
            }
        }
        for (w, (va, vb)) in a.iter().zip(&b).enumerate() {
            // SAFETY: each word holds 8 lanes.
            unsafe {
                _mm256_storeu_si256(st[w][..4].as_mut_ptr().cast(), *va);
                _mm256_storeu_si256(st[w][4..].as_mut_ptr().cast(), *vb);
            }
        }
    }

    /// One Xoshiro256++ step on all eight lanes (`s` = words 0..3).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn step512(s: &mut [__m512i; 4]) -> __m512i {
        let out = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(s[0], s[3])), s[0]);
        let t = _mm512_slli_epi64::<17>(s[1]);
        s[2] = _mm512_xor_si512(s[2], s[0]);
        s[3] = _mm512_xor_si512(s[3], s[1]);
        s[1] = _mm512_xor_si512(s[1], s[2]);
        s[0] = _mm512_xor_si512(s[0], s[3]);
        s[2] = _mm512_xor_si512(s[2], t);
        s[3] = _mm512_rol_epi64::<45>(s[3]);
        out
    }

    /// [`refill32`] on AVX-512: the same operations on the same values, two steps' eight
    /// pairs in one 16-lane pass (lanes 0..8 step k, 8..16 step k + 1), stored in
    /// [`refill32`]'s order. `buf` is BLOCK writable floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn refill32_512(st: &mut [[u64; LANES]; 4], buf: *mut f32) {
        // SAFETY: each word holds 8 lanes of u64, one 512-bit vector.
        let mut s: [__m512i; 4] =
            std::array::from_fn(|w| unsafe { _mm512_loadu_si512(st[w].as_ptr().cast()) });
        let c = |x: f32| _mm512_set1_ps(x);
        let ci = |x: u32| _mm512_set1_epi32(x as i32);
        let cat = |a: __m256i, b: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        for k in (0..STEPS).step_by(2) {
            let (w0, w1) = (step512(&mut s), step512(&mut s));
            // The high and the low 32-bit halves of the words, in lane order, step by step.
            let hi = cat(
                _mm512_cvtepi64_epi32(_mm512_srli_epi64::<32>(w0)),
                _mm512_cvtepi64_epi32(_mm512_srli_epi64::<32>(w1)),
            );
            let lo = cat(_mm512_cvtepi64_epi32(w0), _mm512_cvtepi64_epi32(w1));
            let u = _mm512_mul_ps(
                _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<1>(hi)), c(0.5)),
                c(1.0 / 2_147_483_648.0),
            );
            let t = _mm512_sub_ps(
                _mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32::<9>(lo), ci(0x3F80_0000))),
                c(1.0 - 1.0 / 16_777_216.0),
            );
            // ln u (super::ln32).
            let bits = _mm512_castps_si512(u);
            let e = _mm512_srai_epi32::<23>(_mm512_sub_epi32(bits, ci(0x3F35_04F3)));
            let m = _mm512_castsi512_ps(_mm512_sub_epi32(bits, _mm512_slli_epi32::<23>(e)));
            let f = _mm512_div_ps(_mm512_sub_ps(m, c(1.0)), _mm512_add_ps(m, c(1.0)));
            let f2 = _mm512_mul_ps(f, f);
            let mut p = c(2.0 / 9.0);
            for k in [2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0, 2.0] {
                p = _mm512_fmadd_ps(p, f2, c(k));
            }
            let ln = _mm512_fmadd_ps(
                p,
                f,
                _mm512_mul_ps(_mm512_cvtepi32_ps(e), c(std::f32::consts::LN_2)),
            );
            let r = _mm512_sqrt_ps(_mm512_mul_ps(c(-2.0), ln));
            // sin and cos of the turn t (super::sincos_turn32).
            let big = _mm512_add_ps(_mm512_mul_ps(t, c(4.0)), c(ROUND32));
            let q = _mm512_castps_si512(big);
            let x = _mm512_mul_ps(
                _mm512_sub_ps(t, _mm512_mul_ps(_mm512_sub_ps(big, c(ROUND32)), c(0.25))),
                c(std::f32::consts::TAU),
            );
            let x2 = _mm512_mul_ps(x, x);
            let mut sv = _mm512_fmadd_ps(x2, c(1.0 / 362_880.0), c(-1.0 / 5040.0));
            sv = _mm512_fmadd_ps(sv, x2, c(1.0 / 120.0));
            sv = _mm512_fmadd_ps(sv, x2, c(-1.0 / 6.0));
            sv = _mm512_fmadd_ps(_mm512_mul_ps(sv, x2), x, x);
            let mut co = _mm512_fmadd_ps(x2, c(-1.0 / 3_628_800.0), c(1.0 / 40320.0));
            co = _mm512_fmadd_ps(co, x2, c(-1.0 / 720.0));
            co = _mm512_fmadd_ps(co, x2, c(1.0 / 24.0));
            co = _mm512_fmadd_ps(co, x2, c(-0.5));
            co = _mm512_fmadd_ps(co, x2, c(1.0));
            let odd = _mm512_cmpeq_epi32_mask(_mm512_and_si512(q, ci(1)), ci(1));
            let sa = _mm512_slli_epi32::<30>(_mm512_and_si512(q, ci(2)));
            let sb = _mm512_slli_epi32::<30>(_mm512_and_si512(_mm512_add_epi32(q, ci(1)), ci(2)));
            let flip = |v: __m512, sign: __m512i| {
                _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign))
            };
            let sn = flip(_mm512_mask_blend_ps(odd, sv, co), sa);
            let cs = flip(_mm512_mask_blend_ps(odd, co, sv), sb);
            let (zc, zs) = (_mm512_mul_ps(r, cs), _mm512_mul_ps(r, sn));
            let o = k * 2 * LANES;
            // SAFETY: o + 4 LANES <= BLOCK floats at `buf`. Step k's cos and sin halves,
            // then step k + 1's.
            unsafe {
                _mm512_storeu_ps(buf.add(o), _mm512_shuffle_f32x4::<0x44>(zc, zs));
                _mm512_storeu_ps(buf.add(o + 2 * LANES), _mm512_shuffle_f32x4::<0xEE>(zc, zs));
            }
        }
        for (w, v) in s.iter().enumerate() {
            // SAFETY: each word holds 8 lanes.
            unsafe { _mm512_storeu_si512(st[w].as_mut_ptr().cast(), *v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementary_functions_are_accurate() {
        let mut worst = [0f64; 4];
        for i in 1..200_000u32 {
            let x = i as f64 / 200_000.0;
            let x = x.powi(3); // dense near 0, where the tails come from
            let l32 = ln32(x as f32) as f64;
            let l64 = ln64(x);
            let exact32 = (x as f32 as f64).ln();
            worst[0] = worst[0].max((l32 - exact32).abs() / exact32.abs().max(1e-3));
            worst[1] = worst[1].max((l64 - x.ln()).abs() / x.ln().abs().max(1e-3));
            let t = i as f64 / 200_000.0;
            let (s32, c32) = sincos_turn32(t as f32);
            let tt = t as f32 as f64 * std::f64::consts::TAU;
            worst[2] = worst[2]
                .max((s32 as f64 - tt.sin()).abs())
                .max((c32 as f64 - tt.cos()).abs());
            let (s64, c64) = sincos_turn64(t);
            let tt = t * std::f64::consts::TAU;
            worst[3] = worst[3]
                .max((s64 - tt.sin()).abs())
                .max((c64 - tt.cos()).abs());
        }
        // f32: a few ulp (2^-23 ≈ 1.2e-7); f64: a few ulp of 2^-52 ≈ 2.2e-16.
        assert!(worst[0] < 5e-7, "ln32 {:e}", worst[0]);
        assert!(worst[1] < 2e-15, "ln64 {:e}", worst[1]);
        assert!(worst[2] < 5e-7, "sincos32 {:e}", worst[2]);
        assert!(worst[3] < 2e-15, "sincos64 {:e}", worst[3]);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_in_any_chunking() {
        let mut a = FastNormals::from_seed(7);
        let mut b = FastNormals::from_seed(7);
        let mut x = vec![0f32; 1000];
        a.fill_f32(&mut x);
        let mut y = vec![0f32; 1000];
        for c in y.chunks_mut(37) {
            b.fill_f32(c);
        }
        assert_eq!(x, y);
        let mut c = FastNormals::from_seed(7);
        let mut v = Vec::new();
        c.extend_f32(&mut v, 300);
        c.extend_f32(&mut v, 700);
        assert_eq!(x, v);
        // f64 likewise: chunked fills and appends (blocks generated in place, the buffer for
        // the ends) give the draws of one fill.
        let mut x64 = vec![0f64; 3 * BLOCK + 5];
        FastNormals::from_seed(7).fill_f64(&mut x64);
        let mut d = FastNormals::from_seed(7);
        let mut y64 = vec![0f64; x64.len()];
        for c in y64.chunks_mut(37) {
            d.fill_f64(c);
        }
        assert_eq!(x64, y64);
        let mut e = FastNormals::from_seed(7);
        let mut v64 = Vec::new();
        e.extend_f64(&mut v64, 300);
        e.extend_f64(&mut v64, 2 * BLOCK);
        e.extend_f64(&mut v64, x64.len() - 300 - 2 * BLOCK);
        assert_eq!(x64, v64);
        // The explicit AVX2 kernel gives the same bits as the dispatched one (AVX-512 here).
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let mut s = FastNormals::from_seed(7).s;
            let mut buf = Box::new([0f32; BLOCK]);
            // SAFETY: the CPU has AVX2 and FMA; buf holds BLOCK floats.
            unsafe { x86::refill32(&mut s, buf.as_mut_ptr()) };
            assert_eq!(&x[..BLOCK], &buf[..]);
        }
        // The portable body gives the same bits as the dispatched one.
        let mut s = FastNormals::from_seed(7).s;
        let mut buf = Box::new([0f32; BLOCK]);
        refill32_body(&mut s, &mut buf);
        assert_eq!(&x[..BLOCK], &buf[..]);
        // The dispatched f64 refill gives the bits of the lane-by-lane transform through the
        // scalar functions tested for accuracy above.
        let mut s = FastNormals::from_seed(7).s;
        let mut plain = Vec::with_capacity(x64.len());
        while plain.len() < x64.len() {
            let a = step(&mut s);
            let b = step(&mut s);
            let pairs = (0..LANES).map(|l| {
                let r = (-2.0 * ln64(open01_64(a[l]))).sqrt();
                let (sn, cs) = sincos_turn64(open01_64(b[l]));
                (r * cs, r * sn)
            });
            let (z1, z2): (Vec<f64>, Vec<f64>) = pairs.unzip();
            plain.extend(z1);
            plain.extend(z2);
        }
        plain.truncate(x64.len());
        assert_eq!(x64, plain);
        let mut s = FastNormals::from_seed(7).s;
        let mut buf64 = Box::new([MaybeUninit::new(0f64); BLOCK]);
        refill64_body(&mut s, &mut buf64);
        // SAFETY: initialized above (and written by refill64_body).
        let buf64: Vec<f64> = buf64.iter().map(|v| unsafe { v.assume_init() }).collect();
        let mut z = vec![0f64; BLOCK];
        FastNormals::from_seed(7).fill_f64(&mut z);
        assert_eq!(&z[..], &buf64[..]);
    }
}
