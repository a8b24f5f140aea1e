//! `sigprop transfer`: the learning-rate transfer grid of SPEC §7 into
//! `DIR/transfer.csv`, `DIR/drift.csv`, `DIR/drift.md` and the figure
//! `DIR/transfer.png`/`.svg` (drawn from transfer.csv alone). See
//! [`crate::train::transfer`] for how the grid's lr reaches each width.

use std::path::PathBuf;

use anyhow::Context;

use super::ConfigSource;
use crate::hparams::Family;
use crate::train::transfer::{self, Grid, lr_label};

#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub cfg: ConfigSource,
    /// Families, comma-separated: standard, ntk, mup, s=<value>.
    pub family: String,
    /// Widths, comma-separated; the smallest is where the grid's lr is every group's rate.
    pub widths: String,
    /// Learning rates η at the smallest width: numbers, 2^e, or a range 2^a..2^b (step 1 in
    /// log₂), comma-separated.
    pub lrs: String,
    /// Global AdamW weight decay (kept as lr_g·wd_g = η·wd at every width).
    pub wd: f64,
    /// Trainings per point, with train.seed = s₀ … s₀+K−1; the figure shows mean ± standard
    /// error and drift.md the optimum's drift with a bootstrap over seeds.
    pub seeds: usize,
    /// Points trained at once, one thread each (default: all cores).
    pub threads: Option<usize>,
    /// Output folder (transfer.csv, drift.md, the figure); points already in it are kept.
    pub out: PathBuf,
}

pub fn parse_families(s: &str) -> anyhow::Result<Vec<Family>> {
    let mut out: Vec<Family> = Vec::new();
    for t in s.split(',').filter(|t| !t.trim().is_empty()) {
        let f: Family = t.parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        anyhow::bail!("--family `{s}`: expected a comma-separated list, e.g. standard,ntk,mup");
    }
    Ok(out)
}

pub fn parse_widths(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut w: Vec<usize> = s
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| {
                    format!(
                        "--widths `{s}`: expected widths ≥ 1 separated by commas, e.g. 64,128,256"
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    w.sort_unstable();
    w.dedup();
    Ok(w)
}

/// Runs the grid (skipping points already in DIR/transfer.csv) and draws the figure.
pub fn run_grid(cfg: &ConfigSource, grid: &Grid) -> anyhow::Result<transfer::Summary> {
    if !(grid.weight_decay.is_finite() && grid.weight_decay >= 0.0) {
        anyhow::bail!("--wd {}: expected a number ≥ 0", grid.weight_decay);
    }
    crate::limits::check_threads("--threads", grid.threads)?;
    let builder = || cfg.builder();
    super::check_largest_width(
        &builder,
        &grid.widths,
        &|first| {
            let w = crate::config::count_value("model.width", "width", first.model.width as u64)?;
            Ok(crate::train::configure(
                &first,
                builder()?.value("model.width", w)?,
            )?)
        },
        &|c| crate::limits::training(c, grid.threads),
        "training at the largest width",
        cfg.max_memory.as_deref(),
    )?;
    let s = transfer::run(&builder, grid, &|p, k, n| {
        eprintln!(
            "[{k}/{n}] {} n={} lr={}: train {:.4}, eval {:.4}{} ({:.1} s)",
            p.family,
            p.width,
            lr_label(p.lr),
            p.final_train_loss,
            p.final_eval_loss,
            if p.diverged { ", diverged" } else { "" },
            p.seconds
        );
    })?;
    if s.interrupted {
        return Err(crate::mc::Interrupted(format!(
            "interrupted: {} points are in {}; run the same command again to finish the grid",
            s.skipped + s.ran,
            grid.out.join("transfer.csv").display()
        ))
        .into());
    }
    crate::plot::transfer_figure_of(s.points.clone(), &grid.out)?;
    Ok(s)
}

pub fn run(a: &TransferOptions) -> anyhow::Result<()> {
    let grid = Grid {
        families: parse_families(&a.family)?,
        widths: parse_widths(&a.widths)?,
        lrs: transfer::parse_lrs(&a.lrs)?,
        weight_decay: a.wd,
        seeds: a.seeds,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        out: a.out.clone(),
    };
    let s = run_grid(&a.cfg, &grid)?;
    eprintln!(
        "transfer: {} points trained, {} already done, {:.1} s -> {}",
        s.ran,
        s.skipped,
        s.seconds,
        a.out.display()
    );
    let drift = std::fs::read_to_string(a.out.join("drift.md")).unwrap_or_default();
    for l in drift.lines().filter(|l| l.starts_with("**")) {
        eprintln!("{}", l.trim_matches('*'));
    }
    Ok(())
}
