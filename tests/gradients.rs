//! The hand-written backward pass against central differences in f64, for every norm
//! mode, head type, causal masking and biases; and the forward pass against a naive
//! triple-loop reference.

use ndarray::Array2;
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::config::{Config, ConfigBuilder};
use sigprop::inputs;
use sigprop::model::{Network, NoParams, ParamGrads, Probe, init};

fn config(sets: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in [
        "model.width=8",
        "model.heads=2",
        "model.mlp_mult=2",
        "model.layers=2",
        "model.n_out=3",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=5",
        "inputs.vocab=7",
        "model.variances.pe=0.3",
    ] {
        b = b.set(s).unwrap();
    }
    for s in sets {
        b = b.set(s).unwrap();
    }
    b.build().unwrap()
}

fn objective(net: &Network, probe: &Probe, u: &Array2<f64>) -> f64 {
    let out = net.forward(probe).out;
    out.iter().zip(u.iter()).map(|(a, b)| a * b).sum()
}

/// Max over every parameter tensor of ‖fd − analytic‖∞ / ‖analytic‖∞, and the same for
/// ∂f/∂z¹ (the stream gradient, checked through a perturbation of the stem output).
fn check(sets: &[&str]) {
    let mut cfg = config(sets);
    let probe = inputs::probe(&mut cfg).unwrap();
    let mut rng = init::stream(7, 3);
    let net = Network::sample(&cfg.model, &mut rng);
    let trace = net.forward(&probe);
    let u =
        Array2::from_shape_simple_fn(trace.out.raw_dim(), || rng.sample::<f64, _>(StandardNormal));
    let mut grads = ParamGrads::new(&net.params);
    let dz = net.backward(&trace, &probe, u.view(), &mut grads);
    let grads = grads.into_list();
    assert_eq!(dz.len(), cfg.model.num_blocks() + 1);

    let h = 1e-5;
    let mut worst = (0.0f64, String::new());
    for (pi, param) in net.params.list.iter().enumerate() {
        let an = &grads[pi];
        let mut fd = Array2::<f64>::zeros(an.raw_dim());
        for idx in 0..an.len() {
            let mut plus = net.clone();
            let mut minus = net.clone();
            plus.params.list[pi].value.as_slice_mut().unwrap()[idx] += h;
            minus.params.list[pi].value.as_slice_mut().unwrap()[idx] -= h;
            fd.as_slice_mut().unwrap()[idx] =
                (objective(&plus, &probe, &u) - objective(&minus, &probe, &u)) / (2.0 * h);
        }
        let scale = an.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let diff = (&fd - an).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        // A parameter whose gradient vanishes identically (e.g. Q when C_Q = 0 and all
        // cotangents are orthogonal) is compared absolutely.
        let rel = if scale > 1e-9 { diff / scale } else { diff };
        if rel > worst.0 {
            worst = (rel, param.name.clone());
        }
    }
    assert!(
        worst.0 < 1e-6,
        "config {sets:?}: relative error {:.3e} in {}",
        worst.0,
        worst.1
    );
}

#[test]
fn gradients_pre_ln_dense_head() {
    check(&[]);
}

#[test]
fn gradients_pre_ln_causal_with_biases() {
    check(&["model.causal=true", "model.variances.bias=0.2"]);
}

#[test]
fn gradients_post_ln_pooled_head() {
    check(&[
        "model.norm=post",
        "model.head=pooled",
        "model.activation=tanh",
    ]);
}

#[test]
fn gradients_no_ln_causal_biases_pooled() {
    check(&[
        "model.norm=none",
        "model.causal=true",
        "model.variances.bias=0.1",
        "model.head=pooled",
        "model.activation=silu",
    ]);
}

#[test]
fn gradients_embedding_stem_tied_head() {
    check(&[
        "model.stem=embedding",
        "model.head=tied",
        "inputs.kind=tokens",
        "model.n_out=7",
        "model.causal=true",
    ]);
}

#[test]
fn gradients_tied_head_with_biases_post_ln() {
    check(&[
        "model.stem=embedding",
        "model.head=tied",
        "inputs.kind=tokens",
        "model.n_out=7",
        "model.norm=post",
        "model.variances.bias=0.3",
        "model.head_s=1",
    ]);
}

#[test]
fn gradients_book_mlp() {
    check(&[
        "model.norm=mlp",
        "model.pattern=M",
        "model.layers=3",
        "model.activation=erf",
        "model.variances.bias=0.5",
    ]);
}

#[test]
fn gradients_mixed_pattern_uniform_init_mup_logits() {
    check(&[
        "model.pattern=AAM",
        "model.layers=1",
        "model.init=uniform",
        "model.logit_exponent=1",
        "model.xi=0.7",
        "model.gamma_res=0.5",
    ]);
}

#[test]
fn gradients_zero_queries_relu_erf() {
    check(&["model.zero_queries=true", "model.activation=relu"]);
}

/// The class token c (1.8) and the class head, in every norm mode; the class token also with
/// a per-token head (its own output row) and with biases.
#[test]
fn gradients_class_token_and_class_head_every_norm() {
    for norm in ["pre", "post", "none"] {
        let norm = format!("model.norm={norm}");
        check(&[&norm, "model.class_token=true", "model.head=class"]);
        check(&[
            &norm,
            "model.class_token=true",
            "model.variances.cls=0.7",
            "model.variances.bias=0.2",
            "model.causal=true",
        ]);
    }
}

/// ∂f/∂z^ℓ from the backward pass equals the derivative of f along a perturbation of z^ℓ.
#[test]
fn stream_gradients_match_directional_derivatives() {
    for norm in ["pre", "post", "none"] {
        let mut cfg = config(&[&format!("model.norm={norm}")]);
        let probe = inputs::probe(&mut cfg).unwrap();
        let mut rng = init::stream(11, 0);
        let net = Network::sample(&cfg.model, &mut rng);
        let trace = net.forward(&probe);
        let u = Array2::from_shape_simple_fn(trace.out.raw_dim(), || {
            rng.sample::<f64, _>(StandardNormal)
        });
        let dz = net.backward(&trace, &probe, u.view(), &mut NoParams);
        // Perturb the stem output by scaling its bias-free part: shift the input of the first
        // block via the positional embedding, whose gradient is Σ_s ∂f/∂z¹.
        let mut grads = ParamGrads::new(&net.params);
        net.backward(&trace, &probe, u.view(), &mut grads);
        let pe_idx = net.stem.pe.unwrap();
        let mut expect = Array2::<f64>::zeros((cfg.model.tokens, cfg.model.width));
        for (d, row) in dz[0].rows().into_iter().enumerate() {
            let mut e = expect.row_mut(d % cfg.model.tokens);
            e += &row;
        }
        let got = &grads.into_list()[pe_idx];
        let diff = (&expect - got).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(
            diff < 1e-12,
            "norm {norm}: ∂f/∂z¹ disagrees with ∂f/∂b_PE by {diff:e}"
        );
    }
}

/// A deliberately naive forward pass: explicit loops over every index, written from the
/// paper's equations (1.7), (1.11), (1.13)–(1.19), (1.20)–(1.22), pre-LN.
#[test]
fn forward_matches_naive_reference() {
    let mut cfg = config(&[
        "model.causal=true",
        "model.variances.bias=0.2",
        "model.xi=0.9",
        "model.gamma_res=1.1",
    ]);
    let probe = inputs::probe(&mut cfg).unwrap();
    let m = &cfg.model;
    let mut rng = init::stream(5, 5);
    let net = Network::sample(m, &mut rng);
    let fast = net.forward(&probe).out;

    let get = |name: &str| -> Vec<Vec<f64>> {
        let p = net
            .params
            .list
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        p.value.rows().into_iter().map(|r| r.to_vec()).collect()
    };
    let (n, heads, t_len, seqs) = (m.width, m.heads, probe.tokens, probe.sequences);
    let c = n / heads;
    let x = probe.x.as_ref().unwrap();
    let ln = |z: &Vec<f64>| -> Vec<f64> {
        let mu = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n as f64;
        z.iter()
            .map(|v| (v - mu) / (var + m.ln_eps).sqrt())
            .collect()
    };
    let affine = |w: &Vec<Vec<f64>>, b: &Vec<Vec<f64>>, inp: &Vec<f64>| -> Vec<f64> {
        (0..w.len())
            .map(|i| b[0][i] + (0..inp.len()).map(|j| w[i][j] * inp[j]).sum::<f64>())
            .collect()
    };
    let w_stem = get("stem.w");
    let pe = get("stem.pe");
    let mut z: Vec<Vec<f64>> = (0..seqs * t_len)
        .map(|d| {
            (0..n)
                .map(|i| {
                    pe[d % t_len][i]
                        + (0..x.ncols())
                            .map(|j| w_stem[i][j] * x[[d, j]])
                            .sum::<f64>()
                })
                .collect()
        })
        .collect();
    for layer in 2..=m.num_blocks() + 1 {
        let s: Vec<Vec<f64>> = z.iter().map(ln).collect();
        let attn = format!("block{layer}.attn.");
        let r: Vec<Vec<f64>> = if net.params.list.iter().any(|p| p.name.starts_with(&attn)) {
            let g = |k: &str| get(&format!("{attn}{k}"));
            let (q, k, v, u) = (g("q"), g("k"), g("v"), g("u"));
            let (bq, bk, bv, bu) = (g("bq"), g("bk"), g("bv"), g("bu"));
            let qs: Vec<_> = s.iter().map(|x| affine(&q, &bq, x)).collect();
            let ks: Vec<_> = s.iter().map(|x| affine(&k, &bk, x)).collect();
            let vs: Vec<_> = s.iter().map(|x| affine(&v, &bv, x)).collect();
            let mut o = vec![vec![0.0; n]; seqs * t_len];
            for sq in 0..seqs {
                for h in 0..heads {
                    for t in 0..t_len {
                        let keys = if m.causal { t + 1 } else { t_len };
                        let logit = |t2: usize| {
                            (0..c)
                                .map(|cc| {
                                    qs[sq * t_len + t][h * c + cc] * ks[sq * t_len + t2][h * c + cc]
                                })
                                .sum::<f64>()
                                / (c as f64).sqrt()
                        };
                        let e: Vec<f64> = (0..keys).map(|t2| logit(t2).exp()).collect();
                        let norm: f64 = e.iter().sum();
                        for cc in 0..c {
                            o[sq * t_len + t][h * c + cc] = (0..keys)
                                .map(|t2| e[t2] / norm * vs[sq * t_len + t2][h * c + cc])
                                .sum::<f64>();
                        }
                    }
                }
            }
            o.iter().map(|x| affine(&u, &bu, x)).collect()
        } else {
            let g = |k: &str| get(&format!("block{layer}.mlp.{k}"));
            let (w, xm, bw, bx) = (g("w"), g("x"), g("bw"), g("bx"));
            s.iter()
                .map(|x| {
                    let a: Vec<f64> = affine(&w, &bw, x)
                        .iter()
                        .map(|&v| m.activation.f(v))
                        .collect();
                    affine(&xm, &bx, &a)
                })
                .collect()
        };
        for (zd, rd) in z.iter_mut().zip(r) {
            for (a, b) in zd.iter_mut().zip(rd) {
                *a = m.xi * *a + m.gamma_res * b;
            }
        }
    }
    let (wh, bh) = (get("head.w"), get("head.b"));
    let mut worst = 0.0f64;
    for (d, zd) in z.iter().enumerate() {
        let out = affine(&wh, &bh, &ln(zd));
        for (i, v) in out.iter().enumerate() {
            worst = worst.max((v - fast[[d, i]]).abs());
        }
    }
    assert!(
        worst < 1e-12,
        "forward pass differs from the naive reference by {worst:e}"
    );
}
