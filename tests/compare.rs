//! `sigprop compare` on a case with a closed form: the stem kernel G¹ = C_stem x·x/n_in
//! + C_PE δ_{tt'} (1.41), computed here independently from the written inputs.csv.

mod common;
use common::sigprop;

use std::path::PathBuf;

use sigprop::stats::Row;
use sigprop::stats::csv::{read, write};

fn theory_rows(dir: &std::path::Path, scale: f64) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("inputs.csv")).unwrap();
    let x: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(2).map(|v| v.parse().unwrap()).collect())
        .collect();
    let t = 3usize;
    let mut rows = Vec::new();
    for i in 0..x.len() {
        for j in i..x.len() {
            let g0: f64 =
                x[i].iter().zip(&x[j]).map(|(a, b)| a * b).sum::<f64>() / x[i].len() as f64;
            let v = scale * (1.5 * g0 + if i % t == j % t { 0.25 } else { 0.0 });
            rows.push(Row {
                source: "theory".into(),
                config: "stem".into(),
                width: 48,
                heads: 4,
                layer: 1,
                block: "stem".into(),
                site: "resid".into(),
                observable: "kernel".into(),
                i: i as i64,
                j: j as i64,
                value: v,
                stderr: 0.0,
                samples: 0,
            });
        }
    }
    rows
}

#[test]
fn compare_passes_the_right_theory_and_fails_a_wrong_one() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compare");
    let _ = std::fs::remove_dir_all(&d);
    let mc = d.join("mc");
    let (code, _, err) = sigprop(&[
        "simulate",
        "--set",
        "run.name=stem",
        "--set",
        "model.width=48",
        "--set",
        "model.heads=4",
        "--set",
        "model.layers=1",
        "--set",
        "inputs.sequences=2",
        "--set",
        "inputs.tokens=3",
        "--set",
        "inputs.dim=10",
        "--set",
        "model.variances.stem=1.5",
        "--set",
        "model.variances.pe=0.25",
        "--set",
        "run.backward=none",
        "--samples",
        "2000",
        "--out",
        mc.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for (scale, expect_all_pass) in [(1.0, true), (1.1, false)] {
        let th = d.join(format!("theory{scale}"));
        std::fs::create_dir_all(&th).unwrap();
        write(&th.join("stats.csv"), &theory_rows(&mc, scale)).unwrap();
        let out = d.join(format!("cmp{scale}"));
        let (code, _, err) = sigprop(&[
            "compare",
            mc.join("stats.csv").to_str().unwrap(),
            th.join("stats.csv").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let text = std::fs::read_to_string(out.join("compare.csv")).unwrap();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 21, "6 tokens give 21 kernel pairs");
        let passes = rows.iter().filter(|l| l.ends_with(",true,2000")).count();
        if expect_all_pass {
            assert_eq!(passes, 21, "the exact stem kernel should pass:\n{text}");
        } else {
            assert!(
                passes < 10,
                "a 10% wrong theory should fail most rows, {passes} passed"
            );
        }
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            report.contains("rows joined") && report.contains("Worst disagreements"),
            "{report}"
        );
    }
    // Row counts of the input survive the round trip through the reader.
    assert!(read(&mc.join("stats.csv")).unwrap().len() > 21);
}
