//! Values between operators in the batch ABI's binary encoding ([`crate::abi::BINCODE`]: bincode
//! 2 with fixed-width little-endian integers and `u64` lengths), read straight from a slice.
//!
//! Every guest decodes every record it gets and every state it is handed; in Wasm, bincode's own
//! serde reader spent about 550 instructions on an order of eight fields (its reader's
//! bookkeeping per primitive, a general UTF-8 check of each short string). This reader reads the
//! same bytes, and accepts and refuses exactly what bincode does (property tests hold it to
//! bincode on random values and random bytes); it checks a string of up to 8 bytes for ASCII in
//! one word read where it starts, and leaves any other string to the standard library's check.
//! Values are still written by bincode: a writer of our own measured no faster (both spend their
//! time growing the `Vec`). PERFORMANCE.md, tenth pass, has the figures.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::fmt;

/// Why bytes do not decode as the type asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error(message.to_string())
    }
}

fn error(message: &str) -> Error {
    Error(message.to_string())
}

/// Decodes a `T` that may borrow from `bytes` (a `&str` field points into them), which it must
/// take whole.
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    let mut reader = Reader { rest: bytes };
    let value = T::deserialize(&mut reader)?;
    match reader.rest.len() {
        0 => Ok(value),
        trailing => Err(Error(format!("{trailing} trailing bytes"))),
    }
}

/// What is left to read.
struct Reader<'de> {
    rest: &'de [u8],
}

impl<'de> Reader<'de> {
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or_else(ends_early)?;
        self.rest = rest;
        Ok(*head)
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'de [u8], Error> {
        let (head, rest) = self.rest.split_at_checked(len).ok_or_else(ends_early)?;
        self.rest = rest;
        Ok(head)
    }

    /// A length: a `u64` that must fit a `usize`.
    #[inline]
    fn len(&mut self) -> Result<usize, Error> {
        let len = u64::from_le_bytes(self.array()?);
        usize::try_from(len).map_err(|_| out_of_range(len))
    }

    #[inline]
    fn str(&mut self) -> Result<&'de str, Error> {
        let len = self.len()?;
        // Most strings are short: their bytes are checked in one word read from where they
        // start, when the rest of the value is long enough to hold it (the bytes past the
        // string masked off).
        if let (1..=8, Some(word)) = (len, self.rest.first_chunk::<8>()) {
            let mask = u64::MAX >> (64 - 8 * len as u32);
            if u64::from_le_bytes(*word) & mask & ASCII_HIGH_BITS == 0 {
                let text = &self.rest[..len];
                self.rest = &self.rest[len..];
                // SAFETY: none of the string's bytes has its high bit set, so each is an ASCII
                // character, and ASCII text is UTF-8.
                return Ok(unsafe { std::str::from_utf8_unchecked(text) });
            }
        }
        utf8(self.take(len)?)
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let len = self.len()?;
        self.take(len)
    }

    /// A tag of one byte: `false`/`true` for a `bool`, `None`/`Some` for an `Option`.
    #[inline]
    fn flag(&mut self, what: &str) -> Result<bool, Error> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(Error(format!("{other} is not a valid {what} tag"))),
        }
    }

    /// A `char`: its UTF-8 bytes, as many as the first says.
    fn char(&mut self) -> Result<char, Error> {
        let &first = self.rest.first().ok_or_else(ends_early)?;
        let width = match first {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 0,
        };
        if width == 0 {
            return Err(Error(format!("{first:#x} does not begin a char")));
        }
        let bytes = self.take(width)?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or_else(|| Error(format!("{bytes:x?} is not a char")))
    }
}

/// The high bit of each byte of a word: set in a byte that is not ASCII.
const ASCII_HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// `bytes` as text, by the standard library's check (a short ASCII string never gets here: see
/// [`Reader::str`]); out of the usual case's way, whose code stays short.
#[cold]
#[inline(never)]
fn utf8(bytes: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(bytes).map_err(|e| Error(format!("a string is not UTF-8: {e}")))
}

#[cold]
#[inline(never)]
fn out_of_range(len: u64) -> Error {
    Error(format!("a length of {len} is out of range"))
}

#[cold]
#[inline(never)]
fn ends_early() -> Error {
    error("the value ends early")
}

macro_rules! numbers {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(<$ty>::from_le_bytes(self.array()?))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error(
            "the binary encoding does not say what a value is (deserialize_any)",
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error(
            "the binary encoding cannot skip a value it does not know (deserialize_ignored_any)",
        ))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error(
            "the binary encoding has no identifiers (deserialize_identifier)",
        ))
    }

    numbers! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_i128 visit_i128 i128;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
        deserialize_u128 visit_u128 u128;
        deserialize_f32 visit_f32 f32;
        deserialize_f64 visit_f64 f64;
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(self.flag("bool")?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char(self.char()?)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_string(self.str()?.to_owned())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_byte_buf(self.bytes()?.to_vec())
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.flag("Option")? {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items { reader: self, len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_map(Items { reader: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The items of a sequence, tuple or struct (`len` values), or the entries of a map (`len`
/// pairs).
struct Items<'a, 'de> {
    reader: &'a mut Reader<'de>,
    len: usize,
}

impl<'de> Items<'_, 'de> {
    /// The next item (of a map: the next key), if any is left.
    #[inline]
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.next(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        self.next(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reader<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = u32::from_le_bytes(self.array()?);
        let variant = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reader<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::BINCODE;
    use proptest::prelude::*;
    use serde::Serialize;
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Newtype(i16),
        Tuple(u8, char),
        Struct { a: Option<u32>, b: Vec<bool> },
    }

    /// One of every kind of value the serde data model has.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Every<'a> {
        i8: i8,
        i16: i16,
        i32: i32,
        i64: i64,
        i128: i128,
        u8: u8,
        u16: u16,
        u32: u32,
        u64: u64,
        u128: u128,
        f32: f32,
        f64: f64,
        flag: bool,
        letter: char,
        #[serde(borrow)]
        name: &'a str,
        owned: String,
        #[serde(borrow)]
        cow: Cow<'a, str>,
        #[serde(with = "serde_bytes_like")]
        blob: Vec<u8>,
        #[serde(borrow)]
        maybe: Option<Box<Every<'a>>>,
        kinds: Vec<Kind>,
        pair: (u16, String),
        unit: (),
        map: BTreeMap<String, i64>,
    }

    /// A `Vec<u8>` through `serialize_bytes`/`deserialize_byte_buf`, as `serde_bytes` does.
    mod serde_bytes_like {
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            struct Bytes;
            impl serde::de::Visitor<'_> for Bytes {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
            }
            d.deserialize_byte_buf(Bytes)
        }
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Unit),
            any::<i16>().prop_map(Kind::Newtype),
            (any::<u8>(), any::<char>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
            (
                any::<Option<u32>>(),
                proptest::collection::vec(any::<bool>(), 0..4)
            )
                .prop_map(|(a, b)| Kind::Struct { a, b }),
        ]
    }

    /// The owned parts of an [`Every`]: its `&str` fields borrow from these.
    type Texts = (String, String, String);

    fn every<'a>(texts: &'a Texts, depth: u32, seed: &Seed) -> Every<'a> {
        Every {
            i8: seed.ints.0 as i8,
            i16: seed.ints.0 as i16,
            i32: seed.ints.1 as i32,
            i64: seed.ints.1,
            i128: i128::from(seed.ints.0) << 64 | i128::from(seed.ints.1),
            u8: seed.ints.1 as u8,
            u16: seed.ints.1 as u16,
            u32: seed.ints.0 as u32,
            u64: seed.ints.0 as u64,
            u128: (seed.ints.1 as u128) << 3,
            f32: seed.floats.0,
            f64: seed.floats.1,
            flag: seed.flag,
            letter: seed.letter,
            name: &texts.0,
            owned: texts.1.clone(),
            cow: Cow::Borrowed(&texts.2),
            blob: texts.1.as_bytes().to_vec(),
            maybe: (depth > 0).then(|| Box::new(every(texts, depth - 1, seed))),
            kinds: seed.kinds.clone(),
            pair: (seed.ints.0 as u16, texts.0.clone()),
            unit: (),
            map: seed
                .kinds
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("{k:?}"), i as i64))
                .collect(),
        }
    }

    #[derive(Debug, Clone)]
    struct Seed {
        ints: (i64, i64),
        floats: (f32, f64),
        flag: bool,
        letter: char,
        kinds: Vec<Kind>,
    }

    fn seed() -> impl Strategy<Value = Seed> {
        (
            any::<(i64, i64)>(),
            any::<(f32, f64)>().prop_filter("NaN is not equal to itself", |(a, b)| {
                !a.is_nan() && !b.is_nan()
            }),
            any::<bool>(),
            any::<char>(),
            proptest::collection::vec(kind(), 0..4),
        )
            .prop_map(|(ints, floats, flag, letter, kinds)| Seed {
                ints,
                floats,
                flag,
                letter,
                kinds,
            })
    }

    /// What bincode makes of `bytes` as a `T`: the value, or that it refuses them. Its limit
    /// (far above any test's bytes, so it refuses no length this reader would take) keeps it
    /// from allocating what a damaged length says before finding the bytes are not there.
    fn bincode_reads<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Option<T> {
        match bincode::serde::borrow_decode_from_slice::<T, _>(
            bytes,
            BINCODE.with_limit::<{ 1 << 20 }>(),
        ) {
            Ok((value, used)) if used == bytes.len() => Some(value),
            _ => None,
        }
    }

    /// A byte, often a small one (a tag, a variant, a short length).
    fn small_or_any() -> impl Strategy<Value = u8> {
        prop_oneof![0u8..4, any::<u8>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn every_kind_of_value_reads_back_as_bincode_wrote_it(
            texts in any::<Texts>(),
            depth in 0u32..3,
            seed in seed(),
        ) {
            let value = every(&texts, depth, &seed);
            let bytes = bincode::serde::encode_to_vec(&value, BINCODE).unwrap();
            let read: Every = from_slice(&bytes).unwrap();
            prop_assert_eq!(&read, &value);
            // Borrowed fields point into the bytes.
            prop_assert!(bytes.as_ptr_range().contains(&read.name.as_ptr()) || read.name.is_empty());
        }

        /// Any bytes at all: this reader and bincode's agree on whether they are a value of a
        /// type, and on which value. Bytes are cut from a real value and then damaged, so most
        /// get far into it before they break.
        #[test]
        fn any_bytes_are_read_exactly_as_bincode_reads_them(
            texts in any::<Texts>(),
            seed in seed(),
            cut in any::<prop::sample::Index>(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), small_or_any()), 0..4),
            noise in proptest::collection::vec(small_or_any(), 0..32),
        ) {
            let value = every(&texts, 1, &seed);
            let mut bytes = bincode::serde::encode_to_vec(&value, BINCODE).unwrap();
            for (at, byte) in damage {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            prop_assert_eq!(from_slice::<Every>(&bytes).ok(), bincode_reads::<Every>(&bytes));
            // Every prefix of the noise, so some end just where a value does.
            for end in 0..=noise.len() {
                let noise = &noise[..end];
                prop_assert_eq!(from_slice::<Kind>(noise).ok(), bincode_reads::<Kind>(noise));
                prop_assert_eq!(
                    from_slice::<(char, Option<bool>, &str)>(noise).ok(),
                    bincode_reads::<(char, Option<bool>, &str)>(noise)
                );
                prop_assert_eq!(
                    from_slice::<(bool, Option<u8>, Kind)>(noise).ok(),
                    bincode_reads::<(bool, Option<u8>, Kind)>(noise)
                );
                prop_assert_eq!(
                    from_slice::<Vec<String>>(noise).ok(),
                    bincode_reads::<Vec<String>>(noise)
                );
            }
        }

        #[test]
        fn strings_are_checked_as_the_standard_library_checks_them(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x20u8..0x7f], 0..40),
        ) {
            prop_assert_eq!(utf8(&bytes).ok(), std::str::from_utf8(&bytes).ok());
            // Read as a field followed by bytes with every high bit set, which a short string's
            // one-word check reads past its end and must mask off.
            let value = [&(bytes.len() as u64).to_le_bytes()[..], &bytes, &[0xff; 8]].concat();
            let read = from_slice::<(&str, u64)>(&value).ok();
            let expected = std::str::from_utf8(&bytes).ok().map(|text| (text, u64::MAX));
            prop_assert_eq!(read, expected);
        }
    }

    #[test]
    fn what_it_refuses_it_says() {
        let err = |bytes: &[u8]| {
            from_slice::<(bool, Option<u8>)>(bytes)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(&[2, 0]), "2 is not a valid bool tag");
        assert_eq!(err(&[1, 7]), "7 is not a valid Option tag");
        assert_eq!(err(&[1, 1]), "the value ends early");
        assert_eq!(err(&[1, 0, 0]), "1 trailing bytes");
        let text = [&5u64.to_le_bytes()[..], b"ab\xffcd"].concat();
        assert!(
            from_slice::<&str>(&text)
                .unwrap_err()
                .to_string()
                .starts_with("a string is not UTF-8")
        );
        assert!(from_slice::<serde_json::Value>(&[0]).is_err());
    }
}
