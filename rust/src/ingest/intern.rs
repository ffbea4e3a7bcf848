//! Interning keys to dense ids: an open-addressing table of (hash tag, id) slots over the keys
//! stored back to back in an [`Arena`], so a lookup touches one small slot array and the
//! compact key bytes instead of pointers into the input.

use super::source::Arena;

/// Byte-string equality for short keys, compared 8 bytes at a time inline (a library call
/// costs more than the comparison itself).
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// Keys and their ids (`id` = position in `keys`).
pub(crate) struct Interner {
    pub keys: Arena,
    /// 0 = empty, else `(hash >> 32) << 32 | (id + 1)`.
    slots: Vec<u64>,
    hasher: ahash::RandomState,
}

/// Where a missing key goes: its hash and free slot.
pub(crate) struct Vacant {
    hash: u64,
    slot: usize,
}

impl Interner {
    pub fn new() -> Self {
        Interner { keys: Arena::default(), slots: vec![0; 1024], hasher: ahash::RandomState::with_seeds(1, 2, 3, 4) }
    }

    /// The id of `key`, or where to insert it.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Result<u32, Vacant> {
        let hash = self.hasher.hash_one(key);
        let mask = self.slots.len() - 1;
        let tag = hash >> 32;
        let mut slot = hash as usize & mask;
        loop {
            let s = self.slots[slot];
            if s == 0 {
                return Err(Vacant { hash, slot });
            }
            let id = (s & 0xffff_ffff) as u32 - 1;
            if s >> 32 == tag && same(self.keys.get(id as usize), key) {
                return Ok(id);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Adds `key` (absent, located by `find`) and returns its id.
    pub fn insert(&mut self, key: &[u8], at: Vacant) -> u32 {
        let id = self.keys.len() as u32;
        self.keys.push(key);
        self.slots[at.slot] = (at.hash >> 32) << 32 | (id as u64 + 1);
        if self.keys.len() * 2 > self.slots.len() {
            self.grow();
        }
        id
    }

    fn grow(&mut self) {
        let mut slots = vec![0u64; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for s in self.slots.iter().copied().filter(|&s| s != 0) {
            let id = (s & 0xffff_ffff) as usize - 1;
            let mut slot = self.hasher.hash_one(self.keys.get(id)) as usize & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = s;
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_matches_slice_equality() {
        let text = b"0123456789abcdefghij0123456789abcdefghiX";
        for (a, b) in [(0, 0), (0, 3), (0, 8), (3, 9), (0, 17), (0, 20)] {
            for (c, d) in [(0, 0), (20, 23), (20, 28), (20, 37), (20, 40), (1, 18)] {
                let (x, y) = (&text[a..b], &text[c..d]);
                assert_eq!(same(x, y), x == y, "{x:?} {y:?}");
            }
        }
    }

    #[test]
    fn ids_follow_first_insertion() {
        let mut t = Interner::new();
        let keys: Vec<Vec<u8>> = (0..5000).map(|i| format!("key{}", i % 3000).into_bytes()).collect();
        let ids: Vec<u32> = keys
            .iter()
            .map(|k| match t.find(k) {
                Ok(id) => id,
                Err(at) => t.insert(k, at),
            })
            .collect();
        assert_eq!(t.keys.len(), 3000);
        assert!(ids.iter().enumerate().all(|(i, &id)| id as usize == i % 3000));
        assert_eq!(t.keys.get(2999), b"key2999");
        assert_eq!(t.find(b"key12").ok(), Some(12));
        assert!(t.find(b"").is_err() && t.find(b"key3000").is_err());
    }
}
