//! The trainer's checkpoint: parameters, optimizer state and the step, in one little-endian
//! binary file written atomically (temporary file, then rename), so Ctrl-C or a crash
//! mid-write leaves the previous checkpoint intact. Values are stored as f64 whatever the
//! trainer's precision (widening f32 is exact, and so is narrowing back), so a resumed run
//! continues exactly where the uninterrupted one would be.
//!
//! Layout: magic `SIGPROPT`, version u32, step u64, optimizer updates t u64, kind u8
//! (0 sgd, 1 adamw), count u64, then per parameter: name (u64 length + UTF-8), rows u64,
//! cols u64, values; then, for AdamW, m and v in the same order (values only).

use std::path::Path;

use ndarray::Array2;

use super::TrainError;
use super::optim::{Kind, Optimizer};
use crate::model::{Params, Real};

const MAGIC: &[u8; 8] = b"SIGPROPT";
const VERSION: u32 = 1;

/// Writes the checkpoint of `params` and `opt` after `step` updates.
pub fn save<F: Real>(
    path: &Path,
    step: usize,
    params: &Params<F>,
    opt: &Optimizer<F>,
) -> Result<(), TrainError> {
    // Sized up front: the file is ~24 bytes per parameter (value, m, v) and growing a
    // buffer of that size by doubling cost more than writing it.
    let entries: usize = params.list.iter().map(|p| p.value.len()).sum::<usize>() * 3;
    let mut b = Vec::with_capacity(8 * entries + 64 * params.list.len() + 64);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
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
    crate::stats::csv::write_atomic(path, &b).map_err(|e| TrainError::Checkpoint {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| "file is truncated".to_string())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn fill<F: Real>(&mut self, a: &mut Array2<F>) -> Result<(), String> {
        for x in a.iter_mut() {
            *x = F::of(f64::from_bits(self.u64()?));
        }
        Ok(())
    }
}

/// Loads a checkpoint into `params` and `opt`, which must come from the same configuration
/// (names and shapes are checked); returns the step.
pub fn load<F: Real>(
    path: &Path,
    params: &mut Params<F>,
    opt: &mut Optimizer<F>,
) -> Result<usize, TrainError> {
    let err = |msg: String| TrainError::Checkpoint {
        path: path.display().to_string(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut r = Reader { b: &bytes, at: 0 };
    if r.take(8).map_err(&err)? != MAGIC {
        return Err(err("not a sigprop trainer checkpoint".into()));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(r.take(4).map_err(&err)?);
    if u32::from_le_bytes(v) != VERSION {
        return Err(err(format!(
            "version {} (this build reads {VERSION})",
            u32::from_le_bytes(v)
        )));
    }
    let step = r.u64().map_err(&err)? as usize;
    let t = r.u64().map_err(&err)?;
    let kind = match r.take(1).map_err(&err)?[0] {
        0 => Kind::Sgd,
        _ => Kind::AdamW,
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
        let len = r.u64().map_err(&err)? as usize;
        let name = String::from_utf8_lossy(r.take(len).map_err(&err)?).into_owned();
        let (rows, cols) = (r.u64().map_err(&err)?, r.u64().map_err(&err)?);
        if name != p.name || (rows as usize, cols as usize) != p.value.dim() {
            return Err(err(format!(
                "tensor {name} ({rows} × {cols}) does not match {} {:?} of the configuration",
                p.name,
                p.value.dim()
            )));
        }
        r.fill(&mut p.value).map_err(&err)?;
    }
    for a in opt.m.iter_mut().chain(opt.v.iter_mut()) {
        r.fill(a).map_err(&err)?;
    }
    opt.t = t;
    Ok(step)
}
