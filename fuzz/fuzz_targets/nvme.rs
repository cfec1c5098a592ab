//! Fuzz target `nvme`: a hostile driver's commands, PRPs and register writes against the
//! emulated NVMe controller through the uAPI layer (issue 24). Any panic, or any DMA that
//! escapes the IOMMU, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = type1_modeltest::nvme::run_nvme_bytes(data) {
        panic!("{e}");
    }
});
