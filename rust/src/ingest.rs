//! Ingest: raw session logs -> labelled, filtered, encoded and split sessions.
//!
//! `source` reads the files (mmap, or gzip streamed in blocks) and parses newline-aligned chunks
//! in parallel with a format's row parser (`formats`); `build` merges the chunks, groups and
//! orders rows into sessions, applies the filters and encodes items; `split` computes the
//! evaluation targets. The result is plain vectors that the Python layer writes as Arrow files.

mod build;
mod durations;
mod fields;
mod formats;
mod intern;
mod scan;
mod source;
mod spill;
mod split;
mod stream;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

pub use formats::{EventsSpec, Format, Signal, SkipRule};
pub use split::{SplitRule, Targets};
pub use stream::{run_streaming, Streamed, Streaming, MIN_MEMORY_LIMIT};

use crate::error::{Error, Result};

/// Session filters (applied in this order).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// A session, and each full window of a cut session, is kept only with at least this many
    /// plays (default 6, i.e. "longer than 5" as in the papers).
    pub min_length: usize,
    /// Sessions longer than this are cut into consecutive windows of `max_length` plays. None = no cut.
    pub max_length: Option<usize>,
    /// The last, shorter window of a cut session is kept only with at least this many plays
    /// (default 5: "cut into windows of 20, keeping a remainder of >= 5").
    pub min_remainder: usize,
    /// Drop windows without any skipped play.
    pub require_skip: bool,
    /// Keep a seeded uniform sample (without replacement) of this many windows, in file order.
    pub max_sessions: Option<usize>,
    pub seed: u64,
    /// Inactivity gap (seconds) that ends a user's session (timestamped, user-keyed formats);
    /// None keeps each user's history one sequence (RecBole's meaning).
    pub session_gap: Option<i64>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_length: 6,
            max_length: Some(20),
            min_remainder: 5,
            require_skip: false,
            max_sessions: None,
            seed: 0,
            session_gap: Some(1800),
        }
    }
}

/// Everything `run` needs besides the input paths and the format.
#[derive(Debug, Clone)]
pub struct Options {
    pub rules: Rules,
    pub split: SplitRule,
    /// Skip and count malformed rows instead of failing on the first.
    pub skip_bad_rows: bool,
    /// Track durations (`track_id, duration_seconds`) to derive skips from play gaps.
    pub durations: Option<PathBuf>,
}

/// Strings back to back: string `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Default)]
pub struct Strings {
    pub data: Vec<u8>,
    pub offsets: Vec<i64>,
}

impl Strings {
    fn with_capacity(strings: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(strings + 1);
        offsets.push(0);
        Strings { data: Vec::with_capacity(bytes), offsets }
    }

    fn push(&mut self, s: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.data.extend_from_slice(s);
        self.offsets.push(self.data.len() as i64);
    }

    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// The processed dataset (see docs/design.md): sessions in CSR form, vocabulary and targets.
#[derive(Debug)]
pub struct Dataset {
    pub session_keys: Strings,
    pub offsets: Vec<i64>,
    pub items: Vec<u32>,
    pub skips: Vec<u8>,
    /// Unix seconds of each play, when the source has times.
    pub timestamps: Option<Vec<i64>>,
    pub train_end: Vec<i32>,
    pub valid_target: Vec<i32>,
    pub test_target: Vec<i32>,
    /// Original id of each internal id (0 = `[PAD]`, 1 = `[MASK]`).
    pub vocab: Strings,
    pub counts: Vec<u64>,
    /// Data rows read (bad ones included) and bad rows skipped.
    pub rows_read: u64,
    pub bad_rows: u64,
    /// Input files in reading order and their total size.
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// Sum of the sizes of the inputs (files, or folders of shards): the progress total.
pub fn input_bytes(paths: &[PathBuf]) -> Result<u64> {
    source::list_files(paths)?
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).map_err(|e| Error::Io { file: f.clone(), source: e }))
        .sum()
}

/// Checks the options before anything is read.
fn check_options(options: &Options) -> Result<()> {
    options.split.validate()?;
    let rules = &options.rules;
    if rules.min_length == 0
        || rules.max_length == Some(0)
        || rules.min_remainder == 0
        || rules.session_gap.is_some_and(|g| g < 0)
    {
        return Err(Error::Config("min_length, max_length and min_remainder must be >= 1 and session_gap >= 0".into()));
    }
    Ok(())
}

/// Checks what was read: some good rows, and durations only where they can apply.
fn check_read(
    files: &[PathBuf],
    rows_read: u64,
    bad_rows: u64,
    layout: formats::Layout,
    options: &Options,
) -> Result<()> {
    if rows_read == bad_rows {
        let what = if rows_read == 0 { "no data rows" } else { "every data row is malformed" };
        return Err(Error::Input { file: files[0].clone(), message: what.into() });
    }
    if options.durations.is_some() && (layout.has_signal || !layout.timestamps) {
        return Err(Error::Config(
            "durations derive skips from play times: use them only with timestamped inputs that have no skip column"
                .into(),
        ));
    }
    Ok(())
}

fn no_session_error(files: &[PathBuf], rules: &Rules) -> Error {
    Error::Input {
        file: files[0].clone(),
        message: format!(
            "no session passes the filters (min_length={}, max_length={:?}, min_remainder={}, require_skip={})",
            rules.min_length, rules.max_length, rules.min_remainder, rules.require_skip
        ),
    }
}

/// Appends the key of a kept window: the group key, `#part` for a gap-cut session, `:index`
/// for a window of a cut session.
fn push_session_key(out: &mut Vec<u8>, group_key: &[u8], part: Option<u32>, index: Option<u32>) {
    use std::io::Write;
    out.extend_from_slice(group_key);
    if let Some(part) = part {
        write!(out, "#{part}").expect("writing to a vector");
    }
    if let Some(index) = index {
        write!(out, ":{index}").expect("writing to a vector");
    }
}

/// Runs the whole ingest. `progress` counts input bytes processed (for a progress bar).
pub fn run(paths: &[PathBuf], format: &Format, options: &Options, progress: &AtomicU64) -> Result<Dataset> {
    check_options(options)?;
    let rules = &options.rules;
    let files = source::list_files(paths)?;
    let mut parsed = source::read_all(&files, format, options.skip_bad_rows, false, progress)?;
    if !options.skip_bad_rows {
        if let Some(err) = parsed.chunks.iter().find_map(|c| c.error_at(&files)) {
            return Err(err);
        }
    }
    let rows_read: u64 = parsed.chunks.iter().map(|c| c.rows).sum();
    let bad_rows: u64 = parsed.chunks.iter().map(|c| c.bad_rows).sum();
    let layout = parsed.parser.layout();
    check_read(&files, rows_read, bad_rows, layout, options)?;

    // Sessions of consecutive rows already in order need no sort, and their order values are
    // needed later only as times or for gaps and durations.
    let sorted = layout.consecutive && build::runs_sorted(&parsed.chunks);
    let gap = rules.session_gap.filter(|_| layout.gap_cut);
    let keep_order = !sorted || layout.timestamps || gap.is_some() || options.durations.is_some();
    if keep_order && parsed.chunks.iter().any(|c| c.order.len() != c.items.len()) {
        // Sessions out of order across chunks, each chunk in order (so none kept its order
        // values): read again, keeping them.
        progress.store(0, std::sync::atomic::Ordering::Relaxed);
        parsed = source::read_all(&files, format, options.skip_bad_rows, true, progress)?;
    }
    let chunk_rows = parsed.chunks.iter_mut().map(source::Chunk::take_rows).collect();
    let merged = build::merge(&parsed.chunks, chunk_rows, keep_order);
    let mut rows = merged.rows;
    let groups = build::group(&mut rows, &merged.runs, layout.consecutive);
    if layout.ordered && !sorted {
        build::sort_groups(&mut rows, &groups);
    }
    let sessions = build::sessions(&rows, &groups, gap);
    if let Some(path) = &options.durations {
        let table = durations::read(path)?;
        let per_raw: Vec<f64> = merged.raw_keys.iter().map(|k| table.get(*k).copied().unwrap_or(f64::NAN)).collect();
        build::skips_from_durations(&mut rows, &sessions, &per_raw);
    }
    let windows = build::filter(&rows, &sessions, rules);
    if windows.is_empty() {
        return Err(no_session_error(&files, rules));
    }
    // Session keys are built while items are encoded; then vocabulary strings and split targets
    // side by side (all independent of each other).
    let keys = || {
        let key_of = |w: &build::Window| groups.keys[sessions[w.session as usize].group as usize];
        let key_bytes: usize = windows.iter().map(|w| key_of(w).len()).sum();
        let mut session_keys = Strings::with_capacity(windows.len(), key_bytes);
        let mut key = Vec::new();
        for w in &windows {
            let s = sessions[w.session as usize];
            key.clear();
            push_session_key(&mut key, groups.keys[s.group as usize], s.part, w.index);
            session_keys.push(&key);
        }
        session_keys
    };
    let vocab = |encoded: &build::Encoded| {
        let vocab_bytes: usize = encoded.vocab_raw.iter().map(|&raw| merged.raw_keys[raw as usize].len()).sum();
        let mut vocab = Strings::with_capacity(encoded.vocab_raw.len() + 2, vocab_bytes + 11);
        vocab.push(b"[PAD]");
        vocab.push(b"[MASK]");
        for &raw in &encoded.vocab_raw {
            vocab.push(merged.raw_keys[raw as usize]);
        }
        vocab
    };
    let targets = |encoded: &build::Encoded| {
        let times = layout.timestamps.then_some(&encoded.times[..]);
        split::compute(options.split, &encoded.offsets, &encoded.skips, times)
    };
    let (session_keys, (encoded, (vocab, targets))) = rayon::join(keys, || {
        let encoded = build::encode(rows, &windows, merged.raw_keys.len(), layout.timestamps);
        let built = rayon::join(|| vocab(&encoded), || targets(&encoded));
        (encoded, built)
    });
    Ok(Dataset {
        session_keys,
        offsets: encoded.offsets,
        items: encoded.items,
        skips: encoded.skips,
        timestamps: layout.timestamps.then_some(encoded.times),
        train_end: targets.train_end,
        valid_target: targets.valid_target,
        test_target: targets.test_target,
        vocab,
        counts: encoded.counts,
        rows_read,
        bad_rows,
        files,
        bytes: parsed.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(super) const HEADER: &str =
        "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped\n";

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(super) fn options(min_length: usize, max_length: Option<usize>, require_skip: bool) -> Options {
        Options {
            rules: Rules { min_length, max_length, require_skip, ..Rules::default() },
            split: SplitRule::LeaveLastOut,
            skip_bad_rows: false,
            durations: None,
        }
    }

    fn mssd_text(sessions: &[(&str, &[(&str, bool)])]) -> String {
        let mut text = HEADER.to_string();
        for (sid, plays) in sessions {
            for (pos, (track, skip)) in plays.iter().enumerate() {
                let s = if *skip { "True" } else { "False" };
                text += &format!(
                    "{sid},{},{},{track},False,{s},{s},{}\n",
                    pos + 1,
                    plays.len(),
                    if *skip { "False" } else { "True" }
                );
            }
        }
        text
    }

    #[test]
    fn mssd_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let text = mssd_text(&[
            ("s1", &[("a", false), ("b", true), ("a", false)]),
            ("s2", &[("c", false), ("c", false)]),
            ("s3", &[("d", true), ("b", false), ("e", false)]),
        ]);
        let path = write(dir.path(), "log.csv", &text);
        let p = AtomicU64::new(0);
        let d = run(std::slice::from_ref(&path), &Format::Mssd(SkipRule::Skip2), &options(3, None, true), &p).unwrap();
        assert_eq!(p.load(std::sync::atomic::Ordering::Relaxed), text.len() as u64);
        assert_eq!(d.offsets, vec![0, 3, 6]);
        assert_eq!(d.items, vec![2, 3, 2, 4, 3, 5]);
        assert_eq!(d.skips, vec![0, 1, 0, 1, 0, 0]);
        assert_eq!((d.session_keys.get(0), d.session_keys.get(1)), (&b"s1"[..], &b"s3"[..]));
        assert_eq!(d.vocab.get(4), b"d");
        assert_eq!(d.counts, vec![0, 0, 2, 2, 1, 1]);
        assert_eq!(d.test_target, vec![2, 2]);
        assert_eq!(d.valid_target, vec![-1, 1]);
        assert!(d.timestamps.is_none());
        assert_eq!(d.rows_read, 8);

        // Positions out of order are sorted; not_skipped rule.
        let shuffled = HEADER.to_string() + "x,2,2,b,False,False,False,False\nx,1,2,a,False,False,False,True\n";
        let path = write(dir.path(), "shuffled.csv", &shuffled);
        let d = run(&[path], &Format::Mssd(SkipRule::NotSkipped), &options(1, None, false), &p).unwrap();
        assert_eq!(d.vocab.get(2), b"a");
        assert_eq!(d.skips, vec![0, 1]);
    }

    #[test]
    fn a_session_out_of_order_across_shards_is_sorted() {
        // Each shard is in order on its own, so neither keeps its order values at first.
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        let row = |pos: u32, track: &str| format!("s,{pos},4,{track},False,False,False,True\n");
        let a = write(&shards, "part-0.csv", &(HEADER.to_string() + &row(3, "c") + &row(4, "d")));
        let b = write(&shards, "part-1.csv", &(HEADER.to_string() + &row(1, "a") + &row(2, "b")));
        let p = AtomicU64::new(0);
        let d = run(&[shards], &Format::Mssd(SkipRule::Skip2), &options(1, None, false), &p).unwrap();
        let vocab: Vec<&[u8]> = d.items.iter().map(|&i| d.vocab.get(i as usize)).collect();
        assert_eq!(vocab, vec![&b"a"[..], b"b", b"c", b"d"]);
        assert_eq!(d.offsets, vec![0, 4]);
        let bytes = std::fs::metadata(a).unwrap().len() + std::fs::metadata(b).unwrap().len();
        assert_eq!(p.load(std::sync::atomic::Ordering::Relaxed), bytes, "progress counts each byte once");
    }

    #[test]
    fn gzip_and_shards_match_plain() {
        let dir = tempfile::tempdir().unwrap();
        let text = mssd_text(&[("s1", &[("a", false), ("b", true)]), ("s2", &[("c", true), ("a", false)])]);
        let plain = write(dir.path(), "log.csv", &text);
        let gz = dir.path().join("log.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        write(&shards, "part-0.csv", &format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]));
        write(&shards, "part-1.csv", &format!("{}\n{}\n{}\n", lines[0], lines[3], lines[4]));
        let p = AtomicU64::new(0);
        let fmt = Format::Mssd(SkipRule::Skip2);
        let a = run(&[plain], &fmt, &options(1, None, false), &p).unwrap();
        for other in [gz, shards] {
            let b = run(&[other], &fmt, &options(1, None, false), &p).unwrap();
            assert_eq!(
                (&a.items, &a.skips, &a.offsets, &a.vocab.data),
                (&b.items, &b.skips, &b.offsets, &b.vocab.data)
            );
        }
    }

    #[test]
    fn error_locations() {
        let dir = tempfile::tempdir().unwrap();
        let p = AtomicU64::new(0);
        let fmt = Format::Mssd(SkipRule::Skip2);
        let bad = HEADER.to_string() + "s,1,2,a,False,False,False,True\ns,x,2,b,False,False,False,True\n";
        let path = write(dir.path(), "bad.csv", &bad);
        let err = run(std::slice::from_ref(&path), &fmt, &options(1, None, false), &p).unwrap_err().to_string();
        assert_eq!(err, format!("{}:3:2: expected an integer session_position, found 'x'", path.display()));
        let mut skipping = options(1, None, false);
        skipping.skip_bad_rows = true;
        let d = run(&[path], &fmt, &skipping, &p).unwrap();
        assert_eq!((d.bad_rows, d.rows_read, d.items.len()), (1, 2, 1));

        let path = write(dir.path(), "nohdr.csv", "session_id,track_id_clean\n");
        let err = run(&[path], &fmt, &options(1, None, false), &p).unwrap_err().to_string();
        assert!(err.contains("nohdr.csv:1: missing column 'session_position'"), "{err}");
        let path = write(dir.path(), "empty.csv", "");
        let err = run(&[path], &fmt, &options(1, None, false), &p).unwrap_err().to_string();
        assert!(err.ends_with("empty.csv: empty file: expected at least one line"), "{err}");

        let gz = dir.path().join("cut.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(mssd_text(&[("s1", &[("a", false); 50])]).as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() - 12]).unwrap();
        let err = run(&[gz], &fmt, &options(1, None, false), &p).unwrap_err().to_string();
        assert!(err.contains("cut.csv.gz:") && err.contains("truncated or corrupt gzip data"), "{err}");
    }

    #[test]
    fn lfm_sessions_cut_at_gaps_with_durations() {
        let dir = tempfile::tempdir().unwrap();
        let text = "u1\t2009-01-01T00:10:00Z\tA\tArtist\tT2\tTwo\n\
                    u1\t2009-01-01T00:00:00Z\tA\tArtist\tT1\tOne\n\
                    u1\t2009-01-01T05:00:00Z\tA\tArtist\t\tNo Id\n\
                    u2\t2009-01-01T00:00:00Z\tA\tArtist\tT1\tOne\n";
        let path = write(dir.path(), "lfm.tsv", text);
        let durations = write(dir.path(), "dur.tsv", "track_id\tduration_seconds\nT1\t900\nT2\t100\n");
        let mut opts = options(1, None, false);
        opts.durations = Some(durations);
        let p = AtomicU64::new(0);
        let d = run(&[path], &Format::Lfm1k, &opts, &p).unwrap();
        let keys: Vec<&[u8]> = (0..3).map(|i| d.session_keys.get(i)).collect();
        assert_eq!(keys, vec![&b"u1#0"[..], b"u1#1", b"u2#0"]);
        assert_eq!(d.vocab.get(4), b"Artist\x1fNo Id");
        assert_eq!(d.items, vec![2, 3, 4, 2]);
        // T1 lasts 900 s but T2 starts after 600 s: skipped.
        assert_eq!(d.skips, vec![1, 0, 0, 0]);
        assert_eq!(d.timestamps.unwrap()[0], 1_230_768_000);
    }

    #[test]
    fn events_and_recbole_signals() {
        let dir = tempfile::tempdir().unwrap();
        let p = AtomicU64::new(0);
        let csv = "user,movie,rating,ts\n1,m1,5,10\n1,m2,2,20\n2,m1,4,5\n1,m3,4,5000\n";
        let path = write(dir.path(), "ratings.csv", csv);
        let spec = EventsSpec {
            user: Some("user".into()),
            item: Some("movie".into()),
            timestamp: Some("ts".into()),
            signal: Signal::Rating { column: "rating".into(), threshold: 3.0 },
            ..EventsSpec::default()
        };
        let d = run(&[path], &Format::Events(spec), &options(1, None, false), &p).unwrap();
        assert_eq!(d.offsets, vec![0, 2, 3, 4]);
        assert_eq!(d.skips, vec![0, 1, 0, 0]);
        assert_eq!(d.session_keys.get(2), b"2#0");

        let inter =
            "session_id:token\titem_id:token\ttimestamp:float\tskip:float\ns1\ti1\t2.0\t1.0\ns1\ti2\t1.0\t0.0\n";
        let path = write(dir.path(), "x.inter", inter);
        let spec = EventsSpec { signal: Signal::Bool("skip".into()), ..EventsSpec::default() };
        let d = run(&[path], &Format::Recbole(spec), &options(1, None, false), &p).unwrap();
        assert_eq!(d.vocab.get(2), b"i2");
        assert_eq!(d.skips, vec![0, 1]);
        assert_eq!(d.timestamps.unwrap(), vec![1, 2]);
    }
}
