//! Values in and out of the batch ABI: JSON or bincode, and the probe that tells a struct type
//! (whose JSON must then be an object).

use crate::abi::Encoding;
use serde::{Deserialize, Serialize};

/// Appends `value` to `buf` in `encoding`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    encoding: Encoding,
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    match encoding {
        Encoding::Json => serde_json::to_writer(buf, value).map_err(|e| e.to_string()),
        Encoding::Parsed => {
            let mut text = Vec::new();
            serde_json::to_writer(&mut text, value).map_err(|e| e.to_string())?;
            crate::abi::put_parsed(buf, None, &text);
            Ok(())
        }
        Encoding::Bincode => bincode::serde::encode_into_std_write(value, buf, crate::abi::BINCODE)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// Decodes a value from `encoding`; the value may borrow from `bytes` (a `&str` or `Cow<str>`
/// field of the input points into the batch instead of being allocated). With `object_only` (see
/// [`is_struct`]), JSON must be an object at the top level: serde would otherwise accept an array
/// for a struct's fields in order.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    encoding: Encoding,
    bytes: &'a [u8],
    object_only: bool,
) -> Result<T, String> {
    match encoding {
        Encoding::Json => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if object_only && first == Some(&b'[') {
                return Err("expected a JSON object, found an array".into());
            }
            // Validating the UTF-8 of the whole text at once lets the parser skip it string by
            // string (its `&str` reader); in Wasm that is a fifth of the parse.
            let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
        Encoding::Parsed => match crate::abi::parsed_parts(bytes) {
            Some((Some(bincode), _)) => decode(Encoding::Bincode, bincode, object_only),
            Some((None, text)) => decode(Encoding::Json, text, object_only),
            None => Err("a value read by the host is shorter than its length".into()),
        },
        Encoding::Bincode => crate::wire::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Whether `T` deserializes as a struct, found by asking it to deserialize from a probe that
/// only records which kind of data `T` asks for.
pub(crate) fn is_struct<'de, T: Deserialize<'de>>() -> bool {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Asked(bool);

    impl std::fmt::Display for Asked {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Asked {}

    impl de::Error for Asked {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Asked(false)
        }
    }

    struct Probe;

    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Asked;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Asked> {
            Err(Asked(false))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Asked> {
            Err(Asked(true))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    matches!(T::deserialize(Probe), Err(Asked(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
    struct Pair {
        a: i64,
        b: String,
    }

    #[test]
    fn structs_are_told_from_other_types() {
        assert!(is_struct::<Pair>());
        assert!(!is_struct::<Vec<i64>>());
        assert!(!is_struct::<i64>());
        assert!(!is_struct::<std::collections::BTreeMap<String, i64>>());
    }

    #[test]
    fn json_struct_input_must_be_an_object() {
        let ok: Pair = decode(Encoding::Json, br#"{"a":1,"b":"x","extra":[]}"#, true).unwrap();
        assert_eq!(
            ok,
            Pair {
                a: 1,
                b: "x".into()
            }
        );
        assert!(decode::<Pair>(Encoding::Json, br#"[1,"x"]"#, true).is_err());
        assert!(decode::<Pair>(Encoding::Json, br#"{"a":"1","b":"x"}"#, true).is_err());
        assert!(decode::<Pair>(Encoding::Json, br#"{"a":1.5,"b":"x"}"#, true).is_err());
        assert!(decode::<Pair>(Encoding::Json, br#"{"a":1}"#, true).is_err());
        assert_eq!(
            decode::<Vec<i64>>(Encoding::Json, b"[1,2]", false).unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        let mut buf = Vec::new();
        encode_into(
            Encoding::Bincode,
            &Pair {
                a: 3,
                b: "y".into(),
            },
            &mut buf,
        )
        .unwrap();
        let back: Pair = decode(Encoding::Bincode, &buf, true).unwrap();
        assert_eq!(
            back,
            Pair {
                a: 3,
                b: "y".into()
            }
        );
        buf.push(0);
        assert!(decode::<Pair>(Encoding::Bincode, &buf, true).is_err());
    }
}
