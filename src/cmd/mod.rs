//! The subcommands of the `sigprop` binary (SPEC §3, §8).

pub mod bench;
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

use crate::config::{Config, ConfigBuilder};

/// Options every command that reads a configuration shares.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file (SPEC §3); built-in defaults (preset paper-vit shape) without it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Override any key: --set model.width=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Probe inputs file (CSV: sequence,token,x0,… or sequence,token,id).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
}

impl ConfigArgs {
    /// The builder with the file and every override applied, before validation.
    pub fn builder(&self) -> anyhow::Result<ConfigBuilder> {
        let mut b = ConfigBuilder::new();
        if let Some(c) = &self.config {
            b = b.file(c)?;
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

/// Writes the resolved `config.toml` and the probe `inputs.csv` beside the results.
pub fn write_run_files(
    dir: &Path,
    cfg: &Config,
    probe: &crate::model::Probe,
) -> anyhow::Result<()> {
    crate::stats::csv::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    crate::stats::csv::write_atomic(&dir.join("inputs.csv"), &crate::inputs::to_csv(probe)?)
}
