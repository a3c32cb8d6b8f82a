//! Arrow schemas of the Parquet sources, and the column builders one chunk fills.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Decimal128Builder, Int32Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{C360Error, Result};

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Euros with cents, as tills and accounting store them.
fn money() -> DataType {
    DataType::Decimal128(12, 2)
}

/// The Segment columns, shared with the landed `events` table the collector writes.
pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(crate::sources::events::bundled_fields()))
}

pub fn pos_sales_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sale_id", DataType::Utf8, false),
        Field::new("store_id", DataType::Utf8, false),
        Field::new("loyalty_card", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("amount", money(), false),
        Field::new("item_count", DataType::Int32, false),
        Field::new("sold_at", timestamp(), false),
    ]))
}

pub fn pos_sale_items_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sale_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("quantity", DataType::Int32, false),
        Field::new("unit_price", money(), false),
    ]))
}

pub fn ground_truth_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_key", DataType::Utf8, false),
        Field::new("person_id", DataType::Utf8, false),
    ]))
}

/// One web or app event, borrowed from the generator's buffers.
pub struct Event<'a> {
    pub message_id: &'a str,
    pub kind: &'a str,
    pub anonymous_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub properties: &'a str,
    pub traits: Option<&'a str>,
    pub context: &'a str,
    pub timestamp: i64,
}

pub struct EventColumns {
    message_id: StringBuilder,
    kind: StringBuilder,
    anonymous_id: StringBuilder,
    user_id: StringBuilder,
    event: StringBuilder,
    properties: StringBuilder,
    traits: StringBuilder,
    context: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    /// (timestamp, arrival order): the rows are written in time order, as an event log is.
    order: Vec<(i64, u32)>,
}

impl EventColumns {
    pub fn with_capacity(rows: usize) -> Self {
        EventColumns {
            message_id: StringBuilder::with_capacity(rows, rows * 36),
            kind: StringBuilder::with_capacity(rows, rows * 6),
            anonymous_id: StringBuilder::with_capacity(rows, rows * 36),
            user_id: StringBuilder::with_capacity(rows, rows * 5),
            event: StringBuilder::with_capacity(rows, rows * 8),
            properties: StringBuilder::with_capacity(rows, rows * 110),
            traits: StringBuilder::with_capacity(rows, rows * 4),
            context: StringBuilder::with_capacity(rows, rows * 190),
            timestamp: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            order: Vec::with_capacity(rows),
        }
    }

    pub fn push(&mut self, e: &Event<'_>) {
        self.order.push((e.timestamp, self.order.len() as u32));
        self.message_id.append_value(e.message_id);
        self.kind.append_value(e.kind);
        self.anonymous_id.append_option(e.anonymous_id);
        self.user_id.append_option(e.user_id);
        self.event.append_option(e.event);
        self.properties.append_value(e.properties);
        self.traits.append_option(e.traits);
        self.context.append_value(e.context);
        self.timestamp.append_value(e.timestamp);
    }

    pub fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.message_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.anonymous_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.event.finish()),
            Arc::new(self.properties.finish()),
            Arc::new(self.traits.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.timestamp.finish()),
        ];
        let batch = RecordBatch::try_new(events_schema(), columns)
            .map_err(|e| C360Error::arrow("building the events batch", e))?;
        // Unique keys make the order independent of the sort algorithm.
        self.order.sort_unstable();
        let indices = UInt32Array::from_iter_values(self.order.iter().map(|&(_, i)| i));
        take_record_batch(&batch, &indices)
            .map_err(|e| C360Error::arrow("ordering the events by time", e))
    }
}

/// One line of a till receipt.
pub struct SaleItem {
    pub product: usize,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

pub struct Sale {
    pub sale_id: String,
    pub store: usize,
    pub loyalty_card: Option<String>,
    pub email: Option<String>,
    pub sold_at: i64,
    pub items: Vec<SaleItem>,
}

impl Sale {
    pub fn amount_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|i| i64::from(i.quantity) * i.unit_price_cents)
            .sum()
    }
}

/// Builds `pos_sales` and `pos_sale_items` in time order from one chunk's sales.
pub fn sales_batches(
    mut sales: Vec<Sale>,
    store_ids: &[String],
    skus: &[&str],
) -> Result<(RecordBatch, RecordBatch)> {
    sales.sort_unstable_by(|a, b| (a.sold_at, &a.sale_id).cmp(&(b.sold_at, &b.sale_id)));
    let n = sales.len();
    let lines: usize = sales.iter().map(|s| s.items.len()).sum();
    let mut sale_id = StringBuilder::with_capacity(n, n * 14);
    let mut store_id = StringBuilder::with_capacity(n, n * 3);
    let mut card = StringBuilder::with_capacity(n, n * 12);
    let mut email = StringBuilder::with_capacity(n, n * 16);
    let mut amount = Decimal128Builder::with_capacity(n).with_data_type(money());
    let mut item_count = Int32Builder::with_capacity(n);
    let mut sold_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut item_sale = StringBuilder::with_capacity(lines, lines * 14);
    let mut item_sku = StringBuilder::with_capacity(lines, lines * 9);
    let mut item_qty = Int32Builder::with_capacity(lines);
    let mut item_price = Decimal128Builder::with_capacity(lines).with_data_type(money());
    for s in &sales {
        sale_id.append_value(&s.sale_id);
        store_id.append_value(&store_ids[s.store]);
        card.append_option(s.loyalty_card.as_deref());
        email.append_option(s.email.as_deref());
        amount.append_value(i128::from(s.amount_cents()));
        item_count.append_value(s.items.iter().map(|i| i.quantity).sum());
        sold_at.append_value(s.sold_at);
        for item in &s.items {
            item_sale.append_value(&s.sale_id);
            item_sku.append_value(skus[item.product]);
            item_qty.append_value(item.quantity);
            item_price.append_value(i128::from(item.unit_price_cents));
        }
    }
    let sales_batch = RecordBatch::try_new(
        pos_sales_schema(),
        vec![
            Arc::new(sale_id.finish()),
            Arc::new(store_id.finish()),
            Arc::new(card.finish()),
            Arc::new(email.finish()),
            Arc::new(amount.finish()),
            Arc::new(item_count.finish()),
            Arc::new(sold_at.finish()),
        ],
    )
    .map_err(|e| C360Error::arrow("building the pos_sales batch", e))?;
    let items_batch = RecordBatch::try_new(
        pos_sale_items_schema(),
        vec![
            Arc::new(item_sale.finish()),
            Arc::new(item_sku.finish()),
            Arc::new(item_qty.finish()),
            Arc::new(item_price.finish()),
        ],
    )
    .map_err(|e| C360Error::arrow("building the pos_sale_items batch", e))?;
    Ok((sales_batch, items_batch))
}

/// The answer key: which person each source record belongs to.
pub struct Truth {
    record_key: StringBuilder,
    person_id: StringBuilder,
    key: String,
}

impl Truth {
    pub fn with_capacity(rows: usize) -> Self {
        Truth {
            record_key: StringBuilder::with_capacity(rows, rows * 42),
            person_id: StringBuilder::with_capacity(rows, rows * 9),
            key: String::with_capacity(64),
        }
    }

    /// Records that `prefix:id` (e.g. `web:` + message id) belongs to `person_id`.
    pub fn push(&mut self, prefix: &str, id: &str, person_id: &str) {
        self.key.clear();
        self.key.push_str(prefix);
        self.key.push_str(id);
        self.record_key.append_value(&self.key);
        self.person_id.append_value(person_id);
    }

    pub fn finish(mut self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            ground_truth_schema(),
            vec![
                Arc::new(self.record_key.finish()),
                Arc::new(self.person_id.finish()),
            ],
        )
        .map_err(|e| C360Error::arrow("building the ground_truth batch", e))
    }
}

/// One record of a text source (CSV line or NDJSON object), kept with its time to be sorted.
pub struct Line {
    pub at: i64,
    pub id: String,
    pub text: String,
}

/// Concatenates one chunk's lines in time order, as an export of the source system would be.
pub fn lines_in_time_order(mut lines: Vec<Line>) -> String {
    lines.sort_unstable_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    let mut out = String::with_capacity(lines.iter().map(|l| l.text.len()).sum());
    for l in &lines {
        out.push_str(&l.text);
    }
    out
}
