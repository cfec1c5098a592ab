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
    /// Steps of the sequence (an access inside an operation is one).
    pub fn steps(&self) -> usize {
        self.actions.len()
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

/// A node of the frontier and the sequence that reached it.
struct Parent {
    node: Node,
    seq: Vec<Action>,
}

/// One transition to try: from parent `parent` (an index into the parents at hand), action
/// `a`, with the access `within` (an [`Action::Within`]) inside it.
#[derive(Clone, Copy)]
struct Item {
    parent: usize,
    within: Option<Action>,
    a: Action,
}

/// Expands `node` by `a` (with the access `within` inside it): the child, and how many
/// access-point calls the step made.
fn expand(
    node: &Node,
    a: Action,
    within: Option<Action>,
    bound: &Bound,
    known: &HashSet<u64>,
) -> (Child, u64) {
    let (w, armed) = match node {
        Node::Plain(w) => (w, None),
        Node::Armed(w, k) => (w, Some(*k)),
    };
    if let Action::Fail(k) = a {
        if bound.wide_faults {
            // One fault per operation: an armed state arms nothing more.
            let c = match armed {
                Some(_) => Child::none(0, 0),
                None => Child {
                    armed: Some(k),
                    ..Child::none(0, 0)
                },
            };
            return (c, 0);
        }
    }
    // CPU and device accesses never call pin, account, attach or iommu_map (they act on the
    // machine, not through the engine): from an armed state they are skipped without a try.
    if armed.is_some() && is_access(a) {
        return (Child::none(0, 0), 0);
    }
    let ops = ops_of(a, w);
    if ops.is_empty() {
        // Nothing to do here (a name in use): the parent.
        return (Child::none(0, 0), 0);
    }
    step_child(w, armed, within, &ops, bound, known)
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

/// The search's books, shared by the steps of a level.
struct Search<'a> {
    policy: &'a str,
    bound: &'a Bound,
    threads: usize,
    seen: HashSet<u64>,
    sequences: u64,
    flushed: u64,
    /// The next level's parents, in breadth-first order.
    next: Vec<Parent>,
    /// This level's children are checked but not kept.
    last: bool,
}

impl Search<'_> {
    fn outcome(
        &self,
        states: usize,
        sequences: u64,
        flushed: u64,
        ce: Option<Counterexample>,
    ) -> Outcome {
        Outcome {
            policy: self.policy.into(),
            bound: self.bound.clone(),
            states: states as u64,
            sequences,
            flushed_pages: flushed,
            counterexample: ce,
        }
    }

    fn found(
        &self,
        seq: Vec<Action>,
        at_close: bool,
        (kind, detail): (String, String),
    ) -> Counterexample {
        let finding = format!(
            "{}violation {kind}: {detail}",
            if at_close { "after close: " } else { "" }
        );
        Counterexample {
            scenario: scenario_text(self.bound, self.policy, &seq, &finding),
            actions: seq,
            at_close,
            kind,
            detail,
        }
    }

    /// Tries `items` (in parallel), then merges their children in order: the first step
    /// violation ends the search; new states are kept with the figures a sequential search
    /// would report at them. Returns the platform calls each item made, or the outcome if a
    /// violation was found.
    fn run(&mut self, parents: &[&Parent], items: &[Item]) -> Result<Vec<u64>, Box<Outcome>> {
        let bound = self.bound;
        let known = &self.seen;
        let children = par_map(items, self.threads, |it| {
            expand(&parents[it.parent].node, it.a, it.within, bound, known)
        });
        let seq_of = |i: usize| {
            let it = items[i];
            let mut seq = parents[it.parent].seq.clone();
            seq.extend(it.within);
            seq.push(it.a);
            seq
        };
        let mut fresh = Vec::new();
        let mut armed = Vec::new();
        let mut stop = None;
        for (i, (c, _)) in children.iter().enumerate() {
            self.sequences += 1;
            self.flushed += c.flushed;
            if let Some(v) = &c.violation {
                stop = Some((i, v.clone()));
                break;
            }
            if let Some(k) = c.armed {
                armed.push((i, k));
            } else if c.world.is_some() && self.seen.insert(c.digest) {
                fresh.push((i, self.seen.len(), self.sequences, self.flushed));
            }
        }
        let closes = par_map(&fresh, self.threads, |&(i, ..)| {
            children[i]
                .0
                .world
                .as_ref()
                .and_then(|w| close_violation(w, bound.content_only))
        });
        for (&(i, states, seqs, fl), v) in fresh.iter().zip(closes) {
            if let Some(v) = v {
                let ce = self.found(seq_of(i), true, v);
                return Err(Box::new(self.outcome(states, seqs, fl, Some(ce))));
            }
        }
        if let Some((i, v)) = stop {
            let ce = self.found(seq_of(i), false, v);
            let o = self.outcome(self.seen.len(), self.sequences, self.flushed, Some(ce));
            return Err(Box::new(o));
        }
        let calls = children.iter().map(|c| c.1).collect();
        if !self.last {
            // In breadth-first order, armed variants among the new states.
            let keep: HashSet<usize> = fresh.iter().map(|f| f.0).collect();
            let armed: std::collections::HashMap<usize, u8> = armed.into_iter().collect();
            for (i, (c, _)) in children.into_iter().enumerate() {
                if let Some(&k) = armed.get(&i) {
                    let parent = match &parents[items[i].parent].node {
                        Node::Plain(w) | Node::Armed(w, _) => Arc::clone(w),
                    };
                    self.next.push(Parent {
                        node: Node::Armed(parent, k),
                        seq: seq_of(i),
                    });
                } else if keep.contains(&i) {
                    if let Some(w) = c.world {
                        self.next.push(Parent {
                            node: Node::Plain(Arc::from(w)),
                            seq: seq_of(i),
                        });
                    }
                }
            }
        }
        Ok(calls)
    }
}

/// [`check`] on `threads` threads (0: one per core). The result does not depend on the number
/// of threads: children are computed in parallel, a chunk of parents at a time, then merged in
/// breadth-first order, so the states, the sequences and the counterexample are those of a
/// sequential search.
///
/// With [`Bound::dma_inside`], an access inside an operation is a step of its own, in front
/// of the operation ([`Action::Within`]): the children of a parent at depth d that hold one
/// are at depth d + 2, tried with the parents of the next level, once the parent's own
/// children have told which operations make how many platform calls.
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
    let xs = inside_accesses(bound);
    let mut search = Search {
        policy,
        bound,
        threads,
        seen: [digest(&w0)].into_iter().collect(),
        sequences: 0,
        flushed: 0,
        next: Vec::new(),
        last: false,
    };
    let mut frontier = vec![Parent {
        node: Node::Plain(Arc::new(w0)),
        seq: Vec::new(),
    }];
    // The previous level's parents, with the operations that made platform calls from each
    // and how many ([`Bound::dma_inside`]).
    let mut prev: Vec<(Parent, Vec<(Action, u64)>)> = Vec::new();
    for depth in 0..bound.depth {
        progress(depth, search.seen.len() as u64);
        search.last = depth + 1 == bound.depth;
        // An access, then an operation, from the previous level: at every place inside it.
        for chunk in prev.chunks(CHUNK_INSIDE) {
            let parents: Vec<&Parent> = chunk.iter().map(|(p, _)| p).collect();
            let mut items = Vec::new();
            for (p, (_, calls)) in chunk.iter().enumerate() {
                for &(a, k) in calls {
                    for j in 0..=u16::try_from(k).unwrap_or(u16::MAX) {
                        for &x in &xs {
                            items.push(Item {
                                parent: p,
                                within: Some(Action::Within(j, x)),
                                a,
                            });
                        }
                    }
                }
            }
            if let Err(o) = search.run(&parents, &items) {
                return Ok(*o);
            }
        }
        // Every action from this level.
        let chunk = if bound.dma_inside {
            CHUNK_INSIDE
        } else {
            CHUNK
        };
        let mut calls_of: Vec<Vec<(Action, u64)>> = Vec::new();
        for parents in frontier.chunks(chunk) {
            let refs: Vec<&Parent> = parents.iter().collect();
            let items: Vec<Item> = (0..parents.len())
                .flat_map(|p| {
                    alpha.iter().map(move |&a| Item {
                        parent: p,
                        within: None,
                        a,
                    })
                })
                .collect();
            let calls = match search.run(&refs, &items) {
                Ok(c) => c,
                Err(o) => return Ok(*o),
            };
            if bound.dma_inside {
                for per in calls.chunks(alpha.len()) {
                    calls_of.push(
                        alpha
                            .iter()
                            .zip(per)
                            .filter(|(a, k)| **k > 0 && !is_access(**a))
                            .map(|(a, k)| (*a, *k))
                            .collect(),
                    );
                }
            }
        }
        prev = if bound.dma_inside {
            frontier.into_iter().zip(calls_of).collect()
        } else {
            Vec::new()
        };
        frontier = std::mem::take(&mut search.next);
    }
    progress(bound.depth, search.seen.len() as u64);
    let (states, sequences, flushed) = (search.seen.len(), search.sequences, search.flushed);
    Ok(search.outcome(states, sequences, flushed, None))
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

    /// An operation reports the access-point calls it made, which are the places
    /// [`check_with`] puts an access inside it; an access at such a place changes what the
    /// operation leaves.
    #[test]
    fn an_operation_counts_its_calls_and_an_access_after_the_last_one_counts() {
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
        // Every page of every mapping through both devices, every page of the buffer.
        assert_eq!(inside_accesses(&bound).len(), 2 * 4 * 2 + 4 * 2);
        let node = Node::Plain(Arc::new(w));
        let none = HashSet::new();
        let (c, k) = expand(&node, Action::Map(0), None, &bound, &none);
        assert_eq!(k, calls);
        // A store right after the last call (the final IOMMU map) leaves a dirty line in a
        // page mapped for the non-coherent device: a state the plain step does not reach.
        let store = Inside::Cpu {
            page: 0,
            write: true,
        };
        let within = Action::Within(calls as u16, store);
        let (d, k2) = expand(&node, Action::Map(0), Some(within), &bound, &none);
        assert_eq!(k2, calls);
        assert_ne!(c.digest, d.digest);
        // The same store before the first call is the store step, then the MAP.
        let mut seq = (*match &node {
            Node::Plain(w) => w.clone(),
            Node::Armed(..) => unreachable!(),
        })
        .clone();
        for a in [Action::CpuWrite(0), Action::Map(0)] {
            assert!(step(&mut seq, a, false).is_none());
        }
        let (e, _) = expand(
            &node,
            Action::Map(0),
            Some(Action::Within(0, store)),
            &bound,
            &none,
        );
        assert_eq!(e.digest, digest(&seq));
    }
}
