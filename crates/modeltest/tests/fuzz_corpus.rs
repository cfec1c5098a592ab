//! Replays every input of the fuzz corpus (`fuzz/corpus/ops/`) through the fuzz target's own
//! decoding and run function, so that plain `cargo test` covers the corpus without cargo-fuzz.

use std::path::PathBuf;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ops");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).expect("read corpus file");
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_runs_clean_under_seed() {
    let c = corpus();
    assert!(c.len() >= 20, "corpus has {} inputs", c.len());
    for (p, bytes) in c {
        if let Err(v) = type1_modeltest::run_bytes(&bytes) {
            panic!("{}: {v}", p.display());
        }
    }
}

/// The harness must be able to fail: upstream type1 (policy `none`) never flushes, so some
/// corpus input has to expose it.
#[test]
fn corpus_refutes_the_no_flush_policy() {
    let refuted = corpus().iter().any(|(_, bytes)| {
        type1_modeltest::run_actions(
            &type1_modeltest::decode(bytes, type1_modeltest::MAX_ACTIONS),
            "none",
        )
        .is_err()
    });
    assert!(
        refuted,
        "no corpus input shows a violation under policy none"
    );
}
