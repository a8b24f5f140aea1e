//! `sigprop simulate`: a Monte Carlo ensemble into `stats.csv`, `config.toml`,
//! `inputs.csv` and the mergeable sums `moments.bin`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::{ConfigSource, Existing, out_dir, write_run_files};
use crate::config::Config;
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::mc::moments::Moments;
use crate::mc::{self, Ensemble, Job};
use crate::model::Probe;
use crate::stats::recorder;

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub cfg: ConfigSource,
    /// Number of networks in the ensemble (run.samples).
    pub samples: Option<u64>,
    /// Seed of the parameter streams (run.seed).
    pub seed: Option<u64>,
    /// Worker threads (default: all cores). The result does not depend on it.
    pub threads: Option<usize>,
    /// Run slice i of N of the ensemble (0-based), e.g. --shard 3/16; merge with `sigprop merge`.
    pub shard: Option<String>,
    /// Continue an interrupted run in DIR (its config.toml and moments.bin).
    pub resume: Option<PathBuf>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Seconds between checkpoints.
    pub checkpoint_secs: f64,
    /// Overwrite an output folder that holds other results.
    pub force: bool,
}

/// The largest checkpoint interval (a year): beyond it a `Duration` cannot hold the value
/// reliably, and nobody waits that long for a checkpoint.
const MAX_CHECKPOINT_SECS: f64 = 3.2e7;

/// Checks the flags and the configuration's size before anything is allocated or written:
/// threads within [`crate::limits::MAX_THREADS`], a finite checkpoint interval, at least two
/// samples (a standard error needs two), and a peak memory that fits.
fn validate(args: &SimulateOptions, cfg: &Config, threads: usize) -> anyhow::Result<()> {
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

/// Where a run starts: fresh, from a checkpoint of the same run, or already finished.
enum Start {
    Fresh { first: u64, end: u64 },
    Continue { moments: Moments, end: u64 },
    Done(Moments),
}

/// Everything a run needs before it draws a sample.
struct Plan {
    cfg: Config,
    probe: Probe,
    fp: Fingerprint,
    out: PathBuf,
    start: Start,
}

pub fn run(args: &SimulateOptions) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let plan = match &args.resume {
        Some(dir) => resume_plan(args, dir, threads)?,
        None => new_plan(args, threads)?,
    };
    execute(plan, threads, args.checkpoint_secs)
}

/// `--resume DIR`: the run exactly as it was started, read from DIR (its config.toml,
/// inputs.csv and moments.bin, which must agree); only `--samples` may grow it.
fn resume_plan(args: &SimulateOptions, dir: &Path, threads: usize) -> anyhow::Result<Plan> {
    super::refuse_changes_on_resume(
        &args.cfg,
        dir,
        args.out.as_deref(),
        &[
            ("--seed", args.seed.is_some()),
            ("--shard", args.shard.is_some()),
            ("--force", args.force),
        ],
    )?;
    let (mut cfg, probe) = super::load_run(dir)?;
    let moments = mc::moments::load(&dir.join("moments.bin"))?;
    let fp = Fingerprint::of(&cfg, &probe, Purpose::MonteCarlo);
    if moments.fingerprint.hash != fp.hash {
        bail!(
            "{}: config.toml or inputs.csv changed since the checkpoint ({}); restore them, or start a new run with --out",
            dir.display(),
            moments
                .fingerprint
                .difference(&fp)
                .unwrap_or_else(|| "their contents".into())
        );
    }
    if !moments.resumable() {
        bail!(
            "{} was merged from shards with missing samples; resume the missing shards and merge again",
            dir.display()
        );
    }
    let sharded = moments.first != 0 || moments.end != cfg.run.samples as u64;
    let end = match args.samples {
        Some(_) if sharded => bail!(
            "--samples: {} is shard {}..{} of a run; a shard's samples are fixed",
            dir.display(),
            moments.first,
            moments.end
        ),
        Some(n) if n < moments.next => bail!(
            "--samples {n}: {} already has {} samples; --samples can only grow a run",
            dir.display(),
            moments.next
        ),
        Some(n) => n,
        None => moments.end,
    };
    if end > moments.end {
        cfg.set_samples(end);
    }
    validate(args, &cfg, threads)?;
    let start = if moments.next >= end {
        Start::Done(moments)
    } else {
        Start::Continue { moments, end }
    };
    Ok(Plan {
        cfg,
        probe,
        fp,
        out: dir.to_path_buf(),
        start,
    })
}

/// A new run into `--out`; a folder that already holds this run continues it, one that
/// holds anything else is refused unless `--force`.
fn new_plan(args: &SimulateOptions, threads: usize) -> anyhow::Result<Plan> {
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
    let mut cfg = b.build()?;
    validate(args, &cfg, threads)?;
    let probe = crate::inputs::probe(&mut cfg)?;
    let sampler = mc::resolve_sampler(&cfg, &probe)?;
    cfg.set_sampler(sampler);
    let total = cfg.run.samples as u64;
    let (first, end) = match &args.shard {
        Some(s) => {
            let (i, n) = parse_shard(s)?;
            // u128: i·total overflows u64 for large runs.
            let at = |k: u64| (k as u128 * total as u128 / n as u128) as u64;
            (at(i), at(i + 1))
        }
        None => (0, total),
    };
    if end <= first {
        bail!(
            "shard {} holds no samples of run.samples = {total}",
            args.shard.as_deref().unwrap_or("")
        );
    }
    let fp = Fingerprint::of(&cfg, &probe, Purpose::MonteCarlo);
    let start = match super::claim(&out, &fp, Purpose::MonteCarlo, args.force, "--out")? {
        Existing::Same => continue_in(&out, &fp, first, end, args)?,
        _ => Start::Fresh { first, end },
    };
    if let Start::Done(m) | Start::Continue { moments: m, .. } = &start
        && m.end != total
        && args.shard.is_none()
    {
        cfg.set_samples(m.end.max(end));
    }
    Ok(Plan {
        cfg,
        probe,
        fp,
        out,
        start,
    })
}

/// The folder holds this run: continue, extend, or report it finished.
fn continue_in(
    out: &Path,
    fp: &Fingerprint,
    first: u64,
    end: u64,
    args: &SimulateOptions,
) -> anyhow::Result<Start> {
    let path = out.join("moments.bin");
    if !path.exists() {
        return Ok(Start::Fresh { first, end });
    }
    let m = match mc::moments::load(&path) {
        Ok(m) => m,
        Err(_) if args.force => return Ok(Start::Fresh { first, end }),
        Err(e) => bail!("{e}; pass --force to start the run over"),
    };
    // The folder's config.toml must still be the one the moments were made with.
    let (c, p) = super::load_run(out)?;
    let written = Fingerprint::of(&c, &p, Purpose::MonteCarlo);
    if m.fingerprint.hash != fp.hash || written.hash != fp.hash {
        if args.force {
            return Ok(Start::Fresh { first, end });
        }
        let d = m
            .fingerprint
            .difference(&written)
            .or_else(|| m.fingerprint.difference(fp));
        bail!(
            "{}: config.toml or inputs.csv changed since the moments were written ({}); pass --force to start over",
            out.display(),
            d.unwrap_or_else(|| "their contents".into())
        );
    }
    if !m.resumable() || m.first != first || (args.shard.is_some() && m.end != end) {
        bail!(
            "{} holds samples {}..{} of this configuration, not {first}..{end}; pass --force to start over, or choose another --out",
            out.display(),
            m.first,
            m.end
        );
    }
    // Unsharded, the ensemble may grow; it never shrinks below what is done.
    let end = if args.shard.is_some() {
        m.end
    } else {
        end.max(m.next)
    };
    Ok(if m.next >= end {
        Start::Done(m)
    } else {
        Start::Continue { moments: m, end }
    })
}

fn execute(plan: Plan, threads: usize, checkpoint_secs: f64) -> anyhow::Result<()> {
    let Plan {
        cfg,
        probe,
        fp,
        out,
        start,
    } = plan;
    let job = Job::new(&cfg, &probe);
    let moments_path = out.join("moments.bin");
    let mut ens = match start {
        Start::Done(m) => {
            let (rows, slots) = job.layout();
            check_layout(&out, m.acc.slots, slots)?;
            let n = m.next;
            let mut ens = m.into_ensemble(rows);
            ens.end = n;
            if !out.join("stats.csv").exists() {
                write_stats(&out, &cfg, &ens)?;
            }
            eprintln!(
                "{}: already finished ({} samples of this configuration); nothing to do",
                out.display(),
                ens.acc.samples()
            );
            return finish_divergence(&ens);
        }
        Start::Continue { moments, end } => {
            let (rows, slots) = job.layout();
            check_layout(&out, moments.acc.slots, slots)?;
            let mut ens = moments.into_ensemble(rows);
            eprintln!(
                "resuming {}: {} of {} samples done",
                out.display(),
                ens.next - ens.first,
                end - ens.first
            );
            if end != ens.end {
                ens.end = end;
                super::write_run_files(&out, &cfg, &probe, &fp)?;
            }
            ens
        }
        Start::Fresh { first, end } => {
            out_dir(&out)?;
            write_run_files(&out, &cfg, &probe, &fp)?;
            let ens = job.start(first, end);
            mc::moments::save(&moments_path, &ens, &fp, &[(ens.first, ens.next)])?;
            ens
        }
    };
    mc::install_interrupt_handler();
    let bar = progress(ens.end - ens.first, ens.next - ens.first);
    let mut last_save = Instant::now();
    let every = Duration::from_secs_f64(checkpoint_secs.max(0.1));
    let t0 = Instant::now();
    let done0 = ens.next;
    job.run(&mut ens, threads, |e| {
        bar.set_position(e.next - e.first);
        if last_save.elapsed() >= every || mc::INTERRUPTED.load(Ordering::SeqCst) {
            mc::moments::save(&moments_path, e, &fp, &[(e.first, e.next)])?;
            last_save = Instant::now();
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    mc::moments::save(&moments_path, &ens, &fp, &[(ens.first, ens.next)])?;
    if !ens.done() {
        return Err(mc::Interrupted(format!(
            "interrupted: {} samples saved; continue with: sigprop simulate --resume {} (or the same command again)",
            ens.next - ens.first,
            out.display()
        ))
        .into());
    }
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
    finish_divergence(&ens)
}

fn check_layout(out: &Path, stored: usize, built: usize) -> anyhow::Result<()> {
    if stored != built {
        bail!(
            "{}: moments.bin holds {stored} statistics per sample, but this configuration makes {built}; it was written by another version of sigprop",
            out.display()
        );
    }
    Ok(())
}

fn finish_divergence(ens: &Ensemble) -> anyhow::Result<()> {
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
