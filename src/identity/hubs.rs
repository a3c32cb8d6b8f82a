//! Pass 1 of `apply`: drops identifiers a record already had, and detects hub values.
//!
//! A hub is a value seen on records with more than `hub_threshold` distinct values of one
//! limited type. Each value keeps the distinct limited-type values it was seen with, up to
//! `hub_threshold + 1` per type, in one contiguous block of `co_pool`; the pass runs over the
//! whole batch before any record is stitched, so that a hub links nothing from its first
//! record on.

use super::graph::{ApplySummary, BLOCKED, HUB, IdentityGraph, NONE, REFUSED_BIT};
use super::intern::FastSet;
use super::load::Batch;
use crate::prefetch::{AHEAD, prefetch};

/// The capacity of the `co_pool` block holding a list of `len` entries: blocks double, so
/// appending is amortised O(1) and a list's entries stay contiguous (one cache miss to scan).
pub(super) fn block_size(len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        len.next_power_of_two().max(2)
    }
}

impl IdentityGraph {
    /// Pass 1: sorts and dedups each record's new identifiers (dropping those already on the
    /// record, marking the end with `NONE`), and records co-occurrences for hub detection, so
    /// that hubs are known before any record of the batch links through them.
    pub(super) fn observe(&mut self, batch: &mut Batch, summary: &mut ApplySummary) {
        let mut existing = Vec::new();
        let mut existing_set: FastSet<u32> = FastSet::default();
        let mut limited: Vec<u32> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        for position in 0..batch.order.len() {
            if position + AHEAD < batch.order.len() {
                for &value in &batch.values[batch.range(position + AHEAD)] {
                    prefetch(&self.v_meta, value as usize);
                    prefetch(&self.v_co, value as usize);
                }
            }
            let record = batch.order[position].1;
            let range = batch.range(position);
            let slice = &mut batch.values[range];
            if slice.len() > 1 {
                slice.sort_unstable_by(|&a, &b| self.priority_order(a, b));
            }
            existing.clear();
            if record < batch.old_records {
                existing.extend(self.record_ids(record).iter().map(|id| id & !REFUSED_BIT));
            }
            // Lists are short; a set only pays for a record re-applied with many identifiers.
            let use_set = existing.len() > 32;
            if use_set {
                existing_set.clear();
                existing_set.extend(existing.iter().copied());
            }
            let mut kept = 0;
            let mut previous = NONE;
            for i in 0..slice.len() {
                let value = slice[i];
                let known = if use_set {
                    existing_set.contains(&value)
                } else {
                    existing.contains(&value)
                };
                if value != previous && !known {
                    slice[kept] = value;
                    kept += 1;
                }
                previous = value;
            }
            slice[kept..].fill(NONE);
            let fresh = &slice[..kept];
            if fresh.is_empty() {
                continue;
            }
            let usable = |graph: &Self, v: u32| graph.v_meta[v as usize] & BLOCKED == 0;
            // The record's limited-type values (the new ones first), counted per type.
            limited.clear();
            counts.clear();
            counts.resize(self.rules.counted_types(), 0);
            let mut overflow = false;
            let mut fresh_limited = 0;
            for (i, &v) in fresh.iter().chain(existing.iter()).enumerate() {
                if let (true, Some(slot)) = (usable(self, v), self.rules.slot_of(self.type_of(v))) {
                    limited.push(v);
                    counts[slot] += 1;
                    overflow |= counts[slot] > self.rules.hub_threshold + 1;
                    if i < fresh.len() {
                        fresh_limited += 1;
                    }
                }
            }
            if overflow {
                // More than `hub_threshold + 1` values of one limited type on one record: each
                // value here is seen with more than `hub_threshold` of them, whatever else it
                // was seen with, so all are hubs. Deciding that without comparing pairs keeps
                // a junk record with thousands of identifiers from costing quadratic time.
                for &v in fresh.iter().chain(existing.iter()) {
                    if usable(self, v) && self.v_meta[v as usize] & HUB == 0 {
                        self.v_meta[v as usize] |= HUB;
                        summary.new_hubs += 1;
                    }
                }
                continue;
            }
            // Each pair with at least one new value: a value's list takes the other if the
            // other's type is limited. `limited` is short here (at most `hub_threshold + 1`
            // per type), so this is linear in the record's size.
            for &v in fresh {
                if !usable(self, v) {
                    continue;
                }
                for &w in &limited {
                    if w != v {
                        self.co_occur(v, w, summary);
                    }
                }
            }
            for &a in &existing {
                if !usable(self, a) {
                    continue;
                }
                for &b in &limited[..fresh_limited] {
                    self.co_occur(a, b, summary);
                }
            }
        }
    }

    /// Notes that `value` was seen on a record with `other`; flags `value` a hub once it has
    /// been seen with more than `hub_threshold` distinct values of `other`'s (limited) type.
    fn co_occur(&mut self, value: u32, other: u32, summary: &mut ApplySummary) {
        let other_type = self.type_of(other);
        if self.rules.slot_of(other_type).is_none() || self.v_meta[value as usize] & HUB != 0 {
            return;
        }
        let (start, len) = self.v_co[value as usize];
        let mut same_type = 0;
        for &seen_with in &self.co_pool[start as usize..(start + len) as usize] {
            if seen_with == other {
                return;
            }
            if self.type_of(seen_with) == other_type {
                same_type += 1;
            }
        }
        let mut start = start;
        if len == block_size(len) {
            let size = block_size(len + 1);
            // Past 4G entries hub detection stops growing lists rather than wrap an index.
            if self.co_pool.len() + size as usize >= u32::MAX as usize {
                return;
            }
            if len > 0 && (start + len) as usize == self.co_pool.len() {
                self.co_pool.resize((start + size) as usize, NONE);
            } else {
                let moved = self.co_pool.len() as u32;
                self.co_pool
                    .extend_from_within(start as usize..(start + len) as usize);
                self.co_pool.resize((moved + size) as usize, NONE);
                start = moved;
            }
        }
        self.co_pool[(start + len) as usize] = other;
        self.v_co[value as usize] = (start, len + 1);
        if same_type + 1 > self.rules.hub_threshold {
            self.v_meta[value as usize] |= HUB;
            summary.new_hubs += 1;
        }
    }

    pub(super) fn hub_detail(&self, value: u32) -> Option<String> {
        let mut counts = vec![0u32; self.rules.priority.len()];
        let (start, len) = self.v_co[value as usize];
        for &other in &self.co_pool[start as usize..(start + len) as usize] {
            counts[self.type_of(other) as usize] += 1;
        }
        let threshold = self.rules.hub_threshold;
        Some(match counts.iter().position(|&c| c > threshold) {
            Some(t) => format!(
                "seen with more than {threshold} {} values",
                self.rules.type_name(t as u8)
            ),
            // Found on one record carrying too many values of a type (see `observe`).
            None => format!("seen on a record with more than {threshold} values of a limited type"),
        })
    }
}
