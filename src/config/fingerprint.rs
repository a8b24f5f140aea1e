//! The fingerprint of a run: a hash of everything that decides its numbers — the resolved
//! configuration and the probe's contents (not its path) — so that results are reused
//! (resume, merge, sweep, run, compare) only when they are results of the same thing.
//!
//! The hash goes over a canonical list of `key = value` pairs (the resolved flat map, in key
//! order), minus the keys that do not change the numbers for the purpose at hand, then the
//! probe's shape and values bit for bit. The pairs are kept beside the hash so that a refusal
//! can name the first key that differs.

use crate::model::Probe;
use crate::stats::binfile::Fnv;

use super::{Config, HeadKind};

/// What the results are: the keys that matter differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A Monte Carlo ensemble: the sample count may grow (resume extends a run), so it is
    /// left out; the theory's and the trainer's keys do not touch it.
    MonteCarlo,
    /// Theory predictions: no sampler, no sample count.
    Theory,
    /// Whether a Monte Carlo and a theory file describe the same model and probe: neither the
    /// seed, the sampler, the backward mode nor the run's name (the joined `config` column).
    Compare,
    /// A training run: every `train.*` key but the thread count (which changes results only
    /// by rounding) and the step count (a resumed run may be extended); the Monte Carlo's and
    /// the theory's keys do not touch it.
    Train,
}

impl Purpose {
    fn ignores(self, key: &str) -> bool {
        if self == Purpose::Train {
            return key == "train.threads"
                || key == "train.steps"
                || key == "model.preset"
                || key.starts_with("run.")
                || key.starts_with("theory.")
                || key.starts_with("inputs.");
        }
        let always = key == "run.samples"
            || key == "inputs.path"
            || key == "model.preset"
            || key.starts_with("train.");
        always
            || match self {
                Purpose::MonteCarlo => key.starts_with("theory."),
                Purpose::Theory => key == "run.sampler" || key == "run.precision",
                Purpose::Train => false,
                Purpose::Compare => {
                    key.starts_with("theory.")
                        || matches!(
                            key,
                            "run.sampler"
                                | "run.seed"
                                | "run.name"
                                | "run.backward"
                                | "run.precision"
                        )
                }
            }
    }

    fn tag(self) -> &'static str {
        match self {
            Purpose::MonteCarlo => "mc",
            Purpose::Theory => "theory",
            Purpose::Compare => "compare",
            Purpose::Train => "train",
        }
    }
}

/// A run's fingerprint and the pairs it was made from.
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    pub hash: u64,
    /// `(key, value)` in key order; the probe appears as `inputs.contents`.
    pub pairs: Vec<(String, String)>,
}

/// Bumped when the meaning of the fingerprint changes.
const VERSION: &str = "sigprop-fingerprint-1";

impl Fingerprint {
    pub fn of(cfg: &Config, probe: &Probe, purpose: Purpose) -> Fingerprint {
        let mut pairs = Self::config_pairs(cfg, purpose);
        pairs.push((
            "inputs.contents".into(),
            format!("{:016x}", probe_hash(probe)),
        ));
        Self::from_pairs(pairs, purpose)
    }

    /// A training run's: its configuration and the bytes of its hparams table, if any.
    pub fn of_training(cfg: &Config, hparams: Option<&[u8]>) -> Fingerprint {
        let mut pairs = Self::config_pairs(cfg, Purpose::Train);
        let table = hparams.map_or("none".to_string(), |b| {
            format!("{:016x}", Fnv::default().bytes(b).finish())
        });
        pairs.push(("hparams.contents".into(), table));
        Self::from_pairs(pairs, Purpose::Train)
    }

    fn config_pairs(cfg: &Config, purpose: Purpose) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = cfg
            .flat()
            .iter()
            .filter(|(k, v)| !purpose.ignores(k) && !at_late_default(k, v))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        if cfg.model.pad_id.is_some() {
            // The [pad] column of W_WE became zero and frozen (footnote 48) after runs with
            // `inputs.pad_id` existed (and a training run's `inputs.*` keys are not in its
            // pairs): such a run's results are of another model, so they do not resume.
            pairs.push(("model.pad_embedding".into(), "\"zero\"".into()));
            pairs.sort();
        }
        if purpose == Purpose::Theory && cfg.model.head == HeadKind::Tied {
            // The tied head's backward theory changed after such results existed: its contact
            // is carried through every block (`theory::contact`), and encoder–decoders and
            // stacks of attention blocks gained their backward rows. Theory saved before is
            // of another theory, so it is not reused.
            pairs.push(("theory.tied_contact".into(), "\"carried\"".into()));
            pairs.sort();
        }
        pairs
    }

    fn from_pairs(pairs: Vec<(String, String)>, purpose: Purpose) -> Fingerprint {
        let mut h = Fnv::default();
        h.bytes(VERSION.as_bytes()).bytes(purpose.tag().as_bytes());
        for (k, v) in &pairs {
            h.bytes(k.as_bytes())
                .bytes(b" = ")
                .bytes(v.as_bytes())
                .bytes(b"\n");
        }
        Fingerprint {
            hash: h.finish(),
            pairs,
        }
    }

    /// The pairs as text, one `key = value` a line (stored beside the hash).
    pub fn text(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// The inverse of [`Fingerprint::text`]; `hash` is the stored one.
    pub fn from_text(hash: u64, text: &str) -> Fingerprint {
        let pairs = text
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Fingerprint { hash, pairs }
    }

    /// The first key whose value differs, as "key (old → new)", or None when the pairs agree.
    pub fn difference(&self, new: &Fingerprint) -> Option<String> {
        let get = |p: &[(String, String)], k: &str| {
            p.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone())
        };
        let mut keys: Vec<&String> = self
            .pairs
            .iter()
            .chain(&new.pairs)
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().find_map(|k| {
            let (a, b) = (get(&self.pairs, k), get(&new.pairs, k));
            (a != b).then(|| {
                let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
                if k == "inputs.contents" {
                    "the probe inputs (inputs.csv contents)".to_string()
                } else if k == "hparams.contents" {
                    "the hparams table (hparams.json contents)".to_string()
                } else {
                    format!("{k} ({} → {})", show(a), show(b))
                }
            })
        })
    }

    /// A short hexadecimal form for messages and files.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// Keys added after runs already existed, at the default that reproduces those runs: left
/// out of the pairs, so an old `moments.bin` keeps its fingerprint (and resumes), while any
/// other value enters the hash as usual.
fn at_late_default(key: &str, value: &toml::Value) -> bool {
    // Keys added after runs were fingerprinted, at the value that reproduces those runs
    // (as TOML text): an encoder-only model.
    const LATE: &[(&str, &str)] = &[
        ("run.precision", "\"f64\""),
        ("model.decoder_layers", "0"),
        ("model.decoder_pattern", "\"ACM\""),
        ("inputs.bos_id", "0"),
    ];
    LATE.iter()
        .any(|&(k, d)| k == key && value.to_string() == d)
}

/// The probe's shape and contents, bit for bit.
fn probe_hash(p: &Probe) -> u64 {
    let mut h = Fnv::default();
    h.u64(p.sequences as u64).u64(p.tokens as u64);
    if let Some(x) = &p.x {
        h.bytes(b"x").u64(x.nrows() as u64).u64(x.ncols() as u64);
        for v in x.iter() {
            h.u64(v.to_bits());
        }
    }
    if let Some(ids) = &p.ids {
        h.bytes(b"ids").u64(ids.len() as u64);
        for &i in ids {
            h.u64(i as u64);
        }
    }
    if let Some(dec) = &p.decoder {
        h.bytes(b"decoder").u64(probe_hash(dec));
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;

    fn fingerprint(sets: &[&str], purpose: Purpose) -> Fingerprint {
        let mut b = ConfigBuilder::new();
        for s in sets {
            b = b.set(s).unwrap();
        }
        let mut cfg = b.build().unwrap();
        let probe = crate::inputs::probe(&mut cfg).unwrap();
        Fingerprint::of(&cfg, &probe, purpose)
    }

    /// Theory of a tied head saved before its contact was carried through every block is not
    /// reused; its Monte Carlo (unchanged) and any other head's theory keep their fingerprints.
    #[test]
    fn a_tied_heads_theory_is_marked_with_its_contact() {
        let marked = |f: &Fingerprint| f.pairs.iter().any(|(k, _)| k == "theory.tied_contact");
        let tied = ["model.preset=paper-lm", "model.width=64"];
        assert!(marked(&fingerprint(&tied, Purpose::Theory)));
        assert!(!marked(&fingerprint(&tied, Purpose::MonteCarlo)));
        assert!(!marked(&fingerprint(&tied, Purpose::Compare)));
        assert!(!marked(&fingerprint(&["model.width=64"], Purpose::Theory)));
    }
}
