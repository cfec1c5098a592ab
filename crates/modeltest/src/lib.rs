//! # type1-modeltest: model-based tests and the fuzzing harness of the type1 engine
//!
//! Two ways of driving the real engine ([`type1_core`]) on the simulated machine
//! ([`type1_sim`]) through a [`type1_scenario::World`], complementing the bounded exhaustive
//! search of `type1-check`:
//!
//! * **Model-based tests** (`tests/model.rs`, run by `cargo test -p type1-modeltest`): a
//!   `proptest-state-machine` reference model tracks, per IOVA page, whether it is mapped, by
//!   which mapping and with which protection, and per mapping its flag `is_noncoherent` as the
//!   `seed` policy defines it. Random operation sequences (attach/detach of each group of the
//!   default machine, MAP/UNMAP in their v1 and v2 forms, UNMAP_ALL, VADDR invalidation and
//!   re-validation, external pins through `mdev0`, dirty tracking, CPU accesses, snoop and
//!   no-snoop DMA, container close) run against both the model and the engine; after every step
//!   the errno, the mappings, the pinned frames, `locked_vm` and the simulator's invariant
//!   checker must agree with the model.
//! * **uAPI fuzzing** ([`uapi`]): arbitrary ioctl sequences and argument bytes against
//!   `type1-uapi`; target `uapi` in `fuzz/`, replayed by `tests/fuzz_corpus.rs`.
//! * **Device fuzzing** ([`device`], [`nvme`]): a hostile driver against the DMA engine and
//!   against the NVMe controller (commands, PRPs, registers); targets `device` and `nvme`.
//! * **Fuzzing** (`fuzz/`, its own cargo workspace for `cargo fuzz`): the target `ops` turns its
//!   input into a sequence of [`type1_check::Action`]s with [`decode`] and runs them with
//!   [`run_actions`], which reports any violation of the simulator's checker (including leaks
//!   found when the container is finally closed). `tests/fuzz_corpus.rs` replays the committed
//!   corpus (`fuzz/corpus/ops/`) through the same two functions under plain `cargo test`.

pub mod device;
pub mod nvme;
pub mod uapi;

use type1_check::{alphabet, initial_world, ops_of, Action, Bound};

/// The bound whose alphabet the fuzzer draws from: the checker's default bound (three groups,
/// three mappings, four pages of user memory).
pub fn fuzz_bound() -> Bound {
    Bound::default()
}

/// Decodes fuzzer input into actions: each byte picks one action of
/// `alphabet(&fuzz_bound())`, modulo its length. Every input decodes; at most `max_len` actions
/// are taken so that a single input stays cheap.
pub fn decode(bytes: &[u8], max_len: usize) -> Vec<Action> {
    let alpha = alphabet(&fuzz_bound());
    bytes
        .iter()
        .take(max_len)
        .map(|b| alpha[*b as usize % alpha.len()])
        .collect()
}

/// The longest action sequence [`run_bytes`] executes.
pub const MAX_ACTIONS: usize = 64;

/// Runs `actions` from the checker's initial world under `policy`, checking after every action
/// and after closing the container at the end. Returns the first violation as
/// `"step N (ACTION): KIND: DETAIL"`; an engine panic propagates.
pub fn run_actions(actions: &[Action], policy: &str) -> Result<(), String> {
    let mut w = initial_world(&fuzz_bound(), policy)?;
    for (i, a) in actions.iter().enumerate() {
        for op in ops_of(*a, &w) {
            // Errors are legitimate outcomes here: only violations matter.
            let _ = w.exec(&op);
        }
        w.check(i + 1);
        if let Some(n) = w.pending.first() {
            return Err(format!(
                "step {} ({a:?}): {}: {}",
                n.at, n.v.kind, n.v.detail
            ));
        }
    }
    w.teardown(actions.len() + 1);
    if let Some(n) = w.pending.first() {
        return Err(format!("after close: {}: {}", n.v.kind, n.v.detail));
    }
    Ok(())
}

/// The policy the fuzz target checks. Not `seed`: the fuzzer rediscovers within a minute the
/// failed-replay hole that `type1 check` found in the series (`corpus/ops-seed-hole/`,
/// `docs/verification.md`); `seed-fixed` is the series with that hole closed.
pub const FUZZ_POLICY: &str = "seed-fixed";

/// The fuzz target's body: [`decode`] then [`run_actions`] under [`FUZZ_POLICY`].
pub fn run_bytes(bytes: &[u8]) -> Result<(), String> {
    run_actions(&decode(bytes, MAX_ACTIONS), FUZZ_POLICY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_decodes() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&all, 1000).len(), 256);
        assert_eq!(decode(&all, 3).len(), 3);
    }

    #[test]
    fn seed_policy_survives_a_simple_run() {
        let alpha = alphabet(&fuzz_bound());
        let attach1 = alpha
            .iter()
            .position(|a| *a == Action::Attach(1))
            .expect("in alphabet") as u8;
        let map0 = alpha
            .iter()
            .position(|a| *a == Action::Map(0))
            .expect("in alphabet") as u8;
        run_bytes(&[attach1, map0]).expect("no violation");
    }
}
