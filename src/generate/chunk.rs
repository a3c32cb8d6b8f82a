//! One chunk of consecutive people: every source's rows for them, in the order files hold them.

use std::ops::Range;

use datafusion::arrow::array::RecordBatch;

use super::people::People;
use super::tables::{self, EventColumns, Truth};
use super::world::World;
use super::{crm, pos, support, web};
use crate::error::Result;

pub struct Chunk {
    pub events: RecordBatch,
    pub pos_sales: RecordBatch,
    pub pos_sale_items: RecordBatch,
    pub ground_truth: RecordBatch,
    /// CSV lines (no header) and NDJSON lines, in time order within the chunk.
    pub crm_contacts: String,
    pub support_tickets: String,
    pub crm_rows: u64,
    pub support_rows: u64,
    pub people: u64,
}

/// Generates every source row of the people in `people`.
pub fn build(world: &World, people: Range<u64>) -> Result<Chunk> {
    let n = (people.end - people.start) as usize;
    let draw = People::new(world);
    let mut events = EventColumns::with_capacity(n * 13);
    let mut truth = Truth::with_capacity(n * 16);
    let mut sales = Vec::with_capacity(n * 2);
    let mut contacts = Vec::with_capacity(n);
    let mut tickets = Vec::with_capacity(n / 2);
    for index in people.clone() {
        let person = draw.person(index);
        web::events(world, &person, &mut events, &mut truth);
        pos::sales(world, &person, &mut sales, &mut truth);
        crm::contacts(world, &person, &mut contacts, &mut truth);
        support::tickets(world, &person, &mut tickets, &mut truth);
    }
    let store_ids: Vec<String> = world.catalog.stores.iter().map(|s| s.id.clone()).collect();
    let skus: Vec<&str> = world
        .catalog
        .products
        .iter()
        .map(|p| p.sku.as_str())
        .collect();
    let (pos_sales, pos_sale_items) = tables::sales_batches(sales, &store_ids, &skus)?;
    let (crm_rows, support_rows) = (contacts.len() as u64, tickets.len() as u64);
    Ok(Chunk {
        events: events.finish()?,
        pos_sales,
        pos_sale_items,
        ground_truth: truth.finish()?,
        crm_contacts: tables::lines_in_time_order(contacts),
        support_tickets: tables::lines_in_time_order(tickets),
        crm_rows,
        support_rows,
        people: people.end - people.start,
    })
}
