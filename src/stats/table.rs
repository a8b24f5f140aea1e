//! The small CSV tables beside the long format (`train.csv`, `transfer.csv`, `drift.csv`,
//! `inputs.csv`): written and read through the `csv` crate, which quotes and splits fields.
//! Callers format each number themselves, so the files keep their exact digits (Debug's
//! shortest round trip for the trainer's losses, Display for the probe's inputs).

use anyhow::Context;

/// The bytes of a CSV table with the given header and rows.
pub fn to_bytes<R, F>(header: &[&str], rows: impl IntoIterator<Item = R>) -> anyhow::Result<Vec<u8>>
where
    R: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut w = ::csv::WriterBuilder::new()
        .flexible(false)
        .from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    w.into_inner().context("cannot finish a CSV table")
}

/// A CSV table as read: its header (the fields joined by commas) and its rows.
pub struct Table {
    pub header: String,
    /// Each row's fields and its 1-based line number.
    pub rows: Vec<(u64, Vec<String>)>,
}

/// A CSV table's header (its fields joined by commas, to compare with the expected one) and
/// its rows as fields with their 1-based line numbers. Blank lines are skipped.
pub fn read(text: &str) -> anyhow::Result<Table> {
    let mut r = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = r.records();
    let header = match records.next().transpose()? {
        Some(h) => h.iter().collect::<Vec<_>>().join(","),
        None => String::new(),
    };
    let mut rows = Vec::new();
    for rec in records {
        let rec = rec?;
        let line = rec.position().map_or(0, |p| p.line());
        rows.push((line, rec.iter().map(str::to_string).collect()));
    }
    Ok(Table { header, rows })
}
