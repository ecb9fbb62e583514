//! The stored form of an entry on byte backends (Redis): a fixed binary header
//! followed by the value's serde_json payload.
//!
//! ```text
//! offset  size  field
//!      0     1  magic 0xCA
//!      1     1  format version (1)
//!      2     8  type fingerprint (XXH3-64 of the Rust type name), LE
//!     10     8  created at, unix ms, LE
//!     18     4  load time, µs, LE (saturating)
//!     22     8  logical expiry, unix ms, LE
//!     30     8  stale-until (end of the stale window), unix ms, LE
//!     38     1  flags: bit 0 set = a cached `None` (no payload follows)
//!     39     …  serde_json payload
//! ```
//!
//! Anything else under a key (garbage, another format, an older version, a
//! value of another type) decodes to an error that the cache treats as a miss:
//! logged, counted and overwritten by the next load.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

const MAGIC: u8 = 0xCA;
/// The envelope format this build reads and writes.
pub(crate) const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 39;
const FLAG_NONE: u8 = 1;

/// What the cache knows about a stored value besides the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// When the value was written, unix ms.
    pub created_ms: u64,
    /// How long the load that produced it took, µs.
    pub load_us: u32,
    /// Logical expiry, unix ms: past it the value is stale.
    pub expires_ms: u64,
    /// End of the stale window, unix ms (equal to `expires_ms` without one).
    pub stale_until_ms: u64,
}

impl EntryMeta {
    /// The recorded load time.
    pub fn load_time(&self) -> Duration {
        Duration::from_micros(u64::from(self.load_us))
    }

    /// Whether the value is past its logical expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// Why stored bytes could not be read as the requested type.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Too short, or no magic byte: not written by this framework.
    NotAnEnvelope,
    /// Written by another format version.
    Version(u8),
    /// Written for another Rust type.
    TypeMismatch,
    /// The payload does not deserialize as the type.
    Payload(serde_json::Error),
    /// The key holds a Redis value of another kind (a list, a hash...).
    WrongKind,
    /// The stored value is over the size limit (bytes): not read whole.
    TooLarge(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotAnEnvelope => f.write_str("not a cache envelope"),
            DecodeError::Version(v) => {
                write!(f, "envelope format version {v}, expected {FORMAT_VERSION}")
            }
            DecodeError::TypeMismatch => f.write_str("stored for another type"),
            DecodeError::Payload(e) => write!(f, "payload does not deserialize: {e}"),
            DecodeError::WrongKind => f.write_str("a Redis value of another kind (WRONGTYPE)"),
            DecodeError::TooLarge(limit) => {
                write!(f, "larger than max_value_bytes ({limit} bytes); not read")
            }
        }
    }
}

/// A stable fingerprint of `T`, written into every envelope: XXH3-64 of its
/// type name with every module path taken out (`alloc::vec::Vec<app::db::
/// Placement>` is `Vec<Placement>`), so that moving a type to another module,
/// or a compiler that spells standard paths differently, does not turn every
/// entry into a miss after a deploy. A change of the type's shape still must
/// bump the namespace (the README says so).
pub(crate) fn type_fingerprint<T: ?Sized>() -> u64 {
    fingerprint_of(std::any::type_name::<T>())
}

fn fingerprint_of(type_name: &str) -> u64 {
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let out: &mut [u8] = if type_name.len() <= stack.len() {
        &mut stack
    } else {
        heap.resize(type_name.len(), 0);
        &mut heap
    };
    let len = strip_paths(type_name.as_bytes(), out);
    xxhash_rust::xxh3::xxh3_64(&out[..len])
}

/// Copies `name` into `out` without module paths: an identifier followed by
/// `::` is dropped. Returns how many bytes were written.
fn strip_paths(name: &[u8], out: &mut [u8]) -> usize {
    let (mut len, mut segment, mut i) = (0, 0, 0);
    while i < name.len() {
        let b = name[i];
        if b == b':' && name.get(i + 1) == Some(&b':') {
            len = segment; // drop the path segment just written
            i += 2;
            continue;
        }
        out[len] = b;
        len += 1;
        if !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) {
            segment = len;
        }
        i += 1;
    }
    len
}

/// Encodes `value` (`None`: a cached absence) with its metadata.
pub(crate) fn encode<T: Serialize>(
    value: Option<&T>,
    meta: &EntryMeta,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 256);
    out.push(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&type_fingerprint::<T>().to_le_bytes());
    out.extend_from_slice(&meta.created_ms.to_le_bytes());
    out.extend_from_slice(&meta.load_us.to_le_bytes());
    out.extend_from_slice(&meta.expires_ms.to_le_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_le_bytes());
    match value {
        Some(v) => {
            out.push(0);
            serde_json::to_writer(&mut out, v)?;
        }
        None => out.push(FLAG_NONE),
    }
    Ok(out)
}

/// How many bytes of the header identify an entry: its times (offsets 10 to
/// 37). Two writes of one key carry the same identity only if they were made
/// in the same millisecond with the same load time and the same jittered
/// expiry.
pub(crate) const IDENTITY_LEN: usize = 28;

/// The identity of the entry with `meta`: the header bytes at 10..38.
pub(crate) fn identity(meta: &EntryMeta) -> [u8; IDENTITY_LEN] {
    let mut out = [0u8; IDENTITY_LEN];
    out[0..8].copy_from_slice(&meta.created_ms.to_le_bytes());
    out[8..12].copy_from_slice(&meta.load_us.to_le_bytes());
    out[12..20].copy_from_slice(&meta.expires_ms.to_le_bytes());
    out[20..28].copy_from_slice(&meta.stale_until_ms.to_le_bytes());
    out
}

/// Reads only the header: enough to judge freshness without the payload.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<EntryMeta, DecodeError> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[1] != FORMAT_VERSION {
        return Err(DecodeError::Version(bytes[1]));
    }
    Ok(EntryMeta {
        created_ms: read_u64(bytes, 10),
        load_us: u32::from_le_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]),
        expires_ms: read_u64(bytes, 22),
        stale_until_ms: read_u64(bytes, 30),
    })
}

/// Decodes an envelope written for `T`; `None` is a cached absence.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(Option<T>, EntryMeta), DecodeError> {
    let meta = decode_meta(bytes)?;
    if read_u64(bytes, 2) != type_fingerprint::<T>() {
        return Err(DecodeError::TypeMismatch);
    }
    if bytes[38] & FLAG_NONE != 0 {
        return Ok((None, meta));
    }
    let value = serde_json::from_slice(&bytes[HEADER_LEN..]).map_err(DecodeError::Payload)?;
    Ok((Some(value), meta))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_fingerprints_ignore_module_paths_and_nothing_else() {
        let strip = |s: &str| {
            let mut out = vec![0u8; s.len()];
            let n = strip_paths(s.as_bytes(), &mut out);
            String::from_utf8(out[..n].to_vec()).expect("UTF-8")
        };
        assert_eq!(
            strip("alloc::vec::Vec<app::db::Placement>"),
            "Vec<Placement>"
        );
        assert_eq!(
            strip("core::option::Option<(u64, alloc::string::String)>"),
            "Option<(u64, String)>"
        );
        assert_eq!(strip("[u8; 4]"), "[u8; 4]");
        assert_eq!(
            fingerprint_of("alloc::vec::Vec<app::db::Placement>"),
            fingerprint_of("std::vec::Vec<app::models::Placement>")
        );
        assert_ne!(
            fingerprint_of("Vec<Placement>"),
            fingerprint_of("Vec<Video>")
        );
        assert_ne!(fingerprint_of("Option<u8>"), fingerprint_of("u8"));
        // A fixed vector: changing it turns every stored entry into a miss.
        assert_eq!(
            type_fingerprint::<Vec<String>>(),
            fingerprint_of("Vec<String>")
        );
        assert_eq!(fingerprint_of("Vec<String>"), 0x5f95_adde_0f5a_2a0d);
    }

    #[test]
    fn the_identity_is_the_envelope_bytes_a_script_compares() {
        let m = EntryMeta {
            created_ms: 0x0102_0304_0506_0708,
            load_us: 0x0a0b_0c0d,
            expires_ms: 0x1112_1314_1516_1718,
            stale_until_ms: 0x2122_2324_2526_2728,
        };
        let bytes = encode(Some(&1u8), &m).expect("encodes");
        assert_eq!(&bytes[10..10 + IDENTITY_LEN], &identity(&m)[..]);
    }

    #[test]
    fn the_envelope_is_fixed_byte_for_byte() {
        // Every deployed entry is in this format: a change here is a new
        // FORMAT_VERSION, deliberately.
        let m = EntryMeta {
            created_ms: 0x0102_0304_0506_0708,
            load_us: 0x0a0b_0c0d,
            expires_ms: 0x1112_1314_1516_1718,
            stale_until_ms: 0x2122_2324_2526_2728,
        };
        let mut want = vec![0xCA, 1];
        want.extend_from_slice(&fingerprint_of("Vec<String>").to_le_bytes());
        want.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        want.extend_from_slice(&[0x0d, 0x0c, 0x0b, 0x0a]);
        want.extend_from_slice(&[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        want.extend_from_slice(&[0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21]);
        want.push(0);
        want.extend_from_slice(br#"["a"]"#);
        let bytes = encode(Some(&vec!["a".to_owned()]), &m).expect("encodes");
        assert_eq!(bytes, want);
        assert_eq!(decode_meta(&bytes).expect("a header"), m);
        let none = encode::<Vec<String>>(None, &m).expect("encodes");
        assert_eq!(none[..HEADER_LEN - 1], want[..HEADER_LEN - 1]);
        assert_eq!(none[HEADER_LEN - 1], FLAG_NONE);
    }

    #[test]
    fn a_non_ascii_identifier_is_one_segment() {
        let strip = |s: &str| {
            let mut out = vec![0u8; s.len()];
            let n = strip_paths(s.as_bytes(), &mut out);
            String::from_utf8(out[..n].to_vec()).expect("UTF-8")
        };
        assert_eq!(strip("app::métier::Équipe<crate_a::Ç>"), "Équipe<Ç>");
        // Only a pair of colons ends a path segment.
        assert_eq!(strip("a:b<c::d>"), "a:b<d>");
        // A name longer than the stack buffer takes the heap, same result.
        let long = format!("a::{}", "B".repeat(300));
        assert_eq!(fingerprint_of(&long), fingerprint_of(&"B".repeat(300)));
    }

    #[test]
    fn expiry_is_inclusive_and_load_time_is_in_microseconds() {
        let m = meta();
        assert!(!m.is_expired(2));
        assert!(m.is_expired(3), "expired at its expiry");
        assert_eq!(m.load_time(), Duration::from_micros(2));
    }

    #[test]
    fn decode_errors_say_what_was_found() {
        let says = |e: DecodeError| e.to_string();
        assert_eq!(says(DecodeError::NotAnEnvelope), "not a cache envelope");
        assert_eq!(
            says(DecodeError::Version(7)),
            "envelope format version 7, expected 1"
        );
        assert_eq!(says(DecodeError::TypeMismatch), "stored for another type");
        assert_eq!(
            says(DecodeError::WrongKind),
            "a Redis value of another kind (WRONGTYPE)"
        );
        assert_eq!(
            says(DecodeError::TooLarge(1024)),
            "larger than max_value_bytes (1024 bytes); not read"
        );
        let payload = serde_json::from_slice::<u8>(b"x").expect_err("not JSON");
        assert!(says(DecodeError::Payload(payload)).starts_with("payload does not deserialize: "));
    }

    /// Bytes from Redis are untrusted: any of them, of any length, decode to
    /// a value or an error, never a panic. Random bytes, and valid envelopes
    /// with bytes flipped, cut short or extended (which reach past the
    /// header checks), for a bounded number of rounds.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        #[allow(dead_code)]
        struct Row {
            id: u64,
            name: String,
            tags: Vec<String>,
            parent: Option<Box<Row>>,
        }
        fn all(bytes: &[u8]) {
            let _ = decode::<u32>(bytes);
            let _ = decode::<String>(bytes);
            let _ = decode::<Vec<Option<i64>>>(bytes);
            let _ = decode::<Row>(bytes);
            let _ = decode::<(f64, bool, char)>(bytes);
            let _ = decode_meta(bytes);
        }
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let valid: Vec<Vec<u8>> = vec![
            encode(Some(&7u32), &meta()).expect("encodes"),
            encode(Some(&"text".to_owned()), &meta()).expect("encodes"),
            encode::<String>(None, &meta()).expect("encodes"),
            encode(
                Some(&Row {
                    id: 1,
                    name: "n".into(),
                    tags: vec!["a".into(), "b".into()],
                    parent: Some(Box::new(Row {
                        id: 0,
                        name: String::new(),
                        tags: Vec::new(),
                        parent: None,
                    })),
                }),
                &meta(),
            )
            .expect("encodes"),
        ];
        for round in 0..30_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.usize(..HEADER_LEN * 3);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                let mut bytes = valid[rng.usize(..valid.len())].clone();
                // Keep the magic and version sometimes, so that the type and
                // payload checks are reached.
                for _ in 0..rng.usize(1..4) {
                    match rng.u8(..3) {
                        0 => {
                            let i = rng.usize(..bytes.len());
                            bytes[i] = rng.u8(..);
                        }
                        1 => bytes.truncate(rng.usize(..=bytes.len())),
                        _ => {
                            let extra = rng.usize(..16);
                            bytes.extend((0..extra).map(|_| rng.u8(..)));
                        }
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            };
            all(&bytes);
        }
        // A header that claims a `String` with a deeply nested payload.
        let mut deep = encode(Some(&"x".to_owned()), &meta()).expect("encodes");
        deep.truncate(HEADER_LEN);
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        all(&deep);
    }

    fn meta() -> EntryMeta {
        EntryMeta {
            created_ms: 1,
            load_us: 2,
            expires_ms: 3,
            stale_until_ms: 4,
        }
    }

    #[test]
    fn round_trips_value_and_meta() {
        let bytes = encode(Some(&("x".to_string(), 5u32)), &meta()).expect("encodes");
        let (v, m): (Option<(String, u32)>, _) = decode(&bytes).expect("decodes");
        assert_eq!(v, Some(("x".to_string(), 5)));
        assert_eq!(m, meta());
    }

    #[test]
    fn a_cached_none_round_trips_without_payload() {
        let bytes = encode::<u32>(None, &meta()).expect("encodes");
        assert_eq!(bytes.len(), HEADER_LEN);
        let (v, _) = decode::<u32>(&bytes).expect("decodes");
        assert_eq!(v, None);
    }

    #[test]
    fn another_type_is_a_type_mismatch() {
        let bytes = encode(Some(&5u32), &meta()).expect("encodes");
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(DecodeError::TypeMismatch)
        ));
    }

    #[test]
    fn garbage_and_short_input_are_not_envelopes() {
        assert!(matches!(
            decode::<u32>(b""),
            Err(DecodeError::NotAnEnvelope)
        ));
        assert!(matches!(
            decode::<u32>(&[0u8; 64]),
            Err(DecodeError::NotAnEnvelope)
        ));
        assert!(matches!(
            decode::<u32>(b"{\"plain\":\"json written by someone else\"}"),
            Err(DecodeError::NotAnEnvelope)
        ));
    }

    #[test]
    fn another_format_version_is_rejected() {
        let mut bytes = encode(Some(&5u32), &meta()).expect("encodes");
        bytes[1] = 0;
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(DecodeError::Version(0))
        ));
    }

    #[test]
    fn corrupt_payload_is_a_payload_error() {
        let mut bytes = encode(Some(&5u32), &meta()).expect("encodes");
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(b"{not json");
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(DecodeError::Payload(_))
        ));
    }
}
