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
//! the table is then just as large as a per-item one. The classes also make the per-batch
//! inclusion probabilities cheap (see [`super::inclusion`]): one term per class.

use super::alias::AliasTable;
use super::rng::Rng;
use crate::hint::prefetch;

/// The most draws one [`CountClasses::draw_many`] call makes.
pub const DRAW_BATCH: usize = 64;

/// Class of the items of count 0 in [`CountClasses::class_of`]: never drawn.
const NO_CLASS: u32 = u32::MAX;

/// Members `start..start + len` of [`CountClasses::members`] form class `class`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: u32,
    len: u32,
    class: u32,
}

pub struct CountClasses {
    slots: AliasTable<Slot>,
    /// Item indices (into the `counts` given to [`CountClasses::new`]) grouped by class.
    members: Vec<u32>,
    /// Class of each item, [`NO_CLASS`] for those never drawn.
    class_of: Vec<u32>,
    /// Members of each class.
    sizes: Vec<u32>,
    /// Probability of one member of each class, and its log as f32.
    q: Vec<f64>,
    logq: Vec<f32>,
}

impl CountClasses {
    /// Classes of the positive `counts`, `weight(count)` giving a class's per-item weight;
    /// items of weight 0 are never drawn. Needs at least one positive weight.
    pub fn new(counts: &[u64], weight: impl Fn(u64) -> f64) -> Self {
        let mut members: Vec<u32> = (0..counts.len() as u32).filter(|&i| counts[i as usize] > 0).collect();
        members.sort_unstable_by_key(|&i| (counts[i as usize], i));
        let mut class_of = vec![NO_CLASS; counts.len()];
        let (mut slots, mut weights, mut start) = (Vec::new(), Vec::new(), 0);
        for run in members.chunk_by(|&a, &b| counts[a as usize] == counts[b as usize]) {
            let (w, len) = (weight(counts[run[0] as usize]), run.len() as u32);
            if w > 0.0 {
                // (a weight that underflowed to 0 leaves its items out, like count 0)
                let class = slots.len() as u32;
                run.iter().for_each(|&i| class_of[i as usize] = class);
                slots.push(Slot { start, len, class });
                weights.push(w);
            }
            start += len;
        }
        let sizes: Vec<u32> = slots.iter().map(|s| s.len).collect();
        let class_weights: Vec<f64> = weights.iter().zip(&sizes).map(|(w, &m)| w * m as f64).collect();
        let total: f64 = class_weights.iter().sum();
        let logq = weights.iter().map(|w| (w.ln() - total.ln()) as f32).collect();
        let q = weights.iter().map(|w| w / total).collect();
        let slots = AliasTable::with_payload(&class_weights, |c| slots[c]);
        CountClasses { slots, members, class_of, sizes, q, logq }
    }

    /// Number of classes (distinct positive counts).
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Items that can be drawn.
    pub fn n_items(&self) -> usize {
        self.sizes.iter().map(|&m| m as usize).sum()
    }

    /// Class of item `item`, `None` if it is never drawn.
    #[inline]
    pub fn class_of(&self, item: u32) -> Option<u32> {
        Some(self.class_of[item as usize]).filter(|&c| c != NO_CLASS)
    }

    /// Members of class `class`.
    pub fn size(&self, class: usize) -> u32 {
        self.sizes[class]
    }

    /// Probability of one member of class `class`.
    pub fn q(&self, class: usize) -> f64 {
        self.q[class]
    }

    /// `ln q(class)` as f32.
    pub fn logq(&self, class: usize) -> f32 {
        self.logq[class]
    }

    /// Fills `ids` (indices into the counts) and `classes` (same length, at most
    /// [`DRAW_BATCH`]) with independent draws and their classes. The member loads of all
    /// draws are started before the first one is read, so their cache misses overlap.
    #[inline]
    pub fn draw_many(&self, rng: &mut Rng, ids: &mut [u32], classes: &mut [u32]) {
        let mut slots = [0u32; DRAW_BATCH];
        let slots = &mut slots[..ids.len()];
        for (slot, class) in slots.iter_mut().zip(classes.iter_mut()) {
            let (_, s) = self.slots.pick(rng.next_u64());
            let offset = ((rng.next_u64() as u128 * s.len as u128) >> 64) as u32;
            *slot = s.start + offset;
            *class = s.class;
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
    fn frequencies_follow_weights_and_classes_follow_the_item() {
        let counts = [0u64, 3, 1, 3, 0, 8, 1, 1, 2];
        let weight = |c: u64| (c as f64).powf(0.5);
        let total: f64 = counts.iter().map(|&c| weight(c)).sum();
        let table = CountClasses::new(&counts, weight);
        assert_eq!(table.len(), 4); // counts 1, 2, 3, 8
        let mut rng = Rng::keyed(&[11]);
        let (mut ids, mut classes) = ([0u32; DRAW_BATCH], [0u32; DRAW_BATCH]);
        let mut seen = [0usize; 9];
        let rounds = 4000;
        for _ in 0..rounds {
            table.draw_many(&mut rng, &mut ids, &mut classes);
            for (&id, &class) in ids.iter().zip(&classes) {
                assert_eq!(table.class_of(id), Some(class), "item {id}");
                seen[id as usize] += 1;
            }
        }
        let draws = (rounds * DRAW_BATCH) as f64;
        for (i, &c) in counts.iter().enumerate() {
            let expected = weight(c) / total;
            let freq = seen[i] as f64 / draws;
            assert!((freq - expected).abs() < 0.005, "item {i}: {freq} vs {expected}");
            if let Some(class) = table.class_of(i as u32) {
                assert!((table.q(class as usize) - expected).abs() < 1e-12);
                assert_eq!(table.size(class as usize), counts.iter().filter(|&&x| x == c).count() as u32);
            }
        }
        assert_eq!(seen[0] + seen[4], 0, "a count-0 item was drawn");
        assert_eq!((table.class_of(0), table.class_of(4)), (None, None));
    }
}
