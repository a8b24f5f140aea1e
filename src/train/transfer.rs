//! Learning-rate transfer across widths (SPEC §7): for every (family,
//! width, lr) of a grid, build that width's hyperparameter table in-process, train, and
//! record the final losses as one row of `transfer.csv`; then read the CSV back and find the
//! optimal learning rate per width and how far it moves, in grid steps (`drift.csv`,
//! `drift.md`).
//!
//! How the grid's lr enters: the table is anchored at the smallest width of the grid
//! ([`Anchor::Base`]), so at that width every group trains with exactly the grid's η, and at
//! width n group g gets η·λ_g(n)/λ_g(n_base) — the family's rule decides how the rates move
//! with width, and a family whose rule is right keeps the best η where it was. `standard`
//! has λ_g = 1 (one global rate at every width), so for it the grid's η is the rate itself.
//!
//! Every point trains on one thread with the same seed (common random numbers: all points
//! see the same batches and, at one width, start from the same draw up to the family's
//! variances), and the points run in parallel. A finished point is a row of
//! `transfer.csv`, rewritten atomically after each point, so an interrupted grid resumes
//! where it stopped and a finished one re-runs nothing.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use rayon::prelude::*;
use toml::Value;

use super::{TrainError, Trainer};
use crate::config::ConfigBuilder;
use crate::config::Precision;
use crate::hparams::{Anchor, Family, HparamTable, Optimizer, Setup};
use crate::model::Real;
use crate::stats;
use crate::stats::csv::write_atomic;

pub const CSV_HEADER: &str =
    "family,width,lr,final_train_loss,final_eval_loss,diverged,steps,seconds";

/// The columns of `drift.csv`.
const DRIFT_HEADER: [&str; 7] = [
    "family",
    "width",
    "argmin_lr",
    "argmin_index",
    "min_eval_loss",
    "at_grid_edge",
    "steps_from_smallest_width",
];

/// The grid and where it goes.
#[derive(Clone, Debug)]
pub struct Grid {
    pub families: Vec<Family>,
    pub widths: Vec<usize>,
    /// The η of the smallest width, ascending.
    pub lrs: Vec<f64>,
    /// Global AdamW weight decay wd (per group wd/λ_g, so lr_g·wd_g = η·wd at every width).
    pub weight_decay: f64,
    /// Points trained at once (each on one thread).
    pub threads: usize,
    pub out: PathBuf,
}

/// One row of `transfer.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub family: String,
    pub width: usize,
    pub lr: f64,
    /// Mean train loss over the last tenth of the steps (one batch is noisy); the loss of
    /// the step that diverged for a diverged run.
    pub final_train_loss: f64,
    /// Held-out loss after the last step; NaN for a diverged run.
    pub final_eval_loss: f64,
    pub diverged: bool,
    /// Updates done (fewer than asked for a diverged run).
    pub steps: usize,
    pub seconds: f64,
}

impl Point {
    /// The resume key: lr by its shortest round-trip digits, so a re-read row matches.
    fn key(&self) -> (String, usize, String) {
        (self.family.clone(), self.width, format!("{:?}", self.lr))
    }

    fn csv_row(&self) -> [String; 8] {
        [
            self.family.clone(),
            self.width.to_string(),
            format!("{:?}", self.lr),
            format!("{:?}", self.final_train_loss),
            format!("{:?}", self.final_eval_loss),
            self.diverged.to_string(),
            self.steps.to_string(),
            format!("{:.3}", self.seconds),
        ]
    }
}

/// Parses `--lrs`: comma-separated numbers or powers `2^e`, and ranges `2^a..2^b` of every
/// integer power of two in between (a log₂ grid with step 1), e.g. `2^-12..2^-2` or
/// `0.001,0.003,0.01`. Returned ascending without duplicates.
pub fn parse_lrs(s: &str) -> anyhow::Result<Vec<f64>> {
    let bad = |item: &str| {
        anyhow::anyhow!(
            "--lrs `{s}`: cannot read `{item}`; expected positive numbers, 2^e powers or a range 2^a..2^b, comma-separated (e.g. 2^-12..2^-2)"
        )
    };
    let power = |t: &str| -> Option<f64> { t.trim().strip_prefix("2^")?.trim().parse().ok() };
    let number = |t: &str| -> Option<f64> {
        power(t)
            .map(|e| 2f64.powf(e))
            .or_else(|| t.trim().parse().ok())
            .filter(|x: &f64| x.is_finite() && *x > 0.0)
    };
    let mut out = Vec::new();
    for item in s.split(',').filter(|t| !t.trim().is_empty()) {
        if let Some((a, b)) = item.split_once("..") {
            let (a, b) = (
                power(a).ok_or_else(|| bad(item))?,
                power(b).ok_or_else(|| bad(item))?,
            );
            if a.fract() != 0.0 || b.fract() != 0.0 || b < a || b - a > 64.0 {
                return Err(bad(item));
            }
            out.extend((a as i32..=b as i32).map(|e| 2f64.powi(e)));
        } else {
            out.push(number(item).ok_or_else(|| bad(item))?);
        }
    }
    if out.is_empty() {
        return Err(bad(s));
    }
    out.sort_by(f64::total_cmp);
    out.dedup();
    Ok(out)
}

/// `2^-7` for powers of two, the number otherwise.
pub fn lr_label(lr: f64) -> String {
    let e = lr.log2();
    if (e - e.round()).abs() < 1e-9 {
        format!("2^{}", e.round() as i64)
    } else {
        format!("{lr:.3e}")
    }
}

/// The AdamW table of one family at `cfg.model.width`, anchored at `base_width` with global
/// rate `lr`: the table `sigprop hparams` would write, handed to the trainer directly.
pub fn table_for(
    family: Family,
    cfg: &crate::config::Config,
    base_width: usize,
    lr: f64,
    weight_decay: f64,
) -> anyhow::Result<HparamTable> {
    let setup = Setup {
        family,
        optimizer: Optimizer::AdamW,
        base_width,
        widths: vec![cfg.model.width],
        lr,
        weight_decay,
        var: cfg.model.var,
        dims: Setup::dims_of(&cfg.model),
        m_factors: true,
        anchor: Anchor::Base,
    };
    setup.validate()?;
    let table = setup.table(cfg.model.width);
    // The checks a table file gets when the trainer reads it (a rule that overflowed at
    // this width must not train with an infinite rate).
    table
        .validate()
        .map_err(|msg| anyhow::anyhow!("the {family} table at width {}: {msg}", cfg.model.width))?;
    Ok(table)
}

/// Trains one point to the end (or to divergence). `None` when interrupted.
fn train_point(
    builder: &(dyn Fn() -> anyhow::Result<ConfigBuilder> + Sync),
    family: Family,
    width: usize,
    base_width: usize,
    lr: f64,
    weight_decay: f64,
) -> anyhow::Result<Option<Point>> {
    let t0 = Instant::now();
    let mk = || -> anyhow::Result<ConfigBuilder> {
        Ok(builder()?
            .value("model.width", Value::from(width as i64))?
            // One thread per run: the grid's parallelism is across points, which scales
            // perfectly, where splitting one small batch would not.
            .value("train.threads", Value::from(1))?)
    };
    let first = mk()?.build()?;
    let cfg = super::configure(&first, mk()?)?;
    let hp = table_for(family, &cfg, base_width, lr, weight_decay)?;
    let point = |train: f64, eval: f64, diverged: bool, done: usize| Point {
        family: family.to_string(),
        width,
        lr,
        final_train_loss: train,
        final_eval_loss: eval,
        diverged,
        steps: done,
        seconds: t0.elapsed().as_secs_f64(),
    };
    match cfg.train.precision {
        Precision::F64 => run_point(Trainer::<f64>::new(&cfg, Some(&hp))?, point),
        _ => run_point(Trainer::<f32>::new(&cfg, Some(&hp))?, point),
    }
}

/// Runs a point's trainer to its last step: the final train loss is the mean over the last
/// tenth of the steps, the eval loss the held-out loss at the end.
fn run_point<F: Real>(
    mut tr: Trainer<F>,
    point: impl Fn(f64, f64, bool, usize) -> Point,
) -> anyhow::Result<Option<Point>> {
    let steps = tr.spec.steps;
    let tail = (steps / 10).max(1);
    let mut losses = Vec::with_capacity(steps);
    while tr.step < steps {
        if crate::mc::INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match tr.step() {
            Ok(s) => losses.push(s.loss),
            Err(TrainError::Diverged { step, loss, .. }) => {
                // A finite loss here means the update overflowed a parameter: the run is
                // still lost, and the CSV says so with an infinite train loss.
                let l = if loss.is_finite() {
                    f64::INFINITY
                } else {
                    loss
                };
                return Ok(Some(point(l, f64::NAN, true, step)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let train = losses[losses.len().saturating_sub(tail)..]
        .iter()
        .sum::<f64>()
        / tail.min(losses.len()).max(1) as f64;
    let eval = tr.evaluate();
    Ok(Some(point(
        train,
        eval,
        !(eval.is_finite() && train.is_finite()),
        tr.step,
    )))
}

/// Reads `transfer.csv` (rows only; an absent file is empty).
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Point>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let stats::table::Table { header, rows } = stats::table::read(&text)
        .with_context(|| format!("{}: not a readable CSV", path.display()))?;
    if header != CSV_HEADER {
        bail!(
            "{}: expected the header `{CSV_HEADER}`; is it a transfer.csv?",
            path.display()
        );
    }
    let mut out = Vec::new();
    for (line, f) in rows {
        let bad = || anyhow::anyhow!("{} line {line}: bad row `{}`", path.display(), f.join(","));
        if f.len() != 8 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
        out.push(Point {
            family: f[0].to_string(),
            width: f[1].parse().map_err(|_| bad())?,
            lr: num(&f[2])?,
            final_train_loss: num(&f[3])?,
            final_eval_loss: num(&f[4])?,
            diverged: f[5].parse().map_err(|_| bad())?,
            steps: f[6].parse().map_err(|_| bad())?,
            seconds: num(&f[7])?,
        });
    }
    Ok(out)
}

fn write_csv(path: &Path, rows: &[Point]) -> anyhow::Result<()> {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| {
        (a.family.as_str(), a.width)
            .cmp(&(b.family.as_str(), b.width))
            .then(a.lr.total_cmp(&b.lr))
    });
    let header: Vec<&str> = CSV_HEADER.split(',').collect();
    let text = stats::table::to_bytes(&header, rows.iter().map(Point::csv_row))?;
    write_atomic(path, &text)
}

/// What [`run`] did.
#[derive(Debug)]
pub struct Summary {
    /// Points trained by this call (0 when everything was already in transfer.csv).
    pub ran: usize,
    pub skipped: usize,
    pub interrupted: bool,
    pub seconds: f64,
}

/// Runs every point of the grid that `DIR/transfer.csv` does not hold yet, then writes
/// `drift.csv` and `drift.md` from the CSV. `builder` makes a fresh builder of the base
/// configuration (file and `--set`s).
pub fn run(
    builder: &(dyn Fn() -> anyhow::Result<ConfigBuilder> + Sync),
    grid: &Grid,
    progress: &(dyn Fn(&Point, usize, usize) + Sync),
) -> anyhow::Result<Summary> {
    let t0 = Instant::now();
    if grid.families.is_empty() || grid.widths.is_empty() || grid.lrs.is_empty() {
        bail!("transfer: the grid is empty (give --family, --widths and --lrs)");
    }
    std::fs::create_dir_all(&grid.out)
        .with_context(|| format!("cannot create output folder {}", grid.out.display()))?;
    // The base configuration must be the one the CSV's rows were made with: resuming a
    // grid under another config would mix incomparable runs in one plot.
    let base = builder()?.build()?;
    // The anchor width and the weight decay set every point's rates too.
    let base_width = grid.widths.iter().copied().min().unwrap_or(1);
    let base_toml = format!(
        "# transfer grid: rates anchored at width {base_width}, weight decay {:?}\n{}",
        grid.weight_decay,
        base.to_toml()
    );
    let cfg_path = grid.out.join("config.toml");
    if cfg_path.exists() {
        let old = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        if old != base_toml {
            bail!(
                "{} holds a transfer grid of another configuration, anchor width or weight decay ({} differs); use a new --out",
                grid.out.display(),
                cfg_path.display()
            );
        }
    } else {
        write_atomic(&cfg_path, base_toml.as_bytes())?;
    }
    let csv = grid.out.join("transfer.csv");
    let done = read_csv(&csv)?;
    let have: BTreeSet<_> = done.iter().map(Point::key).collect();
    // Largest widths first: they take longest, and starting them early keeps both threads
    // busy to the end.
    let mut todo = Vec::new();
    for &w in grid.widths.iter().rev() {
        for f in &grid.families {
            for &lr in &grid.lrs {
                let key = (f.to_string(), w, format!("{lr:?}"));
                if !have.contains(&key) {
                    todo.push((*f, w, lr));
                }
            }
        }
    }
    let total = grid.families.len() * grid.widths.len() * grid.lrs.len();
    let skipped = total - todo.len();
    crate::mc::install_interrupt_handler();
    let rows = Mutex::new(done);
    let finished = Mutex::new(skipped);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(grid.threads.max(1))
        .build()
        .context("cannot start the transfer thread pool")?;
    let results: Vec<anyhow::Result<bool>> = pool.install(|| {
        todo.par_iter()
            .with_max_len(1)
            .map(|&(f, w, lr)| {
                let p = train_point(builder, f, w, base_width, lr, grid.weight_decay)
                    .with_context(|| format!("family {f}, width {w}, lr {lr:e}"))?;
                let Some(p) = p else { return Ok(false) };
                let mut rows = rows.lock().map_err(|_| anyhow::anyhow!("a run panicked"))?;
                rows.push(p.clone());
                write_csv(&csv, &rows)?;
                let mut n = finished
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a run panicked"))?;
                *n += 1;
                progress(&p, *n, total);
                Ok(true)
            })
            .collect()
    });
    let mut ran = 0;
    for r in results {
        if r? {
            ran += 1;
        }
    }
    let rows = rows
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a run panicked"))?;
    write_csv(&csv, &rows)?;
    let interrupted = crate::mc::INTERRUPTED.load(Ordering::SeqCst);
    write_drift(&grid.out, &read_csv(&csv)?)?;
    Ok(Summary {
        ran,
        skipped,
        interrupted,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The optimum of one (family, width) curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimum {
    pub family: String,
    pub width: usize,
    /// `None` when every lr diverged.
    pub lr: Option<f64>,
    /// Index of the optimum in the family's lr grid (ascending).
    pub index: Option<usize>,
    pub loss: f64,
    /// Whether the optimum is the smallest or largest lr tried (the true one may lie
    /// beyond the grid).
    pub at_edge: bool,
}

/// Per family (standard, then by s), the argmin of the final eval loss at every width,
/// over the non-diverged rows, and the family's lr grid.
pub fn optima(rows: &[Point]) -> Vec<(String, Vec<f64>, Vec<Optimum>)> {
    let mut families: Vec<String> = Vec::new();
    for r in rows {
        if !families.contains(&r.family) {
            families.push(r.family.clone());
        }
    }
    // standard first, then by s (ntk = 0 … mup = 1): the order the issue reads them in.
    let rank = |f: &str| match f.parse::<Family>() {
        Ok(Family::Standard) => -1.0,
        Ok(Family::Scaling(s)) => s,
        Err(_) => f64::INFINITY,
    };
    families.sort_by(|a, b| rank(a).total_cmp(&rank(b)).then(a.cmp(b)));
    families
        .into_iter()
        .map(|f| {
            let mine: Vec<&Point> = rows.iter().filter(|r| r.family == f).collect();
            let mut lrs: Vec<f64> = mine.iter().map(|r| r.lr).collect();
            lrs.sort_by(f64::total_cmp);
            lrs.dedup();
            let widths: BTreeSet<usize> = mine.iter().map(|r| r.width).collect();
            let opt = widths
                .into_iter()
                .map(|w| {
                    let best = mine
                        .iter()
                        .filter(|r| r.width == w && !r.diverged && r.final_eval_loss.is_finite())
                        .min_by(|a, b| a.final_eval_loss.total_cmp(&b.final_eval_loss));
                    let index = best.and_then(|b| lrs.iter().position(|&x| x == b.lr));
                    Optimum {
                        family: f.clone(),
                        width: w,
                        lr: best.map(|b| b.lr),
                        index,
                        loss: best.map_or(f64::NAN, |b| b.final_eval_loss),
                        at_edge: index.is_some_and(|i| i == 0 || i + 1 == lrs.len()),
                    }
                })
                .collect();
            (f, lrs, opt)
        })
        .collect()
}

/// The drift of one family: grid index of the optimum at the largest width minus that at
/// the smallest, and the largest |index − index at the smallest width| over all widths.
pub fn drift(opt: &[Optimum]) -> Option<(i64, i64)> {
    let first = opt.first()?.index? as i64;
    let last = opt.last()?.index? as i64;
    let max = opt
        .iter()
        .filter_map(|o| o.index)
        .map(|i| (i as i64 - first).abs())
        .max()?;
    Some((last - first, max))
}

/// `DIR/drift.csv` and `DIR/drift.md` from the rows of transfer.csv.
pub fn write_drift(dir: &Path, rows: &[Point]) -> anyhow::Result<()> {
    let all = optima(rows);
    let mut csv: Vec<[String; 7]> = Vec::new();
    let mut md = String::from(
        "# Learning-rate transfer: the optimal lr per width\n\n\
         The argmin of the final held-out loss over the lr grid (diverged runs excluded), and \
         its drift from the smallest to the largest width in grid steps (one step = one point \
         of the grid; a log₂ grid makes it a factor 2). The recommended scalings (ntk, mup) \
         should keep the optimum within one step; standard is expected to drift.\n\n",
    );
    let fmt_opt = |o: &Optimum| o.lr.map_or("all diverged".into(), lr_label);
    for (family, lrs, opt) in &all {
        let first = opt.first().and_then(|o| o.index);
        let _ = writeln!(md, "## {family}\n");
        let _ = writeln!(
            md,
            "| width | argmin lr | grid index | min eval loss | steps from n = {} |",
            opt.first().map_or(0, |o| o.width)
        );
        md.push_str("|---:|---:|---:|---:|---:|\n");
        for o in opt {
            let steps = match (o.index, first) {
                (Some(i), Some(f)) => (i as i64 - f as i64).to_string(),
                _ => String::new(),
            };
            csv.push([
                family.clone(),
                o.width.to_string(),
                o.lr.map_or(String::new(), |x| format!("{x:?}")),
                o.index.map_or(String::new(), |i| i.to_string()),
                format!("{:?}", o.loss),
                o.at_edge.to_string(),
                steps.clone(),
            ]);
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | {:.4} | {} |",
                o.width,
                fmt_opt(o),
                if o.at_edge { " (grid edge)" } else { "" },
                o.index.map_or("–".into(), |i| i.to_string()),
                o.loss,
                if steps.is_empty() {
                    "–".into()
                } else {
                    steps
                }
            );
        }
        let verdict = match drift(opt) {
            Some((d, max)) => format!(
                "**Drift from n = {} to n = {}: {d:+} grid step{} (largest excursion {max}); {}.**",
                opt.first().map_or(0, |o| o.width),
                opt.last().map_or(0, |o| o.width),
                if d.abs() == 1 { "" } else { "s" },
                if max <= 1 {
                    "the optimum stays within one step"
                } else {
                    "the optimum moves by more than one step"
                }
            ),
            None => {
                "**Drift undefined: every lr diverged at the smallest or largest width.**".into()
            }
        };
        let _ = writeln!(md, "\n{verdict}");
        if opt.iter().any(|o| o.at_edge) {
            let _ = writeln!(
                md,
                "\nAn optimum on the edge of the grid ({} … {}) is a bound, not a measurement: the true optimum may lie beyond it.",
                lrs.first().map_or(String::new(), |&x| lr_label(x)),
                lrs.last().map_or(String::new(), |&x| lr_label(x))
            );
        }
        md.push('\n');
    }
    write_atomic(
        &dir.join("drift.csv"),
        &stats::table::to_bytes(&DRIFT_HEADER, csv)?,
    )?;
    write_atomic(&dir.join("drift.md"), md.as_bytes())
}
