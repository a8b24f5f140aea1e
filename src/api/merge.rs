//! `sigprop merge SHARD.csv... --out DIR`: combines shards of one ensemble exactly, from
//! the `moments.bin`, `config.toml` and `inputs.csv` beside each shard's `stats.csv`.
//!
//! Shards merge only when their fingerprints agree (same resolved configuration, same probe
//! contents) and their sample ranges do not overlap. Sample k is the same network whatever
//! the run's size, so shards of runs of different lengths merge too; missing ranges are
//! reported, and the result records the samples it really holds.

use std::path::{Path, PathBuf};

use anyhow::bail;

use super::{claim, load_run, out_dir, write_run_files};
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::mc::moments::{self, Moments};
use crate::mc::{self, Ensemble, Job};

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// The shards' stats.csv files (or their folders).
    pub shards: Vec<PathBuf>,
    /// Output folder (stats.csv, moments.bin, config.toml, inputs.csv).
    pub out: PathBuf,
    /// Overwrite an output folder that holds other results.
    pub force: bool,
}

fn folder(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// Joins touching ranges of a sorted list.
fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.1 == r.0 => last.1 = r.1,
            _ => out.push(r),
        }
    }
    out
}

fn show(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| format!("{a}..{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: &MergeOptions) -> anyhow::Result<()> {
    let mut first: Option<(PathBuf, crate::config::Config, crate::model::Probe, Moments)> = None;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut total_samples = 0u64;
    for shard in &args.shards {
        let dir = folder(shard);
        let (cfg, probe) = load_run(&dir)?;
        let m = moments::load(&dir.join("moments.bin"))?;
        let fp = Fingerprint::of(&cfg, &probe, Purpose::MonteCarlo);
        if m.fingerprint.hash != fp.hash {
            bail!(
                "{}: config.toml or inputs.csv changed since its moments were written ({})",
                dir.display(),
                m.fingerprint
                    .difference(&fp)
                    .unwrap_or_else(|| "their contents".into())
            );
        }
        if m.next < m.end {
            bail!(
                "{}: shard is unfinished ({} of {} samples); resume it first",
                dir.display(),
                m.next - m.first,
                m.end - m.first
            );
        }
        total_samples = total_samples.max(cfg.run.samples as u64).max(m.end);
        for &(a, b) in &m.ranges {
            if let Some(r) = ranges.iter().find(|r| a < r.1 && r.0 < b) {
                bail!(
                    "{}: samples {a}..{b} overlap another shard's {}..{}",
                    dir.display(),
                    r.0,
                    r.1
                );
            }
            ranges.push((a, b));
        }
        match &mut first {
            None => first = Some((dir, cfg, probe, m)),
            Some((dir0, _, _, total)) => {
                if total.fingerprint.hash != m.fingerprint.hash {
                    bail!(
                        "{} is not a shard of the same run as {}: {}",
                        dir.display(),
                        dir0.display(),
                        total
                            .fingerprint
                            .difference(&m.fingerprint)
                            .unwrap_or_else(|| "different fingerprints".into())
                    );
                }
                if total.acc.slots != m.acc.slots {
                    bail!("{}: moments.bin has another layout", dir.display());
                }
                total.acc.merge(&m.acc);
            }
        }
    }
    let Some((_, mut cfg, probe, merged)) = first else {
        bail!("no shards given")
    };
    let ranges = coalesce(ranges);
    let gaps = moments::missing(&ranges, 0, total_samples);
    let job = Job::new(&cfg, &probe);
    let (rows, slots) = job.layout();
    if slots != merged.acc.slots {
        bail!("the shards' moments do not match their config.toml");
    }
    let fp = merged.fingerprint.clone();
    claim(&args.out, &fp, Purpose::MonteCarlo, args.force, "--out")?;
    out_dir(&args.out)?;
    let held = merged.acc.samples();
    let ens = Ensemble {
        rows,
        acc: merged.acc,
        first: 0,
        next: total_samples,
        end: total_samples,
    };
    // The configuration records the samples the merge really holds.
    cfg.set_samples(held);
    write_run_files(&args.out, &cfg, &probe, &fp)?;
    mc::moments::save(&args.out.join("moments.bin"), &ens, &fp, &ranges)?;
    super::simulate::write_stats(&args.out, &cfg, &ens)?;
    eprintln!(
        "merged {} shards, {held} samples -> {}",
        args.shards.len(),
        args.out.join("stats.csv").display()
    );
    if !gaps.is_empty() {
        eprintln!(
            "warning: samples {} of 0..{total_samples} are missing: the merge holds {held} samples (run and merge the missing shards to complete it)",
            show(&gaps)
        );
    }
    Ok(())
}
