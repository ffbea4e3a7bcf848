//! On-disk runs of the streaming ingest (see `stream`): rows spilled to partition files by a
//! hash of their group key, and the kept windows each partition gives, merged back into file
//! order.
//!
//! Two record kinds, both little-endian, a 16-byte head then the columns one after another:
//!
//! - a *run* (partition files): `ordinal u64, key_len u32, n u32, key, items u32 × n,
//!   skips u8 × n, order i64 × n` — consecutive rows of one group key; `ordinal` is the input
//!   row where the group starts (runs of a group across a block boundary share it);
//! - a *window* (partition outputs): `ordinal u64, key_len u32, n u32, key, items u32 × n,
//!   skips u8 × n[, times i64 × n]` — a kept window with its session key; `ordinal` is its
//!   group's, so merging outputs by ordinal gives the in-memory output order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) const HEAD: usize = 16;

pub(crate) fn io_error(file: &Path, source: std::io::Error) -> Error {
    Error::Io { file: file.to_path_buf(), source }
}

/// The head of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub ordinal: u64,
    pub key_len: u32,
    pub n: u32,
}

impl Head {
    pub fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ordinal.to_le_bytes());
        out.extend_from_slice(&self.key_len.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
    }

    fn parse(b: &[u8; HEAD]) -> Self {
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Head { ordinal: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")), key_len: word(8), n: word(12) }
    }

    /// Bytes after the head: the key and `n` rows of `row_bytes` each.
    pub fn body_len(self, row_bytes: usize) -> usize {
        self.key_len as usize + self.n as usize * row_bytes
    }
}

/// Bytes per row of a run record (item, skip, order).
pub(crate) const RUN_ROW: usize = 13;

/// Bytes per row of a window record.
pub(crate) fn window_row(times: bool) -> usize {
    if times {
        13
    } else {
        5
    }
}

/// Appends a record: the head, `key`, then the columns.
pub(crate) fn put_record(
    out: &mut Vec<u8>,
    ordinal: u64,
    key: &[u8],
    items: impl ExactSizeIterator<Item = u32>,
    skips: &[u8],
    order: Option<&[i64]>,
) {
    let n = items.len();
    debug_assert!(skips.len() == n && order.is_none_or(|o| o.len() == n));
    Head { ordinal, key_len: key.len() as u32, n: n as u32 }.put(out);
    out.extend_from_slice(key);
    out.reserve(n * 13);
    for item in items {
        out.extend_from_slice(&item.to_le_bytes());
    }
    out.extend_from_slice(skips);
    if let Some(order) = order {
        for v in order {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Where a group of this key hash goes among `parts` partitions; `level` reseeds the split of
/// a partition that came out too large.
#[inline]
pub(crate) fn partition_of(hash: u64, level: u32, parts: usize) -> usize {
    let mut z = hash ^ (level as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if level > 0 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    (((z >> 32) * parts as u64) >> 32) as usize
}

/// Reads records one after another.
pub(crate) struct Records {
    path: PathBuf,
    reader: BufReader<File>,
    row_bytes: usize,
}

/// One record's body, decoded.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub key: Vec<u8>,
    pub items: Vec<u32>,
    pub skips: Vec<u8>,
    /// Order values (run records) or times (window records with times); else empty.
    pub order: Vec<i64>,
    raw: Vec<u8>,
}

impl Records {
    pub fn open(path: &Path, row_bytes: usize, buffer: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        Ok(Records { path: path.to_path_buf(), reader: BufReader::with_capacity(buffer, file), row_bytes })
    }

    /// The next head, or None at the end of the file.
    pub fn head(&mut self) -> Result<Option<Head>> {
        let mut b = [0u8; HEAD];
        let mut filled = 0;
        while filled < HEAD {
            match self.reader.read(&mut b[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(self.truncated()),
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.path, e)),
            }
        }
        Ok(Some(Head::parse(&b)))
    }

    fn truncated(&self) -> Error {
        Error::Input { file: self.path.clone(), message: "spill file ends inside a record".into() }
    }

    /// The body after `head`, into `body` (its vectors replaced).
    pub fn body(&mut self, head: Head, body: &mut Body) -> Result<()> {
        let n = head.n as usize;
        body.raw.resize(head.body_len(self.row_bytes), 0);
        self.reader.read_exact(&mut body.raw).map_err(|e| io_error(&self.path, e))?;
        let (key, rest) = body.raw.split_at(head.key_len as usize);
        let (items, rest) = rest.split_at(4 * n);
        let (skips, order) = rest.split_at(n);
        body.key.clear();
        body.key.extend_from_slice(key);
        body.items.clear();
        body.items.extend(items.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))));
        body.skips.clear();
        body.skips.extend_from_slice(skips);
        body.order.clear();
        body.order.extend(order.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))));
        Ok(())
    }

    /// Copies the body after `head` (and the head) to `out` undecoded.
    pub fn copy(&mut self, head: Head, out: &mut impl Write, out_path: &Path, scratch: &mut Vec<u8>) -> Result<()> {
        scratch.clear();
        head.put(scratch);
        scratch.resize(HEAD + head.body_len(self.row_bytes), 0);
        self.reader.read_exact(&mut scratch[HEAD..]).map_err(|e| io_error(&self.path, e))?;
        out.write_all(scratch).map_err(|e| io_error(out_path, e))
    }
}

/// Record files written side by side (one per partition), appended a buffer at a time.
pub(crate) struct Partitions {
    pub paths: Vec<PathBuf>,
    files: Vec<File>,
    pub bytes: Vec<u64>,
}

impl Partitions {
    /// `n` empty files `{prefix}-{i}.bin` in `dir`.
    pub fn create(dir: &Path, prefix: &str, n: usize) -> Result<Self> {
        let mut p = Partitions { paths: Vec::with_capacity(n), files: Vec::with_capacity(n), bytes: vec![0; n] };
        for i in 0..n {
            let path = dir.join(format!("{prefix}-{i}.bin"));
            p.files.push(File::create(&path).map_err(|e| io_error(&path, e))?);
            p.paths.push(path);
        }
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn append(&mut self, part: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.bytes[part] += data.len() as u64;
        self.files[part].write_all(data).map_err(|e| io_error(&self.paths[part], e))
    }

    /// Closes the files; returns their paths and sizes.
    pub fn finish(self) -> Vec<(PathBuf, u64)> {
        self.paths.into_iter().zip(self.bytes).collect()
    }
}

/// Splits the run file `path` into `parts` files by a reseeded hash of each run's key (`level`),
/// keeping the runs of each key in order; removes `path`.
pub(crate) fn split(
    path: &Path,
    key_hash: impl Fn(&[u8]) -> u64,
    level: u32,
    parts: usize,
    buffer: usize,
) -> Result<Vec<(PathBuf, u64)>> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Partitions::create(dir, &stem, parts)?;
    let mut records = Records::open(path, RUN_ROW, buffer)?;
    let flush_at = buffer.max(HEAD) / parts.max(1) + 1;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); parts];
    let mut key = Vec::new();
    let mut scratch = Vec::new();
    while let Some(head) = records.head()? {
        // The key first (to hash it), then the rest of the record as is.
        key.resize(head.key_len as usize, 0);
        records.reader.read_exact(&mut key).map_err(|e| io_error(path, e))?;
        let part = partition_of(key_hash(&key), level, parts);
        let buf = &mut pending[part];
        head.put(buf);
        buf.extend_from_slice(&key);
        scratch.resize(head.n as usize * RUN_ROW, 0);
        records.reader.read_exact(&mut scratch).map_err(|e| io_error(path, e))?;
        buf.extend_from_slice(&scratch);
        if buf.len() >= flush_at {
            out.append(part, buf)?;
            buf.clear();
        }
    }
    for (part, buf) in pending.iter().enumerate() {
        out.append(part, buf)?;
    }
    drop(records);
    std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
    Ok(out.finish())
}

/// Window files merged by ordinal: each file is in increasing ordinal order and a group's
/// windows are all in one file, so popping the smallest head gives the in-memory order.
pub(crate) struct Merge {
    inputs: Vec<Records>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    heads: Vec<Option<Head>>,
}

impl Merge {
    pub fn open(paths: &[PathBuf], row_bytes: usize, buffer: usize) -> Result<Self> {
        let mut m = Merge { inputs: Vec::new(), heap: BinaryHeap::new(), heads: Vec::new() };
        for path in paths {
            let mut r = Records::open(path, row_bytes, buffer)?;
            let head = r.head()?;
            if let Some(h) = head {
                m.heap.push(Reverse((h.ordinal, m.inputs.len())));
            }
            m.heads.push(head);
            m.inputs.push(r);
        }
        Ok(m)
    }

    /// The next record's head and the input it comes from (read its body with `body`/`copy`
    /// before the next call).
    pub fn next(&mut self) -> Option<(Head, usize)> {
        let Reverse((_, i)) = self.heap.pop()?;
        let head = self.heads[i].take().expect("a queued input has a head");
        Some((head, i))
    }

    /// Reads the body of the record `next` returned from input `i`, then queues that input's
    /// next record.
    pub fn body(&mut self, i: usize, head: Head, body: &mut Body) -> Result<()> {
        self.inputs[i].body(head, body)?;
        self.advance(i)
    }

    pub fn copy(
        &mut self,
        i: usize,
        head: Head,
        out: &mut impl Write,
        out_path: &Path,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        self.inputs[i].copy(head, out, out_path, scratch)?;
        self.advance(i)
    }

    fn advance(&mut self, i: usize) -> Result<()> {
        let head = self.inputs[i].head()?;
        if let Some(h) = head {
            self.heap.push(Reverse((h.ordinal, i)));
        }
        self.heads[i] = head;
        Ok(())
    }

    /// Removes the input files.
    pub fn remove(self) -> Result<()> {
        for r in self.inputs {
            let path = r.path.clone();
            drop(r);
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }
}

/// Merges window files until at most `fan_in` remain (each pass merges groups of `fan_in` into
/// one file named `{prefix}-m{pass}-{k}.bin`), so the final merge keeps few files open.
pub(crate) fn reduce(
    mut paths: Vec<PathBuf>,
    fan_in: usize,
    row_bytes: usize,
    buffer: usize,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let fan_in = fan_in.max(2);
    let mut pass = 0;
    let mut scratch = Vec::new();
    while paths.len() > fan_in {
        let mut next = Vec::new();
        for (k, group) in paths.chunks(fan_in).enumerate() {
            if group.len() == 1 {
                next.push(group[0].clone());
                continue;
            }
            let out_path = dir.join(format!("merged-{pass}-{k}.bin"));
            let file = File::create(&out_path).map_err(|e| io_error(&out_path, e))?;
            let mut out = BufWriter::with_capacity(buffer, file);
            let mut merge = Merge::open(group, row_bytes, buffer)?;
            while let Some((head, i)) = merge.next() {
                merge.copy(i, head, &mut out, &out_path, &mut scratch)?;
            }
            out.flush().map_err(|e| io_error(&out_path, e))?;
            merge.remove()?;
            next.push(out_path);
        }
        paths = next;
        pass += 1;
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, records: &[(u64, &str, Vec<u32>)], row_bytes: usize) {
        let mut out = Vec::new();
        for (ordinal, key, items) in records {
            let skips: Vec<u8> = items.iter().map(|&i| (i % 2) as u8).collect();
            let order: Vec<i64> = items.iter().map(|&i| -(i as i64)).collect();
            let order = (row_bytes == 13).then_some(&order[..]);
            put_record(&mut out, *ordinal, key.as_bytes(), items.iter().copied(), &skips, order);
        }
        std::fs::write(path, out).unwrap();
    }

    type Record = (u64, String, Vec<u32>, Vec<u8>, Vec<i64>);

    fn read_all(path: &Path, row_bytes: usize) -> Vec<Record> {
        let mut r = Records::open(path, row_bytes, 64).unwrap();
        let mut body = Body::default();
        let mut out = Vec::new();
        while let Some(head) = r.head().unwrap() {
            r.body(head, &mut body).unwrap();
            out.push((
                head.ordinal,
                String::from_utf8(body.key.clone()).unwrap(),
                body.items.clone(),
                body.skips.clone(),
                body.order.clone(),
            ));
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        write(&path, &[(7, "key", vec![1, 2, 3]), (9, "", vec![]), (1 << 40, "k2", vec![u32::MAX])], 13);
        let got = read_all(&path, 13);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (7, "key".into(), vec![1, 2, 3], vec![1, 0, 1], vec![-1, -2, -3]));
        assert_eq!(got[1], (9, "".into(), vec![], vec![], vec![]));
        assert_eq!(got[2].0, 1 << 40);
        assert_eq!(got[2].2, vec![u32::MAX]);
        // A cut record is an error, not a silent end.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let mut r = Records::open(&path, 13, 64).unwrap();
        let mut body = Body::default();
        let mut result = Ok(());
        while let Some(h) = r.head().unwrap() {
            result = r.body(h, &mut body);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }

    #[test]
    fn partitions_spread_and_reseed() {
        let hashes: Vec<u64> = (0..10_000u64).map(|i| crate::ingest::intern::hash(&i.to_le_bytes())).collect();
        for parts in [1, 3, 16] {
            let mut counts = vec![0usize; parts];
            for &h in &hashes {
                counts[partition_of(h, 0, parts)] += 1;
            }
            assert!(counts.iter().all(|&c| c * parts * 10 > hashes.len() * 8), "{counts:?}");
        }
        // A reseeded split spreads the keys of one level-0 partition over all parts.
        let one: Vec<u64> = hashes.iter().copied().filter(|&h| partition_of(h, 0, 4) == 2).collect();
        let mut counts = [0usize; 4];
        for &h in &one {
            counts[partition_of(h, 1, 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c * 40 > one.len() * 8), "{counts:?}");
    }

    #[test]
    fn split_keeps_each_key_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-0.bin");
        let records: Vec<(u64, String, Vec<u32>)> =
            (0..200u64).map(|i| (i, format!("k{}", i % 17), vec![i as u32, i as u32 + 1])).collect();
        let borrowed: Vec<(u64, &str, Vec<u32>)> =
            records.iter().map(|(o, k, v)| (*o, k.as_str(), v.clone())).collect();
        write(&path, &borrowed, 13);
        let hash = |k: &[u8]| crate::ingest::intern::hash(k);
        let parts = split(&path, hash, 1, 3, 100).unwrap();
        assert!(!path.exists());
        let mut all = Vec::new();
        for (p, bytes) in &parts {
            assert_eq!(std::fs::metadata(p).unwrap().len(), *bytes);
            let got = read_all(p, 13);
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "file order kept");
            all.extend(got);
        }
        assert_eq!(all.len(), 200);
        for key in (0..17).map(|k| format!("k{k}")) {
            let in_files: std::collections::HashSet<usize> = parts
                .iter()
                .enumerate()
                .filter(|(_, (p, _))| read_all(p, 13).iter().any(|r| r.1 == key))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(in_files.len(), 1, "{key} in one part");
        }
        all.sort_by_key(|r| r.0);
        assert!(all.iter().enumerate().all(|(i, r)| r.0 == i as u64 && r.2 == vec![i as u32, i as u32 + 1]));
    }

    #[test]
    fn merge_and_reduce_give_ordinal_order() {
        let dir = tempfile::tempdir().unwrap();
        // Windows of one group (same ordinal) stay together, in their file's order.
        let files: Vec<Vec<(u64, &str, Vec<u32>)>> = vec![
            vec![(0, "a:0", vec![1]), (0, "a:1", vec![2]), (5, "d", vec![3])],
            vec![(1, "b", vec![4]), (9, "e", vec![5])],
            vec![],
            vec![(3, "c:0", vec![6]), (3, "c:1", vec![7]), (3, "c:2", vec![8]), (10, "f", vec![9])],
            vec![(11, "g", vec![10])],
        ];
        let expected = ["a:0", "a:1", "b", "c:0", "c:1", "c:2", "d", "e", "f", "g"];
        for fan_in in [2, 3, 8] {
            let paths: Vec<PathBuf> = files
                .iter()
                .enumerate()
                .map(|(i, recs)| {
                    let p = dir.path().join(format!("w{fan_in}-{i}.bin"));
                    write(&p, recs, 5);
                    p
                })
                .collect();
            let paths = reduce(paths, fan_in, 5, 32, dir.path()).unwrap();
            assert!(paths.len() <= fan_in);
            let mut m = Merge::open(&paths, 5, 32).unwrap();
            let mut body = Body::default();
            let mut keys = Vec::new();
            let mut items = Vec::new();
            while let Some((head, i)) = m.next() {
                m.body(i, head, &mut body).unwrap();
                keys.push(String::from_utf8(body.key.clone()).unwrap());
                items.extend_from_slice(&body.items);
                assert!(body.order.is_empty());
            }
            assert_eq!(keys, expected, "fan_in {fan_in}");
            assert_eq!(items, vec![1, 2, 4, 6, 7, 8, 3, 5, 9, 10]);
            m.remove().unwrap();
        }
    }
}
