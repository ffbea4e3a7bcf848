//! Reading inputs: memory-mapped plain files or block-streamed gzip, cut at newlines into chunks
//! parsed in parallel. Each chunk owns what it keeps (unique keys are copied), so memory follows
//! the output, not the file size.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::fields::{self, FieldError, Fields, Span};
use super::formats::{Format, MssdColumns, Parser};
use super::intern::{self, same, Interner, Keys};
use super::scan::{self, Marks};
use crate::error::{Error, Location, Result};

/// Strings stored back to back.
#[derive(Debug, Default, Clone)]
pub(crate) struct Arena {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Arena {
    #[inline]
    pub fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len());
    }
    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
    #[inline]
    pub fn last(&self) -> Option<&[u8]> {
        self.ends.len().checked_sub(1).map(|i| self.get(i))
    }
}

/// The rows of one chunk: runs of consecutive rows with the same group key, local item ids.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// Index of the file in the input list.
    pub file: usize,
    /// 0-based line number (within the file) of the chunk's first line.
    pub line0: u64,
    pub lines: u64,
    pub run_keys: Arena,
    pub run_starts: Vec<u32>,
    pub items: Vec<u32>,
    pub item_keys: Keys,
    /// Hash of each item key (see `intern::hash`).
    pub item_hashes: Vec<u64>,
    pub skips: Vec<u8>,
    /// Each row's order value (position or time); empty unless kept (see `parse_chunk`).
    pub order: Vec<i64>,
    /// Order values of the first and last rows.
    pub first_order: i64,
    pub last_order: i64,
    /// The order value never decreases within a run.
    pub sorted: bool,
    pub rows: u64,
    pub bad_rows: u64,
    /// First bad row: its line index within the chunk and the problem.
    pub error: Option<(u64, FieldError)>,
}

/// A chunk's per-row columns, moved out of it for the merge, which frees them once copied.
pub(crate) struct ChunkRows {
    pub items: Vec<u32>,
    pub skips: Vec<u8>,
    pub order: Vec<i64>,
}

impl Chunk {
    pub fn take_rows(&mut self) -> ChunkRows {
        ChunkRows {
            items: std::mem::take(&mut self.items),
            skips: std::mem::take(&mut self.skips),
            order: std::mem::take(&mut self.order),
        }
    }

    pub fn error_at(&self, files: &[PathBuf]) -> Option<Error> {
        self.error.as_ref().map(|(line, e)| Error::Parse {
            at: Location { file: files[self.file].clone(), line: self.line0 + line + 1, column: e.column },
            message: e.message.clone(),
        })
    }
}

/// Parses the lines of one chunk.
struct ChunkParser<'a, 'p> {
    data: &'a [u8],
    parser: &'p Parser,
    skip_bad: bool,
    keep_order: bool,
    chunk: Chunk,
    items: Interner,
}

impl<'a, 'p> ChunkParser<'a, 'p> {
    /// A parser with its row vectors sized for the rows the first lines predict.
    fn new(data: &'a [u8], parser: &'p Parser, skip_bad: bool, keep_order: bool) -> Self {
        let mut chunk = Chunk { sorted: true, ..Chunk::default() };
        let sample = &data[..data.len().min(1 << 16)];
        let line_len = sample.len() / (1 + memchr::memchr_iter(b'\n', sample).count());
        let rows = data.len() / line_len.max(1) * 9 / 8 + 16;
        chunk.items.reserve(rows);
        chunk.skips.reserve(rows);
        if keep_order {
            chunk.order.reserve(rows);
        }
        ChunkParser { data, parser, skip_bad, keep_order, chunk, items: Interner::new() }
    }

    /// Handles one line; returns false to stop (first error when not skipping bad rows).
    /// `item_hash` is the hash of a field the row's item key may be (reused when it is).
    fn line(&mut self, line_index: u64, spans: &[Span], count: usize, item_hash: Option<(u64, &[u8])>) -> bool {
        let result = self.try_line(&Fields { data: self.data, spans, count }, item_hash);
        self.outcome(line_index, result)
    }

    /// Counts a bad row (keeping the first error); returns false to stop.
    fn outcome(&mut self, line_index: u64, result: std::result::Result<(), FieldError>) -> bool {
        let Err(e) = result else { return true };
        self.chunk.bad_rows += 1;
        if self.chunk.error.is_none() {
            self.chunk.error = Some((line_index, e));
        }
        self.skip_bad
    }

    fn try_line(
        &mut self,
        fields: &Fields<'a, '_>,
        item_hash: Option<(u64, &[u8])>,
    ) -> std::result::Result<(), FieldError> {
        self.chunk.rows += 1;
        let row = self.parser.row(fields)?;
        let hash = match item_hash {
            Some((h, field)) if std::ptr::eq(field, &row.item[..]) => h,
            _ => intern::hash(&row.item),
        };
        self.push(&row.group, row.group_col, &row.item, row.item_col, hash, row.skip, row.order)
    }

    /// Adds a parsed row (its item key hashing to `hash`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        group: &[u8],
        group_col: usize,
        item: &[u8],
        item_col: usize,
        hash: u64,
        skip: bool,
        order: i64,
    ) -> std::result::Result<(), FieldError> {
        let new_run = !self.chunk.run_keys.last().is_some_and(|last| same(last, group));
        if new_run && std::str::from_utf8(group).is_err() {
            return Err(FieldError::new(group_col, "invalid UTF-8 in a key field"));
        }
        let id = match self.items.find(item, hash) {
            Ok(id) => id,
            Err(at) => {
                if std::str::from_utf8(item).is_err() {
                    return Err(FieldError::new(item_col, "invalid UTF-8 in a key field"));
                }
                if item.len() > intern::MAX_KEY_LEN {
                    return Err(FieldError::new(item_col, "a key field longer than 4 GiB"));
                }
                self.items.insert(item, at)
            }
        };
        if new_run {
            self.chunk.run_keys.push(group);
            self.chunk.run_starts.push(self.chunk.items.len() as u32);
        } else if order < self.chunk.last_order {
            self.chunk.sorted = false;
        }
        if self.chunk.items.is_empty() {
            self.chunk.first_order = order;
        }
        self.chunk.last_order = order;
        self.chunk.items.push(id);
        self.chunk.skips.push(skip as u8);
        if self.keep_order {
            self.chunk.order.push(order);
        }
        Ok(())
    }

    /// An MSSD line whose fields are all well formed, handled without building a generic row
    /// (same checks as `Parser::row`); false sends the line to the generic path, which
    /// reports what is wrong with it.
    #[inline(always)]
    fn mssd_line(
        &mut self,
        m: &MssdColumns,
        line_index: u64,
        fields: LineFields,
        count: usize,
        item_hash: u64,
    ) -> Option<bool> {
        if count != m.n {
            return None;
        }
        let data = self.data;
        let order = fields::parse_i64(fields.span(m.position).of(data))?;
        let flag = fields::strict_bool(fields.span(m.skip).of(data), m.skip + 1).ok()?;
        let (group, item) = (fields.span(m.session).of(data), fields.span(m.track).of(data));
        if group.is_empty() || item.is_empty() {
            return None;
        }
        self.chunk.rows += 1;
        let result = self.push(group, m.session + 1, item, m.track + 1, item_hash, flag != m.negate, order);
        Some(self.outcome(line_index, result))
    }
}

fn trim_cr(data: &[u8], end: usize, start: usize) -> usize {
    if end > start && data[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

/// Parses the complete lines in `data` (a chunk ends at a newline or the end of the input).
///
/// Each row's order value is kept when `keep_order`, or when the layout needs it (times, or
/// rows to group by key), or when the chunk turns out unsorted (it is then parsed again):
/// sessions of consecutive rows in order need only the first and last values.
pub(crate) fn parse_chunk(
    data: &[u8],
    parser: &Parser,
    skip_bad: bool,
    keep_order: bool,
    progress: Option<&AtomicU64>,
) -> Chunk {
    let layout = parser.layout();
    let keep_order = keep_order || !layout.consecutive || layout.timestamps || layout.gap_cut;
    let chunk = parse_lines(data, parser, skip_bad, keep_order, progress);
    if keep_order || chunk.sorted {
        return chunk;
    }
    parse_lines(data, parser, skip_bad, true, None)
}

fn parse_lines(data: &[u8], parser: &Parser, skip_bad: bool, keep_order: bool, progress: Option<&AtomicU64>) -> Chunk {
    let mut reported = 0usize;
    let mut report = |upto: usize| {
        if let Some(counter) = progress {
            if upto - reported >= 1 << 22 || upto == data.len() {
                counter.fetch_add((upto - reported) as u64, Ordering::Relaxed);
                reported = upto;
            }
        }
    };
    let mut p = ChunkParser::new(data, parser, skip_bad, keep_order);
    let lines = match parse_plain(&mut p, &mut report) {
        Some(lines) => lines,
        None => {
            // A quote: start over with the quote-aware splitter (progress already reported stays).
            p = ChunkParser::new(data, parser, skip_bad, keep_order);
            parse_quoted(&mut p, &mut report)
        }
    };
    report(data.len());
    let mut chunk = p.chunk;
    chunk.lines = lines;
    chunk.item_keys = p.items.keys;
    chunk.item_hashes = p.items.hashes;
    chunk
}

/// A scanned line waiting in the pipeline to be handled.
#[derive(Clone, Copy, Default)]
struct Pending {
    line_index: u64,
    /// Where the line starts and ends (its newline, or the end of the data).
    start: usize,
    end: usize,
    /// Fields on the line.
    count: usize,
    /// Hash of the item field (0 when the parser names none or the line lacks it).
    item_hash: u64,
}

/// Lines in flight: a line's item key is hashed and its table slot fetched when it is scanned,
/// its key bytes `KEY_AHEAD` lines later, and the line is handled `HANDLE_AHEAD` lines later,
/// so the cache misses of interning overlap with scanning instead of stalling every line.
const RING: usize = 16;
const KEY_AHEAD: usize = 4;
const HANDLE_AHEAD: usize = 8;

/// Progress is reported every this many lines (and at the end of a chunk).
const REPORT_EVERY: usize = 1024;

/// Lines without quotes: locates the fields the parser reads and counts the others. Returns the
/// number of lines handled, or None as soon as a double quote shows up.
fn parse_plain(p: &mut ChunkParser, report: &mut impl FnMut(usize)) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") && std::arch::is_x86_feature_detected!("bmi1") {
        if let Some(kernel) = scan::Avx512::detect().filter(|_| std::arch::is_x86_feature_detected!("aes")) {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { parse_plain_avx512(p, report, kernel) };
        }
        // SAFETY: as above.
        return unsafe { parse_plain_popcnt(p, report) };
    }
    scan_lines(p, report, scan::Baseline)
}

/// `scan_lines` compiled with the POPCNT and BMI1 instructions (the delimiter counts and mark
/// positions are one instruction each instead of a bit-twiddling sequence).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt,bmi1")]
unsafe fn parse_plain_popcnt(p: &mut ChunkParser, report: &mut impl FnMut(usize)) -> Option<u64> {
    scan_lines(p, report, scan::Baseline)
}

/// `scan_lines` with AVX-512BW block masks (one compare per 64 bytes and mark kind) and the
/// key hash's AES rounds inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt,bmi1,avx512bw,aes")]
unsafe fn parse_plain_avx512(p: &mut ChunkParser, report: &mut impl FnMut(usize), kernel: scan::Avx512) -> Option<u64> {
    scan_lines(p, report, kernel)
}

/// Where the fields of a scanned plain line end: `ends[i]` is the end of field `i` (the
/// delimiter after it, or the line end without its `\r` for the last field).
#[derive(Clone, Copy)]
struct LineFields<'e> {
    start: usize,
    ends: &'e [usize],
}

impl LineFields<'_> {
    /// Where field `i` starts (needs only the ends of the fields before it).
    #[inline(always)]
    fn start_of(self, i: usize) -> usize {
        if i == 0 {
            self.start
        } else {
            self.ends[i - 1] + 1
        }
    }

    #[inline(always)]
    fn span(self, i: usize) -> Span {
        Span { start: self.start_of(i), end: self.ends[i], escaped: false }
    }
}

#[inline(always)]
fn scan_lines(p: &mut ChunkParser, report: &mut impl FnMut(usize), kernel: impl scan::Kernel) -> Option<u64> {
    let data = p.data;
    let needed = p.parser.needed_fields().max(1);
    let item_field = p.parser.item_field().filter(|&f| f < needed);
    let mssd = match *p.parser {
        Parser::Mssd(columns) => Some(columns),
        _ => None,
    };
    let mut marks = Marks::new(data, p.parser.delimiter(), kernel);
    let mut ring = [Pending::default(); RING];
    let mut ring_ends = vec![0usize; RING * needed];
    let mut spans = Vec::with_capacity(needed);
    // Lines scanned (blank ones excepted) and lines handled.
    let (mut scanned, mut handled) = (0usize, 0usize);
    let mut line_index = 0u64;
    let mut start = 0usize;
    while start < data.len() {
        // The line's field ends go straight into its ring slot.
        let k = scanned % RING;
        let ends = &mut ring_ends[k * needed..(k + 1) * needed];
        let (written, newline, more) = marks.line(ends);
        let end = newline.unwrap_or(data.len());
        let count = written + more + 1;
        if written < needed {
            // The last field ends the line.
            let field_start = LineFields { start, ends }.start_of(written);
            ends[written] = trim_cr(data, end, start).max(field_start);
        }
        if marks.quoted() {
            return None;
        }
        if !(count == 1 && ends[0] == start) {
            let item_hash = match item_field {
                Some(f) if f < count => {
                    let span = LineFields { start, ends }.span(f);
                    let h = intern::hash(span.of(data));
                    p.items.prefetch_slot(h);
                    h
                }
                _ => 0,
            };
            ring[k] = Pending { line_index, start, end, count, item_hash };
            scanned += 1;
            if scanned > KEY_AHEAD {
                p.items.prefetch_key(ring[(scanned - 1 - KEY_AHEAD) % RING].item_hash);
            }
            if scanned > HANDLE_AHEAD {
                if let Some(stop) = handle(p, &ring, &ring_ends, &mut spans, item_field, mssd.as_ref(), handled, report)
                {
                    return Some(stop + 1);
                }
                handled += 1;
            }
        }
        line_index += 1;
        start = end + 1;
    }
    while handled < scanned {
        if let Some(stop) = handle(p, &ring, &ring_ends, &mut spans, item_field, mssd.as_ref(), handled, report) {
            return Some(stop + 1);
        }
        handled += 1;
    }
    Some(line_index)
}

/// Handles the `n`-th scanned line; returns its index when it stops the parse. `spans` is
/// scratch space for the generic path.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn handle(
    p: &mut ChunkParser,
    ring: &[Pending; RING],
    ring_ends: &[usize],
    spans: &mut Vec<Span>,
    item_field: Option<usize>,
    mssd: Option<&MssdColumns>,
    n: usize,
    report: &mut impl FnMut(usize),
) -> Option<u64> {
    let needed = ring_ends.len() / RING;
    let (k, line) = (n % RING, ring[n % RING]);
    let fields = LineFields { start: line.start, ends: &ring_ends[k * needed..k * needed + needed.min(line.count)] };
    if n.is_multiple_of(REPORT_EVERY) {
        report(line.end.min(p.data.len()));
    }
    if let Some(m) = mssd {
        if let Some(ok) = p.mssd_line(m, line.line_index, fields, line.count, line.item_hash) {
            return (!ok).then_some(line.line_index);
        }
    }
    spans.clear();
    spans.extend((0..fields.ends.len()).map(|i| fields.span(i)));
    let hint = match item_field {
        Some(f) if f < line.count => Some((line.item_hash, spans[f].of(p.data))),
        _ => None,
    };
    let ok = p.line(line.line_index, spans, line.count, hint);
    (!ok).then_some(line.line_index)
}

/// Lines that may hold quoted fields: splits each whole line.
fn parse_quoted(p: &mut ChunkParser, report: &mut impl FnMut(usize)) -> u64 {
    let data = p.data;
    let delimiter = p.parser.delimiter();
    let mut spans: Vec<Span> = Vec::with_capacity(32);
    let mut line_index = 0u64;
    let mut start = 0usize;
    while start < data.len() {
        let nl = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |k| start + k);
        let end = trim_cr(data, nl, start);
        let ok = if end == start {
            true
        } else {
            match fields::split_quoted(data, start, end, delimiter, &mut spans) {
                Ok(()) => p.line(line_index, &spans, spans.len(), None),
                Err(e) => {
                    p.chunk.rows += 1;
                    p.chunk.bad_rows += 1;
                    if p.chunk.error.is_none() {
                        p.chunk.error = Some((line_index, e));
                    }
                    p.skip_bad
                }
            }
        };
        line_index += 1;
        start = nl + 1;
        report(start.min(data.len()));
        if !ok {
            break;
        }
    }
    line_index
}

/// Cuts `data` into about `pieces` parts, each ending just after a newline (or at the end).
pub(crate) fn split_at_newlines(data: &[u8], pieces: usize) -> Vec<&[u8]> {
    let target = (data.len() / pieces.max(1)).max(1 << 20);
    let mut out = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let guess = start + target;
        let end = if guess >= data.len() {
            data.len()
        } else {
            memchr::memchr(b'\n', &data[guess..]).map_or(data.len(), |k| guess + k + 1)
        };
        out.push(&data[start..end]);
        start = end;
    }
    out
}

fn pieces_for(len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (threads * 4).min(len / (4 << 20) + 1).max(threads)
}

fn io_error(file: &Path, source: std::io::Error) -> Error {
    Error::Io { file: file.to_path_buf(), source }
}

pub(crate) fn empty_error(file: &Path) -> Error {
    Error::Input { file: file.to_path_buf(), message: "empty file: expected at least one line".into() }
}

/// The first line of `data` (without newline or `\r`) and the offset just after it.
pub(crate) fn first_line(data: &[u8]) -> (&[u8], usize) {
    let nl = memchr::memchr(b'\n', data).unwrap_or(data.len());
    let end = trim_cr(data, nl, 0);
    (&data[..end], (nl + 1).min(data.len()))
}

/// What reading the files produced.
pub(crate) struct Parsed {
    pub chunks: Vec<Chunk>,
    pub parser: Parser,
    pub bytes: u64,
}

/// Reads and parses all `files` (in order). Stops at the first bad row unless `skip_bad`.
/// `keep_order`: keep every row's order value (see `parse_chunk`).
pub(crate) fn read_all(
    files: &[PathBuf],
    format: &Format,
    skip_bad: bool,
    keep_order: bool,
    progress: &AtomicU64,
) -> Result<Parsed> {
    let mut chunks = Vec::new();
    let mut first_parser = None;
    let mut bytes = 0;
    for (index, file) in files.iter().enumerate() {
        let meta = std::fs::metadata(file).map_err(|e| io_error(file, e))?;
        bytes += meta.len();
        let is_gz = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        let (parser, mut file_chunks) = if is_gz {
            read_gz(file, format, skip_bad, keep_order, progress)?
        } else {
            read_plain(file, format, skip_bad, keep_order, progress)?
        };
        for c in &mut file_chunks {
            c.file = index;
        }
        let failed = !skip_bad && file_chunks.iter().any(|c| c.error.is_some());
        chunks.extend(file_chunks);
        if let Some(first) = &first_parser {
            let (a, b) = (parser.layout(), Parser::layout(first));
            if a != b {
                return Err(Error::Input {
                    file: file.clone(),
                    message: "this shard's columns give a different layout (session/user, time) than the first file's"
                        .into(),
                });
            }
        } else {
            first_parser = Some(parser);
        }
        if failed {
            break;
        }
    }
    let parser = first_parser.ok_or_else(|| Error::Config("no input files".into()))?;
    Ok(Parsed { chunks, parser, bytes })
}

/// Sets each chunk's first line number from the line counts before it.
pub(crate) fn number_lines(chunks: &mut [Chunk], first: u64) -> u64 {
    let mut line = first;
    for c in chunks {
        c.line0 = line;
        line += c.lines;
    }
    line
}

const POPULATE_MAX: usize = 2 << 30;

/// Maps the pages of `piece` (inside `map`) in one call before it is parsed, so each worker
/// populates its own piece instead of taking a page fault per few pages; files over
/// POPULATE_MAX are left to demand paging, so one larger than memory is not read twice.
fn populate(map: &memmap2::Mmap, piece: &[u8]) {
    #[cfg(target_os = "linux")]
    if map.len() <= POPULATE_MAX {
        // A hint: kernels before 5.14 refuse it and the pages are faulted in as read.
        let _ = map.advise_range(
            memmap2::Advice::PopulateRead,
            piece.as_ptr() as usize - map.as_ptr() as usize,
            piece.len(),
        );
    }
    let _ = (map, piece);
}

/// Drops the page mappings of the whole pages inside `piece` once it is parsed (the chunk
/// owns what it keeps), so the teardown is shared by the workers instead of left to one
/// `munmap` at the end. Pages shared with a neighbouring piece stay.
fn release(map: &memmap2::Mmap, piece: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let offset = piece.as_ptr() as usize - map.as_ptr() as usize;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + piece.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: the map is a read-only file mapping and nothing borrows these pages any
            // more; a later read would fault them back in from the page cache.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
    let _ = (map, piece);
}

fn read_plain(
    file: &Path,
    format: &Format,
    skip_bad: bool,
    keep_order: bool,
    progress: &AtomicU64,
) -> Result<(Parser, Vec<Chunk>)> {
    let handle = File::open(file).map_err(|e| io_error(file, e))?;
    let len = handle.metadata().map_err(|e| io_error(file, e))?.len();
    if len == 0 {
        return Err(empty_error(file));
    }
    // SAFETY: the map is read-only; inputs are not expected to change while being read
    // (as with any reader, a concurrent truncation would be an outside error).
    let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| io_error(file, e))?;
    let data: &[u8] = &map;
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(empty_error(file));
    }
    let (line, after) = first_line(data);
    let (parser, header) = format.parser(file, line)?;
    let body = if header { &data[after..] } else { data };
    if header {
        progress.fetch_add(after as u64, Ordering::Relaxed);
    }
    let pieces = split_at_newlines(body, pieces_for(body.len()));
    let mut chunks: Vec<Chunk> = pieces
        .par_iter()
        .map(|p| {
            populate(&map, p);
            let chunk = parse_chunk(p, &parser, skip_bad, keep_order, Some(progress));
            release(&map, p);
            chunk
        })
        .collect();
    number_lines(&mut chunks, header as u64);
    // The chunks own what they keep: unmapping (page table teardown) overlaps with what follows.
    std::thread::spawn(move || drop(map));
    Ok((parser, chunks))
}

/// Counts the bytes read (progress of a gzip input: the compressed bytes).
pub(crate) struct Counting<'c, R> {
    pub inner: R,
    pub progress: &'c AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

const GZ_BLOCK: usize = 32 << 20;

/// Fills `buf` up to `GZ_BLOCK` bytes; returns true at the end of the stream.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let want = GZ_BLOCK.max(buf.len() + (1 << 20));
    let mut filled = buf.len();
    buf.resize(want, 0);
    while filled < want {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(true);
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(filled);
                return Err(e);
            }
        }
    }
    Ok(false)
}

/// A gzip stream that fails to decode: located at the line being read (`buf` holds the text
/// from line `line` + 1 on) and the field after the delimiters seen on it.
pub(crate) fn gz_error(file: &Path, e: &std::io::Error, buf: &[u8], line: u64, delimiter: u8) -> Error {
    let newlines = memchr::memchr_iter(b'\n', buf).count() as u64;
    let tail_start = memchr::memrchr(b'\n', buf).map_or(0, |k| k + 1);
    let column = 1 + memchr::memchr_iter(delimiter, &buf[tail_start..]).count() as u64;
    Error::Parse {
        at: Location { file: file.to_path_buf(), line: line + newlines + 1, column },
        message: format!("truncated or corrupt gzip data ({e}); expected the rest of this line"),
    }
}

fn read_gz(
    file: &Path,
    format: &Format,
    skip_bad: bool,
    keep_order: bool,
    progress: &AtomicU64,
) -> Result<(Parser, Vec<Chunk>)> {
    let handle = File::open(file).map_err(|e| io_error(file, e))?;
    let mut reader =
        flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, Counting { inner: handle, progress }));
    let delimiter = format.delimiter(&file.with_extension(""));
    let mut buf = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut parser: Option<Parser> = None;
    let mut line = 0u64;
    let mut seen_data = false;
    loop {
        let eof = match fill(&mut reader, &mut buf) {
            Ok(eof) => eof,
            Err(e) => return Err(gz_error(file, &e, &buf, line, delimiter)),
        };
        seen_data |= buf.iter().any(|b| !b.is_ascii_whitespace());
        let cut = if eof { buf.len() } else { memchr::memrchr(b'\n', &buf).map_or(0, |k| k + 1) };
        let mut start = 0;
        if parser.is_none() && (cut > 0 || eof) {
            if !seen_data {
                return Err(empty_error(file));
            }
            let (first, after) = first_line(&buf[..cut]);
            let (p, header) = format.parser(file, first)?;
            if header {
                start = after;
                line = 1;
            }
            parser = Some(p);
        }
        if let Some(p) = &parser {
            let body = &buf[start..cut];
            let pieces = split_at_newlines(body, rayon::current_num_threads().max(1) * 2);
            let mut block: Vec<Chunk> =
                pieces.par_iter().map(|piece| parse_chunk(piece, p, skip_bad, keep_order, None)).collect();
            line = number_lines(&mut block, line);
            let failed = !skip_bad && block.iter().any(|c| c.error.is_some());
            chunks.extend(block);
            if failed {
                break;
            }
            buf.drain(..cut);
        }
        if eof {
            break;
        }
    }
    let parser = parser.ok_or_else(|| empty_error(file))?;
    Ok((parser, chunks))
}

/// The input files: each path is a file, or a folder whose files (not starting with `.` or `_`)
/// are shards read in name order.
pub(crate) fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            let mut shards = Vec::new();
            for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
                let entry = entry.map_err(|e| io_error(path, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with('.') && !name.starts_with('_') && entry.path().is_file() {
                    shards.push(entry.path());
                }
            }
            if shards.is_empty() {
                return Err(Error::Input { file: path.clone(), message: "folder has no data files".into() });
            }
            shards.sort();
            out.extend(shards);
        } else {
            out.push(path.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::Config("no input paths given".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::formats::SkipRule;

    const HEADER: &str = "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped";

    fn mssd_parser() -> Parser {
        Format::Mssd(SkipRule::Skip2).parser(Path::new("x.csv"), HEADER.as_bytes()).unwrap().0
    }

    #[test]
    fn chunk_runs_and_local_ids() {
        let data =
            b"a,1,2,t1,False,False,False,True\r\na,2,2,t2,True,True,True,False\n\nb,1,1,t1,False,True,True,False";
        let c = parse_chunk(data, &mssd_parser(), false, true, None);
        assert!(c.error.is_none());
        assert_eq!(c.lines, 4);
        assert_eq!(c.items, vec![0, 1, 0]);
        assert_eq!(c.skips, vec![0, 1, 1]);
        assert_eq!(c.order, vec![1, 2, 1]);
        assert_eq!(c.run_starts, vec![0, 2]);
        assert_eq!((c.run_keys.get(0), c.run_keys.get(1)), (&b"a"[..], &b"b"[..]));
    }

    #[test]
    fn bad_rows_stop_or_are_counted() {
        let data = b"a,1,2,t1,False,maybe,False,True\na,2,2,t2,True,True,True\na,3,3,t3,True,True,True,False\n";
        let c = parse_chunk(data, &mssd_parser(), false, true, None);
        let (line, e) = c.error.clone().unwrap();
        assert_eq!((line, e.column), (0, 6));
        assert_eq!(e.message, "expected a boolean (True/False/true/false), found 'maybe'");
        assert!(c.items.is_empty());
        let c = parse_chunk(data, &mssd_parser(), true, true, None);
        assert_eq!((c.bad_rows, c.items.len(), c.rows), (2, 1, 3));
    }

    #[test]
    fn quote_after_plain_lines_reparses_the_chunk() {
        let mut data = b"a,1,2,t1,False,False,False,True\n".repeat(5);
        data.extend_from_slice(b"a,2,2,\"t,2\",True,True,True,False\n");
        let c = parse_chunk(&data, &mssd_parser(), false, true, None);
        assert!(c.error.is_none());
        assert_eq!((c.lines, c.rows), (6, 6));
        assert_eq!(c.items, vec![0, 0, 0, 0, 0, 1]);
        assert_eq!(c.item_keys.get(1), b"t,2");
    }

    #[test]
    fn stop_and_counts_past_the_scan_ahead() {
        let mut data = Vec::new();
        for i in 0..40 {
            let skip = if i == 25 { "maybe" } else { "True" };
            data.extend_from_slice(format!("s{},{i},40,t{},False,{skip},True,False\n", i / 7, i % 9).as_bytes());
        }
        let c = parse_chunk(&data, &mssd_parser(), false, true, None);
        assert_eq!((c.lines, c.rows, c.items.len()), (26, 26, 25));
        assert_eq!(c.error.as_ref().map(|(line, e)| (*line, e.column)), Some((25, 6)));
        assert_eq!(c.run_starts, vec![0, 7, 14, 21]);
        let c = parse_chunk(&data, &mssd_parser(), true, true, None);
        assert_eq!((c.lines, c.rows, c.bad_rows, c.items.len()), (40, 40, 1, 39));
        assert_eq!(c.item_keys.len(), 9);
    }

    #[test]
    fn runs_sorted_across_chunks() {
        let chunk = |text: &[u8]| parse_chunk(text, &mssd_parser(), false, false, None);
        let head = || chunk(b"s,1,3,t1,False,False,False,True\ns,3,3,t2,False,False,False,True\n");
        let blank = || chunk(b"\n");
        let sorted = |chunks: &[Chunk]| crate::ingest::build::runs_sorted(chunks);
        assert!(sorted(&[head(), blank(), chunk(b"u,1,1,t3,False,False,False,True\n")]));
        assert!(!sorted(&[head(), blank(), chunk(b"s,2,3,t3,False,False,False,True\n")]));
        assert!(sorted(&[head(), chunk(b"s,4,4,t3,False,False,False,True\n")]));
        assert!(!sorted(&[chunk(b"s,2,2,t1,False,False,False,True\ns,1,2,t2,False,False,False,True\n")]));
    }

    #[test]
    fn split_keeps_lines_whole() {
        let data: Vec<u8> = (0..300_000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        let pieces = split_at_newlines(&data, 3);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(|p| p.len()).sum::<usize>(), data.len());
        assert!(pieces.iter().all(|p| p.ends_with(b"\n")));
    }
}
