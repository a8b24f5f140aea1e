//! `sigprop plot DIR...`: PNG and SVG figures from the stats.csv of each DIR (and its
//! `theory/stats.csv`), written into the first DIR; a `sigprop transfer` folder gets its
//! transfer figure from its transfer.csv. Reads the CSV only (SPEC §3).

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct PlotOptions {
    /// Run folders holding stats.csv (MC and/or theory rows; theory/stats.csv is read too).
    /// Their rows are merged; figures go into the first.
    pub dirs: Vec<PathBuf>,
}

pub fn run(args: &PlotOptions) -> anyhow::Result<()> {
    // A `sigprop transfer` folder has transfer.csv instead of stats.csv.
    let first = &args.dirs[0];
    if first.join("transfer.csv").is_file() && !first.join("stats.csv").is_file() {
        for f in crate::plot::transfer_figure(&first.join("transfer.csv"), first)? {
            println!("{}", f.display());
        }
        return Ok(());
    }
    let rows = crate::plot::load(&args.dirs)?;
    let out = args.dirs[0].as_path();
    let out = if out.is_file() {
        out.parent().unwrap_or(std::path::Path::new("."))
    } else {
        out
    };
    let mut files = crate::plot::plot_all(&rows, out)?;
    // A sweep run at theory orders 0 and 1 also gets the finite-width figure.
    if !args.dirs[0].is_file() {
        files.extend(crate::plot::orders_figure(out)?);
    }
    for f in &files {
        println!("{}", f.display());
    }
    Ok(())
}
