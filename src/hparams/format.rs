//! The table as CSV, Markdown, LaTeX (booktabs) and JSON (what the trainer reads).

use std::fmt::Write as _;

use super::measure::{Measured, TOLERANCE};
use super::rules;
use super::{Anchor, Family, Optimizer, Setup};
use crate::config::{HeadKind, Stem};
use crate::model::Group;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    #[value(alias = "markdown")]
    Md,
    #[value(alias = "tex")]
    Latex,
    Json,
}

/// Renders the table in any format; `measured` adds the measured-exponent columns.
pub fn render(setup: &Setup, measured: Option<&[Measured]>, f: Format) -> anyhow::Result<String> {
    Ok(match f {
        Format::Csv => csv(setup, measured)?,
        Format::Md => markdown(setup, measured),
        Format::Latex => latex(setup, measured),
        Format::Json => json(setup)?,
    })
}

/// The paper's name of a group's parameters: (plain, LaTeX math), from the group table.
pub fn group_label(g: Group, stem: Stem) -> (&'static str, &'static str) {
    g.label(stem)
}

fn find(measured: Option<&[Measured]>, g: Group) -> Option<&Measured> {
    measured.and_then(|m| m.iter().find(|x| x.group == g))
}

fn opt_name(o: Optimizer) -> &'static str {
    match o {
        Optimizer::Sgd => "SGD",
        Optimizer::AdamW => "AdamW",
    }
}

fn family_name(f: Family) -> String {
    match f {
        Family::Standard => "standard".into(),
        Family::Scaling(0.0) => "neural-tangent (s = 0)".into(),
        Family::Scaling(1.0) => "maximal-update (s = 1)".into(),
        Family::Scaling(s) => format!("s = {s}"),
    }
}

fn family_tex(f: Family) -> String {
    match f {
        Family::Standard => "standard".into(),
        Family::Scaling(0.0) => "neural-tangent ($s = 0$)".into(),
        Family::Scaling(1.0) => "maximal-update ($s = 1$)".into(),
        Family::Scaling(s) => format!("$s = {s}$ (footnote 26)"),
    }
}

/// One-paragraph description of the conventions, shared by Markdown and LaTeX.
fn notes(s: &Setup) -> Vec<String> {
    let mut v = vec![format!(
        "{} family, {}; base width {}; global η = {} and wd = {} (η·wd = {:.3e}) at every width.",
        family_name(s.family),
        opt_name(s.optimizer),
        s.base_width,
        s.lr,
        s.weight_decay,
        s.lr * s.weight_decay
    )];
    v.push(match s.anchor {
        Anchor::Paper => {
            "Group learning rate lr_g = η·λ_g(n) with the paper's factors (Λ_G = 1).".into()
        }
        Anchor::Base => format!(
            "Group learning rate lr_g = η·λ_g(n)/λ_g({}): every group has η at the base width.",
            s.base_width
        ),
    });
    v.push("Weight decay is decoupled per group, θ ← θ − lr_g·wd_g·θ with wd_g = wd/λ_g, so every group decays by η·wd as in (1.94); b^head gets none (§II 1).".into());
    if s.family != Family::Standard {
        let m = if s.m_factors {
            "M factors kept ((1.106), (1.114), (1.115))."
        } else {
            "M factors dropped, as in the experiments (footnote 41)."
        };
        v.push(format!(
            "M = {}, n_patch = {}, n_out = {}. {m}",
            s.dims.mlp_mult, s.dims.n_patch, s.dims.n_out
        ));
    }
    if s.dims.head == HeadKind::Tied {
        let at: Vec<String> = s
            .widths
            .iter()
            .filter_map(|&n| {
                s.output_rescale(n)
                    .map(|r| format!("{} at n = {n}", sci(r)))
            })
            .collect();
        v.push(format!(
            "Tied head: no W^head of its own; it reuses W^WE times the output rescale N_rescale = {} ({}) (1.33)/(1.34).",
            rules::tied_rescale(s.family).plain(),
            at.join(", ")
        ));
    }
    if s.dims.decoder {
        v.push("Encoder–decoder: cross-attention's Q, K, V, U (2.2)–(2.4) are in the q, k, v, u rows with the same rules (every fan-in is n: Q reads the decoder's s, K and V the encoder's final-LN output s̃, U reads Ω v; footnote 47), and the decoder's b^PE is in the pe row.".into());
    }
    v
}

fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.3e}")
    }
}

fn sci_tex(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let e = x.abs().log10().floor() as i32;
    let m = x / 10f64.powi(e);
    if e == 0 {
        format!("{m:.3}")
    } else {
        format!("{m:.3}\\times10^{{{e}}}")
    }
}

fn pm(m: &Measured) -> String {
    format!("{:.3} ± {:.3}", m.exponent, m.stderr)
}

fn markdown(s: &Setup, measured: Option<&[Measured]>) -> String {
    let mut o = String::new();
    for n in notes(s) {
        let _ = writeln!(o, "{n}  ");
    }
    o.push('\n');
    let mut head = vec![
        "group".to_string(),
        "init variance".into(),
        "init ∝".into(),
        format!("{} factor λ", opt_name(s.optimizer)),
        "λ ∝".into(),
    ];
    for n in &s.widths {
        head.push(format!("σ² @ {n}"));
        head.push(format!("lr @ {n}"));
    }
    if measured.is_some() {
        head.extend([
            "raw Θ rule ∝".to_string(),
            "measured".into(),
            "agrees".into(),
        ]);
    }
    let _ = writeln!(o, "| {} |", head.join(" | "));
    let _ = writeln!(
        o,
        "|{}",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i < 5 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for g in s.groups() {
        let (init, lr) = (s.init_rule(g), s.lr_rule(g));
        let mut row = vec![
            group_label(g, s.dims.stem).0.to_string(),
            init.plain(),
            pow_plain(init.width_exponent()),
            lr.plain(),
            pow_plain(lr.width_exponent()),
        ];
        for &n in &s.widths {
            row.push(sci(init.eval(n, &s.dims)));
            row.push(sci(s.lr * s.factor(g, n)));
        }
        if measured.is_some() {
            match find(measured, g) {
                Some(m) => {
                    row.push(pow_plain(m.expected));
                    row.push(pm(m));
                    row.push(m.verdict().into());
                }
                None => row.extend(["—".to_string(), "—".into(), "—".into()]),
            }
        }
        let _ = writeln!(o, "| {} |", row.join(" | "));
    }
    if let Some(m) = measured {
        o.push('\n');
        let _ = writeln!(o, "{}", measured_note(m));
    }
    o
}

fn measured_note(m: &[Measured]) -> String {
    let bad: Vec<&str> = m
        .iter()
        .filter(|x| x.verdict() == "NO")
        .map(|x| x.group.name())
        .collect();
    let widths: Vec<String> = m
        .first()
        .map(|x| x.points.iter().map(|p| p.0.to_string()).collect())
        .unwrap_or_default();
    let mut s = format!(
        "Measured: log–log slope of the raw Σ(∂f/∂θ)² per group (summed over layers) over widths {}, weighted by the Monte Carlo standard errors; the rule predicts the slope −(SGD λ exponent), since λ_g·Θ_g must be O(1). Agrees: |measured − rule| ≤ {TOLERANCE}.",
        widths.join(", ")
    );
    if !bad.is_empty() {
        let _ = write!(
            s,
            " **Contradicted by the measurement: {}.**",
            bad.join(", ")
        );
    }
    s
}

fn pow_plain(e: f64) -> String {
    if e == 0.0 {
        "1".into()
    } else if e == 1.0 {
        "n".into()
    } else {
        format!("n^{}", rules::frac(e))
    }
}

fn pow_tex(e: f64) -> String {
    if e == 0.0 {
        "1".into()
    } else if e == 1.0 {
        "n".into()
    } else {
        format!("n^{{{}}}", rules::frac(e))
    }
}

/// A booktabs table in a `table` float, ready to paste (needs `\usepackage{booktabs}`).
fn latex(s: &Setup, measured: Option<&[Measured]>) -> String {
    let mut o = String::new();
    let meas = measured.is_some();
    let cols = 3 + 2 * s.widths.len() + if meas { 3 } else { 0 };
    let _ = writeln!(
        o,
        "% Generated by `sigprop hparams`; needs \\usepackage{{booktabs}}."
    );
    for n in notes(s) {
        let _ = writeln!(o, "% {n}");
    }
    let _ = writeln!(o, "\\begin{{table}}[t]");
    let _ = writeln!(o, "\\centering");
    let _ = writeln!(o, "\\small");
    let caption = format!(
        "Width scaling of the initialization variance and the {} learning rate per parameter group, {} family. \
         The group learning rate is $\\eta\\,\\lambda_G$ with global $\\eta = {}$ and weight decay $\\mathrm{{wd}} = {}$ ($\\eta\\cdot\\mathrm{{wd}} = {}$) at every width{}.{}",
        opt_name(s.optimizer),
        family_tex(s.family),
        sci_tex(s.lr),
        sci_tex(s.weight_decay),
        sci_tex(s.lr * s.weight_decay),
        match s.anchor {
            Anchor::Paper => String::new(),
            Anchor::Base => format!(
                ", $\\lambda_G$ normalized to 1 at the base width $n = {}$",
                s.base_width
            ),
        },
        if meas {
            format!(
                " The last columns compare the width exponent the rule implies for the raw neural tangent kernel $\\Theta_G = \\mathrm{{E}}\\sum_{{\\mu\\in G}}(\\partial f/\\partial\\theta_\\mu)^2$ with the Monte Carlo fit (agreement: within ${TOLERANCE}$)."
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(o, "\\caption{{{caption}}}");
    let _ = writeln!(
        o,
        "\\label{{tab:hparams-{}-{}}}",
        s.family.to_string().replace(['=', '.'], "-"),
        s.optimizer
    );
    let spec = format!(
        "lll{}{}",
        "rr".repeat(s.widths.len()),
        if meas { "ccc" } else { "" }
    );
    let _ = writeln!(o, "\\begin{{tabular}}{{{spec}}}");
    let _ = writeln!(o, "\\toprule");
    let mut h1 = vec![String::new(), String::new(), String::new()];
    let mut rules_mid = Vec::new();
    for (k, n) in s.widths.iter().enumerate() {
        h1.push(format!("\\multicolumn{{2}}{{c}}{{$n = {n}$}}"));
        rules_mid.push(format!("\\cmidrule(lr){{{}-{}}}", 4 + 2 * k, 5 + 2 * k));
    }
    if meas {
        h1.push("\\multicolumn{3}{c}{raw $\\Theta_G$ width exponent}".to_string());
        let a = 4 + 2 * s.widths.len();
        rules_mid.push(format!("\\cmidrule(lr){{{}-{}}}", a, a + 2));
    }
    let _ = writeln!(o, "{} \\\\", h1.join(" & "));
    let _ = writeln!(o, "{}", rules_mid.join(" "));
    let mut h2 = vec![
        "Group".to_string(),
        "Init.\\ variance".into(),
        format!("{} factor $\\lambda_G$", opt_name(s.optimizer)),
    ];
    for _ in &s.widths {
        h2.push("$\\sigma^2$".into());
        h2.push("$\\eta\\,\\lambda_G$".into());
    }
    if meas {
        h2.extend(["rule".to_string(), "measured".into(), "agrees".into()]);
    }
    let _ = writeln!(o, "{} \\\\", h2.join(" & "));
    let _ = writeln!(o, "\\midrule");
    for g in s.groups() {
        let (init, lr) = (s.init_rule(g), s.lr_rule(g));
        let mut row = vec![
            format!("${}$", group_label(g, s.dims.stem).1),
            format!("${}$", init.tex()),
            format!("${}$", lr.tex()),
        ];
        for &n in &s.widths {
            row.push(format!("${}$", sci_tex(init.eval(n, &s.dims))));
            row.push(format!("${}$", sci_tex(s.lr * s.factor(g, n))));
        }
        if meas {
            match find(measured, g) {
                Some(m) => {
                    row.push(format!("${}$", pow_tex(m.expected)));
                    row.push(format!("${:.3} \\pm {:.3}$", m.exponent, m.stderr));
                    row.push(match m.verdict() {
                        "NO" => "\\textbf{no}".into(),
                        v => v.to_string(),
                    });
                }
                None => row.extend(["--".to_string(), "--".into(), "--".into()]),
            }
        }
        debug_assert_eq!(row.len(), cols);
        let _ = writeln!(o, "{} \\\\", row.join(" & "));
    }
    let _ = writeln!(o, "\\bottomrule");
    let _ = writeln!(o, "\\end{{tabular}}");
    let _ = writeln!(o, "\\end{{table}}");
    o
}

fn json(s: &Setup) -> anyhow::Result<String> {
    let t = s.tables();
    Ok(if t.len() == 1 {
        serde_json::to_string_pretty(&t[0])?
    } else {
        serde_json::to_string_pretty(&t)?
    } + "\n")
}

fn csv(s: &Setup, measured: Option<&[Measured]>) -> anyhow::Result<String> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record([
        "family",
        "s",
        "optimizer",
        "base_width",
        "width",
        "group",
        "init_rule",
        "init_exponent",
        "init_variance",
        "lr_rule",
        "lr_exponent",
        "global_lr",
        "lr",
        "weight_decay",
        "theta_rule_exponent",
        "measured_exponent",
        "measured_stderr",
        "agrees",
        "init_std",
        "output_rescale",
    ])?;
    for &n in &s.widths {
        for g in s.groups() {
            let (init, lr) = (s.init_rule(g), s.lr_rule(g));
            let m = find(measured, g);
            let opt = |f: &dyn Fn(&Measured) -> String| m.map(f).unwrap_or_default();
            w.write_record([
                s.family.to_string(),
                s.family.s().to_string(),
                s.optimizer.to_string(),
                s.base_width.to_string(),
                n.to_string(),
                g.name().to_string(),
                init.plain(),
                init.width_exponent().to_string(),
                init.eval(n, &s.dims).to_string(),
                lr.plain(),
                lr.width_exponent().to_string(),
                s.lr.to_string(),
                (s.lr * s.factor(g, n)).to_string(),
                s.group_weight_decay(g, n).to_string(),
                opt(&|m| m.expected.to_string()),
                opt(&|m| m.exponent.to_string()),
                opt(&|m| m.stderr.to_string()),
                opt(&|m| m.verdict().to_string()),
                init.eval(n, &s.dims).sqrt().to_string(),
                s.output_rescale(n).map_or(String::new(), |r| r.to_string()),
            ])?;
        }
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    Ok(String::from_utf8(bytes)?)
}
