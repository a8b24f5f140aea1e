//! Probe inputs (SPEC §1, §3): the S sequences × T tokens that stay fixed for the whole
//! ensemble. Theory is conditioned on them; the ensemble is over parameters.
//!
//! - `gaussian`: x_{σ,t} = √ρ c_σ + √(1−ρ) e_{σ,t} with c, e ~ N(0, I), so tokens of one
//!   sequence have correlation ρ and the input kernel G⁰ = x·x/n_in is about 1 on the
//!   diagonal, drawn from their own seed.
//! - `tokens`: ids given in the config, or uniform over the vocabulary from the seed.
//! - `file`: CSV `sequence,token,x0,…` (dense stem) or `sequence,token,id`.

use std::path::Path;

use ndarray::Array2;
use rand::Rng;
use rand_distr::StandardNormal;
use thiserror::Error;

use crate::config::{Config, InputKind, Stem};
use crate::model::Probe;
use crate::model::init;
use crate::stats;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("inputs file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("inputs file {path}, line {line}: {msg}")]
    Line {
        path: String,
        line: u64,
        msg: String,
    },
}

/// Keeps probe streams apart from the parameter streams even when the seeds coincide.
const INPUT_DOMAIN: u64 = 0x5150_1A7E_1DEA_0001;

/// Builds the probe set a configuration asks for; a file fixes the config's input shape.
/// An encoder–decoder model also gets its decoder's probe ([`decoder_probe`]).
pub fn probe(cfg: &mut Config) -> Result<Probe, InputError> {
    let p = encoder_probe(cfg)?;
    Ok(with_decoder(cfg, p))
}

/// An encoder–decoder's probe from its encoder's (as `inputs.csv` holds it): the padding
/// mask from `inputs.pad_id` and the decoder's probe ([`decoder_probe`]), both functions of
/// the configuration and the encoder's probe, so a run folder's probe is rebuilt exactly.
/// Unchanged for an encoder-only model.
pub fn with_decoder(cfg: &Config, mut p: Probe) -> Probe {
    if cfg.model.has_decoder() {
        p.keep = cfg.inputs.pad_id.and_then(|pad| {
            let ids = p.ids.as_ref()?;
            Some(ids.iter().map(|&id| id != pad).collect())
        });
        p.decoder = Some(Box::new(decoder_probe(cfg, &p)));
    }
    p
}

/// The decoder's probe: the same S sequences, T_dec tokens each.
///
/// - Token ids: `inputs.decoder_ids`, else BART's teacher-forcing input, the encoder's ids
///   shifted right by one behind `inputs.bos_id` (fairseq's `prev_output_tokens`): row σ
///   is [bos, id_{σ,0}, …, id_{σ,T_dec−2}]; positions past the encoder's T − 1 are drawn
///   uniformly from the vocabulary (stream 3 of `inputs.seed`).
/// - Vectors (dense stem): Gaussian like the encoder's `gaussian` probe, with the same
///   correlation ρ within a sequence, from their own stream (2 of `inputs.seed`), so the
///   decoder's tokens are independent of the encoder's.
pub fn decoder_probe(cfg: &Config, enc: &Probe) -> Probe {
    let inp = &cfg.inputs;
    let (s, t_dec) = (enc.sequences, cfg.model.decoder_tokens);
    let (x, ids) = match &enc.ids {
        Some(enc_ids) => {
            let ids = match &inp.decoder_ids {
                Some(rows) => rows.iter().flatten().copied().collect(),
                None => {
                    let t = enc.tokens;
                    let mut rng = init::stream(inp.seed ^ INPUT_DOMAIN, 3);
                    let mut ids = Vec::with_capacity(s * t_dec);
                    for sq in 0..s {
                        ids.push(inp.bos_id);
                        for tk in 1..t_dec {
                            ids.push(if tk - 1 < t {
                                enc_ids[sq * t + tk - 1]
                            } else {
                                rng.random_range(0..inp.vocab)
                            });
                        }
                    }
                    ids
                }
            };
            (None, Some(ids))
        }
        None => {
            let n = enc.x.as_ref().map_or(inp.dim, |x| x.ncols());
            let mut rng = init::stream(inp.seed ^ INPUT_DOMAIN, 2);
            (Some(gaussian(&mut rng, s, t_dec, n, inp.correlation)), None)
        }
    };
    Probe {
        sequences: s,
        tokens: t_dec,
        x,
        ids,
        decoder: None,
        keep: None,
    }
}

/// S sequences × T tokens of x = √ρ c_σ + √(1−ρ) e_{σ,t}, c, e ~ N(0, I_n).
fn gaussian(rng: &mut init::Stream, s: usize, t: usize, n: usize, rho: f64) -> Array2<f64> {
    let mut x = Array2::zeros((s * t, n));
    for sq in 0..s {
        let common: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        for tk in 0..t {
            for (j, c) in common.iter().enumerate() {
                let e: f64 = rng.sample(StandardNormal);
                x[[sq * t + tk, j]] = rho.sqrt() * c + (1.0 - rho).sqrt() * e;
            }
        }
    }
    x
}

fn encoder_probe(cfg: &mut Config) -> Result<Probe, InputError> {
    let inp = cfg.inputs.clone();
    match &inp.kind {
        InputKind::Gaussian => {
            let mut rng = init::stream(inp.seed ^ INPUT_DOMAIN, 0);
            let (s, t, n) = (inp.sequences, inp.tokens, inp.dim);
            let x = gaussian(&mut rng, s, t, n, inp.correlation);
            Ok(Probe {
                sequences: s,
                tokens: t,
                x: Some(x),
                ids: None,
                decoder: None,
                keep: None,
            })
        }
        InputKind::Tokens => {
            let ids: Vec<usize> = match &inp.ids {
                Some(rows) => rows.iter().flatten().copied().collect(),
                None => {
                    let mut rng = init::stream(inp.seed ^ INPUT_DOMAIN, 1);
                    (0..inp.sequences * inp.tokens)
                        .map(|_| rng.random_range(0..inp.vocab))
                        .collect()
                }
            };
            Ok(Probe {
                sequences: inp.sequences,
                tokens: inp.tokens,
                x: None,
                ids: Some(ids),
                decoder: None,
                keep: None,
            })
        }
        InputKind::File(path) => {
            let p = read_file(path, cfg.model.stem, cfg.inputs.vocab)?;
            let dim = p.x.as_ref().map(|x| x.ncols());
            if let Some(d) = dim
                && cfg.is_explicit("inputs.dim")
                && d != cfg.inputs.dim
            {
                return Err(InputError::File {
                    path: path.display().to_string(),
                    msg: format!(
                        "rows have {d} input columns but inputs.dim = {}: the dense stem's input dimension must match",
                        cfg.inputs.dim
                    ),
                });
            }
            cfg.set_input_shape(p.sequences, p.tokens, dim);
            Ok(p)
        }
    }
}

/// Reads a probe file, checking every line.
pub fn read_file(path: &Path, stem: Stem, vocab: usize) -> Result<Probe, InputError> {
    let name = path.display().to_string();
    let file_err = |msg: String| InputError::File {
        path: name.clone(),
        msg,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .map_err(|e| file_err(e.to_string()))?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| file_err(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let expect_ids = stem == Stem::Embedding;
    let width = header.len().saturating_sub(2);
    let header_ok = header.len() >= 3
        && header[0] == "sequence"
        && header[1] == "token"
        && if expect_ids {
            header.len() == 3 && header[2] == "id"
        } else {
            header[2..]
                .iter()
                .enumerate()
                .all(|(i, h)| *h == format!("x{i}"))
        };
    if !header_ok {
        let want = if expect_ids {
            "sequence,token,id"
        } else {
            "sequence,token,x0,x1,…"
        };
        return Err(file_err(format!(
            "header is `{}`, expected `{want}` for the {:?} stem",
            header.join(","),
            stem
        )));
    }
    let mut rows: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| file_err(super::config::one_line(&e.to_string())))?;
        let line = rec.position().map_or(0, |p| p.line());
        let lerr = |msg: String| InputError::Line {
            path: name.clone(),
            line,
            msg,
        };
        if rec.len() != header.len() {
            return Err(lerr(format!(
                "{} fields, expected {}",
                rec.len(),
                header.len()
            )));
        }
        let idx = |i: usize| {
            rec[i]
                .parse::<usize>()
                .map_err(|_| lerr(format!("`{}` is not a whole number ≥ 0", &rec[i])))
        };
        let (sq, tk) = (idx(0)?, idx(1)?);
        let mut vals = Vec::with_capacity(width);
        for i in 2..rec.len() {
            let v = if expect_ids {
                let id = idx(i)?;
                if id >= vocab {
                    return Err(lerr(format!(
                        "token id {id} is not below inputs.vocab = {vocab}"
                    )));
                }
                id as f64
            } else {
                let v: f64 = rec[i]
                    .parse()
                    .map_err(|_| lerr(format!("`{}` is not a number", &rec[i])))?;
                if !v.is_finite() {
                    return Err(lerr(format!("`{}` is not finite", &rec[i])));
                }
                v
            };
            vals.push(v);
        }
        rows.push((sq, tk, vals));
    }
    if rows.is_empty() {
        return Err(file_err("no data rows".into()));
    }
    let s = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
    let t = rows.iter().map(|r| r.1).max().unwrap_or(0) + 1;
    if rows.len() != s * t {
        return Err(file_err(format!(
            "{} rows do not fill {s} sequences × {t} tokens: every (sequence, token) pair must appear once",
            rows.len()
        )));
    }
    let mut seen = vec![false; s * t];
    for r in &rows {
        let d = r.0 * t + r.1;
        if seen[d] {
            return Err(file_err(format!(
                "(sequence {}, token {}) appears twice",
                r.0, r.1
            )));
        }
        seen[d] = true;
    }
    rows.sort_by_key(|r| (r.0, r.1));
    if expect_ids {
        let ids = rows.iter().map(|r| r.2[0] as usize).collect();
        Ok(Probe {
            sequences: s,
            tokens: t,
            x: None,
            ids: Some(ids),
            decoder: None,
            keep: None,
        })
    } else {
        let mut x = Array2::zeros((s * t, width));
        for (d, r) in rows.iter().enumerate() {
            for (j, v) in r.2.iter().enumerate() {
                x[[d, j]] = *v;
            }
        }
        Ok(Probe {
            sequences: s,
            tokens: t,
            x: Some(x),
            ids: None,
            decoder: None,
            keep: None,
        })
    }
}

/// The probe set in the file format above (what every run writes as `inputs.csv`).
pub fn to_csv(p: &Probe) -> anyhow::Result<Vec<u8>> {
    let pos = |d: usize| [(d / p.tokens).to_string(), (d % p.tokens).to_string()];
    match (&p.x, &p.ids) {
        (Some(x), _) => {
            let cols: Vec<String> = (0..x.ncols()).map(|j| format!("x{j}")).collect();
            let header: Vec<&str> = ["sequence", "token"]
                .into_iter()
                .chain(cols.iter().map(String::as_str))
                .collect();
            let rows = x.rows().into_iter().enumerate().map(|(d, row)| {
                let vals = row.iter().map(|v| v.to_string());
                pos(d).into_iter().chain(vals).collect::<Vec<_>>()
            });
            stats::table::to_bytes(&header, rows)
        }
        (None, Some(ids)) => {
            let rows = ids.iter().enumerate().map(|(d, id)| {
                let [s, t] = pos(d);
                [s, t, id.to_string()]
            });
            stats::table::to_bytes(&["sequence", "token", "id"], rows)
        }
        (None, None) => Ok(Vec::new()),
    }
}
