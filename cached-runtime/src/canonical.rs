//! A canonical, self-delimiting, type-tagged byte encoding of the serde data
//! model: what [`hashed`](crate::hashed) hashes.
//!
//! The encoding depends on nothing but the value (no serde_json feature, no
//! platform, no insertion order), is prefix-free (no encoding is a proper
//! prefix of another, so concatenations cannot collide), and is injective
//! up to the equivalences listed below.
//!
//! ```text
//! tag   item                          followed by
//! 0x00  unit, unit struct             -
//! 0x01  None                          -
//! 0x02  Some                          the value
//! 0x03  bool                          1 byte, 0 or 1
//! 0x10  integer >= 0 (any width)      u128 LE
//! 0x11  integer <  0 (any width)      i128 LE
//! 0x12  float (f32 widened to f64)    f64::to_bits LE; every NaN as 0x7ff8_0000_0000_0000
//! 0x20  str, char                     u64 LE byte length, UTF-8
//! 0x21  bytes                         u64 LE length, the bytes
//! 0x30  seq, tuple, tuple struct      u64 LE count, the elements
//! 0x40  map, struct                   u64 LE count, the entries sorted by their bytes
//! 0x50  unit variant                  name (u64 LE length, UTF-8)
//! 0x51  newtype variant               name, the value
//! 0x52  tuple variant                 name, u64 LE count, the elements
//! 0x53  struct variant                name, u64 LE count, the entries sorted by their bytes
//! ```
//!
//! A map entry is its key's encoding followed by its value's. Since both are
//! self-delimiting, sorting entries by their bytes sorts them by key bytes
//! (then by value bytes, for duplicate keys).
//!
//! What is deliberately equal, as in JSON:
//!
//! - Integers of every width and signedness by value: `1u8`, `1u64` and
//!   `1i32` encode the same, so widening a field keeps its keys. (An integer
//!   never equals a float: `1` and `1.0` differ, as they do in JSON text.)
//! - `f32` and the `f64` it widens to; all NaNs with each other. `+inf`,
//!   `-inf`, `0.0` and `-0.0` are four distinct values, none of them null.
//! - A `char` and the one-character string.
//! - A seq, a tuple and a tuple struct with the same elements (JSON arrays):
//!   `[u8; 4]` serializes as a tuple, so turning it into a `Vec<u8>` keeps
//!   keys. Within one Rust type the shape is fixed (untagged enums aside,
//!   which JSON merges the same way), so this merges nothing a key needs
//!   apart.
//! - A struct and a map with the same string keys (JSON objects), in any
//!   field or iteration order; skipped fields are simply absent, and
//!   `#[serde(flatten)]` (which serializes a map) agrees with the plain
//!   struct.
//! - A newtype struct and its content; `()` and a unit struct. Struct and
//!   enum *type* names are not encoded, so renaming a type keeps its keys.
//!
//! What is deliberately distinct, unlike JSON:
//!
//! - `None`, `Some(None)`, `()` and every float; `Some(x)` and `x`.
//! - Enum variants from strings and from each other's shapes. A variant is
//!   encoded by *name*, not index, so reordering variants keeps keys.
//! - Duplicate map keys (a user `Serialize` impl may emit them): every entry
//!   is kept, sorted, so no information is dropped (JSON keeps the last).
//! - Bytes (`serialize_bytes`) from a seq of integers.
//!
//! [`is_human_readable`](serde::Serializer::is_human_readable) stays `true`,
//! as for JSON: UUIDs, IP addresses and timestamps encode as their text.

use std::cell::Cell;
use std::fmt;

use serde::Serialize;
use serde::ser;

mod tag {
    pub(super) const UNIT: u8 = 0x00;
    pub(super) const NONE: u8 = 0x01;
    pub(super) const SOME: u8 = 0x02;
    pub(super) const BOOL: u8 = 0x03;
    pub(super) const UINT: u8 = 0x10;
    pub(super) const NEG_INT: u8 = 0x11;
    pub(super) const FLOAT: u8 = 0x12;
    pub(super) const STR: u8 = 0x20;
    pub(super) const BYTES: u8 = 0x21;
    pub(super) const SEQ: u8 = 0x30;
    pub(super) const MAP: u8 = 0x40;
    pub(super) const UNIT_VARIANT: u8 = 0x50;
    pub(super) const NEWTYPE_VARIANT: u8 = 0x51;
    pub(super) const TUPLE_VARIANT: u8 = 0x52;
    pub(super) const STRUCT_VARIANT: u8 = 0x53;
}

/// The bits every NaN encodes as (the quiet NaN `f64::NAN` has today).
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// The canonical encoding of `value`, or the error its `Serialize` impl
/// raised (or a misuse of the serializer, such as a map value without a key).
///
/// An error anywhere fails the whole encoding, even one the impl caught and
/// ignored: a partial encoding would be stable, so it could be shared.
pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    let failed = Cell::new(false);
    let result = value.serialize(Canon {
        out: &mut out,
        failed: &failed,
    });
    match result {
        Err(e) => Err(e),
        Ok(()) if failed.get() => Err(Error(
            "the value's Serialize impl ignored an error it was given".into(),
        )),
        Ok(()) => Ok(out),
    }
}

/// Why a value has no canonical encoding.
#[derive(Debug)]
pub(crate) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn put_uint(out: &mut Vec<u8>, v: u128) {
    out.push(tag::UINT);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i128) {
    match u128::try_from(v) {
        Ok(unsigned) => put_uint(out, unsigned),
        Err(_) => {
            out.push(tag::NEG_INT);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The serializer: appends one value's encoding to `out`.
struct Canon<'a> {
    out: &'a mut Vec<u8>,
    /// Set by every error seen on the way, so one a `Serialize` impl swallows
    /// still fails the encoding.
    failed: &'a Cell<bool>,
}

impl<'a> Canon<'a> {
    /// Serializes a nested value into `out`, noting a failure.
    fn nested<T: Serialize + ?Sized>(
        out: &mut Vec<u8>,
        failed: &Cell<bool>,
        value: &T,
    ) -> Result<(), Error> {
        value
            .serialize(Canon { out, failed })
            .inspect_err(|_| failed.set(true))
    }

    /// Starts a seq-like compound: `header` then a count to patch in `end`.
    fn seq(self, header: u8, name: Option<&str>) -> Seq<'a> {
        self.out.push(header);
        if let Some(name) = name {
            put_str(self.out, name);
        }
        let count_at = self.out.len();
        self.out.extend_from_slice(&0u64.to_le_bytes());
        Seq {
            out: self.out,
            failed: self.failed,
            count_at,
            count: 0,
        }
    }

    /// Starts a map-like compound: `header`, then the sorted entries in `end`.
    fn map(self, header: u8, name: Option<&str>) -> Map<'a> {
        self.out.push(header);
        if let Some(name) = name {
            put_str(self.out, name);
        }
        Map {
            out: self.out,
            failed: self.failed,
            entries: Vec::new(),
            spans: Vec::new(),
            key_at: None,
        }
    }
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Map<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.extend_from_slice(&[tag::BOOL, u8::from(v)]);
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        put_int(self.out, v.into());
        Ok(())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        put_int(self.out, v.into());
        Ok(())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        put_int(self.out, v.into());
        Ok(())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        put_int(self.out, v.into());
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        put_int(self.out, v);
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        put_uint(self.out, v.into());
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        put_uint(self.out, v.into());
        Ok(())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        put_uint(self.out, v.into());
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        put_uint(self.out, v.into());
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        put_uint(self.out, v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        let bits = if v.is_nan() {
            CANONICAL_NAN
        } else {
            v.to_bits()
        };
        self.out.push(tag::FLOAT);
        self.out.extend_from_slice(&bits.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.out.push(tag::STR);
        put_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.out.push(tag::BYTES);
        put_len(self.out, v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(tag::NONE);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.out.push(tag::SOME);
        Self::nested(self.out, self.failed, value)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.out.push(tag::UNIT);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.out.push(tag::UNIT_VARIANT);
        put_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        Self::nested(self.out, self.failed, value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(tag::NEWTYPE_VARIANT);
        put_str(self.out, variant);
        Self::nested(self.out, self.failed, value)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(self.seq(tag::SEQ, None))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Seq<'a>, Error> {
        Ok(self.seq(tag::SEQ, None))
    }

    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Seq<'a>, Error> {
        Ok(self.seq(tag::SEQ, None))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>, Error> {
        Ok(self.seq(tag::TUPLE_VARIANT, Some(variant)))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Map<'a>, Error> {
        Ok(self.map(tag::MAP, None))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Map<'a>, Error> {
        Ok(self.map(tag::MAP, None))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Map<'a>, Error> {
        Ok(self.map(tag::STRUCT_VARIANT, Some(variant)))
    }
}

/// A seq, tuple, tuple struct or tuple variant being written: the count is a
/// placeholder until `end`, so a wrong or missing length hint cannot matter.
struct Seq<'a> {
    out: &'a mut Vec<u8>,
    failed: &'a Cell<bool>,
    count_at: usize,
    count: u64,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.count += 1;
        Canon::nested(self.out, self.failed, value)
    }

    fn finish(self) -> Result<(), Error> {
        let count = self.count.to_le_bytes();
        match self.out.get_mut(self.count_at..self.count_at + count.len()) {
            Some(slot) => {
                slot.copy_from_slice(&count);
                Ok(())
            }
            // Cannot happen: `out` only grows while a compound is open.
            None => {
                self.failed.set(true);
                Err(Error("canonical encoding: lost a sequence's count".into()))
            }
        }
    }
}

/// Sequences, tuples, tuple structs and tuple variants encode alike: each
/// element in turn, then the count.
macro_rules! seq_like {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                self.finish()
            }
        }
    )*};
}

seq_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A map, struct or struct variant being written: entries are encoded into
/// `entries` and written out, sorted, by `end`.
struct Map<'a> {
    out: &'a mut Vec<u8>,
    failed: &'a Cell<bool>,
    /// Every entry's encoding, key then value, back to back.
    entries: Vec<u8>,
    /// Where each complete entry lies in `entries`.
    spans: Vec<(usize, usize)>,
    /// Where the entry whose key was given, but not yet its value, starts.
    key_at: Option<usize>,
}

impl Map<'_> {
    fn fail(&self, why: &str) -> Error {
        self.failed.set(true);
        Error(why.into())
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        if self.key_at.is_some() {
            return Err(self.fail("serialize_key called twice without a value"));
        }
        self.key_at = Some(self.entries.len());
        Canon::nested(&mut self.entries, self.failed, key)
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let Some(start) = self.key_at.take() else {
            return Err(self.fail("serialize_value called without a key"));
        };
        Canon::nested(&mut self.entries, self.failed, value)?;
        self.spans.push((start, self.entries.len()));
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.key(key)?;
        self.value(value)
    }

    fn finish(self) -> Result<(), Error> {
        if self.key_at.is_some() {
            return Err(self.fail("a map key without its value"));
        }
        let Map {
            out,
            entries,
            mut spans,
            ..
        } = self;
        let entry = |&(start, end): &(usize, usize)| entries.get(start..end).unwrap_or_default();
        spans.sort_unstable_by(|a, b| entry(a).cmp(entry(b)));
        put_len(out, spans.len());
        for span in &spans {
            out.extend_from_slice(entry(span));
        }
        Ok(())
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.value(value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStruct for Map<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Map<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Serialize;
    use serde::ser::{
        SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
        SerializeTupleStruct, SerializeTupleVariant, Serializer,
    };

    use super::to_bytes;
    use crate::{Hashed, hashed};

    fn bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        to_bytes(value).expect("a derived Serialize impl never fails")
    }

    fn uint(v: u128) -> Vec<u8> {
        let mut out = vec![0x10];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    fn text(tag: u8, s: &str) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// The encoding is the documented table, byte for byte. Changing it
    /// changes every `hashed` key ever deployed.
    #[test]
    fn encodes_the_documented_bytes() {
        assert_eq!(bytes(&1u8), uint(1));
        assert_eq!(bytes(&u128::MAX), uint(u128::MAX));
        let mut minus_one = vec![0x11];
        minus_one.extend_from_slice(&(-1i128).to_le_bytes());
        assert_eq!(bytes(&-1i8), minus_one);
        assert_eq!(bytes(&true), [0x03, 1]);
        assert_eq!(bytes(&()), [0x00]);
        assert_eq!(bytes(&None::<u8>), [0x01]);
        assert_eq!(bytes(&Some(())), [0x02, 0x00]);
        let mut nan = vec![0x12];
        nan.extend_from_slice(&0x7ff8_0000_0000_0000u64.to_le_bytes());
        assert_eq!(bytes(&f64::NAN), nan);
        assert_eq!(bytes(&-f64::NAN), nan);
        assert_eq!(bytes(&f32::NAN), nan);
        assert_eq!(bytes("ab"), text(0x20, "ab"));
        assert_eq!(bytes(&'é'), text(0x20, "é"));
        assert_eq!(bytes(&serde_bytes_like(b"ab")), text(0x21, "ab"));

        // A seq: count, then the elements.
        let mut seq = vec![0x30];
        seq.extend_from_slice(&2u64.to_le_bytes());
        seq.extend(uint(1));
        seq.extend(uint(2));
        assert_eq!(bytes(&[1u8, 2]), seq);
        assert_eq!(bytes(&vec![1u64, 2]), seq);
        assert_eq!(bytes(&(1u8, 2i32)), seq);

        // A struct: its entries sorted by their bytes ("a" before "b").
        #[derive(Serialize)]
        struct S {
            b: u8,
            a: u8,
        }
        let mut map = vec![0x40];
        map.extend_from_slice(&2u64.to_le_bytes());
        map.extend(text(0x20, "a"));
        map.extend(uint(2));
        map.extend(text(0x20, "b"));
        map.extend(uint(1));
        assert_eq!(bytes(&S { b: 1, a: 2 }), map);

        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
        }
        assert_eq!(bytes(&E::Unit), text(0x50, "Unit"));
        let mut new = text(0x51, "New");
        new.extend(uint(3));
        assert_eq!(bytes(&E::New(3)), new);
    }

    /// `serialize_bytes`, without a dependency on serde_bytes.
    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }

    #[test]
    fn misuse_of_the_serializer_is_an_error_not_a_panic() {
        struct ValueWithoutKey;
        impl Serialize for ValueWithoutKey {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_value(&1u8)?;
                map.end()
            }
        }
        struct KeyWithoutValue;
        impl Serialize for KeyWithoutValue {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_key(&1u8)?;
                map.end()
            }
        }
        /// Swallows the error of a failing element and finishes anyway.
        struct Swallows;
        impl Serialize for Swallows {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(2))?;
                let _ = seq.serialize_element(&ValueWithoutKey);
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        assert!(to_bytes(&ValueWithoutKey).is_err());
        assert!(to_bytes(&KeyWithoutValue).is_err());
        assert!(to_bytes(&Swallows).is_err());
        assert!(to_bytes(&vec![Some(ValueWithoutKey)]).is_err());
    }

    /// A wrong length hint changes nothing: counts are what was written.
    #[test]
    fn length_hints_are_not_trusted() {
        struct Lies(bool);
        impl Serialize for Lies {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(if self.0 { 7 } else { 0 }))?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        assert_eq!(bytes(&Lies(true)), bytes(&Lies(false)));
        assert_eq!(bytes(&Lies(true)), bytes(&[1u8]));
    }

    // ---- Generated values -------------------------------------------------

    /// A value of the serde data model, serialized by hand item by item.
    #[derive(Clone, Debug)]
    enum Gen {
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        U128(u128),
        I8(i8),
        I16(i16),
        I32(i32),
        I64(i64),
        I128(i128),
        F32(f32),
        F64(f64),
        Bool(bool),
        Char(char),
        Str(String),
        Bytes(Vec<u8>),
        None,
        Some(Box<Gen>),
        Unit,
        UnitStruct,
        Seq(Vec<Gen>),
        Tuple(Vec<Gen>),
        TupleStruct(Vec<Gen>),
        Map(Vec<(Gen, Gen)>),
        Struct(Vec<(&'static str, Gen)>),
        Newtype(Box<Gen>),
        UnitVariant(&'static str),
        NewtypeVariant(&'static str, Box<Gen>),
        TupleVariant(&'static str, Vec<Gen>),
        StructVariant(&'static str, Vec<(&'static str, Gen)>),
    }

    impl Serialize for Gen {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Gen::U8(v) => s.serialize_u8(*v),
                Gen::U16(v) => s.serialize_u16(*v),
                Gen::U32(v) => s.serialize_u32(*v),
                Gen::U64(v) => s.serialize_u64(*v),
                Gen::U128(v) => s.serialize_u128(*v),
                Gen::I8(v) => s.serialize_i8(*v),
                Gen::I16(v) => s.serialize_i16(*v),
                Gen::I32(v) => s.serialize_i32(*v),
                Gen::I64(v) => s.serialize_i64(*v),
                Gen::I128(v) => s.serialize_i128(*v),
                Gen::F32(v) => s.serialize_f32(*v),
                Gen::F64(v) => s.serialize_f64(*v),
                Gen::Bool(v) => s.serialize_bool(*v),
                Gen::Char(v) => s.serialize_char(*v),
                Gen::Str(v) => s.serialize_str(v),
                Gen::Bytes(v) => s.serialize_bytes(v),
                Gen::None => s.serialize_none(),
                Gen::Some(v) => s.serialize_some(v),
                Gen::Unit => s.serialize_unit(),
                Gen::UnitStruct => s.serialize_unit_struct("Marker"),
                Gen::Seq(items) => {
                    // No length hint half the time, as an iterator would.
                    let hint = (items.len() % 2 == 0).then_some(items.len());
                    let mut seq = s.serialize_seq(hint)?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Gen::Tuple(items) => {
                    let mut t = s.serialize_tuple(items.len())?;
                    for item in items {
                        t.serialize_element(item)?;
                    }
                    t.end()
                }
                Gen::TupleStruct(items) => {
                    let mut t = s.serialize_tuple_struct("Pair", items.len())?;
                    for item in items {
                        t.serialize_field(item)?;
                    }
                    t.end()
                }
                Gen::Map(entries) => {
                    let mut map = s.serialize_map(Some(entries.len()))?;
                    for (k, v) in entries {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
                Gen::Struct(fields) => {
                    let mut st = s.serialize_struct("Query", fields.len())?;
                    for (k, v) in fields {
                        st.serialize_field(k, v)?;
                    }
                    st.end()
                }
                Gen::Newtype(v) => s.serialize_newtype_struct("Id", v),
                Gen::UnitVariant(name) => s.serialize_unit_variant("E", 0, name),
                Gen::NewtypeVariant(name, v) => s.serialize_newtype_variant("E", 1, name, v),
                Gen::TupleVariant(name, items) => {
                    let mut t = s.serialize_tuple_variant("E", 2, name, items.len())?;
                    for item in items {
                        t.serialize_field(item)?;
                    }
                    t.end()
                }
                Gen::StructVariant(name, fields) => {
                    let mut st = s.serialize_struct_variant("E", 3, name, fields.len())?;
                    for (k, v) in fields {
                        st.serialize_field(k, v)?;
                    }
                    st.end()
                }
            }
        }
    }

    /// The equality the encoding promises, defined independently of it: two
    /// `Gen`s are equal when their `Norm`s are.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum Norm {
        Unit,
        None,
        Some(Box<Norm>),
        Bool(bool),
        /// An integer as (is negative, two's complement bits).
        Int(bool, u128),
        /// A float other than NaN, as f64 bits.
        Float(u64),
        /// Every NaN.
        NaN,
        Str(String),
        Bytes(Vec<u8>),
        Seq(Vec<Norm>),
        /// A multiset of entries: sorted.
        Map(Vec<(Norm, Norm)>),
        UnitVariant(String),
        NewtypeVariant(String, Box<Norm>),
        TupleVariant(String, Vec<Norm>),
        StructVariant(String, Vec<(Norm, Norm)>),
    }

    fn int(v: i128) -> Norm {
        Norm::Int(v < 0, v as u128)
    }

    fn float(v: f64) -> Norm {
        if v.is_nan() {
            Norm::NaN
        } else {
            Norm::Float(v.to_bits())
        }
    }

    fn fields(fields: &[(&'static str, Gen)]) -> Vec<(Norm, Norm)> {
        let mut out: Vec<_> = fields
            .iter()
            .map(|(k, v)| (Norm::Str((*k).into()), norm(v)))
            .collect();
        out.sort();
        out
    }

    fn norm(g: &Gen) -> Norm {
        let seq = |items: &[Gen]| items.iter().map(norm).collect();
        match g {
            Gen::U8(v) => Norm::Int(false, (*v).into()),
            Gen::U16(v) => Norm::Int(false, (*v).into()),
            Gen::U32(v) => Norm::Int(false, (*v).into()),
            Gen::U64(v) => Norm::Int(false, (*v).into()),
            Gen::U128(v) => Norm::Int(false, *v),
            Gen::I8(v) => int((*v).into()),
            Gen::I16(v) => int((*v).into()),
            Gen::I32(v) => int((*v).into()),
            Gen::I64(v) => int((*v).into()),
            Gen::I128(v) => int(*v),
            Gen::F32(v) => float((*v).into()),
            Gen::F64(v) => float(*v),
            Gen::Bool(v) => Norm::Bool(*v),
            Gen::Char(c) => Norm::Str(c.to_string()),
            Gen::Str(s) => Norm::Str(s.clone()),
            Gen::Bytes(b) => Norm::Bytes(b.clone()),
            Gen::None => Norm::None,
            Gen::Some(v) => Norm::Some(Box::new(norm(v))),
            Gen::Unit | Gen::UnitStruct => Norm::Unit,
            Gen::Seq(items) | Gen::Tuple(items) | Gen::TupleStruct(items) => Norm::Seq(seq(items)),
            Gen::Map(entries) => {
                let mut out: Vec<_> = entries.iter().map(|(k, v)| (norm(k), norm(v))).collect();
                out.sort();
                Norm::Map(out)
            }
            Gen::Struct(f) => Norm::Map(fields(f)),
            Gen::Newtype(v) => norm(v),
            Gen::UnitVariant(name) => Norm::UnitVariant((*name).into()),
            Gen::NewtypeVariant(name, v) => Norm::NewtypeVariant((*name).into(), Box::new(norm(v))),
            Gen::TupleVariant(name, items) => Norm::TupleVariant((*name).into(), seq(items)),
            Gen::StructVariant(name, f) => Norm::StructVariant((*name).into(), fields(f)),
        }
    }

    const TEXT: &[&str] = &[
        "", "a", "b", " ", ":", "*", "\\", "~", "a:b", "é", "😀", "\0", "null", "\"", "[", "{}",
    ];
    const NAMES: &[&str] = &["a", "b", "id", "limit", "", ":", "é", "Some", "None"];

    /// One of `pool` (an array or slice, evaluated before the draw).
    macro_rules! pick {
        ($rng:expr, $pool:expr $(,)?) => {{
            let pool = $pool;
            let at = $rng.usize(..pool.len());
            pool[at].clone()
        }};
    }

    fn gen_float(rng: &mut fastrand::Rng) -> f64 {
        pick!(
            rng,
            &[
                0.0,
                -0.0,
                1.0,
                -1.0,
                0.5,
                f64::NAN,
                -f64::NAN,
                f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
                f64::MAX,
                rng.f64(),
            ],
        )
    }

    fn gen_leaf(rng: &mut fastrand::Rng) -> Gen {
        match rng.u8(..19) {
            0 => Gen::U8(pick!(rng, &[0, 1, 2, u8::MAX, rng.u8(..)])),
            1 => Gen::U16(pick!(rng, &[0, 1, 256, u16::MAX, rng.u16(..)])),
            2 => Gen::U32(pick!(rng, &[0, 1, u32::MAX, rng.u32(..)])),
            3 => Gen::U64(pick!(rng, &[0, 1, u64::MAX - 1, u64::MAX, rng.u64(..)])),
            4 => Gen::U128(pick!(
                rng,
                &[
                    0,
                    1,
                    u64::MAX.into(),
                    u128::from(u64::MAX) + 1,
                    u128::MAX - 1,
                    u128::MAX,
                    rng.u128(..),
                ],
            )),
            5 => Gen::I8(pick!(rng, &[0, 1, -1, i8::MIN, i8::MAX, rng.i8(..)])),
            6 => Gen::I16(pick!(rng, &[0, -1, i16::MIN, i16::MAX, rng.i16(..)])),
            7 => Gen::I32(pick!(rng, &[0, 1, -1, i32::MIN, i32::MAX, rng.i32(..)])),
            8 => Gen::I64(pick!(rng, &[0, -1, i64::MIN, i64::MAX, rng.i64(..)])),
            9 => Gen::I128(pick!(
                rng,
                &[
                    0,
                    -1,
                    2,
                    i64::MIN.into(),
                    i128::MIN,
                    i128::MIN + 1,
                    i128::MAX,
                    rng.i128(..),
                ],
            )),
            10 => Gen::F32(pick!(
                rng,
                &[
                    0.0,
                    -0.0,
                    1.0,
                    0.5,
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    0.1,
                    rng.f32()
                ],
            )),
            11 => Gen::F64(gen_float(rng)),
            12 => Gen::Bool(rng.bool()),
            13 => Gen::Char(pick!(rng, &['a', ':', '*', '\\', '~', 'é', '😀', '\0'])),
            14 => Gen::Str((0..rng.usize(..3)).map(|_| pick!(rng, TEXT)).collect()),
            15 => Gen::Bytes(
                (0..rng.usize(..3))
                    .map(|_| pick!(rng, &[0, 1, b':', 0xff]))
                    .collect(),
            ),
            16 => Gen::None,
            17 => Gen::Unit,
            _ => Gen::UnitStruct,
        }
    }

    fn generate(rng: &mut fastrand::Rng, depth: u32) -> Gen {
        if depth == 0 || rng.u8(..3) == 0 {
            return gen_leaf(rng);
        }
        let d = depth - 1;
        let items =
            |rng: &mut fastrand::Rng| (0..rng.usize(..4)).map(|_| generate(rng, d)).collect();
        let fields = |rng: &mut fastrand::Rng| {
            (0..rng.usize(..4))
                .map(|_| (pick!(rng, NAMES), generate(rng, d)))
                .collect()
        };
        match rng.u8(..10) {
            0 => Gen::Some(Box::new(generate(rng, d))),
            1 => Gen::Seq(items(rng)),
            2 => Gen::Tuple(items(rng)),
            3 => Gen::TupleStruct(items(rng)),
            4 => Gen::Map(
                (0..rng.usize(..4))
                    .map(|_| (generate(rng, d), generate(rng, d)))
                    .collect(),
            ),
            5 => Gen::Struct(fields(rng)),
            6 => Gen::Newtype(Box::new(generate(rng, d))),
            7 => Gen::UnitVariant(pick!(rng, NAMES)),
            8 => match rng.u8(..3) {
                0 => Gen::NewtypeVariant(pick!(rng, NAMES), Box::new(generate(rng, d))),
                1 => Gen::TupleVariant(pick!(rng, NAMES), items(rng)),
                _ => Gen::StructVariant(pick!(rng, NAMES), fields(rng)),
            },
            _ => gen_leaf(rng),
        }
    }

    /// The same non-negative integer as some type that holds it.
    fn retype_uint(rng: &mut fastrand::Rng, v: u128) -> Gen {
        let mut options = vec![Gen::U128(v)];
        if let Ok(x) = u8::try_from(v) {
            options.push(Gen::U8(x));
        }
        if let Ok(x) = u16::try_from(v) {
            options.push(Gen::U16(x));
        }
        if let Ok(x) = u32::try_from(v) {
            options.push(Gen::U32(x));
        }
        if let Ok(x) = u64::try_from(v) {
            options.push(Gen::U64(x));
        }
        if let Ok(x) = i128::try_from(v) {
            options.push(retype_int(rng, x));
        }
        options.swap_remove(rng.usize(..options.len()))
    }

    /// The same signed integer as some signed type that holds it.
    fn retype_int(rng: &mut fastrand::Rng, v: i128) -> Gen {
        let mut options = vec![Gen::I128(v)];
        if let Ok(x) = i8::try_from(v) {
            options.push(Gen::I8(x));
        }
        if let Ok(x) = i16::try_from(v) {
            options.push(Gen::I16(x));
        }
        if let Ok(x) = i32::try_from(v) {
            options.push(Gen::I32(x));
        }
        if let Ok(x) = i64::try_from(v) {
            options.push(Gen::I64(x));
        }
        options.swap_remove(rng.usize(..options.len()))
    }

    /// A value equal to `g` by `Norm`, but written with other types, other
    /// shapes and other orders wherever the encoding promises equality.
    fn twin(rng: &mut fastrand::Rng, g: &Gen) -> Gen {
        let shuffled = |rng: &mut fastrand::Rng, items: &[Gen]| -> Vec<Gen> {
            items.iter().map(|i| twin(rng, i)).collect()
        };
        let out = match g {
            Gen::U8(v) => retype_uint(rng, (*v).into()),
            Gen::U16(v) => retype_uint(rng, (*v).into()),
            Gen::U32(v) => retype_uint(rng, (*v).into()),
            Gen::U64(v) => retype_uint(rng, (*v).into()),
            Gen::U128(v) => retype_uint(rng, *v),
            Gen::I8(v) => retype_int(rng, (*v).into()),
            Gen::I16(v) => retype_int(rng, (*v).into()),
            Gen::I32(v) => retype_int(rng, (*v).into()),
            Gen::I64(v) => retype_int(rng, (*v).into()),
            Gen::I128(v) => match u128::try_from(*v) {
                Ok(u) => retype_uint(rng, u),
                Err(_) => retype_int(rng, *v),
            },
            Gen::F32(v) => Gen::F64((*v).into()),
            Gen::F64(v) if v.is_nan() => {
                pick!(
                    rng,
                    &[Gen::F32(f32::NAN), Gen::F64(-f64::NAN), Gen::F64(f64::NAN)]
                )
            }
            Gen::F64(v) => match *v as f32 {
                narrow if f64::from(narrow).to_bits() == v.to_bits() => Gen::F32(narrow),
                _ => Gen::F64(*v),
            },
            Gen::Char(c) => Gen::Str(c.to_string()),
            Gen::Str(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Gen::Char(c),
                    _ => Gen::Str(s.clone()),
                }
            }
            Gen::Unit => Gen::UnitStruct,
            Gen::UnitStruct => Gen::Unit,
            Gen::Some(v) => Gen::Some(Box::new(twin(rng, v))),
            Gen::Seq(items) | Gen::Tuple(items) | Gen::TupleStruct(items) => {
                let items = shuffled(rng, items);
                match rng.u8(..3) {
                    0 => Gen::Seq(items),
                    1 => Gen::Tuple(items),
                    _ => Gen::TupleStruct(items),
                }
            }
            Gen::Map(entries) => {
                let mut entries: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| (twin(rng, k), twin(rng, v)))
                    .collect();
                rng.shuffle(&mut entries);
                Gen::Map(entries)
            }
            Gen::Struct(fields) => {
                let mut entries: Vec<_> = fields
                    .iter()
                    .map(|(k, v)| (Gen::Str((*k).into()), twin(rng, v)))
                    .collect();
                rng.shuffle(&mut entries);
                if rng.bool() {
                    Gen::Map(entries)
                } else {
                    let mut fields = fields.clone();
                    rng.shuffle(&mut fields);
                    Gen::Struct(fields)
                }
            }
            Gen::Newtype(v) => twin(rng, v),
            Gen::NewtypeVariant(name, v) => Gen::NewtypeVariant(name, Box::new(twin(rng, v))),
            Gen::TupleVariant(name, items) => Gen::TupleVariant(name, shuffled(rng, items)),
            Gen::StructVariant(name, fields) => {
                let mut fields: Vec<_> = fields.iter().map(|(k, v)| (*k, twin(rng, v))).collect();
                rng.shuffle(&mut fields);
                Gen::StructVariant(name, fields)
            }
            other => other.clone(),
        };
        if rng.u8(..5) == 0 {
            Gen::Newtype(Box::new(out))
        } else {
            out
        }
    }

    /// `g` with one subtree replaced by a fresh leaf: a near neighbour, which
    /// may or may not be equal to `g`.
    fn mutant(rng: &mut fastrand::Rng, g: &Gen) -> Gen {
        let mut out = g.clone();
        mutate(rng, &mut out);
        out
    }

    fn mutate(rng: &mut fastrand::Rng, at: &mut Gen) {
        let mut children: Vec<&mut Gen> = match at {
            Gen::Some(v) | Gen::Newtype(v) | Gen::NewtypeVariant(_, v) => vec![&mut **v],
            Gen::Seq(items)
            | Gen::Tuple(items)
            | Gen::TupleStruct(items)
            | Gen::TupleVariant(_, items) => items.iter_mut().collect(),
            Gen::Map(entries) => entries.iter_mut().flat_map(|(k, v)| [k, v]).collect(),
            Gen::Struct(fields) | Gen::StructVariant(_, fields) => {
                fields.iter_mut().map(|(_, v)| v).collect()
            }
            _ => Vec::new(),
        };
        if children.is_empty() || rng.u8(..3) == 0 {
            *at = gen_leaf(rng);
            return;
        }
        let i = rng.usize(..children.len());
        mutate(rng, children.swap_remove(i));
    }

    fn seed() -> u64 {
        std::env::var("CANONICAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..))
    }

    /// Thousands of random values: different ones (by `Norm`) never share an
    /// encoding or a hash, equal ones (retyped, reshaped, reordered) always
    /// do. Rerun a failure with `CANONICAL_SEED=<seed>`.
    #[test]
    fn distinct_values_encode_distinctly_and_equal_ones_equally() {
        let seed = seed();
        println!("CANONICAL_SEED={seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut by_norm: HashMap<Norm, (Vec<u8>, Hashed, Gen)> = HashMap::new();
        let mut by_bytes: HashMap<Vec<u8>, (Norm, Gen)> = HashMap::new();
        let mut by_hash: HashMap<Hashed, Norm> = HashMap::new();
        let mut equal_pairs = 0;
        for _ in 0..5000 {
            let g = generate(&mut rng, 4);
            let t = twin(&mut rng, &g);
            let m = mutant(&mut rng, &g);
            let mt = twin(&mut rng, &m);
            for value in [g, t, m, mt] {
                let n = norm(&value);
                let b = bytes(&value);
                let h = hashed(&value);
                if let Some((eb, eh, other)) = by_norm.get(&n) {
                    assert!(
                        *eb == b && *eh == h,
                        "CANONICAL_SEED={seed}: equal values encode differently:\n{value:?}\n{other:?}"
                    );
                    equal_pairs += 1;
                } else {
                    by_norm.insert(n.clone(), (b.clone(), h, value.clone()));
                }
                if let Some((en, other)) = by_bytes.get(&b) {
                    assert!(
                        *en == n,
                        "CANONICAL_SEED={seed}: distinct values share an encoding:\n{value:?}\n{other:?}"
                    );
                } else {
                    by_bytes.insert(b, (n.clone(), value));
                }
                let seen = by_hash.entry(h).or_insert_with(|| n.clone());
                assert!(
                    *seen == n,
                    "CANONICAL_SEED={seed}: distinct values share a hash"
                );
            }
        }
        println!(
            "{} distinct values, {equal_pairs} equal pairs",
            by_norm.len()
        );
        // Prefix-free: no encoding is a proper prefix of another. (If one
        // were, it would be a prefix of the next one in sorted order too.)
        let mut encodings: Vec<&Vec<u8>> = by_bytes.keys().collect();
        encodings.sort();
        for pair in encodings.windows(2) {
            assert!(
                !pair[1].starts_with(pair[0]),
                "CANONICAL_SEED={seed}: {:?} is a prefix of {:?}",
                by_bytes[pair[0]].1,
                by_bytes[pair[1]].1,
            );
        }
        // Enough of both kinds to mean something.
        assert!(
            by_norm.len() > 3000,
            "only {} distinct values",
            by_norm.len()
        );
        assert!(equal_pairs > 10_000, "only {equal_pairs} equal pairs");
    }
}
