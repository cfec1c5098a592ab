//! Fault injection at named points, for failure-path sweeps.
//!
//! Fallible platform operations pass through named points; arming a point makes its nth call
//! (counted from the arming) fail once, with the errno the real operation would return. Release
//! operations never fail. A typical sweep runs a scenario once, reads
//! [`crate::Sim::fallible_calls`], then reruns it with `fail_nth_any(n)` for every `n` up to that
//! count and checks for leaks.
//!
//! The same counters place accesses *inside* an operation: a device DMA or another thread's
//! load or store armed to run right after the nth call of a platform point (pin, flush,
//! iommu_map, ...), which is how `type1 check --dma-inside` explores what hardware may do while
//! the kernel holds `iommu->lock`.

use std::collections::BTreeMap;

use type1_core::{DeviceId, Errno, Event, MmId, PlatformError};

use crate::{perr, Sim};

/// The fault points: the fallible platform calls, each failing with the errno the real call
/// would return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultPoint {
    /// `pin_user_pages` fails with ENOMEM.
    Pin,
    /// `pin_user_pages` fails with EFAULT (the page-walk step).
    Translate,
    /// `iommu_map` fails with ENOMEM.
    IommuMap,
    /// A positive `account` fails with ENOMEM.
    Account,
    /// `domain_alloc` fails with ENOMEM.
    DomainAlloc,
    /// `attach_group` fails with ENODEV.
    Attach,
}

/// Every fault point, in the order `type1 run --sweep` reports them.
pub const FAULT_POINTS: [FaultPoint; 6] = [
    FaultPoint::Pin,
    FaultPoint::Translate,
    FaultPoint::IommuMap,
    FaultPoint::Account,
    FaultPoint::DomainAlloc,
    FaultPoint::Attach,
];

impl FaultPoint {
    /// Its name in scenarios and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::Pin => "pin",
            FaultPoint::Translate => "translate",
            FaultPoint::IommuMap => "iommu_map",
            FaultPoint::Account => "account",
            FaultPoint::DomainAlloc => "domain_alloc",
            FaultPoint::Attach => "attach",
        }
    }

    fn errno(self) -> Errno {
        match self {
            FaultPoint::Translate => Errno::EFAULT,
            FaultPoint::Attach => Errno::ENODEV,
            _ => Errno::ENOMEM,
        }
    }
}

impl std::fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FaultPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&FAULT_POINTS, Self::as_str, s, "fault point")
    }
}

/// The member of `all` named `s`, or an error naming the known ones.
fn by_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
    what: &str,
) -> Result<T, String> {
    all.iter().copied().find(|p| name(*p) == s).ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|p| name(*p)).collect();
        format!("unknown {what} {s:?} (known: {})", known.join(", "))
    })
}

/// Points after which an access can be armed ([`Sim::access_after`]): every platform call that
/// changes the machine, so that a device or another CPU thread can act between any two of
/// them, as they do on real hardware while the kernel holds `iommu->lock`. A call that fails
/// changes nothing and is not a point. [`AccessPoint::Any`] counts the calls of every other
/// point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessPoint {
    /// A successful `pin_user_pages`.
    Pin,
    /// `flush_cache`.
    Flush,
    /// A successful `iommu_map`.
    IommuMap,
    /// `iommu_unmap`.
    IommuUnmap,
    /// `unpin_page`.
    Unpin,
    /// A successful `account`.
    Account,
    /// A successful `domain_alloc`.
    DomainAlloc,
    /// `domain_free`.
    DomainFree,
    /// A successful `attach_group`.
    Attach,
    /// `detach_group`.
    Detach,
    /// `iotlb_sync`.
    IotlbSync,
    /// Any of the above.
    Any,
}

/// Every access point, `any` last.
pub const ACCESS_POINTS: [AccessPoint; 12] = [
    AccessPoint::Pin,
    AccessPoint::Flush,
    AccessPoint::IommuMap,
    AccessPoint::IommuUnmap,
    AccessPoint::Unpin,
    AccessPoint::Account,
    AccessPoint::DomainAlloc,
    AccessPoint::DomainFree,
    AccessPoint::Attach,
    AccessPoint::Detach,
    AccessPoint::IotlbSync,
    AccessPoint::Any,
];

impl AccessPoint {
    /// Its name in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessPoint::Pin => "pin",
            AccessPoint::Flush => "flush",
            AccessPoint::IommuMap => "iommu_map",
            AccessPoint::IommuUnmap => "iommu_unmap",
            AccessPoint::Unpin => "unpin",
            AccessPoint::Account => "account",
            AccessPoint::DomainAlloc => "domain_alloc",
            AccessPoint::DomainFree => "domain_free",
            AccessPoint::Attach => "attach",
            AccessPoint::Detach => "detach",
            AccessPoint::IotlbSync => "iotlb_sync",
            AccessPoint::Any => "any",
        }
    }
}

impl std::fmt::Display for AccessPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccessPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&ACCESS_POINTS, Self::as_str, s, "point")
    }
}

/// An access that runs in the middle of an operation ([`Sim::access_after`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A no-snoop DMA by a device: it reads, or writes the byte of `write`.
    Dma {
        /// Device name.
        device: String,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        len: usize,
        /// Device to memory: the byte written.
        write: Option<u8>,
    },
    /// A load (also what a speculative prefetch does) or a store of bytes by another thread of
    /// the address space `mm`.
    Cpu {
        /// Address space.
        mm: MmId,
        /// First virtual address.
        vaddr: u64,
        /// Bytes.
        len: usize,
        /// A store of this byte rather than a load.
        write: Option<u8>,
    },
}

/// An access waiting for the `left`th call of `point` to end.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Armed {
    point: AccessPoint,
    left: u64,
    access: Access,
}

/// Armed faults and call counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    /// Accesses to run right after platform calls (see [`ACCESS_POINTS`]), in arming order.
    inside: Vec<Armed>,
    /// Calls of the access points so far (not state: a counter, like `calls`).
    point_calls: u64,
    /// Device -> `dma_unmap` notifications it will still ignore (U5's retry path).
    refuse_unpin: BTreeMap<DeviceId, u32>,
    /// Point -> calls left until the failing one (1 = the next call fails).
    armed: BTreeMap<FaultPoint, u64>,
    any: Option<u64>,
    calls: u64,
    calls_by_point: BTreeMap<FaultPoint, u64>,
    injected: u64,
    last: Option<(FaultPoint, Errno)>,
}

impl Faults {
    /// The armed faults and accesses, for state digests.
    #[allow(clippy::type_complexity)]
    pub(crate) fn armed_digest(
        &self,
    ) -> (
        Vec<(FaultPoint, u64)>,
        Option<u64>,
        Vec<Armed>,
        &BTreeMap<DeviceId, u32>,
    ) {
        (
            self.armed.iter().map(|(k, v)| (*k, *v)).collect(),
            self.any,
            self.inside.clone(),
            &self.refuse_unpin,
        )
    }

    /// Whether `device` ignores this `dma_unmap` notification (counting it down).
    pub(crate) fn refuses_unpin(&mut self, device: DeviceId) -> bool {
        match self.refuse_unpin.get_mut(&device) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn hit(&mut self, point: FaultPoint) -> bool {
        self.calls += 1;
        *self.calls_by_point.entry(point).or_insert(0) += 1;
        let mut fail = false;
        if let Some(n) = self.armed.get_mut(&point) {
            *n -= 1;
            if *n == 0 {
                self.armed.remove(&point);
                fail = true;
            }
        }
        if let Some(n) = self.any.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.any = None;
                fail = true;
            }
        }
        if fail {
            self.injected += 1;
        }
        fail
    }
}

impl Sim {
    /// Arms `point` so that its `n`th call from now (1-based) fails, once.
    pub fn fail_nth(&mut self, point: FaultPoint, n: u64) -> Result<(), String> {
        if n == 0 {
            return Err(format!(
                "fault point {point}: n = 0, calls are counted from 1"
            ));
        }
        self.faults.armed.insert(point, n);
        Ok(())
    }

    /// Makes the `n`th call (1-based, from now) of any fault point fail, once. `n = 0` disarms.
    pub fn fail_nth_any(&mut self, n: u64) {
        self.faults.any = (n > 0).then_some(n);
    }

    /// Whether a failure is armed (`fail_nth`, `fail_nth_any`).
    pub fn failures_armed(&self) -> bool {
        !self.faults.armed.is_empty() || self.faults.any.is_some()
    }

    /// Disarms the armed failures (`fail_nth`, `fail_nth_any`), not the armed accesses.
    pub fn disarm_failures(&mut self) {
        self.faults.armed.clear();
        self.faults.any = None;
    }

    /// Disarms every fault and armed access.
    pub fn clear_faults(&mut self) {
        self.faults.armed.clear();
        self.faults.any = None;
        self.faults.inside.clear();
        self.faults.refuse_unpin.clear();
    }

    /// Arms `access` to run right after the `n`th call (1-based, from now) of `point` returns:
    /// in the middle of whatever operation makes that call. Several accesses may be armed;
    /// those due after the same call run in the order they were armed.
    pub fn access_after(
        &mut self,
        point: AccessPoint,
        n: u64,
        access: Access,
    ) -> Result<(), String> {
        if n == 0 {
            return Err(format!("point {point}: n = 0, calls are counted from 1"));
        }
        self.faults.inside.push(Armed {
            point,
            left: n,
            access,
        });
        Ok(())
    }

    /// Makes the emulated `device` ignore its next `n` `dma_unmap` notifications: it answers
    /// without unpinning anything, as a broken vendor driver would (U5: the engine notifies
    /// again, and gives up with EBUSY after 10 restarts on the same mapping). 0 disarms.
    pub fn refuse_unpin(&mut self, device: DeviceId, n: u32) {
        self.faults.refuse_unpin.insert(device, n);
    }

    /// Disarms the accesses that have not run yet (faults stay armed).
    pub fn clear_accesses(&mut self) {
        self.faults.inside.clear();
    }

    /// How many armed accesses have not run yet.
    pub fn accesses_armed(&self) -> usize {
        self.faults.inside.len()
    }

    /// A platform call of `point` returned: runs the accesses armed for this call.
    pub(crate) fn after(&mut self, point: AccessPoint) {
        self.faults.point_calls += 1;
        if self.faults.inside.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.faults.inside.retain_mut(|a| {
            if a.point != point && a.point != AccessPoint::Any {
                return true;
            }
            a.left -= 1;
            if a.left == 0 {
                due.push(a.access.clone());
                return false;
            }
            true
        });
        for access in due {
            // Faults, stale reads and incoherence are recorded by the accesses themselves; an
            // access that cannot reach its target (no IOMMU entry, no page) does nothing.
            match access {
                Access::Dma {
                    device,
                    iova,
                    len,
                    write: Some(byte),
                } => {
                    let _ = self.dma_write(&device, iova, &vec![byte; len], true);
                }
                Access::Dma {
                    device, iova, len, ..
                } => {
                    let _ = self.dma_read(&device, iova, len, true);
                }
                Access::Cpu {
                    mm,
                    vaddr,
                    len,
                    write: Some(byte),
                } => {
                    let _ = self.cpu_write(mm, vaddr, &vec![byte; len]);
                }
                Access::Cpu { mm, vaddr, len, .. } => {
                    let _ = self.cpu_read(mm, vaddr, &mut vec![0; len]);
                }
            }
        }
    }

    /// Calls of the access points ([`ACCESS_POINTS`]) since the machine was built: an
    /// operation that made k of them has k places where an access can happen inside it.
    pub fn access_point_calls(&self) -> u64 {
        self.faults.point_calls
    }

    /// Calls of any fault point since the machine was built.
    pub fn fallible_calls(&self) -> u64 {
        self.faults.calls
    }

    /// Calls of one fault point since the machine was built.
    pub fn fallible_calls_of(&self, point: FaultPoint) -> u64 {
        self.faults.calls_by_point.get(&point).copied().unwrap_or(0)
    }

    /// The point and errno of the last injected fault.
    pub fn last_injected(&self) -> Option<(FaultPoint, Errno)> {
        self.faults.last
    }

    /// Number of faults injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.faults.injected
    }

    /// Passes fault point `point`: fails (and traces a `fault` event) if it is armed to.
    pub(crate) fn inject(&mut self, point: FaultPoint) -> Result<(), PlatformError> {
        if !self.faults.hit(point) {
            return Ok(());
        }
        let errno = point.errno();
        self.faults.last = Some((point, errno));
        let detail = format!("injected {errno} at fault point {point}");
        self.record(Event::Fault {
            source: point.as_str().into(),
            detail: detail.clone(),
        });
        Err(perr(errno, detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::{GroupId, Iommu, TaskMemory};

    #[test]
    fn nth_call_fails_exactly_once() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let bogus = "bogus".parse::<FaultPoint>().unwrap_err();
        assert!(
            bogus.contains("bogus") && bogus.contains("domain_alloc"),
            "{bogus}"
        );
        assert!(
            s.fail_nth(FaultPoint::Pin, 0).is_err(),
            "calls count from 1"
        );
        s.fail_nth(FaultPoint::DomainAlloc, 2).unwrap();
        assert!(s.domain_alloc(GroupId(0)).is_ok());
        assert_eq!(s.domain_alloc(GroupId(0)).unwrap_err().errno, Errno::ENOMEM);
        assert!(s.domain_alloc(GroupId(0)).is_ok());
        assert!(s.domain_alloc(GroupId(0)).is_ok());
        assert_eq!(s.faults_injected(), 1);
        assert_eq!(s.fallible_calls_of(FaultPoint::DomainAlloc), 4);
        let faults: Vec<_> = s
            .events()
            .iter()
            .filter(|(_, e)| matches!(e, Event::Fault { .. }))
            .collect();
        assert_eq!(faults.len(), 1);

        let mm = s.create_process("p");
        s.mmap_anon(mm, 0x1000, 0x1000, true).unwrap();
        let before = s.fallible_calls();
        s.fail_nth_any(3);
        assert!(s
            .pin_user_pages(mm, type1_core::Vaddr(0x1000), 1, true)
            .is_ok()); // pin, translate
        assert_eq!(
            s.pin_user_pages(mm, type1_core::Vaddr(0x1000), 1, true)
                .unwrap_err()
                .errno,
            Errno::ENOMEM
        );
        assert!(s
            .pin_user_pages(mm, type1_core::Vaddr(0x1000), 1, true)
            .is_ok());
        assert_eq!(s.fallible_calls() - before, 5);
        assert_eq!(
            s.frame_pins(s.translate(mm, 0x1000).unwrap().0),
            2,
            "failed pin left nothing"
        );
    }
}
