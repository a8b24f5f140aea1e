//! Training data: synthetic sequence tasks generated on the fly, so nothing is downloaded
//! and every batch is a pure function of (seed, step), which makes a resumed run draw the
//! same batches as an uninterrupted one without saving any random-number state.
//!
//! Every task here needs attention: the answer sits at another position of the sequence.
//! The [`Task`] trait is also implemented by the shipped data sets in [`super::data`] (the
//! digits ViT with a dense stem and a pooled head, a character LM on a shipped text): they
//! produce the same [`Batch`].

use rand::Rng;

use crate::model::Probe;
use crate::model::init::Stream;

/// One step's data: the probe set (S sequences × T tokens) and the target class of every
/// output row of z^L (`None` rows are not scored).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub probe: Probe,
    pub targets: Vec<Option<usize>>,
}

/// What the head must produce: one output per token (dense or tied head) or per sequence
/// (pooled head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outputs {
    PerToken,
    PerSequence,
}

pub trait Task: Send + Sync {
    fn name(&self) -> &'static str;
    /// Token ids are below this (the embedding's vocabulary).
    fn vocab(&self) -> usize;
    /// Tokens per sequence T.
    fn tokens(&self) -> usize;
    /// Classes of the head (n_out); equal to the vocabulary here, so a tied head fits.
    fn classes(&self) -> usize {
        self.vocab()
    }
    /// The dimension n_in of each token's input vector when the task feeds the dense stem
    /// (`Probe.x`, e.g. image patches); `None` for token ids through the embedding stem.
    fn input_dim(&self) -> Option<usize> {
        None
    }
    fn outputs(&self) -> Outputs;
    /// T_dec for a task posed to an encoder–decoder (the batch's probe then carries the
    /// decoder's probe and the targets score the decoder's rows); `None` otherwise.
    fn decoder_tokens(&self) -> Option<usize> {
        None
    }
    /// The [pad] token's id, when the task pads its sequences: the model's
    /// `inputs.pad_id`, so its word-embedding column is zero and frozen (footnote 48).
    fn pad(&self) -> Option<usize> {
        None
    }
    /// Whether the task is posed with causal attention (a left-to-right reader).
    fn causal(&self) -> bool;
    /// The loss of a guess that knows only which symbols can be answers.
    fn chance_loss(&self) -> f64;
    /// A batch of `sequences` sequences from `rng`, from one side of the train/held-out
    /// split.
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch;
}

/// Which part of the task's sequence space to draw from. The spaces are finite (copy with
/// V = 8, T = 8 has 7⁴ = 2401 sequences; modadd with p = 17 has 289), so a training run
/// sees all of them unless some are set aside: a fixed fraction, chosen by a hash of the
/// sequence, is never trained on, and the evaluation draws only from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

/// Whether a sequence is in the held-out fraction: FNV-1a of its ids, as a number in [0, 1).
pub fn held_out(ids: &[usize], fraction: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &id in ids {
        for b in (id as u64).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// Draws `sequences` sequences with `one`, keeping those on the requested side of the
/// split. A space too small to hold both sides (say modadd with p = 2) would reject
/// forever; after 10 000 rejections in a row the draw is kept, so such a task trains and
/// evaluates on the same sequences rather than hanging.
fn split_sample(
    rng: &mut Stream,
    sequences: usize,
    tokens: usize,
    split: Split,
    fraction: f64,
    one: impl Fn(&mut Stream) -> (Vec<usize>, Vec<Option<usize>>),
) -> Batch {
    let mut ids = Vec::with_capacity(sequences * tokens);
    let mut targets = Vec::with_capacity(sequences * tokens);
    for _ in 0..sequences {
        let mut tries = 0;
        let (i, t) = loop {
            let (i, t) = one(rng);
            tries += 1;
            if fraction <= 0.0 || held_out(&i, fraction) == (split == Split::Eval) || tries > 10_000
            {
                break (i, t);
            }
        };
        ids.extend(i);
        targets.extend(t);
    }
    token_batch(sequences, tokens, ids, targets)
}

fn token_batch(
    sequences: usize,
    tokens: usize,
    ids: Vec<usize>,
    targets: Vec<Option<usize>>,
) -> Batch {
    Batch {
        probe: Probe {
            sequences,
            tokens,
            x: None,
            ids: Some(ids),
            decoder: None,
            keep: None,
        },
        targets,
    }
}

/// Copy: T = 2h; the first h tokens are symbols 1 … V−1, the last h are the blank 0, and at
/// blank position h + i the target is the symbol at position i. Under causal attention the
/// answer is only reachable by attending back h positions: a positional lookup. Chance
/// level is ln(V − 1).
pub struct Copy {
    pub vocab: usize,
    pub half: usize,
    /// Fraction of sequences held out for evaluation.
    pub holdout: f64,
}

impl Task for Copy {
    fn name(&self) -> &'static str {
        "copy"
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn tokens(&self) -> usize {
        2 * self.half
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerToken
    }
    fn causal(&self) -> bool {
        true
    }
    fn chance_loss(&self) -> f64 {
        ((self.vocab - 1) as f64).ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let (h, t) = (self.half, 2 * self.half);
        split_sample(rng, sequences, t, split, self.holdout, |rng| {
            let syms: Vec<usize> = (0..h).map(|_| rng.random_range(1..self.vocab)).collect();
            let mut ids = syms.clone();
            ids.extend(std::iter::repeat_n(0, h));
            let mut targets = vec![None; h];
            targets.extend(syms.iter().map(|&s| Some(s)));
            (ids, targets)
        })
    }
}

/// Associative recall: p key–value pairs k₁ v₁ … k_p v_p (distinct keys from [0, V/2),
/// values from [V/2, V)), then a query key; the target at the last position is the value
/// that followed the query. T = 2p + 1. Chance level is ln(V − V/2).
pub struct Recall {
    pub vocab: usize,
    pub pairs: usize,
    pub holdout: f64,
}

impl Task for Recall {
    fn name(&self) -> &'static str {
        "recall"
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn tokens(&self) -> usize {
        2 * self.pairs + 1
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerToken
    }
    fn causal(&self) -> bool {
        true
    }
    fn chance_loss(&self) -> f64 {
        ((self.vocab - self.vocab / 2) as f64).ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let keys = self.vocab / 2;
        let t = self.tokens();
        split_sample(rng, sequences, t, split, self.holdout, |rng| {
            let mut ids = Vec::with_capacity(t);
            // Distinct keys: a partial Fisher–Yates shuffle of 0 … keys−1.
            let mut pool: Vec<usize> = (0..keys).collect();
            for i in 0..self.pairs {
                let j = rng.random_range(i..keys);
                pool.swap(i, j);
            }
            let vals: Vec<usize> = (0..self.pairs)
                .map(|_| rng.random_range(keys..self.vocab))
                .collect();
            for i in 0..self.pairs {
                ids.push(pool[i]);
                ids.push(vals[i]);
            }
            let q = rng.random_range(0..self.pairs);
            ids.push(pool[q]);
            let mut targets = vec![None; t - 1];
            targets.push(Some(vals[q]));
            (ids, targets)
        })
    }
}

/// Modular addition: the sequence a b = (T = 3, "=" is token p) and the target at "=" is
/// (a + b) mod p. Vocabulary p + 1; chance level ln p.
pub struct ModAdd {
    pub modulus: usize,
    pub holdout: f64,
}

impl Task for ModAdd {
    fn name(&self) -> &'static str {
        "modadd"
    }
    fn vocab(&self) -> usize {
        self.modulus + 1
    }
    fn tokens(&self) -> usize {
        3
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerToken
    }
    fn causal(&self) -> bool {
        true
    }
    fn chance_loss(&self) -> f64 {
        (self.modulus as f64).ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let p = self.modulus;
        split_sample(rng, sequences, 3, split, self.holdout, |rng| {
            let (a, b) = (rng.random_range(0..p), rng.random_range(0..p));
            (vec![a, b, p], vec![None, None, Some((a + b) % p)])
        })
    }
}

/// The task a configuration names, sized by `train.vocab`, `train.tokens`, `train.modulus`.
/// Sizes that do not fit the task are rounded to the nearest valid shape (copy: T even;
/// recall: T odd with at most V/2 pairs) and the config is told the actual T.
pub fn from_name(
    name: &str,
    vocab: usize,
    tokens: usize,
    modulus: usize,
    holdout: f64,
) -> Option<Box<dyn Task>> {
    Some(match name {
        "copy" => Box::new(Copy {
            vocab,
            half: (tokens / 2).max(1),
            holdout,
        }),
        "recall" => Box::new(Recall {
            vocab,
            pairs: ((tokens.saturating_sub(1)) / 2).clamp(1, vocab / 2),
            holdout,
        }),
        "modadd" => Box::new(ModAdd { modulus, holdout }),
        _ => return None,
    })
}
