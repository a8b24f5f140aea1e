//! The edges a paper's numbers must survive: sizes refused before anything is allocated,
//! flags that once panicked or stalled, standard errors that are undefined rather than 0,
//! divergence, plots of diverged runs, and messages that point at what ships.
//!
//! Every refusal is checked for: a non-zero exit, exactly one line, no panic, the key or
//! flag named, and an answer well within a second or two (the old code allocated for up to
//! 27 s, or stalled for 29 s, before aborting).

mod common;
use common::{sigprop, tmp};

use std::time::{Duration, Instant};

/// Generous but meaningful: the refusals do no work at all and answer in ~20 ms; the old
/// code took 4–29 s for each of these before it aborted or hung.
const FAST: Duration = Duration::from_secs(2);

/// Runs `args`, expects a fast one-line refusal naming every needle.
fn refuses(args: &[&str], needles: &[&str]) -> String {
    let t0 = Instant::now();
    let (code, out, err) = sigprop(args);
    let took = t0.elapsed();
    assert_ne!(
        code, 0,
        "{args:?}: expected a refusal, exit 0\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{args:?}: panicked or aborted: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{args:?}: expected one line, got:\n{err}"
    );
    assert!(
        err.starts_with("sigprop: error: "),
        "{args:?}: not a sigprop error line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` missing from: {err}");
    }
    assert!(
        took < FAST,
        "{args:?}: took {took:?} (bound {FAST:?}) to refuse: {err}"
    );
    err
}

fn simulate(out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "simulate".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refuses_simulate(name: &str, extra: &[&str], needles: &[&str]) {
    let out = tmp(name);
    let a = simulate(&out, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refuses(&a, needles);
    assert!(
        !out.join("inputs.csv").exists(),
        "{extra:?}: inputs.csv was written before the refusal"
    );
}

#[test]
fn oversized_networks_are_refused_within_a_second_naming_the_key() {
    // Each of these used to allocate for seconds and abort ("memory allocation of N bytes
    // failed"), `inputs.tokens = 10^5` after writing a 1.5 GB inputs.csv.
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "model.width=10000000"], "model.width"),
        (&["--set", "inputs.tokens=100000"], "inputs.tokens"),
        (&["--set", "model.layers=1000000"], "model.layers"),
        (&["--set", "model.mlp_mult=1000000000"], "model.mlp_mult"),
        (&["--set", "inputs.dim=100000000000"], "inputs.dim"),
        (
            &["--set", "inputs.sequences=100000000000"],
            "inputs.sequences",
        ),
        (&["--set", "model.n_out=100000000000"], "model.n_out"),
        (
            &[
                "--set",
                "model.stem=embedding",
                "--set",
                "inputs.kind=tokens",
                "--set",
                "inputs.vocab=100000000000",
            ],
            "inputs.vocab",
        ),
    ];
    for (k, (extra, key)) in cases.iter().enumerate() {
        refuses_simulate(&format!("edges-size-{k}"), extra, &[key]);
    }
}

#[test]
fn memory_refusal_states_the_estimate_and_the_limit_and_max_memory_overrides() {
    let out = tmp("edges-maxmem");
    let o = out.to_str().unwrap();
    let small = [
        "--samples",
        "4",
        "--set",
        "model.width=16",
        "--set",
        "model.layers=1",
        "--set",
        "inputs.tokens=2",
    ];
    let mut a = vec!["simulate", "--out", o, "--max-memory", "1K"];
    a.extend(small);
    let err = refuses(&a, &["needs about", "--max-memory limit"]);
    assert!(err.contains("kB") || err.contains("MB"), "{err}");
    // Without the flag the limit is MemAvailable, which this tiny run fits.
    let mut a = vec!["simulate", "--out", o, "--max-memory", "64G"];
    a.extend(small);
    let (code, _, err) = sigprop(&a);
    assert_eq!(code, 0, "{err}");
    refuses(
        &["simulate", "--out", o, "--max-memory", "lots"],
        &["--max-memory", "40G"],
    );
    // The theory and the trainer check too.
    refuses(
        &["theory", "--out", o, "--set", "inputs.tokens=100000"],
        &["the theory needs about", "inputs.tokens"],
    );
    refuses(
        &["train", "--out", o, "--set", "model.layers=100000"],
        &["training needs about", "model.layers"],
    );
}

#[test]
fn overflowing_sizes_are_refused_not_wrapped() {
    // 2^58 + 1 times 512 wrapped to 512 and ran as mlp_mult = 1.
    refuses_simulate(
        "edges-wrap",
        &["--set", "model.mlp_mult=288230376151711745"],
        &["model.mlp_mult", "too large"],
    );
    // Near i64::MAX ("ndarray: Shape too large" panics).
    for (k, key) in [
        "model.width",
        "inputs.dim",
        "inputs.tokens",
        "model.mlp_mult",
    ]
    .iter()
    .enumerate()
    {
        let set = format!("{key}=9223372036854775800");
        refuses_simulate(&format!("edges-max-{k}"), &["--set", &set], &["too large"]);
    }
    // ≥ 2^63: reported as typed, never as -1.
    let e = refuses(
        &[
            "simulate",
            "--out",
            "unused",
            "--set",
            "model.width=9223372036854775808",
        ],
        &["model.width", "9223372036854775808"],
    );
    assert!(!e.contains("-1"), "{e}");
    let e = refuses(
        &[
            "simulate",
            "--out",
            "unused",
            "--samples",
            "18446744073709551615",
        ],
        &["--samples", "18446744073709551615"],
    );
    assert!(!e.contains("= -1"), "{e}");
    refuses(
        &["train", "--out", "unused", "--seed", "9223372036854775808"],
        &["--seed", "9223372036854775808"],
    );
}

#[test]
fn checkpoint_interval_and_thread_count_are_checked_first() {
    refuses_simulate(
        "edges-ckpt-inf",
        &["--checkpoint-secs", "inf"],
        &["--checkpoint-secs"],
    );
    refuses_simulate(
        "edges-ckpt-big",
        &["--checkpoint-secs", "1e20"],
        &["--checkpoint-secs"],
    );
    // Stalled 29 s building 100000 threads, then printed its error twice.
    refuses_simulate(
        "edges-threads",
        &["--threads", "100000"],
        &["--threads", "1024"],
    );
    refuses(
        &["train", "--out", "unused", "--threads", "100000"],
        &["train.threads"],
    );
    // The other commands that start threads (transfer stalled for over a minute).
    refuses(&["bench", "--threads", "100000"], &["--threads", "1024"]);
    refuses(
        &[
            "transfer",
            "--out",
            "unused",
            "--threads",
            "100000",
            "--widths",
            "16",
            "--family",
            "standard",
            "--lrs",
            "1e-3",
        ],
        &["--threads", "1024"],
    );
    refuses(
        &[
            "hparams",
            "--measure",
            "--optimizer",
            "sgd",
            "--threads",
            "100000",
        ],
        &["--threads", "1024"],
    );
}

/// The stats.csv rows: (observable, layer, value field, stderr field).
fn rows(dir: &std::path::Path) -> Vec<(String, usize, String, String)> {
    let text = std::fs::read_to_string(dir.join("stats.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[7].to_string(),
                f[4].parse().unwrap(),
                f[10].to_string(),
                f[11].to_string(),
            )
        })
        .collect()
}

const TINY: [&str; 6] = [
    "--set",
    "model.width=32",
    "--set",
    "model.layers=1",
    "--set",
    "inputs.tokens=3",
];

#[test]
fn one_sample_is_refused_and_two_give_no_zero_or_nan_errors() {
    let mut a = vec!["--samples", "1"];
    a.extend(TINY);
    refuses_simulate("edges-s1", &a, &["run.samples", "2"]);

    let out = tmp("edges-s2");
    let mut a = simulate(&out, &["--samples", "2"]);
    a.extend(TINY.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = sigprop(&a);
    assert_eq!(code, 0, "{err}");
    let rows = rows(&out);
    let mut fluct = 0;
    for (obs, layer, value, se) in &rows {
        // Undefined is empty; a number must be a real, positive-or-zero error.
        assert!(
            !["NaN", "nan", "inf", "-inf"].contains(&se.as_str()),
            "{obs} layer {layer}: stderr `{se}` written as a number"
        );
        assert!(!value.is_empty(), "{obs} layer {layer}: empty value");
        if obs == "fluct" {
            fluct += 1;
            // Two samples leave a single-sample jackknife replicate: a variance of one
            // sample is exactly 0, so the old code wrote stderr 0.0.
            assert!(
                se.is_empty(),
                "fluct layer {layer}: stderr `{se}` from two samples (expected empty)"
            );
        }
    }
    assert!(fluct > 0, "no fluct rows to check in {rows:?}");
    // Means of two samples keep a real error.
    assert!(
        rows.iter()
            .any(|(o, _, _, se)| o == "kernel_diag" && se.parse::<f64>().is_ok_and(|x| x > 0.0)),
        "no kernel_diag with a finite positive stderr: {rows:?}"
    );
}

#[test]
fn divergence_at_layer_one_exits_non_zero() {
    let mut a = vec!["--samples", "4", "--set", "model.variances.stem=1e300"];
    a.extend(TINY);
    let out = tmp("edges-div1");
    let a = simulate(&out, &a);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = sigprop(&a);
    assert_ne!(code, 0, "diverged at layer 1 exited 0: {err}");
    assert!(err.contains("diverged at layer 1"), "{err}");
    assert!(!err.contains("layers 1 to 0"), "{err}");
}

/// A network whose residual stream grows by ~1e15 per block (no LN, huge variances).
const DIVERGING: [&str; 16] = [
    "--samples",
    "20",
    "--set",
    "model.width=32",
    "--set",
    "model.layers=6",
    "--set",
    "inputs.tokens=4",
    "--set",
    "model.norm=none",
    "--set",
    "model.variances.w=1e30",
    "--set",
    "model.variances.x=1e30",
    "--set",
    "run.backward=trace",
];

#[test]
fn derived_and_backward_rows_are_cut_at_the_divergence_layer() {
    let out = tmp("edges-cut");
    let a = simulate(&out, &DIVERGING);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = sigprop(&a);
    assert_eq!(code, 0, "{err}");
    let l: usize = err
        .split("diverged at layer ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no divergence reported: {err}"));
    assert!(l > 1, "{err}");
    for (obs, layer, value, se) in rows(&out) {
        assert!(
            layer < l,
            "{obs} at layer {layer} kept at or above the divergence layer {l}"
        );
        // The gradient at any layer flows back through the diverged ones.
        assert!(
            obs != "grad2" && !obs.starts_with("ntk"),
            "backward row {obs} at layer {layer} kept in a diverged network"
        );
        let v: f64 = value.parse().unwrap();
        assert!(
            (v * v).is_finite(),
            "{obs} layer {layer}: value {v} kept although its square overflows"
        );
        if !se.is_empty() {
            let s: f64 = se.parse().unwrap();
            assert!(
                s.is_finite() && s >= 0.0,
                "{obs} layer {layer}: stderr {se} for value {v}"
            );
        }
    }
}

#[test]
fn plot_of_values_near_the_float_limit_finishes_in_seconds() {
    // Plotters' log-axis key points spin forever from about 1e290; diverged runs keep
    // values up to about 1e305.
    let dir = tmp("edges-plot");
    let mut csv = String::from(
        "source,config,width,heads,layer,block,site,observable,i,j,value,stderr,samples\n",
    );
    for (l, e) in [
        (1, 0),
        (2, 50),
        (3, 150),
        (4, 250),
        (5, 290),
        (6, 300),
        (7, 305),
    ] {
        csv += &format!(
            "mc,huge,64,8,{l},attn,resid,kernel_diag,-1,-1,1e{e},1e{},100\n",
            e - 1
        );
        // An undefined error reads back as empty and gets no bar.
        csv += &format!("mc,huge,64,8,{l},attn,resid,kernel_offdiag,-1,-1,1e{e},,100\n");
    }
    std::fs::write(dir.join("stats.csv"), csv).unwrap();
    let d = dir.to_str().unwrap();
    // Polled and killed on timeout, so a hang fails the test instead of outliving it.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(["plot", d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sigprop plot {d} still running after 30 s (killed)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let (code, out, err) = (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".png") && out.contains(".svg"), "{out}");
    assert!(err.contains("leaving out"), "{err}");
    // Written atomically: no temporary file is left behind.
    for f in std::fs::read_dir(&dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "temporary file {name} left in {d}");
    }
}

#[test]
fn a_far_off_key_gets_no_guess_and_a_close_one_does() {
    let e = refuses(
        &["simulate", "--out", "unused", "--set", "zzzz.qqqq=1"],
        &["unknown key `zzzz.qqqq`", "docs/configuration.md"],
    );
    assert!(!e.contains("did you mean"), "{e}");
    refuses(
        &["simulate", "--out", "unused", "--set", "model.widht=64"],
        &["did you mean `model.width`"],
    );
}

const SUBCOMMANDS: [&str; 11] = [
    "simulate", "theory", "compare", "merge", "sweep", "run", "bench", "plot", "train", "hparams",
    "transfer",
];

#[test]
fn every_flag_of_every_subcommand_has_help() {
    for c in SUBCOMMANDS {
        let (code, out, err) = sigprop(&[c, "--help"]);
        assert_eq!(code, 0, "{c} --help: {err}");
        let lines: Vec<&str> = out.lines().collect();
        let mut in_list = false;
        for (k, l) in lines.iter().enumerate() {
            if l.starts_with("Options:") || l.starts_with("Arguments:") {
                in_list = true;
                continue;
            }
            let t = l.trim_start();
            if !in_list || !(t.starts_with('-') || t.starts_with('<') || t.starts_with('[')) {
                continue;
            }
            // `  --flag <V>   Help` on one line, or the help on the following, deeper line.
            let same_line = t
                .split_once("  ")
                .is_some_and(|(_, h)| !h.trim().is_empty());
            let next_line = lines.get(k + 1).is_some_and(|n| {
                let nt = n.trim_start();
                n.len() - nt.len() > 6 && !nt.is_empty() && !nt.starts_with('-')
            });
            assert!(
                same_line || next_line,
                "`sigprop {c}`: no help for `{}`",
                t.trim()
            );
        }
    }
}

#[test]
fn no_user_facing_text_points_at_the_design_spec_or_issues() {
    let mut texts = vec![("sigprop --help".to_string(), sigprop(&["--help"]).1)];
    for c in SUBCOMMANDS {
        texts.push((format!("sigprop {c} --help"), sigprop(&[c, "--help"]).1));
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    texts.push(("README.md".into(), readme));
    // String literals in the sources reach users through errors and notes.
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let code: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| l.split(" // ").next().unwrap_or(l))
                    .collect::<Vec<_>>()
                    .join("\n");
                texts.push((p.display().to_string(), code));
            }
        }
    }
    for (name, text) in &texts {
        for bad in ["SPEC", "issue 7", "issue 12"] {
            assert!(!text.contains(bad), "{name} mentions `{bad}`");
        }
        // "§3" and the like are the design document's sections; the paper's are §II etc.
        for (k, _) in text.match_indices('§') {
            let next = text[k + '§'.len_utf8()..].chars().next().unwrap_or(' ');
            assert!(
                !next.is_ascii_digit() || name.ends_with(".rs"),
                "{name} refers to a numbered section: {}",
                &text[k..(k + 12).min(text.len())]
            );
        }
    }
}

#[test]
fn configuration_reference_lists_every_key_with_its_default() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let mut documented = std::collections::BTreeMap::new();
    for l in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = l.split(" | ").collect();
        let key = cells[0].trim_start_matches("| `").trim_end_matches('`');
        documented.insert(key.to_string(), cells[1].trim().to_string());
    }
    for k in sigprop::config::schema::KEYS.iter() {
        let cell = documented
            .remove(k.name)
            .unwrap_or_else(|| panic!("docs/configuration.md lacks `{}`", k.name));
        match &k.default {
            None => assert_eq!(
                cell, "—",
                "`{}` has no default but the doc says {cell}",
                k.name
            ),
            Some(d) => {
                let v: toml::Table = format!("v = {cell}")
                    .parse()
                    .unwrap_or_else(|e| panic!("`{}`: default `{cell}` is not TOML: {e}", k.name));
                assert_eq!(
                    &v["v"], d,
                    "`{}`: docs/configuration.md says {cell}, the program {}",
                    k.name, d
                );
            }
        }
    }
    assert!(
        documented.is_empty(),
        "docs/configuration.md lists keys the program does not know: {:?}",
        documented.keys()
    );
}

#[test]
fn experiment_names_cannot_leave_results() {
    let dir = tmp("edges-name");
    for name in ["../escape", "/tmp/abs", "a/b", ".."] {
        let f = dir.join("bad.toml");
        std::fs::write(
            &f,
            format!("name = \"{name}\"\nset = [\"model.width=16\"]\nsamples = 2\n"),
        )
        .unwrap();
        refuses(
            &["run", f.to_str().unwrap()],
            &["name", "plain folder name"],
        );
    }
    assert!(!dir.join("escape").exists() && !dir.parent().unwrap().join("escape").exists());
}

#[test]
fn a_multi_width_hparams_file_is_refused_by_train_with_its_widths() {
    let dir = tmp("edges-hp");
    let (code, table, err) = sigprop(&["hparams", "--format", "json", "--widths", "128,256"]);
    assert_eq!(code, 0, "{err}");
    let f = dir.join("h.json");
    std::fs::write(&f, table).unwrap();
    refuses(
        &[
            "train",
            "--out",
            dir.to_str().unwrap(),
            "--hparams",
            f.to_str().unwrap(),
        ],
        &["2 tables", "128, 256", "one width"],
    );
}

#[test]
fn class_token_combinations_are_refused_naming_the_key() {
    refuses_simulate(
        "edges-class-head",
        &["--set", "model.head=class"],
        &["model.head", "model.class_token = true"],
    );
    refuses_simulate(
        "edges-class-embedding",
        &[
            "--set",
            "model.class_token=true",
            "--set",
            "model.stem=embedding",
            "--set",
            "inputs.kind=tokens",
        ],
        &["model.class_token", "model.stem = \"dense\""],
    );
}
