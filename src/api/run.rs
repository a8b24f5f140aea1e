//! `sigprop run experiments/NAME.toml`: everything an experiment needs (simulate over its
//! grid, theory, compare, plot) into `results/NAME/`; `--publish` copies the figures into
//! `plots/NAME/` for the README.
//!
//! An experiment file:
//! ```toml
//! name = "prelayernorm-growth"
//! description = "what it shows"
//! config = "base.toml"          # optional, relative to this file
//! set = ["model.preset=paper-vit", "model.width=128,256,512,1024"]   # a comma sweeps
//! samples = 400
//! theory = true
//! ```
//!
//! `kind = "transfer"` runs a learning-rate transfer grid instead (`sigprop transfer`):
//! ```toml
//! name = "transfer-digits"
//! kind = "transfer"
//! set = ["train.task=digits", "train.steps=200"]
//! family = "standard,ntk,mup"
//! widths = "64,128,256"
//! lrs = "2^-11..2^-4"
//! ```
//! Files without `kind` are sweeps, as before.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use super::ConfigSource;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The experiment file.
    pub experiment: PathBuf,
    /// Results folder (default results/NAME).
    pub out: Option<PathBuf>,
    /// Also copy the figures into plots/NAME/.
    pub publish: bool,
    /// Worker threads for the Monte Carlo (default: all cores).
    pub threads: Option<usize>,
    /// Override the experiment's samples per point.
    pub samples: Option<u64>,
    /// Rerun points whose folders hold results of another configuration (they are refused
    /// otherwise).
    pub force: bool,
    /// Memory each point may use, e.g. 40G (default: the memory available).
    pub max_memory: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub config: Option<PathBuf>,
    #[serde(default)]
    pub set: Vec<String>,
    pub samples: Option<u64>,
    #[serde(default)]
    pub theory: bool,
    /// Explicit points, each a list of settings; they multiply the sweep in `set`.
    #[serde(default)]
    pub points: Vec<Vec<String>>,
    /// With `theory`: the theory orders to run (`theory.order`); order 0 goes to `theory/`
    /// and `compare/`, order k > 0 to `theory-order{k}/` and `compare-order{k}/`, and the
    /// finite-width figure shows them side by side. Default: order 0 only.
    #[serde(default)]
    pub orders: Vec<u8>,
    /// `sweep` (the default: simulate, theory, compare) or `transfer`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Transfer only: families, widths and lrs as `sigprop transfer` takes them.
    pub family: Option<String>,
    pub widths: Option<String>,
    pub lrs: Option<String>,
    /// Transfer only: global AdamW weight decay (default 0).
    pub wd: Option<f64>,
    /// Transfer only: trainings per point with consecutive `train.seed`s (default 1).
    pub seeds: Option<usize>,
}

pub fn load(path: &Path) -> anyhow::Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment {}", path.display()))?;
    let mut e: Experiment = toml::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            crate::config::one_line(&err.to_string())
        )
    })?;
    if let Some(c) = &e.config
        && c.is_relative()
    {
        e.config = Some(path.parent().unwrap_or(Path::new(".")).join(c));
    }
    Ok(e)
}

/// An experiment's `name` becomes a folder under `results/` (and `plots/` on publish): it
/// must be one plain path component, so it cannot write anywhere else.
fn check_name(path: &Path, name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.contains("..")
        && !name.starts_with('.')
        && !Path::new(name).is_absolute();
    if !plain {
        anyhow::bail!(
            "{}: name = \"{name}\": expected a plain folder name (no `/`, `\\`, `..` or leading `.`), e.g. \"prelayernorm-growth\"",
            path.display()
        );
    }
    Ok(())
}

pub fn run(a: &RunOptions) -> anyhow::Result<()> {
    let e = load(&a.experiment)?;
    check_name(&a.experiment, &e.name)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&e.name));
    let t0 = Instant::now();
    let base = ConfigSource {
        config: e.config.clone(),
        set: e.set.clone(),
        inputs: None,
        max_memory: a.max_memory.clone(),
    };
    eprintln!("experiment {}: {}", e.name, e.description);
    match e.kind.as_deref().unwrap_or("sweep") {
        "sweep" => {}
        "transfer" => return run_transfer(a, &e, &base, &out, t0),
        k => anyhow::bail!(
            "{}: kind = \"{k}\": expected \"sweep\" or \"transfer\"",
            a.experiment.display()
        ),
    }
    let (mc, th) = super::sweep::run_grid(
        &base,
        &e.points,
        a.samples.or(e.samples),
        a.threads,
        e.theory,
        a.force,
        &out,
    )?;
    super::sweep::compare_grid(mc.clone(), th.clone(), &out)?;
    if th.is_some() {
        for &order in e.orders.iter().filter(|&&o| o > 0) {
            let th = super::sweep::theory_at_order(&base, &e.points, order, a.force, &out)?;
            let dir = out.join(format!("compare-order{order}"));
            super::sweep::compare_into(mc.clone(), Some(th), &dir)?;
        }
    }
    super::plot::run(&super::plot::PlotOptions {
        dirs: vec![out.clone()],
    })?;
    if a.publish {
        publish(&e.name, &out)?;
    }
    eprintln!(
        "experiment {} done in {:.1} s -> {}",
        e.name,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Copies the figures of `out` into `plots/NAME/` for the README, with the small tables the
/// README quotes beside them (a transfer grid's `transfer.csv` and `drift.md`), so the
/// published folder never mixes two runs.
fn publish(name: &str, out: &Path) -> anyhow::Result<()> {
    let dest = PathBuf::from("plots").join(name);
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for f in std::fs::read_dir(out)? {
        let p = f?.path();
        let file = p.file_name().and_then(|x| x.to_str()).unwrap_or_default();
        if matches!(p.extension().and_then(|x| x.to_str()), Some("png" | "svg"))
            || matches!(file, "transfer.csv" | "drift.md")
        {
            std::fs::copy(&p, dest.join(p.file_name().unwrap_or_default()))?;
        }
    }
    eprintln!("figures copied to {}", dest.display());
    Ok(())
}

/// `kind = "transfer"`: the grid of [`super::transfer`] into `out`, figures published on
/// request. `samples`, `theory` and `points` belong to sweeps and are refused here, so a
/// file does not silently ignore them.
fn run_transfer(
    a: &RunOptions,
    e: &Experiment,
    base: &ConfigSource,
    out: &Path,
    t0: Instant,
) -> anyhow::Result<()> {
    let path = a.experiment.display();
    if e.samples.is_some() || e.theory || !e.points.is_empty() {
        anyhow::bail!("{path}: samples, theory and points are for sweeps, not kind = \"transfer\"");
    }
    let need = |v: &Option<String>, key: &str| {
        v.clone()
            .with_context(|| format!("{path}: kind = \"transfer\" needs `{key}`"))
    };
    let grid = crate::train::transfer::Grid {
        families: super::transfer::parse_families(&need(&e.family, "family")?)?,
        widths: super::transfer::parse_widths(&need(&e.widths, "widths")?)?,
        lrs: crate::train::transfer::parse_lrs(&need(&e.lrs, "lrs")?)?,
        weight_decay: e.wd.unwrap_or(0.0),
        seeds: e.seeds.unwrap_or(1),
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        out: out.to_path_buf(),
    };
    let s = super::transfer::run_grid(base, &grid)?;
    if a.publish {
        publish(&e.name, out)?;
    }
    eprintln!(
        "experiment {} done in {:.1} s ({} points trained, {} already done) -> {}",
        e.name,
        t0.elapsed().as_secs_f64(),
        s.ran,
        s.skipped,
        out.display()
    );
    Ok(())
}
