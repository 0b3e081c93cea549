//! Errors located at the key they are about, the check for unknown keys, and [`TableOptions`], the
//! reader through which a connector reads its own options with errors located the same way.

use super::build::{RawFile, RawOperator, RawPipeline, SINK_COMMON, SOURCE_COMMON};
use super::{ConfigError, Location};
use crate::connectors;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(super) struct Report {
    pub file: PathBuf,
    pub text: String,
    pub errors: Vec<ConfigError>,
}

impl Report {
    pub(super) fn location(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { line, column }
    }

    /// An error at a byte span of the text, reported where its key is written when the span
    /// falls inside a key's value (a broken array is best found from its key's line).
    pub(super) fn at_span(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let (table, _) = DeTable::parse_recoverable(&self.text);
        let found = span
            .as_ref()
            .and_then(|s| key_at(table.get_ref(), s.start, ""));
        let location = match (&found, span) {
            (Some((_, key_start)), _) => Some(self.location(*key_start)),
            (None, Some(span)) => Some(self.location(span.start)),
            (None, None) => None,
        };
        self.errors.push(ConfigError {
            file: self.file.clone(),
            location,
            key: found.map(|(key, _)| key).unwrap_or_default(),
            message: message.trim().to_string(),
        });
    }

    pub(super) fn at(&mut self, doc: &Doc<'_, '_>, key: &[&str], message: impl Into<String>) {
        let location = doc.span(key).map(|s| self.location(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            location,
            key: key.join("."),
            message: message.into(),
        });
    }
}

/// The spanned document, to find where a key is written.
pub(super) struct Doc<'t, 'i> {
    pub table: &'t DeTable<'i>,
}

impl Doc<'_, '_> {
    pub(super) fn get(&self, path: &[&str]) -> Option<&Spanned<DeValue<'_>>> {
        let (first, rest) = path.split_first()?;
        let mut value = self.table.get(*first)?;
        for key in rest {
            match value.get_ref() {
                DeValue::Table(table) => value = table.get(*key)?,
                _ => return None,
            }
        }
        Some(value)
    }

    /// The span of the key at `path` (its value's if the key is not found, its parent's if the
    /// value is missing).
    pub(super) fn span(&self, path: &[&str]) -> Option<std::ops::Range<usize>> {
        for len in (1..=path.len()).rev() {
            let prefix = &path[..len];
            let (last, parent) = prefix.split_last()?;
            let table = if parent.is_empty() {
                Some(self.table)
            } else {
                match self.get(parent).map(|v| v.get_ref()) {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                }
            };
            if let Some((key, _)) = table.and_then(|t| t.get_key_value(*last)) {
                return Some(key.span());
            }
        }
        None
    }
}

/// The dotted path of the innermost key whose key or value covers `offset`, and where that key
/// starts.
fn key_at(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<(String, usize)> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let (k, v) = (key.span(), value.span());
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(found) = key_at(inner, offset, &path)
        {
            return Some(found);
        }
        if k.contains(&offset) || (v.start <= offset && offset <= v.end) {
            return Some((path, k.start));
        }
    }
    None
}

pub(super) fn collect_locations(
    table: &DeTable<'_>,
    prefix: &str,
    report: &Report,
    into: &mut BTreeMap<String, Location>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let DeValue::Table(inner) = value.get_ref() {
            collect_locations(inner, &path, report, into);
        }
        into.insert(path, report.location(key.span().start));
    }
}

/// The field names serde expects for `T`, found with a deserializer that only records them.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Fields(&'static [&'static str]);

    impl fmt::Display for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Fields {}

    impl de::Error for Fields {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Fields(&[])
        }
    }

    struct Probe;

    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    match T::deserialize(Probe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The types of a section taking an option.
type TypesWith = fn(&str) -> Vec<&'static str>;

pub(super) fn check_unknown_keys(doc: &Doc<'_, '_>, report: &mut Report) {
    let top = fields_of::<RawFile>();
    for (key, value) in doc.table {
        let key = key.get_ref().as_ref();
        if !top.contains(&key) {
            report.at(
                doc,
                &[key],
                format!("unknown section; expected one of {}", top.join(", ")),
            );
            continue;
        }
        let DeValue::Table(table) = value.get_ref() else {
            continue;
        };
        if key == "pipeline" {
            unknown_in(doc, report, &[key], table, fields_of::<RawPipeline>());
            continue;
        }
        for (stage, body) in table {
            let DeValue::Table(body) = body.get_ref() else {
                continue;
            };
            let path = [key, stage.get_ref().as_ref()];
            // A source's or sink's keys: those of every one, and those of its type.
            let kind = match body.get("type").map(|t| t.get_ref()) {
                Some(DeValue::String(kind)) => kind.as_ref(),
                _ => "",
            };
            let (known, others): (Vec<&str>, TypesWith) = match key {
                "sources" => (
                    [
                        SOURCE_COMMON,
                        connectors::source_options(kind).unwrap_or(&[]),
                    ]
                    .concat(),
                    connectors::source_types_with,
                ),
                "sinks" => (
                    [SINK_COMMON, connectors::sink_options(kind).unwrap_or(&[])].concat(),
                    connectors::sink_types_with,
                ),
                _ => (fields_of::<RawOperator>().to_vec(), |_| Vec::new()),
            };
            for body_key in body.keys() {
                let body_key = body_key.get_ref().as_ref();
                if known.contains(&body_key) {
                    continue;
                }
                let full = [path[0], path[1], body_key];
                let message = match others(body_key).as_slice() {
                    // A key of another type (of a known type: an unknown one is reported).
                    [_, ..] if !kind.is_empty() => format!(
                        "`{body_key}` is not an option of a {kind} {}; expected one of {}",
                        &key[..key.len() - 1],
                        known.join(", ")
                    ),
                    _ => format!("unknown key; expected one of {}", known.join(", ")),
                };
                report.at(doc, &full, message);
            }
        }
    }
}

fn unknown_in(
    doc: &Doc<'_, '_>,
    report: &mut Report,
    path: &[&str],
    table: &DeTable<'_>,
    known: &[&str],
) {
    for key in table.keys() {
        let key = key.get_ref().as_ref();
        if !known.contains(&key) {
            let mut full = path.to_vec();
            full.push(key);
            report.at(
                doc,
                &full,
                format!("unknown key; expected one of {}", known.join(", ")),
            );
        }
    }
}

/// The options of one source or sink (`[section.name]`), read by its connector: a value of the
/// wrong type and every problem the connector finds are reported at their key.
pub(super) struct TableOptions<'a, 'd, 't, 'i> {
    pub table: &'a toml::Table,
    pub section: &'a str,
    pub name: &'a str,
    pub doc: &'d Doc<'t, 'i>,
    pub report: &'a mut Report,
}

impl TableOptions<'_, '_, '_, '_> {
    /// The string at `key`, reporting it missing if it is.
    pub fn required_string(&mut self, key: &'static str) -> Option<String> {
        use connectors::Options;
        if !self.table.contains_key(key) {
            let at = [self.section, self.name];
            self.report
                .at(self.doc, &at, format!("missing field `{key}`"));
            return None;
        }
        self.string(key)
    }

    /// The value at `key` as a `T`, if present; one of another type is reported in serde's words.
    pub fn get<T: serde::de::DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let value = self.table.get(key)?.clone();
        match value.try_into() {
            Ok(value) => Some(value),
            Err(e) => {
                let at = [self.section, self.name, key];
                self.report
                    .at(self.doc, &at, e.to_string().trim().to_string());
                None
            }
        }
    }
}

impl connectors::Options for TableOptions<'_, '_, '_, '_> {
    fn string(&mut self, key: &'static str) -> Option<String> {
        self.get(key)
    }

    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        self.get(key)
    }

    fn integer(&mut self, key: &'static str) -> Option<i64> {
        self.get(key)
    }

    fn problem(&mut self, key: &'static str, message: String) {
        self.report
            .at(self.doc, &[self.section, self.name, key], message);
    }
}
