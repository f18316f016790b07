//! The live progress line while a command waits: on a terminal a spinner with the elapsed
//! time and a line per phase change; elsewhere (a pipe, a log) one plain line per change.
//! Both go to stderr, so stdout carries only the result.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::output::Palette;

/// The spinner's frames (the last one is shown when it stops).
pub const SPINNER: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓";

/// Reports a wait as it goes.
pub struct Progress {
    bar: ProgressBar,
    what: String,
    started: Instant,
    last: Option<(String, String)>,
    palette: Palette,
}

impl Progress {
    /// Starts reporting on waiting for `what` (e.g. `accessrequest/web-x7k2q`).
    pub fn start(what: &str) -> Progress {
        // Draws on stderr, and hides itself when stderr is not a terminal.
        let bar = ProgressBar::new_spinner();
        let palette = Palette::stderr();
        if !bar.is_hidden() {
            let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .tick_chars(SPINNER);
            bar.set_style(style);
            bar.set_message(format!("waiting for {what}"));
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        Progress {
            bar,
            what: what.to_string(),
            started: Instant::now(),
            last: None,
            palette,
        }
    }

    /// Whether this is the live (terminal) form.
    pub fn live(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Reports the current phase and message; prints only when they changed.
    pub fn update(&mut self, phase: &str, message: &str) {
        let now = (phase.to_string(), message.to_string());
        if self.last.as_ref() == Some(&now) {
            return;
        }
        self.last = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let message = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        if self.live() {
            self.bar.println(format!(
                "  {} {}{message}",
                self.palette.dim(&format!("{elapsed:>5.1}s")),
                self.palette.phase(phase)
            ));
            self.bar
                .set_message(format!("{} {}", self.what, self.palette.phase(phase)));
        } else {
            eprintln!("[{elapsed:>5.1}s] {} {phase}{message}", self.what);
        }
    }

    /// Says something between phase changes (e.g. a fallback from watching to polling).
    pub fn note(&self, text: &str) {
        if self.live() {
            self.bar.println(format!("  {}", self.palette.dim(text)));
        } else {
            eprintln!("{text}");
        }
    }

    /// Removes the live line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Time since the wait started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
