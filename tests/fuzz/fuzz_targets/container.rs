//! The OpenSpime container parser and its extensions on arbitrary XML: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openspime::{Claim, Container, Data, SpimeSeek};
use openspimed_module_api::Element;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(el) = Element::parse(text) else {
        return;
    };
    let candidates = std::iter::once(&el).chain(Container::find(&el));
    for c in candidates {
        if let Ok(container) = Container::parse(c) {
            let _ = container.to_element();
            if let Ok((payload, ctx)) = container.open(None) {
                let _ = openspime::c14n::canonicalize(&payload, &ctx);
                let _ = Data::parse(&payload);
                let _ = Claim::parse(&payload);
                let _ = SpimeSeek::parse(&payload);
            }
        }
    }
    let _ = Data::parse(&el);
    let _ = Claim::parse(&el);
    let _ = SpimeSeek::parse(&el);
    let _ = openspime::keyinfo::parse_key_info(&el);
    let _ = openspime::keyinfo::parse_pubkeys(&el);
    let _ = openspime::date::parse(text);
});
