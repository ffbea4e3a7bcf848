//! Errors of the core, each carrying where in the input it happened.

use std::fmt;
use std::path::PathBuf;

/// Where in an input file a problem was found (1-based line and column; column 0 = whole line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column > 0 {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// Malformed input: the location, and what was expected there.
    Parse { at: Location, message: String },
    /// The input as a whole is unusable (empty, missing column, unreadable).
    Input { file: PathBuf, message: String },
    /// An operating-system I/O error.
    Io { file: PathBuf, source: std::io::Error },
    /// A caller passed an impossible argument.
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse { at, message } => write!(f, "{at}: {message}"),
            Error::Input { file, message } => write!(f, "{}: {message}", file.display()),
            Error::Io { file, source } => write!(f, "{}: {source}", file.display()),
            Error::Config(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
