//! How much memory this process holds resident, for memory checks in
//! benchmarks and soak tests.

/// Resident memory of this process in bytes (`VmRSS` in
/// `/proc/self/status`); `None` where the system does not report it.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::resident_memory_bytes;

    #[test]
    #[cfg(target_os = "linux")]
    fn memory_written_to_counts_as_resident() {
        const TOUCHED: u64 = 128 << 20;
        let before = resident_memory_bytes().expect("Linux reports VmRSS");
        let block = std::hint::black_box(vec![1u8; TOUCHED as usize]);
        let during = resident_memory_bytes().expect("Linux reports VmRSS");
        drop(block);
        assert!(
            during >= before + TOUCHED * 3 / 4,
            "{} MiB written, resident memory went from {before} to {during} bytes",
            TOUCHED >> 20
        );
    }
}
