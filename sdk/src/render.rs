//! A value's JSON written from its bincode and its type's [`Shape`], without the type: how the
//! host writes the JSON line of a sink-bound record natively instead of the guest writing JSON in
//! Wasm (and the host parsing every line back to check it).
//!
//! The host does it only for a type whose module vouched for it: the SDK sets [`Shape::json`]
//! after checking, on sample values of every corner of the shape ([`vouch`]), that the type's own
//! `Serialize` writes exactly what [`JsonShape::render`] writes from the value's bincode (so a
//! `skip_serializing_if`, a rename on one side only or a custom `serialize_with` is caught and the
//! type keeps writing its own JSON). The output is byte for byte serde_json's compact form.
//!
//! The bytes come from an untrusted guest: every read is bounds-checked, the walk is bounded in
//! depth and in steps (a sequence of a billion zero-sized values fails, it does not spin), and
//! what is written is one line of valid JSON or nothing.

use crate::abi::{BINCODE, Shape, ShapeKind};
use serde::{Deserialize, Serialize};

/// The deepest a value is walked.
const MAX_DEPTH: usize = 64;

/// A [`Shape`] made ready to write JSON from bincode: each struct field's and variant's name
/// escaped once.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonShape {
    pub(crate) nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `()` and unit structs: `null`.
    Null,
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Option(u32),
    Seq(u32),
    /// A map with string keys.
    Map(u32),
    /// Tuples, tuple structs and fixed-size arrays: their items in order, as a JSON array.
    Tuple(Vec<u32>),
    /// `[T; n]`.
    Array(u64, u32),
    /// A newtype struct: its one field, as itself.
    Inner(u32),
    /// A struct: each field's `"name":` and node.
    Struct(Vec<(Box<[u8]>, u32)>),
    /// An enum: its variants by index.
    Enum(Vec<Variant>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Variant {
    /// The variant's name as a JSON string.
    name: Box<[u8]>,
    form: Form,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Form {
    /// `"Name"`.
    Unit,
    /// `{"Name":value}`.
    NewType(u32),
    /// `{"Name":[items]}`.
    Tuple(Vec<u32>),
    /// `{"Name":{fields}}`.
    Struct(Vec<(Box<[u8]>, u32)>),
}

/// Why a value could not be written: its bytes do not read as the shape says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub &'static str);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for RenderError {}

fn quoted(name: &str) -> Box<[u8]> {
    serde_json::to_vec(name)
        .unwrap_or_default()
        .into_boxed_slice()
}

fn field(name: &str) -> Box<[u8]> {
    let mut key = quoted(name).into_vec();
    key.push(b':');
    key.into_boxed_slice()
}

impl JsonShape {
    /// Prepares `shape`; `None` where a node has no JSON written this way (a type the SDK could
    /// not trace, 128-bit integers, maps whose keys are not strings) or the shape is malformed.
    pub fn new(shape: &Shape) -> Option<Self> {
        let count = shape.nodes.len();
        let child = |at: u32| (at as usize) < count;
        let mut nodes = Vec::with_capacity(count);
        for node in &shape.nodes {
            let kids = &node.children;
            let only = || match kids.as_slice() {
                [(_, at)] if child(*at) => Some(*at),
                _ => None,
            };
            let all = || {
                kids.iter()
                    .all(|(_, at)| child(*at))
                    .then(|| kids.iter().map(|(_, at)| *at).collect::<Vec<_>>())
            };
            let named = || {
                kids.iter().all(|(_, at)| child(*at)).then(|| {
                    kids.iter()
                        .map(|(n, at)| (field(n), *at))
                        .collect::<Vec<_>>()
                })
            };
            nodes.push(match node.kind {
                ShapeKind::Unit | ShapeKind::UnitStruct => Node::Null,
                ShapeKind::Bool => Node::Bool,
                ShapeKind::I8 => Node::I8,
                ShapeKind::I16 => Node::I16,
                ShapeKind::I32 => Node::I32,
                ShapeKind::I64 => Node::I64,
                ShapeKind::U8 => Node::U8,
                ShapeKind::U16 => Node::U16,
                ShapeKind::U32 => Node::U32,
                ShapeKind::U64 => Node::U64,
                ShapeKind::F32 => Node::F32,
                ShapeKind::F64 => Node::F64,
                ShapeKind::Char => Node::Char,
                ShapeKind::Str => Node::Str,
                ShapeKind::Bytes => Node::Bytes,
                ShapeKind::Option => Node::Option(only()?),
                ShapeKind::Seq => Node::Seq(only()?),
                ShapeKind::Map => match kids.as_slice() {
                    [(_, key), (_, value)]
                        if child(*value)
                            && shape.nodes.get(*key as usize)?.kind == ShapeKind::Str =>
                    {
                        Node::Map(*value)
                    }
                    _ => return None,
                },
                ShapeKind::Tuple | ShapeKind::TupleStruct => Node::Tuple(all()?),
                ShapeKind::Array(n) => Node::Array(n, only()?),
                ShapeKind::NewType => Node::Inner(only()?),
                ShapeKind::Struct => Node::Struct(named()?),
                ShapeKind::Enum => {
                    let mut variants = Vec::with_capacity(kids.len());
                    for (_, at) in kids {
                        let variant = shape.nodes.get(*at as usize)?;
                        let vkids = &variant.children;
                        let form = match variant.kind {
                            ShapeKind::UnitVariant => Form::Unit,
                            ShapeKind::NewTypeVariant => match vkids.as_slice() {
                                [(_, at)] if child(*at) => Form::NewType(*at),
                                _ => return None,
                            },
                            ShapeKind::TupleVariant => Form::Tuple(
                                vkids
                                    .iter()
                                    .all(|(_, at)| child(*at))
                                    .then(|| vkids.iter().map(|(_, at)| *at).collect())?,
                            ),
                            ShapeKind::StructVariant => {
                                Form::Struct(vkids.iter().all(|(_, at)| child(*at)).then(|| {
                                    vkids.iter().map(|(n, at)| (field(n), *at)).collect()
                                })?)
                            }
                            _ => return None,
                        };
                        variants.push(Variant {
                            name: quoted(&variant.name),
                            form,
                        });
                    }
                    Node::Enum(variants)
                }
                // Reached only through their enum.
                ShapeKind::UnitVariant
                | ShapeKind::NewTypeVariant
                | ShapeKind::TupleVariant
                | ShapeKind::StructVariant => Node::Null,
                ShapeKind::I128 | ShapeKind::U128 | ShapeKind::Opaque => return None,
            });
        }
        (!nodes.is_empty()).then_some(JsonShape { nodes })
    }

    /// Appends the JSON of the value whose bincode is `bytes` (all of them) to `out`. On an
    /// error `out` is left as it was.
    pub fn render(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RenderError> {
        let start = out.len();
        let mut walk = Walk {
            nodes: &self.nodes,
            bytes,
            at: 0,
            steps: 4096 + 64 * bytes.len(),
            out,
        };
        let mut result = walk.value(0, 0);
        if result.is_ok() && walk.at != bytes.len() {
            result = Err(RenderError("bytes are left over after the value"));
        }
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// Where a top-level field of a struct sits in its bincode, and how its key text is read: the
/// host reads a record's key (`key_by`) this way instead of the producing module serializing the
/// value a second time to find it. Only a field after fixed-size fields alone (so at a fixed
/// offset) whose key text cannot fail: a string, an integer, a bool or a char (or a newtype of
/// one). The text is what the SDK's field reader writes: a string as it is, the rest in decimal
/// or `true`/`false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyField {
    offset: usize,
    kind: KeyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Str,
    Bool,
    Char,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl JsonShape {
    /// Where field `name` of the root struct is, if its key can be read at a fixed offset.
    pub fn key_field(&self, name: &str) -> Option<KeyField> {
        let Node::Struct(fields) = &self.nodes[0] else {
            return None;
        };
        let wanted = field(name);
        let mut offset = 0;
        for (label, node) in fields {
            if *label == wanted {
                return Some(KeyField {
                    offset,
                    kind: self.key_kind(*node, 0)?,
                });
            }
            offset = offset.checked_add(self.fixed_size(*node, 0)?)?;
        }
        None
    }

    fn key_kind(&self, node: u32, depth: usize) -> Option<KeyKind> {
        Some(match &self.nodes[node as usize] {
            Node::Str => KeyKind::Str,
            Node::Bool => KeyKind::Bool,
            Node::Char => KeyKind::Char,
            Node::I8 => KeyKind::I8,
            Node::I16 => KeyKind::I16,
            Node::I32 => KeyKind::I32,
            Node::I64 => KeyKind::I64,
            Node::U8 => KeyKind::U8,
            Node::U16 => KeyKind::U16,
            Node::U32 => KeyKind::U32,
            Node::U64 => KeyKind::U64,
            Node::Inner(inner) if depth < MAX_DEPTH => self.key_kind(*inner, depth + 1)?,
            _ => return None,
        })
    }

    /// The size of every value of `node` in bincode, if they all have one.
    fn fixed_size(&self, node: u32, depth: usize) -> Option<usize> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let sum = |items: Vec<u32>| {
            items.into_iter().try_fold(0usize, |total, item| {
                total.checked_add(self.fixed_size(item, depth + 1)?)
            })
        };
        match &self.nodes[node as usize] {
            Node::Null => Some(0),
            Node::Bool | Node::I8 | Node::U8 => Some(1),
            Node::I16 | Node::U16 => Some(2),
            Node::I32 | Node::U32 | Node::F32 => Some(4),
            Node::I64 | Node::U64 | Node::F64 => Some(8),
            Node::Inner(inner) => self.fixed_size(*inner, depth + 1),
            Node::Array(len, item) => usize::try_from(*len)
                .ok()?
                .checked_mul(self.fixed_size(*item, depth + 1)?),
            Node::Tuple(items) => sum(items.clone()),
            Node::Struct(fields) => sum(fields.iter().map(|(_, item)| *item).collect()),
            _ => None,
        }
    }
}

impl KeyField {
    /// Appends the key text of the field in `value` (a value's bincode) to `out`.
    pub fn text(&self, value: &[u8], out: &mut Vec<u8>) -> Result<(), RenderError> {
        let at = value.get(self.offset..).ok_or(SHORT)?;
        let word = |n: usize| at.get(..n).ok_or(SHORT);
        let mut digits = itoa::Buffer::new();
        let text: &[u8] = match self.kind {
            KeyKind::Str => {
                let len = u64::from_le_bytes(word(8)?.try_into().unwrap_or_default());
                let len = usize::try_from(len).map_err(|_| SHORT)?;
                let end = len.checked_add(8).ok_or(SHORT)?;
                at.get(8..end).ok_or(SHORT)?
            }
            KeyKind::Bool => match word(1)? {
                [0] => b"false",
                [1] => b"true",
                _ => return Err(RenderError("a bool is neither 0 nor 1")),
            },
            KeyKind::Char => utf8_char(at)?.as_bytes(),
            KeyKind::I8 => decimal(&mut digits, at, i8::from_le_bytes)?,
            KeyKind::U8 => decimal(&mut digits, at, u8::from_le_bytes)?,
            KeyKind::I16 => decimal(&mut digits, at, i16::from_le_bytes)?,
            KeyKind::U16 => decimal(&mut digits, at, u16::from_le_bytes)?,
            KeyKind::I32 => decimal(&mut digits, at, i32::from_le_bytes)?,
            KeyKind::U32 => decimal(&mut digits, at, u32::from_le_bytes)?,
            KeyKind::I64 => decimal(&mut digits, at, i64::from_le_bytes)?,
            KeyKind::U64 => decimal(&mut digits, at, u64::from_le_bytes)?,
        };
        out.extend_from_slice(text);
        Ok(())
    }
}

/// The char bincode wrote at the start of `at`: its UTF-8, one to four bytes.
fn utf8_char(at: &[u8]) -> Result<&str, RenderError> {
    let width = match at.first().ok_or(SHORT)? {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return Err(RenderError("a char is not UTF-8")),
    };
    let bytes = at.get(..width).ok_or(SHORT)?;
    std::str::from_utf8(bytes).map_err(|_| RenderError("a char is not UTF-8"))
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap_or([0; N])
}

/// The integer of `N` bytes at the start of `at`, in decimal.
fn decimal<'d, T: itoa::Integer, const N: usize>(
    digits: &'d mut itoa::Buffer,
    at: &[u8],
    from: fn([u8; N]) -> T,
) -> Result<&'d [u8], RenderError> {
    let word = at.get(..N).ok_or(SHORT)?;
    Ok(digits.format(from(array(word))).as_bytes())
}

struct Walk<'a> {
    nodes: &'a [Node],
    bytes: &'a [u8],
    at: usize,
    steps: usize,
    out: &'a mut Vec<u8>,
}

const SHORT: RenderError = RenderError("the value ends early");

impl<'a> Walk<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RenderError> {
        let end = self.at.checked_add(N).ok_or(SHORT)?;
        let word = self.bytes.get(self.at..end).ok_or(SHORT)?;
        self.at = end;
        Ok(word.try_into().unwrap_or([0; N]))
    }

    fn slice(&mut self) -> Result<&'a [u8], RenderError> {
        let len = u64::from_le_bytes(self.take()?);
        let len = usize::try_from(len).map_err(|_| SHORT)?;
        let end = self.at.checked_add(len).ok_or(SHORT)?;
        let slice = self.bytes.get(self.at..end).ok_or(SHORT)?;
        self.at = end;
        Ok(slice)
    }

    fn len(&mut self) -> Result<u64, RenderError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// Reads an integer of `N` bytes and writes it in decimal.
    fn number<T: itoa::Integer, const N: usize>(
        &mut self,
        from: fn([u8; N]) -> T,
    ) -> Result<(), RenderError> {
        let value = from(self.take()?);
        self.int(value);
        Ok(())
    }

    fn int(&mut self, value: impl itoa::Integer) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn json(&mut self, value: &impl Serialize) -> Result<(), RenderError> {
        serde_json::to_writer(&mut *self.out, value)
            .map_err(|_| RenderError("a value has no JSON form"))
    }

    /// A string: its length, then its UTF-8.
    fn string(&mut self) -> Result<(), RenderError> {
        let text =
            std::str::from_utf8(self.slice()?).map_err(|_| RenderError("a string is not UTF-8"))?;
        self.json(&text)
    }

    /// `count` values of `item`, as a JSON array.
    fn repeat(&mut self, item: u32, count: u64, depth: usize) -> Result<(), RenderError> {
        self.out.push(b'[');
        for i in 0..count {
            if i > 0 {
                self.out.push(b',');
            }
            self.value(item, depth)?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn items(&mut self, items: &[u32], depth: usize) -> Result<(), RenderError> {
        self.out.push(b'[');
        for (i, &item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.value(item, depth)?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn fields(&mut self, fields: &[(Box<[u8]>, u32)], depth: usize) -> Result<(), RenderError> {
        self.out.push(b'{');
        for (i, (name, node)) in fields.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(name);
            self.value(*node, depth)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, node: u32, depth: usize) -> Result<(), RenderError> {
        if depth >= MAX_DEPTH {
            return Err(RenderError("the value is nested too deep"));
        }
        self.steps = self
            .steps
            .checked_sub(1)
            .ok_or(RenderError("the value has too many parts for its size"))?;
        let nodes = self.nodes;
        let depth = depth + 1;
        match &nodes[node as usize] {
            Node::Null => self.out.extend_from_slice(b"null"),
            Node::Bool => match self.take::<1>()? {
                [0] => self.out.extend_from_slice(b"false"),
                [1] => self.out.extend_from_slice(b"true"),
                _ => return Err(RenderError("a bool is neither 0 nor 1")),
            },
            Node::I8 => self.number(i8::from_le_bytes)?,
            Node::I16 => self.number(i16::from_le_bytes)?,
            Node::I32 => self.number(i32::from_le_bytes)?,
            Node::I64 => self.number(i64::from_le_bytes)?,
            Node::U8 => self.number(u8::from_le_bytes)?,
            Node::U16 => self.number(u16::from_le_bytes)?,
            Node::U32 => self.number(u32::from_le_bytes)?,
            Node::U64 => self.number(u64::from_le_bytes)?,
            Node::F32 => {
                let value = f32::from_le_bytes(self.take()?);
                self.json(&value)?;
            }
            Node::F64 => {
                let value = f64::from_le_bytes(self.take()?);
                self.json(&value)?;
            }
            Node::Char => {
                let text = utf8_char(&self.bytes[self.at..])?;
                self.at += text.len();
                self.json(&text)?;
            }
            Node::Str => self.string()?,
            Node::Bytes => {
                let bytes = self.slice()?;
                self.out.push(b'[');
                for (i, &byte) in bytes.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.int(byte);
                }
                self.out.push(b']');
            }
            Node::Option(inner) => match self.take::<1>()? {
                [0] => self.out.extend_from_slice(b"null"),
                [1] => self.value(*inner, depth)?,
                _ => return Err(RenderError("an option's tag is neither 0 nor 1")),
            },
            Node::Seq(item) => {
                let len = self.len()?;
                self.repeat(*item, len, depth)?;
            }
            Node::Map(value) => {
                let len = self.len()?;
                self.out.push(b'{');
                for i in 0..len {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.string()?;
                    self.out.push(b':');
                    self.value(*value, depth)?;
                }
                self.out.push(b'}');
            }
            Node::Tuple(items) => self.items(items, depth)?,
            Node::Array(len, item) => self.repeat(*item, *len, depth)?,
            Node::Inner(inner) => self.value(*inner, depth)?,
            Node::Struct(fields) => self.fields(fields, depth)?,
            Node::Enum(variants) => {
                let index = u32::from_le_bytes(self.take()?);
                let variant = variants
                    .get(index as usize)
                    .ok_or(RenderError("an enum's variant index is out of range"))?;
                if let Form::Unit = variant.form {
                    self.out.extend_from_slice(&variant.name);
                    return Ok(());
                }
                self.out.push(b'{');
                self.out.extend_from_slice(&variant.name);
                self.out.push(b':');
                match &variant.form {
                    Form::NewType(inner) => self.value(*inner, depth)?,
                    Form::Tuple(items) => self.items(items, depth)?,
                    Form::Struct(fields) => self.fields(fields, depth)?,
                    Form::Unit => {}
                }
                self.out.push(b'}');
            }
        }
        Ok(())
    }
}

/// Whether `T`'s JSON is what [`JsonShape::render`] writes from its bincode by `shape` (`T`'s
/// traced shape): checked on sample values that reach every corner of the shape — each option
/// absent and present, each sequence and map empty and full, each variant of each enum, strings
/// that need escapes, extreme numbers. Each sample must decode as `T`, encode back to the same
/// bincode, and serialize with serde_json to exactly what the shape renders. A type whose
/// `Serialize` departs from its `Deserialize` (`skip_serializing_if`, `rename(serialize = …)`,
/// `serialize_with`) fails and keeps writing its own JSON.
pub fn vouch<T: Serialize + Deserialize<'static>>(shape: &Shape) -> bool {
    let Some(json) = JsonShape::new(shape) else {
        return false;
    };
    if !enums_traced_in_full(&json.nodes) {
        return false;
    }
    let variants = shape
        .nodes
        .iter()
        .filter(|n| n.kind == ShapeKind::Enum)
        .map(|n| n.children.len())
        .max()
        .unwrap_or(1)
        .clamp(1, 64);
    let mut samples = Vec::new();
    let mut ends = Vec::new();
    for mode in std::iter::once(None).chain((0..variants).map(Some)) {
        if !make_sample(&json.nodes, 0, mode, 0, &mut samples) {
            return false;
        }
        ends.push(samples.len());
    }
    // A type that borrows from its input (`Cow<'a, str>` fields) decodes only from bytes that
    // live for ever: the samples (a few hundred bytes, once per `describe`) are leaked.
    let samples: &'static [u8] = Vec::leak(samples);
    let mut start = 0;
    for end in ends {
        let sample = &samples[start..end];
        start = end;
        let Ok((value, used)) = bincode::serde::borrow_decode_from_slice::<T, _>(sample, BINCODE)
        else {
            return false;
        };
        let again = bincode::serde::encode_to_vec(&value, BINCODE).ok();
        if used != sample.len() || again.as_deref() != Some(sample) {
            return false;
        }
        let mut rendered = Vec::new();
        if json.render(sample, &mut rendered).is_err()
            || serde_json::to_vec(&value).ok() != Some(rendered)
        {
            return false;
        }
    }
    true
}

/// Whether every enum of the shape is reached from the root through fields alone (structs,
/// tuples, newtypes) somewhere. The tracer explores an enum's variants by tracing the type again;
/// an enum found only inside a sequence, an option, a map or another enum's variant is reached
/// once, so its shape may lack variants, and the host could not render them.
fn enums_traced_in_full(nodes: &[Node]) -> bool {
    let mut seen = vec![[false; 2]; nodes.len()];
    let mut direct = vec![false; nodes.len()];
    let mut behind = Vec::new();
    let mut stack = vec![(0u32, false)];
    while let Some((node, inside)) = stack.pop() {
        let mark = &mut seen[node as usize][usize::from(inside)];
        if std::mem::replace(mark, true) {
            continue;
        }
        let mut push = |child: u32, inside: bool| stack.push((child, inside));
        match &nodes[node as usize] {
            Node::Option(child) | Node::Seq(child) | Node::Map(child) | Node::Array(_, child) => {
                push(*child, true)
            }
            Node::Inner(child) => push(*child, inside),
            Node::Tuple(items) => items.iter().for_each(|&item| push(item, inside)),
            Node::Struct(fields) => fields.iter().for_each(|(_, item)| push(*item, inside)),
            Node::Enum(variants) => {
                if inside {
                    behind.push(node);
                } else {
                    direct[node as usize] = true;
                }
                for variant in variants {
                    match &variant.form {
                        Form::Unit => {}
                        Form::NewType(child) => push(*child, true),
                        Form::Tuple(items) => items.iter().for_each(|&item| push(item, true)),
                        Form::Struct(fields) => {
                            fields.iter().for_each(|(_, item)| push(*item, true))
                        }
                    }
                }
            }
            _ => {}
        }
    }
    behind.iter().all(|&node| direct[node as usize])
}

/// Writes the bincode of a sample value of `node`: with `mode` `None`, the least of everything
/// (options absent, sequences empty, first variants); with `Some(k)`, the most (options present,
/// two items, variant `k` or the last). Deep down a full sample turns into a least one, so a
/// recursive type ends; one that cannot end makes no sample.
fn make_sample(
    nodes: &[Node],
    node: u32,
    mode: Option<usize>,
    depth: usize,
    out: &mut Vec<u8>,
) -> bool {
    if depth > 24 {
        return false;
    }
    let mode = if depth > 12 { None } else { mode };
    let full = mode.is_some();
    let next = depth + 1;
    let items = |out: &mut Vec<u8>, items: &[u32]| {
        items
            .iter()
            .all(|&item| make_sample(nodes, item, mode, next, out))
    };
    let fields = |out: &mut Vec<u8>, fields: &[(Box<[u8]>, u32)]| {
        fields
            .iter()
            .all(|&(_, item)| make_sample(nodes, item, mode, next, out))
    };
    let text: &str = if full {
        "a\"\\\n\u{1}\u{7f}é€😀</"
    } else {
        ""
    };
    match &nodes[node as usize] {
        Node::Null => {}
        Node::Bool => out.push(u8::from(full)),
        Node::I8 => out.extend_from_slice(&(if full { i8::MIN } else { 0 }).to_le_bytes()),
        Node::I16 => out.extend_from_slice(&(if full { i16::MIN } else { -1 }).to_le_bytes()),
        Node::I32 => out.extend_from_slice(&(if full { i32::MIN } else { 7 }).to_le_bytes()),
        Node::I64 => out.extend_from_slice(&(if full { i64::MIN } else { -42 }).to_le_bytes()),
        Node::U8 => out.extend_from_slice(&(if full { u8::MAX } else { 0 }).to_le_bytes()),
        Node::U16 => out.extend_from_slice(&(if full { u16::MAX } else { 1 }).to_le_bytes()),
        Node::U32 => out.extend_from_slice(&(if full { u32::MAX } else { 0 }).to_le_bytes()),
        Node::U64 => out.extend_from_slice(&(if full { u64::MAX } else { 9 }).to_le_bytes()),
        Node::F32 => out.extend_from_slice(&(if full { -1.5e-7f32 } else { 0.1 }).to_le_bytes()),
        Node::F64 => out.extend_from_slice(&(if full { 1e300f64 } else { -0.1 }).to_le_bytes()),
        Node::Char => {
            let c = if full { '"' } else { 'é' };
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
        Node::Str => {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        Node::Bytes => {
            let bytes: &[u8] = if full { &[0, 255, 10] } else { &[] };
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Node::Option(inner) => {
            out.push(u8::from(full));
            if full {
                return make_sample(nodes, *inner, mode, next, out);
            }
        }
        Node::Seq(item) => {
            let len: u64 = if full { 2 } else { 0 };
            out.extend_from_slice(&len.to_le_bytes());
            for _ in 0..len {
                if !make_sample(nodes, *item, mode, next, out) {
                    return false;
                }
            }
        }
        Node::Map(value) => {
            // One entry: a map type may keep only one of equal keys.
            let len: u64 = u64::from(full);
            out.extend_from_slice(&len.to_le_bytes());
            if full {
                out.extend_from_slice(&(text.len() as u64).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
                return make_sample(nodes, *value, mode, next, out);
            }
        }
        Node::Tuple(parts) => return items(out, parts),
        Node::Array(len, item) => {
            for _ in 0..(*len).min(64) {
                if !make_sample(nodes, *item, mode, next, out) {
                    return false;
                }
            }
            return *len <= 64;
        }
        Node::Inner(inner) => return make_sample(nodes, *inner, mode, next, out),
        Node::Struct(named) => return fields(out, named),
        Node::Enum(variants) => {
            if variants.is_empty() {
                return false;
            }
            let index = mode.unwrap_or(0).min(variants.len() - 1);
            out.extend_from_slice(&(index as u32).to_le_bytes());
            return match &variants[index].form {
                Form::Unit => true,
                Form::NewType(inner) => make_sample(nodes, *inner, mode, next, out),
                Form::Tuple(parts) => items(out, parts),
                Form::Struct(named) => fields(out, named),
            };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ShapeNode;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Everything {
        unit: (),
        flag: bool,
        small: i8,
        medium: i16,
        int: i32,
        big: i64,
        byte: u8,
        word: u16,
        dword: u32,
        qword: u64,
        single: f32,
        double: f64,
        letter: char,
        text: String,
        maybe: Option<String>,
        items: Vec<Item>,
        totals: BTreeMap<String, i64>,
        pair: (i64, String),
        rgb: [u8; 3],
        id: Id,
        point: Point,
        nothing: Nothing,
        kind: Kind,
        kinds: Vec<Kind>,
        tree: Tree,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Item {
        sku: String,
        qty: i64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Id(i64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point(i32, i32);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Nothing;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Boxed(String),
        Pair(i64, bool),
        Named {
            #[serde(rename = "the-qty")]
            qty: i64,
            note: Option<String>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Tree {
        label: String,
        children: Vec<Tree>,
    }

    fn shape_of<T: Deserialize<'static>>() -> Shape {
        crate::shape::of::<T>().unwrap()
    }

    fn rendered(json: &JsonShape, bytes: &[u8]) -> Result<String, RenderError> {
        let mut out = b"keep:".to_vec();
        let result = json.render(bytes, &mut out);
        match result {
            Ok(()) => Ok(String::from_utf8(out[5..].to_vec()).unwrap()),
            Err(e) => {
                assert_eq!(out, b"keep:", "a failed render leaves the buffer as it was");
                Err(e)
            }
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 ]{0,12}",
            any::<String>(),
            Just("quote \" backslash \\ newline \n nul \u{0} del \u{7f}".to_string()),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Plain),
            text().prop_map(Kind::Boxed),
            (any::<i64>(), any::<bool>()).prop_map(|(a, b)| Kind::Pair(a, b)),
            (any::<i64>(), proptest::option::of(text()))
                .prop_map(|(qty, note)| Kind::Named { qty, note }),
        ]
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = text().prop_map(|label| Tree {
            label,
            children: Vec::new(),
        });
        leaf.prop_recursive(3, 12, 3, |inner| {
            (text(), proptest::collection::vec(inner, 0..3))
                .prop_map(|(label, children)| Tree { label, children })
        })
    }

    prop_compose! {
        fn everything()(
            ints in (any::<bool>(), any::<i8>(), any::<i16>(), any::<i32>(), any::<i64>(),
                     any::<u8>(), any::<u16>(), any::<u32>(), any::<u64>()),
            floats in (any::<f32>(), any::<f64>(), any::<char>()),
            texts in (text(), proptest::option::of(text()),
                      proptest::collection::vec((text(), any::<i64>()), 0..4),
                      proptest::collection::btree_map(text(), any::<i64>(), 0..4)),
            rest in ((any::<i64>(), text()), any::<[u8; 3]>(), any::<i64>(),
                     (any::<i32>(), any::<i32>()), kind(), proptest::collection::vec(kind(), 0..5),
                     tree()),
        ) -> Everything {
            let (flag, small, medium, int, big, byte, word, dword, qword) = ints;
            let (single, double, letter) = floats;
            let (text, maybe, items, totals) = texts;
            let (pair, rgb, id, (x, y), kind, kinds, tree) = rest;
            Everything {
                unit: (), flag, small, medium, int, big, byte, word, dword, qword,
                single, double, letter, text, maybe,
                items: items.into_iter().map(|(sku, qty)| Item { sku, qty }).collect(),
                totals, pair, rgb, id: Id(id), point: Point(x, y), nothing: Nothing, kind, kinds, tree,
            }
        }
    }

    proptest! {
        /// Any value of a type with every kind of node renders exactly as serde_json writes it,
        /// NaN and infinities included.
        #[test]
        fn a_value_renders_as_serde_json_writes_it(value in everything()) {
            let json = JsonShape::new(&shape_of::<Everything>()).unwrap();
            let bytes = bincode::serde::encode_to_vec(&value, BINCODE).unwrap();
            let expected = String::from_utf8(serde_json::to_vec(&value).unwrap()).unwrap();
            prop_assert_eq!(rendered(&json, &bytes).unwrap(), expected);
        }

        /// Whatever bytes a guest hands over, the render ends, and what it writes is one line of
        /// JSON.
        #[test]
        fn any_bytes_render_as_one_json_line_or_fail(
            value in everything(),
            cut in any::<prop::sample::Index>(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let json = JsonShape::new(&shape_of::<Everything>()).unwrap();
            let mut bytes = bincode::serde::encode_to_vec(&value, BINCODE).unwrap();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let cut = cut.index(bytes.len() + 1);
            bytes.truncate(cut);
            for case in [bytes.clone(), [bytes, noise].concat()] {
                if let Ok(line) = rendered(&json, &case) {
                    prop_assert!(!line.contains('\n'));
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "{}", line);
                }
            }
        }
    }

    #[test]
    fn a_type_whose_json_departs_from_its_shape_is_not_vouched_for() {
        assert!(vouch::<Everything>(&shape_of::<Everything>()));
        assert!(vouch::<Item>(&shape_of::<Item>()));

        #[derive(Serialize, Deserialize)]
        struct Skips {
            a: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            b: Option<i64>,
        }
        assert!(!vouch::<Skips>(&shape_of::<Skips>()));

        #[derive(Serialize, Deserialize)]
        struct SkipsEmpty {
            #[serde(skip_serializing_if = "Vec::is_empty", default)]
            list: Vec<i64>,
        }
        assert!(!vouch::<SkipsEmpty>(&shape_of::<SkipsEmpty>()));

        #[derive(Serialize, Deserialize)]
        struct Renamed {
            #[serde(rename(serialize = "out"))]
            a: i64,
        }
        assert!(!vouch::<Renamed>(&shape_of::<Renamed>()));

        #[derive(Serialize, Deserialize)]
        struct Custom {
            #[serde(serialize_with = "as_text")]
            a: i64,
        }
        fn as_text<S: serde::Serializer>(a: &i64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&a.to_string())
        }
        assert!(!vouch::<Custom>(&shape_of::<Custom>()));

        #[derive(Serialize, Deserialize)]
        enum Later {
            First(i64),
            #[serde(rename(serialize = "second"))]
            Second {
                x: i64,
            },
        }
        assert!(!vouch::<Later>(&shape_of::<Later>()));

        #[derive(Serialize, Deserialize)]
        struct Wide {
            a: i128,
        }
        assert!(!vouch::<Wide>(&shape_of::<Wide>()));

        #[derive(Serialize, Deserialize)]
        struct IntKeys {
            a: BTreeMap<i64, i64>,
        }
        assert!(!vouch::<IntKeys>(&shape_of::<IntKeys>()));

        // An enum only inside a sequence is traced with its first variant alone.
        #[derive(Serialize, Deserialize)]
        struct Listed {
            kinds: Vec<Kind>,
        }
        assert!(!vouch::<Listed>(&shape_of::<Listed>()));

        // Skipped on both sides is no departure; a type that borrows its text is checked too.
        #[derive(Serialize, Deserialize)]
        #[allow(dead_code)]
        struct Skipped {
            a: i64,
            #[serde(skip)]
            b: i64,
        }
        assert!(vouch::<Skipped>(&shape_of::<Skipped>()));
        #[derive(Serialize, Deserialize)]
        struct Borrows<'a> {
            #[serde(borrow)]
            sku: std::borrow::Cow<'a, str>,
            qty: i64,
        }
        assert!(vouch::<Borrows<'static>>(&shape_of::<Borrows<'static>>()));
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Keyed {
        a: i64,
        b: u8,
        flag: bool,
        pair: (i32, u16),
        rgb: [u8; 3],
        id: Id,
        small: i16,
        word: u32,
        s: String,
        after: i64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Lettered {
        c: char,
        s: String,
    }

    proptest! {
        /// A key read at its field's offset is the text the SDK's field reader gives it.
        #[test]
        fn a_key_read_by_offset_is_the_field_readers_text(
            ints in (any::<i64>(), any::<u8>(), any::<bool>(), any::<(i32, u16)>(),
                     any::<[u8; 3]>(), any::<i64>(), any::<char>(), any::<i16>(), any::<u32>()),
            s in text(),
            after in any::<i64>(),
        ) {
            let (a, b, flag, pair, rgb, id, c, small, word) = ints;

            let value = Keyed { a, b, flag, pair, rgb, id: Id(id), small, word, s: s.clone(), after };
            let json = JsonShape::new(&shape_of::<Keyed>()).unwrap();
            let bytes = bincode::serde::encode_to_vec(&value, BINCODE).unwrap();
            let names = ["a", "b", "flag", "id", "small", "word", "s"];
            let wanted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let request = crate::fields::FieldRequest { key_fields: &wanted, ts_field: None };
            let mut extracted = crate::fields::Extracted::default();
            crate::fields::extract(&value, &request, &mut extracted).unwrap();
            for (i, name) in names.iter().enumerate() {
                let mut text = b"x".to_vec();
                json.key_field(name).unwrap().text(&bytes, &mut text).unwrap();
                prop_assert_eq!(&text[1..], extracted.keys[i].as_slice(), "{}", name);
            }
            // Cut short, the read fails; it never reads past the value.
            let field = json.key_field("s").unwrap();
            prop_assert!(field.text(&bytes[..bytes.len() - 9], &mut Vec::new()).is_err());
            // A char is read as its UTF-8.
            let lettered = Lettered { c, s };
            let bytes = bincode::serde::encode_to_vec(&lettered, BINCODE).unwrap();
            let json = JsonShape::new(&shape_of::<Lettered>()).unwrap();
            let mut text = Vec::new();
            json.key_field("c").unwrap().text(&bytes, &mut text).unwrap();
            prop_assert_eq!(text, c.to_string().into_bytes());
            prop_assert!(json.key_field("s").is_none(), "after a char, the offset varies");
        }
    }

    #[test]
    fn only_fields_at_a_fixed_offset_with_a_key_text_are_read_by_offset() {
        let json = JsonShape::new(&shape_of::<Keyed>()).unwrap();
        assert!(json.key_field("pair").is_none(), "a tuple has no key text");
        assert!(
            json.key_field("after").is_none(),
            "after a string, the offset varies"
        );
        assert!(json.key_field("missing").is_none());
        let list = JsonShape::new(&shape_of::<Vec<i64>>()).unwrap();
        assert!(list.key_field("a").is_none(), "not a struct");
    }

    fn node(kind: ShapeKind, children: &[u32]) -> ShapeNode {
        ShapeNode {
            kind,
            name: String::new(),
            children: children.iter().map(|&c| (String::new(), c)).collect(),
        }
    }

    #[test]
    fn hostile_shapes_and_bytes_fail_without_spinning() {
        let shape = |nodes| Shape { nodes, json: true };
        // A sequence of a quintillion units: zero bytes each.
        let units = JsonShape::new(&shape(vec![
            node(ShapeKind::Seq, &[1]),
            node(ShapeKind::Unit, &[]),
        ]))
        .unwrap();
        let many = (1u64 << 60).to_le_bytes();
        assert_eq!(
            rendered(&units, &many),
            Err(RenderError("the value has too many parts for its size"))
        );
        assert_eq!(
            rendered(&units, &2u64.to_le_bytes()).unwrap(),
            "[null,null]"
        );
        // A sequence of itself, nested deeper than a walk goes.
        let cyclic = JsonShape::new(&shape(vec![node(ShapeKind::Seq, &[0])])).unwrap();
        let deep: Vec<u8> = (0..100).flat_map(|_| 1u64.to_le_bytes()).collect();
        assert_eq!(
            rendered(&cyclic, &deep),
            Err(RenderError("the value is nested too deep"))
        );
        // A string longer than the bytes, one that is not UTF-8, a bad bool, a bad tag, a
        // variant that does not exist, bytes left over.
        let text = JsonShape::new(&shape(vec![node(ShapeKind::Str, &[])])).unwrap();
        let mut long = u64::MAX.to_le_bytes().to_vec();
        long.extend_from_slice(b"abc");
        assert!(rendered(&text, &long).is_err());
        let mut bad = 1u64.to_le_bytes().to_vec();
        bad.push(0xff);
        assert!(rendered(&text, &bad).is_err());
        let mut extra = 1u64.to_le_bytes().to_vec();
        extra.extend_from_slice(b"ab");
        assert!(rendered(&text, &extra).is_err());
        let flag = JsonShape::new(&shape(vec![node(ShapeKind::Bool, &[])])).unwrap();
        assert!(rendered(&flag, &[2]).is_err());
        let option = JsonShape::new(&shape(vec![
            node(ShapeKind::Option, &[1]),
            node(ShapeKind::U8, &[]),
        ]))
        .unwrap();
        assert!(rendered(&option, &[2, 1]).is_err());
        assert_eq!(rendered(&option, &[1, 7]).unwrap(), "7");
        let mut variant = node(ShapeKind::UnitVariant, &[]);
        variant.name = "A\"b".into();
        let one = JsonShape::new(&shape(vec![node(ShapeKind::Enum, &[1]), variant])).unwrap();
        assert_eq!(rendered(&one, &0u32.to_le_bytes()).unwrap(), r#""A\"b""#);
        assert!(rendered(&one, &1u32.to_le_bytes()).is_err());
        // Bytes (serde_bytes) are an array of numbers, as serde_json writes them.
        let bytes = JsonShape::new(&shape(vec![node(ShapeKind::Bytes, &[])])).unwrap();
        let mut raw = 3u64.to_le_bytes().to_vec();
        raw.extend_from_slice(&[0, 10, 255]);
        assert_eq!(rendered(&bytes, &raw).unwrap(), "[0,10,255]");
        // Dangling children, opaque nodes and non-string map keys are refused up front.
        assert!(JsonShape::new(&shape(vec![node(ShapeKind::Seq, &[3])])).is_none());
        assert!(JsonShape::new(&shape(vec![node(ShapeKind::Opaque, &[])])).is_none());
        assert!(
            JsonShape::new(&shape(vec![
                node(ShapeKind::Map, &[1, 1]),
                node(ShapeKind::I64, &[])
            ]))
            .is_none()
        );
        assert!(JsonShape::new(&shape(Vec::new())).is_none());
    }
}
