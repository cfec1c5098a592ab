//! The iommufd fill policies: where patch 5/5 as posted, its fixes and two diagnostics flush
//! (spec X3, X4).

/// Where the iommufd side of the series flushes (X3, X4).
///
/// Every flushing policy decides as 5/5 does, on the IOAS's count of non-coherent HWPTs
/// (`noncoherent_domain_cnt`): it is raised when a non-coherent HWPT is allocated, before its
/// domain is filled, and lowered when one is destroyed. A fill while it is above zero flushes
/// (or, with the skip, flushes unless the pages' bit is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FillPolicy {
    /// Upstream iommufd: never flushes.
    None,
    /// Patch 5/5 as posted: a fill sets the pages' sticky bit and flushes each batch, unless
    /// the bit was already set (then it skips the flush). Unpin flushes if the bit is set.
    /// When filling a new HWPT's domain fails, the count is lowered whatever the HWPT's
    /// coherency (5/5's `out_detach`).
    Seed,
    /// The minimal fix: 5/5 with the skip dropped (every fill while a non-coherent HWPT
    /// exists flushes, whatever the bit says; `docs/findings/0002-*.patch`) and the count
    /// lowered on a failed fill only for a non-coherent HWPT (`0003-*.patch`). Unpin flushes
    /// if the bit is set.
    SeedFixed,
    /// A diagnostic variant of `seed`, not a proposal: the bit is also cleared when the pages
    /// object loses its last pin, and the count is lowered on a failed fill only for a
    /// non-coherent HWPT. That closes `seed`'s two shortest holes (a re-pin after every domain
    /// left skips the flush; the count wraps) so that the checker can reach the longer one
    /// the skip leaves (a failed fill).
    SeedRepin,
    /// A diagnostic variant: 5/5 with only the skip dropped (0002 without 0003), to show that
    /// the count's unconditional decrement is a hole of its own.
    SeedNoskip,
}

impl FillPolicy {
    /// Every policy, in the order tables list them.
    pub const ALL: [FillPolicy; 5] = [
        FillPolicy::None,
        FillPolicy::Seed,
        FillPolicy::SeedRepin,
        FillPolicy::SeedNoskip,
        FillPolicy::SeedFixed,
    ];

    /// The policy of a command-line name (`none`, `seed`, `seed-repin`, `seed-noskip`,
    /// `seed-fixed`).
    pub fn from_name(name: &str) -> Option<FillPolicy> {
        FillPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            FillPolicy::None => "none",
            FillPolicy::Seed => "seed",
            FillPolicy::SeedFixed => "seed-fixed",
            FillPolicy::SeedRepin => "seed-repin",
            FillPolicy::SeedNoskip => "seed-noskip",
        }
    }

    /// Before a fill: `(set the sticky bit, flush each batch)`, given the bit and whether the
    /// IOAS has a non-coherent HWPT (its count is above zero).
    pub(super) fn on_fill(self, flagged: bool, noncoherent: bool) -> (bool, bool) {
        match self {
            FillPolicy::None => (false, false),
            FillPolicy::Seed | FillPolicy::SeedRepin => {
                (noncoherent && !flagged, noncoherent && !flagged)
            }
            FillPolicy::SeedFixed | FillPolicy::SeedNoskip => (noncoherent, noncoherent),
        }
    }

    /// Whether a failed fill of a new HWPT's domain lowers the count whatever the HWPT's
    /// coherency (5/5's `out_detach`), or only for a non-coherent one (the fix).
    pub(super) fn uncounts_any_failed_hwpt(self) -> bool {
        matches!(self, FillPolicy::Seed | FillPolicy::SeedNoskip)
    }

    pub(super) fn flush_on_unpin(self, flagged: bool) -> bool {
        self != FillPolicy::None && flagged
    }
}
