//! Interning keys to dense ids. [`Table`] is an open-addressing table of (hash tag, id) slots
//! that leaves the keys to its owner: [`Interner`] keeps them back to back in an [`Arena`], so a
//! lookup touches one small slot array and compact key bytes instead of pointers into the input,
//! and the merge of chunk vocabularies reuses the hashes the chunks computed.

use super::source::Arena;
use crate::hint::prefetch;

const HASHER: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// The (fixed-seed) hash of a key.
#[inline]
pub(crate) fn hash(key: &[u8]) -> u64 {
    HASHER.hash_one(key)
}

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

/// Ids by hash; the owner stores the keys and says which id holds a given key. Each slot also
/// carries a word of the owner's choosing, so a lookup can reach the key without another table.
pub(crate) struct Table {
    /// `[0, _]` = empty, else `[(hash >> 32) << 32 | (id + 1), payload]`.
    slots: Vec<[u64; 2]>,
    len: usize,
}

/// Where a missing key goes: its hash and free slot.
pub(crate) struct Vacant {
    hash: u64,
    slot: usize,
}

impl Table {
    pub fn new() -> Self {
        Table { slots: vec![[0; 2]; 1024], len: 0 }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// The id whose key `is_key(id, payload)` accepts among those with this `hash`, or where
    /// to insert it.
    #[inline]
    pub fn find(&self, hash: u64, is_key: impl Fn(u32, u64) -> bool) -> Result<u32, Vacant> {
        let mask = self.slots.len() - 1;
        let tag = hash >> 32;
        let mut slot = hash as usize & mask;
        loop {
            let [s, payload] = self.slots[slot];
            if s == 0 {
                return Err(Vacant { hash, slot });
            }
            let id = (s & 0xffff_ffff) as u32 - 1;
            if s >> 32 == tag && is_key(id, payload) {
                return Ok(id);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The payload in the first slot a key with this hash probes, if that slot is taken.
    #[inline]
    fn first_payload(&self, hash: u64) -> Option<u64> {
        let [s, payload] = self.slots[self.home(hash)];
        (s != 0).then_some(payload)
    }

    /// Records `id` (absent, located by `find`); `hash_of` gives the hash of any id (to grow).
    pub fn insert(&mut self, at: Vacant, id: u32, payload: u64, hash_of: impl Fn(u32) -> u64) {
        self.slots[at.slot] = [(at.hash >> 32) << 32 | (id as u64 + 1), payload];
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            let mut slots = vec![[0u64; 2]; self.slots.len() * 2];
            let mask = slots.len() - 1;
            for s in self.slots.iter().copied().filter(|s| s[0] != 0) {
                let mut slot = hash_of((s[0] & 0xffff_ffff) as u32 - 1) as usize & mask;
                while slots[slot][0] != 0 {
                    slot = (slot + 1) & mask;
                }
                slots[slot] = s;
            }
            self.slots = slots;
        }
    }
}

/// Keys, their hashes and their ids (`id` = position in `keys`).
pub(crate) struct Interner {
    pub keys: Arena,
    pub hashes: Vec<u64>,
    table: Table,
}

impl Interner {
    pub fn new() -> Self {
        Interner { keys: Arena::default(), hashes: Vec::new(), table: Table::new() }
    }

    /// The id of `key` (whose hash is `hash`), or where to insert it.
    #[inline]
    pub fn find(&self, key: &[u8], hash: u64) -> Result<u32, Vacant> {
        self.table.find(hash, |id, payload| {
            let (start, len) = ((payload >> 16) as usize, (payload & 0xffff) as usize);
            if len == 0xffff {
                same(self.keys.get(id as usize), key)
            } else {
                len == key.len() && same(&self.keys.data[start..start + len], key)
            }
        })
    }

    /// Starts loading the first slot a key with this hash probes.
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        prefetch(&self.table.slots[self.table.home(hash)]);
    }

    /// Starts loading the key bytes held by the first slot a key with this hash probes (the
    /// slot itself should be in cache by now, see `prefetch_slot`).
    #[inline]
    pub fn prefetch_key(&self, hash: u64) {
        if let Some(payload) = self.table.first_payload(hash) {
            prefetch(self.keys.data.as_ptr().wrapping_add((payload >> 16) as usize));
        }
    }

    /// Adds `key` (absent, located by `find`) and returns its id.
    pub fn insert(&mut self, key: &[u8], at: Vacant) -> u32 {
        let id = self.keys.len() as u32;
        // Payload: where the key starts in the arena and its length (0xffff: look it up).
        let payload = (self.keys.data.len() as u64) << 16 | key.len().min(0xffff) as u64;
        self.keys.push(key);
        self.hashes.push(at.hash);
        let hashes = &self.hashes;
        self.table.insert(at, id, payload, |i| hashes[i as usize]);
        id
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
        let mut keys: Vec<Vec<u8>> = (0..5000).map(|i| format!("key{}", i % 3000).into_bytes()).collect();
        keys[1998] = vec![b'x'; 70_000]; // longer than a slot records
        keys[4998] = keys[1998].clone();
        let ids: Vec<u32> = keys
            .iter()
            .map(|k| match t.find(k, hash(k)) {
                Ok(id) => id,
                Err(at) => t.insert(k, at),
            })
            .collect();
        assert_eq!(t.keys.len(), 3000);
        assert!(ids.iter().enumerate().all(|(i, &id)| id as usize == i % 3000));
        assert_eq!(t.keys.get(2999), b"key2999");
        assert_eq!(t.find(&keys[1998], hash(&keys[1998])).ok(), Some(1998));
        assert_eq!(t.hashes[12], hash(b"key12"));
        assert_eq!(t.find(b"key12", hash(b"key12")).ok(), Some(12));
        assert!(t.find(b"", hash(b"")).is_err() && t.find(b"key3000", hash(b"key3000")).is_err());
    }
}
