//! The machinery of the native exports; see [`abi::native`](crate::abi::native).

use super::GuestRunner;
use std::ffi::c_void;

thread_local! {
    static PANIC_MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A new runner, boxed, as an opaque pointer.
pub fn new<R: GuestRunner>() -> *mut c_void {
    Box::into_raw(Box::new(R::default())).cast()
}

/// Frees a runner made by [`new`].
///
/// # Safety
/// `runner` comes from `new::<R>()` and is not used again.
pub unsafe fn free<R: GuestRunner>(runner: *mut c_void) {
    if !runner.is_null() {
        // SAFETY: the caller passes a pointer from `Box::into_raw` of an `R`, once.
        drop(unsafe { Box::from_raw(runner.cast::<R>()) });
    }
}

/// Makes one call; a panic is caught and its message returned as the reply.
///
/// # Safety
/// `runner` comes from `new::<R>()`; `ptr`/`len` describe readable bytes; `out_ptr` and
/// `out_len` are writable. The reply stays valid until the next call on this runner.
pub unsafe fn call<R: GuestRunner>(
    runner: *mut c_void,
    call: u32,
    ptr: *const u8,
    len: usize,
    out_ptr: *mut *const u8,
    out_len: *mut usize,
) -> i32 {
    // SAFETY: as the caller promises, `runner` is a live `R` used by this thread only, and
    // `ptr`/`len` are readable.
    let (runner, request) = unsafe {
        (
            &mut *runner.cast::<R>(),
            std::slice::from_raw_parts(ptr, len),
        )
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reply = runner.native_call(call, request);
        (reply.as_ptr(), reply.len())
    }));
    let (code, (reply_ptr, reply_len)) = match outcome {
        Ok(reply) => (crate::abi::native::OK, reply),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            let reply = PANIC_MESSAGE.with_borrow_mut(|m| {
                *m = message;
                (m.as_ptr(), m.len())
            });
            (crate::abi::native::PANICKED, reply)
        }
    };
    // SAFETY: the caller passes writable pointers.
    unsafe {
        *out_ptr = reply_ptr;
        *out_len = reply_len;
    }
    code
}

/// Defines the native exports of a module (see [`abi::native`]) for runner type `$runner`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_native {
    ($runner:ty) => {
        // Not in a module of their own: a module could not name items local to a function
        // (as in doc tests).
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub extern "C" fn flumen_native_new() -> *mut ::std::ffi::c_void {
            $crate::guest::native::new::<$runner>()
        }

        /// # Safety
        /// See `flumen_sdk::guest::native::free`.
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn flumen_native_free(runner: *mut ::std::ffi::c_void) {
            // SAFETY: forwarded from the caller.
            unsafe { $crate::guest::native::free::<$runner>(runner) }
        }

        /// # Safety
        /// See `flumen_sdk::guest::native::call`.
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn flumen_native_call(
            runner: *mut ::std::ffi::c_void,
            call: u32,
            ptr: *const u8,
            len: usize,
            out_ptr: *mut *const u8,
            out_len: *mut usize,
        ) -> i32 {
            // SAFETY: forwarded from the caller.
            unsafe {
                $crate::guest::native::call::<$runner>(runner, call, ptr, len, out_ptr, out_len)
            }
        }
    };
}
