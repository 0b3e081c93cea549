//! What a module hands the host after a call: output entries, and batches with their slots.
//! Whatever the bytes, reading them must end without a panic, and never read past them.
#![no_main]

use flumen_sdk::abi::{BatchReader, OutputEntry, OutputReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut entries = 0usize;
    for entry in OutputReader::new(data) {
        match entry {
            Ok(OutputEntry::Record { keys, value, .. }) => {
                for k in 0..keys.len() {
                    let _ = keys.get(k);
                }
                assert!(value.len() <= data.len());
            }
            Ok(OutputEntry::Error { message, raw, .. }) => {
                assert!(message.len() + raw.len() <= data.len());
            }
            Ok(OutputEntry::State { value, .. }) => {
                assert!(value.map_or(0, <[u8]>::len) <= data.len());
            }
            Err(_) => break,
        }
        entries += 1;
        assert!(entries <= data.len());
    }
    if let Ok(batch) = BatchReader::new(data) {
        let _ = batch.slots();
        for record in batch.flatten() {
            assert!(record.value.len() <= data.len());
        }
    }
});
