//! The stitching rules (priority, limits, blocked patterns, hub threshold) and their validation.

use std::collections::HashMap;

use regex::{Regex, RegexSet};

use super::graph::GraphError;

/// The default `hub_threshold`.
pub const DEFAULT_HUB_THRESHOLD: u32 = 10;
/// The largest `hub_threshold` accepted.
pub const MAX_HUB_THRESHOLD: u32 = 10_000;
/// Most identifier types a graph supports (a type is one byte in every interned value).
pub const MAX_TYPES: usize = 64;

/// A type without a limit, in `Rules::count_slot`.
const NO_SLOT: u8 = u8::MAX;

/// The stitching rules, validated. See the module documentation for what each rule does.
#[derive(Debug, Clone)]
pub struct Rules {
    pub(super) priority: Vec<String>,
    /// By type index (position in `priority`).
    pub(super) limits: Vec<Option<u32>>,
    /// By type index: the type's position in a profile's count array, or `NO_SLOT`.
    count_slot: Vec<u8>,
    /// By count slot: the limited type's index, in priority order.
    pub(super) limited: Vec<u8>,
    pub(super) blocked: Vec<String>,
    pub(super) blocked_set: RegexSet,
    pub(super) hub_threshold: u32,
}

impl PartialEq for Rules {
    fn eq(&self, other: &Rules) -> bool {
        self.priority == other.priority
            && self.limits == other.limits
            && self.blocked == other.blocked
            && self.hub_threshold == other.hub_threshold
    }
}

impl Rules {
    /// Validates the rules. `limits` maps a type to the most distinct values of it one profile
    /// may hold (types absent are unlimited); `blocked` holds regular expressions matched
    /// against values (unanchored: write `^…$` to match whole values); `hub_threshold` is
    /// usually [`DEFAULT_HUB_THRESHOLD`].
    pub fn new(
        priority: Vec<String>,
        limits: HashMap<String, u32>,
        blocked: Vec<String>,
        hub_threshold: u32,
    ) -> Result<Rules, GraphError> {
        if priority.is_empty() {
            return Err(GraphError::EmptyPriority);
        }
        if priority.len() > MAX_TYPES {
            return Err(GraphError::TooManyTypes(priority.len()));
        }
        for (i, name) in priority.iter().enumerate() {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
            if !valid {
                return Err(GraphError::BadTypeName(name.clone()));
            }
            if priority[..i].contains(name) {
                return Err(GraphError::DuplicateType(name.clone()));
            }
        }
        let mut limits_by_type = vec![None; priority.len()];
        // Check limits in a fixed order so that the error named is the same on every run.
        let mut named: Vec<(&String, &u32)> = limits.iter().collect();
        named.sort();
        for (name, &limit) in named {
            let Some(index) = priority.iter().position(|p| p == name) else {
                return Err(GraphError::LimitOnUnknownType {
                    id_type: name.clone(),
                    priority: priority.join(", "),
                });
            };
            if limit == 0 {
                return Err(GraphError::ZeroLimit(name.clone()));
            }
            limits_by_type[index] = Some(limit);
        }
        let mut count_slot = vec![NO_SLOT; priority.len()];
        let mut limited = Vec::new();
        for (index, limit) in limits_by_type.iter().enumerate() {
            if limit.is_some() {
                count_slot[index] = limited.len() as u8;
                limited.push(index as u8);
            }
        }
        // Compile each pattern alone first so that the error names the one that is wrong.
        for pattern in &blocked {
            Regex::new(pattern).map_err(|e| GraphError::BadPattern {
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
        }
        let blocked_set = RegexSet::new(&blocked).map_err(|e| GraphError::BadPattern {
            pattern: blocked.join(" | "),
            message: e.to_string(),
        })?;
        // Hub detection keeps up to `hub_threshold + 1` values per type and value: the bound
        // keeps that memory bounded.
        if !(1..=MAX_HUB_THRESHOLD).contains(&hub_threshold) {
            return Err(GraphError::BadHubThreshold(hub_threshold));
        }
        Ok(Rules {
            priority,
            limits: limits_by_type,
            count_slot,
            limited,
            blocked,
            blocked_set,
            hub_threshold,
        })
    }

    pub fn priority(&self) -> &[String] {
        &self.priority
    }

    /// The limit on `id_type`, if it has one.
    pub fn limit(&self, id_type: &str) -> Option<u32> {
        self.type_index(id_type)
            .and_then(|t| self.limits[t as usize])
    }

    pub fn blocked(&self) -> &[String] {
        &self.blocked
    }

    pub fn hub_threshold(&self) -> u32 {
        self.hub_threshold
    }

    /// The rules as canonical JSON (limits in priority order): what persisted state records,
    /// and what an operator sees when state and rules disagree.
    pub fn describe(&self) -> String {
        let limits: Vec<serde_json::Value> = self
            .limited
            .iter()
            .map(|&t| serde_json::json!([self.priority[t as usize], self.limits[t as usize]]))
            .collect();
        serde_json::json!({
            "priority": self.priority,
            "limits": limits,
            "blocked": self.blocked,
            "hub_threshold": self.hub_threshold,
        })
        .to_string()
    }

    pub(super) fn type_index(&self, id_type: &str) -> Option<u8> {
        self.priority
            .iter()
            .position(|p| p == id_type)
            .map(|i| i as u8)
    }

    pub(super) fn type_name(&self, t: u8) -> &str {
        self.priority
            .get(t as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// The type's position in a profile's count array, if the type is limited.
    pub(super) fn slot_of(&self, t: u8) -> Option<usize> {
        let slot = *self.count_slot.get(t as usize)?;
        (slot != NO_SLOT).then_some(slot as usize)
    }

    pub(super) fn counted_types(&self) -> usize {
        self.limited.len()
    }
}
