//! Streaming ingest in bounded memory (`prepare --memory-limit`): the same output as [`run`],
//! for inputs larger than memory.
//!
//! 1. *Scan*: each input is read in blocks (a fraction of the limit) cut at newlines and parsed
//!    in parallel, as in memory. Item keys get their raw ids from one dictionary, in order of
//!    first appearance as in memory (the vocabulary stays in memory: it must fit in half the
//!    limit). Rows go to partition files by a hash of their group key, as runs of consecutive
//!    rows that carry the input row where their group starts (its *ordinal*).
//! 2. *Build*: one partition at a time (a partition too large for the limit is split again
//!    with a reseeded hash), rows are grouped, ordered, cut into sessions and windows and
//!    filtered by the in-memory code (`build`); the kept windows are written in ordinal order.
//! 3. *Merge*: the window files are merged by ordinal, which is the in-memory order of the
//!    windows; the `max_sessions` sample is drawn over all windows, items are encoded in
//!    order of first appearance and the split targets computed, as in memory. The output
//!    columns go to files (`Streamed::columns`) that the Python layer copies into the Arrow
//!    file without loading them.
//!
//! Memory: an input block, its parsed rows and their spill buffers (about a quarter of the
//! limit), the item dictionary, then one partition (its rows, sort permutations, sessions and
//! windows; about three times its file size). Not bounded: one group larger than the
//! partition budget (one session, or one user's history), the durations table, and under the
//! temporal split 16 bytes per kept session.
//!
//! [`run`]: super::run

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use ahash::AHashSet;
use rayon::prelude::*;

use super::build::{self, Rows};
use super::formats::{Format, Layout, Parser};
use super::intern::{self, Interner};
use super::source::{self, Arena, Chunk, Counting};
use super::spill::{self, io_error, Body, Merge, Partitions, Records, RUN_ROW};
use super::split::{self, Part, SplitRule};
use super::{durations, Options, Strings};
use crate::error::{Error, Result};

/// The smallest memory limit accepted.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;

/// Partition files written by the scan at most (more come from splitting them later).
const MAX_PARTS: usize = 256;
/// Window files merged at once.
const FAN_IN: usize = 128;
/// Splits of one partition, nested, at most.
const MAX_LEVEL: u32 = 3;

/// Bounded-memory options.
#[derive(Debug, Clone)]
pub struct Streaming {
    /// Bytes the ingest's data may take (the Python interpreter and libraries not counted).
    pub memory_limit: u64,
    /// A folder (created if missing) for the spill files and the output columns, best on the
    /// output's disk. Spill files are removed as they are consumed; on an error the caller
    /// removes what is left.
    pub work_dir: PathBuf,
}

/// What a streaming ingest produced: the output columns as files of little-endian values, and
/// what stays in memory (vocabulary, counts, totals).
#[derive(Debug)]
pub struct Streamed {
    /// `(name, file)`: `session_data` (u8), `session_offsets` (i64, sessions + 1), `offsets`
    /// (i32, sessions + 1), `items` (u32), `skips` (u8), `timestamps` (i64, when the source has
    /// times), `train_end`, `valid_target`, `test_target` (i32, one per session).
    pub columns: Vec<(&'static str, PathBuf)>,
    pub n_rows: u64,
    pub n_sessions: u64,
    /// Skipped plays among the rows.
    pub n_skipped: u64,
    pub n_valid: u64,
    pub n_test: u64,
    pub vocab: Strings,
    pub counts: Vec<u64>,
    pub rows_read: u64,
    pub bad_rows: u64,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// Partitions built (after any split) and bytes spilled by the scan.
    pub partitions: usize,
    pub spilled_bytes: u64,
}

/// How the limit is shared out.
#[derive(Debug, Clone, Copy)]
struct Budget {
    limit: usize,
    /// Input read at a time.
    block: usize,
    /// Buffer of each spill reader and column writer.
    buffer: usize,
}

impl Budget {
    fn new(limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Budget { limit, block: (limit / 16).clamp(64 << 10, 64 << 20), buffer: (limit / 64).clamp(8 << 10, 1 << 20) }
    }

    /// The item dictionary may take this much.
    fn dictionary(&self) -> usize {
        self.limit / 2
    }
}

fn show_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", n / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    }
}

/// Runs the ingest of [`run`](super::run) in bounded memory; see the module documentation.
pub fn run_streaming(
    paths: &[PathBuf],
    format: &Format,
    options: &Options,
    streaming: &Streaming,
    progress: &AtomicU64,
) -> Result<Streamed> {
    super::check_options(options)?;
    if streaming.memory_limit < MIN_MEMORY_LIMIT {
        return Err(Error::Config(format!(
            "memory_limit must be at least {} bytes (1 MiB), got {}",
            MIN_MEMORY_LIMIT, streaming.memory_limit
        )));
    }
    let files = source::list_files(paths)?;
    let budget = Budget::new(streaming.memory_limit);
    let dir = &streaming.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;

    let mut scan = Scan::new(format, &files, options.skip_bad_rows, budget, dir, progress)?;
    for index in 0..files.len() {
        scan.file(index)?;
    }
    let Scan { parser, items, rows_read, bad_rows, bytes, parts, .. } = scan;
    let layout = parser.as_ref().ok_or_else(|| Error::Config("no input files".into()))?.layout();
    super::check_read(&files, rows_read, bad_rows, layout, options)?;
    let parts = parts.map(Partitions::finish).unwrap_or_default();
    let spilled_bytes = parts.iter().map(|p| p.1).sum();

    let per_raw = match &options.durations {
        Some(path) => {
            let table = durations::read(path)?;
            Some((0..items.keys.len()).map(|raw| table.get(items.keys.get(raw)).copied().unwrap_or(f64::NAN)).collect())
        }
        None => None,
    };
    let kept = budget.limit.saturating_sub(items.heap_bytes() + per_raw.as_ref().map_or(0, |p: &Vec<f64>| 8 * p.len()));
    let built = build_partitions(parts, layout, options, per_raw.as_deref(), budget, kept, dir)?;
    drop(per_raw);
    if built.windows == 0 {
        return Err(super::no_session_error(&files, &options.rules));
    }
    let partitions = built.paths.len();
    let merged = merge(built, layout.timestamps, options, &items, budget, dir)?;
    Ok(Streamed {
        columns: merged.columns,
        n_rows: merged.n_rows,
        n_sessions: merged.n_sessions,
        n_skipped: merged.n_skipped,
        n_valid: merged.n_valid,
        n_test: merged.n_test,
        vocab: merged.vocab,
        counts: merged.counts,
        rows_read,
        bad_rows,
        files,
        bytes,
        partitions,
        spilled_bytes,
    })
}

/// Phase 1: reads the inputs block by block into partition files.
struct Scan<'a> {
    format: &'a Format,
    files: &'a [PathBuf],
    skip_bad: bool,
    budget: Budget,
    dir: &'a Path,
    progress: &'a AtomicU64,
    /// The first file's parser (the others must give the same layout).
    parser: Option<Parser>,
    /// Raw item ids: order of first appearance in the input.
    items: Interner,
    /// Key and ordinal of the last run so far (a block's first run may go on with it).
    last_run: Option<(Vec<u8>, u64)>,
    /// Rows kept so far (the next row's index in the input's good rows).
    row: u64,
    rows_read: u64,
    bad_rows: u64,
    bytes: u64,
    /// Input bytes in all files (uncompressed size guessed for gzip), to size the partitions.
    input_guess: u64,
    parts: Option<Partitions>,
}

impl<'a> Scan<'a> {
    fn new(
        format: &'a Format,
        files: &'a [PathBuf],
        skip_bad: bool,
        budget: Budget,
        dir: &'a Path,
        progress: &'a AtomicU64,
    ) -> Result<Self> {
        let mut input_guess = 0u64;
        for f in files {
            let len = std::fs::metadata(f).map_err(|e| io_error(f, e))?.len();
            input_guess += if is_gz(f) { len.saturating_mul(5) } else { len };
        }
        Ok(Scan {
            format,
            files,
            skip_bad,
            budget,
            dir,
            progress,
            parser: None,
            items: Interner::new(),
            last_run: None,
            row: 0,
            rows_read: 0,
            bad_rows: 0,
            bytes: 0,
            input_guess,
            parts: None,
        })
    }

    /// Reads file `index`; an error stops the ingest (as in memory, at the first bad row).
    fn file(&mut self, index: usize) -> Result<()> {
        let files = self.files;
        let file = &files[index];
        let len = std::fs::metadata(file).map_err(|e| io_error(file, e))?.len();
        self.bytes += len;
        let gz = is_gz(file);
        if len == 0 && !gz {
            return Err(source::empty_error(file));
        }
        let handle = File::open(file).map_err(|e| io_error(file, e))?;
        let counted = Counting { inner: handle, progress: self.progress };
        let mut reader: Box<dyn Read> = if gz {
            let buffered = BufReader::with_capacity(self.budget.buffer.min(1 << 20), counted);
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else {
            Box::new(counted)
        };
        let delimiter = self.format.delimiter(&file.with_extension(""));
        let block = self.budget.block;
        let mut buf: Vec<u8> = Vec::new();
        let mut parser: Option<Parser> = None;
        let mut line = 0u64;
        let mut seen_data = false;
        loop {
            let eof = match read_block(&mut reader, &mut buf, block) {
                Ok(eof) => eof,
                Err(e) if gz => return Err(source::gz_error(file, &e, &buf, line, delimiter)),
                Err(e) => return Err(io_error(file, e)),
            };
            let cut = if eof { buf.len() } else { memchr::memrchr(b'\n', &buf).map_or(0, |k| k + 1) };
            let mut start = 0;
            if parser.is_none() {
                // The first line is the header (or data) once the file is known not to be blank.
                seen_data = seen_data || buf.iter().any(|b| !b.is_ascii_whitespace());
                if !eof && (!seen_data || cut == 0) {
                    continue;
                }
                if !seen_data {
                    return Err(source::empty_error(file));
                }
                let (first, after) = source::first_line(&buf[..cut]);
                let (p, header) = self.format.parser(file, first)?;
                if let Some(reference) = &self.parser {
                    if p.layout() != reference.layout() {
                        return Err(Error::Input {
                            file: file.clone(),
                            message: "this shard's columns give a different layout (session/user, time) than the first file's"
                                .into(),
                        });
                    }
                }
                if header {
                    start = after;
                    line = 1;
                }
                parser = Some(p);
            }
            let p = parser.as_ref().expect("set above");
            let body = &buf[start..cut];
            let pieces = source::split_at_newlines(body, rayon::current_num_threads().max(1));
            let mut chunks: Vec<Chunk> =
                pieces.par_iter().map(|piece| source::parse_chunk(piece, p, self.skip_bad, true, None)).collect();
            for c in &mut chunks {
                c.file = index;
            }
            line = source::number_lines(&mut chunks, line);
            if !self.skip_bad {
                if let Some(err) = chunks.iter().find_map(|c| c.error_at(self.files)) {
                    return Err(err);
                }
            }
            self.rows_read += chunks.iter().map(|c| c.rows).sum::<u64>();
            self.bad_rows += chunks.iter().map(|c| c.bad_rows).sum::<u64>();
            self.absorb(&chunks, body.len())?;
            drop(chunks);
            buf.drain(..cut);
            if eof {
                break;
            }
        }
        if self.parser.is_none() {
            self.parser = parser;
        }
        Ok(())
    }

    /// Numbers the block's item keys and runs, and appends its runs to the partition files.
    fn absorb(&mut self, chunks: &[Chunk], block_bytes: usize) -> Result<()> {
        let mut plans: Vec<(Vec<u32>, Vec<u64>)> = Vec::with_capacity(chunks.len());
        let mut spill_bytes = 0usize;
        for c in chunks {
            let raw: Vec<u32> = (0..c.item_keys.len())
                .map(|i| {
                    let key = c.item_keys.get(i);
                    match self.items.find(key, c.item_hashes[i]) {
                        Ok(id) => id,
                        Err(at) => self.items.insert(key, at),
                    }
                })
                .collect();
            let mut ordinals = Vec::with_capacity(c.run_starts.len());
            for (r, &start) in c.run_starts.iter().enumerate() {
                let key = c.run_keys.get(r);
                let ordinal = match &self.last_run {
                    Some((last, ordinal)) if r == 0 && last[..] == *key => *ordinal,
                    _ => self.row + start as u64,
                };
                ordinals.push(ordinal);
                spill_bytes += spill::HEAD + key.len();
            }
            if let (Some(&ordinal), Some(key)) = (ordinals.last(), c.run_keys.last()) {
                self.last_run = Some((key.to_vec(), ordinal));
            }
            self.row += c.items.len() as u64;
            spill_bytes += RUN_ROW * c.items.len();
            plans.push((raw, ordinals));
        }
        let dictionary = self.items.heap_bytes();
        if dictionary > self.budget.dictionary() {
            return Err(Error::Config(format!(
                "memory_limit {} is too small for this input: its item vocabulary alone ({} items so far) takes {}, \
                 and it may take at most half the limit; raise memory_limit",
                show_bytes(self.budget.limit),
                self.items.keys.len(),
                show_bytes(dictionary)
            )));
        }
        if self.parts.is_none() {
            // Partitions of about a sixth of the limit, from the spill per input byte of this block.
            let per_byte = spill_bytes as f64 / block_bytes.max(1) as f64;
            let expected = per_byte * self.input_guess as f64 * 1.1;
            let n = (expected / (self.budget.limit / 6) as f64).ceil().clamp(1.0, MAX_PARTS as f64) as usize;
            self.parts = Some(Partitions::create(self.dir, "part", n)?);
        }
        let parts = self.parts.as_mut().expect("created above");
        let n = parts.len();
        let encoded: Vec<Vec<Vec<u8>>> = chunks
            .par_iter()
            .zip(&plans)
            .map(|(c, (raw, ordinals))| {
                let mut out: Vec<Vec<u8>> = vec![Vec::new(); n];
                for (r, &ordinal) in ordinals.iter().enumerate() {
                    let key = c.run_keys.get(r);
                    let a = c.run_starts[r] as usize;
                    let b = c.run_starts.get(r + 1).map_or(c.items.len(), |&s| s as usize);
                    let part = spill::partition_of(intern::hash(key), 0, n);
                    let items = c.items[a..b].iter().map(|&local| raw[local as usize]);
                    spill::put_record(&mut out[part], ordinal, key, items, &c.skips[a..b], Some(&c.order[a..b]));
                }
                out
            })
            .collect();
        drop(plans);
        for part in 0..n {
            for chunk in &encoded {
                parts.append(part, &chunk[part])?;
            }
        }
        Ok(())
    }
}

/// Appends up to `block` bytes to `buf` (at least half a block past what it holds); returns true
/// at the end of the input. The buffer is not zeroed first.
fn read_block(reader: &mut impl Read, buf: &mut Vec<u8>, block: usize) -> std::io::Result<bool> {
    let want = block.saturating_sub(buf.len()).max(block / 2);
    buf.reserve_exact(want);
    let mut read = 0;
    while read < want {
        match reader.by_ref().take((want - read) as u64).read_to_end(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn is_gz(file: &Path) -> bool {
    file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// What phase 2 wrote: window files, each in ordinal order, and totals.
struct Built {
    paths: Vec<PathBuf>,
    windows: usize,
}

/// Phase 2: each partition (split again while too large) into a window file.
fn build_partitions(
    parts: Vec<(PathBuf, u64)>,
    layout: Layout,
    options: &Options,
    per_raw: Option<&[f64]>,
    budget: Budget,
    available: usize,
    dir: &Path,
) -> Result<Built> {
    // A partition takes about three times its file size while built.
    let target = (available / 3).max(64 << 10) as u64;
    let mut built = Built { paths: Vec::new(), windows: 0 };
    // (file, size, level, splittable)
    let mut todo: Vec<(PathBuf, u64, u32, bool)> = parts.into_iter().rev().map(|(p, b)| (p, b, 0, true)).collect();
    while let Some((path, size, level, splittable)) = todo.pop() {
        if size == 0 {
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            continue;
        }
        if size > target && splittable && level < MAX_LEVEL {
            let n = size.div_ceil(target).clamp(2, 64) as usize;
            let pieces = spill::split(&path, intern::hash, level + 1, n, budget.buffer)?;
            // A split that leaves everything in one piece holds one key's runs: build it whole.
            let whole = pieces.iter().any(|p| p.1 == size);
            todo.extend(pieces.into_iter().rev().map(|(p, b)| (p, b, level + 1, !whole)));
            continue;
        }
        let out = dir.join(format!("windows-{}.bin", built.paths.len()));
        built.windows += build_one(&path, size, &out, layout, options, per_raw, budget)?;
        std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        built.paths.push(out);
    }
    Ok(built)
}

/// Builds the groups of one partition file (`size` bytes) as in memory and writes its kept
/// windows to `out` in ordinal order; returns how many.
fn build_one(
    path: &Path,
    size: u64,
    out: &Path,
    layout: Layout,
    options: &Options,
    per_raw: Option<&[f64]>,
    budget: Budget,
) -> Result<usize> {
    let rules = &options.rules;
    let mut records = Records::open(path, RUN_ROW, budget.buffer)?;
    let max_rows = (size / RUN_ROW as u64) as usize;
    let mut rows = Rows {
        items: Vec::with_capacity(max_rows),
        skips: Vec::with_capacity(max_rows),
        order: Vec::with_capacity(max_rows),
        in_file_order: false,
    };
    // Runs: key, ordinal, first row. Runs of one group that follow each other are joined
    // (consecutive layout: the same ordinal; else the same key).
    let mut keys = Arena::default();
    let mut ordinals: Vec<u64> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    let mut body = Body::default();
    while let Some(head) = records.head()? {
        records.body(head, &mut body)?;
        let joined = match ordinals.last() {
            Some(&last) if layout.consecutive => last == head.ordinal,
            Some(_) => keys.last() == Some(&body.key[..]),
            None => false,
        };
        if !joined {
            keys.push(&body.key);
            ordinals.push(head.ordinal);
            starts.push(rows.items.len());
        }
        rows.items.extend_from_slice(&body.items);
        rows.skips.extend_from_slice(&body.skips);
        rows.order.extend_from_slice(&body.order);
    }
    drop(records);
    drop(body);
    let runs: Vec<(&[u8], usize)> = starts.iter().enumerate().map(|(r, &s)| (keys.get(r), s)).collect();
    drop(starts);
    // Each group's ordinal, in the order `group` numbers groups (first appearance of its key).
    let group_ordinals: Vec<u64> = if layout.consecutive {
        ordinals
    } else {
        let mut seen: AHashSet<&[u8]> = AHashSet::new();
        runs.iter().zip(&ordinals).filter(|((key, _), _)| seen.insert(*key)).map(|(_, &o)| o).collect()
    };
    let groups = build::group(&mut rows, &runs, layout.consecutive);
    drop(runs);
    if layout.ordered {
        build::sort_groups(&mut rows, &groups);
    }
    let gap = rules.session_gap.filter(|_| layout.gap_cut);
    let sessions = build::sessions(&rows, &groups, gap);
    if let Some(per_raw) = per_raw {
        build::skips_from_durations(&mut rows, &sessions, per_raw);
    }
    let whole = super::Rules { max_sessions: None, ..rules.clone() };
    let windows = build::filter(&rows, &sessions, &whole);
    let file = File::create(out).map_err(|e| io_error(out, e))?;
    let mut writer = BufWriter::with_capacity(budget.buffer, file);
    let mut record = Vec::new();
    let mut key = Vec::new();
    for w in &windows {
        let s = sessions[w.session as usize];
        key.clear();
        super::push_session_key(&mut key, groups.keys[s.group as usize], s.part, w.index);
        let n = w.end - w.start;
        if u32::try_from(n).is_err() || u32::try_from(key.len()).is_err() {
            return Err(Error::Config(format!("a session of {n} plays is too long for the streaming ingest")));
        }
        record.clear();
        let times = layout.timestamps.then(|| &rows.order[w.start..w.end]);
        let items = rows.items[w.start..w.end].iter().copied();
        spill::put_record(
            &mut record,
            group_ordinals[s.group as usize],
            &key,
            items,
            &rows.skips[w.start..w.end],
            times,
        );
        writer.write_all(&record).map_err(|e| io_error(out, e))?;
    }
    writer.flush().map_err(|e| io_error(out, e))?;
    Ok(windows.len())
}

/// The output column files, written one value at a time through buffers.
struct Columns {
    dir: PathBuf,
    writers: Vec<(&'static str, BufWriter<File>)>,
}

impl Columns {
    fn create(dir: &Path, names: &[&'static str], buffer: usize) -> Result<Self> {
        let mut writers = Vec::new();
        for &name in names {
            let path = Self::path(dir, name);
            let file = File::create(&path).map_err(|e| io_error(&path, e))?;
            writers.push((name, BufWriter::with_capacity(buffer, file)));
        }
        Ok(Columns { dir: dir.to_path_buf(), writers })
    }

    fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("column-{name}.bin"))
    }

    fn write(&mut self, column: usize, bytes: &[u8]) -> Result<()> {
        let (name, w) = &mut self.writers[column];
        w.write_all(bytes).map_err(|e| io_error(&Self::path(&self.dir, name), e))
    }

    fn finish(self) -> Result<Vec<(&'static str, PathBuf)>> {
        let mut out = Vec::new();
        for (name, mut w) in self.writers {
            let path = Self::path(&self.dir, name);
            w.flush().map_err(|e| io_error(&path, e))?;
            out.push((name, path));
        }
        Ok(out)
    }
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(values.len() * N);
    for &v in values {
        out.extend_from_slice(&to(v));
    }
}

struct Merged {
    columns: Vec<(&'static str, PathBuf)>,
    n_rows: u64,
    n_sessions: u64,
    n_skipped: u64,
    n_valid: u64,
    n_test: u64,
    vocab: Strings,
    counts: Vec<u64>,
}

// Column indices (see `Streamed::columns`).
const SESSION_DATA: usize = 0;
const SESSION_OFFSETS: usize = 1;
const OFFSETS: usize = 2;
const ITEMS: usize = 3;
const SKIPS: usize = 4;
const TRAIN_END: usize = 5;
const VALID_TARGET: usize = 6;
const TEST_TARGET: usize = 7;
const TIMESTAMPS: usize = 8;

/// Phase 3: merges the window files in ordinal order into the output columns.
fn merge(built: Built, times: bool, options: &Options, items: &Interner, budget: Budget, dir: &Path) -> Result<Merged> {
    let row_bytes = spill::window_row(times);
    let total = built.windows;
    let sample =
        options.rules.max_sessions.filter(|&cap| cap < total).map(|cap| build::sample(total, cap, options.rules.seed));
    let inputs = spill::reduce(built.paths, FAN_IN, row_bytes, budget.buffer, dir)?;
    let reader_buffer = (budget.limit / 8 / inputs.len().max(1)).clamp(4 << 10, budget.buffer);
    let mut windows = Merge::open(&inputs, row_bytes, reader_buffer)?;
    let mut names = vec![
        "session_data",
        "session_offsets",
        "offsets",
        "items",
        "skips",
        "train_end",
        "valid_target",
        "test_target",
    ];
    if times {
        names.push("timestamps");
    }
    let mut columns = Columns::create(dir, &names, budget.buffer)?;
    let temporal = match options.split {
        SplitRule::Temporal { valid_fraction, test_fraction } => Some((valid_fraction, test_fraction)),
        SplitRule::LeaveLastOut => None,
    };
    // Under the temporal rule, per session: first time (with times), length, last kept play.
    let (mut first_times, mut lengths, mut last_kept) = (Vec::new(), Vec::new(), Vec::new());

    let mut remap = vec![u32::MAX; items.keys.len()];
    let mut vocab_raw: Vec<u32> = Vec::new();
    let mut counts = vec![0u64, 0u64];
    let mut body = Body::default();
    let mut bytes = Vec::new();
    let (mut n_rows, mut n_sessions, mut n_skipped, mut n_valid, mut n_test, mut key_bytes) =
        (0u64, 0u64, 0u64, 0, 0, 0i64);
    columns.write(SESSION_OFFSETS, &0i64.to_le_bytes())?;
    columns.write(OFFSETS, &0i32.to_le_bytes())?;
    let mut picks = sample.as_deref().map(|s| s.iter().peekable());
    let mut index = 0usize;
    while let Some((head, input)) = windows.next() {
        windows.body(input, head, &mut body)?;
        let keep = match &mut picks {
            Some(p) => p.next_if_eq(&&index).is_some(),
            None => true,
        };
        index += 1;
        if !keep {
            continue;
        }
        for item in body.items.iter_mut() {
            let id = &mut remap[*item as usize];
            if *id == u32::MAX {
                *id = counts.len() as u32;
                counts.push(0);
                vocab_raw.push(*item);
            }
            counts[*id as usize] += 1;
            *item = *id;
        }
        n_rows += body.items.len() as u64;
        n_sessions += 1;
        key_bytes += body.key.len() as i64;
        if n_rows > i32::MAX as u64 {
            return Err(Error::Config(format!("{n_rows} plays exceed the 2^31-1 limit of Arrow list<...> columns")));
        }
        n_skipped += body.skips.iter().map(|&s| s as u64).sum::<u64>();
        columns.write(SESSION_DATA, &body.key)?;
        columns.write(SESSION_OFFSETS, &key_bytes.to_le_bytes())?;
        columns.write(OFFSETS, &(n_rows as i32).to_le_bytes())?;
        le_bytes(&body.items, u32::to_le_bytes, &mut bytes);
        columns.write(ITEMS, &bytes)?;
        columns.write(SKIPS, &body.skips)?;
        if times {
            le_bytes(&body.order, i64::to_le_bytes, &mut bytes);
            columns.write(TIMESTAMPS, &bytes)?;
        }
        if temporal.is_some() {
            if times {
                first_times.push(body.order.first().copied().unwrap_or(0));
            }
            lengths.push(body.skips.len() as u32);
            last_kept.push(split::last_kept(&body.skips, body.skips.len()));
        } else {
            let (train_end, valid, test) = split::leave_last_out(&body.skips);
            n_valid += (valid >= 0) as u64;
            n_test += (test >= 0) as u64;
            columns.write(TRAIN_END, &train_end.to_le_bytes())?;
            columns.write(VALID_TARGET, &valid.to_le_bytes())?;
            columns.write(TEST_TARGET, &test.to_le_bytes())?;
        }
    }
    windows.remove()?;
    drop(remap);
    if let Some((valid_fraction, test_fraction)) = temporal {
        let n = lengths.len();
        let (mut train_end, mut valid, mut test) = (vec![0i32; n], vec![-1i32; n], vec![-1i32; n]);
        let first_time = times.then_some(|s: usize| first_times[s]);
        split::temporal(n, valid_fraction, test_fraction, first_time, |s, part| match part {
            Part::Test => test[s] = last_kept[s],
            Part::Valid => valid[s] = last_kept[s],
            Part::Train => train_end[s] = lengths[s] as i32,
        });
        n_valid = valid.iter().filter(|&&v| v >= 0).count() as u64;
        n_test = test.iter().filter(|&&t| t >= 0).count() as u64;
        for (column, values) in [(TRAIN_END, &train_end), (VALID_TARGET, &valid), (TEST_TARGET, &test)] {
            le_bytes(values, i32::to_le_bytes, &mut bytes);
            columns.write(column, &bytes)?;
        }
    }
    let vocab_bytes: usize = vocab_raw.iter().map(|&raw| items.keys.get(raw as usize).len()).sum();
    let mut vocab = Strings::with_capacity(vocab_raw.len() + 2, vocab_bytes + 11);
    vocab.push(b"[PAD]");
    vocab.push(b"[MASK]");
    for &raw in &vocab_raw {
        vocab.push(items.keys.get(raw as usize));
    }
    Ok(Merged { columns: columns.finish()?, n_rows, n_sessions, n_skipped, n_valid, n_test, vocab, counts })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{options, HEADER};
    use super::super::{run, Dataset, EventsSpec, Rules, Signal, SkipRule};
    use super::*;

    /// The dataset the columns of a streaming run hold (read back as the in-memory run gives it).
    fn read_back(s: &Streamed) -> Dataset {
        let col = |name: &str| std::fs::read(&s.columns.iter().find(|c| c.0 == name).unwrap().1).unwrap();
        let i32s =
            |b: Vec<u8>| b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let i64s =
            |b: Vec<u8>| b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let has_times = s.columns.iter().any(|c| c.0 == "timestamps");
        Dataset {
            session_keys: Strings { data: col("session_data"), offsets: i64s(col("session_offsets")) },
            offsets: i32s(col("offsets")).into_iter().map(i64::from).collect(),
            items: col("items").chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
            skips: col("skips"),
            timestamps: has_times.then(|| i64s(col("timestamps"))),
            train_end: i32s(col("train_end")),
            valid_target: i32s(col("valid_target")),
            test_target: i32s(col("test_target")),
            vocab: Strings { data: s.vocab.data.clone(), offsets: s.vocab.offsets.clone() },
            counts: s.counts.clone(),
            rows_read: s.rows_read,
            bad_rows: s.bad_rows,
            files: s.files.clone(),
            bytes: s.bytes,
        }
    }

    fn assert_same(a: &Dataset, b: &Dataset) {
        assert_eq!(a.session_keys.offsets, b.session_keys.offsets, "session key offsets");
        assert_eq!(a.session_keys.data, b.session_keys.data, "session keys");
        assert_eq!(a.offsets, b.offsets, "offsets");
        assert_eq!(a.items, b.items, "items");
        assert_eq!(a.skips, b.skips, "skips");
        assert_eq!(a.timestamps, b.timestamps, "timestamps");
        assert_eq!(a.train_end, b.train_end, "train_end");
        assert_eq!(a.valid_target, b.valid_target, "valid_target");
        assert_eq!(a.test_target, b.test_target, "test_target");
        assert_eq!((&a.vocab.data, &a.vocab.offsets), (&b.vocab.data, &b.vocab.offsets), "vocab");
        assert_eq!(a.counts, b.counts, "counts");
        assert_eq!((a.rows_read, a.bad_rows, &a.files, a.bytes), (b.rows_read, b.bad_rows, &b.files, b.bytes));
    }

    /// Runs both ways (the streaming one at each limit) and checks they agree; returns the
    /// partitions each streaming run built.
    fn both(paths: &[PathBuf], format: &Format, options: &Options, limits: &[u64]) -> Vec<usize> {
        let p = AtomicU64::new(0);
        let expected = run(paths, format, options, &p).unwrap();
        let mut built = Vec::new();
        for &limit in limits {
            let work = tempfile::tempdir().unwrap();
            let streaming = Streaming { memory_limit: limit, work_dir: work.path().join("spill") };
            let s = run_streaming(paths, format, options, &streaming, &p).unwrap();
            assert_eq!(s.n_rows as usize, expected.items.len());
            assert_eq!(s.n_sessions as usize, expected.offsets.len() - 1);
            assert_eq!(s.n_skipped, expected.skips.iter().map(|&x| x as u64).sum::<u64>());
            assert_eq!(s.n_test as usize, expected.test_target.iter().filter(|&&t| t >= 0).count());
            assert_eq!(s.n_valid as usize, expected.valid_target.iter().filter(|&&t| t >= 0).count());
            assert_same(&read_back(&s), &expected);
            // Only the output columns are left.
            let left: Vec<String> = std::fs::read_dir(&streaming.work_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("column-"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
            built.push(s.partitions);
        }
        built
    }

    /// A pseudo-random generator for test logs.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// An MSSD log of `sessions` sessions, some positions shuffled, some keys repeated later.
    fn mssd_log(sessions: usize, seed: u64) -> String {
        let mut rng = Lcg(seed);
        let mut text = HEADER.to_string();
        for s in 0..sessions {
            // Every 7th session reuses an earlier key (a separate session in MSSD).
            let key = if s % 7 == 6 { format!("sess{}", rng.next(s as u64)) } else { format!("sess{s}") };
            let len = 1 + rng.next(30) as usize;
            let mut positions: Vec<usize> = (1..=len).collect();
            if s % 5 == 0 {
                positions.reverse();
            }
            for pos in positions {
                let track = rng.next(300);
                let skip = if rng.next(3) == 0 { "True" } else { "False" };
                text += &format!("{key},{pos},{len},trk{track},False,{skip},{skip},True\n");
            }
        }
        text
    }

    #[test]
    fn mssd_matches_in_memory_at_small_limits() {
        let dir = tempfile::tempdir().unwrap();
        let text = mssd_log(3000, 1);
        let path = dir.path().join("log.csv");
        std::fs::write(&path, &text).unwrap();
        assert!(text.len() > 1 << 20);
        let paths = [path];
        let fmt = Format::Mssd(SkipRule::Skip2);
        let built = both(&paths, &fmt, &options(1, None, false), &[1 << 20, 64 << 20]);
        assert!(built[0] > 1, "a 1 MiB limit splits the spill: {built:?}");
        both(&paths, &fmt, &Options { rules: Rules::default(), ..options(1, None, false) }, &[1 << 20]);
        let mut sampled = options(2, Some(5), true);
        sampled.rules.max_sessions = Some(40);
        sampled.rules.seed = 9;
        both(&paths, &fmt, &sampled, &[1 << 20]);
        sampled.rules.max_sessions = Some(2000);
        sampled.split = SplitRule::Temporal { valid_fraction: 0.2, test_fraction: 0.3 };
        both(&paths, &fmt, &sampled, &[1 << 20]);
    }

    #[test]
    fn gzip_shards_and_runs_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let text = mssd_log(2500, 2);
        let lines: Vec<&str> = text.lines().collect();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        // A session goes on from one shard into the next; one shard is gzip.
        let cut = lines.len() / 2;
        std::fs::write(shards.join("a.csv"), lines[..cut].join("\n") + "\n").unwrap();
        let rest = format!("{}\n{}\n", lines[0], lines[cut..].join("\n"));
        let mut enc =
            flate2::write::GzEncoder::new(File::create(shards.join("b.csv.gz")).unwrap(), flate2::Compression::fast());
        enc.write_all(rest.as_bytes()).unwrap();
        enc.finish().unwrap();
        both(&[shards], &Format::Mssd(SkipRule::Skip2), &options(1, Some(4), false), &[1 << 20]);
    }

    #[test]
    fn events_grouped_by_user_match_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Lcg(5);
        // Users interleaved over the file, times out of order, gaps that cut sessions.
        let mut text = String::from("user_id,item_id,timestamp,skipped\n");
        let mut clock = vec![0i64; 400];
        for _ in 0..40_000 {
            let u = rng.next(400) as usize;
            clock[u] += if rng.next(10) == 0 { 5000 } else { 1 + rng.next(300) as i64 };
            let t = clock[u] - rng.next(3) as i64 * 200;
            text += &format!("u{u},i{},{t},{}\n", rng.next(2000), rng.next(4) == 0);
        }
        let path = dir.path().join("events.csv");
        std::fs::write(&path, &text).unwrap();
        let spec = EventsSpec { signal: Signal::Bool("skipped".into()), ..EventsSpec::default() };
        let fmt = Format::Events(spec);
        let paths = [path];
        let built = both(&paths, &fmt, &options(2, Some(20), false), &[1 << 20, 1 << 30]);
        assert!(built[0] > 1, "{built:?}");
        let mut temporal = options(1, None, false);
        temporal.split = SplitRule::Temporal { valid_fraction: 0.1, test_fraction: 0.25 };
        temporal.rules.session_gap = None;
        both(&paths, &fmt, &temporal, &[1 << 20]);
        // Durations derive the skips (no skip column).
        let spec = EventsSpec::default();
        let durations = dir.path().join("durations.tsv");
        let table: String = (0..2000).step_by(3).map(|i| format!("i{i}\t{}\n", 50 + i % 200)).collect();
        std::fs::write(&durations, table).unwrap();
        let mut with_durations = options(1, None, false);
        with_durations.durations = Some(durations);
        both(&paths, &Format::Events(spec), &with_durations, &[1 << 20]);
    }

    #[test]
    fn one_huge_group_is_built_whole() {
        // One user: no split can divide it; the result is still right.
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("user_id\titem_id\ttimestamp\n");
        for i in 0..120_000 {
            text += &format!("only\ti{}\t{}\n", i % 977, 1_000_000 - i);
        }
        let path = dir.path().join("one.tsv");
        std::fs::write(&path, &text).unwrap();
        let mut opts = options(1, Some(50), false);
        opts.rules.session_gap = None;
        both(&[path], &Format::Events(EventsSpec::default()), &opts, &[1 << 20]);
    }

    #[test]
    fn errors_match_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let p = AtomicU64::new(0);
        let fmt = Format::Mssd(SkipRule::Skip2);
        let mut text = mssd_log(3000, 3);
        let line = 40_000;
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let mut fields: Vec<&str> = lines[line - 1].split(',').collect();
        fields[5] = "maybe";
        lines[line - 1] = fields.join(",");
        text = lines.join("\n") + "\n";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad.csv", text.clone().into_bytes()),
            ("empty.csv", Vec::new()),
            ("blank.csv", b"\n \n\n".to_vec()),
            ("header.csv", HEADER.as_bytes().to_vec()),
            ("nohdr.csv", b"session_id,track_id_clean\ns,t\n".to_vec()),
            ("padded.csv", format!("\n\n{}", &text[..2000]).into_bytes()),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let expected = match run(std::slice::from_ref(&path), &fmt, &options(1, None, false), &p) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name}: expected an error"),
            };
            let work = tempfile::tempdir().unwrap();
            let streaming = Streaming { memory_limit: 1 << 20, work_dir: work.path().to_path_buf() };
            let got = match run_streaming(std::slice::from_ref(&path), &fmt, &options(1, None, false), &streaming, &p) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name}: expected an error from the streaming run"),
            };
            assert_eq!(got, expected, "{name}");
        }
        let path = dir.path().join("bad.csv");
        let err = run_streaming(
            std::slice::from_ref(&path),
            &fmt,
            &options(1, None, false),
            &Streaming { memory_limit: 1 << 20, work_dir: dir.path().join("w") },
            &p,
        )
        .err()
        .map(|e| e.to_string());
        let at = format!("bad.csv:{line}:6: expected a boolean (True/False/true/false), found 'maybe'");
        assert!(err.as_ref().is_some_and(|e| e.ends_with(&at)), "{err:?}");
        // Skipping bad rows gives the same counts.
        let mut skipping = options(1, None, false);
        skipping.skip_bad_rows = true;
        both(std::slice::from_ref(&path), &fmt, &skipping, &[1 << 20]);
        // A gzip cut short.
        let gz = dir.path().join("cut.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let work = tempfile::tempdir().unwrap();
        let streaming = Streaming { memory_limit: 1 << 20, work_dir: work.path().to_path_buf() };
        let err = run_streaming(&[gz], &fmt, &options(1, None, false), &streaming, &p).err().unwrap().to_string();
        assert!(err.contains("cut.csv.gz:") && err.contains("truncated or corrupt gzip data"), "{err}");
        // Too small a limit, and a vocabulary that does not fit in half the limit.
        let streaming = Streaming { memory_limit: 1000, work_dir: work.path().to_path_buf() };
        let err = run_streaming(&[path], &fmt, &options(1, None, false), &streaming, &p).err().unwrap();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let mut many = String::from(HEADER);
        for i in 0..40_000 {
            many += &format!("s{},1,1,{:0>40},False,False,False,True\n", i, i);
        }
        let path = dir.path().join("many.csv");
        std::fs::write(&path, many).unwrap();
        let streaming = Streaming { memory_limit: 1 << 20, work_dir: work.path().to_path_buf() };
        let err = run_streaming(&[path], &fmt, &options(1, None, false), &streaming, &p).err().unwrap().to_string();
        assert!(err.contains("item vocabulary alone"), "{err}");
    }
}
