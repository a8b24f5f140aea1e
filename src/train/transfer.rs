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
//! Every point trains on one thread, and the points run in parallel. With `seeds = K` every
//! point is trained K times, with `train.seed` = s₀, s₀+1, …, s₀+K−1 (s₀ from the
//! configuration). Within one seed all points share their random numbers (the same batches
//! and, at one width, the same draw up to the family's variances), so the curves of one seed
//! are smooth in lr; across seeds they are independent, which is what the error bars and the
//! bootstrap of the optimum's drift ([`bootstrap`]) resample. A finished point is a row of
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
    "family,width,lr,final_train_loss,final_eval_loss,diverged,steps,seconds,seed";

/// The header before seeds were a column; such rows were trained with `train.seed = 0` in
/// every shipped experiment and are read with seed 0.
const LEGACY_HEADER: &str =
    "family,width,lr,final_train_loss,final_eval_loss,diverged,steps,seconds";

/// Resamples of the seeds for the drift's uncertainty.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

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

/// Columns `drift.csv` gained with seeds (appended, so the first seven keep their places).
const DRIFT_SEED_COLUMNS: [&str; 4] = [
    "seeds",
    "min_eval_loss_stderr",
    "steps_bootstrap_mean",
    "steps_bootstrap_sd",
];

/// The grid and where it goes.
#[derive(Clone, Debug)]
pub struct Grid {
    pub families: Vec<Family>,
    pub widths: Vec<usize>,
    /// The η of the smallest width, ascending.
    pub lrs: Vec<f64>,
    /// Independent trainings per point (`train.seed` = s₀ … s₀+seeds−1); at least 1.
    pub seeds: usize,
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
    /// The run's `train.seed`.
    pub seed: u64,
}

impl Point {
    /// The resume key: lr by its shortest round-trip digits, so a re-read row matches.
    fn key(&self) -> (String, usize, String, u64) {
        (
            self.family.clone(),
            self.width,
            format!("{:?}", self.lr),
            self.seed,
        )
    }

    fn csv_row(&self) -> [String; 9] {
        [
            self.family.clone(),
            self.width.to_string(),
            format!("{:?}", self.lr),
            format!("{:?}", self.final_train_loss),
            format!("{:?}", self.final_eval_loss),
            self.diverged.to_string(),
            self.steps.to_string(),
            format!("{:.3}", self.seconds),
            self.seed.to_string(),
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
    (lr, seed): (f64, u64),
    weight_decay: f64,
) -> anyhow::Result<Option<Point>> {
    let t0 = Instant::now();
    let seed_value = crate::config::count_value("train.seed", "--seeds", seed)?;
    let mk = || -> anyhow::Result<ConfigBuilder> {
        Ok(builder()?
            .value("model.width", Value::from(width as i64))?
            .value("train.seed", seed_value.clone())?
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
        seed,
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
    let legacy = header == LEGACY_HEADER;
    if header != CSV_HEADER && !legacy {
        bail!(
            "{}: expected the header `{CSV_HEADER}`; is it a transfer.csv?",
            path.display()
        );
    }
    let mut out = Vec::new();
    for (line, f) in rows {
        let bad = || anyhow::anyhow!("{} line {line}: bad row `{}`", path.display(), f.join(","));
        if f.len() != if legacy { 8 } else { 9 } {
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
            seed: if legacy {
                0
            } else {
                f[8].parse().map_err(|_| bad())?
            },
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
            .then(a.seed.cmp(&b.seed))
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
    /// The grid's points in transfer.csv (what drift.md and the figure are made of): a
    /// folder that once held a wider grid keeps its other points in the CSV, outside both.
    pub points: Vec<Point>,
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
    if grid.seeds == 0 {
        bail!("--seeds 0: expected at least 1 training per point");
    }
    std::fs::create_dir_all(&grid.out)
        .with_context(|| format!("cannot create output folder {}", grid.out.display()))?;
    // The base configuration must be the one the CSV's rows were made with: resuming a
    // grid under another config would mix incomparable runs in one plot.
    let base = builder()?.build()?;
    let seed0 = base.train.seed;
    if seed0.checked_add(grid.seeds as u64 - 1).is_none() {
        bail!(
            "--seeds {}: train.seed = {seed0} leaves no room for them",
            grid.seeds
        );
    }
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
    let mut keys = BTreeSet::new();
    for &w in grid.widths.iter().rev() {
        for f in &grid.families {
            for &lr in &grid.lrs {
                for seed in seed0..seed0 + grid.seeds as u64 {
                    let key = (f.to_string(), w, format!("{lr:?}"), seed);
                    if !have.contains(&key) {
                        todo.push((*f, w, lr, seed));
                    }
                    keys.insert(key);
                }
            }
        }
    }
    let total = grid.families.len() * grid.widths.len() * grid.lrs.len() * grid.seeds;
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
            .map(|&(f, w, lr, seed)| {
                let p = train_point(builder, f, w, base_width, (lr, seed), grid.weight_decay)
                    .with_context(|| format!("family {f}, width {w}, lr {lr:e}, seed {seed}"))?;
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
    let points: Vec<Point> = read_csv(&csv)?
        .into_iter()
        .filter(|p| keys.contains(&p.key()))
        .collect();
    write_drift(&grid.out, &points)?;
    Ok(Summary {
        points,
        ran,
        skipped,
        interrupted,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One (family, width, lr) point averaged over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Mean {
    pub family: String,
    pub width: usize,
    pub lr: f64,
    /// Mean final eval loss over the seeds; NaN when any seed diverged (an lr that blows up
    /// for one seed in K is not a usable rate).
    pub loss: f64,
    /// Standard error of that mean; `None` with one seed or a diverged point.
    pub stderr: Option<f64>,
    pub seeds: usize,
    pub diverged: bool,
}

/// The mean and, with two or more values, its standard error s/√k.
fn mean_and_stderr(x: &[f64]) -> (f64, Option<f64>) {
    let k = x.len() as f64;
    let m = x.iter().sum::<f64>() / k;
    let se = (x.len() >= 2).then(|| {
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (k - 1.0);
        (var / k).sqrt()
    });
    (m, se)
}

fn usable(r: &Point) -> bool {
    !r.diverged && r.final_eval_loss.is_finite()
}

/// Every (family, width, lr) of the rows, averaged over its seeds, sorted by lr.
pub fn means(rows: &[Point]) -> Vec<Mean> {
    let mut keys: Vec<(String, usize, f64)> = rows
        .iter()
        .map(|r| (r.family.clone(), r.width, r.lr))
        .collect();
    keys.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)).then(a.2.total_cmp(&b.2)));
    keys.dedup();
    keys.into_iter()
        .map(|(family, width, lr)| {
            let mine: Vec<&Point> = rows
                .iter()
                .filter(|r| r.family == family && r.width == width && r.lr == lr)
                .collect();
            let k = mine.len();
            let diverged = mine.iter().any(|r| !usable(r));
            let losses: Vec<f64> = mine.iter().map(|r| r.final_eval_loss).collect();
            let (loss, stderr) = if diverged {
                (f64::NAN, None)
            } else {
                mean_and_stderr(&losses)
            };
            Mean {
                family,
                width,
                lr,
                loss,
                stderr,
                seeds: k,
                diverged,
            }
        })
        .collect()
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
    /// The mean over seeds of the final eval loss at the optimum.
    pub loss: f64,
    /// Its standard error (`None` with one seed).
    pub stderr: Option<f64>,
    /// Seeds behind the optimum's mean.
    pub seeds: usize,
    /// Whether the optimum is the smallest or largest lr tried (the true one may lie
    /// beyond the grid).
    pub at_edge: bool,
}

/// The families of the rows: standard first, then by s (ntk = 0 … mup = 1).
fn families(rows: &[Point]) -> Vec<String> {
    let mut families: Vec<String> = Vec::new();
    for r in rows {
        if !families.contains(&r.family) {
            families.push(r.family.clone());
        }
    }
    let rank = |f: &str| match f.parse::<Family>() {
        Ok(Family::Standard) => -1.0,
        Ok(Family::Scaling(s)) => s,
        Err(_) => f64::INFINITY,
    };
    families.sort_by(|a, b| rank(a).total_cmp(&rank(b)).then(a.cmp(b)));
    families
}

/// Per family, the argmin over lr of the seed-averaged final eval loss at every width (lrs
/// where a seed diverged excluded), and the family's lr grid.
pub fn optima(rows: &[Point]) -> Vec<(String, Vec<f64>, Vec<Optimum>)> {
    let all = means(rows);
    families(rows)
        .into_iter()
        .map(|f| {
            let mine: Vec<&Mean> = all.iter().filter(|m| m.family == f).collect();
            let mut lrs: Vec<f64> = mine.iter().map(|m| m.lr).collect();
            lrs.sort_by(f64::total_cmp);
            lrs.dedup();
            let widths: BTreeSet<usize> = mine.iter().map(|m| m.width).collect();
            let opt = widths
                .into_iter()
                .map(|w| {
                    let best = mine
                        .iter()
                        .filter(|m| m.width == w && !m.diverged)
                        .min_by(|a, b| a.loss.total_cmp(&b.loss));
                    let index = best.and_then(|b| lrs.iter().position(|&x| x == b.lr));
                    Optimum {
                        family: f.clone(),
                        width: w,
                        lr: best.map(|b| b.lr),
                        index,
                        loss: best.map_or(f64::NAN, |b| b.loss),
                        stderr: best.and_then(|b| b.stderr),
                        seeds: best.map_or(0, |b| b.seeds),
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

/// The optimum's movement under resampling of the seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    pub seeds: usize,
    pub resamples: usize,
    /// Per width (ascending): mean and standard deviation over resamples of the grid steps
    /// of the optimum from the smallest width's (resamples where either is undefined left out).
    pub steps: Vec<(usize, Option<(f64, f64)>)>,
}

impl Bootstrap {
    /// Mean and standard deviation of the drift from the smallest to the largest width.
    pub fn drift(&self) -> Option<(f64, f64)> {
        self.steps.last().and_then(|s| s.1)
    }
}

/// Resamples a family's seeds with replacement ([`BOOTSTRAP_RESAMPLES`] times, from a fixed
/// stream, so the report is reproducible) and recomputes every width's argmin from the
/// resampled means: the spread of the drift that the seed-to-seed noise alone produces.
/// `None` with fewer than two seeds, where there is nothing to resample.
pub fn bootstrap(rows: &[Point], family: &str) -> Option<Bootstrap> {
    use rand::{Rng, SeedableRng};
    let mine: Vec<&Point> = rows.iter().filter(|r| r.family == family).collect();
    let seeds: Vec<u64> = mine
        .iter()
        .map(|r| r.seed)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if seeds.len() < 2 {
        return None;
    }
    let widths: Vec<usize> = mine
        .iter()
        .map(|r| r.width)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut lrs: Vec<f64> = mine.iter().map(|r| r.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    // loss[w][l][s]: NaN for a missing run, +∞ for a diverged one (so a resample that
    // contains a diverged seed excludes that lr, as `means` does).
    let mut loss = vec![vec![vec![f64::NAN; seeds.len()]; lrs.len()]; widths.len()];
    for r in &mine {
        let w = widths.iter().position(|&x| x == r.width)?;
        let l = lrs.iter().position(|&x| x == r.lr)?;
        let s = seeds.iter().position(|&x| x == r.seed)?;
        loss[w][l][s] = if usable(r) {
            r.final_eval_loss
        } else {
            f64::INFINITY
        };
    }
    let k = seeds.len();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0x7ea5_f3e5);
    let mut steps: Vec<Vec<f64>> = vec![Vec::new(); widths.len()];
    let mut pick = vec![0usize; k];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for p in pick.iter_mut() {
            *p = rng.random_range(0..k);
        }
        let argmin: Vec<Option<usize>> = loss
            .iter()
            .map(|per_lr| {
                per_lr
                    .iter()
                    .map(|per_seed| pick.iter().map(|&s| per_seed[s]).sum::<f64>())
                    .enumerate()
                    .filter(|(_, m)| m.is_finite())
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i)
            })
            .collect();
        if let Some(first) = argmin[0] {
            for (w, a) in argmin.iter().enumerate() {
                if let Some(i) = a {
                    steps[w].push(*i as f64 - first as f64);
                }
            }
        }
    }
    let steps = widths
        .iter()
        .zip(&steps)
        .map(|(&w, d)| {
            let spread = (d.len() >= 2).then(|| {
                let n = d.len() as f64;
                let m = d.iter().sum::<f64>() / n;
                let var = d.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
                (m, var.sqrt())
            });
            (w, spread)
        })
        .collect();
    Some(Bootstrap {
        seeds: k,
        resamples: BOOTSTRAP_RESAMPLES,
        steps,
    })
}

/// `DIR/drift.csv` and `DIR/drift.md` from the rows of transfer.csv.
pub fn write_drift(dir: &Path, rows: &[Point]) -> anyhow::Result<()> {
    let all = optima(rows);
    let mut csv: Vec<Vec<String>> = Vec::new();
    let mut md = String::from(
        "# Learning-rate transfer: the optimal lr per width\n\n\
         The argmin of the final held-out loss, averaged over seeds, over the lr grid (an lr \
         where any seed diverged is excluded), and its drift from the smallest to the largest \
         width in grid steps (one step = one point of the grid; a log₂ grid makes it a factor \
         2). With several seeds, the loss carries its standard error and the drift the \
         standard deviation of a bootstrap over seeds. The recommended scalings (ntk, mup) \
         should keep the optimum within one step; standard is expected to drift.\n\n",
    );
    let fmt_opt = |o: &Optimum| o.lr.map_or("all diverged".into(), lr_label);
    let opt_f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:?}"));
    for (family, lrs, opt) in &all {
        let boot = bootstrap(rows, family);
        let first = opt.first().and_then(|o| o.index);
        let _ = writeln!(md, "## {family}\n");
        let _ = writeln!(
            md,
            "| width | argmin lr | grid index | min eval loss | seeds | steps from n = {} |",
            opt.first().map_or(0, |o| o.width)
        );
        md.push_str("|---:|---:|---:|---:|---:|---:|\n");
        for o in opt {
            let steps = match (o.index, first) {
                (Some(i), Some(f)) => (i as i64 - f as i64).to_string(),
                _ => String::new(),
            };
            let spread = boot
                .as_ref()
                .and_then(|b| b.steps.iter().find(|s| s.0 == o.width))
                .and_then(|s| s.1);
            let mut row: Vec<String> = vec![
                family.clone(),
                o.width.to_string(),
                o.lr.map_or(String::new(), |x| format!("{x:?}")),
                o.index.map_or(String::new(), |i| i.to_string()),
                format!("{:?}", o.loss),
                o.at_edge.to_string(),
                steps.clone(),
            ];
            row.extend([
                o.seeds.to_string(),
                opt_f(o.stderr),
                opt_f(spread.map(|s| s.0)),
                opt_f(spread.map(|s| s.1)),
            ]);
            csv.push(row);
            let loss = match o.stderr {
                Some(se) => format!("{:.4} ± {se:.4}", o.loss),
                None => format!("{:.4}", o.loss),
            };
            let steps_md = match (steps.is_empty(), spread) {
                (true, _) => "–".to_string(),
                (false, Some((_, sd))) => format!("{steps} (bootstrap sd {sd:.2})"),
                (false, None) => steps,
            };
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | {loss} | {} | {steps_md} |",
                o.width,
                fmt_opt(o),
                if o.at_edge { " (grid edge)" } else { "" },
                o.index.map_or("–".into(), |i| i.to_string()),
                o.seeds,
            );
        }
        let spread = boot.as_ref().and_then(Bootstrap::drift);
        let verdict = match drift(opt) {
            Some((d, max)) => format!(
                "**Drift from n = {} to n = {}: {d:+} grid step{}{} (largest excursion {max}); {}.**",
                opt.first().map_or(0, |o| o.width),
                opt.last().map_or(0, |o| o.width),
                if d.abs() == 1 { "" } else { "s" },
                match (&boot, spread) {
                    (Some(b), Some((m, sd))) =>
                        format!(", bootstrap over {} seeds {m:+.2} ± {sd:.2}", b.seeds),
                    _ => String::new(),
                },
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
        if boot.is_none() {
            let _ = writeln!(
                md,
                "\nOne seed: a drift of ±1 grid step is within the seed-to-seed noise; `--seeds 3` gives error bars and the drift's uncertainty."
            );
        }
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
    let header: Vec<&str> = DRIFT_HEADER
        .iter()
        .chain(DRIFT_SEED_COLUMNS.iter())
        .copied()
        .collect();
    write_atomic(
        &dir.join("drift.csv"),
        &stats::table::to_bytes(&header, csv)?,
    )?;
    write_atomic(&dir.join("drift.md"), md.as_bytes())
}
