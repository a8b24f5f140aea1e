//! The token–token kernel G_{δ1δ2} (`kernel` rows with i, j ≥ 0 at site `resid`) as heat
//! maps at the first, middle and last residual layer: one row of panels per curve (MC and
//! theory of the smallest and the largest width), one column per layer. A column shares one colour scale, drawn as a
//! bar beside each panel, so MC and theory at a layer compare by colour.

use std::collections::{BTreeMap, BTreeSet};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;

use super::{Data, Figure, Key, Skip, font, header, short, skip};
use crate::stats::{Observable, Site};

/// The kernel of one curve at one layer, as a full symmetric D×D matrix.
struct Matrix {
    d: usize,
    v: Vec<f64>,
}

pub(crate) struct Heatmap {
    title: String,
    subtitle: String,
    layers: Vec<usize>,
    /// Row labels ("MC n=256") and their matrices, one per layer.
    rows: Vec<(String, Vec<Option<Matrix>>)>,
    /// Colour range per layer column.
    ranges: Vec<(f64, f64)>,
}

const CELL_W: u32 = 470;
const CELL_H: u32 = 400;
const LABEL_W: u32 = 40;

impl Figure for Heatmap {
    fn name(&self) -> String {
        "kernel_heatmap_resid".into()
    }

    fn size(&self) -> (u32, u32) {
        (
            LABEL_W + CELL_W * self.layers.len() as u32,
            90 + CELL_H * self.rows.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = header(root, &self.title, &self.subtitle)?;
        let (labels, grid) = body.split_horizontally(LABEL_W);
        let label_cells = labels.split_evenly((self.rows.len(), 1));
        let cells = grid.split_evenly((self.rows.len(), self.layers.len()));
        for (r, (label, mats)) in self.rows.iter().enumerate() {
            let (_, h) = label_cells[r].dim_in_pixel();
            label_cells[r].draw(&Text::new(
                label.clone(),
                (12, h as i32 / 2),
                font(19.0)
                    .transform(FontTransform::Rotate270)
                    .pos(text_anchor::Pos::new(
                        text_anchor::HPos::Center,
                        text_anchor::VPos::Center,
                    )),
            ))?;
            for (c, m) in mats.iter().enumerate() {
                let cell = &cells[r * self.layers.len() + c];
                let caption = format!("layer ℓ = {}", self.layers[c]);
                match m {
                    Some(m) => draw_cell(cell, &caption, m, self.ranges[c])?,
                    None => {
                        cell.draw(&Text::new(
                            format!("{caption}: no rows"),
                            (30, 40),
                            font(18.0),
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn draw_cell<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    m: &Matrix,
    (lo, hi): (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let (map_area, bar_area) = area.split_horizontally(w - 100);
    let d = m.d as f64;
    let tick = |v: &f64| {
        // Row δ1 runs downwards, like a matrix.
        if (v - v.round()).abs() < 1e-6 && *v >= 0.0 && *v < d {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(&map_area)
        .caption(caption, font(19.0))
        .margin(8)
        .x_label_area_size(44)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..d - 0.5, d - 0.5..-0.5)?;
    let n_ticks = (m.d).min(9);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n_ticks)
        .y_labels(n_ticks)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc("token δ₂")
        .y_desc("token δ₁")
        .axis_desc_style(font(17.0))
        .label_style(font(14.0))
        .draw()?;
    chart.draw_series((0..m.d).flat_map(|a| {
        (0..m.d).map(move |b| {
            let v = m.v[a * m.d + b];
            Rectangle::new(
                [
                    (b as f64 - 0.5, a as f64 - 0.5),
                    (b as f64 + 0.5, a as f64 + 0.5),
                ],
                viridis(unit(v, lo, hi)).filled(),
            )
        })
    }))?;
    // Colour bar with its own value axis.
    let mut bar = ChartBuilder::on(&bar_area)
        .margin_top(40)
        .margin_bottom(52)
        .margin_right(8)
        .y_label_area_size(0)
        .right_y_label_area_size(62)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| short(*v))
        .label_style(font(14.0))
        .draw()?;
    let steps = 64;
    bar.draw_series((0..steps).map(|s| {
        let a = lo + (hi - lo) * s as f64 / steps as f64;
        let b = lo + (hi - lo) * (s + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            viridis((s as f64 + 0.5) / steps as f64).filled(),
        )
    }))?;
    bar.plotting_area().draw(&Rectangle::new(
        [(0.0, lo), (1.0, hi)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

fn unit(v: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Viridis (matplotlib's perceptually uniform map), interpolated between 9 anchors.
fn viridis(t: f64) -> RGBColor {
    const A: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let x = t.clamp(0.0, 1.0) * (A.len() - 1) as f64;
    let k = (x.floor() as usize).min(A.len() - 2);
    let f = x - k as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (p, q) = (A[k], A[k + 1]);
    RGBColor(mix(p.0, q.0), mix(p.1, q.1), mix(p.2, q.2))
}

/// (i, j, value) of one `kernel` row.
type Entry = (usize, usize, f64);

pub(crate) fn figure(data: &Data) -> Result<Heatmap, Skip> {
    let name = "kernel_heatmap_resid";
    // (key, layer) → (i, j) → value; the head output is not a residual layer.
    let mut by: BTreeMap<(Key, usize), Vec<Entry>> = BTreeMap::new();
    let mut used = Vec::new();
    for r in data.rows {
        if r.is(Site::Resid, Observable::Kernel) && r.i >= 0 && r.j >= 0 && r.block != "head" {
            by.entry((super::key(r), r.layer)).or_default().push((
                r.i as usize,
                r.j as usize,
                r.value,
            ));
            used.push(r);
        }
    }
    if by.is_empty() {
        return Err(skip(name, "no `kernel` rows (i, j >= 0) at site `resid`"));
    }
    let all_layers: BTreeSet<usize> = by.keys().map(|(_, l)| *l).collect();
    let all_layers: Vec<usize> = all_layers.into_iter().collect();
    let mut layers = vec![
        all_layers[0],
        all_layers[all_layers.len() / 2],
        all_layers[all_layers.len() - 1],
    ];
    layers.dedup();
    // With more than two widths, the smallest and the largest tell the story; the figure
    // stays readable.
    let widths: BTreeSet<usize> = by.keys().map(|(k, _)| k.width).collect();
    let (w_lo, w_hi) = (
        widths.first().copied().unwrap_or(0),
        widths.last().copied().unwrap_or(0),
    );
    let keys: BTreeSet<Key> = by
        .keys()
        .map(|(k, _)| k.clone())
        .filter(|k| k.width == w_lo || k.width == w_hi)
        .collect();
    used.retain(|r| r.width == w_lo || r.width == w_hi);
    let mut rows = Vec::new();
    for k in &keys {
        let mats: Vec<Option<Matrix>> = layers
            .iter()
            .map(|l| {
                by.get(&(k.clone(), *l)).map(|entries| {
                    let d = entries.iter().map(|e| e.0.max(e.1) + 1).max().unwrap_or(1);
                    let mut v = vec![f64::NAN; d * d];
                    for &(i, j, x) in entries {
                        v[i * d + j] = x;
                        v[j * d + i] = x;
                    }
                    Matrix { d, v }
                })
            })
            .collect();
        rows.push((data.label(k), mats));
    }
    let ranges = (0..layers.len())
        .map(|c| {
            let vals = rows
                .iter()
                .filter_map(|(_, m)| m[c].as_ref())
                .flat_map(|m| m.v.iter().copied())
                .filter(|v| v.is_finite());
            let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            if lo < hi {
                (lo, hi)
            } else {
                (lo - 0.5, lo + 0.5)
            }
        })
        .collect();
    Ok(Heatmap {
        title: "token–token kernel G_δ₁δ₂ of the residual stream".into(),
        subtitle: data.describe(used),
        layers,
        rows,
        ranges,
    })
}
