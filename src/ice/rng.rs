//! A tiny seedable PRNG (SplitMix64) so every random choice of the agent is reproducible
//! from [`IceConfig::seed`](super::IceConfig::seed). Not cryptographic: for
//! unpredictable credentials in production seed it per agent from a CSPRNG seeded by the OS.

/// The ice-char alphabet (RFC 8445 §15.1 / RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/".
pub(crate) const ICE_CHARS: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), multiply-shift.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Fills `out` with random ice-chars, one draw per char, and returns it as text.
    pub(crate) fn ice_chars<'a>(&mut self, out: &'a mut [u8]) -> &'a str {
        for b in out.iter_mut() {
            *b = ICE_CHARS[self.below(ICE_CHARS.len() as u64) as usize];
        }
        std::str::from_utf8(out).unwrap_or("")
    }
}
