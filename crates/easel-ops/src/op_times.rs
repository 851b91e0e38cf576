//! Time spent per op and shape, for finding where a forward pass goes: off unless the
//! environment sets `EASEL_OP_TIMES=1`, then every timed call adds its wall time to a table
//! that `report` prints (calls, total milliseconds, mean) and empties. On Linux the table also
//! shows the cores an op kept busy (the process's CPU time over the op's wall time): an op's
//! serial parts show as less than the machine's cores.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("EASEL_OP_TIMES").is_some_and(|v| v == "1"));

/// One key's calls, total wall seconds and total CPU seconds (of every thread).
#[derive(Default)]
struct Totals {
    calls: usize,
    secs: f64,
    cpu_secs: f64,
}

static TABLE: Mutex<BTreeMap<String, Totals>> = Mutex::new(BTreeMap::new());

/// The CPU seconds every thread of the process has used so far (0 where not measured).
fn process_cpu_secs() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9
    }
    #[cfg(not(target_os = "linux"))]
    {
        0.0
    }
}

/// Runs `run`, adding its wall time under `key()` when timing is on.
pub fn timed<T>(key: impl FnOnce() -> String, run: impl FnOnce() -> T) -> T {
    if !*ENABLED {
        return run();
    }
    let (started, cpu_started) = (Instant::now(), process_cpu_secs());
    let out = run();
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_started;
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(key()).or_default();
    entry.calls += 1;
    entry.secs += secs;
    entry.cpu_secs += cpu_secs;
    out
}

/// The table so far, largest total first, and empties it (None when timing is off).
pub fn report() -> Option<String> {
    if !*ENABLED {
        return None;
    }
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = std::mem::take(&mut *table).into_iter().collect();
    rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs));
    let total: f64 = rows.iter().map(|r| r.1.secs).sum();
    let cpu_total: f64 = rows.iter().map(|r| r.1.cpu_secs).sum();
    let mut out = format!(
        "op times (total {total:.3} s, {:.2} cores busy)\n",
        cpu_total / total.max(1e-9)
    );
    for (key, totals) in rows {
        out += &format!(
            "{:>9.1} ms {:>4} x {:>8.2} ms {:>5.2} cores  {key}\n",
            totals.secs * 1e3,
            totals.calls,
            totals.secs * 1e3 / totals.calls as f64,
            totals.cpu_secs / totals.secs.max(1e-9)
        );
    }
    Some(out)
}
