//! Negative sampling: K distinct catalogue items per batch, none reserved and none in the
//! batch's exclusion set, with the log of their inclusion probabilities (for the logQ
//! correction of sampled softmax).
//!
//! Draws come from a stream keyed by `(seed, epoch, rank, batch_index)`, so they are the
//! same whatever thread runs them and whenever.

mod alias;
mod inclusion;
mod popularity;
pub mod rng;

use crate::error::{Error, Result};
pub use alias::AliasTable;
use popularity::CountClasses;
use rng::Rng;

/// Ids `0` (padding) and `1` (mask) are reserved and never drawn.
pub const N_RESERVED: u32 = 2;

/// Stream tag of the negative draws (keeps them apart from other keyed streams).
const STREAM_NEGATIVES: u64 = 0x6e65_6761_7469_7665;

/// Candidates drawn at a time before checking them (lets table lookups overlap).
const DRAW_BLOCK: usize = popularity::DRAW_BATCH;

/// How negatives are distributed over the real items.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Every real item equally likely.
    Uniform,
    /// Probability proportional to `count ^ alpha`; items with count 0 are never drawn.
    Popularity { alpha: f64 },
}

impl Distribution {
    /// Parses `"uniform"` or `"popularity"` (the latter with exponent `alpha`).
    pub fn parse(name: &str, alpha: f64) -> Result<Self> {
        match name {
            "uniform" => Ok(Distribution::Uniform),
            "popularity" if alpha.is_finite() && alpha >= 0.0 => Ok(Distribution::Popularity { alpha }),
            "popularity" => Err(Error::Config(format!("alpha must be a finite number >= 0, got {alpha}"))),
            other => Err(Error::Config(format!("distribution must be 'uniform' or 'popularity', got {other:?}"))),
        }
    }
}

enum Table {
    Uniform {
        logq: f32,
    },
    /// Draws real items (id minus [`N_RESERVED`]) by count class.
    Popularity(CountClasses),
}

/// Draws negatives from a catalogue of `vocab_size` ids (the first [`N_RESERVED`] excluded).
pub struct NegativeSampler {
    vocab_size: u32,
    seed: u64,
    /// Number of ids with a positive probability.
    n_positive: usize,
    table: Table,
}

/// Reusable per-thread work space; `bits` and `excluded` are all zero between calls.
#[derive(Default)]
pub struct Scratch {
    /// A bitset over the catalogue: excluded and drawn ids.
    bits: Vec<u64>,
    /// Excluded items of each popularity class.
    excluded: Vec<u32>,
    /// `(allowed members, q)` of each popularity class with allowed members.
    terms: Vec<(f64, f64)>,
    /// `ln pi` of each class (one entry for uniform).
    log_pi: Vec<f32>,
}

impl Scratch {
    #[inline]
    fn test_and_set(&mut self, id: u32) -> bool {
        let word = &mut self.bits[(id >> 6) as usize];
        let mask = 1u64 << (id & 63);
        let was = *word & mask != 0;
        *word |= mask;
        was
    }

    #[inline]
    fn is_set(&self, id: u32) -> bool {
        self.bits[(id >> 6) as usize] & (1u64 << (id & 63)) != 0
    }

    /// Restores the all-zero invariant after a call.
    fn reset(&mut self, exclude: &[i64], drawn: &[i64]) {
        for ids in [exclude, drawn] {
            for &id in ids {
                self.bits[(id as u64 >> 6) as usize] = 0;
            }
        }
        self.excluded.fill(0);
    }
}

impl NegativeSampler {
    /// A sampler over `vocab_size` ids; `item_counts` (one per id) is needed for popularity.
    pub fn new(vocab_size: usize, distribution: Distribution, item_counts: Option<&[u64]>, seed: u64) -> Result<Self> {
        check_vocab_size(vocab_size)?;
        let n_real = vocab_size - N_RESERVED as usize;
        let (table, n_positive) = match distribution {
            Distribution::Uniform => (Table::Uniform { logq: -(n_real as f64).ln() as f32 }, n_real),
            Distribution::Popularity { alpha } => {
                let counts =
                    item_counts.ok_or_else(|| Error::Config("the popularity distribution needs item_counts".into()))?;
                if counts.len() != vocab_size {
                    return Err(Error::Config(format!(
                        "item_counts has {} entries but vocab_size is {vocab_size}",
                        counts.len()
                    )));
                }
                let classes = popularity_classes(&counts[N_RESERVED as usize..], alpha)?;
                let n_positive = classes.n_items();
                (Table::Popularity(classes), n_positive)
            }
        };
        Ok(NegativeSampler { vocab_size: vocab_size as u32, seed, n_positive, table })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size as usize
    }

    /// Ids that can be drawn at all (real items of positive probability): the most
    /// negatives one call can return, before excluding a batch's items.
    pub fn n_sampleable(&self) -> usize {
        self.n_positive
    }

    /// Log-probability of each id under the sampling distribution (`-inf` for reserved ids
    /// and items that are never drawn).
    pub fn log_prob(&self, ids: &[i64]) -> Result<Vec<f32>> {
        check_ids(ids, self.vocab_size, "ids")?;
        Ok(ids.iter().map(|&id| self.logq(id as u32)).collect())
    }

    /// Class of a sampleable id (0 for every id under uniform), `None` for the others.
    #[inline]
    fn class(&self, id: u32) -> Option<u32> {
        if id < N_RESERVED {
            return None;
        }
        match &self.table {
            Table::Uniform { .. } => Some(0),
            Table::Popularity(classes) => classes.class_of(id - N_RESERVED),
        }
    }

    #[inline]
    fn logq(&self, id: u32) -> f32 {
        match (&self.table, self.class(id)) {
            (_, None) => f32::NEG_INFINITY,
            (Table::Uniform { logq }, _) => *logq,
            (Table::Popularity(classes), Some(c)) => classes.logq(c as usize),
        }
    }

    /// Fills `ids` with independent draws from the distribution (with replacement) and
    /// `classes` with their classes.
    #[inline]
    fn draw_many(&self, rng: &mut Rng, ids: &mut [u32], classes: &mut [u32]) {
        match &self.table {
            Table::Uniform { .. } => {
                let n = (self.vocab_size - N_RESERVED) as u64;
                ids.iter_mut().for_each(|id| *id = N_RESERVED + rng.below(n) as u32);
                classes.fill(0);
            }
            Table::Popularity(table) => {
                table.draw_many(rng, ids, classes);
                ids.iter_mut().for_each(|id| *id += N_RESERVED);
            }
        }
    }

    /// The random stream of one batch's draws.
    pub fn batch_rng(&self, epoch: u64, rank: u64, batch_index: u64) -> Rng {
        Rng::keyed(&[self.seed, STREAM_NEGATIVES, epoch, rank, batch_index])
    }

    /// Draws `k` negatives for batch `(epoch, rank, batch_index)`, excluding `exclude`.
    pub fn sample(
        &self,
        exclude: &[i64],
        k: usize,
        epoch: u64,
        rank: u64,
        batch_index: u64,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        let mut scratch = Scratch::default();
        let (mut ids, mut log_pi) = (Vec::new(), Vec::new());
        let mut rng = self.batch_rng(epoch, rank, batch_index);
        self.sample_into(exclude, k, &mut rng, &mut scratch, &mut ids, &mut log_pi)?;
        Ok((ids, log_pi))
    }

    /// Fills `ids` with `k` distinct ids that are neither reserved nor in `exclude` (ids
    /// `< N_RESERVED` in `exclude`, such as padding, are ignored), and `log_pi` with the log
    /// of each one's inclusion probability: the chance that it is among the `k` draws.
    ///
    /// Rejection sampling (sequential draws without replacement from `q` restricted to the
    /// allowed ids); if that needs far more draws than `k`, the remaining ones come from an
    /// exact Gumbel-top-k pass over the catalogue, which draws from the same law, so this
    /// never hangs. `pi` is exact for uniform (`k / n_allowed`) and the Poisson approximation
    /// of [`inclusion`] for popularity, solved once per call over the count classes.
    pub fn sample_into(
        &self,
        exclude: &[i64],
        k: usize,
        rng: &mut Rng,
        scratch: &mut Scratch,
        ids: &mut Vec<i64>,
        log_pi: &mut Vec<f32>,
    ) -> Result<()> {
        ids.clear();
        log_pi.clear();
        if k > self.n_positive {
            return Err(self.too_many(k, self.n_positive, 0));
        }
        ids.reserve(k);
        log_pi.reserve(k);
        let words = (self.vocab_size as usize).div_ceil(64);
        if scratch.bits.len() != words {
            scratch.bits = vec![0; words];
        }
        let n_classes = match &self.table {
            Table::Uniform { .. } => 1,
            Table::Popularity(classes) => classes.len(),
        };
        if scratch.excluded.len() != n_classes {
            scratch.excluded = vec![0; n_classes];
        }
        let mut n_excluded = 0;
        for (pos, &id) in exclude.iter().enumerate() {
            if id as u64 >= self.vocab_size as u64 {
                scratch.reset(&exclude[..pos], &[]);
                return check_ids(exclude, self.vocab_size, "exclude");
            }
            // Reserved ids are marked too: they are never drawn anyway.
            if !scratch.test_and_set(id as u32) {
                if let Some(class) = self.class(id as u32) {
                    scratch.excluded[class as usize] += 1;
                    n_excluded += 1;
                }
            }
        }
        let n_allowed = self.n_positive - n_excluded;
        if k > n_allowed {
            scratch.reset(exclude, &[]);
            return Err(self.too_many(k, n_allowed, n_excluded));
        }
        self.inclusion_log_probs(k, n_allowed, scratch);
        let budget = 32 * k + 4096;
        let mut draws = 0;
        let (mut block, mut classes) = ([0u32; DRAW_BLOCK], [0u32; DRAW_BLOCK]);
        'draw: while ids.len() < k && draws < budget {
            draws += DRAW_BLOCK;
            self.draw_many(rng, &mut block, &mut classes);
            for (&id, &class) in block.iter().zip(&classes) {
                if !scratch.test_and_set(id) {
                    ids.push(id as i64);
                    log_pi.push(scratch.log_pi[class as usize]);
                    if ids.len() == k {
                        break 'draw;
                    }
                }
            }
        }
        if ids.len() < k {
            let first_fallback = ids.len();
            self.gumbel_top_k(k - ids.len(), rng, scratch, ids);
            for &id in &ids[first_fallback..] {
                let class = self.class(id as u32).expect("the fallback draws sampleable ids");
                log_pi.push(scratch.log_pi[class as usize]);
            }
        }
        scratch.reset(exclude, ids);
        Ok(())
    }

    /// Fills `scratch.log_pi` with `ln pi` of each class for `k` draws among `n_allowed`
    /// ids, `scratch.excluded` holding the excluded members of each class.
    fn inclusion_log_probs(&self, k: usize, n_allowed: usize, scratch: &mut Scratch) {
        scratch.log_pi.clear();
        let classes = match &self.table {
            Table::Uniform { .. } => {
                scratch.log_pi.push((k as f64 / n_allowed as f64).ln() as f32);
                return;
            }
            Table::Popularity(classes) => classes,
        };
        // q renormalised over the allowed ids: the law of each draw that is kept.
        scratch.terms.clear();
        for c in 0..classes.len() {
            let allowed = classes.size(c) - scratch.excluded[c];
            if allowed > 0 {
                scratch.terms.push((allowed as f64, classes.q(c)));
            }
        }
        let mass: f64 = scratch.terms.iter().map(|&(m, q)| m * q).sum();
        scratch.terms.iter_mut().for_each(|(_, q)| *q /= mass);
        let lambda = inclusion::poisson_lambda(k as f64, &scratch.terms);
        scratch.log_pi.extend((0..classes.len()).map(|c| inclusion::log_inclusion(lambda, classes.q(c) / mass) as f32));
    }

    /// The error for `k` negatives when only `n_allowed` ids may be drawn, `n_in_batch`
    /// sampleable ones being excluded as the batch's own items.
    fn too_many(&self, k: usize, n_allowed: usize, n_in_batch: usize) -> Error {
        let n_real = self.vocab_size as usize - N_RESERVED as usize;
        let never = match n_real - self.n_positive {
            0 => String::new(),
            n => format!(" minus {n} never drawn (count 0)"),
        };
        Error::Config(format!(
            "cannot draw {k} distinct negatives: only {n_allowed} items are allowed \
             ({n_real} catalogue items (vocab_size {} minus {N_RESERVED} reserved ids){never} \
             minus {n_in_batch} in the batch); lower the number of negatives or the batch size",
            self.vocab_size
        ))
    }

    /// Appends `m` more ids drawn without replacement from the unmarked, sampleable ids,
    /// in draw order (largest `log q + Gumbel` first).
    fn gumbel_top_k(&self, m: usize, rng: &mut Rng, scratch: &mut Scratch, ids: &mut Vec<i64>) {
        let mut keyed: Vec<(f64, u32)> = (N_RESERVED..self.vocab_size)
            .filter(|&id| !scratch.is_set(id) && self.logq(id) > f32::NEG_INFINITY)
            .map(|id| {
                let u = rng.unit().max(f64::MIN_POSITIVE);
                (self.logq(id) as f64 - (-u.ln()).ln(), id)
            })
            .collect();
        let order = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if m < keyed.len() {
            keyed.select_nth_unstable_by(m, order);
            keyed.truncate(m);
        }
        keyed.sort_unstable_by(order);
        for (_, id) in keyed {
            scratch.test_and_set(id);
            ids.push(id as i64);
        }
    }
}

/// `vocab_size` counts the reserved ids and at least one item, and fits item ids in u32.
pub fn check_vocab_size(vocab_size: usize) -> Result<()> {
    if vocab_size <= N_RESERVED as usize || vocab_size > u32::MAX as usize {
        return Err(Error::Config(format!(
            "vocab_size must be between {} and {} (the {N_RESERVED} reserved ids plus at least one item), got {vocab_size}",
            N_RESERVED + 1,
            u32::MAX
        )));
    }
    Ok(())
}

fn check_ids(ids: &[i64], vocab_size: u32, what: &str) -> Result<()> {
    if let Some(pos) = ids.iter().position(|&id| id < 0 || id >= vocab_size as i64) {
        return Err(Error::Config(format!(
            "{what}[{pos}] = {} is not an item id (expected 0 <= id < vocab_size = {vocab_size})",
            ids[pos]
        )));
    }
    Ok(())
}

/// Count classes of `q ∝ count ^ alpha` over the real items.
fn popularity_classes(counts: &[u64], alpha: f64) -> Result<CountClasses> {
    let max = counts.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return Err(Error::Config("item_counts are all zero: the popularity distribution has nothing to draw".into()));
    }
    // Scaled by the largest count so that large alphas cannot overflow.
    let log_max = (max as f64).ln();
    Ok(CountClasses::new(counts, |c| if c == 0 { 0.0 } else { (alpha * ((c as f64).ln() - log_max)).exp() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn counts(vocab: usize) -> Vec<u64> {
        (0..vocab as u64).map(|i| if i < 2 { 0 } else { i % 7 }).collect()
    }

    #[test]
    fn draws_are_distinct_unreserved_and_excluded() {
        let sampler = NegativeSampler::new(500, Distribution::Uniform, None, 3).unwrap();
        let exclude: Vec<i64> = (0..200).map(|i| (i * 3) % 400).collect();
        let (ids, log_pi) = sampler.sample(&exclude, 250, 0, 0, 0).unwrap();
        assert_eq!(ids.len(), 250);
        let set: HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(set.len(), 250, "duplicates in {ids:?}");
        let excluded: HashSet<i64> = exclude.into_iter().filter(|&id| id >= 2).collect();
        assert!(ids.iter().all(|id| *id >= 2 && *id < 500 && !excluded.contains(id)));
        let pi = 250.0 / (498 - excluded.len()) as f32;
        assert!(log_pi.iter().all(|&l| (l - pi.ln()).abs() < 1e-6), "{log_pi:?}");
    }

    #[test]
    fn popularity_never_draws_zero_counts_and_log_prob_is_log_q() {
        let vocab = 300;
        let c = counts(vocab);
        let sampler = NegativeSampler::new(vocab, Distribution::Popularity { alpha: 0.75 }, Some(&c), 1).unwrap();
        let total: f64 = c.iter().map(|&x| (x as f64).powf(0.75)).sum();
        for batch in 0..20 {
            let (ids, log_pi) = sampler.sample(&[5, 6, 0], 50, 1, 0, batch).unwrap();
            assert!(ids.iter().all(|&id| c[id as usize] > 0 && id != 5 && id != 6));
            assert!(log_pi.iter().all(|&l| l < 0.0 && l.is_finite()));
        }
        let lp = sampler.log_prob(&[0, 1, 7, 8, 13]).unwrap();
        assert_eq!(lp[0], f32::NEG_INFINITY);
        assert_eq!(lp[2], f32::NEG_INFINITY); // count 7 % 7 == 0
        for (&l, id) in lp[3..].iter().zip([8, 13]) {
            let expected = ((c[id] as f64).powf(0.75) / total).ln();
            assert!((l as f64 - expected).abs() < 1e-5, "{l} vs {expected}");
        }
    }

    /// How often each id is among the `k` draws, over `rounds` batches.
    fn inclusion_frequencies(sampler: &NegativeSampler, exclude: &[i64], k: usize, rounds: u64) -> Vec<f64> {
        let mut seen = vec![0u64; sampler.vocab_size()];
        for b in 0..rounds {
            let (ids, _) = sampler.sample(exclude, k, 0, 0, b).unwrap();
            ids.iter().for_each(|&id| seen[id as usize] += 1);
        }
        seen.iter().map(|&n| n as f64 / rounds as f64).collect()
    }

    /// `exp(log_pi)` of every id, read off one call's draws over many calls (0 if never drawn).
    fn reported_pi(sampler: &NegativeSampler, exclude: &[i64], k: usize) -> Vec<f64> {
        let mut pi = vec![0.0; sampler.vocab_size()];
        for b in 0..200 {
            let (ids, log_pi) = sampler.sample(exclude, k, 9, 0, b).unwrap();
            for (&id, &l) in ids.iter().zip(&log_pi) {
                pi[id as usize] = (l as f64).exp();
            }
        }
        pi
    }

    #[test]
    fn uniform_inclusion_probability_is_exact() {
        let sampler = NegativeSampler::new(42, Distribution::Uniform, None, 4).unwrap();
        let exclude = [0, 2, 3, 3, 9, 17, 40, 41, 20, 21, 22, 23];
        let freq = inclusion_frequencies(&sampler, &exclude, 6, 20_000);
        let pi = reported_pi(&sampler, &exclude, 6);
        assert!((pi.iter().sum::<f64>() - 6.0).abs() < 1e-4, "sum of pi = {}", pi.iter().sum::<f64>());
        for id in 2..42 {
            if exclude.contains(&(id as i64)) {
                assert_eq!((freq[id], pi[id]), (0.0, 0.0), "excluded id {id}");
            } else {
                assert!((pi[id] - 6.0 / 30.0).abs() < 1e-6);
                // binomial sd 0.0028: within 5 sd
                assert!((freq[id] - pi[id]).abs() < 0.015, "id {id}: {} vs {}", freq[id], pi[id]);
            }
        }
    }

    #[test]
    fn popularity_inclusion_probability_matches_monte_carlo() {
        // Counts 1..=9 over 40 items, alpha 1: q spans a factor 9; k draws 10 of the 35 allowed.
        let c: Vec<u64> = (0..42).map(|i| if i < 2 { 0 } else { 1 + (i * 5) % 9 }).collect();
        let sampler = NegativeSampler::new(42, Distribution::Popularity { alpha: 1.0 }, Some(&c), 2).unwrap();
        let exclude = [0, 4, 5, 11, 30, 31, 5];
        let freq = inclusion_frequencies(&sampler, &exclude, 10, 40_000);
        let pi = reported_pi(&sampler, &exclude, 10);
        assert!((pi.iter().sum::<f64>() - 10.0).abs() < 1e-4, "sum of pi = {}", pi.iter().sum::<f64>());
        let mut worst = 0f64;
        for id in 2..42 {
            if exclude.contains(&(id as i64)) {
                assert_eq!((freq[id], pi[id]), (0.0, 0.0), "excluded id {id}");
            } else {
                worst = worst.max((freq[id] - pi[id]).abs());
            }
        }
        // The Poisson approximation, not an exact value: within 0.02 of frequencies near 0.1..0.6.
        assert!(worst < 0.02, "largest |frequency - pi| = {worst}");
    }

    #[test]
    fn same_key_same_draws_other_key_other_draws() {
        let sampler = NegativeSampler::new(10_000, Distribution::Uniform, None, 9).unwrap();
        let a = sampler.sample(&[2, 3], 100, 4, 1, 17).unwrap();
        let b = sampler.sample(&[3, 2, 2], 100, 4, 1, 17).unwrap();
        let c = sampler.sample(&[2, 3], 100, 4, 1, 18).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn same_draws_from_any_thread() {
        let c = counts(5000);
        let sampler = NegativeSampler::new(5000, Distribution::Popularity { alpha: 1.0 }, Some(&c), 5).unwrap();
        let exclude: Vec<i64> = (2..300).collect();
        let sequential: Vec<_> = (0..8).map(|b| sampler.sample(&exclude, 100, 2, 1, b).unwrap()).collect();
        let parallel: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .rev()
                .map(|b| {
                    let (sampler, exclude) = (&sampler, &exclude);
                    scope.spawn(move || sampler.sample(exclude, 100, 2, 1, b).unwrap())
                })
                .collect();
            let mut out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            out.reverse();
            out
        });
        assert_eq!(sequential, parallel);
    }

    #[test]
    fn k_too_large_is_an_error_and_exact_k_completes() {
        let c = counts(100);
        let pop = NegativeSampler::new(100, Distribution::Popularity { alpha: 1.0 }, Some(&c), 0).unwrap();
        let n_positive = c.iter().filter(|&&x| x > 0).count();
        // Excluding an id of count 0 does not shrink the pool; excluding a positive one does.
        let (ids, _) = pop.sample(&[7, 14], n_positive, 0, 0, 0).unwrap();
        assert_eq!(ids.iter().copied().collect::<HashSet<_>>().len(), n_positive);
        let err = pop.sample(&[3], n_positive, 0, 0, 0).unwrap_err().to_string();
        assert_eq!(n_positive, 84);
        assert_eq!(
            err,
            "cannot draw 84 distinct negatives: only 83 items are allowed (98 catalogue items \
             (vocab_size 100 minus 2 reserved ids) minus 14 never drawn (count 0) minus 1 in the \
             batch); lower the number of negatives or the batch size"
        );
        // The scratch state was restored after the error: the next call still sees everything.
        assert!(pop.sample(&[], n_positive, 0, 0, 1).is_ok());
        // More than the whole catalogue fails before allocating anything, whatever k.
        let uniform = NegativeSampler::new(10, Distribution::Uniform, None, 0).unwrap();
        assert_eq!(uniform.n_sampleable(), 8);
        for k in [9, usize::MAX] {
            let err = uniform.sample(&[], k, 0, 0, 0).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "cannot draw {k} distinct negatives: only 8 items are allowed \
                     (8 catalogue items (vocab_size 10 minus 2 reserved ids) minus 0 in the batch)"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn extreme_popularity_falls_back_without_hanging() {
        // One item holds almost all the mass; drawing every item needs the exact fallback.
        let mut c = vec![0u64, 0, 1_000_000_000];
        c.extend(std::iter::repeat_n(1, 200));
        let sampler = NegativeSampler::new(c.len(), Distribution::Popularity { alpha: 3.0 }, Some(&c), 0).unwrap();
        let (ids, logq) = sampler.sample(&[], 201, 0, 0, 0).unwrap();
        assert_eq!(ids.iter().copied().collect::<HashSet<_>>().len(), 201);
        assert!(logq.iter().all(|l| l.is_finite()));
    }

    #[test]
    fn bad_arguments_are_config_errors() {
        let msg = |r: Result<NegativeSampler>| r.err().unwrap().to_string();
        assert!(msg(NegativeSampler::new(2, Distribution::Uniform, None, 0)).contains("vocab_size must be"));
        assert!(msg(NegativeSampler::new(10, Distribution::Popularity { alpha: 1.0 }, None, 0))
            .contains("needs item_counts"));
        assert!(msg(NegativeSampler::new(10, Distribution::Popularity { alpha: 1.0 }, Some(&[0; 10]), 0))
            .contains("all zero"));
        assert!(msg(NegativeSampler::new(10, Distribution::Popularity { alpha: 1.0 }, Some(&[1; 9]), 0))
            .contains("9 entries"));
        assert!(Distribution::parse("zipf", 1.0).unwrap_err().to_string().contains("'uniform' or 'popularity'"));
        let s = NegativeSampler::new(10, Distribution::Uniform, None, 0).unwrap();
        let err = s.sample(&[3, 10], 1, 0, 0, 0).unwrap_err().to_string();
        assert_eq!(err, "exclude[1] = 10 is not an item id (expected 0 <= id < vocab_size = 10)");
    }
}
