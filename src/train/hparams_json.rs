//! The hyperparameter table the trainer reads (`sigprop hparams --format json`, SPEC §6):
//! one width of one family, with every group's initialization variance and actual learning
//! rate. Defined here to match the writer's schema exactly; fields a writer may leave out
//! default to "not given", so the config's own values apply.
//!
//! ```json
//! {"family":"ntk","s":0.0,"optimizer":"adamw","base_width":256,"width":512,"mlp_mult":4,
//!  "lr":0.001,"weight_decay":0.1,
//!  "groups":{"q":{"init_variance":0.001,"lr":0.00002,"weight_decay":0.1}}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::model::Group;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HparamsJson {
    pub family: String,
    pub s: f64,
    /// `sgd` or `adamw`; empty = the config's `train.optimizer`.
    pub optimizer: String,
    pub base_width: usize,
    /// The width the table was made for; 0 = unchecked.
    pub width: usize,
    pub mlp_mult: usize,
    /// The base learning rate the table was scaled from (informational: groups carry the
    /// actual rates).
    pub lr: f64,
    pub weight_decay: f64,
    /// Keyed by group name: stem, pe, q, k, v, u, w, x, head, bias.
    pub groups: BTreeMap<String, GroupJson>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupJson {
    /// Variance of every entry of the group's tensors (not a C to divide by fan-in).
    pub init_variance: Option<f64>,
    /// The group's actual learning rate.
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
}

impl HparamsJson {
    pub fn read(path: &Path) -> Result<HparamsJson, TrainError> {
        let err = |msg: String| TrainError::Hparams {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hp: HparamsJson = serde_json::from_str(&text)
            .map_err(|e| err(crate::config::one_line(&e.to_string())))?;
        hp.validate().map_err(err)?;
        Ok(hp)
    }

    pub fn parse(text: &str) -> Result<HparamsJson, TrainError> {
        let err = |msg: String| TrainError::Hparams {
            path: "<text>".into(),
            msg,
        };
        let hp: HparamsJson =
            serde_json::from_str(text).map_err(|e| err(crate::config::one_line(&e.to_string())))?;
        hp.validate().map_err(err)?;
        Ok(hp)
    }

    /// Unknown group names and negative or non-finite numbers are errors: a typo must not
    /// silently fall back to the config's values.
    fn validate(&self) -> Result<(), String> {
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

    pub fn group(&self, g: Group) -> Option<&GroupJson> {
        self.groups.get(g.name())
    }
}
