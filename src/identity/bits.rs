//! A set of dense ids (records, values, profiles) as one bit each.

/// One bit per id, for flags checked on every row of a table or of a batch: an eighth of a
/// `Vec<bool>`, so that it stays in cache. Ids past the end read as unset.
#[derive(Debug, Default, Clone)]
pub(super) struct Bits(Vec<u64>);

impl Bits {
    pub(super) fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    /// Sets the bit, growing the set if `i` is past its end.
    pub(super) fn set(&mut self, i: u32) {
        let word = i as usize / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (i % 64);
    }

    pub(super) fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Clears the bit; whether it was set.
    pub(super) fn take(&mut self, i: u32) -> bool {
        let was = self.get(i);
        if was {
            self.0[i as usize / 64] &= !(1 << (i % 64));
        }
        was
    }

    /// How many bits are set.
    #[cfg(test)]
    pub(super) fn count(&self) -> u32 {
        self.0.iter().map(|word| word.count_ones()).sum()
    }
}
