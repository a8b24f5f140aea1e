//! The native half of the `sigprop` Python package: each job of the library's entry points
//! (`sigprop::api`) called with paths and plain values, run on a worker thread with the GIL
//! released. The Python half (`sigprop/__init__.py`) turns configurations into TOML and the
//! output folders' CSV files into DataFrames; nothing here computes anything itself.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::ValueEnum;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use sigprop::api::{self, ConfigSource};
use sigprop::mc;

/// As in the `sigprop` binary: the Monte Carlo frees and reallocates activation-sized
/// buffers every pass, which glibc's malloc serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _native,
    SigpropError,
    PyException,
    "An error of sigprop: the same one-line message as the command line's `sigprop: error: …`."
);
create_exception!(
    _native,
    ConfigError,
    SigpropError,
    "A configuration key or value is wrong; the message names the key."
);

/// How often the waiting thread looks for Ctrl-C and updates the progress callback.
const POLL: Duration = Duration::from_millis(10);

/// Runs `job` on a worker thread while this thread, with the GIL released between polls,
/// watches for KeyboardInterrupt (Python's SIGINT handler) and reports progress. On an
/// interrupt the engine is asked to stop through `mc::INTERRUPTED`: it finishes the samples
/// in flight, saves its checkpoint and returns `Error::Interrupted`, raised here as
/// KeyboardInterrupt with the library's message.
fn run_job<F>(py: Python<'_>, progress: Option<PyObject>, job: F) -> PyResult<()>
where
    F: FnOnce() -> Result<(), api::Error> + Send + 'static,
{
    mc::INTERRUPTED.store(false, Ordering::SeqCst);
    mc::PROGRESS_DONE.store(0, Ordering::SeqCst);
    mc::PROGRESS_TOTAL.store(0, Ordering::SeqCst);
    let handle = std::thread::spawn(job);
    let mut interrupt: Option<PyErr> = None;
    let mut shown = (u64::MAX, u64::MAX);
    while !handle.is_finished() {
        py.allow_threads(|| std::thread::sleep(POLL));
        if interrupt.is_none()
            && let Err(e) = py.check_signals()
        {
            mc::INTERRUPTED.store(true, Ordering::SeqCst);
            interrupt = Some(e);
        }
        if let Some(cb) = &progress {
            let now = (
                mc::PROGRESS_DONE.load(Ordering::SeqCst),
                mc::PROGRESS_TOTAL.load(Ordering::SeqCst),
            );
            if now != shown && now.1 > 0 {
                shown = now;
                // An exception in the callback (KeyboardInterrupt raised inside it, too)
                // stops the run as Ctrl-C does: the worker must still save and be joined.
                if let Err(e) = cb.call1(py, now) {
                    mc::INTERRUPTED.store(true, Ordering::SeqCst);
                    interrupt.get_or_insert(e);
                }
            }
        }
    }
    let result = py.allow_threads(|| handle.join());
    mc::INTERRUPTED.store(false, Ordering::SeqCst);
    if let Some(cb) = &progress {
        let now = (
            mc::PROGRESS_DONE.load(Ordering::SeqCst),
            mc::PROGRESS_TOTAL.load(Ordering::SeqCst),
        );
        if now != shown && now.1 > 0 && interrupt.is_none() {
            cb.call1(py, now)?;
        }
    }
    match result {
        Err(_) => Err(PyRuntimeError::new_err(
            "sigprop: internal error (a panic in the worker thread); please report it",
        )),
        Ok(Ok(())) => match interrupt {
            // Finished before the interrupt took effect: everything is saved, and the user
            // still asked to stop.
            Some(e) => Err(e),
            None => Ok(()),
        },
        Ok(Err(api::Error::Interrupted(m))) => Err(PyKeyboardInterrupt::new_err(m.to_string())),
        Ok(Err(api::Error::Config(e))) => Err(ConfigError::new_err(one_line(&e.to_string()))),
        Ok(Err(e)) => Err(SigpropError::new_err(one_line(&e.to_string()))),
    }
}

fn one_line(s: &str) -> String {
    sigprop::config::one_line(s)
}

/// The configuration part every job shares: a TOML file, TOML text (a notebook's dict) and
/// `key=value` overrides, as the Python half passes them (a dict with every key present).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Source {
    config: Option<PathBuf>,
    toml: Option<String>,
    set: Vec<String>,
}

impl Source {
    fn into_source(self) -> ConfigSource {
        ConfigSource {
            config: self.config,
            set: self.set,
            toml: self.toml,
            inputs: None,
            max_memory: None,
        }
    }
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct SimulateArgs {
    out: Option<PathBuf>,
    samples: Option<u64>,
    seed: Option<u64>,
    threads: Option<usize>,
    resume: Option<PathBuf>,
    force: bool,
    checkpoint_secs: f64,
}

/// A Monte Carlo ensemble into `out` (see `sigprop simulate`); `progress(done, total)` is
/// called as samples finish.
#[pyfunction]
#[pyo3(signature = (cfg, args, progress=None))]
fn simulate(
    py: Python<'_>,
    cfg: Source,
    args: SimulateArgs,
    progress: Option<PyObject>,
) -> PyResult<()> {
    let o = api::simulate::SimulateOptions {
        cfg: cfg.into_source(),
        samples: args.samples,
        seed: args.seed,
        threads: args.threads,
        shard: None,
        resume: args.resume,
        out: args.out,
        checkpoint_secs: args.checkpoint_secs,
        force: args.force,
    };
    run_job(py, progress, move || api::simulate(&o))
}

/// The infinite-width theory into `out` (see `sigprop theory`).
#[pyfunction]
fn theory(py: Python<'_>, cfg: Source, out: PathBuf, force: bool) -> PyResult<()> {
    let o = api::theory::TheoryOptions {
        cfg: cfg.into_source(),
        out: Some(out),
        force,
    };
    run_job(py, None, move || api::theory(&o))
}

/// Monte Carlo against theory into `out` (see `sigprop compare`).
#[pyfunction]
fn compare(
    py: Python<'_>,
    mc: PathBuf,
    theory: PathBuf,
    out: PathBuf,
    threshold: f64,
    force: bool,
) -> PyResult<()> {
    let o = api::compare::CompareOptions {
        mc,
        theory,
        out,
        threshold,
        force,
    };
    run_job(py, None, move || api::compare(&o))
}

/// Shards of one ensemble combined into `out` (see `sigprop merge`).
#[pyfunction]
fn merge(py: Python<'_>, shards: Vec<PathBuf>, out: PathBuf, force: bool) -> PyResult<()> {
    let o = api::merge::MergeOptions { shards, out, force };
    run_job(py, None, move || api::merge(&o))
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct TrainArgs {
    out: Option<PathBuf>,
    hparams: Option<PathBuf>,
    lr: Option<f64>,
    steps: Option<u64>,
    seed: Option<u64>,
    threads: Option<u64>,
    resume: Option<PathBuf>,
    force: bool,
}

/// A training run into `out` (see `sigprop train`).
#[pyfunction]
fn train(py: Python<'_>, cfg: Source, args: TrainArgs) -> PyResult<()> {
    let o = api::train::TrainOptions {
        cfg: cfg.into_source(),
        hparams: args.hparams,
        lr: args.lr,
        steps: args.steps,
        seed: args.seed,
        threads: args.threads,
        resume: args.resume,
        out: args.out,
        force: args.force,
    };
    run_job(py, None, move || api::train(&o))
}

fn choice<T: ValueEnum>(flag: &str, s: &str) -> PyResult<T> {
    T::from_str(s, true).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        ConfigError::new_err(format!(
            "{flag} `{s}`: expected one of {}",
            allowed.join(", ")
        ))
    })
}

#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct HparamsArgs {
    out: PathBuf,
    family: String,
    optimizer: String,
    base_width: usize,
    widths: String,
    format: String,
    preset: String,
    lr: Option<f64>,
    wd: Option<f64>,
    no_m_factors: bool,
    anchor: String,
}

/// The width-scaling table into the file `out` (see `sigprop hparams`).
#[pyfunction]
fn hparams(py: Python<'_>, cfg: Source, args: HparamsArgs) -> PyResult<()> {
    let o = api::hparams::HparamsOptions {
        family: args.family,
        optimizer: choice("optimizer", &args.optimizer)?,
        base_width: args.base_width,
        widths: args.widths,
        format: choice("format", &args.format)?,
        preset: args.preset,
        cfg: cfg.into_source(),
        lr: args.lr,
        wd: args.wd,
        no_m_factors: args.no_m_factors,
        anchor: choice("anchor", &args.anchor)?,
        measure: false,
        measure_widths: "128,256,512,1024".into(),
        samples: 300,
        threads: None,
        coord_check: false,
        coord_widths: "64,128,256,512,1024".into(),
        coord_samples: 4,
        coord_lr_scale: 1e-3,
        out: Some(args.out),
    };
    run_job(py, None, move || api::hparams(&o))
}

/// What [`import_config`] returns: the family, the TOML text, each (key, value as JSON),
/// and the warnings.
type ImportResult = (String, String, Vec<(String, String)>, Vec<String>);

/// A Hugging Face config.json mapped to sigprop keys: (family, TOML text, [(key, value as
/// JSON)], warnings). `path` is a file, or `text` the file's contents.
#[pyfunction]
#[pyo3(signature = (path=None, text=None))]
fn import_config(path: Option<PathBuf>, text: Option<String>) -> PyResult<ImportResult> {
    let (imported, origin) = match (&path, &text) {
        (Some(p), _) => (sigprop::import::from_file(p), p.display().to_string()),
        (None, Some(t)) => (sigprop::import::from_json(t, "config"), "a dict".into()),
        (None, None) => {
            return Err(ConfigError::new_err(
                "from_config: give the path of a config.json or its dict",
            ));
        }
    };
    let imported = imported.map_err(|e| ConfigError::new_err(one_line(&e.to_string())))?;
    let values = imported
        .values
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap_or_default()))
        .collect();
    Ok((
        imported.family.to_string(),
        imported.to_toml(&origin),
        values,
        imported.warnings.clone(),
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Python owns SIGINT: the library must not install its own handler in this process.
    mc::EXTERNAL_INTERRUPTS.store(true, Ordering::SeqCst);
    m.add("SigpropError", m.py().get_type::<SigpropError>())?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(theory, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(merge, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(hparams, m)?)?;
    m.add_function(wrap_pyfunction!(import_config, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
