//! Configuration: the TOML file of SPEC §3, presets, `--set` overrides, validation.
//!
//! Raw input is turned once into a validated [`Config`] (ripgrep's `HiArgs` idea): every
//! later stage can trust it. The resolved values are kept as a flat key → value map so
//! that the written `config.toml` lists every key and reads back into the same model.

pub mod fingerprint;
pub mod presets;
pub mod schema;
pub mod sections;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Value;

use crate::model::Group;
use crate::model::activation::Activation;
use crate::model::group::GROUPS;
use schema::{Key, Kind};
pub use sections::{
    InputWord, InputsSection, ModelSection, Precision, Sections, TheorySpec, TrainSection,
    VarianceMode,
};

/// A configuration problem, phrased so a person can fix it: it names the key, the bad
/// value and what is allowed.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown key `{key}`; did you mean `{suggestion}`?")]
    UnknownKey { key: String, suggestion: String },
    #[error("`{key}` = {value}: {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read config {path}: {msg}")]
    Read { path: String, msg: String },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
}

fn bad(key: &str, value: &Value, expected: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Dense,
    Embedding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// z ← ξ z + γ R(LN(z)), final LN before the head (the paper).
    Pre,
    /// z ← LN(ξ z + γ R(z)).
    Post,
    /// z ← ξ z + γ R(z).
    None,
    /// The book's plain MLP: z^{ℓ+1} = b + W σ(z^ℓ), no LN, no skip.
    Mlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Dense,
    Pooled,
    Tied,
    /// Reads the class token (t = 0) of each sequence ((1.8), footnote 4).
    Class,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitDist {
    Gaussian,
    Uniform,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Attn,
    Mlp,
}

/// A decoder block (`model.decoder_pattern`), §II 2 B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderBlock {
    /// A: masked (causal) self-attention over the decoder's tokens (1.18).
    Masked,
    /// C: cross-attention, queries from the decoder, keys and values from the encoder's
    /// final-LN output s̃ (2.2)–(2.4).
    Cross,
    /// M: the Transformer MLP (1.20)–(1.21).
    Mlp,
}

impl DecoderBlock {
    /// The `block` column of its rows.
    pub fn name(self) -> &'static str {
        match self {
            DecoderBlock::Masked => "attn",
            DecoderBlock::Cross => "cross",
            DecoderBlock::Mlp => "mlp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    Auto,
    Dense,
    Conditional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backward {
    None,
    Trace,
    Pairs,
}

/// The O(1) constants C_G of (1.25)–(1.33). Weights get C/fan_in (or C itself when
/// `variance_mode = "absolute"`); biases and embeddings get C. One field per line of the group
/// table `model::group::GROUPS`, which maps each to its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variances {
    pub stem: f64,
    pub pe: f64,
    /// C_cls of the class token c ((1.8)): an additive embedding like b^PE.
    pub cls: f64,
    pub q: f64,
    pub k: f64,
    pub v: f64,
    pub u: f64,
    pub w: f64,
    pub x: f64,
    pub head: f64,
    pub bias: f64,
}

/// Everything that defines the network (SPEC §1). The Monte Carlo engine, the theory
/// and the trainer all read this one struct.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub stem: Stem,
    pub width: usize,
    pub heads: usize,
    pub mlp_mult: usize,
    /// The full list of residual blocks: `pattern` repeated `layers` times (the encoder's
    /// when the model has a decoder).
    pub blocks: Vec<BlockKind>,
    /// The decoder's blocks, `decoder_pattern` repeated `decoder_layers` times; empty for an
    /// encoder-only model. Layer numbering: docs/architecture.md, "Encoder–decoder".
    pub decoder: Vec<DecoderBlock>,
    /// Decoder tokens per sequence T_dec (unused without a decoder).
    pub decoder_tokens: usize,
    pub norm: Norm,
    pub activation: Activation,
    pub logit_exponent: f64,
    pub causal: bool,
    pub zero_queries: bool,
    pub ln_eps: f64,
    pub xi: f64,
    pub gamma_res: f64,
    pub head: HeadKind,
    pub head_s: f64,
    pub n_out: usize,
    /// A learned class token c with its own positional embedding at t = 0 ((1.8)): the
    /// network sees T + 1 tokens per sequence, the class token first.
    pub class_token: bool,
    pub init: InitDist,
    /// Each group's distribution (`model.init_groups.<group>`, else `init`), indexed by
    /// `Group as usize`; read it through [`ModelSpec::init_of`].
    pub group_init: [InitDist; GROUPS.len()],
    pub absolute_variances: bool,
    pub var: Variances,
    /// Input dimension of the stem: `inputs.dim` (dense) or `inputs.vocab` (embedding).
    pub n_in: usize,
    /// Tokens per sequence T (the positional embedding has one row per token).
    pub tokens: usize,
    /// The [pad] token's id (`inputs.pad_id`; an encoder–decoder with the word embedding
    /// only): its column W_WE[:, pad] is zero at initialization and is not a parameter (no
    /// gradient), as BART's (the paper's footnote 48; PyTorch's `padding_idx`).
    pub pad_id: Option<usize>,
}

impl ModelSpec {
    /// Channels per head C = n/H.
    pub fn channels(&self) -> usize {
        self.width / self.heads
    }
    /// Tokens per sequence as the network sees them: T, plus the class token at t = 0.
    pub fn seq_len(&self) -> usize {
        self.tokens + usize::from(self.class_token)
    }
    /// Whether the head gives one output per sequence (pooled or class head).
    pub fn per_sequence_head(&self) -> bool {
        matches!(self.head, HeadKind::Pooled | HeadKind::Class)
    }
    /// The distribution group `g` is drawn from.
    pub fn init_of(&self, g: Group) -> InitDist {
        self.group_init[g as usize]
    }
    /// Whether some weight used as Y = X Wᵀ is Gaussian, i.e. whether the conditional
    /// sampler has anything to draw (uniform weights are always materialized).
    pub fn has_gaussian_linear(&self) -> bool {
        let book = self.norm == Norm::Mlp;
        let attn = !book
            && (self.blocks.contains(&BlockKind::Attn)
                || self.decoder.iter().any(|&d| d != DecoderBlock::Mlp));
        let mlp =
            self.blocks.contains(&BlockKind::Mlp) || self.decoder.contains(&DecoderBlock::Mlp);
        let groups = [
            (Group::Stem, self.stem == Stem::Dense),
            (Group::Q, attn),
            (Group::K, attn),
            (Group::V, attn),
            (Group::U, attn),
            (Group::W, mlp),
            (Group::X, mlp && !book),
            (Group::Head, self.head != HeadKind::Tied),
        ];
        groups
            .iter()
            .any(|&(g, used)| used && self.init_of(g) == InitDist::Gaussian)
    }
    /// Number of residual blocks B (the encoder's B_e when the model has a decoder).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
    /// Whether the model is an encoder–decoder (§II 2 B).
    pub fn has_decoder(&self) -> bool {
        !self.decoder.is_empty()
    }
    /// The head's layer index L (layers are numbered as in the paper): B + 2, or
    /// B_e + B_d + 3 with a decoder (docs/architecture.md).
    pub fn head_layer(&self) -> usize {
        if self.has_decoder() {
            self.blocks.len() + self.decoder.len() + 3
        } else {
            self.blocks.len() + 2
        }
    }
    /// The decoder's stem layer B_e + 2 (embedding + decoder PE + its LN).
    pub fn decoder_stem_layer(&self) -> usize {
        self.blocks.len() + 2
    }
    /// Whether layer ℓ (1 … L − 1) is in the decoder: its rows index decoder tokens.
    pub fn in_decoder(&self, layer: usize) -> bool {
        self.has_decoder() && layer >= self.decoder_stem_layer() && layer < self.head_layer()
    }
    /// The residual block that produces layer ℓ, as its `block` column: `stem`, `attn`,
    /// `mlp`, `cross` or `head` (the decoder's stem is `stem` too).
    pub fn block_name(&self, layer: usize) -> &'static str {
        let be = self.blocks.len();
        if layer == 1 || (self.has_decoder() && layer == be + 2) {
            "stem"
        } else if layer >= self.head_layer() {
            "head"
        } else if layer <= be + 1 {
            match self.blocks[layer - 2] {
                BlockKind::Attn => "attn",
                BlockKind::Mlp => "mlp",
            }
        } else {
            self.decoder[layer - be - 3].name()
        }
    }
    /// Output width: the vocabulary for a tied head.
    pub fn out_dim(&self) -> usize {
        if self.head == HeadKind::Tied {
            self.n_in
        } else {
            self.n_out
        }
    }
    pub fn has_bias(&self) -> bool {
        self.var.bias > 0.0
    }
    /// Variance of a weight with the given fan-in and constant C.
    pub fn weight_var(&self, c: f64, fan_in: usize) -> f64 {
        if self.absolute_variances {
            c
        } else {
            c / fan_in as f64
        }
    }
    /// Head weight variance C_head / n^{1+s} (1.34); the fan-in is n (M·n never enters).
    pub fn head_var(&self) -> f64 {
        if self.absolute_variances {
            self.var.head
        } else {
            self.var.head / (self.width as f64).powf(1.0 + self.head_s)
        }
    }
    /// Tied-head rescale N_rescale = n^{-(1+s)/2} (1.33)/(1.34); 1 in absolute mode.
    pub fn tied_rescale(&self) -> f64 {
        if self.absolute_variances {
            1.0
        } else {
            (self.width as f64).powf(-(1.0 + self.head_s) / 2.0)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    Gaussian,
    Tokens,
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub kind: InputKind,
    pub sequences: usize,
    pub tokens: usize,
    pub dim: usize,
    pub correlation: f64,
    pub seed: u64,
    pub vocab: usize,
    pub ids: Option<Vec<Vec<usize>>>,
    /// The decoder's probe (encoder–decoder models): T_dec, explicit ids, the id at t = 0
    /// of the default shifted ids, and the padding id cross-attention masks out.
    pub decoder_tokens: usize,
    pub decoder_ids: Option<Vec<Vec<usize>>>,
    pub bos_id: usize,
    pub pad_id: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub samples: usize,
    pub seed: u64,
    pub sampler: Sampler,
    pub backward: Backward,
}

/// A validated configuration, with the flat map it was built from.
#[derive(Clone, Debug)]
pub struct Config {
    pub model: ModelSpec,
    pub inputs: InputSpec,
    pub run: RunSpec,
    pub theory: TheorySpec,
    /// The `[train]` section as written; `train::TrainSpec` builds the trainer from it.
    pub train: TrainSection,
    values: BTreeMap<String, Value>,
    /// Keys the user gave explicitly (file or `--set`), as opposed to defaults and presets.
    explicit: BTreeSet<String>,
}

/// Builds a [`Config`] from layers of overrides: defaults, preset, file, `--set`.
#[derive(Default)]
pub struct ConfigBuilder {
    user: BTreeMap<String, Value>,
    default_name: Option<String>,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a TOML file; relative `inputs.path` values are resolved against its folder.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        self = self.toml_str(&text, &path.display().to_string())?;
        if let Some(Value::String(p)) = self.user.get("inputs.path") {
            let p = Path::new(p);
            if p.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                let joined = base.join(p).display().to_string();
                self.user.insert("inputs.path".into(), Value::from(joined));
            }
        }
        if self.default_name.is_none() {
            self.default_name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(self)
    }

    /// Reads TOML text; `origin` names it in errors.
    pub fn toml_str(mut self, text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.to_string(),
                msg: one_line(&e.to_string()),
            })?;
        flatten("", &table, &mut self.user)?;
        Ok(self)
    }

    /// Applies `key=value` (the command line's `--set`).
    pub fn set(mut self, assignment: &str) -> Result<Self, ConfigError> {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--set `{assignment}`: expected key=value, e.g. model.width=256"
            ))
        })?;
        let key = key.trim();
        let spec = lookup(key)?;
        let value = parse_cli_value(spec, raw.trim())?;
        self.user.insert(key.to_string(), value);
        Ok(self)
    }

    /// Sets one value directly (used by `--samples`, `--seed`, `--inputs`).
    pub fn value(mut self, key: &str, value: Value) -> Result<Self, ConfigError> {
        lookup(key)?;
        self.user.insert(key.to_string(), value);
        Ok(self)
    }

    /// Whether the user (file or `--set`) gave this key explicitly.
    pub fn is_set(&self, key: &str) -> bool {
        self.user.contains_key(key)
    }

    pub fn build(self) -> Result<Config, ConfigError> {
        let mut values = BTreeMap::new();
        for k in schema::KEYS.iter() {
            if let Some(d) = &k.default {
                values.insert(k.name.to_string(), d.clone());
            }
        }
        if let Some(p) = self.user.get("model.preset") {
            let name = p.as_str().unwrap_or_default();
            let over = presets::overrides(name).ok_or_else(|| {
                bad(
                    "model.preset",
                    p,
                    format!("expected one of {}", schema::PRESETS.join(", ")),
                )
            })?;
            for (k, v) in over {
                values.insert(k.to_string(), v);
            }
        }
        let explicit: BTreeSet<String> = self.user.keys().cloned().collect();
        for (k, v) in self.user {
            values.insert(k, v);
        }
        if !values.contains_key("run.name") {
            let name = values
                .get("model.preset")
                .and_then(|v| v.as_str().map(str::to_string))
                .or(self.default_name)
                .unwrap_or_else(|| "default".to_string());
            values.insert("run.name".into(), Value::from(name));
        }
        for (k, v) in &values {
            check_kind(lookup(k)?, v)?;
        }
        Config::from_values(values, &explicit)
    }
}

impl Config {
    /// The built-in defaults with a preset applied.
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        ConfigBuilder::new()
            .value("model.preset", Value::from(name))?
            .build()
    }

    /// The resolved configuration as TOML; reading it back gives the same model.
    pub fn to_toml(&self) -> String {
        let mut root = toml::Table::new();
        for k in schema::KEYS.iter() {
            if let Some(v) = self.values.get(k.name) {
                insert_dotted(&mut root, k.name, v.clone());
            }
        }
        toml::to_string_pretty(&root).unwrap_or_default()
    }

    /// A resolved value by key (for labels and sweeps).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Every resolved value, by key (the fingerprint hashes these).
    pub fn flat(&self) -> &BTreeMap<String, Value> {
        &self.values
    }

    /// Deserializes the layered values into the typed sections and validates them.
    fn from_values(
        mut values: BTreeMap<String, Value>,
        explicit: &BTreeSet<String>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        for (k, v) in &values {
            insert_dotted(&mut table, k, v.clone());
        }
        // Every value's kind was checked against the key table, so a failure here is a key
        // the table has but a section lacks (or the reverse): a bug, reported as one line.
        let sections = Sections::deserialize(Value::Table(table))
            .map_err(|e| ConfigError::Invalid(one_line(&format!("configuration: {e}"))))?;
        let (model, inputs) = validate(&sections, explicit, &mut values)?;
        Ok(Config {
            model,
            inputs,
            run: RunSpec {
                name: sections.run.name,
                samples: sections.run.samples,
                seed: sections.run.seed,
                sampler: sections.run.sampler,
                backward: sections.run.backward,
            },
            theory: sections.theory,
            train: sections.train,
            values,
            explicit: explicit.clone(),
        })
    }

    /// Whether the user gave `key` explicitly.
    pub fn is_explicit(&self, key: &str) -> bool {
        self.explicit.contains(key)
    }

    /// Replaces the input shape after a probe file fixed it (dim, sequences, tokens).
    pub fn set_input_shape(&mut self, sequences: usize, tokens: usize, dim: Option<usize>) {
        self.inputs.sequences = sequences;
        self.inputs.tokens = tokens;
        self.model.tokens = tokens;
        self.values
            .insert("inputs.sequences".into(), Value::from(sequences as i64));
        self.values
            .insert("inputs.tokens".into(), Value::from(tokens as i64));
        if let Some(d) = dim {
            self.inputs.dim = d;
            self.model.n_in = d;
            self.values
                .insert("inputs.dim".into(), Value::from(d as i64));
        }
        // T_dec defaults to T: follow the file's T unless the user fixed it.
        if self.model.has_decoder()
            && !self.explicit.contains("inputs.decoder_tokens")
            && self.inputs.decoder_ids.is_none()
        {
            self.inputs.decoder_tokens = tokens;
            self.model.decoder_tokens = tokens;
            self.values
                .insert("inputs.decoder_tokens".into(), Value::from(tokens as i64));
        }
    }

    /// Sets the ensemble size (a resumed run that grows).
    pub fn set_samples(&mut self, n: u64) {
        self.run.samples = n as usize;
        self.values.insert(
            "run.samples".into(),
            Value::from(n.min(i64::MAX as u64) as i64),
        );
    }

    /// Records the sampler a run actually used.
    pub fn set_sampler(&mut self, s: Sampler) {
        self.run.sampler = s;
        let name = match s {
            Sampler::Auto => "auto",
            Sampler::Dense => "dense",
            Sampler::Conditional => "conditional",
        };
        self.values.insert("run.sampler".into(), Value::from(name));
    }

    /// Points the resolved config at a probe file (written beside the outputs).
    pub fn set_input_file(&mut self, path: &str) {
        self.inputs.kind = InputKind::File(PathBuf::from(path));
        self.values
            .insert("inputs.kind".into(), Value::from("file"));
        self.values.insert("inputs.path".into(), Value::from(path));
        self.values.remove("inputs.ids");
    }
}

/// The rules that tie keys together (divisibility, which stem takes which inputs, what the
/// book's MLP allows, the tied head's width), in one place. It also records in `values` what
/// the probe's ids and the tied head fix (`inputs.sequences`, `inputs.tokens`, `model.n_out`),
/// so the written `config.toml` states them.
/// Each group's distribution: `model.init_groups.<group>`, else `model.init`.
fn group_init(m: &sections::ModelSection) -> Result<[InitDist; GROUPS.len()], ConfigError> {
    let mut out = [m.init; GROUPS.len()];
    for (name, &dist) in &m.init_groups {
        let g = GROUPS.iter().find(|g| g.name == name).ok_or_else(|| {
            ConfigError::Invalid(format!("unknown key `model.init_groups.{name}`"))
        })?;
        out[g.group as usize] = dist;
    }
    Ok(out)
}

fn validate(
    s: &Sections,
    explicit: &BTreeSet<String>,
    values: &mut BTreeMap<String, Value>,
) -> Result<(ModelSpec, InputSpec), ConfigError> {
    let m = &s.model;
    if !m.width.is_multiple_of(m.heads) {
        return Err(ConfigError::Invalid(format!(
            "model.width = {} is not divisible by model.heads = {}: channels per head C = n/H must be a whole number",
            m.width, m.heads
        )));
    }
    let blocks = blocks(m, values)?;
    // The class token ((1.8)): a vision stem's extra token, read by the class head.
    if m.class_token && (m.stem != Stem::Dense || m.norm == Norm::Mlp) {
        return Err(bad(
            "model.class_token",
            &Value::from(true),
            "the class token needs model.stem = \"dense\" and a Transformer norm (pre, post or none)",
        ));
    }
    if m.head == HeadKind::Class && !m.class_token {
        return Err(bad(
            "model.head",
            &Value::from("class"),
            "the class head reads the class token: set model.class_token = true",
        ));
    }
    let (kind, sequences, tokens) = probe(&s.inputs, m.stem, values)?;
    let decoder = decoder_blocks(m, values)?;
    let decoder_tokens = decoder_probe(s, &decoder, explicit, sequences, tokens, values)?;
    let i = &s.inputs;
    let n_in = if m.stem == Stem::Embedding {
        i.vocab
    } else {
        i.dim
    };
    let mut n_out = m.n_out;
    if m.head == HeadKind::Tied {
        if explicit.contains("model.n_out") && n_out != i.vocab {
            return Err(ConfigError::Invalid(format!(
                "model.n_out = {n_out} conflicts with the tied head, whose output width is inputs.vocab = {}",
                i.vocab
            )));
        }
        n_out = i.vocab;
        values.insert("model.n_out".into(), Value::from(n_out as i64));
    }
    let pad_id = i
        .pad_id
        .filter(|_| m.stem == Stem::Embedding && !decoder.is_empty());
    let model = ModelSpec {
        stem: m.stem,
        width: m.width,
        heads: m.heads,
        mlp_mult: m.mlp_mult,
        blocks,
        decoder,
        decoder_tokens,
        norm: m.norm,
        activation: m.activation,
        logit_exponent: m.logit_exponent,
        causal: m.causal,
        zero_queries: m.zero_queries,
        ln_eps: m.ln_eps,
        xi: m.xi,
        gamma_res: m.gamma_res,
        head: m.head,
        head_s: m.head_s,
        n_out,
        class_token: m.class_token,
        init: m.init,
        group_init: group_init(m)?,
        absolute_variances: m.variance_mode == VarianceMode::Absolute,
        var: m.variances,
        n_in,
        tokens,
        pad_id,
    };
    let inputs = InputSpec {
        kind,
        sequences,
        tokens,
        dim: i.dim,
        correlation: i.correlation,
        seed: i.seed,
        vocab: i.vocab,
        ids: i.ids.clone(),
        decoder_tokens,
        decoder_ids: i.decoder_ids.clone(),
        bos_id: i.bos_id,
        pad_id: i.pad_id,
    };
    Ok((model, inputs))
}

/// The block list (`pattern` × `layers`) and the rules of the book's MLP mode and the tied head.
fn blocks(
    m: &ModelSection,
    values: &BTreeMap<String, Value>,
) -> Result<Vec<BlockKind>, ConfigError> {
    let mut pattern = Vec::new();
    for c in m.pattern.chars() {
        pattern.push(match c {
            'A' => BlockKind::Attn,
            'M' => BlockKind::Mlp,
            'C' => {
                return Err(bad(
                    "model.pattern",
                    &Value::from(m.pattern.clone()),
                    "C (cross-attention) reads the encoder's output and belongs in model.decoder_pattern (with model.decoder_layers ≥ 1)",
                ));
            }
            _ => {
                return Err(bad(
                    "model.pattern",
                    &Value::from(m.pattern.clone()),
                    format!(
                        "letter `{c}` is not a block; allowed letters are A (attention) and M (MLP)"
                    ),
                ));
            }
        });
    }
    if pattern.is_empty() {
        return Err(bad(
            "model.pattern",
            &Value::from(""),
            "expected a non-empty string over {A, M}, e.g. \"AM\"",
        ));
    }
    check_sizes(values, pattern.len())?;
    let blocks: Vec<BlockKind> = (0..m.layers)
        .flat_map(|_| pattern.iter().copied())
        .collect();
    if m.norm == Norm::Mlp {
        if blocks.contains(&BlockKind::Attn) {
            return Err(bad(
                "model.pattern",
                &Value::from(m.pattern.clone()),
                "model.norm = \"mlp\" (the book's plain MLP) allows only M blocks",
            ));
        }
        if m.stem != Stem::Dense || m.head != HeadKind::Dense {
            return Err(ConfigError::Invalid(
                "model.norm = \"mlp\" needs model.stem = \"dense\" and model.head = \"dense\""
                    .into(),
            ));
        }
    }
    if m.head == HeadKind::Tied && m.stem != Stem::Embedding {
        return Err(bad(
            "model.head",
            &Value::from("tied"),
            "a tied head needs model.stem = \"embedding\"",
        ));
    }

    Ok(blocks)
}

/// The decoder's block list (`decoder_pattern` × `decoder_layers`) and what a decoder needs
/// of the rest of the model. Decoder keys without a decoder are refused, not ignored.
fn decoder_blocks(
    m: &ModelSection,
    values: &BTreeMap<String, Value>,
) -> Result<Vec<DecoderBlock>, ConfigError> {
    let pattern_value = || Value::from(m.decoder_pattern.clone());
    let mut pattern = Vec::new();
    for c in m.decoder_pattern.chars() {
        pattern.push(match c {
            'A' => DecoderBlock::Masked,
            'C' => DecoderBlock::Cross,
            'M' => DecoderBlock::Mlp,
            _ => {
                return Err(bad(
                    "model.decoder_pattern",
                    &pattern_value(),
                    format!(
                        "letter `{c}` is not a decoder block; allowed letters are A (masked self-attention), C (cross-attention) and M (MLP)"
                    ),
                ));
            }
        });
    }
    if pattern.is_empty() {
        return Err(bad(
            "model.decoder_pattern",
            &Value::from(""),
            "expected a non-empty string over {A, C, M}, e.g. \"ACM\" (BART's)",
        ));
    }
    if m.decoder_layers == 0 {
        return Ok(Vec::new());
    }
    let total = m.decoder_layers as f64 * pattern.len() as f64
        + values
            .get("model.layers")
            .and_then(Value::as_integer)
            .unwrap_or(1) as f64
            * m.pattern.chars().count() as f64;
    if total > MAX_BLOCKS {
        return Err(ConfigError::Invalid(format!(
            "model.layers × len(model.pattern) + model.decoder_layers × len(model.decoder_pattern) = {} blocks is too many (at most {MAX_BLOCKS})",
            big(total)
        )));
    }
    let why = if m.norm == Norm::Mlp {
        Some("model.norm = \"mlp\" (the book's plain MLP) has no decoder")
    } else if m.class_token {
        Some("the class token is a vision encoder's; set model.class_token = false")
    } else if m.head == HeadKind::Class {
        Some("the class head reads the encoder's class token; use a dense, pooled or tied head")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(bad(
            "model.decoder_layers",
            &Value::from(m.decoder_layers as i64),
            why,
        ));
    }
    Ok((0..m.decoder_layers)
        .flat_map(|_| pattern.iter().copied())
        .collect())
}

/// T_dec and the rules of the decoder's probe keys; records T_dec in `values`.
fn decoder_probe(
    s: &Sections,
    decoder: &[DecoderBlock],
    explicit: &BTreeSet<String>,
    sequences: usize,
    tokens: usize,
    values: &mut BTreeMap<String, Value>,
) -> Result<usize, ConfigError> {
    let i = &s.inputs;
    if decoder.is_empty() {
        // A written config.toml states every default: only a value that would change
        // something counts.
        let given = |k: &str| {
            explicit.contains(k)
                && match k {
                    "model.decoder_pattern" => s.model.decoder_pattern != "ACM",
                    "inputs.bos_id" => i.bos_id != 0,
                    _ => true,
                }
        };
        let keys = [
            "model.decoder_pattern",
            "inputs.decoder_tokens",
            "inputs.decoder_ids",
            "inputs.bos_id",
            "inputs.pad_id",
        ];
        if let Some(k) = keys.iter().find(|k| given(k)) {
            return Err(ConfigError::Invalid(format!(
                "`{k}` describes the decoder, but model.decoder_layers = 0 (encoder only): set model.decoder_layers ≥ 1 or drop it"
            )));
        }
        return Ok(tokens);
    }
    let embedding = s.model.stem == Stem::Embedding;
    for (key, id) in [
        ("inputs.bos_id", Some(i.bos_id)),
        ("inputs.pad_id", i.pad_id),
    ] {
        if let Some(id) = id.filter(|_| embedding)
            && id >= i.vocab
        {
            return Err(ConfigError::Invalid(format!(
                "{key} = {id} is not below inputs.vocab = {}",
                i.vocab
            )));
        }
    }
    if !embedding
        && let Some(k) = ["inputs.decoder_ids", "inputs.pad_id"]
            .iter()
            .find(|k| explicit.contains(**k))
    {
        return Err(ConfigError::Invalid(format!(
            "`{k}` is a token id, but model.stem = \"dense\" feeds the decoder vectors: it needs model.stem = \"embedding\""
        )));
    }

    let mut t_dec = i.decoder_tokens.unwrap_or(tokens);
    if let Some(ids) = &i.decoder_ids {
        let t = ids.first().map_or(0, Vec::len);
        if ids.len() != sequences || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(ConfigError::Invalid(format!(
                "inputs.decoder_ids: expected {sequences} equally long sequences (one per encoder sequence), e.g. [[0, 3, 17]]"
            )));
        }
        if let Some(&bad_id) = i
            .decoder_ids
            .iter()
            .flatten()
            .flatten()
            .find(|&&id| id >= i.vocab)
        {
            return Err(ConfigError::Invalid(format!(
                "inputs.decoder_ids: token id {bad_id} is not below inputs.vocab = {}",
                i.vocab
            )));
        }
        if i.decoder_tokens.is_some_and(|d| d != t) {
            return Err(ConfigError::Invalid(format!(
                "inputs.decoder_tokens = {t_dec} conflicts with inputs.decoder_ids, whose sequences have {t} tokens"
            )));
        }
        t_dec = t;
    }
    let d = (sequences as f64) * (t_dec as f64);
    let n = s.model.width as f64;
    for (what, x) in [
        (
            "inputs.sequences × inputs.decoder_tokens × model.width",
            d * n,
        ),
        ("(inputs.sequences × inputs.decoder_tokens)²", d * d),
        (
            "inputs.sequences² × inputs.tokens × inputs.decoder_tokens",
            d * sequences as f64 * tokens as f64,
        ),
    ] {
        if x > MAX_ELEMENTS {
            return Err(ConfigError::Invalid(format!(
                "{what} = {} elements is too large (at most 2^48 per array)",
                big(x)
            )));
        }
    }
    values.insert("inputs.decoder_tokens".into(), Value::from(t_dec as i64));
    Ok(t_dec)
}

/// The probe's kind (the stem decides which fit) and its shape (token ids fix it).
fn probe(
    i: &InputsSection,
    stem: Stem,
    values: &mut BTreeMap<String, Value>,
) -> Result<(InputKind, usize, usize), ConfigError> {
    let kind = match i.kind {
        InputWord::Gaussian => InputKind::Gaussian,
        InputWord::Tokens => InputKind::Tokens,
        InputWord::File => match i.path.as_deref().filter(|p| !p.is_empty()) {
            Some(path) => InputKind::File(PathBuf::from(path)),
            None => {
                return Err(ConfigError::Invalid(
                    "inputs.kind = \"file\" needs inputs.path = \"probe.csv\" (or --inputs P.csv)"
                        .into(),
                ));
            }
        },
    };
    match (&kind, stem) {
        (InputKind::Tokens, Stem::Dense) => {
            return Err(bad(
                "inputs.kind",
                &Value::from("tokens"),
                "token ids need model.stem = \"embedding\"; the dense stem takes \"gaussian\" or \"file\"",
            ));
        }
        (InputKind::Gaussian, Stem::Embedding) => {
            return Err(bad(
                "inputs.kind",
                &Value::from("gaussian"),
                "the embedding stem takes \"tokens\" or \"file\" (sequence,token,id)",
            ));
        }
        _ => {}
    }
    let (mut sequences, mut tokens) = (i.sequences, i.tokens);
    if let Some(ids) = &i.ids {
        let t = ids.first().map_or(0, Vec::len);
        if ids.is_empty() || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(ConfigError::Invalid(
                "inputs.ids: expected a non-empty list of equally long sequences, e.g. [[3, 17, 17, 5]]".into(),
            ));
        }
        if let Some(&bad_id) = ids.iter().flatten().find(|&&id| id >= i.vocab) {
            return Err(ConfigError::Invalid(format!(
                "inputs.ids: token id {bad_id} is not below inputs.vocab = {}",
                i.vocab
            )));
        }
        // The ids fix the probe set's shape.
        (sequences, tokens) = (ids.len(), t);
        values.insert("inputs.sequences".into(), Value::from(sequences as i64));
        values.insert("inputs.tokens".into(), Value::from(tokens as i64));
    }
    Ok((kind, sequences, tokens))
}

fn lookup(key: &str) -> Result<&'static Key, ConfigError> {
    schema::find(key).ok_or_else(|| match schema::closest(key) {
        Some(s) => ConfigError::UnknownKey {
            key: key.to_string(),
            suggestion: s.to_string(),
        },
        None => ConfigError::Invalid(format!(
            "unknown key `{key}`; the keys are listed in docs/configuration.md"
        )),
    })
}

/// The most elements any one array may have (2^48, 2 PiB of f64). Beyond it the shape
/// products themselves overflow or ndarray refuses the shape; no machine holds it anyway.
pub const MAX_ELEMENTS: f64 = 281_474_976_710_656.0;

/// The most residual blocks (layers × pattern length): the block list is built before any
/// memory estimate, so it must stay small itself.
pub const MAX_BLOCKS: f64 = 1_048_576.0;

/// Refuses shapes whose products overflow or exceed [`MAX_ELEMENTS`], before anything is
/// allocated. Products are taken in f64, where they cannot wrap (2^58 + 1 times 512 is
/// not 512).
fn check_sizes(values: &BTreeMap<String, Value>, pattern_len: usize) -> Result<(), ConfigError> {
    let n = |k: &str| values.get(k).and_then(Value::as_integer).unwrap_or(1) as f64;
    let ids_len = |k: usize| {
        values
            .get("inputs.ids")
            .and_then(Value::as_array)
            .map(|rows| {
                if k == 0 {
                    rows.len() as f64
                } else {
                    rows.first().and_then(Value::as_array).map_or(0, Vec::len) as f64
                }
            })
    };
    let seqs = ids_len(0).unwrap_or_else(|| n("inputs.sequences"));
    let toks = ids_len(1).unwrap_or_else(|| n("inputs.tokens"));
    let blocks = n("model.layers") * pattern_len as f64;
    if blocks > MAX_BLOCKS {
        return Err(ConfigError::Invalid(format!(
            "model.layers × len(model.pattern) = {} blocks is too many (at most {MAX_BLOCKS})",
            big(blocks)
        )));
    }
    let d = seqs * toks;
    let products: [(&str, f64); 8] = [
        (
            "model.mlp_mult × model.width",
            n("model.mlp_mult") * n("model.width"),
        ),
        (
            "model.width × model.width",
            n("model.width") * n("model.width"),
        ),
        (
            "model.mlp_mult × model.width²",
            n("model.mlp_mult") * n("model.width") * n("model.width"),
        ),
        (
            "inputs.sequences × inputs.tokens × inputs.dim",
            d * n("inputs.dim"),
        ),
        ("(inputs.sequences × inputs.tokens)²", d * d),
        (
            "inputs.sequences × inputs.tokens × model.width",
            d * n("model.width"),
        ),
        (
            "inputs.vocab × model.width",
            n("inputs.vocab") * n("model.width"),
        ),
        (
            "model.n_out × model.width",
            n("model.n_out") * n("model.width"),
        ),
    ];
    for (what, x) in products {
        if x > MAX_ELEMENTS {
            return Err(ConfigError::Invalid(format!(
                "{what} = {} elements is too large (at most 2^48 per array)",
                big(x)
            )));
        }
    }
    Ok(())
}

/// A count for a message: exact below 10^15, else in scientific notation.
fn big(x: f64) -> String {
    if x < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.3e}")
    }
}

/// A count from a command-line flag (`--samples`, `--seed`, …) as a configuration value.
/// TOML integers are signed 64-bit: a larger count is refused as typed, not wrapped to
/// a negative number.
pub fn count_value(key: &str, flag: &str, n: u64) -> Result<Value, ConfigError> {
    i64::try_from(n).map(Value::from).map_err(|_| {
        ConfigError::Invalid(format!(
            "{flag} {n}: too large for {key} (at most {})",
            i64::MAX
        ))
    })
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, Value>,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) if schema::find(&key).is_none() && is_section(&key) => {
                flatten(&key, t, out)?
            }
            _ => {
                lookup(&key)?;
                out.insert(key, v.clone());
            }
        }
    }
    Ok(())
}

fn is_section(key: &str) -> bool {
    let dotted = format!("{key}.");
    schema::KEYS.iter().any(|k| k.name.starts_with(&dotted))
}

fn check_kind(key: &Key, v: &Value) -> Result<(), ConfigError> {
    let name = key.name;
    match key.kind {
        Kind::Int { min } => match v.as_integer() {
            Some(i) if i >= min => Ok(()),
            Some(_) => Err(bad(name, v, format!("expected a whole number ≥ {min}"))),
            None => Err(bad(name, v, format!("expected a whole number ≥ {min}"))),
        },
        Kind::Float { min, max } => {
            let x = v.as_float().or(v.as_integer().map(|i| i as f64));
            match x {
                Some(x) if x.is_finite() && x >= min && x <= max => Ok(()),
                _ => Err(bad(name, v, describe_range(min, max))),
            }
        }
        Kind::Bool => v
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| bad(name, v, "expected true or false")),
        Kind::Choice(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            _ => Err(bad(
                name,
                v,
                format!("expected one of {}", options.join(", ")),
            )),
        },
        Kind::Text => v
            .as_str()
            .map(|_| ())
            .ok_or_else(|| bad(name, v, "expected a string")),
        Kind::IdMatrix => {
            let ok = v.as_array().is_some_and(|rows| {
                rows.iter().all(|r| {
                    r.as_array()
                        .is_some_and(|a| a.iter().all(|x| x.as_integer().is_some_and(|i| i >= 0)))
                })
            });
            if ok {
                Ok(())
            } else {
                Err(bad(
                    name,
                    v,
                    "expected a list of lists of token ids ≥ 0, e.g. [[3, 17, 5]]",
                ))
            }
        }
    }
}

fn describe_range(min: f64, max: f64) -> String {
    match (min.is_finite(), max.is_finite()) {
        (true, true) => format!("expected a finite number in [{min}, {max}]"),
        (true, false) => format!("expected a finite number ≥ {min}"),
        _ => "expected a finite number".into(),
    }
}

fn parse_cli_value(key: &Key, raw: &str) -> Result<Value, ConfigError> {
    let unquoted = raw.trim_matches('"');
    if let Kind::Int { .. } = key.kind
        && raw.parse::<i64>().is_err()
        && raw.parse::<u128>().is_ok()
    {
        return Err(ConfigError::Invalid(format!(
            "`{}` = {raw}: too large (at most {})",
            key.name,
            i64::MAX
        )));
    }
    let v = match key.kind {
        Kind::Int { .. } => raw.parse::<i64>().map(Value::from).map_err(|_| raw),
        Kind::Float { .. } => raw.parse::<f64>().map(Value::from).map_err(|_| raw),
        Kind::Bool => raw.parse::<bool>().map(Value::from).map_err(|_| raw),
        Kind::Choice(_) | Kind::Text => Ok(Value::from(unquoted)),
        Kind::IdMatrix => format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("v").cloned())
            .ok_or(raw),
    };
    let v = v.map_err(|raw| bad(key.name, &Value::from(raw), kind_hint(key.kind)))?;
    check_kind(key, &v)?;
    Ok(v)
}

fn kind_hint(kind: Kind) -> String {
    match kind {
        Kind::Int { min } => format!("expected a whole number ≥ {min}"),
        Kind::Float { min, max } => describe_range(min, max),
        Kind::Bool => "expected true or false".into(),
        Kind::Choice(o) => format!("expected one of {}", o.join(", ")),
        Kind::Text => "expected a string".into(),
        Kind::IdMatrix => "expected a list of lists of token ids, e.g. [[3, 17, 5]]".into(),
    }
}

fn insert_dotted(root: &mut toml::Table, key: &str, v: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut t = root;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("config sections are tables");
    }
    t.insert(last.to_string(), v);
}

/// Folds a multi-line message (toml's error with a source excerpt) into one line.
pub fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_vit_shape() {
        let c = ConfigBuilder::new().build().unwrap();
        assert_eq!(c.model.width, 512);
        assert_eq!(c.model.blocks.len(), 12);
        assert_eq!(c.model.head_layer(), 14);
    }

    #[test]
    fn round_trip_gives_the_same_model() {
        for p in schema::PRESETS {
            let c = Config::preset(p).unwrap();
            let text = c.to_toml();
            let back = ConfigBuilder::new()
                .toml_str(&text, "round-trip")
                .unwrap()
                .build()
                .unwrap();
            assert_eq!(c.model, back.model, "preset {p}");
            assert_eq!(c.inputs, back.inputs, "preset {p}");
            assert_eq!(c.run, back.run, "preset {p}");
        }
    }

    #[test]
    fn set_overrides_and_errors_are_one_line() {
        let c = ConfigBuilder::new()
            .set("model.width=256")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.model.width, 256);
        let e = ConfigBuilder::new()
            .set("model.widht=256")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.width"), "{e}");
        let e = ConfigBuilder::new()
            .set("model.width=100")
            .unwrap()
            .build()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("divisible"), "{e}");
        let e = ConfigBuilder::new()
            .set("model.variances.q=-1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.variances.q") && !e.contains('\n'), "{e}");
        let e = ConfigBuilder::new()
            .set("model.variances.q=nan")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("finite"), "{e}");
        let e = ConfigBuilder::new()
            .set("model.activation=sigmoid")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("relu") && e.contains("gelu"), "{e}");
    }
}
