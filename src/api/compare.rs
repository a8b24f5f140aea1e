//! `sigprop compare MC.csv THEORY.csv --out DIR`: `compare.csv`, `convergence.csv` and a
//! readable `report.md`.

use std::path::{Path, PathBuf};

use super::out_dir;
use crate::compare;
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::stats::csv::{read, write_atomic};

#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Monte Carlo stats.csv (rows with source = mc).
    pub mc: PathBuf,
    /// Theory stats.csv (rows with source = theory).
    pub theory: PathBuf,
    /// Output folder for compare.csv, convergence.csv and report.md.
    pub out: PathBuf,
    /// Pass when |z| is below this.
    pub threshold: f64,
    /// Compare even when the two sides' config.toml describe different configurations.
    pub force: bool,
}

/// The runs behind a stats.csv: (config name, width) → fingerprint for comparison. A run
/// folder has its `config.toml`; a sweep's combined file has `points.toml`, naming the point
/// folders. None when neither is there.
fn runs_behind(csv: &Path) -> anyhow::Result<Option<Vec<(String, usize, Fingerprint)>>> {
    let dir = csv.parent().unwrap_or(Path::new("."));
    let dirs: Vec<PathBuf> = if dir.join("config.toml").exists() {
        vec![dir.to_path_buf()]
    } else if let Ok(text) = std::fs::read_to_string(dir.join(POINTS)) {
        let p: Points = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                dir.join(POINTS).display(),
                crate::config::one_line(&e.to_string())
            )
        })?;
        p.dirs.iter().map(|d| dir.join(d)).collect()
    } else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for d in dirs {
        let (cfg, probe) = super::load_run(&d)?;
        let fp = Fingerprint::of(&cfg, &probe, Purpose::Compare);
        out.push((cfg.run.name.clone(), cfg.model.width, fp));
    }
    Ok(Some(out))
}

/// Refuses (unless `force`) when a configuration appears on both sides with different
/// resolved settings or probes; warns when a side has no configuration to check.
fn check_same_runs(a: &CompareOptions) -> anyhow::Result<()> {
    let (Some(mc), Some(th)) = (runs_behind(&a.mc)?, runs_behind(&a.theory)?) else {
        eprintln!(
            "note: no config.toml beside {} or {}: cannot check that both describe the same configuration",
            a.mc.display(),
            a.theory.display()
        );
        return Ok(());
    };
    for (name, width, fm) in &mc {
        for (_, _, ft) in th.iter().filter(|(n, w, _)| n == name && w == width) {
            if fm.hash != ft.hash && !a.force {
                anyhow::bail!(
                    "{} and {} are not runs of the same configuration (config {name}, width {width}: {}); pass --force to compare anyway",
                    a.mc.display(),
                    a.theory.display(),
                    fm.difference(ft)
                        .unwrap_or_else(|| "different fingerprints".into())
                );
            }
        }
    }
    Ok(())
}

/// The list of point folders behind a sweep's combined stats.csv.
const POINTS: &str = "points.toml";

#[derive(serde::Serialize, serde::Deserialize)]
struct Points {
    dirs: Vec<String>,
}

/// Writes `dir/points.toml`: each point's folder (relative to `dir`), `sub` inside it.
pub fn write_points(dir: &Path, labels: &[&str], sub: &str) -> anyhow::Result<()> {
    let up = if sub.is_empty() { "" } else { "../" };
    let dirs = labels
        .iter()
        .map(|l| {
            let mut p = format!("{up}{l}");
            if !sub.is_empty() {
                p = format!("{p}/{sub}");
            }
            p
        })
        .collect();
    let text = toml::to_string(&Points { dirs })?;
    write_atomic(&dir.join(POINTS), text.as_bytes())
}

fn to_csv<T: serde::Serialize>(rows: &[T]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(a: &CompareOptions) -> anyhow::Result<()> {
    if !(a.threshold > 0.0 && a.threshold.is_finite()) {
        anyhow::bail!(
            "--threshold {}: expected a positive number of standard errors, e.g. 5",
            a.threshold
        );
    }
    check_same_runs(a)?;
    let mc = read(&a.mc)?;
    let th = read(&a.theory)?;
    let c = compare::compare(&mc, &th, a.threshold);
    if c.joined.is_empty() {
        anyhow::bail!(
            "no rows of {} match {} on (config, width, layer, site, observable, i, j): are they runs of the same configuration?",
            a.mc.display(),
            a.theory.display()
        );
    }
    out_dir(&a.out)?;
    write_atomic(&a.out.join("compare.csv"), &to_csv(&c.joined)?)?;
    write_atomic(&a.out.join("convergence.csv"), &to_csv(&c.convergence)?)?;
    let rep = compare::report(
        &c,
        &a.mc.display().to_string(),
        &a.theory.display().to_string(),
    );
    write_atomic(&a.out.join("report.md"), rep.as_bytes())?;
    let pass = c.joined.iter().filter(|j| j.pass).count();
    let no_error = c.joined.iter().filter(|j| j.z.is_nan()).count();
    let undefined = if no_error > 0 {
        format!(" ({no_error} rows without a standard error are neither)")
    } else {
        String::new()
    };
    eprintln!(
        "{} of {} rows pass |z| < {}{undefined} -> {}",
        pass,
        c.joined.len(),
        a.threshold,
        a.out.join("report.md").display()
    );
    Ok(())
}
