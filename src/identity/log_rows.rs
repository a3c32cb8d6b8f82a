//! The rows a refresh keeps for its log: only those a replay of the log needs.
//!
//! A refresh reads from its watermark, less the graph's lookback, so it reads again the rows
//! at the watermark and, with a lookback, every row of the window. Logging them all made a
//! graph with a lookback of a day log a day of rows at each refresh, and reach its log's
//! limit (and write a whole snapshot) after a few. Rows that repeat what the graph holds,
//! on records the refresh does not change, do nothing when replayed: they are left out.

use std::collections::HashSet;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;

use super::graph::{Applying, LogNeed};
use super::manager::indexed_rows_of_batch;
use crate::error::{C360Error, Result};

/// The batches a refresh read, while they may still fit its log, and what the log needs of
/// each of their rows.
pub(super) struct LogRows {
    /// Rows the log may take: more that are certainly needed, and the log is full.
    room: u64,
    /// Rows held at most, repeats included: past it the log is full too, so that a long
    /// lookback window is never held in memory whole.
    most: u64,
    /// The newest `seen_at` applied before the refresh: only rows up to it can be repeats.
    repeats_until: Option<i64>,
    batches: Vec<RecordBatch>,
    /// Per batch, per row.
    needs: Vec<Vec<LogNeed>>,
    needed: u64,
    held: u64,
}

impl LogRows {
    pub(super) fn new(room: u64, most: u64, repeats_until: Option<i64>) -> LogRows {
        LogRows {
            room,
            most,
            repeats_until,
            batches: Vec::new(),
            needs: Vec::new(),
            needed: 0,
            held: 0,
        }
    }

    /// Holds `batch`, noting what the log needs of each row; call before the batch is fed.
    /// `false` once the log cannot take the refresh's rows: the caller drops this and the
    /// refresh writes a snapshot instead.
    pub(super) fn hold(&mut self, applying: &Applying<'_>, batch: &RecordBatch) -> Result<bool> {
        let mut needs = vec![LogNeed::Never; batch.num_rows()];
        for (i, row) in indexed_rows_of_batch(batch)? {
            needs[i] = applying.log_need(&row, self.repeats_until);
            self.needed += u64::from(needs[i] == LogNeed::Always);
        }
        self.held += batch.num_rows() as u64;
        self.batches.push(batch.clone());
        self.needs.push(needs);
        Ok(self.needed <= self.room && self.held <= self.most)
    }

    /// The rows to log, given the known records the refresh changed (see
    /// [`Applying::finish_changed`]), and how many there are; `None` if they do not fit.
    pub(super) fn into_logged(self, changed: &[u32]) -> Result<Option<(Vec<RecordBatch>, u64)>> {
        let changed: HashSet<u32> = changed.iter().copied().collect();
        let mut logged = Vec::with_capacity(self.batches.len());
        let mut rows = 0u64;
        for (batch, needs) in self.batches.into_iter().zip(self.needs) {
            let keep: BooleanArray = needs
                .iter()
                .map(|need| {
                    Some(match *need {
                        LogNeed::Always => true,
                        LogNeed::Never => false,
                        LogNeed::IfRecordChanges(record) => changed.contains(&record),
                    })
                })
                .collect();
            let kept = keep.true_count();
            rows += kept as u64;
            if kept == batch.num_rows() {
                logged.push(batch);
            } else if kept > 0 {
                let batch = filter_record_batch(&batch, &keep)
                    .map_err(|e| C360Error::arrow("a refresh's rows to log", e))?;
                logged.push(batch);
            }
        }
        Ok((rows <= self.room).then_some((logged, rows)))
    }
}
