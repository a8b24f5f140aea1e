//! Monte Carlo against theory (SPEC §5): join the two CSVs on (config, width, layer, site,
//! observable, i, j), z-scores and relative errors, pass/fail at a stated threshold, and
//! for width sweeps the log–log slope of |MC − theory| against n (−1 is a clean 1/n
//! correction).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Observable;
use crate::stats::Row;

/// The join key of SPEC §5.
type Key = (String, usize, usize, String, String, i64, i64);

fn key(r: &Row) -> Key {
    (
        r.config.clone(),
        r.width,
        r.layer,
        r.site.clone(),
        r.observable.clone(),
        r.i,
        r.j,
    )
}

/// One joined row of `compare.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct Joined {
    pub config: String,
    pub width: usize,
    pub heads: usize,
    pub layer: usize,
    pub block: String,
    pub site: String,
    pub observable: String,
    pub i: i64,
    pub j: i64,
    pub mc: f64,
    /// Empty in the CSV when undefined (NaN), as in stats.csv.
    #[serde(serialize_with = "crate::stats::csv::empty_if_undefined")]
    pub mc_stderr: f64,
    pub theory: f64,
    #[serde(serialize_with = "crate::stats::csv::empty_if_undefined")]
    pub theory_stderr: f64,
    pub diff: f64,
    /// (mc − theory) / sqrt(se_mc² + se_theory²); empty when either error is undefined.
    #[serde(serialize_with = "crate::stats::csv::empty_if_undefined")]
    pub z: f64,
    /// (mc − theory) / |theory|
    pub rel: f64,
    pub pass: bool,
    pub samples: u64,
}

/// The join key without the width: one quantity followed across widths.
type WidthFree = (String, usize, String, String, i64, i64);

/// How |MC − theory| of one quantity shrinks with width.
#[derive(Clone, Debug, Serialize)]
pub struct Convergence {
    pub config: String,
    pub layer: usize,
    pub site: String,
    pub observable: String,
    pub i: i64,
    pub j: i64,
    pub widths: String,
    pub slope: f64,
    pub slope_stderr: f64,
}

pub struct Comparison {
    pub joined: Vec<Joined>,
    pub mc_only: usize,
    pub theory_only: usize,
    pub threshold: f64,
    pub convergence: Vec<Convergence>,
}

/// Joins MC and theory rows and scores them.
pub fn compare(mc: &[Row], theory: &[Row], threshold: f64) -> Comparison {
    let th: BTreeMap<Key, &Row> = theory
        .iter()
        .filter(|r| r.source == "theory")
        .map(|r| (key(r), r))
        .collect();
    let mut joined = Vec::new();
    let mut mc_only = 0;
    let mut matched = std::collections::BTreeSet::new();
    for m in mc.iter().filter(|r| r.source == "mc") {
        let k = key(m);
        let Some(t) = th.get(&k) else {
            mc_only += 1;
            continue;
        };
        matched.insert(k);
        let diff = m.value - t.value;
        let se = (m.stderr.powi(2) + t.stderr.powi(2)).sqrt();
        // An undefined error (NaN) leaves the row without a z-score: it neither passes
        // nor fails, and the report counts it apart.
        let z = if se.is_nan() {
            f64::NAN
        } else if se > 0.0 {
            diff / se
        } else if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(diff)
        };
        joined.push(Joined {
            config: m.config.clone(),
            width: m.width,
            heads: m.heads,
            layer: m.layer,
            block: m.block.clone(),
            site: m.site.clone(),
            observable: m.observable.clone(),
            i: m.i,
            j: m.j,
            mc: m.value,
            mc_stderr: m.stderr,
            theory: t.value,
            theory_stderr: t.stderr,
            diff,
            z,
            rel: if t.value != 0.0 {
                diff / t.value.abs()
            } else {
                f64::NAN
            },
            pass: z.abs() < threshold,
            samples: m.samples,
        });
    }
    let theory_only = th.len() - matched.len();
    let convergence = convergence(&joined);
    Comparison {
        joined,
        mc_only,
        theory_only,
        threshold,
        convergence,
    }
}

/// Weighted least squares of log|diff| on log n over the widths of each quantity; the
/// weight of a point is 1/σ² with σ = se/|diff| (the delta method on the log).
fn convergence(joined: &[Joined]) -> Vec<Convergence> {
    let mut groups: BTreeMap<WidthFree, Vec<&Joined>> = BTreeMap::new();
    for j in joined {
        groups
            .entry((
                j.config.clone(),
                j.layer,
                j.site.clone(),
                j.observable.clone(),
                j.i,
                j.j,
            ))
            .or_default()
            .push(j);
    }
    let mut out = Vec::new();
    for ((config, layer, site, observable, i, j), mut pts) in groups {
        pts.sort_by_key(|p| p.width);
        pts.dedup_by_key(|p| p.width);
        if pts.len() < 2 {
            continue;
        }
        let data: Vec<(f64, f64, f64)> = pts
            .iter()
            .filter(|p| p.diff != 0.0 && p.theory != 0.0 && !p.z.is_nan())
            .map(|p| {
                let se = (p.mc_stderr.powi(2) + p.theory_stderr.powi(2)).sqrt();
                (
                    p.width as f64,
                    // Relative, so raw NTK sums that grow like n compare with O(1) ones.
                    p.diff.abs() / p.theory.abs(),
                    // The error of ln|diff| (the theory's value is a constant here).
                    se / p.diff.abs(),
                )
            })
            .collect();
        if data.len() < 2 {
            continue;
        }
        let fit = crate::stats::fit::loglog(data, 1e-3);
        let (slope, err) = (fit.slope, fit.stderr);
        out.push(Convergence {
            config,
            layer,
            site,
            observable,
            i,
            j,
            widths: pts
                .iter()
                .map(|p| p.width.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            slope,
            slope_stderr: err,
        });
    }
    out
}

/// Slope and its standard error of a weighted straight-line fit to (x, y, w)
/// (`stats::fit::weighted_line`).
pub fn weighted_slope(data: &[(f64, f64, f64)]) -> (f64, f64) {
    let f = crate::stats::fit::weighted_line(data);
    (f.slope, f.stderr)
}

/// A report a person can read: totals, per observable, per layer for summaries, the worst
/// disagreements and the width fits.
pub fn report(c: &Comparison, mc_name: &str, th_name: &str) -> String {
    let mut s = String::new();
    let n = c.joined.len();
    let pass = c.joined.iter().filter(|j| j.pass).count();
    let no_error = c.joined.iter().filter(|j| j.z.is_nan()).count();
    let _ = writeln!(s, "# Monte Carlo vs theory\n");
    let _ = writeln!(s, "- Monte Carlo: `{mc_name}`\n- Theory: `{th_name}`");
    let _ = writeln!(
        s,
        "- {n} rows joined on (config, width, layer, site, observable, i, j); {} Monte Carlo rows and {} theory rows had no counterpart.",
        c.mc_only, c.theory_only
    );
    let _ = writeln!(
        s,
        "- Pass means |z| < {} with z = (MC − theory)/sqrt(se_MC² + se_theory²): **{pass} of {n} pass** ({:.1}%).\n",
        c.threshold,
        100.0 * pass as f64 / n.max(1) as f64
    );
    if no_error > 0 {
        let _ = writeln!(
            s,
            "- **{no_error} of {n} rows have no standard error** (fewer than two samples, or sums that overflowed): no z-score, counted neither as pass nor as fail.\n"
        );
    }
    let _ = writeln!(s, "## Per observable\n");
    let _ = writeln!(
        s,
        "| site | observable | rows | pass | max abs z | median abs z | max abs rel. error |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    let mut by_obs: BTreeMap<(String, String), Vec<&Joined>> = BTreeMap::new();
    for j in &c.joined {
        by_obs
            .entry((j.site.clone(), j.observable.clone()))
            .or_default()
            .push(j);
    }
    for ((site, obs), v) in &by_obs {
        let mut zs: Vec<f64> = v
            .iter()
            .map(|j| j.z.abs())
            .filter(|z| !z.is_nan())
            .collect();
        zs.sort_by(f64::total_cmp);
        let rel = v
            .iter()
            .map(|j| j.rel.abs())
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            s,
            "| {site} | {obs} | {} | {} | {:.2} | {:.2} | {:.2e} |",
            v.len(),
            v.iter().filter(|j| j.pass).count(),
            zs.last().copied().unwrap_or(f64::NAN),
            zs.get(zs.len() / 2).copied().unwrap_or(f64::NAN),
            rel
        );
    }
    let summaries: Vec<&Joined> = c
        .joined
        .iter()
        .filter(|j| {
            // A string sigprop does not write (another tool's rows) is not a summary here.
            j.i == -1
                && j.observable
                    .parse::<Observable>()
                    .is_ok_and(|o| o.is_kernel() || o == Observable::Grad2)
        })
        .collect();
    if !summaries.is_empty() {
        let _ = writeln!(s, "\n## Summaries by layer\n");
        let _ = writeln!(
            s,
            "| width | layer | block | site | observable | MC | ± | theory | z |"
        );
        let _ = writeln!(s, "|---:|---:|---|---|---|---:|---:|---:|---:|");
    }
    for j in summaries {
        let (se, z) = if j.z.is_nan() {
            ("—".to_string(), "—".to_string())
        } else {
            (format!("{:.2e}", j.mc_stderr), format!("{:+.2}", j.z))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.6} | {se} | {:.6} | {z} |",
            j.width, j.layer, j.block, j.site, j.observable, j.mc, j.theory
        );
    }
    let _ = writeln!(s, "\n## Worst disagreements\n");
    let _ = writeln!(
        s,
        "| width | layer | site | observable | i | j | MC | ± | theory | z |"
    );
    let _ = writeln!(s, "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
    let mut worst: Vec<&Joined> = c.joined.iter().filter(|j| !j.z.is_nan()).collect();
    worst.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
    for j in worst.iter().take(12) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.6} | {:.2e} | {:.6} | {:+.2} |",
            j.width, j.layer, j.site, j.observable, j.i, j.j, j.mc, j.mc_stderr, j.theory, j.z
        );
    }
    if !c.convergence.is_empty() {
        let _ = writeln!(s, "\n## Finite-width convergence of summaries\n");
        let _ = writeln!(
            s,
            "Slope of log(|MC − theory|/|theory|) against log n; −1 is a clean 1/n correction.\n"
        );
        let _ = writeln!(s, "| layer | site | observable | widths | slope | ± |");
        let _ = writeln!(s, "|---:|---|---|---|---:|---:|");
        for v in c.convergence.iter().filter(|v| v.i == -1) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} |",
                v.layer, v.site, v.observable, v.widths, v.slope, v.slope_stderr
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_an_exact_power_law() {
        let data: Vec<(f64, f64, f64)> = [64.0f64, 128.0, 256.0, 512.0]
            .iter()
            .map(|n| (n.ln(), (3.0 / n).ln(), 1.0))
            .collect();
        let (s, e) = weighted_slope(&data);
        assert!((s + 1.0).abs() < 1e-12, "{s}");
        assert!(e.is_finite());
    }
}
