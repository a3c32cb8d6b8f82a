//! Who the customers really are: one `Person` per ground-truth person id, with true identifiers.
//!
//! A person is a pure function of (seed, person index), and a household of (seed, index / 2),
//! so that chunks can be generated in any order, on any thread, with identical results. The
//! identifiers here are the true, canonical ones; `noise` decides how each source mistypes them.

use super::calendar::DAYS;
use super::ids::Kind;
use super::names::{self, EMAIL_DOMAINS};
use super::rng::Rng;
use super::world::World;

/// Purposes of the per-person random streams (one per source keeps sources independent).
pub mod stream {
    pub const PERSON: u64 = 1;
    pub const HOUSEHOLD: u64 = 2;
    pub const WEB: u64 = 3;
    pub const POS: u64 = 4;
    pub const CRM: u64 = 5;
    pub const SUPPORT: u64 = 6;
    pub const SINGLE: u64 = 7;
    pub const DEVICE: u64 = 8;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Country {
    France,
    Belgium,
    Switzerland,
}

/// A phone number as its owner knows it: country and national significant number
/// (without the trunk 0: "612345678" for 06 12 34 56 78).
#[derive(Clone, Debug)]
pub struct Phone {
    pub country: Country,
    pub digits: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Channel {
    Web,
    Ios,
    Android,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Ios => "ios",
            Channel::Android => "android",
        }
    }

    /// Web pages send `page` calls, apps send `screen` calls (Segment spec).
    pub fn view_type(self) -> &'static str {
        match self {
            Channel::Web => "page",
            Channel::Ios | Channel::Android => "screen",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Device {
    pub anonymous_id: String,
    pub channel: Channel,
    pub user_agent: &'static str,
    /// At home (fixed household IP) or on a mobile network (an IP per session).
    pub on_mobile_network: bool,
    /// The household tablet, also used by the partner (a second person on one anonymous_id).
    pub shared: bool,
}

pub struct Person {
    pub index: u64,
    pub person_id: String,
    pub female: bool,
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub town: usize,
    /// Canonical (lower-case, trimmed) addresses; the first is the main one.
    pub emails: Vec<String>,
    pub mobile: Phone,
    /// The household's landline, shared by a couple: a true identifier of two people.
    pub landline: Option<Phone>,
    /// The web shop account (`u_…`), if the person has one.
    pub user_id: Option<String>,
    /// Whether the account was opened on the web (a `Signed Up` event) rather than in store.
    pub signed_up_online: bool,
    pub cards: Vec<String>,
    pub devices: Vec<Device>,
    pub web_sessions: u32,
    pub store_sales: u32,
    pub tickets: u32,
    pub newsletter_only: bool,
    /// First day (index into the calendar) the person is a customer.
    pub since_day: u32,
    pub home_ip: [u8; 4],
}

/// What two people of one household share (drawn once per pair of person indices).
struct Household {
    shares_tablet: bool,
    /// Index into the last names when the couple shares one.
    family_name: Option<usize>,
    town: usize,
    home_ip: [u8; 4],
    landline: bool,
    lead: u64,
}

/// Draws people from the run's world.
pub struct People<'a> {
    world: &'a World,
}

impl<'a> People<'a> {
    pub fn new(world: &'a World) -> Self {
        People { world }
    }

    pub fn person(&self, index: u64) -> Person {
        let house = self.household(index);
        let mut rng = Rng::stream(self.world.seed, stream::PERSON, index);

        let female = rng.chance(0.52);
        let first_name = if female {
            names::FEMALE[rng.cumulative(&self.world.female_names)]
        } else {
            names::MALE[rng.cumulative(&self.world.male_names)]
        };
        let own_last = rng.cumulative(&self.world.last_names);
        let last_name = names::LAST[house.family_name.unwrap_or(own_last)];

        let token = self
            .world
            .ids
            .permute(Kind::Email, index, self.world.customers)
            + 1;
        let mut emails = vec![email(&mut rng, first_name, last_name, token, None)];
        if rng.chance(0.25) {
            let avoid = emails[0].rsplit('@').next().map(str::to_owned);
            emails.push(email(
                &mut rng,
                first_name,
                last_name,
                token,
                avoid.as_deref(),
            ));
        }

        let mobile = self.mobile(&mut rng, index);
        let landline = house
            .landline
            .then(|| self.landline(house.lead, house.town));

        // Sharing a tablet means both partners log in on it, so both need an account.
        let has_account = house.shares_tablet || rng.chance(0.45);
        let user_id = has_account.then(|| self.world.ids.account(index));
        let signed_up_online = rng.chance(0.8);

        let mut cards = Vec::new();
        if rng.chance(0.5) {
            cards.push(self.world.ids.card(index, 0));
            if rng.chance(0.04) {
                cards.push(self.world.ids.card(index, 1));
            }
        }

        let web_active = house.shares_tablet || rng.chance(0.78);
        let mut devices = Vec::new();
        if web_active {
            let count = 1 + rng.weighted(&[55, 33, 12]);
            for d in 0..count {
                devices.push(self.device(&mut rng, index, d as u64, false));
            }
            if house.shares_tablet {
                devices.push(self.device(&mut rng, house.lead, 7, true));
            }
        }
        // Most people visit a few times (tail ~1/k^2); one in seven is a regular whose visit
        // count has a much heavier tail (~1/k), up to hundreds of sessions. Tablet sharers get
        // two more, spent on the tablet.
        let visits = if !web_active {
            0
        } else if rng.chance(0.15) {
            rng.heavy_tail(400)
        } else {
            rng.heavy_tail(400).min(rng.heavy_tail(400)) + rng.below(2) as u32
        };
        let web_sessions = visits + u32::from(house.shares_tablet) * 2;

        let store_sales = if cards.is_empty() {
            if rng.chance(0.45) {
                1 + rng.geometric(0.45, 40)
            } else {
                0
            }
        } else if rng.chance(0.9) {
            1 + rng.geometric(0.6, 60)
        } else {
            0
        };
        let tickets = if rng.chance(0.18) {
            1 + rng.geometric(0.4, 10)
        } else {
            0
        };
        let newsletter_only = user_id.is_none() && cards.is_empty() && rng.chance(0.06);
        // Two customers in five were already customers when the history starts; the others
        // joined along the way (the base grows, but not from nothing).
        let since_day = if rng.chance(0.4) {
            0
        } else {
            rng.below(u64::from(DAYS - 90)) as u32
        };

        Person {
            index,
            person_id: format!("p_{index:07}"),
            female,
            first_name,
            last_name,
            town: house.town,
            emails,
            mobile,
            landline,
            user_id,
            signed_up_online,
            cards,
            devices,
            web_sessions,
            store_sales,
            tickets,
            newsletter_only,
            since_day,
            home_ip: house.home_ip,
        }
    }

    /// Persons 2k and 2k+1 may be a couple: same town, same landline, same home IP, often the
    /// same last name, and now and then one tablet for both. Everyone else lives alone.
    fn household(&self, index: u64) -> Household {
        let lead = index & !1;
        let mut rng = Rng::stream(self.world.seed, stream::HOUSEHOLD, lead);
        let couple = lead + 1 < self.world.customers && rng.chance(0.45);
        if !couple {
            let mut own = Rng::stream(self.world.seed, stream::SINGLE, index);
            return Household {
                shares_tablet: false,
                family_name: None,
                town: self.world.catalog.pick_town(&mut own),
                home_ip: home_ip(&mut own),
                landline: own.chance(0.3),
                // A single's landline is keyed by their own index: never another household's lead.
                lead: index,
            };
        }
        // About 7% of couples, i.e. ~2% of all households, share a tablet.
        let shares_tablet = rng.chance(0.07);
        let family_name = rng
            .chance(0.6)
            .then(|| rng.cumulative(&self.world.last_names));
        Household {
            shares_tablet,
            family_name,
            town: self.world.catalog.pick_town(&mut rng),
            home_ip: home_ip(&mut rng),
            landline: rng.chance(0.3),
            lead,
        }
    }

    fn mobile(&self, rng: &mut Rng, index: u64) -> Phone {
        // 06/07 + 8 digits starting at 1: unique per person, never the junk 06 00 00 00 00.
        let v = self.world.ids.permute(Kind::Mobile, index, 180_000_000);
        let rest = 10_000_000 + v % 90_000_000;
        if rng.chance(0.015) {
            // Cross-border customers keep their Belgian or Swiss mobile.
            let (country, lead) = if v < 90_000_000 {
                (Country::Belgium, 4)
            } else {
                (Country::Switzerland, 7)
            };
            return Phone {
                country,
                digits: format!("{lead}{rest}"),
            };
        }
        Phone {
            country: Country::France,
            digits: format!("{}{rest}", 6 + v / 90_000_000),
        }
    }

    fn landline(&self, lead: u64, town: usize) -> Phone {
        let store = &self.world.catalog.stores[self.world.catalog.towns[town].store];
        let region = landline_region(store.latitude, store.longitude);
        let v = self.world.ids.permute(Kind::Landline, lead, 90_000_000);
        Phone {
            country: Country::France,
            digits: format!("{region}{}", 10_000_000 + v),
        }
    }

    fn device(&self, rng: &mut Rng, owner: u64, seq: u64, shared: bool) -> Device {
        let mut anonymous_id = String::with_capacity(36);
        self.world
            .ids
            .uuid(Kind::Device, owner, seq, &mut anonymous_id);
        if shared {
            let mut h = Rng::stream(self.world.seed, stream::DEVICE, owner);
            let (channel, uas) = *h.pick(&[(Channel::Web, UA_TABLET), (Channel::Ios, UA_IPAD_APP)]);
            return Device {
                anonymous_id,
                channel,
                user_agent: uas[h.index(uas.len())],
                on_mobile_network: false,
                shared: true,
            };
        }
        let (channel, uas, mobile_net) = match rng.weighted(&[30, 30, 15, 18, 7]) {
            0 => (Channel::Web, UA_DESKTOP, false),
            1 => (Channel::Web, UA_MOBILE_WEB, true),
            2 => (Channel::Ios, UA_IOS_APP, true),
            3 => (Channel::Android, UA_ANDROID_APP, true),
            _ => (Channel::Web, UA_TABLET, false),
        };
        Device {
            anonymous_id,
            channel,
            user_agent: uas[rng.index(uas.len())],
            on_mobile_network: mobile_net,
            shared: false,
        }
    }
}

/// French landline prefixes are regional: 01 Paris area, 02 north-west, 03 north-east,
/// 04 south-east, 05 south-west.
fn landline_region(latitude: f64, longitude: f64) -> u8 {
    if latitude > 48.5 && (1.5..3.2).contains(&longitude) {
        1
    } else if latitude > 46.0 && longitude < 2.0 {
        2
    } else if latitude > 46.5 {
        3
    } else if longitude >= 3.0 {
        4
    } else {
        5
    }
}

/// A canonical address `local@domain` whose local part carries the person's unique token, so
/// that two different people never own the same mailbox (as in real life).
fn email(rng: &mut Rng, first: &str, last: &str, token: u64, avoid_domain: Option<&str>) -> String {
    let f = names::ascii_letters(first);
    let l = names::ascii_letters(last);
    let initial = f.chars().next().unwrap_or('x');
    let local = match rng.weighted(&[35, 15, 15, 8, 8, 8, 6]) {
        0 => format!("{f}.{l}{token}"),
        1 => format!("{f}{l}{token}"),
        2 => format!("{initial}{l}{token}"),
        3 => format!("{f}_{l}{token}"),
        4 => format!("{l}.{f}{token}"),
        5 => format!("{f}{token}"),
        _ => format!("{initial}.{l}{token}"),
    };
    let weights: Vec<u32> = EMAIL_DOMAINS
        .iter()
        .map(|&(d, w)| if Some(d) == avoid_domain { 0 } else { w })
        .collect();
    let domain = EMAIL_DOMAINS[rng.weighted(&weights)].0;
    format!("{local}@{domain}")
}

fn home_ip(rng: &mut Rng) -> [u8; 4] {
    // First octets of large French residential ISPs.
    let first = *rng.pick(&[78u8, 80, 82, 83, 86, 88, 90, 109, 176, 2]);
    [
        first,
        rng.below(256) as u8,
        rng.below(256) as u8,
        1 + rng.below(254) as u8,
    ]
}

const UA_DESKTOP: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:130.0) Gecko/20100101 Firefox/130.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36 Edg/128.0.0.0",
];
const UA_MOBILE_WEB: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Mobile Safari/537.36",
];
const UA_IOS_APP: &[&str] = &[
    "MaisonLumiere/4.12.0 (iPhone; iOS 17.5; Scale/3.00)",
    "MaisonLumiere/4.11.2 (iPhone; iOS 16.7; Scale/2.00)",
];
const UA_ANDROID_APP: &[&str] = &[
    "MaisonLumiere/4.12.0 (Linux; Android 14; SM-A546B)",
    "MaisonLumiere/4.11.2 (Linux; Android 13; Redmi Note 12)",
];
const UA_TABLET: &[&str] = &[
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
];
const UA_IPAD_APP: &[&str] = &["MaisonLumiere/4.12.0 (iPad; iPadOS 17.5; Scale/2.00)"];
