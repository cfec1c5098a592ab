//! # type1-check: bounded exhaustive checking of cache-flush policies
//!
//! Explores every sequence of operations up to a depth bound on a small simulated machine
//! (by default two IOMMU units, one coherent and one not, three groups, three mappings over
//! four pages of user memory), breadth first, merging states that are equal. After every step,
//! and after a container close from every reached state, the simulator's invariant checker
//! runs. Breadth-first order makes the first violation found a *minimal* counterexample; it is
//! written out as a scenario (`type1-scenario` format) that `type1 run` replays to the same
//! violation.
//!
//! Built on [`type1_scenario::World`] (engine + simulated machine), which is cloned to branch.

//!
//! Files: `model.rs` the bound, the alphabet and what each action does on a world;
//! `text.rs` counterexamples as scenario text; `search.rs` the breadth-first search, its
//! parallel expansion and the flush-cost corpus.

mod model;
mod search;
mod text;

pub use model::*;
pub use search::*;
pub use text::*;
