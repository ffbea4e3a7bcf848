//! Field-level parsing: splitting lines into fields and reading booleans, numbers and times.

use std::borrow::Cow;

/// A problem inside one row: the 1-based field number (0 = the whole line) and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    pub column: u64,
    pub message: String,
}

impl FieldError {
    pub fn new(column: usize, message: impl Into<String>) -> Self {
        FieldError { column: column as u64, message: message.into() }
    }
}

/// Byte range of one field in a chunk; `escaped` marks a quoted field holding `""`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

impl Span {
    /// The field's bytes in `data`.
    #[inline(always)]
    pub fn of(self, data: &[u8]) -> &[u8] {
        &data[self.start..self.end]
    }
}

/// The fields of one row, borrowed from the chunk they were read from. Only the first
/// `spans.len()` fields are located; `count` is the row's number of fields.
pub(crate) struct Fields<'a, 's> {
    pub data: &'a [u8],
    pub spans: &'s [Span],
    pub count: usize,
}

impl<'a, 's> Fields<'a, 's> {
    /// All fields located.
    pub fn all(data: &'a [u8], spans: &'s [Span]) -> Self {
        Fields { data, spans, count: spans.len() }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// The raw bytes of field `i` (0-based), quotes removed but `""` left as is.
    pub fn raw(&self, i: usize) -> &'a [u8] {
        let s = self.spans[i];
        &self.data[s.start..s.end]
    }

    /// The text of field `i`, with `""` inside a quoted field unescaped.
    #[inline]
    pub fn text(&self, i: usize) -> Cow<'a, [u8]> {
        let s = self.spans[i];
        let raw = &self.data[s.start..s.end];
        if !s.escaped {
            return Cow::Borrowed(raw);
        }
        Cow::Owned(unescape(raw))
    }

    /// Errors unless the row has exactly `n` fields.
    #[inline]
    pub fn expect_count(&self, n: usize, delimiter: u8) -> Result<(), FieldError> {
        if self.len() == n {
            Ok(())
        } else {
            Err(wrong_count(self.len(), n, delimiter))
        }
    }
}

#[cold]
fn wrong_count(found: usize, n: usize, delimiter: u8) -> FieldError {
    let column = if found < n { found + 1 } else { n + 1 };
    FieldError::new(column, format!("expected {n} fields separated by {}, found {found}", show_delimiter(delimiter)))
}

/// `raw` with each `""` turned into `"`.
#[cold]
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut j = 0;
    while j < raw.len() {
        out.push(raw[j]);
        j += if raw[j] == b'"' && raw.get(j + 1) == Some(&b'"') { 2 } else { 1 };
    }
    out
}

pub(crate) fn show_delimiter(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "tabs".to_string(),
        b',' => "commas".to_string(),
        d => format!("'{}'", d as char),
    }
}

/// Splits `line` (absolute range `[start, end)` of `data`, no newline) into fields, honouring
/// double-quoted fields (`"a,b"`, `"say ""hi"""`). Quoted fields cannot span lines.
pub(crate) fn split_quoted(
    data: &[u8],
    start: usize,
    end: usize,
    delimiter: u8,
    spans: &mut Vec<Span>,
) -> Result<(), FieldError> {
    spans.clear();
    let mut pos = start;
    loop {
        if pos < end && data[pos] == b'"' {
            let open = pos + 1;
            let mut j = open;
            let mut escaped = false;
            loop {
                match memchr::memchr(b'"', &data[j..end]) {
                    None => {
                        return Err(FieldError::new(spans.len() + 1, "unterminated quoted field"));
                    }
                    Some(k) => {
                        let q = j + k;
                        if q + 1 < end && data[q + 1] == b'"' {
                            escaped = true;
                            j = q + 2;
                            continue;
                        }
                        spans.push(Span { start: open, end: q, escaped });
                        pos = q + 1;
                        break;
                    }
                }
            }
            if pos == end {
                return Ok(());
            }
            if data[pos] != delimiter {
                return Err(FieldError::new(
                    spans.len(),
                    format!("expected {} after a closing quote", show_delimiter(delimiter)),
                ));
            }
            pos += 1;
        } else {
            match memchr::memchr(delimiter, &data[pos..end]) {
                Some(k) => {
                    spans.push(Span { start: pos, end: pos + k, escaped: false });
                    pos += k + 1;
                }
                None => {
                    spans.push(Span { start: pos, end, escaped: false });
                    return Ok(());
                }
            }
        }
    }
}

/// Shows a field in an error message (lossy UTF-8, shortened).
pub(crate) fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > 40 {
        format!("'{}...'", text.chars().take(40).collect::<String>())
    } else {
        format!("'{text}'")
    }
}

/// Strict boolean (MSSD): `True`/`False`/`true`/`false`.
#[inline]
pub(crate) fn strict_bool(raw: &[u8], column: usize) -> Result<bool, FieldError> {
    // The first four bytes as one word, with the first letter's case bit cleared.
    let word = |s: &[u8]| u32::from_le_bytes(s[..4].try_into().expect("4 bytes")) & !0x20;
    match raw.len() {
        4 if word(raw) == u32::from_le_bytes(*b"True") => Ok(true),
        5 if word(raw) == u32::from_le_bytes(*b"Fals") && raw[4] == b'e' => Ok(false),
        _ => Err(not_strict_bool(raw, column)),
    }
}

#[cold]
fn not_strict_bool(raw: &[u8], column: usize) -> FieldError {
    FieldError::new(column, format!("expected a boolean (True/False/true/false), found {}", show(raw)))
}

/// Lenient boolean (event tables): the strict forms, `1`/`0`, or any number (non-zero = true).
pub(crate) fn lenient_bool(raw: &[u8], column: usize) -> Result<bool, FieldError> {
    match raw {
        b"True" | b"true" | b"1" => Ok(true),
        b"False" | b"false" | b"0" => Ok(false),
        _ => match parse_f64(raw) {
            Some(x) => Ok(x != 0.0),
            None => Err(FieldError::new(
                column,
                format!("expected a boolean (True/False/true/false/1/0), found {}", show(raw)),
            )),
        },
    }
}

/// A decimal integer with optional sign; `None` if anything else.
#[inline]
pub(crate) fn parse_i64(raw: &[u8]) -> Option<i64> {
    let (neg, digits) = match raw.first()? {
        b'-' => (true, &raw[1..]),
        b'+' => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as i64;
    }
    Some(if neg { -v } else { v })
}

#[inline]
pub(crate) fn integer(raw: &[u8], column: usize, what: &str) -> Result<i64, FieldError> {
    parse_i64(raw).ok_or_else(|| not_integer(raw, column, what))
}

#[cold]
fn not_integer(raw: &[u8], column: usize, what: &str) -> FieldError {
    FieldError::new(column, format!("expected an integer {what}, found {}", show(raw)))
}

pub(crate) fn parse_f64(raw: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(raw).ok()?;
    let x: f64 = text.trim().parse().ok()?;
    x.is_finite().then_some(x)
}

pub(crate) fn number(raw: &[u8], column: usize, what: &str) -> Result<f64, FieldError> {
    parse_f64(raw).ok_or_else(|| FieldError::new(column, format!("expected a number ({what}), found {}", show(raw))))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(raw: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = raw.get(at..at + n)?;
    s.iter().try_fold(0i64, |v, &b| {
        let d = b.wrapping_sub(b'0');
        (d <= 9).then_some(v * 10 + d as i64)
    })
}

/// ISO-8601 `YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH:MM|±HHMM]` to unix seconds.
pub(crate) fn parse_iso(raw: &[u8]) -> Option<i64> {
    let (y, m, d) = (digits(raw, 0, 4)?, digits(raw, 5, 2)?, digits(raw, 8, 2)?);
    if raw.get(4) != Some(&b'-') || raw.get(7) != Some(&b'-') || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    let mut i = 10;
    if i < raw.len() && (raw[i] == b'T' || raw[i] == b' ') {
        let (hh, mm) = (digits(raw, i + 1, 2)?, digits(raw, i + 4, 2)?);
        if raw.get(i + 3) != Some(&b':') || hh > 23 || mm > 59 {
            return None;
        }
        secs += hh * 3600 + mm * 60;
        i += 6;
        if raw.get(i) == Some(&b':') {
            let ss = digits(raw, i + 1, 2)?;
            if ss > 60 {
                return None;
            }
            secs += ss;
            i += 3;
            if raw.get(i) == Some(&b'.') {
                i += 1;
                while i < raw.len() && raw[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    match raw.get(i) {
        None => Some(secs),
        Some(b'Z') if i + 1 == raw.len() => Some(secs),
        Some(&sign @ (b'+' | b'-')) => {
            let hh = digits(raw, i + 1, 2)?;
            let rest = &raw[i + 3..];
            let mm = match rest {
                [] => 0,
                [b':', a, b] | [a, b] => digits(&[*a, *b], 0, 2)?,
                _ => return None,
            };
            let offset = hh * 3600 + mm * 60;
            Some(if sign == b'+' { secs - offset } else { secs + offset })
        }
        _ => None,
    }
}

/// Largest accepted |timestamp| in unix seconds (2^53 - 1, about 285 million years): times stay
/// exact as doubles and differences of two times can never overflow.
pub(crate) const MAX_ABS_SECONDS: i64 = (1 << 53) - 1;

/// Why a field is not a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTime {
    Malformed,
    OutOfRange,
}

/// An integer of any length with optional sign, or None if anything else; `Err` when it does
/// not fit in an i128 (far out of any time range).
fn parse_long_integer(raw: &[u8]) -> Option<Result<i128, BadTime>> {
    let (neg, digits) = match raw.first()? {
        b'-' => (true, &raw[1..]),
        b'+' => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits.iter().try_fold(0i128, |v, &b| v.checked_mul(10)?.checked_add((b - b'0') as i128));
    Some(v.map(|v| if neg { -v } else { v }).ok_or(BadTime::OutOfRange))
}

/// A timestamp in unix seconds: from unix time (integer or decimal; milliseconds when `unit_ms`)
/// or ISO-8601; `OutOfRange` beyond [`MAX_ABS_SECONDS`].
pub(crate) fn parse_time(raw: &[u8], unit_ms: bool) -> Result<i64, BadTime> {
    let in_range =
        |secs: i64| if secs.unsigned_abs() <= MAX_ABS_SECONDS as u64 { Ok(secs) } else { Err(BadTime::OutOfRange) };
    let scale = |v: i64| if unit_ms { v.div_euclid(1000) } else { v };
    // Up to 18 digits: |v| < 10^18, no overflow.
    if let Some(v) = parse_i64(raw) {
        return in_range(scale(v));
    }
    if let Some(v) = parse_long_integer(raw) {
        let secs = if unit_ms { v?.div_euclid(1000) } else { v? };
        return i64::try_from(secs).map_err(|_| BadTime::OutOfRange).and_then(in_range);
    }
    if raw.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-')
        && !raw.contains(&b':')
        && raw.get(4) != Some(&b'-')
    {
        let x = parse_f64(raw).ok_or(BadTime::Malformed)?;
        let secs = (if unit_ms { x / 1000.0 } else { x }).floor();
        return if secs.abs() <= MAX_ABS_SECONDS as f64 { Ok(secs as i64) } else { Err(BadTime::OutOfRange) };
    }
    parse_iso(raw).ok_or(BadTime::Malformed).and_then(in_range)
}

pub(crate) fn timestamp(raw: &[u8], column: usize, unit_ms: bool) -> Result<i64, FieldError> {
    parse_time(raw, unit_ms).map_err(|bad| bad_time(raw, column, unit_ms, bad))
}

#[cold]
fn bad_time(raw: &[u8], column: usize, unit_ms: bool, bad: BadTime) -> FieldError {
    let message = match (bad, unit_ms) {
        (BadTime::Malformed, _) => {
            format!("expected a timestamp (unix seconds or ISO-8601 like 2009-05-04T23:08:57Z), found {}", show(raw))
        }
        (BadTime::OutOfRange, false) => {
            format!("expected a timestamp within ±{MAX_ABS_SECONDS} unix seconds (|t| < 2^53), found {}", show(raw))
        }
        (BadTime::OutOfRange, true) => format!(
            "expected a timestamp within ±{MAX_ABS_SECONDS} unix seconds (|t| < 2^53 s; read as milliseconds), found {}",
            show(raw)
        ),
    };
    FieldError::new(column, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_and_unix_times() {
        assert_eq!(parse_iso(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso(b"2009-05-04T23:08:57Z"), Some(1_241_478_537));
        assert_eq!(parse_iso(b"2009-05-04 23:08:57"), Some(1_241_478_537));
        assert_eq!(parse_iso(b"2009-05-05T01:08:57+02:00"), Some(1_241_478_537));
        assert_eq!(parse_iso(b"2000-02-29"), Some(951_782_400));
        assert_eq!(parse_iso(b"2009-13-04T23:08:57Z"), None);
        assert_eq!(parse_iso(b"2009-05-04T23:08:57Zx"), None);
        assert_eq!(parse_time(b"1241478537", false), Ok(1_241_478_537));
        assert_eq!(parse_time(b"1241478537.9", false), Ok(1_241_478_537));
        assert_eq!(parse_time(b"1241478537999", true), Ok(1_241_478_537));
        assert_eq!(parse_time(b"-1.5", false), Ok(-2));
        assert_eq!(parse_time(b"yesterday", false), Err(BadTime::Malformed));
        assert_eq!(parse_time(b"-inf", false), Err(BadTime::Malformed));
    }

    #[test]
    fn times_out_of_range() {
        let max = MAX_ABS_SECONDS;
        assert_eq!(parse_time(max.to_string().as_bytes(), false), Ok(max));
        assert_eq!(parse_time(format!("-{max}").as_bytes(), false), Ok(-max));
        for raw in [
            "9007199254740992",
            "-9007199254740992",
            "99999999999999999999",
            "-9223372036854775808",
            "1e300",
            "-9.1e15",
        ] {
            assert_eq!(parse_time(raw.as_bytes(), false), Err(BadTime::OutOfRange), "{raw}");
        }
        let long = "9".repeat(60);
        assert_eq!(parse_time(long.as_bytes(), false), Err(BadTime::OutOfRange));
        // Milliseconds: 19 digits can be in range, read exactly (no rounding through f64).
        assert_eq!(parse_time(b"9007199254740991999", true), Ok(max));
        assert_eq!(parse_time(b"-9007199254740991000", true), Ok(-max));
        assert_eq!(parse_time(b"-9007199254740991001", true), Err(BadTime::OutOfRange));
        assert_eq!(parse_time(b"9007199254740992000", true), Err(BadTime::OutOfRange));
        let err = timestamp(b"99999999999999999999", 3, false).unwrap_err();
        assert_eq!(err.column, 3);
        assert_eq!(
            err.message,
            "expected a timestamp within ±9007199254740991 unix seconds (|t| < 2^53), found '99999999999999999999'"
        );
        let err = timestamp(b"9007199254740992000", 2, true).unwrap_err();
        assert_eq!(
            err.message,
            "expected a timestamp within ±9007199254740991 unix seconds (|t| < 2^53 s; read as milliseconds), found '9007199254740992000'"
        );
    }

    #[test]
    fn booleans_and_numbers() {
        assert_eq!(strict_bool(b"True", 5), Ok(true));
        assert_eq!(strict_bool(b"false", 5), Ok(false));
        let err = strict_bool(b"maybe", 5).unwrap_err();
        assert_eq!(err.column, 5);
        assert_eq!(err.message, "expected a boolean (True/False/true/false), found 'maybe'");
        assert!(strict_bool(b"1", 1).is_err());
        for (raw, expected) in [
            (&b"true"[..], Some(true)),
            (b"False", Some(false)),
            (b"TRUE", None),
            (b"tRUE", None),
            (b"FALSE", None),
            (b"Falsy", None),
            (b"Tru", None),
            (b"True ", None),
            (b"4rue", None),
            (b"Vrue", None),
            (b"", None),
            (b"Fals\xe5", None),
        ] {
            assert_eq!(strict_bool(raw, 1).ok(), expected, "{raw:?}");
        }
        assert_eq!(lenient_bool(b"1", 1), Ok(true));
        assert_eq!(lenient_bool(b"0.0", 1), Ok(false));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"4.2"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_f64(b"0.25"), Some(0.25));
        assert_eq!(parse_f64(b"nan"), None);
    }

    #[test]
    fn quoted_fields() {
        let line = br#"a,"b,c","say ""hi""",,"e""#;
        let mut spans = Vec::new();
        split_quoted(line, 0, line.len(), b',', &mut spans).unwrap();
        let f = Fields::all(line, &spans);
        let texts: Vec<Vec<u8>> = (0..f.len()).map(|i| f.text(i).into_owned()).collect();
        assert_eq!(texts, vec![b"a".to_vec(), b"b,c".to_vec(), br#"say "hi""#.to_vec(), b"".to_vec(), b"e".to_vec()]);
        let bad = br#"a,"b"#;
        let err = split_quoted(bad, 0, bad.len(), b',', &mut spans).unwrap_err();
        assert_eq!((err.column, err.message.as_str()), (2, "unterminated quoted field"));
    }
}
