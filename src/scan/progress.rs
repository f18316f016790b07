//! A progress line on a terminal while the clouds are read; nothing otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the line is redrawn at most.
const EVERY: Duration = Duration::from_millis(100);

/// The progress line on standard error.
pub struct Progress {
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    /// A progress line, shown only when standard error is a terminal.
    pub fn new() -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    /// Shows `line` in place of the previous one.
    pub fn say(&self, line: String) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        write!(err, "\r\x1b[2Kscanning {line}").ok();
        err.flush().ok();
    }

    /// Clears the line.
    pub fn clear(&self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
