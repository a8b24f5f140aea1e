//! Training data: synthetic sequence tasks generated on the fly, so nothing is downloaded
//! and every batch is a pure function of (seed, step), which makes a resumed run draw the
//! same batches as an uninterrupted one without saving any random-number state.
//!
//! Every task here needs attention: the answer sits at another position of the sequence.
//! The [`Task`] trait is the hook for data sets (the digits ViT with a dense stem and a
//! pooled head, a character LM on a shipped text): they produce the same [`Batch`].

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
    fn outputs(&self) -> Outputs;
    /// Whether the task is posed with causal attention (a left-to-right reader).
    fn causal(&self) -> bool;
    /// A batch of `sequences` sequences from `rng`.
    fn sample(&self, rng: &mut Stream, sequences: usize) -> Batch;
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
    fn sample(&self, rng: &mut Stream, sequences: usize) -> Batch {
        let (h, t) = (self.half, 2 * self.half);
        let mut ids = Vec::with_capacity(sequences * t);
        let mut targets = Vec::with_capacity(sequences * t);
        for _ in 0..sequences {
            let syms: Vec<usize> = (0..h).map(|_| rng.random_range(1..self.vocab)).collect();
            ids.extend_from_slice(&syms);
            ids.extend(std::iter::repeat_n(0, h));
            targets.extend(std::iter::repeat_n(None, h));
            targets.extend(syms.iter().map(|&s| Some(s)));
        }
        token_batch(sequences, t, ids, targets)
    }
}

/// Associative recall: p key–value pairs k₁ v₁ … k_p v_p (distinct keys from [0, V/2),
/// values from [V/2, V)), then a query key; the target at the last position is the value
/// that followed the query. T = 2p + 1. Chance level is ln(V − V/2).
pub struct Recall {
    pub vocab: usize,
    pub pairs: usize,
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
    fn sample(&self, rng: &mut Stream, sequences: usize) -> Batch {
        let keys = self.vocab / 2;
        let t = self.tokens();
        let mut ids = Vec::with_capacity(sequences * t);
        let mut targets = Vec::with_capacity(sequences * t);
        for _ in 0..sequences {
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
            targets.extend(std::iter::repeat_n(None, t - 1));
            targets.push(Some(vals[q]));
        }
        token_batch(sequences, t, ids, targets)
    }
}

/// Modular addition: the sequence a b = (T = 3, "=" is token p) and the target at "=" is
/// (a + b) mod p. Vocabulary p + 1; chance level ln p.
pub struct ModAdd {
    pub modulus: usize,
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
    fn sample(&self, rng: &mut Stream, sequences: usize) -> Batch {
        let p = self.modulus;
        let mut ids = Vec::with_capacity(sequences * 3);
        let mut targets = Vec::with_capacity(sequences * 3);
        for _ in 0..sequences {
            let (a, b) = (rng.random_range(0..p), rng.random_range(0..p));
            ids.extend_from_slice(&[a, b, p]);
            targets.extend_from_slice(&[None, None, Some((a + b) % p)]);
        }
        token_batch(sequences, 3, ids, targets)
    }
}

/// The task a configuration names, sized by `train.vocab`, `train.tokens`, `train.modulus`.
/// Sizes that do not fit the task are rounded to the nearest valid shape (copy: T even;
/// recall: T odd with at most V/2 pairs) and the config is told the actual T.
pub fn from_name(name: &str, vocab: usize, tokens: usize, modulus: usize) -> Option<Box<dyn Task>> {
    Some(match name {
        "copy" => Box::new(Copy {
            vocab,
            half: (tokens / 2).max(1),
        }),
        "recall" => Box::new(Recall {
            vocab,
            pairs: ((tokens.saturating_sub(1)) / 2).clamp(1, vocab / 2),
        }),
        "modadd" => Box::new(ModAdd { modulus }),
        _ => return None,
    })
}
