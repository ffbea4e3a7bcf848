//! Track-duration tables: `track_id, duration_seconds` (tab- or comma-separated, plain or gzip,
//! optional header line). Keys must match the item keys of the log (for LFM-1K rows without a
//! track id: `artist\x1ftrack`).

use std::io::Read;
use std::path::Path;

use ahash::AHashMap;

use super::fields::{self, FieldError, Fields, Span};
use crate::error::{Error, Location, Result};

pub(crate) fn read(path: &Path) -> Result<AHashMap<Vec<u8>, f64>> {
    let io = |source| Error::Io { file: path.to_path_buf(), source };
    let mut data = Vec::new();
    let file = std::fs::File::open(path).map_err(io)?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut data)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut data)
    }
    .map_err(io)?;
    let delimiter = if memchr::memchr(b'\t', &data).is_some() { b'\t' } else { b',' };
    let mut table = AHashMap::new();
    let mut spans: Vec<Span> = Vec::new();
    for (index, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let parsed = fields::split_quoted(line, 0, line.len(), delimiter, &mut spans).and_then(|()| {
            let f = Fields::all(line, &spans);
            f.expect_count(2, delimiter)?;
            // Unlike `fields::parse_f64`, this reads `nan`/`inf` too, so they are reported rather
            // than taken for a header.
            let number = std::str::from_utf8(f.raw(1)).ok().and_then(|t| t.trim().parse::<f64>().ok());
            match number {
                Some(d) if d.is_finite() && d >= 0.0 => Ok(Some((f.text(0).into_owned(), d))),
                None if index == 0 => Ok(None),
                _ => Err(FieldError::new(
                    2,
                    format!("expected a duration in seconds (a finite number >= 0), found {}", fields::show(f.raw(1))),
                )),
            }
        });
        match parsed {
            Ok(Some((key, d))) => {
                table.insert(key, d);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Error::Parse {
                    at: Location { file: path.to_path_buf(), line: index as u64 + 1, column: e.column },
                    message: e.message,
                })
            }
        }
    }
    if table.is_empty() {
        return Err(Error::Input { file: path.to_path_buf(), message: "no durations found".into() });
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> (std::path::PathBuf, Result<AHashMap<Vec<u8>, f64>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dur.tsv");
        std::fs::write(&path, text).unwrap();
        let table = read(&path);
        (path, table)
    }

    #[test]
    fn header_and_values() {
        let (_, table) = read_text("track_id\tduration_seconds\nT1\t200.5\nT2\t0\n");
        let table = table.unwrap();
        assert_eq!((table[&b"T1"[..]], table[&b"T2"[..]], table.len()), (200.5, 0.0, 2));
        let (_, table) = read_text("T1,90\n");
        assert_eq!(table.unwrap()[&b"T1"[..]], 90.0);
    }

    #[test]
    fn negative_and_non_finite_durations_are_rejected() {
        for (text, at, found) in [
            ("track_id\tduration_seconds\nT1\t200\nT2\t-5\n", 3, "'-5'"),
            ("T1\tnan\n", 1, "'nan'"),
            ("T1\t-inf\n", 1, "'-inf'"),
            ("T1\t200\nT2\tinf\n", 2, "'inf'"),
            ("T1\t200\nT2\tlong\n", 2, "'long'"),
        ] {
            let (path, table) = read_text(text);
            let err = table.unwrap_err().to_string();
            let expected = format!(
                "{}:{at}:2: expected a duration in seconds (a finite number >= 0), found {found}",
                path.display()
            );
            assert_eq!(err, expected);
        }
    }
}
