//! `sigprop theory`: the infinite-width predictions of SPEC §4 into `stats.csv` (same schema
//! as the Monte Carlo, `source = theory`), with `config.toml` and `inputs.csv` beside it.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use super::{ConfigSource, Existing, claim, out_dir, write_run_files};
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::config::{Backward, BlockKind, Config, InitDist, Norm};
use crate::theory::transformer::{self as engine, predict_with};

#[derive(Debug, Clone)]
pub struct TheoryOptions {
    pub cfg: ConfigSource,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Overwrite an output folder that holds other results.
    pub force: bool,
}

/// The theory options a configuration asks for (`theory.*` keys, `run.seed`).
pub fn options(cfg: &Config) -> engine::TheoryOptions {
    engine::TheoryOptions {
        logit_samples: cfg.theory.logit_samples,
        error_batches: cfg.theory.error_batches,
        seed: cfg.run.seed,
        backward: cfg.run.backward != Backward::None,
        pairs: cfg.run.backward == Backward::Pairs,
        order: order(cfg),
    }
}

/// `theory.order` as given (0 by default; [`run`] refuses anything but 0 and 1).
pub fn order(cfg: &Config) -> u8 {
    u8::try_from(cfg.theory.order).unwrap_or(u8::MAX)
}

/// The observables the Monte Carlo writes that this theory does not predict, for a mode.
pub fn missing_observables(cfg: &Config) -> Vec<&'static str> {
    let mut m = Vec::new();
    if cfg.model.norm != Norm::Mlp {
        if order(cfg) == 1 {
            // Order 1 derives the stream's fluctuation, not a single unit's kurtosis;
            // exactly uniform attention is not carried.
            m.push("kurtosis (resid, before the head)");
            let uniform = crate::theory::finite::uniform_attention(&cfg.model);
            if uniform && cfg.model.blocks.contains(&BlockKind::Attn) {
                m.push("fluct and kurtosis from the first attention block on");
            }
        } else {
            // The paper does no finite-width analysis (footnote 2).
            m.extend(["fluct", "kurtosis"]);
        }
    }
    if let Some(why) = crate::theory::ntk::unsupported(&cfg.model) {
        eprintln!("note: no backward theory for this model: {why}");
        m.extend(["grad2", "ntk_<group>", "ntk", "ntk_total"]);
    }
    m
}

pub fn run(args: &TheoryOptions) -> anyhow::Result<()> {
    let mut cfg = args.cfg.builder()?.build()?;
    if order(&cfg) > 1 {
        anyhow::bail!(
            "theory.order = {}: expected 0 (infinite width) or 1 (with the 1/n corrections)",
            cfg.theory.order
        );
    }
    let out = args.out.clone().context("theory needs --out DIR")?;
    crate::limits::enforce(
        "the theory",
        &crate::limits::theory(&cfg),
        args.cfg.max_memory.as_deref(),
    )?;
    let probe = crate::inputs::probe(&mut cfg)?;
    let fp = Fingerprint::of(&cfg, &probe, Purpose::Theory);
    if let Existing::Same = claim(&out, &fp, Purpose::Theory, args.force, "--out")?
        && out.join("stats.csv").exists()
    {
        eprintln!(
            "{}: theory of this configuration is already there; nothing to do",
            out.display()
        );
        return Ok(());
    }
    out_dir(&out)?;
    write_run_files(&out, &cfg, &probe, &fp)?;
    // The first walk takes about half the time (all the logit draws at once), so the bar
    // shows up only where it helps: on a terminal, for a model with attention.
    let bar = if std::io::stderr().is_terminal() && cfg.model.blocks.contains(&BlockKind::Attn) {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "theory {spinner} {bar:40} {percent}% of the logit draws, {elapsed} elapsed, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        // Ticks on its own: the first report comes only after the first, longest walk.
        b.enable_steady_tick(std::time::Duration::from_millis(250));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.tick();
    let (rows, diverged) = predict_with(
        &cfg.model,
        &probe,
        options(&cfg),
        &cfg.run.name,
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    crate::stats::csv::write(&out.join("stats.csv"), &rows)?;
    eprintln!(
        "{}: {} theory rows -> {}",
        cfg.run.name,
        rows.len(),
        out.join("stats.csv").display()
    );
    if order(&cfg) == 1 {
        for gap in crate::theory::finite::gaps(&cfg.model, options(&cfg).backward) {
            eprintln!("note: theory.order = 1: {gap}");
        }
    }
    let missing = missing_observables(&cfg);
    if !missing.is_empty() {
        eprintln!(
            "note: no theory rows for {} in this mode",
            missing.join(", ")
        );
    }
    let spec = &cfg.model;
    if spec.norm == Norm::Mlp && spec.group_init.contains(&InitDist::Uniform) {
        eprintln!(
            "note: the fluct/kurtosis theory assumes Gaussian weights; uniform weights add an O(1/n) term from their own excess kurtosis (footnote 15)"
        );
    }
    if spec.logit_exponent > 0.5 && spec.blocks.contains(&BlockKind::Attn) {
        eprintln!(
            "note: logit_exponent > 1/2: attention is exactly uniform at infinite width; a finite-width ensemble deviates by O(C^(1-2a))"
        );
    }
    if let Some(l) = diverged
        && l <= 1
    {
        anyhow::bail!(
            "diverged at layer {l} (overflow or NaN): no layer has finite predictions; lower the variances (model.variances.*)"
        );
    }
    if let Some(l) = diverged {
        eprintln!(
            "warning: diverged at layer {l} (overflow or NaN); stats.csv keeps layers 1 to {}",
            l - 1
        );
    }
    Ok(())
}
