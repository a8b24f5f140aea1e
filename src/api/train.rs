//! `sigprop train`: the compact trainer (SPEC §7) into `DIR/train.csv`, `DIR/config.toml`
//! (fully resolved, task shape included), `DIR/hparams.json` (when given) and
//! `DIR/checkpoint.bin`; `--resume DIR` continues from the checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use toml::Value;

use super::{ConfigSource, Existing, claim, out_dir};
use crate::config::fingerprint::{Fingerprint, Purpose};
use crate::config::{Config, ConfigBuilder, Precision};
use crate::hparams::HparamTable;
use crate::mc;
use crate::model::Real;
use crate::stats;
use crate::stats::csv::write_atomic;
use crate::train::{self, StepLog, TrainError, Trainer};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub cfg: ConfigSource,
    /// Hyperparameter table for this width (`sigprop hparams --format json`): per-group
    /// init variances and learning rates.
    pub hparams: Option<PathBuf>,
    /// Without --hparams: AdamW's global lr, or SGD's base lr (times λ = 1/fan_in) (train.lr).
    pub lr: Option<f64>,
    /// Number of updates (train.steps).
    pub steps: Option<u64>,
    /// Seed of parameters and data (train.seed).
    pub seed: Option<u64>,
    /// Worker threads (train.threads; 0 = all cores).
    pub threads: Option<u64>,
    /// Continue the interrupted run in DIR (its config.toml, hparams.json, checkpoint.bin).
    pub resume: Option<PathBuf>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Overwrite an output folder that holds other results.
    pub force: bool,
}

/// A first run with no configuration trains at this width for [`FIRST_RUN_STEPS`] steps,
/// about a minute, where the shared defaults (width 512, 1000 steps) take ~9.5 minutes.
/// Measured here: 400 steps of the copy task in 37 s of CPU (95 s wall on two cores shared
/// with other jobs), eval loss from 2.71 (chance) to 0.0005.
pub const FIRST_RUN_WIDTH: i64 = 128;
pub const FIRST_RUN_STEPS: i64 = 400;

impl TrainOptions {
    /// Whether this is a first run: no --config, --resume, --hparams, width, preset or steps
    /// given. Only then do the smaller first-run sizes apply.
    fn first_run(&self, b: &ConfigBuilder) -> bool {
        self.resume.is_none()
            && self.cfg.config.is_none()
            && self.hparams.is_none()
            && self.steps.is_none()
            && !["model.width", "model.preset", "train.steps"]
                .iter()
                .any(|k| b.is_set(k))
    }

    fn builder(&self) -> anyhow::Result<ConfigBuilder> {
        let mut b = match &self.resume {
            Some(dir) => ConfigBuilder::new().file(&dir.join("config.toml"))?,
            None => self.cfg.builder()?,
        };
        if self.first_run(&b) {
            b = b
                .value("model.width", Value::from(FIRST_RUN_WIDTH))?
                .value("train.steps", Value::from(FIRST_RUN_STEPS))?;
        }
        if let Some(x) = self.lr {
            b = b.value("train.lr", Value::from(x))?;
        }
        for (key, x) in [
            ("train.steps", self.steps),
            ("train.seed", self.seed),
            ("train.threads", self.threads),
        ] {
            if let Some(x) = x {
                let flag = format!("--{}", key.trim_start_matches("train."));
                b = b.value(key, crate::config::count_value(key, &flag, x)?)?;
            }
        }
        Ok(b)
    }
}

/// `--resume DIR` continues the run exactly as it was started: a flag that would change it
/// is refused. `--steps` may extend it, and the thread count (which changes results only by
/// rounding) may differ.
fn refuse_changes(args: &TrainOptions, dir: &Path) -> anyhow::Result<()> {
    super::refuse_changes_on_resume(
        &args.cfg,
        dir,
        args.out.as_deref(),
        &[
            ("--hparams", args.hparams.is_some()),
            ("--lr", args.lr.is_some()),
            ("--seed", args.seed.is_some()),
            ("--force", args.force),
        ],
    )
}

pub fn run(args: &TrainOptions) -> anyhow::Result<()> {
    if let Some(dir) = &args.resume {
        refuse_changes(args, dir)?;
    }
    let first_run = args.resume.is_none() && args.first_run(&args.cfg.builder()?);
    let first = args.builder()?.build()?;
    let cfg = train::configure(&first, args.builder()?)?;
    let (out, hp_path) = match &args.resume {
        Some(dir) => {
            let h = dir.join("hparams.json");
            (
                args.out.clone().unwrap_or_else(|| dir.clone()),
                h.exists().then_some(h),
            )
        }
        None => (
            args.out.clone().context("train needs --out DIR")?,
            args.hparams.clone(),
        ),
    };
    let hp = hp_path.as_deref().map(HparamTable::read).transpose()?;
    let hp_bytes = match &hp_path {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let fp = Fingerprint::of_training(&cfg, hp_bytes.as_deref());
    let threads = match cfg.get("train.threads").and_then(Value::as_integer) {
        Some(t) if t > 0 => t as usize,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    crate::limits::check_threads("train.threads", threads)?;
    crate::limits::enforce(
        "training",
        &crate::limits::training(&cfg, threads),
        args.cfg.max_memory.as_deref(),
    )?;
    // Where to continue from: the folder given to --resume, or --out when it holds this very
    // run (the same command run again); a folder with anything else needs --force.
    let resume: Option<PathBuf> = match &args.resume {
        Some(dir) => {
            if super::stored_fingerprint(dir).as_deref() != Some(fp.hex().as_str()) {
                bail!(
                    "{}: config.toml or hparams.json changed since the run started (or it was written by an older sigprop); restore them, or start a new run with --out",
                    dir.display()
                );
            }
            Some(dir.clone())
        }
        None => match claim(&out, &fp, Purpose::Train, args.force, "--out")? {
            Existing::Same if out.join("checkpoint.bin").exists() => Some(out.clone()),
            _ => None,
        },
    };
    if first_run {
        eprintln!(
            "note: no configuration given: a first run at model.width = {FIRST_RUN_WIDTH} for {FIRST_RUN_STEPS} steps (about a minute); scale up with e.g. --set model.width=512 --steps 1000, or a --config file"
        );
    }
    out_dir(&out)?;
    let run = Run {
        cfg: &cfg,
        out: &out,
        hp: hp.as_ref(),
        fp: &fp,
        resume: resume.as_deref(),
    };
    match cfg.train.precision {
        Precision::F64 => train_in(&run, Trainer::<f64>::new(&cfg, hp.as_ref())?),
        _ => train_in(&run, Trainer::<f32>::new(&cfg, hp.as_ref())?),
    }
}

/// What [`train_in`] needs besides the trainer.
struct Run<'a> {
    cfg: &'a Config,
    out: &'a Path,
    hp: Option<&'a HparamTable>,
    fp: &'a Fingerprint,
    /// The folder whose checkpoint the run continues.
    resume: Option<&'a Path>,
}

/// The run itself, in the trainer's precision.
fn train_in<F: Real>(run: &Run, mut tr: Trainer<F>) -> anyhow::Result<()> {
    let (cfg, out, hp) = (run.cfg, run.out, run.hp);
    let mut log = Log::new(&tr);
    tr.fingerprint = run.fp.hash;
    match run.resume {
        Some(dir) => {
            tr.load(&dir.join("checkpoint.bin"))?;
            if tr.step >= tr.spec.steps {
                eprintln!(
                    "{}: already finished ({} steps of this configuration); nothing to do",
                    dir.display(),
                    tr.step
                );
                return Ok(());
            }
            log.resume(&dir.join("train.csv"), tr.step)?;
            eprintln!(
                "resuming {}: {} of {} steps done",
                dir.display(),
                tr.step,
                tr.spec.steps
            );
        }
        None => {
            super::write_config(out, cfg, run.fp)?;
            if let Some(hp) = &hp {
                write_atomic(
                    &out.join("hparams.json"),
                    serde_json::to_string_pretty(hp)?.as_bytes(),
                )?;
            }
            log.eval_row(0, tr.evaluate());
        }
    }
    let csv = out.join("train.csv");
    let ckpt = out.join("checkpoint.bin");
    mc::install_interrupt_handler();
    let bar = progress(tr.spec.steps as u64, tr.step as u64);
    let tokens_per_step = (tr.spec.batch * tr.task.tokens()) as f64;
    let (mut busy, mut ran) = (Duration::ZERO, 0usize);
    let cpu0 = cpu_seconds();
    let mut last = None;
    while tr.step < tr.spec.steps {
        if mc::INTERRUPTED.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            tr.save(&ckpt)?;
            log.write(&csv)?;
            return Err(mc::Interrupted(format!(
                "interrupted after step {}: checkpoint saved; continue with: sigprop train --resume {} (or the same command again)",
                tr.step,
                out.display()
            ))
            .into());
        }
        let t0 = Instant::now();
        let s = match tr.step() {
            Ok(s) => s,
            Err(e @ TrainError::Diverged { .. }) => {
                bar.finish_and_clear();
                if let TrainError::Diverged { step, loss, .. } = &e {
                    log.diverged_row(*step, *loss);
                }
                log.write(&csv)?;
                return Err(e).with_context(|| {
                    format!(
                        "{} keeps steps 0 to {}; lower the learning rate or raise train.warmup",
                        csv.display(),
                        tr.step
                    )
                });
            }
            Err(e) => return Err(e.into()),
        };
        busy += t0.elapsed();
        ran += 1;
        let eval =
            (s.step % tr.spec.eval_every == 0 || s.step == tr.spec.steps).then(|| tr.evaluate());
        log.step_row(&s, eval);
        bar.set_position(s.step as u64);
        if let Some(e) = eval {
            bar.set_message(format!("train {:.4}  eval {e:.4}", s.loss));
            log.write(&csv)?;
        }
        if s.step % tr.spec.checkpoint_every == 0 {
            tr.save(&ckpt)?;
        }
        last = Some((s, eval));
    }
    bar.finish_and_clear();
    tr.save(&ckpt)?;
    log.write(&csv)?;
    let secs = busy.as_secs_f64();
    // CPU time too: on a shared machine wall-clock tokens/s says as much about the
    // neighbours as about the trainer (it includes evaluations and the final checkpoint).
    let cpu = cpu_seconds() - cpu0;
    match last {
        Some((s, eval)) => eprintln!(
            "{}: task {}, width {}, {} optimizer in {}, {} steps: final train loss {:.4}, eval loss {:.4} (chance {:.4}); {:.0} tokens/s ({ran} steps in {secs:.2} s wall, {cpu:.2} s CPU, {} threads) -> {}",
            cfg.run.name,
            tr.task.name(),
            cfg.model.width,
            tr.opt.kind.name(),
            F::NAME,
            s.step,
            s.loss,
            eval.unwrap_or(f64::NAN),
            tr.task.chance_loss(),
            tokens_per_step * ran as f64 / secs.max(1e-9),
            tr.parts_threads(),
            csv.display()
        ),
        None => eprintln!("nothing to do: {} of {} steps done", tr.step, tr.spec.steps),
    }
    Ok(())
}

/// `train.csv`, kept in memory and rewritten atomically at every evaluation, checkpoint
/// and exit: a reader never sees half a row, and a crash loses at most one eval interval.
struct Log {
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
    groups: usize,
}

impl Log {
    fn new<F: Real>(tr: &Trainer<F>) -> Log {
        let groups = tr.groups();
        let mut header: Vec<String> = [
            "step",
            "train_loss",
            "eval_loss",
            "lr",
            "lr_factor",
            "grad_norm",
        ]
        .map(String::from)
        .into();
        header.extend(groups.iter().map(|g| format!("grad_norm_{}", g.name())));
        Log {
            header,
            rows: Vec::new(),
            groups: groups.len(),
        }
    }

    /// A row with the given leading fields and the rest empty.
    fn sparse(&mut self, step: usize, fields: Vec<String>) {
        let mut r = fields;
        r.resize(self.header.len(), String::new());
        self.rows.push((step, r));
    }

    fn eval_row(&mut self, step: usize, eval: f64) {
        self.sparse(
            step,
            vec![step.to_string(), String::new(), format!("{eval:?}")],
        );
    }

    /// The step that diverged: its loss (NaN or inf, or finite when the update overflowed)
    /// and nothing else.
    fn diverged_row(&mut self, step: usize, loss: f64) {
        self.sparse(step, vec![step.to_string(), format!("{loss:?}")]);
    }

    fn step_row(&mut self, s: &StepLog, eval: Option<f64>) {
        // Debug formatting: shortest round-trip digits, with an exponent for tiny or huge
        // values (Display would spell 1e200 out in full).
        let mut r = vec![
            s.step.to_string(),
            format!("{:?}", s.loss),
            eval.map_or(String::new(), |e| format!("{e:?}")),
            format!("{:?}", s.lr),
            format!("{:?}", s.lr_factor),
            format!("{:?}", s.grad_norm),
        ];
        r.extend(s.grad_norms.iter().map(|(_, n)| format!("{n:?}")));
        debug_assert_eq!(r.len(), 6 + self.groups);
        self.rows.push((s.step, r));
    }

    /// Keeps the rows of the steps the checkpoint holds.
    fn resume(&mut self, path: &Path, step: usize) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let stats::table::Table { header, rows } = stats::table::read(&text)
            .with_context(|| format!("{}: not a readable CSV", path.display()))?;
        if header != self.header.join(",") {
            bail!(
                "{}: header does not match this configuration's groups",
                path.display()
            );
        }
        for (_, r) in rows {
            let s: usize = r
                .first()
                .and_then(|x| x.parse().ok())
                .with_context(|| format!("{}: bad row `{}`", path.display(), r.join(",")))?;
            if s <= step {
                self.rows.push((s, r));
            }
        }
        Ok(())
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let header: Vec<&str> = self.header.iter().map(String::as_str).collect();
        let text = stats::table::to_bytes(&header, self.rows.iter().map(|(_, r)| r))?;
        write_atomic(path, &text)
    }
}

/// User + system CPU seconds of this process so far (Linux /proc; NaN elsewhere). Fields 14
/// and 15 of /proc/self/stat count clock ticks, 100 per second on Linux.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces; count fields after its ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, k): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            Some((u + k) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn progress(len: u64, pos: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_position(pos);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
