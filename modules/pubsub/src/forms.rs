//! The slice of XEP-0004 data forms PubSub needs.

use openspimed_module_api::Element;

/// `jabber:x:data`
pub const DATA: &str = "jabber:x:data";

/// A submitted form: field values by `var`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    /// The form's FORM_TYPE, if given.
    pub form_type: Option<String>,
    /// `(var, values)` in document order.
    pub fields: Vec<(String, Vec<String>)>,
}

impl Form {
    /// Reads the first `<x xmlns='jabber:x:data'/>` child of `parent`.
    pub fn find(parent: &Element) -> Option<Form> {
        let x = parent.get_child("x", DATA)?;
        let mut form = Form::default();
        for f in x.children().filter(|c| c.is("field", DATA)) {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", DATA))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                form.form_type = values.first().cloned();
            }
            form.fields.push((var.to_owned(), values));
        }
        Some(form)
    }
}

/// An empty form of `kind` (`form`, `submit`, `result`) with its FORM_TYPE.
pub fn form(kind: &str, form_type: &str) -> Element {
    Element::new("x", DATA).with_attr("type", kind).with_child(
        Element::new("field", DATA)
            .with_attr("var", "FORM_TYPE")
            .with_attr("type", "hidden")
            .with_child(Element::new("value", DATA).with_text(form_type)),
    )
}

/// A field with one value and, for list fields, its options.
pub fn field(var: &str, kind: &str, value: &str, options: &[&str]) -> Element {
    let mut f = Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_child(Element::new("value", DATA).with_text(value));
    for o in options {
        f.push_child(
            Element::new("option", DATA).with_child(Element::new("value", DATA).with_text(*o)),
        );
    }
    f
}
