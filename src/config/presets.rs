//! Named presets, each after its source. A preset is a set of key overrides on top of
//! the defaults; keys the user sets explicitly override the preset.

use toml::Value;

use crate::model::Group;
use crate::model::group::GROUPS;

/// The preset's overrides as (key, value) pairs.
pub fn overrides(name: &str) -> Option<Vec<(&'static str, Value)>> {
    let v = |x: f64| Value::from(x);
    let s = |x: &str| Value::from(x);
    let i = |x: i64| Value::from(x);
    let b = |x: bool| Value::from(x);
    Some(match name {
        // The paper's Vision Transformer experiments (§II 1): C_Q = C_K = C_V = 1/2, C_U = 1/3,
        // C_W = 2/5, C_X = 8/5, C_patch = C_head = 1, C_PE = 0.02², GELU, M = 4, ε = 1e-6.
        "paper-vit" => {
            let mut o = vec![("model.stem", s("dense")), ("model.ln_eps", v(1e-6))];
            o.extend(pre_ln_gelu([0.5, 0.5, 0.5, 1.0 / 3.0, 0.4, 1.6]));
            o
        }
        // The paper's ViT (§II 1 C) with the class token of (1.8) read by a class head, and
        // its mixed initialization: uniform in the bulk (Q, K, V, U, W, X), Gaussian in the
        // stem (patchify, b^PE, the class token c) and the head; C_cls = C_PE = 0.02².
        "paper-vit-cls" => {
            let mut o = vec![
                ("model.stem", s("dense")),
                ("model.ln_eps", v(1e-6)),
                ("model.class_token", b(true)),
                ("model.head", s("class")),
                ("model.init", s("uniform")),
                ("model.variances.cls", v(0.02 * 0.02)),
            ];
            o.extend(pre_ln_gelu([0.5, 0.5, 0.5, 1.0 / 3.0, 0.4, 1.6]));
            for g in [Group::Stem, Group::Pe, Group::Cls, Group::Head, Group::Bias] {
                o.push((g.info().init_key, s("gaussian")));
            }
            o
        }
        // The paper's language experiments (§II 2), BART-style: weights of std 0.02 at the
        // paper's n = 1024, i.e. C = 0.02²·fan_in (0.4096 for Q, K, V, U, W; 1.6384 for X
        // with fan-in 4n), a word embedding with C_WE = 1, a head tied to it with
        // N_rescale = n^{-1/2} (1.33), ε = 1e-5 (BART's LayerNorm).
        "paper-lm" => {
            let c = 0.02 * 0.02 * 1024.0;
            let mut o = vec![
                ("model.stem", s("embedding")),
                ("model.head", s("tied")),
                ("model.ln_eps", v(1e-5)),
                ("inputs.kind", s("tokens")),
                ("inputs.vocab", i(1000)),
            ];
            o.extend(pre_ln_gelu([c, c, c, c, c, 4.0 * c]));
            o
        }
        // The paper's encoder–decoder (§II 2 B, BART-large) at a CPU-sized width: n = 256,
        // H = 8 (C = 32), 3 encoder layers (AM) and 3 decoder layers (ACM), M = 4, pre-LN,
        // GELU, ε = 1e-5, one word embedding for both stems and the tied head. The
        // neural-tangent setup of §II 2 C and Table II 2 E: C_WE = 1, N_rescale = n^{-1/2}
        // (1.33), Q-K-V-U-W-X at std 0.02 of the paper's n = 1024 (C = 0.4096, C_X = 1.6384
        // with fan-in 4n), C_PE = 0.02² (footnote 49).
        "paper-bart" => {
            let c = 0.02 * 0.02 * 1024.0;
            let mut o = bart_shape();
            o.extend(pre_ln_gelu([c, c, c, c, c, 4.0 * c]));
            o
        }
        // Its standard counterpart (§II 2 C): every parameter std 0.02 at any width
        // (`variance_mode = "absolute"`, C = 0.02² for every group), rescale 1, no biases.
        "paper-bart-standard" => {
            let mut o = bart_shape();
            o.extend(pre_ln_gelu([0.0; 6]));
            o.push(("model.variance_mode", s("absolute")));
            o.extend(GROUPS.iter().map(|g| {
                let c = if g.group == Group::Bias {
                    0.0
                } else {
                    0.02 * 0.02
                };
                (g.key, v(c))
            }));
            o
        }
        // Standard parameterization as in BART-style code: every weight and embedding drawn
        // with std 0.02 at every width (variance 4e-4, not divided by fan-in), zero biases.
        "standard" => {
            let mut o = vec![("model.variance_mode", s("absolute"))];
            o.extend(GROUPS.iter().map(|g| {
                let c = if g.group == Group::Bias {
                    0.0
                } else {
                    0.02 * 0.02
                };
                (g.key, v(c))
            }));
            o
        }
        // The book's plain ReLU MLP at criticality: C_W = 2, C_b = 0 in every layer, the first
        // layer and the head included (PDLT §5), equal widths, two inputs.
        "mlp-book" => vec![
            ("model.norm", s("mlp")),
            ("model.pattern", s("M")),
            ("model.activation", s("relu")),
            ("model.width", i(128)),
            ("model.n_out", i(128)),
            ("model.layers", i(8)),
            ("model.variances.stem", v(2.0)),
            ("model.variances.w", v(2.0)),
            ("model.variances.head", v(2.0)),
            ("model.variances.bias", v(0.0)),
            ("model.causal", b(false)),
            ("inputs.sequences", i(2)),
            ("inputs.tokens", i(1)),
            ("inputs.dim", i(128)),
        ],
        _ => return None,
    })
}

/// The shape of `paper-bart` and `paper-bart-standard` (the variances come after it).
fn bart_shape() -> Vec<(&'static str, Value)> {
    vec![
        ("model.stem", Value::from("embedding")),
        ("model.head", Value::from("tied")),
        ("model.width", Value::from(256)),
        ("model.heads", Value::from(8)),
        ("model.pattern", Value::from("AM")),
        ("model.layers", Value::from(3)),
        ("model.decoder_layers", Value::from(3)),
        ("model.decoder_pattern", Value::from("ACM")),
        ("model.ln_eps", Value::from(1e-5)),
        ("inputs.kind", Value::from("tokens")),
        ("inputs.vocab", Value::from(1000)),
        ("inputs.tokens", Value::from(8)),
    ]
}

/// A pre-LN GELU Transformer with M = 4 and the given (C_Q, C_K, C_V, C_U, C_W, C_X);
/// C_stem = C_head = 1, C_PE = 0.02², no biases.
fn pre_ln_gelu(c: [f64; 6]) -> Vec<(&'static str, Value)> {
    let v = |x: f64| Value::from(x);
    vec![
        ("model.norm", Value::from("pre")),
        ("model.activation", Value::from("gelu")),
        ("model.mlp_mult", Value::from(4)),
        ("model.variances.stem", v(1.0)),
        ("model.variances.pe", v(0.02 * 0.02)),
        ("model.variances.q", v(c[0])),
        ("model.variances.k", v(c[1])),
        ("model.variances.v", v(c[2])),
        ("model.variances.u", v(c[3])),
        ("model.variances.w", v(c[4])),
        ("model.variances.x", v(c[5])),
        ("model.variances.head", v(1.0)),
        ("model.variances.bias", v(0.0)),
    ]
}
