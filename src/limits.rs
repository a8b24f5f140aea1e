//! Memory and thread limits, checked before anything large is allocated.
//!
//! A network, a probe set or a theory state that does not fit must be refused in one line
//! within a second, not aborted by the allocator after half a minute (or after writing a
//! multi-gigabyte `inputs.csv`). Each command estimates its peak from the configuration's
//! shapes alone, the same shapes the allocation will have, and compares the estimate with
//! the memory available (`MemAvailable` of /proc/meminfo) or with `--max-memory`.
//!
//! The estimates count the arrays that dominate (weights, activations, statistic slots);
//! they are meant to be right within a factor of about two, which is all a refusal needs.

use anyhow::bail;

use crate::config::{Backward, BlockKind, Config, DecoderBlock, HeadKind, Norm, Sampler};

/// The most worker threads a command starts. More only adds stacks and scheduling:
/// there are far fewer cores than this on any machine sigprop runs on.
pub const MAX_THREADS: usize = 1024;

/// Refuses a thread count above [`MAX_THREADS`] (or 0) before a pool is built.
pub fn check_threads(flag: &str, threads: usize) -> anyhow::Result<()> {
    if threads == 0 {
        bail!("{flag} 0: expected at least 1 thread");
    }
    if threads > MAX_THREADS {
        bail!("{flag} {threads}: at most {MAX_THREADS} threads");
    }
    Ok(())
}

/// One term of an estimate: what it is (naming the keys that set it) and its bytes.
#[derive(Clone, Debug)]
pub struct Term {
    pub what: &'static str,
    pub bytes: f64,
}

/// A peak-memory estimate as a sum of terms.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    pub terms: Vec<Term>,
}

impl Estimate {
    fn add(&mut self, what: &'static str, bytes: f64) {
        self.terms.push(Term { what, bytes });
    }
    pub fn bytes(&self) -> f64 {
        self.terms.iter().map(|t| t.bytes).sum()
    }
    /// The largest term, which a refusal names.
    fn largest(&self) -> Option<&Term> {
        self.terms.iter().max_by(|a, b| a.bytes.total_cmp(&b.bytes))
    }
}

/// Parses a size such as `40G`, `512M`, `1.5T`, `100000` (bytes); K, M, G, T are powers
/// of 1024, an optional trailing `B` or `iB` is accepted.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let err = || anyhow::anyhow!("--max-memory `{s}`: expected a size such as 40G, 512M or 2T");
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let x: f64 = num.trim().parse().map_err(|_| err())?;
    let bytes = x * mult as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// `MemAvailable` of /proc/meminfo in bytes, where there is one.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A byte count for a message: 1.5 GB, 320 MB, 2.3e+06 TB.
pub fn human(bytes: f64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (u, s) in UNITS {
        if bytes >= s {
            let v = bytes / s;
            return if v >= 1e6 {
                format!("{v:.1e} {u}")
            } else {
                format!("{v:.1} {u}")
            };
        }
    }
    format!("{bytes:.0} B")
}

/// Refuses `est` when it exceeds `--max-memory` (when given) or the memory available.
/// `what` names the command's work ("the Monte Carlo", "the theory", "training").
pub fn enforce(what: &str, est: &Estimate, max_memory: Option<&str>) -> anyhow::Result<()> {
    let need = est.bytes();
    let (limit, source, fix) = match max_memory {
        Some(m) => (
            parse_size(m)? as f64,
            "the --max-memory limit",
            "raise --max-memory",
        ),
        None => match mem_available() {
            Some(a) => (
                a as f64,
                "available (MemAvailable)",
                "pass --max-memory SIZE (e.g. --max-memory 40G)",
            ),
            None => return Ok(()),
        },
    };
    if need <= limit {
        return Ok(());
    }
    let main = est.largest().map_or(String::new(), |t| {
        format!(", mostly {} ({})", t.what, human(t.bytes))
    });
    bail!(
        "{what} needs about {} of memory{main}, but {} is {source}; make those sizes smaller, or {fix} to go ahead",
        human(need),
        human(limit)
    )
}

/// The shapes an estimate reads, in f64 so that no product can wrap.
struct Shapes {
    n: f64,
    /// MLP hidden width M·n.
    m: f64,
    heads: f64,
    attn: f64,
    mlp: f64,
    blocks: f64,
    /// Probe tokens D and tokens per sequence T.
    d: f64,
    t: f64,
    /// Rows of the positional embeddings: T, plus T_dec with a decoder.
    pe_tokens: f64,
    sequences: f64,
    n_in: f64,
    out: f64,
    dim: f64,
}

impl Shapes {
    fn of(cfg: &Config) -> Shapes {
        let m = &cfg.model;
        let count = |k: BlockKind| m.blocks.iter().filter(|&&b| b == k).count() as f64;
        // An encoder–decoder's decoder blocks count like the encoder's (a cross-attention
        // block holds the same four n × n weights), over the larger of the two token
        // counts: an upper bound, since the two stacks' activations are both kept for the
        // backward pass but their attention matrices are T_dec × T at most.
        let dec = |k: DecoderBlock| m.decoder.iter().filter(|&&b| b == k).count() as f64;
        // A probe file sets its own shape later; the configured one is what is generated.
        // The network sees the class token too: T + 1 tokens per sequence.
        let t_enc = cfg.inputs.tokens + usize::from(m.class_token);
        let t_dec = if m.has_decoder() { m.decoder_tokens } else { 0 };
        let t = t_enc.max(t_dec) as f64;
        let sequences = cfg.inputs.sequences as f64;
        Shapes {
            n: m.width as f64,
            m: m.mlp_mult as f64 * m.width as f64,
            heads: m.heads as f64,
            attn: count(BlockKind::Attn) + dec(DecoderBlock::Masked) + dec(DecoderBlock::Cross),
            mlp: count(BlockKind::Mlp) + dec(DecoderBlock::Mlp),
            blocks: (m.blocks.len() + m.decoder.len()) as f64,
            d: sequences * t,
            t,
            pe_tokens: (t_enc + t_dec) as f64,
            sequences,
            n_in: m.n_in as f64,
            out: m.out_dim() as f64,
            dim: cfg.inputs.dim as f64,
        }
    }

    /// Weights inside the residual blocks (elements): 4 n² per attention block, 2 M n² per
    /// MLP block, n² per plain-MLP layer.
    fn block_weights(&self, norm: Norm) -> f64 {
        if norm == Norm::Mlp {
            self.blocks * self.n * self.n
        } else {
            self.attn * 4.0 * self.n * self.n + self.mlp * 2.0 * self.m * self.n
        }
    }

    /// Stem, positional embeddings (the decoder's too) and head (elements).
    fn outer_weights(&self) -> f64 {
        self.n_in * self.n + self.pe_tokens * self.n + self.out * self.n
    }

    /// Activations of one forward pass over `rows` tokens (elements): the residual stream,
    /// LN outputs, Q/K/V and the attention matrices, the MLP hidden layer.
    fn activations(&self, rows: f64, t: f64) -> f64 {
        self.attn * (8.0 * rows * self.n + 3.0 * self.heads * rows * t)
            + self.mlp * (3.0 * rows * self.m + 3.0 * rows * self.n)
            + 4.0 * rows * self.n
    }
}

/// The sampler `run.sampler` resolves to for these shapes (as [`crate::mc::resolve_sampler`],
/// without a probe).
fn sampler_for(cfg: &Config, s: &Shapes) -> Sampler {
    match cfg.run.sampler {
        Sampler::Auto => {
            let (dense, cond) =
                crate::mc::sampler_costs_of(&cfg.model, s.d, s.sequences, cfg.run.backward);
            if cfg.model.has_gaussian_linear() && cond < dense {
                Sampler::Conditional
            } else {
                Sampler::Dense
            }
        }
        other => other,
    }
}

/// The probe set and its `inputs.csv` text, which are built before any sample.
fn inputs(cfg: &Config, s: &Shapes, est: &mut Estimate) {
    // A dense probe holds D × dim numbers, and inputs.csv about 24 bytes of text each.
    if cfg.model.stem == crate::config::Stem::Dense {
        est.add(
            "the probe inputs (inputs.sequences × inputs.tokens × inputs.dim)",
            s.d * s.dim * (8.0 + 24.0),
        );
    } else {
        est.add(
            "the probe inputs (inputs.sequences × inputs.tokens)",
            s.d * 32.0,
        );
    }
}

/// Peak memory of a Monte Carlo run with `threads` workers: per worker one network
/// (materialized weights, or the conditional sampler's factors of size (fan_out + fan_in)
/// × D per weight), its activations forward and backward, and one sample's slots; plus the
/// running sums (33 double-doubles per slot) of the ensemble and of the 2 × threads chunks
/// of a wave.
pub fn monte_carlo(cfg: &Config, threads: usize) -> Estimate {
    let s = Shapes::of(cfg);
    let m = &cfg.model;
    let th = threads as f64;
    let mut est = Estimate::default();
    inputs(cfg, &s, &mut est);
    let outputs = if m.per_sequence_head() {
        s.sequences
    } else {
        s.d
    };
    let passes = match cfg.run.backward {
        Backward::Pairs => outputs,
        _ => 1.0,
    };
    let weights = match sampler_for(cfg, &s) {
        Sampler::Conditional => {
            let fans = if m.norm == Norm::Mlp {
                s.blocks * 2.0 * s.n
            } else {
                s.attn * 8.0 * s.n + s.mlp * 2.0 * (s.m + s.n)
            };
            2.0 * fans * s.d * passes.max(1.0) + s.outer_weights()
        }
        _ => s.block_weights(m.norm) + s.outer_weights(),
    };
    est.add(
        "the sampled weights per thread (model.width, model.mlp_mult, model.layers, inputs.vocab or inputs.dim, model.n_out)",
        th * 8.0 * weights,
    );
    let backward = if cfg.run.backward == Backward::None {
        1.0
    } else {
        2.0 + passes.min(8.0)
    };
    est.add(
        "the activations per thread (inputs.sequences × inputs.tokens × model.width × model.mlp_mult × model.layers)",
        th * 8.0 * backward * s.activations(s.d, s.t),
    );
    // Slots of one sample: about four kernels of D(D+1)/2 entries per layer and the
    // per-token fluct/kurtosis, plus in pairs mode D² NTK entries per parameter group.
    let layers = s.blocks + 2.0;
    let mut slots = layers * (4.0 * s.d * (s.d + 1.0) / 2.0 + 4.0 * s.d + 16.0);
    if cfg.run.backward == Backward::Pairs {
        slots += layers * 8.0 * passes * passes;
    }
    est.add(
        "the statistics' running sums ((inputs.sequences × inputs.tokens)² × model.layers)",
        slots * (8.0 * th + 33.0 * 16.0 * (1.0 + 2.0 * th)),
    );
    est
}

/// Peak memory of `sigprop theory`: D × D kernels per layer and site with the NTK per
/// parameter group, the attention's logit-field draws (`theory.logit_samples` × D × D),
/// and for the book's MLP the four-point vertex.
pub fn theory(cfg: &Config) -> Estimate {
    let s = Shapes::of(cfg);
    let mut est = Estimate::default();
    inputs(cfg, &s, &mut est);
    let layers = s.blocks + 3.0;
    let per_pair = if cfg.run.backward == Backward::Pairs {
        s.d * s.d
    } else {
        1.0
    };
    est.add(
        "the D × D kernels over layers ((inputs.sequences × inputs.tokens)² × model.layers)",
        8.0 * layers * s.d * s.d * (16.0 + 8.0 * per_pair.min(s.d * s.d)),
    );
    if s.attn > 0.0 {
        let draws = cfg
            .get("theory.logit_samples")
            .and_then(toml::Value::as_integer)
            .unwrap_or(20000) as f64;
        // Each draw is a D × D attention matrix; the backward theory keeps every draw of
        // a block (to reuse the forward's draws exactly), the forward only a few at a time.
        let kept = if cfg.run.backward == Backward::None {
            4.0
        } else {
            draws + 4.0
        };
        est.add(
            "the attention's logit-field draws (theory.logit_samples × (inputs.sequences × inputs.tokens)²)",
            8.0 * kept * s.d * s.d,
        );
        if cfg.model.head == HeadKind::Tied && cfg.run.backward != Backward::None {
            // The tied head's contact keeps every attention block's record to the end of the
            // walk (`theory::contact`): its per-sequence draws (at most 2^22 entries) and two
            // D × D logit-gradient kernels per carried kernel (about six per block).
            let record = (draws * s.sequences * s.t * s.t).min(4_194_304.0)
                + 4.0 * (6.0 * s.blocks + 8.0) * s.d * s.d;
            est.add(
                "the tied head's record of every attention block (its draws and logit-gradient kernels)",
                8.0 * s.attn * record,
            );
        }
    }
    est
}

/// Peak memory of training with `threads` workers: the parameters with their gradient
/// (one per worker and the sum) and AdamW's two moments, in the trainer's precision, and
/// the activations of one batch forward and backward.
pub fn training(cfg: &Config, threads: usize) -> Estimate {
    let s = Shapes::of(cfg);
    let bytes = if cfg.get("train.precision").and_then(toml::Value::as_str) == Some("f64") {
        8.0
    } else {
        4.0
    };
    let params = s.block_weights(cfg.model.norm) + s.outer_weights();
    let mut est = Estimate::default();
    est.add(
        "the parameters, gradients and optimizer state (model.width, model.mlp_mult, model.layers)",
        bytes * params * (4.0 + threads as f64),
    );
    // `inputs.sequences` is the batch and `inputs.tokens` the task's T after configure.
    est.add(
        "the activations of one batch (train.batch × train.tokens × model.width × model.layers)",
        bytes * 3.0 * s.activations(s.d, s.t),
    );
    est
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("40G").unwrap(), 40 << 30);
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(
            parse_size("1.5T").unwrap(),
            (1.5 * (1u64 << 40) as f64) as u64
        );
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("infG").is_err());
    }

    /// The tied head's record is counted, and it is what paper-bart's theory is mostly made
    /// of (measured: 119 MB peak with the tied head, 25 MB with a dense one).
    #[test]
    fn a_tied_heads_record_is_in_the_theory_estimate() {
        let est = |head: &str| {
            let cfg = crate::config::ConfigBuilder::new()
                .set("model.preset=paper-bart")
                .unwrap()
                .set(&format!("model.head={head}"))
                .unwrap()
                .build()
                .unwrap();
            theory(&cfg)
        };
        let (tied, dense) = (est("tied"), est("dense"));
        let record = |e: &Estimate| {
            e.terms
                .iter()
                .any(|t| t.what.contains("tied head's record"))
        };
        assert!(record(&tied) && !record(&dense));
        assert!(
            tied.bytes() > 80e6 && dense.bytes() < 30e6,
            "{} vs {}",
            tied.bytes(),
            dense.bytes()
        );
    }

    #[test]
    fn a_decoder_counts_like_encoder_blocks() {
        // 3 × AM + 3 × ACM has 15 blocks, 9 of them attention-like; the estimate of its
        // weights and activations must exceed the encoder's alone by about that much (the
        // running sums are per layer too).
        let build = |dec: i64| {
            crate::config::ConfigBuilder::new()
                .set("model.preset=paper-bart")
                .unwrap()
                .set(&format!("model.decoder_layers={dec}"))
                .unwrap()
                .build()
                .unwrap()
        };
        let (enc, both) = (build(0), build(3));
        let (a, b) = (monte_carlo(&enc, 2).bytes(), monte_carlo(&both, 2).bytes());
        assert!(b > 1.8 * a, "{} vs {}", human(b), human(a));
        let (a, b) = (training(&enc, 2).bytes(), training(&both, 2).bytes());
        assert!(b > 1.5 * a, "{} vs {}", human(b), human(a));
    }

    #[test]
    fn the_default_configuration_is_estimated_between_50_mb_and_2_gb() {
        // Peak RSS of the default simulate on 2 threads is a few hundred MB (measured).
        let cfg = crate::config::ConfigBuilder::new().build().unwrap();
        let b = monte_carlo(&cfg, 2).bytes();
        assert!(b > 5e7 && b < 2e9, "{}", human(b));
    }
}
