//! Dataset fingerprints: a sha256 over the source kind, its counts and an evenly spread sample of
//! its contents, so a checkpoint records which data it saw without hashing every byte.

use dim_models::checkpoint::sha256_hex;

/// Bytes taken from each of the sampled windows.
const WINDOW_BYTES: usize = 4096;
/// Number of windows spread over the content; 64 × 4 KiB keeps fingerprinting cheap on any size.
const WINDOWS: usize = 64;

/// Accumulates the fields a fingerprint covers, each length-prefixed so fields cannot run together.
pub(crate) struct Fingerprint {
    input: Vec<u8>,
}

impl Fingerprint {
    /// Starts a fingerprint for a source kind such as "idx" or "cifar10".
    pub(crate) fn new(kind: &str) -> Self {
        let mut fingerprint = Fingerprint { input: Vec::new() };
        fingerprint.add_bytes(kind.as_bytes());
        fingerprint
    }

    /// Adds a count or size.
    pub(crate) fn add_number(&mut self, value: u64) -> &mut Self {
        self.input.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Adds a short field in full (a name, a relative path).
    pub(crate) fn add_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.add_number(bytes.len() as u64);
        self.input.extend_from_slice(bytes);
        self
    }

    /// Adds the content's length and evenly spaced windows of it (all of it when small).
    pub(crate) fn add_content_sample(&mut self, content: &[u8]) -> &mut Self {
        self.add_number(content.len() as u64);
        if content.len() <= WINDOW_BYTES * WINDOWS {
            self.input.extend_from_slice(content);
        } else {
            let last_start = content.len() - WINDOW_BYTES;
            for window in 0..WINDOWS {
                // Multiplying before dividing makes the last window end exactly at the last byte.
                let start = window * last_start / (WINDOWS - 1);
                self.input.extend_from_slice(&content[start..start + WINDOW_BYTES]);
            }
        }
        self
    }

    /// The lower-case hex sha256 of everything added.
    pub(crate) fn finish(&self) -> String {
        sha256_hex(&self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_content_is_sampled_at_both_ends() {
        let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let base = Fingerprint::new("idx").add_content_sample(&content).finish();
        let mut first_changed = content.clone();
        first_changed[0] ^= 1;
        let mut last_changed = content.clone();
        *last_changed.last_mut().unwrap() ^= 1;
        assert_ne!(base, Fingerprint::new("idx").add_content_sample(&first_changed).finish());
        assert_ne!(base, Fingerprint::new("idx").add_content_sample(&last_changed).finish());
        assert_ne!(base, Fingerprint::new("cifar10").add_content_sample(&content).finish());
    }

    #[test]
    fn fields_do_not_run_together() {
        let ab_c = Fingerprint::new("folder").add_bytes(b"ab").add_bytes(b"c").finish();
        let a_bc = Fingerprint::new("folder").add_bytes(b"a").add_bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
