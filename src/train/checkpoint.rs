//! The trainer's checkpoint: parameters, optimizer state and the step, in one little-endian
//! binary file written atomically (temporary file, then rename), so Ctrl-C or a crash
//! mid-write leaves the previous checkpoint intact. Values are stored as f64 whatever the
//! trainer's precision (widening f32 is exact, and so is narrowing back), so a resumed run
//! continues exactly where the uninterrupted one would be.
//!
//! The file is the checked container of [`crate::stats::binfile`] (magic `SIGPROPT`, version,
//! length, checksum), so a truncated or corrupted checkpoint is an error naming the file.
//! Payload: the run's fingerprint u64 (0 = none), step u64, optimizer updates t u64, kind u8 (0 sgd, 1 adamw), count u64, then per
//! parameter: name (u64 length + UTF-8), rows u64, cols u64, values; then, for AdamW, m and v
//! in the same order (values only).

use std::path::Path;

use ndarray::Array2;

use super::TrainError;
use super::optim::{Kind, Optimizer};
use crate::model::{Params, Real};
use crate::stats::binfile::{self, Cursor};

const MAGIC: &[u8; 8] = b"SIGPROPT";
/// Version 2: the payload of version 1 inside the checked container.
const VERSION: u32 = 2;

/// Writes the checkpoint of `params` and `opt` after `step` updates, for the run whose
/// fingerprint is `fingerprint` (0 = not tied to a run folder).
pub fn save<F: Real>(
    path: &Path,
    step: usize,
    params: &Params<F>,
    opt: &Optimizer<F>,
    fingerprint: u64,
) -> Result<(), TrainError> {
    // Sized up front: the file is ~24 bytes per parameter (value, m, v) and growing a
    // buffer of that size by doubling cost more than writing it.
    let entries: usize = params.list.iter().map(|p| p.value.len()).sum::<usize>() * 3;
    let mut b = Vec::with_capacity(8 * entries + 64 * params.list.len() + 64);
    b.extend_from_slice(&fingerprint.to_le_bytes());
    b.extend_from_slice(&(step as u64).to_le_bytes());
    b.extend_from_slice(&opt.t.to_le_bytes());
    b.push(match opt.kind {
        Kind::Sgd => 0,
        Kind::AdamW => 1,
    });
    b.extend_from_slice(&(params.list.len() as u64).to_le_bytes());
    let values = |b: &mut Vec<u8>, a: &Array2<F>| {
        for x in a.iter() {
            b.extend_from_slice(&x.wide().to_le_bytes());
        }
    };
    for p in &params.list {
        b.extend_from_slice(&(p.name.len() as u64).to_le_bytes());
        b.extend_from_slice(p.name.as_bytes());
        b.extend_from_slice(&(p.value.nrows() as u64).to_le_bytes());
        b.extend_from_slice(&(p.value.ncols() as u64).to_le_bytes());
        values(&mut b, &p.value);
    }
    for a in opt.m.iter().chain(opt.v.iter()) {
        values(&mut b, a);
    }
    binfile::write(path, MAGIC, VERSION, &b).map_err(|e| TrainError::Checkpoint {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

fn fill<F: Real>(r: &mut Cursor, a: &mut Array2<F>) -> Result<(), String> {
    for x in a.iter_mut() {
        *x = F::of(r.f64()?);
    }
    Ok(())
}

/// Loads a checkpoint into `params` and `opt`, which must come from the same configuration
/// (names and shapes are checked); returns the step and the run's fingerprint.
pub fn load<F: Real>(
    path: &Path,
    params: &mut Params<F>,
    opt: &mut Optimizer<F>,
) -> Result<(usize, u64), TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::Checkpoint {
        path: path.display().to_string(),
        msg: format!("cannot read: {e}"),
    })?;
    restore(bytes, path, params, opt)
}

/// [`load`] from the file's bytes already in memory; `path` names it in errors.
pub fn restore<F: Real>(
    bytes: Vec<u8>,
    path: &Path,
    params: &mut Params<F>,
    opt: &mut Optimizer<F>,
) -> Result<(usize, u64), TrainError> {
    let err = |msg: String| TrainError::Checkpoint {
        path: path.display().to_string(),
        msg,
    };
    let bytes = binfile::decode(bytes, path, MAGIC, VERSION, "trainer checkpoint")
        .map_err(|e| err(e.msg))?;
    let mut r = Cursor::new(&bytes);
    let fingerprint = r.u64().map_err(&err)?;
    let step = r.u64().map_err(&err)? as usize;
    let t = r.u64().map_err(&err)?;
    let kind = match r.take(1).map_err(&err)?[0] {
        0 => Kind::Sgd,
        1 => Kind::AdamW,
        k => return Err(err(format!("unknown optimizer kind {k}"))),
    };
    if kind != opt.kind {
        return Err(err(format!(
            "saved with optimizer {}, but the run uses {}",
            kind.name(),
            opt.kind.name()
        )));
    }
    let count = r.u64().map_err(&err)? as usize;
    if count != params.list.len() {
        return Err(err(format!(
            "{count} parameter tensors, but the configuration has {}",
            params.list.len()
        )));
    }
    for p in params.list.iter_mut() {
        let name = r.string().map_err(&err)?;
        let (rows, cols) = (r.u64().map_err(&err)?, r.u64().map_err(&err)?);
        if name != p.name || (rows as usize, cols as usize) != p.value.dim() {
            return Err(err(format!(
                "tensor {name} ({rows} × {cols}) does not match {} {:?} of the configuration",
                p.name,
                p.value.dim()
            )));
        }
        fill(&mut r, &mut p.value).map_err(&err)?;
    }
    for a in opt.m.iter_mut().chain(opt.v.iter_mut()) {
        fill(&mut r, a).map_err(&err)?;
    }
    if r.remaining() != 0 {
        return Err(err(format!(
            "{} bytes more than the configuration's parameters hold",
            r.remaining()
        )));
    }
    opt.t = t;
    Ok((step, fingerprint))
}
