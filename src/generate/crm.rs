//! CRM contacts: created by online sign-ups, loyalty enrolments at the till, newsletter forms.
//!
//! Most people have one contact; people with both an account and a card often have two (the
//! two systems were never reconciled), and some re-registered with another address or number.

use super::calendar::{DAYS, rfc3339};
use super::ids::MAX_CONTACTS;
use super::names::LAST;
use super::noise::{self, Care};
use super::people::{Person, stream};
use super::rng::Rng;
use super::tables::{Line, Truth};
use super::text::csv_record;
use super::world::World;

pub const HEADER: &str = "contact_id,customer_id,email,phone,first_name,last_name,loyalty_card,\
city,postcode,country,email_opt_in,sms_opt_in,created_at,updated_at\n";

/// One contact before it is written: what the form or the cashier captured.
struct Contact<'p> {
    customer_id: Option<&'p str>,
    email: Option<String>,
    phone: Option<String>,
    first_name: String,
    last_name: String,
    loyalty_card: Option<&'p str>,
    created_day: u32,
    care: Care,
}

pub fn contacts(world: &World, person: &Person, out: &mut Vec<Line>, truth: &mut Truth) {
    let mut rng = Rng::stream(world.seed, stream::CRM, person.index);
    let mut made: Vec<Contact> = Vec::new();
    let main_email = person.emails[0].as_str();
    let linked_card = person.user_id.is_some() && !person.cards.is_empty() && rng.chance(0.75);

    if let Some(user_id) = person.user_id.as_deref() {
        let phone = if rng.chance(0.6) {
            Some(noise::phone(&mut rng, &person.mobile))
        } else {
            person
                .landline
                .as_ref()
                .filter(|_| rng.chance(0.2))
                .map(|l| noise::phone(&mut rng, l))
        };
        let lower = rng.chance(0.05);
        let case = |s: &str| {
            if lower {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        };
        made.push(Contact {
            customer_id: Some(user_id),
            email: Some(noise::email(&mut rng, main_email, noise::SELF_TYPED)),
            phone,
            first_name: case(person.first_name),
            last_name: case(person.last_name),
            loyalty_card: linked_card.then(|| person.cards[0].as_str()),
            created_day: person.since_day + rng.below(60) as u32,
            care: noise::SELF_TYPED,
        });
    }

    if !person.cards.is_empty() && !linked_card {
        let email = match rng.weighted(&[80, 4, 16]) {
            0 => Some(noise::email(&mut rng, main_email, noise::CASHIER)),
            1 => Some(noise::junk_email(&mut rng)),
            _ => None,
        };
        let phone = match rng.weighted(&[70, 3, 10, 17]) {
            0 => Some(noise::phone(&mut rng, &person.mobile)),
            1 => Some(noise::junk_phone(&mut rng)),
            2 => person.landline.as_ref().map(|l| noise::phone(&mut rng, l)),
            _ => None,
        };
        let mut last_name = noise::name(&mut rng, person.last_name, noise::CASHIER);
        if person.female && rng.chance(0.03) {
            // Married name typed with the maiden one: "Martin, ép. Durand".
            last_name = format!("{last_name}, ép. {}", rng.pick(LAST));
        }
        made.push(Contact {
            customer_id: None,
            email,
            phone,
            first_name: noise::name(&mut rng, person.first_name, noise::CASHIER),
            last_name,
            loyalty_card: Some(person.cards[0].as_str()),
            created_day: person.since_day + rng.below(120) as u32,
            care: noise::CASHIER,
        });
    }

    if person.newsletter_only {
        made.push(Contact {
            customer_id: None,
            email: Some(noise::email(&mut rng, main_email, noise::SELF_TYPED)),
            phone: None,
            first_name: if rng.chance(0.5) {
                person.first_name.to_owned()
            } else {
                String::new()
            },
            last_name: String::new(),
            loyalty_card: None,
            created_day: person.since_day + rng.below(200) as u32,
            care: noise::SELF_TYPED,
        });
    }

    if !made.is_empty() && rng.chance(0.04) {
        // Re-registered later, forgetting the first contact: another address or another way of
        // writing the same number, and a replacement card if there is one.
        let email = person.emails.get(1).map_or(main_email, String::as_str);
        made.push(Contact {
            customer_id: None,
            email: Some(noise::email(&mut rng, email, noise::CASHIER)),
            phone: rng
                .chance(0.6)
                .then(|| noise::phone(&mut rng, &person.mobile)),
            first_name: noise::name(&mut rng, person.first_name, noise::CASHIER),
            last_name: noise::name(&mut rng, person.last_name, noise::CASHIER),
            loyalty_card: person.cards.get(1).map(String::as_str),
            created_day: person.since_day + 120 + rng.below(u64::from(DAYS)) as u32,
            care: noise::CASHIER,
        });
    }

    for (seq, contact) in made.into_iter().enumerate().take(MAX_CONTACTS as usize) {
        let id = world.ids.contact(person.index, seq as u64);
        truth.push("crm:", &id, &person.person_id);
        out.push(write(world, person, &mut rng, id, contact));
    }
}

fn write(world: &World, person: &Person, rng: &mut Rng, id: String, c: Contact<'_>) -> Line {
    let cal = &world.calendar;
    let created_day = c.created_day.min(DAYS - 1);
    let created = cal.micros(created_day, 8 * 3600 + rng.below(12 * 3600) as u32);
    let updated_day = rng.range(u64::from(created_day), u64::from(DAYS)) as u32;
    let updated = cal
        .micros(updated_day, 8 * 3600 + rng.below(12 * 3600) as u32)
        .max(created);
    let town = &world.catalog.towns[person.town];
    let city = if rng.chance(c.care.case * 0.7) {
        town.city.to_uppercase()
    } else {
        town.city.to_owned()
    };
    let postcode = if rng.chance(0.05) { "" } else { town.postcode };
    let country = ["FR", "France", ""][rng.weighted(&[85, 10, 5])];
    let email_opt_in = c.email.is_some() && rng.chance(0.55);
    let sms_opt_in = c.phone.is_some() && rng.chance(0.3);
    let (created_s, updated_s) = (rfc3339(created), rfc3339(updated));
    let mut text = String::with_capacity(200);
    csv_record(
        &mut text,
        [
            id.as_str(),
            c.customer_id.unwrap_or(""),
            c.email.as_deref().unwrap_or(""),
            c.phone.as_deref().unwrap_or(""),
            &c.first_name,
            &c.last_name,
            c.loyalty_card.unwrap_or(""),
            &city,
            postcode,
            country,
            bool_str(email_opt_in),
            bool_str(sms_opt_in),
            &created_s,
            &updated_s,
        ],
    );
    Line {
        at: created,
        id,
        text,
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}
