//! The model checker against every shipped policy: the sound ones hold within a small bound,
//! the others produce a minimal counterexample that the scenario runner reproduces.

use type1_check::{check, corpus_cost, Bound};
use type1_scenario::{run_text, RunOptions};

fn bound(depth: usize) -> Bound {
    Bound {
        depth,
        ..Bound::default()
    }
}

#[test]
fn seed_and_eager_hold_within_depth_4() {
    for p in ["seed", "eager"] {
        let o = check(p, &bound(4), |_, _| {}).unwrap();
        assert!(o.sound(), "{p}: {:?}", o.counterexample.map(|c| c.scenario));
        assert!(o.states > 100, "{p} explored only {} states", o.states);
    }
}

#[test]
fn unsound_policies_have_replayable_minimal_counterexamples() {
    for (p, max_len) in [
        ("none", 2),
        ("reset-on-replay", 3),
        ("flag-after-map", 4),
        ("map-only", 2),
        ("unpin-only", 2),
    ] {
        let o = check(p, &bound(5), |_, _| {}).unwrap();
        let ce = o.counterexample.unwrap_or_else(|| panic!("{p} holds?"));
        assert!(
            ce.actions.len() <= max_len,
            "{p}: {} steps: {:?}",
            ce.actions.len(),
            ce.actions
        );
        let rep = run_text(&ce.scenario, &RunOptions::default());
        let f = rep.failure.unwrap_or_else(|| {
            panic!(
                "{p}: the scenario replays without failing:\n{}",
                ce.scenario
            )
        });
        assert!(
            f.msg.contains(&ce.kind),
            "{p}: replay failed differently: {}\n{}",
            f.msg,
            ce.scenario
        );
    }
}

#[test]
fn seed_flushes_less_than_eager_on_the_same_corpus() {
    let b = bound(6);
    let (_, seed) = corpus_cost("seed", &b, 100).unwrap();
    let (_, eager) = corpus_cost("eager", &b, 100).unwrap();
    assert!(seed < eager, "seed {seed} pages, eager {eager}");
}

#[test]
fn fault_sweep_over_a_generated_corpus() {
    // Pseudo-random action sequences, written as scenarios, each swept fail-nth style.
    let b = bound(6);
    let alpha = type1_check::alphabet(&b);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut points = 0;
    for i in 0..40u32 {
        let start = [
            type1_check::Action::Attach(i % 3),
            type1_check::Action::Map(0),
            type1_check::Action::Attach((i + 1) % 3),
        ];
        let seq: Vec<_> = start
            .into_iter()
            .chain((0..b.depth).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alpha[(x % alpha.len() as u64) as usize]
            }))
            .filter(|a| *a != type1_check::Action::FailMap2)
            .collect();
        let text = type1_check::scenario_text(&b, "seed", &seq, "corpus");
        let steps = type1_scenario::parse::parse(&text).unwrap();
        let rep = type1_scenario::sweep::sweep_steps(&steps, &RunOptions::default(), 200).unwrap();
        points += rep.fault_points;
        assert!(rep.problems.is_empty(), "{:?}\n{text}", rep.problems);
    }
    assert!(points > 100, "only {points} fault points");
}
