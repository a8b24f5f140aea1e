//! Layer profiles: a summary observable against layer ℓ, Monte Carlo as points with ±stderr
//! bars and theory as lines, one colour per width. Used for the propagation of the kernel and
//! the correlation, the gradient size, the per-group NTK and the attention entropy.

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{
    Data, Figure, Key, Mark, Skip, font, header, legend, legend_width, padded, short, skip,
    wants_log,
};
use crate::model::Group;
use crate::stats::csv::Row;

/// One curve: (layer, value, stderr) triples of one source and ensemble.
pub(crate) struct Curve {
    pub key: Key,
    pub color: RGBColor,
    /// Horizontal offset of the Monte Carlo points, so error bars of widths sharing a layer
    /// stay apart.
    pub dodge: f64,
    /// Stroke of a theory line: earlier widths are drawn thicker, so a line hidden under a
    /// later, identical one (leading-order theory does not depend on n) still shows.
    pub stroke: u32,
    pub points: Vec<(f64, f64, f64)>,
}

/// One chart: a caption (for multi-panel figures), a y label and its curves.
pub(crate) struct Panel {
    pub caption: Option<String>,
    pub y_label: String,
    pub curves: Vec<Curve>,
}

/// A figure of one or more layer-profile panels sharing the x range and a legend.
pub(crate) struct Profile {
    pub name: String,
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
    pub legend: Vec<(String, Mark)>,
    pub x_range: (f64, f64),
    pub stacks: Stacks,
}

/// Where an encoder–decoder's stacks meet and where its cross-attention blocks sit, drawn as
/// vertical rules so a reader sees which layers are the decoder's and which blocks read the
/// encoder (empty for an encoder-only model).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Stacks {
    /// The decoder's stem layer B_e + 2 (the second `stem` row's layer).
    pub decoder: Option<f64>,
    /// The layers produced by cross-attention blocks.
    pub cross: Vec<f64>,
}

impl Stacks {
    /// What the rules mean, for the subtitle.
    fn note(&self) -> &'static str {
        match (self.decoder.is_some(), self.cross.is_empty()) {
            (false, true) => "",
            (_, false) => "; dashed rules: cross-attention blocks; solid rule: the decoder starts",
            (true, true) => "; solid rule: the decoder starts",
        }
    }

    fn of(rows: &[Row]) -> Stacks {
        let set = |block: &str| -> std::collections::BTreeSet<usize> {
            rows.iter()
                .filter(|r| r.block == block)
                .map(|r| r.layer)
                .collect()
        };
        let stems = set("stem");
        Stacks {
            decoder: stems.iter().nth(1).map(|&l| l as f64),
            cross: set("cross").into_iter().map(|l| l as f64).collect(),
        }
    }
}

const LEGEND_W: u32 = 230;

impl Figure for Profile {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let (cols, rows) = grid(self.panels.len());
        if self.panels.len() == 1 {
            (1100, 680)
        } else {
            (LEGEND_W + 400 * cols as u32, 100 + 330 * rows as u32)
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = header(root, &self.title, &self.subtitle)?;
        let (w, _) = body.dim_in_pixel();
        let lw = legend_width(&body, &self.legend).min(w / 2);
        let (plots, side) = body.split_horizontally(w - lw);
        let (cols, rows) = grid(self.panels.len());
        let cells = plots.split_evenly((rows, cols));
        for (panel, cell) in self.panels.iter().zip(cells.iter()) {
            draw_panel(
                cell,
                panel,
                self.x_range,
                &self.stacks,
                self.panels.len() > 1,
            )?;
        }
        legend(&side, &self.legend, 40)?;
        Ok(())
    }
}

/// (columns, rows) of a near-square grid of `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (cols, n.div_ceil(cols))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x_range: (f64, f64),
    stacks: &Stacks,
    small: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let all = panel
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1));
    let log = wants_log(all);
    let ends = panel.curves.iter().flat_map(|c| {
        c.points.iter().flat_map(move |&(_, y, e)| {
            let (a, b) = bar(log, y, e);
            [a, b]
        })
    });
    let mut b = ChartBuilder::on(area);
    b.margin(12)
        .margin_right(24)
        .x_label_area_size(if small { 44 } else { 56 })
        .y_label_area_size(if small { 72 } else { 90 });
    if let Some(c) = &panel.caption {
        b.caption(c, font(19.0));
    }
    let x = x_range.0..x_range.1;
    if log {
        // Pad by the same fraction of the range in log space.
        let (lo, hi) = padded(ends.map(f64::log10));
        let (lo, hi) = (10f64.powf(lo), 10f64.powf(hi));
        let chart = b.build_cartesian_2d(x, (lo..hi).log_scale())?;
        fill(chart, panel, x_range, stacks, (lo, hi), small, true)
    } else {
        let (lo, hi) = padded(ends);
        let chart = b.build_cartesian_2d(x, lo..hi)?;
        fill(chart, panel, x_range, stacks, (lo, hi), small, false)
    }
}

/// Ends of an error bar; on a log axis a bar that would reach zero is cut at a tenth of the
/// value.
fn bar(log: bool, y: f64, e: f64) -> (f64, f64) {
    let lo = if log { (y - e).max(y / 10.0) } else { y - e };
    (lo, y + e)
}

/// Mesh, theory lines and MC points of one panel, on a linear or a log y axis.
fn fill<DB, Y>(
    mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    panel: &Panel,
    x_range: (f64, f64),
    stacks: &Stacks,
    y_range: (f64, f64),
    small: bool,
    log: bool,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (label_size, tick_size) = if small { (17.0, 14.0) } else { (21.0, 17.0) };
    let n_layers = (x_range.1 - x_range.0).round() as usize;
    let y_desc = if log {
        format!("{} (log scale)", panel.y_label)
    } else {
        panel.y_label.clone()
    };
    chart
        .configure_mesh()
        .x_labels(n_layers.min(if small { 8 } else { 16 }))
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        })
        .y_labels(if small { 6 } else { 8 })
        .y_label_formatter(&|v| short(*v))
        .x_desc("layer ℓ")
        .y_desc(y_desc)
        .axis_desc_style(font(label_size))
        .label_style(font(tick_size))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    // Cross-attention blocks: a dashed rule half a layer before the layer they produce;
    // the decoder's stem: a solid rule, labelled.
    let (y0, y1) = y_range;
    for &l in &stacks.cross {
        let x = l - 0.5;
        let dashes = (0..24).map(|k| {
            let f = |t: f64| {
                if log {
                    y0 * (y1 / y0).powf(t)
                } else {
                    y0 + (y1 - y0) * t
                }
            };
            let (a, b) = (k as f64 / 24.0, (k as f64 + 0.5) / 24.0);
            PathElement::new(
                vec![(x, f(a)), (x, f(b))],
                RGBColor(150, 110, 200).stroke_width(1),
            )
        });
        chart.draw_series(dashes)?;
    }
    if let Some(d) = stacks.decoder {
        let x = d - 0.5;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, y0), (x, y1)],
            RGBColor(90, 90, 90).stroke_width(2),
        )))?;
        let top = if log {
            y0 * (y1 / y0).powf(0.97)
        } else {
            y0 + (y1 - y0) * 0.97
        };
        chart.draw_series(std::iter::once(Text::new(
            "decoder →",
            (x + 0.1, top),
            font(tick_size),
        )))?;
    }
    for c in panel.curves.iter().filter(|c| c.key.theory) {
        let pts: Vec<(f64, f64)> = c.points.iter().map(|&(x, y, _)| (x, y)).collect();
        if pts.len() == 1 {
            chart.draw_series(std::iter::once(Cross::new(
                pts[0],
                7,
                c.color.stroke_width(3),
            )))?;
        } else {
            // The encoder's last layer and the decoder's stem are not one propagation step:
            // the line breaks where the decoder starts.
            let cut = stacks.decoder.unwrap_or(f64::INFINITY);
            let (enc, dec): (Vec<_>, Vec<_>) = pts.into_iter().partition(|p| p.0 < cut);
            for part in [enc, dec].into_iter().filter(|p| !p.is_empty()) {
                chart.draw_series(LineSeries::new(part, c.color.stroke_width(c.stroke)))?;
            }
        }
    }
    for c in panel.curves.iter().filter(|c| !c.key.theory) {
        let style = c.color.stroke_width(2);
        // An undefined error (NaN: empty in the CSV) gets no bar.
        chart.draw_series(
            c.points
                .iter()
                .filter(|p| p.2.is_finite())
                .map(|&(x, y, e)| {
                    let (a, b) = bar(log, y, e);
                    ErrorBar::new_vertical(x + c.dodge, a, y, b, style, 12)
                }),
        )?;
        chart.draw_series(
            c.points
                .iter()
                .map(|&(x, y, _)| Circle::new((x + c.dodge, y), 3, c.color.stroke_width(2))),
        )?;
    }
    Ok(())
}

/// Builds the curves of one summary observable (rows already filtered), one per source and
/// ensemble.
fn curves(data: &Data, by_key: std::collections::BTreeMap<Key, Vec<&Row>>) -> Vec<Curve> {
    let n = data.ensembles.len() as f64;
    by_key
        .into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(key, rows)| {
            let k = data
                .ensembles
                .iter()
                .position(|(c, w)| *c == key.config && *w == key.width)
                .unwrap_or(0) as f64;
            Curve {
                color: data.color(&key.config, key.width),
                stroke: 2 + 2 * (n - 1.0 - k).min(3.0) as u32,
                dodge: if n > 1.0 {
                    (k - (n - 1.0) / 2.0) * 0.45 / n
                } else {
                    0.0
                },
                points: rows
                    .iter()
                    .map(|r| (r.layer as f64, r.value, r.stderr))
                    .collect(),
                key,
            }
        })
        .collect()
}

/// Legend entries for the curves present, MC and theory of each ensemble together.
fn legend_for(data: &Data, curves: &[&Curve]) -> Vec<(String, Mark)> {
    let mut keys: Vec<&Key> = curves.iter().map(|c| &c.key).collect();
    keys.sort_by(|a, b| (&a.config, a.width, a.theory).cmp(&(&b.config, b.width, b.theory)));
    keys.dedup();
    let mut out: Vec<(String, Mark)> = keys
        .into_iter()
        .map(|k| {
            let c = data.color(&k.config, k.width);
            let m = if k.theory {
                Mark::Line(c)
            } else {
                Mark::Point(c)
            };
            (data.label(k), m)
        })
        .collect();
    if curves.iter().any(|c| !c.key.theory) {
        out.push(("bars: ±1 stderr".into(), Mark::Point(RGBColor(90, 90, 90))));
        // A bar under ~1% of the axis is about the size of the marker: say so, rather than
        // leave the reader to wonder whether errors were drawn.
        // Measured on the axis the panel uses (wants_log decides, as in `draw_panel`).
        let log = wants_log(curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)));
        let t = |y: f64| if log { y.log10() } else { y };
        let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| t(p.1)));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let e = curves
            .iter()
            .filter(|c| !c.key.theory)
            .flat_map(|c| c.points.iter().map(|p| t(p.1 + p.2) - t(p.1)))
            .fold(0.0, f64::max);
        if hi > lo && e < 0.01 * (hi - lo) {
            out.push(("(bars within the markers)".into(), Mark::Blank));
        }
    }
    out
}

fn x_range(rows: &[&Row]) -> (f64, f64) {
    let lo = rows.iter().map(|r| r.layer).min().unwrap_or(1) as f64;
    let hi = rows.iter().map(|r| r.layer).max().unwrap_or(1) as f64;
    (lo - 0.6, hi + 0.6)
}

/// One summary observable against layer, in one panel. The head output (block `head`) is
/// left out: after the final LayerNorm and the readout it is not a residual-stream layer.
fn single(
    data: &Data,
    name: &str,
    site: &str,
    observable: &str,
    what: &str,
    y_label: &str,
) -> Result<Profile, Skip> {
    single_at(data, name, site, observable, -1, what, y_label)
}

/// The head output's row is kept where it tells something: the final LN resets the kernel.
fn keeps_head(name: &str) -> bool {
    name == "propagation_resid_kernel_diag"
}

/// As `single`, for the rows at i = j = `index` (a token's per-token statistic).
fn single_at(
    data: &Data,
    name: &str,
    site: &str,
    observable: &str,
    index: i64,
    what: &str,
    y_label: &str,
) -> Result<Profile, Skip> {
    let mut by_key = data.at(site, observable, index);
    if !keeps_head(name) {
        for v in by_key.values_mut() {
            v.retain(|r| r.block != "head");
        }
    }
    let rows: Vec<&Row> = by_key.values().flatten().copied().collect();
    if rows.is_empty() {
        return Err(skip(
            name,
            format!("no `{observable}` summary rows (i = j = -1) at site `{site}`"),
        ));
    }
    let curves = curves(data, by_key);
    let refs: Vec<&Curve> = curves.iter().collect();
    Ok(Profile {
        name: name.to_string(),
        title: what.to_string(),
        subtitle: data.describe(rows.iter().copied()) + Stacks::of(data.rows).note(),
        legend: legend_for(data, &refs),
        x_range: x_range(&rows),
        stacks: Stacks::of(data.rows),
        panels: vec![Panel {
            caption: None,
            y_label: y_label.to_string(),
            curves,
        }],
    })
}

/// One panel per NTK group (`ntk_<group>` summaries at site `param`), each on its own y scale
/// since they grow like different fan-ins.
fn ntk_groups(data: &Data) -> Result<Profile, Skip> {
    let name = "ntk_groups";
    let mut panels = Vec::new();
    let mut rows: Vec<&Row> = Vec::new();
    // The NTK groups of SPEC §2, in the order blocks appear.
    for g in Group::ALL.map(Group::name) {
        let obs = format!("ntk_{g}");
        let by_key = data.summary("param", &obs);
        if by_key.values().all(|v| v.is_empty()) {
            continue;
        }
        rows.extend(by_key.values().flatten().copied());
        panels.push(Panel {
            caption: Some(format!("group {g}: Θ_{g}")),
            y_label: format!("Θ_{g} (diag mean)"),
            curves: curves(data, by_key),
        });
    }
    if panels.is_empty() {
        return Err(skip(
            name,
            "no `ntk_<group>` summary rows (i = j = -1) at site `param`",
        ));
    }
    let refs: Vec<&Curve> = panels.iter().flat_map(|p| p.curves.iter()).collect();
    Ok(Profile {
        name: name.to_string(),
        title: "per-group NTK Θ_g (raw squared-gradient sums) vs layer".into(),
        subtitle: data.describe(rows.iter().copied()) + Stacks::of(data.rows).note(),
        // Panels have their own scales, so a figure-wide "bars within the markers" would
        // mislead.
        legend: legend_for(data, &refs)
            .into_iter()
            .filter(|(_, m)| !matches!(m, Mark::Blank))
            .collect(),
        x_range: x_range(&rows),
        stacks: Stacks::of(data.rows),
        panels,
    })
}

/// Every layer-profile figure, or why it was skipped.
pub(crate) fn figures(data: &Data) -> Vec<Result<Profile, Skip>> {
    vec![
        single(
            data,
            "propagation_resid_kernel_diag",
            "resid",
            "kernel_diag",
            "residual-stream kernel diagonal vs layer (last point: head output after the final LN)",
            "kernel diag G_δδ",
        ),
        single(
            data,
            "propagation_resid_corr_offdiag",
            "resid",
            "corr_offdiag",
            "residual-stream token correlation vs layer",
            "correlation ρ (distinct tokens)",
        ),
        single(
            data,
            "gradient_resid_grad2",
            "resid",
            "grad2",
            "gradient size grad2 = E Σ (∂f/∂z)² at each layer ℓ",
            "grad2 per output",
        ),
        ntk_groups(data),
        single(
            data,
            "attention_logits_attn_entropy",
            "logits",
            "attn_entropy",
            "mean attention entropy vs layer",
            "attention entropy (nats)",
        ),
        single_at(
            data,
            "kurtosis_resid_token0",
            "resid",
            "kurtosis",
            0,
            "excess kurtosis E z⁴/(3 (E z²)²) − 1 of token δ = 0 vs layer",
            "excess kurtosis (≈ V/(n K²))",
        ),
    ]
}
