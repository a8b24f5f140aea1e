//! The per-block hyperparameter source (`model::hyper` and each block's `hyper`) against what
//! the sampler actually draws: every tensor's shape, recorded variance and SGD factor λ come
//! from it, the drawn entries have that variance (a z-test on the mean square), and the
//! rules written there once hold in the network (zero queries, no PE in `mlp` mode, X's
//! fan-in M·n, λ = 1/fan-in).

use sigprop::config::{ConfigBuilder, ModelSpec};
use sigprop::model::group::GROUPS;
use sigprop::model::hyper::{Weight, blocks, sgd_factor};
use sigprop::model::{Group, Network, attention, head, init, mlp, stem};

fn spec(sets: &[&str]) -> ModelSpec {
    let mut b = ConfigBuilder::new();
    for s in [
        "model.width=64",
        "model.heads=4",
        "model.mlp_mult=3",
        "model.layers=1",
        "model.n_out=5",
        "inputs.tokens=3",
        "inputs.dim=24",
        "inputs.vocab=40",
    ]
    .iter()
    .chain(sets)
    {
        b = b.set(s).unwrap();
    }
    b.build().unwrap().model
}

/// (shape, variance, λ) the source gives for a parameter of `group`.
fn expected(spec: &ModelSpec, group: Group) -> ((usize, usize), f64, f64) {
    let w = |w: Weight| (w.shape, w.var, w.lambda());
    let book = spec.norm == sigprop::config::Norm::Mlp;
    match group {
        Group::Stem => w(stem::hyper(spec).w),
        Group::Pe => {
            let var = stem::hyper(spec)
                .pe
                .expect("PE drawn only when the source has it");
            ((spec.seq_len(), spec.width), var, sgd_factor(1))
        }
        Group::Cls => {
            let var = stem::hyper(spec)
                .cls
                .expect("c drawn only with the class token");
            ((1, spec.width), var, sgd_factor(1))
        }
        Group::Q => w(attention::hyper(spec).q),
        Group::K => w(attention::hyper(spec).k),
        Group::V => w(attention::hyper(spec).v),
        Group::U => w(attention::hyper(spec).u),
        Group::W if book => w(mlp::book_hyper(spec).w),
        Group::W => w(mlp::hyper(spec).w),
        Group::X => w(mlp::hyper(spec).x),
        Group::Head => w(head::hyper(spec)
            .w
            .expect("an untied head has its own matrix")),
        // Shapes of biases vary by site; the variance and λ do not.
        Group::Bias => ((0, 0), spec.var.bias, sgd_factor(1)),
    }
}

fn check(sets: &[&str]) -> Network {
    let spec = spec(sets);
    let net = Network::sample(&spec, &mut init::stream(11, 0));
    for p in &net.params.list {
        if spec.head == sigprop::config::HeadKind::Tied && p.group == Group::Head {
            continue;
        }
        let (shape, var, lambda) = expected(&spec, p.group);
        if p.group != Group::Bias {
            assert_eq!(p.shape, shape, "{sets:?}: shape of {}", p.name);
        }
        assert_eq!(p.var, var, "{sets:?}: variance of {}", p.name);
        assert_eq!(p.lambda(), lambda, "{sets:?}: λ of {}", p.name);
        // The group table's λ rule (what the theory weights its `ntk` rows with).
        assert_eq!(
            p.group.lambda(&blocks(&spec), &spec),
            p.lambda(),
            "{sets:?}: table λ of {}",
            p.name
        );
        // Gaussian draws: the mean square has variance 2 var²/N.
        let n = p.value.len() as f64;
        let ms = p.value.iter().map(|x| x * x).sum::<f64>() / n;
        if var == 0.0 {
            assert_eq!(ms, 0.0, "{sets:?}: {} must be exactly zero", p.name);
        } else {
            let z = (ms - var) / (var * (2.0 / n).sqrt());
            assert!(
                z.abs() < 5.0,
                "{sets:?}: {} mean square {ms} vs variance {var} (z = {z:.2})",
                p.name
            );
        }
    }
    net
}

#[test]
fn transformer_tensors_come_from_the_source() {
    for sets in [
        &["model.preset=paper-vit", "model.variances.bias=0.2"][..],
        &[
            "model.preset=paper-vit",
            "model.zero_queries=true",
            "model.head_s=1",
        ],
        &[
            "model.preset=paper-vit",
            "model.variance_mode=absolute",
            "model.variances.q=0.01",
        ],
        &["model.preset=paper-lm", "model.n_out=40"],
        &["model.preset=paper-vit-cls", "model.variances.cls=0.3"],
    ] {
        check(sets);
    }
}

/// `model.init_groups.<group>` overrides `model.init` for its group only: uniform tensors are
/// bounded by √(3 var) and have kurtosis 9/5, Gaussian ones kurtosis 3 (the sample kurtosis
/// of N ≥ 4096 entries has a standard error below √(24/N) ≈ 0.08, so 2.4 splits them by 7σ).
#[test]
fn per_group_initialization_draws_each_group_from_its_own_law() {
    let sets = [
        "model.preset=paper-vit",
        "model.init=uniform",
        "model.init_groups.stem=gaussian",
        "model.init_groups.head=gaussian",
        "model.init_groups.k=gaussian",
        "model.n_out=64",
    ];
    let net = check(&sets);
    let spec = spec(&sets);
    let mut seen = [false; 2];
    for p in &net.params.list {
        let gaussian = matches!(p.group, Group::Stem | Group::Head | Group::K);
        let expect = if gaussian {
            sigprop::config::InitDist::Gaussian
        } else {
            sigprop::config::InitDist::Uniform
        };
        assert_eq!(spec.init_of(p.group), expect, "{}", p.name);
        let n = p.value.len() as f64;
        if p.var == 0.0 || n < 4096.0 {
            continue;
        }
        let m2 = p.value.iter().map(|x| x * x).sum::<f64>() / n;
        let m4 = p.value.iter().map(|x| x.powi(4)).sum::<f64>() / n;
        let kurtosis = m4 / (m2 * m2);
        let bound = (3.0 * p.var).sqrt();
        let inside = p.value.iter().all(|x| x.abs() <= bound);
        assert_eq!(
            (kurtosis > 2.4, inside),
            (gaussian, !gaussian),
            "{}: kurtosis {kurtosis:.3}, all within √(3 var): {inside}",
            p.name
        );
        seen[usize::from(gaussian)] = true;
    }
    assert_eq!(seen, [true, true], "both laws must be tested");
}

/// Every line of the group table: its configuration key sets its own constant C_G.
#[test]
fn group_table_keys_set_their_own_constant() {
    for (i, g) in GROUPS.iter().enumerate() {
        let c = 0.125 + i as f64;
        let set = format!("{}={c}", g.key);
        let spec = spec(&["model.preset=paper-vit", &set]);
        assert_eq!(spec.var.get(g.group), c, "{set}");
        assert_eq!(g.key, format!("model.variances.{}", g.group.name()));
    }
}

#[test]
fn book_mlp_tensors_come_from_the_source() {
    let net = check(&[
        "model.preset=mlp-book",
        "model.variances.bias=0.1",
        "model.variances.pe=0.5",
    ]);
    assert!(
        net.params.list.iter().all(|p| p.group != Group::Pe),
        "mlp mode draws no positional embedding"
    );
}

#[test]
fn rules_written_once_hold_in_the_network() {
    let spec = spec(&["model.preset=paper-vit", "model.zero_queries=true"]);
    let net = Network::sample(&spec, &mut init::stream(3, 0));
    let m = spec.mlp_mult * spec.width;
    for p in &net.params.list {
        match p.group {
            Group::Q => assert!(
                p.value.iter().all(|&x| x == 0.0),
                "zero queries: {}",
                p.name
            ),
            // X: fan-in M·n, λ = 1/(M n) (1.32), (1.106).
            Group::X => {
                assert_eq!((p.shape.1, p.fan_in), (m, m));
                assert_eq!(p.lambda(), 1.0 / m as f64);
            }
            Group::K | Group::V | Group::U | Group::W | Group::Head => {
                assert_eq!(p.lambda(), 1.0 / spec.width as f64, "λ of {}", p.name)
            }
            _ => {}
        }
    }
    // Effective constants the theory propagates: variance × fan-in.
    let h = mlp::hyper(&spec);
    assert!((h.x.c_eff() - spec.var.x).abs() <= 4.0 * f64::EPSILON * spec.var.x);
    assert_eq!(attention::hyper(&spec).q.c_eff(), 0.0);
}

/// The hparams table's symbolic rules, evaluated at the model's sizes, give the variances the
/// sampler draws (neural-tangent s = 0 and μP s = 1) and, at s = 0 under SGD with the M
/// factors, the λ the Monte Carlo weights its `ntk` rows with.
#[test]
fn hparams_rules_agree_with_the_model_source() {
    use sigprop::hparams::{Family, Optimizer, Setup, rules};
    for s in [0.0, 1.0] {
        let head_s = format!("model.head_s={s}");
        let spec = spec(&["model.preset=paper-vit", &head_s, "model.variances.pe=0.2"]);
        let dims = Setup::dims_of(&spec);
        let n = spec.width;
        let fam = Family::Scaling(s);
        let weights = [
            (Group::Stem, stem::hyper(&spec).w),
            (Group::Q, attention::hyper(&spec).q),
            (Group::K, attention::hyper(&spec).k),
            (Group::V, attention::hyper(&spec).v),
            (Group::U, attention::hyper(&spec).u),
            (Group::W, mlp::hyper(&spec).w),
            (Group::X, mlp::hyper(&spec).x),
            (Group::Head, head::hyper(&spec).w.unwrap()),
        ];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        for (g, w) in weights {
            let rule = rules::init(g, fam, &spec.var, &dims).eval(n, &dims);
            assert!(
                close(rule, w.var),
                "s = {s}, {g:?}: rule {rule} vs drawn {}",
                w.var
            );
            if s == 0.0 {
                let lr = rules::lr(g, fam, Optimizer::Sgd, &dims, true).eval(n, &dims);
                assert!(
                    close(lr, w.lambda()),
                    "{g:?}: rule λ {lr} vs {}",
                    w.lambda()
                );
            }
        }
        let pe = rules::init(Group::Pe, fam, &spec.var, &dims).eval(n, &dims);
        assert!(
            close(pe, stem::hyper(&spec).pe.unwrap()),
            "s = {s}: C_PE {pe}"
        );
    }
}
