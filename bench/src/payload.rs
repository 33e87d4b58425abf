//! The load tester's message format: who sent it, its sequence number, and when (nanoseconds
//! since the tester started, from one monotonic clock), padded to the requested size.
//!
//! - **Text** (the default; works with parties that only take text, like `main`):
//!   `PLB1` + sender, seq and send time as 16 lowercase hex digits each (52 bytes), then `.`
//!   up to the size.
//! - **Binary** (`--binary`): `PLB1` + sender, seq and send time as little-endian u64 (28
//!   bytes), then zero bytes up to the size.
//!
//! Frames that do not start with the magic (a chat party's history on connect, say) are not
//! the tester's and are counted apart.

/// First four bytes of every payload.
pub const MAGIC: &[u8; 4] = b"PLB1";
/// Smallest text payload.
pub const TEXT_MIN: usize = 4 + 3 * 16;
/// Smallest binary payload.
pub const BINARY_MIN: usize = 4 + 3 * 8;

/// What a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sending client's index.
    pub sender: u64,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// Send time in nanoseconds since the tester's clock base.
    pub sent_ns: u64,
}

/// The smallest message size for the encoding.
pub fn min_size(binary: bool) -> usize {
    if binary {
        BINARY_MIN
    } else {
        TEXT_MIN
    }
}

/// Encodes a text payload of `size` bytes (at least [`TEXT_MIN`]).
pub fn encode_text(stamp: Stamp, size: usize) -> String {
    let mut s = String::with_capacity(size.max(TEXT_MIN));
    s.push_str("PLB1");
    for v in [stamp.sender, stamp.seq, stamp.sent_ns] {
        push_hex(&mut s, v);
    }
    while s.len() < size {
        s.push('.');
    }
    s
}

/// Encodes a binary payload of `size` bytes (at least [`BINARY_MIN`]).
pub fn encode_binary(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size.max(BINARY_MIN));
    b.extend_from_slice(MAGIC);
    for v in [stamp.sender, stamp.seq, stamp.sent_ns] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.resize(size.max(BINARY_MIN), 0);
    b
}

/// Decodes a text payload; `None` if it is not one.
pub fn decode_text(b: &[u8]) -> Option<Stamp> {
    if b.len() < TEXT_MIN || &b[..4] != MAGIC {
        return None;
    }
    Some(Stamp { sender: parse_hex(&b[4..20])?, seq: parse_hex(&b[20..36])?, sent_ns: parse_hex(&b[36..52])? })
}

/// Decodes a binary payload; `None` if it is not one.
pub fn decode_binary(b: &[u8]) -> Option<Stamp> {
    if b.len() < BINARY_MIN || &b[..4] != MAGIC {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    Some(Stamp { sender: u(4), seq: u(12), sent_ns: u(20) })
}

fn push_hex(s: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        s.push(DIGITS[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// Hex digit values by byte; 0xff for a byte that is not a hex digit.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        t[b"0123456789ABCDEF"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Parses hex digits (run for every frame the tester receives: one table load per digit, and
/// one check at the end).
fn parse_hex(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    let mut bad = 0u8;
    for &c in b {
        let d = HEX[c as usize];
        bad |= d;
        v = (v << 4) | u64::from(d & 0xf);
    }
    (bad & 0xf0 == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp { sender: 0xdead_beef, seq: u64::MAX, sent_ns: 1_234_567_890_123 };

    #[test]
    fn text_round_trips_at_every_size() {
        for size in [0, TEXT_MIN, 64, 1000] {
            let t = encode_text(S, size);
            assert_eq!(t.len(), size.max(TEXT_MIN));
            assert!(t.is_ascii());
            assert_eq!(decode_text(t.as_bytes()), Some(S));
        }
        let zero = Stamp { sender: 0, seq: 0, sent_ns: 0 };
        assert_eq!(decode_text(encode_text(zero, 64).as_bytes()), Some(zero));
    }

    #[test]
    fn binary_round_trips_at_every_size() {
        for size in [0, BINARY_MIN, 64, 4096] {
            let b = encode_binary(S, size);
            assert_eq!(b.len(), size.max(BINARY_MIN));
            assert_eq!(decode_binary(&b), Some(S));
        }
    }

    #[test]
    fn every_byte_is_a_hex_digit_or_refused() {
        for c in 0..=255u8 {
            let want = (c as char).to_digit(16).map(u64::from);
            assert_eq!(parse_hex(&[b'0', c]), want, "byte {c:#04x}");
        }
        assert_eq!(parse_hex(b"00000000DEADbeef"), Some(0xdead_beef));
        assert_eq!(parse_hex(b"ffffffffffffffff"), Some(u64::MAX));
    }

    #[test]
    fn foreign_frames_are_not_payloads() {
        assert_eq!(decode_text(b"[]"), None);
        assert_eq!(decode_text(b"[\"hello\",\"world\",\"and a long chat message here!!\"]"), None);
        let mut t = encode_text(S, 64).into_bytes();
        t[10] = b'z';
        assert_eq!(decode_text(&t), None, "non-hex digit");
        let mut b = encode_binary(S, 64);
        b[0] = b'X';
        assert_eq!(decode_binary(&b), None);
        assert_eq!(decode_binary(&b[..BINARY_MIN - 1]), None);
        // A text payload is not a binary one and the other way round (different lengths/digits).
        assert_ne!(decode_binary(encode_text(S, 64).as_bytes()), Some(S));
    }
}
