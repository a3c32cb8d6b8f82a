//! End-to-end checks of `generate`: determinism, a complete and exact answer key, real noise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Decimal128Type, Int32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

fn run(customers: u64, seed: u64, dir: &Path) -> GenerateReport {
    let opts = GenerateOptions {
        customers,
        out_dir: dir.to_path_buf(),
        seed,
    };
    match generate(&opts, &indicatif::ProgressBar::hidden()) {
        Ok(r) => r,
        Err(e) => panic!("generate failed: {e}"),
    }
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no temp dir: {e}"),
    }
}

/// Every file under `dir`, relative path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                out.insert(rel, fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

fn read_table(dir: &Path) -> Vec<RecordBatch> {
    let mut parts: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    parts.sort();
    assert!(!parts.is_empty(), "no parts in {}", dir.display());
    let mut batches = Vec::new();
    for part in parts {
        let file = fs::File::open(&part).unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        for batch in reader {
            batches.push(batch.unwrap_or_else(|e| panic!("{}: {e}", part.display())));
        }
    }
    batches
}

/// A string column as owned optional values, across batches.
fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let array = b
            .column_by_name(column)
            .unwrap_or_else(|| panic!("no column {column}"));
        let array: &StringArray = array.as_string::<i32>();
        out.extend(array.iter().map(|v| v.map(str::to_owned)));
    }
    out
}

/// A minimal CSV reader for the test (quoted fields, doubled quotes, no embedded newlines).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        field.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut field)),
                    (c, _) => field.push(c),
                }
            }
            fields.push(field);
            fields
        })
        .collect()
}

/// The sources and the answer key of one small run, read back from disk.
struct Data {
    events: Vec<RecordBatch>,
    sales: Vec<RecordBatch>,
    items: Vec<RecordBatch>,
    crm: Vec<Vec<String>>,
    support: Vec<serde_json::Value>,
    truth: HashMap<String, String>,
    truth_rows: usize,
    report: GenerateReport,
}

fn load(customers: u64, seed: u64) -> (tempfile::TempDir, Data) {
    let dir = tempdir();
    let report = run(customers, seed, dir.path());
    let truth_batches = read_table(&dir.path().join("ground_truth"));
    let keys = strings(&truth_batches, "record_key");
    let persons = strings(&truth_batches, "person_id");
    let truth_rows = keys.len();
    let truth: HashMap<String, String> = keys
        .into_iter()
        .zip(persons)
        .map(|(k, p)| (k.unwrap_or_default(), p.unwrap_or_default()))
        .collect();
    let crm_text = fs::read_to_string(dir.path().join("crm_contacts.csv")).unwrap_or_default();
    let support_text =
        fs::read_to_string(dir.path().join("support_tickets.ndjson")).unwrap_or_default();
    let data = Data {
        events: read_table(&dir.path().join("events")),
        sales: read_table(&dir.path().join("pos_sales")),
        items: read_table(&dir.path().join("pos_sale_items")),
        crm: csv_rows(&crm_text),
        support: support_text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ndjson {l}: {e}")))
            .collect(),
        truth,
        truth_rows,
        report,
    };
    (dir, data)
}

fn count(report: &GenerateReport, table: &str) -> u64 {
    report
        .records_by_table
        .iter()
        .find(|(t, _)| t == table)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    run(300, 7, a.path());
    run(300, 7, b.path());
    run(300, 8, c.path());
    let (sa, sb, sc) = (snapshot(a.path()), snapshot(b.path()), snapshot(c.path()));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (path, bytes) in &sa {
        assert!(
            bytes == &sb[path],
            "{} differs between two runs with one seed",
            path.display()
        );
    }
    let changed = [
        "events/part-00000.parquet",
        "crm_contacts.csv",
        "pos_sales/part-00000.parquet",
    ];
    for f in changed {
        let p = PathBuf::from(f);
        assert!(sa[&p] != sc[&p], "{f} is the same for seeds 7 and 8");
    }
    // The catalog is the same for every seed.
    assert!(sa[&PathBuf::from("products.csv")] == sc[&PathBuf::from("products.csv")]);
}

#[test]
fn threads_do_not_change_the_bytes() {
    let (one, four) = (tempdir(), tempdir());
    let opts = |dir: &Path| GenerateOptions {
        customers: 230,
        out_dir: dir.to_path_buf(),
        seed: 5,
    };
    let hidden = indicatif::ProgressBar::hidden();
    let runs = [
        generate_with(
            &opts(one.path()),
            &hidden,
            Plan {
                chunk: 40,
                workers: 1,
            },
        ),
        generate_with(
            &opts(four.path()),
            &hidden,
            Plan {
                chunk: 40,
                workers: 4,
            },
        ),
    ];
    assert!(runs.iter().all(Result::is_ok));
    assert_eq!(hidden.length(), Some(230));
    assert_eq!(hidden.position(), 230);
    let (a, b) = (snapshot(one.path()), snapshot(four.path()));
    assert_eq!(
        a.keys().filter(|p| p.starts_with("events")).count(),
        6,
        "one part per chunk"
    );
    assert!(a == b, "the output depends on the number of threads");
}

#[test]
fn zero_customers_is_refused_and_writes_nothing() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let opts = GenerateOptions {
        customers: 0,
        out_dir: out.clone(),
        seed: 1,
    };
    let result = generate(&opts, &indicatif::ProgressBar::hidden());
    assert!(matches!(result, Err(C360Error::InvalidArgument(_))));
    assert!(!out.exists());
}

#[test]
fn every_source_record_has_exactly_one_true_person() {
    let (_dir, d) = load(300, 11);
    let mut expected = HashSet::new();
    for id in strings(&d.events, "message_id") {
        assert!(
            expected.insert(format!("web:{}", id.unwrap_or_default())),
            "duplicate message_id"
        );
    }
    for id in strings(&d.sales, "sale_id") {
        assert!(
            expected.insert(format!("pos:{}", id.unwrap_or_default())),
            "duplicate sale_id"
        );
    }
    assert_eq!(d.crm[0][0], "contact_id");
    for row in &d.crm[1..] {
        assert_eq!(row.len(), 14, "{row:?}");
        assert!(
            expected.insert(format!("crm:{}", row[0])),
            "duplicate contact_id"
        );
    }
    for t in &d.support {
        assert!(expected.insert(format!(
            "support:{}",
            t["ticket_id"].as_str().unwrap_or_default()
        )));
    }
    let actual: HashSet<String> = d.truth.keys().cloned().collect();
    assert_eq!(
        d.truth_rows,
        d.truth.len(),
        "a record key appears twice in ground_truth"
    );
    assert_eq!(actual, expected);
    let persons: HashSet<&String> = d.truth.values().collect();
    assert!(
        persons
            .iter()
            .all(|p| p.starts_with("p_") && p[2..].parse::<u64>().is_ok_and(|n| n < 300))
    );
    // Nearly everyone left a trace somewhere.
    assert!(
        persons.len() > 250,
        "{} people in the ground truth",
        persons.len()
    );
    assert_eq!(count(&d.report, "ground_truth"), d.truth_rows as u64);
    assert_eq!(
        d.report.total_records,
        d.report
            .records_by_table
            .iter()
            .filter(|(t, _)| t != "ground_truth")
            .map(|(_, n)| n)
            .sum::<u64>()
    );
}

#[test]
fn receipts_add_up() {
    let (_dir, d) = load(300, 12);
    let mut lines: HashMap<String, (i128, i32)> = HashMap::new();
    for b in &d.items {
        let sale = b.column(0).as_string::<i32>();
        let qty = b.column(2).as_primitive::<Int32Type>();
        let price = b.column(3).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            let e = lines.entry(sale.value(i).to_owned()).or_default();
            e.0 += i128::from(qty.value(i)) * price.value(i);
            e.1 += qty.value(i);
        }
    }
    let mut sales = 0;
    for b in &d.sales {
        let sale = b.column(0).as_string::<i32>();
        let amount = b.column(4).as_primitive::<Decimal128Type>();
        let items = b.column(5).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let (sum, qty) = lines.get(sale.value(i)).copied().unwrap_or_default();
            assert_eq!(sum, amount.value(i), "sale {}", sale.value(i));
            assert_eq!(qty, items.value(i));
            sales += 1;
        }
    }
    assert_eq!(sales, lines.len());
}

/// Which true people a value is attached to, across sources.
fn people_by_value<'a>(
    pairs: impl Iterator<Item = (String, &'a String)>,
) -> HashMap<String, HashSet<&'a String>> {
    let mut out: HashMap<String, HashSet<&String>> = HashMap::new();
    for (value, person) in pairs {
        out.entry(value).or_default().insert(person);
    }
    out
}

#[test]
fn the_noise_is_real() {
    let (_dir, d) = load(300, 13);

    // Messy e-mails: upper case or stray spaces, in the tills and the CRM.
    let pos_emails: Vec<String> = strings(&d.sales, "email").into_iter().flatten().collect();
    let crm_emails: Vec<&String> = d.crm[1..].iter().map(|r| &r[2]).collect();
    let messy = |e: &str| e != e.trim() || e.chars().any(|c| c.is_ascii_uppercase());
    assert!(
        pos_emails.iter().any(|e| messy(e)),
        "no messy e-mail at the tills"
    );
    assert!(
        crm_emails.iter().any(|e| messy(e)),
        "no messy e-mail in the CRM"
    );

    // Phones in several formats, international ones included.
    let phones: Vec<&String> = d.crm[1..]
        .iter()
        .map(|r| &r[3])
        .filter(|p| !p.is_empty())
        .collect();
    assert!(phones.iter().any(|p| p.starts_with("+33")));
    assert!(phones.iter().any(|p| p.starts_with("0") && p.contains(' ')));
    assert!(
        phones
            .iter()
            .any(|p| p.len() == 10 && p.chars().all(|c| c.is_ascii_digit()))
    );

    // A placeholder typed for several different people.
    let sale_ids = strings(&d.sales, "sale_id");
    let sale_emails = strings(&d.sales, "email");
    let truth = &d.truth;
    let mut pairs: Vec<(String, &String)> = Vec::new();
    for (id, email) in sale_ids.iter().zip(&sale_emails) {
        if let (Some(id), Some(email)) = (id, email) {
            pairs.push((email.trim().to_lowercase(), &truth[&format!("pos:{id}")]));
        }
    }
    for row in &d.crm[1..] {
        let person = &truth[&format!("crm:{}", row[0])];
        pairs.push((row[2].trim().to_lowercase(), person));
        pairs.push((row[3].clone(), person));
    }
    for t in &d.support {
        let person = &truth[&format!("support:{}", t["ticket_id"].as_str().unwrap_or_default())];
        for field in ["email", "phone"] {
            if let Some(v) = t[field].as_str() {
                pairs.push((v.trim().to_lowercase(), person));
            }
        }
    }
    let by_value = people_by_value(pairs.into_iter());
    let junk_shared = noise::JUNK_EMAILS
        .iter()
        .chain(noise::JUNK_PHONES)
        .any(|j| by_value.get(*j).is_some_and(|p| p.len() > 1));
    assert!(junk_shared, "no placeholder is shared by two people");
    // Apart from placeholders, broken values and shared landlines, a value names one person.
    let landline = |v: &str| {
        let digits: String = v.chars().filter(char::is_ascii_digit).collect();
        let national = digits
            .trim_start_matches("0033")
            .trim_start_matches("33")
            .trim_start_matches('0');
        national.starts_with(['1', '2', '3', '4', '5'])
    };
    for (value, people) in &by_value {
        let placeholder = noise::JUNK_EMAILS.contains(&value.as_str())
            || noise::JUNK_PHONES.contains(&value.as_str());
        if people.len() > 1
            && !placeholder
            && !value.is_empty()
            && value != "n/a"
            && !landline(value)
        {
            panic!("{value} is used by {people:?}");
        }
    }

    // A tablet shared by two people, both logged in on it.
    let event_ids = strings(&d.events, "message_id");
    let anon = strings(&d.events, "anonymous_id");
    let users = strings(&d.events, "user_id");
    let mut by_device: HashMap<&str, HashSet<&String>> = HashMap::new();
    let mut logins: HashMap<&str, HashSet<&str>> = HashMap::new();
    for ((id, a), u) in event_ids.iter().zip(&anon).zip(&users) {
        if let (Some(id), Some(a)) = (id, a) {
            by_device
                .entry(a)
                .or_default()
                .insert(&truth[&format!("web:{id}")]);
            if let Some(u) = u {
                logins.entry(a).or_default().insert(u);
            }
        }
    }
    let shared: Vec<&&str> = by_device
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(a, _)| a)
        .collect();
    assert!(!shared.is_empty(), "no shared anonymous_id");
    assert!(
        shared
            .iter()
            .all(|a| logins.get(**a).is_some_and(|u| u.len() == 2))
    );

    // Devices that never log in, and receipts that name nobody.
    assert!(
        by_device.keys().any(|a| !logins.contains_key(a)),
        "no anonymous-only device"
    );
    let cards = strings(&d.sales, "loyalty_card");
    let nameless = cards
        .iter()
        .zip(&sale_emails)
        .filter(|(c, e)| c.is_none() && e.is_none())
        .count();
    let share = nameless as f64 / cards.len().max(1) as f64;
    assert!(
        (0.15..0.45).contains(&share),
        "{share} of receipts without identifier"
    );
}

#[test]
fn accounts_and_cards_point_at_their_owner() {
    let (_dir, d) = load(300, 15);
    let truth = &d.truth;
    let mut owners: Vec<(String, &String)> = Vec::new();
    let ids = strings(&d.events, "message_id");
    for (id, user) in ids.iter().zip(strings(&d.events, "user_id")) {
        if let (Some(id), Some(user)) = (id, user) {
            owners.push((user, &truth[&format!("web:{id}")]));
        }
    }
    // A card keyed in by hand is still the same card: compare its digits.
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let sale_ids = strings(&d.sales, "sale_id");
    for (id, card) in sale_ids.iter().zip(strings(&d.sales, "loyalty_card")) {
        if let (Some(id), Some(card)) = (id, card) {
            owners.push((
                format!("card {}", digits(&card)),
                &truth[&format!("pos:{id}")],
            ));
        }
    }
    for row in &d.crm[1..] {
        let person = &truth[&format!("crm:{}", row[0])];
        if !row[1].is_empty() {
            owners.push((row[1].clone(), person));
        }
        if !row[6].is_empty() {
            owners.push((format!("card {}", digits(&row[6])), person));
        }
    }
    let by_value = people_by_value(owners.into_iter());
    assert!(by_value.len() > 100);
    for (value, people) in &by_value {
        assert_eq!(people.len(), 1, "{value} belongs to {people:?}");
    }
}

#[test]
fn abandoned_carts_outnumber_orders() {
    let (_dir, d) = load(300, 14);
    let events = strings(&d.events, "event");
    let n = |name: &str| events.iter().filter(|e| e.as_deref() == Some(name)).count();
    let (added, checkout, orders) = (
        n("Product Added"),
        n("Checkout Started"),
        n("Order Completed"),
    );
    assert!(
        orders > 0 && checkout > orders && added > 2 * orders,
        "{added} added, {checkout} checkouts, {orders} orders"
    );
    assert!(n("Signed Up") > 0 && n("Logged In") > 0);
}

#[test]
fn a_rerun_replaces_the_previous_data_set_whole() {
    let dir = tempdir();
    let stale = dir.path().join("events").join("part-00042.parquet");
    let leftover = dir.path().join("events").join(".part-00042.parquet.tmp");
    let foreign = dir.path().join(".notes.tmp");
    for (p, text) in [(&stale, "old"), (&leftover, "half"), (&foreign, "mine")] {
        fs::create_dir_all(p.parent().unwrap_or(dir.path())).unwrap_or_default();
        fs::write(p, text).unwrap_or_default();
    }
    run(50, 3, dir.path());
    assert!(!stale.exists() && !leftover.exists());
    assert!(foreign.exists(), "files c360 does not own are left alone");
    let names: Vec<String> = snapshot(dir.path())
        .keys()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .filter(|n| n.ends_with(".tmp"))
            .eq([&".notes.tmp".to_owned()]),
        "{names:?}"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("ground_truth"))
            .into_iter()
            .flatten()
            .count(),
        1,
        "ground_truth/ holds its part and nothing else"
    );
}

#[test]
#[ignore = "prints the volumes per customer; run with --ignored --nocapture"]
fn volumes_per_customer() {
    let dir = tempdir();
    let n = 20_000;
    let start = std::time::Instant::now();
    let report = run(n, 1, dir.path());
    println!(
        "{n} customers in {:?}, {} bytes",
        start.elapsed(),
        report.bytes_written
    );
    for (t, rows) in &report.records_by_table {
        println!("{t:16} {rows:9} {:.2}/customer", *rows as f64 / n as f64);
    }
    println!(
        "total {:.2}/customer",
        report.total_records as f64 / n as f64
    );
}
