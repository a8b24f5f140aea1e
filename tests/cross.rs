//! The cross-attention block of the encoder–decoder ((2.2)–(2.4)) on its own: its forward
//! pass against a naive loop reference (1e-12), its hand-written backward pass against
//! central differences for every parameter, the decoder input s and the encoder memory s̃
//! (padded memory tokens included), and the dense against the conditional sampler in
//! distribution.

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::config::{ConfigBuilder, ModelSpec};
use sigprop::mc::conditional::Conditional;
use sigprop::model::cross::CrossAttention;
use sigprop::model::{
    Ctx, Materialized, NoParams, ParamGrads, Params, Probe, ResidualBlock, WeightOps, init,
};

const SEQS: usize = 2;
const T_DEC: usize = 3;
const T_ENC: usize = 4;

fn spec(sets: &[&str]) -> ModelSpec {
    let mut b = ConfigBuilder::new();
    for s in ["model.width=8", "model.heads=2"].iter().chain(sets) {
        b = b.set(s).unwrap();
    }
    b.build().unwrap().model
}

fn probe() -> Probe {
    Probe {
        sequences: SEQS,
        tokens: T_DEC,
        x: None,
        ids: None,
        decoder: None,
        keep: None,
    }
}

fn normals(rows: usize, cols: usize, rng: &mut init::Stream) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.sample::<f64, _>(StandardNormal))
}

/// Sequence 0 has one padded memory token in the middle, sequence 1 two at the end.
const MASK: [bool; SEQS * T_ENC] = [true, false, true, true, true, true, false, false];

/// r and the cache from one forward pass.
fn forward(
    spec: &ModelSpec,
    block: &CrossAttention,
    params: &Params,
    ops: &mut dyn WeightOps,
    s: ArrayView2<f64>,
    mem: ArrayView2<f64>,
) -> Array2<f64> {
    let probe = probe();
    let mut cx = Ctx::new(spec, params, ops, &probe);
    cx.memory = Some(mem);
    cx.memory_mask = Some(&MASK);
    block.forward(&mut cx, s).0
}

fn objective(
    spec: &ModelSpec,
    block: &CrossAttention,
    params: &Params,
    s: &Array2<f64>,
    mem: &Array2<f64>,
    u: &Array2<f64>,
) -> f64 {
    let r = forward(spec, block, params, &mut Materialized, s.view(), mem.view());
    (&r * u).sum()
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Central differences (h = 1e-5, error O(h²) ≈ 1e-10 relative) of every parameter, of s
/// and of s̃ against the backward pass, with and without biases and for μP logits.
#[test]
fn cross_attention_gradients_match_central_differences() {
    for sets in [
        &[][..],
        &["model.variances.bias=0.3", "model.logit_exponent=1"],
        &["model.variances.q=2", "model.variances.k=2"],
    ] {
        let spec = spec(sets);
        let n = spec.width;
        let mut rng = init::stream(3, 1);
        let mut params = Params::default();
        let block = CrossAttention::sample(&spec, 2, &mut params, &mut rng);
        let s = normals(SEQS * T_DEC, n, &mut rng);
        let mem = normals(SEQS * T_ENC, n, &mut rng);
        let u = normals(SEQS * T_DEC, n, &mut rng);

        let probe = probe();
        let mut ops = Materialized;
        let mut cx = Ctx::new(&spec, &params, &mut ops, &probe);
        cx.memory = Some(mem.view());
        cx.memory_mask = Some(&MASK);
        let (_, cache) = block.forward(&mut cx, s.view());
        let mut grads = ParamGrads::new(&params);
        let ds = block.backward(&mut cx, s.view(), &cache, u.view(), &mut grads);
        let grads = grads.into_list();
        let dmem = cx.memory_grad.take().expect("the block fills memory_grad");

        // Padded memory tokens receive exactly nothing.
        for (row, &keep) in dmem.rows().into_iter().zip(&MASK) {
            if !keep {
                assert!(row.iter().all(|&x| x == 0.0), "{sets:?}: padded row {row}");
            }
        }

        let h = 1e-5;
        let fd = |shift: &dyn Fn(f64) -> f64| (shift(h) - shift(-h)) / (2.0 * h);
        let mut worst = (0.0f64, String::new());
        let mut note = |name: String, an: &Array2<f64>, num: &Array2<f64>| {
            // The key bias has a vanishing gradient (a shift of every logit of a query):
            // compared absolutely, as in tests/gradients.rs.
            let (diff, scale) = (max_abs(&(num - an)), max_abs(an));
            let rel = if scale > 1e-9 { diff / scale } else { diff };
            if rel > worst.0 {
                worst = (rel, name);
            }
        };
        for (pi, p) in params.list.iter().enumerate() {
            let mut num = Array2::zeros(p.shape);
            for idx in 0..p.value.len() {
                num.as_slice_mut().unwrap()[idx] = fd(&|d| {
                    let mut q = params.clone();
                    q.list[pi].value.as_slice_mut().unwrap()[idx] += d;
                    objective(&spec, &block, &q, &s, &mem, &u)
                });
            }
            note(p.name.clone(), &grads[pi], &num);
        }
        let mut num = Array2::zeros(s.raw_dim());
        for idx in 0..s.len() {
            num.as_slice_mut().unwrap()[idx] = fd(&|d| {
                let mut s2 = s.clone();
                s2.as_slice_mut().unwrap()[idx] += d;
                objective(&spec, &block, &params, &s2, &mem, &u)
            });
        }
        note("s (decoder input)".into(), &ds, &num);
        let mut num = Array2::zeros(mem.raw_dim());
        for idx in 0..mem.len() {
            num.as_slice_mut().unwrap()[idx] = fd(&|d| {
                let mut m2 = mem.clone();
                m2.as_slice_mut().unwrap()[idx] += d;
                objective(&spec, &block, &params, &s, &m2, &u)
            });
        }
        note("s̃ (encoder memory)".into(), &dmem, &num);
        assert!(
            worst.0 < 1e-6,
            "{sets:?}: relative error {:.3e} in {}",
            worst.0,
            worst.1
        );
    }
}

/// A naive loop over every index, written from (2.2)–(2.4), the softmax over the unpadded
/// memory tokens of the same sequence, and (1.19).
#[test]
fn cross_attention_forward_matches_naive_reference() {
    let spec = spec(&["model.variances.bias=0.2"]);
    let (n, heads) = (spec.width, spec.heads);
    let c = n / heads;
    let mut rng = init::stream(9, 4);
    let mut params = Params::default();
    let block = CrossAttention::sample(&spec, 5, &mut params, &mut rng);
    let s = normals(SEQS * T_DEC, n, &mut rng);
    let mem = normals(SEQS * T_ENC, n, &mut rng);
    let fast = forward(
        &spec,
        &block,
        &params,
        &mut Materialized,
        s.view(),
        mem.view(),
    );

    let get = |suffix: &str| {
        params
            .list
            .iter()
            .find(|p| p.name == format!("block5.cross.{suffix}"))
            .unwrap_or_else(|| panic!("no {suffix}"))
            .value
            .clone()
    };
    let (q, k, v, u) = (get("q"), get("k"), get("v"), get("u"));
    let (bq, bk, bv, bu) = (get("bq"), get("bk"), get("bv"), get("bu"));
    let affine = |w: &Array2<f64>, b: &Array2<f64>, x: ArrayView2<f64>, row: usize, i: usize| {
        b[[0, i]] + (0..n).map(|j| w[[i, j]] * x[[row, j]]).sum::<f64>()
    };
    let mut worst = 0.0f64;
    for sq in 0..SEQS {
        for t in 0..T_DEC {
            let d = sq * T_DEC + t;
            let mut o = vec![0.0; n];
            for h in 0..heads {
                let keys: Vec<usize> = (0..T_ENC).filter(|&m| MASK[sq * T_ENC + m]).collect();
                let logit = |m: usize| {
                    (0..c)
                        .map(|cc| {
                            let i = h * c + cc;
                            affine(&q, &bq, s.view(), d, i)
                                * affine(&k, &bk, mem.view(), sq * T_ENC + m, i)
                        })
                        .sum::<f64>()
                        / (c as f64).sqrt()
                };
                let e: Vec<f64> = keys.iter().map(|&m| logit(m).exp()).collect();
                let z: f64 = e.iter().sum();
                for cc in 0..c {
                    let i = h * c + cc;
                    o[i] = keys
                        .iter()
                        .zip(&e)
                        .map(|(&m, &w)| w / z * affine(&v, &bv, mem.view(), sq * T_ENC + m, i))
                        .sum();
                }
            }
            let o = Array2::from_shape_vec((1, n), o).unwrap();
            for i in 0..n {
                let r = affine(&u, &bu, o.view(), 0, i);
                worst = worst.max((r - fast[[d, i]]).abs());
            }
        }
    }
    assert!(
        worst < 1e-12,
        "cross-attention differs from the naive reference by {worst:e}"
    );
}

/// The conditional sampler draws Q s, K s̃, V s̃, U (Ω v) and their backward products from
/// their exact laws: the kernel of r, |∂f/∂s|² and |∂f/∂s̃|² over 3000 networks agree with
/// the dense path within 5 combined standard errors, at fixed inputs and cotangent.
#[test]
fn cross_attention_dense_and_conditional_agree_in_distribution() {
    let spec = spec(&["model.width=16", "model.variances.q=1.5"]);
    let n = spec.width;
    let mut rng = init::stream(1, 1);
    let s = normals(SEQS * T_DEC, n, &mut rng);
    // A repeated memory token makes the memory rank deficient.
    let mut mem = normals(SEQS * T_ENC, n, &mut rng);
    let r0 = mem.row(0).to_owned();
    mem.row_mut(3).assign(&r0);
    let g = normals(SEQS * T_DEC, n, &mut rng);
    let samples = 3000u64;
    let observe = |conditional: bool| -> Vec<(f64, f64)> {
        let mut sums = Vec::new();
        for k in 0..samples {
            let mut stream = init::stream(77, k);
            let mut params = Params {
                list: Vec::new(),
                lazy: conditional,
            };
            let block = CrossAttention::sample(&spec, 2, &mut params, &mut stream);
            let mut dense = Materialized;
            let mut cond = Conditional::new(&params, init::stream(78, k), true);
            let ops: &mut dyn WeightOps = if conditional { &mut cond } else { &mut dense };
            let probe = probe();
            let mut cx = Ctx::new(&spec, &params, ops, &probe);
            cx.memory = Some(mem.view());
            cx.memory_mask = Some(&MASK);
            let (r, cache) = block.forward(&mut cx, s.view());
            let ds = block.backward(&mut cx, s.view(), &cache, g.view(), &mut NoParams);
            let dmem = cx.memory_grad.take().unwrap();
            let kernel = r.dot(&r.t()) / n as f64;
            let mut values: Vec<f64> = kernel.iter().copied().collect();
            values.push(ds.iter().map(|x| x * x).sum());
            values.push(dmem.iter().map(|x| x * x).sum());
            if sums.is_empty() {
                sums = vec![(0.0, 0.0); values.len()];
            }
            for (acc, v) in sums.iter_mut().zip(values) {
                acc.0 += v;
                acc.1 += v * v;
            }
        }
        let m = samples as f64;
        sums.iter()
            .map(|&(a, b)| {
                let mean = a / m;
                (mean, ((b / m - mean * mean) / (m - 1.0)).max(0.0).sqrt())
            })
            .collect()
    };
    let dense = observe(false);
    let cond = observe(true);
    let mut worst = (0.0f64, 0usize);
    for (i, (a, b)) in dense.iter().zip(&cond).enumerate() {
        let se = (a.1 * a.1 + b.1 * b.1).sqrt();
        let z = if se > 0.0 { (a.0 - b.0) / se } else { 0.0 };
        if z.abs() > worst.0 {
            worst = (z.abs(), i);
        }
    }
    let (i, last) = (worst.1, dense.len());
    assert!(
        worst.0 < 5.0,
        "dense vs conditional: |z| = {:.2} at entry {i} of {last} ({:?} vs {:?})",
        worst.0,
        dense[i],
        cond[i]
    );
}
