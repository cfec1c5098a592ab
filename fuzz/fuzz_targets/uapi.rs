//! Fuzz target `uapi`: arbitrary ioctl sequences and argument bytes against the
//! `linux/vfio.h` layer. Any panic, or anything left mapped after close, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = type1_modeltest::uapi::run_uapi_bytes(data) {
        panic!("{e}");
    }
});
