//! How people, cashiers and agents mistype identifiers: case, spaces, formats, typos, junk.
//!
//! Noise is applied only when a source writes a value down; the person behind the row never
//! changes, so the ground truth stays exact however messy the value is.

use super::names::{self, DOMAIN_TYPOS};
use super::people::{Country, Phone};
use super::rng::Rng;

/// How carefully a source captures what it is told.
#[derive(Clone, Copy)]
pub struct Care {
    /// Probability of unusual capitalisation ("Marie.Dupont@Gmail.com").
    pub case: f64,
    /// Probability of stray leading or trailing spaces.
    pub spaces: f64,
    /// Probability of a domain typo ("gmial.com"): a valid-looking but different address.
    pub typo: f64,
    /// Probability of a broken value ("marie.dupont@", "n/a", "").
    pub invalid: f64,
}

/// A person typing into the web shop or the app (autocapitalisation, the odd typo).
pub const SELF_TYPED: Care = Care {
    case: 0.15,
    spaces: 0.04,
    typo: 0.01,
    invalid: 0.004,
};
/// A cashier typing what a customer spells out at the till, in a hurry.
pub const CASHIER: Care = Care {
    case: 0.30,
    spaces: 0.12,
    typo: 0.03,
    invalid: 0.03,
};
/// A support agent copying an address from a call or a chat.
pub const AGENT: Care = Care {
    case: 0.20,
    spaces: 0.08,
    typo: 0.02,
    invalid: 0.015,
};
/// Taken from an e-mail's From header: the address as the mail provider spells it.
pub const MAIL_HEADER: Care = Care {
    case: 0.05,
    spaces: 0.0,
    typo: 0.0,
    invalid: 0.0,
};

/// Placeholders typed for people who refuse to give an address: shared by many, owned by none.
pub const JUNK_EMAILS: &[&str] = &["test@test.com", "noemail@maisonlumiere.fr", "a@a.fr"];
/// Placeholders typed for people who refuse to give a number.
pub const JUNK_PHONES: &[&str] = &["0000000000", "0600000000", "0101010101"];

pub fn junk_email(rng: &mut Rng) -> String {
    JUNK_EMAILS[rng.weighted(&[50, 40, 10])].to_owned()
}

pub fn junk_phone(rng: &mut Rng) -> String {
    JUNK_PHONES[rng.weighted(&[50, 40, 10])].to_owned()
}

/// The canonical address as a source writes it down.
pub fn email(rng: &mut Rng, canonical: &str, care: Care) -> String {
    let (local, domain) = canonical.split_once('@').unwrap_or((canonical, ""));
    if rng.chance(care.invalid) {
        return match rng.below(5) {
            0 => format!("{local}@"),
            1 => "n/a".to_owned(),
            2 => String::new(),
            3 => format!("{local}@{}", domain.split('.').next().unwrap_or(domain)),
            _ => format!("{local}.{domain}"),
        };
    }
    let mut domain = domain.to_owned();
    if rng.chance(care.typo) {
        let typos: Vec<&str> = DOMAIN_TYPOS
            .iter()
            .filter(|(d, _)| *d == domain)
            .map(|(_, t)| *t)
            .collect();
        if !typos.is_empty() {
            domain = (*rng.pick(&typos)).to_owned();
        }
    }
    let mut out = format!("{local}@{domain}");
    if rng.chance(care.case) {
        out = match rng.below(3) {
            // Phone keyboards capitalise the first letter.
            0 => capitalize_first(&out),
            1 => out.to_uppercase(),
            // Some people write their name-based address the way they write their name.
            _ => title_case_parts(&out),
        };
    }
    if rng.chance(care.spaces) {
        out = match rng.below(3) {
            0 => format!(" {out}"),
            1 => format!("{out} "),
            _ => format!("  {out} "),
        };
    }
    out
}

/// How the phone is written: every format French people and tills use.
pub fn phone(rng: &mut Rng, phone: &Phone) -> String {
    let d = &phone.digits;
    match phone.country {
        Country::France => {
            let pairs = format!(
                "0{} {} {} {} {}",
                &d[0..1],
                &d[1..3],
                &d[3..5],
                &d[5..7],
                &d[7..9]
            );
            match rng.weighted(&[30, 25, 12, 10, 6, 8, 4, 5]) {
                0 => pairs,
                1 => format!("0{d}"),
                2 => format!("+33{d}"),
                3 => format!("+33 {}", &pairs[1..]),
                4 => format!("0033{d}"),
                5 => pairs.replace(' ', "."),
                6 => pairs.replace(' ', "-"),
                _ => format!("+33 (0){}", &pairs[1..]),
            }
        }
        Country::Belgium | Country::Switzerland => {
            let code = if phone.country == Country::Belgium {
                "32"
            } else {
                "41"
            };
            match rng.below(3) {
                0 => format!(
                    "+{code} {} {} {} {}",
                    &d[0..3],
                    &d[3..5],
                    &d[5..7],
                    &d[7..9]
                ),
                1 => format!("+{code}{d}"),
                _ => format!("00{code}{d}"),
            }
        }
    }
}

/// The number as a phone system records the caller: E.164.
pub fn phone_e164(phone: &Phone) -> String {
    let code = match phone.country {
        Country::France => "33",
        Country::Belgium => "32",
        Country::Switzerland => "41",
    };
    format!("+{code}{}", phone.digits)
}

/// A name as a till or an old CRM stores it: often in capitals, sometimes without accents.
pub fn name(rng: &mut Rng, name: &str, care: Care) -> String {
    if !rng.chance(care.case * 1.5) {
        return name.to_owned();
    }
    match rng.below(3) {
        0 => name.to_uppercase(),
        1 => names::strip_accents(name),
        _ => names::strip_accents(name).to_uppercase(),
    }
}

/// A loyalty card as the till records it: scanned (clean) or keyed in by hand.
pub fn card(rng: &mut Rng, card: &str) -> String {
    if !rng.chance(0.04) {
        return card.to_owned();
    }
    let Some(digits) = card.get(2..12) else {
        return card.to_owned();
    };
    match rng.below(3) {
        0 => card.to_lowercase(),
        1 => format!("LC {} {} {}", &digits[0..4], &digits[4..8], &digits[8..]),
        _ => digits.to_owned(),
    }
}

fn capitalize_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "marie.dupont@gmail.com" → "Marie.Dupont@Gmail.com": each part of the name, and the provider.
fn title_case_parts(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    let mut in_domain = false;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        in_domain |= c == '@';
        start = c == '@' || (!in_domain && matches!(c, '.' | '_'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_formats_keep_the_digits() {
        let p = Phone {
            country: Country::France,
            digits: "612345678".into(),
        };
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let s = phone(&mut rng, &p);
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            assert!(digits.ends_with("612345678"), "{s}");
            seen.insert(s);
        }
        assert!(seen.contains("06 12 34 56 78"));
        assert!(seen.contains("+33 6 12 34 56 78"));
        assert!(seen.contains("0033612345678"));
        assert!(seen.contains("06.12.34.56.78"));
        assert_eq!(phone_e164(&p), "+33612345678");
    }

    #[test]
    fn messy_emails_still_name_the_same_mailbox_when_valid() {
        let mut rng = Rng::new(2);
        let mut messy = 0;
        for _ in 0..2000 {
            let e = email(&mut rng, "marie.dupont12@gmail.com", CASHIER);
            let clean = e.trim().to_lowercase();
            if clean != "marie.dupont12@gmail.com" {
                // Either broken or a domain typo: never another person's valid address.
                assert!(!clean.ends_with("@gmail.com"), "{e}");
            } else if e != clean {
                messy += 1;
            }
        }
        assert!(messy > 100);
        assert_eq!(
            title_case_parts("marie.dupont@gmail.com"),
            "Marie.Dupont@Gmail.com"
        );
    }
}
