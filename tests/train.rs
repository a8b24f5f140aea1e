//! The trainer: optimizer steps against hand-computed values, the hparams table reaching
//! the optimizer exactly, the loss gradient against central differences, convergence on
//! the copy task, exact resume, and the command line (log, divergence).

mod common;
use common::{sigprop, tmp};

use ndarray::{Array2, array};
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::config::{Config, ConfigBuilder};
use sigprop::hparams::HparamTable;
use sigprop::model::{Group, Param, Params, init};
use sigprop::train::optim::{Adam, Kind, Optimizer};
use sigprop::train::{self, Trainer, loss};

fn param(name: &str, value: Array2<f64>) -> Param {
    Param {
        group: Group::Q,
        layer: 2,
        name: name.into(),
        shape: value.dim(),
        value,
        var: 1.0,
        fan_in: 2,
    }
}

const ADAM: Adam = Adam {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
};

#[test]
fn adamw_two_steps_match_hand_computed_values() {
    // θ = (1, −2), lr = 0.1, wd = 0.01, β = (0.9, 0.999), ε = 1e-8.
    let mut p = Params {
        list: vec![param("theta", array![[1.0, -2.0]])],
        lazy: false,
    };
    let mut opt = Optimizer::new(Kind::AdamW, ADAM, &p);
    // Step 1, g = (0.5, −0.1): decay θ(1 − 0.1·0.01) = (0.999, −1.998); m = 0.1 g,
    // v = 0.001 g², so m̂ = g, v̂ = g² and the update is lr·g/(|g| + ε):
    // 0.1·0.5/0.50000001 = 0.099999998, 0.1·0.1/0.10000001 = 0.0999999900000001.
    // θ = (0.999 − 0.099999998, −1.998 + 0.09999999) = (0.899000002, −1.89800001).
    opt.step(&mut p, &[array![[0.5, -0.1]]], &[0.1], &[0.01]);
    let th = &p.list[0].value;
    assert!((th[[0, 0]] - 0.899000002).abs() < 1e-15, "{th}");
    assert!((th[[0, 1]] - -1.89800001).abs() < 1e-14, "{th}");
    // (1 − 0.9) is 0.09999999999999998 in binary, hence the tolerance of a few ulps.
    assert!((opt.m[0][[0, 0]] - 0.05).abs() < 1e-16);
    assert!((opt.v[0][[0, 1]] - 1e-5).abs() < 1e-19);
    // Step 2, g = (−0.3, 0.2): m = 0.9 m + 0.1 g = (0.015, 0.011);
    // v = 0.999 v + 0.001 g² = (0.00033975, 0.00004999); bias corrections 1 − 0.9² = 0.19,
    // 1 − 0.999² = 0.001999: m̂ = (0.078947368421, 0.057894736842),
    // v̂ = (0.169959979990, 0.025007503752), √v̂ = (0.412262030, 0.158137610).
    // θ = θ·0.999 − 0.1·m̂/(√v̂ + ε):
    //   0.899000002·0.999 − 0.1·0.078947368421/0.412262040 = 0.878951198940,
    //  −1.89800001·0.999 − 0.1·0.057894736842/0.158137620 = −1.932712360378.
    opt.step(&mut p, &[array![[-0.3, 0.2]]], &[0.1], &[0.01]);
    let th = &p.list[0].value;
    assert!((th[[0, 0]] - 0.878951198940).abs() < 1e-11, "{th}");
    assert!((th[[0, 1]] - -1.932712360378).abs() < 1e-11, "{th}");
    assert_eq!(opt.t, 2);
}

#[test]
fn sgd_step_is_theta_minus_lr_g() {
    let mut p = Params {
        list: vec![
            param("a", array![[1.0, -2.0], [0.5, 3.0]]),
            param("b", array![[0.25, 4.0]]),
        ],
        lazy: false,
    };
    let before = p.clone();
    let g = [array![[0.1, -0.2], [0.3, 0.7]], array![[-1.5, 0.125]]];
    let lr = [0.01, 0.3];
    Optimizer::new(Kind::Sgd, ADAM, &p).step(&mut p, &g, &lr, &[0.0, 0.0]);
    for i in 0..2 {
        let want = &before.list[i].value - &(&g[i] * lr[i]);
        assert_eq!(p.list[i].value, want, "tensor {i}");
    }
    // Decoupled decay: θ(1 − lr·wd) − lr·g.
    let mut q = before.clone();
    Optimizer::new(Kind::Sgd, ADAM, &q).step(&mut q, &g, &lr, &[0.5, 0.0]);
    let want = &before.list[0].value * (1.0 - 0.01 * 0.5) - &(&g[0] * 0.01);
    assert_eq!(q.list[0].value, want);
}

fn small(sets: &[&str]) -> Config {
    let mk = || {
        let mut b = ConfigBuilder::new();
        for s in [
            "model.width=32",
            "model.heads=4",
            "model.mlp_mult=2",
            "model.layers=2",
            "train.task=copy",
            "train.vocab=8",
            "train.tokens=8",
            "train.batch=32",
            "train.threads=2",
        ]
        .iter()
        .chain(sets)
        {
            b = b.set(s).unwrap();
        }
        b
    };
    let first = mk().build().unwrap();
    train::configure(&first, mk()).unwrap()
}

#[test]
fn hparams_group_rates_reach_the_optimizer_exactly() {
    let json = r#"{"family":"ntk","s":0.0,"optimizer":"sgd","base_width":32,"width":32,
        "mlp_mult":2,"lr":0.001,"weight_decay":0.0,"groups":{
        "stem":{"init_variance":0.9,"lr":0.011,"weight_decay":0.0},
        "pe":{"init_variance":0.04,"lr":0.012},
        "q":{"init_variance":0.001,"lr":0.00002,"weight_decay":0.0},
        "k":{"init_variance":0.002,"lr":0.00003},
        "v":{"init_variance":0.003,"lr":0.00004},
        "u":{"init_variance":0.004,"lr":0.00005},
        "w":{"init_variance":0.005,"lr":0.00006},
        "x":{"init_variance":0.006,"lr":0.00007},
        "head":{"init_variance":0.007,"lr":0.00008}}}"#;
    let hp = HparamTable::parse(json).unwrap();
    let cfg = small(&["train.warmup=0", "train.clip=0"]);
    let mut tr: Trainer = Trainer::new(&cfg, Some(&hp)).unwrap();
    assert_eq!(tr.opt.kind, Kind::Sgd);
    for (i, p) in tr.net.params.list.iter().enumerate() {
        let g = hp.group(p.group).unwrap();
        assert_eq!(tr.lr[i], g.lr.unwrap(), "lr of {}", p.name);
        assert_eq!(tr.wd[i], 0.0, "wd of {}", p.name);
        assert_eq!(p.var, g.init_variance.unwrap(), "variance of {}", p.name);
    }
    // The re-drawn variance is the table's: the empirical variance of the 32 × 64 W of
    // block 3 is within 5 standard errors (√(2/N) relative) of 0.005.
    let w = tr
        .net
        .params
        .list
        .iter()
        .find(|p| p.group == Group::W)
        .unwrap();
    let emp = w.value.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.value.len() as f64;
    let se = 0.005 * (2.0 / w.value.len() as f64).sqrt();
    assert!(
        (emp - 0.005).abs() < 5.0 * se,
        "Var W = {emp}, want 0.005 ± {se}"
    );
    // One update at schedule factor 1 (no warm-up, cosine at p = 0) is exactly θ − lr_g·g
    // (in f32, the trainer's default precision, with lr_g rounded to f32 once).
    let before = tr.net.params.clone();
    let (_, g) = tr.loss_and_grads(&tr.batch_at(0));
    let log = tr.step().unwrap();
    assert_eq!(log.lr_factor, 1.0);
    for (i, p) in tr.net.params.list.iter().enumerate() {
        let lr = hp.group(p.group).unwrap().lr.unwrap();
        let want = &before.list[i].value - &(&g[i] * lr as f32);
        assert_eq!(p.value, want, "update of {}", p.name);
    }
}

#[test]
fn cross_entropy_gradient_matches_central_differences() {
    let mut rng = init::stream(11, 0);
    let z = Array2::from_shape_simple_fn((5, 7), || 3.0 * rng.sample::<f64, _>(StandardNormal));
    let targets = [Some(3), None, Some(0), Some(6), None];
    let (l, g) = loss::cross_entropy(z.view(), &targets);
    assert!(l.is_finite() && l > 0.0);
    let h = 1e-5;
    let mut worst = 0.0f64;
    for idx in 0..z.len() {
        let (mut zp, mut zm) = (z.clone(), z.clone());
        zp.as_slice_mut().unwrap()[idx] += h;
        zm.as_slice_mut().unwrap()[idx] -= h;
        let fd = (loss::cross_entropy(zp.view(), &targets).0
            - loss::cross_entropy(zm.view(), &targets).0)
            / (2.0 * h);
        worst = worst.max((fd - g.as_slice().unwrap()[idx]).abs());
    }
    // Central differences of a smooth O(1) function: error O(h²) ≈ 1e-10, plus roundoff
    // ε/h ≈ 1e-11.
    assert!(worst < 1e-8, "max |fd − analytic| = {worst:.3e}");

    // Through the whole network: the trainer's loss gradient against central differences
    // of its loss, on three entries of every tensor.
    // In f64: central differences need the precision.
    let cfg = small(&[
        "model.width=8",
        "model.heads=2",
        "train.batch=3",
        "train.precision=f64",
    ]);
    let tr = Trainer::<f64>::new(&cfg, None).unwrap();
    let batch = tr.batch_at(0);
    let (_, grads) = tr.loss_and_grads(&batch);
    let mut worst = (0.0f64, String::new());
    for (pi, p) in tr.net.params.list.iter().enumerate() {
        let n = p.value.len();
        for idx in [0, n / 2, n - 1] {
            let shifted = |d: f64| {
                let mut t2 = Trainer::<f64>::new(&cfg, None).unwrap();
                t2.net.params.list[pi].value.as_slice_mut().unwrap()[idx] += d;
                t2.loss(&batch)
            };
            let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
            let an = grads[pi].as_slice().unwrap()[idx];
            let err = (fd - an).abs() / an.abs().max(1e-3);
            if err > worst.0 {
                worst = (
                    err,
                    format!("{}[{idx}]: fd {fd:.6e} analytic {an:.6e}", p.name),
                );
            }
        }
    }
    assert!(
        worst.0 < 1e-6,
        "relative error {:.3e} at {}",
        worst.0,
        worst.1
    );
}

/// The f32 trainer computes the f64 trainer's loss and gradients to f32 rounding: same
/// network (drawn in f64, rounded), same batch. Width 64, 2 blocks, 32 sequences of 8.
/// Rounding errors of relative size 2⁻²⁴ ≈ 6e-8 grow through ~10 layers and sums of ~64
/// terms; the bounds (1e-5 on the loss, 1e-4 on each tensor's gradient in Frobenius norm)
/// sit a few hundred times above that and far below any modelling error, which is O(1).
#[test]
fn f32_trainer_matches_f64() {
    let cfg = |p: &str| small(&["model.width=64", "model.heads=4", p]);
    let lo: Trainer<f32> = Trainer::new(&cfg("train.precision=f32"), None).unwrap();
    let hi: Trainer<f64> = Trainer::new(&cfg("train.precision=f64"), None).unwrap();
    let batch = hi.batch_at(0);
    let (l32, g32) = lo.loss_and_grads(&batch);
    let (l64, g64) = hi.loss_and_grads(&batch);
    assert!((l32 - l64).abs() < 1e-5, "loss f32 {l32} vs f64 {l64}");
    let mut worst = 0.0f64;
    for ((a, b), p) in g32.iter().zip(&g64).zip(&hi.net.params.list) {
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(&x, &y)| (x as f64 - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        worst = worst.max(diff / norm);
        assert!(
            diff <= 1e-4 * norm,
            "{}: |g32 − g64| = {diff:.3e}, |g64| = {norm:.3e}",
            p.name
        );
    }
    eprintln!(
        "loss f32 − f64 = {:.2e}; worst relative gradient error {worst:.2e}",
        l32 - l64
    );
    // Asking a trainer for the other precision is an error, not a silent conversion.
    assert!(Trainer::<f64>::new(&cfg("train.precision=f32"), None).is_err());
}

/// Copy task, width 32, 2 × (attention, MLP), T = 8, vocabulary 8, batch 32, AdamW at
/// lr 3e-3 with 20 warm-up steps, seed 0: the held-out loss falls below ½ ln 8 = 1.04
/// (chance is ln 7 = 1.95) within 300 steps.
#[test]
fn copy_task_converges() {
    let cfg = small(&[
        "train.lr=0.003",
        "train.warmup=20",
        "train.steps=300",
        "train.seed=0",
    ]);
    let mut tr: Trainer = Trainer::new(&cfg, None).unwrap();
    let start = tr.evaluate();
    while tr.step < 300 {
        tr.step().unwrap();
    }
    let end = tr.evaluate();
    let threshold = 0.5 * 8f64.ln();
    eprintln!("copy: eval loss {start:.4} -> {end:.4} (threshold {threshold:.4})");
    assert!(
        end < threshold,
        "copy task: eval loss {start:.4} -> {end:.4} after 300 steps, want < {threshold:.4}"
    );
}

#[test]
fn checkpoint_then_resume_equals_an_uninterrupted_run() {
    let cfg = small(&["train.steps=8", "train.warmup=3", "train.weight_decay=0.1"]);
    let mut whole: Trainer = Trainer::new(&cfg, None).unwrap();
    for _ in 0..8 {
        whole.step().unwrap();
    }
    let dir = tmp("train-resume");
    let ckpt = dir.join("checkpoint.bin");
    let mut first: Trainer = Trainer::new(&cfg, None).unwrap();
    for _ in 0..5 {
        first.step().unwrap();
    }
    first.save(&ckpt).unwrap();
    drop(first);
    let mut second: Trainer = Trainer::new(&cfg, None).unwrap();
    second.load(&ckpt).unwrap();
    assert_eq!(second.step, 5);
    while second.step < 8 {
        second.step().unwrap();
    }
    for (a, b) in whole.net.params.list.iter().zip(&second.net.params.list) {
        assert_eq!(a.value, b.value, "{} differs after resume", a.name);
    }
    assert_eq!(whole.opt.m, second.opt.m);
    assert_eq!(whole.opt.v, second.opt.v);
    assert_eq!(whole.opt.t, second.opt.t);
}

const SMALL: [&str; 10] = [
    "--set=model.width=16",
    "--set=model.heads=2",
    "--set=model.layers=1",
    "--set=train.vocab=6",
    "--set=train.tokens=6",
    "--set=train.batch=8",
    "--set=train.eval_every=5",
    "--set=train.threads=1",
    "--set=train.warmup=0",
    "--set=train.clip=0",
];

#[test]
fn cli_writes_the_log_and_resumes() {
    let dir = tmp("train-cli");
    let d = dir.to_str().unwrap();
    let mut args = vec!["train", "--out", d, "--steps", "10"];
    args.extend(SMALL);
    let (code, _, err) = sigprop(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tokens/s"), "{err}");
    let log = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    let mut lines = log.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("step,train_loss,eval_loss,lr,lr_factor,grad_norm,grad_norm_stem,grad_norm_pe,grad_norm_q"),
        "{header}"
    );
    assert_eq!(lines.count(), 11, "{log}");
    // Asking for more steps on resume continues from the checkpoint.
    let (code, _, err) = sigprop(&["train", "--resume", d, "--steps", "12"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("10 of 12 steps done"), "{err}");
    let log = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    assert_eq!(log.lines().count(), 14, "{log}");
}

#[test]
fn cli_divergence_names_the_step_and_keeps_the_log() {
    // AdamW moves every entry by about lr: at 1e200 the embeddings reach 1e200 and the
    // LN's variance overflows. (Plain SGD at a huge rate can instead die quietly: a
    // saturated network with exactly zero gradient and loss ln V.)
    let dir = tmp("train-diverge");
    let d = dir.to_str().unwrap();
    let mut args = vec!["train", "--out", d, "--steps", "20", "--lr", "1e200"];
    args.extend(SMALL);
    let (code, _, err) = sigprop(&args);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("diverged at step"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let log = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    // The diverged step is the last row; the rows before it are kept.
    let step: String = err
        .split("diverged at step ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let last = log.lines().last().unwrap();
    assert!(last.starts_with(&format!("{step},")), "{err}\n{log}");
    assert_eq!(
        log.lines().count(),
        step.parse::<usize>().unwrap() + 2,
        "{log}"
    );
}

#[test]
fn evaluation_sequences_are_never_trained_on() {
    use sigprop::train::tasks::{self, Split};
    // modadd with p = 17: 289 sequences, about 20% held out by hash.
    let task = tasks::from_name("modadd", 0, 0, 17, 0.2).unwrap();
    let mut rng = init::stream(3, 0);
    let key = |b: &tasks::Batch| -> Vec<Vec<usize>> {
        b.probe
            .ids
            .as_ref()
            .unwrap()
            .chunks(3)
            .map(<[usize]>::to_vec)
            .collect()
    };
    let train: std::collections::BTreeSet<Vec<usize>> = (0..200)
        .flat_map(|_| key(&task.sample(&mut rng, 32, Split::Train)))
        .collect();
    let eval: std::collections::BTreeSet<Vec<usize>> = (0..20)
        .flat_map(|_| key(&task.sample(&mut rng, 32, Split::Eval)))
        .collect();
    assert!(train.is_disjoint(&eval));
    // 6400 draws cover the training side (≈ 231 sequences) and 640 the held-out side.
    assert_eq!(
        train.len() + eval.len(),
        289,
        "{} + {}",
        train.len(),
        eval.len()
    );
    assert!((40..=80).contains(&eval.len()), "held out {}", eval.len());
}

/// A hand-written table that gives only some groups' rates and no global lr: the other
/// groups keep `train.lr` (AdamW: the rate itself), not a silent 0.
#[test]
fn table_without_a_global_lr_keeps_train_lr() {
    let hp = HparamTable::parse(r#"{"groups":{"q":{"lr":0.0005}}}"#).unwrap();
    let cfg = small(&["train.lr=0.002"]);
    let tr: Trainer = Trainer::new(&cfg, Some(&hp)).unwrap();
    assert_eq!(tr.reference_lr, 0.002);
    for (i, p) in tr.net.params.list.iter().enumerate() {
        let want = if p.group == Group::Q { 0.0005 } else { 0.002 };
        assert_eq!(tr.lr[i], want, "lr of {}", p.name);
    }
}

/// The digits ViT with a class token (1.8) read by the class head: the trainer's loss
/// gradient reaches the class token (central differences, f64), and 200 AdamW steps at
/// width 64 bring the held-out loss below a quarter of chance (ln 10 = 2.30); the pooled
/// head reaches 0.30 on the same run.
#[test]
fn digits_vit_with_class_token_learns() {
    let cls = [
        "train.task=digits",
        "model.class_token=true",
        "model.head=class",
        "model.heads=4",
    ];
    let cfg = small(
        &[
            &cls[..],
            &["model.width=8", "train.batch=3", "train.precision=f64"],
        ]
        .concat(),
    );
    let tr = Trainer::<f64>::new(&cfg, None).unwrap();
    let batch = tr.batch_at(0);
    let (_, grads) = tr.loss_and_grads(&batch);
    let pi = tr
        .net
        .params
        .list
        .iter()
        .position(|p| p.group == Group::Cls)
        .expect("a class-token tensor");
    let h = 1e-5;
    for idx in 0..tr.net.params.list[pi].value.len() {
        let shifted = |d: f64| {
            let mut t2 = Trainer::<f64>::new(&cfg, None).unwrap();
            t2.net.params.list[pi].value.as_slice_mut().unwrap()[idx] += d;
            t2.loss(&batch)
        };
        let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
        let an = grads[pi].as_slice().unwrap()[idx];
        assert!(
            (fd - an).abs() < 1e-6 * an.abs().max(1e-3),
            "∂loss/∂c[{idx}]: fd {fd:.6e} analytic {an:.6e}"
        );
    }

    let cfg = small(
        &[
            &cls[..],
            &[
                "model.width=64",
                "train.lr=0.003",
                "train.warmup=20",
                "train.steps=200",
                "train.seed=0",
            ],
        ]
        .concat(),
    );
    let mut tr: Trainer = Trainer::new(&cfg, None).unwrap();
    while tr.step < 200 {
        tr.step().unwrap();
    }
    let end = tr.evaluate();
    let threshold = 0.25 * 10f64.ln();
    eprintln!("digits with a class token: eval loss {end:.4} (threshold {threshold:.4})");
    assert!(end < threshold, "eval loss {end:.4}, want < {threshold:.4}");
}

/// A table re-draws each group with the table's variance and the group's own law: with
/// `model.init = "uniform"` and a Gaussian W (`model.init_groups.w`), X stays inside
/// √(3 var) (uniform) while W, 32 × 64 = 2048 Gaussian entries with variance 0.005, has
/// kurtosis above 2.4 (uniform: 1.8; the sample kurtosis' error is ≈ √(24/2048) = 0.11).
#[test]
fn hparams_redraw_keeps_each_groups_law() {
    let json = r#"{"family":"ntk","s":0.0,"optimizer":"sgd","base_width":32,"width":32,
        "mlp_mult":2,"lr":0.001,"weight_decay":0.0,"groups":{
        "w":{"init_variance":0.005,"lr":0.00006},
        "x":{"init_variance":0.006,"lr":0.00007}}}"#;
    let hp = HparamTable::parse(json).unwrap();
    let cfg = small(&["model.init=uniform", "model.init_groups.w=gaussian"]);
    let tr: Trainer = Trainer::new(&cfg, Some(&hp)).unwrap();
    let mut seen = 0;
    for p in &tr.net.params.list {
        let v: Vec<f64> = p.value.iter().map(|&x| x as f64).collect();
        let m2 = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        let m4 = v.iter().map(|x| x.powi(4)).sum::<f64>() / v.len() as f64;
        match p.group {
            Group::W => {
                assert!(
                    m4 / (m2 * m2) > 2.4,
                    "{}: kurtosis {}",
                    p.name,
                    m4 / (m2 * m2)
                );
                seen += 1;
            }
            Group::X => {
                let h = (3.0f64 * 0.006).sqrt() * (1.0 + 1e-6);
                assert!(v.iter().all(|x| x.abs() <= h), "{} leaves ±{h}", p.name);
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 4, "two blocks, W and X each");
}

/// The denoising encoder–decoder: a batch split over threads (sequences of the encoder,
/// their padding mask and the decoder's rows cut alike) gives the loss and every gradient
/// of the unsplit batch to rounding; the shared embedding, a cross-attention weight and an
/// encoder weight agree with central differences. Width 16, 1 + 1 blocks of (A, M) and
/// (A, C, M), T = 16, f64.
#[test]
fn denoise_split_and_gradients_match() {
    let base = [
        "train.task=denoise",
        "model.width=16",
        "model.layers=1",
        "train.tokens=16",
        "train.batch=4",
        "train.precision=f64",
    ];
    let one = small(&[&base[..], &["train.threads=1"]].concat());
    let two = small(&[&base[..], &["train.threads=2"]].concat());
    let (t1, t2) = (
        Trainer::<f64>::new(&one, None).unwrap(),
        Trainer::<f64>::new(&two, None).unwrap(),
    );
    let batch = t1.batch_at(0);
    assert!(
        batch.probe.keep.as_ref().unwrap().iter().any(|k| !k),
        "no padding in the batch"
    );
    let (l1, g1) = t1.loss_and_grads(&batch);
    let (l2, g2) = t2.loss_and_grads(&batch);
    assert!(
        (l1 - l2).abs() < 1e-12 * l1.abs(),
        "loss {l1} vs {l2} split"
    );
    for (a, b) in g1.iter().zip(&g2) {
        let scale = a.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let diff = (a - b).iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            diff < 1e-10 * scale,
            "gradient differs by {diff} (scale {scale}) when split"
        );
    }
    let h = 1e-5;
    let groups = [Group::Stem, Group::Q, Group::K];
    for g in groups {
        // The first tensor of the group (the shared embedding; the encoder's first query
        // weight; its first key weight), and for K also the last (the decoder's
        // cross-attention key, which reads the encoder's output).
        let idx: Vec<usize> = t2
            .net
            .params
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.group == g)
            .map(|(i, _)| i)
            .collect();
        for &pi in [idx[0], idx[idx.len() - 1]].iter() {
            for e in [0usize, 7] {
                let shifted = |d: f64| {
                    let mut t = Trainer::<f64>::new(&two, None).unwrap();
                    t.net.params.list[pi].value.as_slice_mut().unwrap()[e] += d;
                    t.loss(&batch)
                };
                let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
                let an = g2[pi].as_slice().unwrap()[e];
                assert!(
                    (fd - an).abs() < 1e-6 * an.abs().max(1e-3),
                    "{g:?} tensor {pi} entry {e}: fd {fd:.6e} analytic {an:.6e}"
                );
            }
        }
    }
}

/// Span denoising learns to copy through cross-attention: width 64, one (A, M) encoder
/// block and one (A, C, M) decoder block, T = 16, batch 32, AdamW lr 3e-3, 300 steps, seed 0.
/// The held-out loss falls below 1.8 (1.30 measured; 1.33 recorded before the pad column
/// was frozen); a character LM of the same size and budget, which sees only the left
/// context as an encoder-blind decoder would, stays at
/// 2.1–2.3 (lr 1e-2 and 3e-3), since 70 % of the targets can only be copied from the
/// encoder. Chance is ln 64 = 4.16.
#[test]
fn denoise_learns_through_cross_attention() {
    let cfg = small(&[
        "train.task=denoise",
        "model.width=64",
        "model.layers=1",
        "train.tokens=16",
        "train.lr=0.003",
        "train.warmup=20",
        "train.steps=300",
        "train.seed=0",
    ]);
    let mut tr: Trainer = Trainer::new(&cfg, None).unwrap();
    while tr.step < 300 {
        tr.step().unwrap();
    }
    let end = tr.evaluate();
    eprintln!("denoise: eval loss {end:.4} (threshold 1.8)");
    assert!(end < 1.8, "denoise eval loss {end:.4}, want < 1.8");
}

/// fairseq's BART (the paper's footnote 48): the denoising task's pad token is the model's
/// [pad] (`inputs.pad_id`), whose word-embedding column is zero at initialization, also
/// after an hparams table re-draws the embedding, gets no gradient from the stems or the
/// tied head, and stays zero under AdamW with weight decay.
#[test]
fn denoise_pad_embedding_is_zero_and_frozen() {
    let json = r#"{"family":"ntk","s":0.0,"optimizer":"adamw","base_width":16,"width":16,
        "mlp_mult":2,"lr":0.003,"weight_decay":0.1,"groups":{"stem":{"init_variance":0.5}}}"#;
    let hp = HparamTable::parse(json).unwrap();
    for head in ["dense", "tied"] {
        let cfg = small(&[
            "train.task=denoise",
            "model.width=16",
            "model.layers=1",
            "train.tokens=16",
            "train.batch=4",
            "train.precision=f64",
            "train.weight_decay=0.1",
            "model.stem=embedding",
            "inputs.kind=tokens",
            &format!("model.head={head}"),
        ]);
        let pad = cfg.model.n_in - 1;
        assert_eq!(
            cfg.model.pad_id,
            Some(pad),
            "{head}: the pad token is the last id"
        );
        for table in [None, Some(&hp)] {
            let mut tr: Trainer<f64> = Trainer::new(&cfg, table).unwrap();
            let w = tr.net.stem.w;
            let column = |tr: &Trainer<f64>| tr.net.params.list[w].value.column(pad).to_owned();
            assert!(column(&tr).iter().all(|&x| x == 0.0), "{head}: drawn");
            assert!(
                tr.net.params.list[w]
                    .value
                    .iter()
                    .filter(|&&x| x != 0.0)
                    .count()
                    == tr.net.params.list[w].value.len() - cfg.model.width,
                "{head}: only the pad column is zero"
            );
            let batch = tr.batch_at(0);
            assert!(batch.probe.ids.as_ref().unwrap().contains(&pad));
            let (_, g) = tr.loss_and_grads(&batch);
            assert!(
                g[w].column(pad).iter().all(|&x| x == 0.0),
                "{head}: gradient"
            );
            for _ in 0..3 {
                tr.step().unwrap();
            }
            assert!(column(&tr).iter().all(|&x| x == 0.0), "{head}: trained");
        }
    }
}
