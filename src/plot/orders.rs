//! The finite-width figure of `theory.order`: |MC − theory| / |theory| of the residual
//! kernel against width on log–log axes, at order 0 (`theory/stats.csv`) and order 1
//! (`theory-order1/stats.csv`) in one plot, each series with its weighted least-squares slope
//! (docs/finite-width.md: order 0 falls like n^−1, order 1 like n^−2 where it is complete).
//! The entries shown are the diagonal (0,0) and the off-diagonal (0,1) kernel at the last
//! layer below the head.

use std::collections::BTreeMap;

use super::convergence::{Convergence, Points, fit};
use super::{PALETTE, Skip, skip};
use crate::stats::csv::Row;

const NAME: &str = "finite_width_orders";

/// The figure from the Monte Carlo rows and the theory rows at order 0 and order 1.
pub(crate) fn figure(mc: &[Row], t0: &[Row], t1: &[Row]) -> Result<Convergence, Skip> {
    let kernel = |r: &&Row| r.site == "resid" && r.observable == "kernel" && r.block != "head";
    let Some(config) = mc.iter().filter(kernel).map(|r| r.config.clone()).min() else {
        return Err(skip(NAME, "no residual kernel rows"));
    };
    let Some(layer) = mc
        .iter()
        .filter(kernel)
        .filter(|r| r.config == config)
        .map(|r| r.layer)
        .max()
    else {
        return Err(skip(NAME, "no residual kernel rows"));
    };
    let index = |rows: &[Row]| -> BTreeMap<(usize, i64, i64), f64> {
        rows.iter()
            .filter(kernel)
            .filter(|r| r.config == config && r.layer == layer)
            .map(|r| ((r.width, r.i, r.j), r.value))
            .collect()
    };
    let (i0, i1) = (index(t0), index(t1));
    let mut series = Vec::new();
    let mut widths = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeSet::new();
    for (k, (order, theory)) in [(0, &i0), (1, &i1)].into_iter().enumerate() {
        for (e, (i, j)) in [(0i64, 0i64), (0, 1)].into_iter().enumerate() {
            let mut pts = Vec::new();
            for r in mc
                .iter()
                .filter(kernel)
                .filter(|r| r.config == config && r.layer == layer && r.i == i && r.j == j)
            {
                let Some(&t) = theory.get(&(r.width, i, j)) else {
                    continue;
                };
                let d = (r.value - t).abs() / t.abs();
                if d > 0.0 && d.is_finite() && r.stderr.is_finite() {
                    pts.push((r.width as f64, d, r.stderr / t.abs()));
                    widths.insert(r.width);
                    samples.insert(r.samples);
                }
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.len() >= 2 {
                series.push((
                    PALETTE[(2 * k + e) % PALETTE.len()],
                    Points {
                        config: config.clone(),
                        what: format!("order {order}: K_{i}{j}"),
                        layer,
                        fit: fit(&pts),
                        pts,
                    },
                ));
            }
        }
    }
    if series.len() < 2 {
        return Err(skip(
            NAME,
            "needs MC, order-0 and order-1 residual kernel rows at 2 widths or more",
        ));
    }
    let join = |v: Vec<String>| v.join(", ");
    Ok(Convergence {
        name: NAME.into(),
        title: "|MC − theory| / |theory| vs width: order 0 and order 1 in 1/n".into(),
        subtitle: format!(
            "{config} · resid kernel at ℓ = {layer} · n={} · MC {} samples",
            join(widths.iter().map(|w| w.to_string()).collect()),
            join(samples.iter().map(|s| s.to_string()).collect())
        ),
        series,
    })
}
