//! Span denoising, the pre-training task of the paper's encoder–decoder (§II 2 A, BART's
//! "text infilling"): spans of the text, their lengths drawn from Poisson(λ = 3), are each
//! replaced by one mask token until 30 % of the characters are corrupted; the encoder reads
//! the corrupted text and the decoder, with teacher forcing, reconstructs the original.
//!
//! At the character level on the shipped text:
//! - the source is a window of T characters; the corrupted source is shorter (a span of
//!   length L becomes one mask token) and is padded at its end to T with a pad token, and
//!   [`Corrupted::padding`] marks those pads so attention can leave them out;
//! - a span of length 0 (probability e^{-3} ≈ 5 %) inserts a mask token without removing
//!   anything, as in BART; insertions that would make the corrupted text longer than T are
//!   dropped;
//! - the decoder reads the original shifted right by one behind a begin token
//!   (BOS x₀ … x_{T−2}) and is scored on x₀ … x_{T−1}, every position, as fairseq's BART does.
//!
//! The number of corrupted characters is exactly round(0.3 · T) (at least 1): span lengths
//! are drawn until their sum reaches it and the last one is cut to fit, as BART does; the
//! spans are placed without overlap, the untouched characters spread over the gaps
//! between them uniformly at random.

use rand::Rng;
use rand_distr::{Distribution, Poisson};

use super::data::CharLm;
use super::tasks::{Batch, Outputs, Split, Task};
use crate::model::Probe;
use crate::model::init::Stream;

/// Fraction of a window's characters that are corrupted.
pub const MASK_RATIO: f64 = 0.3;
/// Mean span length λ of the Poisson law.
pub const SPAN_MEAN: f64 = 3.0;

/// The extra symbols after an alphabet of `a` characters: mask, begin, pad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Specials {
    pub mask: usize,
    pub bos: usize,
    pub pad: usize,
}

impl Specials {
    pub fn after(alphabet: usize) -> Specials {
        Specials {
            mask: alphabet,
            bos: alphabet + 1,
            pad: alphabet + 2,
        }
    }
    /// The vocabulary with the three specials.
    pub fn vocab(&self) -> usize {
        self.pad + 1
    }
}

/// One training pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupted {
    /// The encoder's input, T ids (corrupted text, then pads).
    pub source: Vec<usize>,
    /// True where `source` is a pad.
    pub padding: Vec<bool>,
    /// The decoder's input, T ids: BOS then the original without its last character.
    pub decoder: Vec<usize>,
    /// The decoder's targets: the original window.
    pub targets: Vec<usize>,
    /// The spans as (start in the original, length), sorted by start.
    pub spans: Vec<(usize, usize)>,
}

/// Span lengths from Poisson(λ) until they sum to `budget`, the last one cut to fit.
fn span_lengths(budget: usize, rng: &mut Stream) -> Vec<usize> {
    // λ = 3 is a valid Poisson mean, so the constructor cannot fail.
    let law = Poisson::new(SPAN_MEAN).unwrap_or_else(|_| unreachable!());
    let mut lengths = Vec::new();
    let mut sum = 0;
    while sum < budget {
        let l = law.sample(rng) as usize;
        let l = l.min(budget - sum);
        lengths.push(l);
        sum += l;
    }
    lengths
}

/// Corrupts one window `original` (T ids below `specials.mask`).
pub fn corrupt(original: &[usize], specials: Specials, rng: &mut Stream) -> Corrupted {
    let t = original.len();
    let budget = ((MASK_RATIO * t as f64).round() as usize).clamp(1, t);
    // Insertions beyond the budget would make the corrupted text longer than T (it is
    // T − budget + one mask per span): drop zero-length spans, the last first.
    let mut lengths = span_lengths(budget, rng);
    while lengths.len() > budget {
        match lengths.iter().rposition(|&l| l == 0) {
            Some(k) => {
                lengths.remove(k);
            }
            None => break,
        }
    }
    // Place the spans in the order drawn, with the T − budget untouched characters spread
    // over the k + 1 gaps around them as a uniformly random composition (stars and bars:
    // k bars among u + k slots). Spans never overlap and may touch.
    let (k, u) = (lengths.len(), t - budget);
    let mut slots: Vec<usize> = (0..u + k).collect();
    for i in 0..k {
        let j = rng.random_range(i..u + k);
        slots.swap(i, j);
    }
    let mut bars = slots[..k].to_vec();
    bars.sort_unstable();
    let mut spans = Vec::with_capacity(k);
    let mut at = 0; // position in the original
    let mut prev = 0; // slots consumed
    for (&b, &l) in bars.iter().zip(&lengths) {
        at += b - prev; // the gap's untouched characters
        prev = b + 1;
        spans.push((at, l));
        at += l;
    }

    let mut source = Vec::with_capacity(t);
    let mut next = spans.iter().peekable();
    let mut i = 0;
    while i < t {
        match next.peek() {
            Some(&&(s, l)) if s == i => {
                source.push(specials.mask);
                i += l;
                next.next();
            }
            _ => {
                source.push(original[i]);
                i += 1;
            }
        }
    }
    let padding: Vec<bool> = (0..t).map(|k| k >= source.len()).collect();
    source.resize(t, specials.pad);

    let mut decoder = Vec::with_capacity(t);
    decoder.push(specials.bos);
    decoder.extend_from_slice(&original[..t - 1]);
    Corrupted {
        source,
        padding,
        decoder,
        targets: original.to_vec(),
        spans,
    }
}

/// The denoising task on the shipped text (`train.task = "denoise"`): windows of T
/// characters, split like the character LM (the held-out end of the text evaluates),
/// vocabulary = the text's characters + mask, begin and pad.
pub struct Denoise {
    text: CharLm,
    pub specials: Specials,
}

impl Denoise {
    pub fn new(tokens: usize) -> Result<Denoise, String> {
        let text = CharLm::new(tokens)?;
        let specials = Specials::after(text.alphabet.len());
        Ok(Denoise { text, specials })
    }
}

impl Task for Denoise {
    fn name(&self) -> &'static str {
        "denoise"
    }
    fn vocab(&self) -> usize {
        self.specials.vocab()
    }
    fn tokens(&self) -> usize {
        self.text.tokens
    }
    fn pad(&self) -> Option<usize> {
        Some(self.specials.pad)
    }
    fn outputs(&self) -> Outputs {
        Outputs::PerToken
    }
    fn decoder_tokens(&self) -> Option<usize> {
        Some(self.text.tokens)
    }
    /// The encoder reads the corrupted text both ways; the decoder's self-attention is
    /// causal by construction.
    fn causal(&self) -> bool {
        false
    }
    /// A guess that knows only the alphabet (every target is a character).
    fn chance_loss(&self) -> f64 {
        (self.text.alphabet.len() as f64).ln()
    }
    fn sample(&self, rng: &mut Stream, sequences: usize, split: Split) -> Batch {
        let t = self.text.tokens;
        let (ids, cut) = (self.text.ids(), self.text.split_index());
        let starts = match split {
            Split::Train => 0..cut - t,
            Split::Eval => cut..ids.len() - t,
        };
        let (mut source, mut keep, mut decoder, mut targets) = (
            Vec::with_capacity(sequences * t),
            Vec::with_capacity(sequences * t),
            Vec::with_capacity(sequences * t),
            Vec::with_capacity(sequences * t),
        );
        for _ in 0..sequences {
            let a = rng.random_range(starts.clone());
            let c = corrupt(&ids[a..a + t], self.specials, rng);
            source.extend(c.source);
            keep.extend(c.padding.iter().map(|&p| !p));
            decoder.extend(c.decoder);
            targets.extend(c.targets.into_iter().map(Some));
        }
        let probe = |ids: Vec<usize>| Probe {
            sequences,
            tokens: t,
            x: None,
            ids: Some(ids),
            decoder: None,
            keep: None,
        };
        let mut enc = probe(source);
        enc.keep = Some(keep);
        enc.decoder = Some(Box::new(probe(decoder)));
        Batch {
            probe: enc,
            targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::stream;

    const A: usize = 40;

    fn window(rng: &mut Stream, t: usize) -> Vec<usize> {
        (0..t).map(|_| rng.random_range(0..A)).collect()
    }

    /// Re-expands the masks with the spans' characters: must give the original back, which
    /// checks that every span is one mask and nothing else moved.
    fn restore(c: &Corrupted, sp: Specials) -> Vec<usize> {
        let mut out = Vec::new();
        let mut spans = c.spans.iter().peekable();
        let mut orig_pos = 0;
        for (&id, &pad) in c.source.iter().zip(&c.padding) {
            if pad {
                break;
            }
            if id == sp.mask {
                let &(s, l) = spans.next().expect("a mask without a span");
                assert_eq!(s, orig_pos, "mask out of place");
                out.extend_from_slice(&c.targets[s..s + l]);
                orig_pos += l;
            } else {
                out.push(id);
                orig_pos += 1;
            }
        }
        out.extend_from_slice(&c.targets[orig_pos..]);
        out
    }

    #[test]
    fn corruption_is_exact_and_invertible() {
        let sp = Specials::after(A);
        let mut rng = stream(7, 0);
        for t in [1usize, 2, 5, 16, 32, 64] {
            for _ in 0..500 {
                let x = window(&mut rng, t);
                let c = corrupt(&x, sp, &mut rng);
                assert_eq!(c.source.len(), t);
                assert_eq!(c.decoder.len(), t);
                assert_eq!(c.decoder[0], sp.bos);
                assert_eq!(&c.decoder[1..], &x[..t - 1]);
                let removed: usize = c.spans.iter().map(|s| s.1).sum();
                let zeros = c.spans.iter().filter(|s| s.1 == 0).count();
                assert!(
                    t - removed + c.spans.len() <= t,
                    "{zeros} insertions overflow"
                );
                assert_eq!(removed, ((0.3 * t as f64).round() as usize).clamp(1, t));
                // Pads only at the end, and exactly where `padding` says.
                for (k, (&id, &p)) in c.source.iter().zip(&c.padding).enumerate() {
                    assert_eq!(id == sp.pad, p, "t = {t}, k = {k}");
                }
                let masks = c.source.iter().filter(|&&i| i == sp.mask).count();
                assert_eq!(masks, c.spans.len());
                assert_eq!(restore(&c, sp), x);
            }
        }
    }

    /// Span lengths follow Poisson(3) before the last one is cut: their mean over many
    /// windows within 5 standard errors of 3 (s.e. √(3/N)).
    /// A batch on the shipped text: encoder ids, the padding mask and the decoder's
    /// teacher-forcing input line up with the targets, and evaluation windows come from the
    /// held-out end only.
    #[test]
    fn batches_pair_source_decoder_and_targets() {
        let task = Denoise::new(32).unwrap();
        let sp = task.specials;
        let mut rng = stream(3, 0);
        let b = task.sample(&mut rng, 8, Split::Eval);
        let dec = b.probe.decoder.as_ref().unwrap();
        let (src, keep) = (
            b.probe.ids.as_ref().unwrap(),
            b.probe.keep.as_ref().unwrap(),
        );
        let dids = dec.ids.as_ref().unwrap();
        assert_eq!((b.probe.len(), dec.len(), b.targets.len()), (256, 256, 256));
        let held = task.text.held_out_text();
        for s in 0..8 {
            let row = |v: &[usize]| v[s * 32..(s + 1) * 32].to_vec();
            let target: Vec<usize> = row(&b.targets.iter().map(|t| t.unwrap()).collect::<Vec<_>>());
            assert_eq!(dids[s * 32], sp.bos);
            assert_eq!(&row(dids)[1..], &target[..31]);
            let text: String = target.iter().map(|&i| task.text.alphabet[i]).collect();
            assert!(
                held.contains(&text),
                "an eval window outside the held-out text"
            );
            for k in 0..32 {
                assert_eq!(keep[s * 32 + k], src[s * 32 + k] != sp.pad);
            }
            let masks = row(src).iter().filter(|&&i| i == sp.mask).count();
            assert!(masks >= 1);
        }
    }

    #[test]
    fn span_lengths_are_poisson_three() {
        let mut rng = stream(11, 0);
        let mut uncut = Vec::new();
        for _ in 0..20_000 {
            let ls = span_lengths(1000, &mut rng);
            uncut.extend_from_slice(&ls[..ls.len() - 1]);
        }
        let n = uncut.len() as f64;
        let mean = uncut.iter().sum::<usize>() as f64 / n;
        let z = (mean - SPAN_MEAN) / (SPAN_MEAN / n).sqrt();
        assert!(z.abs() < 5.0, "mean span {mean} over {n} spans, z = {z}");
        let zeros = uncut.iter().filter(|&&l| l == 0).count() as f64 / n;
        let p0 = (-SPAN_MEAN).exp();
        let z0 = (zeros - p0) / (p0 * (1.0 - p0) / n).sqrt();
        assert!(z0.abs() < 5.0, "P(L = 0) = {zeros}, z = {z0}");
    }
}
