//! dbg
use type1_host::sys::{self, AnonMap};
#[test]
fn dbg() {
    let buf = AnonMap::new(16 * 4096, false).unwrap();
    for n in [1usize, 4096, 8192] {
        let v = vec![0x5au8; n];
        eprintln!("n={n} r={:?}", sys::write_user(buf.addr(), &v));
        eprintln!("arr r={:?}", sys::write_user(buf.addr(), &[0x5a; 4096 * 2]));
    }
}
