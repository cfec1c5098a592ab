//! [`StateHasher`]: the hasher behind [`crate::Sim::state_digest`] and the model checker's
//! state merging. SipHash (std's default) is built to resist chosen inputs, which a state
//! digest does not need, and was the largest single cost of `type1 check`. This one folds
//! 8-byte words through two 64x64->128-bit multiply lanes; what matters here is that distinct
//! states rarely collide (a collision would merge two states and prune one), and every input
//! word reaches both lanes.

use std::hash::Hasher;

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;
const K2: u64 = 0xa409_3822_299f_31d0;

/// The high and low halves of a full product, folded.
#[inline]
fn fold(x: u64, y: u64) -> u64 {
    let r = u128::from(x) * u128::from(y);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A fast, non-cryptographic 64-bit hasher for state digests (not for hash tables that take
/// untrusted keys).
#[derive(Clone, Copy, Debug)]
pub struct StateHasher {
    a: u64,
    b: u64,
    len: u64,
}

impl Default for StateHasher {
    fn default() -> Self {
        StateHasher {
            a: K0,
            b: K1,
            len: 0,
        }
    }
}

impl StateHasher {
    #[inline]
    fn word(&mut self, w: u64) {
        self.a = fold(self.a ^ w, K1);
        self.b = fold(self.b.rotate_left(29) ^ w, K2);
    }
}

impl Hasher for StateHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length tag keeps "ab" + "" apart from "a" + "b".
            self.word(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.len = self.len.wrapping_add(8);
        self.word(i);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i) | (4 << 59));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i) | (1 << 59));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.a ^ self.len, self.b ^ K0) ^ self.b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::Hash;

    fn h(v: impl Hash) -> u64 {
        let mut s = StateHasher::default();
        v.hash(&mut s);
        s.finish()
    }

    #[test]
    fn equal_inputs_equal_digests_and_order_matters() {
        assert_eq!(h((1u64, [7u8; 64])), h((1u64, [7u8; 64])));
        assert_ne!(h((1u64, 2u64)), h((2u64, 1u64)));
        assert_ne!(h(("ab", "")), h(("a", "b")));
    }

    #[test]
    fn no_collision_among_a_million_near_identical_states() {
        // Cache lines that differ in a few low bits of one word, as neighbouring states do.
        let mut seen = HashSet::new();
        for n in 0..1u64 << 20 {
            let mut line = [0u8; 64];
            line[8..16].copy_from_slice(&n.to_le_bytes());
            assert!(seen.insert(h((n % 7, line))), "collision at {n}");
        }
    }
}
