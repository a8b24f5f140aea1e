//! The command line's arguments (clap), each turned into the library's options for one
//! entry point of `sigprop::api`. Help texts live here; behaviour lives in the library.

use std::path::PathBuf;

use sigprop::api;
use sigprop::hparams::Anchor;
use sigprop::hparams::Optimizer;
use sigprop::hparams::format::Format;

pub mod bench;

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Monte Carlo stats.csv (rows with source = mc).
    pub mc: PathBuf,
    /// Theory stats.csv (rows with source = theory).
    pub theory: PathBuf,
    /// Output folder for compare.csv, convergence.csv and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Pass when |z| is below this.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
    /// Compare even when the two sides' config.toml describe different configurations.
    #[arg(long)]
    pub force: bool,
}

impl From<&CompareArgs> for api::compare::CompareOptions {
    fn from(a: &CompareArgs) -> Self {
        Self {
            mc: a.mc.clone(),
            theory: a.theory.clone(),
            out: a.out.clone(),
            threshold: a.threshold,
            force: a.force,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct HparamsArgs {
    /// standard | ntk (s = 0) | mup (s = 1) | s=<value> (footnote 26).
    #[arg(long, default_value = "ntk")]
    pub family: String,
    /// The optimizer the rates are for.
    #[arg(long, value_enum, default_value_t = Optimizer::AdamW)]
    pub optimizer: Optimizer,
    /// The width the base values were tuned at.
    #[arg(long, default_value_t = 256)]
    pub base_width: usize,
    /// Target widths, comma-separated.
    #[arg(long, default_value = "256,512,1024")]
    pub widths: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// Preset that supplies the C's, M, n_patch and n_out (a --config file overrides it).
    #[arg(long, default_value = "paper-vit")]
    pub preset: String,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Global learning rate η (AdamW default: the paper's ViT optimum for standard, ntk,
    /// s=0.5, mup; SGD default: 1).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Global weight decay wd (AdamW default: the paper's ViT optimum; SGD default: 0).
    #[arg(long)]
    pub wd: Option<f64>,
    /// Drop the M factors of W and X, as the paper's experiments did (footnote 41).
    #[arg(long)]
    pub no_m_factors: bool,
    /// paper: λ_g exactly as in (1.99)–(1.116); base: λ_g = 1 at the base width.
    #[arg(long, value_enum, default_value_t = Anchor::Paper, hide_possible_values = true)]
    pub anchor: Anchor,
    /// Measure the SGD exponents by Monte Carlo and add them to the table.
    #[arg(long)]
    pub measure: bool,
    /// Widths of the measurement.
    #[arg(long, default_value = "128,256,512,1024")]
    pub measure_widths: String,
    /// Samples per width of the measurement.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Worker threads of the measurement (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Coordinate check: one AdamW step or a few SGD steps with the table's
    /// rates (times --coord-lr-scale), Δf and Δz^ℓ against width (Markdown only).
    #[arg(long)]
    pub coord_check: bool,
    /// Widths of the coordinate check.
    #[arg(long, default_value = "64,128,256,512,1024")]
    pub coord_widths: String,
    /// Networks per width in the coordinate check.
    #[arg(long, default_value_t = 4)]
    pub coord_samples: usize,
    /// Multiplies every rate in the coordinate check, to stay in the linear regime.
    #[arg(long, default_value_t = 1e-3)]
    pub coord_lr_scale: f64,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl From<&HparamsArgs> for api::hparams::HparamsOptions {
    fn from(a: &HparamsArgs) -> Self {
        Self {
            family: a.family.clone(),
            optimizer: a.optimizer,
            base_width: a.base_width,
            widths: a.widths.clone(),
            format: a.format,
            preset: a.preset.clone(),
            cfg: (&a.cfg).into(),
            lr: a.lr,
            wd: a.wd,
            no_m_factors: a.no_m_factors,
            anchor: a.anchor,
            measure: a.measure,
            measure_widths: a.measure_widths.clone(),
            samples: a.samples,
            threads: a.threads,
            coord_check: a.coord_check,
            coord_widths: a.coord_widths.clone(),
            coord_samples: a.coord_samples,
            coord_lr_scale: a.coord_lr_scale,
            out: a.out.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' stats.csv files (or their folders).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Output folder (stats.csv, moments.bin, config.toml, inputs.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an output folder that holds other results.
    #[arg(long)]
    pub force: bool,
}

impl From<&MergeArgs> for api::merge::MergeOptions {
    fn from(a: &MergeArgs) -> Self {
        Self {
            shards: a.shards.clone(),
            out: a.out.clone(),
            force: a.force,
        }
    }
}

/// Options every command that reads a configuration shares.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML; keys in docs/configuration.md); built-in defaults (the
    /// paper-vit shape) without it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Override any key: --set model.width=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Probe inputs file (CSV: sequence,token,x0,… or sequence,token,id).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Memory the run may use, e.g. 40G (default: the memory available); a configuration
    /// whose estimated peak exceeds it is refused before anything is allocated.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
}

impl From<&ConfigArgs> for api::ConfigSource {
    fn from(a: &ConfigArgs) -> Self {
        Self {
            config: a.config.clone(),
            set: a.set.clone(),
            inputs: a.inputs.clone(),
            max_memory: a.max_memory.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct PlotArgs {
    /// Run folders holding stats.csv (MC and/or theory rows; theory/stats.csv is read too).
    /// Their rows are merged; figures go into the first.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl From<&PlotArgs> for api::plot::PlotOptions {
    fn from(a: &PlotArgs) -> Self {
        Self {
            dirs: a.dirs.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The experiment file.
    pub experiment: PathBuf,
    /// Results folder (default results/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also copy the figures into plots/NAME/.
    #[arg(long)]
    pub publish: bool,
    /// Worker threads for the Monte Carlo (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Override the experiment's samples per point.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Rerun points whose folders hold results of another configuration (they are refused
    /// otherwise).
    #[arg(long)]
    pub force: bool,
    /// Memory each point may use, e.g. 40G (default: the memory available).
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
}

impl From<&RunArgs> for api::run::RunOptions {
    fn from(a: &RunArgs) -> Self {
        Self {
            experiment: a.experiment.clone(),
            out: a.out.clone(),
            publish: a.publish,
            threads: a.threads,
            samples: a.samples,
            force: a.force,
            max_memory: a.max_memory.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Number of networks in the ensemble (run.samples).
    #[arg(long)]
    pub samples: Option<u64>,
    /// Seed of the parameter streams (run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: all cores). The result does not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run slice i of N of the ensemble (0-based), e.g. --shard 3/16; merge with `sigprop merge`.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
    /// Continue an interrupted run in DIR (its config.toml and moments.bin).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds between checkpoints.
    #[arg(long, default_value_t = 30.0)]
    pub checkpoint_secs: f64,
    /// Overwrite an output folder that holds other results.
    #[arg(long)]
    pub force: bool,
}

impl From<&SimulateArgs> for api::simulate::SimulateOptions {
    fn from(a: &SimulateArgs) -> Self {
        Self {
            cfg: (&a.cfg).into(),
            samples: a.samples,
            seed: a.seed,
            threads: a.threads,
            shard: a.shard.clone(),
            resume: a.resume.clone(),
            out: a.out.clone(),
            checkpoint_secs: a.checkpoint_secs,
            force: a.force,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SweepArgs {
    /// `--set key=v1,v2,…` sweeps a key (several such flags give their product); a
    /// single value fixes it.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Samples per point.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Worker threads for the Monte Carlo (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also run the theory at every point and compare.
    #[arg(long)]
    pub theory: bool,
    /// Output folder: one subfolder per point, the combined stats.csv, theory/, compare/.
    #[arg(long)]
    pub out: PathBuf,
    /// Rerun points whose folders hold results of another configuration (they are refused
    /// otherwise).
    #[arg(long)]
    pub force: bool,
}

impl From<&SweepArgs> for api::sweep::SweepOptions {
    fn from(a: &SweepArgs) -> Self {
        Self {
            cfg: (&a.cfg).into(),
            samples: a.samples,
            threads: a.threads,
            theory: a.theory,
            out: a.out.clone(),
            force: a.force,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TheoryArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an output folder that holds other results.
    #[arg(long)]
    pub force: bool,
}

impl From<&TheoryArgs> for api::theory::TheoryOptions {
    fn from(a: &TheoryArgs) -> Self {
        Self {
            cfg: (&a.cfg).into(),
            out: a.out.clone(),
            force: a.force,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Hyperparameter table for this width (`sigprop hparams --format json`): per-group
    /// init variances and learning rates.
    #[arg(long, value_name = "H.json")]
    pub hparams: Option<PathBuf>,
    /// Without --hparams: AdamW's global lr, or SGD's base lr (times λ = 1/fan_in) (train.lr).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Number of updates (train.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed of parameters and data (train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (train.threads; 0 = all cores).
    #[arg(long)]
    pub threads: Option<u64>,
    /// Continue the interrupted run in DIR (its config.toml, hparams.json, checkpoint.bin).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an output folder that holds other results.
    #[arg(long)]
    pub force: bool,
}

impl From<&TrainArgs> for api::train::TrainOptions {
    fn from(a: &TrainArgs) -> Self {
        Self {
            cfg: (&a.cfg).into(),
            hparams: a.hparams.clone(),
            lr: a.lr,
            steps: a.steps,
            seed: a.seed,
            threads: a.threads,
            resume: a.resume.clone(),
            out: a.out.clone(),
            force: a.force,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TransferArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Families, comma-separated: standard, ntk, mup, s=<value>.
    #[arg(long, default_value = "standard,ntk,mup")]
    pub family: String,
    /// Widths, comma-separated; the smallest is where the grid's lr is every group's rate.
    #[arg(long, default_value = "64,128,256")]
    pub widths: String,
    /// Learning rates η at the smallest width: numbers, 2^e, or a range 2^a..2^b (step 1 in
    /// log₂), comma-separated.
    #[arg(long, default_value = "2^-12..2^-2")]
    pub lrs: String,
    /// Global AdamW weight decay (kept as lr_g·wd_g = η·wd at every width).
    #[arg(long, default_value_t = 0.0)]
    pub wd: f64,
    /// Trainings per point, with train.seed = s₀ … s₀+K−1; the figure shows mean ± standard
    /// error and drift.md the optimum's drift with a bootstrap over seeds.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub seeds: usize,
    /// Points trained at once, one thread each (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output folder (transfer.csv, drift.md, the figure); points already in it are kept.
    #[arg(long)]
    pub out: PathBuf,
}

impl From<&TransferArgs> for api::transfer::TransferOptions {
    fn from(a: &TransferArgs) -> Self {
        Self {
            cfg: (&a.cfg).into(),
            family: a.family.clone(),
            widths: a.widths.clone(),
            lrs: a.lrs.clone(),
            wd: a.wd,
            seeds: a.seeds,
            threads: a.threads,
            out: a.out.clone(),
        }
    }
}
