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
            match fields::parse_f64(f.raw(1)) {
                Some(d) => Ok(Some((f.text(0).into_owned(), d))),
                None if index == 0 => Ok(None),
                None => Err(FieldError::new(2, format!("expected a duration in seconds, found {}", fields::show(f.raw(1))))),
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
