//! A module's `describe` and `init` replies: decoded within limits (no claimed length is
//! allocated), checked (ports, names, shapes), and shapes compared and rendered without
//! recursing for ever.
#![no_main]

use flumen_sdk::abi::{Describe, decode_control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_control::<Result<(), String>>(data);
    let Ok(describe) = decode_control::<Describe>(data) else {
        return;
    };
    if flumen::guest::check_describe(&describe).is_err() {
        return;
    }
    let shapes = [&describe.input_shape, &describe.output_shape];
    for shape in shapes.into_iter().flatten() {
        let _ = flumen::shape::render(shape, 0, 3);
        for other in shapes.into_iter().flatten() {
            let _ = flumen::shape::compare(shape, other);
        }
    }
});
