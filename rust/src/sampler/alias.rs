//! Walker/Vose alias table: O(n) build, O(1) draw from a fixed discrete distribution.

use super::rng::Rng;

/// Draws column `i` with probability `weights[i] / sum(weights)`; zero weights are never drawn.
///
/// Each column may carry a payload `P` of its own and of its alias (the sampler stores log q
/// there), so one draw reads one table entry and returns the id with its payload.
#[derive(Clone, Debug)]
pub struct AliasTable<P: Copy = ()> {
    columns: Vec<Column<P>>,
}

#[derive(Clone, Copy, Debug)]
struct Column<P> {
    /// Keep the column when a uniform u32 is below this, else take `alias`.
    threshold: u32,
    alias: u32,
    own: P,
    of_alias: P,
}

impl AliasTable<()> {
    /// Builds the table; `weights` must be finite, non-negative, with a positive sum.
    pub fn new(weights: &[f64]) -> Self {
        Self::with_payload(weights, |_| ())
    }
}

impl<P: Copy> AliasTable<P> {
    /// Builds the table, column `i` carrying `payload(i)`.
    pub fn with_payload(weights: &[f64], payload: impl Fn(usize) -> P) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        debug_assert!(n > 0 && total > 0.0 && total.is_finite());
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut threshold = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..n as u32).partition(|&i| scaled[i as usize] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            threshold[s as usize] = to_threshold(scaled[s as usize]);
            alias[s as usize] = l;
            scaled[l as usize] = (scaled[l as usize] + scaled[s as usize]) - 1.0;
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers hold mass ~1 up to rounding; they keep themselves, except zero weights,
        // which must never be drawn and so always defer to some positive column.
        let positive = weights.iter().position(|&w| w > 0.0).unwrap_or(0) as u32;
        for i in small.into_iter().chain(large) {
            if weights[i as usize] > 0.0 {
                threshold[i as usize] = u32::MAX;
                alias[i as usize] = i;
            } else {
                threshold[i as usize] = 0;
                alias[i as usize] = positive;
            }
        }
        let columns = threshold.into_iter().zip(alias).enumerate().map(|(i, (threshold, alias))| Column {
            threshold,
            alias,
            own: payload(i),
            of_alias: payload(alias as usize),
        });
        AliasTable { columns: columns.collect() }
    }

    /// The column a 64-bit word picks: a multiply-shift of the whole word (bias <= n / 2^64).
    #[inline]
    fn column(&self, word: u64) -> usize {
        ((word as u128 * self.columns.len() as u128) >> 64) as usize
    }

    /// One draw from one random word, with its payload: the column from [`Self::column`],
    /// the coin from the word's low 32 bits.
    #[inline]
    pub fn pick(&self, word: u64) -> (u32, P) {
        let column = self.column(word);
        let entry = self.columns[column];
        if (word as u32) < entry.threshold {
            (column as u32, entry.own)
        } else {
            (entry.alias, entry.of_alias)
        }
    }

    #[inline]
    pub fn draw(&self, rng: &mut Rng) -> u32 {
        self.pick(rng.next_u64()).0
    }
}

fn to_threshold(p: f64) -> u32 {
    if p <= 0.0 {
        0
    } else if p >= 1.0 {
        u32::MAX
    } else {
        (p * 4_294_967_296.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empirical_frequencies_match_weights() {
        let weights = [0.0, 1.0, 2.0, 0.0, 4.0, 8.0, 0.5];
        let total: f64 = weights.iter().sum();
        let table = AliasTable::new(&weights);
        let mut rng = Rng::keyed(&[42]);
        let draws = 200_000;
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..draws {
            counts[table.draw(&mut rng) as usize] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let freq = counts[i] as f64 / draws as f64;
            let expected = w / total;
            if w == 0.0 {
                assert_eq!(counts[i], 0, "zero-weight column {i} was drawn");
            } else {
                assert!((freq - expected).abs() < 0.01, "column {i}: {freq} vs {expected}");
            }
        }
    }

    #[test]
    fn payloads_follow_the_drawn_column() {
        let weights = [1.0, 0.0, 3.0, 0.5, 2.0];
        let table = AliasTable::with_payload(&weights, |i| 10 * i as u32);
        let mut rng = Rng::keyed(&[3]);
        for _ in 0..1000 {
            let (id, payload) = table.pick(rng.next_u64());
            assert_ne!(id, 1);
            assert_eq!(payload, 10 * id);
        }
    }

    #[test]
    fn single_column() {
        let table = AliasTable::new(&[3.0]);
        let mut rng = Rng::keyed(&[1]);
        assert!((0..100).all(|_| table.draw(&mut rng) == 0));
    }
}
