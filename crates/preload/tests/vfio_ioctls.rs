//! rust-vmm `vfio-ioctls` 0.10 (`default-features = false`), unmodified, against the emulated
//! `/dev/vfio`: `VfioContainer::new(None)` → `VfioDevice::new(sysfs path of 0000:00:05.0)` →
//! `vfio_dma_map` → `vfio_dma_unmap` → drop.
//!
//! A test without the libtest harness (`harness = false`): run normally it is the driver, which
//! re-executes this same binary as its own process with `LD_PRELOAD=libtype1_preload.so`
//! (the client role) and checks the client's exit status and the trace it left. The client
//! role must not run under the driver's own process: preloading a test harness would emulate
//! `/dev/vfio` for every test in it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

/// Environment variable that selects the client role, with the sysfs path to use.
const ROLE: &str = "TYPE1_VFIO_CLIENT_SYSFS";

/// One driver-side test: `Err` is the failure report.
type Test = fn() -> Result<(), String>;

const IOVA: u64 = 0x10_0000;
const LEN: usize = 16 << 12;

fn main() {
    if let Some(sysfs) = std::env::var_os(ROLE) {
        client(Path::new(&sysfs));
        return;
    }
    let mut failed = 0;
    let tests: [(&str, Test); 2] = [
        ("emulated_sysfs_path", emulated_sysfs_path),
        ("tempdir_iommu_group_link", tempdir_iommu_group_link),
    ];
    for (name, t) in tests {
        match t() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e}");
            }
        }
    }
    println!(
        "test result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        tests.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---- client role (runs preloaded) ---------------------------------------------------------

fn client(sysfs: &Path) {
    let container = Arc::new(VfioContainer::new(None).expect("VfioContainer::new"));
    let device = VfioDevice::new(sysfs, container.clone() as Arc<dyn VfioOps>, false)
        .expect("VfioDevice::new");
    // The emulated device answers like vfio-pci: config space through the region.
    let mut id = [0u8; 4];
    device.region_read(7, &mut id, 0);
    assert_eq!(id, [0x34, 0x12, 0xe8, 0x11], "vendor/device id");

    // SAFETY: a fresh private anonymous mapping of LEN bytes, owned by nothing else.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(buf, libc::MAP_FAILED, "mmap");
    // SAFETY: `buf` is used only through raw pointers and system calls while it is mapped
    // for DMA, and unmapped from the container before it is unmapped from the process.
    unsafe { container.vfio_dma_map(IOVA, LEN, buf.cast()) }.expect("vfio_dma_map");

    // The device DMAs its buffer into the mapping, driven through vfio-ioctls' own region
    // accessors (pread/pwrite at BAR0's offset; docs/device.md).
    use type1_uapi::device::*;
    // Bus mastering on first, as a driver does (COMMAND.BME in config space).
    let mut command = [0u8; 2];
    device.region_read(7, &mut command, PCI_COMMAND as u64);
    command[0] |= PCI_COMMAND_MASTER as u8;
    device.region_write(7, &command, PCI_COMMAND as u64);
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 5 + 1) as u8).collect();
    device.region_write(0, &pattern, BUFFER_OFFSET);
    device.region_write(0, &0u64.to_le_bytes(), REG_DMA_SRC);
    device.region_write(0, &(IOVA + 0x1000).to_le_bytes(), REG_DMA_DST);
    device.region_write(0, &256u64.to_le_bytes(), REG_DMA_LEN);
    let cmd = CMD_START | CMD_TO_MEMORY | CMD_NO_SNOOP;
    device.region_write(0, &cmd.to_le_bytes(), REG_CMD);
    let mut status = [0u8; 4];
    device.region_read(0, &mut status, REG_STATUS);
    assert_eq!(u32::from_le_bytes(status), STATUS_DONE, "DMA status");
    let mut got = vec![0u8; 256];
    // SAFETY: reads 256 bytes inside the LEN-byte mapping through a raw pointer, with no
    // transfer running (the device's DMA completed within the register write).
    unsafe { std::ptr::copy_nonoverlapping(buf.cast::<u8>().add(0x1000), got.as_mut_ptr(), 256) };
    assert_eq!(got, pattern, "memory holds the device's data");
    container.vfio_dma_unmap(IOVA, LEN).expect("vfio_dma_unmap");
    drop(device);
    drop(container);
    // SAFETY: `buf` was mapped above with length LEN and is no longer mapped for DMA.
    unsafe { libc::munmap(buf, LEN) };
    println!("vfio-ioctls client ok");
}

// ---- driver role ----------------------------------------------------------------------------

fn lib() -> Result<PathBuf, String> {
    type1_exec::find_library()
        .ok_or_else(|| "libtype1_preload.so not found next to the test binary".to_string())
}

fn tmpdir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
}

/// Runs the client role preloaded with `sysfs`; returns the trace.
fn run_client(sysfs: &Path, trace_name: &str) -> Result<String, String> {
    let trace = tmpdir().join(trace_name);
    let _ = std::fs::remove_file(&trace);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .env(ROLE, sysfs)
        .env("LD_PRELOAD", lib()?)
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .env("TYPE1_TRACE", &trace)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.contains("vfio-ioctls client ok") {
        return Err(format!("client failed ({}):\n{text}", out.status));
    }
    std::fs::read_to_string(&trace).map_err(|e| format!("trace: {e}"))
}

fn check_trace(trace: &str) -> Result<(), String> {
    let events: Vec<serde_json::Value> = trace
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad trace line: {e}\n{trace}"))?;
    let has = |pred: &dyn Fn(&serde_json::Value) -> bool| events.iter().any(pred);
    let checks: [(&str, bool); 7] = [
        (
            "a no-snoop device write into the mapping",
            has(&|v| {
                v["ev"] == "dma"
                    && v["dir"] == "write"
                    && v["snoop"] == false
                    && v["iova"] == IOVA + 0x1000
            }),
        ),
        (
            "group 1 attached to a non-coherent domain",
            has(&|v| v["ev"] == "attach" && v["group"] == 1 && v["coherent"] == false),
        ),
        (
            "flush reason map",
            has(&|v| v["ev"] == "flush" && v["reason"] == "map"),
        ),
        (
            "flush reason unpin",
            has(&|v| v["ev"] == "flush" && v["reason"] == "unpin"),
        ),
        (
            "16 pages mapped from the iova on",
            events
                .iter()
                .filter(|v| v["ev"] == "map" && v["iova"].as_u64().is_some_and(|i| i >= IOVA))
                .filter_map(|v| v["npages"].as_u64())
                .sum::<u64>()
                == (LEN as u64 >> 12),
        ),
        (
            "UNMAP_DMA succeeded",
            has(&|v| v["ev"] == "ret" && v["op"] == "IOMMU_UNMAP_DMA" && v["result"] == "0"),
        ),
        (
            "group 1 detached at drop",
            has(&|v| v["ev"] == "detach" && v["group"] == 1),
        ),
    ];
    let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    // vfio-pci answers EINVAL for the VGA region and the ERR IRQ of a conventional PCI
    // function; vfio-ioctls expects exactly that and carries on. Nothing else may fail.
    let errors: Vec<&serde_json::Value> = events
        .iter()
        .filter(|v| v["ev"] == "ret" && v["result"].as_str().is_some_and(|r| r.starts_with('E')))
        .filter(|v| {
            !(v["result"] == "EINVAL"
                && (v["op"] == "DEVICE_GET_REGION_INFO" || v["op"] == "DEVICE_GET_IRQ_INFO"))
        })
        .collect();
    if !failed.is_empty() || !errors.is_empty() {
        return Err(format!(
            "missing: {failed:?}; failed ops: {errors:?}\n{trace}"
        ));
    }
    Ok(())
}

fn emulated_sysfs_path() -> Result<(), String> {
    let trace = run_client(
        Path::new("/sys/bus/pci/devices/0000:00:05.0"),
        "vfio-ioctls.jsonl",
    )?;
    check_trace(&trace)
}

/// vfio-ioctls only reads `<sysfs>/iommu_group` and the basename: a directory of our own with
/// a real symlink works too.
fn tempdir_iommu_group_link() -> Result<(), String> {
    let dir = tmpdir().join("vfio-ioctls-sysfs/0000:00:05.0");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("../../../../kernel/iommu_groups/1", dir.join("iommu_group"))
        .map_err(|e| e.to_string())?;
    let trace = run_client(&dir, "vfio-ioctls-tmp.jsonl")?;
    check_trace(&trace)
}
