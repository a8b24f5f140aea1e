//! The μP-style transfer figure, from `transfer.csv` alone: final held-out
//! loss against the learning rate on a log₂ axis, one curve per width, one panel per
//! family, each curve's argmin ringed. With several seeds a point is the mean over seeds with
//! a ± one standard error bar, and a panel's title carries the bootstrap spread of the drift. A diverged run is not dropped: it is a × on the top
//! edge of its panel, and a loss above the shared y range is a ▲ on that edge, so the
//! figure shows where the instability starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Figure, Mark, PALETTE, font, header, legend, legend_width, save};
use crate::train::transfer::{Mean, Optimum, Point, bootstrap, drift, means, optima, read_csv};

pub(crate) struct Transfer {
    rows: Vec<Mean>,
    families: Vec<(String, Vec<f64>, Vec<Optimum>)>,
    /// Per family: the drift's bootstrap (mean, sd) over seeds, when there are several.
    spread: Vec<Option<(f64, f64)>>,
    widths: Vec<usize>,
    subtitle: String,
    /// Shared y range of every panel.
    y: (f64, f64),
}

impl Transfer {
    fn new(rows: Vec<Point>, title_dir: &str) -> Transfer {
        let families = optima(&rows);
        let spread = families
            .iter()
            .map(|(f, _, _)| bootstrap(&rows, f).and_then(|b| b.drift()))
            .collect();
        let seeds: BTreeSet<u64> = rows.iter().map(|r| r.seed).collect();
        let widths: Vec<usize> = rows
            .iter()
            .map(|r| r.width)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let steps: BTreeSet<usize> = rows.iter().map(|r| r.steps).collect();
        let rows = means(&rows);
        let mut finite: Vec<f64> = rows
            .iter()
            .filter(|r| !r.diverged)
            .map(|r| r.loss)
            .collect();
        finite.sort_by(f64::total_cmp);
        // One blown-up run (loss 50 next to optima at 0.3) would flatten every curve: the
        // range stops at three times the median's distance from the best loss, and what
        // lies above is marked on the edge instead.
        let y = match (finite.first(), finite.last()) {
            (Some(&lo), Some(&hi)) => {
                let med = finite[finite.len() / 2];
                let top = hi.min(lo + 3.0 * (med - lo).max(1e-3));
                let pad = 0.06 * (top - lo).max(1e-3);
                (lo - pad, top + pad)
            }
            _ => (0.0, 1.0),
        };
        // Each panel's title gives its family's drift.
        let subtitle = format!(
            "{title_dir} · AdamW · n = {} · {} steps · {}",
            widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            steps.iter().max().copied().unwrap_or(0),
            if seeds.len() > 1 {
                format!("mean ± s.e. over {} seeds", seeds.len())
            } else {
                "one seed".to_string()
            },
        );
        Transfer {
            rows,
            families,
            spread,
            widths,
            subtitle,
            y,
        }
    }

    fn color(&self, width: usize) -> RGBColor {
        let k = self.widths.iter().position(|&w| w == width).unwrap_or(0);
        PALETTE[k % PALETTE.len()]
    }
}

impl Figure for Transfer {
    fn name(&self) -> String {
        "transfer".into()
    }

    fn size(&self) -> (u32, u32) {
        (
            (480 * self.families.len().max(1) as u32 + 220).max(900),
            640,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = header(
            root,
            "learning-rate transfer: final held-out loss vs learning rate at the base width",
            &self.subtitle,
        )?;
        let (w, _) = body.dim_in_pixel();
        let mut entries: Vec<(String, Mark)> = self
            .widths
            .iter()
            .map(|&n| (format!("n = {n}"), Mark::Line(self.color(n))))
            .collect();
        entries.push(("◯ argmin of a width".into(), Mark::Blank));
        entries.push(("× diverged".into(), Mark::Blank));
        entries.push(("▲ above the range".into(), Mark::Blank));
        let lw = legend_width(&body, &entries).min(w / 3);
        let (plots, side) = body.split_horizontally(w - lw);
        legend(&side, &entries, 60)?;
        let panels = plots.split_evenly((1, self.families.len().max(1)));
        let (y0, y1) = self.y;
        for (((family, lrs, opt), spread), panel) in
            self.families.iter().zip(&self.spread).zip(panels.iter())
        {
            let xs: Vec<f64> = lrs.iter().map(|x| x.log2()).collect();
            let (x0, x1) = match (xs.first(), xs.last()) {
                (Some(&a), Some(&b)) => (a - 0.5, b + 0.5),
                _ => (0.0, 1.0),
            };
            let title = match (drift(opt), spread) {
                (Some((d, _)), Some((_, sd))) => format!(
                    "{family}  (drift {d:+} step{}, bootstrap sd {sd:.2})",
                    if d.abs() == 1 { "" } else { "s" }
                ),
                (Some((d, _)), None) => format!(
                    "{family}  (drift {d:+} step{})",
                    if d.abs() == 1 { "" } else { "s" }
                ),
                (None, _) => format!("{family}  (drift undefined)"),
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, font(22.0))
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(62)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc("log₂ lr (at the smallest width)")
                .y_desc("final eval loss")
                .label_style(font(16.0))
                .axis_desc_style(font(18.0))
                .x_labels(((x1 - x0) as usize + 1).min(12))
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .y_label_formatter(&|v| format!("{v:.2}"))
                .light_line_style(WHITE)
                .draw()?;
            for &n in &self.widths {
                let c = self.color(n);
                let pts: Vec<&Mean> = self
                    .rows
                    .iter()
                    .filter(|r| &r.family == family && r.width == n)
                    .collect();
                let ok: Vec<(f64, f64)> = pts
                    .iter()
                    .filter(|r| !r.diverged)
                    .map(|r| (r.lr.log2(), r.loss.min(y1)))
                    .collect();
                for r in pts.iter().filter(|r| !r.diverged && r.loss < y1) {
                    if let Some(se) = r.stderr {
                        let x = r.lr.log2();
                        chart.draw_series(std::iter::once(PathElement::new(
                            vec![(x, (r.loss - se).max(y0)), (x, (r.loss + se).min(y1))],
                            c.stroke_width(2),
                        )))?;
                    }
                }
                chart.draw_series(LineSeries::new(ok.iter().copied(), c.stroke_width(2)))?;
                for &(x, y) in &ok {
                    if y >= y1 {
                        chart.draw_series(std::iter::once(TriangleMarker::new(
                            (x, y1),
                            6,
                            c.filled(),
                        )))?;
                    } else {
                        chart.draw_series(std::iter::once(Circle::new((x, y), 3, c.filled())))?;
                    }
                }
                for r in pts.iter().filter(|r| r.diverged) {
                    chart.draw_series(std::iter::once(Cross::new(
                        (r.lr.log2(), y1),
                        7,
                        c.stroke_width(2),
                    )))?;
                }
                if let Some(o) = opt.iter().find(|o| o.width == n)
                    && let Some(lr) = o.lr
                {
                    chart.draw_series(std::iter::once(Circle::new(
                        (lr.log2(), o.loss),
                        9,
                        c.stroke_width(2),
                    )))?;
                }
            }
        }
        Ok(())
    }
}

/// Draws `out/transfer.png` and `out/transfer.svg` from a transfer.csv.
pub fn transfer_figure(csv: &Path, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rows = read_csv(csv)?;
    if rows.is_empty() {
        anyhow::bail!("{}: no rows to plot", csv.display());
    }
    transfer_figure_of(rows, out)
}

/// The transfer figure of these points (a grid's, [`crate::train::transfer::Summary`]).
pub fn transfer_figure_of(rows: Vec<Point>, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    super::register_font()?;
    if rows.is_empty() {
        anyhow::bail!("{}: no points of the grid to plot", out.display());
    }
    let name = out
        .file_name()
        .map_or_else(|| "transfer".into(), |n| n.to_string_lossy().to_string());
    let fig = Transfer::new(rows, &name);
    save(&fig, out)
}
