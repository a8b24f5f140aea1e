//! `sigprop simulate`: a Monte Carlo ensemble into `stats.csv`, `config.toml`,
//! `inputs.csv` and the mergeable sums `moments.bin`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::{ConfigArgs, out_dir, write_run_files};
use crate::config::{Config, ConfigBuilder};
use crate::mc::{self, Ensemble, Job};
use crate::stats::recorder;

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Number of networks in the ensemble (run.samples).
    #[arg(long)]
    pub samples: Option<u64>,
    /// Seed of the parameter streams (run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: all cores). The result does not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run slice i of N of the ensemble (0-based), e.g. --shard 3/16; merge with `sigprop merge`.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
    /// Continue an interrupted run in DIR (its config.toml and moments.bin).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 30.0)]
    pub checkpoint_secs: f64,
}

/// The largest checkpoint interval (a year): beyond it a `Duration` cannot hold the value
/// reliably, and nobody waits that long for a checkpoint.
const MAX_CHECKPOINT_SECS: f64 = 3.2e7;

/// Checks the flags and the configuration's size before anything is allocated or written:
/// threads within [`crate::limits::MAX_THREADS`], a finite checkpoint interval, at least two
/// samples (a standard error needs two), and a peak memory that fits.
fn validate(args: &SimulateArgs, cfg: &Config, threads: usize) -> anyhow::Result<()> {
    crate::limits::check_threads("--threads", threads)?;
    let c = args.checkpoint_secs;
    if !(c.is_finite() && (0.0..=MAX_CHECKPOINT_SECS).contains(&c)) {
        bail!(
            "--checkpoint-secs {c}: expected a number of seconds from 0 to {MAX_CHECKPOINT_SECS:e}"
        );
    }
    if cfg.run.samples < 2 {
        bail!(
            "run.samples = {}: a standard error needs at least 2 samples",
            cfg.run.samples
        );
    }
    let est = crate::limits::monte_carlo(cfg, threads);
    crate::limits::enforce("the Monte Carlo", &est, args.cfg.max_memory.as_deref())
}

fn parse_shard(s: &str) -> anyhow::Result<(u64, u64)> {
    let err = || anyhow::anyhow!("--shard `{s}`: expected i/N with 0 ≤ i < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| err())?,
        n.trim().parse().map_err(|_| err())?,
    );
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let (mut cfg, out, resume) = match &args.resume {
        Some(dir) => {
            let b = ConfigBuilder::new().file(&dir.join("config.toml"))?;
            (
                b.build()?,
                args.out.clone().unwrap_or_else(|| dir.clone()),
                Some(dir.clone()),
            )
        }
        None => {
            let mut b = args.cfg.builder()?;
            if let Some(n) = args.samples {
                b = b.value(
                    "run.samples",
                    crate::config::count_value("run.samples", "--samples", n)?,
                )?;
            }
            if let Some(s) = args.seed {
                b = b.value(
                    "run.seed",
                    crate::config::count_value("run.seed", "--seed", s)?,
                )?;
            }
            let out = args.out.clone().context("simulate needs --out DIR")?;
            (b.build()?, out, None)
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    validate(args, &cfg, threads)?;
    let probe = crate::inputs::probe(&mut cfg)?;
    let sampler = mc::resolve_sampler(&cfg, &probe)?;
    cfg.set_sampler(sampler);
    out_dir(&out)?;
    let total = cfg.run.samples as u64;
    let (first, end) = match &args.shard {
        Some(s) => {
            let (i, n) = parse_shard(s)?;
            (i * total / n, (i + 1) * total / n)
        }
        None => (0, total),
    };
    if end <= first {
        bail!(
            "shard {} holds no samples of run.samples = {total}",
            args.shard.as_deref().unwrap_or("")
        );
    }
    let job = Job::new(&cfg, &probe);
    let mut ens = match &resume {
        Some(dir) => {
            let (acc, f, next, e) = mc::load_moments(&dir.join("moments.bin"))?;
            let (rows, slots) = job.layout();
            if acc.slots != slots {
                bail!(
                    "{}: the checkpoint does not match config.toml",
                    dir.display()
                );
            }
            eprintln!(
                "resuming {}: {} of {} samples done",
                dir.display(),
                next - f,
                e - f
            );
            Ensemble {
                rows,
                acc,
                first: f,
                next,
                end: e,
            }
        }
        None => {
            write_run_files(&out, &cfg, &probe)?;
            job.start(first, end)
        }
    };
    mc::install_interrupt_handler();
    let bar = progress(ens.end - ens.first, ens.next - ens.first);
    let mut last_save = Instant::now();
    let every = Duration::from_secs_f64(args.checkpoint_secs.max(0.1));
    let moments = out.join("moments.bin");
    let t0 = Instant::now();
    let done0 = ens.next;
    job.run(&mut ens, threads, |e| {
        bar.set_position(e.next - e.first);
        if last_save.elapsed() >= every || mc::INTERRUPTED.load(Ordering::SeqCst) {
            mc::save_moments(&moments, e)?;
            last_save = Instant::now();
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    mc::save_moments(&moments, &ens)?;
    write_stats(&out, &cfg, &ens)?;
    let secs = t0.elapsed().as_secs_f64();
    let ran = ens.next - done0;
    eprintln!(
        "{}: {} samples in {:.2} s ({:.2} samples/s, {threads} threads, {:?} sampler, peak RSS {:.0} MB) -> {}",
        cfg.run.name,
        ens.next - ens.first,
        secs,
        ran as f64 / secs.max(1e-9),
        cfg.run.sampler,
        peak_rss_mb(),
        out.join("stats.csv").display()
    );
    if let Some(l) = ens.acc.diverged_at
        && l <= 1
    {
        bail!(
            "diverged at layer {l} (overflow or NaN): no layer has finite statistics; lower the variances (model.variances.*) or the input scale"
        );
    }
    if let Some(l) = ens.acc.diverged_at {
        eprintln!(
            "warning: diverged at layer {l} (overflow or NaN); stats.csv keeps layers 1 to {}",
            l - 1
        );
    }
    if !ens.done() {
        eprintln!(
            "interrupted: {} samples saved; continue with: sigprop simulate --resume {}",
            ens.next - ens.first,
            out.display()
        );
        std::process::exit(130);
    }
    Ok(())
}

/// The process's peak resident set (VmHWM) in MB; NaN where /proc is not available.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Writes `stats.csv` from an ensemble's sums.
pub fn write_stats(out: &Path, cfg: &Config, ens: &Ensemble) -> anyhow::Result<()> {
    let rows = recorder::rows(
        &ens.rows,
        &ens.acc,
        "mc",
        &cfg.run.name,
        cfg.model.width,
        cfg.model.heads,
    );
    crate::stats::csv::write(&out.join("stats.csv"), &rows)
}

fn progress(len: u64, pos: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_position(pos);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} samples  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
