//! Time spent per op and shape, for finding where a forward pass goes: off unless the
//! environment sets `EASEL_OP_TIMES=1`, then every timed call adds its wall time to a table
//! that `report` prints (calls, total milliseconds, mean) and empties.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("EASEL_OP_TIMES").is_some_and(|v| v == "1"));

/// Per key: calls and total seconds.
static TABLE: Mutex<BTreeMap<String, (usize, f64)>> = Mutex::new(BTreeMap::new());

/// Runs `run`, adding its wall time under `key()` when timing is on.
pub fn timed<T>(key: impl FnOnce() -> String, run: impl FnOnce() -> T) -> T {
    if !*ENABLED {
        return run();
    }
    let started = Instant::now();
    let out = run();
    let secs = started.elapsed().as_secs_f64();
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(key()).or_default();
    entry.0 += 1;
    entry.1 += secs;
    out
}

/// The table so far, largest total first, and empties it (None when timing is off).
pub fn report() -> Option<String> {
    if !*ENABLED {
        return None;
    }
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = std::mem::take(&mut *table).into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let total: f64 = rows.iter().map(|r| r.1 .1).sum();
    let mut out = format!("op times (total {:.3} s)\n", total);
    for (key, (calls, secs)) in rows {
        out += &format!(
            "{:>9.1} ms {:>4} x {:>8.2} ms  {key}\n",
            secs * 1e3,
            calls,
            secs * 1e3 / calls as f64
        );
    }
    Some(out)
}
