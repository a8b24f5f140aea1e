//! The encoder–decoder (§II 2 B): the hand-written backward pass of the whole stack against
//! central differences in f64 (every norm mode, the tied head, padding, every parameter
//! group including the encoder's, which sees f only through cross-attention), and the
//! forward pass against a naive loop-by-loop reference written from (1.9), (1.11),
//! (1.13)–(1.22) and (2.2)–(2.4).

mod common;

use ndarray::Array2;
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::config::{Config, ConfigBuilder};
use sigprop::inputs;
use sigprop::model::{Network, ParamGrads, Probe, init};

fn config(sets: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in [
        "model.width=8",
        "model.heads=2",
        "model.mlp_mult=2",
        "model.layers=1",
        "model.decoder_layers=1",
        "model.n_out=3",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.decoder_tokens=4",
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

/// Max over every parameter tensor of ‖fd − analytic‖∞ / ‖analytic‖∞ below 1e-6; every
/// encoder parameter's gradient must also be non-zero (it reaches f only through the
/// cross-attention blocks' K and V).
fn check(sets: &[&str]) {
    let mut cfg = config(sets);
    let probe = inputs::probe(&mut cfg).unwrap();
    assert!(probe.decoder.is_some(), "{sets:?}: no decoder probe");
    let mut rng = init::stream(7, 3);
    let net = Network::sample(&cfg.model, &mut rng);
    let trace = net.forward(&probe);
    let u =
        Array2::from_shape_simple_fn(trace.out.raw_dim(), || rng.sample::<f64, _>(StandardNormal));
    let mut grads = ParamGrads::new(&net.params);
    let dz = net.backward(&trace, &probe, u.view(), &mut grads);
    let grads = grads.into_list();
    assert_eq!(dz.len(), cfg.model.head_layer() - 1, "{sets:?}");

    let h = 1e-5;
    let mut worst = (0.0f64, String::new());
    let encoder_layers = cfg.model.num_blocks() + 1;
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
        // The [pad] column of the word embedding is zero and not a parameter (footnote 48):
        // no gradient, though central differences see its use, so it is left out of the
        // comparison.
        if let (Some(pad), "stem.w") = (cfg.inputs.pad_id, param.name.as_str()) {
            assert!(
                param.value.column(pad).iter().all(|&x| x == 0.0),
                "{sets:?}: the pad column is not zero"
            );
            assert!(
                an.column(pad).iter().all(|&x| x == 0.0),
                "{sets:?}: the pad column gets gradient"
            );
            fd.column_mut(pad).fill(0.0);
        }
        let scale = an.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        // A key bias shifts a query's logits uniformly: the softmax ignores it exactly.
        if param.layer <= encoder_layers && param.var > 0.0 && !param.name.ends_with(".bk") {
            assert!(
                scale > 1e-8,
                "{sets:?}: encoder parameter {} gets no gradient",
                param.name
            );
        }
        let diff = (&fd - an).iter().fold(0.0f64, |m, x| m.max(x.abs()));
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
fn gradients_encdec_every_norm_dense_stem() {
    for norm in ["pre", "post", "none"] {
        check(&[&format!("model.norm={norm}")]);
    }
}

#[test]
fn gradients_encdec_tied_head_padding_biases_every_norm() {
    for norm in ["pre", "post", "none"] {
        check(&[
            &format!("model.norm={norm}"),
            "model.stem=embedding",
            "model.head=tied",
            "model.n_out=7",
            "inputs.kind=tokens",
            "inputs.ids=[[1, 6, 6], [2, 3, 6]]",
            "inputs.pad_id=6",
            "inputs.bos_id=5",
            "model.variances.bias=0.2",
        ]);
    }
}

/// The frozen [pad] column (footnote 48) with a dense head: only the two stem uses see it.
#[test]
fn gradients_encdec_padding_dense_head() {
    check(&[
        "model.stem=embedding",
        "inputs.kind=tokens",
        "inputs.ids=[[1, 6, 6], [2, 3, 6]]",
        "inputs.pad_id=6",
        "inputs.bos_id=5",
    ]);
}

#[test]
fn gradients_encdec_patterns_pooled_head_uniform_init() {
    check(&[
        "model.decoder_pattern=CAMC",
        "model.pattern=AAM",
        "model.head=pooled",
        "model.causal=true",
        "model.init=uniform",
        "model.xi=0.8",
        "model.gamma_res=1.2",
    ]);
    check(&[
        "model.decoder_pattern=MC",
        "model.decoder_layers=2",
        "inputs.decoder_tokens=1",
        "model.activation=tanh",
    ]);
}

/// The encoder's layers get ∂f/∂z through every cross-attention block: with C_V = C_K = 0
/// in a pattern whose only path from the encoder is K and V of cross-attention, the
/// encoder's stream gradient vanishes; with them it does not.
#[test]
fn the_encoder_gradient_flows_only_through_cross_attention() {
    let grad_at_encoder = |sets: &[&str]| {
        let mut cfg = config(sets);
        let probe = inputs::probe(&mut cfg).unwrap();
        let mut rng = init::stream(3, 1);
        let net = Network::sample(&cfg.model, &mut rng);
        let trace = net.forward(&probe);
        let u = Array2::from_shape_simple_fn(trace.out.raw_dim(), || {
            rng.sample::<f64, _>(StandardNormal)
        });
        let dz = net.backward(&trace, &probe, u.view(), &mut ParamGrads::new(&net.params));
        dz[cfg.model.num_blocks()]
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()))
    };
    assert!(grad_at_encoder(&[]) > 1e-6);
    let off = grad_at_encoder(&["model.variances.k=0", "model.variances.v=0"]);
    assert!(off == 0.0, "encoder gradient {off:e} without K and V");
}

/// A deliberately naive encoder–decoder forward pass, index by index: word embedding and
/// PE with an LN after each (both stems), pre-LN encoder (bidirectional attention, MLP),
/// s̃ = LN of the encoder's output, the decoder (causal self-attention, cross-attention over
/// the unpadded encoder tokens of its own sequence (2.2)–(2.4), MLP), final LN, dense head.
#[test]
fn encdec_forward_matches_naive_reference() {
    let mut cfg = config(&[
        "model.stem=embedding",
        "inputs.kind=tokens",
        "inputs.ids=[[1, 6, 4], [2, 3, 6]]",
        "inputs.pad_id=6",
        "inputs.bos_id=5",
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
    let dp = probe.decoder.as_ref().unwrap();
    let (n, heads, seqs) = (m.width, m.heads, probe.sequences);
    let (te, td) = (probe.tokens, dp.tokens);
    assert_eq!((te, td), (3, 4));
    // BART's decoder input: bos, then the encoder's ids shifted right.
    assert_eq!(dp.ids.as_ref().unwrap(), &vec![5, 1, 6, 4, 5, 2, 3, 6]);
    let enc_ids = probe.ids.as_ref().unwrap();
    let c = n / heads;
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
    let we = get("stem.w");
    let embed = |ids: &[usize], pe: &Vec<Vec<f64>>, t: usize| -> Vec<Vec<f64>> {
        ids.iter()
            .enumerate()
            .map(|(d, &id)| ln(&(0..n).map(|i| we[i][id] + pe[d % t][i]).collect()))
            .collect()
    };
    // Attention of queries s_q (seqs·tq rows) over keys/values s_kv (seqs·tk rows), with
    // key t2 of sequence sq allowed when keep(sq, t, t2).
    let attend = |pre: &str,
                  s_q: &Vec<Vec<f64>>,
                  s_kv: &Vec<Vec<f64>>,
                  tq: usize,
                  tk: usize,
                  keep: &dyn Fn(usize, usize, usize) -> bool|
     -> Vec<Vec<f64>> {
        let g = |k: &str| get(&format!("{pre}{k}"));
        let (q, k, v, u) = (g("q"), g("k"), g("v"), g("u"));
        let (bq, bk, bv, bu) = (g("bq"), g("bk"), g("bv"), g("bu"));
        let qs: Vec<_> = s_q.iter().map(|x| affine(&q, &bq, x)).collect();
        let ks: Vec<_> = s_kv.iter().map(|x| affine(&k, &bk, x)).collect();
        let vs: Vec<_> = s_kv.iter().map(|x| affine(&v, &bv, x)).collect();
        let mut o = vec![vec![0.0; n]; seqs * tq];
        for sq in 0..seqs {
            for h in 0..heads {
                for t in 0..tq {
                    let e: Vec<f64> = (0..tk)
                        .map(|t2| {
                            if !keep(sq, t, t2) {
                                return 0.0;
                            }
                            let logit = (0..c)
                                .map(|cc| {
                                    qs[sq * tq + t][h * c + cc] * ks[sq * tk + t2][h * c + cc]
                                })
                                .sum::<f64>()
                                / (c as f64).sqrt();
                            logit.exp()
                        })
                        .collect();
                    let norm: f64 = e.iter().sum();
                    for cc in 0..c {
                        o[sq * tq + t][h * c + cc] = (0..tk)
                            .map(|t2| e[t2] / norm * vs[sq * tk + t2][h * c + cc])
                            .sum::<f64>();
                    }
                }
            }
        }
        o.iter().map(|x| affine(&u, &bu, x)).collect()
    };
    let mlp = |layer: usize, s: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
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
    let add = |z: &mut Vec<Vec<f64>>, r: Vec<Vec<f64>>| {
        for (zd, rd) in z.iter_mut().zip(r) {
            for (a, b) in zd.iter_mut().zip(rd) {
                *a = m.xi * *a + m.gamma_res * b;
            }
        }
    };
    // Encoder: layers 1 (stem), 2 (attn), 3 (mlp).
    let mut z = embed(enc_ids, &get("stem.pe"), te);
    let s: Vec<_> = z.iter().map(ln).collect();
    add(
        &mut z,
        attend("block2.attn.", &s, &s, te, te, &|_, _, _| true),
    );
    let s: Vec<_> = z.iter().map(ln).collect();
    add(&mut z, mlp(3, &s));
    let memory: Vec<_> = z.iter().map(ln).collect();
    // Decoder: layers 4 (stem), 5 (masked attn), 6 (cross), 7 (mlp), 8 the head.
    let mut z = embed(dp.ids.as_ref().unwrap(), &get("decoder.pe"), td);
    let s: Vec<_> = z.iter().map(ln).collect();
    add(
        &mut z,
        attend("block5.attn.", &s, &s, td, td, &|_, t, t2| t2 <= t),
    );
    let s: Vec<_> = z.iter().map(ln).collect();
    let unpadded = |sq: usize, _: usize, t2: usize| enc_ids[sq * te + t2] != 6;
    add(
        &mut z,
        attend("block6.cross.", &s, &memory, td, te, &unpadded),
    );
    let s: Vec<_> = z.iter().map(ln).collect();
    add(&mut z, mlp(7, &s));
    let (wh, bh) = (get("head.w"), get("head.b"));
    assert_eq!(fast.nrows(), seqs * td);
    let mut worst = 0.0f64;
    for (d, zd) in z.iter().enumerate() {
        let out = affine(&wh, &bh, &ln(zd));
        for (i, v) in out.iter().enumerate() {
            worst = worst.max((v - fast[[d, i]]).abs());
        }
    }
    assert!(
        worst < 1e-12,
        "encoder–decoder forward pass differs from the naive reference by {worst:e}"
    );
}

/// Bad decoder input: one line naming the key, a non-zero exit, no panic.
#[test]
fn bad_decoder_input_is_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["model.decoder_layers=1", "model.decoder_pattern=AXM"],
            "model.decoder_pattern",
        ),
        (
            &["model.decoder_layers=1", "model.decoder_pattern="],
            "model.decoder_pattern",
        ),
        (&["model.pattern=ACM"], "model.decoder_pattern"),
        (&["model.decoder_pattern=AM"], "model.decoder_layers"),
        (&["inputs.decoder_tokens=4"], "model.decoder_layers"),
        (
            &[
                "model.decoder_layers=1",
                "model.stem=embedding",
                "inputs.kind=tokens",
                "inputs.vocab=10",
                "inputs.ids=[[1, 2]]",
                "inputs.decoder_ids=[[0, 10]]",
            ],
            "inputs.vocab",
        ),
        (
            &[
                "model.decoder_layers=1",
                "model.stem=embedding",
                "inputs.kind=tokens",
                "inputs.ids=[[1, 2]]",
                "inputs.decoder_ids=[[0, 1], [0, 2]]",
            ],
            "inputs.decoder_ids",
        ),
        (
            &[
                "model.decoder_layers=1",
                "model.stem=embedding",
                "inputs.kind=tokens",
                "inputs.vocab=10",
                "inputs.pad_id=10",
            ],
            "inputs.pad_id",
        ),
        (&["model.decoder_layers=1", "inputs.pad_id=0"], "model.stem"),
        (
            &["model.decoder_layers=1", "model.class_token=true"],
            "model.decoder_layers",
        ),
        (
            &[
                "model.decoder_layers=1",
                "model.norm=mlp",
                "model.pattern=M",
            ],
            "model.decoder_layers",
        ),
        (&["model.decoder_layers=-1"], "model.decoder_layers"),
        (
            &[
                "model.decoder_layers=1",
                "model.decoder_pattern=AAAAAAAA",
                "model.decoder_layers=1000000",
            ],
            "too many",
        ),
    ];
    let out = common::tmp("encdec-bad");
    for (sets, needle) in cases {
        let mut args = vec!["simulate", "--samples", "2", "--out", out.to_str().unwrap()];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let (code, _, err) = common::sigprop(&args);
        assert!(code != 0 && code != 101, "{sets:?}: exit {code}, {err}");
        let line = err.trim();
        assert!(
            line.starts_with("sigprop: error:") && !line.contains('\n') && line.contains(needle),
            "{sets:?}: expected one line naming {needle}, got {err}"
        );
    }
}

/// `sigprop simulate` on the paper-bart preset writes decoder rows: `cross` logits over
/// (decoder query, encoder key) pairs and the head at L = B_e + B_d + 3.
#[test]
fn paper_bart_preset_runs_and_numbers_the_decoder() {
    let out = common::tmp("encdec-bart");
    let (code, _, err) = common::sigprop(&[
        "simulate",
        "--set",
        "model.preset=paper-bart",
        "--set",
        "model.width=32",
        "--set",
        "model.heads=4",
        "--set",
        "inputs.sequences=2",
        "--set",
        "inputs.tokens=3",
        "--set",
        "inputs.decoder_tokens=2",
        "--samples",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(out.join("stats.csv")).unwrap();
    // 3 × AM = 6 encoder blocks (layers 2–7), decoder stem 8, 3 × ACM decoder blocks (9–17),
    // head 18.
    let has = |layer: &str, block: &str, site: &str, i: &str, j: &str| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[4] == layer && f[5] == block && f[6] == site && f[8] == i && f[9] == j
        })
    };
    assert!(
        has("8", "stem", "resid", "3", "3"),
        "decoder stem rows index decoder tokens"
    );
    assert!(!has("8", "stem", "resid", "4", "4"));
    assert!(
        has("10", "cross", "logits", "3", "5"),
        "cross logits (query 3, key 5)"
    );
    assert!(has("18", "head", "resid", "-1", "-1"));
    assert!(has("2", "attn", "param", "-1", "-1"), "encoder NTK rows");
}

/// A run folder rebuilds an encoder–decoder's probe exactly (inputs.csv holds the encoder's
/// ids; the decoder's ids and the padding mask follow from them and config.toml): extending
/// a 10-sample run to 20 gives byte for byte the stats of one 20-sample run, and `merge` of
/// two shards equals both. Without the rebuild the extension is refused as "inputs.csv
/// changed".
#[test]
fn encdec_runs_resume_and_merge_exactly() {
    let base = [
        "--set",
        "model.preset=paper-bart",
        "--set",
        "model.width=32",
        "--set",
        "model.layers=1",
        "--set",
        "model.decoder_layers=1",
        "--set",
        "inputs.pad_id=5",
        "--set",
        "inputs.ids=[[5,1,2,3],[4,5,5,6]]",
        "--set",
        "inputs.tokens=4",
        "--set",
        "inputs.sequences=2",
    ];
    let run = |dir: &std::path::Path, extra: &[&str]| {
        let d = dir.to_str().unwrap().to_string();
        let mut args = vec!["simulate", "--out", &d];
        args.extend_from_slice(&base);
        args.extend_from_slice(extra);
        let (code, _, err) = common::sigprop(&args);
        assert_eq!(code, 0, "{err}");
    };
    let (a, b) = (
        common::tmp("encdec-resume-a"),
        common::tmp("encdec-resume-b"),
    );
    run(&a, &["--set", "run.samples=10"]);
    run(&a, &["--set", "run.samples=20"]);
    run(&b, &["--set", "run.samples=20"]);
    let read = |d: &std::path::Path| std::fs::read_to_string(d.join("stats.csv")).unwrap();
    assert_eq!(
        read(&a),
        read(&b),
        "an extended encoder–decoder run differs"
    );
    let (s0, s1, m) = (
        common::tmp("encdec-shard-0"),
        common::tmp("encdec-shard-1"),
        common::tmp("encdec-merged"),
    );
    run(&s0, &["--set", "run.samples=20", "--shard", "0/2"]);
    run(&s1, &["--set", "run.samples=20", "--shard", "1/2"]);
    let (code, _, err) = common::sigprop(&[
        "merge",
        s0.to_str().unwrap(),
        s1.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(&m), read(&b), "merged shards differ from one run");
}
