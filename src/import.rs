//! A Hugging Face `config.json` as a sigprop configuration: `sigprop import-config` and the
//! Python package's `sigprop.from_config` both call [`from_file`] / [`from_json`], so the
//! mapping is written once.
//!
//! Families: ViT (`ViTConfig`), GPT-2 (`GPT2Config`), BERT (`BertConfig`) and BART
//! (`BartConfig`, encoder and decoder: `model.decoder_layers`, pattern ACM, the decoder's
//! start token as `inputs.bos_id`, its [pad] as `inputs.pad_id`). What is mapped: width, heads, layers,
//! the MLP width (as `model.mlp_mult`) and activation, the LayerNorm ε and placement, the
//! causal mask, positional embeddings, the head (tied to the embedding, or a classifier with
//! its number of labels) and the vocabulary. `initializer_range` (`init_std` for BART) is the
//! standard parameterization's std: `model.variance_mode = "absolute"` with every weight and
//! embedding variance std², as each family's `_init_weights` draws them (normal, zero
//! biases; ViT's truncated normal cuts at ±2 in absolute units, i.e. at 100 std for
//! std = 0.02, so its variance is std² to double precision). GPT-2 draws its two residual
//! output projections (`c_proj`) with std/√(2·n_layer) (the GPT-2 paper's scaled
//! initialization), which map to C_U and C_X.
//!
//! Every field of the file that is not mapped is named in a warning: either as having no
//! effect on a network at initialization (dropout, token ids, generation settings, …) or as
//! not representable in sigprop.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;
use toml::Value;

use crate::config::{ConfigBuilder, ConfigError};

/// A configuration imported from a `config.json`.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The family, as Hugging Face names its configuration class (`GPT2Config`, …).
    pub family: &'static str,
    /// The sigprop keys set, in the order they were mapped.
    pub values: Vec<(String, Value)>,
    /// One line per field (or group of fields) that was not mapped, naming them.
    pub warnings: Vec<String>,
}

/// Fields that do not change a network at initialization: training, inference, token ids and
/// bookkeeping. They are named in one warning, not mapped.
const NO_EFFECT_AT_INIT: &[&str] = &[
    "_name_or_path",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "use_cache",
    "gradient_checkpointing",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "attn_pdrop",
    "embd_pdrop",
    "resid_pdrop",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "classifier_dropout",
    "classif_dropout",
    "encoder_layerdrop",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "decoder_start_token_id",
    "early_stopping",
    "num_beams",
    "no_repeat_ngram_size",
    "length_penalty",
    "max_length",
    "min_length",
    "task_specific_params",
    "label2id",
    "summary_activation",
    "summary_first_dropout",
    "summary_proj_to_labels",
    "summary_type",
    "summary_use_proj",
    "reorder_and_upcast_attn",
    "encoder_stride",
    "_attn_implementation_autoset",
    "_num_labels",
    "add_bias_logits",
    "output_past",
];

/// Reads and maps a `config.json`.
pub fn from_file(path: &Path) -> Result<Imported, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    from_json(&text, &path.display().to_string())
}

/// Maps the text of a `config.json`; `origin` names it in errors. The result is checked by
/// building it, so an imported configuration always runs.
pub fn from_json(text: &str, origin: &str) -> Result<Imported, ConfigError> {
    let parsed: Json = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        msg: format!("not a config.json: {e}"),
    })?;
    let Json::Object(map) = parsed else {
        return Err(ConfigError::Parse {
            path: origin.to_string(),
            msg: "not a config.json: expected a JSON object".into(),
        });
    };
    let mut f = Fields {
        rest: map.into_iter().collect(),
        origin: origin.to_string(),
        out: Vec::new(),
        warnings: Vec::new(),
    };
    let model_type = f.text("model_type")?;
    // The run's name (the CSV's `config` column): the Hub name the file was saved from, else
    // the model type.
    let name = match f.rest.get("_name_or_path") {
        Some(Json::String(s)) if !s.is_empty() => s.rsplit('/').next().map(str::to_string),
        _ => None,
    };
    if let Some(n) = name.or_else(|| model_type.clone()) {
        f.set("run.name", n);
    }
    let family = match model_type.as_deref() {
        Some("vit") => vit(&mut f)?,
        Some("gpt2") => gpt2(&mut f)?,
        Some("bert") => bert(&mut f)?,
        Some("bart") => bart(&mut f)?,
        Some(other) => {
            return Err(f.invalid(format!(
                "model_type `{other}`: import-config maps vit, gpt2, bert and bart"
            )));
        }
        None => {
            return Err(f.invalid(
                "no model_type: not a Hugging Face transformers config.json (expected vit, gpt2, bert or bart)".into(),
            ));
        }
    };
    f.finish();
    let imported = Imported {
        family,
        values: f.out,
        warnings: f.warnings,
    };
    imported.builder()?.build().map_err(|e| {
        ConfigError::Invalid(format!(
            "{origin}: the imported configuration is not valid: {e}"
        ))
    })?;
    Ok(imported)
}

impl Imported {
    /// A builder holding the imported keys (further overrides go on top).
    pub fn builder(&self) -> Result<ConfigBuilder, ConfigError> {
        let mut b = ConfigBuilder::new();
        for (k, v) in &self.values {
            b = b.value(k, v.clone())?;
        }
        Ok(b)
    }

    /// The configuration as a TOML file, headed by the warnings as comments.
    pub fn to_toml(&self, origin: &str) -> String {
        let mut text = format!(
            "# Imported by `sigprop import-config` from {origin} ({}).\n",
            self.family
        );
        for w in &self.warnings {
            text.push_str(&format!("# warning: {w}\n"));
        }
        // One TOML section per key prefix ([model], [model.variances], [inputs]), keys in the
        // order they were mapped.
        let mut sections: Vec<(&str, Vec<(&str, &Value)>)> = Vec::new();
        for (k, v) in &self.values {
            let (sec, leaf) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
            match sections.iter_mut().find(|(s, _)| *s == sec) {
                Some((_, keys)) => keys.push((leaf, v)),
                None => sections.push((sec, vec![(leaf, v)])),
            }
        }
        for (sec, keys) in sections {
            text.push_str(&format!("\n[{sec}]\n"));
            for (leaf, v) in keys {
                text.push_str(&format!("{leaf} = {v}\n"));
            }
        }
        text
    }
}

/// The fields of the file not yet consumed, and what they mapped to.
struct Fields {
    rest: BTreeMap<String, Json>,
    origin: String,
    out: Vec<(String, Value)>,
    warnings: Vec<String>,
}

impl Fields {
    /// A whole number this mapping has already set (0 if not).
    fn mapped(&self, key: &str) -> u64 {
        self.out
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_integer())
            .map_or(0, |i| i as u64)
    }

    fn invalid(&self, msg: String) -> ConfigError {
        ConfigError::Invalid(format!("{}: {msg}", self.origin))
    }

    fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.out.push((key.to_string(), v.into()));
    }

    fn warn(&mut self, msg: String) {
        self.warnings.push(msg);
    }

    /// Takes a field; JSON null counts as absent (the class default applies).
    fn take(&mut self, name: &str) -> Option<Json> {
        self.rest.remove(name).filter(|v| !v.is_null())
    }

    fn text(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(format!("{name} = {v}: expected a string"))),
        }
    }

    fn count(&mut self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(self.invalid(format!("{name} = {v}: expected a whole number ≥ 1"))),
            },
        }
    }

    fn number(&mut self, name: &str) -> Result<Option<f64>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(self.invalid(format!("{name} = {v}: expected a number ≥ 0"))),
            },
        }
    }

    fn flag(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(self.invalid(format!("{name} = {v}: expected true or false"))),
        }
    }

    /// A field the family requires, with the class's default when the file leaves it out.
    fn count_or(&mut self, name: &str, default: u64) -> Result<u64, ConfigError> {
        Ok(self.count(name)?.unwrap_or(default))
    }

    /// Width, heads, blocks and the MLP width of one encoder stack.
    fn shape(
        &mut self,
        width: (&str, u64),
        heads: (&str, u64),
        layers: (&str, u64),
        mlp: (&str, Option<u64>),
    ) -> Result<u64, ConfigError> {
        let n = self.count_or(width.0, width.1)?;
        let h = self.count_or(heads.0, heads.1)?;
        let l = self.count_or(layers.0, layers.1)?;
        // GPT-2's n_inner = null means 4·n_embd.
        let m = match self.count(mlp.0)? {
            Some(m) => m,
            None => mlp.1.unwrap_or(4 * n),
        };
        if m % n != 0 {
            return Err(self.invalid(format!(
                "{} = {m} is not a multiple of {} = {n}: model.mlp_mult must be a whole number",
                mlp.0, width.0
            )));
        }
        self.set("model.width", n as i64);
        self.set("model.heads", h as i64);
        self.set("model.layers", l as i64);
        self.set("model.pattern", "AM");
        self.set("model.mlp_mult", (m / n) as i64);
        Ok(l)
    }

    fn activation(&mut self, name: &str, default: &str) -> Result<(), ConfigError> {
        let act = self.text(name)?.unwrap_or_else(|| default.to_string());
        let mapped = match act.as_str() {
            "gelu" => "gelu",
            // The tanh approximation: sigprop has the exact (erf) GELU, which it differs
            // from pointwise by less than 1e-3.
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => {
                self.warn(format!(
                    "{name} = \"{act}\" (GELU's tanh approximation) becomes the exact GELU (pointwise difference < 1e-3)"
                ));
                "gelu"
            }
            "relu" => "relu",
            "tanh" => "tanh",
            "silu" | "swish" => "silu",
            "linear" => "linear",
            other => {
                return Err(self.invalid(format!(
                    "{name} = \"{other}\": sigprop has gelu, relu, tanh, silu and linear"
                )));
            }
        };
        self.set("model.activation", mapped);
        Ok(())
    }

    /// The standard parameterization with std `r`: every weight and embedding drawn with
    /// variance r², biases zero. `out_scale` divides the variance of the two residual
    /// output projections (U and X).
    fn variances(&mut self, r: f64, pe: bool, out_scale: f64) {
        let c = r * r;
        self.set("model.variance_mode", "absolute");
        for g in ["stem", "q", "k", "v", "w", "head"] {
            self.set(&format!("model.variances.{g}"), c);
        }
        for g in ["u", "x"] {
            self.set(&format!("model.variances.{g}"), c / out_scale);
        }
        self.set("model.variances.pe", if pe { c } else { 0.0 });
        self.set("model.variances.bias", 0.0);
    }

    /// Hugging Face's linear layers carry biases that start at zero: forward, the network is
    /// the same without them, but their gradients would add to the NTK.
    fn zero_biases(&mut self, fields: &str) {
        self.warn(format!(
            "{fields}: the biases start at zero; model.variances.bias = 0 leaves them out, which does not change the forward pass at initialization but drops the bias group from the NTK"
        ));
    }

    /// A token embedding stem with a head tied to it (or untied) over `vocab` tokens.
    fn token_model(&mut self, vocab: u64, tied: bool) {
        self.set("model.stem", "embedding");
        self.set("inputs.kind", "tokens");
        self.set("inputs.vocab", vocab as i64);
        self.set("model.n_out", vocab as i64);
        self.set("model.head", if tied { "tied" } else { "dense" });
    }

    fn context(&mut self, name: &str) -> Result<(), ConfigError> {
        if let Some(t) = self.count(name)? {
            self.warn(format!(
                "{name} = {t}: the context length is not a model key; choose inputs.tokens ≤ {t}"
            ));
        }
        Ok(())
    }

    /// Names every field left: those without effect at initialization in one warning, the
    /// rest as not mapped.
    fn finish(&mut self) {
        let rest = std::mem::take(&mut self.rest);
        let (quiet, loud): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .partition(|(k, _)| NO_EFFECT_AT_INIT.contains(&k.as_str()));
        if !quiet.is_empty() {
            let names: Vec<&str> = quiet.iter().map(|(k, _)| k.as_str()).collect();
            self.warn(format!(
                "not mapped, no effect on the network at initialization: {}",
                names.join(", ")
            ));
        }
        for (k, v) in loud {
            self.warn(format!("not mapped: {k} = {v}"));
        }
    }
}

/// `ViTConfig` (google/vit-*): pre-LN encoder over patches, classifier head.
fn vit(f: &mut Fields) -> Result<&'static str, ConfigError> {
    f.shape(
        ("hidden_size", 768),
        ("num_attention_heads", 12),
        ("num_hidden_layers", 12),
        ("intermediate_size", Some(3072)),
    )?;
    f.activation("hidden_act", "gelu")?;
    f.set("model.norm", "pre");
    f.set("model.causal", false);
    let eps = f.number("layer_norm_eps")?.unwrap_or(1e-12);
    f.set("model.ln_eps", eps);
    let r = f.number("initializer_range")?.unwrap_or(0.02);
    f.variances(r, true, 1.0);
    // The patch embedding is a dense map of C·p² pixel values.
    let p = f.count_or("patch_size", 16)?;
    let ch = f.count_or("num_channels", 3)?;
    f.set("model.stem", "dense");
    f.set("inputs.dim", (ch * p * p) as i64);
    if let Some(s) = f.count("image_size")? {
        let t = (s / p) * (s / p) + 1;
        f.warn(format!(
            "image_size = {s}: {t} tokens (patches and [CLS]) per image; the probe's inputs.tokens is yours to choose"
        ));
    }
    if f.flag("qkv_bias")?.unwrap_or(true) {
        f.zero_biases("qkv_bias = true and the dense layers");
    }
    // ViTForImageClassification: a classifier on the [CLS] token.
    let from_map = match f.take("id2label") {
        Some(Json::Object(m)) => Some(m.len() as u64),
        _ => None,
    };
    let labels = from_map.or(f.count("num_labels")?);
    f.set("model.head", "dense");
    match labels {
        Some(l) => f.set("model.n_out", l as i64),
        None => f.warn(
            "no id2label or num_labels: model.n_out keeps its default, set it to the number of classes".into(),
        ),
    }
    f.warn(
        "the [CLS] token and the classifier reading it are not mapped: the dense head gives every token's output".into(),
    );
    Ok("ViTConfig")
}

/// `GPT2Config`: pre-LN causal decoder with a final LN and a head tied to the embedding.
fn gpt2(f: &mut Fields) -> Result<&'static str, ConfigError> {
    let layers = f.shape(
        ("n_embd", 768),
        ("n_head", 12),
        ("n_layer", 12),
        ("n_inner", None),
    )?;
    f.activation("activation_function", "gelu_new")?;
    f.set("model.norm", "pre");
    f.set("model.causal", true);
    let eps = f.number("layer_norm_epsilon")?.unwrap_or(1e-5);
    f.set("model.ln_eps", eps);
    let r = f.number("initializer_range")?.unwrap_or(0.02);
    // GPT2PreTrainedModel._init_weights: c_proj weights get std r/√(2·n_layer).
    f.variances(r, true, 2.0 * layers as f64);
    let vocab = f.count_or("vocab_size", 50257)?;
    let tied = f.flag("tie_word_embeddings")?.unwrap_or(true);
    f.token_model(vocab, tied);
    if !f.flag("scale_attn_weights")?.unwrap_or(true) {
        f.set("model.logit_exponent", 0.0);
    }
    if f.flag("scale_attn_by_inverse_layer_idx")?.unwrap_or(false) {
        f.warn("scale_attn_by_inverse_layer_idx = true: logits divided by the layer index are not mapped".into());
    }
    f.context("n_positions")?;
    f.context("n_ctx")?;
    f.zero_biases("c_attn, c_proj and c_fc");
    Ok("GPT2Config")
}

/// `BertConfig` (bert-base-uncased): post-LN encoder, masked-LM head tied to the embedding.
fn bert(f: &mut Fields) -> Result<&'static str, ConfigError> {
    f.shape(
        ("hidden_size", 768),
        ("num_attention_heads", 12),
        ("num_hidden_layers", 12),
        ("intermediate_size", Some(3072)),
    )?;
    f.activation("hidden_act", "gelu")?;
    f.set("model.norm", "post");
    f.set("model.causal", false);
    let eps = f.number("layer_norm_eps")?.unwrap_or(1e-12);
    f.set("model.ln_eps", eps);
    let r = f.number("initializer_range")?.unwrap_or(0.02);
    let pe = f
        .text("position_embedding_type")?
        .unwrap_or_else(|| "absolute".into());
    if pe != "absolute" {
        f.warn(format!(
            "position_embedding_type = \"{pe}\": relative position embeddings are not mapped (model.variances.pe = 0)"
        ));
    }
    f.variances(r, pe == "absolute", 1.0);
    let vocab = f.count_or("vocab_size", 30522)?;
    let tied = f.flag("tie_word_embeddings")?.unwrap_or(true);
    f.token_model(vocab, tied);
    f.context("max_position_embeddings")?;
    if let Some(t) = f.count("type_vocab_size")? {
        f.warn(format!(
            "type_vocab_size = {t}: the token-type embedding is not mapped"
        ));
    }
    f.warn("the LayerNorm of the embedding sum and the masked-LM transform before the tied decoder are not mapped".into());
    f.zero_biases("the dense layers");
    Ok("BertConfig")
}

/// `BartConfig`: the encoder (post-LN unless normalize_before) with the shared embedding as
/// a tied head; the decoder's fields are named as unmapped.
fn bart(f: &mut Fields) -> Result<&'static str, ConfigError> {
    f.shape(
        ("d_model", 1024),
        ("encoder_attention_heads", 16),
        ("encoder_layers", 12),
        ("encoder_ffn_dim", Some(4096)),
    )?;
    // num_hidden_layers is BartConfig's alias of encoder_layers.
    f.count("num_hidden_layers")?;
    f.activation("activation_function", "gelu")?;
    let pre = f.flag("normalize_before")?.unwrap_or(false);
    f.set("model.norm", if pre { "pre" } else { "post" });
    f.set("model.causal", false);
    // BART's LayerNorms are torch.nn.LayerNorm with its default ε.
    f.set("model.ln_eps", 1e-5);
    let r = f.number("init_std")?.unwrap_or(0.02);
    f.variances(r, true, 1.0);
    let vocab = f.count_or("vocab_size", 50265)?;
    let tied = f.flag("tie_word_embeddings")?.unwrap_or(true);
    f.token_model(vocab, tied);
    f.context("max_position_embeddings")?;
    if f.flag("scale_embedding")?.unwrap_or(false) {
        f.warn("scale_embedding = true: the embedding's factor √d_model is not mapped".into());
    }
    if f.flag("add_final_layer_norm")?.unwrap_or(false) {
        f.warn(
            "add_final_layer_norm = true: a final LayerNorm after post-LN blocks is not mapped"
                .into(),
        );
    }
    bart_decoder(f, vocab)?;
    f.zero_biases("the attention and feed-forward layers");
    Ok("BartConfig")
}

/// BART's decoder (§II 2 B): `decoder_layers` repetitions of ACM (masked self-attention,
/// cross-attention, MLP). sigprop's decoder shares the encoder's width, heads and MLP
/// multiplier, so differing decoder heads or FFN widths are refused, not approximated.
/// The embedding LayerNorm (`layernorm_embedding`) is the stem LN an encoder–decoder has.
fn bart_decoder(f: &mut Fields, vocab: u64) -> Result<(), ConfigError> {
    let encdec = !matches!(f.take("is_encoder_decoder"), Some(Json::Bool(false)));
    let layers = f.count_or("decoder_layers", 12)?;
    let (n, heads, ffn) = (
        f.mapped("model.width"),
        f.mapped("model.heads"),
        f.mapped("model.mlp_mult"),
    );
    let dh = f.count_or("decoder_attention_heads", heads)?;
    if dh != heads {
        return Err(f.invalid(format!(
            "decoder_attention_heads = {dh} differs from encoder_attention_heads = {heads}: sigprop's decoder has the encoder's heads (model.heads)"
        )));
    }
    let df = f.count_or("decoder_ffn_dim", ffn * n)?;
    if df != ffn * n {
        return Err(f.invalid(format!(
            "decoder_ffn_dim = {df} differs from encoder_ffn_dim = {}: sigprop's decoder has the encoder's MLP width (model.mlp_mult)",
            ffn * n
        )));
    }
    if let Some(p) = f.number("decoder_layerdrop")? {
        f.warn(format!(
            "decoder_layerdrop = {p}: drops layers in training only, no effect at initialization"
        ));
    }
    if !encdec || layers == 0 {
        f.warn(format!(
            "is_encoder_decoder = {encdec}, decoder_layers = {layers}: the encoder only is mapped"
        ));
        f.warn("layernorm_embedding (the LayerNorm of the embedding sum) is mapped only with a decoder".into());
        return Ok(());
    }
    f.set("model.decoder_layers", layers as i64);
    f.set("model.decoder_pattern", "ACM");
    // fairseq's and Hugging Face's decoder input starts with this id (shift_tokens_right).
    if let Some(start) = f.count("decoder_start_token_id")?.filter(|&s| s < vocab) {
        f.set("inputs.bos_id", start as i64);
    }
    // BART's [pad]: its embedding row is zero and frozen (`padding_idx`, the paper's footnote
    // 48) and padded source tokens are masked out of cross-attention.
    if let Some(pad) = f.count("pad_token_id")?.filter(|&p| p < vocab) {
        f.set("inputs.pad_id", pad as i64);
    }
    Ok(())
}
