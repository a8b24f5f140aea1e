//! The `sigprop` command line. Errors print one line after the program's name
//! and exit non-zero; nothing panics on bad input.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sigprop::cmd;

/// mimalloc instead of glibc's malloc: the trainer and the Monte Carlo free and reallocate
/// activation-sized buffers (hundreds of KB) every pass, which glibc serves with mmap/munmap.
/// The page faults and TLB shootdowns made two training threads slower than one (1,631 vs
/// 1,959 tokens/s at width 256); without them two threads reach 3,749 (measured here).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Simulate(cmd::simulate::SimulateArgs),
    /// Infinite-width theory predictions in the same schema into DIR/stats.csv.
    Theory(cmd::theory::TheoryArgs),
    /// Monte Carlo against theory: z-scores, relative errors, width fits, report.md.
    Compare(cmd::compare::CompareArgs),
    /// Combine shards of one ensemble exactly.
    Merge(cmd::merge::MergeArgs),
    /// One configuration over a grid of key values, with theory and width fits.
    Sweep(cmd::sweep::SweepArgs),
    /// Everything an experiment file asks for, into results/NAME/.
    Run(cmd::run::RunArgs),
    /// Samples/s on the reference configuration, GEMM share, and the PyTorch peer.
    Bench(cmd::bench::BenchArgs),
    /// PNG and SVG figures from the stats.csv of each DIR, written into the first DIR.
    Plot(cmd::plot::PlotArgs),
    /// Train on a built-in task with SGD or AdamW and per-group learning rates into DIR/train.csv.
    Train(cmd::train::TrainArgs),
    /// Width-scaling table of init variances and learning rates, optionally measured.
    Hparams(cmd::hparams::HparamsArgs),
    /// Learning-rate transfer: final loss over widths × lrs per family, the optimum's drift.
    Transfer(cmd::transfer::TransferArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match &cli.command {
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Theory(a) => cmd::theory::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Plot(a) => cmd::plot::run(a),
        Command::Sweep(a) => cmd::sweep::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Hparams(a) => cmd::hparams::run(a),
        Command::Transfer(a) => cmd::transfer::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by a signal with everything finished saved: not an error; 130 as for SIGINT.
        Err(e) if e.downcast_ref::<sigprop::mc::Interrupted>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            let msg: Vec<String> = e
                .chain()
                .map(|c| sigprop::config::one_line(&c.to_string()))
                .collect();
            eprintln!("sigprop: error: {}", msg.join(": "));
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
