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
        seeds: 1,
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
    // Narrowing the grid in the same folder trains nothing and keeps the CSV, but drift.md
    // and the grid's points are the narrower grid's only (width 32 was dropped: it must not
    // appear as a stray optimum).
    let narrow = Grid {
        widths: vec![16],
        ..grid.clone()
    };
    let s = transfer::run(&tiny_builder, &narrow, &|_, _, _| {
        panic!("a finished point was re-run")
    })
    .unwrap();
    assert_eq!((s.ran, s.skipped, s.points.len()), (0, 2, 2));
    assert!(s.points.iter().all(|p| p.width == 16));
    let drift = std::fs::read_to_string(out.join("drift.csv")).unwrap();
    assert_eq!(drift.lines().count(), 2, "{drift}");
    assert_eq!(
        std::fs::read_to_string(out.join("transfer.csv")).unwrap(),
        csv
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `--seeds K` trains every point K times with consecutive train.seed; growing K trains only
/// the new seeds; the means carry s/√K; the seeds really differ (independent draws).
#[test]
fn seeds_add_independent_runs_and_standard_errors() {
    let out = std::env::temp_dir().join(format!("sigprop-transfer-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut grid = Grid {
        families: vec![Family::Scaling(0.0)],
        widths: vec![16, 32],
        lrs: vec![2f64.powi(-6), 2f64.powi(-4)],
        weight_decay: 0.0,
        seeds: 2,
        threads: 2,
        out: out.clone(),
    };
    let s = transfer::run(&tiny_builder, &grid, &|_, _, _| {}).unwrap();
    assert_eq!((s.ran, s.skipped), (8, 0));
    grid.seeds = 3;
    let s = transfer::run(&tiny_builder, &grid, &|p, _, _| assert_eq!(p.seed, 2)).unwrap();
    assert_eq!((s.ran, s.skipped), (4, 8));
    let rows = transfer::read_csv(&out.join("transfer.csv")).unwrap();
    assert_eq!(rows.len(), 12);
    for m in transfer::means(&rows) {
        let mine: Vec<f64> = rows
            .iter()
            .filter(|r| r.width == m.width && r.lr == m.lr)
            .map(|r| r.final_eval_loss)
            .collect();
        assert_eq!(mine.len(), 3);
        // Different seeds are different networks and batches.
        assert!(mine[0] != mine[1] && mine[1] != mine[2], "{mine:?}");
        let mean = mine.iter().sum::<f64>() / 3.0;
        let var = mine.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0;
        assert!((m.loss - mean).abs() < 1e-12);
        assert!((m.stderr.unwrap() - (var / 3.0).sqrt()).abs() < 1e-12);
    }
    let b = transfer::bootstrap(&rows, "ntk").unwrap();
    assert_eq!((b.seeds, b.steps.len()), (3, 2));
    // At the smallest width the optimum is its own reference: zero steps in every resample.
    assert_eq!(b.steps[0].1, Some((0.0, 0.0)));
    let drift = std::fs::read_to_string(out.join("drift.csv")).unwrap();
    assert!(drift.lines().next().unwrap().ends_with(
        "steps_from_smallest_width,seeds,min_eval_loss_stderr,steps_bootstrap_mean,steps_bootstrap_sd"
    ));
    assert!(drift.lines().nth(1).unwrap().contains(",3,"), "{drift}");
    let files = sigprop::plot::transfer_figure(&out.join("transfer.csv"), &out).unwrap();
    assert!(files.iter().all(|f| f.is_file()));
    let _ = std::fs::remove_dir_all(&out);
}

/// The bootstrap against a hand-made case: two lrs, seeds that disagree on the argmin at the
/// large width (2 of 3 prefer the second lr), so resampled drifts are 0 or 1 with
/// P(1) = P(mean of the resample prefers lr 1), and the spread is that of a Bernoulli.
#[test]
fn bootstrap_of_the_drift_follows_the_seed_disagreement() {
    let point = |width, lr: f64, seed, loss| transfer::Point {
        family: "ntk".into(),
        width,
        lr,
        final_train_loss: loss,
        final_eval_loss: loss,
        diverged: false,
        steps: 1,
        seconds: 0.0,
        seed,
    };
    let mut rows = Vec::new();
    for seed in 0..3u64 {
        rows.push(point(16, 0.1, seed, 1.0));
        rows.push(point(16, 0.2, seed, 2.0));
        // Width 32: seeds 0 and 1 prefer lr 0.2 by 0.1; seed 2 prefers lr 0.1 by 0.5.
        let (a, b) = if seed < 2 { (1.1, 1.0) } else { (1.0, 1.5) };
        rows.push(point(32, 0.1, seed, a));
        rows.push(point(32, 0.2, seed, b));
    }
    let b = transfer::bootstrap(&rows, "ntk").unwrap();
    let (m, sd) = b.drift().unwrap();
    // The resampled mean prefers lr 0.2 only when seed 2 is drawn zero times:
    // p = (2/3)^3 = 8/27 (a tie is impossible with these numbers).
    let p = 8.0 / 27.0;
    let n = transfer::BOOTSTRAP_RESAMPLES as f64;
    let se_p = (p * (1.0 - p) / n).sqrt();
    assert!((m - p).abs() < 5.0 * se_p, "mean {m} vs {p} ± {se_p}");
    assert!((sd - (p * (1.0 - p)).sqrt()).abs() < 0.03, "sd {sd}");
    // The point estimate (mean over all three seeds) prefers lr 0.1 at both widths.
    let opt = transfer::optima(&rows);
    assert_eq!(transfer::drift(&opt[0].2), Some((0, 0)));
}
