//! The long-format CSV of SPEC §3, shared by Monte Carlo and theory:
//! `source,config,width,heads,layer,block,site,observable,i,j,value,stderr,samples`.
//! Matrix observables are symmetric in (i, j) and written for i ≤ j; summaries have
//! i = j = −1; per-token rows have i = j = δ.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::observable::{Observable, Site};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub source: String,
    pub config: String,
    pub width: usize,
    pub heads: usize,
    pub layer: usize,
    pub block: String,
    pub site: String,
    pub observable: String,
    pub i: i64,
    pub j: i64,
    pub value: f64,
    /// NaN means undefined (fewer than two samples, or sums that overflowed); it is
    /// written as an empty field, never as a number, and an empty field reads back as NaN.
    #[serde(
        serialize_with = "empty_if_undefined",
        deserialize_with = "nan_if_empty"
    )]
    pub stderr: f64,
    pub samples: u64,
}

impl Row {
    /// Whether the row is `observable` at `site` (the columns stay strings in the file; this
    /// compares against the typed names' CSV strings).
    pub fn is(&self, site: Site, observable: Observable) -> bool {
        site == self.site.as_str() && observable == self.observable
    }
}

/// Writes a non-finite number as an empty field: an undefined error must not read as a value.
pub fn empty_if_undefined<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_str("")
    }
}

/// Reads an empty (or non-finite) field as NaN, "undefined".
pub fn nan_if_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    if t.is_empty() {
        return Ok(f64::NAN);
    }
    let x: f64 = t
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("stderr `{t}` is not a number")))?;
    Ok(if x.is_finite() { x } else { f64::NAN })
}

/// Writes rows to `path` atomically (a temporary file, then a rename).
pub fn write(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    if rows.is_empty() {
        w.write_record([
            "source",
            "config",
            "width",
            "heads",
            "layer",
            "block",
            "site",
            "observable",
            "i",
            "j",
            "value",
            "stderr",
            "samples",
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

/// Reads a stats CSV, naming the file and line of a malformed row.
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for rec in r.deserialize() {
        let row: Row = rec.map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                crate::config::one_line(&e.to_string())
            )
        })?;
        out.push(row);
    }
    Ok(out)
}

/// Writes bytes to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file and an interrupted write leaves the old one intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undefined_stderr_is_an_empty_field_and_reads_back_as_nan() {
        let dir = std::env::temp_dir().join(format!("sigprop-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.csv");
        let row = |stderr: f64| Row {
            source: "mc".into(),
            config: "c".into(),
            width: 8,
            heads: 1,
            layer: 1,
            block: "stem".into(),
            site: "resid".into(),
            observable: "kernel_diag".into(),
            i: -1,
            j: -1,
            value: 1.5,
            stderr,
            samples: 1,
        };
        write(&path, &[row(f64::NAN), row(f64::INFINITY), row(0.25)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let fields: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(11).unwrap())
            .collect();
        assert_eq!(fields, ["", "", "0.25"], "{text}");
        let back = read(&path).unwrap();
        assert!(back[0].stderr.is_nan() && back[1].stderr.is_nan());
        assert_eq!(back[2].stderr, 0.25);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
