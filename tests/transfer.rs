//! The shipped data tasks (digits, charlm) and the learning-rate transfer grid: loaders read
//! what the files hold, splits are fixed, and a finished grid point is never re-run.

use std::path::PathBuf;

use sigprop::config::ConfigBuilder;
use sigprop::hparams::Family;
use sigprop::model::init;
use sigprop::train::data::{self, CharLm, Digits};
use sigprop::train::tasks::{Split, Task};
use sigprop::train::transfer::{self, Grid, parse_lrs};

#[test]
fn digits_loader_reads_1797_images_with_labels_0_to_9_and_pixels_0_to_16() {
    let d = data::digits().unwrap();
    assert_eq!(d.pixels.len(), data::DIGITS_N);
    assert_eq!(d.labels.len(), data::DIGITS_N);
    let mut counts = [0usize; 10];
    for &l in &d.labels {
        counts[usize::from(l)] += 1;
    }
    // Every class is present (the UCI test set has 174–183 of each).
    assert!(
        counts.iter().all(|&c| (170..=190).contains(&c)),
        "{counts:?}"
    );
    let max = d.pixels.iter().flat_map(|p| p.iter()).max().copied();
    let min = d.pixels.iter().flat_map(|p| p.iter()).min().copied();
    assert_eq!((min, max), (Some(0), Some(16)));
    // The first row of the file, as scikit-learn ships it: a 0.
    assert_eq!(d.labels[0], 0);
    assert_eq!(&d.pixels[0][..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
}

#[test]
fn digits_patches_tile_the_image_and_the_split_is_the_last_fifth() {
    let t = Digits::new(4).unwrap();
    assert_eq!((t.tokens(), t.input_dim(), t.classes()), (4, 16, 10));
    assert_eq!(t.split_index(), 1797 - 359);
    let d = data::digits().unwrap();
    let p = t.patches(0);
    // Patch 1 is the top-right 4×4 block; its first row is pixels 4..8 of image row 0.
    for j in 0..4 {
        assert_eq!(p[[1, j]], f64::from(d.pixels[0][4 + j]) / 8.0 - 1.0);
    }
    let t2 = Digits::new(2).unwrap();
    assert_eq!((t2.tokens(), t2.input_dim()), (16, 4));
    assert!(Digits::new(3).is_err());
    // Evaluation images all come from the held-out end: their patch matrices match one of
    // the last 359 images.
    let b = t.sample(&mut init::stream(7, 0), 8, Split::Eval);
    let x = b.probe.x.unwrap();
    for s in 0..8 {
        let rows = x.slice(ndarray::s![s * 4..(s + 1) * 4, ..]).to_owned();
        let found = (t.split_index()..1797).any(|i| t.patches(i) == rows);
        assert!(found, "eval image {s} is not in the held-out part");
    }
}

#[test]
fn charlm_vocabulary_and_held_out_split_are_deterministic() {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/hamlet.txt"))
            .unwrap();
    let a = CharLm::new(32).unwrap();
    let b = CharLm::new(64).unwrap();
    // The vocabulary is the sorted character set of the whole text, whatever T is.
    assert_eq!(a.alphabet, b.alphabet);
    let mut want: Vec<char> = text.chars().collect();
    want.sort_unstable();
    want.dedup();
    assert_eq!(a.alphabet, want);
    assert_eq!(a.vocab(), 64);
    // The held-out part is exactly the last 10 % of the characters.
    let n = text.chars().count();
    assert_eq!(a.len(), n);
    assert_eq!(a.split_index(), n - (0.1 * n as f64).round() as usize);
    let tail: String = text.chars().skip(a.split_index()).collect();
    assert_eq!(a.held_out_text(), tail);
    assert_eq!(a.held_out_text(), b.held_out_text());
    // An eval window and its targets are held-out text shifted by one.
    let batch = a.sample(&mut init::stream(3, 0), 4, Split::Eval);
    let ids = batch.probe.ids.unwrap();
    for s in 0..4 {
        let w: String = ids[s * 32..(s + 1) * 32]
            .iter()
            .map(|&i| a.alphabet[i])
            .collect();
        assert!(
            tail.contains(&w),
            "eval window {s} `{w}` is not held-out text"
        );
        assert_eq!(batch.targets[s * 32], Some(ids[s * 32 + 1]));
    }
    // The same stream gives the same batch.
    let again = a.sample(&mut init::stream(3, 0), 4, Split::Eval);
    assert_eq!(again.probe.ids.unwrap(), ids);
}

#[test]
fn lr_grid_parses_powers_ranges_and_numbers() {
    assert_eq!(parse_lrs("2^-3..2^-1").unwrap(), vec![0.125, 0.25, 0.5]);
    assert_eq!(parse_lrs("0.01, 2^-2,0.01").unwrap(), vec![0.01, 0.25]);
    for bad in ["", "2^-1..2^-3", "x", "-1", "2^a..2^1"] {
        assert!(parse_lrs(bad).is_err(), "`{bad}` should be refused");
    }
}

fn tiny_builder() -> anyhow::Result<ConfigBuilder> {
    let mut b = ConfigBuilder::new();
    for s in [
        "train.task=digits",
        "model.heads=2",
        "model.layers=1",
        "model.mlp_mult=2",
        "train.batch=8",
        "train.steps=4",
        "train.warmup=1",
        "train.eval_batches=1",
    ] {
        b = b.set(s)?;
    }
    Ok(b)
}

#[test]
fn tiny_transfer_grid_writes_complete_csvs_and_a_second_call_reruns_nothing() {
    let out = std::env::temp_dir().join(format!("sigprop-transfer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let grid = Grid {
        families: vec![Family::Scaling(1.0)],
        widths: vec![16, 32],
        // 2^6 = 64 as every group's AdamW rate makes the run blow up: the diverged row
        // must be kept, not dropped.
        lrs: vec![2f64.powi(-6), 64.0],
        weight_decay: 0.0,
        threads: 2,
        out: out.clone(),
    };
    let s = transfer::run(&tiny_builder, &grid, &|_, _, _| {}).unwrap();
    assert_eq!((s.ran, s.skipped), (4, 0));
    let csv = std::fs::read_to_string(out.join("transfer.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], transfer::CSV_HEADER);
    assert_eq!(lines.len(), 5, "{csv}");
    let rows = transfer::read_csv(&out.join("transfer.csv")).unwrap();
    for r in &rows {
        assert_eq!(r.family, "mup");
        if r.lr < 1.0 {
            assert!(!r.diverged && r.final_eval_loss.is_finite(), "{r:?}");
            assert_eq!(r.steps, 4);
        }
    }
    let drift = std::fs::read_to_string(out.join("drift.csv")).unwrap();
    assert_eq!(drift.lines().count(), 3, "{drift}");
    assert!(
        drift.lines().nth(1).unwrap().starts_with("mup,16,"),
        "{drift}"
    );
    assert!(out.join("drift.md").is_file());
    // Resuming: every point is in the CSV, so nothing trains and the CSV is unchanged.
    let again = transfer::run(&tiny_builder, &grid, &|_, _, _| {
        panic!("a finished point was re-run")
    })
    .unwrap();
    assert_eq!((again.ran, again.skipped), (0, 4));
    assert_eq!(
        std::fs::read_to_string(out.join("transfer.csv")).unwrap(),
        csv
    );
    // The figure reads the CSV alone.
    let files = sigprop::plot::transfer_figure(&out.join("transfer.csv"), &out).unwrap();
    assert!(files.iter().all(|f| f.is_file()));
    let _ = std::fs::remove_dir_all(&out);
}
