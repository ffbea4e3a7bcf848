//! Interning keys to dense ids. [`Table`] is an open-addressing table of 8-byte (hash tag, value)
//! slots that leaves the keys to its owner: [`Interner`] keeps them back to back in [`Keys`]
//! records, so a lookup touches one small slot array and one compact record instead of pointers
//! into the input, and the merge of chunk vocabularies reuses the hashes the chunks computed.

use crate::hint::prefetch;

const HASHER: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// The (fixed-seed) hash of a key: AES rounds where the CPU has them, else ahash's portable
/// hash. One process always takes the same branch, so every hash it compares agrees.
#[inline(always)]
pub(crate) fn hash(key: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes") {
        // SAFETY: the CPU has AES-NI (SSE2 is part of the x86-64 baseline).
        return unsafe { hash_aes(key) };
    }
    HASHER.hash_one(key)
}

/// One AES round for the length, one per 16-byte block of the key (the last block read whole,
/// overlapping the one before; a key under 16 bytes is zero-padded), then two rounds to spread
/// every input bit over the 64 bits returned.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes")]
#[inline]
unsafe fn hash_aes(key: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let n = key.len();
    let round_key = _mm_set_epi64x(0xa409_3822_299f_31d0_u64 as i64, 0x082e_fa98_ec4e_6c89);
    // The length goes through a round first, so it cannot cancel against the key bytes.
    let seed = _mm_set_epi64x(0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344 ^ n as i64);
    let mut state = _mm_aesenc_si128(seed, round_key);
    // SAFETY (loads): each reads 16 bytes at an offset at most `n - 16`, or from `padded`.
    let block = |i: usize| unsafe { _mm_loadu_si128(key.as_ptr().add(i) as *const __m128i) };
    if n >= 16 {
        let mut i = 0;
        while i + 16 < n {
            state = _mm_aesenc_si128(_mm_xor_si128(state, block(i)), round_key);
            i += 16;
        }
        state = _mm_aesenc_si128(_mm_xor_si128(state, block(n - 16)), round_key);
    } else {
        let mut padded = [0u8; 16];
        padded[..n].copy_from_slice(key);
        let last = unsafe { _mm_loadu_si128(padded.as_ptr() as *const __m128i) };
        state = _mm_aesenc_si128(_mm_xor_si128(state, last), round_key);
    }
    state = _mm_aesenc_si128(state, round_key);
    state = _mm_aesenc_si128(state, round_key);
    (_mm_cvtsi128_si64(state) ^ _mm_cvtsi128_si64(_mm_unpackhi_epi64(state, state))) as u64
}

/// Byte-string equality for short keys: keys up to 64 bytes are compared as a few overlapping
/// 8- or 16-byte words, without a loop (a library call costs more than the comparison itself).
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    match n {
        0..8 => a == b,
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        17..=32 => same16(a, b, [0, n - 16, 0, n - 16]),
        33..=64 => same16(a, b, [0, 16, n - 32, n - 16]),
        _ => a == b,
    }
}

/// Whether `a` and `b` (of equal length) match in the four 16-byte words at `at`.
#[inline(always)]
fn same16(a: &[u8], b: &[u8], at: [usize; 4]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let (a, b) = (&a[..at[3] + 16], &b[..at[3] + 16]);
        // SAFETY: SSE2 is part of the x86-64 baseline; each load reads 16 bytes at an offset
        // that the slicing above proves in bounds (the offsets never exceed `at[3]`).
        unsafe {
            let eq = |i: usize| {
                _mm_cmpeq_epi8(
                    _mm_loadu_si128(a.as_ptr().add(i) as *const __m128i),
                    _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i),
                )
            };
            let all = _mm_and_si128(_mm_and_si128(eq(at[0]), eq(at[1])), _mm_and_si128(eq(at[2]), eq(at[3])));
            _mm_movemask_epi8(all) == 0xffff
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let w16 = |s: &[u8], i: usize| u128::from_le_bytes(s[i..i + 16].try_into().expect("16 bytes"));
        at.iter().all(|&i| w16(a, i) == w16(b, i))
    }
}

/// Values by hash: an open-addressing table of 8-byte slots, each a 24-bit hash tag and a
/// 40-bit value of the owner's choosing (an id, or where the owner keeps the key), so a table
/// of a few hundred thousand keys stays within the L2 cache. The owner stores the keys and says
/// which value holds a given key.
pub(crate) struct Table {
    /// 0 = empty, else `tag << 40 | (value + 1)`.
    slots: Vec<u64>,
    len: usize,
}

/// Where a missing key goes: its hash and free slot.
pub(crate) struct Vacant {
    hash: u64,
    slot: usize,
}

const VALUE_BITS: u32 = 40;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
/// Largest value a slot holds.
const MAX_VALUE: u64 = VALUE_MASK - 1;

impl Table {
    pub fn new() -> Self {
        Table { slots: vec![0; 1024], len: 0 }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// The value whose key `is_key(value)` accepts among those with this `hash`, or where to
    /// insert it.
    #[inline(always)]
    pub fn find(&self, hash: u64, is_key: impl Fn(u64) -> bool) -> Result<u64, Vacant> {
        let mask = self.slots.len() - 1;
        let tag = hash >> VALUE_BITS;
        let mut slot = hash as usize & mask;
        loop {
            let s = self.slots[slot];
            if s == 0 {
                return Err(Vacant { hash, slot });
            }
            let value = (s & VALUE_MASK) - 1;
            if s >> VALUE_BITS == tag && is_key(value) {
                return Ok(value);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The value in the first slot a key with this hash probes, if that slot is taken.
    #[inline]
    fn first_value(&self, hash: u64) -> Option<u64> {
        let s = self.slots[self.home(hash)];
        (s != 0).then(|| (s & VALUE_MASK) - 1)
    }

    /// Records `value` (its key absent, located by `find`); `hash_of` gives the hash of any
    /// value's key (to grow).
    pub fn insert(&mut self, at: Vacant, value: u64, hash_of: impl Fn(u64) -> u64) {
        assert!(value <= MAX_VALUE, "an interning table holds values below 2^40");
        self.slots[at.slot] = (at.hash >> VALUE_BITS) << VALUE_BITS | (value + 1);
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            let mut slots = vec![0u64; self.slots.len() * 2];
            let mask = slots.len() - 1;
            for s in self.slots.iter().copied().filter(|&s| s != 0) {
                let mut slot = hash_of((s & VALUE_MASK) - 1) as usize & mask;
                while slots[slot] != 0 {
                    slot = (slot + 1) & mask;
                }
                slots[slot] = s;
            }
            self.slots = slots;
        }
    }
}

/// Longest key an [`Interner`] holds.
pub(crate) const MAX_KEY_LEN: usize = u32::MAX as usize;

/// Interned keys back to back, each record an 8-byte header (id, length) and the key bytes, so
/// a lookup finds the length, the id and the key in one place.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    records: Vec<u8>,
    /// Where the record of each id starts.
    starts: Vec<u64>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// The key of `id`.
    #[inline]
    pub fn get(&self, id: usize) -> &[u8] {
        let (_, key) = self.record(self.starts[id] as usize);
        key
    }

    /// The id and key of the record at `start`.
    #[inline(always)]
    fn record(&self, start: usize) -> (u32, &[u8]) {
        let head = u64::from_le_bytes(self.records[start..start + 8].try_into().expect("8 bytes"));
        let len = (head >> 32) as usize;
        (head as u32, &self.records[start + 8..start + 8 + len])
    }

    /// Appends `key` (at most `MAX_KEY_LEN` bytes) and returns its id.
    fn push(&mut self, key: &[u8]) -> u32 {
        let id = self.starts.len() as u32;
        self.starts.push(self.records.len() as u64);
        let len = u32::try_from(key.len()).expect("keys are at most MAX_KEY_LEN bytes");
        self.records.extend_from_slice(&((len as u64) << 32 | id as u64).to_le_bytes());
        self.records.extend_from_slice(key);
        id
    }
}

/// Keys, their hashes and their ids (`id` = order of first insertion). The table maps a hash
/// to where the key's record starts.
pub(crate) struct Interner {
    pub keys: Keys,
    pub hashes: Vec<u64>,
    table: Table,
}

impl Interner {
    pub fn new() -> Self {
        Interner { keys: Keys::default(), hashes: Vec::new(), table: Table::new() }
    }

    /// The id of `key` (whose hash is `hash`), or where to insert it.
    #[inline(always)]
    pub fn find(&self, key: &[u8], hash: u64) -> Result<u32, Vacant> {
        let keys = &self.keys;
        self.table
            .find(hash, |start| same(keys.record(start as usize).1, key))
            .map(|start| keys.record(start as usize).0)
    }

    /// Starts loading the first slot a key with this hash probes.
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        prefetch(&self.table.slots[self.table.home(hash)]);
    }

    /// Starts loading the record held by the first slot a key with this hash probes (the slot
    /// itself should be in cache by now, see `prefetch_slot`).
    #[inline]
    pub fn prefetch_key(&self, hash: u64) {
        if let Some(start) = self.table.first_value(hash) {
            prefetch(self.keys.records.as_ptr().wrapping_add(start as usize));
        }
    }

    /// Bytes the interner has allocated (keys, hashes and the table).
    pub fn heap_bytes(&self) -> usize {
        self.keys.records.capacity()
            + 8 * (self.keys.starts.capacity() + self.hashes.capacity() + self.table.slots.capacity())
    }

    /// Adds `key` (absent, located by `find`; at most `MAX_KEY_LEN` bytes) and returns its id.
    pub fn insert(&mut self, key: &[u8], at: Vacant) -> u32 {
        let start = self.keys.records.len() as u64;
        let id = self.keys.push(key);
        self.hashes.push(at.hash);
        let (keys, hashes) = (&self.keys, &self.hashes);
        self.table.insert(at, start, |start| hashes[keys.record(start as usize).0 as usize]);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_matches_slice_equality() {
        let text: Vec<u8> = (0..=80u8).collect();
        for n in 0..=80 {
            let x = &text[..n];
            let copy = x.to_vec();
            assert!(same(x, &copy), "length {n}");
            assert!(n == 0 || !same(x, &text[1..=n]), "length {n}, shifted");
            assert!(n == 0 || !same(x, &text[..n - 1]), "length {n} vs {}", n - 1);
            for i in 0..n {
                let mut y = x.to_vec();
                y[i] ^= 0x20;
                assert!(!same(x, &y), "length {n}, byte {i} differs");
            }
        }
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let text: Vec<u8> = (0..=80u8).collect();
        let mut seen = std::collections::HashSet::new();
        let mut low_bits = std::collections::HashSet::new();
        for n in 0..=80 {
            let key = &text[..n];
            let copy = key.to_vec();
            assert_eq!(hash(key), hash(&copy), "length {n}: same key, same hash");
            assert!(seen.insert(hash(key)), "length {n}");
            low_bits.insert(hash(key) & 0xffff);
            for i in 0..n {
                let mut other = key.to_vec();
                other[i] ^= 1;
                assert!(seen.insert(hash(&other)), "length {n}, byte {i} changed");
                low_bits.insert(hash(&other) & 0xffff);
            }
        }
        // Slots come from the low bits: they must spread too.
        assert!(low_bits.len() * 100 > seen.len() * 90, "{} of {}", low_bits.len(), seen.len());
        // Zero padding of short keys does not make them equal to longer ones.
        assert_ne!(hash(b"ab"), hash(b"ab\0"));
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
