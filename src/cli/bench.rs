//! `sigprop bench`: samples/s and peak RSS of the Monte Carlo on the reference
//! configuration (preset paper-vit, H = 8, T = 16, one sequence, 6 layers = 12 blocks,
//! `trace` backward) at n = 512, 2048, 8192, for the dense and the conditional sampler and
//! for the PyTorch peer (`bench/torch_peer.py`, when torch is installed), side by side.
//! Every point runs as its own `sigprop simulate` process so that its peak RSS is its own.
//! Also the share of single-thread time spent in GEMM and the GFLOP/s inside GEMM.
//!
//! `sigprop bench --train`: training tokens/s of `sigprop train`'s default model (copy task,
//! 6 × (attention, MLP) blocks, batch 32 × 16, AdamW) at `--train-width`, in f32 and f64,
//! beside `bench/torch_train_peer.py` (the same model in PyTorch) on the same threads.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;

use super::ConfigArgs;
use sigprop::config::Config;
use sigprop::mc::Job;
use sigprop::model::Real;
use sigprop::model::linalg::{GEMM_FLOPS, GEMM_NANOS, PROFILE};
use sigprop::train::{self, Trainer};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Widths to measure.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
    pub widths: Vec<usize>,
    /// Threads for every point (sigprop and PyTorch).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Wall-clock budget in seconds per point (the sample count is sized to it).
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// Skip the PyTorch peer.
    #[arg(long)]
    pub no_torch: bool,
    /// Measure the trainer instead of the Monte Carlo.
    #[arg(long)]
    pub train: bool,
    /// Width of the trainer benchmark.
    #[arg(long, default_value_t = 256)]
    pub train_width: usize,
    /// Timed training steps per point (after 3 warm-up steps, as the PyTorch peer does).
    #[arg(long, default_value_t = 30,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub train_steps: usize,
}

/// The reference configuration of the benchmark.
pub fn reference_sets(width: usize) -> Vec<String> {
    [
        "model.preset=paper-vit".to_string(),
        format!("model.width={width}"),
        "model.heads=8".into(),
        "inputs.tokens=16".into(),
        "inputs.sequences=1".into(),
        "model.layers=6".into(),
        "run.backward=trace".into(),
    ]
    .to_vec()
}

struct Point {
    sps: f64,
    rss_mb: f64,
}

/// Runs `sigprop simulate` in a child process and reads its closing line.
fn child(sets: &[String], sampler: &str, samples: u64, threads: usize) -> anyhow::Result<Point> {
    let exe = std::env::current_exe().context("cannot find the sigprop executable")?;
    let out = std::env::temp_dir().join(format!("sigprop-bench-{}-{sampler}", std::process::id()));
    let mut cmd = Command::new(exe);
    cmd.arg("simulate");
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(["--set", &format!("run.sampler={sampler}")]);
    cmd.args([
        "--samples",
        &samples.to_string(),
        "--threads",
        &threads.to_string(),
        "--out",
    ])
    .arg(&out);
    let o = cmd.output()?;
    let _ = std::fs::remove_dir_all(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        anyhow::bail!("simulate failed: {}", err.trim());
    }
    let num = |key: &str, before: bool| -> f64 {
        err.split(&[',', '(', ')'][..])
            .map(str::trim)
            .find(|p| p.contains(key))
            .and_then(|p| {
                let w: Vec<&str> = p.split_whitespace().collect();
                let i = w.iter().position(|x| x.contains(key))?;
                let j = if before { i.checked_sub(1)? } else { i + 1 };
                w.get(j)?.parse().ok()
            })
            .unwrap_or(f64::NAN)
    };
    Ok(Point {
        sps: num("samples/s", true),
        rss_mb: num("RSS", false),
    })
}

fn torch(width: usize, samples: u64, threads: usize, dtype: &str) -> Option<f64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_peer.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--width",
            &width.to_string(),
            "--heads",
            "8",
            "--tokens",
            "16",
            "--layers",
            "6",
        ])
        .args([
            "--samples",
            &samples.to_string(),
            "--threads",
            &threads.to_string(),
            "--dtype",
            dtype,
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn has_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Single-thread GEMM share and GFLOP/s of the dense path at n = 512.
fn gemm_profile(cfg: &Config, probe: &sigprop::model::Probe) -> anyhow::Result<(f64, f64)> {
    let mut c = cfg.clone();
    c.set_sampler(sigprop::config::Sampler::Dense);
    let job = Job::new(&c, probe);
    PROFILE.store(true, Ordering::SeqCst);
    GEMM_FLOPS.store(0, Ordering::SeqCst);
    GEMM_NANOS.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let mut ens = job.start(0, 8);
    job.run(&mut ens, 1, |_| Ok(()))?;
    let wall = t.elapsed().as_secs_f64();
    PROFILE.store(false, Ordering::SeqCst);
    let (flops, nanos) = (
        GEMM_FLOPS.load(Ordering::SeqCst) as f64,
        GEMM_NANOS.load(Ordering::SeqCst) as f64,
    );
    Ok((nanos * 1e-9 / wall, flops / nanos))
}

/// Tokens/s of `steps` training steps after 3 warm-up steps, in precision `F`.
fn train_tokens_per_s<F: Real>(args: &BenchArgs) -> anyhow::Result<f64> {
    let mk = || -> anyhow::Result<sigprop::config::ConfigBuilder> {
        let mut b = sigprop::api::ConfigSource::from(&args.cfg).builder()?;
        for s in [
            format!("model.width={}", args.train_width),
            format!("train.threads={}", args.threads),
            format!("train.precision={}", F::NAME),
            format!("train.steps={}", args.train_steps + 3),
        ] {
            b = b.set(&s)?;
        }
        Ok(b)
    };
    let cfg = train::configure(&mk()?.build()?, mk()?)?;
    let mut tr = Trainer::<F>::new(&cfg, None)?;
    for _ in 0..3 {
        tr.step()?;
    }
    let t = Instant::now();
    for _ in 0..args.train_steps {
        tr.step()?;
    }
    let tokens = (args.train_steps * tr.spec.batch * tr.task.tokens()) as f64;
    Ok(tokens / t.elapsed().as_secs_f64())
}

/// The PyTorch peer's (f32, f64) tokens/s on the same model and threads.
fn torch_train(args: &BenchArgs) -> Option<(f64, f64)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_train_peer.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--width", &args.train_width.to_string()])
        .args(["--steps", &args.train_steps.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    Some((rate("torch float32:")?, rate("torch float64:")?))
}

fn run_train(args: &BenchArgs) -> anyhow::Result<()> {
    println!(
        "trainer: copy task, width {}, 6 × (attention, MLP), batch 32 × 16 tokens, AdamW, {} threads, {} timed steps",
        args.train_width, args.threads, args.train_steps
    );
    let s32 = train_tokens_per_s::<f32>(args)?;
    let s64 = train_tokens_per_s::<f64>(args)?;
    println!("sigprop f32: {s32:.0} tokens/s");
    println!("sigprop f64: {s64:.0} tokens/s");
    match (!args.no_torch && has_torch())
        .then(|| torch_train(args))
        .flatten()
    {
        Some((t32, t64)) => {
            println!("torch f32: {t32:.0} tokens/s");
            println!("torch f64: {t64:.0} tokens/s");
            println!(
                "sigprop/torch: f32 {:.2}x, f64 {:.2}x; sigprop f32 vs the fastest torch: {:.2}x",
                s32 / t32,
                s64 / t64,
                s32 / t32.max(t64)
            );
        }
        None => println!(
            "PyTorch peer skipped: torch is not installed here (pip install torch); the script is bench/torch_train_peer.py"
        ),
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    sigprop::limits::check_threads("--threads", args.threads)?;
    if args.train {
        return run_train(args);
    }
    let torch_ok = !args.no_torch && has_torch();
    println!(
        "reference: paper-vit, H=8, T=16, S=1, 6 layers (12 blocks), trace backward, {} threads",
        args.threads
    );
    {
        let mut b = sigprop::api::ConfigSource::from(&args.cfg).builder()?;
        for s in reference_sets(512) {
            b = b.set(&s)?;
        }
        let mut cfg = b.build()?;
        let probe = sigprop::inputs::probe(&mut cfg)?;
        let (share, gflops) = gemm_profile(&cfg, &probe)?;
        println!(
            "dense n=512, 1 thread: {:.0}% of time in GEMM at {gflops:.1} GFLOP/s",
            100.0 * share
        );
    }
    println!(
        "{:>6} {:>22} {:>22} {:>16} {:>16} {:>12}",
        "n", "dense samples/s (MB)", "cond. samples/s (MB)", "torch f32", "torch f64", "cond/torch"
    );
    for &n in &args.widths {
        let mut sets = reference_sets(n);
        sets.extend(args.cfg.set.iter().cloned());
        // Size each point to the time budget from a rough per-sample cost.
        let scale = (n as f64 / 512.0).powi(2);
        let dense = if n <= 2048 {
            let samples = ((args.seconds * 12.0 / scale) as u64).clamp(2, 256);
            Some(child(&sets, "dense", samples, args.threads)?)
        } else {
            None
        };
        let cond_samples =
            ((args.seconds * 120.0 / (n as f64 / 512.0).powf(1.3)) as u64).clamp(2, 2048);
        let cond = child(&sets, "conditional", cond_samples, args.threads)?;
        let (t32, t64) = if torch_ok && n <= 2048 {
            let s = ((args.seconds * 6.0 / scale) as u64).clamp(2, 64);
            (
                torch(n, s, args.threads, "float32"),
                torch(n, s, args.threads, "float64"),
            )
        } else {
            (None, None)
        };
        let best = t32.into_iter().chain(t64).fold(f64::NAN, f64::max);
        let fmt = |p: &Option<Point>| {
            p.as_ref().map_or("—".to_string(), |p| {
                format!("{:.2} ({:.0})", p.sps, p.rss_mb)
            })
        };
        let tf = |t: Option<f64>| t.map_or("—".to_string(), |v| format!("{v:.2}"));
        let ratio = if best.is_finite() {
            format!("{:.1}x", cond.sps / best)
        } else {
            "—".into()
        };
        println!(
            "{n:>6} {:>22} {:>22} {:>16} {:>16} {:>12}",
            fmt(&dense),
            fmt(&Some(cond)),
            tf(t32),
            tf(t64),
            ratio
        );
    }
    if !torch_ok {
        println!(
            "PyTorch peer skipped: torch is not installed here (pip install torch); the script is bench/torch_peer.py"
        );
    }
    Ok(())
}
