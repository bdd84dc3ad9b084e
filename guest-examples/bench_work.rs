// The work both benchmark guests do, so licensed and bare differ only in
// licensing. Included by `bench-licensed` and `bench-bare`.

/// FNV-1a over the input, `rounds` times, as hex.
fn work(input: &[u8], rounds: u32) -> Vec<u8> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        for &b in input {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}").into_bytes()
}

/// Rounds of work per call: from an input starting with `work:N`, else 1.
fn rounds(input: &[u8]) -> u32 {
    std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.strip_prefix("work:"))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}
