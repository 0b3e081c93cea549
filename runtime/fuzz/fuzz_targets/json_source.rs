//! The JSON Lines file source: any bytes, read in small batches with a small record limit. It
//! ends, keeps no line longer than the limit, and every record or refusal is within the input.
#![no_main]

use flumen::connectors::{FileSource, Pull, Source, SourceBatch};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let mut source = FileSource::open(file.path().to_path_buf(), false, 3)
        .unwrap()
        .with_max_record_bytes(64);
    let mut batch = SourceBatch::new(vec!["sku".into()], Some("ts".into()))
        .with_max_future(Some(1000));
    for _ in 0..=data.len() + 1 {
        batch.clear();
        match source.next_batch(&mut batch).unwrap() {
            Pull::Finished => return,
            _ => assert!(batch.len() <= 3),
        }
    }
    panic!("the source did not end");
});
