//! `sigprop bench`: samples/s of the Monte Carlo on the reference configuration (preset
//! paper-vit, n = 512, H = 8, T = 16, one sequence, 6 layers = 12 blocks, `trace` backward)
//! on 1 and 2 threads, the share of time in GEMM and its GFLOP/s, and the PyTorch peer
//! (`bench/torch_peer.py`) side by side when torch is installed.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::ConfigArgs;
use crate::config::Config;
use crate::mc::Job;
use crate::model::linalg::{GEMM_FLOPS, GEMM_NANOS, PROFILE};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Samples per measurement.
    #[arg(long, default_value_t = 64)]
    pub samples: u64,
    /// Skip the PyTorch peer.
    #[arg(long)]
    pub no_torch: bool,
}

/// The reference configuration of the benchmark.
pub fn reference_sets() -> Vec<String> {
    [
        "model.preset=paper-vit",
        "model.width=512",
        "model.heads=8",
        "inputs.tokens=16",
        "inputs.sequences=1",
        "model.layers=6",
        "run.backward=trace",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// samples/s of `samples` samples on `threads` threads.
pub fn measure(
    cfg: &Config,
    probe: &crate::model::Probe,
    samples: u64,
    threads: usize,
) -> anyhow::Result<f64> {
    let job = Job::new(cfg, probe);
    let t = Instant::now();
    let mut ens = job.start(0, samples);
    job.run(&mut ens, threads, |_| Ok(()))?;
    Ok(samples as f64 / t.elapsed().as_secs_f64())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut cfg_args = args.cfg.clone();
    if cfg_args.config.is_none() && cfg_args.set.is_empty() {
        cfg_args.set = reference_sets();
    }
    let mut cfg = cfg_args.builder()?.build()?;
    let probe = crate::inputs::probe(&mut cfg)?;
    let m = &cfg.model;
    println!(
        "config: {} n={} H={} T={} S={} blocks={} backward={:?}, {} samples per point",
        cfg.run.name,
        m.width,
        m.heads,
        cfg.inputs.tokens,
        cfg.inputs.sequences,
        m.num_blocks(),
        cfg.run.backward,
        args.samples
    );
    // GEMM share, single thread.
    PROFILE.store(true, Ordering::SeqCst);
    GEMM_FLOPS.store(0, Ordering::SeqCst);
    GEMM_NANOS.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let sps1p = measure(&cfg, &probe, args.samples.min(16), 1)?;
    let wall = t.elapsed().as_secs_f64();
    PROFILE.store(false, Ordering::SeqCst);
    let (flops, nanos) = (
        GEMM_FLOPS.load(Ordering::SeqCst) as f64,
        GEMM_NANOS.load(Ordering::SeqCst) as f64,
    );
    let s1 = measure(&cfg, &probe, args.samples, 1)?;
    let s2 = measure(&cfg, &probe, args.samples, 2)?;
    println!("sigprop dense  1 thread : {s1:8.2} samples/s");
    println!("sigprop dense  2 threads: {s2:8.2} samples/s");
    println!(
        "GEMM: {:.0}% of single-thread time, {:.1} GFLOP/s inside GEMM ({:.2} GFLOP per sample; profiled run {sps1p:.2} samples/s)",
        100.0 * nanos * 1e-9 / wall,
        flops / nanos,
        flops * 1e-9 / args.samples.min(16) as f64
    );
    if args.no_torch {
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_peer.py");
    let has_torch = Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_torch {
        println!(
            "PyTorch peer: torch is not installed (pip install torch); skipped. Script: {}",
            script.display()
        );
        return Ok(());
    }
    let mut best: f64 = 0.0;
    for dtype in ["float32", "float64"] {
        let out = Command::new("python3")
            .arg(&script)
            .args([
                "--width",
                &m.width.to_string(),
                "--heads",
                &m.heads.to_string(),
                "--tokens",
                &cfg.inputs.tokens.to_string(),
            ])
            .args([
                "--layers",
                &(m.num_blocks() / 2).to_string(),
                "--samples",
                &args.samples.min(32).to_string(),
                "--threads",
                "2",
                "--dtype",
                dtype,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let sps: f64 = text
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(f64::NAN);
        println!("PyTorch {dtype} 2 threads: {sps:8.2} samples/s");
        if sps.is_finite() {
            best = best.max(sps);
        }
    }
    if best > 0.0 {
        println!(
            "sigprop dense (2 threads) / best PyTorch: {:.2}x",
            s2 / best
        );
    }
    Ok(())
}
