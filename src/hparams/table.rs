//! The hyperparameter table file (SPEC §6): what `sigprop hparams --format
//! json` writes and `sigprop train --hparams FILE` reads, one type for both so the two
//! sides cannot drift apart. One object per target width; weight decay is decoupled,
//! θ ← θ − lr_g·wd_g·θ each step.
//!
//! ```json
//! {"family":"ntk","s":0.0,"optimizer":"adamw","base_width":256,"width":512,"mlp_mult":4,
//!  "lr":0.001,"weight_decay":0.1,
//!  "groups":{"q":{"init_variance":0.001,"lr":0.00002,"weight_decay":0.1}}}
//! ```
//!
//! [`Setup::table`](super::Setup::table) fills in every field. A hand-written file may
//! leave any of them out and list only some groups: a missing top-level field reads as 0
//! or empty (what that means is on each field), and a missing group, or a group's missing
//! number, leaves that group to the config's initialization and the table's global
//! `lr`/`weight_decay`. The field names are a public interface: files in existing run
//! directories must keep parsing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::Group;

/// A table file that cannot be read or does not validate: one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("hparams {path}: {msg}")]
pub struct TableError {
    pub path: String,
    pub msg: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HparamTable {
    /// The family's name (informational).
    pub family: String,
    /// s of the head scaling (informational).
    pub s: f64,
    /// `sgd` or `adamw`; empty = the config's `train.optimizer`.
    pub optimizer: String,
    /// The width the rates are anchored at (informational).
    pub base_width: usize,
    /// The width the table was made for; 0 = unchecked.
    pub width: usize,
    /// The model's M the table was made for; 0 = unchecked.
    pub mlp_mult: usize,
    /// The global η the groups' rates were scaled from. The trainer uses it in place of
    /// `train.lr`: the reference rate it reports, and the base of the rate of every group
    /// without its own `lr`. Left out (read as 0), the trainer keeps `train.lr`.
    pub lr: f64,
    /// The global wd (η·wd is what the paper keeps O(1)). The trainer uses it in place of
    /// `train.weight_decay` for every group without its own `weight_decay`.
    pub weight_decay: f64,
    /// Keyed by group name: stem, pe, cls, q, k, v, u, w, x, head, bias.
    pub groups: BTreeMap<String, GroupHparams>,
    /// The tied head's output rescale N_rescale (1.33)/(1.34) at this width: n^{-(1+s)/2},
    /// 1 in `standard` (Table II 2 E's "output N" row). Informational: the model reads it
    /// from its configuration. Absent for a model without a tied head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_rescale: Option<f64>,
}

/// One group's numbers. Always all three in a table `sigprop hparams` makes; `None` (absent
/// or `null` in the file) = not given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupHparams {
    /// The variance of each entry at initialization (not a C to divide by fan-in).
    pub init_variance: Option<f64>,
    /// The group's actual learning rate η·λ_g.
    pub lr: Option<f64>,
    /// wd_g, applied as θ ← θ − lr_g·wd_g·θ.
    pub weight_decay: Option<f64>,
}

impl HparamTable {
    /// Reads and validates one table from a file; errors are one line naming the file.
    pub fn read(path: &Path) -> Result<HparamTable, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// [`read`](Self::read) from text already in memory.
    pub fn parse(text: &str) -> Result<HparamTable, TableError> {
        Self::parse_named(text, "<text>")
    }

    fn parse_named(text: &str, path: &str) -> Result<HparamTable, TableError> {
        let err = |msg: String| TableError {
            path: path.to_string(),
            msg,
        };
        // `sigprop hparams --format json --widths a,b` writes an array, one table per
        // width; a run trains one width, so name the widths it could take instead.
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) {
            let widths: Vec<String> = items
                .iter()
                .filter_map(|t| t.get("width").and_then(serde_json::Value::as_u64))
                .map(|w| w.to_string())
                .collect();
            return Err(err(format!(
                "holds {} tables (widths {}); training needs the table of one width: make it with `sigprop hparams --format json --widths N`",
                items.len(),
                if widths.is_empty() {
                    "unknown".to_string()
                } else {
                    widths.join(", ")
                }
            )));
        }
        let hp: HparamTable =
            serde_json::from_str(text).map_err(|e| err(crate::config::one_line(&e.to_string())))?;
        hp.validate().map_err(err)?;
        Ok(hp)
    }

    /// Unknown group names and negative or non-finite numbers are errors: a typo must not
    /// silently fall back to the config's values.
    pub fn validate(&self) -> Result<(), String> {
        let names: Vec<&str> = Group::ALL.iter().map(|g| g.name()).collect();
        if !self.optimizer.is_empty() && self.optimizer != "sgd" && self.optimizer != "adamw" {
            return Err(format!(
                "optimizer = \"{}\": expected \"sgd\" or \"adamw\"",
                self.optimizer
            ));
        }
        for (name, g) in &self.groups {
            if !names.contains(&name.as_str()) {
                return Err(format!(
                    "groups.{name}: unknown group; expected one of {}",
                    names.join(", ")
                ));
            }
            for (field, v) in [
                ("init_variance", g.init_variance),
                ("lr", g.lr),
                ("weight_decay", g.weight_decay),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(format!(
                        "groups.{name}.{field} = {v}: expected a finite number ≥ 0"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The group's row, if the table has one.
    pub fn group(&self, g: Group) -> Option<&GroupHparams> {
        self.groups.get(g.name())
    }
}

/// Parses a JSON table file: one object or an array of them (`sigprop hparams --format
/// json` with several widths).
pub fn parse_json(text: &str) -> anyhow::Result<Vec<HparamTable>> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    Ok(if v.is_array() {
        serde_json::from_value(v)?
    } else {
        vec![serde_json::from_value(v)?]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hparams::format::{Format, render};
    use crate::hparams::{Anchor, Family, Optimizer, Setup};

    fn setup(family: Family, widths: Vec<usize>) -> Setup {
        let cfg = Config::preset("paper-vit").unwrap();
        Setup {
            family,
            optimizer: Optimizer::AdamW,
            base_width: 256,
            widths,
            lr: 0.4,
            weight_decay: 1e-3,
            var: cfg.model.var,
            dims: Setup::dims_of(&cfg.model),
            m_factors: true,
            anchor: Anchor::Base,
        }
    }

    fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sigprop-hparams-table-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// What `sigprop hparams --format json` prints for one width, read back by what
    /// `sigprop train --hparams` reads, is the table itself, bit for bit.
    #[test]
    fn written_table_reads_back_identical() {
        for family in [Family::Standard, Family::Scaling(0.0), Family::Scaling(1.0)] {
            let s = setup(family, vec![512]);
            let table = s.table(512);
            assert_eq!(table.groups.len(), 10);
            let text = render(&s, None, Format::Json).unwrap();
            let path = temp_file(&format!("{family}"), &text);
            let back = HparamTable::read(&path);
            std::fs::remove_file(&path).unwrap();
            assert_eq!(back.unwrap(), table);
            assert_eq!(HparamTable::parse(&text).unwrap(), table);
            for g in s.groups() {
                let row = table.group(g).unwrap();
                assert!(row.init_variance.is_some() && row.lr.is_some());
                assert!(row.weight_decay.is_some());
            }
        }
    }

    /// The field names on disk: a table from the maker has exactly these keys, numbers
    /// everywhere (never `null`).
    #[test]
    fn schema_field_names_are_fixed() {
        let v = serde_json::to_value(setup(Family::Scaling(0.0), vec![512]).table(512)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "base_width",
                "family",
                "groups",
                "lr",
                "mlp_mult",
                "optimizer",
                "s",
                "weight_decay",
                "width"
            ]
        );
        for (name, g) in v["groups"].as_object().unwrap() {
            let keys: Vec<&str> = g.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["init_variance", "lr", "weight_decay"], "{name}");
            for k in keys {
                assert!(g[k].is_f64(), "groups.{name}.{k}");
            }
        }
    }

    /// A hand-written file with some groups and some fields: everything left out is "not
    /// given".
    #[test]
    fn minimal_hand_written_file_parses() {
        let hp = HparamTable::parse(
            r#"{"optimizer":"sgd","groups":{"q":{"lr":0.01},"head":{"init_variance":0.5},"k":{}}}"#,
        )
        .unwrap();
        assert_eq!(hp.optimizer, "sgd");
        assert_eq!((hp.width, hp.mlp_mult, hp.base_width), (0, 0, 0));
        assert_eq!((hp.lr, hp.weight_decay, hp.s), (0.0, 0.0, 0.0));
        assert_eq!(hp.family, "");
        let q = hp.group(Group::Q).unwrap();
        assert_eq!(
            (q.init_variance, q.lr, q.weight_decay),
            (None, Some(0.01), None)
        );
        let head = hp.group(Group::Head).unwrap();
        assert_eq!((head.init_variance, head.lr), (Some(0.5), None));
        assert_eq!(hp.group(Group::K), Some(&GroupHparams::default()));
        assert_eq!(hp.group(Group::V), None);
        // The empty table, and the copy `sigprop train` keeps in its run directory (which
        // writes a group's missing numbers as null).
        assert_eq!(HparamTable::parse("{}").unwrap(), HparamTable::default());
        let copy = serde_json::to_string_pretty(&hp).unwrap();
        assert!(copy.contains("null"));
        assert_eq!(HparamTable::parse(&copy).unwrap(), hp);
    }

    #[test]
    fn bad_files_are_one_line_errors_naming_the_file() {
        let cases = [
            (
                r#"{"groups":{"qq":{"lr":0.1}}}"#,
                "groups.qq: unknown group",
            ),
            (
                r#"{"groups":{"q":{"lr":-1}}}"#,
                "groups.q.lr = -1: expected a finite number ≥ 0",
            ),
            (r#"{"optimizer":"adam"}"#, "optimizer = \"adam\": expected"),
            (r#"{"width":"wide"}"#, "invalid type"),
            ("{\n\"groups\": [\n1]\n}", "invalid type"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = temp_file(&format!("bad{i}"), text);
            let e = HparamTable::read(&path).unwrap_err().to_string();
            std::fs::remove_file(&path).unwrap();
            assert!(
                e.starts_with(&format!("hparams {}: ", path.display())),
                "{e}"
            );
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let missing = std::env::temp_dir().join("sigprop-no-such-hparams.json");
        let e = HparamTable::read(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("hparams {}: ", missing.display())),
            "{e}"
        );
    }
}
