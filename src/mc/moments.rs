//! `moments.bin`: an ensemble's raw mergeable sums, the sample ranges they cover, and the
//! run's fingerprint (hash and the resolved pairs it was made from), in the checked container
//! of [`crate::stats::binfile`]. Every reuse of a run — resume, merge, sweep, run — reads it
//! through [`load`] and compares fingerprints before trusting the sums.
//!
//! Payload (little-endian): fingerprint u64, fingerprint pairs (u64 length + UTF-8),
//! slots, first, next, end, diverged layer (u64::MAX = none), the covered ranges (count, then
//! (start, stop) pairs), the samples per jackknife batch, then Σx (batch-major) and Σx² as
//! double-double (hi, lo) pairs.

use std::path::Path;

use crate::config::fingerprint::Fingerprint;
use crate::stats::Accumulator;
use crate::stats::accumulate::{BATCHES, Dd};
use crate::stats::binfile::{self, BinError, Cursor, Put};

use super::Ensemble;

const MAGIC: &[u8; 8] = b"SIGPRPMO";
/// Version 2 added the fingerprint, the ranges and the checksum (version 1 had magic
/// `SIGPRPM1` and neither).
const VERSION: u32 = 2;

/// The contents of a `moments.bin`.
#[derive(Clone, Debug)]
pub struct Moments {
    pub fingerprint: Fingerprint,
    pub acc: Accumulator,
    /// The run's slice of the ensemble is [first, end); [first, next) was run.
    pub first: u64,
    pub next: u64,
    pub end: u64,
    /// The sample ranges whose sums are in `acc`, sorted and disjoint: one for a run, several
    /// (maybe with gaps) for a merge.
    pub ranges: Vec<(u64, u64)>,
}

impl Moments {
    /// Whether every sample of [first, end) is in.
    pub fn complete(&self) -> bool {
        self.next >= self.end && missing(&self.ranges, self.first, self.end).is_empty()
    }

    /// Whether a run can continue from it: one unbroken range from `first` (a merge with
    /// missing samples cannot).
    pub fn resumable(&self) -> bool {
        match self.ranges.as_slice() {
            [] => self.next == self.first,
            [(a, b)] => (*a, *b) == (self.first, self.next),
            _ => false,
        }
    }

    /// The ensemble it continues (with the row layout of the current build).
    pub fn into_ensemble(
        self,
        rows: Vec<(crate::stats::RowKey, crate::stats::Recipe)>,
    ) -> Ensemble {
        Ensemble {
            rows,
            acc: self.acc,
            first: self.first,
            next: self.next,
            end: self.end,
        }
    }
}

/// The parts of [first, end) not covered by `ranges` (sorted, disjoint).
pub fn missing(ranges: &[(u64, u64)], first: u64, end: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut at = first;
    for &(a, b) in ranges {
        if a > at {
            gaps.push((at, a.min(end)));
        }
        at = at.max(b);
    }
    if at < end {
        gaps.push((at, end));
    }
    gaps
}

/// Writes `moments.bin` atomically.
pub fn save(
    path: &Path,
    ens: &Ensemble,
    fp: &Fingerprint,
    ranges: &[(u64, u64)],
) -> anyhow::Result<()> {
    let a = &ens.acc;
    let text = fp.text();
    let mut b: Vec<u8> = Vec::with_capacity(128 + text.len() + 16 * (a.sum.len() + a.sumsq.len()));
    b.put_u64(fp.hash);
    b.put_str(&text);
    for v in [
        a.slots as u64,
        ens.first,
        ens.next,
        ens.end,
        a.diverged_at.map_or(u64::MAX, |d| d as u64),
        ranges.len() as u64,
    ] {
        b.put_u64(v);
    }
    for &(s, e) in ranges {
        b.put_u64(s);
        b.put_u64(e);
    }
    for &c in &a.count {
        b.put_u64(c);
    }
    for d in a.sum.iter().chain(&a.sumsq) {
        b.put_f64(d.hi);
        b.put_f64(d.lo);
    }
    binfile::write(path, MAGIC, VERSION, &b)
}

/// Reads and checks `moments.bin`: container, sizes (before allocating), and the consistency
/// of ranges and counts.
pub fn load(path: &Path) -> Result<Moments, BinError> {
    let payload = binfile::read(path, MAGIC, VERSION, "moments file")?;
    parse(&payload).map_err(|msg| BinError::new(path, format!("corrupt moments file: {msg}")))
}

/// [`load`] on the bytes of a file already in memory; `path` names it in errors.
pub fn decode(bytes: Vec<u8>, path: &Path) -> Result<Moments, BinError> {
    let payload = binfile::decode(bytes, path, MAGIC, VERSION, "moments file")?;
    parse(&payload).map_err(|msg| BinError::new(path, format!("corrupt moments file: {msg}")))
}

fn parse(payload: &[u8]) -> Result<Moments, String> {
    let mut c = Cursor::new(payload);
    let hash = c.u64()?;
    let text = c.string()?;
    let (slots, first, next, end, div) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    if !(first <= next && next <= end) {
        return Err(format!(
            "sample range {first}..{next} of {first}..{end} is not ordered"
        ));
    }
    let nr = c.len(16)?;
    let mut ranges = Vec::with_capacity(nr);
    for _ in 0..nr {
        let (s, e) = (c.u64()?, c.u64()?);
        let after_last = ranges.last().is_none_or(|&(_, pe)| s >= pe);
        if !(s < e && first <= s && e <= end && after_last) {
            return Err(format!(
                "sample range {s}..{e} is out of order or outside {first}..{end}"
            ));
        }
        ranges.push((s, e));
    }
    // Everything left is counts and sums: check its size before allocating for `slots`.
    let per_slot = 16 * (BATCHES as u64 + 1);
    let left = c.remaining() as u64;
    let want = slots
        .checked_mul(per_slot)
        .and_then(|s| s.checked_add(8 * BATCHES as u64))
        .ok_or_else(|| format!("{slots} slots cannot be right"))?;
    if want != left {
        return Err(format!(
            "{slots} slots need {want} bytes of sums, found {left}"
        ));
    }
    let mut acc = Accumulator::new(slots as usize);
    for n in acc.count.iter_mut() {
        *n = c.u64()?;
    }
    for d in acc.sum.iter_mut().chain(acc.sumsq.iter_mut()) {
        *d = Dd {
            hi: c.f64()?,
            lo: c.f64()?,
        };
    }
    let covered: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    if acc.samples() != covered {
        return Err(format!(
            "{} samples counted, but the ranges cover {covered}",
            acc.samples()
        ));
    }
    acc.diverged_at = match div {
        u64::MAX => None,
        d if (1..=u32::MAX as u64).contains(&d) => Some(d as usize),
        d => return Err(format!("divergence layer {d} is not a layer")),
    };
    Ok(Moments {
        fingerprint: Fingerprint::from_text(hash, &text),
        acc,
        first,
        next,
        end,
        ranges,
    })
}
