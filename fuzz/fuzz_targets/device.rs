//! Fuzz target `device`: a hostile driver's register and region accesses and DMA programming
//! against the emulated device through the uAPI layer (issue 14). Any panic, any DMA that
//! escapes the IOMMU, or anything left mapped after close is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = type1_modeltest::device::run_device_bytes(data) {
        panic!("{e}");
    }
});
