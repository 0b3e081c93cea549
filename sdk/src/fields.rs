//! Reading top-level fields out of any `Serialize` value, without knowing its type: how a module
//! fills a record's keys (`key_by = "sku"`) and event time (`event_time = "ts"`) for the stages
//! downstream.
//!
//! A key is the field's canonical text: a string as it is, an integer or a bool in decimal — the
//! same bytes the host extracts from a JSON source, so a stage sees one key whatever feeds it.

use serde::ser::{self, Impossible, Serialize};
use std::fmt;

/// Why a field could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError(pub String);

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FieldError {}

impl ser::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FieldError(msg.to_string())
    }
}

/// What to read from a value: each named field's key text, and one field as event time.
#[derive(Debug, Default)]
pub(crate) struct FieldRequest<'a> {
    pub key_fields: &'a [String],
    pub ts_field: Option<&'a str>,
}

/// What [`extract`] found, indexed like [`FieldRequest::key_fields`]. Its buffers are reused
/// from record to record: reading a key allocates nothing once they are grown.
#[derive(Debug, Default)]
pub(crate) struct Extracted {
    /// Each key's text (empty until found).
    pub keys: Vec<Vec<u8>>,
    /// Whether each key was found.
    found: Vec<bool>,
    pub ts: Option<i64>,
    /// The event time's text, before it is read as a number.
    scratch: Vec<u8>,
}

impl Extracted {
    pub(crate) fn reset(&mut self, key_count: usize) {
        self.keys.resize_with(key_count, Vec::new);
        self.keys.iter_mut().for_each(Vec::clear);
        self.found.clear();
        self.found.resize(key_count, false);
        self.ts = None;
    }

    /// Key `i`'s text, if it was found.
    #[cfg(test)]
    fn key(&self, i: usize) -> Option<&[u8]> {
        self.found[i].then(|| self.keys[i].as_slice())
    }
}

/// Reads the requested top-level fields of `value`, which must serialize as a struct or a map.
/// Missing fields are an error.
pub(crate) fn extract<T: Serialize + ?Sized>(
    value: &T,
    request: &FieldRequest<'_>,
    into: &mut Extracted,
) -> Result<(), FieldError> {
    into.reset(request.key_fields.len());
    value.serialize(Finder {
        request,
        found: into,
        pending_key: None,
    })?;
    for (name, found) in request.key_fields.iter().zip(&into.found) {
        if !found {
            return Err(FieldError(format!("key field `{name}` is missing")));
        }
    }
    match (request.ts_field, into.ts) {
        (Some(name), None) => Err(FieldError(format!("event time field `{name}` is missing"))),
        _ => Ok(()),
    }
}

struct Finder<'r, 'a> {
    request: &'r FieldRequest<'a>,
    found: &'r mut Extracted,
    pending_key: Option<String>,
}

impl Finder<'_, '_> {
    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), FieldError> {
        for (i, wanted) in self.request.key_fields.iter().enumerate() {
            if wanted == name {
                let text = &mut self.found.keys[i];
                text.clear();
                value
                    .serialize(Scalar(text))
                    .map_err(|e| FieldError(format!("key field `{name}` {e}")))?;
                self.found.found[i] = true;
            }
        }
        if self.request.ts_field == Some(name) {
            let text = &mut self.found.scratch;
            text.clear();
            value
                .serialize(Scalar(text))
                .map_err(|e| FieldError(format!("event time field `{name}` {e}")))?;
            let ts = std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| {
                    FieldError(format!("event time field `{name}` is not an integer"))
                })?;
            self.found.ts = Some(ts);
        }
        Ok(())
    }
}

macro_rules! refuse {
    ($err:expr; $($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> { Err($err) })*
    };
}

/// Integers written as their decimal text, by `itoa`: `Display` goes through `core::fmt`,
/// several times the work (most of all in Wasm), for every key and event time of every record.
macro_rules! decimal {
    ($($method:ident($arg:ty)),* $(,)?) => {
        $(fn $method(self, v: $arg) -> Result<(), FieldError> {
            self.text(itoa::Buffer::new().format(v))
        })*
    };
}

fn not_a_struct() -> FieldError {
    FieldError("the value is not a struct, so it has no fields".into())
}

impl<'r, 'a> ser::Serializer for Finder<'r, 'a> {
    type Ok = ();
    type Error = FieldError;
    type SerializeSeq = Impossible<(), FieldError>;
    type SerializeTuple = Impossible<(), FieldError>;
    type SerializeTupleStruct = Impossible<(), FieldError>;
    type SerializeTupleVariant = Impossible<(), FieldError>;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), FieldError>;

    refuse!(not_a_struct();
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), FieldError> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), FieldError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), FieldError> {
        Err(not_a_struct())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, FieldError> {
        Err(not_a_struct())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, FieldError> {
        Err(not_a_struct())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, FieldError> {
        Err(not_a_struct())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, FieldError> {
        Err(not_a_struct())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, FieldError> {
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, FieldError> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, FieldError> {
        Err(not_a_struct())
    }
}

impl ser::SerializeStruct for Finder<'_, '_> {
    type Ok = ();
    type Error = FieldError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), FieldError> {
        self.field(name, value)
    }

    fn end(self) -> Result<(), FieldError> {
        Ok(())
    }
}

impl ser::SerializeMap for Finder<'_, '_> {
    type Ok = ();
    type Error = FieldError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), FieldError> {
        let mut text = Vec::new();
        self.pending_key = key
            .serialize(Scalar(&mut text))
            .ok()
            .and_then(|()| String::from_utf8(text).ok());
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FieldError> {
        match self.pending_key.take() {
            Some(name) => self.field(&name, value),
            None => Ok(()),
        }
    }

    fn end(self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Writes a scalar as its canonical key text.
struct Scalar<'b>(&'b mut Vec<u8>);

impl Scalar<'_> {
    fn text(self, text: &str) -> Result<(), FieldError> {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

fn not_a_scalar() -> FieldError {
    FieldError("is not a string, an integer or a bool".into())
}

impl ser::Serializer for Scalar<'_> {
    type Ok = ();
    type Error = FieldError;
    type SerializeSeq = Impossible<(), FieldError>;
    type SerializeTuple = Impossible<(), FieldError>;
    type SerializeTupleStruct = Impossible<(), FieldError>;
    type SerializeTupleVariant = Impossible<(), FieldError>;
    type SerializeMap = Impossible<(), FieldError>;
    type SerializeStruct = Impossible<(), FieldError>;
    type SerializeStructVariant = Impossible<(), FieldError>;

    refuse!(not_a_scalar();
        serialize_f32(f32), serialize_f64(f64), serialize_bytes(&[u8]), serialize_none(),
        serialize_unit(), serialize_unit_struct(&'static str),
    );

    decimal!(
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
    );

    fn serialize_bool(self, v: bool) -> Result<(), FieldError> {
        self.text(if v { "true" } else { "false" })
    }
    fn serialize_char(self, v: char) -> Result<(), FieldError> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), FieldError> {
        self.text(v)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), FieldError> {
        self.text(variant)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), FieldError> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), FieldError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, FieldError> {
        Err(not_a_scalar())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, FieldError> {
        Err(not_a_scalar())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Order {
        order_id: i64,
        sku: String,
        nested: Vec<u8>,
        ts: i64,
        price: f64,
    }

    fn order() -> Order {
        Order {
            order_id: -7,
            sku: "SKU-0001".into(),
            nested: vec![1, 2],
            ts: 1_700_000_000_000,
            price: 2.5,
        }
    }

    #[test]
    fn reads_keys_as_text_and_event_time() {
        let keys = vec!["sku".to_string(), "order_id".to_string()];
        let request = FieldRequest {
            key_fields: &keys,
            ts_field: Some("ts"),
        };
        let mut found = Extracted::default();
        extract(&order(), &request, &mut found).unwrap();
        assert_eq!(found.key(0), Some(&b"SKU-0001"[..]));
        assert_eq!(found.key(1), Some(&b"-7"[..]));
        assert_eq!(found.ts, Some(1_700_000_000_000));
    }

    /// A key's text is what `Display` writes (so the host, reading a JSON source, and a module
    /// agree), whatever the scalar's type and value.
    #[test]
    fn scalars_are_keyed_by_their_display_text() {
        fn text<T: Serialize>(value: T) -> String {
            let mut buf = Vec::new();
            value.serialize(Scalar(&mut buf)).unwrap();
            String::from_utf8(buf).unwrap()
        }
        for v in [i64::MIN, -1, 0, 7, 1_700_000_000_000, i64::MAX] {
            assert_eq!(text(v), v.to_string());
        }
        for v in [0, 9, 10, 99, 100, u64::MAX] {
            assert_eq!(text(v), v.to_string());
        }
        assert_eq!(text(i8::MIN), "-128");
        assert_eq!(text(u8::MAX), "255");
        assert_eq!(text(i16::MIN), "-32768");
        assert_eq!(text(u16::MAX), "65535");
        assert_eq!(text(i32::MIN), "-2147483648");
        assert_eq!(text(u32::MAX), "4294967295");
        assert_eq!(text(true), "true");
        assert_eq!(text(false), "false");
        assert_eq!(text('é'), "é");
        assert_eq!(text(Some(3)), "3");
    }

    #[test]
    fn missing_or_unusable_fields_are_named() {
        let mut found = Extracted::default();
        for (keys, ts, message) in [
            (vec!["nope"], None, "key field `nope` is missing"),
            (vec!["nested"], None, "key field `nested` is not a string"),
            (vec!["price"], None, "key field `price` is not a string"),
            (
                vec![],
                Some("sku"),
                "event time field `sku` is not an integer",
            ),
            (vec![], Some("when"), "event time field `when` is missing"),
        ] {
            let keys: Vec<String> = keys.into_iter().map(String::from).collect();
            let request = FieldRequest {
                key_fields: &keys,
                ts_field: ts,
            };
            let err = extract(&order(), &request, &mut found).unwrap_err();
            assert!(err.0.starts_with(message), "{} vs {message}", err.0);
        }
        let err = extract(&5u32, &FieldRequest::default(), &mut found).unwrap_err();
        assert!(err.0.contains("not a struct"));
    }
}
