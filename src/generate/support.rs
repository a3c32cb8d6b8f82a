//! Support tickets (NDJSON): by e-mail, phone or chat, each channel capturing identifiers its own way.

use super::calendar::{DAYS, TRAFFIC, rfc3339};
use super::ids::MAX_TICKETS;
use super::noise;
use super::people::{Person, stream};
use super::rng::Rng;
use super::tables::{Line, Truth};
use super::text::{json_field, json_opt, json_raw};
use super::world::World;

/// Subjects; `{}` is replaced by a product name.
const SUBJECTS: &[&str] = &[
    "Retard de livraison de ma commande",
    "Produit reçu endommagé : {}",
    "Pièce manquante : {}",
    "Demande de retour et remboursement",
    "Question sur ma carte de fidélité",
    "Modifier mon adresse e-mail",
    "Facture introuvable",
    "Disponibilité en magasin : {}",
    "Notice de montage : {}",
    "Je n'arrive pas à me connecter",
    "Désinscription de la newsletter",
    "Garantie : {}",
    "Points fidélité non crédités",
];

pub fn tickets(world: &World, person: &Person, out: &mut Vec<Line>, truth: &mut Truth) {
    let mut rng = Rng::stream(world.seed, stream::SUPPORT, person.index);
    let cal = &world.calendar;
    for seq in 0..u64::from(person.tickets).min(MAX_TICKETS) {
        let day = cal.pick_day(&mut rng, person.since_day, &TRAFFIC);
        let created = cal.micros(day, 8 * 3600 + rng.below(11 * 3600) as u32);
        let (channel, email, phone) = match rng.weighted(&[50, 30, 20]) {
            0 => {
                // From the mail header: the address as the provider spells it.
                let i = usize::from(person.emails.len() > 1 && rng.chance(0.2));
                let email = noise::email(&mut rng, &person.emails[i], noise::MAIL_HEADER);
                let phone = rng
                    .chance(0.1)
                    .then(|| noise::phone(&mut rng, &person.mobile));
                ("email", Some(email), phone)
            }
            1 => {
                // Caller ID in E.164; the agent types an address if the caller gives one.
                let phone = match rng.weighted(&[80, 15, 5]) {
                    0 => Some(noise::phone_e164(&person.mobile)),
                    1 => person.landline.as_ref().map(noise::phone_e164),
                    _ => None,
                };
                let email = match rng.weighted(&[50, 3, 47]) {
                    0 => Some(noise::email(&mut rng, &person.emails[0], noise::AGENT)),
                    1 => Some(noise::junk_email(&mut rng)),
                    _ => None,
                };
                ("phone", email, phone)
            }
            _ => {
                let email = rng
                    .chance(0.85)
                    .then(|| noise::email(&mut rng, &person.emails[0], noise::SELF_TYPED));
                let phone = match rng.weighted(&[15, 2, 83]) {
                    0 => Some(noise::phone(&mut rng, &person.mobile)),
                    1 => Some(noise::junk_phone(&mut rng)),
                    _ => None,
                };
                ("chat", email, phone)
            }
        };
        let template = *rng.pick(SUBJECTS);
        let subject = if template.contains("{}") {
            let p = world.catalog.pick_product(&mut rng, cal.month(day));
            template.replace("{}", &world.catalog.products[p].name)
        } else {
            template.to_owned()
        };
        // Recent tickets are still being worked on; old ones are almost all solved.
        let status = if DAYS - day <= 10 {
            ["open", "pending", "solved"][rng.weighted(&[40, 40, 20])]
        } else {
            ["open", "pending", "solved"][rng.weighted(&[3, 5, 92])]
        };
        let satisfaction =
            (status == "solved" && rng.chance(0.55)).then(|| 1 + rng.weighted(&[8, 7, 15, 30, 40]));

        let ticket_id = world.ids.ticket(person.index, seq);
        truth.push("support:", &ticket_id, &person.person_id);
        let mut text = String::with_capacity(220);
        text.push('{');
        json_field(&mut text, "ticket_id", &ticket_id);
        json_opt(&mut text, "email", email.as_deref());
        json_opt(&mut text, "phone", phone.as_deref());
        json_field(&mut text, "subject", &subject);
        json_field(&mut text, "channel", channel);
        json_field(&mut text, "status", status);
        match satisfaction {
            Some(s) => json_raw(&mut text, "satisfaction", s),
            None => json_opt(&mut text, "satisfaction", None),
        }
        json_field(&mut text, "created_at", &rfc3339(created));
        text.push_str("}\n");
        out.push(Line {
            at: created,
            id: ticket_id,
            text,
        });
    }
}
