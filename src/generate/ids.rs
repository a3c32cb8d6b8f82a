//! Opaque, unique identifiers (message ids, sale ids, account ids, cards…) from a person's index.
//!
//! Every id is a keyed permutation of (person index, sequence number): unique by construction,
//! without a global counter (so chunks can be generated independently), and without leaking the
//! person index (so an identity resolver cannot cheat by decoding ids).

use super::rng::mix;

/// Which kind of id: keeps the permutations of different id kinds unrelated.
#[derive(Clone, Copy)]
pub enum Kind {
    Message = 1,
    Device = 2,
    Sale = 3,
    Contact = 4,
    Ticket = 5,
    Account = 6,
    Card = 7,
    Order = 8,
    Email = 9,
    Mobile = 10,
    Landline = 11,
}

/// The largest person count the id formats below stay unique for.
pub const MAX_PEOPLE: u64 = 100_000_000;

/// Sequence numbers per person and kind; generators stop before reaching them.
pub const MAX_EVENTS: u64 = 1 << 22;
pub const MAX_SALES: u64 = 64;
pub const MAX_CONTACTS: u64 = 8;
pub const MAX_TICKETS: u64 = 16;
pub const MAX_ORDERS: u64 = 512;

#[derive(Clone)]
pub struct Ids {
    seed: u64,
    /// Account numbers are padded to the width of the space they are drawn from.
    account_space: u64,
    account_width: usize,
}

impl Ids {
    pub fn new(seed: u64, people: u64) -> Self {
        // At least a million account numbers so that a small demo still looks like a real shop.
        let mut space = 1_000_000u64;
        let mut width = 6;
        while space < people {
            space *= 10;
            width += 1;
        }
        Ids {
            seed,
            account_space: space,
            account_width: width,
        }
    }

    fn key(&self, kind: Kind) -> u64 {
        mix(self.seed, kind as u64)
    }

    /// A keyed bijection of `x` in `0..n` onto `0..n` (Feistel network + cycle walking).
    pub fn permute(&self, kind: Kind, x: u64, n: u64) -> u64 {
        permute(self.key(kind), x, n)
    }

    /// A random-looking version-4 UUID, unique per (kind, person, seq).
    pub fn uuid(&self, kind: Kind, person: u64, seq: u64, out: &mut String) {
        // 62 unique bits from the bijection, the rest filled by a hash; version and variant
        // bits are placed where they do not overwrite the unique part.
        let unique = permute(
            self.key(kind),
            (person << 22) | (seq & (MAX_EVENTS - 1)),
            1 << 62,
        );
        let filler = mix(self.key(kind) ^ 0x5555, unique);
        let hi = (filler & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let lo = unique | 0x8000_0000_0000_0000;
        push_hex(out, hi >> 32, 8);
        out.push('-');
        push_hex(out, (hi >> 16) & 0xFFFF, 4);
        out.push('-');
        push_hex(out, hi & 0xFFFF, 4);
        out.push('-');
        push_hex(out, lo >> 48, 4);
        out.push('-');
        push_hex(out, lo & 0xFFFF_FFFF_FFFF, 12);
    }

    /// Shop account id, like `u_004821`.
    pub fn account(&self, person: u64) -> String {
        let n = self.permute(Kind::Account, person, self.account_space);
        format!("u_{n:0w$}", w = self.account_width)
    }

    /// Loyalty card number, `LC` + 10 digits; `nth` > 0 for a replacement card.
    pub fn card(&self, person: u64, nth: u64) -> String {
        let n = self.permute(Kind::Card, person * 4 + nth.min(3), 10_000_000_000);
        format!("LC{n:010}")
    }

    pub fn sale(&self, person: u64, seq: u64) -> String {
        let n = self.permute(Kind::Sale, person * MAX_SALES + seq, 10_000_000_000_000);
        format!("T{n:013}")
    }

    pub fn contact(&self, person: u64, seq: u64) -> String {
        let n = self.permute(Kind::Contact, person * MAX_CONTACTS + seq, 10_000_000_000);
        format!("C{n:010}")
    }

    pub fn ticket(&self, person: u64, seq: u64) -> String {
        let n = self.permute(Kind::Ticket, person * MAX_TICKETS + seq, 100_000_000_000);
        format!("{n:011}")
    }

    pub fn order(&self, person: u64, seq: u64) -> String {
        let n = self.permute(Kind::Order, person * MAX_ORDERS + seq, 1_000_000_000_000);
        format!("ML{n:012}")
    }
}

/// A keyed bijection of `x` in `0..n` onto `0..n`: a 4-round Feistel network over the smallest
/// even number of bits covering `n`, walking the cycle until the value falls back inside `0..n`.
fn permute(key: u64, x: u64, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2).max(1);
    let mask = (1u64 << half) - 1;
    let mut v = x % n;
    loop {
        let (mut left, mut right) = (v >> half, v & mask);
        for round in 0..4u64 {
            let f = mix(key ^ round, right) & mask;
            (left, right) = (right, left ^ f);
        }
        v = (left << half) | right;
        if v < n {
            return v;
        }
    }
}

fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xF) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 10, 1000, 4097] {
            let seen: HashSet<u64> = (0..n).map(|x| permute(99, x, n)).collect();
            assert_eq!(seen.len() as u64, n);
            assert!(seen.iter().all(|&v| v < n));
        }
    }

    #[test]
    fn uuids_are_unique_and_well_formed() {
        let ids = Ids::new(1, 100);
        let mut seen = HashSet::new();
        for p in 0..50 {
            for s in 0..50 {
                let mut u = String::new();
                ids.uuid(Kind::Message, p, s, &mut u);
                assert_eq!(u.len(), 36);
                assert_eq!(&u[14..15], "4");
                assert!(seen.insert(u));
            }
        }
    }
}
