//! A test module: passes each probe on unchanged, unless its `action` asks it to fail in one of
//! the ways a real UDF can — return an error, panic, loop forever, allocate without bound, flood
//! its output. The
//! end-to-end tests use it to show that one bad record never takes the pipeline down.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub id: i64,
    pub action: String,
}

/// Without `deny_unknown_fields` on purpose: the SDK refuses unknown keys all the same.
#[derive(Debug, Default, Deserialize)]
pub struct Settings {
    /// Written into every probe that passes, to show typed parameters arrive.
    #[serde(default)]
    pub stamp: Option<String>,
}

#[flumen_sdk::map]
pub fn misbehave(probe: Probe, settings: &Settings) -> Result<Probe, String> {
    match probe.action.as_str() {
        "error" => Err(format!("refused probe {}", probe.id)),
        "panic" => panic!("probe {} asked to panic", probe.id),
        "loop" => {
            let mut n = probe.id as u64;
            loop {
                n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
            }
        }
        // An output far larger than its input (100 000 bytes).
        "flood" => Ok(Probe {
            action: "x".repeat(100_000),
            ..probe
        }),
        // Lines into flumen's log: one, or a thousand at once (past the rate limit).
        "log" => {
            flumen_sdk::log::info!("probe {} says hello", probe.id);
            Ok(probe)
        }
        "log_flood" => {
            for n in 0..1000 {
                flumen_sdk::log::warn!("probe {} line {n}", probe.id);
            }
            Ok(probe)
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        _ => Ok(Probe {
            action: settings.stamp.clone().unwrap_or(probe.action),
            ..probe
        }),
    }
}
