//! Memory reports: what the process and its loaded weights take.

/// Memory in use, as far as this platform can tell.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryReport {
    /// "cpu", "cuda:0", "metal:0".
    pub device: String,
    /// Resident set size of the process, where the OS tells it.
    pub process_rss_bytes: Option<u64>,
    /// Bytes of weights held, per model and component.
    pub weights_bytes: Vec<HeldWeights>,
    /// The machine's memory, `(total, available)` bytes, where the OS tells it (on the CPU
    /// this is what the weights and activations compete for).
    pub system_bytes: Option<(u64, u64)>,
    /// The GPU's memory, `(used, limit)` bytes: CUDA's used and total, Metal's allocated and
    /// recommended working set; `None` on the CPU.
    pub device_bytes: Option<(u64, u64)>,
}

/// The weights of one loaded component.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldWeights {
    /// The model folder's name.
    pub model: String,
    /// `text_encoder`, `text_encoder_2`, `unet`, `vae`.
    pub component: &'static str,
    /// Bytes of its weight files.
    pub bytes: u64,
}

impl MemoryReport {
    /// Total bytes of loaded weights.
    pub fn total_weights_bytes(&self) -> u64 {
        self.weights_bytes.iter().map(|w| w.bytes).sum()
    }
}

/// The process's resident set size, on every platform `sysinfo` knows (Linux, macOS,
/// Windows).
pub fn process_rss_bytes() -> Option<u64> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map(sysinfo::Process::memory)
}

/// The machine's `(total, available)` memory, on every platform `sysinfo` knows; `None`
/// where it reports nothing.
pub fn system_memory_bytes() -> Option<(u64, u64)> {
    let mut system = sysinfo::System::new();
    system.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
    let total = system.total_memory();
    (total > 0).then(|| (total, system.available_memory()))
}

/// The anonymous part of the process's resident set (heap and stacks, not the mapped code
/// and files that the OS can drop at will), from `RssAnon` in `/proc/self/status` on Linux.
pub fn process_anon_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's peak resident set size since start or the last `reset_peak_rss`, read from
/// `VmHWM` in `/proc/self/status` on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident set size to the current one (Linux 4.0 and later); false where
/// the platform can't, in which case `peak_rss_bytes` is the peak since the process started.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Gives the heap's freed pages back to the OS, the large blocks the allocator keeps for reuse
/// (`block_cache`) first. glibc keeps freed memory in its arenas for reuse, so without this the
/// RSS after unloading a model stays near its peak although nothing uses the memory; other
/// allocators return it by themselves.
pub fn return_freed_heap() {
    super::block_cache::release_cached_blocks();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free pages of glibc's own arenas; it takes no
    // pointers and is safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc arenas the process may use: the engine thread, its worker threads and the UI then
/// share two heaps instead of one each.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's heaps at `MALLOC_ARENAS`. glibc gives every allocating thread a heap of its
/// own, and memory freed into one heap cannot serve another: with the compute threads' heaps
/// beside the engine thread's, the SD 1.5 peak was 0.67 GB higher (4.98 against 4.31 GB at
/// 256 px, the step time the same). Call it first thing in `main`, before threads start;
/// other allocators need nothing.
pub fn limit_heap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes a tuning parameter of glibc's allocator; it takes no
    // pointers and is documented as callable at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_the_machine_report_their_memory() {
        let rss = process_rss_bytes().unwrap_or(0);
        let (total, available) = system_memory_bytes().unwrap_or((0, 0));
        assert!(rss > 1 << 20, "{rss}");
        assert!(total > rss && available <= total, "{total} {available}");
    }
}
