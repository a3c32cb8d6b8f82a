//! Web and app events (Segment spec): anonymous browsing, logins, carts, orders, abandoned carts.
//!
//! A person browses in sessions on 1–3 devices, each with its own anonymous_id. Before logging
//! in on a device they are only that anonymous_id; at login an `identify` call ties it to their
//! user_id, and later events on that device carry both. People without an account stay
//! anonymous unless they check out as a guest, which identifies the device with an e-mail only.
//! A household tablet is one anonymous_id used, and logged into, by two people.

use std::fmt::Write;

use super::calendar::TRAFFIC;
use super::ids::{Kind, MAX_EVENTS, MAX_ORDERS};
use super::noise;
use super::people::{Channel, Device, Person, stream};
use super::rng::Rng;
use super::tables::{Event, EventColumns, Truth};
use super::text::{Euros, json_concat, json_field, json_opt, json_raw};
use super::world::World;

const SITE: &str = "https://www.maisonlumiere.fr";

/// Generates every event of one person, appending them and their ground truth.
pub fn events(world: &World, person: &Person, out: &mut EventColumns, truth: &mut Truth) {
    if person.devices.is_empty() || person.web_sessions == 0 {
        return;
    }
    let mut s = Session::new(world, person);
    let mut sessions: Vec<(i64, usize)> = (0..person.web_sessions)
        .map(|k| {
            let day = world
                .calendar
                .pick_day(&mut s.rng, person.since_day, &TRAFFIC);
            let start = world.calendar.micros(day, web_time_of_day(&mut s.rng));
            (start, s.pick_device(k))
        })
        .collect();
    sessions.sort_unstable();

    // The account exists from some session on; a device logs in at its first session after
    // that (most devices do, some never), and a shared tablet always does.
    let first_account_session = s.rng.below(u64::from(person.web_sessions / 2) + 1) as usize;
    let will_log_in: Vec<bool> = person
        .devices
        .iter()
        .map(|d| d.shared || s.rng.chance(0.85))
        .collect();
    let mut logged_in = vec![false; person.devices.len()];

    for (k, &(start, d)) in sessions.iter().enumerate() {
        if s.seq + 64 >= MAX_EVENTS {
            break;
        }
        let device = &person.devices[d];
        s.begin(start, device);
        s.landing(device, logged_in[d], out, truth);
        let may_log_in = k >= first_account_session || device.shared;
        if person.user_id.is_some() && !logged_in[d] && may_log_in && will_log_in[d] {
            s.log_in(device, out, truth);
            logged_in[d] = true;
        }
        s.browse(device, logged_in[d], out, truth);
        if !s.cart.is_empty() {
            logged_in[d] = s.checkout(device, logged_in[d], out, truth);
        }
    }
}

/// The state of one person's event stream while their sessions are generated.
struct Session<'a> {
    world: &'a World,
    person: &'a Person,
    rng: Rng,
    seq: u64,
    orders: u64,
    signed_up: bool,
    now: i64,
    month: usize,
    context: String,
    props: String,
    traits: String,
    message_id: String,
    /// Products in the cart (index, quantity).
    cart: Vec<(usize, u32)>,
    /// Products viewed this session, to add one of them to the cart.
    viewed: Vec<usize>,
}

#[derive(Clone, Copy)]
enum View {
    Home,
    Category(usize),
    Product(usize),
    Cart,
    Checkout,
    Confirmation,
}

impl<'a> Session<'a> {
    fn new(world: &'a World, person: &'a Person) -> Self {
        Session {
            world,
            person,
            rng: Rng::stream(world.seed, stream::WEB, person.index),
            seq: 0,
            orders: 0,
            signed_up: !person.signed_up_online,
            now: 0,
            month: 0,
            context: String::with_capacity(256),
            props: String::with_capacity(256),
            traits: String::with_capacity(160),
            message_id: String::with_capacity(36),
            cart: Vec::new(),
            viewed: Vec::new(),
        }
    }

    /// The first sessions go to the shared tablet (so both partners use it); the rest mostly to
    /// the person's first device, their phone or laptop.
    fn pick_device(&mut self, k: u32) -> usize {
        let devices = &self.person.devices;
        if let Some(tablet) = devices.iter().position(|d| d.shared)
            && k < 2
        {
            return tablet;
        }
        let weights: Vec<u32> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| match (i, d.shared) {
                (_, true) => 15,
                (0, false) => 60,
                _ => 30,
            })
            .collect();
        self.rng.weighted(&weights)
    }

    fn begin(&mut self, start: i64, device: &Device) {
        self.now = start;
        self.month = self.world.calendar.month(self.world.calendar.day_of(start));
        self.cart.clear();
        self.viewed.clear();
        let ip = if device.on_mobile_network {
            // Carrier-grade NAT: a different address every session.
            let first = *self.rng.pick(&[37u8, 77, 92, 176, 80]);
            [
                first,
                self.rng.below(256) as u8,
                self.rng.below(256) as u8,
                self.rng.below(256) as u8,
            ]
        } else {
            self.person.home_ip
        };
        self.context.clear();
        self.context.push('{');
        json_field(&mut self.context, "channel", device.channel.as_str());
        json_field(&mut self.context, "user_agent", device.user_agent);
        let _ = write!(
            self.context,
            ",\"ip\":\"{}.{}.{}.{}\"",
            ip[0], ip[1], ip[2], ip[3]
        );
        json_field(&mut self.context, "locale", "fr-FR");
        json_field(&mut self.context, "timezone", "Europe/Paris");
        self.context.push('}');
    }

    /// The first page of a visit: the home page, or a category page from an ad or a search.
    fn landing(
        &mut self,
        device: &Device,
        logged: bool,
        out: &mut EventColumns,
        truth: &mut Truth,
    ) {
        let view = if self.rng.chance(0.4) {
            View::Home
        } else {
            let p = self.world.catalog.pick_product(&mut self.rng, self.month);
            View::Category(self.world.catalog.products[p].category)
        };
        self.view(view, device, logged, out, truth);
    }

    /// Category pages, product pages (with `Product Viewed`), sometimes an `Product Added`.
    fn browse(&mut self, device: &Device, logged: bool, out: &mut EventColumns, truth: &mut Truth) {
        let mut category = None;
        let products = self.rng.geometric(0.6, 12);
        for _ in 0..products {
            let index = match category {
                Some(c) if self.rng.chance(0.6) => {
                    self.world.catalog.pick_in_category(&mut self.rng, c)
                }
                _ => self.world.catalog.pick_product(&mut self.rng, self.month),
            };
            let cat = self.world.catalog.products[index].category;
            if category != Some(cat) && self.rng.chance(0.5) {
                self.view(View::Category(cat), device, logged, out, truth);
            }
            category = Some(cat);
            self.view(View::Product(index), device, logged, out, truth);
            self.product_event("Product Viewed", index, 1, device, logged, out, truth);
            self.viewed.push(index);
        }
        if !self.viewed.is_empty() && self.rng.chance(0.32) {
            let count = 1 + self.rng.geometric(0.25, 4) as usize;
            for _ in 0..count.min(self.viewed.len()) {
                let index = *self.rng.pick(&self.viewed);
                let quantity = 1 + self.rng.weighted(&[85, 10, 5]) as u32;
                self.cart.push((index, quantity));
                self.product_event("Product Added", index, quantity, device, logged, out, truth);
            }
        }
    }

    /// Cart, checkout and order, each step lost by some shoppers: most carts are abandoned.
    /// Returns whether the device is logged in afterwards.
    fn checkout(
        &mut self,
        device: &Device,
        mut logged: bool,
        out: &mut EventColumns,
        truth: &mut Truth,
    ) -> bool {
        let value: i64 = self
            .cart
            .iter()
            .map(|&(p, q)| self.world.catalog.products[p].price_cents * i64::from(q))
            .sum();
        let count: u32 = self.cart.iter().map(|&(_, q)| q).sum();
        if self.rng.chance(0.55) {
            self.view(View::Cart, device, logged, out, truth);
            self.props_start();
            json_raw(&mut self.props, "products", count);
            json_raw(&mut self.props, "value", Euros(value));
            self.props.push('}');
            self.emit(
                "track",
                Some("Cart Viewed"),
                device,
                logged,
                false,
                out,
                truth,
            );
        }
        if !self.rng.chance(0.45) {
            return logged;
        }
        if self.orders + 1 >= MAX_ORDERS {
            return logged;
        }
        let order_id = self.world.ids.order(self.person.index, self.orders);
        self.orders += 1;
        self.view(View::Checkout, device, logged, out, truth);
        self.props_start();
        json_field(&mut self.props, "order_id", &order_id);
        json_raw(&mut self.props, "value", Euros(value));
        json_field(&mut self.props, "currency", "EUR");
        json_raw(&mut self.props, "products", count);
        self.props.push('}');
        self.emit(
            "track",
            Some("Checkout Started"),
            device,
            logged,
            false,
            out,
            truth,
        );
        if !logged {
            if self.person.user_id.is_some() {
                self.log_in(device, out, truth);
                logged = true;
            } else {
                self.guest_identify(device, out, truth);
            }
        }
        if !self.rng.chance(0.6) {
            return logged;
        }
        // Some shops send the order from their back end: user_id only, no anonymous_id.
        let server_side = logged && self.rng.chance(0.3);
        self.view(View::Confirmation, device, logged, out, truth);
        self.props_start();
        json_field(&mut self.props, "order_id", &order_id);
        json_raw(&mut self.props, "revenue", Euros(value));
        json_field(&mut self.props, "currency", "EUR");
        json_raw(&mut self.props, "products", count);
        self.props.push('}');
        self.emit(
            "track",
            Some("Order Completed"),
            device,
            logged,
            server_side,
            out,
            truth,
        );
        logged
    }

    /// `Signed Up` the first time (if the account is opened online), `Logged In` after; then
    /// `identify` with the traits the person typed into the form.
    fn log_in(&mut self, device: &Device, out: &mut EventColumns, truth: &mut Truth) {
        let event = if self.signed_up {
            "Logged In"
        } else {
            "Signed Up"
        };
        self.signed_up = true;
        self.props_start();
        let method = *self
            .rng
            .pick(&["email", "email", "email", "google", "apple"]);
        json_field(&mut self.props, "method", method);
        self.props.push('}');
        self.emit("track", Some(event), device, true, false, out, truth);

        self.traits.clear();
        self.traits.push('{');
        let email = self.pick_email();
        let typed = noise::email(&mut self.rng, &email, noise::SELF_TYPED);
        json_field(&mut self.traits, "email", &typed);
        json_field(&mut self.traits, "first_name", self.person.first_name);
        json_field(&mut self.traits, "last_name", self.person.last_name);
        if self.rng.chance(0.4) {
            let phone = noise::phone(&mut self.rng, &self.person.mobile);
            json_field(&mut self.traits, "phone", &phone);
        }
        self.traits.push('}');
        self.props.clear();
        self.props.push_str("{}");
        self.emit("identify", None, device, true, false, out, truth);
    }

    /// A guest checkout: the device is identified by the e-mail typed for the receipt only.
    fn guest_identify(&mut self, device: &Device, out: &mut EventColumns, truth: &mut Truth) {
        self.traits.clear();
        self.traits.push('{');
        let email = self.pick_email();
        let typed = noise::email(&mut self.rng, &email, noise::SELF_TYPED);
        json_field(&mut self.traits, "email", &typed);
        if self.rng.chance(0.7) {
            json_field(&mut self.traits, "first_name", self.person.first_name);
            json_field(&mut self.traits, "last_name", self.person.last_name);
        }
        self.traits.push('}');
        self.props.clear();
        self.props.push_str("{}");
        self.emit("identify", None, device, false, false, out, truth);
    }

    fn pick_email(&mut self) -> String {
        let emails = &self.person.emails;
        let i = if emails.len() > 1 && self.rng.chance(0.2) {
            1
        } else {
            0
        };
        emails[i].clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn product_event(
        &mut self,
        name: &str,
        index: usize,
        quantity: u32,
        device: &Device,
        logged: bool,
        out: &mut EventColumns,
        truth: &mut Truth,
    ) {
        let catalog = &self.world.catalog;
        let p = &catalog.products[index];
        self.props_start();
        json_field(&mut self.props, "sku", &p.sku);
        json_field(&mut self.props, "name", &p.name);
        json_field(
            &mut self.props,
            "category",
            catalog.categories[p.category].name,
        );
        json_raw(&mut self.props, "price", Euros(p.price_cents));
        json_raw(&mut self.props, "quantity", quantity);
        self.props.push('}');
        self.emit("track", Some(name), device, logged, false, out, truth);
    }

    fn view(
        &mut self,
        view: View,
        device: &Device,
        logged: bool,
        out: &mut EventColumns,
        truth: &mut Truth,
    ) {
        let catalog = &self.world.catalog;
        self.props_start();
        match device.channel {
            Channel::Web => {
                const SUFFIX: &str = " | Maison Lumière";
                let (path, title, category): ([&str; 2], [&str; 2], _) = match view {
                    View::Home => (["/", ""], ["Maison Lumière – maison & jardin", ""], None),
                    View::Category(c) => {
                        let cat = &catalog.categories[c];
                        (["/", cat.slug], [cat.title, SUFFIX], Some(cat.name))
                    }
                    View::Product(i) => {
                        let p = &catalog.products[i];
                        let category = catalog.categories[p.category].name;
                        (
                            ["/p/", p.slug.as_str()],
                            [p.name.as_str(), SUFFIX],
                            Some(category),
                        )
                    }
                    View::Cart => (["/panier", ""], ["Mon panier", SUFFIX], None),
                    View::Checkout => (["/commande", ""], ["Commande", SUFFIX], None),
                    View::Confirmation => (
                        ["/commande/confirmation", ""],
                        ["Merci pour votre commande", SUFFIX],
                        None,
                    ),
                };
                json_concat(&mut self.props, "url", &[SITE, path[0], path[1]]);
                json_concat(&mut self.props, "path", &path);
                json_concat(&mut self.props, "title", &title);
                json_opt(&mut self.props, "category", category);
            }
            Channel::Ios | Channel::Android => {
                let (name, category, sku) = match view {
                    View::Home => ("Home", None, None),
                    View::Category(c) => ("Category", Some(catalog.categories[c].name), None),
                    View::Product(i) => {
                        let p = &catalog.products[i];
                        (
                            "Product",
                            Some(catalog.categories[p.category].name),
                            Some(p.sku.as_str()),
                        )
                    }
                    View::Cart => ("Cart", None, None),
                    View::Checkout => ("Checkout", None, None),
                    View::Confirmation => ("Order Confirmation", None, None),
                };
                json_field(&mut self.props, "name", name);
                json_opt(&mut self.props, "category", category);
                if let Some(sku) = sku {
                    json_field(&mut self.props, "sku", sku);
                }
            }
        }
        self.props.push('}');
        self.emit(
            device.channel.view_type(),
            None,
            device,
            logged,
            false,
            out,
            truth,
        );
    }

    fn props_start(&mut self) {
        self.props.clear();
        self.props.push('{');
    }

    /// Appends one event with the current properties (and traits, for `identify`).
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        kind: &str,
        event: Option<&str>,
        device: &Device,
        logged: bool,
        server_side: bool,
        out: &mut EventColumns,
        truth: &mut Truth,
    ) {
        // A few seconds to a couple of minutes between two actions of one visit.
        self.now += (self.rng.range(2, 90) * 1_000_000 + self.rng.below(1_000_000)) as i64;
        self.message_id.clear();
        self.world.ids.uuid(
            Kind::Message,
            self.person.index,
            self.seq,
            &mut self.message_id,
        );
        self.seq += 1;
        let user_id = if logged {
            self.person.user_id.as_deref()
        } else {
            None
        };
        out.push(&Event {
            message_id: &self.message_id,
            kind,
            anonymous_id: (!server_side).then_some(device.anonymous_id.as_str()),
            user_id,
            event,
            properties: &self.props,
            traits: (kind == "identify").then_some(self.traits.as_str()),
            context: &self.context,
            timestamp: self.now,
        });
        truth.push("web:", &self.message_id, &self.person.person_id);
    }
}

/// Seconds after local midnight: lunch breaks and evenings on the sofa.
fn web_time_of_day(rng: &mut Rng) -> u32 {
    const HOURS: [u32; 24] = [
        4, 2, 1, 1, 1, 2, 4, 8, 12, 14, 15, 16, 20, 22, 17, 15, 16, 18, 24, 30, 34, 32, 22, 10,
    ];
    let hour = rng.weighted(&HOURS) as u32;
    hour * 3600 + rng.below(3600) as u32
}
