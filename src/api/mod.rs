//! The library's entry points: one function per job (simulate, theory, compare, merge, sweep,
//! run an experiment, train, hparams, transfer, plot), each taking its options as a plain
//! struct and returning a typed [`Error`]. The `sigprop` binary is a thin clap layer over
//! these (`src/cli/`); other front ends (a notebook, a script) call them the same way.
//! An interrupt (SIGINT, SIGTERM) comes back as [`Error::Interrupted`] after everything
//! finished is saved; nothing here exits the process.

pub mod compare;
pub mod hparams;
pub mod merge;
pub mod plot;
pub mod run;
pub mod simulate;
pub mod sweep;
pub mod theory;
pub mod train;
pub mod transfer;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::ConfigError;
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::config::{Config, ConfigBuilder};
use crate::mc::Interrupted;

/// What an entry point can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key or value is wrong; the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Stopped by a signal with everything finished saved; the message says how to continue.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// Anything else (a refused folder, a file that cannot be read, a diverged network), as
    /// one line naming what is at fault.
    #[error("{0}")]
    Failed(String),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        let e = match e.downcast::<Interrupted>() {
            Ok(i) => return Error::Interrupted(i),
            Err(e) => e,
        };
        let e = match e.downcast::<ConfigError>() {
            Ok(c) => return Error::Config(c),
            Err(e) => e,
        };
        let chain: Vec<String> = e
            .chain()
            .map(|c| crate::config::one_line(&c.to_string()))
            .collect();
        Error::Failed(chain.join(": "))
    }
}

/// A Monte Carlo ensemble into `out` (new, resumed or grown).
pub fn simulate(o: &simulate::SimulateOptions) -> Result<(), Error> {
    simulate::run(o).map_err(Error::from)
}

/// The infinite-width theory into `out`, in the Monte Carlo's schema.
pub fn theory(o: &theory::TheoryOptions) -> Result<(), Error> {
    theory::run(o).map_err(Error::from)
}

/// Monte Carlo against theory: z-scores, fits and report.md.
pub fn compare(o: &compare::CompareOptions) -> Result<(), Error> {
    compare::run(o).map_err(Error::from)
}

/// Shards of one ensemble, combined exactly.
pub fn merge(o: &merge::MergeOptions) -> Result<(), Error> {
    merge::run(o).map_err(Error::from)
}

/// One configuration over a grid of key values (with theory and compare).
pub fn sweep(o: &sweep::SweepOptions) -> Result<(), Error> {
    sweep::run(o).map_err(Error::from)
}

/// Everything an experiment file asks for.
pub fn run(o: &run::RunOptions) -> Result<(), Error> {
    run::run(o).map_err(Error::from)
}

/// A training run on a built-in task.
pub fn train(o: &train::TrainOptions) -> Result<(), Error> {
    train::run(o).map_err(Error::from)
}

/// The width-scaling table of init variances and learning rates.
pub fn hparams(o: &hparams::HparamsOptions) -> Result<(), Error> {
    hparams::run(o).map_err(Error::from)
}

/// Learning-rate transfer over widths × rates per family.
pub fn transfer(o: &transfer::TransferOptions) -> Result<(), Error> {
    transfer::run(o).map_err(Error::from)
}

/// Figures from the stats.csv of each folder.
pub fn plot(o: &plot::PlotOptions) -> Result<(), Error> {
    plot::run(o).map_err(Error::from)
}

/// Options every command that reads a configuration shares.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Configuration file (TOML; keys in docs/configuration.md); built-in defaults (the
    /// paper-vit shape) without it.
    pub config: Option<PathBuf>,
    /// Override any key: --set model.width=256 (repeatable).
    pub set: Vec<String>,
    /// Configuration given as TOML text rather than a file (a notebook's dict), applied
    /// after `config` and before `set`.
    pub toml: Option<String>,
    /// Probe inputs file (CSV: sequence,token,x0,… or sequence,token,id).
    pub inputs: Option<PathBuf>,
    /// Memory the run may use, e.g. 40G (default: the memory available); a configuration
    /// whose estimated peak exceeds it is refused before anything is allocated.
    pub max_memory: Option<String>,
}

impl ConfigSource {
    /// The builder with the file and every override applied, before validation.
    pub fn builder(&self) -> anyhow::Result<ConfigBuilder> {
        let mut b = ConfigBuilder::new();
        if let Some(c) = &self.config {
            b = b.file(c)?;
        }
        if let Some(t) = &self.toml {
            b = b.toml_str(t, "the configuration")?;
        }
        for s in &self.set {
            b = b.set(s)?;
        }
        if let Some(p) = &self.inputs {
            b = b
                .value("inputs.kind", toml::Value::from("file"))?
                .value("inputs.path", toml::Value::from(p.display().to_string()))?;
        }
        Ok(b)
    }
}

/// Creates the output folder.
pub fn out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))
}

/// The first line of every `config.toml` a run writes: the run's fingerprint, so that a
/// folder's results are recognized (and never silently overwritten by another run's).
const FINGERPRINT_LINE: &str = "# sigprop fingerprint ";

/// Writes the resolved `config.toml` (headed by the run's fingerprint) and the probe
/// `inputs.csv` beside the results.
pub fn write_run_files(
    dir: &Path,
    cfg: &Config,
    probe: &crate::model::Probe,
    fp: &Fingerprint,
) -> anyhow::Result<()> {
    write_config(dir, cfg, fp)?;
    crate::stats::csv::write_atomic(&dir.join("inputs.csv"), &crate::inputs::to_csv(probe)?)
}

/// Refuses a `--resume DIR` that also gives a flag which would change the run: `given` pairs
/// each flag with whether it was given. `--out` counts unless it names DIR itself.
pub fn refuse_changes_on_resume(
    args: &ConfigSource,
    dir: &Path,
    out: Option<&Path>,
    given: &[(&str, bool)],
) -> anyhow::Result<()> {
    let shared = [
        ("--config", args.config.is_some()),
        ("--set", !args.set.is_empty()),
        ("a configuration", args.toml.is_some()),
        ("--inputs", args.inputs.is_some()),
        ("--out", out.is_some_and(|o| o != dir)),
    ];
    if let Some((flag, _)) = shared.iter().chain(given).find(|c| c.1) {
        anyhow::bail!(
            "--resume continues {} exactly as it was started, and {flag} would change it; start a new run with --out instead",
            dir.display()
        );
    }
    Ok(())
}

/// Writes the resolved `config.toml`, headed by the run's fingerprint.
pub fn write_config(dir: &Path, cfg: &Config, fp: &Fingerprint) -> anyhow::Result<()> {
    let text = format!(
        "{FINGERPRINT_LINE}{} (checked whenever these results are reused; do not edit this file)\n{}",
        fp.hex(),
        cfg.to_toml()
    );
    crate::stats::csv::write_atomic(&dir.join("config.toml"), text.as_bytes())
}

/// The fingerprint a folder's `config.toml` was written with, if any.
pub fn stored_fingerprint(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.strip_prefix(FINGERPRINT_LINE))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        })
}

/// The configuration and probe a run folder holds: its `config.toml`, and the probe read from
/// its own `inputs.csv` (never from the path the configuration names, which may be relative
/// to wherever the run was started).
pub fn load_run(dir: &Path) -> anyhow::Result<(Config, crate::model::Probe)> {
    let mut cfg = ConfigBuilder::new()
        .file(&dir.join("config.toml"))?
        .build()?;
    let probe =
        crate::inputs::read_file(&dir.join("inputs.csv"), cfg.model.stem, cfg.inputs.vocab)?;
    let dim = probe.x.as_ref().map(|x| x.ncols());
    cfg.set_input_shape(probe.sequences, probe.tokens, dim);
    // inputs.csv holds the encoder's probe; an encoder–decoder's decoder probe and padding
    // mask follow from it and the configuration.
    let probe = crate::inputs::with_decoder(&cfg, probe);
    Ok((cfg, probe))
}

/// What an output folder already holds, for a run whose fingerprint is `fp`.
pub enum Existing {
    /// Nothing, or no folder yet.
    Nothing,
    /// Results of this very run (same fingerprint).
    Same,
    /// Something else; the text says what.
    Other(String),
}

/// Looks into `dir` before a command writes there.
pub fn inspect(dir: &Path, fp: &Fingerprint, purpose: Purpose) -> Existing {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Existing::Nothing;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Existing::Nothing;
    }
    match stored_fingerprint(dir) {
        Some(h) if h == fp.hex() => Existing::Same,
        Some(_) => {
            Existing::Other(match load_run(dir) {
                Ok((cfg, probe)) => {
                    let old = Fingerprint::of(&cfg, &probe, purpose);
                    match old.difference(fp) {
                    Some(d) => format!("another configuration: {d}"),
                    None => "results of another kind (Monte Carlo vs theory), or an edited config.toml".into(),
                }
                }
                Err(_) => "another run's results".into(),
            })
        }
        None if names.iter().any(|n| n == "config.toml") => Existing::Other(
            "results without a fingerprint, written by an older sigprop or by hand".into(),
        ),
        None => {
            let mut shown: Vec<&str> = names.iter().map(String::as_str).take(4).collect();
            if names.len() > 4 {
                shown.push("…");
            }
            Existing::Other(format!(
                "files not written by this run: {}",
                shown.join(", ")
            ))
        }
    }
}

/// Refuses to write into a folder holding other results unless `force`; with `force`, clears
/// the files a run writes so no stale one survives.
pub fn claim(
    dir: &Path,
    fp: &Fingerprint,
    purpose: Purpose,
    force: bool,
    flag: &str,
) -> anyhow::Result<Existing> {
    let e = inspect(dir, fp, purpose);
    if let Existing::Other(why) = &e {
        if !force {
            anyhow::bail!(
                "{} already holds results ({why}); pass --force to overwrite them, or choose another {flag}",
                dir.display()
            );
        }
        for f in [
            "moments.bin",
            "stats.csv",
            "config.toml",
            "inputs.csv",
            "train.csv",
            "checkpoint.bin",
            "hparams.json",
        ] {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        return Ok(Existing::Nothing);
    }
    Ok(e)
}

/// Refuses a grid over widths whose largest point would not fit in memory: the
/// configuration at the largest width is built from `builder`, turned into the point's
/// configuration by `point`, and estimated by `estimate` (see [`crate::limits`]).
pub fn check_largest_width(
    builder: &dyn Fn() -> anyhow::Result<ConfigBuilder>,
    widths: &[usize],
    point: &dyn Fn(Config) -> anyhow::Result<Config>,
    estimate: &dyn Fn(&Config) -> crate::limits::Estimate,
    what: &str,
    max_memory: Option<&str>,
) -> anyhow::Result<()> {
    let Some(&w) = widths.iter().max() else {
        return Ok(());
    };
    let width = crate::config::count_value("model.width", "width", w as u64)?;
    let cfg = point(builder()?.value("model.width", width)?.build()?)?;
    crate::limits::enforce(what, &estimate(&cfg), max_memory)
}
