//! One batch being read by a source: records in output-entry framing, each with the keys its
//! consumers need and its event time, read from JSON without decoding the rest of it.

use flumen_sdk::abi::OutputWriter;
use flumen_sdk::transcode::{Scratch, Transcoder};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// One batch being read: records in output-entry framing, each with one key per field in
/// `key_fields`, and the event times seen (by record index) for the watermark.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// The records, in output-entry framing.
    pub out: OutputWriter,
    /// `(record index, event time)` of the records that have one.
    pub times: Vec<(u64, i64)>,
    /// Records refused at the source: why, and (a prefix of) what they were.
    pub rejected: Vec<(String, Vec<u8>)>,
    /// The split (a Kafka partition) every record of the batch comes from; 0 for a source read
    /// whole.
    pub split: u32,
    /// What the source says of its splits with this read (one opened, idle or ended).
    pub marks: Vec<crate::window::SplitMark>,
    count: u64,
    key_fields: Vec<String>,
    event_time: Option<String>,
    /// The fields read from each JSON record: the key fields, then the event time field.
    wanted: Vec<String>,
    found: Vec<Option<serde_json::Value>>,
    /// The far-future guard: the most a record's event time may be ahead of `newest`.
    max_future_ms: Option<i64>,
    /// The newest event time seen so far (kept up to date by [`Self::push_json`]).
    pub newest: Option<i64>,
    /// Where the port is [`flumen_sdk::abi::Encoding::Parsed`]: how each line is read into
    /// its readers' input type.
    reader: Option<Reader>,
}

/// Reads lines into a type's bincode for a port in [`flumen_sdk::abi::Encoding::Parsed`].
#[derive(Debug)]
struct Reader {
    transcoder: std::sync::Arc<Transcoder>,
    /// The event-time field's position in the type, if it is an integer field of it.
    ts: Option<usize>,
    scratch: Scratch,
    bincode: Vec<u8>,
}

/// How much of a refused record's text its dead letter keeps.
pub const REJECTED_PREFIX: usize = 256;

impl SourceBatch {
    /// An empty batch whose records carry keys `key_fields` and event time `event_time`.
    pub fn new(key_fields: Vec<String>, event_time: Option<String>) -> Self {
        let wanted = key_fields.iter().chain(&event_time).cloned().collect();
        SourceBatch {
            key_fields,
            event_time,
            wanted,
            ..SourceBatch::default()
        }
    }

    /// Guards against far-future event times: see [`super::SourceConfig::max_future_ms`].
    pub fn with_max_future(mut self, max_future_ms: Option<i64>) -> Self {
        self.max_future_ms = max_future_ms;
        self
    }

    /// Writes each record as its readers' input type reads it, in bincode beside its text
    /// ([`flumen_sdk::abi::Encoding::Parsed`]), where the plan found a `transcoder` for them.
    pub fn with_reader(mut self, transcoder: Option<std::sync::Arc<Transcoder>>) -> Self {
        self.reader = transcoder.map(|transcoder| Reader {
            ts: self
                .event_time
                .as_deref()
                .and_then(|field| transcoder.int_field(field)),
            transcoder,
            scratch: Scratch::default(),
            bincode: Vec::new(),
        });
        self
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.out.clear();
        self.times.clear();
        self.rejected.clear();
        self.split = 0;
        self.marks.clear();
        self.count = 0;
    }

    /// Refuses a record: it becomes a dead letter of the source with `why` and the start of
    /// `raw`.
    pub fn reject(&mut self, why: String, raw: &[u8]) {
        let mut prefix = raw[..raw.len().min(REJECTED_PREFIX)].to_vec();
        if raw.len() > REJECTED_PREFIX {
            prefix.extend_from_slice("…".as_bytes());
        }
        self.rejected.push((why, prefix));
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a JSON Lines record, reading its keys and event time from the JSON. A line that
    /// is not an object, or lacks a field, gets empty keys and no event time: the first operator
    /// will send it to the dead letters.
    pub fn push_json(&mut self, line: &[u8]) {
        // UTF-8 checked for the whole line at once, the parsers then skip it string by string.
        let text = std::str::from_utf8(line);
        // Read into the readers' type where the port wants it and the line is plain; its
        // event time then comes from there, unless keys are wanted too.
        let read = match (&mut self.reader, &text) {
            (Some(reader), Ok(text)) => {
                reader.bincode.clear();
                reader
                    .transcoder
                    .transcode(text, &mut reader.scratch, &mut reader.bincode)
            }
            _ => false,
        };
        let from_reader = match &self.reader {
            Some(reader) if read && self.key_fields.is_empty() => match reader.ts {
                Some(field) => Some(
                    reader
                        .transcoder
                        .int(&reader.scratch, &reader.bincode, field),
                ),
                None => self.event_time.is_none().then_some(None),
            },
            _ => None,
        };
        self.found.clear();
        if !self.wanted.is_empty() && from_reader.is_none() {
            self.found.resize(self.wanted.len(), None);
            let picker = FieldPicker {
                wanted: &self.wanted,
                found: &mut self.found,
            };
            // A line that is not UTF-8 is read as far as it goes.
            let _ = match text {
                Ok(text) => picker.deserialize(&mut serde_json::Deserializer::from_str(text)),
                Err(_) => picker.deserialize(&mut serde_json::Deserializer::from_slice(line)),
            };
        }
        let keys = self.key_fields.len();
        let ts = from_reader.unwrap_or_else(|| {
            self.event_time
                .as_ref()
                .and_then(|_| self.found.get(keys)?.as_ref()?.as_i64())
        });
        if let (Some(ts), Some(limit), Some(newest)) = (ts, self.max_future_ms, self.newest)
            && ts.saturating_sub(newest) > limit
        {
            self.reject(
                format!(
                    "event time {ts} is {} ms ahead of the newest seen ({newest}), more than \
                     max_future_ms = {limit}",
                    ts.saturating_sub(newest)
                ),
                line,
            );
            return;
        }
        if let Some(ts) = ts {
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
        }
        let index = self.count;
        if let Some(ts) = ts {
            self.times.push((index, ts));
        }
        let mut entry = self
            .out
            .record(0, index as u32, ts.unwrap_or(0), keys as u8);
        for value in &self.found[..keys] {
            entry.key(|b| match value {
                Some(serde_json::Value::String(s)) => b.extend_from_slice(s.as_bytes()),
                Some(other) => b.extend_from_slice(other.to_string().as_bytes()),
                None => {}
            });
        }
        let _ = entry.value(|b| {
            match &self.reader {
                Some(reader) => {
                    flumen_sdk::abi::put_parsed(b, read.then_some(&reader.bincode[..]), line)
                }
                None => b.extend_from_slice(line),
            }
            Ok::<_, ()>(())
        });
        self.count += 1;
    }

    /// Appends a typed record: `field` gives each field's integer value by name.
    pub fn push_typed(&mut self, field: impl Fn(&str) -> Option<i64>, ts: i64, value: &[u8]) {
        let index = self.count;
        if self.event_time.is_some() {
            self.times.push((index, ts));
        }
        let mut entry = self
            .out
            .record(0, index as u32, ts, self.key_fields.len() as u8);
        for name in &self.key_fields {
            entry.key(|b| {
                if let Some(v) = field(name) {
                    b.extend_from_slice(v.to_string().as_bytes());
                }
            });
        }
        let _ = entry.value(|b| {
            b.extend_from_slice(value);
            Ok::<_, ()>(())
        });
        self.count += 1;
    }
}

/// The top-level field `name` of the JSON object `json`, the rest skipped unparsed (`None`: no
/// such field, or not an object).
pub(crate) fn field(json: &[u8], name: &str) -> Option<serde_json::Value> {
    let mut found = [None];
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    FieldPicker {
        wanted: &[name],
        found: &mut found,
    }
    .deserialize(&mut deserializer)
    .ok()?;
    let [value] = found;
    value
}

/// Deserializes only the wanted top-level fields of a JSON object, skipping the rest unparsed.
struct FieldPicker<'a, S> {
    wanted: &'a [S],
    found: &'a mut [Option<serde_json::Value>],
}

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for FieldPicker<'_, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: AsRef<str>> Visitor<'de> for FieldPicker<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(wanted) = map.next_key_seed(FieldName(self.wanted))? {
            match wanted {
                Some(i) => self.found[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads an object's key as which of the wanted fields it is, if any, without copying it.
struct FieldName<'a, S>(&'a [S]);

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for FieldName<'_, S> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, S: AsRef<str>> Visitor<'de> for FieldName<'_, S> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|w| w.as_ref() == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::abi::{OutputEntry, OutputReader};

    #[test]
    fn json_records_carry_the_keys_and_event_time_they_name() {
        let mut batch = SourceBatch::new(vec!["sku".into(), "user".into()], Some("ts".into()));
        batch.push_json(br#"{"ts": 7, "sku": "S-1", "user": 42, "other": [1, {"x": 2}]}"#);
        batch.push_json(b"not json");
        batch.push_json(br#"{"ts": "late", "sku": "S-2"}"#);
        // A line that is not UTF-8 is read up to its first bad byte.
        batch.push_json(b"{\"ts\": 9, \"sku\": \"S-\xff\"}");
        batch.push_json(b"{\"sku\": \"S-\xff\", \"ts\": 11}");
        assert_eq!(batch.times, vec![(0, 7), (3, 9)]);
        let entries: Vec<_> = OutputReader::new(batch.out.as_bytes())
            .map(Result::unwrap)
            .collect();
        match &entries[0] {
            OutputEntry::Record { ts, keys, .. } => {
                assert_eq!(*ts, 7);
                assert_eq!(keys.get(0), Some(&b"S-1"[..]));
                assert_eq!(keys.get(1), Some(&b"42"[..]));
            }
            other => panic!("{other:?}"),
        }
        match &entries[2] {
            OutputEntry::Record { keys, .. } => assert_eq!(keys.get(1), Some(&b""[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_read_on_the_host_carry_their_bincode_and_the_rest_their_text_alone() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Order {
            id: i64,
            sku: String,
            ts: i64,
        }
        let shape = flumen_sdk::shape::of::<Order>().unwrap();
        let json = flumen_sdk::render::JsonShape::new(&shape).unwrap();
        let reader = std::sync::Arc::new(Transcoder::new(&json).unwrap());
        let lines: [&[u8]; 4] = [
            br#"{"id": 1, "sku": "S-1", "ts": 7}"#,
            br#"{"ts": 8, "sku": "S-\u0032", "id": 2}"#,
            // Declined: an extra field, a float for an integer, not UTF-8.
            br#"{"id": 3, "sku": "S-3", "ts": 9, "note": "x"}"#,
            b"{\"id\": 4.0, \"sku\": \"S-\xff\", \"ts\": 10}",
        ];
        for keys in [vec![], vec!["sku".to_string()]] {
            let mut batch =
                SourceBatch::new(keys.clone(), Some("ts".into())).with_reader(Some(reader.clone()));
            for line in lines {
                batch.push_json(line);
            }
            // The event time of a line read on the host comes from its bincode; of the others
            // from the text, as before.
            assert_eq!(batch.times[..3], [(0, 7), (1, 8), (2, 9)]);
            let values: Vec<_> = OutputReader::new(batch.out.as_bytes())
                .map(|e| match e.unwrap() {
                    OutputEntry::Record { value, keys, .. } => {
                        let (bincode, text) = flumen_sdk::abi::parsed_parts(value).unwrap();
                        let order = bincode.map(|b| {
                            bincode::serde::decode_from_slice::<Order, _>(
                                b,
                                flumen_sdk::abi::BINCODE,
                            )
                            .unwrap()
                            .0
                        });
                        (order, text.to_vec(), keys.get(0).map(<[u8]>::to_vec))
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            let order = |id, sku: &str, ts| Order {
                id,
                sku: sku.into(),
                ts,
            };
            assert_eq!(values[0].0, Some(order(1, "S-1", 7)));
            assert_eq!(values[1].0, Some(order(2, "S-2", 8)));
            assert_eq!((&values[2].0, &values[3].0), (&None, &None));
            for (value, line) in values.iter().zip(lines) {
                assert_eq!(value.1, line, "each value keeps its line");
            }
            if !keys.is_empty() {
                let picked: Vec<_> = values.iter().map(|v| v.2.clone().unwrap()).collect();
                assert_eq!(picked, [&b"S-1"[..], b"S-2", b"S-3", b""]);
            }
        }
    }

    #[test]
    fn one_field_is_picked_without_decoding_the_rest() {
        let json = br#"{"a": [1, {"b": 2}], "sku": "S-1", "n": 7}"#;
        assert_eq!(field(json, "sku"), Some(serde_json::Value::from("S-1")));
        assert_eq!(field(json, "n"), Some(serde_json::Value::from(7)));
        assert_eq!(field(json, "missing"), None);
        assert_eq!(field(b"[1]", "sku"), None);
        // A name with escapes is the name it spells.
        assert_eq!(field(br#"{"s\u006bu": "S-2"}"#, "sku"), Some("S-2".into()));
    }

    #[test]
    fn far_future_event_times_are_refused_when_guarded() {
        let mut batch = SourceBatch::new(Vec::new(), Some("ts".into())).with_max_future(Some(1000));
        batch.push_json(br#"{"ts": 5000}"#);
        batch.push_json(br#"{"ts": 5999}"#);
        batch.push_json(br#"{"ts": 1000000000000000000}"#);
        batch.push_json(br#"{"ts": 6500}"#);
        assert_eq!(batch.times, vec![(0, 5000), (1, 5999), (2, 6500)]);
        assert_eq!(batch.rejected.len(), 1);
        assert!(batch.rejected[0].0.contains("max_future_ms = 1000"));
    }
}
