//! `sigprop plot` draws every figure from a small synthetic stats.csv (MC rows in DIR/stats.csv,
//! theory rows in DIR/theory/stats.csv, two widths), as PNG and SVG with rendered text; bad
//! folders give an error, not a panic.

use std::path::{Path, PathBuf};

use sigprop::stats::csv::{Row, write};

const CONFIG: &str = "synthetic-plot-test";

/// Where a row sits: MC or theory, width, layer and block.
#[derive(Clone, Copy)]
struct At<'a> {
    theory: bool,
    width: usize,
    layer: usize,
    block: &'a str,
}

fn row(
    At {
        theory,
        width,
        layer,
        block,
    }: At,
    site: &str,
    observable: &str,
    ij: (i64, i64),
    value: f64,
) -> Row {
    Row {
        source: if theory { "theory" } else { "mc" }.into(),
        config: CONFIG.into(),
        width,
        heads: 4,
        layer,
        block: block.into(),
        site: site.into(),
        observable: observable.into(),
        i: ij.0,
        j: ij.1,
        value,
        stderr: if theory {
            0.0
        } else {
            0.02 * value.abs() + 1e-3
        },
        samples: if theory { 0 } else { 50 },
    }
}

/// Layers 1 (stem), 2 (attn), 3 (mlp), 4 (head) at widths 64 and 128; MC sits a 1/n
/// correction away from theory so the convergence figure has something to fit.
fn rows(theory: bool) -> Vec<Row> {
    let blocks = ["stem", "attn", "mlp", "head"];
    let mut out = Vec::new();
    for width in [64usize, 128] {
        let shift = if theory { 0.0 } else { 2.0 / width as f64 };
        for layer in 1..=4 {
            let block = blocks[layer - 1];
            let at = At {
                theory,
                width,
                layer,
                block,
            };
            let l = layer as f64;
            let k = 1.0 + 0.5 * (l - 1.0) + shift;
            out.push(row(at, "resid", "kernel_diag", (-1, -1), k));
            out.push(row(
                at,
                "resid",
                "corr_offdiag",
                (-1, -1),
                0.4 + 0.05 * l + shift,
            ));
            if block != "head" {
                for i in 0..3i64 {
                    for j in i..3 {
                        let v = if i == j { k } else { 0.45 * k };
                        out.push(row(at, "resid", "kernel", (i, j), v));
                    }
                }
                out.push(row(at, "resid", "grad2", (-1, -1), 1.0 / l + shift));
            }
            if block == "attn" {
                for g in ["q", "k", "v", "u"] {
                    let obs = format!("ntk_{g}");
                    out.push(row(at, "param", &obs, (-1, -1), 0.2));
                }
                out.push(row(at, "logits", "attn_entropy", (-1, -1), 2.7 + shift));
            }
            if block == "head" {
                out.push(row(at, "param", "ntk_head", (-1, -1), width as f64));
            }
        }
    }
    out
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-plot")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test folder");
    dir
}

#[test]
fn plots_every_figure_as_png_and_svg_with_text() {
    let dir = fresh_dir("mc-and-theory");
    write(&dir.join("stats.csv"), &rows(false)).expect("write MC rows");
    std::fs::create_dir_all(dir.join("theory")).expect("theory folder");
    write(&dir.join("theory").join("stats.csv"), &rows(true)).expect("write theory rows");

    let loaded = sigprop::plot::load(std::slice::from_ref(&dir)).expect("load");
    assert_eq!(loaded.len(), rows(false).len() + rows(true).len());
    let files = sigprop::plot::plot_all(&loaded, &dir).expect("plot");

    let expected = [
        (
            "propagation_resid_kernel_diag",
            "residual-stream kernel diagonal vs layer",
        ),
        (
            "propagation_resid_corr_offdiag",
            "residual-stream token correlation vs layer",
        ),
        ("gradient_resid_grad2", "gradient size"),
        ("ntk_groups", "per-group NTK"),
        (
            "attention_logits_attn_entropy",
            "mean attention entropy vs layer",
        ),
        ("kernel_heatmap_resid", "token–token kernel"),
        ("convergence_relative_deviation", "finite-width deviation"),
    ];
    assert_eq!(files.len(), 2 * expected.len(), "files written: {files:?}");
    for (stem, title) in expected {
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        let png_len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(png_len > 10_000, "{} is {png_len} bytes", png.display());
        let text = std::fs::read_to_string(&svg).unwrap_or_default();
        assert!(
            text.len() > 5_000,
            "{} is {} bytes",
            svg.display(),
            text.len()
        );
        // The title and the configuration are laid out as text in the SVG.
        assert!(
            text.contains(title),
            "{} lacks its title {title:?}",
            svg.display()
        );
        assert!(
            text.contains(CONFIG),
            "{} lacks the config name",
            svg.display()
        );
        assert!(
            text.contains("n=64, 128"),
            "{} lacks the widths",
            svg.display()
        );
    }
    let conv =
        std::fs::read_to_string(dir.join("convergence_relative_deviation.svg")).unwrap_or_default();
    // MC − theory = 2/n exactly, so the least-squares slope on log–log is −1.
    assert!(
        conv.contains("slope −1.00"),
        "convergence legend lacks slope −1.00"
    );
}

#[test]
fn mc_only_skips_convergence() {
    let dir = fresh_dir("mc-only");
    write(&dir.join("stats.csv"), &rows(false)).expect("write MC rows");
    let loaded = sigprop::plot::load(std::slice::from_ref(&dir)).expect("load");
    let files = sigprop::plot::plot_all(&loaded, &dir).expect("plot");
    assert_eq!(files.len(), 12, "files written: {files:?}");
    assert!(!dir.join("convergence_relative_deviation.png").exists());
}

#[test]
fn bad_folders_are_errors() {
    let missing = fresh_dir("missing").join("nope");
    let e = sigprop::plot::load(std::slice::from_ref(&missing)).expect_err("missing folder");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let empty = fresh_dir("empty");
    let e = sigprop::plot::load(std::slice::from_ref(&empty)).expect_err("no stats.csv");
    assert!(e.to_string().contains("no stats.csv"), "{e}");
}
