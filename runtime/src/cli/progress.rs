//! The progress line of a long bounded run on a terminal: records read, rate, how far through
//! the input and when it should end — redrawn in place on standard error, from the status the
//! executor publishes.

use flumen::telemetry::{SharedStatus, Status};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A run shorter than this shows no line.
const QUIET_FOR: Duration = Duration::from_secs(1);
/// How often the line is redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// Draws the progress line until `done` is set (then erases it), if standard error is a
/// terminal. Returns the drawing thread.
pub fn spawn(status: SharedStatus, done: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() || std::env::var_os("FLUMEN_NO_PROGRESS").is_some() {
        return None;
    }
    std::thread::Builder::new()
        .name("flumen-progress".into())
        .spawn(move || {
            let started = Instant::now();
            let mut first: Option<(Instant, u64, u64)> = None;
            let mut drawn = false;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(EVERY);
                if started.elapsed() < QUIET_FOR {
                    continue;
                }
                let Ok(snapshot) = status.lock().map(|s| s.clone()) else {
                    return;
                };
                let (read, left) = totals(&snapshot);
                let (at, read_then, left_then) = *first.get_or_insert((Instant::now(), read, left));
                let line = render(
                    read,
                    left,
                    at.elapsed(),
                    read - read_then,
                    left_then - left.min(left_then),
                );
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
                drawn = true;
            }
            if drawn {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            }
        })
        .ok()
}

/// Records read by every source, and how much input is left (in the sources' own units).
fn totals(status: &Status) -> (u64, u64) {
    let sources = status.stages.iter().filter(|s| s.kind == "source");
    let read = sources.clone().map(|s| s.records_in).sum();
    let left = sources.filter_map(|s| s.lag.map(|l| l.behind)).sum();
    (read, left)
}

/// `1.2 M records · 310 k/s · ETA 0:00:07`: `since` is the time since the first sample,
/// in which `read` records were read and `consumed` of the input's units.
fn render(total: u64, left: u64, since: Duration, read: u64, consumed: u64) -> String {
    let seconds = since.as_secs_f64().max(1e-3);
    let mut line = format!(
        "{} records · {}/s",
        human(total as f64),
        human(read as f64 / seconds)
    );
    if consumed > 0 && left > 0 {
        let eta = left as f64 / (consumed as f64 / seconds);
        let eta = eta.min(359_999.0) as u64;
        line.push_str(&format!(
            " · ETA {}:{:02}:{:02}",
            eta / 3600,
            eta / 60 % 60,
            eta % 60
        ));
    } else if left == 0 && total > 0 {
        line.push_str(" · finishing");
    }
    line
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1} G", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n if n >= 1e3 => format!("{:.1} k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_count_rate_and_eta() {
        let line = render(1_500_000, 600, Duration::from_secs(2), 1_000_000, 400);
        assert_eq!(line, "1.5 M records · 500.0 k/s · ETA 0:00:03");
        assert_eq!(
            render(10, 0, Duration::from_secs(1), 10, 5),
            "10 records · 10/s · finishing"
        );
    }
}
