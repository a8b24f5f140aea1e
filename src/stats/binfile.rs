//! The one container for sigprop's binary files (`moments.bin`, the trainer's
//! `checkpoint.bin`): a header that says what the file is and how long it must be, the
//! payload, and a checksum over everything before it.
//!
//! ```text
//! magic [8] | version u32 | payload length u64 | payload | FNV-1a 64 of all preceding bytes
//! ```
//!
//! The reader checks the magic, the version and the length against the file's size before it
//! allocates anything the file claims, then the checksum, so a truncated file, a flipped bit
//! or a file of another kind is an error naming the file, never a panic, an absurd allocation
//! or silently wrong numbers. Payload readers go through [`Cursor`], whose every read is
//! bounds-checked.

use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// A binary file that cannot be used, and why.
#[derive(Debug, Error)]
#[error("{path}: {msg}")]
pub struct BinError {
    pub path: String,
    pub msg: String,
}

impl BinError {
    pub fn new(path: &Path, msg: impl Into<String>) -> Self {
        BinError {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }
}

const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 8;

/// FNV-1a, 64 bit: stable across platforms and Rust versions (unlike `DefaultHasher`), which
/// matters because the value is stored in files.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Wraps `payload` in the container and writes it atomically.
pub fn write(path: &Path, magic: &[u8; 8], version: u32, payload: &[u8]) -> anyhow::Result<()> {
    let mut b = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    b.extend_from_slice(magic);
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(payload);
    let sum = Fnv::default().bytes(&b).finish();
    b.extend_from_slice(&sum.to_le_bytes());
    super::csv::write_atomic(path, &b)
}

/// Reads and checks a container file; returns its payload. `what` names the kind of file in
/// errors ("moments file", "trainer checkpoint").
pub fn read(path: &Path, magic: &[u8; 8], version: u32, what: &str) -> Result<Vec<u8>, BinError> {
    let err = |msg: String| BinError::new(path, msg);
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let meta = f.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a file".into()));
    }
    let size = meta.len();
    // The header is checked before the rest is read, so a file that announces another size
    // costs nothing to refuse.
    let mut head = [0u8; HEADER];
    if size < (HEADER + TRAILER) as u64 || f.read_exact(&mut head).is_err() {
        return Err(err(format!("not a sigprop {what} (only {size} bytes)")));
    }
    let len = check_header(&head, magic, version, what).map_err(&err)?;
    if len.checked_add((HEADER + TRAILER) as u64) != Some(size) {
        return Err(err(truncated(size, len)));
    }
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(&head);
    f.read_to_end(&mut b)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    decode(b, path, magic, version, what)
}

/// Checks a whole container held in memory (what [`read`] does after reading the file);
/// `path` names it in errors.
pub fn decode(
    mut b: Vec<u8>,
    path: &Path,
    magic: &[u8; 8],
    version: u32,
    what: &str,
) -> Result<Vec<u8>, BinError> {
    let err = |msg: String| BinError::new(path, msg);
    let size = b.len() as u64;
    if b.len() < HEADER + TRAILER {
        return Err(err(format!("not a sigprop {what} (only {size} bytes)")));
    }
    let len = check_header(&b[..HEADER], magic, version, what).map_err(&err)?;
    if len.checked_add((HEADER + TRAILER) as u64) != Some(size) {
        return Err(err(truncated(size, len)));
    }
    let body = b.len() - TRAILER;
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&b[body..]);
    if Fnv::default().bytes(&b[..body]).finish() != u64::from_le_bytes(stored) {
        return Err(err(format!("corrupt {what}: checksum mismatch")));
    }
    b.truncate(body);
    b.drain(..HEADER);
    Ok(b)
}

fn truncated(size: u64, len: u64) -> String {
    format!("truncated or corrupt: {size} bytes, but its header announces {len} bytes of data")
}

/// Magic and version; returns the announced payload length.
fn check_header(head: &[u8], magic: &[u8; 8], version: u32, what: &str) -> Result<u64, String> {
    if &head[..8] != magic {
        return Err(format!(
            "not a sigprop {what}, or one from an older version"
        ));
    }
    let ver = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if ver != version {
        return Err(format!(
            "{what} format version {ver}; this build reads version {version}"
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    Ok(u64::from_le_bytes(len))
}

/// Bounds-checked little-endian reads from a payload.
pub struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| "data ends early".to_string())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// A length that must fit in what is left, `unit` bytes per element: checked before the
    /// caller allocates for it.
    pub fn len(&mut self, unit: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let left = self.remaining() as u64;
        match n.checked_mul(unit.max(1) as u64) {
            Some(bytes) if bytes <= left => Ok(n as usize),
            _ => Err(format!("a count of {n} does not fit in the data")),
        }
    }

    pub fn string(&mut self) -> Result<String, String> {
        let n = self.len(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
}

/// Little-endian writes matching [`Cursor`].
pub trait Put {
    fn put_u64(&mut self, v: u64);
    fn put_f64(&mut self, v: f64);
    fn put_str(&mut self, s: &str);
}

impl Put for Vec<u8> {
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_f64(&mut self, v: f64) {
        self.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn put_str(&mut self, s: &str) {
        self.put_u64(s.len() as u64);
        self.extend_from_slice(s.as_bytes());
    }
}
