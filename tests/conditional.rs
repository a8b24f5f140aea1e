//! The conditional-Gaussian sampler is exact: its joint second moments of (W x, Wᵀ g) equal
//! the analytic ones, and every observable agrees with the dense path in distribution. Both
//! hold in f32 too (`run.precision = "f32"`), against the dense f64 reference, with the f32
//! rounding bound of `tests/precision.rs` added to the 5 standard errors.

mod common;

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::config::{Config, ConfigBuilder, Sampler};
use sigprop::mc::Job;
use sigprop::mc::McReal;
use sigprop::mc::conditional::Conditional;
use sigprop::model::{Group, Network, Params, Probe, WeightOps, init};
use sigprop::stats::{Row, recorder};

/// One linear layer W (fan_out × fan_in), Var σ²: E[Y_ai Y_bj] = σ² (X Xᵀ)_ab δ_ij,
/// E[∂X^{(p)}_ak ∂X^{(q)}_bl] = σ² (G_p G_qᵀ)_ab δ_kl, E[Y_ai ∂X^{(p)}_bk] = σ² X_ak G_p,bi,
/// for full-rank and rank-deficient X, with two cotangents drawn jointly.
#[test]
fn one_linear_layer_has_the_exact_joint_second_moments() {
    joint_moments::<f64>();
}

#[test]
fn one_linear_layer_has_the_exact_joint_second_moments_in_f32() {
    joint_moments::<f32>();
}

fn joint_moments<F: McReal>() {
    let (d, fan_in, fan_out, sd2) = (3usize, 4usize, 5usize, 0.7f64);
    let mut rng = init::stream(9, 9);
    let mut normal = |r: usize, c: usize| {
        Array2::from_shape_simple_fn((r, c), || rng.sample::<f64, _>(StandardNormal))
    };
    let x_full = normal(d, fan_in);
    let mut x_def = x_full.clone();
    let sum = &x_full.row(0) + &x_full.row(1);
    x_def.row_mut(2).assign(&sum);
    let g1 = normal(d, fan_out);
    let mut g2 = normal(d, fan_out);
    let g1row = g1.row(0).to_owned();
    g2.row_mut(1).assign(&g1row); // shares a direction with g1
    let params: Params<F> = {
        let mut p = Params {
            list: Vec::new(),
            lazy: true,
        };
        p.list.push(sigprop::model::Param {
            group: Group::W,
            layer: 2,
            name: "w".into(),
            value: Array2::zeros((0, 0)),
            shape: (fan_out, fan_in),
            var: sd2,
            fan_in,
        });
        p
    };
    for (name, x) in [("full rank", &x_full), ("rank deficient", &x_def)] {
        let n = 40_000u64;
        let (xf, g1f, g2f) = (x.mapv(F::of), g1.mapv(F::of), g2.mapv(F::of));
        // Flattened sample vector: Y (d·fan_out), ∂X¹ (d·fan_in), ∂X² (d·fan_in).
        let len = d * fan_out + 2 * d * fan_in;
        let mut s1 = vec![0.0; len * len];
        let mut s2 = vec![0.0; len * len];
        for k in 0..n {
            let mut ops = Conditional::new(&params, init::stream(1, k), false);
            let y = ops.fwd(&params, 0, xf.view());
            let dx1 = ops.bwd(&params, 0, g1f.view());
            let dx2 = ops.bwd(&params, 0, g2f.view());
            let v: Vec<f64> = y
                .iter()
                .chain(dx1.iter())
                .chain(dx2.iter())
                .map(|v| v.wide())
                .collect();
            for a in 0..len {
                for b in 0..len {
                    let p = v[a] * v[b];
                    s1[a * len + b] += p;
                    s2[a * len + b] += p * p;
                }
            }
        }
        // Analytic covariance of the flattened vector.
        let expect = |a: usize, b: usize| -> f64 {
            let part = |i: usize| -> (usize, usize, usize) {
                if i < d * fan_out {
                    (0, i / fan_out, i % fan_out)
                } else if i < d * fan_out + d * fan_in {
                    let j = i - d * fan_out;
                    (1, j / fan_in, j % fan_in)
                } else {
                    let j = i - d * fan_out - d * fan_in;
                    (2, j / fan_in, j % fan_in)
                }
            };
            let (pa, ra, ca) = part(a);
            let (pb, rb, cb) = part(b);
            let g = |p: usize| -> ArrayView2<f64> { if p == 1 { g1.view() } else { g2.view() } };
            match (pa, pb) {
                (0, 0) => sd2 * x.row(ra).dot(&x.row(rb)) * f64::from(u8::from(ca == cb)),
                (0, q) => sd2 * x[[ra, cb]] * g(q)[[rb, ca]],
                (p, 0) => sd2 * x[[rb, ca]] * g(p)[[ra, cb]],
                (p, q) => sd2 * g(p).row(ra).dot(&g(q).row(rb)) * f64::from(u8::from(ca == cb)),
            }
        };
        let mut worst = (0.0f64, 0usize, 0usize);
        for a in 0..len {
            for b in 0..len {
                let m = s1[a * len + b] / n as f64;
                let var = (s2[a * len + b] / n as f64 - m * m).max(1e-300);
                let z = (m - expect(a, b)) / (var / n as f64).sqrt();
                if z.abs() > worst.0 {
                    worst = (z.abs(), a, b);
                }
            }
        }
        assert!(
            worst.0 < 5.0,
            "{name} ({}): |z| = {:.2} at entry ({}, {})",
            F::NAME,
            worst.0,
            worst.1,
            worst.2
        );
    }
}

fn config(sets: &[&str], sampler: &str) -> Config {
    let mut b = ConfigBuilder::new();
    for s in [
        "model.width=32",
        "model.heads=4",
        "model.layers=2",
        "model.n_out=8",
        "model.mlp_mult=2",
        "inputs.sequences=2",
        "inputs.tokens=3",
        "inputs.dim=12",
        "model.variances.pe=0.05",
    ] {
        b = b.set(s).unwrap();
    }
    for s in sets {
        b = b.set(s).unwrap();
    }
    b = b.set(&format!("run.sampler={sampler}")).unwrap();
    b.build().unwrap()
}

fn run(sets: &[&str], sampler: &str, repeat: bool, samples: u64) -> Vec<Row> {
    run_in(sets, sampler, repeat, samples, "f64")
}

fn run_in(sets: &[&str], sampler: &str, repeat: bool, samples: u64, precision: &str) -> Vec<Row> {
    let key = format!("run.precision={precision}");
    let with = [sets, &[key.as_str()]].concat();
    let mut cfg = config(&with, sampler);
    let mut probe: Probe = sigprop::inputs::probe(&mut cfg).unwrap();
    if repeat {
        // Repeated tokens make the inputs of every layer rank deficient.
        if let Some(x) = &mut probe.x {
            let r = x.row(0).to_owned();
            x.row_mut(1).assign(&r);
            x.row_mut(4).assign(&r);
        }
        if let Some(ids) = &mut probe.ids {
            ids[1] = ids[0];
            ids[4] = ids[0];
        }
    }
    let job = Job::new(&cfg, &probe);
    assert_eq!(
        job.sampler,
        if sampler == "dense" {
            Sampler::Dense
        } else {
            Sampler::Conditional
        }
    );
    let mut ens = job.start(0, samples);
    job.run(&mut ens, 2, |_| Ok(())).unwrap();
    recorder::rows(
        &ens.rows,
        &ens.acc,
        "mc",
        &cfg.run.name,
        cfg.model.width,
        cfg.model.heads,
    )
}

/// Dense f64 against conditional f64, then against conditional f32.
fn agree(sets: &[&str], repeat: bool) {
    agree_in(sets, repeat, "f64");
    agree_in(sets, repeat, "f32");
}

fn agree_in(sets: &[&str], repeat: bool, precision: &str) {
    let n = 2000;
    let dense = run(sets, "dense", repeat, n);
    let cond = run_in(sets, "conditional", repeat, n, precision);
    assert_eq!(dense.len(), cond.len(), "{sets:?}: row sets differ");
    let mut worst = (0.0f64, String::new());
    for (a, b) in dense.iter().zip(&cond) {
        assert_eq!(
            (a.layer, &a.observable, a.i, a.j),
            (b.layer, &b.observable, b.i, b.j)
        );
        let bound = if precision == "f32" {
            common::f32_bound(a, &dense)
        } else {
            0.0
        };
        let se = (a.stderr.powi(2) + b.stderr.powi(2)).sqrt() + bound / 5.0;
        let z = if se > 0.0 {
            (a.value - b.value) / se
        } else {
            (a.value - b.value) / (1e-12 * a.value.abs().max(1e-12))
        };
        if z.abs() > worst.0 {
            worst = (
                z.abs(),
                format!(
                    "{} {} layer {} ({},{}): {} vs {}",
                    a.site, a.observable, a.layer, a.i, a.j, a.value, b.value
                ),
            );
        }
    }
    assert!(
        worst.0 < 5.0,
        "{sets:?} repeat={repeat}: dense f64 vs conditional {precision} |z| = {:.2} at {}",
        worst.0,
        worst.1
    );
}

#[test]
fn equal_in_distribution_pre_ln_causal_repeated_tokens() {
    agree(
        &[
            "model.norm=pre",
            "model.causal=true",
            "model.activation=gelu",
        ],
        true,
    );
}

#[test]
fn equal_in_distribution_post_ln_pooled_relu() {
    agree(
        &[
            "model.norm=post",
            "model.head=pooled",
            "model.activation=relu",
        ],
        false,
    );
}

#[test]
fn equal_in_distribution_no_ln_causal_biases_repeated() {
    agree(
        &[
            "model.norm=none",
            "model.causal=true",
            "model.activation=relu",
            "model.variances.bias=0.1",
        ],
        true,
    );
}

/// Zero queries make every attention row uniform, so the attention output repeats across
/// the tokens of a sequence and U's input is rank deficient.
#[test]
fn equal_in_distribution_uniform_attention() {
    agree(&["model.zero_queries=true", "model.activation=gelu"], false);
}

#[test]
fn equal_in_distribution_book_mlp() {
    agree(
        &[
            "model.preset=mlp-book",
            "model.width=32",
            "model.n_out=8",
            "model.layers=4",
            "inputs.sequences=2",
            "inputs.tokens=3",
            "inputs.dim=12",
        ],
        true,
    );
}

#[test]
fn equal_in_distribution_pairs_mode_pooled_gelu() {
    agree(
        &[
            "run.backward=pairs",
            "model.head=pooled",
            "model.causal=true",
        ],
        false,
    );
}

#[test]
fn equal_in_distribution_pairs_mode_dense_head_repeated() {
    agree(&["run.backward=pairs", "model.activation=relu"], true);
}

#[test]
fn equal_in_distribution_embedding_stem_repeated_ids() {
    agree(
        &[
            "model.stem=embedding",
            "inputs.kind=tokens",
            "inputs.vocab=50",
            "model.causal=true",
        ],
        true,
    );
}

#[test]
fn auto_prefers_conditional_at_width_and_dense_for_uniform_init() {
    let cfg = config(
        &[
            "model.width=512",
            "model.heads=8",
            "inputs.tokens=16",
            "inputs.sequences=1",
        ],
        "auto",
    );
    let mut c2 = cfg.clone();
    let probe = sigprop::inputs::probe(&mut c2).unwrap();
    assert_eq!(
        sigprop::mc::resolve_sampler(&cfg, &probe).unwrap(),
        Sampler::Conditional
    );
    let cfg = config(&["model.init=uniform"], "auto");
    assert_eq!(
        sigprop::mc::resolve_sampler(&cfg, &probe).unwrap(),
        Sampler::Dense
    );
    // Asked for, the conditional path is exact with uniform weights too: it materializes them.
    let cfg = config(&["model.init=uniform"], "conditional");
    assert_eq!(
        sigprop::mc::resolve_sampler(&cfg, &probe).unwrap(),
        Sampler::Conditional
    );
    let mut rng = init::stream(0, 0);
    let net = Network::sample_with(&cfg.model, &mut rng, true);
    assert!(net.params.list.iter().all(|p| p.is_materialized()));
    // A Gaussian group in a uniform model is left to the conditional sampler, and `auto`
    // may take that path again.
    let cfg = config(
        &["model.init=uniform", "model.init_groups.q=gaussian"],
        "auto",
    );
    let net = Network::sample_with(&cfg.model, &mut init::stream(0, 0), true);
    for p in &net.params.list {
        assert_eq!(p.is_materialized(), p.group != Group::Q, "{}", p.name);
    }
    let cfg = config(&["model.init_groups.q=uniform"], "auto");
    let net = Network::sample_with(&cfg.model, &mut init::stream(0, 0), true);
    for p in &net.params.list {
        let lookup = matches!(p.group, Group::Pe | Group::Bias);
        assert_eq!(
            p.is_materialized(),
            lookup || p.group == Group::Q,
            "{}",
            p.name
        );
    }
}

/// The paper's mixed initialization (uniform bulk, Gaussian stem and head) with one Gaussian
/// attention group: the conditional sampler draws the Gaussian weights and materializes the
/// uniform ones, and must agree with the dense path.
#[test]
fn equal_in_distribution_mixed_initialization() {
    agree(
        &[
            "model.init=uniform",
            "model.init_groups.stem=gaussian",
            "model.init_groups.head=gaussian",
            "model.init_groups.v=gaussian",
            "model.causal=true",
        ],
        true,
    );
}

/// The class token (1.8) and the class head: the class slot's input is zero, so every stem
/// input is rank deficient by construction.
#[test]
fn equal_in_distribution_class_token_class_head() {
    agree(
        &[
            "model.class_token=true",
            "model.head=class",
            "model.variances.cls=0.5",
        ],
        true,
    );
}

/// The encoder–decoder (§II 2 B): cross-attention's K and V meet s̃ once forward, Q meets
/// the decoder's s once, so the conditional law applies; the encoder's rows include the
/// gradient arriving through every cross-attention block. Repeated encoder tokens make s̃
/// rank deficient.
#[test]
fn equal_in_distribution_encoder_decoder() {
    agree(
        &[
            "model.layers=1",
            "model.decoder_layers=1",
            "inputs.decoder_tokens=2",
            "model.activation=gelu",
        ],
        true,
    );
}

/// The same with the word embedding shared by both stems and the tied head, padding masked
/// out of cross-attention, post-LN, and the BART decoder pattern twice.
#[test]
fn equal_in_distribution_encoder_decoder_tied_padded_post_ln() {
    agree(
        &[
            "model.norm=post",
            "model.layers=1",
            "model.decoder_layers=2",
            "model.stem=embedding",
            "model.head=tied",
            "model.n_out=20",
            "inputs.kind=tokens",
            "inputs.vocab=20",
            "inputs.ids=[[3, 19, 5], [7, 7, 19]]",
            "inputs.pad_id=19",
            "model.variances.bias=0.1",
        ],
        false,
    );
}
