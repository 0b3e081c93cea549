//! Logging from a UDF: `println!` goes nowhere inside a Wasm module, these lines go to flumen's
//! log, with the stage and partition that wrote them.
//!
//! ```
//! use flumen_sdk::log;
//!
//! let order_id = 7;
//! log::info!("order {order_id} looks odd");
//! log::warn!("stock of {} is low", "SKU-0001");
//! ```
//!
//! In a module, each line is a host call, counted against the call's time limit, and the host
//! keeps at most 50 lines a second per instance (200 at once; it says how many it dropped) and
//! 4 KiB of each. Natively (unit tests, `--backend native`), lines go to standard error.

use crate::abi::LogLevel;

/// Writes a line at `level`: what the macros expand to.
#[doc(hidden)]
pub fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    match args.as_str() {
        Some(text) => emit(level, text),
        None => emit(level, &args.to_string()),
    }
}

#[cfg(target_arch = "wasm32")]
fn emit(level: LogLevel, line: &str) {
    #[link(wasm_import_module = "flumen")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn host_log(level: u32, ptr: *const u8, len: usize);
    }
    // SAFETY: the pointer and length describe `line`, alive for the whole call; the host copies
    // the bytes before returning.
    unsafe { host_log(level as u32, line.as_ptr(), line.len()) }
}

#[cfg(not(target_arch = "wasm32"))]
fn emit(level: LogLevel, line: &str) {
    let level = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
    };
    eprintln!("{level} udf: {line}");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::log::write($crate::abi::LogLevel::Error, format_args!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::log::write($crate::abi::LogLevel::Warn, format_args!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::log::write($crate::abi::LogLevel::Info, format_args!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::log::write($crate::abi::LogLevel::Debug, format_args!($($arg)+)) };
}

/// A line that says something failed: `log::error!("…", …)`, as `format!` takes.
#[doc(inline)]
pub use crate::__log_error as error;

/// A line that says something looks wrong.
#[doc(inline)]
pub use crate::__log_warn as warn;

/// A line worth knowing.
#[doc(inline)]
pub use crate::__log_info as info;

/// A detail, shown with `FLUMEN_LOG=debug`.
#[doc(inline)]
pub use crate::__log_debug as debug;
