//! XEP-0004 data forms: reading a submitted form, writing forms and fields. PubSub's node
//! configuration, MAM's queries and MUC's room configuration all speak them.

use crate::element::Element;
use crate::ns::DATA;

/// A submitted form: field values by `var`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    /// The form's FORM_TYPE, if given (XEP-0068): which form it is.
    pub form_type: Option<String>,
    /// The form's `type` attribute (`submit`, `cancel`, …): a `cancel` changes nothing.
    pub kind: String,
    /// `(var, values)` in document order.
    pub fields: Vec<(String, Vec<String>)>,
}

impl Form {
    /// Reads the first `<x xmlns='jabber:x:data'/>` child of `parent`.
    pub fn find(parent: &Element) -> Option<Form> {
        let x = parent.get_child("x", DATA)?;
        let mut form = Form {
            kind: x.attr("type").unwrap_or("").to_owned(),
            ..Form::default()
        };
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

    /// The values of field `var` (empty when absent).
    pub fn values(&self, var: &str) -> &[String] {
        self.fields
            .iter()
            .find(|(v, _)| v == var)
            .map_or(&[], |(_, vals)| vals.as_slice())
    }

    /// The first value of field `var`, when it has one.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.values(var).first().map(String::as_str)
    }

    /// Field `var` read as a XEP-0004 boolean (`1`/`true`, `0`/`false`); `None` when
    /// absent, `Some(Err(()))` when it is something else.
    pub fn boolean(&self, var: &str) -> Option<Result<bool, ()>> {
        self.value(var).map(|v| match v {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(()),
        })
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

/// A field without a value (what a blank search form offers), with a label.
pub fn blank_field(var: &str, kind: &str, label: &str) -> Element {
    let mut f = Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submitted_form_reads_back_by_field() {
        let x = Element::parse(
            "<q xmlns='urn:x'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:t</value></field>\
             <field var='ids'><value>a</value><value>b</value></field>\
             <field var='on'><value>1</value></field><field var='odd'><value>yes</value></field>\
             </x></q>",
        )
        .unwrap();
        let f = Form::find(&x).unwrap();
        assert_eq!(f.form_type.as_deref(), Some("urn:t"));
        assert_eq!(f.kind, "submit");
        assert_eq!(f.values("ids"), ["a", "b"]);
        assert_eq!(f.value("missing"), None);
        assert_eq!(f.boolean("on"), Some(Ok(true)));
        assert_eq!(f.boolean("odd"), Some(Err(())));
        assert_eq!(f.boolean("missing"), None);
    }
}
