//! The observables layer (README, "What it measures"): what a row measures, as types, and how a
//! measurement becomes rows — written once for the Monte Carlo and the theory alike.
//!
//! - [`Site`] and [`Observable`] name the `site` and `observable` columns. Their `Display`
//!   gives exactly the CSV strings and `FromStr` reads them back (for `compare` and `plot`);
//!   the CSV itself keeps plain strings ([`super::Row`]).
//! - [`kernel_rows`]: which entries of a D×D kernel go into the `kernel`, `kernel_diag`,
//!   `kernel_offdiag`, `corr_offdiag` and `kernel_cross` rows, and in which order.
//! - [`attention_rows`]: the per-(query, key) `logit_var` and per-query `attn_entropy` and
//!   `attn_max` rows with their summaries.
//! - [`ntk_rows`]: the per-group `ntk_<group>`, the λ-weighted per-layer `ntk` and the
//!   `ntk_total` rows, and the `grad2` layout.
//!
//! The two sides differ in how a row's *statistic* is formed: the Monte Carlo records one
//! sample's values in slots and turns ensemble means into rows through recipes (a ratio of
//! means with a jackknife error for `corr_offdiag`), the theory writes plain values. So the
//! functions here fix the rows and the entries that go into them, and hand each row to a
//! sink that the side implements ([`KernelSink`]) or to a plain callback.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2};

use crate::model::Group;

/// Where in the network a row is measured (the CSV's `site` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The residual stream z^ℓ after the block (the stem's output at layer 1, the head's
    /// output at the last layer).
    Resid,
    /// The LayerNorm output that feeds the block (pre-LN only).
    Ln,
    /// The MLP's hidden preactivation.
    Hidden,
    /// The attention logits and weights.
    Logits,
    /// A parameter group's NTK contribution.
    Param,
}

impl Site {
    pub const ALL: [Site; 5] = [
        Site::Resid,
        Site::Ln,
        Site::Hidden,
        Site::Logits,
        Site::Param,
    ];

    /// The CSV string.
    pub fn as_str(self) -> &'static str {
        match self {
            Site::Resid => "resid",
            Site::Ln => "ln",
            Site::Hidden => "hidden",
            Site::Logits => "logits",
            Site::Param => "param",
        }
    }
}

/// What a row measures (the CSV's `observable` column; README, "What it measures").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Observable {
    /// G_{ij} for i ≤ j.
    Kernel,
    /// The mean of G_{ii}.
    KernelDiag,
    /// The mean of G_{ij}, i ≠ j in the same sequence.
    KernelOffdiag,
    /// The mean of G_{ij} across sequences.
    KernelCross,
    /// The mean over same-sequence pairs of G_{ij} / sqrt(G_{ii} G_{jj}).
    CorrOffdiag,
    /// Per token: width · Var[G_{ii}].
    Fluct,
    /// Per token: the excess kurtosis of the components.
    Kurtosis,
    /// The logits' second moment per (query, key) pair.
    LogitVar,
    /// The attention entropy per query.
    AttnEntropy,
    /// The largest attention weight per query.
    AttnMax,
    /// The gradient size per output.
    Grad2,
    /// One parameter group's raw NTK at one layer.
    NtkGroup(Group),
    /// The λ-weighted NTK of one layer's groups.
    Ntk,
    /// The λ-weighted NTK of all groups.
    NtkTotal,
}

impl Observable {
    /// Every observable without a group, in the order of the README.
    pub const PLAIN: [Observable; 13] = [
        Observable::Kernel,
        Observable::KernelDiag,
        Observable::KernelOffdiag,
        Observable::KernelCross,
        Observable::CorrOffdiag,
        Observable::Fluct,
        Observable::Kurtosis,
        Observable::LogitVar,
        Observable::AttnEntropy,
        Observable::AttnMax,
        Observable::Grad2,
        Observable::Ntk,
        Observable::NtkTotal,
    ];

    /// The CSV string, for every observable but `ntk_<group>` (whose string is built from the
    /// group name, see `Display`).
    fn plain_str(self) -> Option<&'static str> {
        Some(match self {
            Observable::Kernel => "kernel",
            Observable::KernelDiag => "kernel_diag",
            Observable::KernelOffdiag => "kernel_offdiag",
            Observable::KernelCross => "kernel_cross",
            Observable::CorrOffdiag => "corr_offdiag",
            Observable::Fluct => "fluct",
            Observable::Kurtosis => "kurtosis",
            Observable::LogitVar => "logit_var",
            Observable::AttnEntropy => "attn_entropy",
            Observable::AttnMax => "attn_max",
            Observable::Grad2 => "grad2",
            Observable::Ntk => "ntk",
            Observable::NtkTotal => "ntk_total",
            Observable::NtkGroup(_) => return None,
        })
    }

    /// Whether the row comes from the backward pass. The gradient at layer ℓ flows back from
    /// the head through every layer above ℓ, so once the forward pass diverged anywhere these
    /// rows are meaningless at every layer.
    pub fn is_backward(self) -> bool {
        matches!(
            self,
            Observable::Grad2 | Observable::NtkGroup(_) | Observable::Ntk | Observable::NtkTotal
        )
    }

    /// One of the kernel rows and their summaries (`kernel`, `kernel_diag`,
    /// `kernel_offdiag`, `kernel_cross`).
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            Observable::Kernel
                | Observable::KernelDiag
                | Observable::KernelOffdiag
                | Observable::KernelCross
        )
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Observable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.plain_str(), self) {
            (Some(s), _) => f.write_str(s),
            (None, Observable::NtkGroup(g)) => write!(f, "ntk_{}", g.name()),
            (None, _) => unreachable!("plain_str covers every observable without a group"),
        }
    }
}

/// A `site` or `observable` string that sigprop does not write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown site '{0}' (expected one of: resid, ln, hidden, logits, param)")]
    Site(String),
    #[error(
        "unknown observable '{0}' (expected one of: kernel, kernel_diag, kernel_offdiag, \
         kernel_cross, corr_offdiag, fluct, kurtosis, logit_var, attn_entropy, attn_max, grad2, \
         ntk_<group>, ntk, ntk_total)"
    )]
    Observable(String),
}

impl FromStr for Site {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Site::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| ParseError::Site(s.to_string()))
    }
}

impl FromStr for Observable {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if let Some(o) = Observable::PLAIN
            .into_iter()
            .find(|o| o.plain_str() == Some(s))
        {
            return Ok(o);
        }
        s.strip_prefix("ntk_")
            .and_then(|g| Group::ALL.into_iter().find(|x| x.name() == g))
            .map(Observable::NtkGroup)
            .ok_or_else(|| ParseError::Observable(s.to_string()))
    }
}

// Comparisons with the CSV strings, so that code reading rows can write `k.site == "param"`.
impl PartialEq<str> for Site {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Site {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
impl PartialEq<str> for Observable {
    fn eq(&self, other: &str) -> bool {
        match (self.plain_str(), self) {
            (Some(s), _) => s == other,
            (None, Observable::NtkGroup(g)) => other.strip_prefix("ntk_") == Some(g.name()),
            (None, _) => false,
        }
    }
}
impl PartialEq<&str> for Observable {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}
impl PartialEq<String> for Observable {
    fn eq(&self, other: &String) -> bool {
        *self == *other.as_str()
    }
}

/// Where one side's kernel rows go. `Entry` is how a `kernel` row is referred to later: a
/// slot for the Monte Carlo (its `corr_offdiag` is a ratio of ensemble means), the value for
/// the theory.
pub trait KernelSink {
    type Entry: Copy;
    /// The `kernel` row (i, j), i ≤ j, with this sample's (or the predicted) value.
    fn kernel(&mut self, i: usize, j: usize, value: f64) -> Self::Entry;
    /// A summary row (`kernel_diag`, `kernel_offdiag`, `kernel_cross`): the plain mean of
    /// its entries of G, the same on both sides.
    fn summary(&mut self, obs: Observable, value: f64);
    /// The `corr_offdiag` row: the mean over `pairs` of G_ij / sqrt(G_ii G_jj), each pair
    /// given as its (ij, ii, jj) entries.
    fn corr(&mut self, pairs: Vec<(Self::Entry, Self::Entry, Self::Entry)>);
}

/// The kernel rows of one site, in order: `kernel` for i ≤ j, `kernel_diag`,
/// `kernel_offdiag` and `corr_offdiag` (when some sequence has two tokens),
/// `kernel_cross` (when there are two sequences). Points i and j are in the same sequence
/// when i / tokens = j / tokens. Returns the D×D table of entries (symmetric).
pub fn kernel_rows<S: KernelSink>(
    sink: &mut S,
    g: ArrayView2<f64>,
    tokens: usize,
) -> Vec<S::Entry> {
    let d = g.nrows();
    let mut table: Vec<Option<S::Entry>> = vec![None; d * d];
    for i in 0..d {
        for j in i..d {
            let e = sink.kernel(i, j, g[[i, j]]);
            table[i * d + j] = Some(e);
            table[j * d + i] = Some(e);
        }
    }
    // Every entry is filled above (j ≥ i directly, j < i by symmetry).
    let idx: Vec<S::Entry> = table.into_iter().flatten().collect();
    let same_seq = |i: usize, j: usize| i / tokens == j / tokens;
    let mean_over = |pred: &dyn Fn(usize, usize) -> bool| -> Option<f64> {
        let (mut sum, mut cnt) = (0.0, 0usize);
        for i in 0..d {
            for j in 0..d {
                if pred(i, j) {
                    sum += g[[i, j]];
                    cnt += 1;
                }
            }
        }
        (cnt > 0).then(|| sum / cnt as f64)
    };
    if let Some(v) = mean_over(&|i, j| i == j) {
        sink.summary(Observable::KernelDiag, v);
    }
    if let Some(v) = mean_over(&|i, j| i != j && same_seq(i, j)) {
        sink.summary(Observable::KernelOffdiag, v);
        let pairs = (0..d)
            .flat_map(|i| (i + 1..d).map(move |j| (i, j)))
            .filter(|&(i, j)| same_seq(i, j))
            .map(|(i, j)| (idx[i * d + j], idx[i * d + i], idx[j * d + j]))
            .collect();
        sink.corr(pairs);
    }
    if let Some(v) = mean_over(&|i, j| !same_seq(i, j)) {
        sink.summary(Observable::KernelCross, v);
    }
    idx
}

/// The mean of G_ij / sqrt(G_ii G_jj) over pairs of values: the theory's `corr_offdiag`,
/// and the Monte Carlo's on the ensemble means.
pub fn corr_mean(pairs: impl ExactSizeIterator<Item = (f64, f64, f64)>) -> f64 {
    let n = pairs.len();
    pairs.map(|(ij, ii, jj)| ij / (ii * jj).sqrt()).sum::<f64>() / n as f64
}

/// One attention block's per-query statistics, averaged over heads.
pub struct AttnValues<'a> {
    /// D × T: the logits' second moment of query q with the key at token k of q's sequence.
    pub logit_var: ArrayView2<'a, f64>,
    /// Per query: the attention entropy −Σ p ln p.
    pub entropy: &'a [f64],
    /// Per query: the largest attention weight.
    pub max: &'a [f64],
}

/// The attention rows of one block (site `logits`), in order: `logit_var` per (query, key)
/// with j the key's point index, its summary, `attn_entropy` and `attn_max` per query (i = j
/// = the query), their summaries. The summaries of the per-query rows are the plain means
/// over queries; `logit_var_mean` is passed in, since the theory takes the mean of its
/// predicted matrix and the Monte Carlo of one sample's values in row order.
pub fn attention_rows(
    a: &AttnValues,
    logit_var_mean: f64,
    push: impl FnMut(Observable, i64, i64, f64),
) {
    let tokens = a.logit_var.ncols();
    attention_rows_qk(a, tokens, logit_var_mean, push)
}

/// [`attention_rows`] where queries and keys differ (cross-attention: `query_tokens` =
/// T_dec decoder tokens per sequence, `logit_var`'s columns the T encoder keys); j is the
/// key's encoder point index σ·T + t'.
pub fn attention_rows_qk(
    a: &AttnValues,
    query_tokens: usize,
    logit_var_mean: f64,
    mut push: impl FnMut(Observable, i64, i64, f64),
) {
    let (d, tokens) = a.logit_var.dim();
    for q in 0..d {
        for tk in 0..tokens {
            let key = (q / query_tokens) * tokens + tk;
            push(
                Observable::LogitVar,
                q as i64,
                key as i64,
                a.logit_var[[q, tk]],
            );
        }
    }
    push(Observable::LogitVar, -1, -1, logit_var_mean);
    for q in 0..d {
        push(Observable::AttnEntropy, q as i64, q as i64, a.entropy[q]);
        push(Observable::AttnMax, q as i64, q as i64, a.max[q]);
    }
    push(Observable::AttnEntropy, -1, -1, mean_in_order(a.entropy));
    push(Observable::AttnMax, -1, -1, mean_in_order(a.max));
}

/// Σ v / n summed in order (0 for an empty slice).
pub fn mean_in_order(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// One parameter's (or one carried group's) contribution to the NTK rows.
pub struct NtkPart<'a> {
    pub layer: usize,
    pub group: Group,
    /// The SGD learning-rate factor λ of the `ntk` and `ntk_total` rows.
    pub lambda: f64,
    /// The raw Θ over the outputs (P × P: every output pair, or 1 × 1 in `trace` mode).
    pub theta: &'a Array2<f64>,
}

/// How the NTK and `grad2` rows of one pass are written.
#[derive(Clone, Copy, Debug)]
pub struct NtkLayout {
    /// Also every pair of outputs a ≤ b (the `pairs` mode), not only the summary.
    pub pairs: bool,
    /// With `pairs`: only the diagonal a = b of the NTK rows (the theory's tied head, whose
    /// off-diagonal pairs are not derived).
    pub diag_only: bool,
    /// The summary is the mean of Θ's diagonal divided by this (the Monte Carlo's `trace`
    /// mode carries all D outputs in one pass: D; otherwise 1).
    pub per_output: f64,
}

impl NtkLayout {
    /// The rows of one P × P kernel: every pair a ≤ b (with `pairs`, only a = b if
    /// `diag_only`) and the summary at i = j = −1.
    fn emit(self, th: &Array2<f64>, push: &mut impl FnMut(i64, i64, f64)) {
        let p = th.nrows();
        if self.pairs {
            for a in 0..p {
                for b in a..p {
                    if !self.diag_only || a == b {
                        push(a as i64, b as i64, th[[a, b]]);
                    }
                }
            }
        }
        let diag = (0..p).map(|a| th[[a, a]]).sum::<f64>() / p as f64 / self.per_output;
        push(-1, -1, diag);
    }

    /// The `grad2` rows of one layer from the per-output squared gradients `diag` (each
    /// output's with `pairs`, then the summary).
    pub fn grad2_rows(self, diag: &[f64], mut push: impl FnMut(i64, i64, f64)) {
        if self.pairs {
            for (a, v) in diag.iter().enumerate() {
                push(a as i64, a as i64, *v);
            }
        }
        push(
            -1,
            -1,
            diag.iter().sum::<f64>() / diag.len() as f64 / self.per_output,
        );
    }

    /// The NTK rows (site `param`) in order: `ntk_<group>` per (layer, group) sorted by
    /// layer then group, summing the parts of one (layer, group); `ntk` per layer with a
    /// group, Σ λ Θ over that layer's parts (the paper's SGD factors); `ntk_total` at
    /// `last_layer`, the sum of the `ntk` kernels.
    pub fn ntk_rows<'a>(
        self,
        parts: impl IntoIterator<Item = NtkPart<'a>>,
        outputs: usize,
        last_layer: usize,
        mut push: impl FnMut(usize, Observable, i64, i64, f64),
    ) {
        let mut by_group: Vec<((Group, usize), Array2<f64>)> = Vec::new();
        let mut by_layer = vec![Array2::<f64>::zeros((outputs, outputs)); last_layer + 1];
        for p in parts {
            match by_group.iter_mut().find(|(k, _)| *k == (p.group, p.layer)) {
                Some((_, acc)) => *acc += p.theta,
                None => by_group.push(((p.group, p.layer), p.theta.clone())),
            }
            by_layer[p.layer].scaled_add(p.lambda, p.theta);
        }
        by_group.sort_by_key(|((g, l), _)| (*l, *g));
        for ((g, layer), th) in &by_group {
            self.emit(th, &mut |i, j, v| {
                push(*layer, Observable::NtkGroup(*g), i, j, v)
            });
        }
        let mut total = Array2::<f64>::zeros((outputs, outputs));
        for (layer, th) in by_layer.iter().enumerate() {
            if by_group.iter().any(|((_, l), _)| *l == layer) {
                self.emit(th, &mut |i, j, v| push(layer, Observable::Ntk, i, j, v));
                total += th;
            }
        }
        self.emit(&total, &mut |i, j, v| {
            push(last_layer, Observable::NtkTotal, i, j, v)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in Site::ALL {
            assert_eq!(s.to_string().parse::<Site>(), Ok(s));
        }
        let mut all: Vec<Observable> = Observable::PLAIN.to_vec();
        all.extend(Group::ALL.map(Observable::NtkGroup));
        for o in all {
            assert_eq!(o.to_string().parse::<Observable>(), Ok(o), "{o}");
            let s = o.to_string();
            assert!(o == s && o == s.as_str());
        }
        assert_eq!(Observable::NtkGroup(Group::Q).to_string(), "ntk_q");
        assert_eq!(Observable::CorrOffdiag.to_string(), "corr_offdiag");
        assert!("ntk_zz".parse::<Observable>().is_err());
        assert!("kernel_diagonal".parse::<Observable>().is_err());
        assert!("Resid".parse::<Site>().is_err());
        assert!(Observable::NtkGroup(Group::Q) != "ntk_k" && Observable::Ntk != "ntk_q");
        assert!(Site::Param == "param" && Site::Ln != "resid");
    }

    /// Records the calls, with the value itself as the entry.
    #[derive(Default)]
    struct Record(Vec<(Observable, i64, i64, f64)>);

    impl KernelSink for Record {
        type Entry = (usize, usize);
        fn kernel(&mut self, i: usize, j: usize, value: f64) -> (usize, usize) {
            self.0.push((Observable::Kernel, i as i64, j as i64, value));
            (i, j)
        }
        fn summary(&mut self, obs: Observable, value: f64) {
            self.0.push((obs, -1, -1, value));
        }
        fn corr(&mut self, pairs: Vec<((usize, usize), (usize, usize), (usize, usize))>) {
            // Encode the pairs so the test can check which entries went in.
            for (ij, ii, jj) in pairs {
                assert_eq!((ii, jj), ((ij.0, ij.0), (ij.1, ij.1)));
                self.0
                    .push((Observable::CorrOffdiag, ij.0 as i64, ij.1 as i64, 0.0));
            }
        }
    }

    /// Two sequences of two tokens: which entries go into which summary, in which order.
    #[test]
    fn kernel_rows_pick_the_entries_of_each_summary() {
        // G_ij = 10 i + j + 1 on the upper triangle, symmetric.
        let g = Array2::from_shape_fn((4, 4), |(i, j)| (10 * i.min(j) + i.max(j) + 1) as f64);
        let mut r = Record::default();
        let idx = kernel_rows(&mut r, g.view(), 2);
        assert_eq!(idx[3 * 4 + 1], (1, 3), "the table is symmetric");
        let obs: Vec<_> = r.0.iter().map(|x| (x.0, x.1, x.2)).collect();
        let mut want: Vec<(Observable, i64, i64)> = Vec::new();
        for i in 0..4 {
            for j in i..4 {
                want.push((Observable::Kernel, i, j));
            }
        }
        want.extend([
            (Observable::KernelDiag, -1, -1),
            (Observable::KernelOffdiag, -1, -1),
            (Observable::CorrOffdiag, 0, 1),
            (Observable::CorrOffdiag, 2, 3),
            (Observable::KernelCross, -1, -1),
        ]);
        assert_eq!(obs, want);
        let v = |o: Observable| r.0.iter().find(|x| x.0 == o).map(|x| x.3);
        // diag: G00, G11, G22, G33 = 1, 12, 23, 34.
        assert_eq!(v(Observable::KernelDiag), Some(70.0 / 4.0));
        // same sequence, i ≠ j: G01 = 2, G23 = 24, each twice.
        assert_eq!(v(Observable::KernelOffdiag), Some(26.0 / 2.0));
        // across: G02, G03, G12, G13 = 3, 4, 13, 14, each twice.
        assert_eq!(v(Observable::KernelCross), Some(34.0 / 4.0));

        // One token per sequence: no same-sequence pair; one sequence: no cross rows.
        let mut r = Record::default();
        kernel_rows(&mut r, g.view(), 1);
        assert!(
            r.0.iter()
                .all(|x| x.0 != Observable::KernelOffdiag && x.0 != Observable::CorrOffdiag)
        );
        let mut r = Record::default();
        kernel_rows(&mut r, g.view(), 4);
        assert!(r.0.iter().all(|x| x.0 != Observable::KernelCross));
    }

    #[test]
    fn corr_mean_is_the_mean_of_the_ratios() {
        let v = corr_mean([(1.0, 1.0, 4.0), (3.0, 9.0, 1.0)].into_iter());
        assert!((v - 0.75).abs() < 1e-15, "{v}");
    }

    #[test]
    fn attention_rows_index_keys_by_point() {
        let lv = Array2::from_shape_fn((4, 2), |(q, k)| (q * 2 + k) as f64);
        let (e, m) = ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 1.0, 1.0]);
        let a = AttnValues {
            logit_var: lv.view(),
            entropy: &e,
            max: &m,
        };
        let mut rows = Vec::new();
        attention_rows(&a, 99.0, |o, i, j, v| rows.push((o, i, j, v)));
        // Query 3 (second sequence, token 1) with key token 0 is point 2.
        assert_eq!(rows[6], (Observable::LogitVar, 3, 2, 6.0));
        assert_eq!(rows[8], (Observable::LogitVar, -1, -1, 99.0));
        assert_eq!(rows[9], (Observable::AttnEntropy, 0, 0, 1.0));
        assert_eq!(rows[10], (Observable::AttnMax, 0, 0, 0.5));
        assert_eq!(rows[17], (Observable::AttnEntropy, -1, -1, 2.5));
        assert_eq!(rows[18], (Observable::AttnMax, -1, -1, 0.75));
        assert_eq!(rows.len(), 19);
    }

    /// Parts of one (layer, group) add up raw; `ntk` weights every part by its λ;
    /// `ntk_total` sums the layers; rows come sorted by layer, then group.
    #[test]
    fn ntk_rows_sum_groups_and_weight_layers() {
        let m = |a: f64, b: f64, c: f64| Array2::from_shape_vec((2, 2), vec![a, b, b, c]).unwrap();
        let (q1, q2, k, s) = (
            m(1.0, 0.5, 3.0),
            m(2.0, 0.25, 4.0),
            m(8.0, 1.0, 8.0),
            m(5.0, 0.0, 7.0),
        );
        let parts = || {
            [
                (2, Group::Q, 0.5, &q1),
                (2, Group::K, 0.25, &k),
                (1, Group::Stem, 1.0, &s),
                (2, Group::Q, 0.5, &q2),
            ]
            .map(|(layer, group, lambda, theta)| NtkPart {
                layer,
                group,
                lambda,
                theta,
            })
        };
        let layout = NtkLayout {
            pairs: false,
            diag_only: false,
            per_output: 1.0,
        };
        let mut rows = Vec::new();
        layout.ntk_rows(parts(), 2, 3, |l, o, i, j, v| rows.push((l, o, i, j, v)));
        assert_eq!(
            rows,
            vec![
                (1, Observable::NtkGroup(Group::Stem), -1, -1, 6.0),
                (2, Observable::NtkGroup(Group::Q), -1, -1, 5.0),
                (2, Observable::NtkGroup(Group::K), -1, -1, 8.0),
                (1, Observable::Ntk, -1, -1, 6.0),
                // 0.5 (1 + 3 + 2 + 4)/2 + 0.25 · 8
                (2, Observable::Ntk, -1, -1, 4.5),
                (3, Observable::NtkTotal, -1, -1, 10.5),
            ]
        );
        // Pairs: every a ≤ b before the summary, only a = b with diag_only; the trace
        // mode's per-output division applies to the summary.
        let mut rows = Vec::new();
        let pairs = NtkLayout {
            pairs: true,
            diag_only: true,
            per_output: 2.0,
        };
        pairs.ntk_rows(parts(), 2, 3, |l, o, i, j, v| rows.push((l, o, i, j, v)));
        assert_eq!(rows.len(), 6 * 3);
        assert_eq!(rows[2], (1, Observable::NtkGroup(Group::Stem), -1, -1, 3.0));
        assert!(rows.iter().all(|r| r.2 == r.3));
        let mut g2 = Vec::new();
        NtkLayout {
            pairs: true,
            diag_only: false,
            per_output: 1.0,
        }
        .grad2_rows(&[1.0, 3.0], |i, j, v| g2.push((i, j, v)));
        assert_eq!(g2, vec![(0, 0, 1.0), (1, 1, 3.0), (-1, -1, 2.0)]);
    }
}
