//! Subscription options (XEP-0060 §6.3, FORM_TYPE `pubsub#subscribe_options`).
//!
//! Honoured: `pubsub#deliver` (a subscription that keeps existing without notifications).
//! `pubsub#digest` and `pubsub#include_body` are offered with the only values this service
//! implements (`false`); a submission asking for anything else, or for a field the service
//! does not know (such as `pubsub#show-values`, which would need the subscriber's presence),
//! is an invalid group of options (§6.3.5: `bad-request` + `invalid-options`) rather than a
//! preference silently ignored.

use openspimed_module_api::Element;

use openspimed_module_api::form::{Form, field, form};

/// The options form's FORM_TYPE.
pub const FORM_TYPE: &str = "http://jabber.org/protocol/pubsub#subscribe_options";

/// One subscription's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubOptions {
    /// `pubsub#deliver`: whether notifications are sent.
    pub deliver: bool,
}

impl Default for SubOptions {
    fn default() -> Self {
        SubOptions { deliver: true }
    }
}

/// A submitted options form asked for something this service does not do.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidOptions;

fn boolean(values: &[String]) -> Result<bool, InvalidOptions> {
    match values {
        [v] if v == "1" || v == "true" => Ok(true),
        [v] if v == "0" || v == "false" => Ok(false),
        _ => Err(InvalidOptions),
    }
}

impl SubOptions {
    /// The options as a data form of `kind` (`form` to fill in, `result` to report).
    pub fn to_form(self, kind: &str) -> Element {
        let flag = |b: bool| if b { "1" } else { "0" };
        form(kind, FORM_TYPE)
            .with_child(field("pubsub#deliver", "boolean", flag(self.deliver), &[]))
            .with_child(field("pubsub#digest", "boolean", "0", &[]))
            .with_child(field("pubsub#include_body", "boolean", "0", &[]))
    }

    /// These options changed by a submitted form; nothing changes when it is invalid.
    pub fn apply(self, submitted: &Form) -> Result<SubOptions, InvalidOptions> {
        if submitted
            .form_type
            .as_deref()
            .is_some_and(|t| t != FORM_TYPE)
        {
            return Err(InvalidOptions);
        }
        let mut next = self;
        for (var, values) in &submitted.fields {
            match var.as_str() {
                "FORM_TYPE" => {}
                "pubsub#deliver" => next.deliver = boolean(values)?,
                "pubsub#digest" | "pubsub#include_body" => {
                    if boolean(values)? {
                        return Err(InvalidOptions);
                    }
                }
                _ => return Err(InvalidOptions),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(fields: &[(&str, &[&str])]) -> Form {
        Form {
            form_type: Some(FORM_TYPE.into()),
            kind: "submit".into(),
            fields: fields
                .iter()
                .map(|(v, vals)| {
                    (
                        (*v).to_owned(),
                        vals.iter().map(|s| (*s).to_owned()).collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn deliver_is_honoured_and_the_rest_refused_unless_it_matches_what_we_do() {
        let d = SubOptions::default();
        assert!(d.deliver);
        let off = d
            .apply(&submitted(&[
                ("pubsub#deliver", &["0"]),
                ("pubsub#digest", &["false"]),
            ]))
            .unwrap();
        assert!(!off.deliver);
        assert_eq!(
            off.apply(&submitted(&[("pubsub#deliver", &["true"])])),
            Ok(SubOptions { deliver: true })
        );
        for bad in [
            submitted(&[("pubsub#digest", &["1"])]),
            submitted(&[("pubsub#include_body", &["true"])]),
            submitted(&[("pubsub#show-values", &["chat", "online"])]),
            submitted(&[("pubsub#deliver", &["maybe"])]),
            submitted(&[("pubsub#deliver", &[])]),
            Form {
                form_type: Some("urn:other".into()),
                kind: "submit".into(),
                fields: Vec::new(),
            },
        ] {
            assert_eq!(d.apply(&bad), Err(InvalidOptions), "{bad:?}");
        }
    }

    #[test]
    fn the_form_reports_the_current_values() {
        let f = SubOptions { deliver: false }.to_form("form");
        let parsed = Form::find(&Element::new("options", "p").with_child(f)).unwrap();
        assert_eq!(parsed.form_type.as_deref(), Some(FORM_TYPE));
        assert!(
            parsed
                .fields
                .contains(&("pubsub#deliver".to_owned(), vec!["0".to_owned()]))
        );
    }
}
