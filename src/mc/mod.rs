//! The Monte Carlo engine: ensembles of randomly initialized networks, in parallel over
//! samples, each sample drawn from its own stream (seed, sample index), so the result does
//! not depend on the thread count. Sums stream into an [`Accumulator`]; a run can be cut
//! into shards and merged, checkpointed, interrupted and resumed.

pub mod conditional;
pub mod moments;
pub mod normal;
pub mod ntk;
pub mod observe;

/// Counters for `sigprop bench`'s breakdown of the conditional sampler, on while
/// `linalg::PROFILE` is: time drawing normals (and how many), time extending bases outside
/// their GEMMs (which `linalg` counts).
pub mod profile {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static NORMAL_NANOS: AtomicU64 = AtomicU64::new(0);
    pub static NORMAL_COUNT: AtomicU64 = AtomicU64::new(0);
    pub static BASIS_NANOS: AtomicU64 = AtomicU64::new(0);

    pub fn on() -> bool {
        crate::model::linalg::PROFILE.load(Ordering::Relaxed)
    }

    pub fn reset() {
        for c in [&NORMAL_NANOS, &NORMAL_COUNT, &BASIS_NANOS] {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// (normal nanoseconds, basis nanoseconds, normals drawn).
    pub fn read() -> (f64, f64, f64) {
        (
            NORMAL_NANOS.load(Ordering::SeqCst) as f64,
            BASIS_NANOS.load(Ordering::SeqCst) as f64,
            NORMAL_COUNT.load(Ordering::SeqCst) as f64,
        )
    }
}

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, CowArray, Ix2};
use rayon::prelude::*;

use crate::config::{Backward, Config, ModelSpec, Sampler};
use crate::model::{Materialized, Network, Probe, Real, init};
use crate::stats::{Accumulator, Chunk, Recipe, Recorder, RowKey};
use conditional::Conditional;

/// Samples per unit of parallel work; results are merged in chunk order.
pub const CHUNK: u64 = 4;

/// Set by the Ctrl-C handler; the engine stops after the current wave.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set by a host that delivers interrupts itself by setting [`INTERRUPTED`] (the Python
/// package, which must leave SIGINT to Python): [`install_interrupt_handler`] then does nothing.
pub static EXTERNAL_INTERRUPTS: AtomicBool = AtomicBool::new(false);

/// Samples done and in total of the Monte Carlo running now, for a host's progress bar
/// (the command line draws its own).
pub static PROGRESS_DONE: AtomicU64 = AtomicU64::new(0);
pub static PROGRESS_TOTAL: AtomicU64 = AtomicU64::new(0);

/// A run stopped by a signal after saving what it finished: returned as a value (the library
/// never exits the process); the message says how to continue. The command line exits 130.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// An ensemble in progress: samples [first, end) of which [first, next) are done.
pub struct Ensemble {
    pub rows: Vec<(RowKey, Recipe)>,
    pub acc: Accumulator,
    pub first: u64,
    pub next: u64,
    pub end: u64,
}

impl Ensemble {
    pub fn done(&self) -> bool {
        self.next >= self.end
    }
}

/// A floating-point type the Monte Carlo computes in (`run.precision`). Whatever the type,
/// each sample's slot values are widened to f64 and summed in double-double, so shards,
/// resume and thread counts stay exact.
pub trait McReal: Real {
    /// The conditional sampler's relative rank tolerance (see `conditional`).
    const RANK_TOL: f64;
    /// Whether the conditional sampler factors an input from its Gram matrix accumulated in
    /// f64 (f32: exact products of f32 numbers) rather than by Gram–Schmidt (f64).
    const GRAM_FACTORS: bool;
    /// `count` draws of the vectorized generator in a new vector (no zeroing pass).
    fn fast_vec(g: &mut normal::FastNormals, count: usize) -> Vec<Self>;
    /// A network drawn in f64, in this type (parameters rounded to nearest).
    fn network(net: Network) -> Network<Self>;
    /// The conditional sampler's products C ← βC + α A·B (`linalg::gemm`).
    fn gemm(
        alpha: Self,
        a: ArrayView2<Self>,
        b: ArrayView2<Self>,
        beta: Self,
        c: &mut ArrayViewMut2<Self>,
    );
    /// Σ a_i b_i of two rows.
    fn dot(a: ArrayView1<Self>, b: ArrayView1<Self>) -> Self;
    /// The rows in f32, standard layout (borrowed when they are): the f32 sampler's
    /// Gram-based factorizations read them ([`conditional`]; f64 never takes that path).
    fn narrow(v: ArrayView2<'_, Self>) -> CowArray<'_, f32, Ix2>;
    /// An f32 array in this type (moved, not copied, in f32).
    fn of_f32(v: Array2<f32>) -> Array2<Self>;
    /// y ← y + α x on rows.
    fn axpy(y: ArrayViewMut1<Self>, alpha: Self, x: ArrayView1<Self>);
    /// Modified Gram–Schmidt, twice: r ← r − (q_j·r) q_j for the rows q_j of `q` (each as
    /// long as r) in order, the coefficients added into `coef` ([`conditional`]'s inner loop).
    fn project_twice(q: &[Self], r: &mut [Self], coef: &mut [Self]) {
        let len = r.len();
        for _ in 0..2 {
            for (qj, c) in q.chunks_exact(len.max(1)).zip(coef.iter_mut()) {
                let dot = Self::dot(ArrayView1::from(qj), ArrayView1::from(&*r));
                Self::axpy(ArrayViewMut1::from(&mut *r), -dot, ArrayView1::from(qj));
                *c += dot;
            }
        }
    }
}

impl McReal for f64 {
    const RANK_TOL: f64 = 1e-10;
    const GRAM_FACTORS: bool = false;
    fn fast_vec(g: &mut normal::FastNormals, count: usize) -> Vec<f64> {
        let mut v = Vec::new();
        g.extend_f64(&mut v, count);
        v
    }
    fn network(net: Network) -> Network {
        net
    }
    fn gemm(
        alpha: f64,
        a: ArrayView2<f64>,
        b: ArrayView2<f64>,
        beta: f64,
        c: &mut ArrayViewMut2<f64>,
    ) {
        crate::model::linalg::gemm(alpha, a, b, beta, c)
    }
    fn narrow(v: ArrayView2<'_, f64>) -> CowArray<'_, f32, Ix2> {
        CowArray::from(v.mapv(|x| x as f32))
    }
    fn of_f32(v: Array2<f32>) -> Array2<f64> {
        v.mapv(f64::from)
    }
    fn dot(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
        a.dot(&b)
    }
    fn axpy(mut y: ArrayViewMut1<f64>, alpha: f64, x: ArrayView1<f64>) {
        y.scaled_add(alpha, &x)
    }
    fn project_twice(q: &[f64], r: &mut [f64], coef: &mut [f64]) {
        project_twice_f64(q, r, coef)
    }
}

/// Σ x_i y_i in 32 interleaved partial sums (four 8-lane chains, so the loop is not bound by
/// the add's latency), then 8, then a scalar tail, combined by a fixed tree: the order
/// depends only on the length.
#[inline(always)]
fn dot_f64(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mut p = [0.0f64; 32];
    let (mut cx, mut cy) = (xs.chunks_exact(32), ys.chunks_exact(32));
    for (x, y) in (&mut cx).zip(&mut cy) {
        for l in 0..32 {
            p[l] = x[l].mul_add(y[l], p[l]);
        }
    }
    let (xs, ys) = (cx.remainder(), cy.remainder());
    let (mut cx, mut cy) = (xs.chunks_exact(8), ys.chunks_exact(8));
    for (x, y) in (&mut cx).zip(&mut cy) {
        for l in 0..8 {
            p[l] = x[l].mul_add(y[l], p[l]);
        }
    }
    for (l, (&x, &y)) in cx.remainder().iter().zip(cy.remainder()).enumerate() {
        p[l] = x.mul_add(y, p[l]);
    }
    let mut w = 32;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            p[l] += p[l + w];
        }
    }
    p[0]
}

/// `McReal::project_twice` in f64 over slices, compiled for AVX-512 or AVX2 ([`dot_f64`]
/// and an axpy). The loop on ndarray rows at baseline SSE2 was a quarter of an f64
/// conditional sample at n = 512; one 8-lane chain per dot, a sixth.
#[inline(always)]
fn project_twice_body(q: &[f64], r: &mut [f64], coef: &mut [f64]) {
    let len = r.len();
    for _ in 0..2 {
        for (qj, c) in q.chunks_exact(len.max(1)).zip(coef.iter_mut()) {
            let dot = dot_f64(qj, r);
            for (y, &x) in r.iter_mut().zip(qj) {
                *y = (-dot).mul_add(x, *y);
            }
            *c += dot;
        }
    }
}

crate::model::skinny::multiversion!(fn project_twice_f64(q: &[f64], r: &mut [f64], coef: &mut [f64]), project_twice_body);

impl McReal for f32 {
    const RANK_TOL: f64 = 3e-5;
    const GRAM_FACTORS: bool = true;
    fn fast_vec(g: &mut normal::FastNormals, count: usize) -> Vec<f32> {
        let mut v = Vec::new();
        g.extend_f32(&mut v, count);
        v
    }
    fn network(net: Network) -> Network<f32> {
        net.cast()
    }
    fn gemm(
        alpha: f32,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        beta: f32,
        c: &mut ArrayViewMut2<f32>,
    ) {
        crate::model::linalg::gemm(alpha, a, b, beta, c)
    }
    fn narrow(v: ArrayView2<'_, f32>) -> CowArray<'_, f32, Ix2> {
        if v.is_standard_layout() {
            CowArray::from(v)
        } else {
            CowArray::from(v.as_standard_layout().into_owned())
        }
    }
    fn of_f32(v: Array2<f32>) -> Array2<f32> {
        v
    }
    fn dot(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
        match (a.as_slice(), b.as_slice()) {
            (Some(x), Some(y)) => crate::model::skinny::dot(x, y),
            _ => a.dot(&b),
        }
    }
    fn axpy(mut y: ArrayViewMut1<f32>, alpha: f32, x: ArrayView1<f32>) {
        match (y.as_slice_mut(), x.as_slice()) {
            (Some(ys), Some(xs)) => crate::model::skinny::axpy(ys, alpha, xs),
            _ => y.scaled_add(alpha, &x),
        }
    }
}

/// What a sample needs besides its index.
pub struct Job<'a> {
    pub spec: &'a crate::config::ModelSpec,
    pub probe: &'a Probe,
    pub backward: Backward,
    pub seed: u64,
    /// `Dense` or `Conditional` (resolved, never `Auto`).
    pub sampler: Sampler,
    /// The probe in f32 when `run.precision = "f32"` (the samples then compute in f32);
    /// `None` for f64.
    pub probe_f32: Option<Probe<f32>>,
}

/// Keeps the conditional sampler's draws apart from the network's own stream.
const CONDITIONAL_DOMAIN: u64 = 0xC0DD_17A1_5A3F_0002;

impl<'a> Job<'a> {
    /// The job a configuration describes, with its sampler resolved.
    pub fn new(cfg: &'a Config, probe: &'a Probe) -> Job<'a> {
        let sampler = resolve_sampler(cfg, probe).unwrap_or(Sampler::Dense);
        let f32 = cfg.get("run.precision").and_then(toml::Value::as_str) == Some("f32");
        Job {
            spec: &cfg.model,
            probe,
            backward: cfg.run.backward,
            seed: cfg.run.seed,
            sampler,
            probe_f32: f32.then(|| probe.cast()),
        }
    }

    /// "f32" or "f64": what the samples compute in.
    pub fn precision(&self) -> &'static str {
        if self.probe_f32.is_some() {
            "f32"
        } else {
            "f64"
        }
    }

    fn sample(&self, index: u64, describe: bool) -> Recorder {
        match &self.probe_f32 {
            Some(p) => self.sample_in(p, index, describe),
            None => self.sample_in(self.probe, index, describe),
        }
    }

    /// One sample computing in `F`. The weights are drawn in f64 from the sample's stream
    /// whatever `F` is (then rounded), so both precisions sample the same networks.
    fn sample_in<F: McReal>(&self, probe: &Probe<F>, index: u64, describe: bool) -> Recorder {
        let mut rng = init::stream(self.seed, index);
        let mut rec = Recorder::new(describe);
        match self.sampler {
            Sampler::Conditional => {
                let net = F::network(Network::sample_with(self.spec, &mut rng, true));
                let single = self.backward != Backward::Pairs;
                let mut ops = Conditional::new(
                    &net.params,
                    init::stream(self.seed ^ CONDITIONAL_DOMAIN, index),
                    single,
                );
                observe::observe(&net, probe, self.backward, &mut ops, &mut rng, &mut rec);
            }
            _ => {
                let net = F::network(Network::sample(self.spec, &mut rng));
                observe::observe(
                    &net,
                    probe,
                    self.backward,
                    &mut Materialized,
                    &mut rng,
                    &mut rec,
                );
            }
        }
        rec
    }

    /// Starts an ensemble over samples [first, end), running sample `first` to learn the
    /// layout of slots and rows (it depends only on shapes).
    pub fn start(&self, first: u64, end: u64) -> Ensemble {
        let rec = self.sample(first, true);
        let mut acc = Accumulator::new(rec.values.len());
        acc.add(first, &rec.values, rec.diverged_at);
        Ensemble {
            rows: rec.rows.unwrap_or_default(),
            acc,
            first,
            next: first + 1,
            end,
        }
    }

    /// The row recipes and the number of slots per sample (for merging and resuming).
    pub fn layout(&self) -> (Vec<(RowKey, Recipe)>, usize) {
        let rec = self.sample(0, true);
        (rec.rows.unwrap_or_default(), rec.values.len())
    }

    /// Runs until done or interrupted, calling `after_wave` after each wave of chunks
    /// (progress, checkpoints). Chunks are merged in order, so the sums do not depend on
    /// the number of threads.
    pub fn run(
        &self,
        ens: &mut Ensemble,
        threads: usize,
        mut after_wave: impl FnMut(&Ensemble) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("cannot start the thread pool")?;
        let wave = CHUNK * 2 * threads as u64;
        while !ens.done() && !INTERRUPTED.load(Ordering::SeqCst) {
            let start = ens.next;
            let stop = (start + wave).min(ens.end);
            let chunks: Vec<(u64, u64)> = (start..stop)
                .step_by(CHUNK as usize)
                .map(|a| (a, (a + CHUNK).min(stop)))
                .collect();
            let slots = ens.acc.slots;
            // Chunks are merged into the ensemble in chunk order (so the sums do not depend on
            // the thread count), by whichever worker finds the next one ready: the merging
            // overlaps the other workers' samples instead of running after the wave.
            let merged = std::sync::Mutex::new((0usize, &mut ens.acc));
            let ready = std::sync::Mutex::new(std::collections::BTreeMap::new());
            let drain = |merged: &mut (usize, &mut Accumulator)| loop {
                let next = ready
                    .lock()
                    .expect("no panics while held")
                    .remove(&merged.0);
                let Some(part) = next else { break };
                merged.1.merge_chunk(&part);
                merged.0 += 1;
            };
            pool.install(|| {
                chunks.par_iter().enumerate().for_each(|(i, &(a, b))| {
                    let mut chunk = Chunk::new(slots);
                    for k in a..b {
                        let rec = self.sample(k, false);
                        chunk.add(k, rec.values, rec.diverged_at);
                    }
                    ready.lock().expect("no panics while held").insert(i, chunk);
                    // One merger at a time; a chunk a busy merger missed is drained below.
                    if let Ok(mut m) = merged.try_lock() {
                        drain(&mut m);
                    }
                })
            });
            let mut m = merged.into_inner().expect("no panics while held");
            drain(&mut m);
            assert_eq!(m.0, chunks.len(), "every chunk of the wave merged");
            ens.next = stop;
            after_wave(ens)?;
        }
        Ok(())
    }
}

/// Resolves `run.sampler`: `auto` takes the conditional path when some weight is Gaussian
/// (uniform groups are materialized on either path) and its estimated cost is lower. Costs are in flop-equivalents, one normal
/// draw ≈ 80 flops (Xoshiro256++ at ~370 M normals/s against ~30 GFLOP/s in GEMM here).
pub fn resolve_sampler(cfg: &Config, probe: &Probe) -> Result<Sampler, crate::config::ConfigError> {
    let m = &cfg.model;
    // Uniform groups are materialized on both paths, so the conditional path is exact for any
    // mix; it only gains where some weight is Gaussian.
    let exact = m.has_gaussian_linear();
    match cfg.run.sampler {
        Sampler::Dense => Ok(Sampler::Dense),
        Sampler::Conditional => Ok(Sampler::Conditional),
        Sampler::Auto => {
            let (dense, cond) = sampler_costs(m, probe, cfg.run.backward);
            Ok(if exact && cond < dense {
                Sampler::Conditional
            } else {
                Sampler::Dense
            })
        }
    }
}

/// Estimated (dense, conditional) cost of one sample.
pub fn sampler_costs(m: &ModelSpec, probe: &Probe, backward: Backward) -> (f64, f64) {
    sampler_costs_of(m, probe.len() as f64, probe.sequences as f64, backward)
}

/// [`sampler_costs`] from the probe's shape alone (D tokens in `sequences` sequences), so
/// the memory check can pick the sampler before the probe exists. Sizes are f64 throughout.
pub fn sampler_costs_of(m: &ModelSpec, d: f64, sequences: f64, backward: Backward) -> (f64, f64) {
    let outputs = if m.per_sequence_head() { sequences } else { d };
    let passes = if backward == Backward::Pairs {
        outputs
    } else {
        1.0
    };
    let n = m.width as f64;
    let mn = m.mlp_mult as f64 * m.width as f64;
    let mut shapes: Vec<(f64, f64)> = Vec::new();
    for b in &m.blocks {
        match (m.norm, b) {
            (crate::config::Norm::Mlp, _) => shapes.push((n, n)),
            (_, crate::config::BlockKind::Attn) => shapes.extend([(n, n); 4]),
            (_, crate::config::BlockKind::Mlp) => shapes.extend([(mn, n), (n, mn)]),
        }
    }
    // Decoder blocks: self- and cross-attention draw four n × n matrices each (they meet
    // D_dec and D tokens; the encoder's D is used for both, a rough cost).
    for b in &m.decoder {
        match b {
            crate::config::DecoderBlock::Mlp => shapes.extend([(mn, n), (n, mn)]),
            _ => shapes.extend([(n, n); 4]),
        }
    }
    shapes.push((m.n_out as f64, n));
    let (mut dense, mut cond) = (0.0, 0.0);
    for (o, i) in shapes {
        dense += o * i * (80.0 + 2.0 * d * (1.0 + passes));
        cond += (o + i) * (80.0 * d * passes + 12.0 * (d * passes).powi(2));
    }
    (dense, cond)
}

/// Installs the signal handler once: the first SIGINT (Ctrl-C), SIGTERM (a cluster's time
/// limit, `scancel`, `kill`) or SIGHUP (a closed terminal) asks the run to finish the current
/// samples, checkpoint and stop; a second one aborts.
pub fn install_interrupt_handler() {
    if EXTERNAL_INTERRUPTS.load(Ordering::SeqCst) {
        return;
    }
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        let _ = writeln!(
            std::io::stderr(),
            "\ninterrupted (Ctrl-C, SIGTERM or SIGHUP): finishing the current samples and saving a checkpoint (signal again to abort)"
        );
    });
}
