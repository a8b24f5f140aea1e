//! `sigprop sweep`: one configuration over a grid of values of any keys
//! (`--set model.width=128,256,512`), one folder per point, a combined `stats.csv`
//! (and `theory/stats.csv` with `--theory`), and with theory a comparison whose width fits
//! show how |MC − theory| shrinks with n. A point whose results already exist for the same
//! configuration is not run again, so an interrupted sweep loses nothing it finished.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::simulate::SimulateOptions;
use super::theory::TheoryOptions;
use super::{ConfigSource, out_dir};
use crate::stats::csv::{read, write};

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// `--set key=v1,v2,…` sweeps a key (several such flags give their product); a
    /// single value fixes it.
    pub cfg: ConfigSource,
    /// Samples per point.
    pub samples: Option<u64>,
    /// Worker threads for the Monte Carlo (default: all cores).
    pub threads: Option<usize>,
    /// Also run the theory at every point and compare.
    pub theory: bool,
    /// Output folder: one subfolder per point, the combined stats.csv, theory/, compare/.
    pub out: PathBuf,
    /// Rerun points whose folders hold results of another configuration (they are refused
    /// otherwise).
    pub force: bool,
}

/// A point of the grid: its folder label and its `key=value` settings.
#[derive(Clone, Debug)]
pub struct Point {
    pub label: String,
    pub sets: Vec<String>,
}

/// Splits the `--set` flags into fixed settings and the grid's points; `explicit` points
/// (each a list of settings, e.g. an activation with its critical variances) multiply the
/// grid.
pub fn grid(
    sets: &[String],
    explicit: &[Vec<String>],
) -> anyhow::Result<(Vec<String>, Vec<Point>, bool)> {
    let mut fixed = Vec::new();
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set `{s}`: expected key=value"))?;
        if v.contains(',') && !v.trim_start().starts_with('[') {
            let vals: Vec<String> = v
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
            axes.push((k.trim().to_string(), vals));
        } else {
            fixed.push(s.clone());
        }
    }
    let width_only = explicit.is_empty() && axes.len() == 1 && axes[0].0 == "model.width";
    let mut points: Vec<Point> = if explicit.is_empty() {
        vec![Point {
            label: String::new(),
            sets: Vec::new(),
        }]
    } else {
        explicit
            .iter()
            .map(|sets| Point {
                label: sets
                    .iter()
                    .filter(|s| !s.starts_with("model.variances."))
                    .map(|s| {
                        s.rsplit_once('.')
                            .map_or(s.as_str(), |(_, t)| t)
                            .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("_"),
                sets: sets.clone(),
            })
            .collect()
    };
    for (k, vals) in &axes {
        let short = k.rsplit('.').next().unwrap_or(k);
        points = points
            .into_iter()
            .flat_map(|p| {
                vals.iter().map(move |v| {
                    let sep = if p.label.is_empty() { "" } else { "_" };
                    let mut sets = p.sets.clone();
                    sets.push(format!("{k}={v}"));
                    Point {
                        label: format!("{}{sep}{short}={v}", p.label),
                        sets,
                    }
                })
            })
            .collect();
    }
    if axes.is_empty() && explicit.is_empty() {
        points[0].label = "point".into();
    }
    Ok((fixed, points, width_only))
}

/// Runs every point; returns the combined MC rows' file and, with theory, the theory file.
pub fn run_grid(
    base: &ConfigSource,
    explicit: &[Vec<String>],
    samples: Option<u64>,
    threads: Option<usize>,
    theory: bool,
    force: bool,
    out: &Path,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let (fixed, points, width_only) = grid(&base.set, explicit)?;
    if let Some(n) = samples {
        crate::config::count_value("run.samples", "--samples", n)?;
    }
    out_dir(out)?;
    let fixed_args = ConfigSource {
        set: fixed.clone(),
        ..base.clone()
    };
    let base_name = fixed_args.builder()?.build().map(|c| c.run.name.clone())?;
    let mut mc_rows = Vec::new();
    let mut th_rows = Vec::new();
    for (k, p) in points.iter().enumerate() {
        eprintln!("[{}/{}] {}", k + 1, points.len(), p.label);
        let dir = out.join(&p.label);
        let cfg = point_config(base, &fixed, p, (width_only, points.len()), &base_name);
        // A point folder that holds this point's run continues it (or is left as it is when
        // finished); one that holds anything else is refused unless --force.
        super::simulate::run(&SimulateOptions {
            cfg: cfg.clone(),
            samples,
            seed: None,
            threads,
            shard: None,
            resume: None,
            out: Some(dir.clone()),
            checkpoint_secs: 30.0,
            force,
        })?;
        mc_rows.extend(read(&dir.join("stats.csv"))?);
        if theory {
            let tdir = dir.join("theory");
            super::theory::run(&TheoryOptions {
                cfg,
                out: Some(tdir.clone()),
                force,
            })?;
            th_rows.extend(read(&tdir.join("stats.csv"))?);
        }
    }
    let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
    super::compare::write_points(out, &labels, "")?;
    let mc_path = out.join("stats.csv");
    write(&mc_path, &mc_rows)?;
    let th_path = if theory {
        out_dir(&out.join("theory"))?;
        let p = out.join("theory").join("stats.csv");
        write(&p, &th_rows)?;
        super::compare::write_points(&out.join("theory"), &labels, "theory")?;
        Some(p)
    } else {
        None
    };
    Ok((mc_path, th_path))
}

/// The configuration of one point: the fixed settings, the point's own, and a run name that
/// carries the non-width axes (so compare and plot can follow one configuration across
/// widths).
fn point_config(
    base: &ConfigSource,
    fixed: &[String],
    p: &Point,
    (width_only, n_points): (bool, usize),
    base_name: &str,
) -> ConfigSource {
    let mut sets = fixed.to_vec();
    sets.extend(p.sets.iter().cloned());
    let suffix: Vec<&str> = p
        .label
        .split('_')
        .filter(|part| !part.starts_with("width="))
        .collect();
    if !width_only
        && n_points > 1
        && !suffix.is_empty()
        && !base.set.iter().any(|s| s.starts_with("run.name="))
    {
        sets.push(format!("run.name={base_name}-{}", suffix.join("_")));
    }
    ConfigSource {
        set: sets,
        ..base.clone()
    }
}

/// The theory at `theory.order = order` for every point of the grid (after [`run_grid`]),
/// into `POINT/theory-order{order}/` and the combined `out/theory-order{order}/stats.csv`.
pub fn theory_at_order(
    base: &ConfigSource,
    explicit: &[Vec<String>],
    order: u8,
    force: bool,
    out: &Path,
) -> anyhow::Result<PathBuf> {
    let (fixed, points, width_only) = grid(&base.set, explicit)?;
    let fixed_args = ConfigSource {
        set: fixed.clone(),
        ..base.clone()
    };
    let base_name = fixed_args.builder()?.build().map(|c| c.run.name.clone())?;
    let folder = format!("theory-order{order}");
    let mut th_rows = Vec::new();
    for p in &points {
        let mut cfg = point_config(base, &fixed, p, (width_only, points.len()), &base_name);
        cfg.set.push(format!("theory.order={order}"));
        let tdir = out.join(&p.label).join(&folder);
        super::theory::run(&TheoryOptions {
            cfg,
            out: Some(tdir.clone()),
            force,
        })?;
        th_rows.extend(read(&tdir.join("stats.csv"))?);
    }
    out_dir(&out.join(&folder))?;
    let path = out.join(&folder).join("stats.csv");
    write(&path, &th_rows)?;
    Ok(path)
}

pub fn run(a: &SweepOptions) -> anyhow::Result<()> {
    let (mc, th) = run_grid(&a.cfg, &[], a.samples, a.threads, a.theory, a.force, &a.out)?;
    compare_grid(mc, th, &a.out)
}

/// With theory, writes `out/compare/` (compare.csv, convergence.csv, report.md).
pub fn compare_grid(mc: PathBuf, theory: Option<PathBuf>, out: &Path) -> anyhow::Result<()> {
    compare_into(mc, theory, &out.join("compare"))
}

/// [`compare_grid`] into the folder `dir`.
pub fn compare_into(mc: PathBuf, theory: Option<PathBuf>, dir: &Path) -> anyhow::Result<()> {
    match theory {
        Some(theory) => super::compare::run(&super::compare::CompareOptions {
            mc,
            theory,
            out: dir.to_path_buf(),
            threshold: 5.0,
            force: false,
        }),
        None => Ok(()),
    }
}
