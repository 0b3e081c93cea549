//! A JSON object read into a type's bincode by the type's [`Shape`], natively on the host: how a
//! source's JSON line reaches the first stage already decoded, instead of the guest parsing JSON
//! in Wasm (the host reads each line anyway, for its event time).
//!
//! The reader is deliberately narrow. It takes a struct of scalar fields (`bool`, integers,
//! `f64`, strings, each possibly in an `Option`) and only the plainest spelling of each: every
//! field once, no other field, integers in range without a fraction or an exponent, floats whose
//! value serde_json computes exactly, strings that are valid UTF-8 with JSON's escapes. Anything
//! else it declines, and the line goes to the guest as JSON text, where serde decides (its
//! defaults, aliases, errors and messages stay the type's own). The SDK marks an input shape
//! [`Shape::json`] only after checking, on sample values of every corner of the shape
//! ([`vouch_reading`]), that serde_json reads what this reader writes.

use crate::abi::{BINCODE, Shape};
use crate::render::{JsonShape, Node};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The kind of a top-level field the reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Bool,
    /// An integer of `bytes` bytes in `min..=max`.
    Int {
        min: i128,
        max: i128,
        bytes: u8,
    },
    F64,
    Str,
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    /// The field's name as it appears between the quotes (it needs no escape).
    name: Box<[u8]>,
    kind: Scalar,
    optional: bool,
}

/// Reads JSON objects of one shape into bincode; see the module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcoder {
    fields: Vec<Field>,
}

/// What [`Transcoder::transcode`] keeps from line to line: where each field of the last object
/// read sits in its bincode, and room to put fields in order.
#[derive(Debug, Default)]
pub struct Scratch {
    spans: Vec<Option<Range<usize>>>,
    buf: Vec<u8>,
    text: Vec<u8>,
}

fn int(signed: bool, bytes: u8) -> Scalar {
    let bits = u32::from(bytes) * 8;
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    Scalar::Int { min, max, bytes }
}

impl Transcoder {
    /// The reader of `shape`, if it is a struct of scalar fields whose names need no escape.
    pub fn new(shape: &JsonShape) -> Option<Self> {
        let nodes = &shape.nodes;
        let Node::Struct(named) = nodes.first()? else {
            return None;
        };
        let scalar = |node: &Node| {
            Some(match node {
                Node::Bool => Scalar::Bool,
                Node::I8 => int(true, 1),
                Node::I16 => int(true, 2),
                Node::I32 => int(true, 4),
                Node::I64 => int(true, 8),
                Node::U8 => int(false, 1),
                Node::U16 => int(false, 2),
                Node::U32 => int(false, 4),
                Node::U64 => int(false, 8),
                Node::F64 => Scalar::F64,
                Node::Str => Scalar::Str,
                _ => return None,
            })
        };
        let mut fields = Vec::with_capacity(named.len());
        for (key, at) in named {
            // `"name":` as the renderer keeps it: the name is taken only if it needs no escape.
            let name = key.strip_prefix(b"\"")?.strip_suffix(b"\":")?;
            if name.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
                return None;
            }
            if fields.iter().any(|f: &Field| &*f.name == name) {
                return None;
            }
            let node = nodes.get(*at as usize)?;
            let (node, optional) = match node {
                Node::Option(inner) => (nodes.get(*inner as usize)?, true),
                other => (other, false),
            };
            fields.push(Field {
                name: name.into(),
                kind: scalar(node)?,
                optional,
            });
        }
        (!fields.is_empty()).then_some(Transcoder { fields })
    }

    /// The position of field `name` if it holds an integer (not in an `Option`): the source
    /// reads a record's event time there.
    pub fn int_field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| {
            &*f.name == name.as_bytes() && !f.optional && matches!(f.kind, Scalar::Int { .. })
        })
    }

    /// The value of integer field `field` of `bincode`, the object last read with `scratch`,
    /// if it fits an `i64` (as serde_json's `Value::as_i64` reads it).
    pub fn int(&self, scratch: &Scratch, bincode: &[u8], field: usize) -> Option<i64> {
        let Scalar::Int { min, .. } = self.fields.get(field)?.kind else {
            return None;
        };
        let raw = bincode.get(scratch.spans.get(field)?.clone()?)?;
        let negative = min < 0 && raw.last().is_some_and(|&b| b & 0x80 != 0);
        let mut le = [if negative { 0xff } else { 0 }; 8];
        le[..raw.len().min(8)].copy_from_slice(&raw[..raw.len().min(8)]);
        let wide = u64::from_le_bytes(le);
        if min < 0 {
            Some(wide as i64)
        } else {
            i64::try_from(wide).ok()
        }
    }

    /// A sample value: the least of everything (`false`, the least integer, a negative
    /// fraction, an empty string, options absent) or the most (`true`, the greatest integer, a
    /// fraction with an exponent, a string needing every kind of escape, options present). Its
    /// bincode, and its JSON spelt otherwise than serde_json writes it: the fields in reverse
    /// order, spaced out, every non-ASCII character and `/` escaped (`\uXXXX`, a surrogate pair
    /// past the BMP).
    fn sample(&self, most: bool) -> (Vec<u8>, String) {
        let mut bincode = Vec::new();
        let mut fields = Vec::new();
        for field in &self.fields {
            let name = String::from_utf8_lossy(&field.name);
            let mut json = format!("\"{name}\"\t: ");
            if field.optional {
                bincode.push(u8::from(most));
                if !most {
                    fields.push(json + "null");
                    continue;
                }
            }
            match field.kind {
                Scalar::Bool => {
                    bincode.push(u8::from(most));
                    json += if most { "true" } else { "false" };
                }
                Scalar::Int { min, max, bytes } => {
                    let value = if most { max } else { min };
                    bincode.extend_from_slice(&value.to_le_bytes()[..usize::from(bytes)]);
                    json += &value.to_string();
                }
                Scalar::F64 => {
                    let (value, text): (f64, _) = if most {
                        (2.5e-3, "25E-4")
                    } else {
                        (-0.1, "-0.1")
                    };
                    bincode.extend_from_slice(&value.to_le_bytes());
                    json += text;
                }
                Scalar::Str => {
                    let text = if most {
                        "a\"\\/\u{8}\n\u{1}\u{7f}é€😀"
                    } else {
                        ""
                    };
                    bincode.extend_from_slice(&(text.len() as u64).to_le_bytes());
                    bincode.extend_from_slice(text.as_bytes());
                    json.push('"');
                    for c in text.chars() {
                        match c {
                            '"' | '\\' | '/' => {
                                json.push('\\');
                                json.push(c);
                            }
                            ' '..='~' => json.push(c),
                            c => {
                                for unit in c.encode_utf16(&mut [0; 2]) {
                                    json += &format!("\\u{unit:04X}");
                                }
                            }
                        }
                    }
                    json.push('"');
                }
            }
            fields.push(json);
        }
        fields.reverse();
        (bincode, format!(" {{\n{}\r\n}}\n", fields.join(" ,\n")))
    }

    /// Appends the bincode of the object `text` to `out` and returns `true`, or declines
    /// (`false`, `out` as it was) where the text is anything but the plain spelling of a value
    /// of the shape.
    pub fn transcode(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        scratch.spans.clear();
        scratch.spans.resize(self.fields.len(), None);
        match self.object(text.as_bytes(), scratch, out, start) {
            Some(true) => true,
            Some(false) => {
                // The fields came in another order: put them in the declared one.
                scratch.buf.clear();
                scratch.buf.extend_from_slice(&out[start..]);
                out.truncate(start);
                for span in &mut scratch.spans {
                    let Some(at) = span.clone() else {
                        return false;
                    };
                    let from = out.len() - start;
                    out.extend_from_slice(&scratch.buf[at]);
                    *span = Some(from..out.len() - start);
                }
                true
            }
            None => {
                out.truncate(start);
                false
            }
        }
    }

    /// Reads the object into `out` after `start`, each field where it comes; whether they came
    /// in the declared order, `None` if the object is not read.
    fn object(
        &self,
        s: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Option<bool> {
        let mut i = space(s, 0);
        if s.get(i) != Some(&b'{') {
            return None;
        }
        i = space(s, i + 1);
        let mut next = 0;
        let mut in_order = true;
        loop {
            if s.get(i) != Some(&b'"') {
                return None;
            }
            let at = i + 1;
            // Fields usually come in their declared order: the next one is tried first.
            let f = match self.fields.get(next) {
                Some(field)
                    if s[at..].starts_with(&field.name)
                        && s.get(at + field.name.len()) == Some(&b'"') =>
                {
                    next
                }
                _ => {
                    let len = s[at..].iter().position(|&b| b == b'"')?;
                    let key = &s[at..at + len];
                    in_order = false;
                    self.fields.iter().position(|f| *f.name == *key)?
                }
            };
            if scratch.spans[f].is_some() {
                return None;
            }
            next = f + 1;
            i = space(s, at + self.fields[f].name.len() + 1);
            if s.get(i) != Some(&b':') {
                return None;
            }
            i = space(s, i + 1);
            let from = out.len() - start;
            i = value(&self.fields[f], s, i, out, &mut scratch.text)?;
            scratch.spans[f] = Some(from..out.len() - start);
            i = space(s, i);
            match s.get(i) {
                Some(b',') => i = space(s, i + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
        if space(s, i + 1) != s.len() || scratch.spans.iter().any(Option::is_none) {
            return None;
        }
        Some(in_order)
    }
}

fn value(
    field: &Field,
    s: &[u8],
    mut i: usize,
    out: &mut Vec<u8>,
    text: &mut Vec<u8>,
) -> Option<usize> {
    if field.optional {
        if s[i..].starts_with(b"null") {
            out.push(0);
            return Some(i + 4);
        }
        out.push(1);
    }
    match field.kind {
        Scalar::Bool => {
            if s[i..].starts_with(b"true") {
                out.push(1);
                i += 4;
            } else if s[i..].starts_with(b"false") {
                out.push(0);
                i += 5;
            } else {
                return None;
            }
            Some(i)
        }
        Scalar::Int { min, max, bytes } => integer(s, i, min, max, bytes, out),
        Scalar::F64 => float(s, i, out),
        Scalar::Str => string(s, i, out, text),
    }
}

/// Skips JSON whitespace from `i`.
fn space(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// The digits of a JSON number's integer part from `i`: their value (`None` past `u64`) and
/// where they end; a leading zero stands alone.
fn digits(s: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let first = *s.get(i).filter(|b| b.is_ascii_digit())?;
    let mut value = u64::from(first - b'0');
    i += 1;
    if first == b'0' {
        return (!s.get(i).is_some_and(u8::is_ascii_digit)).then_some((0, i));
    }
    while let Some(&d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    Some((value, i))
}

/// An integer written without fraction or exponent, in `min..=max` (serde_json reads `-0` as a
/// float, so it is declined too).
fn integer(
    s: &[u8],
    i: usize,
    min: i128,
    max: i128,
    bytes: u8,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    let negative = s.get(i) == Some(&b'-');
    let (magnitude, end) = digits(s, i + usize::from(negative))?;
    if matches!(s.get(end), Some(b'.' | b'e' | b'E')) || (negative && magnitude == 0) {
        return None;
    }
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    if value < min || value > max {
        return None;
    }
    let le = value.to_le_bytes();
    // Each width its own fixed-size copy: no call to `memcpy` for a few bytes.
    match bytes {
        1 => buf.push(le[0]),
        2 => buf.extend_from_slice(&le[..2]),
        4 => buf.extend_from_slice(&le[..4]),
        _ => buf.extend_from_slice(&le[..8]),
    }
    Some(end)
}

/// A float whose value is computed exactly as one rounding of `digits × 10^exponent`: fewer
/// than 2^53 for the digits and an exponent within ±22 (where serde_json, with or without its
/// `float_roundtrip` feature, computes the same correctly rounded value).
fn float(s: &[u8], i: usize, buf: &mut Vec<u8>) -> Option<usize> {
    const EXACT: u64 = 1 << 53;
    let negative = s.get(i) == Some(&b'-');
    let (mut significand, mut end) = digits(s, i + usize::from(negative))?;
    let mut exponent: i32 = 0;
    if significand >= EXACT {
        return None;
    }
    if s.get(end) == Some(&b'.') {
        end += 1;
        let start = end;
        while let Some(&d) = s.get(end).filter(|b| b.is_ascii_digit()) {
            significand = significand * 10 + u64::from(d - b'0');
            if significand >= EXACT {
                return None;
            }
            exponent -= 1;
            end += 1;
        }
        if end == start {
            return None;
        }
    }
    if let Some(b'e' | b'E') = s.get(end) {
        end += 1;
        let minus = match s.get(end) {
            Some(b'-') => {
                end += 1;
                true
            }
            Some(b'+') => {
                end += 1;
                false
            }
            _ => false,
        };
        let start = end;
        let mut e: i32 = 0;
        while let Some(&d) = s.get(end).filter(|b| b.is_ascii_digit()) {
            if end - start >= 3 {
                return None;
            }
            e = e * 10 + i32::from(d - b'0');
            end += 1;
        }
        if end == start {
            return None;
        }
        exponent += if minus { -e } else { e };
    }
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
    let mut value = significand as f64;
    if exponent >= 0 {
        value *= pow;
    } else {
        value /= pow;
    }
    if negative {
        value = -value;
    }
    buf.extend_from_slice(&value.to_le_bytes());
    Some(end)
}

/// A string from the quote at `i`: its bincode (length, UTF-8) appended to `buf`. Escapes are
/// JSON's; a surrogate `\u` escape outside a pair, or a raw control character, is declined
/// (serde_json refuses both in a string). The text is valid UTF-8 as a whole, and a string ends
/// at an ASCII quote, so its bytes are valid UTF-8 too.
fn string(s: &[u8], i: usize, buf: &mut Vec<u8>, text: &mut Vec<u8>) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut i = start;
    text.clear();
    loop {
        let run = s[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        // A string without escapes (the usual one) is copied straight from the line.
        if i == start && s[i + run] == b'"' {
            buf.extend_from_slice(&(run as u64).to_le_bytes());
            buf.extend_from_slice(&s[i..i + run]);
            return Some(i + run + 1);
        }
        text.extend_from_slice(&s[i..i + run]);
        i += run;
        match s[i] {
            b'"' => break,
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                i += 2;
                let byte = match escaped {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        let high = hex4(s, i)?;
                        i += 4;
                        let code = match high {
                            0xd800..=0xdbff => {
                                if s.get(i..i + 2) != Some(b"\\u") {
                                    return None;
                                }
                                let low = hex4(s, i + 2)?;
                                if !(0xdc00..=0xdfff).contains(&low) {
                                    return None;
                                }
                                i += 6;
                                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                            }
                            0xdc00..=0xdfff => return None,
                            code => code,
                        };
                        let c = char::from_u32(code)?;
                        text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        continue;
                    }
                    _ => return None,
                };
                text.push(byte);
            }
            _ => return None,
        }
    }
    buf.extend_from_slice(&(text.len() as u64).to_le_bytes());
    buf.extend_from_slice(text);
    Some(i + 1)
}

/// Four hex digits at `i`.
fn hex4(s: &[u8], i: usize) -> Option<u32> {
    let digits = s.get(i..i + 4)?;
    digits.iter().try_fold(0u32, |code, &d| {
        Some(code * 16 + char::from(d).to_digit(16)?)
    })
}

/// Whether serde_json reads `T` as [`Transcoder::transcode`] writes it, for `T`'s traced shape:
/// checked on two sample values reaching every corner the reader takes (each option absent and
/// present, strings empty and needing every kind of escape, the least and the most of each
/// integer type, a fraction), each spelt as the renderer writes it
/// and again with its fields in another order and spaced out. The reader must take each
/// spelling and write the sample's bincode, and serde_json must read each as a value whose
/// bincode is the sample's. A type whose `Deserialize` departs from the plain reading
/// (`deserialize_with`, `try_from`, a field it skips) fails, and its inputs stay JSON.
pub fn vouch_reading<T: Serialize + Deserialize<'static>>(shape: &Shape) -> bool {
    let Some(json) = JsonShape::new(shape) else {
        return false;
    };
    let Some(reader) = Transcoder::new(&json) else {
        return false;
    };
    let mut scratch = Scratch::default();
    for most in [false, true] {
        let (sample, respelt) = reader.sample(most);
        let mut rendered = Vec::new();
        if json.render(&sample, &mut rendered).is_err() {
            return false;
        }
        let Ok(rendered) = String::from_utf8(rendered) else {
            return false;
        };
        for text in [rendered, respelt] {
            let mut back = Vec::new();
            if !reader.transcode(&text, &mut scratch, &mut back) || back != sample {
                return false;
            }
            // A type that borrows from its input decodes only from text that lives for ever:
            // the spellings (a few hundred bytes, once per `describe`) are leaked.
            let text: &'static str = String::leak(text);
            let Ok(value) = serde_json::from_str::<T>(text) else {
                return false;
            };
            if bincode::serde::encode_to_vec(&value, BINCODE).ok() != Some(sample.clone()) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::borrow::Cow;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Flat {
        flag: bool,
        tiny: i8,
        small: i16,
        int: i32,
        big: i64,
        byte: u8,
        word: u16,
        unsigned: u32,
        huge: u64,
        real: f64,
        text: String,
        maybe: Option<i64>,
        note: Option<String>,
    }

    fn reader<T: Deserialize<'static>>() -> Transcoder {
        let shape = crate::shape::of::<T>().expect("traced");
        Transcoder::new(&JsonShape::new(&shape).expect("renderable")).expect("flat")
    }

    fn bincode_of<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, BINCODE).unwrap()
    }

    /// What the reader writes for `text`, checked against serde_json wherever it reads it.
    fn read(text: &str) -> Option<Vec<u8>> {
        let mut out = b"kept".to_vec();
        let accepted = reader::<Flat>().transcode(text, &mut Scratch::default(), &mut out);
        if !accepted {
            assert_eq!(out, b"kept", "a declined line leaves the buffer as it was");
            return None;
        }
        let serde: Flat = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("read {text:?}, which serde_json refuses: {e}"));
        assert_eq!(out[4..], bincode_of(&serde)[..], "{text:?}");
        Some(out[4..].to_vec())
    }

    fn flat() -> impl Strategy<Value = Flat> {
        let ints = (
            any::<bool>(),
            any::<i8>(),
            any::<i16>(),
            any::<i32>(),
            any::<i64>(),
        );
        let unsigned = (any::<u8>(), any::<u16>(), any::<u32>(), any::<u64>());
        let real = prop_oneof![
            any::<i32>().prop_map(f64::from),
            (any::<i32>(), 0u32..6).prop_map(|(n, d)| f64::from(n) / 10f64.powi(d as i32)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ];
        let text = prop_oneof![
            "[a-zA-Z0-9 -]{0,12}",
            any::<String>(),
            Just("quote \" backslash \\ slash / nul \u{0} del \u{7f} 😀".to_string()),
        ];
        (
            ints,
            unsigned,
            real,
            text.clone(),
            any::<Option<i64>>(),
            proptest::option::of(text),
        )
            .prop_map(
                |(
                    (flag, tiny, small, int, big),
                    (byte, word, unsigned, huge),
                    real,
                    text,
                    maybe,
                    note,
                )| {
                    Flat {
                        flag,
                        tiny,
                        small,
                        int,
                        big,
                        byte,
                        word,
                        unsigned,
                        huge,
                        real,
                        text,
                        maybe,
                        note,
                    }
                },
            )
    }

    proptest! {
        /// Any value, written by serde_json compactly or pretty, is read as serde_json reads
        /// it; with an integral float it is always read.
        #[test]
        fn values_are_read_as_serde_json_reads_them(value in flat()) {
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                let read = read(&text);
                if value.real.fract() == 0.0 && value.real.abs() < 1e15 && !value.real.is_sign_negative() {
                    prop_assert_eq!(read, Some(bincode_of(&value)), "{}", text);
                }
            }
        }

        /// Whatever a line is changed into, the reader declines it or reads what serde_json
        /// reads: it never takes a line serde_json refuses or reads otherwise.
        #[test]
        fn changed_lines_are_declined_or_read_as_serde_json_reads_them(
            value in flat(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                b" \t\n{}[]\",:-+.eE0123456789\\untrfalsel/\x01\xc3".to_vec())), 1..4),
        ) {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            for (at, how, byte) in edits {
                let at = at.index(bytes.len() + 1);
                match how {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            if let Ok(text) = String::from_utf8(bytes) {
                read(&text);
            }
        }
    }

    #[test]
    fn the_plainest_spellings_are_read_in_any_order() {
        let value = Flat {
            flag: true,
            tiny: i8::MIN,
            small: i16::MAX,
            int: -7,
            big: i64::MIN,
            byte: u8::MAX,
            word: 0,
            unsigned: u32::MAX,
            huge: u64::MAX,
            real: -0.0,
            text: "a\"\\/\u{8}\u{c}\n\r\t\u{1}é😀".into(),
            maybe: None,
            note: Some(String::new()),
        };
        let want = Some(bincode_of(&value));
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(read(&text), want);
        let reversed = serde_json::to_string_pretty(&serde_json::json!({
            "note": "", "maybe": null, "text": value.text, "real": -0.0, "huge": u64::MAX,
            "unsigned": u32::MAX, "word": 0, "byte": u8::MAX, "big": i64::MIN, "int": -7,
            "small": i16::MAX, "tiny": i8::MIN, "flag": true,
        }))
        .unwrap();
        assert_eq!(read(&reversed), want);
        assert_eq!(read(&format!(" \r\n{text}\t ")), want);
    }

    #[test]
    fn anything_but_the_plainest_spelling_is_declined() {
        let base = serde_json::to_string(&Flat {
            flag: false,
            tiny: 1,
            small: 2,
            int: 3,
            big: 4,
            byte: 5,
            word: 6,
            unsigned: 7,
            huge: 8,
            real: 1.5,
            text: "t".into(),
            maybe: Some(9),
            note: None,
        })
        .unwrap();
        assert!(read(&base).is_some());
        let declined = [
            ("\"big\":4", "\"big\":-0"),
            ("\"big\":4", "\"big\":04"),
            ("\"big\":4", "\"big\":4.0"),
            ("\"big\":4", "\"big\":4e0"),
            ("\"big\":4", "\"big\":\"4\""),
            ("\"big\":4", "\"big\":9223372036854775808"),
            ("\"byte\":5", "\"byte\":256"),
            ("\"tiny\":1", "\"tiny\":-129"),
            ("\"huge\":8", "\"huge\":-8"),
            ("\"huge\":8", "\"huge\":18446744073709551616"),
            ("\"real\":1.5", "\"real\":1e23"),
            ("\"real\":1.5", "\"real\":12345678901234567.0"),
            ("\"real\":1.5", "\"real\":1."),
            ("\"text\":\"t\"", "\"text\":\"\\ud800\""),
            ("\"text\":\"t\"", "\"text\":\"\\udc00\\ud800\""),
            ("\"text\":\"t\"", "\"text\":\"\u{1}\""),
            ("\"text\":\"t\"", "\"text\":\"\\x\""),
            ("\"flag\":false", "\"flag\":0"),
            ("\"note\":null", "\"note\":null,\"extra\":1"),
            ("\"note\":null", "\"note\":null,\"big\":4"),
            (",\"note\":null", ""),
            ("\"flag\"", "\"fl\\u0061g\""),
        ];
        for (from, to) in declined {
            assert!(base.contains(from), "{from}");
            let text = base.replacen(from, to, 1);
            assert_eq!(read(&text), None, "{text}");
        }
        for text in [
            "",
            "[]",
            "{}",
            "null",
            &format!("{base} x"),
            &format!("[{base}]"),
        ] {
            assert_eq!(read(text), None, "{text}");
        }
    }

    #[test]
    fn an_integer_field_gives_the_event_time() {
        let t = reader::<Flat>();
        let mut scratch = Scratch::default();
        let value = Flat {
            flag: false,
            tiny: -3,
            small: 2,
            int: 3,
            big: -4,
            byte: 5,
            word: 6,
            unsigned: 7,
            huge: u64::MAX,
            real: 1.5,
            text: "t".into(),
            maybe: Some(9),
            note: None,
        };
        let mut out = Vec::new();
        assert!(t.transcode(
            &serde_json::to_string(&value).unwrap(),
            &mut scratch,
            &mut out
        ));
        let at = |name| t.int(&scratch, &out, t.int_field(name).unwrap());
        assert_eq!(
            (at("tiny"), at("big"), at("unsigned")),
            (Some(-3), Some(-4), Some(7))
        );
        assert_eq!(at("huge"), None, "past i64, as serde_json's as_i64");
        assert_eq!((t.int_field("maybe"), t.int_field("text")), (None, None));
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Borrowing<'a> {
        #[serde(borrow)]
        sku: Cow<'a, str>,
        qty: i64,
    }

    fn shifted<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        i64::deserialize(d).map(|n| n.wrapping_add(1))
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Shifting {
        #[serde(deserialize_with = "shifted")]
        qty: i64,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Nested {
        inner: Shifting,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Floats {
        ratio: f32,
    }

    fn vouched<T: Serialize + Deserialize<'static>>() -> bool {
        vouch_reading::<T>(&crate::shape::of::<T>().unwrap())
    }

    #[test]
    fn only_types_serde_json_reads_as_the_reader_does_are_vouched_for() {
        assert!(vouched::<Flat>());
        assert!(vouched::<Borrowing>());
        assert!(
            !vouched::<Shifting>(),
            "a custom deserializer reads otherwise"
        );
        assert!(!vouched::<Nested>(), "only flat structs are read");
        assert!(!vouched::<Floats>(), "f32 is not read");
        assert!(!vouched::<i64>(), "not an object");
    }
}
