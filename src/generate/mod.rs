//! Realistic, deterministic demo data: the sources of "Maison Lumière", a French home-and-garden
//! retailer with 40 stores, a web shop and an app, plus the answer key to stitch them.
//!
//! `c360 generate` writes what such a retailer's systems would export — web and app events
//! (Segment spec), till receipts and their lines, CRM contacts, support tickets, the product
//! catalog and the stores — so that every stage of c360 can be demonstrated, tested and
//! benchmarked on data that looks and misbehaves like the real thing.
//!
//! **Noise and truth.** Each customer is a `Person` with true identifiers (a unique mailbox,
//! a mobile, maybe an account, a loyalty card, devices). Each source then writes those
//! identifiers down the way real systems do: in mixed case with stray spaces, in every phone
//! format, with typos and broken values, with placeholders ("test@test.com", "0600000000")
//! shared by many people, or not at all (anonymous browsing, receipts without a card). Couples
//! share a landline and a home IP, and some share a tablet (one anonymous_id, two people). The
//! noise only ever changes what a record *says*; `ground_truth/` records who each record *is*,
//! one row per events, pos_sales, crm_contacts and support_tickets record, keyed
//! `web:`/`pos:`/`crm:`/`support:` + its id. Identity resolution is scored against it.
//!
//! **Determinism.** Output depends only on the seed and the customer count: a small in-crate
//! PRNG (`rng`), a fixed reference date (2026-11-01), a fixed catalog, and one random stream
//! per person and source, so chunks can be built on any thread in any order with the same bytes.
//!
//! **Layout.** `events/`, `pos_sales/`, `pos_sale_items/` and `ground_truth/` are directories
//! of `part-NNNNN.parquet` (one per chunk of 20,000 customers, rows in time order within a
//! part); `crm_contacts.csv`, `support_tickets.ndjson`, `products.csv` and `stores.csv` are
//! single files. Every file is written under a hidden temporary name and renamed only when the
//! whole run has succeeded.

mod calendar;
mod catalog;
mod chunk;
mod crm;
mod ids;
mod names;
mod noise;
mod people;
mod pos;
mod rng;
mod support;
mod tables;
mod text;
mod web;
mod world;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use crate::error::{C360Error, Result};
use chunk::Chunk;
use world::World;
use writer::{Staged, TextFile};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub customers: u64,
    pub out_dir: PathBuf,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct GenerateReport {
    pub customers: u64,
    /// Rows written per table, sources first, then `ground_truth`.
    pub records_by_table: Vec<(String, u64)>,
    /// Rows of the source tables: everything in `records_by_table` except `ground_truth`.
    pub total_records: u64,
    pub bytes_written: u64,
}

/// How a run is cut up. The bytes written depend on `chunk` (one part per chunk, rows ordered
/// within a chunk) but never on `workers`.
#[derive(Clone, Copy)]
struct Plan {
    chunk: u64,
    workers: usize,
}

impl Plan {
    /// Chunks of 20,000 customers (one Parquet part per table, ~250,000 event rows), built by
    /// one worker per core, at most 4: each holds a chunk (~200 MB) in memory.
    fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Plan {
            chunk: 20_000,
            workers: cores.clamp(1, 4),
        }
    }
}

const EVENTS: &str = "events";
const POS_SALES: &str = "pos_sales";
const POS_SALE_ITEMS: &str = "pos_sale_items";
const GROUND_TRUTH: &str = "ground_truth";
const CRM_CONTACTS: &str = "crm_contacts.csv";
const SUPPORT_TICKETS: &str = "support_tickets.ndjson";
const PRODUCTS: &str = "products.csv";
const STORES: &str = "stores.csv";

/// Writes the demo sources for `opts.customers` people into `opts.out_dir`.
///
/// `progress` is a ready-made indicatif bar (hidden in tests); its length is set to the number
/// of customers and it advances as chunks of customers are written.
pub fn generate(
    opts: &GenerateOptions,
    progress: &indicatif::ProgressBar,
) -> Result<GenerateReport> {
    generate_with(opts, progress, Plan::for_this_machine())
}

fn generate_with(
    opts: &GenerateOptions,
    progress: &indicatif::ProgressBar,
    plan: Plan,
) -> Result<GenerateReport> {
    if opts.customers == 0 {
        return Err(C360Error::InvalidArgument(
            "the number of customers to generate must be at least 1".to_owned(),
        ));
    }
    if opts.customers > ids::MAX_PEOPLE {
        return Err(C360Error::InvalidArgument(format!(
            "cannot generate {} customers: at most {} are supported",
            opts.customers,
            ids::MAX_PEOPLE
        )));
    }
    let out = opts.out_dir.as_path();
    let table_dirs: Vec<PathBuf> = [EVENTS, POS_SALES, POS_SALE_ITEMS, GROUND_TRUTH]
        .iter()
        .map(|t| out.join(t))
        .collect();
    for dir in &table_dirs {
        fs::create_dir_all(dir).map_err(|e| C360Error::io(dir, e))?;
    }
    let files = [PRODUCTS, STORES, CRM_CONTACTS, SUPPORT_TICKETS];
    writer::remove_leftovers(&table_dirs, out, &files)?;

    progress.set_length(opts.customers);
    progress.set_position(0);
    let world = World::new(opts.seed, opts.customers);
    let mut staged = Vec::new();
    match write_all(&world, plan, out, progress, &mut staged) {
        Ok(report) => {
            writer::commit(staged, &table_dirs)?;
            Ok(report)
        }
        Err(e) => {
            writer::discard(&staged);
            // A failed worker may have left a part it was writing.
            let _ = writer::remove_leftovers(&table_dirs, out, &files);
            Err(e)
        }
    }
}

/// Per-table row counts, in the order of the report.
#[derive(Default)]
struct Counts {
    events: u64,
    pos_sales: u64,
    pos_sale_items: u64,
    crm_contacts: u64,
    support_tickets: u64,
    ground_truth: u64,
}

fn write_all(
    world: &World,
    plan: Plan,
    out: &Path,
    progress: &indicatif::ProgressBar,
    staged: &mut Vec<Staged>,
) -> Result<GenerateReport> {
    let mut bytes = 0u64;
    for (name, text) in [
        (PRODUCTS, world.catalog.products_csv()),
        (STORES, world.catalog.stores_csv()),
    ] {
        let mut file = TextFile::create(&out.join(name))?;
        file.write(&text)?;
        let (s, b) = file.finish()?;
        staged.push(s);
        bytes += b;
    }

    let mut crm = TextFile::create(&out.join(CRM_CONTACTS))?;
    crm.write(crm::HEADER)?;
    let mut support = TextFile::create(&out.join(SUPPORT_TICKETS))?;
    let counts = run_chunks(
        world,
        plan,
        out,
        progress,
        &mut crm,
        &mut support,
        staged,
        &mut bytes,
    )?;
    for file in [crm, support] {
        let (s, b) = file.finish()?;
        staged.push(s);
        bytes += b;
    }

    let records_by_table: Vec<(String, u64)> = [
        (EVENTS, counts.events),
        (POS_SALES, counts.pos_sales),
        (POS_SALE_ITEMS, counts.pos_sale_items),
        ("crm_contacts", counts.crm_contacts),
        ("support_tickets", counts.support_tickets),
        ("products", world.catalog.products.len() as u64),
        ("stores", world.catalog.stores.len() as u64),
        (GROUND_TRUTH, counts.ground_truth),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    let total_records = records_by_table
        .iter()
        .filter(|(t, _)| t != GROUND_TRUTH)
        .map(|(_, n)| n)
        .sum();
    Ok(GenerateReport {
        customers: world.customers,
        records_by_table,
        total_records,
        bytes_written: bytes,
    })
}

/// What a worker hands back for one chunk once its Parquet parts are staged.
struct Written {
    index: u64,
    chunk_text: (String, String),
    staged: Vec<Staged>,
    counts: Counts,
    bytes: u64,
    people: u64,
}

/// Builds and writes chunks on `plan.workers` threads. Each worker writes its chunk's
/// Parquet parts itself (the costly part: encoding and compression); the calling thread appends
/// the CSV and NDJSON text in chunk order, so the single-file sources come out the same for
/// any number of threads.
#[allow(clippy::too_many_arguments)]
fn run_chunks(
    world: &World,
    plan: Plan,
    out: &Path,
    progress: &indicatif::ProgressBar,
    crm: &mut TextFile,
    support: &mut TextFile,
    staged: &mut Vec<Staged>,
    bytes: &mut u64,
) -> Result<Counts> {
    let chunks = world.customers.div_ceil(plan.chunk);
    let workers = plan.workers.min(chunks as usize).max(1);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<Result<Written>>(workers);
    let mut counts = Counts::default();
    let mut first_error = None;

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= chunks {
                        break;
                    }
                    let result = build_and_write(world, out, index, plan.chunk);
                    let failed = result.is_err();
                    if tx.send(result).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);

        let mut pending: BTreeMap<u64, (String, String)> = BTreeMap::new();
        let mut next_text = 0u64;
        // Keep receiving after an error so that no worker blocks on a full channel.
        for result in rx {
            let written = match result {
                Ok(w) => w,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            staged.extend(written.staged);
            *bytes += written.bytes;
            counts.add(&written.counts);
            pending.insert(written.index, written.chunk_text);
            while let Some((crm_text, support_text)) = pending.remove(&next_text) {
                if first_error.is_none()
                    && let Err(e) = crm
                        .write(&crm_text)
                        .and_then(|()| support.write(&support_text))
                {
                    stop.store(true, Ordering::Relaxed);
                    first_error = Some(e);
                }
                next_text += 1;
            }
            progress.inc(written.people);
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(counts),
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.events += o.events;
        self.pos_sales += o.pos_sales;
        self.pos_sale_items += o.pos_sale_items;
        self.crm_contacts += o.crm_contacts;
        self.support_tickets += o.support_tickets;
        self.ground_truth += o.ground_truth;
    }
}

fn build_and_write(world: &World, out: &Path, index: u64, chunk: u64) -> Result<Written> {
    let first = index * chunk;
    let last = (first + chunk).min(world.customers);
    let Chunk {
        events,
        pos_sales,
        pos_sale_items,
        ground_truth,
        crm_contacts,
        support_tickets,
        crm_rows,
        support_rows,
        people,
    } = chunk::build(world, first..last)?;
    let counts = Counts {
        events: events.num_rows() as u64,
        pos_sales: pos_sales.num_rows() as u64,
        pos_sale_items: pos_sale_items.num_rows() as u64,
        crm_contacts: crm_rows,
        support_tickets: support_rows,
        ground_truth: ground_truth.num_rows() as u64,
    };
    let part = format!("part-{index:05}.parquet");
    let mut staged = Vec::with_capacity(4);
    let mut bytes = 0;
    for (table, batch) in [
        (EVENTS, &events),
        (POS_SALES, &pos_sales),
        (POS_SALE_ITEMS, &pos_sale_items),
        (GROUND_TRUTH, &ground_truth),
    ] {
        let (s, b) = writer::parquet(&out.join(table).join(&part), batch)?;
        staged.push(s);
        bytes += b;
    }
    Ok(Written {
        index,
        chunk_text: (crm_contacts, support_tickets),
        staged,
        counts,
        bytes,
        people,
    })
}
