//! Per-layer statistics: per-sample slots, their streaming sums, and the rows of the CSV
//! schema of SPEC §3 (one schema for Monte Carlo and theory alike).

pub mod accumulate;
pub mod binfile;
pub mod csv;
pub mod fit;
pub mod observable;
pub mod recorder;
pub mod table;

pub use accumulate::{Accumulator, Chunk};
pub use csv::Row;
pub use observable::{Observable, Site};
pub use recorder::{Recipe, Recorder, RowKey};
