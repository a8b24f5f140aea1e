//! The `sigprop` command line. Errors print one line after the program's name
//! and exit non-zero; nothing panics on bad input.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sigprop::api;

mod cli;

/// mimalloc instead of glibc's malloc: the trainer and the Monte Carlo free and reallocate
/// activation-sized buffers (hundreds of KB) every pass, which glibc serves with mmap/munmap.
/// The page faults and TLB shootdowns made two training threads slower than one (1,631 vs
/// 1,959 tokens/s at width 256); without them two threads reach 3,749 (measured here).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (its mimalloc.h; libmimalloc-sys
/// 0.1.49 builds mimalloc 3 and names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process instead of going back to the OS 10 ms later
/// (mimalloc's default). A sample's or a step's buffers are freed and allocated again moments
/// later, and each return cost a page fault and a zeroed page on reuse, which two threads
/// also contend for. With two threads the conditional sampler at n = 512 ran 2-4% faster
/// (minor faults 4,700 → 390 per run). The peak, which `--max-memory` bounds, is unchanged.
fn keep_freed_memory() {
    // SAFETY: sets one integer option; mimalloc reads it whenever it decides to purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// `mi_option_arena_eager_commit` in the same enum.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// 4 KB pages instead of transparent huge pages, except for `train` and `transfer`, chosen
/// before the first allocation (mimalloc reserves its arena then, so `main` is too late).
///
/// By default mimalloc commits its 1 GiB arena at once and asks for huge pages on it. Where
/// the kernel has to find and zero a 2 MB page at each first touch (as on this project's
/// 2-core VMs) that stalls: a Monte Carlo run spent 0.4-1.5 s of system time, most of it
/// inside the timed run, and n = 2048 ran 91-94 samples/s instead of 106-112. Training
/// reads ~100 MB of weights, gradients, moments and packs every step, and huge pages make
/// its steady steps 2-3% faster (fewer TLB misses): `train` and `transfer` run long enough
/// to gain from them. `bench --train` times 30 steps, within which the first touches and the
/// kernel's page collapsing made its f32 rate 6,418-7,028 tokens/s, against 6,619-6,757
/// with 4 KB pages (the same mean); the bench keeps 4 KB pages for a steadier number.
///
/// glibc calls `.init_array` functions with (argc, argv, envp), as Rust's own
/// `std::env::args` relies on; elsewhere mimalloc's default stays.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
static CHOOSE_PAGES: extern "C" fn(i32, *const *const std::ffi::c_char) = choose_pages;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn choose_pages(argc: i32, argv: *const *const std::ffi::c_char) {
    // SAFETY: glibc passes the process's argc and argv, argv[0..argc] being C strings.
    let command = (argc > 1).then(|| unsafe { std::ffi::CStr::from_ptr(*argv.add(1)) });
    let trains = command.is_some_and(|c| matches!(c.to_bytes(), b"train" | b"transfer"));
    if !trains {
        // SAFETY: sets one integer option, before mimalloc first reads it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "sigprop",
    version,
    about = "Signal propagation in wide and deep Transformers at initialization"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Monte Carlo ensemble: per-layer statistics with standard errors into DIR/stats.csv.
    Simulate(cli::SimulateArgs),
    /// Infinite-width theory predictions in the same schema into DIR/stats.csv.
    Theory(cli::TheoryArgs),
    /// Monte Carlo against theory: z-scores, relative errors, width fits, report.md.
    Compare(cli::CompareArgs),
    /// Combine shards of one ensemble exactly.
    Merge(cli::MergeArgs),
    /// One configuration over a grid of key values, with theory and width fits.
    Sweep(cli::SweepArgs),
    /// Everything an experiment file asks for, into results/NAME/.
    Run(cli::RunArgs),
    /// Samples/s on the reference configuration, GEMM share, and the PyTorch peer.
    Bench(cli::bench::BenchArgs),
    /// PNG and SVG figures from the stats.csv of each DIR, written into the first DIR.
    Plot(cli::PlotArgs),
    /// Train on a built-in task with SGD or AdamW and per-group learning rates into DIR/train.csv.
    Train(cli::TrainArgs),
    /// Width-scaling table of init variances and learning rates, optionally measured.
    Hparams(cli::HparamsArgs),
    /// Learning-rate transfer: final loss over widths × lrs per family, the optimum's drift.
    Transfer(cli::TransferArgs),
    /// A Hugging Face config.json (ViT, GPT-2, BERT, BART) as a sigprop configuration (TOML).
    ImportConfig(cli::ImportConfigArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match &cli.command {
        Command::Simulate(a) => api::simulate(&a.into()),
        Command::Merge(a) => api::merge(&a.into()),
        Command::Theory(a) => api::theory(&a.into()),
        Command::Compare(a) => api::compare(&a.into()),
        Command::Bench(a) => cli::bench::run(a).map_err(api::Error::from),
        Command::Plot(a) => api::plot(&a.into()),
        Command::Sweep(a) => api::sweep(&a.into()),
        Command::Run(a) => api::run(&a.into()),
        Command::Train(a) => api::train(&a.into()),
        Command::Hparams(a) => api::hparams(&a.into()),
        Command::Transfer(a) => api::transfer(&a.into()),
        Command::ImportConfig(a) => cli::import_config(a).map_err(api::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by a signal with everything finished saved: not an error; 130 as for SIGINT.
        Err(api::Error::Interrupted(e)) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!(
                "sigprop: error: {}",
                sigprop::config::one_line(&e.to_string())
            );
            ExitCode::from(2)
        }
    }
}

/// Help and version go to standard output as clap writes them; a usage error becomes one line
/// (`sigprop: error: invalid value 'xml' for '--format <FORMAT>' [possible values: …]`), like
/// every other error, with exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect();
    let line = parts.join(" ");
    eprintln!(
        "sigprop: error: {}",
        line.strip_prefix("error: ").unwrap_or(&line)
    );
    ExitCode::from(2)
}
