//! `sigprop import-config`: the public config.json of four Hub models (tests/fixtures/hf)
//! mapped field by field to the values their `_init_weights` and module definitions give.

mod common;

use std::path::Path;

use sigprop::config::{Config, ConfigBuilder};
use sigprop::import::{Imported, from_file, from_json};

fn fixture(name: &str) -> (Imported, Config) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let imp = from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cfg = imp.builder().unwrap().build().unwrap();
    (imp, cfg)
}

/// The key's value in the imported list (not the built config), to check what was written.
fn value(imp: &Imported, key: &str) -> toml::Value {
    imp.values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{} does not set {key}", imp.family))
}

fn float(imp: &Imported, key: &str) -> f64 {
    value(imp, key)
        .as_float()
        .unwrap_or_else(|| panic!("{key} is not a float"))
}

fn text(imp: &Imported, key: &str) -> String {
    value(imp, key).as_str().unwrap_or_default().to_string()
}

fn int(imp: &Imported, key: &str) -> i64 {
    value(imp, key).as_integer().unwrap_or(-1)
}

/// Names every field in some warning.
fn named(imp: &Imported, field: &str) -> bool {
    imp.warnings.iter().any(|w| w.contains(field))
}

/// The variances of a standard parameterization with std `r` (exact: the same f64 product).
fn check_sp(imp: &Imported, r: f64, out_div: f64) {
    assert_eq!(text(imp, "model.variance_mode"), "absolute");
    for g in ["stem", "pe", "q", "k", "v", "w", "head"] {
        assert_eq!(float(imp, &format!("model.variances.{g}")), r * r, "{g}");
    }
    for g in ["u", "x"] {
        let c = float(imp, &format!("model.variances.{g}"));
        assert!(
            (c - r * r / out_div).abs() <= 1e-15 * c,
            "{g}: {c} vs {}",
            r * r / out_div
        );
    }
    assert_eq!(float(imp, "model.variances.bias"), 0.0);
}

#[test]
fn gpt2_maps_field_by_field() {
    let (imp, cfg) = fixture("gpt2.json");
    assert_eq!(imp.family, "GPT2Config");
    assert_eq!(int(&imp, "model.width"), 768);
    assert_eq!(int(&imp, "model.heads"), 12);
    assert_eq!(int(&imp, "model.layers"), 12);
    assert_eq!(int(&imp, "model.mlp_mult"), 4); // n_inner = null: 4·n_embd
    assert_eq!(text(&imp, "model.activation"), "gelu");
    assert_eq!(text(&imp, "model.norm"), "pre");
    assert_eq!(value(&imp, "model.causal").as_bool(), Some(true));
    assert_eq!(float(&imp, "model.ln_eps"), 1e-5);
    // c_proj (attention U and MLP X) at std 0.02/√(2·12).
    check_sp(&imp, 0.02, 24.0);
    assert_eq!(text(&imp, "model.stem"), "embedding");
    assert_eq!(text(&imp, "model.head"), "tied");
    assert_eq!(int(&imp, "inputs.vocab"), 50257);
    assert_eq!(text(&imp, "inputs.kind"), "tokens");
    assert_eq!(cfg.model.width, 768);
    for f in [
        "gelu_new",
        "n_positions",
        "n_ctx",
        "attn_pdrop",
        "embd_pdrop",
        "resid_pdrop",
        "bos_token_id",
        "eos_token_id",
        "summary_type",
        "summary_use_proj",
        "summary_first_dropout",
        "summary_proj_to_labels",
        "task_specific_params",
        "architectures",
    ] {
        assert!(named(&imp, f), "{f} not named: {:?}", imp.warnings);
    }
}

#[test]
fn bert_maps_field_by_field() {
    let (imp, _) = fixture("bert-base-uncased.json");
    assert_eq!(imp.family, "BertConfig");
    assert_eq!(int(&imp, "model.width"), 768);
    assert_eq!(int(&imp, "model.heads"), 12);
    assert_eq!(int(&imp, "model.layers"), 12);
    assert_eq!(int(&imp, "model.mlp_mult"), 4); // 3072 / 768
    assert_eq!(text(&imp, "model.activation"), "gelu");
    assert_eq!(text(&imp, "model.norm"), "post");
    assert_eq!(value(&imp, "model.causal").as_bool(), Some(false));
    assert_eq!(float(&imp, "model.ln_eps"), 1e-12);
    check_sp(&imp, 0.02, 1.0);
    assert_eq!(text(&imp, "model.head"), "tied");
    assert_eq!(int(&imp, "inputs.vocab"), 30522);
    assert_eq!(int(&imp, "model.n_out"), 30522);
    for f in [
        "max_position_embeddings",
        "type_vocab_size",
        "pad_token_id",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "use_cache",
        "gradient_checkpointing",
    ] {
        assert!(named(&imp, f), "{f} not named: {:?}", imp.warnings);
    }
}

#[test]
fn vit_maps_field_by_field() {
    let (imp, cfg) = fixture("vit-base-patch16-224.json");
    assert_eq!(imp.family, "ViTConfig");
    assert_eq!(int(&imp, "model.width"), 768);
    assert_eq!(int(&imp, "model.heads"), 12);
    assert_eq!(int(&imp, "model.layers"), 12);
    assert_eq!(int(&imp, "model.mlp_mult"), 4);
    assert_eq!(text(&imp, "model.norm"), "pre");
    assert_eq!(float(&imp, "model.ln_eps"), 1e-12);
    check_sp(&imp, 0.02, 1.0);
    assert_eq!(text(&imp, "model.stem"), "dense");
    assert_eq!(int(&imp, "inputs.dim"), 3 * 16 * 16);
    assert_eq!(cfg.model.width, 768);
    for f in [
        "image_size",
        "qkv_bias",
        "id2label",
        "[CLS]",
        "hidden_dropout_prob",
    ] {
        assert!(named(&imp, f), "{f} not named: {:?}", imp.warnings);
    }
    // With the label map of the published file, the classifier's outputs are its classes.
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/hf/vit-base-patch16-224.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = (0..1000)
        .map(|i| (i.to_string(), serde_json::Value::from(format!("class {i}"))))
        .collect();
    json["id2label"] = serde_json::Value::Object(labels);
    let imp = from_json(&json.to_string(), "vit").unwrap();
    assert_eq!(int(&imp, "model.n_out"), 1000);
}

#[test]
fn bart_maps_the_encoder_and_the_decoder() {
    let (imp, _) = fixture("bart-large.json");
    assert_eq!(imp.family, "BartConfig");
    assert_eq!(int(&imp, "model.width"), 1024);
    assert_eq!(int(&imp, "model.heads"), 16);
    assert_eq!(int(&imp, "model.layers"), 12);
    assert_eq!(int(&imp, "model.mlp_mult"), 4);
    assert_eq!(text(&imp, "model.activation"), "gelu");
    assert_eq!(text(&imp, "model.norm"), "post"); // normalize_before = false
    assert_eq!(float(&imp, "model.ln_eps"), 1e-5);
    check_sp(&imp, 0.02, 1.0); // init_std
    assert_eq!(text(&imp, "model.head"), "tied");
    assert_eq!(int(&imp, "inputs.vocab"), 50265);
    // The decoder (§II 2 B): 12 × ACM, the decoder's start token 2 as inputs.bos_id.
    assert_eq!(int(&imp, "model.decoder_layers"), 12);
    assert_eq!(text(&imp, "model.decoder_pattern"), "ACM");
    assert_eq!(int(&imp, "inputs.bos_id"), 2);
    // Its [pad] (id 1): the zero, frozen embedding row (footnote 48) and the source mask.
    assert_eq!(int(&imp, "inputs.pad_id"), 1);
    for f in [
        "pad_token_id",
        "decoder_layers",
        "decoder_attention_heads",
        "decoder_ffn_dim",
        "decoder_start_token_id",
        "is_encoder_decoder",
        "layernorm_embedding",
    ] {
        assert!(
            !named(&imp, f),
            "{f} is mapped but named: {:?}",
            imp.warnings
        );
    }
    for f in ["id2label", "max_position_embeddings"] {
        assert!(named(&imp, f), "{f} not named: {:?}", imp.warnings);
    }
}

/// Every field of every fixture is either mapped or named in a warning.
#[test]
fn no_field_is_dropped_silently() {
    let mapped: &[(&str, &[&str])] = &[
        (
            "gpt2.json",
            &[
                "model_type",
                "n_embd",
                "n_head",
                "n_layer",
                "activation_function",
                "layer_norm_epsilon",
                "initializer_range",
                "vocab_size",
                "summary_activation", // null: the class default
            ],
        ),
        (
            "bert-base-uncased.json",
            &[
                "model_type",
                "hidden_size",
                "num_attention_heads",
                "num_hidden_layers",
                "intermediate_size",
                "hidden_act",
                "layer_norm_eps",
                "initializer_range",
                "vocab_size",
                "position_embedding_type",
            ],
        ),
        (
            "vit-base-patch16-224.json",
            &[
                "model_type",
                "hidden_size",
                "num_attention_heads",
                "num_hidden_layers",
                "intermediate_size",
                "hidden_act",
                "layer_norm_eps",
                "initializer_range",
                "patch_size",
                "num_channels",
            ],
        ),
        (
            "bart-large.json",
            &[
                "model_type",
                "d_model",
                "encoder_attention_heads",
                "encoder_layers",
                "num_hidden_layers",
                "encoder_ffn_dim",
                "activation_function",
                "normalize_before",
                "init_std",
                "vocab_size",
                "scale_embedding",
                "add_final_layer_norm",
                "decoder_layers",
                "decoder_attention_heads",
                "decoder_ffn_dim",
                "decoder_start_token_id",
                "pad_token_id",
                "is_encoder_decoder",
            ],
        ),
    ];
    for (file, keys) in mapped {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(file);
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (imp, _) = fixture(file);
        for field in json.keys() {
            assert!(
                keys.contains(&field.as_str()) || named(&imp, field),
                "{file}: {field} neither mapped nor named in a warning"
            );
        }
    }
}

#[test]
fn bad_configs_are_one_line_errors() {
    let err = |text: &str| from_json(text, "c.json").unwrap_err().to_string();
    assert!(err("{\"model_type\": \"llama\"}").contains("model_type `llama`"));
    assert!(err("{}").contains("no model_type"));
    assert!(err("[1]").contains("not a config.json"));
    assert!(err("{\"model_type\": \"gpt2\", \"activation_function\": \"mish\"}").contains("mish"));
    // 3000 is not a multiple of 768.
    assert!(
        err("{\"model_type\": \"bert\", \"intermediate_size\": 3000}")
            .contains("intermediate_size")
    );
    // Heads that do not divide the width: refused when the result is built.
    let e = err("{\"model_type\": \"gpt2\", \"n_embd\": 100, \"n_head\": 12}");
    assert!(e.contains("not valid"), "{e}");
}

#[test]
fn cli_writes_a_toml_that_loads_as_the_same_configuration() {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/gpt2.json");
    let (code, out, err) = common::sigprop(&["import-config", fx]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sigprop: warning: n_positions"), "{err}");
    let from_cli = ConfigBuilder::new()
        .toml_str(&out, "stdout")
        .unwrap()
        .build()
        .unwrap();
    let (_, direct) = fixture("gpt2.json");
    assert_eq!(from_cli.to_toml(), direct.to_toml());
    let file = common::tmp("import-gpt2").join("gpt2.toml");
    let f = file.to_str().unwrap();
    assert_eq!(common::sigprop(&["import-config", fx, "--out", f]).0, 0);
    let (code, _, err) = common::sigprop(&["import-config", fx, "--out", f]);
    assert_eq!(code, 2);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sigprop: error: ") && last.contains("--force"),
        "{err}"
    );
    let (code, _, err) = common::sigprop(&["import-config", "/nonexistent/config.json"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A BART whose decoder differs from its encoder in heads or FFN width cannot be expressed:
/// one line naming the field.
#[test]
fn bart_decoder_shape_mismatch_is_refused() {
    for (field, value) in [("decoder_attention_heads", 8), ("decoder_ffn_dim", 2048)] {
        let mut json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bart-large.json"),
            )
            .unwrap(),
        )
        .unwrap();
        json[field] = serde_json::Value::from(value);
        let e = from_json(&json.to_string(), "bart")
            .unwrap_err()
            .to_string();
        assert!(e.contains(field) && !e.contains('\n'), "{e}");
    }
}
