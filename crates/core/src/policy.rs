//! Cache-flush policies: where the engine flushes CPU caches for non-coherent DMA.
//!
//! The engine calls a [`FlushPolicy`] at the three flush points of the series (F3 map, F4
//! replay, F5 unpin) and for the per-pfn cacheability decision (F9). [`Seed`] is the
//! post-review design of Yan Zhao's series; [`NoFlush`] is upstream type1 today. The other
//! policies are deliberate variations (the review thread's rejected simplifications and
//! single-point ablations) that the model checker is expected to refute or confirm.

use crate::{MemType, Prot};

/// What to do with a mapping when a new domain is replayed into (F4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayDecision {
    /// The mapping's `is_noncoherent` flag after this decision.
    pub flag: bool,
    /// Whether every chunk is flushed before it is mapped into the new domain.
    pub flush: bool,
}

/// A flush policy. Every method is pure: the engine owns the state.
pub trait FlushPolicy: std::fmt::Debug + Send + Sync {
    /// The name used on the command line (`seed`, `none`, ...).
    fn name(&self) -> &'static str;

    /// F3: the `is_noncoherent` value a new mapping gets before its pages are pinned, given the
    /// number of linked non-coherent domains.
    fn flag_before_map(&self, noncoherent_domains: u32) -> bool;

    /// F3: the flag a mapping gets after a fully successful MAP (by default unchanged).
    fn flag_after_map(&self, flag: bool, _noncoherent_domains: u32) -> bool {
        flag
    }

    /// F3: whether a freshly pinned chunk is flushed before its first IOMMU map.
    fn flush_on_map(&self, flag: bool, noncoherent_domains: u32) -> bool;

    /// F4: decision for one mapping when a domain whose coherency is `domain_coherent` is
    /// replayed into; `flag` is the mapping's current flag.
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision;

    /// F5: whether a run of remote pins of a mapping with protection `prot` is flushed right
    /// before it is unpinned.
    fn flush_on_unpin(&self, flag: bool, prot: Prot) -> bool;

    /// Beyond the series: when a replay that flushed a previously mapped mapping fails part-way,
    /// also flush the mapping's chunks it never reached. The series does not (so its sticky flag
    /// can cover pages that were never flushed; `docs/verification.md`).
    fn flush_rest_on_failed_replay(&self) -> bool {
        false
    }

    /// F9: whether a pfn is flushed at all: normal pages always, reserved ones by memory type.
    fn flush_pfn(&self, reserved: bool, memtype: MemType) -> bool {
        !reserved || memtype.is_cacheable()
    }
}

/// Upstream type1: never flushes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFlush;

impl FlushPolicy for NoFlush {
    fn name(&self) -> &'static str {
        "none"
    }
    fn flag_before_map(&self, _: u32) -> bool {
        false
    }
    fn flush_on_map(&self, _: bool, _: u32) -> bool {
        false
    }
    fn on_replay(&self, flag: bool, _: bool) -> ReplayDecision {
        ReplayDecision { flag, flush: false }
    }
    fn flush_on_unpin(&self, _: bool, _: Prot) -> bool {
        false
    }
}

/// The series as revised in review (F1 to F9): sticky flag, flush before the first mapping into
/// a non-coherent domain, flush before every unpin of a flagged mapping, UC/WC skipped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seed;

impl FlushPolicy for Seed {
    fn name(&self) -> &'static str {
        "seed"
    }
    fn flag_before_map(&self, noncoherent_domains: u32) -> bool {
        // F3: plain assignment, the mapping is new.
        noncoherent_domains > 0
    }
    fn flush_on_map(&self, flag: bool, _: u32) -> bool {
        flag
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        // F4: set_noncoherent = !enforce && !is_noncoherent; the flag is sticky.
        let set_noncoherent = !domain_coherent && !flag;
        ReplayDecision {
            flag: flag || set_noncoherent,
            flush: set_noncoherent,
        }
    }
    fn flush_on_unpin(&self, flag: bool, _: Prot) -> bool {
        flag
    }
}

/// Flush at every map into any domain and before every unpin: sound, and the most expensive.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

impl FlushPolicy for Eager {
    fn name(&self) -> &'static str {
        "eager"
    }
    fn flag_before_map(&self, _: u32) -> bool {
        true
    }
    fn flush_on_map(&self, _: bool, _: u32) -> bool {
        true
    }
    fn on_replay(&self, _: bool, _: bool) -> ReplayDecision {
        ReplayDecision {
            flag: true,
            flush: true,
        }
    }
    fn flush_on_unpin(&self, _: bool, _: Prot) -> bool {
        true
    }
}

/// The rejected simplification `is_noncoherent = !domain.enforce_cache_coherency` on replay
/// (F4): attaching a coherent domain later clears the flag.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetOnReplay;

impl FlushPolicy for ResetOnReplay {
    fn name(&self) -> &'static str {
        "reset-on-replay"
    }
    fn flag_before_map(&self, n: u32) -> bool {
        n > 0
    }
    fn flush_on_map(&self, flag: bool, _: u32) -> bool {
        flag
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        ReplayDecision {
            flag: !domain_coherent,
            flush: !domain_coherent && !flag,
        }
    }
    fn flush_on_unpin(&self, flag: bool, _: Prot) -> bool {
        flag
    }
}

/// The flag is set only after a fully successful MAP, so a MAP unwind unpins without a flush.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlagAfterMap;

impl FlushPolicy for FlagAfterMap {
    fn name(&self) -> &'static str {
        "flag-after-map"
    }
    fn flag_before_map(&self, _: u32) -> bool {
        false
    }
    fn flag_after_map(&self, flag: bool, n: u32) -> bool {
        flag || n > 0
    }
    fn flush_on_map(&self, _: bool, n: u32) -> bool {
        n > 0
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        Seed.on_replay(flag, domain_coherent)
    }
    fn flush_on_unpin(&self, flag: bool, _: Prot) -> bool {
        flag
    }
}

/// Seed without the unpin flush (F5 dropped).
#[derive(Clone, Copy, Debug, Default)]
pub struct MapOnly;

impl FlushPolicy for MapOnly {
    fn name(&self) -> &'static str {
        "map-only"
    }
    fn flag_before_map(&self, n: u32) -> bool {
        n > 0
    }
    fn flush_on_map(&self, flag: bool, _: u32) -> bool {
        flag
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        Seed.on_replay(flag, domain_coherent)
    }
    fn flush_on_unpin(&self, _: bool, _: Prot) -> bool {
        false
    }
}

/// Seed without the map and replay flushes (F3 and F4 dropped).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnpinOnly;

impl FlushPolicy for UnpinOnly {
    fn name(&self) -> &'static str {
        "unpin-only"
    }
    fn flag_before_map(&self, n: u32) -> bool {
        n > 0
    }
    fn flush_on_map(&self, _: bool, _: u32) -> bool {
        false
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        ReplayDecision {
            flush: false,
            ..Seed.on_replay(flag, domain_coherent)
        }
    }
    fn flush_on_unpin(&self, flag: bool, _: Prot) -> bool {
        flag
    }
}

/// Beyond the series: seed with the failed-replay hole closed (see
/// [`FlushPolicy::flush_rest_on_failed_replay`]). `type1 check` finds the hole in `seed` at
/// depth 7; this policy holds there.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedFixed;

impl FlushPolicy for SeedFixed {
    fn name(&self) -> &'static str {
        "seed-fixed"
    }
    fn flag_before_map(&self, n: u32) -> bool {
        Seed.flag_before_map(n)
    }
    fn flush_on_map(&self, flag: bool, n: u32) -> bool {
        Seed.flush_on_map(flag, n)
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        Seed.on_replay(flag, domain_coherent)
    }
    fn flush_on_unpin(&self, flag: bool, _: Prot) -> bool {
        flag
    }
    fn flush_rest_on_failed_replay(&self) -> bool {
        true
    }
}

/// Beyond the series: `seed-fixed`, minus the unpin flush for mappings the device could only
/// read.
///
/// The unpin flush exists because a device that wrote a page with no-snoop DMA may have left
/// cache lines that disagree with RAM (F0, "after exposure"). Through a mapping without
/// `WRITE` the IOMMU lets no device write, so the CPU's lines stay the newest copy and need no
/// maintenance before the page returns to the allocator. The map flush stays: a read-only
/// device can still read stale RAM. Soundness argument: `docs/verification.md`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedReadOnlySkip;

impl FlushPolicy for SeedReadOnlySkip {
    fn name(&self) -> &'static str {
        "seed-ro"
    }
    fn flag_before_map(&self, n: u32) -> bool {
        Seed.flag_before_map(n)
    }
    fn flush_on_map(&self, flag: bool, n: u32) -> bool {
        Seed.flush_on_map(flag, n)
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        Seed.on_replay(flag, domain_coherent)
    }
    fn flush_on_unpin(&self, flag: bool, prot: Prot) -> bool {
        flag && prot.write
    }
    fn flush_rest_on_failed_replay(&self) -> bool {
        true
    }
}

/// Names of every shipped policy, in the order `type1 check` reports them.
pub const POLICY_NAMES: &[&str] = &[
    "none",
    "seed",
    "eager",
    "reset-on-replay",
    "flag-after-map",
    "map-only",
    "unpin-only",
    "seed-fixed",
    "seed-ro",
];

/// Looks a policy up by name.
pub fn policy_by_name(name: &str) -> Option<Box<dyn FlushPolicy>> {
    Some(match name {
        "none" => Box::new(NoFlush),
        "seed" => Box::new(Seed),
        "eager" => Box::new(Eager),
        "reset-on-replay" => Box::new(ResetOnReplay),
        "flag-after-map" => Box::new(FlagAfterMap),
        "map-only" => Box::new(MapOnly),
        "unpin-only" => Box::new(UnpinOnly),
        "seed-fixed" => Box::new(SeedFixed),
        "seed-ro" => Box::new(SeedReadOnlySkip),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_replay_flag_is_sticky_across_coherent_domain() {
        // F4: a coherent domain never clears the flag.
        let d = Seed.on_replay(true, true);
        assert_eq!(
            d,
            ReplayDecision {
                flag: true,
                flush: false
            }
        );
    }

    #[test]
    fn seed_replay_flushes_only_on_first_noncoherent_exposure() {
        assert_eq!(
            Seed.on_replay(false, false),
            ReplayDecision {
                flag: true,
                flush: true
            }
        );
        assert_eq!(
            Seed.on_replay(true, false),
            ReplayDecision {
                flag: true,
                flush: false
            }
        );
    }

    #[test]
    fn reset_on_replay_clears_flag_on_coherent_domain() {
        assert!(!ResetOnReplay.on_replay(true, true).flag);
    }

    #[test]
    fn classifier_skips_uc_and_wc_only() {
        // F9 as corrected by Kevin Tian: WT and WP are cacheable.
        for (mt, flushed) in [
            (MemType::Wb, true),
            (MemType::Wt, true),
            (MemType::Wp, true),
            (MemType::Uc, false),
            (MemType::Wc, false),
        ] {
            assert_eq!(Seed.flush_pfn(true, mt), flushed, "{mt:?}");
        }
        assert!(
            Seed.flush_pfn(false, MemType::Uc),
            "normal pages are always flushed"
        );
    }

    #[test]
    fn every_name_resolves() {
        for n in POLICY_NAMES {
            assert_eq!(policy_by_name(n).map(|p| p.name()), Some(*n));
        }
        assert!(policy_by_name("bogus").is_none());
    }
}
