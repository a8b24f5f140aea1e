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

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use super::ConfigArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The experiment file.
    pub experiment: PathBuf,
    /// Results folder (default results/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also copy the figures into plots/NAME/.
    #[arg(long)]
    pub publish: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Override the experiment's samples per point.
    #[arg(long)]
    pub samples: Option<u64>,
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

pub fn run(a: &RunArgs) -> anyhow::Result<()> {
    let e = load(&a.experiment)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&e.name));
    let t0 = Instant::now();
    let base = ConfigArgs {
        config: e.config.clone(),
        set: e.set.clone(),
        inputs: None,
    };
    eprintln!("experiment {}: {}", e.name, e.description);
    let (mc, th) = super::sweep::run_grid(
        &base,
        &e.points,
        a.samples.or(e.samples),
        a.threads,
        e.theory,
        &out,
        |k, n, label| {
            eprintln!("[{}/{n}] {label}", k + 1);
        },
    )?;
    super::sweep::compare_grid(mc, th, &out)?;
    super::plot::run(&super::plot::PlotArgs {
        dirs: vec![out.clone()],
    })?;
    if a.publish {
        let dest = PathBuf::from("plots").join(&e.name);
        std::fs::create_dir_all(&dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        for f in std::fs::read_dir(&out)? {
            let p = f?.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("png" | "svg")) {
                std::fs::copy(&p, dest.join(p.file_name().unwrap_or_default()))?;
            }
        }
        eprintln!("figures copied to {}", dest.display());
    }
    eprintln!(
        "experiment {} done in {:.1} s -> {}",
        e.name,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
