//! The native backend: the same UDF crates built for the host as shared libraries and driven
//! through the same runtime path as their Wasm modules (see `flumen_sdk::abi::native`). It is the
//! limit the sandbox is measured against, and a way to debug a UDF with native tools. It has no
//! sandbox: no memory cap, no deadline, and a UDF that aborts takes the process down; a panic is
//! caught and reported like a trap.

use super::failure::{GuestFailure, panic_failure};
use flumen_sdk::abi::native as codes;
use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;

type NewFn = unsafe extern "C" fn() -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CallFn =
    unsafe extern "C" fn(*mut c_void, u32, *const u8, usize, *mut *const u8, *mut usize) -> i32;

/// A loaded native module.
pub(crate) struct NativeLibrary {
    new: NewFn,
    free: FreeFn,
    call: CallFn,
    // Declared last: dropped after the function pointers above, which point into it.
    _library: libloading::Library,
}

impl NativeLibrary {
    pub(crate) fn load(path: &Path) -> Result<Arc<Self>, String> {
        // SAFETY: loading a library runs its initialisers; a flumen native module is a Rust
        // cdylib built from a UDF crate, whose initialisers are Rust's own.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        // SAFETY: the symbols are the functions `flumen_sdk::__export_native!` defines, with
        // exactly these signatures; the pointers are used only while `library` is alive.
        let (new, free, call) = unsafe {
            let new = *library
                .get::<NewFn>(b"flumen_native_new")
                .map_err(|e| format!("not a flumen native module: {e}"))?;
            let free = *library
                .get::<FreeFn>(b"flumen_native_free")
                .map_err(|e| format!("not a flumen native module: {e}"))?;
            let call = *library
                .get::<CallFn>(b"flumen_native_call")
                .map_err(|e| format!("not a flumen native module: {e}"))?;
            (new, free, call)
        };
        Ok(Arc::new(NativeLibrary {
            new,
            free,
            call,
            _library: library,
        }))
    }
}

/// One runner of a native module: the native counterpart of a Wasm instance.
pub(crate) struct NativeGuest {
    library: Arc<NativeLibrary>,
    runner: *mut c_void,
    request: Vec<u8>,
}

// SAFETY: a runner is a plain Rust value owned by this guest and used by one thread at a time
// (every use goes through `&mut self`).
unsafe impl Send for NativeGuest {}

impl NativeGuest {
    pub(crate) fn new(library: Arc<NativeLibrary>) -> Self {
        // SAFETY: `new` is `flumen_native_new`, which takes nothing and returns a fresh runner.
        let runner = unsafe { (library.new)() };
        NativeGuest {
            library,
            runner,
            request: Vec::new(),
        }
    }

    /// Makes call `code` with the concatenation of `parts` as request.
    pub(crate) fn call(&mut self, code: u32, parts: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.request.clear();
        for part in parts {
            self.request.extend_from_slice(part);
        }
        let (mut ptr, mut len) = (std::ptr::null(), 0usize);
        // SAFETY: `runner` came from this library's `flumen_native_new` and is alive; the
        // request is readable for its length; the out-pointers are valid locals.
        let status = unsafe {
            (self.library.call)(
                self.runner,
                code,
                self.request.as_ptr(),
                self.request.len(),
                &mut ptr,
                &mut len,
            )
        };
        let reply: &[u8] = if ptr.is_null() {
            &[]
        } else {
            // SAFETY: the module returns a buffer it owns, valid until the next call on this
            // runner, which needs `&mut self`; the reply's lifetime is tied to `&self`.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        };
        match status {
            codes::OK => Ok(reply),
            _ => Err(GuestFailure(panic_failure(&String::from_utf8_lossy(reply)))),
        }
    }
}

impl Drop for NativeGuest {
    fn drop(&mut self) {
        // SAFETY: `runner` came from this library's `flumen_native_new` and is freed once.
        unsafe { (self.library.free)(self.runner) }
    }
}
