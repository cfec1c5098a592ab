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

/// A variation of [`Seed`]: each knob changes one decision of the series. The review thread's
/// rejected simplifications and single-point ablations are variants, and so are the two
/// policies that go past the series (`seed-fixed`, `seed-ro`; see `docs/verification.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedVariant {
    /// Command-line name.
    pub name: &'static str,
    /// Keep the F3 map flush and the F4 replay flush.
    pub map_flush: bool,
    /// Keep the F5 unpin flush.
    pub unpin_flush: bool,
    /// Replay assigns `is_noncoherent = !domain.enforce_cache_coherency` (rejected in review).
    pub reset_on_replay: bool,
    /// MAP sets the flag only after success, so MAP unwinds unpin unflushed (the review concern).
    pub flag_after_map: bool,
    /// Skip the unpin flush of mappings without WRITE (no device could write them).
    pub skip_readonly_unpin: bool,
    /// See [`FlushPolicy::flush_rest_on_failed_replay`].
    pub flush_rest_on_failed_replay: bool,
}

impl SeedVariant {
    const SEED: SeedVariant = SeedVariant {
        name: "seed",
        map_flush: true,
        unpin_flush: true,
        reset_on_replay: false,
        flag_after_map: false,
        skip_readonly_unpin: false,
        flush_rest_on_failed_replay: false,
    };
}

/// The rejected simplification `is_noncoherent = !domain.enforce_cache_coherency` on replay
/// (F4): attaching a coherent domain later clears the flag.
pub const RESET_ON_REPLAY: SeedVariant = SeedVariant {
    name: "reset-on-replay",
    reset_on_replay: true,
    ..SeedVariant::SEED
};
/// The flag set only after a fully successful MAP.
pub const FLAG_AFTER_MAP: SeedVariant = SeedVariant {
    name: "flag-after-map",
    flag_after_map: true,
    ..SeedVariant::SEED
};
/// Seed without the unpin flush.
pub const MAP_ONLY: SeedVariant = SeedVariant {
    name: "map-only",
    unpin_flush: false,
    ..SeedVariant::SEED
};
/// Seed without the map and replay flushes.
pub const UNPIN_ONLY: SeedVariant = SeedVariant {
    name: "unpin-only",
    map_flush: false,
    ..SeedVariant::SEED
};
/// Beyond the series: seed with the failed-replay hole closed. `type1 check` finds the hole in
/// `seed` at depth 7; this policy holds there.
pub const SEED_FIXED: SeedVariant = SeedVariant {
    name: "seed-fixed",
    flush_rest_on_failed_replay: true,
    ..SeedVariant::SEED
};
/// Beyond the series: `seed-fixed` minus the unpin flush for mappings the device could only
/// read. The unpin flush defends against a device that wrote a page behind the cache (F0,
/// "after exposure"); through a mapping without WRITE the IOMMU lets no device write. The map
/// flush stays: a read-only device can still read stale RAM.
pub const SEED_RO: SeedVariant = SeedVariant {
    name: "seed-ro",
    skip_readonly_unpin: true,
    ..SEED_FIXED
};

impl FlushPolicy for SeedVariant {
    fn name(&self) -> &'static str {
        self.name
    }
    fn flag_before_map(&self, n: u32) -> bool {
        !self.flag_after_map && Seed.flag_before_map(n)
    }
    fn flag_after_map(&self, flag: bool, n: u32) -> bool {
        flag || (self.flag_after_map && n > 0)
    }
    fn flush_on_map(&self, flag: bool, n: u32) -> bool {
        self.map_flush && if self.flag_after_map { n > 0 } else { flag }
    }
    fn on_replay(&self, flag: bool, domain_coherent: bool) -> ReplayDecision {
        let d = if self.reset_on_replay {
            ReplayDecision {
                flag: !domain_coherent,
                flush: !domain_coherent && !flag,
            }
        } else {
            Seed.on_replay(flag, domain_coherent)
        };
        ReplayDecision {
            flush: d.flush && self.map_flush,
            ..d
        }
    }
    fn flush_on_unpin(&self, flag: bool, prot: Prot) -> bool {
        self.unpin_flush && flag && (prot.write || !self.skip_readonly_unpin)
    }
    fn flush_rest_on_failed_replay(&self) -> bool {
        self.flush_rest_on_failed_replay
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

/// Looks a policy up by name. Policies are stateless values: one static instance each.
pub fn policy_by_name(name: &str) -> Option<&'static dyn FlushPolicy> {
    static VARIANTS: [SeedVariant; 6] = [
        RESET_ON_REPLAY,
        FLAG_AFTER_MAP,
        MAP_ONLY,
        UNPIN_ONLY,
        SEED_FIXED,
        SEED_RO,
    ];
    Some(match name {
        "none" => &NoFlush,
        "seed" => &Seed,
        "eager" => &Eager,
        _ => VARIANTS.iter().find(|v| v.name == name)?,
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
        assert!(!RESET_ON_REPLAY.on_replay(true, true).flag);
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
    fn seed_variant_base_behaves_like_seed() {
        let base = SeedVariant::SEED;
        for flag in [false, true] {
            for coh in [false, true] {
                assert_eq!(base.on_replay(flag, coh), Seed.on_replay(flag, coh));
            }
            for n in [0, 1] {
                assert_eq!(base.flag_before_map(n), Seed.flag_before_map(n));
                assert_eq!(base.flush_on_map(flag, n), Seed.flush_on_map(flag, n));
            }
            assert_eq!(
                base.flush_on_unpin(flag, Prot::RO),
                Seed.flush_on_unpin(flag, Prot::RO)
            );
        }
    }

    #[test]
    fn seed_ro_skips_only_read_only_unpins() {
        assert!(SEED_RO.flush_on_unpin(true, Prot::RW));
        assert!(!SEED_RO.flush_on_unpin(true, Prot::RO));
        assert!(SEED_RO.flush_on_map(true, 1), "the map flush stays");
    }

    #[test]
    fn every_name_resolves() {
        for n in POLICY_NAMES {
            assert_eq!(policy_by_name(n).map(|p| p.name()), Some(*n));
        }
        assert!(policy_by_name("bogus").is_none());
    }
}
