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
    /// Rounds of the trainer benchmark: each runs sigprop and then the PyTorch peer, and the
    /// summary gives the median and the range of each over the rounds.
    #[arg(long, default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub rounds: usize,
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

#[derive(Clone)]
struct Point {
    sps: f64,
    rss_mb: f64,
}

/// Runs `sigprop simulate` in a child process and reads its closing line.
fn child(
    sets: &[String],
    sampler: &str,
    precision: &str,
    samples: u64,
    threads: usize,
) -> anyhow::Result<Point> {
    let exe = std::env::current_exe().context("cannot find the sigprop executable")?;
    let out = std::env::temp_dir().join(format!(
        "sigprop-bench-{}-{sampler}-{precision}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(exe);
    cmd.arg("simulate");
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(["--set", &format!("run.sampler={sampler}")]);
    cmd.args(["--set", &format!("run.precision={precision}")]);
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

/// The widest SIMD level this CPU offers to the f32 kernels.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "AVX2+FMA";
        }
    }
    "baseline (no AVX2)"
}

/// Single-thread f32 GFLOP/s of C = A·B (m × k times k × n) through `gemm`.
fn gemm_rate(
    (m, k, n): (usize, usize, usize),
    gemm: fn(
        f32,
        ndarray::ArrayView2<f32>,
        ndarray::ArrayView2<f32>,
        f32,
        &mut ndarray::ArrayViewMut2<f32>,
    ),
) -> f64 {
    let a = ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i + 3 * j) % 7) as f32 - 3.0);
    let b = ndarray::Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((2 * i + j) % 5) as f32 - 2.0);
    let mut c = ndarray::Array2::<f32>::zeros((m, n));
    gemm(1.0, a.view(), b.view(), 0.0, &mut c.view_mut());
    let flops = 2.0 * (m * k * n) as f64;
    let reps = ((2e9 / flops) as usize).max(3);
    let t = Instant::now();
    for _ in 0..reps {
        gemm(1.0, a.view(), b.view(), 0.0, &mut c.view_mut());
    }
    flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn matrixmultiply_f32(
    alpha: f32,
    a: ndarray::ArrayView2<f32>,
    b: ndarray::ArrayView2<f32>,
    beta: f32,
    c: &mut ndarray::ArrayViewMut2<f32>,
) {
    ndarray::linalg::general_mat_mul(alpha, &a, &b, beta, c)
}

/// The trainer's f32 product shapes (batch rows × fan-in × fan-out, and the weight
/// gradient's fan-out × batch × fan-in) at width n: GFLOP/s of sigprop's dispatch, of
/// matrixmultiply and of faer, one thread.
fn train_gemm_report(n: usize) {
    let rows = 32 * 16;
    println!("f32 GEMM, one thread, GFLOP/s (sigprop's dispatch / matrixmultiply / faer):");
    for shape in [
        (rows, n, n),
        (rows, n, 4 * n),
        (rows, 4 * n, n),
        (n, rows, n),
        (4 * n, rows, n),
    ] {
        println!(
            "  {} x {} x {}: {:.0} / {:.0} / {:.0}",
            shape.0,
            shape.1,
            shape.2,
            gemm_rate(shape, sigprop::model::linalg::gemm::<f32>),
            gemm_rate(shape, matrixmultiply_f32),
            gemm_rate(shape, sigprop::model::linalg::faer_gemm::<f32>),
        );
    }
}

fn run_train(args: &BenchArgs) -> anyhow::Result<()> {
    println!("simd: {}", simd_level());
    train_gemm_report(args.train_width);
    println!(
        "trainer: copy task, width {}, 6 × (attention, MLP), batch 32 × 16 tokens, AdamW, {} threads, {} timed steps, {} rounds",
        args.train_width, args.threads, args.train_steps, args.rounds
    );
    let with_torch = !args.no_torch && has_torch();
    // Rounds alternate the two programs, so a slow spell of the machine (another tenant, a
    // frequency change) lands on both rather than on one side of the ratio: PyTorch's f32
    // rate has been seen to move by 20% between back-to-back runs on this machine.
    let mut rounds: Vec<[Option<f64>; 4]> = Vec::new();
    for round in 1..=args.rounds {
        let s32 = train_tokens_per_s::<f32>(args)?;
        let s64 = train_tokens_per_s::<f64>(args)?;
        let torch = with_torch.then(|| torch_train(args)).flatten();
        let rates = [Some(s32), Some(s64), torch.map(|t| t.0), torch.map(|t| t.1)];
        let torch_text = torch.map_or(String::new(), |(t32, t64)| {
            format!("; torch f32 {t32:.0}, f64 {t64:.0}")
        });
        println!("round {round}: sigprop f32 {s32:.0}, f64 {s64:.0}{torch_text} tokens/s");
        rounds.push(rates);
    }
    let column = |i: usize| -> Option<Vec<f64>> { rounds.iter().map(|r| r[i]).collect() };
    let names = ["sigprop f32", "sigprop f64", "torch f32", "torch f64"];
    let mut medians = [None; 4];
    for (i, name) in names.iter().enumerate() {
        let Some(v) = column(i) else { continue };
        let (mid, lo, hi) = median_range(&v);
        medians[i] = Some(mid);
        if v.len() > 1 {
            println!(
                "{name}: {mid:.0} tokens/s (median of {} rounds, {lo:.0}-{hi:.0})",
                v.len()
            );
        } else {
            println!("{name}: {mid:.0} tokens/s");
        }
    }
    match medians {
        [Some(s32), Some(s64), Some(t32), Some(t64)] => {
            println!(
                "sigprop/torch: f32 {:.2}x, f64 {:.2}x; sigprop f32 vs the fastest torch: {:.2}x",
                s32 / t32,
                s64 / t64,
                s32 / t32.max(t64)
            );
            if rounds.len() > 1 {
                let per_round: Vec<f64> =
                    rounds.iter().filter_map(|r| Some(r[0]? / r[2]?)).collect();
                let (_, lo, hi) = median_range(&per_round);
                println!("sigprop/torch f32 within a round: {lo:.2}x-{hi:.2}x");
            }
        }
        _ if with_torch => println!(
            "PyTorch peer gave no rate in some round: run bench/torch_train_peer.py by hand to see why"
        ),
        _ => println!(
            "PyTorch peer skipped: torch is not installed here (pip install torch); the script is bench/torch_train_peer.py"
        ),
    }
    Ok(())
}

/// (median, min, max) of a non-empty list; the median of an even count is the mean of the
/// middle two.
fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let mid = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    (mid, s[0], s[n - 1])
}

/// The CPU model, from /proc/cpuinfo where there is one.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Single-thread f32 GEMM rate on a square 256 product (GFLOP/s): the machine's FMA rate
/// as the packed GEMM reaches it.
fn fma_rate_f32() -> f64 {
    let a = ndarray::Array2::<f32>::from_elem((256, 256), 0.5);
    let mut c = ndarray::Array2::<f32>::zeros((256, 256));
    let t = Instant::now();
    let reps = 40;
    for _ in 0..reps {
        sigprop::model::linalg::gemm(1.0, a.view(), a.view(), 0.0, &mut c.view_mut());
    }
    2.0 * 256f64.powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// The f32 normal generator's single-thread rate (normals/s).
fn normal_rate_f32() -> f64 {
    let mut g = sigprop::mc::normal::FastNormals::from_seed(1);
    let mut buf = vec![0f32; 1 << 16];
    let t = Instant::now();
    let reps = 100;
    for _ in 0..reps {
        g.fill_f32(&mut buf);
    }
    (buf.len() * reps) as f64 / t.elapsed().as_secs_f64()
}

/// Where one thread's time goes in the conditional sampler (n = 512, the given precision):
/// shares of normals, basis, GEMM and the rest (elementwise), and per sample the normals
/// drawn and GEMM flops.
fn conditional_profile(
    args: &BenchArgs,
    precision: &str,
) -> anyhow::Result<(f64, [f64; 3], f64, f64)> {
    use sigprop::mc::profile as p;
    let mut b = sigprop::api::ConfigSource::from(&args.cfg).builder()?;
    for s in reference_sets(512) {
        b = b.set(&s)?;
    }
    let mut cfg = b
        .set("run.sampler=conditional")?
        .set(&format!("run.precision={precision}"))?
        .build()?;
    let probe = sigprop::inputs::probe(&mut cfg)?;
    let job = Job::new(&cfg, &probe);
    let samples = 16;
    p::reset();
    PROFILE.store(true, Ordering::SeqCst);
    GEMM_FLOPS.store(0, Ordering::SeqCst);
    GEMM_NANOS.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let mut ens = job.start(0, samples);
    job.run(&mut ens, 1, |_| Ok(()))?;
    let wall = t.elapsed().as_secs_f64() * 1e9;
    PROFILE.store(false, Ordering::SeqCst);
    let gemm = GEMM_NANOS.load(Ordering::SeqCst) as f64;
    let flops = GEMM_FLOPS.load(Ordering::SeqCst) as f64;
    let (normals, basis, count) = p::read();
    Ok((
        wall / samples as f64 / 1e9,
        [normals / wall, basis / wall, gemm / wall],
        count / samples as f64,
        flops / samples as f64,
    ))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    sigprop::limits::check_threads("--threads", args.threads)?;
    println!("cpu: {}", cpu_model());
    if args.train {
        return run_train(args);
    }
    let torch_ok = !args.no_torch && has_torch();
    println!(
        "reference: paper-vit, H=8, T=16, S=1, 6 layers (12 blocks), trace backward, {} threads",
        args.threads
    );
    let fma = fma_rate_f32();
    let nrate = normal_rate_f32();
    println!(
        "one thread: f32 GEMM {fma:.1} GFLOP/s (256³), f32 normals {:.0} M/s",
        nrate / 1e6
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
            "dense f64 n=512, 1 thread: {:.0}% of time in GEMM at {gflops:.1} GFLOP/s",
            100.0 * share
        );
        for precision in ["f32", "f64"] {
            let (per, [sn, sb, sg], normals, flops) = conditional_profile(args, precision)?;
            let limit = normals / nrate + flops / (fma * 1e9);
            println!(
                "conditional {precision} n=512, 1 thread: {:.1} ms/sample; normals {:.0}%, basis {:.0}%, GEMM {:.0}%, elementwise and other {:.0}%; {:.2} M normals and {:.0} MFLOP per sample; limit (f32 normals/s and FMA rate) {:.1} ms/sample = {:.0} samples/s on {} threads",
                per * 1e3,
                100.0 * sn,
                100.0 * sb,
                100.0 * sg,
                100.0 * (1.0 - sn - sb - sg).max(0.0),
                normals / 1e6,
                flops / 1e6,
                limit * 1e3,
                args.threads as f64 / limit,
                args.threads
            );
        }
    }
    println!(
        "{:>6} {:>16} {:>16} {:>16} {:>16} {:>10} {:>10} {:>10} {:>10}",
        "n",
        "dense f64 (MB)",
        "dense f32 (MB)",
        "cond. f64 (MB)",
        "cond. f32 (MB)",
        "torch f32",
        "torch f64",
        "c32/t32",
        "c64/t32"
    );
    for &n in &args.widths {
        let mut sets = reference_sets(n);
        sets.extend(args.cfg.set.iter().cloned());
        // Size each point to the time budget from a rough per-sample cost.
        let scale = (n as f64 / 512.0).powi(2);
        let dense = |precision: &str| -> anyhow::Result<Option<Point>> {
            if n > 2048 {
                return Ok(None);
            }
            let samples = ((args.seconds * 12.0 / scale) as u64).clamp(2, 256);
            Ok(Some(child(
                &sets,
                "dense",
                precision,
                samples,
                args.threads,
            )?))
        };
        let (d64, d32) = (dense("f64")?, dense("f32")?);
        let cond = |precision: &str, rate: f64| {
            let samples =
                ((args.seconds * rate / (n as f64 / 512.0).powf(1.3)) as u64).clamp(2, 8192);
            child(&sets, "conditional", precision, samples, args.threads)
        };
        let c64 = cond("f64", 160.0)?;
        let c32 = cond("f32", 300.0)?;
        let (t32, t64) = if torch_ok && n <= 2048 {
            let s = ((args.seconds * 6.0 / scale) as u64).clamp(2, 64);
            (
                torch(n, s, args.threads, "float32"),
                torch(n, s, args.threads, "float64"),
            )
        } else {
            (None, None)
        };
        let fmt = |p: &Option<Point>| {
            p.as_ref().map_or("—".to_string(), |p| {
                format!("{:.2} ({:.0})", p.sps, p.rss_mb)
            })
        };
        let tf = |t: Option<f64>| t.map_or("—".to_string(), |v| format!("{v:.2}"));
        let ratio = |c: &Point| t32.map_or("—".to_string(), |t| format!("{:.1}x", c.sps / t));
        println!(
            "{n:>6} {:>16} {:>16} {:>16} {:>16} {:>10} {:>10} {:>10} {:>10}",
            fmt(&d64),
            fmt(&d32),
            fmt(&Some(c64.clone())),
            fmt(&Some(c32.clone())),
            tf(t32),
            tf(t64),
            ratio(&c32),
            ratio(&c64)
        );
    }
    if !torch_ok {
        println!(
            "PyTorch peer skipped: torch is not installed here (pip install torch); the script is bench/torch_peer.py"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median_range;

    #[test]
    fn median_and_range_of_odd_and_even_counts() {
        assert_eq!(median_range(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_range(&[4.0, 1.0, 3.0, 2.0]), (2.5, 1.0, 4.0));
        assert_eq!(median_range(&[7.0]), (7.0, 7.0, 7.0));
    }
}
