//! `type1-broker NAME`: the process that holds the emulated VFIO objects of every process
//! using `libtype1_preload.so` with the same broker name (see `type1_broker`). Started by the
//! library itself; not meant to be run by hand.

fn main() {
    type1_broker::main()
}
