//! Store sales at the tills: receipts and their lines, identified by a card, an e-mail, or nothing.
//!
//! A loyalty card is scanned when the customer remembers it; otherwise the cashier may type an
//! e-mail for the e-receipt, or a placeholder, or nothing at all. About 30% of receipts carry no
//! identifier, yet each belongs to a person in the ground truth.

use super::calendar::TRAFFIC;
use super::ids::MAX_SALES;
use super::noise;
use super::people::{Person, stream};
use super::rng::Rng;
use super::tables::{Sale, SaleItem, Truth};
use super::world::World;

pub fn sales(world: &World, person: &Person, out: &mut Vec<Sale>, truth: &mut Truth) {
    let mut rng = Rng::stream(world.seed, stream::POS, person.index);
    let catalog = &world.catalog;
    let cal = &world.calendar;
    let home = catalog.towns[person.town].store;
    for seq in 0..u64::from(person.store_sales).min(MAX_SALES) {
        let store = if rng.chance(0.85) {
            home
        } else {
            rng.index(catalog.stores.len())
        };
        let mut day = cal.pick_day(&mut rng, person.since_day, &TRAFFIC);
        if cal.is_sunday(day) && !catalog.stores[store].open_sunday {
            day = day.saturating_sub(1);
        } else if !cal.is_saturday(day) && rng.chance(0.2) {
            // Saturday is the busiest day: move some visits to the next one.
            let next = (day..day + 7).find(|&d| cal.is_saturday(d));
            day = next.filter(|&d| d < super::calendar::DAYS).unwrap_or(day);
        }
        let sold_at = cal.micros(day, store_time_of_day(&mut rng));

        let month = cal.month(day);
        let lines = 1 + rng.weighted(&[58, 27, 9, 4, 2]);
        let items = (0..lines)
            .map(|_| {
                let product = catalog.pick_product(&mut rng, month);
                let quantity = 1 + rng.weighted(&[80, 13, 5, 2]) as i32;
                let price = catalog.products[product].price_cents;
                // One line in ten is on promotion at -20%.
                let unit_price_cents = if rng.chance(0.1) {
                    price * 80 / 100
                } else {
                    price
                };
                SaleItem {
                    product,
                    quantity,
                    unit_price_cents,
                }
            })
            .collect();

        let card_shown = !person.cards.is_empty() && rng.chance(0.7);
        let loyalty_card = card_shown.then(|| {
            // A replacement card is used for the later visits.
            let replaced =
                person.cards.len() > 1 && day > (person.since_day + super::calendar::DAYS) / 2;
            noise::card(&mut rng, &person.cards[usize::from(replaced)])
        });
        let asks_email = match (card_shown, person.cards.is_empty()) {
            (true, _) => 0.2,
            (false, false) => 0.3,
            (false, true) => 0.4,
        };
        let email = if rng.chance(asks_email) {
            let i = usize::from(person.emails.len() > 1 && rng.chance(0.15));
            Some(noise::email(&mut rng, &person.emails[i], noise::CASHIER))
        } else if !card_shown && rng.chance(0.05) {
            // The customer declined; the till insists on something.
            Some(noise::junk_email(&mut rng))
        } else {
            None
        };

        let sale_id = world.ids.sale(person.index, seq);
        truth.push("pos:", &sale_id, &person.person_id);
        out.push(Sale {
            sale_id,
            store,
            loyalty_card,
            email,
            sold_at,
            items,
        });
    }
}

/// Seconds after local midnight during opening hours, busiest late morning and late afternoon.
fn store_time_of_day(rng: &mut Rng) -> u32 {
    // 09:00 … 19:00, one weight per hour.
    const HOURS: [u32; 11] = [5, 10, 14, 13, 8, 9, 12, 14, 15, 13, 7];
    let hour = 9 + rng.weighted(&HOURS) as u32;
    hour * 3600 + rng.below(3600) as u32
}
