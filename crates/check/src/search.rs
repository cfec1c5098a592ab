//! The breadth-first search over action sequences: parallel expansion in chunks, merged in
//! breadth-first order so that results do not depend on the number of threads; state
//! digests; counterexamples; and the flush-cost corpus.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::Arc,
};

use serde::Serialize;
use type1_core::GroupId;
use type1_scenario::World;

use crate::*;

/// A counterexample.
#[derive(Clone, Debug, Serialize)]
pub struct Counterexample {
    /// The action sequence.
    pub actions: Vec<Action>,
    /// Whether the violation shows only after closing the container.
    pub at_close: bool,
    /// Violation kind.
    pub kind: String,
    /// Violation detail.
    pub detail: String,
    /// The reproducing scenario.
    pub scenario: String,
}

/// The figures of a check.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Policy checked.
    pub policy: String,
    /// The bound.
    pub bound: Bound,
    /// Distinct states reached.
    pub states: u64,
    /// Sequences (transitions) executed.
    pub sequences: u64,
    /// Pages flushed over all executed transitions.
    pub flushed_pages: u64,
    /// The minimal counterexample, if any.
    pub counterexample: Option<Counterexample>,
}

impl Counterexample {
    /// Steps of the sequence: its actions but the [`Action::Within`] markers.
    pub fn steps(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| !matches!(a, Action::Within(..)))
            .count()
    }
}

impl Outcome {
    /// Whether the policy held within the bound.
    pub fn sound(&self) -> bool {
        self.counterexample.is_none()
    }
}

pub(crate) fn digest(w: &World) -> u64 {
    let mut h = type1_sim::StateHasher::default();
    for c in w.engines() {
        c.groups().hash(&mut h);
        if let Ok(t) = c.iommu() {
            t.mappings().hash(&mut h);
            for d in t.domains() {
                (d.groups, d.coherent).hash(&mut h);
            }
        }
    }
    w.vfio.group_states().hash(&mut h);
    for (_, x) in w.vfio.iommufds() {
        x.hash(&mut h);
    }
    w.ifd_objects().hash(&mut h);
    w.sim().state_digest().hash(&mut h);
    h.finish()
}

/// The first violation of `pending` that counts (all, or only content with `content_only`).
pub(crate) fn counted(
    pending: &[type1_scenario::world::Noted],
    content_only: bool,
) -> Option<(String, String)> {
    pending
        .iter()
        .find(|n| !(content_only && PROTOCOL_KINDS.contains(&n.v.kind)))
        .map(|n| (n.v.kind.as_str().to_string(), n.v.detail.clone()))
}

/// Executes an action; returns the first new violation (kind, detail).
pub(crate) fn step(w: &mut World, a: Action, content_only: bool) -> Option<(String, String)> {
    for op in ops_of(a, w) {
        let _ = w.exec(&op);
    }
    finish_step(w, content_only)
}

/// Runs the checker after a step; returns the first new violation that counts.
pub(crate) fn finish_step(w: &mut World, content_only: bool) -> Option<(String, String)> {
    w.check(0);
    let v = counted(&w.pending, content_only);
    w.pending.clear();
    v
}

pub(crate) fn close_violation(w: &World, content_only: bool) -> Option<(String, String)> {
    let mut t = w.clone();
    t.teardown(0);
    counted(&t.pending, content_only)
}

/// Checks one policy on every core. `progress` is called with (depth, states) as the search
/// deepens.
pub fn check(
    policy: &str,
    bound: &Bound,
    progress: impl FnMut(usize, u64),
) -> Result<Outcome, String> {
    check_with(policy, bound, 0, progress)
}

/// Parents expanded together: their children are computed in parallel, then merged in order.
const CHUNK: usize = 256;

/// [`CHUNK`] with [`Bound::dma_inside`], whose parents have hundreds of children each: the
/// new ones of a chunk wait, machine and all, for the merge.
const CHUNK_INSIDE: usize = 8;

/// One expanded transition (its sequence is its parent's, the access inside if any, and its
/// action: built only for the few that need it, new states and counterexamples).
struct Child {
    /// None when the state was reached before this chunk (dropped by the worker). Boxed:
    /// a chunk's children are collected and moved, and most of them hold no machine.
    world: Option<Box<World>>,
    /// A violation during the step.
    violation: Option<(String, String)>,
    /// State digest (only without a violation).
    digest: u64,
    flushed: u64,
    /// The step armed wide fault k: the child is its parent with k armed ([`Node::Armed`]).
    armed: Option<u8>,
    /// The access made inside the operation ([`Bound::dma_inside`]).
    within: Option<Action>,
}

impl Child {
    /// Nothing new: the action did nothing, or led where the search has been.
    fn none(flushed: u64, digest: u64) -> Child {
        Child {
            world: None,
            violation: None,
            digest,
            flushed,
            armed: None,
            within: None,
        }
    }
}

/// A state of the frontier.
///
/// With [`Bound::wide_faults`], a state with a fault armed for its next operation is kept as
/// its parent and the fault, not as a machine of its own: such a state differs from its parent
/// only in what the next fallible call does, so its step and close checks are its parent's,
/// and it is reached only from its parent (a state first reached at depth d has its armed
/// variants at d + 1, nowhere earlier). Only operations that make a fallible call are explored
/// from it: an action that makes none commutes with the arming, so the same state, armed,
/// follows from that action then the arming, at the same depth. The figures count the states
/// the machine is in, not these variants.
enum Node {
    /// A machine state.
    Plain(Arc<World>),
    /// The parent state with fault k of [`WIDE_FAULTS`] armed.
    Armed(Arc<World>, u8),
}

/// Expands `node` by `a`: the step itself, then with [`Bound::dma_inside`] the same step with
/// each access of [`inside_accesses`] after each of the platform calls it made.
fn expand(node: &Node, a: Action, bound: &Bound, known: &HashSet<u64>) -> Vec<Child> {
    let (w, armed) = match node {
        Node::Plain(w) => (w, None),
        Node::Armed(w, k) => (w, Some(*k)),
    };
    if let Action::Fail(k) = a {
        if bound.wide_faults {
            // One fault per operation: an armed state arms nothing more.
            return vec![match armed {
                Some(_) => Child::none(0, 0),
                None => Child {
                    armed: Some(k),
                    ..Child::none(0, 0)
                },
            }];
        }
    }
    // CPU and device accesses never call pin, account, attach or iommu_map (they act on the
    // machine, not through the engine): from an armed state they are skipped without a try.
    if armed.is_some() && is_access(a) {
        return vec![Child::none(0, 0)];
    }
    let ops = ops_of(a, w);
    if ops.is_empty() {
        // Nothing to do here (a name in use): the parent.
        return vec![Child::none(0, 0)];
    }
    let (plain, calls) = step_child(w, armed, None, &ops, bound, known);
    let mut v = vec![plain];
    if bound.dma_inside && !is_access(a) && calls > 0 {
        // 0: before the first call, yet inside the operation (one step, not two).
        for j in 0..=u16::try_from(calls).unwrap_or(u16::MAX) {
            for x in inside_accesses(bound) {
                let within = Action::Within(j, x);
                let (c, _) = step_child(w, armed, Some(within), &ops, bound, known);
                v.push(Child {
                    within: Some(within),
                    ..c
                });
            }
        }
    }
    v
}

/// One step from `w` (with fault `armed` armed, and the access `within` armed inside it):
/// the child, and how many access-point calls the step made.
fn step_child(
    w: &World,
    armed: Option<u8>,
    within: Option<Action>,
    ops: &[type1_scenario::parse::Op],
    bound: &Bound,
    known: &HashSet<u64>,
) -> (Child, u64) {
    let mut world = Box::new(w.clone());
    for pre in armed.map(Action::Fail).into_iter().chain(within) {
        for op in ops_of(pre, &world) {
            let _ = world.exec(&op);
        }
    }
    let before = world.sim().stats().pages_flushed;
    let calls_before = world.sim().access_point_calls();
    let seen_before = world.sim().violations().len();
    for op in ops {
        let _ = world.exec(op);
    }
    let flushed = world.sim().stats().pages_flushed - before;
    let calls = world.sim().access_point_calls() - calls_before;
    if armed.is_some() && world.sim().failures_armed() {
        // Made no fallible call (see [`Node`]).
        return (Child::none(flushed, 0), calls);
    }
    // A state known before this chunk, reached with no violation on the way, was checked
    // when it was first reached (the engine check is a function of the state the digest
    // covers): drop it here, on this thread, unchecked (freeing a machine is a good part of
    // the work).
    let quiet = world.sim().violations().len() == seen_before;
    let digest = digest(&world);
    if quiet && known.contains(&digest) {
        return (Child::none(flushed, digest), calls);
    }
    let violation = finish_step(&mut world, bound.content_only);
    let child = Child {
        world: violation.is_none().then_some(world),
        violation,
        digest,
        flushed,
        armed: None,
        within: None,
    };
    (child, calls)
}

/// Items a worker takes at a time in [`par_map`].
const BLOCK: usize = 16;

/// Maps `f` over `items` on up to `threads` threads, keeping the order. Workers take blocks
/// of [`BLOCK`] items as they finish the previous one, so that a few costly items do not leave
/// the other threads idle.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let blocks = items.len().div_ceil(BLOCK);
    let mut done: Vec<(usize, Vec<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(blocks))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if b >= blocks {
                            return mine;
                        }
                        let part = &items[b * BLOCK..((b + 1) * BLOCK).min(items.len())];
                        mine.push((b, part.iter().map(&f).collect::<Vec<R>>()));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a checker thread panicked"))
            .collect()
    });
    done.sort_unstable_by_key(|d| d.0);
    done.into_iter().flat_map(|d| d.1).collect()
}

/// [`check`] on `threads` threads (0: one per core). The result does not depend on the number
/// of threads: children are computed in parallel, a chunk of parents at a time, then merged in
/// breadth-first order, so the states, the sequences and the counterexample are those of a
/// sequential search.
pub fn check_with(
    policy: &str,
    bound: &Bound,
    threads: usize,
    mut progress: impl FnMut(usize, u64),
) -> Result<Outcome, String> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let w0 = initial_world(bound, policy)?;
    let alpha = alphabet(bound);
    let mut seen: HashSet<u64> = HashSet::new();
    seen.insert(digest(&w0));
    let mut frontier: Vec<(Node, Vec<Action>)> = vec![(Node::Plain(Arc::new(w0)), Vec::new())];
    let mut sequences = 0u64;
    let mut flushed = 0u64;
    let outcome =
        |states: usize, sequences: u64, flushed: u64, ce: Option<Counterexample>| Outcome {
            policy: policy.into(),
            bound: bound.clone(),
            states: states as u64,
            sequences,
            flushed_pages: flushed,
            counterexample: ce,
        };
    let found = |seq: Vec<Action>, at_close: bool, (kind, detail): (String, String)| {
        let finding = format!(
            "{}violation {kind}: {detail}",
            if at_close { "after close: " } else { "" }
        );
        Counterexample {
            scenario: scenario_text(bound, policy, &seq, &finding),
            actions: seq,
            at_close,
            kind,
            detail,
        }
    };
    for depth in 0..bound.depth {
        progress(depth, seen.len() as u64);
        // The last level's states are checked (step and close) but not kept.
        let last = depth + 1 == bound.depth;
        let mut next = Vec::new();
        let chunk = if bound.dma_inside { CHUNK_INSIDE } else { CHUNK };
        for parents in frontier.chunks(chunk) {
            let pairs: Vec<(usize, Action)> = (0..parents.len())
                .flat_map(|p| alpha.iter().map(move |a| (p, *a)))
                .collect();
            let known = &seen;
            let children: Vec<(usize, Child)> = par_map(&pairs, threads, |&(p, a)| {
                expand(&parents[p].0, a, bound, known)
            })
            .into_iter()
            .enumerate()
            .flat_map(|(i, cs)| cs.into_iter().map(move |c| (i, c)))
            .collect();
            let seq_of = |i: usize| {
                let (pair, c) = &children[i];
                let (p, a) = pairs[*pair];
                let mut seq = parents[p].1.clone();
                seq.extend(c.within);
                seq.push(a);
                seq
            };
            // In order: the first step violation ends the search; new states are kept with
            // the figures a sequential search would report at them.
            let mut fresh = Vec::new();
            let mut armed = Vec::new();
            let mut stop = None;
            for (i, (_, c)) in children.iter().enumerate() {
                sequences += 1;
                flushed += c.flushed;
                if let Some(v) = &c.violation {
                    stop = Some((i, v.clone()));
                    break;
                }
                if let Some(k) = c.armed {
                    armed.push((i, k));
                } else if c.world.is_some() && seen.insert(c.digest) {
                    fresh.push((i, seen.len(), sequences, flushed));
                }
            }
            let closes = par_map(&fresh, threads, |&(i, ..)| {
                children[i]
                    .1
                    .world
                    .as_ref()
                    .and_then(|w| close_violation(w, bound.content_only))
            });
            for (&(i, states, seqs, fl), v) in fresh.iter().zip(closes) {
                if let Some(v) = v {
                    let ce = found(seq_of(i), true, v);
                    return Ok(outcome(states, seqs, fl, Some(ce)));
                }
            }
            if let Some((i, v)) = stop {
                let ce = found(seq_of(i), false, v);
                return Ok(outcome(seen.len(), sequences, flushed, Some(ce)));
            }
            if !last {
                // In breadth-first order, armed variants among the new states. Sequences
                // first: they borrow the children the machines are then taken from.
                let keep: HashSet<usize> = fresh.iter().map(|f| f.0).collect();
                let armed: std::collections::HashMap<usize, u8> = armed.into_iter().collect();
                let seqs: Vec<(usize, Vec<Action>)> = (0..children.len())
                    .filter(|i| armed.contains_key(i) || keep.contains(i))
                    .map(|i| (i, seq_of(i)))
                    .collect();
                let mut children: Vec<Option<(usize, Child)>> =
                    children.into_iter().map(Some).collect();
                for (i, seq) in seqs {
                    let Some((pair, c)) = children[i].take() else {
                        continue;
                    };
                    if let Some(&k) = armed.get(&i) {
                        let parent = match &parents[pairs[pair].0].0 {
                            Node::Plain(w) | Node::Armed(w, _) => Arc::clone(w),
                        };
                        next.push((Node::Armed(parent, k), seq));
                    } else if let Some(w) = c.world {
                        next.push((Node::Plain(Arc::from(w)), seq));
                    }
                }
            }
        }
        frontier = next;
    }
    progress(bound.depth, seen.len() as u64);
    Ok(outcome(seen.len(), sequences, flushed, None))
}

/// Flush cost of a policy on a fixed corpus of sequences: deterministic pseudo-random action
/// sequences of the bound's depth after a common prefix (one group attached, every mapping
/// mapped), the same for every policy, each ending with a container close. Returns
/// (flushes, pages).
pub fn corpus_cost(policy: &str, bound: &Bound, n: usize) -> Result<(u64, u64), String> {
    let alpha = alphabet(bound);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut flushes = 0;
    let mut pages = 0;
    for i in 0..n {
        let mut w = initial_world(bound, policy)?;
        // Start from a useful state (a group attached, every mapping mapped) so that the random
        // tail exercises flush points rather than errors.
        let g = if i % 2 == 0 { 1 } else { 0 };
        let _ = step(&mut w, Action::Attach(g), false);
        for m in 0..bound.mappings {
            let _ = step(&mut w, Action::Map(m), false);
        }
        for _ in 0..bound.depth {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let a = alpha[(state % alpha.len() as u64) as usize];
            let _ = step(&mut w, a, false);
        }
        w.teardown(0);
        let s = w.sim().stats();
        flushes += s.flush_calls;
        pages += s.pages_flushed;
    }
    Ok((flushes, pages))
}

/// A group id helper for callers.
pub fn group(g: u32) -> GroupId {
    GroupId(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With accesses inside, a step is tried as it is and with every access of
    /// [`inside_accesses`] before its first call and after every access-point call it made,
    /// each a distinct place (the access lands after that call and before the next).
    #[test]
    fn dma_inside_tries_every_access_after_every_call_of_a_step() {
        let bound = Bound {
            dma_inside: true,
            ..Bound::default()
        };
        let mut w = initial_world(&bound, "seed-fixed").unwrap();
        for a in [Action::Attach(0), Action::Attach(1)] {
            assert!(step(&mut w, a, false).is_none());
        }
        let calls_before = w.sim().access_point_calls();
        let mut plain = w.clone();
        for op in ops_of(Action::Map(0), &plain) {
            plain.exec(&op).unwrap();
        }
        let calls = plain.sim().access_point_calls() - calls_before;
        // account, pin, then per domain a flush and an IOMMU map at least.
        assert!(calls >= 4, "{calls} calls");
        let xs = inside_accesses(&bound);
        // Every page of every mapping through both devices, every page of the buffer.
        assert_eq!(xs.len(), 2 * 4 * 2 + 4 * 2);
        let node = Node::Plain(Arc::new(w));
        let children = expand(&node, Action::Map(0), &bound, &HashSet::new());
        assert_eq!(children.len() as u64, 1 + (calls + 1) * xs.len() as u64);
        assert!(children[0].within.is_none());
        let mut places = HashSet::new();
        for c in &children[1..] {
            let Some(Action::Within(j, x)) = c.within else {
                panic!("a variant without its access: {:?}", c.within);
            };
            assert!(xs.contains(&x));
            places.insert(j);
        }
        assert_eq!(places, (0..=calls as u16).collect());
        // A store right after the last call (the final IOMMU map) leaves a dirty line in a
        // page mapped for the non-coherent device: a state the plain step does not reach.
        let last = children
            .iter()
            .find(|c| {
                c.within
                    == Some(Action::Within(
                        calls as u16,
                        Inside::Cpu {
                            page: 0,
                            write: true,
                        },
                    ))
            })
            .unwrap();
        assert_ne!(last.digest, children[0].digest);
    }
}
