//! `sigprop hparams`: the width-scaling table of SPEC §6 (issue 7), from the paper's rules,
//! optionally with the SGD exponents measured by Monte Carlo beside them.

use std::path::PathBuf;

use anyhow::Context;
use toml::Value;

use super::ConfigArgs;
use crate::config::ConfigBuilder;
use crate::hparams::coord::{self, CoordOpts};
use crate::hparams::format::{self, Format};
use crate::hparams::measure::{self, MeasureOpts};
use crate::hparams::{Anchor, Family, Optimizer, Setup, paper_vit_optimum};

#[derive(clap::Args, Debug, Clone)]
pub struct HparamsArgs {
    /// standard | ntk (s = 0) | mup (s = 1) | s=<value> (footnote 26).
    #[arg(long, default_value = "ntk")]
    pub family: String,
    /// The optimizer the rates are for.
    #[arg(long, value_enum, default_value_t = Optimizer::AdamW)]
    pub optimizer: Optimizer,
    /// The width the base values were tuned at.
    #[arg(long, default_value_t = 256)]
    pub base_width: usize,
    /// Target widths, comma-separated.
    #[arg(long, default_value = "256,512,1024")]
    pub widths: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// Preset that supplies the C's, M, n_patch and n_out (a --config file overrides it).
    #[arg(long, default_value = "paper-vit")]
    pub preset: String,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Global learning rate η (AdamW default: the paper's ViT optimum for standard, ntk,
    /// s=0.5, mup; SGD default: 1).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Global weight decay wd (AdamW default: the paper's ViT optimum; SGD default: 0).
    #[arg(long)]
    pub wd: Option<f64>,
    /// Drop the M factors of W and X, as the paper's experiments did (footnote 41).
    #[arg(long)]
    pub no_m_factors: bool,
    /// paper: λ_g exactly as in (1.99)–(1.116); base: λ_g = 1 at the base width.
    #[arg(long, value_enum, default_value_t = Anchor::Paper, hide_possible_values = true)]
    pub anchor: Anchor,
    /// Measure the SGD exponents by Monte Carlo and add them to the table.
    #[arg(long)]
    pub measure: bool,
    /// Widths of the measurement.
    #[arg(long, default_value = "128,256,512,1024")]
    pub measure_widths: String,
    /// Samples per width of the measurement.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Worker threads of the measurement (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Coordinate check: one AdamW step or a few SGD steps with the table's
    /// rates (times --coord-lr-scale), Δf and Δz^ℓ against width (Markdown only).
    #[arg(long)]
    pub coord_check: bool,
    /// Widths of the coordinate check.
    #[arg(long, default_value = "64,128,256,512,1024")]
    pub coord_widths: String,
    /// Networks per width in the coordinate check.
    #[arg(long, default_value_t = 4)]
    pub coord_samples: usize,
    /// Multiplies every rate in the coordinate check, to stay in the linear regime.
    #[arg(long, default_value_t = 1e-3)]
    pub coord_lr_scale: f64,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn widths(flag: &str, s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .map(|w| {
            w.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| {
                    format!("{flag} `{s}`: expected widths ≥ 1 separated by commas, e.g. 256,512")
                })
        })
        .collect()
}

pub fn run(a: &HparamsArgs) -> anyhow::Result<()> {
    let family: Family = a.family.parse()?;
    let (optimizer, fmt, anchor) = (a.optimizer, a.format, a.anchor);
    let builder = || -> anyhow::Result<ConfigBuilder> {
        let mut b = a.cfg.builder()?;
        if !b.is_set("model.preset") && a.cfg.config.is_none() {
            b = b.value("model.preset", Value::from(a.preset.as_str()))?;
        }
        Ok(b)
    };
    let cfg = builder()?.build()?;
    // The paper tuned only AdamW (§II); for SGD the default is η = 1 (the factors already
    // carry the width dependence, so η is an O(1) number) and no weight decay.
    let (lr0, wd0) = match optimizer {
        Optimizer::AdamW => paper_vit_optimum(family).unzip(),
        Optimizer::Sgd => (Some(1.0), Some(0.0)),
    };
    let lr = a.lr.or(lr0).with_context(|| {
        format!("--family {family}: the paper has no tuned η for it; give --lr and --wd")
    })?;
    let wd = a.wd.or(wd0).unwrap_or(0.0);
    let setup = Setup {
        family,
        optimizer,
        base_width: a.base_width,
        widths: widths("--widths", &a.widths)?,
        lr,
        weight_decay: wd,
        var: cfg.model.var,
        dims: Setup::dims_of(&cfg.model),
        m_factors: !a.no_m_factors,
        anchor,
    };
    setup.validate()?;
    let measured = if a.measure {
        if optimizer != Optimizer::Sgd {
            anyhow::bail!(
                "--measure: the measured exponents test the SGD rules; use --optimizer sgd"
            );
        }
        let threads = a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let opts = MeasureOpts {
            widths: widths("--measure-widths", &a.measure_widths)?,
            samples: a.samples,
            threads,
            ..MeasureOpts::default()
        };
        crate::limits::check_threads("--threads", threads)?;
        super::check_largest_width(
            &builder,
            &opts.widths,
            &|c| Ok(c),
            &|c| crate::limits::monte_carlo(c, threads),
            "the measurement at the largest width",
            a.cfg.max_memory.as_deref(),
        )?;
        Some(measure::measure(&builder, family, setup.m_factors, &opts)?)
    } else {
        None
    };
    let mut text = format::render(&setup, measured.as_deref(), fmt)?;
    if a.coord_check {
        if fmt != Format::Md {
            anyhow::bail!("--coord-check: its table is Markdown; use --format md");
        }
        if !(a.coord_lr_scale.is_finite() && a.coord_lr_scale > 0.0) {
            anyhow::bail!(
                "--coord-lr-scale {}: expected a positive number",
                a.coord_lr_scale
            );
        }
        let opts = CoordOpts {
            widths: widths("--coord-widths", &a.coord_widths)?,
            samples: a.coord_samples,
            ..CoordOpts::default()
        };
        let fits = coord::coord_check(&builder, &setup, a.coord_lr_scale, &opts)?;
        text.push('\n');
        text.push_str(&coord::markdown(&setup, &fits));
    }
    match &a.out {
        Some(p) => crate::stats::csv::write_atomic(p, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(())
}
