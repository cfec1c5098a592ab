//! # type1-scenario: scenario files for the type1 engine on the simulated machine
//!
//! * [`parse`]: the line-oriented scenario language (documented in `docs/scenarios.md`);
//! * [`world`]: [`World`], containers of `type1-core` running on a `type1-sim` machine, with
//!   the group and device bookkeeping of the VFIO core and the invariant checker run after
//!   every step;
//! * [`run`]: the runner that executes a scenario and checks its expectations;
//! * [`sweep`]: fail-nth fault sweeps over a scenario.
//!
//! The `type1` CLI (`run`, `demo`, `attack`) and the tests are built on these.

pub mod parse;
pub mod raw;
pub mod run;
pub mod sweep;
pub mod world;

pub use run::{run_steps, run_text, Failure, Report, RunOptions};
pub use world::{StepError, World};
