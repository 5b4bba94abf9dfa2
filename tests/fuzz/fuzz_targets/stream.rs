//! Element parsing (the tree builder every stanza goes through) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openspimed_module_api::Element;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(el) = Element::parse(text) {
            // What we serialize, we can parse back to the same tree.
            let again = Element::parse(&el.to_string()).expect("round trip");
            assert_eq!(el, again);
        }
    }
});
