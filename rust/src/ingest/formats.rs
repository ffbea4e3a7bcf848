//! Input formats: how a header is read and how one row becomes (group key, item key, skip, order).

use std::borrow::Cow;
use std::path::Path;

use super::fields::{self, FieldError, Fields, Span};
use crate::error::{Error, Location};

/// MSSD skip definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipRule {
    Skip1,
    /// Default: skip_1+skip_2+skip_3 > 1, which equals `skip_2` (skip_1 ⊆ skip_2 ⊆ skip_3).
    Skip2,
    Skip3,
    /// skip = not `not_skipped`.
    NotSkipped,
}

impl SkipRule {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "skip_1" => SkipRule::Skip1,
            "skip_2" => SkipRule::Skip2,
            "skip_3" => SkipRule::Skip3,
            "not_skipped" => SkipRule::NotSkipped,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            SkipRule::Skip1 => "skip_1",
            SkipRule::Skip2 => "skip_2",
            SkipRule::Skip3 => "skip_3",
            SkipRule::NotSkipped => "not_skipped",
        }
    }
}

/// Where the negative signal of an event table comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// No negative signal (all plays kept), unless durations derive skips.
    None,
    /// A boolean column (True/False/true/false/1/0 or a number, non-zero = skipped).
    Bool(String),
    /// Skipped when `column < threshold` (a play ratio).
    Ratio { column: String, threshold: f64 },
    /// Skipped when `play_time / duration < threshold` (KuaiRand / 30Music style).
    PlayTime { play: String, duration: String, threshold: f64 },
    /// Disliked when `column < threshold` (MovieLens-style ratings).
    Rating { column: String, threshold: f64 },
}

/// Column mapping of an event table (CSV/TSV with a header) or a RecBole `.inter` file.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsSpec {
    /// Session column; default `session_id` when the header has it.
    pub session: Option<String>,
    /// User column, used when there is no session column; default `user_id`.
    /// With timestamps, a user's plays are ordered by time and, given a session gap
    /// (`Rules::session_gap`), cut into sessions at inactivity gaps.
    pub user: Option<String>,
    /// Item column; default `item_id`.
    pub item: Option<String>,
    /// Timestamp column (unix or ISO-8601); default `timestamp` when the header has it.
    pub timestamp: Option<String>,
    /// Position column (integers ordering plays in a session); excludes `timestamp`.
    pub position: Option<String>,
    /// Unix timestamps are milliseconds.
    pub timestamp_ms: bool,
    pub signal: Signal,
    /// Field delimiter; default tab for `.tsv`/`.inter`/`.txt` files, else comma.
    pub delimiter: Option<u8>,
}

impl Default for EventsSpec {
    fn default() -> Self {
        EventsSpec {
            session: None,
            user: None,
            item: None,
            timestamp: None,
            position: None,
            timestamp_ms: false,
            signal: Signal::None,
            delimiter: None,
        }
    }
}

/// A supported input format.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Spotify MSSD training logs (CSV with the 21-column header).
    Mssd(SkipRule),
    /// Last.fm 1K: `user \t ISO-time \t artist-id \t artist \t track-id \t track`, no header.
    Lfm1k,
    /// LFM-2B style events: `user \t track \t time`; a first line whose time does not parse is a header.
    Lfm2b,
    /// A generic event table with a header.
    Events(EventsSpec),
    /// RecBole atomic `.inter` file (tab-separated, header fields `name:type`).
    Recbole(EventsSpec),
}

/// How rows become sessions, fixed by the format (and the columns found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Sessions are runs of consecutive rows with the same key (MSSD); else rows are grouped by key.
    pub consecutive: bool,
    /// `order` holds unix seconds (kept in the output).
    pub timestamps: bool,
    /// Groups are timestamped users, cut into sessions at inactivity gaps when a gap is given.
    pub gap_cut: bool,
    /// Rows carry an order value to sort by within a group.
    pub ordered: bool,
    /// The format has its own negative signal (durations may not be combined with it).
    pub has_signal: bool,
}

/// One parsed row. Columns are 1-based field numbers (for error messages).
pub(crate) struct Row<'a> {
    pub group: Cow<'a, [u8]>,
    pub group_col: usize,
    pub item: Cow<'a, [u8]>,
    pub item_col: usize,
    pub skip: bool,
    pub order: i64,
}

#[derive(Debug, Clone)]
pub(crate) enum TableSignal {
    None,
    Bool(usize),
    Ratio(usize, f64),
    PlayTime(usize, usize, f64),
    Rating(usize, f64),
}

/// Column positions of an MSSD file: `n` columns; the skip label is column `skip`, negated
/// for the `not_skipped` rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MssdColumns {
    pub n: usize,
    pub session: usize,
    pub position: usize,
    pub track: usize,
    pub skip: usize,
    pub negate: bool,
}

/// A row parser for one file, with the column positions resolved from its header.
#[derive(Debug, Clone)]
pub(crate) enum Parser {
    Mssd(MssdColumns),
    Lfm1k,
    Lfm2b,
    Table {
        n: usize,
        delimiter: u8,
        group: usize,
        group_is_user: bool,
        item: usize,
        time: Option<(usize, bool)>,
        timestamp_ms: bool,
        signal: TableSignal,
    },
}

fn header_error(file: &Path, message: String) -> Error {
    Error::Parse { at: Location { file: file.to_path_buf(), line: 1, column: 0 }, message }
}

fn header_names(first_line: &[u8], delimiter: u8, strip_types: bool) -> Vec<String> {
    let mut spans: Vec<Span> = Vec::new();
    if fields::split_quoted(first_line, 0, first_line.len(), delimiter, &mut spans).is_err() {
        spans = vec![Span { start: 0, end: first_line.len(), escaped: false }];
    }
    let f = Fields::all(first_line, &spans);
    (0..f.len())
        .map(|i| {
            let name = String::from_utf8_lossy(&f.text(i)).trim().trim_start_matches('\u{feff}').to_string();
            match (strip_types, name.rsplit_once(':')) {
                (true, Some((base, _))) => base.to_string(),
                _ => name,
            }
        })
        .collect()
}

fn find(file: &Path, names: &[String], name: &str) -> Result<usize, Error> {
    names.iter().position(|n| n == name).ok_or_else(|| {
        header_error(file, format!("missing column '{name}' in the header (columns: {})", names.join(", ")))
    })
}

fn default_delimiter(file: &Path) -> u8 {
    let name = file.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".tsv") || name.ends_with(".inter") || name.ends_with(".txt") {
        b'\t'
    } else {
        b','
    }
}

impl Format {
    /// Field delimiter used for a file.
    pub(crate) fn delimiter(&self, file: &Path) -> u8 {
        match self {
            Format::Mssd(_) => b',',
            Format::Lfm1k | Format::Lfm2b | Format::Recbole(_) => b'\t',
            Format::Events(spec) => spec.delimiter.unwrap_or_else(|| default_delimiter(file)),
        }
    }

    /// Builds the row parser of `file` from its first line; also says whether that line is a header.
    pub(crate) fn parser(&self, file: &Path, first_line: &[u8]) -> Result<(Parser, bool), Error> {
        match self {
            Format::Mssd(rule) => {
                let names = header_names(first_line, b',', false);
                let parser = Parser::Mssd(MssdColumns {
                    n: names.len(),
                    session: find(file, &names, "session_id")?,
                    position: find(file, &names, "session_position")?,
                    track: find(file, &names, "track_id_clean")?,
                    skip: find(file, &names, rule.column())?,
                    negate: *rule == SkipRule::NotSkipped,
                });
                Ok((parser, true))
            }
            Format::Lfm1k => Ok((Parser::Lfm1k, false)),
            Format::Lfm2b => {
                let third = first_line.split(|&b| b == b'\t').nth(2).unwrap_or(b"");
                let third = third.strip_suffix(b"\r").unwrap_or(third);
                // A time out of range is a data row (its error is reported), not a header.
                Ok((Parser::Lfm2b, fields::parse_time(third, false) == Err(fields::BadTime::Malformed)))
            }
            Format::Events(spec) => {
                Self::table(file, first_line, spec, spec.delimiter.unwrap_or_else(|| default_delimiter(file)), false)
            }
            Format::Recbole(spec) => Self::table(file, first_line, spec, spec.delimiter.unwrap_or(b'\t'), true),
        }
    }

    fn table(
        file: &Path,
        first_line: &[u8],
        spec: &EventsSpec,
        delimiter: u8,
        recbole: bool,
    ) -> Result<(Parser, bool), Error> {
        let names = header_names(first_line, delimiter, recbole);
        let has = |name: &str| names.iter().any(|n| n == name);
        let (group, group_is_user) = match (&spec.session, &spec.user) {
            (Some(s), _) => (find(file, &names, s)?, false),
            (None, Some(u)) => (find(file, &names, u)?, true),
            (None, None) if has("session_id") => (find(file, &names, "session_id")?, false),
            (None, None) if has("user_id") => (find(file, &names, "user_id")?, true),
            (None, None) => {
                return Err(header_error(
                    file,
                    format!(
                        "no session or user column: the header has neither 'session_id' nor 'user_id' (columns: {}); name one with session=/user=",
                        names.join(", ")
                    ),
                ))
            }
        };
        let item = find(file, &names, spec.item.as_deref().unwrap_or("item_id"))?;
        let time = match (&spec.timestamp, &spec.position) {
            (Some(_), Some(_)) => {
                return Err(Error::Config("give either a timestamp or a position column, not both".into()))
            }
            (Some(t), None) => Some((find(file, &names, t)?, true)),
            (None, Some(p)) => Some((find(file, &names, p)?, false)),
            (None, None) if has("timestamp") => Some((find(file, &names, "timestamp")?, true)),
            (None, None) => None,
        };
        let signal = match &spec.signal {
            Signal::None => TableSignal::None,
            Signal::Bool(c) => TableSignal::Bool(find(file, &names, c)?),
            Signal::Ratio { column, threshold } => TableSignal::Ratio(find(file, &names, column)?, *threshold),
            Signal::PlayTime { play, duration, threshold } => {
                TableSignal::PlayTime(find(file, &names, play)?, find(file, &names, duration)?, *threshold)
            }
            Signal::Rating { column, threshold } => TableSignal::Rating(find(file, &names, column)?, *threshold),
        };
        let parser = Parser::Table {
            n: names.len(),
            delimiter,
            group,
            group_is_user,
            item,
            time,
            timestamp_ms: spec.timestamp_ms,
            signal,
        };
        Ok((parser, true))
    }
}

#[inline]
fn non_empty<'a>(text: Cow<'a, [u8]>, column: usize, what: &str) -> Result<Cow<'a, [u8]>, FieldError> {
    if text.is_empty() {
        Err(empty_field(column, what))
    } else {
        Ok(text)
    }
}

#[cold]
fn empty_field(column: usize, what: &str) -> FieldError {
    FieldError::new(column, format!("expected a non-empty {what}"))
}

impl Parser {
    pub fn delimiter(&self) -> u8 {
        match self {
            Parser::Mssd(_) => b',',
            Parser::Lfm1k | Parser::Lfm2b => b'\t',
            Parser::Table { delimiter, .. } => *delimiter,
        }
    }

    /// Fields a row must be split into (the rest are only counted).
    pub fn needed_fields(&self) -> usize {
        match *self {
            Parser::Mssd(m) => m.session.max(m.position).max(m.track).max(m.skip) + 1,
            Parser::Lfm1k => 6,
            Parser::Lfm2b => 3,
            Parser::Table { n, .. } => n,
        }
    }

    /// The field that is a row's item key whenever it is not quoted, if the format has one.
    pub fn item_field(&self) -> Option<usize> {
        match *self {
            Parser::Mssd(m) => Some(m.track),
            Parser::Lfm1k => None,
            Parser::Lfm2b => Some(1),
            Parser::Table { item, .. } => Some(item),
        }
    }

    pub fn layout(&self) -> Layout {
        match self {
            Parser::Mssd(_) => {
                Layout { consecutive: true, timestamps: false, gap_cut: false, ordered: true, has_signal: true }
            }
            Parser::Lfm1k | Parser::Lfm2b => {
                Layout { consecutive: false, timestamps: true, gap_cut: true, ordered: true, has_signal: false }
            }
            Parser::Table { group_is_user, time, signal, .. } => {
                let timestamps = matches!(time, Some((_, true)));
                Layout {
                    consecutive: false,
                    timestamps,
                    gap_cut: *group_is_user && timestamps,
                    ordered: time.is_some(),
                    has_signal: !matches!(signal, TableSignal::None),
                }
            }
        }
    }

    pub fn row<'a>(&self, f: &Fields<'a, '_>) -> Result<Row<'a>, FieldError> {
        match self {
            &Parser::Mssd(MssdColumns { n, session, position, track, skip, negate }) => {
                f.expect_count(n, b',')?;
                let order = fields::integer(f.raw(position), position + 1, "session_position")?;
                let flag = fields::strict_bool(f.raw(skip), skip + 1)?;
                Ok(Row {
                    group: non_empty(f.text(session), session + 1, "session_id")?,
                    group_col: session + 1,
                    item: non_empty(f.text(track), track + 1, "track_id_clean")?,
                    item_col: track + 1,
                    skip: flag != negate,
                    order,
                })
            }
            Parser::Lfm1k => {
                f.expect_count(6, b'\t')?;
                let order = fields::timestamp(f.raw(1), 2, false)?;
                let track_id = f.text(4);
                let item = if !track_id.is_empty() {
                    track_id
                } else {
                    let (artist, track) = (f.text(3), f.text(5));
                    if artist.is_empty() && track.is_empty() {
                        return Err(FieldError::new(5, "expected a track id, or an artist and track name"));
                    }
                    let mut key = Vec::with_capacity(artist.len() + track.len() + 1);
                    key.extend_from_slice(&artist);
                    key.push(0x1f);
                    key.extend_from_slice(&track);
                    Cow::Owned(key)
                };
                Ok(Row {
                    group: non_empty(f.text(0), 1, "user id")?,
                    group_col: 1,
                    item,
                    item_col: 5,
                    skip: false,
                    order,
                })
            }
            Parser::Lfm2b => {
                f.expect_count(3, b'\t')?;
                let order = fields::timestamp(f.raw(2), 3, false)?;
                Ok(Row {
                    group: non_empty(f.text(0), 1, "user id")?,
                    group_col: 1,
                    item: non_empty(f.text(1), 2, "track id")?,
                    item_col: 2,
                    skip: false,
                    order,
                })
            }
            Parser::Table { n, delimiter, group, item, time, timestamp_ms, signal, .. } => {
                f.expect_count(*n, *delimiter)?;
                let order = match *time {
                    Some((c, true)) => fields::timestamp(f.raw(c), c + 1, *timestamp_ms)?,
                    Some((c, false)) => fields::integer(f.raw(c), c + 1, "position")?,
                    None => 0,
                };
                let skip = match *signal {
                    TableSignal::None => false,
                    TableSignal::Bool(c) => fields::lenient_bool(f.raw(c), c + 1)?,
                    TableSignal::Ratio(c, t) | TableSignal::Rating(c, t) => {
                        fields::number(f.raw(c), c + 1, "a ratio or rating")? < t
                    }
                    TableSignal::PlayTime(p, d, t) => {
                        let play = fields::number(f.raw(p), p + 1, "play time")?;
                        let duration = fields::number(f.raw(d), d + 1, "duration")?;
                        if duration <= 0.0 {
                            return Err(FieldError::new(
                                d + 1,
                                format!("expected a positive duration, found {}", fields::show(f.raw(d))),
                            ));
                        }
                        play / duration < t
                    }
                };
                Ok(Row {
                    group: non_empty(f.text(*group), group + 1, "session or user id")?,
                    group_col: group + 1,
                    item: non_empty(f.text(*item), item + 1, "item id")?,
                    item_col: item + 1,
                    skip,
                    order,
                })
            }
        }
    }
}
