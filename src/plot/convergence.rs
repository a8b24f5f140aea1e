//! Finite-width convergence: the relative deviation |MC − theory|/|theory| of a few summaries
//! (the residual kernel at the last layer, the gradient size at the stem, the LN kernel
//! between tokens at the last LN, the query NTK of the first attention block) against width
//! on log–log axes, each with its weighted least-squares slope and standard error in the
//! legend (−1 is a clean 1/n correction; SPEC §5), and a 1/n guide. Relative, so that raw
//! NTK sums that grow like n compare with O(1) quantities.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Data, Figure, Mark, Skip, font, header, legend, legend_width, padded, short, skip};
use crate::model::Group;
use crate::stats::csv::Row;
use crate::stats::{Observable, Site};

/// One quantity's deviations: (width, |Δ|/|theory|, its stderr).
pub(crate) struct Points {
    pub(crate) config: String,
    pub(crate) what: String,
    pub(crate) layer: usize,
    pub(crate) pts: Vec<(f64, f64, f64)>,
    pub(crate) fit: Option<Fit>,
}

/// Least squares of log10 |Δ| on log10 n.
#[derive(Clone, Copy)]
pub(crate) struct Fit {
    slope: f64,
    /// Standard error of the slope from the residuals; `None` with only two widths.
    slope_err: Option<f64>,
    intercept: f64,
}

pub(crate) fn fit(pts: &[(f64, f64, f64)]) -> Option<Fit> {
    if pts.len() < 2 {
        return None;
    }
    // Weighted by the inverse variance of log10 |Δ| (delta method: σ = se/(|Δ| ln 10)),
    // floored so one very precise point does not decide alone.
    let data: Vec<(f64, f64, f64)> = pts
        .iter()
        .map(|&(n, d, e)| {
            let sigma = (e / (d * std::f64::consts::LN_10)).max(1e-3);
            (n.log10(), d.log10(), 1.0 / (sigma * sigma))
        })
        .collect();
    let sw: f64 = data.iter().map(|d| d.2).sum();
    let mx = data.iter().map(|d| d.2 * d.0).sum::<f64>() / sw;
    let my = data.iter().map(|d| d.2 * d.1).sum::<f64>() / sw;
    let sxx: f64 = data.iter().map(|d| d.2 * (d.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let (slope, err) = crate::compare::weighted_slope(&data);
    Some(Fit {
        slope,
        slope_err: (pts.len() > 2).then_some(err),
        intercept: my - slope * mx,
    })
}

/// 1, 2, 5 × 10^k inside [lo, hi].
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    if !(lo > 0.0 && hi > lo) {
        return out;
    }
    let mut k = lo.log10().floor() as i32;
    while 10f64.powi(k) <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(k);
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        k += 1;
    }
    out
}

/// "−1.02" with a real minus sign.
fn minus(v: f64) -> String {
    format!("{v:.2}").replace('-', "−")
}

pub(crate) struct Convergence {
    pub(crate) name: String,
    pub(crate) title: String,
    pub(crate) subtitle: String,
    pub(crate) series: Vec<(RGBColor, Points)>,
}

impl Figure for Convergence {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        (1100, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = header(root, &self.title, &self.subtitle)?;
        let (w, _) = body.dim_in_pixel();
        let mut entries = Vec::new();
        for (color, p) in &self.series {
            let prefix = format!("{} ℓ={}", p.what, p.layer);
            let _ = &p.config;
            entries.push((prefix.clone(), Mark::Point(*color)));
            if let Some(f) = p.fit {
                let err = f
                    .slope_err
                    .map_or_else(|| " (2 widths, no error)".into(), |e| format!(" ± {e:.2}"));
                entries.push((
                    format!("  slope {}{err}", minus(f.slope)),
                    Mark::Dashed(*color),
                ));
            }
        }
        let guide = RGBColor(150, 150, 150);
        entries.push(("1/n guide (slope −1)".into(), Mark::Line(guide)));
        let lw = legend_width(&body, &entries).min(w / 2);
        let (plot, side) = body.split_horizontally(w - lw);
        let lg = |v: f64| v.log10();
        let low = |d: f64, e: f64| (d - e).max(d / 10.0);
        // Pad by a fraction of the range in log space, then back to data units.
        let (x0, x1) = padded(
            self.series
                .iter()
                .flat_map(|(_, p)| p.pts.iter().map(|q| lg(q.0))),
        );
        let (y0, y1) = padded(self.series.iter().flat_map(|(_, p)| {
            p.pts
                .iter()
                .flat_map(|&(_, d, e)| [lg(low(d, e)), lg(d + e)])
        }));
        let (x0, x1, y0, y1) = (
            10f64.powf(x0),
            10f64.powf(x1),
            10f64.powf(y0),
            10f64.powf(y1),
        );
        // Ticks at the widths measured, and at 1-2-5 steps of |Δ|: a log axis spanning less
        // than a decade has no power of ten to label.
        let mut widths: Vec<f64> = self
            .series
            .iter()
            .flat_map(|(_, p)| p.pts.iter().map(|q| q.0))
            .collect();
        widths.sort_by(f64::total_cmp);
        widths.dedup();
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .margin_right(24)
            .x_label_area_size(56)
            .y_label_area_size(90)
            .build_cartesian_2d(
                (x0..x1).log_scale().with_key_points(widths),
                (y0..y1).log_scale().with_key_points(one_two_five(y0, y1)),
            )?;
        chart
            .configure_mesh()
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| short(*v))
            .x_desc("width n (log scale)")
            .y_desc("|MC − theory| / |theory| (log scale)")
            .axis_desc_style(font(21.0))
            .label_style(font(17.0))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        for (color, p) in &self.series {
            let style = color.stroke_width(2);
            chart.draw_series(
                p.pts
                    .iter()
                    .map(|&(n, d, e)| ErrorBar::new_vertical(n, low(d, e), d, d + e, style, 12)),
            )?;
            chart.draw_series(
                p.pts
                    .iter()
                    .map(|&(n, d, _)| Circle::new((n, d), 5, color.filled())),
            )?;
            if let Some(f) = p.fit {
                let at = |n: f64| 10f64.powf(f.intercept + f.slope * lg(n));
                chart.draw_series(DashedLineSeries::new(
                    [x0, x1].map(|n| (n, at(n))),
                    8,
                    6,
                    color.stroke_width(2),
                ))?;
            }
        }
        // A 1/n guide through the geometric centre of the first series.
        if let Some((_, p)) = self.series.first() {
            let m = p.pts.len() as f64;
            let cx = p.pts.iter().map(|q| lg(q.0)).sum::<f64>() / m;
            let cy = p.pts.iter().map(|q| lg(q.1)).sum::<f64>() / m;
            chart.draw_series(LineSeries::new(
                [x0, x1].map(|n| (n, 10f64.powf(cy - (lg(n) - cx)))),
                guide.stroke_width(2),
            ))?;
        }
        legend(&side, &entries, 40)?;
        Ok(())
    }
}

/// The quantities followed across widths: (site, observable, which layer, legend text).
const QUANTITIES: [(Site, Observable, Pick, &str); 4] = [
    (
        Site::Resid,
        Observable::KernelDiag,
        Pick::LastResidual,
        "kernel diag G_δδ",
    ),
    (
        Site::Resid,
        Observable::Grad2,
        Pick::First,
        "gradient size grad2",
    ),
    (
        Site::Ln,
        Observable::KernelOffdiag,
        Pick::Last,
        "LN kernel between tokens",
    ),
    (
        Site::Param,
        Observable::NtkGroup(Group::Q),
        Pick::First,
        "query NTK Θ_q",
    ),
];

#[derive(Clone, Copy)]
enum Pick {
    First,
    Last,
    LastResidual,
}

pub(crate) fn figure(data: &Data) -> Result<Convergence, Skip> {
    let name = "convergence_relative_deviation";
    let Some(config) = data.configs.first() else {
        return Err(skip(name, "no rows"));
    };
    let mut series = Vec::new();
    let mut used: Vec<&Row> = Vec::new();
    for (k, (site, observable, pick, what)) in QUANTITIES.iter().enumerate() {
        let rows: Vec<&Row> = data
            .summary(site.as_str(), &observable.to_string())
            .into_values()
            .flatten()
            .filter(|r| &r.config == config && r.block != "head")
            .collect();
        let layers = rows.iter().map(|r| r.layer);
        let layer = match pick {
            Pick::First => layers.min(),
            Pick::Last | Pick::LastResidual => layers.max(),
        };
        let Some(layer) = layer else { continue };
        let mut at: BTreeMap<usize, (Option<&Row>, Option<&Row>)> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.layer == layer) {
            let e = at.entry(r.width).or_default();
            if r.source == "theory" {
                e.1 = Some(r);
            } else {
                e.0 = Some(r);
            }
        }
        let mut pts = Vec::new();
        for (w, pair) in at {
            if let (Some(mc), Some(th)) = pair {
                let d = (mc.value - th.value).abs() / th.value.abs();
                // A point without a standard error cannot be weighted: skip it.
                if d > 0.0 && d.is_finite() && mc.stderr.is_finite() && th.stderr.is_finite() {
                    pts.push((w as f64, d, mc.stderr.hypot(th.stderr) / th.value.abs()));
                    used.extend([mc, th]);
                }
            }
        }
        if pts.len() >= 2 {
            let color = super::PALETTE[k % super::PALETTE.len()];
            series.push((
                color,
                Points {
                    config: config.clone(),
                    what: what.to_string(),
                    layer,
                    fit: fit(&pts),
                    pts,
                },
            ));
        }
    }
    if series.is_empty() {
        return Err(skip(
            name,
            "needs MC and theory summary rows for at least 2 widths",
        ));
    }
    Ok(Convergence {
        name: name.into(),
        title: "finite-width deviation |MC − theory| / |theory| vs width".into(),
        subtitle: data.describe(used),
        series,
    })
}
