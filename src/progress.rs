//! Progress of a long command on stderr: a live `indicatif` bar on a terminal, plain lines
//! (at most two a second, and the last one always) when stderr is a file or a pipe, so logs
//! and CI output stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Denoising steps.
    Steps,
    /// Bytes of a download.
    Bytes,
}

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_millis(500);

/// A progress display on stderr.
pub enum Progress {
    /// A bar redrawn in place.
    Bar(ProgressBar),
    /// Lines, for redirected stderr.
    Lines {
        /// What is counted.
        unit: Unit,
        /// When the last line was written.
        last: Option<Instant>,
        /// When counting began, for the rate.
        started: Instant,
    },
}

impl Progress {
    /// A bar on a terminal, else plain lines.
    pub fn new(unit: Unit) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(unit)
        } else {
            Self::Lines {
                unit,
                last: None,
                started: Instant::now(),
            }
        }
    }

    fn bar(unit: Unit) -> Self {
        let template = match unit {
            Unit::Steps => "{bar:30} step {pos}/{len}  {msg}",
            Unit::Bytes => {
                "{bar:30} {bytes}/{total_bytes}  {bytes_per_sec}  {eta} left  {wide_msg}"
            }
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(style);
        Self::Bar(bar)
    }

    /// `done` of `total`, with a `message` (the file being fetched, the time per step).
    pub fn update(&mut self, done: u64, total: u64, message: &str) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(message.to_string());
            }
            Self::Lines {
                unit,
                last,
                started,
            } => {
                let due = last.is_none_or(|t| t.elapsed() >= LINE_INTERVAL);
                if !(due || done >= total) {
                    return;
                }
                *last = Some(Instant::now());
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let line = match unit {
                    Unit::Steps => format!("step {done}/{total}  {message}"),
                    Unit::Bytes => {
                        let percent = 100.0 * done as f64 / total.max(1) as f64;
                        format!(
                            "{percent:5.1}%  {:.1} of {:.1} MB  {:.1} MB/s  {message}",
                            done as f64 / 1e6,
                            total as f64 / 1e6,
                            done as f64 / 1e6 / secs
                        )
                    }
                };
                crate::console::note!("{line}");
            }
        }
    }

    /// Says `text` without breaking the bar.
    pub fn say(&self, text: &str) {
        match self {
            Self::Bar(bar) => bar.suspend(|| crate::console::note!("{text}")),
            Self::Lines { .. } => crate::console::note!("{text}"),
        }
    }

    /// Takes the bar off the screen; what follows says how it ended.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
