//! Draws from `q ∝ count ^ alpha` in two cache-friendly steps.
//!
//! Items with equal counts are equally likely, and real catalogues have far fewer distinct
//! counts than items (a long tail of items played once, twice, ...). So an alias table over
//! the distinct counts, small enough to stay in cache, picks a count class, and a uniform
//! pick among that class's members picks the item: one cache miss per draw (the member),
//! whose load is started early by a prefetch, instead of a miss into a per-item table.
//!
//! Play counts summing to `P` take at most `sqrt(2P)` distinct values (1 + 2 + ... + k <= P),
//! e.g. about 14k for 100M plays. Arbitrary counts may all differ: the draws stay exact,
//! the table is then just as large as a per-item one.

use super::alias::AliasTable;
use super::rng::Rng;
use crate::hint::prefetch;

/// The most draws one [`CountClasses::draw_many`] call makes.
pub const DRAW_BATCH: usize = 64;

/// Members `start..start + len` of [`CountClasses::members`] share one count and `logq`.
#[derive(Clone, Copy, Debug)]
struct Class {
    start: u32,
    len: u32,
    logq: f32,
}

pub struct CountClasses {
    classes: AliasTable<Class>,
    /// Item indices (into the `counts` given to [`CountClasses::new`]) grouped by class.
    members: Vec<u32>,
}

impl CountClasses {
    /// Classes of the positive `counts`; `weight(count)` and `logq(count)` give a class's
    /// per-item weight and normalised log-probability. Needs at least one positive count.
    pub fn new(counts: &[u64], weight: impl Fn(u64) -> f64, logq: impl Fn(u64) -> f32) -> Self {
        let mut members: Vec<u32> = (0..counts.len() as u32).filter(|&i| counts[i as usize] > 0).collect();
        members.sort_unstable_by_key(|&i| (counts[i as usize], i));
        let (mut classes, mut weights, mut start) = (Vec::new(), Vec::new(), 0);
        for run in members.chunk_by(|&a, &b| counts[a as usize] == counts[b as usize]) {
            let count = counts[run[0] as usize];
            classes.push(Class { start, len: run.len() as u32, logq: logq(count) });
            weights.push(weight(count) * run.len() as f64);
            start += run.len() as u32;
        }
        CountClasses { classes: AliasTable::with_payload(&weights, |c| classes[c]), members }
    }

    /// Fills `ids` (indices into the counts) and `logq` (same length, at most
    /// [`DRAW_BATCH`]) with independent draws. The member loads of all draws are started
    /// before the first one is read, so their cache misses overlap.
    #[inline]
    pub fn draw_many(&self, rng: &mut Rng, ids: &mut [u32], logq: &mut [f32]) {
        let mut slots = [0u32; DRAW_BATCH];
        let slots = &mut slots[..ids.len()];
        for (slot, lq) in slots.iter_mut().zip(logq.iter_mut()) {
            let (_, class) = self.classes.pick(rng.next_u64());
            let offset = ((rng.next_u64() as u128 * class.len as u128) >> 64) as u32;
            *slot = class.start + offset;
            *lq = class.logq;
            prefetch(&self.members[*slot as usize]);
        }
        for (id, &slot) in ids.iter_mut().zip(slots.iter()) {
            *id = self.members[slot as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_weights_and_logq_follows_the_item() {
        let counts = [0u64, 3, 1, 3, 0, 8, 1, 1, 2];
        let weight = |c: u64| (c as f64).powf(0.5);
        let total: f64 = counts.iter().map(|&c| weight(c)).sum();
        let logq = |c: u64| (weight(c) / total).ln() as f32;
        let table = CountClasses::new(&counts, weight, logq);
        let mut rng = Rng::keyed(&[11]);
        let (mut ids, mut lq) = ([0u32; DRAW_BATCH], [0f32; DRAW_BATCH]);
        let mut seen = [0usize; 9];
        let rounds = 4000;
        for _ in 0..rounds {
            table.draw_many(&mut rng, &mut ids, &mut lq);
            for (&id, &l) in ids.iter().zip(&lq) {
                assert_eq!(l, logq(counts[id as usize]), "item {id}");
                seen[id as usize] += 1;
            }
        }
        let draws = (rounds * DRAW_BATCH) as f64;
        for (i, &c) in counts.iter().enumerate() {
            let expected = weight(c) / total;
            let freq = seen[i] as f64 / draws;
            assert!((freq - expected).abs() < 0.005, "item {i}: {freq} vs {expected}");
        }
        assert_eq!(seen[0] + seen[4], 0, "a count-0 item was drawn");
    }
}
