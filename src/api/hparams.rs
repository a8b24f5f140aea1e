//! `sigprop hparams`: the width-scaling table of SPEC §6, from the paper's rules,
//! optionally with the SGD exponents measured by Monte Carlo beside them.

use std::path::PathBuf;

use anyhow::Context;
use toml::Value;

use super::ConfigSource;
use crate::config::ConfigBuilder;
use crate::hparams::coord::{self, CoordOpts};
use crate::hparams::format::{self, Format};
use crate::hparams::measure::{self, MeasureOpts};
use crate::hparams::{Anchor, Family, Optimizer, Setup, paper_vit_optimum};

#[derive(Debug, Clone)]
pub struct HparamsOptions {
    /// standard | ntk (s = 0) | mup (s = 1) | s=<value> (footnote 26).
    pub family: String,
    /// The optimizer the rates are for.
    pub optimizer: Optimizer,
    /// The width the base values were tuned at.
    pub base_width: usize,
    /// Target widths, comma-separated.
    pub widths: String,
    /// Output format.
    pub format: Format,
    /// Preset that supplies the C's, M, n_patch and n_out (a --config file overrides it).
    pub preset: String,
    pub cfg: ConfigSource,
    /// Global learning rate η (AdamW default: the paper's ViT optimum for standard, ntk,
    /// s=0.5, mup; SGD default: 1).
    pub lr: Option<f64>,
    /// Global weight decay wd (AdamW default: the paper's ViT optimum; SGD default: 0).
    pub wd: Option<f64>,
    /// Drop the M factors of W and X, as the paper's experiments did (footnote 41).
    pub no_m_factors: bool,
    /// paper: λ_g exactly as in (1.99)–(1.116); base: λ_g = 1 at the base width.
    pub anchor: Anchor,
    /// Measure the SGD exponents by Monte Carlo and add them to the table.
    pub measure: bool,
    /// Widths of the measurement.
    pub measure_widths: String,
    /// Samples per width of the measurement.
    pub samples: usize,
    /// Worker threads of the measurement (default: all cores).
    pub threads: Option<usize>,
    /// Coordinate check: one AdamW step or a few SGD steps with the table's
    /// rates (times --coord-lr-scale), Δf and Δz^ℓ against width (Markdown only).
    pub coord_check: bool,
    /// Widths of the coordinate check.
    pub coord_widths: String,
    /// Networks per width in the coordinate check.
    pub coord_samples: usize,
    /// Multiplies every rate in the coordinate check, to stay in the linear regime.
    pub coord_lr_scale: f64,
    /// Write here instead of standard output.
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

pub fn run(a: &HparamsOptions) -> anyhow::Result<()> {
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
