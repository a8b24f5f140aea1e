//! The encoder–decoder theory (src/theory/cross.rs and the decoder walk) against the Monte
//! Carlo of the same model (release mode, fixed seeds, a few seconds each): forward kernels,
//! cross-attention logits, grad2 and every per-group NTK, including the encoder layers',
//! which reach the output only through K and V of the cross-attention blocks.
//!
//! z = (mc − theory)/sqrt(se_mc² + se_theory²); the worst |z| must stay below 5. Rows exact on
//! both sides must agree to 1e-6, and any row to 1e-7, as in tests/theory.rs. An LN output's
//! diagonal is g/(g + ε) per sample, and E[g/(g + ε)] sits below G/(G + ε) by the Jensen term
//! ≈ ε Var(g)/G³ ≈ 2ε/(nG), which its tiny standard error resolves: on the LN sites, and on
//! the stems' outputs (an encoder–decoder puts an LN right after each PE), the diagonal must
//! agree to 4ε/n (G ≈ 1 here) instead.

mod common;
use common::{sigprop, tmp};

use std::collections::HashMap;

use sigprop::config::{Backward, Config, ConfigBuilder, DecoderBlock};
use sigprop::inputs;
use sigprop::mc;
use sigprop::model::Probe;
use sigprop::stats::{Row, recorder};
use sigprop::theory::transformer::{self, TheoryOptions};

fn config(sets: &[&str]) -> Config {
    let mut b = ConfigBuilder::new();
    for s in sets {
        b = b.set(s).unwrap();
    }
    b.build().unwrap()
}

fn theory(cfg: &Config, probe: &Probe) -> Vec<Row> {
    let opts = TheoryOptions {
        logit_samples: 20000,
        error_batches: 10,
        seed: 5,
        backward: true,
        pairs: false,
        order: 0,
    };
    let (rows, diverged) = transformer::predict(&cfg.model, probe, opts, "test").unwrap();
    assert_eq!(diverged, None);
    rows
}

fn monte_carlo(cfg: &Config, probe: &Probe, samples: u64, seed: u64) -> Vec<Row> {
    let f32 = cfg.get("run.precision").and_then(|v| v.as_str()) == Some("f32");
    let job = mc::Job {
        spec: &cfg.model,
        probe,
        backward: Backward::Trace,
        seed,
        sampler: mc::resolve_sampler(cfg, probe).unwrap(),
        probe_f32: f32.then(|| probe.cast()),
    };
    let mut ens = job.start(0, samples);
    job.run(&mut ens, 2, |_| Ok(())).unwrap();
    recorder::rows(
        &ens.rows,
        &ens.acc,
        "mc",
        "test",
        cfg.model.width,
        cfg.model.heads,
    )
}

type Key = (usize, String, String, i64, i64);

fn key(r: &Row) -> Key {
    (r.layer, r.site.clone(), r.observable.clone(), r.i, r.j)
}

/// z per selected theory row; every selected theory row must have its Monte Carlo twin (the
/// same layer, site, observable and (i, j): the numbering contract of docs/architecture.md).
fn z_scores(
    cfg: &Config,
    mc: &[Row],
    th: &[Row],
    select: impl Fn(&Row) -> bool,
) -> Vec<(f64, Key)> {
    let spec = &cfg.model;
    let jensen = 4.0 * spec.ln_eps / spec.width as f64;
    let ln_diag = |r: &Row| {
        let ln_site = r.site == "ln"
            || (r.site == "resid" && (r.layer == 1 || r.layer == spec.decoder_stem_layer()));
        let diag = r.observable == "kernel_diag" || (r.observable == "kernel" && r.i == r.j);
        ln_site && diag
    };
    let mc: HashMap<Key, &Row> = mc.iter().map(|r| (key(r), r)).collect();
    let mut out = Vec::new();
    for t in th.iter().filter(|r| select(r)) {
        let m = mc
            .get(&key(t))
            .unwrap_or_else(|| panic!("the Monte Carlo has no row {:?}", key(t)));
        let se = (m.stderr.powi(2) + t.stderr.powi(2)).sqrt();
        let diff = (m.value - t.value).abs();
        let z = if diff < 1e-7 || (ln_diag(t) && diff < jensen) {
            0.0
        } else if se < 1e-9 {
            assert!(
                diff < 1e-6,
                "{:?}: mc {} vs theory {} (both exact)",
                key(t),
                m.value,
                t.value
            );
            0.0
        } else {
            (m.value - t.value) / se
        };
        out.push((z, key(t)));
    }
    assert!(!out.is_empty(), "no rows selected");
    out
}

fn worst(z: &[(f64, Key)]) -> (f64, Key) {
    z.iter()
        .cloned()
        .max_by(|a, b| a.0.abs().total_cmp(&b.0.abs()))
        .unwrap()
}

/// Runs both sides; asserts |z| < 5 on the summaries (i = −1) and on every row of `extra`.
fn agree(
    sets: &[&str],
    samples: u64,
    what: &str,
    extra: impl Fn(&Row) -> bool,
) -> (Config, Vec<Row>, Vec<Row>) {
    let mut cfg = config(sets);
    let probe = inputs::probe(&mut cfg).unwrap();
    let th = theory(&cfg, &probe);
    let mc = monte_carlo(&cfg, &probe, samples, 29);
    let z = z_scores(&cfg, &mc, &th, |r| r.i == -1 || extra(r));
    let (wz, wk) = worst(&z);
    eprintln!("{what}: {} rows, worst z = {wz:.2} at {wk:?}", z.len());
    assert!(wz.abs() < 5.0, "{what}: worst z = {wz:.2} at {wk:?}");
    (cfg, th, mc)
}

/// The theory's summary value of (layer, observable).
fn summary(rows: &[Row], layer: usize, obs: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.layer == layer && r.observable == obs && r.i == -1)
        .map(|r| r.value)
}

/// Dense stem (its patchify matrix shared by both stems), encoder "AM", decoder "ACM",
/// T_dec = 4 decoder tokens against T = 3 encoder tokens: every summary, and every entry of
/// the cross block's logit variance (decoder query × encoder key). The encoder's Q, K, V, U,
/// W, X and its grad2 reach the output only through cross-attention's K and V: their rows
/// must be there and positive, and agree.
#[test]
fn encoder_decoder_forward_and_backward_agree_with_monte_carlo() {
    let (cfg, th, _) = agree(
        &[
            "model.preset=paper-vit",
            "model.width=256",
            "model.heads=2",
            "model.layers=1",
            "model.decoder_layers=1",
            "model.n_out=16",
            "inputs.dim=32",
            "inputs.sequences=2",
            "inputs.tokens=3",
            "inputs.decoder_tokens=4",
        ],
        600,
        "encoder–decoder",
        |r| r.layer == 6 && r.site == "logits",
    );
    let spec = &cfg.model;
    assert_eq!(spec.block_name(6), "cross");
    for (layer, obs) in [
        (1, "grad2"),
        (2, "grad2"),
        (3, "grad2"),
        (1, "ntk_stem"),
        (2, "ntk_q"),
        (2, "ntk_k"),
        (2, "ntk_v"),
        (2, "ntk_u"),
        (3, "ntk_w"),
        (3, "ntk_x"),
        (6, "ntk_k"),
        (6, "ntk_v"),
    ] {
        let v = summary(&th, layer, obs).unwrap_or_else(|| panic!("no {obs} at {layer}"));
        assert!(v > 0.0, "{obs} at layer {layer} = {v}");
    }
}

/// The word embedding shared by the encoder's and the decoder's stems (its two uses in
/// ntk_stem at layer 1, their cross term vanishing at leading order), the decoder's own b^PE
/// (ntk_pe at layer B_e + 2 = 4), a dense head, and a padded encoder token that every
/// cross-attention softmax masks out.
#[test]
fn shared_embedding_and_padding_agree_with_monte_carlo() {
    let (_, th, _) = agree(
        &[
            "model.preset=paper-vit",
            "model.stem=embedding",
            "model.variances.pe=0.25",
            "model.width=256",
            "model.heads=2",
            "model.layers=1",
            "model.decoder_layers=1",
            "model.n_out=16",
            "inputs.kind=tokens",
            "inputs.vocab=12",
            "inputs.ids=[[1, 5, 5, 2], [5, 3, 1, 0]]",
            "inputs.decoder_ids=[[0, 1, 5], [0, 4, 3]]",
            "inputs.pad_id=0",
        ],
        600,
        "shared embedding, padding",
        |r| r.layer == 6 && r.site == "logits",
    );
    assert!(summary(&th, 1, "ntk_stem").is_some());
    assert!(summary(&th, 1, "ntk_pe").is_some() && summary(&th, 4, "ntk_pe").is_some());
    // The padded key (sequence 1, token 3) gets no attention: its logit variance row is there
    // but every query's max and entropy come from the three others.
    let ent = th
        .iter()
        .find(|r| r.layer == 6 && r.observable == "attn_entropy" && r.i == 3)
        .unwrap();
    assert!(ent.value < 3f64.ln() + 1e-12, "{}", ent.value);
}

/// The row (layer, site `resid`, `kernel`, i, j) of `rows`.
fn entry(rows: &[Row], layer: usize, i: i64, j: i64) -> &Row {
    rows.iter()
        .find(|r| {
            r.layer == layer
                && r.site == "resid"
                && r.observable == "kernel"
                && r.i == i
                && r.j == j
        })
        .unwrap_or_else(|| panic!("no kernel row ({i}, {j}) at layer {layer}"))
}

/// The [pad] token's word-embedding column is zero (footnote 48), so a pad token's stem
/// output is its positional embedding alone, LN(b^PE_t): against two pads at different
/// positions the stem kernel is 0 (independent PE rows), against an unpadded token at the
/// same position C_PE/sqrt(C_PE (C_WE + C_PE)) (ε aside), in the encoder's stem (layer 1)
/// and the decoder's (layer B_e + 2 = 4). Pads in both probes, a dense head, every summary
/// including ntk_stem (the frozen column adds nothing to it), every stem-kernel entry and
/// the cross block's logits; the dense and the conditional sampler, and the latter in f32.
#[test]
fn pad_embedding_is_zero_in_both_stems() {
    for (sampler, precision) in [
        ("dense", "f64"),
        ("conditional", "f64"),
        ("conditional", "f32"),
    ] {
        let sets = [
            "model.preset=paper-vit",
            "model.stem=embedding",
            "model.variances.pe=0.25",
            "model.width=256",
            "model.heads=2",
            "model.layers=1",
            "model.decoder_layers=1",
            "model.n_out=16",
            "inputs.kind=tokens",
            "inputs.vocab=12",
            // Encoder pads at δ = 1, 3 (sequence 0) and 4 (sequence 1, t = 0); decoder pads
            // at δ = 0, 2 (sequence 0) and 4 (sequence 1, t = 1).
            "inputs.ids=[[1, 0, 5, 0], [0, 3, 1, 2]]",
            "inputs.decoder_ids=[[0, 1, 0], [4, 0, 3]]",
            "inputs.pad_id=0",
        ];
        let sets: Vec<String> = sets
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("run.sampler={sampler}"),
                format!("run.precision={precision}"),
            ])
            .collect();
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let what = format!("pad embedding, {sampler} {precision}");
        let (cfg, th, mc) = agree(&sets, 600, &what, |r| {
            (r.layer == 1 || r.layer == 4) && r.site == "resid" && r.observable == "kernel"
                || r.layer == 6 && r.site == "logits"
        });
        let m = &cfg.model;
        let (c_we, c_pe, eps) = (m.var.stem, m.var.pe, m.ln_eps);
        let beside = c_pe / ((c_pe + eps) * (c_we + c_pe + eps)).sqrt();
        // (layer, i, j, value): pad–pad at different positions, pad–token at one position.
        for (layer, i, j, want) in [
            (1, 1, 3, 0.0),
            (1, 1, 4, 0.0),
            (1, 1, 5, beside),
            (1, 0, 4, beside),
            (4, 0, 2, 0.0),
            (4, 0, 4, 0.0),
            (4, 1, 4, beside),
            (4, 2, 5, beside),
        ] {
            let (t, r) = (entry(&th, layer, i, j), entry(&mc, layer, i, j));
            assert!(
                (t.value - want).abs() < 1e-9,
                "{what}: theory ({i}, {j}) at layer {layer} = {} against {want}",
                t.value
            );
            let z = (r.value - want) / r.stderr;
            eprintln!(
                "{what}: mc ({i}, {j}) at layer {layer} = {:.4} ± {:.4}, z = {z:.2}",
                r.value, r.stderr
            );
            assert!(
                z.abs() < 5.0,
                "{what}: mc ({i}, {j}) at layer {layer}: z = {z:.2}"
            );
        }
    }
}

/// A tied head on an encoder–decoder with a [pad] token: output i = pad is identically zero
/// (W_WE[:, pad] = 0), so the head kernel, a mean over the n_out outputs, keeps
/// (n_out − 1)/n_out of (1.84), and the tied contact term vanishes at the decoder's pad
/// positions (their s holds no column of W_WE): there G^L = (n_out − 1)/n_out · C_WE n^{-s}
/// F, F = G/(G + ε) ≈ 1. Every head-kernel entry agrees with the Monte Carlo.
#[test]
fn pad_output_of_a_tied_head_is_zero() {
    let (cfg, th, mc) = agree(
        &[
            "model.preset=paper-lm",
            // A pad token's stem vector is b^PE alone, G = C_PE: with paper-lm's C_PE = 0.02²
            // = 40 ε the stem LN's finite-n Jensen term (≈ 3ε/(nG) ≈ 1.5e-4 on the diagonal,
            // beyond the 4ε/n allowed above) shows at z ≈ −4 in 600 samples. A louder b^PE
            // and paper-vit's ε keep it below 1e-7 and this test about the head.
            "model.variances.pe=0.25",
            "model.ln_eps=1e-6",
            "model.width=512",
            "model.heads=2",
            "model.layers=1",
            "model.decoder_layers=1",
            "inputs.vocab=12",
            "inputs.ids=[[1, 5, 0, 2], [5, 3, 1, 0]]",
            "inputs.decoder_ids=[[3, 0, 5], [0, 4, 3]]",
            "inputs.pad_id=0",
        ],
        600,
        "tied head, padding",
        |r| r.layer == 8 && r.site == "resid" && r.observable == "kernel",
    );
    let m = &cfg.model;
    assert_eq!(m.head_layer(), 8);
    let n_out = m.out_dim() as f64;
    let want = sigprop::model::head::hyper(m).c_eff * (n_out - 1.0) / n_out;
    // Decoder pads at δ = 1 and 3.
    for d in [1, 3] {
        let (t, r) = (entry(&th, 8, d, d), entry(&mc, 8, d, d));
        assert!(
            (t.value - want).abs() < 1e-4 * want,
            "theory G^L({d}, {d}) = {} against {want}",
            t.value
        );
        let z = (r.value - want) / r.stderr;
        eprintln!(
            "tied head, padding: mc G^L({d}, {d}) = {:.4} ± {:.4} against {want:.4}, z = {z:.2}",
            r.value, r.stderr
        );
        assert!(z.abs() < 5.0, "mc G^L({d}, {d}): z = {z:.2}");
    }
}

/// A tied head on an encoder–decoder: forward and backward (src/theory/contact.rs). The word
/// embedding has three uses (both stems and the head) in ntk_stem, and the head's contact
/// comes from every attention block: the decoder's own, cross-attention's logits (the
/// encoder's groups through the keys' Θ̃) and the encoder's, carried through cross-attention's
/// value path. Two cases:
/// - the paper-lm shape with BART's decoder (A, C, M) at n = 1024 and 32 tokens;
/// - n = 1024 with an 8-token vocabulary, where the cross block's logit contact is large:
///   without it the cross block's ntk_k sits at z ≈ +25 (with it, |z| < 3.1 on every row).
#[test]
fn tied_head_forward_and_backward_agree() {
    let cases: [(&[&str], u64); 2] = [
        (
            &[
                // The head's forward kernel has an O(1/n) bias of its own, which 1200
                // networks resolve at n = 512 (z ≈ −4): n = 1024 halves it.
                "model.width=1024",
                "model.heads=2",
                "inputs.vocab=32",
                "inputs.ids=[[1, 5, 5, 2], [5, 3, 1, 1]]",
            ],
            1200,
        ),
        (
            &[
                "model.width=1024",
                "model.heads=2",
                "model.pattern=A",
                "model.decoder_pattern=AC",
                "inputs.vocab=8",
                "inputs.ids=[[4, 4, 5, 7], [7, 1, 4, 4]]",
            ],
            3000,
        ),
    ];
    for (sets, samples) in cases {
        let mut all = vec![
            "model.preset=paper-lm",
            "model.layers=1",
            "model.decoder_layers=1",
        ];
        all.extend_from_slice(sets);
        let (cfg, th, _) = agree(&all, samples, "tied head", |_| false);
        // grad2 at every layer, and the encoder's groups through cross-attention.
        let at = cfg
            .model
            .decoder
            .iter()
            .position(|b| *b == DecoderBlock::Cross);
        let cross = cfg.model.decoder_stem_layer() + 1 + at.expect("a cross block");
        for (layer, obs) in [
            (1, "grad2"),
            (1, "ntk_stem"),
            (2, "ntk_q"),
            (cross, "ntk_k"),
        ] {
            let v = summary(&th, layer, obs).unwrap_or_else(|| panic!("no {obs} at {layer}"));
            assert!(v > 0.0, "{obs} at layer {layer} = {v}");
        }
    }
}

/// `sigprop theory` on an encoder–decoder: decoder_layers = 0 writes the encoder-only rows;
/// theory.order = 1 falls back to order 0 with a one-line note; a tied head writes its
/// backward rows.
#[test]
fn theory_command_on_an_encoder_decoder() {
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp(name);
        let mut args = vec![
            "theory",
            "--set",
            "model.width=64",
            "--set",
            "model.layers=1",
            "--set",
            "model.decoder_layers=1",
            "--set",
            "inputs.tokens=3",
            "--set",
            "theory.logit_samples=200",
        ];
        args.extend_from_slice(extra);
        let out = dir.display().to_string();
        args.extend(["--force", "--out", out.as_str()]);
        let (code, _, err) = sigprop(&args);
        assert_eq!(code, 0, "{err}");
        let csv = std::fs::read_to_string(dir.join("stats.csv")).unwrap();
        (csv, err)
    };
    let (order0, _) = run("encdth-o0", &[]);
    let (order1, err) = run("encdth-o1", &["--set", "theory.order=1"]);
    assert!(
        err.contains("no 1/n theory for an encoder–decoder"),
        "{err}"
    );
    assert_eq!(order0, order1);
    assert!(order0.contains(",cross,logits,logit_var,"));
    assert!(order0.contains(",cross,param,ntk_k,"));
    let tied = run(
        "encdth-tied",
        &[
            "--set",
            "model.stem=embedding",
            "--set",
            "model.head=tied",
            "--set",
            "inputs.kind=tokens",
            "--set",
            "inputs.vocab=16",
        ],
    );
    let (tied, err) = (tied.0, tied.1);
    assert!(!err.contains("no backward theory"), "{err}");
    assert!(
        tied.contains(",stem,param,ntk_stem,"),
        "no tied backward rows"
    );
}

/// The other placements: post-LN (the stems' LNs, s̃ = z^{B_e+1}) with biases in every block
/// (cross-attention's b_Q, b_K, b_V, b_U in the bias group) and a pooled head; and no LN at
/// all (no stem LNs, s̃ = z^{B_e+1}).
#[test]
fn post_ln_with_biases_and_no_ln_agree_with_monte_carlo() {
    let base = [
        "model.preset=paper-vit",
        "model.width=256",
        "model.heads=2",
        "model.layers=1",
        "model.decoder_layers=1",
        "model.n_out=16",
        "inputs.dim=32",
        "inputs.sequences=2",
        "inputs.tokens=3",
    ];
    let post = [
        &base[..],
        &[
            "model.norm=post",
            "model.variances.bias=0.1",
            "model.head=pooled",
        ],
    ]
    .concat();
    let (_, th, _) = agree(&post, 500, "post-LN, biases, pooled", |_| false);
    assert!(summary(&th, 6, "ntk_bias").is_some_and(|v| v > 0.0));
    let none = [&base[..], &["model.norm=none"]].concat();
    agree(&none, 500, "no LN", |_| false);
}

/// `sigprop theory` and `sigprop compare` on the paper's encoder–decoder presets: both run,
/// the comparison joins the cross-attention rows, the tied head's backward included. (The
/// agreement itself is asserted above, on smaller models.)
#[test]
fn paper_bart_presets_run_through_theory_and_compare() {
    for preset in ["paper-bart", "paper-bart-standard"] {
        let set = format!("model.preset={preset}");
        let (mc, th, cmp) = (
            tmp(&format!("encdth-{preset}-mc")),
            tmp(&format!("encdth-{preset}-th")),
            tmp(&format!("encdth-{preset}-cmp")),
        );
        let s = |p: &std::path::PathBuf| p.display().to_string();
        let (code, _, err) = sigprop(&[
            "simulate",
            "--set",
            &set,
            "--samples",
            "40",
            "--seed",
            "3",
            "--force",
            "--out",
            &s(&mc),
        ]);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = sigprop(&[
            "theory",
            "--set",
            &set,
            "--set",
            "theory.logit_samples=2000",
            "--force",
            "--out",
            &s(&th),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("no backward theory"), "{err}");
        let (code, _, err) = sigprop(&[
            "compare",
            &s(&mc.join("stats.csv")),
            &s(&th.join("stats.csv")),
            "--out",
            &s(&cmp),
        ]);
        assert_eq!(code, 0, "{err}");
        let report = std::fs::read_to_string(cmp.join("report.md")).unwrap();
        assert!(
            report.contains("| cross |"),
            "{preset}: no cross rows compared"
        );
    }
}
