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
//!     38     1  flags: bit 0 set = a cached `None` (no payload follows);
//!                 bit 1 set = MessagePack payload (else serde_json);
//!                 bits 2-3 = compression: 0 none, 1 LZ4, 2 Zstandard;
//!                 bit 4 set = stored with tag versions beside it (the
//!                 Redis Cluster layout's mark, taken off before decoding)
//!     39     …  payload (compressed: its uncompressed length, u32 LE, then
//!                 the compressed bytes)
//! ```
//!
//! A reader follows the flags, whatever it writes itself: a fleet moving
//! from JSON to MessagePack, or turning compression on, keeps its hits
//! during the rollout (a process built without the feature a flag needs
//! reads such an entry as a miss, and overwrites it).
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
const FLAG_MSGPACK: u8 = 1 << 1;
const COMPRESSION_SHIFT: u8 = 2;
const COMPRESSION_MASK: u8 = 0b11 << COMPRESSION_SHIFT;
const FLAG_LZ4: u8 = 1 << COMPRESSION_SHIFT;
const FLAG_ZSTD: u8 = 2 << COMPRESSION_SHIFT;
/// The Redis Cluster layout's mark: the entry was stored with tag versions
/// beside it, which a read must check (see `backend::cluster`). Never seen
/// by the decoder: the backend takes it off first.
const FLAG_TAGGED: u8 = 1 << 4;
/// The offset of the flags byte.
const FLAGS_AT: usize = 38;
/// What the Redis Cluster layout's scripts need to mark an envelope as
/// [`mark_tagged`] does: the magic byte, the offset of the flags, the mark.
pub(crate) const TAGGED_MARK: (u8, usize, u8) = (MAGIC, FLAGS_AT, FLAG_TAGGED);
/// Flags this build knows; any other bit makes an entry unreadable. (The
/// flags share no bit, so cargo-mutants' `|` to `^` here is equivalent.)
const KNOWN_FLAGS: u8 = FLAG_NONE | FLAG_MSGPACK | COMPRESSION_MASK;

/// The most bytes a compressed payload may expand to: a value under a key
/// of ours that claims more is someone else's (or an attack), and is read
/// as a miss without allocating for it.
pub(crate) const MAX_DECOMPRESSED: usize = 64 << 20;

/// How values are serialized on Redis. JSON, the default, stays readable
/// in `redis-cli`; MessagePack (the `msgpack` feature) is smaller and
/// faster to read. Readers read both, whatever they write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// serde_json.
    #[default]
    Json,
    /// MessagePack (rmp-serde, structs as maps so that fields can be added
    /// and reordered as with JSON). Needs the `msgpack` feature.
    MessagePack,
}

/// Compression of payloads above a size (see
/// [`CacheBuilder::compression`](crate::CacheBuilder::compression)).
/// Readers read every kind their build has the feature for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// None: the default.
    #[default]
    None,
    /// LZ4 (lz4_flex, pure Rust): fast both ways. Needs the `lz4` feature.
    Lz4,
    /// Zstandard at `level` (1 to 22; 3 is zstd's default): smaller, slower
    /// to write. Needs the `zstd` feature.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// What a cache writes: its codec, and compression above a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub(crate) codec: Codec,
    pub(crate) compression: Compression,
    /// Payloads of at most this many bytes are stored uncompressed.
    pub(crate) compress_above: usize,
    /// Payloads of more bytes than this are stored uncompressed too: no
    /// reader of the same setting would decompress them (see
    /// [`compressed_claim`]).
    pub(crate) max_decompressed: usize,
}

impl Default for Format {
    fn default() -> Self {
        Format {
            codec: Codec::default(),
            compression: Compression::default(),
            compress_above: 0,
            max_decompressed: MAX_DECOMPRESSED,
        }
    }
}

impl Format {
    /// Why this build cannot write in this format, if it cannot.
    ///
    /// Each feature's arm can be checked only by a build without that
    /// feature: cargo-mutants' mutants of these guards survive a run with
    /// every feature on (as `scripts/mutants` runs) and are caught by
    /// `tests::a_format_this_build_cannot_write_is_named` in the default build
    /// (`cargo test -p cached-runtime --lib`), and the reverse.
    pub(crate) fn unsupported(&self) -> Option<&'static str> {
        if self.codec == Codec::MessagePack && !cfg!(feature = "msgpack") {
            return Some("Codec::MessagePack needs the `msgpack` feature of cached-runtime");
        }
        match self.compression {
            Compression::Lz4 if !cfg!(feature = "lz4") => {
                Some("Compression::Lz4 needs the `lz4` feature of cached-runtime")
            }
            Compression::Zstd { .. } if !cfg!(feature = "zstd") => {
                Some("Compression::Zstd needs the `zstd` feature of cached-runtime")
            }
            Compression::Zstd { level } if !(1..=22).contains(&level) => {
                Some("Compression::Zstd's level must be between 1 and 22")
            }
            _ => None,
        }
    }
}

/// Why a value could not be encoded.
pub(crate) type EncodeError = Box<dyn std::error::Error + Send + Sync>;

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
    /// The payload does not deserialize as the type, or does not
    /// decompress.
    Payload(String),
    /// Written with a codec, a compression or flags this build cannot read.
    Unsupported(&'static str),
    /// The key holds a Redis value of another kind (a list, a hash...).
    WrongKind,
    /// The stored value is over the size limit (bytes): not read whole.
    TooLarge(usize),
    /// The stored payload is compressed and would expand past the limit
    /// (bytes): not decompressed.
    Expands(usize),
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
            DecodeError::Unsupported(what) => write!(f, "written as {what}"),
            DecodeError::WrongKind => f.write_str("a Redis value of another kind (WRONGTYPE)"),
            DecodeError::TooLarge(limit) => {
                write!(f, "larger than max_value_bytes ({limit} bytes); not read")
            }
            DecodeError::Expands(limit) => write!(
                f,
                "would decompress to more than max_decompressed_bytes ({limit} bytes); not decompressed"
            ),
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
    memoized_fingerprint(std::any::type_name::<T>())
}

/// [`fingerprint_of`], remembered per thread for the last few type names:
/// every encode and decode needs it, and working it out cost a Redis hit
/// about 750 instructions, a twentieth of the hit (callgrind, `cached-bench
/// __profile_cluster this`). A name is a `&'static str`, whose bytes never
/// change: its address and length identify it.
fn memoized_fingerprint(type_name: &'static str) -> u64 {
    const SLOTS: usize = 8;
    thread_local! {
        static MEMO: std::cell::Cell<[(usize, usize, u64); SLOTS]> =
            const { std::cell::Cell::new([(0, 0, 0); SLOTS]) };
    }
    let id = (type_name.as_ptr() as usize, type_name.len());
    // Any slot would do (the key is compared below): cargo-mutants' `^` to
    // `|` or `&` and `>>` to `<<` here change only which names share a
    // slot, so they survive as equivalent.
    let slot = (id.0 >> 3 ^ id.1) % SLOTS;
    MEMO.with(|memo| {
        let mut entries = memo.get();
        let (ptr, len, fingerprint) = entries[slot];
        if (ptr, len) == id {
            return fingerprint;
        }
        let fingerprint = fingerprint_of(type_name);
        entries[slot] = (id.0, id.1, fingerprint);
        memo.set(entries);
        fingerprint
    })
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

/// Encodes `value` (`None`: a cached absence) with its metadata, as JSON.
#[cfg(test)]
pub(crate) fn encode<T: Serialize>(
    value: Option<&T>,
    meta: &EntryMeta,
) -> Result<Vec<u8>, EncodeError> {
    encode_as(value, meta, &Format::default())
}

/// Encodes `value` (`None`: a cached absence) with its metadata, in
/// `format`.
pub(crate) fn encode_as<T: Serialize>(
    value: Option<&T>,
    meta: &EntryMeta,
    format: &Format,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 256);
    out.push(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&type_fingerprint::<T>().to_le_bytes());
    out.extend_from_slice(&meta.created_ms.to_le_bytes());
    out.extend_from_slice(&meta.load_us.to_le_bytes());
    out.extend_from_slice(&meta.expires_ms.to_le_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_le_bytes());
    let Some(v) = value else {
        out.push(FLAG_NONE);
        return Ok(out);
    };
    let codec_flag = match format.codec {
        Codec::Json => 0,
        Codec::MessagePack => FLAG_MSGPACK,
    };
    out.push(codec_flag);
    serialize(&mut out, v, format.codec)?;
    let payload_len = out.len() - HEADER_LEN;
    if format.compression != Compression::None
        && payload_len > format.compress_above
        && payload_len <= format.max_decompressed
        && let Some((flag, compressed)) = compress(&out[HEADER_LEN..], format.compression)?
        // Only when it saves something (`<=` there would store the same
        // number of bytes compressed: equivalent, as scripts/mutants says).
        && compressed.len() + 4 < payload_len
    {
        out.truncate(HEADER_LEN);
        out[HEADER_LEN - 1] |= flag;
        out.extend_from_slice(&u32::try_from(payload_len)?.to_le_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(out)
}

fn serialize<T: Serialize>(out: &mut Vec<u8>, v: &T, codec: Codec) -> Result<(), EncodeError> {
    match codec {
        Codec::Json => {
            if finite::has_non_finite(v) {
                return Err(
                    "JSON cannot hold a NaN or infinite float (serde_json writes it as \
                     `null`, which reads back as another value): not stored; \
                     `Codec::MessagePack` keeps such floats"
                        .into(),
                );
            }
            serde_json::to_writer(out, v)?;
        }
        #[cfg(feature = "msgpack")]
        Codec::MessagePack => rmp_serde::encode::write_named(out, v)?,
        #[cfg(not(feature = "msgpack"))]
        Codec::MessagePack => return Err("MessagePack needs the `msgpack` feature".into()),
    }
    Ok(())
}

/// Finding floats JSON cannot hold. serde_json writes NaN and infinities as
/// `null`: a cached `Some(f64::NAN)` read back as `None`, a served value
/// other than the function's (found by a review), and a plain `f64` NaN
/// never read back at all (a miss and a rewrite on every call).
mod finite {
    use serde::ser::{self, Serialize};

    /// Whether `v` holds a NaN or an infinite float anywhere (map keys
    /// included). A walk of the value, writing nothing.
    pub(super) fn has_non_finite<T: Serialize + ?Sized>(v: &T) -> bool {
        matches!(v.serialize(Finite), Err(Walk::NotFinite))
    }

    /// The walk's serializer: every method looks into what it is given.
    #[derive(Clone, Copy)]
    struct Finite;

    /// Why the walk stopped: a float JSON cannot hold, or the value's own
    /// error (which serde_json then meets too, and reports).
    #[derive(Debug)]
    enum Walk {
        NotFinite,
        Failed,
    }

    impl std::fmt::Display for Walk {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Walk::NotFinite => "a NaN or infinite float",
                Walk::Failed => "the value failed to serialize",
            })
        }
    }

    impl std::error::Error for Walk {}

    impl ser::Error for Walk {
        fn custom<M: std::fmt::Display>(_: M) -> Walk {
            Walk::Failed
        }
    }

    fn float(finite: bool) -> Result<(), Walk> {
        if finite { Ok(()) } else { Err(Walk::NotFinite) }
    }

    /// Methods of plain values, which hold no float.
    macro_rules! plain {
        ($($method:ident($ty:ty)),* $(,)?) => {
            $(fn $method(self, _: $ty) -> Result<(), Walk> { Ok(()) })*
        };
    }

    impl ser::Serializer for Finite {
        type Ok = ();
        type Error = Walk;
        type SerializeSeq = Finite;
        type SerializeTuple = Finite;
        type SerializeTupleStruct = Finite;
        type SerializeTupleVariant = Finite;
        type SerializeMap = Finite;
        type SerializeStruct = Finite;
        type SerializeStructVariant = Finite;

        plain!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_char(char),
            serialize_str(&str),
            serialize_bytes(&[u8]),
            serialize_unit_struct(&'static str),
        );

        fn serialize_f32(self, v: f32) -> Result<(), Walk> {
            float(v.is_finite())
        }
        fn serialize_f64(self, v: f64) -> Result<(), Walk> {
            float(v.is_finite())
        }
        fn serialize_none(self) -> Result<(), Walk> {
            Ok(())
        }
        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Walk> {
            v.serialize(self)
        }
        fn serialize_unit(self) -> Result<(), Walk> {
            Ok(())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), Walk> {
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<(), Walk> {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> Result<(), Walk> {
            v.serialize(self)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_tuple(self, _: usize) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Finite, Walk> {
            Ok(self)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Finite, Walk> {
            Ok(self)
        }
    }

    /// The compound parts: each element, field, key and value walked.
    macro_rules! compound {
        ($($trait:ident :: $method:ident ($($name:ty),*)),* $(,)?) => {
            $(
                impl ser::$trait for Finite {
                    type Ok = ();
                    type Error = Walk;
                    fn $method<T: Serialize + ?Sized>(
                        &mut self,
                        $(_: $name,)*
                        v: &T,
                    ) -> Result<(), Walk> {
                        v.serialize(*self)
                    }
                    fn end(self) -> Result<(), Walk> {
                        Ok(())
                    }
                }
            )*
        };
    }

    compound!(
        SerializeSeq::serialize_element(),
        SerializeTuple::serialize_element(),
        SerializeTupleStruct::serialize_field(),
        SerializeTupleVariant::serialize_field(),
        SerializeStruct::serialize_field(&'static str),
        SerializeStructVariant::serialize_field(&'static str),
    );

    impl ser::SerializeMap for Finite {
        type Ok = ();
        type Error = Walk;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Walk> {
            k.serialize(*self)
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Walk> {
            v.serialize(*self)
        }
        fn end(self) -> Result<(), Walk> {
            Ok(())
        }
    }
}

/// `payload` compressed, with the flag that says how (`None`: not this
/// build's to do; the builder refuses such a setting).
#[allow(unused_variables)]
fn compress(
    payload: &[u8],
    compression: Compression,
) -> Result<Option<(u8, Vec<u8>)>, EncodeError> {
    match compression {
        #[cfg(feature = "lz4")]
        Compression::Lz4 => Ok(Some((FLAG_LZ4, lz4_flex::block::compress(payload)))),
        #[cfg(feature = "zstd")]
        Compression::Zstd { level } => Ok(Some((FLAG_ZSTD, zstd::bulk::compress(payload, level)?))),
        _ => Ok(None),
    }
}

/// The payload of an envelope, decompressed if its flags say so.
fn payload(bytes: &[u8], flags: u8) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    let body = &bytes[HEADER_LEN..];
    let compression = flags & COMPRESSION_MASK;
    if compression == 0 {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    let (len, data) = match body.split_first_chunk::<4>() {
        Some((len, data)) => (u32::from_le_bytes(*len) as usize, data),
        None => {
            return Err(DecodeError::Payload(
                "a compressed payload without its length".into(),
            ));
        }
    };
    if len > MAX_DECOMPRESSED {
        return Err(DecodeError::Payload(format!(
            "claims {len} bytes uncompressed, over the {MAX_DECOMPRESSED}-byte bound"
        )));
    }
    let out = decompress(compression, data, len)?;
    if out.len() != len {
        return Err(DecodeError::Payload(
            "decompressed to another length than recorded".into(),
        ));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// `data` decompressed, by the compression `flag`, into `len` bytes. Each
/// flag's two arms are built one at a time, by feature: cargo-mutants'
/// deletion of the arm a build leaves out changes nothing in that build,
/// and is caught in the other (see [`Format::unsupported`]).
fn decompress(flag: u8, data: &[u8], len: usize) -> Result<Vec<u8>, DecodeError> {
    let _ = (data, len);
    match flag {
        #[cfg(feature = "lz4")]
        FLAG_LZ4 => lz4_flex::block::decompress(data, len)
            .map_err(|e| DecodeError::Payload(format!("LZ4: {e}"))),
        #[cfg(not(feature = "lz4"))]
        FLAG_LZ4 => Err(DecodeError::Unsupported(
            "LZ4-compressed (this build lacks the `lz4` feature)",
        )),
        #[cfg(feature = "zstd")]
        FLAG_ZSTD => zstd::bulk::decompress(data, len)
            .map_err(|e| DecodeError::Payload(format!("Zstandard: {e}"))),
        #[cfg(not(feature = "zstd"))]
        FLAG_ZSTD => Err(DecodeError::Unsupported(
            "Zstandard-compressed (this build lacks the `zstd` feature)",
        )),
        _ => Err(DecodeError::Unsupported(
            "compressed in a way this build does not know",
        )),
    }
}

fn deserialize<T: DeserializeOwned>(payload: &[u8], flags: u8) -> Result<T, DecodeError> {
    if flags & FLAG_MSGPACK == 0 {
        return serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()));
    }
    #[cfg(feature = "msgpack")]
    {
        rmp_serde::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))
    }
    #[cfg(not(feature = "msgpack"))]
    {
        let _ = payload;
        Err(DecodeError::Unsupported(
            "MessagePack (this build lacks the `msgpack` feature)",
        ))
    }
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

/// Marks the envelope `bytes` as stored with tag versions beside it (the
/// cluster layout). Bytes that are not an envelope are left as they are.
pub(crate) fn mark_tagged(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN && bytes[0] == MAGIC {
        bytes[FLAGS_AT] |= FLAG_TAGGED;
    }
}

/// Takes the mark of [`mark_tagged`] off `bytes`; whether it was there.
pub(crate) fn take_tagged_mark(bytes: &mut [u8]) -> bool {
    if bytes.len() >= HEADER_LEN && bytes[0] == MAGIC && bytes[FLAGS_AT] & FLAG_TAGGED != 0 {
        bytes[FLAGS_AT] &= !FLAG_TAGGED;
        true
    } else {
        false
    }
}

/// How many bytes the payload of envelope `bytes` takes once decompressed:
/// the length a compressed payload records (at most [`MAX_DECOMPRESSED`],
/// past which it is never decompressed), else the payload's own. What a
/// decoded copy of the value costs is of that order, not of the stored
/// size: a compressed payload may expand thousands of times. 0 for bytes
/// that are not an envelope.
pub(crate) fn decoded_len(bytes: &[u8]) -> usize {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return 0;
    }
    let body = &bytes[HEADER_LEN..];
    if bytes[FLAGS_AT] & COMPRESSION_MASK == 0 {
        return body.len();
    }
    match body.first_chunk::<4>() {
        Some(len) => (u32::from_le_bytes(*len) as usize).min(MAX_DECOMPRESSED),
        None => 0,
    }
}

/// How many bytes the payload of envelope `bytes` claims to expand to, if
/// it is compressed: what a reader checks against its bound before it
/// decompresses anything. `None` for an uncompressed payload (bounded by
/// its stored size) and for bytes that are not an envelope.
pub(crate) fn compressed_claim(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC || bytes[FLAGS_AT] & COMPRESSION_MASK == 0 {
        return None;
    }
    let len = bytes[HEADER_LEN..].first_chunk::<4>()?;
    Some(u32::from_le_bytes(*len) as usize)
}

/// An envelope (of `T = String`) whose payload claims to be compressed
/// with LZ4 from `len` bytes: its header, the length, two bytes of
/// payload. For tests of what weighs an entry; it does not decompress.
#[cfg(test)]
pub(crate) fn claiming_compressed(meta: &EntryMeta, len: u32) -> Vec<u8> {
    let mut bytes = encode(Some(&String::new()), meta).expect("encodes");
    bytes.truncate(HEADER_LEN);
    bytes[FLAGS_AT] |= FLAG_LZ4;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes
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
    let flags = bytes[HEADER_LEN - 1];
    if flags & !KNOWN_FLAGS != 0 || flags & COMPRESSION_MASK == COMPRESSION_MASK {
        return Err(DecodeError::Unsupported("flags this build does not know"));
    }
    if flags & FLAG_NONE != 0 {
        return Ok((None, meta));
    }
    let value = deserialize(&payload(bytes, flags)?, flags)?;
    Ok((Some(value), meta))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    /// A cached float is the float the function returned, to the bit, in
    /// each codec: floats drawn from every bit pattern, and values known
    /// to come back one unit off through serde_json's default parser
    /// (found by a review; the `float_roundtrip` feature is what fixes it).
    #[test]
    fn floats_come_back_to_the_bit() {
        let meta = EntryMeta {
            created_ms: 1,
            load_us: 0,
            expires_ms: 2,
            stale_until_ms: 3,
        };
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut floats = vec![
            (0.091_443_385_120_928_87, 0.1f32),
            (1.0e-308, f32::MIN_POSITIVE),
            (5e-324, 1e-45),
            (f64::MAX, f32::MAX),
        ];
        floats.extend(
            std::iter::repeat_with(|| (f64::from_bits(rng.u64(..)), f32::from_bits(rng.u32(..))))
                .filter(|(f, h)| f.is_finite() && h.is_finite())
                .take(20_000),
        );
        let codecs = [Codec::Json, Codec::MessagePack]
            .into_iter()
            .filter(|c| *c == Codec::Json || cfg!(feature = "msgpack"));
        for codec in codecs {
            let format = Format {
                codec,
                ..Format::default()
            };
            for pair in &floats {
                let bytes = encode_as(Some(pair), &meta, &format).expect("encodes");
                let (back, _) = decode::<(f64, f32)>(&bytes).expect("decodes");
                let (g, h) = back.expect("a value");
                let (f, e) = *pair;
                assert_eq!(g.to_bits(), f.to_bits(), "{codec:?}: {f:e} came back {g:e}");
                assert_eq!(h.to_bits(), e.to_bits(), "{codec:?}: {e:e} came back {h:e}");
            }
        }
    }

    /// JSON cannot hold NaN or an infinity (serde_json writes `null`): a
    /// value holding one anywhere is not stored as JSON, rather than read
    /// back as another value (`Some(NaN)` as `None`); MessagePack keeps it.
    /// Floats drawn from every bit pattern, at every depth a value can put
    /// them.
    #[test]
    fn a_float_json_cannot_hold_is_not_stored_as_json() {
        use std::collections::BTreeMap;
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum Shape {
            Unit,
            Tuple(u8, f32),
            Struct { at: Vec<Option<f64>> },
            Wrapped(Box<Shape>),
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Row {
            name: String,
            score: Option<f64>,
            shapes: Vec<Shape>,
            by_name: BTreeMap<String, (f32, f64)>,
        }
        let meta = EntryMeta {
            created_ms: 1,
            load_us: 0,
            expires_ms: 2,
            stale_until_ms: 3,
        };
        let json = Format::default();
        let mut rng = fastrand::Rng::with_seed(0xf1);
        let mut checked = [0usize; 2];
        for round in 0..4_000 {
            // Mostly special floats, so that every place gets some.
            let mut float = || match rng.u8(..4) {
                0 => [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][rng.usize(..3)],
                1 => f64::from_bits(rng.u64(..)),
                _ => rng.f64() * 1e6,
            };
            let (a, b, c, d, e) = (float(), float(), float(), float(), float());
            let row = Row {
                name: format!("row {round}"),
                score: Some(a),
                shapes: vec![
                    Shape::Unit,
                    Shape::Tuple(1, b as f32),
                    Shape::Wrapped(Box::new(Shape::Struct {
                        at: vec![None, Some(c)],
                    })),
                ],
                by_name: BTreeMap::from([("k".to_string(), (d as f32, e))]),
            };
            let finite = [a, b as f32 as f64, c, d as f32 as f64, e]
                .iter()
                .all(|f| f.is_finite());
            match encode_as(Some(&row), &meta, &json) {
                Ok(bytes) => {
                    assert!(finite, "stored a value holding a NaN or infinity: {row:?}");
                    let (back, _) = decode::<Row>(&bytes).expect("decodes");
                    assert_eq!(back.as_ref(), Some(&row));
                }
                Err(e) => {
                    assert!(!finite, "refused a finite value: {e}: {row:?}");
                    assert!(e.to_string().contains("NaN or infinite"), "{e}");
                }
            }
            checked[usize::from(finite)] += 1;
            #[cfg(feature = "msgpack")]
            {
                let msgpack = Format {
                    codec: Codec::MessagePack,
                    ..Format::default()
                };
                let bytes = encode_as(Some(&row), &meta, &msgpack).expect("MessagePack");
                let (back, _) = decode::<Row>(&bytes).expect("decodes");
                let back = back.expect("a value");
                assert_eq!(
                    back.score.map(f64::to_bits),
                    row.score.map(f64::to_bits),
                    "MessagePack keeps every float"
                );
            }
        }
        assert!(checked.iter().all(|&n| n > 500), "{checked:?}");
        // The absence of a value is no float.
        assert!(encode_as(Some(&None::<f64>), &meta, &json).is_ok());
        // A map's value, alone.
        assert!(encode_as(Some(&BTreeMap::from([(1u8, f64::NAN)])), &meta, &json).is_err());
    }

    #[test]
    fn an_envelope_says_how_long_its_payload_is_once_decompressed() {
        let meta = super::EntryMeta {
            created_ms: 1,
            load_us: 0,
            expires_ms: 2,
            stale_until_ms: 3,
        };
        let plain = super::encode(Some(&"x".repeat(100)), &meta).expect("encodes");
        assert_eq!(super::decoded_len(&plain), plain.len() - super::HEADER_LEN);
        assert_eq!(
            super::decoded_len(&super::claiming_compressed(&meta, 80_000)),
            80_000
        );
        // Past the bound it is never decompressed: it costs no more.
        let huge = super::claiming_compressed(&meta, u32::MAX);
        assert_eq!(super::decoded_len(&huge), super::MAX_DECOMPRESSED);
        // Not an envelope, or cut short in its length.
        assert_eq!(super::decoded_len(b"plain text"), 0);
        let cut = &super::claiming_compressed(&meta, 80_000)[..super::HEADER_LEN + 2];
        assert_eq!(super::decoded_len(cut), 0);
    }

    #[test]
    fn the_tagged_mark_is_taken_off_whole_and_only_from_envelopes() {
        let m = EntryMeta {
            created_ms: 1,
            load_us: 2,
            expires_ms: 3,
            stale_until_ms: 4,
        };
        let plain = encode(Some(&"v".to_owned()), &m).expect("encodes");
        assert!(decode::<String>(&plain).is_ok());
        let mut bytes = plain.clone();
        assert!(!take_tagged_mark(&mut bytes), "not marked");
        mark_tagged(&mut bytes);
        assert_ne!(bytes, plain);
        assert_eq!(
            bytes[..FLAGS_AT],
            plain[..FLAGS_AT],
            "the identity is untouched"
        );
        assert!(
            decode::<String>(&bytes).is_err(),
            "a marked envelope is not read as it is"
        );
        assert!(take_tagged_mark(&mut bytes));
        assert_eq!(bytes, plain, "taken off, the envelope is as written");
        assert!(!take_tagged_mark(&mut bytes), "taken off once");
        for mut other in [b"garbage".to_vec(), vec![0u8; 64], Vec::new()] {
            let before = other.clone();
            mark_tagged(&mut other);
            assert_eq!(other, before);
            assert!(!take_tagged_mark(&mut other));
        }
    }

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
    fn a_remembered_fingerprint_is_always_its_own_types() {
        // More names than the memo has slots, so some share a slot and
        // evict each other: each must still get its own fingerprint, first
        // time and every time after, in any order.
        let names: [&'static str; 12] = [
            std::any::type_name::<u8>(),
            std::any::type_name::<u16>(),
            std::any::type_name::<u32>(),
            std::any::type_name::<u64>(),
            std::any::type_name::<i8>(),
            std::any::type_name::<i16>(),
            std::any::type_name::<String>(),
            std::any::type_name::<Vec<u8>>(),
            std::any::type_name::<Option<u8>>(),
            std::any::type_name::<(u8, u16)>(),
            std::any::type_name::<[u8; 3]>(),
            std::any::type_name::<bool>(),
        ];
        for round in 0..3 {
            for (i, name) in names.iter().enumerate() {
                let name = if round == 1 {
                    names[names.len() - 1 - i]
                } else {
                    name
                };
                assert_eq!(memoized_fingerprint(name), fingerprint_of(name), "{name}");
            }
        }
        // Same bytes at another address: the same fingerprint.
        let leaked: &'static str = Box::leak(String::from("Vec<String>").into_boxed_str());
        assert_eq!(memoized_fingerprint(leaked), fingerprint_of("Vec<String>"));
        assert_eq!(type_fingerprint::<u32>(), fingerprint_of("u32"));
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
            says(DecodeError::Unsupported("MessagePack")),
            "written as MessagePack"
        );
        assert_eq!(
            says(DecodeError::TooLarge(1024)),
            "larger than max_value_bytes (1024 bytes); not read"
        );
        let payload = serde_json::from_slice::<u8>(b"x").expect_err("not JSON");
        assert!(
            says(DecodeError::Payload(payload.to_string()))
                .starts_with("payload does not deserialize: ")
        );
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
        #[cfg(all(feature = "msgpack", feature = "lz4", feature = "zstd"))]
        let valid = {
            let mut valid = valid;
            for compression in [Compression::Lz4, Compression::Zstd { level: 1 }] {
                let format = Format {
                    codec: Codec::MessagePack,
                    compression,
                    compress_above: 0,
                    ..Format::default()
                };
                let text = "long enough to compress ".repeat(8);
                valid.push(encode_as(Some(&text), &meta(), &format).expect("encodes"));
            }
            valid
        };
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

    #[cfg(all(feature = "msgpack", feature = "lz4", feature = "zstd"))]
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        id: u64,
        tags: Vec<String>,
    }

    #[cfg(all(feature = "msgpack", feature = "lz4", feature = "zstd"))]
    fn doc() -> Doc {
        Doc {
            id: 7,
            tags: (0..200).map(|i| format!("tag number {}", i % 10)).collect(),
        }
    }

    #[cfg(all(feature = "msgpack", feature = "lz4", feature = "zstd"))]
    #[test]
    fn every_format_round_trips_and_every_reader_reads_it() {
        let plain = encode(Some(&doc()), &meta()).expect("encodes").len();
        for codec in [Codec::Json, Codec::MessagePack] {
            for compression in [
                Compression::None,
                Compression::Lz4,
                Compression::Zstd { level: 3 },
            ] {
                let format = Format {
                    codec,
                    compression,
                    compress_above: 64,
                    ..Format::default()
                };
                let bytes = encode_as(Some(&doc()), &meta(), &format).expect("encodes");
                // One decoder for every format: the flags say which.
                let (value, m) = decode::<Doc>(&bytes).expect("decodes");
                assert_eq!((value, m), (Some(doc()), meta()), "{format:?}");
                let flags = bytes[HEADER_LEN - 1];
                assert_eq!(flags & FLAG_MSGPACK != 0, codec == Codec::MessagePack);
                let want = match compression {
                    Compression::None => 0,
                    Compression::Lz4 => FLAG_LZ4,
                    Compression::Zstd { .. } => FLAG_ZSTD,
                };
                assert_eq!(flags & COMPRESSION_MASK, want, "{format:?}");
                if compression != Compression::None {
                    assert!(
                        bytes.len() < plain / 4,
                        "{format:?}: {} of {plain}",
                        bytes.len()
                    );
                }
                // A cached None is the same in every format.
                let none = encode_as::<Doc>(None, &meta(), &format).expect("encodes");
                assert_eq!(none, encode::<Doc>(None, &meta()).expect("encodes"));
            }
        }
        let msgpack = Format {
            codec: Codec::MessagePack,
            ..Format::default()
        };
        assert!(
            encode_as(Some(&doc()), &meta(), &msgpack)
                .expect("encodes")
                .len()
                < plain
        );
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn small_or_incompressible_payloads_stay_as_they_are() {
        let lz4 = |above| Format {
            compression: Compression::Lz4,
            compress_above: above,
            ..Format::default()
        };
        let small = encode_as(Some(&5u32), &meta(), &lz4(64)).expect("encodes");
        assert_eq!(
            small,
            encode(Some(&5u32), &meta()).expect("encodes"),
            "under the threshold"
        );
        // Exactly at the threshold: not above it.
        let at = encode(Some(&"a".repeat(98)), &meta()).expect("encodes");
        let payload_len = at.len() - HEADER_LEN;
        let bytes = encode_as(Some(&"a".repeat(98)), &meta(), &lz4(payload_len)).expect("encodes");
        assert_eq!(bytes, at, "a payload of exactly the threshold stays");
        let bytes =
            encode_as(Some(&"a".repeat(98)), &meta(), &lz4(payload_len - 1)).expect("encodes");
        assert_eq!(
            bytes[HEADER_LEN - 1] & COMPRESSION_MASK,
            FLAG_LZ4,
            "one byte over: compressed"
        );
        // Eight bytes LZ4 cannot shrink (it makes nine): kept as they are,
        // not stored four bytes larger.
        let tiny = encode_as(Some(&12_345_678u32), &meta(), &lz4(0)).expect("encodes");
        assert_eq!(
            tiny,
            encode(Some(&12_345_678u32), &meta()).expect("encodes")
        );
        // Halved is worth it: compressed, though far from a 4x ratio.
        let mut rng = fastrand::Rng::with_seed(3);
        let half: String = (0..4000)
            .map(|i| if i % 2 == 0 { 'x' } else { rng.alphanumeric() })
            .collect();
        let bytes = encode_as(Some(&half), &meta(), &lz4(0)).expect("encodes");
        let plain = encode(Some(&half), &meta()).expect("encodes").len();
        assert_eq!(bytes[HEADER_LEN - 1] & COMPRESSION_MASK, FLAG_LZ4);
        assert!(
            bytes.len() < plain && bytes.len() * 4 > plain,
            "{} of {plain}",
            bytes.len()
        );
        let mut rng = fastrand::Rng::with_seed(9);
        let noise: String = (0..2000).map(|_| rng.alphanumeric()).collect();
        let bytes = encode_as(Some(&noise), &meta(), &lz4(0)).expect("encodes");
        assert_eq!(
            bytes[HEADER_LEN - 1] & COMPRESSION_MASK,
            0,
            "no saving, no compression"
        );
        assert_eq!(decode::<String>(&bytes).expect("decodes").0, Some(noise));
    }

    /// Each compression flag goes to its own decompressor, or, in a build
    /// without its feature, to an error that names the feature (not to the
    /// error for flags no build knows).
    #[test]
    fn a_compressed_entry_goes_to_its_decompressor_or_names_the_missing_feature() {
        for (flag, decompressor, feature, built) in [
            (FLAG_LZ4, "LZ4: ", "`lz4` feature", cfg!(feature = "lz4")),
            (
                FLAG_ZSTD,
                "Zstandard: ",
                "`zstd` feature",
                cfg!(feature = "zstd"),
            ),
        ] {
            let mut bytes = encode::<u32>(None, &meta()).expect("encodes");
            bytes[HEADER_LEN - 1] = flag;
            bytes.extend_from_slice(&5u32.to_le_bytes());
            bytes.extend_from_slice(&[0xff; 8]);
            let e = decode::<u32>(&bytes)
                .expect_err("not compressed data")
                .to_string();
            let expected = if built { decompressor } else { feature };
            assert!(e.contains(expected), "flag {flag:#b}: {e}");
        }
    }

    /// A payload may claim exactly the bound: only more is refused unread.
    #[cfg(feature = "lz4")]
    #[test]
    fn a_payload_claiming_exactly_the_bound_is_decompressed() {
        let mut bytes = encode::<u32>(None, &meta()).expect("encodes");
        bytes[HEADER_LEN - 1] = FLAG_LZ4;
        let claimed = u32::try_from(MAX_DECOMPRESSED).expect("fits");
        bytes.extend_from_slice(&claimed.to_le_bytes());
        bytes.extend_from_slice(&[0xff; 8]);
        let e = decode::<u32>(&bytes).expect_err("not LZ4 data").to_string();
        assert!(e.contains("LZ4: "), "{e}");
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(claimed + 1).to_le_bytes());
        let e = decode::<u32>(&bytes)
            .expect_err("over the bound")
            .to_string();
        assert!(e.contains("over the"), "{e}");
    }

    #[test]
    fn a_payload_that_claims_too_much_or_unknown_flags_is_refused() {
        let mut bomb = encode::<u32>(None, &meta()).expect("encodes");
        bomb[HEADER_LEN - 1] = FLAG_LZ4;
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        bomb.extend_from_slice(&[0; 16]);
        let e = decode::<u32>(&bomb).expect_err("refused").to_string();
        assert!(e.contains("over the"), "{e}");
        let mut zstd = bomb.clone();
        zstd[HEADER_LEN - 1] = FLAG_ZSTD;
        assert!(decode::<u32>(&zstd).is_err());
        // No length at all.
        bomb.truncate(HEADER_LEN + 2);
        assert!(decode::<u32>(&bomb).is_err());
        for flags in [1 << 4, 1 << 7, COMPRESSION_MASK] {
            let mut bytes = encode(Some(&5u32), &meta()).expect("encodes");
            bytes[HEADER_LEN - 1] = flags;
            assert!(
                matches!(decode::<u32>(&bytes), Err(DecodeError::Unsupported(_))),
                "flags {flags:#b}"
            );
        }
    }

    #[test]
    fn a_format_this_build_cannot_write_is_named() {
        let zstd = |level| Format {
            compression: Compression::Zstd { level },
            ..Format::default()
        };
        assert_eq!(Format::default().unsupported(), None);
        let msgpack = Format {
            codec: Codec::MessagePack,
            ..Format::default()
        };
        let lz4 = Format {
            compression: Compression::Lz4,
            ..Format::default()
        };
        // Named exactly when this build lacks the feature.
        assert_eq!(msgpack.unsupported().is_some(), !cfg!(feature = "msgpack"));
        assert_eq!(lz4.unsupported().is_some(), !cfg!(feature = "lz4"));
        if cfg!(feature = "zstd") {
            assert_eq!(zstd(3).unsupported(), None);
            assert!(
                zstd(0)
                    .unsupported()
                    .is_some_and(|w| w.contains("between 1 and 22"))
            );
            assert!(zstd(23).unsupported().is_some());
        } else {
            assert!(
                zstd(3)
                    .unsupported()
                    .is_some_and(|w| w.contains("`zstd` feature"))
            );
        }
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
