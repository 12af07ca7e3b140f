//! `Tree::decode` ("DAGT" binary trees): arbitrary bytes never panic, and
//! whatever decodes is canonical: it encodes back to exactly the input, and
//! holds only names and targets the mount may serve.
#![no_main]

use dagfs::store::tree::{name_problem, Node, Tree, MAX_TARGET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = Tree::decode(data) else {
        return;
    };
    assert_eq!(
        tree.encode(),
        data,
        "decode(bytes) must encode back to bytes"
    );
    for w in tree.entries.windows(2) {
        assert!(w[0].name < w[1].name, "entries strictly ascending");
    }
    for e in &tree.entries {
        assert_eq!(name_problem(&e.name), None, "{:?}", e.name);
        if let Node::Symlink { target } = &e.node {
            assert!(!target.is_empty() && target.len() <= MAX_TARGET);
            assert!(!target.contains(&0));
        }
        assert!(tree.find(&e.name).is_some_and(|f| f == e));
    }
    assert_eq!(Tree::decode(&tree.encode()).as_ref(), Ok(&tree));
});
