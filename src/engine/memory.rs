//! Memory reports: what the process and its loaded weights take.

/// Memory in use, as far as this platform can tell.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryReport {
    /// "cpu", "cuda:0", "metal:0".
    pub device: String,
    /// Resident set size of the process, where the OS tells it.
    pub process_rss_bytes: Option<u64>,
    /// Bytes of weights held per loaded component, `(component, bytes)`.
    pub weights_bytes: Vec<(&'static str, u64)>,
}

impl MemoryReport {
    /// Total bytes of loaded weights.
    pub fn total_weights_bytes(&self) -> u64 {
        self.weights_bytes.iter().map(|(_, b)| b).sum()
    }
}

/// The process's resident set size, read from `/proc/self/statm` on Linux.
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * 4096)
}
