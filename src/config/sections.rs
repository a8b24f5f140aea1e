//! The configuration file's sections as typed serde structs, one per `[section]`.
//!
//! The builder (in `mod.rs`) layers defaults, a preset, the file and `--set` into one table
//! and checks each value's kind and range against the key table (`schema.rs`), so that a
//! bad value is reported with the key's name and what it allows. The table is then
//! deserialized here: unknown fields are denied and every word-valued key is an enum spelled
//! by serde. Cross-field rules follow in [`super::validate`].

use serde::Deserialize;

use super::{Backward, HeadKind, InitDist, Norm, Sampler, Stem, Variances};
use crate::hparams::Optimizer;
use crate::model::activation::Activation;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    pub model: ModelSection,
    pub inputs: InputsSection,
    pub run: RunSection,
    pub theory: TheorySpec,
    pub train: TrainSection,
}

/// `[model]`: the network (the paper's (1.19)–(1.34)).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Already applied by the builder (a preset is a set of defaults); kept for the record.
    pub preset: Option<String>,
    pub stem: Stem,
    pub width: usize,
    pub heads: usize,
    pub mlp_mult: usize,
    /// Block letters, checked by [`super::validate`].
    pub pattern: String,
    pub layers: usize,
    /// Repetitions of `decoder_pattern` (0: no decoder).
    pub decoder_layers: usize,
    /// Decoder block letters (A, C, M), checked by [`super::validate`].
    pub decoder_pattern: String,
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
    pub class_token: bool,
    pub init: InitDist,
    /// `model.init_groups.<group>`: per-group overrides of `init` (names checked by the
    /// key table).
    #[serde(default)]
    pub init_groups: std::collections::BTreeMap<String, InitDist>,
    pub variance_mode: VarianceMode,
    /// One field per line of the group table (`model::group::GROUPS`).
    pub variances: Variances,
}

/// How `model.variances.*` become weight variances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceMode {
    /// C/fan_in, the paper's convention.
    FanIn,
    /// C itself at every width (the standard parameterization).
    Absolute,
}

/// `inputs.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputWord {
    Gaussian,
    Tokens,
    File,
}

/// `[inputs]`: the probe set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsSection {
    pub kind: InputWord,
    pub sequences: usize,
    pub tokens: usize,
    pub dim: usize,
    pub correlation: f64,
    pub seed: u64,
    pub path: Option<String>,
    pub vocab: usize,
    pub ids: Option<Vec<Vec<usize>>>,
    pub decoder_tokens: Option<usize>,
    pub decoder_ids: Option<Vec<Vec<usize>>>,
    pub bos_id: usize,
    pub pad_id: Option<usize>,
}

/// `[run]`: the Monte Carlo ensemble.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    pub samples: usize,
    pub seed: u64,
    pub sampler: Sampler,
    pub backward: Backward,
    /// What the Monte Carlo computes in (read by `mc::Job::new`).
    pub precision: Precision,
}

/// `[theory]`: the numerical averages of the theory engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TheorySpec {
    /// Draws of the Gaussian logit field per attention block for E\[Ω Ω\] (1.64).
    pub logit_samples: usize,
    /// Independent batches those draws are split into for the reported error.
    pub error_batches: usize,
    /// 0: infinite width; 1: with the O(1/n) corrections (docs/finite-width.md).
    pub order: u64,
}

/// `train.precision` and `run.precision`: the trainer's and the Monte Carlo's floating-point type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }
}

/// `[train]`: the compact trainer. The task's name is checked against the schema's list; the
/// task itself is built by `train::TrainSpec::task`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub task: String,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_mult: f64,
    pub optimizer: Optimizer,
    pub precision: Precision,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub min_lr_ratio: f64,
    pub clip: f64,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub vocab: usize,
    pub tokens: usize,
    pub modulus: usize,
    pub patch: usize,
    pub holdout: f64,
    pub threads: usize,
}

#[cfg(test)]
mod tests {
    use super::super::schema::{self, Kind};
    use super::*;

    /// Every word the key table allows deserializes into its enum (the table's lists are what
    /// errors and docs/configuration.md show), and a word outside them does not.
    #[test]
    fn every_choice_word_is_an_enum_spelling() {
        fn parses<T: serde::de::DeserializeOwned>(w: &str) -> bool {
            T::deserialize(toml::Value::from(w)).is_ok()
        }
        for key in schema::KEYS.iter() {
            let Kind::Choice(words) = key.kind else {
                continue;
            };
            for w in words {
                let ok = match key.name {
                    "model.preset" | "train.task" => true,
                    "model.stem" => parses::<Stem>(w),
                    "model.norm" => parses::<Norm>(w),
                    "model.activation" => parses::<Activation>(w),
                    "model.head" => parses::<HeadKind>(w),
                    "model.init" => parses::<InitDist>(w),
                    k if k.starts_with("model.init_groups.") => parses::<InitDist>(w),
                    "model.variance_mode" => parses::<VarianceMode>(w),
                    "inputs.kind" => parses::<InputWord>(w),
                    "run.sampler" => parses::<Sampler>(w),
                    "run.backward" => parses::<Backward>(w),
                    "train.optimizer" => parses::<Optimizer>(w),
                    "train.precision" | "run.precision" => parses::<Precision>(w),
                    other => panic!("choice key {other} has no enum in sections.rs"),
                };
                assert!(ok, "{} = {w} does not deserialize", key.name);
            }
        }
        assert!(!parses::<Stem>("nonsense") && !parses::<Norm>("Pre"));
    }
}
