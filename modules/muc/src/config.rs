//! A room's configuration (XEP-0045 §10.2, the `muc#roomconfig` form): what it is stored
//! as and the form an owner reads and submits.

use openspimed_module_api::Element;
use openspimed_module_api::form::{self, Form};
use serde::{Deserialize, Serialize};

/// The form's FORM_TYPE.
pub const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";

/// Who sees occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    /// Moderators only: a semi-anonymous room.
    Moderators,
    /// Every occupant: a non-anonymous room (status 100 on entering).
    Anyone,
}

/// One room's configuration, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RoomConfig {
    /// `muc#roomconfig_roomname`: what clients show.
    pub name: String,
    /// `muc#roomconfig_roomdesc`.
    pub description: String,
    /// `muc#roomconfig_persistentroom`: kept when the last occupant leaves, and across
    /// restarts.
    pub persistent: bool,
    /// `muc#roomconfig_publicroom`: listed in the service's disco#items.
    pub public: bool,
    /// `muc#roomconfig_membersonly`: only members (and admins, owners) enter.
    pub members_only: bool,
    /// `muc#roomconfig_moderatedroom`: only participants (not visitors) speak.
    pub moderated: bool,
    /// `muc#roomconfig_roomsecret`: the password to enter; empty for none
    /// (`muc#roomconfig_passwordprotectedroom` follows it).
    pub password: String,
    /// `muc#roomconfig_whois`.
    pub whois: Whois,
    /// `muc#roomconfig_maxusers`: at most this many occupants (0: the service's limit).
    pub max_users: u32,
    /// `muc#roomconfig_changesubject`: occupants (not only moderators) set the subject.
    pub change_subject: bool,
    /// `muc#roomconfig_allowinvites`: occupants (not only admins) invite.
    pub allow_invites: bool,
    /// `muc#roomconfig_enablelogging` / `mam`: messages are archived (XEP-0313 room
    /// archive); status 170 on entering.
    pub archived: bool,
    /// `muc#maxhistoryfetch`: messages a joining client gets at most.
    pub history_length: u32,
}

impl Default for RoomConfig {
    /// Prosody's defaults for a new room: public, open, semi-anonymous, temporary until an
    /// owner says otherwise; archived as Prosody's `muc_log_by_default`.
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            whois: Whois::Moderators,
            max_users: 0,
            change_subject: false,
            allow_invites: false,
            archived: true,
            history_length: 20,
        }
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

fn b(v: bool) -> &'static str {
    if v { "1" } else { "0" }
}

impl RoomConfig {
    /// The configuration with a submitted form applied; unknown fields are ignored (a
    /// client may offer more than this service has), bad values refused.
    pub fn with_form(&self, f: &Form) -> Result<RoomConfig, String> {
        let mut c = self.clone();
        for (var, values) in &f.fields {
            let one = values.first().map(String::as_str).unwrap_or("");
            match var.as_str() {
                "muc#roomconfig_roomname" => c.name = one.to_owned(),
                "muc#roomconfig_roomdesc" => c.description = one.to_owned(),
                "muc#roomconfig_persistentroom" => c.persistent = boolean(one)?,
                "muc#roomconfig_publicroom" => c.public = boolean(one)?,
                "muc#roomconfig_membersonly" => c.members_only = boolean(one)?,
                "muc#roomconfig_moderatedroom" => c.moderated = boolean(one)?,
                "muc#roomconfig_passwordprotectedroom" => match boolean(one)? {
                    true => {}
                    false => c.password.clear(),
                },
                "muc#roomconfig_roomsecret" => c.password = one.to_owned(),
                "muc#roomconfig_whois" => {
                    c.whois = match one {
                        "anyone" => Whois::Anyone,
                        "moderators" => Whois::Moderators,
                        other => return Err(format!("whois {other:?} is not one")),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    c.max_users = match one {
                        "" | "none" => 0,
                        n => n
                            .parse()
                            .map_err(|_| format!("maxusers {n:?} is not a number"))?,
                    }
                }
                "muc#roomconfig_changesubject" => c.change_subject = boolean(one)?,
                "muc#roomconfig_allowinvites" => c.allow_invites = boolean(one)?,
                "muc#roomconfig_enablelogging" | "mam" => c.archived = boolean(one)?,
                "muc#maxhistoryfetch" => {
                    c.history_length = one
                        .parse()
                        .map_err(|_| format!("maxhistoryfetch {one:?} is not a number"))?
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// The form an owner is sent (§10.2).
    pub fn to_form(&self) -> Element {
        let mut x = form::form("form", FORM_TYPE);
        let fields: [(&str, &str, String, &[&str]); 13] = [
            (
                "muc#roomconfig_roomname",
                "text-single",
                self.name.clone(),
                &[],
            ),
            (
                "muc#roomconfig_roomdesc",
                "text-single",
                self.description.clone(),
                &[],
            ),
            (
                "muc#roomconfig_persistentroom",
                "boolean",
                b(self.persistent).into(),
                &[],
            ),
            (
                "muc#roomconfig_publicroom",
                "boolean",
                b(self.public).into(),
                &[],
            ),
            (
                "muc#roomconfig_membersonly",
                "boolean",
                b(self.members_only).into(),
                &[],
            ),
            (
                "muc#roomconfig_moderatedroom",
                "boolean",
                b(self.moderated).into(),
                &[],
            ),
            (
                "muc#roomconfig_passwordprotectedroom",
                "boolean",
                b(!self.password.is_empty()).into(),
                &[],
            ),
            (
                "muc#roomconfig_roomsecret",
                "text-private",
                self.password.clone(),
                &[],
            ),
            (
                "muc#roomconfig_whois",
                "list-single",
                match self.whois {
                    Whois::Anyone => "anyone".into(),
                    Whois::Moderators => "moderators".into(),
                },
                &["moderators", "anyone"],
            ),
            (
                "muc#roomconfig_maxusers",
                "text-single",
                self.max_users.to_string(),
                &[],
            ),
            (
                "muc#roomconfig_changesubject",
                "boolean",
                b(self.change_subject).into(),
                &[],
            ),
            (
                "muc#roomconfig_allowinvites",
                "boolean",
                b(self.allow_invites).into(),
                &[],
            ),
            (
                "muc#roomconfig_enablelogging",
                "boolean",
                b(self.archived).into(),
                &[],
            ),
        ];
        for (var, kind, value, options) in fields {
            x.push_child(form::field(var, kind, &value, options));
        }
        x.push_child(form::field(
            "muc#maxhistoryfetch",
            "text-single",
            &self.history_length.to_string(),
            &[],
        ));
        x
    }

    /// The room's disco#info features (XEP-0045 §15.6: what kind of room it is).
    pub fn features(&self) -> Vec<&'static str> {
        let mut f = vec![crate::NS_MUC];
        f.push(if self.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        });
        f.push(if self.public {
            "muc_public"
        } else {
            "muc_hidden"
        });
        f.push(if self.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        });
        f.push(if self.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        });
        f.push(if self.password.is_empty() {
            "muc_unsecured"
        } else {
            "muc_passwordprotected"
        });
        f.push(match self.whois {
            Whois::Anyone => "muc_nonanonymous",
            Whois::Moderators => "muc_semianonymous",
        });
        f
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_form_reads_back_what_it_shows() {
        let c = RoomConfig {
            name: "Council".into(),
            persistent: true,
            members_only: true,
            password: "pw".into(),
            whois: Whois::Anyone,
            max_users: 30,
            ..RoomConfig::default()
        };
        let mut shown = c.to_form();
        shown.set_attr("type", "submit");
        let parent = Element::new("query", "urn:q").with_child(shown);
        let f = Form::find(&parent).unwrap();
        assert_eq!(RoomConfig::default().with_form(&f).unwrap(), c);
        let bad = Element::parse(
            "<q xmlns='urn:q'><x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_whois'><value>everyone</value></field></x></q>",
        )
        .unwrap();
        assert!(
            RoomConfig::default()
                .with_form(&Form::find(&bad).unwrap())
                .is_err()
        );
        assert!(c.features().contains(&"muc_passwordprotected"));
        assert!(c.features().contains(&"muc_nonanonymous"));
    }
}
