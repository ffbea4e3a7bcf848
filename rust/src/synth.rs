//! Synthetic MSSD-format session logs with planted, learnable structure.
//!
//! Items fall into `n_tastes` tastes (item `i` has taste `i % n_tastes`), Zipf-popular
//! within each. Every session has a taste; each play is on-taste with probability
//! `on_taste_prob`, else an item of another taste. Off-taste plays are mostly skipped
//! (`skip_prob_off`), on-taste ones rarely (`skip_prob_on`), so skips say what the
//! listener does not want next.
//!
//! With `chart_exponent > 0`, off-taste plays come instead from one global "chart" law
//! (charts, autoplay): chart rank r is item `n_items - 1 - r` (a tail item of its own taste),
//! drawn with probability ∝ 1 / (r + 1)^chart_exponent and redrawn while it is on the
//! session's taste. The most played tracks are then mostly skipped ones. A share
//! `chart_keep_share` of sessions likes the charts: it skips chart plays only as often as
//! on-taste ones, so a session's own skips tell whether to recommend them.
//!
//! With `dislike_share > 0`, each session also dislikes a latent share of its taste's items
//! (each item independently, from a hash of seed, session and item): on-taste plays of those
//! are skipped as often as unwanted off-taste plays (`skip_prob_off`), so within a taste skips
//! concentrate on the session's disliked items and its next kept play avoids them. Only the
//! skip flags of earlier plays of an item reveal that the session dislikes it.
//!
//! Sessions are generated in fixed chunks, each from its own stream keyed by
//! `(seed, chunk)`, on a rayon pool: the file is byte-identical whatever the thread count.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::sampler::rng::{hash_key, mix64, Rng};
use crate::sampler::AliasTable;

pub const HEADER: &str = "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped,context_switch,no_pause_before_play,short_pause_before_play,long_pause_before_play,hist_user_behavior_n_seekfwd,hist_user_behavior_n_seekback,hist_user_behavior_is_shuffle,hour_of_day,date,premium,context_type,hist_user_behavior_reason_start,hist_user_behavior_reason_end";

const STREAM_SYNTH: u64 = 0x7379_6e74_6800_0001;
const STREAM_SESSION_ID: u64 = 0x7379_6e74_6800_0002;
const STREAM_DISLIKE: u64 = 0x7379_6e74_6800_0003;
/// Sessions per independently seeded chunk (fixed: it defines the output).
const CHUNK: usize = 512;
/// Dates run over the 92 days from 2018-07-01.
const N_DAYS: u64 = 92;
const CONTEXT_TYPES: [&str; 6] =
    ["editorial_playlist", "user_collection", "catalog", "radio", "charts", "personalized_playlist"];

/// Parameters of the generator.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub n_sessions: usize,
    pub n_items: usize,
    pub n_tastes: usize,
    pub on_taste_prob: f64,
    pub skip_prob_on: f64,
    pub skip_prob_off: f64,
    pub min_length: usize,
    pub max_length: usize,
    /// Popularity of the item of rank r within its taste is ∝ 1 / (r + 1)^zipf_exponent.
    pub zipf_exponent: f64,
    /// Zipf exponent of the global chart law of off-taste plays; 0 = a random other taste.
    pub chart_exponent: f64,
    /// Share of sessions that keep chart plays as they keep on-taste ones (chart mode only).
    pub chart_keep_share: f64,
    /// Share of its taste's items each session dislikes (skips like off-taste plays); 0 = none.
    pub dislike_share: f64,
    pub seed: u64,
    /// Worker threads; 0 = `NEGREC_NUM_THREADS`, else all cores.
    pub n_threads: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            n_sessions: 20_000,
            n_items: 5_000,
            n_tastes: 20,
            on_taste_prob: 0.8,
            skip_prob_on: 0.15,
            skip_prob_off: 0.8,
            min_length: 10,
            max_length: 20,
            zipf_exponent: 1.0,
            chart_exponent: 0.0,
            chart_keep_share: 0.0,
            dislike_share: 0.0,
            seed: 0,
            n_threads: 0,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_tastes < 2 || self.n_items < self.n_tastes {
            return bad(format!(
                "need 2 <= n_tastes <= n_items, got n_tastes = {} and n_items = {}",
                self.n_tastes, self.n_items
            ));
        }
        for (name, p) in [
            ("on_taste_prob", self.on_taste_prob),
            ("skip_prob_on", self.skip_prob_on),
            ("skip_prob_off", self.skip_prob_off),
            ("chart_keep_share", self.chart_keep_share),
            ("dislike_share", self.dislike_share),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.min_length < 1 || self.min_length > self.max_length {
            return bad(format!("need 1 <= min_length <= max_length, got {} and {}", self.min_length, self.max_length));
        }
        for (name, e) in [("zipf_exponent", self.zipf_exponent), ("chart_exponent", self.chart_exponent)] {
            if !(e.is_finite() && e >= 0.0) {
                return bad(format!("{name} must be finite and >= 0, got {e}"));
            }
        }
        Ok(())
    }
}

/// Track id of item `i` (`t_` + 16 hex digits; the same for every seed).
pub fn track_id(item: usize) -> String {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(b"t_");
    push_hex(&mut out, mix64(item as u64));
    String::from_utf8(out).expect("ascii")
}

/// Threads for rayon work: `requested`, else `NEGREC_NUM_THREADS`, else all cores.
pub fn thread_count(requested: usize) -> Result<usize> {
    if requested > 0 {
        return Ok(requested);
    }
    match std::env::var("NEGREC_NUM_THREADS") {
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Config(format!("NEGREC_NUM_THREADS must be a positive integer, got {value:?}"))),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Writes the log to `path` (gzip when it ends in `.gz`) and returns the number of rows.
pub fn generate_mssd(path: &Path, config: &SynthConfig) -> Result<u64> {
    config.validate()?;
    let threads = thread_count(config.n_threads)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))?;
    let io = |source: std::io::Error| Error::Io { file: path.to_path_buf(), source };
    let file = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    let mut out: Box<dyn Write> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(GzEncoder::new(file, Compression::fast()))
    } else {
        Box::new(file)
    };
    out.write_all(HEADER.as_bytes()).map_err(io)?;
    out.write_all(b"\n").map_err(io)?;

    let world = World::new(config);
    let n_chunks = config.n_sessions.div_ceil(CHUNK);
    let wave = 4 * threads;
    let mut rows = 0u64;
    for first in (0..n_chunks).step_by(wave) {
        let chunks: Vec<(Vec<u8>, u64)> =
            pool.install(|| (first..(first + wave).min(n_chunks)).into_par_iter().map(|c| world.chunk(c)).collect());
        for (text, n) in chunks {
            out.write_all(&text).map_err(io)?;
            rows += n;
        }
    }
    out.flush().map_err(io)?;
    drop(out); // finishes the gzip stream
    Ok(rows)
}

/// Everything shared by the chunk generators.
struct World<'a> {
    config: &'a SynthConfig,
    /// Zipf draws over the ranks of a taste with `n / T + 1` items and of one with `n / T`.
    zipf_big: AliasTable,
    zipf_small: Option<AliasTable>,
    /// Global chart ranks of off-taste plays (`chart_exponent > 0`).
    charts: Option<AliasTable>,
    track_ids: Vec<[u8; 18]>,
    dates: Vec<[u8; 10]>,
    session_key: u64,
}

impl<'a> World<'a> {
    fn new(config: &'a SynthConfig) -> Self {
        let (t, n) = (config.n_tastes, config.n_items);
        let zipf = |size: usize| {
            let weights: Vec<f64> = (0..size).map(|r| ((r + 1) as f64).powf(-config.zipf_exponent)).collect();
            AliasTable::new(&weights)
        };
        let small = n / t;
        let track_ids = (0..n).map(|i| track_id(i).into_bytes().try_into().expect("18 bytes")).collect();
        World {
            config,
            zipf_big: zipf(small + 1),
            zipf_small: (small > 0).then(|| zipf(small)),
            charts: (config.chart_exponent > 0.0).then(|| {
                let weights: Vec<f64> = (0..n).map(|r| ((r + 1) as f64).powf(-config.chart_exponent)).collect();
                AliasTable::new(&weights)
            }),
            track_ids,
            dates: (0..N_DAYS).map(date).collect(),
            session_key: mix64(config.seed ^ STREAM_SESSION_ID),
        }
    }

    /// An item of taste `taste`, Zipf by rank.
    fn item(&self, taste: usize, rng: &mut Rng) -> usize {
        let (t, n) = (self.config.n_tastes, self.config.n_items);
        let rank = match &self.zipf_small {
            Some(small) if taste >= n % t => small.draw(rng),
            _ => self.zipf_big.draw(rng),
        } as usize;
        rank * t + taste
    }

    /// Whether session `s` dislikes `item` (`dislike_share` mode); consumes no session randomness,
    /// so logs without the mode are unchanged.
    fn dislikes(&self, s: usize, item: usize) -> bool {
        let share = self.config.dislike_share;
        share > 0.0 && ((hash_key(&[self.config.seed, STREAM_DISLIKE, s as u64, item as u64]) >> 11) as f64) < share * (1u64 << 53) as f64
    }

    /// CSV rows of the sessions of chunk `c`, and how many.
    fn chunk(&self, c: usize) -> (Vec<u8>, u64) {
        let cfg = self.config;
        let mut rng = Rng::keyed(&[cfg.seed, STREAM_SYNTH, c as u64]);
        let sessions = c * CHUNK..((c + 1) * CHUNK).min(cfg.n_sessions);
        let mut out = Vec::with_capacity(sessions.len() * cfg.max_length * 170);
        let mut rows = 0u64;
        for s in sessions {
            rows += self.session(s, &mut rng, &mut out);
        }
        (out, rows)
    }

    fn session(&self, s: usize, rng: &mut Rng, out: &mut Vec<u8>) -> u64 {
        let cfg = self.config;
        let t = cfg.n_tastes;
        let taste = rng.below(t as u64) as usize;
        let length = cfg.min_length + rng.below((cfg.max_length - cfg.min_length + 1) as u64) as usize;
        let is_shuffle = rng.chance(0.3);
        let hour = rng.below(24);
        let date = &self.dates[rng.below(N_DAYS) as usize];
        let premium = rng.chance(0.75);
        let mut context = CONTEXT_TYPES[rng.below(CONTEXT_TYPES.len() as u64) as usize];
        let mut reason_start = if rng.chance(0.7) { "clickrow" } else { "playbtn" };
        let id = mix64((s as u64) ^ self.session_key);
        let likes_charts = self.charts.is_some() && rng.chance(cfg.chart_keep_share);

        for position in 1..=length {
            let on_taste = rng.chance(cfg.on_taste_prob);
            let item = match &self.charts {
                Some(charts) if !on_taste => loop {
                    let item = cfg.n_items - 1 - charts.draw(rng) as usize;
                    if item % t != taste {
                        break item;
                    }
                },
                _ => {
                    let play_taste = if on_taste { taste } else { (taste + 1 + rng.below(t as u64 - 1) as usize) % t };
                    self.item(play_taste, rng)
                }
            };
            let liked = if on_taste { !self.dislikes(s, item) } else { likes_charts };
            let skip_2 = rng.chance(if liked { cfg.skip_prob_on } else { cfg.skip_prob_off });
            let skip_1 = skip_2 && rng.chance(0.5);
            let skip_3 = skip_2 || rng.chance(0.1);
            let context_switch = position > 1 && rng.chance(0.03);
            if context_switch {
                context = CONTEXT_TYPES[rng.below(CONTEXT_TYPES.len() as u64) as usize];
            }
            let pause = rng.unit();
            let (no_pause, short_pause, long_pause) = match () {
                _ if position == 1 => (false, false, false),
                _ if pause < 0.85 => (true, false, false),
                _ if pause < 0.95 => (false, true, false),
                _ => (false, true, true),
            };
            let seek_fwd = if skip_2 && rng.chance(0.1) { 1 + rng.below(2) } else { 0 };
            let seek_back = rng.chance(0.02) as u64;
            let reason_end = if skip_2 {
                if rng.chance(0.85) {
                    "fwdbtn"
                } else {
                    "backbtn"
                }
            } else if position == length && rng.chance(0.3) {
                "endplay"
            } else {
                "trackdone"
            };

            out.extend_from_slice(b"0_");
            push_hex(out, id);
            out.push(b',');
            push_uint(out, position as u64);
            out.push(b',');
            push_uint(out, length as u64);
            out.push(b',');
            out.extend_from_slice(&self.track_ids[item]);
            for flag in [skip_1, skip_2, skip_3, !skip_3] {
                out.extend_from_slice(if flag { b",True" } else { b",False" });
            }
            for flag in [context_switch, no_pause, short_pause, long_pause] {
                out.extend_from_slice(if flag { b",1" } else { b",0" });
            }
            out.push(b',');
            push_uint(out, seek_fwd);
            out.push(b',');
            push_uint(out, seek_back);
            out.extend_from_slice(if is_shuffle { b",True," } else { b",False," });
            push_uint(out, hour);
            out.push(b',');
            out.extend_from_slice(date);
            out.extend_from_slice(if premium { b",True," } else { b",False," });
            for (i, text) in [context, reason_start, reason_end].into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(text.as_bytes());
            }
            out.push(b'\n');
            reason_start = if reason_end == "endplay" { "clickrow" } else { reason_end };
        }
        length as u64
    }
}

fn push_uint(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend((0..16).rev().map(|i| DIGITS[((v >> (4 * i)) & 15) as usize]));
}

/// `YYYY-MM-DD` of day `d` after 2018-07-01 (d < 92: July to September).
fn date(d: u64) -> [u8; 10] {
    let (month, day) = match d {
        0..=30 => (7, d + 1),
        31..=61 => (8, d - 30),
        _ => (9, d - 61),
    };
    let text = format!("2018-{month:02}-{day:02}");
    text.into_bytes().try_into().expect("10 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn small(seed: u64, threads: usize) -> SynthConfig {
        SynthConfig { n_sessions: 1500, n_items: 300, n_tastes: 6, seed, n_threads: threads, ..Default::default() }
    }

    #[test]
    fn byte_identical_whatever_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = [(1, 1), (1, 3), (2, 2)]
            .iter()
            .map(|&(seed, threads)| {
                let p = dir.path().join(format!("s{seed}t{threads}.csv"));
                generate_mssd(&p, &small(seed, threads)).unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert_eq!(paths[0], paths[1]);
        assert_ne!(paths[0], paths[2]);
    }

    #[test]
    fn rows_are_consistent_and_skips_follow_taste() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv.gz");
        let config = small(5, 2);
        let rows = generate_mssd(&path, &config).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(File::open(&path).unwrap()), &mut text)
            .unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(HEADER));
        let taste_of: HashMap<String, usize> = (0..config.n_items).map(|i| (track_id(i), i % 6)).collect();
        let mut sessions: HashMap<&str, Vec<Vec<&str>>> = HashMap::new();
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 21, "{line}");
            sessions.entry(fields[0]).or_default().push(fields);
        }
        assert_eq!(sessions.len(), 1500);
        assert_eq!(sessions.values().map(Vec::len).sum::<usize>() as u64, rows);
        let (mut on, mut off) = ((0.0, 0.0), (0.0, 0.0));
        for plays in sessions.values() {
            let n = plays.len();
            assert!((10..=20).contains(&n));
            let mut votes = [0usize; 6];
            for p in plays {
                votes[taste_of[p[3]]] += 1;
            }
            let taste = (0..6).max_by_key(|&t| votes[t]).unwrap();
            for (i, p) in plays.iter().enumerate() {
                assert_eq!(p[1], (i + 1).to_string());
                assert_eq!(p[2], n.to_string());
                let (s1, s2, s3, ns) = (p[4] == "True", p[5] == "True", p[6] == "True", p[7] == "True");
                assert!((!s1 || s2) && (!s2 || s3) && ns != s3, "{p:?}");
                let bucket = if taste_of[p[3]] == taste { &mut on } else { &mut off };
                bucket.0 += s2 as u8 as f64;
                bucket.1 += 1.0;
            }
        }
        let (on_rate, off_rate) = (on.0 / on.1, off.0 / off.1);
        assert!((on_rate - 0.15).abs() < 0.03, "on-taste skip rate {on_rate}");
        assert!((off_rate - 0.8).abs() < 0.05, "off-taste skip rate {off_rate}");
    }

    #[test]
    fn chart_mode_makes_the_most_played_tracks_mostly_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("charts.csv");
        let config = SynthConfig { chart_exponent: 1.5, on_taste_prob: 0.7, ..small(3, 2) };
        generate_mssd(&path, &config).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let index: HashMap<String, usize> = (0..config.n_items).map(|i| (track_id(i), i)).collect();
        let (mut plays, mut skips) = (vec![0usize; config.n_items], vec![0usize; config.n_items]);
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let item = index[fields[3]];
            plays[item] += 1;
            skips[item] += (fields[5] == "True") as usize;
        }
        let top = (0..config.n_items).max_by_key(|&i| plays[i]).unwrap();
        assert_eq!(top, config.n_items - 1, "the chart head is the last item id");
        let rate = |items: std::ops::Range<usize>| {
            items.clone().map(|i| skips[i]).sum::<usize>() as f64 / items.map(|i| plays[i]).sum::<usize>() as f64
        };
        let (head, rest) = (rate(config.n_items - 10..config.n_items), rate(0..config.n_items - 10));
        assert!(head > 0.7 && rest < 0.4, "skip rate of the chart head {head}, of the rest {rest}");
        let base = dir.path().join("base.csv");
        generate_mssd(&base, &small(3, 2)).unwrap();
        assert_ne!(std::fs::read(&base).unwrap(), text.into_bytes());
    }

    /// Skip rate of later plays of an on-taste item within a session, after a first play of it
    /// that was (skipped, kept).
    fn repeat_skip_rates(config: &SynthConfig) -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv");
        generate_mssd(&path, config).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let taste_of: HashMap<String, usize> = (0..config.n_items).map(|i| (track_id(i), i % config.n_tastes)).collect();
        let mut sessions: HashMap<&str, Vec<(&str, bool)>> = HashMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            sessions.entry(f[0]).or_default().push((f[3], f[5] == "True"));
        }
        let (mut after_skip, mut after_keep) = ((0.0, 0.0), (0.0, 0.0));
        for plays in sessions.values() {
            let mut votes = vec![0usize; config.n_tastes];
            plays.iter().for_each(|(t, _)| votes[taste_of[*t]] += 1);
            let taste = (0..config.n_tastes).max_by_key(|&t| votes[t]).unwrap();
            let mut first: HashMap<&str, bool> = HashMap::new();
            for &(track, skipped) in plays.iter().filter(|(t, _)| taste_of[*t] == taste) {
                match first.get(track) {
                    Some(true) => after_skip = (after_skip.0 + skipped as u8 as f64, after_skip.1 + 1.0),
                    Some(false) => after_keep = (after_keep.0 + skipped as u8 as f64, after_keep.1 + 1.0),
                    None => {
                        first.insert(track, skipped);
                    }
                }
            }
        }
        (after_skip.0 / after_skip.1, after_keep.0 / after_keep.1)
    }

    #[test]
    fn dislike_mode_makes_a_sessions_skips_of_an_item_repeat() {
        let config = SynthConfig { n_sessions: 3000, n_items: 120, n_tastes: 4, ..small(7, 2) };
        // share 0.3: P(disliked | first play skipped) = 0.24 / 0.345, so later plays are skipped
        // at 0.70 * 0.8 + 0.30 * 0.15 = 0.60, after a kept first play at 0.21
        let (after_skip, after_keep) = repeat_skip_rates(&SynthConfig { dislike_share: 0.3, ..config.clone() });
        assert!((after_skip - 0.60).abs() < 0.06 && (after_keep - 0.21).abs() < 0.04, "{after_skip} {after_keep}");
        let (after_skip, after_keep) = repeat_skip_rates(&config);
        assert!((after_skip - 0.15).abs() < 0.04 && (after_keep - 0.15).abs() < 0.03, "{after_skip} {after_keep}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        let err = |c: SynthConfig| generate_mssd(&p, &c).unwrap_err().to_string();
        assert_eq!(
            err(SynthConfig { skip_prob_on: 1.5, ..small(0, 1) }),
            "skip_prob_on must be a probability in [0, 1], got 1.5"
        );
        assert!(err(SynthConfig { n_tastes: 1, ..small(0, 1) }).starts_with("need 2 <= n_tastes"));
        assert!(err(SynthConfig { min_length: 5, max_length: 4, ..small(0, 1) }).contains("min_length"));
        let missing = dir.path().join("no/such/dir.csv");
        let io = generate_mssd(&missing, &small(0, 1)).unwrap_err().to_string();
        assert!(io.starts_with(&format!("{}: ", missing.display())), "{io}");
    }

    #[test]
    fn ids_and_dates_are_well_formed() {
        assert_eq!(track_id(0).len(), 18);
        assert_ne!(track_id(1), track_id(2));
        assert_eq!(&date(0), b"2018-07-01");
        assert_eq!(&date(31), b"2018-08-01");
        assert_eq!(&date(91), b"2018-09-30");
        let mut v = Vec::new();
        push_uint(&mut v, 0);
        push_uint(&mut v, 1234567);
        assert_eq!(v, b"01234567");
    }
}
