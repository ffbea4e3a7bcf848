//! From parsed chunks to sessions: merge chunk vocabularies, group and order rows, cut sessions
//! at gaps, derive skips from durations, window/filter/sample, and encode the kept items.

use std::sync::atomic::{AtomicU32, Ordering};

use ahash::AHashMap;
use rayon::prelude::*;

use super::intern::{same, Table};
use super::source::{Chunk, ChunkRows};
use super::Rules;

/// All rows in one place; `items` are raw ids (order of first appearance in the file).
pub(crate) struct Rows {
    pub items: Vec<u32>,
    pub skips: Vec<u8>,
    pub order: Vec<i64>,
    /// The rows are in file order (not permuted by grouping or sorting).
    pub in_file_order: bool,
}

impl Rows {
    fn permute(&mut self, perm: &[u32]) {
        self.items = perm.par_iter().map(|&i| self.items[i as usize]).collect();
        self.skips = perm.par_iter().map(|&i| self.skips[i as usize]).collect();
        self.order = perm.par_iter().map(|&i| self.order[i as usize]).collect();
        self.in_file_order = false;
    }
}

/// Rows of all chunks with a file-wide raw item vocabulary, and the runs of equal group keys.
pub(crate) struct Merged<'c> {
    pub rows: Rows,
    /// Key of each raw id.
    pub raw_keys: Vec<&'c [u8]>,
    /// (group key, first row) of each run of rows with the same key, in file order; adjacent
    /// runs have different keys.
    pub runs: Vec<(&'c [u8], usize)>,
}

/// Whether `order` never decreases within a run of consecutive rows with the same key, across
/// chunk boundaries too: then sessions of consecutive rows are already in order.
pub(crate) fn runs_sorted(chunks: &[Chunk]) -> bool {
    let mut last: Option<(&[u8], i64)> = None;
    for c in chunks.iter().filter(|c| !c.items.is_empty()) {
        if !c.sorted || last.is_some_and(|(key, order)| key == c.run_keys.get(0) && order > c.first_order) {
            return false;
        }
        last = Some((c.run_keys.last().expect("rows have runs"), c.last_order));
    }
    true
}

/// Merges the chunks. Raw item ids follow the order of first appearance in the file: a chunk's
/// local ids already follow it within the chunk, so the keys a chunk sees first are numbered
/// after those of the chunks before it, in local order. Which keys those are is found in
/// parallel shards (a key's shard follows from the hash its chunk computed); then rows are
/// copied in parallel from each chunk's `rows` (taken out of it, freed here once copied).
/// `order` is left empty unless `keep_order`.
pub(crate) fn merge(chunks: &[Chunk], rows: Vec<ChunkRows>, keep_order: bool) -> Merged<'_> {
    let shards = rayon::current_num_threads().max(1);
    let shard_of = |h: u64| (((h >> 32) * shards as u64) >> 32) as usize;
    // Each chunk key's id within its shard (times 2), plus 1 where the key is first seen.
    let in_shard: Vec<Vec<AtomicU32>> =
        chunks.iter().map(|c| (0..c.item_keys.len()).map(|_| AtomicU32::new(0)).collect()).collect();
    // Per shard: the (chunk, local id) where each of its keys is first seen.
    let firsts: Vec<Vec<(u32, u32)>> = (0..shards)
        .into_par_iter()
        .map(|s| {
            let mut table = Table::new();
            let mut keys: Vec<&[u8]> = Vec::new();
            let mut hashes: Vec<u64> = Vec::new();
            let mut firsts = Vec::new();
            for (c, (chunk, out)) in chunks.iter().zip(&in_shard).enumerate() {
                for (i, &h) in chunk.item_hashes.iter().enumerate() {
                    if shard_of(h) != s {
                        continue;
                    }
                    let key = chunk.item_keys.get(i);
                    let tagged = match table.find(h, |id| same(keys[id as usize], key)) {
                        Ok(id) => 2 * id as u32,
                        Err(at) => {
                            let id = keys.len() as u32;
                            keys.push(key);
                            hashes.push(h);
                            firsts.push((c as u32, i as u32));
                            table.insert(at, id as u64, |j| hashes[j as usize]);
                            2 * id + 1
                        }
                    };
                    out[i].store(tagged, Ordering::Relaxed);
                }
            }
            firsts
        })
        .collect();
    // Keys first seen in each chunk, in local order; `rank[c][i]` = place of key `i` among
    // them (meaningful for those keys only). A chunk's first-seen keys are numbered from the
    // number seen in the chunks before it.
    let (new_keys, rank): (Vec<Vec<&[u8]>>, Vec<Vec<u32>>) = chunks
        .par_iter()
        .zip(&in_shard)
        .map(|(c, tags)| {
            let mut new_keys = Vec::new();
            let rank = tags
                .iter()
                .enumerate()
                .map(|(i, tag)| {
                    let place = new_keys.len() as u32;
                    if tag.load(Ordering::Relaxed) & 1 == 1 {
                        new_keys.push(c.item_keys.get(i));
                    }
                    place
                })
                .collect();
            (new_keys, rank)
        })
        .unzip();
    let base: Vec<u32> = new_keys
        .iter()
        .scan(0u32, |seen, keys| {
            let first = *seen;
            *seen += keys.len() as u32;
            Some(first)
        })
        .collect();
    let raw_of = |c: usize, i: usize| base[c] + rank[c][i];
    let raw_keys: Vec<&[u8]> = new_keys.concat();
    let remaps: Vec<Vec<u32>> = chunks
        .par_iter()
        .zip(&in_shard)
        .enumerate()
        .map(|(c, (chunk, tags))| {
            chunk
                .item_hashes
                .iter()
                .zip(tags)
                .enumerate()
                .map(|(i, (&h, tag))| {
                    let tag = tag.load(Ordering::Relaxed);
                    if tag & 1 == 1 {
                        raw_of(c, i)
                    } else {
                        let (fc, fi) = firsts[shard_of(h)][(tag / 2) as usize];
                        raw_of(fc as usize, fi as usize)
                    }
                })
                .collect()
        })
        .collect();
    let total: usize = rows.iter().map(|r| r.items.len()).sum();
    let mut items = vec![0u32; total];
    split_like(&mut items, &rows).into_par_iter().zip(rows.par_iter().zip(remaps.par_iter())).for_each(
        |(out, (r, remap))| {
            for (o, &local) in out.iter_mut().zip(&r.items) {
                *o = remap[local as usize];
            }
        },
    );
    let mut skips = vec![0u8; total];
    split_like(&mut skips, &rows)
        .into_par_iter()
        .zip(rows.par_iter())
        .for_each(|(out, r)| out.copy_from_slice(&r.skips));
    let mut order = vec![0i64; if keep_order { total } else { 0 }];
    if keep_order {
        split_like(&mut order, &rows)
            .into_par_iter()
            .zip(rows.par_iter())
            .for_each(|(out, r)| out.copy_from_slice(&r.order));
    }
    let chunk_rows: Vec<usize> = rows.iter().map(|r| r.items.len()).collect();
    drop(rows);
    // Within a chunk, adjacent runs differ; a chunk's first run may continue the last one.
    let mut runs: Vec<(&[u8], usize)> = Vec::with_capacity(chunks.iter().map(|c| c.run_starts.len()).sum());
    let mut row = 0;
    for (c, n) in chunks.iter().zip(chunk_rows) {
        for (r, &start) in c.run_starts.iter().enumerate() {
            let key = c.run_keys.get(r);
            if r > 0 || runs.last().is_none_or(|&(last, _)| last != key) {
                runs.push((key, row + start as usize));
            }
        }
        row += n;
    }
    Merged { rows: Rows { items, skips, order, in_file_order: true }, raw_keys, runs }
}

/// `out` cut into one part per chunk, each as long as the chunk's rows.
fn split_like<'o, T>(mut out: &'o mut [T], rows: &[ChunkRows]) -> Vec<&'o mut [T]> {
    let mut parts = Vec::with_capacity(rows.len());
    for r in rows {
        let (head, tail) = out.split_at_mut(r.items.len());
        parts.push(head);
        out = tail;
    }
    parts
}

/// Contiguous groups of rows: group `g` is rows `bounds[g]..bounds[g + 1]`.
pub(crate) struct Groups<'c> {
    pub keys: Vec<&'c [u8]>,
    pub bounds: Vec<usize>,
}

/// Groups rows: each run (`consecutive`; adjacent runs have different keys, see [`Merged`]),
/// or all rows with the same key (groups in order of first appearance, rows kept in file order).
pub(crate) fn group<'c>(rows: &mut Rows, runs: &[(&'c [u8], usize)], consecutive: bool) -> Groups<'c> {
    let n = rows.items.len();
    let run_end = |r: usize| runs.get(r + 1).map_or(n, |x| x.1);
    if consecutive {
        let keys = runs.iter().map(|r| r.0).collect();
        let bounds = std::iter::once(0).chain((0..runs.len()).map(run_end)).collect();
        return Groups { keys, bounds };
    }
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut bounds = vec![0usize];
    let mut gid_of: AHashMap<&[u8], u32> = AHashMap::new();
    let mut run_group = Vec::with_capacity(runs.len());
    let mut sizes: Vec<usize> = Vec::new();
    for (r, &(key, start)) in runs.iter().enumerate() {
        let g = *gid_of.entry(key).or_insert_with(|| {
            keys.push(key);
            sizes.push(0);
            keys.len() as u32 - 1
        });
        sizes[g as usize] += run_end(r) - start;
        run_group.push(g);
    }
    let mut acc = 0;
    for s in &sizes {
        acc += s;
        bounds.push(acc);
    }
    let contiguous = run_group.iter().enumerate().all(|(r, &g)| g as usize == r);
    if !contiguous {
        let mut cursor: Vec<usize> = bounds[..keys.len()].to_vec();
        let mut perm = vec![0u32; n];
        for (r, &(_, start)) in runs.iter().enumerate() {
            let g = run_group[r] as usize;
            for i in start..run_end(r) {
                perm[cursor[g]] = i as u32;
                cursor[g] += 1;
            }
        }
        rows.permute(&perm);
    }
    Groups { keys, bounds }
}

/// Stably sorts the rows of each group by `order` (only groups not already in order).
pub(crate) fn sort_groups(rows: &mut Rows, groups: &Groups) {
    let unsorted: Vec<usize> = (0..groups.keys.len())
        .into_par_iter()
        .filter(|&g| rows.order[groups.bounds[g]..groups.bounds[g + 1]].windows(2).any(|w| w[0] > w[1]))
        .collect();
    if unsorted.is_empty() {
        return;
    }
    let order = &rows.order;
    let sorted: Vec<(usize, Vec<u32>)> = unsorted
        .into_par_iter()
        .map(|g| {
            let (a, b) = (groups.bounds[g], groups.bounds[g + 1]);
            let mut idx: Vec<u32> = (a as u32..b as u32).collect();
            idx.sort_by_key(|&i| order[i as usize]);
            (a, idx)
        })
        .collect();
    let mut perm: Vec<u32> = (0..rows.items.len() as u32).collect();
    for (a, idx) in sorted {
        perm[a..a + idx.len()].copy_from_slice(&idx);
    }
    rows.permute(&perm);
}

/// A session: rows `start..end` of group `group`; `part` = its index among the group's
/// gap-cut sessions (None when sessions are not cut at gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    pub group: u32,
    pub part: Option<u32>,
    pub start: usize,
    pub end: usize,
}

/// Sessions of each group: the whole group, or cut where the time to the previous play exceeds `gap`.
pub(crate) fn sessions(rows: &Rows, groups: &Groups, gap: Option<i64>) -> Vec<Session> {
    let mut out = Vec::with_capacity(groups.keys.len());
    for g in 0..groups.keys.len() {
        let (a, b) = (groups.bounds[g], groups.bounds[g + 1]);
        match gap {
            None => out.push(Session { group: g as u32, part: None, start: a, end: b }),
            Some(gap) => {
                let mut start = a;
                let mut part = 0;
                for i in a + 1..=b {
                    // Times are within ±2^53 s (see `fields::MAX_ABS_SECONDS`); saturating anyway.
                    if i == b || rows.order[i].saturating_sub(rows.order[i - 1]) > gap {
                        out.push(Session { group: g as u32, part: Some(part), start, end: i });
                        part += 1;
                        start = i;
                    }
                }
            }
        }
    }
    out
}

/// Marks a play skipped when the next play of its session starts before the track could have
/// finished (`next time - time < duration`); plays of tracks with unknown duration stay kept.
pub(crate) fn skips_from_durations(rows: &mut Rows, sessions: &[Session], duration_of_raw: &[f64]) {
    for s in sessions {
        for i in s.start..s.end.saturating_sub(1) {
            let d = duration_of_raw[rows.items[i] as usize];
            rows.skips[i] = ((rows.order[i + 1].saturating_sub(rows.order[i]) as f64) < d) as u8;
        }
        if s.end > s.start {
            rows.skips[s.end - 1] = 0;
        }
    }
}

/// A kept window of a session: rows `start..end`; `index` is Some when the session was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub session: u32,
    pub index: Option<u32>,
    pub start: usize,
    pub end: usize,
}

/// SplitMix64: the seeded generator of the session sample.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Applies the length rules, `require_skip` and the `max_sessions` sample (see [`Rules`]).
pub(crate) fn filter(rows: &Rows, sessions: &[Session], rules: &Rules) -> Vec<Window> {
    // Most sessions give one window (or none); cut ones grow the vector.
    let mut out = Vec::with_capacity(sessions.len());
    for (s, sess) in sessions.iter().enumerate() {
        let len = sess.end - sess.start;
        let cut = rules.max_length.is_some_and(|m| len > m);
        let step = if cut { rules.max_length.unwrap_or(len) } else { len.max(1) };
        let mut start = sess.start;
        let mut index = 0u32;
        while start < sess.end {
            let end = (start + step).min(sess.end);
            let min = if cut && end - start < step { rules.min_remainder } else { rules.min_length };
            let keep = end - start >= min && (!rules.require_skip || rows.skips[start..end].contains(&1));
            if keep {
                out.push(Window { session: s as u32, index: cut.then_some(index), start, end });
            }
            index += 1;
            start = end;
        }
    }
    if let Some(cap) = rules.max_sessions {
        if cap < out.len() {
            out = sample(out.len(), cap, rules.seed).into_iter().map(|i| out[i]).collect();
        }
    }
    out
}

/// The `cap` indices (of `0..n`, `cap < n`) a seeded partial Fisher-Yates shuffle picks, in
/// increasing order: the `max_sessions` sample. With few picks among many windows only the
/// moved positions are kept (in a map), which gives the same picks.
pub(crate) fn sample(n: usize, cap: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut chosen = if cap.saturating_mul(8) >= n {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..cap {
            let j = i + (splitmix(&mut state) % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(cap);
        idx
    } else {
        let mut moved: AHashMap<usize, usize> = AHashMap::with_capacity(2 * cap);
        let mut chosen = Vec::with_capacity(cap);
        for i in 0..cap {
            let j = i + (splitmix(&mut state) % (n - i) as u64) as usize;
            let at_j = moved.get(&j).copied().unwrap_or(j);
            let at_i = moved.remove(&i).unwrap_or(i);
            if j != i {
                moved.insert(j, at_i);
            }
            chosen.push(at_j);
        }
        chosen
    };
    chosen.sort_unstable();
    chosen
}

/// The encoded output rows of the kept windows.
pub(crate) struct Encoded {
    pub offsets: Vec<i64>,
    pub items: Vec<u32>,
    pub skips: Vec<u8>,
    pub times: Vec<i64>,
    /// Raw id of internal id `2 + k` is `vocab_raw[k]`.
    pub vocab_raw: Vec<u32>,
    /// Plays of each internal id (ids 0 and 1 count 0).
    pub counts: Vec<u64>,
}

/// Encodes items: internal ids from 2 in order of first appearance in the kept windows. When
/// the windows are all the rows in order (nothing filtered), the row vectors are reused in place;
/// when those rows are also in file order, raw ids already follow first appearance (see
/// [`merge`]) and the internal id is the raw id plus 2.
pub(crate) fn encode(rows: Rows, windows: &[Window], n_raw: usize, keep_times: bool) -> Encoded {
    let mut remap = vec![u32::MAX; n_raw];
    let mut vocab_raw = Vec::new();
    let mut counts = vec![0u64, 0u64];
    let mut id_of = |raw: u32| {
        let id = &mut remap[raw as usize];
        if *id == u32::MAX {
            *id = counts.len() as u32;
            counts.push(0);
            vocab_raw.push(raw);
        }
        counts[*id as usize] += 1;
        *id
    };
    let mut offsets = Vec::with_capacity(windows.len() + 1);
    offsets.push(0i64);
    let whole = windows.first().map_or(rows.items.is_empty(), |w| w.start == 0)
        && windows.windows(2).all(|p| p[0].end == p[1].start)
        && windows.last().is_none_or(|w| w.end == rows.items.len());
    if whole {
        let Rows { mut items, skips, order, in_file_order } = rows;
        if in_file_order {
            counts = shift_and_count(&mut items, n_raw);
            vocab_raw = (0..n_raw as u32).collect();
        } else {
            for item in &mut items {
                *item = id_of(*item);
            }
        }
        offsets.extend(windows.iter().map(|w| w.end as i64));
        let times = if keep_times { order } else { Vec::new() };
        return Encoded { offsets, items, skips, times, vocab_raw, counts };
    }
    let total: usize = windows.iter().map(|w| w.end - w.start).sum();
    let mut items = Vec::with_capacity(total);
    let mut skips = Vec::with_capacity(total);
    let mut times = Vec::with_capacity(if keep_times { total } else { 0 });
    for w in windows {
        items.extend(rows.items[w.start..w.end].iter().map(|&raw| id_of(raw)));
        skips.extend_from_slice(&rows.skips[w.start..w.end]);
        if keep_times {
            times.extend_from_slice(&rows.order[w.start..w.end]);
        }
        offsets.push(items.len() as i64);
    }
    Encoded { offsets, items, skips, times, vocab_raw, counts }
}

/// Adds 2 to every raw id (numbered by first appearance) and counts the plays of each internal
/// id, in parallel parts.
fn shift_and_count(items: &mut [u32], n_raw: usize) -> Vec<u64> {
    let part = items.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    let part_counts: Vec<Vec<u32>> = items
        .par_chunks_mut(part)
        .map(|part| {
            let mut counts = vec![0u32; n_raw + 2];
            for item in part {
                *item += 2;
                counts[*item as usize] += 1;
            }
            counts
        })
        .collect();
    let mut counts = vec![0u64; n_raw + 2];
    counts.par_iter_mut().enumerate().for_each(|(id, c)| *c = part_counts.iter().map(|p| p[id] as u64).sum());
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(items: Vec<u32>, skips: Vec<u8>, order: Vec<i64>) -> Rows {
        Rows { items, skips, order, in_file_order: false }
    }

    fn rules(min_length: usize, max_length: Option<usize>, require_skip: bool) -> Rules {
        let min_remainder = min_length;
        Rules { min_length, max_length, min_remainder, require_skip, ..Rules::default() }
    }

    #[test]
    fn grouping_by_key_gathers_interleaved_rows() {
        let mut r = rows(vec![0, 1, 2, 3, 4], vec![0; 5], vec![5, 1, 4, 2, 3]);
        let runs: Vec<(&[u8], usize)> = vec![(b"u", 0), (b"v", 1), (b"u", 2), (b"v", 3), (b"u", 4)];
        let g = group(&mut r, &runs, false);
        assert_eq!(g.keys, vec![&b"u"[..], &b"v"[..]]);
        assert_eq!(g.bounds, vec![0, 3, 5]);
        assert_eq!(r.items, vec![0, 2, 4, 1, 3]);
        sort_groups(&mut r, &g);
        assert_eq!(r.items, vec![4, 2, 0, 1, 3]);
        assert_eq!(r.order, vec![3, 4, 5, 1, 2]);
        let consecutive = group(&mut rows(vec![0; 5], vec![0; 5], vec![0; 5]), &runs, true);
        assert_eq!(consecutive.bounds, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn gap_cut_and_duration_skips() {
        let mut r = rows(vec![0, 1, 0, 1], vec![0; 4], vec![0, 100, 2000, 2050]);
        let g = Groups { keys: vec![b"u"], bounds: vec![0, 4] };
        let s = sessions(&r, &g, Some(1800));
        assert_eq!(
            s.iter().map(|s| (s.part, s.start, s.end)).collect::<Vec<_>>(),
            vec![(Some(0), 0, 2), (Some(1), 2, 4)]
        );
        // track 0 lasts 200 s, track 1 unknown
        skips_from_durations(&mut r, &s, &[200.0, f64::NAN]);
        assert_eq!(r.skips, vec![1, 0, 1, 0]);
        // Extreme times: a huge gap still cuts, and durations see it as long (no wrap-around).
        let mut r = rows(vec![0, 0], vec![0; 2], vec![i64::MIN, i64::MAX]);
        let g = Groups { keys: vec![b"u"], bounds: vec![0, 2] };
        assert_eq!(sessions(&r, &g, Some(1800)).len(), 2);
        let one = [Session { group: 0, part: None, start: 0, end: 2 }];
        skips_from_durations(&mut r, &one, &[200.0]);
        assert_eq!(r.skips, vec![0, 0]);
    }

    #[test]
    fn windows_min_length_and_require_skip() {
        let n = 13;
        let r = rows((0..n).collect(), (0..n).map(|i| (i == 11) as u8).collect(), vec![0; n as usize]);
        let s = vec![Session { group: 0, part: None, start: 0, end: n as usize }];
        let w = filter(&r, &s, &rules(2, Some(5), false));
        assert_eq!(
            w.iter().map(|w| (w.index, w.start, w.end)).collect::<Vec<_>>(),
            vec![(Some(0), 0, 5), (Some(1), 5, 10), (Some(2), 10, 13)]
        );
        let w = filter(&r, &s, &rules(4, Some(5), false));
        assert_eq!(w.len(), 2, "remainder of 3 plays dropped");
        let w = filter(&r, &s, &rules(2, Some(5), true));
        assert_eq!(w.iter().map(|w| w.start).collect::<Vec<_>>(), vec![10]);
        let w = filter(&r, &s, &rules(14, None, false));
        assert!(w.is_empty());
        let w = filter(&r, &s, &rules(13, None, false));
        assert_eq!(w, vec![Window { session: 0, index: None, start: 0, end: 13 }]);
    }

    #[test]
    fn remainder_has_its_own_minimum() {
        // The paper's rule: windows of 20, a remainder of >= 5 kept although sessions need 6.
        let paper = Rules::default();
        let r = rows(vec![0; 45], vec![0; 45], vec![0; 45]);
        let spans = |w: Vec<Window>| w.iter().map(|w| (w.index, w.start, w.end)).collect::<Vec<_>>();
        let one = |end| vec![Session { group: 0, part: None, start: 0, end }];
        assert_eq!(spans(filter(&r, &one(25), &paper)), vec![(Some(0), 0, 20), (Some(1), 20, 25)]);
        assert_eq!(spans(filter(&r, &one(24), &paper)), vec![(Some(0), 0, 20)]);
        assert_eq!(spans(filter(&r, &one(45), &paper)), vec![(Some(0), 0, 20), (Some(1), 20, 40), (Some(2), 40, 45)]);
        // Whole sessions still need min_length.
        assert!(filter(&r, &one(5), &paper).is_empty());
        assert_eq!(spans(filter(&r, &one(6), &paper)), vec![(None, 0, 6)]);
        let strict = Rules { min_remainder: 6, ..Rules::default() };
        assert_eq!(spans(filter(&r, &one(25), &strict)), vec![(Some(0), 0, 20)]);
        let loose = Rules { min_remainder: 1, ..Rules::default() };
        assert_eq!(spans(filter(&r, &one(21), &loose)), vec![(Some(0), 0, 20), (Some(1), 20, 21)]);
    }

    #[test]
    fn sample_is_seeded_and_ordered() {
        let r = rows(vec![0; 100], vec![0; 100], vec![0; 100]);
        let s: Vec<Session> =
            (0..100).map(|i| Session { group: i, part: None, start: i as usize, end: i as usize + 1 }).collect();
        let mut rl = rules(1, None, false);
        rl.max_sessions = Some(10);
        let a = filter(&r, &s, &rl);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0].session < w[1].session));
        assert_eq!(a, filter(&r, &s, &rl));
        rl.seed = 1;
        assert_ne!(a, filter(&r, &s, &rl));
    }

    #[test]
    fn sparse_sample_equals_the_shuffle() {
        for (n, cap, seed) in [(1000, 3, 0), (1000, 124, 7), (1000, 125, 7), (50, 49, 1), (100_000, 10, 42), (2, 1, 5)]
        {
            let mut state = seed;
            let mut idx: Vec<usize> = (0..n).collect();
            for i in 0..cap {
                let j = i + (splitmix(&mut state) % (n - i) as u64) as usize;
                idx.swap(i, j);
            }
            let mut expected = idx[..cap].to_vec();
            expected.sort_unstable();
            assert_eq!(sample(n, cap, seed), expected, "n={n} cap={cap}");
        }
    }

    #[test]
    fn vocabulary_follows_kept_windows() {
        let r = rows(vec![7, 3, 7, 5, 3], vec![0, 1, 0, 0, 1], vec![10, 11, 12, 13, 14]);
        let w = vec![
            Window { session: 0, index: None, start: 1, end: 3 },
            Window { session: 1, index: None, start: 3, end: 5 },
        ];
        let e = encode(r, &w, 8, true);
        assert_eq!(e.items, vec![2, 3, 4, 2]);
        assert_eq!(e.vocab_raw, vec![3, 7, 5]);
        assert_eq!(e.counts, vec![0, 0, 2, 1, 1]);
        assert_eq!(e.offsets, vec![0, 2, 4]);
        assert_eq!(e.times, vec![11, 12, 13, 14]);
        assert_eq!(e.skips, vec![1, 0, 0, 1]);
        // All rows kept in order: encoded in place, same numbering.
        let r = rows(vec![7, 3, 7, 5, 3], vec![0, 1, 0, 0, 1], vec![10, 11, 12, 13, 14]);
        let w = vec![
            Window { session: 0, index: None, start: 0, end: 3 },
            Window { session: 1, index: None, start: 3, end: 5 },
        ];
        let e = encode(r, &w, 8, false);
        assert_eq!(e.items, vec![2, 3, 2, 4, 3]);
        assert_eq!((e.vocab_raw, e.counts, e.offsets), (vec![7, 3, 5], vec![0, 0, 2, 2, 1], vec![0, 3, 5]));
        assert_eq!((e.skips, e.times), (vec![0, 1, 0, 0, 1], vec![]));
    }

    #[test]
    fn merge_numbers_keys_by_first_appearance_across_chunks() {
        use crate::ingest::formats::{Format, SkipRule};
        use crate::ingest::source::parse_chunk;
        let header = b"session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped";
        let parser = Format::Mssd(SkipRule::Skip2).parser(std::path::Path::new("x.csv"), header).unwrap().0;
        let row = |s: &str, track: &str| format!("{s},1,2,{track},False,False,False,True\n");
        // Session b goes on across the second chunk boundary.
        let pieces = [
            row("a", "t3") + &row("a", "t1"),
            row("b", "t2") + &row("b", "t3"),
            row("b", "t2") + &row("c", "t4") + &row("c", "t1") + &row("c", "t5"),
        ];
        let mut chunks: Vec<Chunk> =
            pieces.iter().map(|p| parse_chunk(p.as_bytes(), &parser, false, false, None)).collect();
        let rows = chunks.iter_mut().map(Chunk::take_rows).collect();
        let m = merge(&chunks, rows, false);
        assert_eq!(m.rows.items, vec![0, 1, 2, 0, 2, 3, 1, 4]);
        assert_eq!(m.raw_keys, vec![&b"t3"[..], b"t1", b"t2", b"t4", b"t5"]);
        assert!(m.rows.in_file_order);
        assert_eq!(m.runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![0, 2, 5]);
    }

    #[test]
    fn rows_in_file_order_keep_raw_numbering() {
        // Raw ids in order of first appearance, as `merge` numbers them.
        let items = vec![0, 1, 0, 2, 1, 3, 3, 0];
        let w = vec![
            Window { session: 0, index: None, start: 0, end: 3 },
            Window { session: 1, index: None, start: 3, end: 8 },
        ];
        let general = encode(rows(items.clone(), vec![0, 1, 0, 0, 1, 0, 0, 1], vec![]), &w, 4, false);
        let mut r = rows(items, vec![0, 1, 0, 0, 1, 0, 0, 1], vec![]);
        r.in_file_order = true;
        let fast = encode(r, &w, 4, false);
        assert_eq!(fast.items, vec![2, 3, 2, 4, 3, 5, 5, 2]);
        assert_eq!((&fast.items, &fast.vocab_raw, &fast.counts), (&general.items, &general.vocab_raw, &general.counts));
        assert_eq!((fast.offsets, fast.skips), (general.offsets, general.skips));
    }
}
