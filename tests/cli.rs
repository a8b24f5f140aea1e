//! The command line as a user meets it: bad input gets one line naming the field and what
//! is allowed, and a non-zero exit; shards merge into the unsharded statistics.

mod common;
use common::{sigprop, tmp};

use std::process::Command;

/// Runs a bad simulate and checks the error: non-zero, one line, no panic, mentions `needles`.
fn rejects(args: &[&str], needles: &[&str]) {
    let out = tmp("rejects");
    let mut all = vec!["simulate", "--samples", "2", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, _, err) = sigprop(&all);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{args:?}: expected one line, got:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` missing from: {err}");
    }
}

#[test]
fn bad_configurations_get_one_line_errors() {
    rejects(
        &["--set", "model.width=100", "--set", "model.heads=8"],
        &["model.width", "model.heads", "divisible"],
    );
    rejects(&["--set", "model.width=0"], &["model.width", "≥ 1"]);
    rejects(&["--set", "model.layers=-3"], &["model.layers"]);
    rejects(
        &["--set", "model.variances.q=-0.5"],
        &["model.variances.q", "≥ 0"],
    );
    rejects(
        &["--set", "model.variances.w=nan"],
        &["model.variances.w", "finite"],
    );
    rejects(&["--set", "model.xi=inf"], &["model.xi", "finite"]);
    rejects(
        &["--set", "model.activation=sigmoid"],
        &["model.activation", "relu", "gelu"],
    );
    rejects(
        &["--set", "model.norm=batch"],
        &["model.norm", "pre", "post"],
    );
    rejects(
        &["--set", "model.head=cls"],
        &["model.head", "pooled", "tied"],
    );
    rejects(
        &["--set", "model.pattern=AMX"],
        &["model.pattern", "X", "A", "M"],
    );
    rejects(
        &["--set", "model.widht=64"],
        &["model.widht", "model.width"],
    );
    rejects(
        &["--set", "inputs.kind=tokens"],
        &["inputs.kind", "embedding"],
    );
    rejects(&["--shard", "4/4"], &["--shard"]);
}

#[test]
fn unknown_toml_key_names_the_closest_valid_key() {
    let d = tmp("toml_key");
    let c = d.join("c.toml");
    std::fs::write(&c, "[model]\nwidth = 64\nheads = 4\nactivaton = \"relu\"\n").unwrap();
    rejects(
        &["--config", c.to_str().unwrap()],
        &["model.activaton", "model.activation"],
    );
    std::fs::write(&c, "[model\nwidth = 64\n").unwrap();
    rejects(&["--config", c.to_str().unwrap()], &["c.toml"]);
    rejects(
        &["--config", d.join("missing.toml").to_str().unwrap()],
        &["missing.toml"],
    );
}

#[test]
fn bad_inputs_files_are_reported_with_their_line() {
    let d = tmp("inputs_file");
    let f = d.join("probe.csv");
    rejects(&["--inputs", f.to_str().unwrap()], &["probe.csv"]);
    std::fs::write(&f, "sequence,token,x0,x1\n0,0,1.0,2.0\n0,1,0.5,oops\n").unwrap();
    rejects(&["--inputs", f.to_str().unwrap()], &["line 3", "oops"]);
    std::fs::write(&f, "sequence,token,x0,x1\n0,0,1.0,2.0\n0,1,0.5\n").unwrap();
    rejects(&["--inputs", f.to_str().unwrap()], &["line 3"]);
    std::fs::write(&f, "seq,token,x0\n0,0,1\n").unwrap();
    rejects(
        &["--inputs", f.to_str().unwrap()],
        &["header", "sequence,token,x0"],
    );
    // The dense stem's input dimension must match a given inputs.dim.
    std::fs::write(&f, "sequence,token,x0,x1\n0,0,1.0,2.0\n0,1,0.5,0.1\n").unwrap();
    rejects(
        &["--inputs", f.to_str().unwrap(), "--set", "inputs.dim=768"],
        &["inputs.dim", "2 input columns"],
    );
}

#[test]
fn inputs_file_round_trips_and_shards_merge() {
    let d = tmp("shards");
    let run = |extra: &[&str], out: &str| {
        let o = d.join(out);
        let mut args = vec![
            "simulate",
            "--set",
            "model.width=32",
            "--set",
            "model.heads=4",
            "--set",
            "model.layers=1",
            "--set",
            "inputs.tokens=3",
            "--set",
            "inputs.dim=8",
            "--samples",
            "60",
            "--threads",
            "2",
            "--out",
            o.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = sigprop(&args);
        assert_eq!(code, 0, "{err}");
        std::fs::read_to_string(o.join("stats.csv")).unwrap()
    };
    let whole = run(&[], "whole");
    run(&["--shard", "0/3"], "s0");
    run(&["--shard", "1/3"], "s1");
    run(&["--shard", "2/3"], "s2");
    let m = d.join("merged");
    let (code, _, err) = sigprop(&[
        "merge",
        d.join("s2/stats.csv").to_str().unwrap(),
        d.join("s0/stats.csv").to_str().unwrap(),
        d.join("s1/stats.csv").to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(m.join("stats.csv")).unwrap(),
        whole,
        "merged shards differ from the whole run"
    );
    // Overlapping shards are refused.
    let (code, _, err) = sigprop(&[
        "merge",
        d.join("s0").to_str().unwrap(),
        d.join("s0").to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("overlap"), "{err}");
    // The written inputs.csv and config.toml reproduce the run.
    let again = d.join("again");
    let (code, _, err) = sigprop(&[
        "simulate",
        "--config",
        d.join("whole/config.toml").to_str().unwrap(),
        "--inputs",
        d.join("whole/inputs.csv").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let a = std::fs::read_to_string(again.join("stats.csv")).unwrap();
    assert_eq!(a, whole, "rerun from config.toml + inputs.csv differs");
}

/// Ctrl-C checkpoints the finished samples; `--resume` ends in the same stats.csv, byte for
/// byte, as an uninterrupted run.
#[test]
fn interrupt_and_resume_equal_an_uninterrupted_run() {
    let d = tmp("interrupt");
    let args = |out: &str| -> Vec<String> {
        [
            "simulate",
            "--set",
            "model.width=16",
            "--set",
            "model.heads=2",
            "--set",
            "model.layers=1",
            "--set",
            "inputs.tokens=2",
            "--set",
            "inputs.dim=4",
            "--set",
            "model.n_out=4",
            "--samples",
            "40000",
            "--threads",
            "2",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([d.join(out).display().to_string()])
        .collect()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(args("cut"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sigprop");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    let interrupted = out.status.code() == Some(130);
    eprintln!("interrupted: {interrupted}");
    if interrupted {
        assert!(
            err.contains("--resume"),
            "the interruption should say how to resume: {err}"
        );
        let (code, _, err) = sigprop(&["simulate", "--resume", d.join("cut").to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("resuming"), "{err}");
    } else {
        // The run finished before the signal arrived; the comparison below still holds.
        assert_eq!(out.status.code(), Some(0), "{err}");
    }
    let whole_args = args("whole");
    let refs: Vec<&str> = whole_args.iter().map(String::as_str).collect();
    let (code, _, err) = sigprop(&refs);
    assert_eq!(code, 0, "{err}");
    let a = std::fs::read_to_string(d.join("cut/stats.csv")).unwrap();
    let b = std::fs::read_to_string(d.join("whole/stats.csv")).unwrap();
    assert_eq!(
        a, b,
        "resumed run differs from the uninterrupted one (interrupted: {interrupted})"
    );
}
