//! A pipeline file and its environment: any text, any variable values. Parsing ends with a
//! config or errors, never a panic; an interpolated value never adds a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The first line is the value of every variable; the rest is the file.
    let text = String::from_utf8_lossy(data);
    let (value, file) = text.split_once('\n').unwrap_or(("", &text));
    let env = |_: &str| Some(value.to_string());
    let _ = flumen::config::parse_lenient(Path::new("fuzz.toml"), file, &env);
});
