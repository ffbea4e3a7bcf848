//! Training batches: left-padded windows of session prefixes plus per-batch negatives,
//! built ahead of the consumer by a background thread.
//!
//! An example is one window of a session's training prefix (see [`Windows`]). The epoch
//! order is a permutation of all examples keyed by `(seed, epoch)`, the same on every rank,
//! then sharded by striding (`rank, rank + world_size, ...`); negatives are keyed by
//! `(seed, epoch, rank, batch_index)`. Batches are thus the same whatever the prefetch depth
//! and wherever an epoch is resumed.

use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};

use crate::error::{Error, Result};
use crate::sampler::rng::Rng;
use crate::sampler::{check_vocab_size, NegativeSampler, Scratch, N_RESERVED};

/// Stream tag of the epoch permutation.
const STREAM_SHUFFLE: u64 = 0x7368_7566_666c_6521;

/// Most positions (`batch_size * seq_len`) in one batch: 2^26, about 600 MB of buffers.
pub const MAX_BATCH_POSITIONS: usize = 1 << 26;

/// Most batches the background thread may build ahead.
pub const MAX_PREFETCH: usize = 64;

/// Sessions in CSR form: session `s` holds plays `offsets[s]..offsets[s + 1]`, of which
/// `[0, train_end[s])` are for training.
pub struct Sessions {
    offsets: Vec<i64>,
    items: Vec<u32>,
    skips: Vec<u8>,
    train_end: Vec<i32>,
}

impl Sessions {
    /// Checks the arrays against each other and against `vocab_size`.
    pub fn new(
        offsets: Vec<i64>,
        items: Vec<u32>,
        skips: Vec<u8>,
        train_end: Vec<i32>,
        vocab_size: usize,
    ) -> Result<Self> {
        check_vocab_size(vocab_size)?;
        let bad = |message: String| Err(Error::Config(message));
        if offsets.len() != train_end.len() + 1 {
            return bad(format!(
                "offsets has {} entries but train_end has {} (expected one more offset than sessions)",
                offsets.len(),
                train_end.len()
            ));
        }
        if offsets[0] != 0 {
            return bad(format!("offsets[0] = {} (expected 0)", offsets[0]));
        }
        if let Some(s) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!(
                "offsets[{}] = {} is smaller than offsets[{s}] = {} (expected non-decreasing offsets)",
                s + 1,
                offsets[s + 1],
                offsets[s]
            ));
        }
        let n = *offsets.last().unwrap_or(&0);
        if n as usize != items.len() || skips.len() != items.len() {
            return bad(format!(
                "offsets end at {n} but items has {} entries and skips {} (expected all three equal)",
                items.len(),
                skips.len()
            ));
        }
        if let Some(s) =
            (0..train_end.len()).find(|&s| train_end[s] < 0 || train_end[s] as i64 > offsets[s + 1] - offsets[s])
        {
            return bad(format!(
                "train_end[{s}] = {} is outside the session's {} plays",
                train_end[s],
                offsets[s + 1] - offsets[s]
            ));
        }
        if let Some(i) = items.iter().position(|&id| id < N_RESERVED || id as usize >= vocab_size) {
            return bad(format!(
                "items[{i}] = {} is not an item id (expected {N_RESERVED} <= id < vocab_size = {vocab_size})",
                items[i]
            ));
        }
        Ok(Sessions { offsets, items, skips, train_end })
    }

    pub fn len(&self) -> usize {
        self.train_end.len()
    }

    /// Plays of each id among the training plays (positions `< train_end`), skipped ones
    /// included; `vocab_size` entries, reserved ids 0. Held-out targets are not counted,
    /// so a popularity distribution built from these does not leak them.
    pub fn train_item_counts(&self, vocab_size: usize) -> Result<Vec<u64>> {
        let mut counts = Vec::new();
        counts
            .try_reserve_exact(vocab_size)
            .map_err(|_| Error::Config(format!("cannot allocate item counts for vocab_size = {vocab_size}")))?;
        counts.resize(vocab_size, 0);
        for (s, &end) in self.train_end.iter().enumerate() {
            let start = self.offsets[s] as usize;
            for &id in &self.items[start..start + end as usize] {
                counts[id as usize] += 1;
            }
        }
        Ok(counts)
    }

    pub fn is_empty(&self) -> bool {
        self.train_end.is_empty()
    }
}

/// Which windows of a session's training prefix `[0, train_end)` are examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Tiles of `seq_len` plays ending at `train_end`, `train_end - (seq_len - 1)`, ... (while
    /// the end is >= 2), so that every training play but the first is a target
    /// (`x[:, 1:]`) in exactly one window per epoch.
    All,
    /// The last `seq_len` plays only.
    Last,
}

impl Windows {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "all" => Ok(Windows::All),
            "last" => Ok(Windows::Last),
            other => Err(Error::Config(format!("windows must be 'all' or 'last', got {other:?}"))),
        }
    }
}

/// Which of a batch's items the negatives are drawn apart from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclude {
    /// Every item of the batch.
    All,
    /// Its non-skipped items only (the possible positives when skipped plays are not
    /// targets), so that skipped items can be drawn as negatives.
    Kept,
}

impl Exclude {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "all" => Ok(Exclude::All),
            "kept" => Ok(Exclude::Kept),
            other => Err(Error::Config(format!("exclude must be 'all' or 'kept', got {other:?}"))),
        }
    }
}

/// One example: the window of session `session` that ends at play `end` (exclusive,
/// counted from the session's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Example {
    pub session: u32,
    pub end: u32,
}

/// Shape and order of the batches.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seq_len: usize,
    pub n_negatives: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    /// How many batches the background thread may build ahead.
    pub prefetch: usize,
    pub windows: Windows,
    pub exclude: Exclude,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 256,
            seq_len: 51,
            n_negatives: 1000,
            seed: 0,
            rank: 0,
            world_size: 1,
            shuffle: true,
            drop_last: false,
            prefetch: 4,
            windows: Windows::All,
            exclude: Exclude::All,
        }
    }
}

/// One batch, row-major; `rows <= batch_size` (the last batch may be partial).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    /// `[rows, seq_len]`, left-padded with 0.
    pub items: Vec<i64>,
    /// `[rows, seq_len]`, false on padding.
    pub skips: Vec<bool>,
    /// `[K]` distinct ids, none reserved, none among the excluded `items` (see [`Exclude`]).
    pub negatives: Vec<i64>,
    /// `[K]` log inclusion probability of each negative (its chance to be among the K).
    pub neg_logq: Vec<f32>,
    /// `[rows]` session index of each row.
    pub sessions: Vec<i64>,
}

struct Inner {
    sessions: Sessions,
    /// Windows of sessions with at least two training plays, in dataset order.
    examples: Vec<Example>,
    sampler: NegativeSampler,
    config: LoaderConfig,
}

/// Rejects shapes that cannot work before any thread or buffer exists: `batch_size >= 1`,
/// `seq_len >= 2` (inputs `x[:, :-1]`, targets `x[:, 1:]`), `batch_size * seq_len <=`
/// [`MAX_BATCH_POSITIONS`], `1 <= prefetch <=` [`MAX_PREFETCH`], `rank < world_size` and
/// `n_negatives` at most the items the sampler can draw.
fn check_config(c: &LoaderConfig, sampler: &NegativeSampler) -> Result<()> {
    let bad = |message: String| Err(Error::Config(message));
    if c.batch_size == 0 {
        return bad("batch_size must be at least 1, got 0".into());
    }
    if c.seq_len < 2 {
        return bad(format!("seq_len must be at least 2 (inputs x[:, :-1] and targets x[:, 1:]), got {}", c.seq_len));
    }
    let positions = c.batch_size as u128 * c.seq_len as u128;
    if positions > MAX_BATCH_POSITIONS as u128 {
        return bad(format!(
            "batch_size * seq_len = {} * {} = {positions} positions per batch is too many \
             (at most 2^26 = {MAX_BATCH_POSITIONS}, about 600 MB of buffers); lower batch_size or seq_len",
            c.batch_size, c.seq_len
        ));
    }
    if !(1..=MAX_PREFETCH).contains(&c.prefetch) {
        return bad(format!("prefetch must be between 1 and {MAX_PREFETCH} batches, got {}", c.prefetch));
    }
    if c.world_size == 0 {
        return bad("world_size must be at least 1, got 0".into());
    }
    if c.rank >= c.world_size {
        return bad(format!("rank must be in [0, world_size = {}), got {}", c.world_size, c.rank));
    }
    if c.n_negatives > sampler.n_sampleable() {
        return bad(format!(
            "n_negatives = {} is more than the {} items the sampler can draw \
             (vocab_size {} minus reserved ids and items of count 0)",
            c.n_negatives,
            sampler.n_sampleable(),
            sampler.vocab_size()
        ));
    }
    Ok(())
}

/// Epoch iterator factory over a fixed set of sessions.
#[derive(Clone)]
pub struct BatchLoader {
    inner: Arc<Inner>,
}

impl BatchLoader {
    /// Checks `config` against the limits (see [`check_config`]) and the sampler.
    pub fn new(sessions: Sessions, sampler: NegativeSampler, config: LoaderConfig) -> Result<Self> {
        check_config(&config, &sampler)?;
        let examples = examples(&sessions.train_end, config.seq_len - 1, config.windows);
        Ok(BatchLoader { inner: Arc::new(Inner { sessions, examples, sampler, config }) })
    }

    /// Training examples (windows) over all ranks.
    pub fn n_examples(&self) -> usize {
        self.inner.examples.len()
    }

    /// Batches per epoch for this rank.
    pub fn len(&self) -> usize {
        let c = &self.inner.config;
        let n = self.shard_len();
        if c.drop_last {
            n / c.batch_size
        } else {
            n.div_ceil(c.batch_size)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Examples of this rank: the strided share of the epoch order, truncated to the
    /// smallest rank's share under `drop_last` so that every rank has as many batches.
    fn shard_len(&self) -> usize {
        let c = &self.inner.config;
        let n = self.inner.examples.len();
        if c.drop_last {
            n / c.world_size
        } else {
            (n + c.world_size - 1 - c.rank) / c.world_size
        }
    }

    /// This rank's examples for `epoch`, in order.
    pub fn shard(&self, epoch: u64) -> Vec<Example> {
        let inner = &self.inner;
        let mut order = inner.examples.clone();
        if inner.config.shuffle {
            let mut rng = Rng::keyed(&[inner.config.seed, STREAM_SHUFFLE, epoch]);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        order.into_iter().skip(inner.config.rank).step_by(inner.config.world_size).take(self.shard_len()).collect()
    }

    /// Iterates over the batches of `epoch` from `start_batch` on, built by a background
    /// thread; dropping the iterator stops that thread.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> Result<EpochIter> {
        let n_batches = self.len();
        if start_batch > n_batches {
            return Err(Error::Config(format!(
                "start_batch = {start_batch} is past the end of the epoch ({n_batches} batches)"
            )));
        }
        let loader = self.clone();
        let (mut shard, mut scratch) = (None, Scratch::default());
        EpochIter::spawn(epoch, start_batch..n_batches, self.inner.config.prefetch, move |b| {
            let shard = shard.get_or_insert_with(|| loader.shard(epoch));
            loader.inner.build(shard, epoch, b, &mut scratch)
        })
    }
}

/// The examples of every session with `train_end >= 2`, in dataset order, each session's
/// windows from the last one back; windows step back by `stride = seq_len - 1` plays.
fn examples(train_end: &[i32], stride: usize, windows: Windows) -> Vec<Example> {
    let mut out = Vec::new();
    for (s, &end) in train_end.iter().enumerate() {
        let mut end = end as usize;
        while end >= 2 {
            out.push(Example { session: s as u32, end: end as u32 });
            if windows == Windows::Last || end < stride + 2 {
                break;
            }
            end -= stride;
        }
    }
    out
}

impl Inner {
    fn build(&self, shard: &[Example], epoch: u64, b: usize, scratch: &mut Scratch) -> Result<Batch> {
        let (bs, len) = (self.config.batch_size, self.config.seq_len);
        let rows = &shard[b * bs..((b + 1) * bs).min(shard.len())];
        let mut items = vec![0i64; rows.len() * len];
        let mut skips = vec![false; rows.len() * len];
        for (r, example) in rows.iter().enumerate() {
            let start = self.sessions.offsets[example.session as usize] as usize;
            let end = start + example.end as usize;
            let from = end.saturating_sub(len).max(start);
            let pad = len - (end - from);
            let row = r * len + pad..(r + 1) * len;
            for (dst, &id) in items[row.clone()].iter_mut().zip(&self.sessions.items[from..end]) {
                *dst = id as i64;
            }
            for (dst, &skip) in skips[row].iter_mut().zip(&self.sessions.skips[from..end]) {
                *dst = skip != 0;
            }
        }
        let k = self.config.n_negatives;
        let (mut negatives, mut neg_logq) = (Vec::new(), Vec::new());
        let mut rng = self.sampler.batch_rng(epoch, self.config.rank as u64, b as u64);
        let kept: Vec<i64>;
        let exclude = match self.config.exclude {
            Exclude::All => &items,
            Exclude::Kept => {
                kept = items.iter().zip(&skips).filter(|&(_, &skip)| !skip).map(|(&id, _)| id).collect();
                &kept
            }
        };
        self.sampler
            .sample_into(exclude, k, &mut rng, scratch, &mut negatives, &mut neg_logq)
            .map_err(|e| Error::Config(format!("epoch {epoch}, batch {b}: {e}")))?;
        Ok(Batch {
            rows: rows.len(),
            seq_len: len,
            items,
            skips,
            negatives,
            neg_logq,
            sessions: rows.iter().map(|example| example.session as i64).collect(),
        })
    }
}

/// Why an epoch stopped before its last batch.
#[derive(Debug)]
pub enum EpochError {
    /// A batch could not be built, e.g. too few items left to draw the negatives from.
    Build(Error),
    /// The background thread panicked or ended early (a bug, not a bad argument).
    Worker(String),
}

impl fmt::Display for EpochError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EpochError::Build(e) => write!(f, "{e}"),
            EpochError::Worker(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for EpochError {}

/// The batches of one epoch, as the background thread delivers them. Either all of them
/// come out, or an [`EpochError`] naming the epoch and batch ends the iteration.
pub struct EpochIter {
    rx: Option<Receiver<std::result::Result<Batch, EpochError>>>,
    worker: Option<JoinHandle<()>>,
    epoch: u64,
    /// Index of the next batch to return.
    next_batch: usize,
    remaining: usize,
}

impl EpochIter {
    /// Runs `build(b)` for each batch index of `batches` on a new thread, at most
    /// `prefetch` ahead of the consumer. The first error or panic is delivered in place
    /// of its batch and ends the thread.
    fn spawn<F>(epoch: u64, batches: Range<usize>, prefetch: usize, mut build: F) -> Result<Self>
    where
        F: FnMut(usize) -> Result<Batch> + Send + 'static,
    {
        let (tx, rx) = bounded(prefetch);
        let (next_batch, remaining) = (batches.start, batches.len());
        let worker = std::thread::Builder::new()
            .name("negrec-batches".into())
            .spawn(move || {
                for b in batches {
                    let batch = match catch_unwind(AssertUnwindSafe(|| build(b))) {
                        Ok(Ok(batch)) => Ok(batch),
                        Ok(Err(e)) => Err(EpochError::Build(e)),
                        Err(panic) => Err(EpochError::Worker(format!(
                            "epoch {epoch}, batch {b}: the batch thread panicked: {}",
                            panic_message(&*panic)
                        ))),
                    };
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break; // consumer gone, or the error was delivered
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the batch thread: {e}")))?;
        Ok(EpochIter { rx: Some(rx), worker: Some(worker), epoch, next_batch, remaining })
    }

    /// Batches not yet returned.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Closes the channel and waits for the thread; its panic message if it panicked.
    fn stop(&mut self) -> Option<String> {
        // Closing the channel makes the worker's next send fail, so it stops after at
        // most the batch it is building.
        drop(self.rx.take());
        self.remaining = 0;
        let worker = self.worker.take()?;
        worker.join().err().map(|panic| panic_message(&*panic))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

impl Iterator for EpochIter {
    type Item = std::result::Result<Batch, EpochError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            self.stop();
            return None;
        }
        let received = self.rx.as_ref()?.recv();
        match received {
            Ok(Ok(batch)) => {
                self.remaining -= 1;
                self.next_batch += 1;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.stop();
                Some(Err(e))
            }
            Err(_) => {
                // The thread ended without sending every batch: never a short epoch.
                let (epoch, b, left) = (self.epoch, self.next_batch, self.remaining);
                let why = self.stop().unwrap_or_else(|| "it stopped without an error".into());
                Some(Err(EpochError::Worker(format!(
                    "epoch {epoch}, batch {b}: the batch thread ended with {left} batches \
                     still to deliver: {why}"
                ))))
            }
        }
    }

    /// At most the batches left; fewer when an error ends the epoch.
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining.min(1), Some(self.remaining))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Distribution;
    use std::collections::HashSet;

    /// 23 sessions of 1..=8 plays; ids cycle through 2..40.
    fn sessions() -> Sessions {
        let mut offsets = vec![0i64];
        let (mut items, mut skips, mut train_end) = (vec![], vec![], vec![]);
        for s in 0..23u32 {
            let n = s % 8 + 1;
            for p in 0..n {
                items.push(2 + (s * 7 + p) % 38);
                skips.push(((s + p) % 3 == 0) as u8);
            }
            offsets.push(items.len() as i64);
            train_end.push(if s % 5 == 0 { n as i32 - 1 } else { n as i32 });
        }
        Sessions::new(offsets, items, skips, train_end, 40).unwrap()
    }

    fn loader(config: LoaderConfig) -> BatchLoader {
        let sampler = NegativeSampler::new(40, Distribution::Uniform, None, config.seed).unwrap();
        BatchLoader::new(sessions(), sampler, config).unwrap()
    }

    fn small() -> LoaderConfig {
        LoaderConfig { batch_size: 4, seq_len: 5, n_negatives: 6, seed: 11, ..Default::default() }
    }

    fn collect(loader: &BatchLoader, epoch: u64, start: usize) -> Vec<Batch> {
        loader.epoch(epoch, start).unwrap().map(|b| b.unwrap()).collect()
    }

    #[test]
    fn last_windows_are_left_padded_suffixes_of_the_training_prefix() {
        let data = sessions();
        let l = loader(LoaderConfig { shuffle: false, windows: Windows::Last, ..small() });
        let batches = collect(&l, 0, 0);
        assert_eq!(batches.len(), l.len());
        for batch in &batches {
            for (r, &s) in batch.sessions.iter().enumerate() {
                let s = s as usize;
                let start = data.offsets[s] as usize;
                let end = start + data.train_end[s] as usize;
                let take = (end - start).min(5);
                let row = &batch.items[r * 5..(r + 1) * 5];
                let expected: Vec<i64> = std::iter::repeat_n(0, 5 - take)
                    .chain(data.items[end - take..end].iter().map(|&i| i as i64))
                    .collect();
                assert_eq!(row, &expected[..], "session {s}");
                assert!(batch.skips[r * 5..r * 5 + 5 - take].iter().all(|&x| !x));
                let exp_skips: Vec<bool> = data.skips[end - take..end].iter().map(|&x| x != 0).collect();
                assert_eq!(&batch.skips[r * 5 + 5 - take..(r + 1) * 5], &exp_skips[..]);
            }
            let in_batch: HashSet<i64> = batch.items.iter().copied().collect();
            assert_eq!(batch.negatives.iter().collect::<HashSet<_>>().len(), 6);
            assert!(batch.negatives.iter().all(|n| *n >= 2 && !in_batch.contains(n)));
        }
    }

    /// Sessions of 0..=13 plays, `train_end` from the whole session down to 3 plays less;
    /// every play has its own id (`2 +` its index in `items`), so a row names its plays.
    fn unique_plays() -> (Sessions, usize) {
        let mut offsets = vec![0i64];
        let mut train_end = vec![];
        for s in 0..40u32 {
            let n = (s * 5) % 14;
            offsets.push(offsets.last().unwrap() + n as i64);
            train_end.push(n.saturating_sub(s % 4) as i32);
        }
        let n = *offsets.last().unwrap() as u32;
        let skips = (0..n).map(|i| (i % 3 == 0) as u8).collect();
        let vocab = n as usize + 2;
        (Sessions::new(offsets, (2..n + 2).collect(), skips, train_end, vocab).unwrap(), vocab)
    }

    #[test]
    fn all_windows_make_every_training_play_a_target_once_per_epoch() {
        let (data, vocab) = unique_plays();
        // Reference, from the definition: plays 1..train_end of each session.
        let mut expected = Vec::new();
        for s in 0..data.len() {
            let start = data.offsets[s] as u32;
            expected.extend((1..data.train_end[s] as u32).map(|p| 2 + start + p));
        }
        expected.sort_unstable();
        for (seq_len, batch_size, epoch) in [(5, 3, 0), (2, 7, 1), (4, 1, 2), (20, 4, 3)] {
            let sampler = NegativeSampler::new(vocab, Distribution::Uniform, None, 0).unwrap();
            let config = LoaderConfig { batch_size, seq_len, n_negatives: 3, ..Default::default() };
            let l = BatchLoader::new(unique_plays().0, sampler, config).unwrap();
            let mut targets = Vec::new();
            for batch in collect(&l, epoch, 0) {
                for (r, &s) in batch.sessions.iter().enumerate() {
                    let row = &batch.items[r * seq_len..(r + 1) * seq_len];
                    let first = 2 + data.offsets[s as usize];
                    let last = first + data.train_end[s as usize] as i64;
                    for w in row.windows(2) {
                        // the first play of a left-padded row has no input: not a target
                        if w[0] != 0 {
                            assert!(w[1] == w[0] + 1 && w[1] < last, "row {row:?} of session {s}");
                            targets.push(w[1] as u32);
                        }
                    }
                    // rows are contiguous plays of their session, left-padded only at its start
                    let plays: Vec<i64> = row.iter().copied().filter(|&id| id != 0).collect();
                    assert!(plays[0] >= first && (plays.len() == seq_len || plays[0] == first), "{row:?}");
                }
            }
            targets.sort_unstable();
            assert_eq!(targets, expected, "seq_len {seq_len}");
        }
    }

    #[test]
    fn sharding_covers_every_example_once() {
        let base = loader(small());
        let expected: HashSet<Example> = base.inner.examples.iter().copied().collect();
        // Windows ending at train_end, train_end - 4, ... >= 2: 3 sessions have train_end < 2,
        // 13 have 2..=5 training plays (one window) and 7 have 6..=8 (two windows).
        assert_eq!(base.n_examples(), 27);
        assert_eq!(loader(LoaderConfig { windows: Windows::Last, ..small() }).n_examples(), 20);
        let mut seen = Vec::new();
        for rank in 0..3 {
            let l = loader(LoaderConfig { rank, world_size: 3, ..small() });
            let batches = collect(&l, 2, 0);
            assert_eq!(batches.len(), l.len());
            let shard = l.shard(2);
            let sessions: Vec<i64> = batches.iter().flat_map(|b| b.sessions.iter().copied()).collect();
            assert_eq!(sessions, shard.iter().map(|e| e.session as i64).collect::<Vec<_>>());
            seen.extend(shard);
        }
        assert_eq!(seen.len(), expected.len());
        assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    }

    #[test]
    fn kept_exclusion_lets_skipped_items_be_negatives() {
        // One session: kept plays of 2 and 3, skipped plays of 4..=9, in a catalogue 2..12.
        let items = vec![2, 4, 3, 5, 6, 7, 8, 9];
        let skips = vec![0, 1, 0, 1, 1, 1, 1, 1];
        let data = || Sessions::new(vec![0, 8], items.clone(), skips.clone(), vec![8], 12).unwrap();
        let config = |exclude, n_negatives| LoaderConfig {
            batch_size: 1,
            seq_len: 8,
            n_negatives,
            exclude,
            ..Default::default()
        };
        let sampler = || NegativeSampler::new(12, Distribution::Uniform, None, 0).unwrap();
        let kept = BatchLoader::new(data(), sampler(), config(Exclude::Kept, 4)).unwrap();
        let mut drawn = HashSet::new();
        for epoch in 0..20 {
            let batch = collect(&kept, epoch, 0).remove(0);
            assert!(batch.negatives.iter().all(|&id| id > 3), "{:?}", batch.negatives);
            // 4 draws among the 8 allowed ids 4..=11
            assert!(batch.neg_logq.iter().all(|&l| (l - 0.5f32.ln()).abs() < 1e-6));
            drawn.extend(batch.negatives);
        }
        assert!(drawn.iter().any(|&id| id <= 9), "no skipped item was ever drawn");
        // Excluding every item leaves 10 and 11, each drawn for sure.
        let all = BatchLoader::new(data(), sampler(), config(Exclude::All, 2)).unwrap();
        let batch = collect(&all, 0, 0).remove(0);
        assert_eq!(batch.negatives.iter().copied().collect::<HashSet<_>>(), HashSet::from([10, 11]));
        assert_eq!(batch.neg_logq, vec![0.0, 0.0]);
    }

    #[test]
    fn drop_last_gives_equal_full_batches_on_every_rank() {
        for rank in 0..4 {
            let l = loader(LoaderConfig { rank, world_size: 4, drop_last: true, ..small() });
            let batches = collect(&l, 0, 0);
            assert_eq!(batches.len(), 1); // 27 examples / 4 ranks = 6 each = one full batch of 4
            assert!(batches.iter().all(|b| b.rows == 4));
        }
    }

    #[test]
    fn identical_whatever_the_prefetch_and_resumable() {
        let a = collect(&loader(LoaderConfig { prefetch: 1, ..small() }), 3, 0);
        let b = collect(&loader(LoaderConfig { prefetch: 16, ..small() }), 3, 0);
        assert_eq!(a, b);
        let tail = collect(&loader(small()), 3, 2);
        assert_eq!(&a[2..], &tail[..]);
        assert_ne!(a, collect(&loader(small()), 4, 0), "epochs should differ");
    }

    #[test]
    fn dropping_early_stops_the_worker() {
        let l = loader(LoaderConfig { batch_size: 1, prefetch: 1, ..small() });
        for _ in 0..20 {
            let mut it = l.epoch(0, 0).unwrap();
            assert!(it.next().unwrap().is_ok());
            drop(it); // joins the worker; a leak or hang would block here
        }
    }

    #[test]
    fn errors_are_clear() {
        let err = |c: LoaderConfig| {
            let sampler = NegativeSampler::new(40, Distribution::Uniform, None, 0).unwrap();
            BatchLoader::new(sessions(), sampler, c).err().unwrap().to_string()
        };
        assert_eq!(
            err(LoaderConfig { rank: 2, world_size: 2, ..small() }),
            "rank must be in [0, world_size = 2), got 2"
        );
        assert_eq!(err(LoaderConfig { batch_size: 0, ..small() }), "batch_size must be at least 1, got 0");
        let too_many = loader(LoaderConfig { n_negatives: 37, ..small() });
        let first = too_many.epoch(0, 0).unwrap().next().unwrap().unwrap_err().to_string();
        assert!(first.starts_with("epoch 0, batch 0: cannot draw 37 distinct negatives"), "{first}");
        let limits = [
            (
                LoaderConfig { seq_len: 1 << 62, batch_size: 256, ..small() },
                "batch_size * seq_len = 256 * 4611686018427387904 = 1180591620717411303424 \
                 positions per batch is too many (at most 2^26 = 67108864, about 600 MB of \
                 buffers); lower batch_size or seq_len",
            ),
            (
                LoaderConfig { seq_len: 1, ..small() },
                "seq_len must be at least 2 (inputs x[:, :-1] and targets x[:, 1:]), got 1",
            ),
            (LoaderConfig { prefetch: 65, ..small() }, "prefetch must be between 1 and 64 batches, got 65"),
            (LoaderConfig { prefetch: 0, ..small() }, "prefetch must be between 1 and 64 batches, got 0"),
            (
                LoaderConfig { n_negatives: 39, ..small() },
                "n_negatives = 39 is more than the 38 items the sampler can draw \
                 (vocab_size 40 minus reserved ids and items of count 0)",
            ),
        ];
        for (config, expected) in limits {
            assert_eq!(err(config), expected);
        }
        assert!(loader(small()).epoch(0, 99).err().unwrap().to_string().contains("past the end"));
        let bad = Sessions::new(vec![0, 2], vec![2, 40], vec![0, 0], vec![2], 40).err().unwrap();
        assert_eq!(bad.to_string(), "items[1] = 40 is not an item id (expected 2 <= id < vocab_size = 40)");
        let bad = Sessions::new(vec![0, 2, 1], vec![2, 3], vec![0, 0], vec![2, 0], 40).err().unwrap();
        assert!(bad.to_string().starts_with("offsets[2] = 1 is smaller than offsets[1] = 2"));
    }

    fn drain(it: EpochIter) -> Vec<std::result::Result<Batch, EpochError>> {
        it.collect()
    }

    fn empty_batch(b: usize) -> Batch {
        Batch {
            rows: b,
            seq_len: 0,
            items: vec![],
            skips: vec![],
            negatives: vec![],
            neg_logq: vec![],
            sessions: vec![],
        }
    }

    #[test]
    fn a_panic_in_the_batch_thread_is_an_error_not_a_short_epoch() {
        let it = EpochIter::spawn(5, 0..4, 1, |b| {
            if b == 2 {
                panic!("boom at {b}");
            }
            Ok(empty_batch(b))
        })
        .unwrap();
        let out = drain(it);
        assert_eq!(out.len(), 3, "two batches, then the error, then the end");
        assert_eq!(out[1].as_ref().unwrap().rows, 1);
        assert_eq!(out[2].as_ref().unwrap_err().to_string(), "epoch 5, batch 2: the batch thread panicked: boom at 2");
    }

    #[test]
    fn a_thread_that_ends_early_is_an_error() {
        // A worker that sends one of three batches and returns (any way a thread could end
        // without reporting): the consumer gets an error at batch 1, not the end of the epoch.
        let (tx, rx) = bounded(4);
        let worker = std::thread::spawn(move || tx.send(Ok(empty_batch(0))).unwrap());
        let it = EpochIter { rx: Some(rx), worker: Some(worker), epoch: 7, next_batch: 0, remaining: 3 };
        let out = drain(it);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "epoch 7, batch 1: the batch thread ended with 2 batches still to deliver: \
             it stopped without an error"
        );
    }

    /// Batch 0 holds ids {2, 3}, batch 1 ids {4..=9}, in a catalogue of ids 2..12.
    fn two_batches(n_negatives: usize) -> BatchLoader {
        let items = vec![2, 3, 3, 2, 4, 5, 6, 7, 8, 9, 4, 5];
        let sessions = Sessions::new(vec![0, 2, 4, 10, 12], items, vec![0; 12], vec![2, 2, 6, 2], 12).unwrap();
        let sampler = NegativeSampler::new(12, Distribution::Uniform, None, 0).unwrap();
        let config = LoaderConfig { batch_size: 2, seq_len: 6, n_negatives, shuffle: false, ..Default::default() };
        BatchLoader::new(sessions, sampler, config).unwrap()
    }

    #[test]
    fn a_batch_without_enough_negatives_ends_the_epoch_with_its_error() {
        let out = drain(two_batches(6).epoch(0, 0).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().unwrap().negatives.len(), 6);
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "epoch 0, batch 1: cannot draw 6 distinct negatives: only 4 items are allowed \
             (10 catalogue items (vocab_size 12 minus 2 reserved ids) minus 6 in the batch); \
             lower the number of negatives or the batch size"
        );
        assert_eq!(drain(two_batches(4).epoch(0, 0).unwrap()).len(), 2);
    }

    #[test]
    fn train_counts_leave_out_plays_at_and_after_train_end() {
        // Session 0 trains on [2, 3] (4 is held out), session 1 on nothing, session 2 whole.
        let s = Sessions::new(vec![0, 3, 5, 7], vec![2, 3, 4, 4, 5, 3, 3], vec![0, 1, 0, 0, 0, 1, 0], vec![2, 0, 2], 7)
            .unwrap();
        assert_eq!(s.train_item_counts(7).unwrap(), vec![0, 0, 1, 3, 0, 0, 0]);
    }
}
