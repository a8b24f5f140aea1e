//! Figures drawn from the tidy CSV of SPEC §3, never from recomputation (STYLE: "Data first,
//! pictures from data"). Every figure is written twice, as PNG and as SVG, with file names
//! that say what it shows and titles that say the configuration (config name, widths, heads,
//! samples).
//!
//! Monte Carlo rows (`source = mc`) are points with ±stderr bars; theory rows
//! (`source = theory`) are lines of the same colour; one colour per width. A figure whose
//! rows are absent is skipped with a one-line note on stderr.
//!
//! Text uses DejaVu Sans embedded in the binary (`assets/DejaVuSans.ttf`), so no system font
//! is looked up and PNG and SVG render the same glyphs.

mod convergence;
mod heatmap;
mod orders;
mod profile;
mod transfer;

pub use transfer::{transfer_figure, transfer_figure_of};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor;

use crate::stats::csv::Row;

/// The embedded font (see `assets/README.md` for its source and licence).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The family name every text style in this module asks for.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
pub fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded font assets/DejaVuSans.ttf could not be parsed")
    }
}

/// The stats files of one DIR argument: `DIR/stats.csv` and, when present,
/// `DIR/theory/stats.csv`. A path to a `.csv` file is taken as is.
pub fn stats_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let files: Vec<PathBuf> = [dir.join("stats.csv"), dir.join("theory").join("stats.csv")]
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        bail!(
            "{} holds no stats.csv (nor theory/stats.csv): run `sigprop simulate --out {}` first",
            dir.display(),
            dir.display()
        );
    }
    Ok(files)
}

/// Reads and merges the rows of every DIR (see [`stats_files`]).
pub fn load(dirs: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for d in dirs {
        for f in stats_files(d)? {
            rows.extend(crate::stats::csv::read(&f)?);
        }
    }
    Ok(rows)
}

/// Draws every figure the rows allow into `out` (PNG and SVG each); returns the files written.
/// Figures whose rows are absent are skipped with a note on stderr.
pub fn plot_all(rows: &[Row], out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let rows = plottable(rows);
    if rows.is_empty() {
        bail!("no rows to plot");
    }
    let data = Data::new(&rows);
    let mut written = Vec::new();
    let note = |name: &str, why: &str| eprintln!("sigprop plot: skipping {name}: {why}");
    for fig in profile::figures(&data) {
        match fig {
            Ok(f) => written.extend(save(&f, out)?),
            Err(Skip { name, why }) => note(&name, &why),
        }
    }
    match heatmap::figure(&data) {
        Ok(f) => written.extend(save(&f, out)?),
        Err(Skip { name, why }) => note(&name, &why),
    }
    match convergence::figure(&data) {
        Ok(f) => written.extend(save(&f, out)?),
        Err(Skip { name, why }) => note(&name, &why),
    }
    Ok(written)
}

/// The finite-width figure of a sweep run at two theory orders: `DIR/stats.csv` (MC),
/// `DIR/theory/stats.csv` and `DIR/theory-order1/stats.csv`. Nothing when either theory file
/// is absent.
pub fn orders_figure(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = [
        dir.join("stats.csv"),
        dir.join("theory").join("stats.csv"),
        dir.join("theory-order1").join("stats.csv"),
    ];
    if !files.iter().all(|f| f.is_file()) {
        return Ok(Vec::new());
    }
    register_font()?;
    let read = |f: &PathBuf| crate::stats::csv::read(f);
    let (mc, t0, t1) = (read(&files[0])?, read(&files[1])?, read(&files[2])?);
    match orders::figure(&mc, &t0, &t1) {
        Ok(f) => save(&f, dir),
        Err(Skip { name, why }) => {
            eprintln!("sigprop plot: skipping {name}: {why}");
            Ok(Vec::new())
        }
    }
}

/// Why a figure was not drawn.
pub(crate) struct Skip {
    pub name: String,
    pub why: String,
}

pub(crate) fn skip(name: &str, why: impl Into<String>) -> Skip {
    Skip {
        name: name.to_string(),
        why: why.into(),
    }
}

/// A figure that can draw itself on any plotters backend.
pub(crate) trait Figure {
    /// File stem, e.g. `propagation_resid_kernel_diag`.
    fn name(&self) -> String;
    /// Pixel size of the PNG (and of the SVG canvas).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `fig` as `out/NAME.png` and `out/NAME.svg`.
pub(crate) fn save<F: Figure>(fig: &F, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let png = out.join(format!("{}.png", fig.name()));
    let svg = out.join(format!("{}.svg", fig.name()));
    // Drawn into temporary files in the same folder and renamed, so a reader never sees
    // half a figure and an interrupted plot leaves the old one intact. The temporary names
    // keep their extension: the bitmap backend picks the encoder from it.
    let png_tmp = out.join(format!("{}.tmp.png", fig.name()));
    let svg_tmp = out.join(format!("{}.tmp.svg", fig.name()));
    let result = (|| -> anyhow::Result<()> {
        for tmp in [&png_tmp, &svg_tmp] {
            // The backends report I/O failures as Debug dumps; find them here first.
            std::fs::File::create(tmp)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        }
        {
            let root = BitMapBackend::new(&png_tmp, fig.size()).into_drawing_area();
            root.fill(&WHITE).map_err(|e| drawing(&png, &e))?;
            fig.draw(&root)
                .with_context(|| format!("drawing {}", png.display()))?;
            root.present().map_err(|e| drawing(&png, &e))?;
        }
        {
            let root = SVGBackend::new(&svg_tmp, fig.size()).into_drawing_area();
            root.fill(&WHITE).map_err(|e| drawing(&svg, &e))?;
            fig.draw(&root)
                .with_context(|| format!("drawing {}", svg.display()))?;
            root.present().map_err(|e| drawing(&svg, &e))?;
        }
        for (tmp, path) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
            std::fs::rename(tmp, path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&png_tmp);
        let _ = std::fs::remove_file(&svg_tmp);
    }
    result.map(|()| vec![png, svg])
}

/// A drawing error in one line.
fn drawing(path: &Path, e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot draw {}: {}",
        path.display(),
        crate::config::one_line(&e.to_string())
    )
}

/// The largest magnitude a figure shows. Beyond ~1e290 plotters' log-axis key points never
/// terminate (a decade step overflows to inf), and a value this large only says the
/// network diverged, which `simulate` already reports.
pub const PLOT_MAX: f64 = 1e200;

/// Leaves out rows no axis can show (|value| > [`PLOT_MAX`]) with a note, and treats an
/// error bar that would reach beyond it as undefined.
fn plottable(rows: &[Row]) -> Vec<Row> {
    let mut dropped = 0usize;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if r.value.is_nan() || r.value.abs() > PLOT_MAX {
            dropped += 1;
            continue;
        }
        let mut r = r.clone();
        if r.stderr.abs() > PLOT_MAX {
            r.stderr = f64::NAN;
        }
        out.push(r);
    }
    if dropped > 0 {
        eprintln!(
            "sigprop plot: leaving out {dropped} rows with |value| > {PLOT_MAX:e} (a diverging network; no axis can show them)"
        );
    }
    out
}

/// One curve of the input: a source and a (config, width) ensemble.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub config: String,
    pub width: usize,
    pub theory: bool,
}

/// The rows indexed for plotting, plus what titles need to say.
pub(crate) struct Data<'a> {
    pub rows: &'a [Row],
    /// Every (config, width) ensemble, in order; its index picks its colour.
    pub ensembles: Vec<(String, usize)>,
    pub configs: Vec<String>,
}

impl<'a> Data<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let ensembles: BTreeSet<(String, usize)> =
            rows.iter().map(|r| (r.config.clone(), r.width)).collect();
        let configs: BTreeSet<String> = rows.iter().map(|r| r.config.clone()).collect();
        Data {
            rows,
            ensembles: ensembles.into_iter().collect(),
            configs: configs.into_iter().collect(),
        }
    }

    /// The colour of a (config, width) ensemble.
    pub fn color(&self, config: &str, width: usize) -> RGBColor {
        let k = self
            .ensembles
            .iter()
            .position(|(c, w)| c == config && *w == width)
            .unwrap_or(0);
        PALETTE[k % PALETTE.len()]
    }

    /// "MC n=256" (with the config name when several configs are merged).
    pub fn label(&self, key: &Key) -> String {
        let src = if key.theory { "theory" } else { "MC" };
        if self.configs.len() > 1 {
            // Sweep points share the base name; the legend shows only what differs.
            let prefix = common_prefix(&self.configs);
            format!(
                "{src} {} n={}",
                key.config[prefix.len()..].trim_start_matches('-'),
                key.width
            )
        } else {
            format!("{src} n={}", key.width)
        }
    }

    /// Summary rows (i = j = −1) of one observable at one site, by curve, sorted by layer.
    pub fn summary(&self, site: &str, observable: &str) -> BTreeMap<Key, Vec<&'a Row>> {
        self.at(site, observable, -1)
    }

    /// Rows of one observable at i = j = `index` (−1: the summary; δ: a per-token row).
    pub fn at(&self, site: &str, observable: &str, index: i64) -> BTreeMap<Key, Vec<&'a Row>> {
        let mut m: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
        for r in self.rows {
            if r.site == site && r.observable == observable && r.i == index && r.j == index {
                m.entry(key(r)).or_default().push(r);
            }
        }
        for v in m.values_mut() {
            v.sort_by_key(|r| r.layer);
        }
        m
    }

    /// "paper-vit · n=128, 256 · H=8 · 200 samples", from the rows a figure uses.
    pub fn describe<'b>(&self, used: impl IntoIterator<Item = &'b Row>) -> String {
        let mut configs = BTreeSet::new();
        let mut widths = BTreeSet::new();
        let mut heads = BTreeSet::new();
        let mut samples = BTreeSet::new();
        let mut theory = false;
        for r in used {
            configs.insert(r.config.as_str());
            widths.insert(r.width);
            heads.insert(r.heads);
            if r.source == "theory" {
                theory = true;
            } else {
                samples.insert(r.samples);
            }
        }
        let join = |v: Vec<String>| v.join(", ");
        let names: Vec<String> = configs.iter().map(|c| c.to_string()).collect();
        // A sweep's many names would run off the figure: the shared base and a count.
        let config_text = if names.len() > 2 {
            let prefix = common_prefix(&names);
            let base = prefix.trim_end_matches('-');
            format!(
                "{} ({} configurations)",
                if base.is_empty() { "sweep" } else { base },
                names.len()
            )
        } else {
            join(names)
        };
        let mut s = format!(
            "{} · n={} · H={}",
            config_text,
            join(widths.iter().map(|w| w.to_string()).collect()),
            join(heads.iter().map(|h| h.to_string()).collect()),
        );
        if !samples.is_empty() {
            s += &format!(
                " · MC {} samples",
                join(samples.iter().map(|n| n.to_string()).collect())
            );
        }
        if theory {
            s += " · with theory";
        }
        s
    }
}

/// The longest prefix of all names that ends at a `-` (the base config of a sweep).
fn common_prefix(names: &[String]) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    let mut len = first.len();
    for n in names {
        len = len.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    match first[..len].rfind('-') {
        Some(i) => first[..=i].to_string(),
        None => String::new(),
    }
}

pub(crate) fn key(r: &Row) -> Key {
    Key {
        config: r.config.clone(),
        width: r.width,
        theory: r.source == "theory",
    }
}

/// Tableau 10: distinguishable, and readable on white.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Text style in the embedded font.
pub(crate) fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// Draws a two-line header (what the figure shows; the configuration) and returns
/// the area below it.
pub(crate) fn header<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> anyhow::Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    let (w, _) = root.dim_in_pixel();
    let (top, rest) = root.split_vertically(78);
    let centred = |size: f64, color: RGBColor| {
        let mut style = font(size).pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Top,
        ));
        style.color = color.to_backend_color();
        style
    };
    let x = w as i32 / 2;
    top.draw(&Text::new(title.to_string(), (x, 10), centred(26.0, BLACK)))?;
    top.draw(&Text::new(
        subtitle.to_string(),
        (x, 46),
        centred(19.0, RGBColor(60, 60, 60)),
    ))?;
    Ok(rest)
}

/// An entry of a legend drawn outside the plot, so it never covers data.
pub(crate) enum Mark {
    /// A filled dot with an error bar (Monte Carlo).
    Point(RGBColor),
    /// A solid line (theory).
    Line(RGBColor),
    /// A least-squares fit: a dashed line.
    Dashed(RGBColor),
    /// A note: text only.
    Blank,
}

/// Pixel width a legend strip needs for `entries` (marker, gap, longest label, margin).
pub(crate) fn legend_width<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Mark)],
) -> u32 {
    let style = font(18.0);
    let text = entries
        .iter()
        .map(|(l, _)| area.estimate_text_size(l, &style).map_or(240, |(w, _)| w))
        .max()
        .unwrap_or(0);
    (text + 64).max(160)
}

/// Draws legend entries top-down in `area` (a strip beside the plot).
pub(crate) fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Mark)],
    top: i32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let dy = 28;
    for (k, (label, mark)) in entries.iter().enumerate() {
        let y = top + k as i32 * dy;
        match mark {
            Mark::Point(c) => {
                area.draw(&PathElement::new(
                    vec![(22, y - 8), (22, y + 8)],
                    c.stroke_width(2),
                ))?;
                area.draw(&Circle::new((22, y), 4, c.filled()))?;
            }
            Mark::Line(c) => {
                area.draw(&PathElement::new(vec![(8, y), (36, y)], c.stroke_width(3)))?;
            }
            Mark::Blank => {}
            Mark::Dashed(c) => {
                for x in [8, 20, 32] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 7, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (50, y),
            font(18.0).pos(text_anchor::Pos::new(
                text_anchor::HPos::Left,
                text_anchor::VPos::Center,
            )),
        ))?;
    }
    Ok(())
}

/// Tick labels that stay short: 0.5, 12, 3.2e-5.
pub(crate) fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Whether positive values spanning more than two decades should use a log axis.
pub(crate) fn wants_log(values: impl IntoIterator<Item = f64>) -> bool {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values {
        if !v.is_finite() {
            continue;
        }
        if v <= 0.0 {
            return false;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    hi > 0.0 && hi / lo > 100.0
}

/// A padded [lo, hi] of the finite values (or [0, 1] when there are none).
pub(crate) fn padded(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.08 * span
    } else {
        0.1 * lo.abs().max(1e-12)
    };
    (lo - pad, hi + pad)
}
