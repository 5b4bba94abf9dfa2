//! Archiving preferences (XEP-0313 §6): what is archived by default, and the JIDs always
//! or never archived.

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, StanzaError};
use serde::{Deserialize, Serialize};

use crate::NS;

/// The `default` attribute of `<prefs/>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Default {
    /// Every message is archived.
    Always,
    /// Nothing is archived unless its JID is in `always`.
    Never,
    /// Messages with JIDs in the user's roster are archived.
    Roster,
}

impl Default {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Default::Always => "always",
            Default::Never => "never",
            Default::Roster => "roster",
        }
    }

    /// The default named `s`.
    pub fn parse(s: &str) -> Option<Default> {
        match s {
            "always" => Some(Default::Always),
            "never" => Some(Default::Never),
            "roster" => Some(Default::Roster),
            _ => None,
        }
    }
}

/// One account's preferences, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Prefs {
    /// What is archived for JIDs in neither list.
    pub default: Default,
    /// JIDs (bare or full) whose messages are always archived.
    pub always: Vec<String>,
    /// JIDs (bare or full) whose messages are never archived; wins over `always`.
    pub never: Vec<String>,
}

/// What a preference decides for one message, before the roster is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Archive it.
    Archive,
    /// Do not.
    Skip,
    /// Archive it if the peer is in the roster.
    IfInRoster,
}

impl Prefs {
    /// The preferences of an account that never set any.
    pub fn with_default(default: Default) -> Prefs {
        Prefs {
            default,
            always: Vec::new(),
            never: Vec::new(),
        }
    }

    /// What to do with a message with `peer` (its full JID, or bare). A bare JID in a list
    /// matches every resource of it; a full one only itself (XEP-0313 §6.2).
    pub fn decide(&self, peer: &str) -> Decision {
        let bare = peer.split_once('/').map_or(peer, |(b, _)| b);
        let listed = |list: &[String]| {
            list.iter()
                .any(|j| j.eq_ignore_ascii_case(bare) || j.eq_ignore_ascii_case(peer))
        };
        if listed(&self.never) {
            return Decision::Skip;
        }
        if listed(&self.always) {
            return Decision::Archive;
        }
        match self.default {
            Default::Always => Decision::Archive,
            Default::Never => Decision::Skip,
            Default::Roster => Decision::IfInRoster,
        }
    }

    /// Reads a `<prefs/>` element (from an iq set).
    pub fn from_element(prefs: &Element) -> Result<Prefs, StanzaError> {
        let bad = |text: &str| StanzaError::new(Condition::BadRequest).with_text(text);
        let default = prefs
            .attr("default")
            .and_then(Default::parse)
            .ok_or_else(|| bad("default must be always, never or roster"))?;
        let list = |name: &str| -> Result<Vec<String>, StanzaError> {
            let mut out = Vec::new();
            for j in prefs
                .get_child(name, NS)
                .into_iter()
                .flat_map(|l| l.children().filter(|c| c.is("jid", NS)))
            {
                let jid = Jid::new(j.text().trim()).map_err(|_| {
                    StanzaError::new(Condition::JidMalformed).with_text("not a JID in the list")
                })?;
                out.push(jid.to_string());
            }
            Ok(out)
        };
        Ok(Prefs {
            default,
            always: list("always")?,
            never: list("never")?,
        })
    }

    /// The `<prefs/>` element for an answer.
    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[String]| {
            let mut l = Element::new(name, NS);
            for j in jids {
                l.push_child(Element::new("jid", NS).with_text(j.clone()));
            }
            l
        };
        Element::new("prefs", NS)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn never_wins_and_bare_jids_match_every_resource() {
        let prefs = Prefs::from_element(
            &Element::parse(
                "<prefs xmlns='urn:xmpp:mam:2' default='roster'>\
                 <always><jid>romeo@montague.lit</jid><jid>nurse@capulet.lit</jid></always>\
                 <never><jid>nurse@capulet.lit</jid><jid>tybalt@capulet.lit/sword</jid></never>\
                 </prefs>",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            prefs.decide("romeo@montague.lit/orchard"),
            Decision::Archive
        );
        assert_eq!(prefs.decide("nurse@capulet.lit"), Decision::Skip);
        assert_eq!(prefs.decide("tybalt@capulet.lit/sword"), Decision::Skip);
        assert_eq!(
            prefs.decide("tybalt@capulet.lit/home"),
            Decision::IfInRoster
        );
        let back = Prefs::from_element(&prefs.to_element()).unwrap();
        assert_eq!(back, prefs);
    }

    #[test]
    fn bad_prefs_are_refused() {
        for xml in [
            "<prefs xmlns='urn:xmpp:mam:2'/>",
            "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>@@</jid></never></prefs>",
        ] {
            assert!(
                Prefs::from_element(&Element::parse(xml).unwrap()).is_err(),
                "{xml}"
            );
        }
    }
}
