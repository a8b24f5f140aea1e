//! The compact trainer (SPEC §7) on the one model definition: the same `Network` the Monte
//! Carlo engine samples, with materialized weights, trained through its hand-written
//! backward pass (checked against finite differences in `tests/gradients.rs`).
//!
//! One step: draw the batch for this step (a pure function of seed and step), split its
//! sequences over threads, run `forward`, the softmax cross-entropy on z^L, and `backward`
//! with the loss gradient as the cotangent; sum the parameter gradients, clip by global
//! norm, and let SGD or AdamW update every parameter with its own learning rate (the
//! group's rate from the hparams table, or the paper's SGD factors λ = 1/fan_in) times the
//! warm-up + cosine factor.

pub mod checkpoint;
pub mod data;
pub mod denoise;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod tasks;
pub mod transfer;

use std::sync::Mutex;

use ndarray::Array2;
use rayon::prelude::*;
use thiserror::Error;
use toml::Value;

use crate::config::{Config, ConfigBuilder, ConfigError, HeadKind};
use crate::hparams::HparamTable;
use crate::model::prepacked::{Prepacked, WeightPacks};
use crate::model::{Group, Network, ParamGrads, Probe, Real, init, stem};
use optim::{Adam, Kind, Optimizer};
use tasks::{Batch, Outputs, Split, Task};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("diverged at step {step}: {what}")]
    Diverged {
        step: usize,
        /// The step's loss (finite when only the update overflowed).
        loss: f64,
        what: String,
    },
}

/// The `[train]` section, typed and range-checked by the configuration builder.
pub use crate::config::TrainSection as TrainSpec;

impl TrainSpec {
    pub fn from_config(cfg: &Config) -> Result<TrainSpec, TrainError> {
        Ok(cfg.train.clone())
    }

    /// AdamW's moment decays and ε.
    pub fn adam(&self) -> Adam {
        Adam {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }

    pub fn task(&self) -> Result<Box<dyn Task>, TrainError> {
        // The shipped data sets can fail (a bad patch size, a T longer than the text).
        match self.task.as_str() {
            "digits" => {
                return Ok(Box::new(
                    data::Digits::new(self.patch).map_err(TrainError::Invalid)?,
                ));
            }
            "charlm" => {
                return Ok(Box::new(
                    data::CharLm::new(self.tokens).map_err(TrainError::Invalid)?,
                ));
            }
            "denoise" => {
                return Ok(Box::new(
                    denoise::Denoise::new(self.tokens).map_err(TrainError::Invalid)?,
                ));
            }
            _ => {}
        }
        tasks::from_name(
            &self.task,
            self.vocab,
            self.tokens,
            self.modulus,
            self.holdout,
        )
        .ok_or_else(|| {
            TrainError::Invalid(format!(
                "train.task = \"{}\": expected one of {}",
                self.task,
                crate::config::schema::TASKS.join(", ")
            ))
        })
    }
}

/// Fits the model and probe keys to the task. `first` is the user's configuration built
/// once (to read `[train]`); `b` is a fresh builder of the same inputs that receives the
/// task's shape. The task owns the vocabulary, T, the batch size, n_out and a padding
/// task's [pad] id (`inputs.pad_id`) (so they are set whatever the file says); causal masking and a positional embedding are only defaults:
/// copy and recall are positional lookups, hopeless without b_PE, so a config without one
/// gets C_PE = C_WE (positions as loud as token identity).
pub fn configure(first: &Config, mut b: ConfigBuilder) -> Result<Config, TrainError> {
    let spec = TrainSpec::from_config(first)?;
    let task = spec.task()?;
    let int = |x: usize| Value::from(x as i64);
    b = match task.input_dim() {
        // Vectors per token (image patches): the dense stem with n_in = the vector size.
        // The probe kind only shapes `sigprop simulate`'s probe; training feeds the task's x.
        Some(dim) => b
            .value("model.stem", Value::from("dense"))?
            .value("inputs.kind", Value::from("gaussian"))?
            .value("inputs.dim", int(dim))?,
        None => b
            .value("model.stem", Value::from("embedding"))?
            .value("inputs.kind", Value::from("tokens"))?
            .value("inputs.vocab", int(task.vocab()))?,
    }
    .value("inputs.tokens", int(task.tokens()))?
    .value("inputs.sequences", int(spec.batch))?;
    // A task scored once per sequence wants the pooled head unless the file chose one.
    if task.outputs() == Outputs::PerSequence && !first.is_explicit("model.head") {
        b = b.value("model.head", Value::from("pooled"))?;
    }
    if first.model.head != HeadKind::Tied || task.outputs() == Outputs::PerSequence {
        b = b.value("model.n_out", int(task.classes()))?;
    }
    if !first.is_explicit("model.causal") {
        b = b.value("model.causal", Value::from(task.causal()))?;
    }
    // A task posed to an encoder–decoder gets a decoder as deep as the encoder (BART's
    // symmetric shape) unless the file chose its depth, and the decoder's T.
    if let Some(t_dec) = task.decoder_tokens() {
        b = b.value("inputs.decoder_tokens", int(t_dec))?;
        // The task's pad token is the model's [pad]: its embedding column is zero and
        // frozen, as fairseq's BART (`padding_idx`, the paper's footnote 48).
        if let Some(pad) = task.pad() {
            b = b.value("inputs.pad_id", int(pad))?;
        }
        if !first.is_explicit("model.decoder_layers") {
            let layers = first.get("model.layers").cloned().unwrap_or(Value::from(1));
            b = b.value("model.decoder_layers", layers)?;
        }
    }
    if !first.is_explicit("model.variances.pe") && first.model.var.pe == 0.0 {
        b = b.value("model.variances.pe", Value::from(first.model.var.stem))?;
    }
    let cfg = b.build()?;
    match (task.decoder_tokens(), cfg.model.has_decoder()) {
        (Some(_), false) => {
            return Err(TrainError::Invalid(format!(
                "train.task = \"{}\" trains an encoder–decoder; model.decoder_layers must be at least 1",
                task.name()
            )));
        }
        (None, true) => {
            return Err(TrainError::Invalid(format!(
                "train.task = \"{}\" trains an encoder only; set model.decoder_layers = 0 (or train.task = \"denoise\")",
                task.name()
            )));
        }
        _ => {}
    }
    let outputs = match cfg.model.head {
        HeadKind::Pooled | HeadKind::Class => Outputs::PerSequence,
        _ => Outputs::PerToken,
    };
    if outputs != task.outputs() {
        let (scores, fix) = match task.outputs() {
            Outputs::PerToken => (
                "every token",
                "model.head = \"pooled\" gives one output per sequence; use model.head = \"dense\" or \"tied\"",
            ),
            Outputs::PerSequence => (
                "one output per sequence",
                "this head gives one output per token; use model.head = \"pooled\"",
            ),
        };
        return Err(TrainError::Invalid(format!(
            "train.task = \"{}\" scores {scores} but {fix}",
            task.name()
        )));
    }
    Ok(cfg)
}

/// One update's record (a row of `train.csv`).
#[derive(Clone, Debug)]
pub struct StepLog {
    /// Updates done, counting this one (1-based).
    pub step: usize,
    pub loss: f64,
    pub lr_factor: f64,
    /// The reference learning rate times the schedule factor.
    pub lr: f64,
    /// Gradient norm per group before clipping, for the groups the network has.
    pub grad_norms: Vec<(Group, f64)>,
    pub grad_norm: f64,
}

/// Keeps data streams apart from the parameter streams even when seeds coincide.
const DATA_DOMAIN: u64 = 0xDA7A_5EED_0000_0001;
const EVAL_DOMAIN: u64 = 0xE7A1_5EED_0000_0002;

/// A training run computing in `F` (`train.precision`; f32 unless asked).
pub struct Trainer<F: Real = f32> {
    pub cfg: Config,
    pub spec: TrainSpec,
    pub task: Box<dyn Task>,
    pub net: Network<F>,
    pub opt: Optimizer<F>,
    /// Per-parameter learning rate before the schedule (index as `net.params.list`).
    pub lr: Vec<f64>,
    /// Per-parameter decoupled weight decay.
    pub wd: Vec<f64>,
    /// The rate the `lr` column reports: train.lr (or the table's lr) × lr_mult.
    pub reference_lr: f64,
    /// Updates done.
    pub step: usize,
    /// The fingerprint of the run folder this trainer writes to (0 = none); its checkpoints
    /// carry it, and loading one of another run is refused.
    pub fingerprint: u64,
    eval: Vec<Batch>,
    parts: usize,
    pool: rayon::ThreadPool,
    /// The weights packed for the f32 kernel, refreshed from `net.params` at the start of
    /// every gradient computation and shared by its threads (`model::prepacked`).
    packs: Mutex<WeightPacks>,
}

impl<F: Real> Trainer<F> {
    /// A fresh network for a configuration from [`configure`], with the hparams table's
    /// variances and learning rates when given. The parameters are drawn in f64 and rounded
    /// to `F`, so both precisions start from the same network.
    pub fn new(cfg: &Config, hp: Option<&HparamTable>) -> Result<Trainer<F>, TrainError> {
        let spec = TrainSpec::from_config(cfg)?;
        if spec.precision.name() != <F as Real>::NAME {
            return Err(TrainError::Invalid(format!(
                "train.precision = \"{}\" but this trainer computes in {}",
                spec.precision.name(),
                <F as Real>::NAME
            )));
        }
        let task = spec.task()?;
        let mut model = cfg.model.clone();
        let mut kind = spec.optimizer;
        if let Some(hp) = hp {
            if hp.width != 0 && hp.width != model.width {
                return Err(TrainError::Invalid(format!(
                    "the hparams table is for width {} but model.width = {}: make the table for this width (sigprop hparams --widths {})",
                    hp.width, model.width, model.width
                )));
            }
            if hp.mlp_mult != 0 && hp.mlp_mult != model.mlp_mult {
                return Err(TrainError::Invalid(format!(
                    "the hparams table has mlp_mult = {} but model.mlp_mult = {}",
                    hp.mlp_mult, model.mlp_mult
                )));
            }
            if let Some(k) = Kind::from_name(&hp.optimizer) {
                kind = k;
            }
            // A table that gives b_PE or biases a variance wants them to exist.
            let given = |g: Group| hp.group(g).and_then(|x| x.init_variance).unwrap_or(0.0);
            if model.var.pe == 0.0 && given(Group::Pe) > 0.0 {
                model.var.pe = given(Group::Pe);
            }
            if model.var.bias == 0.0 && given(Group::Bias) > 0.0 {
                model.var.bias = given(Group::Bias);
            }
        }
        let mut net = Network::sample(&model, &mut init::stream(spec.seed, 0));
        if let Some(hp) = hp {
            // Re-draw each group the table sizes, from its own stream: the variance is per
            // entry, already divided by whatever fan-in the family prescribes; the law is the
            // group's own (`model.init_groups.<group>`, else `model.init`).
            let mut rng = init::stream(spec.seed, 1);
            for p in net.params.list.iter_mut() {
                if let Some(v) = hp.group(p.group).and_then(|g| g.init_variance) {
                    init::fill(&mut p.value, v, model.init_of(p.group), &mut rng);
                    p.var = v;
                }
            }
        }
        // A re-drawn word embedding gets its [pad] column zeroed again (footnote 48).
        stem::zero_pad(&model, net.stem.w, &mut net.params);
        let net: Network<F> = net.cast();
        let (mut lr, mut wd) = (Vec::new(), Vec::new());
        // A table without a global lr (a hand-written file may leave it out, and it reads as
        // 0) keeps train.lr: a zero reference would silently freeze every group without its
        // own rate.
        let reference = match hp {
            Some(hp) if hp.lr > 0.0 => hp.lr,
            _ => spec.lr,
        } * spec.lr_mult;
        for p in &net.params.list {
            // The paper's SGD factor λ = 1/fan_in (fan_in is 1 for biases and embeddings).
            let default = match kind {
                Kind::Sgd => reference / p.fan_in as f64,
                Kind::AdamW => reference,
            };
            let g = hp.and_then(|h| h.group(p.group));
            lr.push(g.and_then(|g| g.lr).map_or(default, |x| x * spec.lr_mult));
            wd.push(
                g.and_then(|g| g.weight_decay)
                    .unwrap_or(hp.map_or(spec.weight_decay, |h| h.weight_decay)),
            );
        }
        let opt = Optimizer::new(kind, spec.adam(), &net.params);
        let threads = if spec.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            spec.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| TrainError::Invalid(format!("cannot start {threads} threads: {e}")))?;
        // A fixed evaluation set from its own stream, drawn from the held-out side of the
        // split: sequences no training batch contains.
        let mut erng = init::stream(spec.seed ^ EVAL_DOMAIN, 0);
        let eval = (0..spec.eval_batches)
            .map(|_| task.sample(&mut erng, spec.batch, Split::Eval))
            .collect();
        Ok(Trainer {
            cfg: cfg.clone(),
            parts: threads.min(spec.batch),
            spec,
            task,
            net,
            opt,
            lr,
            wd,
            reference_lr: reference,
            step: 0,
            fingerprint: 0,
            eval,
            pool,
            packs: Mutex::default(),
        })
    }

    /// The training batch of update `step` (0-based): the same whatever happened before.
    pub fn batch_at(&self, step: usize) -> Batch {
        let mut rng = init::stream(self.spec.seed ^ DATA_DOMAIN, step as u64);
        self.task.sample(&mut rng, self.spec.batch, Split::Train)
    }

    /// Groups that own at least one parameter, in SPEC order.
    pub fn groups(&self) -> Vec<Group> {
        Group::ALL
            .into_iter()
            .filter(|g| self.net.params.list.iter().any(|p| p.group == *g))
            .collect()
    }

    /// Mean cross-entropy of `batch` and its gradient for every parameter.
    pub fn loss_and_grads(&self, batch: &Batch) -> (f64, Vec<Array2<F>>) {
        let (loss, grads, _) = self.loss_grads_norms(batch);
        (loss, grads)
    }

    /// As `loss_and_grads`, with every gradient's Σg² (in f64, [`Real::sum_squares`]'s
    /// bits). With several parts the last part's sum computes it in the same pass
    /// ([`Real::add_sum_squares`]): the gradients are read once instead of twice.
    fn loss_grads_norms(&self, batch: &Batch) -> (f64, Vec<Array2<F>>, Vec<f64>) {
        let total = batch.targets.iter().filter(|t| t.is_some()).count().max(1) as f64;
        let parts = split(batch, self.parts);
        let net = &self.net;
        // A poisoned lock only means another computation panicked mid-refresh; the refresh
        // below rewrites every pack anyway.
        let mut packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        packs.refresh(&net.params, (self.parts > 1).then_some(&self.pool));
        let packs = &*packs;
        let one = |b: &Batch| {
            let probe = b.probe.cast::<F>();
            let mut ops = Prepacked { packs };
            let trace = net.forward_with(&probe, &mut ops);
            let (sum, _, mut dout) = loss::cross_entropy_sum(trace.out.view(), &b.targets);
            dout /= F::of(total);
            let mut g = ParamGrads::new(&net.params);
            net.backward_with(&trace, &probe, dout.view(), &mut g, &mut ops);
            (sum, g.into_list())
        };
        let results: Vec<(f64, Vec<Array2<F>>)> = self.run_parts(&parts, one);
        // Summed in part order, so the result does not depend on which thread ran what.
        let sum: f64 = results.iter().map(|r| r.0).sum();
        let mut lists = results.into_iter().map(|r| r.1);
        let mut grads = lists.next().unwrap_or_default();
        let rest: Vec<Vec<Array2<F>>> = lists.collect();
        let sum_of = |(i, a): (usize, &mut Array2<F>)| -> f64 {
            let Some((last, before)) = rest.split_last() else {
                return squares(a);
            };
            for part in before {
                *a += &part[i];
            }
            if let (Some(x), Some(y)) = (a.as_slice_mut(), last[i].as_slice()) {
                return F::add_sum_squares(x, y);
            }
            *a += &last[i];
            squares(a)
        };
        // A single thread runs inline, for the reason given at `run_parts`.
        let norms = if self.parts > 1 {
            self.pool
                .install(|| grads.par_iter_mut().enumerate().map(sum_of).collect())
        } else {
            grads.iter_mut().enumerate().map(sum_of).collect()
        };
        (sum / total, grads, norms)
    }

    /// `f` over the parts, in part order. A single part runs on the calling thread: entering
    /// this trainer's pool from a worker of another pool (the transfer grid runs one trainer
    /// per rayon task) lets rayon's waiting worker pick up *other* grid points meanwhile, so
    /// points would interleave on one thread and their timings would add up.
    fn run_parts<T: Send>(&self, parts: &[Batch], f: impl Fn(&Batch) -> T + Sync + Send) -> Vec<T> {
        if parts.len() <= 1 {
            return parts.iter().map(f).collect();
        }
        self.pool.install(|| parts.par_iter().map(&f).collect())
    }

    /// Mean cross-entropy of `batch` (forward only).
    pub fn loss(&self, batch: &Batch) -> f64 {
        let total = batch.targets.iter().filter(|t| t.is_some()).count().max(1) as f64;
        let parts = split(batch, self.parts);
        let net = &self.net;
        let sums: Vec<f64> = self.run_parts(&parts, |b: &Batch| {
            loss::cross_entropy_sum(net.forward(&b.probe.cast::<F>()).out.view(), &b.targets).0
        });
        sums.iter().sum::<f64>() / total
    }

    /// Mean loss over the held-out batches.
    pub fn evaluate(&self) -> f64 {
        self.eval.iter().map(|b| self.loss(b)).sum::<f64>() / self.eval.len() as f64
    }

    /// One update on the batch of the current step. A non-finite loss or gradient stops
    /// before touching the parameters.
    pub fn step(&mut self) -> Result<StepLog, TrainError> {
        let batch = self.batch_at(self.step);
        let (loss, grads, per_param) = self.loss_grads_norms(&batch);
        let mut sq = vec![0.0; Group::ALL.len()];
        for (p, s) in self.net.params.list.iter().zip(&per_param) {
            sq[p.group as usize] += s;
        }
        let grad_norm = sq.iter().sum::<f64>().sqrt();
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss,
                what: format!("train loss = {loss}, gradient norm = {grad_norm}"),
            });
        }
        let grad_scale = if self.spec.clip > 0.0 && grad_norm > self.spec.clip {
            self.spec.clip / grad_norm
        } else {
            1.0
        };
        let factor = schedule::lr_factor(
            self.step,
            self.spec.warmup,
            self.spec.steps,
            self.spec.min_lr_ratio,
        );
        let lr: Vec<f64> = self.lr.iter().map(|x| x * factor).collect();
        let pool = (self.parts > 1).then_some(&self.pool);
        let finite = self.opt.update(
            &mut self.net.params,
            &grads,
            &lr,
            &self.wd,
            grad_scale,
            pool,
        );
        // An overflowing parameter does not always show up as a NaN loss: LN divides by an
        // infinite variance and returns exact zeros, and the network dies quietly at loss
        // ln V with zero gradient. So entries whose squares overflow in F (beyond ~1e154 in
        // f64, ~1e19 in f32) count as divergence too.
        if let Some((p, _)) = self
            .net
            .params
            .list
            .iter()
            .zip(&finite)
            .find(|(_, ok)| !**ok)
        {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss,
                what: format!(
                    "parameter {} overflowed (an entry's square is not finite in {})",
                    p.name,
                    F::NAME
                ),
            });
        }
        self.step += 1;
        Ok(StepLog {
            step: self.step,
            loss,
            lr_factor: factor,
            lr: self.reference_lr * factor,
            grad_norms: self
                .groups()
                .into_iter()
                .map(|g| (g, sq[g as usize].sqrt()))
                .collect(),
            grad_norm,
        })
    }

    /// How many parts a batch is split into (one per worker thread).
    pub fn parts_threads(&self) -> usize {
        self.parts
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), TrainError> {
        checkpoint::save(
            path,
            self.step,
            &self.net.params,
            &self.opt,
            self.fingerprint,
        )
    }

    pub fn load(&mut self, path: &std::path::Path) -> Result<(), TrainError> {
        let loaded = checkpoint::load(path, &mut self.net.params, &mut self.opt);
        self.adopt(loaded, path)
    }

    /// [`Trainer::load`] from a checkpoint's bytes in memory; `path` names it in errors.
    pub fn restore(&mut self, bytes: Vec<u8>, path: &std::path::Path) -> Result<(), TrainError> {
        let loaded = checkpoint::restore(bytes, path, &mut self.net.params, &mut self.opt);
        self.adopt(loaded, path)
    }

    fn adopt(
        &mut self,
        loaded: Result<(usize, u64), TrainError>,
        path: &std::path::Path,
    ) -> Result<(), TrainError> {
        let (step, fp) = loaded?;
        if self.fingerprint != 0 && fp != self.fingerprint {
            return Err(TrainError::Checkpoint {
                path: path.display().to_string(),
                msg: "it belongs to another run (its fingerprint differs from config.toml's)"
                    .into(),
            });
        }
        self.step = step;
        Ok(())
    }
}

/// Splits a batch into at most `parts` batches of whole sequences.
/// Σ g² of one gradient in f64 ([`Real::sum_squares`] over its memory).
fn squares<F: Real>(g: &Array2<F>) -> f64 {
    match g.as_slice_memory_order() {
        Some(s) => F::sum_squares(s),
        None => g.iter().map(|x| x.wide() * x.wide()).sum::<f64>(),
    }
}

fn split(batch: &Batch, parts: usize) -> Vec<Batch> {
    let s = batch.probe.sequences;
    let per = s.div_ceil(parts.max(1)).max(1);
    let rows_per_seq = batch.targets.len() / s.max(1);
    (0..s)
        .step_by(per)
        .map(|a| {
            let b = (a + per).min(s);
            Batch {
                probe: sequences(&batch.probe, a, b),
                targets: batch.targets[a * rows_per_seq..b * rows_per_seq].to_vec(),
            }
        })
        .collect()
}

/// Sequences a … b−1 of a probe, with their padding mask and their decoder's sequences.
fn sequences(p: &Probe, a: usize, b: usize) -> Probe {
    let t = p.tokens;
    let (d0, d1) = (a * t, b * t);
    Probe {
        sequences: b - a,
        tokens: t,
        x: p.x
            .as_ref()
            .map(|x| x.slice(ndarray::s![d0..d1, ..]).to_owned()),
        ids: p.ids.as_ref().map(|ids| ids[d0..d1].to_vec()),
        decoder: p.decoder.as_ref().map(|d| Box::new(sequences(d, a, b))),
        keep: p.keep.as_ref().map(|k| k[d0..d1].to_vec()),
    }
}
