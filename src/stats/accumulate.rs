//! Streaming, mergeable sums over samples: memory does not grow with the ensemble.
//!
//! Each per-sample scalar ("slot") keeps Σx in each of [`BATCHES`] batches (sample k goes
//! to batch k mod BATCHES) and Σx² overall. Means and their standard errors come from the
//! overall sums; ratios of means (correlations, kurtosis, fluctuations) get their errors
//! from a delete-a-batch jackknife, with no Gaussian assumption.
//!
//! Sums are double-double (Neumaier two-sum), so the order in which samples, threads,
//! shards or resumed runs are added changes the result only at ~1e-32 relative: a sharded
//! or resumed run writes the same `stats.csv` as one uninterrupted run.

/// Number of jackknife batches.
pub const BATCHES: usize = 32;

/// A double-double accumulator: value = hi + lo.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dd {
    pub hi: f64,
    pub lo: f64,
}

impl Dd {
    #[inline]
    pub fn add(&mut self, x: f64) {
        let s = self.hi + x;
        let bp = s - self.hi;
        let err = (self.hi - (s - bp)) + (x - bp);
        self.hi = s;
        self.lo += err;
    }
    #[inline]
    pub fn merge(&mut self, o: &Dd) {
        self.add(o.hi);
        self.lo += o.lo;
    }
    #[inline]
    pub fn value(&self) -> f64 {
        self.hi + self.lo
    }
}

/// Sums of every slot, split into jackknife batches.
#[derive(Clone, Debug, PartialEq)]
pub struct Accumulator {
    pub slots: usize,
    /// Samples per batch.
    pub count: Vec<u64>,
    /// Σx, batch-major: sum[b · slots + s].
    pub sum: Vec<Dd>,
    /// Σx² over all samples.
    pub sumsq: Vec<Dd>,
    /// The smallest layer at which any sample overflowed, if one did.
    pub diverged_at: Option<usize>,
}

/// A few consecutive samples for [`Accumulator::merge_chunk`]: their values as recorded
/// and their Σx², at most one sample per batch (fewer than BATCHES, consecutive). What the
/// engine's workers hand to the merger instead of a whole accumulator per chunk, whose
/// zeroed BATCHES × slots sums (3.6 MB for the reference network) were 1.3% of an f32
/// sample and flushed the cache.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// (sample index, slot values, divergence layer) in sample order.
    samples: Vec<(u64, Vec<f64>, Option<usize>)>,
    /// Σx² over the chunk's samples, in sample order.
    sumsq: Vec<Dd>,
}

impl Chunk {
    pub fn new(slots: usize) -> Chunk {
        Chunk {
            samples: Vec::new(),
            sumsq: vec![Dd::default(); slots],
        }
    }

    /// Adds sample `index` (the next after the chunk's last, if any).
    pub fn add(&mut self, index: u64, values: Vec<f64>, diverged_at: Option<usize>) {
        debug_assert_eq!(values.len(), self.sumsq.len());
        assert!(
            self.samples.last().is_none_or(|l| l.0 + 1 == index) && self.samples.len() < BATCHES,
            "a chunk holds consecutive samples, fewer than the batches"
        );
        for (q, &x) in self.sumsq.iter_mut().zip(&values) {
            q.add(x * x);
        }
        self.samples.push((index, values, diverged_at));
    }
}

impl Accumulator {
    pub fn new(slots: usize) -> Self {
        Accumulator {
            slots,
            count: vec![0; BATCHES],
            sum: vec![Dd::default(); BATCHES * slots],
            sumsq: vec![Dd::default(); slots],
            diverged_at: None,
        }
    }

    pub fn samples(&self) -> u64 {
        self.count.iter().sum()
    }

    /// Adds sample `index` with its slot values.
    pub fn add(&mut self, index: u64, values: &[f64], diverged_at: Option<usize>) {
        debug_assert_eq!(values.len(), self.slots);
        let b = (index % BATCHES as u64) as usize;
        self.count[b] += 1;
        let row = &mut self.sum[b * self.slots..(b + 1) * self.slots];
        for ((s, q), &x) in row.iter_mut().zip(self.sumsq.iter_mut()).zip(values) {
            s.add(x);
            q.add(x * x);
        }
        self.note_divergence(diverged_at);
    }

    fn note_divergence(&mut self, d: Option<usize>) {
        self.diverged_at = match (self.diverged_at, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Adds a [`Chunk`]: the bits of merging an accumulator that the chunk's samples were
    /// added to (its batch rows would each hold one sample's values, Dd {x, 0}, and merging
    /// Dd {x, 0} is adding x), without that accumulator's BATCHES × slots sums.
    pub fn merge_chunk(&mut self, c: &Chunk) {
        assert_eq!(
            self.slots,
            c.sumsq.len(),
            "merging a chunk of another layout"
        );
        let n = self.slots;
        for (k, values, diverged_at) in &c.samples {
            let b = (k % BATCHES as u64) as usize;
            self.count[b] += 1;
            for (s, &x) in self.sum[b * n..(b + 1) * n].iter_mut().zip(values) {
                s.add(x);
            }
            self.note_divergence(*diverged_at);
        }
        for (a, b) in self.sumsq.iter_mut().zip(&c.sumsq) {
            a.merge(b);
        }
    }

    /// Adds another accumulator over disjoint samples (threads, shards, resumed runs).
    pub fn merge(&mut self, o: &Accumulator) {
        assert_eq!(
            self.slots, o.slots,
            "merging accumulators of different layouts"
        );
        for (a, b) in self.count.iter_mut().zip(&o.count) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            a.merge(b);
        }
        for (a, b) in self.sumsq.iter_mut().zip(&o.sumsq) {
            a.merge(b);
        }
        self.note_divergence(o.diverged_at);
    }

    /// Σx over all batches.
    pub fn total(&self, slot: usize) -> f64 {
        let mut t = Dd::default();
        for b in 0..BATCHES {
            t.merge(&self.sum[b * self.slots + slot]);
        }
        t.value()
    }

    /// Ensemble mean of a slot.
    pub fn mean(&self, slot: usize) -> f64 {
        self.total(slot) / self.samples() as f64
    }

    /// Standard error of a slot's mean from the sample variance.
    pub fn stderr(&self, slot: usize) -> f64 {
        let n = self.samples() as f64;
        if n < 2.0 {
            return f64::NAN;
        }
        let mean = self.total(slot) / n;
        let var = (self.sumsq[slot].value() - n * mean * mean) / (n - 1.0);
        // Sums that overflowed give inf or inf − inf = NaN: the error is then undefined
        // (NaN), not 0 — `.max(0.0)` would turn NaN into 0. Only a finite rounding
        // residue below zero is clipped.
        if !var.is_finite() {
            return f64::NAN;
        }
        (var.max(0.0) / n).sqrt()
    }

    /// A nonlinear function of slot means and its delete-a-batch jackknife error.
    /// `f` receives a closure giving the mean of any slot.
    pub fn jackknife(&self, f: impl Fn(&dyn Fn(usize) -> f64) -> f64) -> (f64, f64) {
        let n = self.samples() as f64;
        let full = f(&|s| self.mean(s));
        let batches: Vec<usize> = (0..BATCHES).filter(|&b| self.count[b] > 0).collect();
        let g = batches.len() as f64;
        // Each leave-one-out estimate must rest on at least two samples: with one, a
        // variance-type statistic (fluct) is exactly 0 in every replicate and the error
        // would read 0.0 instead of undefined.
        let smallest_loo = batches
            .iter()
            .map(|&b| n - self.count[b] as f64)
            .fold(f64::INFINITY, f64::min);
        if g < 2.0 || smallest_loo < 2.0 {
            return (full, f64::NAN);
        }
        let loo: Vec<f64> = batches
            .iter()
            .map(|&b| {
                let nb = n - self.count[b] as f64;
                f(&|s| (self.total(s) - self.sum[b * self.slots + s].value()) / nb)
            })
            .collect();
        let mean_loo = loo.iter().sum::<f64>() / g;
        let var = (g - 1.0) / g * loo.iter().map(|x| (x - mean_loo).powi(2)).sum::<f64>();
        (
            full,
            if var.is_finite() {
                var.sqrt()
            } else {
                f64::NAN
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk of consecutive samples merges to the bits of an accumulator they were added
    /// to, merged; a run of chunks to the bits of the engine's former per-chunk accumulators.
    #[test]
    fn a_chunk_merges_like_an_accumulator_of_its_samples() {
        let value =
            |k: u64, s: usize| ((k * 7919 + s as u64 * 104_729) % 1000) as f64 / 37.0 - 11.0;
        let (mut by_chunk, mut by_acc) = (Accumulator::new(3), Accumulator::new(3));
        for start in (5..205u64).step_by(4) {
            let (mut c, mut a) = (Chunk::new(3), Accumulator::new(3));
            for k in start..(start + 4).min(203) {
                let v = vec![value(k, 0), value(k, 1), value(k, 2)];
                let d = (k == 77).then_some(3);
                a.add(k, &v, d);
                c.add(k, v, d);
            }
            by_chunk.merge_chunk(&c);
            by_acc.merge(&a);
        }
        assert_eq!(by_chunk, by_acc);
        let bits = |a: &Accumulator| {
            (a.sum.iter().chain(&a.sumsq))
                .map(|d| (d.hi.to_bits(), d.lo.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&by_chunk), bits(&by_acc));
        assert_eq!(by_chunk.diverged_at, Some(3));
    }

    #[test]
    fn mean_and_stderr_of_a_known_sequence() {
        let mut a = Accumulator::new(1);
        for k in 0..100u64 {
            a.add(k, &[k as f64], None);
        }
        assert_eq!(a.mean(0), 49.5);
        // Var of 0..99 is 841.666…, se = sqrt(841.67/100)
        assert!((a.stderr(0) - (841.666_666_666_666_6f64 / 100.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn overflowed_sums_give_an_undefined_error_not_zero_or_inf() {
        // Σx² of 1e200 overflows: the old code wrote inf, or 0.0 where inf − inf became
        // NaN and `.max(0.0)` made it 0.
        let mut a = Accumulator::new(1);
        for k in 0..10u64 {
            a.add(k, &[1e200 * (1.0 + k as f64)], None);
        }
        assert!(a.mean(0).is_finite());
        assert!(a.stderr(0).is_nan(), "{}", a.stderr(0));
        // A constant slot has a true error of 0, which stays 0.
        let mut c = Accumulator::new(1);
        for k in 0..10u64 {
            c.add(k, &[0.25], None);
        }
        assert_eq!(c.stderr(0), 0.0);
    }

    #[test]
    fn a_jackknife_replicate_of_one_sample_leaves_the_error_undefined() {
        // Two samples: each leave-one-out mean rests on one sample, where a variance-type
        // statistic is exactly 0 and the error would read 0.0.
        let mut a = Accumulator::new(2);
        for (k, x) in [1.0f64, 3.0].iter().enumerate() {
            a.add(k as u64, &[*x, x * x], None);
        }
        let (v, se) = a.jackknife(|m| m(1) - m(0) * m(0));
        assert_eq!(v, 1.0);
        assert!(se.is_nan(), "{se}");
        // Three samples: defined again.
        a.add(2, &[2.0, 4.0], None);
        assert!(a.jackknife(|m| m(1) - m(0) * m(0)).1.is_finite());
    }

    #[test]
    fn merge_is_order_independent() {
        let xs: Vec<f64> = (0..1000)
            .map(|k| ((k * 7919) % 1013) as f64 * 1e-3 + 1e6)
            .collect();
        let mut whole = Accumulator::new(1);
        for (k, x) in xs.iter().enumerate() {
            whole.add(k as u64, &[*x], None);
        }
        let mut parts = [Accumulator::new(1), Accumulator::new(1)];
        for (k, x) in xs.iter().enumerate().rev() {
            parts[k % 3 % 2].add(k as u64, &[*x], None);
        }
        let mut merged = parts[1].clone();
        merged.merge(&parts[0]);
        assert_eq!(merged.mean(0).to_bits(), whole.mean(0).to_bits());
        assert_eq!(merged.stderr(0).to_bits(), whole.stderr(0).to_bits());
    }

    #[test]
    fn jackknife_of_a_linear_function_matches_the_batch_means_error() {
        use rand::Rng;
        let mut rng = crate::model::init::stream(3, 0);
        let mut a = Accumulator::new(1);
        for k in 0..3200u64 {
            a.add(k, &[rng.random::<f64>()], None);
        }
        let (v, se) = a.jackknife(|m| m(0));
        assert_eq!(v, a.mean(0));
        // Both estimate sd/√N; with 32 batches the jackknife's own relative scatter is
        // 1/√62 ≈ 13%, so 5 of those bound the disagreement.
        assert!(
            (se / a.stderr(0) - 1.0).abs() < 5.0 / 62f64.sqrt(),
            "{se} vs {}",
            a.stderr(0)
        );
    }
}
