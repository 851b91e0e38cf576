//! What the commands print. Results go to stdout, and a stdout that is closed or full (`easel
//! models > /dev/full`, a pager that quit) is an error the command reports, not a panic;
//! notes and progress go to stderr and are best effort.

use std::fmt;
use std::io::Write;

/// Writes one line to stdout.
pub fn line(text: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            anyhow::anyhow!("could not write to standard output ({e}); is it closed or full?")
        })
}

/// Writes one line to stderr; a failure to do so is ignored (there is nowhere to say it).
pub fn note_line(text: fmt::Arguments<'_>) {
    writeln!(std::io::stderr(), "{text}").ok();
}

/// `println!` that returns an error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::console::line(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
macro_rules! note {
    ($($arg:tt)*) => { $crate::console::note_line(format_args!($($arg)*)) };
}

pub(crate) use {note, out};
