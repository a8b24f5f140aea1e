//! `sigprop compare MC.csv THEORY.csv --out DIR`: `compare.csv`, `convergence.csv` and a
//! readable `report.md`.

use std::path::PathBuf;

use super::out_dir;
use crate::compare;
use crate::stats::csv::{read, write_atomic};

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Monte Carlo stats.csv (rows with source = mc).
    pub mc: PathBuf,
    /// Theory stats.csv (rows with source = theory).
    pub theory: PathBuf,
    /// Output folder for compare.csv, convergence.csv and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Pass when |z| is below this.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
}

fn to_csv<T: serde::Serialize>(rows: &[T]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(a: &CompareArgs) -> anyhow::Result<()> {
    if !(a.threshold > 0.0 && a.threshold.is_finite()) {
        anyhow::bail!(
            "--threshold {}: expected a positive number of standard errors, e.g. 5",
            a.threshold
        );
    }
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
    eprintln!(
        "{} of {} rows pass |z| < {} -> {}",
        pass,
        c.joined.len(),
        a.threshold,
        a.out.join("report.md").display()
    );
    Ok(())
}
