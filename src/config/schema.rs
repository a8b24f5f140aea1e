//! The table of every configuration key: its type, default and allowed values.
//!
//! This table is the public contract of SPEC §3. Defaults follow the SPEC's example file;
//! presets (in `presets.rs`) override them, the user's file overrides the preset, and
//! `--set key=value` overrides the file. Unknown keys are reported with the closest valid one.

use std::sync::LazyLock;

use toml::Value;

use crate::model::group::GROUPS;

/// What a key accepts. Bounds are inclusive unless stated.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// An integer at least `min`.
    Int {
        min: i64,
    },
    /// A finite float in [min, max].
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// Free text (a path, a name, a pattern string checked later).
    Text,
    /// A list of lists of non-negative integers (token ids per sequence).
    IdMatrix,
}

pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// `None`: the key is optional and absent by default.
    pub default: Option<Value>,
}

const INF: f64 = f64::INFINITY;

macro_rules! key {
    ($name:expr, $kind:expr) => {
        Key {
            name: $name,
            kind: $kind,
            default: None,
        }
    };
    ($name:expr, $kind:expr, $default:expr) => {
        Key {
            name: $name,
            kind: $kind,
            default: Some(Value::from($default)),
        }
    };
}

pub const STEMS: &[&str] = &["dense", "embedding"];
pub const NORMS: &[&str] = &["pre", "post", "none", "mlp"];
pub const ACTIVATIONS: &[&str] = &["relu", "gelu", "tanh", "linear", "erf", "silu", "swish"];
pub const HEADS: &[&str] = &["dense", "pooled", "tied", "class"];
pub const INITS: &[&str] = &["gaussian", "uniform"];
pub const VARIANCE_MODES: &[&str] = &["fan_in", "absolute"];
pub const INPUT_KINDS: &[&str] = &["gaussian", "tokens", "file"];
pub const SAMPLERS: &[&str] = &["auto", "dense", "conditional"];
pub const BACKWARDS: &[&str] = &["none", "trace", "pairs"];
pub const PRESETS: &[&str] = &[
    "paper-vit",
    "paper-vit-cls",
    "paper-lm",
    "standard",
    "mlp-book",
];
pub const TASKS: &[&str] = &["copy", "recall", "modadd", "digits", "charlm"];
pub const OPTIMIZERS: &[&str] = &["sgd", "adamw"];
pub const PRECISIONS: &[&str] = &["f32", "f64"];

/// Every valid key, in the order `config.toml` is written: the model's keys, one
/// `model.variances.<group>` per line of the group table, then the rest.
pub static KEYS: LazyLock<Vec<Key>> = LazyLock::new(|| {
    let mut keys = model_keys();
    keys.extend(
        GROUPS
            .iter()
            .map(|g| key!(g.key, Kind::Float { min: 0.0, max: INF }, g.default)),
    );
    keys.extend(GROUPS.iter().map(|g| key!(g.init_key, Kind::Choice(INITS))));
    keys.extend(other_keys());
    keys
});

fn model_keys() -> Vec<Key> {
    vec![
        key!("model.preset", Kind::Choice(PRESETS)),
        key!("model.stem", Kind::Choice(STEMS), "dense"),
        key!("model.width", Kind::Int { min: 1 }, 512),
        key!("model.heads", Kind::Int { min: 1 }, 8),
        key!("model.mlp_mult", Kind::Int { min: 1 }, 4),
        key!("model.pattern", Kind::Text, "AM"),
        key!("model.layers", Kind::Int { min: 1 }, 6),
        // The encoder–decoder (§II 2 B): 0 = encoder only. Like `model.layers`, it counts
        // repetitions of `model.decoder_pattern` (A masked self-attention, C cross-attention,
        // M MLP; BART's decoder layer is ACM).
        key!("model.decoder_layers", Kind::Int { min: 0 }, 0),
        key!("model.decoder_pattern", Kind::Text, "ACM"),
        key!("model.norm", Kind::Choice(NORMS), "pre"),
        key!("model.activation", Kind::Choice(ACTIVATIONS), "gelu"),
        key!(
            "model.logit_exponent",
            Kind::Float { min: 0.0, max: INF },
            0.5
        ),
        key!("model.causal", Kind::Bool, false),
        key!("model.zero_queries", Kind::Bool, false),
        key!("model.ln_eps", Kind::Float { min: 0.0, max: INF }, 1e-6),
        key!(
            "model.xi",
            Kind::Float {
                min: -INF,
                max: INF
            },
            1.0
        ),
        key!(
            "model.gamma_res",
            Kind::Float {
                min: -INF,
                max: INF
            },
            1.0
        ),
        key!("model.head", Kind::Choice(HEADS), "dense"),
        key!(
            "model.head_s",
            Kind::Float {
                min: -INF,
                max: INF
            },
            0.0
        ),
        key!("model.n_out", Kind::Int { min: 1 }, 512),
        key!("model.class_token", Kind::Bool, false),
        key!("model.init", Kind::Choice(INITS), "gaussian"),
        // Extension: `absolute` uses each C as the variance itself, not C/fan_in
        // (the standard parameterization: every weight std 0.02 at any width).
        key!(
            "model.variance_mode",
            Kind::Choice(VARIANCE_MODES),
            "fan_in"
        ),
    ]
}

fn other_keys() -> Vec<Key> {
    vec![
        key!("inputs.kind", Kind::Choice(INPUT_KINDS), "gaussian"),
        key!("inputs.sequences", Kind::Int { min: 1 }, 1),
        key!("inputs.tokens", Kind::Int { min: 1 }, 16),
        key!("inputs.dim", Kind::Int { min: 1 }, 768),
        key!(
            "inputs.correlation",
            Kind::Float { min: 0.0, max: 1.0 },
            0.5
        ),
        key!("inputs.seed", Kind::Int { min: 0 }, 1),
        key!("inputs.path", Kind::Text),
        key!("inputs.vocab", Kind::Int { min: 1 }, 1000),
        key!("inputs.ids", Kind::IdMatrix),
        // The decoder's probe (encoder–decoder models): T_dec tokens per sequence (default
        // inputs.tokens), its ids (default: the encoder's ids shifted right by one behind
        // inputs.bos_id, as BART feeds the decoder), and the padding id whose encoder tokens
        // cross-attention masks out (none by default).
        key!("inputs.decoder_tokens", Kind::Int { min: 1 }),
        key!("inputs.decoder_ids", Kind::IdMatrix),
        key!("inputs.bos_id", Kind::Int { min: 0 }, 0),
        key!("inputs.pad_id", Kind::Int { min: 0 }),
        key!("run.name", Kind::Text),
        key!("run.samples", Kind::Int { min: 1 }, 1000),
        key!("run.seed", Kind::Int { min: 0 }, 0),
        key!("run.sampler", Kind::Choice(SAMPLERS), "auto"),
        key!("run.backward", Kind::Choice(BACKWARDS), "trace"),
        // The Monte Carlo's floating-point type: f64 the reference; f32 about twice as fast,
        // resolving relative differences down to ~1e-6 (README, "Precision").
        key!("run.precision", Kind::Choice(PRECISIONS), "f64"),
        // Theory engine (`sigprop theory`): draws of the Gaussian logit field per attention
        // block for E[Ω Ω] (1.64), and the number of independent batches that give its error.
        key!("theory.logit_samples", Kind::Int { min: 2 }, 20000),
        key!("theory.error_batches", Kind::Int { min: 2 }, 10),
        // 0: infinite width; 1: with the O(1/n) corrections (docs/finite-width.md).
        key!("theory.order", Kind::Int { min: 0 }, 0),
        // The compact trainer (SPEC §7). The task fixes the stem (embedding, or dense for digits),
        // the vocabulary, T and the number of outputs; `train.batch` sequences form one step's probe set.
        key!("train.task", Kind::Choice(TASKS), "copy"),
        key!("train.steps", Kind::Int { min: 0 }, 1000),
        key!("train.batch", Kind::Int { min: 1 }, 32),
        // Without --hparams: AdamW's global lr, or SGD's base lr multiplied by λ = 1/fan_in.
        key!("train.lr", Kind::Float { min: 0.0, max: INF }, 1e-3),
        // Multiplies every group's lr (also the hparams table's): the transfer sweep's knob.
        key!("train.lr_mult", Kind::Float { min: 0.0, max: INF }, 1.0),
        key!("train.optimizer", Kind::Choice(OPTIMIZERS), "adamw"),
        // The trainer's floating-point type (the Monte Carlo and the theory are always f64).
        // f32 as PyTorch trains: the GEMMs run twice as fast; f64 for checks.
        key!("train.precision", Kind::Choice(PRECISIONS), "f32"),
        key!("train.beta1", Kind::Float { min: 0.0, max: 1.0 }, 0.9),
        key!("train.beta2", Kind::Float { min: 0.0, max: 1.0 }, 0.999),
        key!("train.eps", Kind::Float { min: 0.0, max: INF }, 1e-8),
        key!(
            "train.weight_decay",
            Kind::Float { min: 0.0, max: INF },
            0.0
        ),
        key!("train.warmup", Kind::Int { min: 0 }, 100),
        // The cosine decays to lr·min_lr_ratio at the last step.
        key!(
            "train.min_lr_ratio",
            Kind::Float { min: 0.0, max: 1.0 },
            0.0
        ),
        // Global gradient-norm clip; 0 = off.
        key!("train.clip", Kind::Float { min: 0.0, max: INF }, 1.0),
        key!("train.eval_every", Kind::Int { min: 1 }, 100),
        key!("train.eval_batches", Kind::Int { min: 1 }, 4),
        key!("train.checkpoint_every", Kind::Int { min: 1 }, 500),
        key!("train.seed", Kind::Int { min: 0 }, 0),
        // Task sizes: symbols (copy, recall), sequence length T, and the modulus p (modadd).
        key!("train.vocab", Kind::Int { min: 3 }, 16),
        key!("train.tokens", Kind::Int { min: 2 }, 16),
        key!("train.modulus", Kind::Int { min: 2 }, 17),
        // Digits: the side p of the square patches the 8×8 image is cut into (2 or 4).
        key!("train.patch", Kind::Int { min: 2 }, 4),
        // Fraction of the task's sequence space (chosen by a hash of each sequence) that is
        // never trained on; the evaluation draws only from it. 0 = evaluate on fresh draws.
        // Synthetic tasks only: digits and charlm hold out a fixed end of their data.
        key!("train.holdout", Kind::Float { min: 0.0, max: 0.9 }, 0.2),
        // Worker threads for the batch (0 = all cores). The batch is split into this many parts
        // and their gradients summed in order, so a run is reproducible at a fixed thread count;
        // other counts differ only by floating-point rounding.
        key!("train.threads", Kind::Int { min: 0 }, 0),
    ]
}

pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The valid key closest to `name` in edit distance, for "did you mean" hints; `None`
/// when even the closest is far off (more than a third of the name's characters, at least
/// 2, changed), so a wild guess is never offered as a fix. The part after the last dot is
/// also matched alone, so `model.widht` and `widht` both find `model.width`.
pub fn closest(name: &str) -> Option<&'static str> {
    let limit = |len: usize| (len / 3).max(2);
    let whole = KEYS
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .min()
        .filter(|(d, _)| *d <= limit(name.chars().count()));
    if whole.is_some() {
        return whole.map(|(_, n)| n);
    }
    let tail = name.rsplit('.').next().unwrap_or(name);
    KEYS.iter()
        .map(|k| {
            let t = k.name.rsplit('.').next().unwrap_or(k.name);
            (edit_distance(tail, t), k.name)
        })
        .min()
        .filter(|(d, _)| *d <= limit(tail.chars().count()).min(2) && tail.chars().count() > 2)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_key_finds_typos() {
        assert_eq!(closest("model.widht"), Some("model.width"));
        assert_eq!(closest("model.variances.qq"), Some("model.variances.q"));
        assert_eq!(closest("model.activaton"), Some("model.activation"));
        assert_eq!(closest("zzzzzz.qqqqqq"), None);
        assert_eq!(closest("foo"), None);
    }
}
