//! `sigprop merge SHARD.csv... --out DIR`: combines shards of one ensemble exactly, from
//! the `moments.bin` and `config.toml` beside each shard's `stats.csv`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{out_dir, write_run_files};
use crate::config::ConfigBuilder;
use crate::mc::{self, Ensemble, Job};

#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' stats.csv files (or their folders).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Output folder for the merged run.
    #[arg(long)]
    pub out: PathBuf,
}

fn folder(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// The first shard's config (and its text), the summed moments, the sample ranges seen.
type Merged = (
    crate::config::Config,
    String,
    crate::stats::Accumulator,
    Vec<(u64, u64)>,
);

pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    let mut merged: Option<Merged> = None;
    for shard in &args.shards {
        let dir = folder(shard);
        let cfg_path = dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let (acc, first, next, end) = mc::load_moments(&dir.join("moments.bin"))?;
        if next < end {
            bail!(
                "{}: shard is unfinished ({} of {} samples); resume it first",
                dir.display(),
                next - first,
                end - first
            );
        }
        match &mut merged {
            None => {
                let cfg = ConfigBuilder::new().file(&cfg_path)?.build()?;
                merged = Some((cfg, text, acc, vec![(first, end)]));
            }
            Some((_, t0, total, ranges)) => {
                if *t0 != text {
                    bail!(
                        "{}: config.toml differs from the first shard's; only shards of one run merge",
                        dir.display()
                    );
                }
                if let Some(r) = ranges.iter().find(|r| first < r.1 && r.0 < end) {
                    bail!(
                        "{}: samples {first}..{end} overlap another shard's {}..{}",
                        dir.display(),
                        r.0,
                        r.1
                    );
                }
                if total.slots != acc.slots {
                    bail!("{}: moments.bin has another layout", dir.display());
                }
                total.merge(&acc);
                ranges.push((first, end));
            }
        }
    }
    let Some((mut cfg, _, acc, mut ranges)) = merged else {
        bail!("no shards given")
    };
    ranges.sort();
    let probe = crate::inputs::probe(&mut cfg)?;
    let job = Job::new(&cfg, &probe);
    let (rows, slots) = job.layout();
    if slots != acc.slots {
        bail!("the shards' moments do not match their config.toml");
    }
    out_dir(&args.out)?;
    let first = ranges[0].0;
    let end = ranges.iter().map(|r| r.1).max().unwrap_or(first);
    let ens = Ensemble {
        rows,
        acc,
        first,
        next: end,
        end,
    };
    write_run_files(&args.out, &cfg, &probe)?;
    mc::save_moments(&args.out.join("moments.bin"), &ens)?;
    super::simulate::write_stats(&args.out, &cfg, &ens)?;
    eprintln!(
        "merged {} shards, {} samples -> {}",
        args.shards.len(),
        ens.acc.samples(),
        args.out.join("stats.csv").display()
    );
    Ok(())
}
