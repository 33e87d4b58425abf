//! The y-websocket message format that y-partykit's provider speaks, on lib0's variable-length
//! integers: every frame is binary and starts with a message type.
//!
//! | type | then | meaning |
//! |---|---|---|
//! | `0` sync | `0` + state vector | SyncStep1: "send me what I miss" |
//! | `0` sync | `1` + update | SyncStep2: the answer to a SyncStep1 |
//! | `0` sync | `2` + update | an update |
//! | `1` awareness | awareness update | presence states (see [`crate::awareness`]) |
//! | `2` auth | reason | permission denied (never sent by this server) |
//! | `3` query awareness | | ask for every awareness state (ignored by servers) |
//!
//! Byte strings are a varUint length and the bytes; strings are byte strings of UTF-8.
//! Decoding borrows from the frame, so relaying a large update copies it once.

/// Message type of sync messages.
pub const MESSAGE_SYNC: u64 = 0;
/// Message type of awareness messages.
pub const MESSAGE_AWARENESS: u64 = 1;
/// Message type of auth messages.
pub const MESSAGE_AUTH: u64 = 2;
/// Message type of awareness queries.
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;
/// Sync sub-type: a state vector.
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-type: the update answering a state vector.
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-type: an update.
pub const SYNC_UPDATE: u64 = 2;

/// lib0 integers are JavaScript numbers: at most 53 bits.
const MAX_SAFE_BITS: u32 = 53;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended inside a value.
    #[error("the message ends early")]
    UnexpectedEnd,
    /// A variable-length integer is longer than 53 bits.
    #[error("an integer is larger than 2^53")]
    IntegerTooLarge,
    /// A string is not UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// A sync message of an unknown sub-type.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
}

/// One decoded frame from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// SyncStep1 with the sender's encoded state vector.
    SyncStep1(&'a [u8]),
    /// SyncStep2 with an encoded update.
    SyncStep2(&'a [u8]),
    /// An encoded update.
    Update(&'a [u8]),
    /// An encoded awareness update.
    Awareness(&'a [u8]),
    /// An auth message (only servers send these; ignored).
    Auth,
    /// A query for every awareness state (ignored by servers).
    QueryAwareness,
    /// A message type this protocol does not define (ignored).
    Unknown(u64),
}

/// Decodes one frame. Bytes after the message are ignored, as y-protocols does.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut r = Reader::new(frame);
    Ok(match r.var_uint()? {
        MESSAGE_SYNC => match r.var_uint()? {
            SYNC_STEP1 => Frame::SyncStep1(r.var_bytes()?),
            SYNC_STEP2 => Frame::SyncStep2(r.var_bytes()?),
            SYNC_UPDATE => Frame::Update(r.var_bytes()?),
            other => return Err(DecodeError::UnknownSyncType(other)),
        },
        MESSAGE_AWARENESS => Frame::Awareness(r.var_bytes()?),
        MESSAGE_AUTH => Frame::Auth,
        MESSAGE_QUERY_AWARENESS => Frame::QueryAwareness,
        other => Frame::Unknown(other),
    })
}

/// `SyncStep1` carrying an encoded state vector.
pub fn sync_step1(state_vector: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP1, state_vector)
}

/// `SyncStep2` carrying an encoded update.
pub fn sync_step2(update: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP2, update)
}

/// An update message.
pub fn update(update: &[u8]) -> Vec<u8> {
    sync(SYNC_UPDATE, update)
}

/// An awareness message carrying an encoded awareness update.
pub fn awareness(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    write_var_uint(&mut out, MESSAGE_AWARENESS);
    write_var_bytes(&mut out, payload);
    out
}

fn sync(kind: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    write_var_uint(&mut out, MESSAGE_SYNC);
    write_var_uint(&mut out, kind);
    write_var_bytes(&mut out, payload);
    out
}

/// Appends `n` as a lib0 varUint: 7 bits per byte, least significant first, high bit set on
/// every byte but the last.
pub fn write_var_uint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends a length-prefixed byte string.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a length-prefixed UTF-8 string.
pub fn write_var_string(out: &mut Vec<u8>, s: &str) {
    write_var_bytes(out, s.as_bytes());
}

/// Reads lib0-encoded values from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads a varUint (at most 53 bits, as lib0 can produce).
    pub fn var_uint(&mut self) -> Result<u64, DecodeError> {
        let mut n: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
            self.pos += 1;
            let bits = u64::from(b & 0x7f);
            if shift >= MAX_SAFE_BITS || (shift > 0 && bits >> (MAX_SAFE_BITS - shift) != 0) {
                return Err(DecodeError::IntegerTooLarge);
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
            shift += 7;
        }
    }

    /// Reads a length-prefixed byte string.
    pub fn var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.var_uint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::UnexpectedEnd)?;
        let end = self.pos.checked_add(len).ok_or(DecodeError::UnexpectedEnd)?;
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn var_string(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var_uint(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_var_uint(&mut out, n);
        out
    }

    #[test]
    fn var_uint_matches_lib0() {
        // Byte sequences lib0's encoding.writeVarUint produces.
        assert_eq!(var_uint(0), [0x00]);
        assert_eq!(var_uint(1), [0x01]);
        assert_eq!(var_uint(127), [0x7f]);
        assert_eq!(var_uint(128), [0x80, 0x01]);
        assert_eq!(var_uint(300), [0xac, 0x02]);
        assert_eq!(var_uint(2_000_021), [0x95, 0x89, 0x7a]);
        assert_eq!(var_uint((1 << 53) - 1), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[test]
    fn var_uint_round_trips_and_rejects_overlong() {
        for n in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, (1 << 53) - 1] {
            let bytes = var_uint(n);
            let mut r = Reader::new(&bytes);
            assert_eq!(r.var_uint(), Ok(n));
            assert!(r.is_empty());
        }
        assert_eq!(Reader::new(&var_uint(1 << 53)).var_uint(), Err(DecodeError::IntegerTooLarge));
        assert_eq!(Reader::new(&[0xff; 12]).var_uint(), Err(DecodeError::IntegerTooLarge));
        assert_eq!(Reader::new(&[0x80, 0x80]).var_uint(), Err(DecodeError::UnexpectedEnd));
        assert_eq!(Reader::new(&[]).var_uint(), Err(DecodeError::UnexpectedEnd));
    }

    #[test]
    fn frames_from_the_wire() {
        // What y-partykit's server and provider send for an empty document.
        assert_eq!(sync_step1(&[0x00]), [0x00, 0x00, 0x01, 0x00]);
        assert_eq!(sync_step2(&[0x00, 0x00]), [0x00, 0x01, 0x02, 0x00, 0x00]);
        assert_eq!(decode(&[0x00, 0x00, 0x01, 0x00]), Ok(Frame::SyncStep1(&[0x00])));
        assert_eq!(decode(&[0x00, 0x01, 0x02, 0x00, 0x00]), Ok(Frame::SyncStep2(&[0x00, 0x00])));
        assert_eq!(decode(&update(b"xyz")), Ok(Frame::Update(b"xyz")));
        assert_eq!(decode(&awareness(b"\x00")), Ok(Frame::Awareness(b"\x00")));
        assert_eq!(decode(&[0x02, 0x00, 0x00]), Ok(Frame::Auth));
        assert_eq!(decode(&[0x03]), Ok(Frame::QueryAwareness));
        assert_eq!(decode(&[0x07, 0x01]), Ok(Frame::Unknown(7)));
        // Trailing bytes are ignored, as y-protocols does.
        assert_eq!(decode(&[0x00, 0x02, 0x01, 0x09, 0xee]), Ok(Frame::Update(&[0x09])));
    }

    #[test]
    fn large_payload_round_trips() {
        let big = vec![0xabu8; 2_000_000];
        let frame = update(&big);
        assert_eq!(&frame[..2], [0x00, 0x02]);
        assert_eq!(frame.len(), big.len() + 2 + 3);
        assert_eq!(decode(&frame), Ok(Frame::Update(&big[..])));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(decode(&[0x00]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(decode(&[0x00, 0x05, 0x00]), Err(DecodeError::UnknownSyncType(5)));
        // Length says 10, 2 bytes follow.
        assert_eq!(decode(&[0x00, 0x02, 0x0a, 0x01, 0x02]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(decode(&[0x01]), Err(DecodeError::UnexpectedEnd));
        // A length near 2^53 must not overflow.
        let mut huge = vec![0x00, 0x02];
        write_var_uint(&mut huge, (1 << 53) - 1);
        assert_eq!(decode(&huge), Err(DecodeError::UnexpectedEnd));
        let mut r = Reader::new(&[0x02, 0xc3, 0x28]);
        assert_eq!(r.var_string(), Err(DecodeError::InvalidUtf8));
    }
}
