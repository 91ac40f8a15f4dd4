//! Random hex for names and secrets. A leaf.

/// `bytes` random bytes as lowercase hex (names, secrets).
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
