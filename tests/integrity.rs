//! Results a paper can trust: a run's results are reused (resume, merge, sweep, compare) only
//! when its fingerprint matches, signals checkpoint, output folders of other runs are not
//! overwritten, and corrupt binary files are errors naming the file, never panics.

mod common;
use common::{sigprop, tmp};

use std::path::Path;
use std::process::Command;

/// A small model: fast enough to run a few hundred samples in a blink.
const SMALL: &[&str] = &[
    "--set",
    "model.width=16",
    "--set",
    "model.heads=2",
    "--set",
    "model.layers=1",
    "--set",
    "inputs.tokens=3",
    "--set",
    "inputs.dim=4",
    "--set",
    "model.n_out=4",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `simulate` with the small model, `extra` flags and `--out out`.
fn simulate(extra: &[&str], out: &Path) -> (i32, String, String) {
    let mut a = vec!["simulate"];
    a.extend_from_slice(SMALL);
    a.extend_from_slice(extra);
    a.extend_from_slice(&["--out", s(out)]);
    sigprop(&a)
}

/// A failure: non-zero, no panic, one error line (after a sweep's progress lines), which
/// mentions every needle.
fn refused(res: (i32, String, String), needles: &[&str], what: &str) {
    let (code, _, err) = res;
    assert_ne!(code, 0, "{what}: should fail: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{what}: one error line expected:\n{err}");
    assert!(
        err.trim_end().ends_with(errors[0]),
        "{what}: the error is not last:\n{err}"
    );
    for n in needles {
        assert!(errors[0].contains(n), "{what}: `{n}` missing from: {err}");
    }
}

fn ok(res: (i32, String, String), what: &str) -> String {
    assert_eq!(res.0, 0, "{what}: {}", res.2);
    res.2
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Starts a long run, sends `signal` once samples are being saved, and waits.
fn interrupted_run(extra: &[&str], out: &Path, signal: &str, cwd: &Path) -> i32 {
    let mut a: Vec<&str> = vec!["simulate"];
    a.extend_from_slice(SMALL);
    a.extend_from_slice(extra);
    a.extend_from_slice(&[
        "--samples",
        "150000",
        "--checkpoint-secs",
        "0.1",
        "--out",
        s(out),
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(&a)
        .current_dir(cwd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sigprop");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let res = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&res.stderr);
    let code = res.status.code().unwrap_or(-1);
    assert!(code == 130 || code == 0, "{signal}: exit {code}: {err}");
    if code == 130 {
        assert!(err.contains("--resume"), "{signal}: no resume hint: {err}");
    }
    code
}

#[test]
fn resume_refuses_every_flag_that_would_change_the_run() {
    let d = tmp("integrity-resume-flags");
    let run = d.join("run");
    ok(simulate(&["--samples", "64"], &run), "first run");
    let other = d.join("other.toml");
    std::fs::write(&other, "[model]\nwidth = 32\n").unwrap();
    let probe = d.join("probe.csv");
    std::fs::write(&probe, read(&run.join("inputs.csv"))).unwrap();
    let elsewhere = d.join("elsewhere");
    for (flags, name) in [
        (vec!["--set", "model.width=32"], "--set"),
        (vec!["--seed", "7"], "--seed"),
        (vec!["--config", s(&other)], "--config"),
        (vec!["--inputs", s(&probe)], "--inputs"),
        (vec!["--shard", "0/2"], "--shard"),
        (vec!["--out", s(&elsewhere)], "--out"),
    ] {
        let mut a = vec!["simulate", "--resume", s(&run)];
        a.extend_from_slice(&flags);
        refused(sigprop(&a), &[name, "--resume"], name);
    }
    assert!(
        !d.join("elsewhere").exists(),
        "--resume --out wrote a folder"
    );
    // Growing the ensemble is allowed, and equals a run of that size from the start.
    ok(
        sigprop(&["simulate", "--resume", s(&run), "--samples", "128"]),
        "grow",
    );
    ok(simulate(&["--samples", "128"], &d.join("whole")), "whole");
    assert_eq!(
        read(&run.join("stats.csv")),
        read(&d.join("whole/stats.csv"))
    );
    assert!(read(&run.join("config.toml")).contains("samples = 128"));
    // Shrinking is not.
    refused(
        sigprop(&["simulate", "--resume", s(&run), "--samples", "100"]),
        &["--samples", "grow"],
        "shrink",
    );
}

#[test]
fn resume_refuses_an_edited_config() {
    let d = tmp("integrity-edited");
    let run = d.join("run");
    ok(simulate(&["--samples", "64"], &run), "first run");
    let cfg = read(&run.join("config.toml"));
    assert!(cfg.contains("\nw = 0.4\n"), "{cfg}");
    std::fs::write(
        run.join("config.toml"),
        cfg.replace("\nw = 0.4\n", "\nw = 4.0\n"),
    )
    .unwrap();
    refused(
        sigprop(&["simulate", "--resume", s(&run), "--samples", "128"]),
        &["config.toml", "model.variances.w", "0.4", "4.0"],
        "edited config.toml",
    );
    // The same edit on a finished run: re-running the command does not reuse it either.
    refused(
        simulate(&["--samples", "64"], &run),
        &["model.variances.w", "--force"],
        "same command after the edit",
    );
}

#[test]
fn merge_refuses_shards_of_different_probes_and_reports_gaps() {
    let d = tmp("integrity-merge");
    let probe = d.join("probe.csv");
    let write_probe = |scale: f64| {
        let mut t = String::from("sequence,token,x0,x1,x2,x3\n");
        for tok in 0..3 {
            t.push_str(&format!(
                "0,{tok},{},{},0.5,-1\n",
                scale,
                tok as f64 * scale
            ));
        }
        std::fs::write(&probe, t).unwrap();
    };
    write_probe(1.0);
    let shard = |i: &str, out: &str| {
        simulate(
            &["--inputs", s(&probe), "--samples", "120", "--shard", i],
            &d.join(out),
        )
    };
    ok(shard("0/4", "s0"), "s0");
    ok(shard("2/4", "s2"), "s2");
    write_probe(2.0);
    ok(shard("1/4", "s1"), "s1 on another probe");
    let (s0, s1, s2, m) = (d.join("s0"), d.join("s1"), d.join("s2"), d.join("m"));
    refused(
        sigprop(&["merge", s(&s0), s(&s1), "--out", s(&m)]),
        &["probe inputs", "same run"],
        "shards of different probes",
    );
    // Shards 0 and 2 only: the merge says what is missing and records the true count.
    let err = ok(
        sigprop(&["merge", s(&s0), s(&s2), "--out", s(&m)]),
        "gappy merge",
    );
    assert!(err.contains("30..60") && err.contains("90..120"), "{err}");
    assert!(read(&d.join("m/config.toml")).contains("samples = 60"));
    let stats = read(&d.join("m/stats.csv"));
    assert!(stats.lines().skip(1).all(|l| l.ends_with(",60")), "{stats}");
    // A gappy merge cannot be resumed as if it were whole.
    refused(
        sigprop(&["simulate", "--resume", s(&d.join("m"))]),
        &["missing"],
        "resume of a gappy merge",
    );
}

#[test]
fn sigterm_checkpoints_and_a_relative_probe_resumes_from_another_directory() {
    let d = tmp("integrity-sigterm");
    std::fs::create_dir_all(d.join("elsewhere")).unwrap();
    // A relative --inputs path, run from d.
    let whole = d.join("whole");
    ok(
        simulate(&["--samples", "64"], &d.join("probe-src")),
        "probe source",
    );
    std::fs::copy(d.join("probe-src/inputs.csv"), d.join("probe.csv")).unwrap();
    let code = interrupted_run(&["--inputs", "probe.csv"], Path::new("cut"), "-TERM", &d);
    assert_eq!(code, 130, "SIGTERM should interrupt a 150000-sample run");
    // Resumed from another folder: the probe comes from cut/inputs.csv, not ./probe.csv.
    let res = Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(["simulate", "--resume", "../cut"])
        .current_dir(d.join("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(
        res.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut a: Vec<&str> = vec!["simulate"];
    a.extend_from_slice(SMALL);
    a.extend_from_slice(&[
        "--inputs",
        "probe.csv",
        "--samples",
        "150000",
        "--out",
        s(&whole),
    ]);
    let res = Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(&a)
        .current_dir(&d)
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(0));
    assert_eq!(
        read(&d.join("cut/stats.csv")),
        read(&whole.join("stats.csv")),
        "SIGTERM + resume differs from the uninterrupted run"
    );
}

#[test]
fn rerunning_a_command_resumes_or_is_a_no_op_and_other_results_need_force() {
    let d = tmp("integrity-rerun");
    let run = d.join("run");
    let code = interrupted_run(&[], &run, "-INT", &d);
    assert_eq!(code, 130);
    // The same command again continues the interrupted run …
    let mut a: Vec<&str> = SMALL.to_vec();
    a.extend_from_slice(&["--samples", "150000", "--checkpoint-secs", "0.1"]);
    let err = ok(simulate(&a, &run), "rerun");
    assert!(err.contains("resuming"), "{err}");
    // … and once finished is a no-op that says so.
    let err = ok(simulate(&a, &run), "rerun of a finished run");
    assert!(err.contains("nothing to do"), "{err}");
    // Another configuration into the same folder is refused, naming the difference …
    let mut b = a.clone();
    b.extend_from_slice(&["--set", "model.variances.v=0.9"]);
    refused(
        simulate(&b, &run),
        &["model.variances.v", "--force"],
        "other run",
    );
    // … as is a folder with somebody else's files.
    let foreign = d.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    refused(
        simulate(&["--samples", "8"], &foreign),
        &["notes.txt", "--force"],
        "foreign",
    );
    // --force overwrites.
    b.push("--force");
    let at = b.iter().position(|x| *x == "150000").unwrap();
    b[at] = "32";
    ok(simulate(&b, &run), "forced");
    assert!(read(&run.join("config.toml")).contains("v = 0.9"));
}

#[test]
fn sweep_never_reuses_a_point_or_theory_of_another_configuration() {
    let d = tmp("integrity-sweep");
    let out = d.join("sw");
    let sweep = |extra: &[&str]| {
        let mut a = vec!["sweep", "--theory", "--samples", "16"];
        a.extend_from_slice(SMALL);
        a.extend_from_slice(&[
            "--set",
            "model.width=16,32",
            "--set",
            "theory.logit_samples=200",
        ]);
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--out", s(&out)]);
        sigprop(&a)
    };
    ok(sweep(&[]), "first sweep");
    let err = ok(sweep(&[]), "same sweep again");
    assert!(err.contains("nothing to do"), "{err}");
    refused(
        sweep(&["--set", "model.variances.w=3.0"]),
        &["model.variances.w", "--force"],
        "changed key",
    );
    ok(
        sweep(&["--set", "model.variances.w=3.0", "--force"]),
        "forced",
    );
    for w in ["16", "32"] {
        let t = read(&out.join(format!("width={w}/theory/config.toml")));
        assert!(t.contains("\nw = 3.0\n"), "stale theory at width {w}");
        let m = read(&out.join(format!("width={w}/config.toml")));
        assert!(m.contains("\nw = 3.0\n"), "stale Monte Carlo at width {w}");
    }
}

#[test]
fn compare_refuses_two_different_configurations() {
    let d = tmp("integrity-compare");
    ok(simulate(&["--samples", "16"], &d.join("a")), "a");
    let mut t = vec!["theory"];
    t.extend_from_slice(SMALL);
    t.extend_from_slice(&[
        "--set",
        "model.variances.u=0.9",
        "--set",
        "theory.logit_samples=200",
    ]);
    let b_dir = d.join("b");
    t.extend_from_slice(&["--out", s(&b_dir)]);
    ok(sigprop(&t), "b");
    let (a_csv, b_csv, o) = (d.join("a/stats.csv"), d.join("b/stats.csv"), d.join("cmp"));
    let cmp = |extra: &[&str]| {
        let mut a = vec!["compare", s(&a_csv), s(&b_csv), "--out", s(&o)];
        a.extend_from_slice(extra);
        sigprop(&a)
    };
    refused(
        cmp(&[]),
        &["model.variances.u", "--force"],
        "different runs",
    );
    ok(cmp(&["--force"]), "forced compare");
}

/// Every truncation and a thousand random bit flips of a real moments.bin and a real trainer
/// checkpoint: always an error naming the file, never a panic or a wrong load.
#[test]
fn binary_readers_survive_truncation_and_bit_flips() {
    let d = tmp("integrity-binary");
    ok(simulate(&["--samples", "8"], &d.join("run")), "run");
    let moments = std::fs::read(d.join("run/moments.bin")).unwrap();
    let probe = d.join("probe.bin");
    let check = |bytes: &[u8], what: &str, load: &mut dyn FnMut(&Path) -> Result<(), String>| {
        std::fs::write(&probe, bytes).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&probe))) {
            Ok(Err(msg)) => assert!(
                msg.contains("probe.bin"),
                "{what}: error without the file: {msg}"
            ),
            Ok(Ok(())) => panic!("{what}: a damaged file loaded"),
            Err(_) => panic!("{what}: panicked"),
        }
    };
    let mut load_moments = |p: &Path| {
        sigprop::mc::moments::load(p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(load_moments(&d.join("run/moments.bin")).is_ok());
    // Every truncation, through the same checks as the file reader (in memory: writing 65k
    // files of up to 65 kB would take minutes), and a few hundred through the file reader.
    let name = Path::new("probe.bin");
    for n in 0..moments.len() {
        match std::panic::catch_unwind(|| sigprop::mc::moments::decode(moments[..n].to_vec(), name))
        {
            Ok(Err(e)) => assert!(e.to_string().contains("probe.bin"), "truncated to {n}: {e}"),
            Ok(Ok(_)) => panic!("moments truncated to {n} bytes loaded"),
            Err(_) => panic!("moments truncated to {n} bytes: panic"),
        }
    }
    for n in (0..moments.len()).step_by(1 + moments.len() / 300) {
        check(
            &moments[..n],
            &format!("moments truncated to {n}"),
            &mut load_moments,
        );
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..1000 {
        let mut b = moments.clone();
        let bit = (next() % (8 * b.len() as u64)) as usize;
        b[bit / 8] ^= 1 << (bit % 8);
        check(&b, &format!("moments bit {bit} flipped"), &mut load_moments);
    }
    // The `next` field zeroed (the double-counting case): refused.
    refused(
        {
            let run = d.join("run");
            let mut b = moments.clone();
            // Header 20 bytes, hash 8, pairs text (8 + len), slots, first, next.
            let text = u64::from_le_bytes(b[28..36].try_into().unwrap()) as usize;
            let at = 36 + text + 16;
            b[at..at + 8].fill(0);
            std::fs::write(run.join("moments.bin"), &b).unwrap();
            sigprop(&["simulate", "--resume", s(&run)])
        },
        &["moments.bin"],
        "zeroed next",
    );

    // A trainer checkpoint of a tiny model.
    let t = d.join("train");
    ok(
        sigprop(&[
            "train",
            "--set",
            "model.width=8",
            "--set",
            "model.heads=2",
            "--set",
            "model.layers=1",
            "--set",
            "train.steps=2",
            "--set",
            "train.vocab=4",
            "--set",
            "train.tokens=4",
            "--set",
            "train.batch=2",
            "--set",
            "train.eval_every=1",
            "--set",
            "train.checkpoint_every=1",
            "--out",
            s(&t),
        ]),
        "train",
    );
    let ckpt = std::fs::read(t.join("checkpoint.bin")).unwrap();
    let cfg = sigprop::config::ConfigBuilder::new()
        .file(&t.join("config.toml"))
        .unwrap()
        .build()
        .unwrap();
    let mut tr: sigprop::train::Trainer = sigprop::train::Trainer::new(&cfg, None).unwrap();
    assert!(tr.load(&t.join("checkpoint.bin")).is_ok());
    let mut restore = |b: &[u8], what: &str| {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tr.restore(b.to_vec(), name)
        }));
        match res {
            Ok(Err(e)) => assert!(e.to_string().contains("probe.bin"), "{what}: {e}"),
            Ok(Ok(())) => panic!("{what}: a damaged checkpoint loaded"),
            Err(_) => panic!("{what}: panicked"),
        }
    };
    for n in 0..ckpt.len() {
        restore(&ckpt[..n], &format!("checkpoint truncated to {n}"));
    }
    for _ in 0..1000 {
        let mut b = ckpt.clone();
        let bit = (next() % (8 * b.len() as u64)) as usize;
        b[bit / 8] ^= 1 << (bit % 8);
        restore(&b, &format!("checkpoint bit {bit} flipped"));
    }
    // And through the file reader and the command line.
    let mut load_ckpt = |p: &Path| tr.load(p).map_err(|e| e.to_string());
    for n in (0..ckpt.len()).step_by(1 + ckpt.len() / 200) {
        check(
            &ckpt[..n],
            &format!("checkpoint truncated to {n}"),
            &mut load_ckpt,
        );
    }
    let mut b = ckpt.clone();
    b[ckpt.len() / 2] ^= 4;
    std::fs::write(t.join("checkpoint.bin"), &b).unwrap();
    refused(
        sigprop(&["train", "--resume", s(&t)]),
        &["checkpoint.bin", "checksum"],
        "train --resume with a flipped bit",
    );
}
