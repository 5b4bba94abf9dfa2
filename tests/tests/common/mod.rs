//! tokio-xmpp plumbing shared by the integration tests: a connector that trusts the test CA.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use openspimed_tests::{TestServer, WAIT};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sasl::common::ChannelBinding;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::xmlstream::{
    PendingFeaturesRecv, StreamHeader, Timeouts, XmppStreamElement, initiate_stream,
};
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

/// Connects tokio-xmpp to the test server, trusting the test CA (tokio-xmpp itself only
/// trusts the system roots), and reports `tls-exporter` channel binding like tokio-xmpp.
#[derive(Clone, Debug)]
pub struct TestConnector {
    addr: SocketAddr,
    direct: bool,
    tls: Arc<ClientConfig>,
    /// Whether to offer `tls-exporter` to the SASL layer. tokio-xmpp then tries only the
    /// `-PLUS` mechanisms, so plain SCRAM is tested as a client without channel binding.
    channel_binding: bool,
}

impl ServerConnector for TestConnector {
    type Stream = BufStream<TlsStream<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), tokio_xmpp::Error> {
        let domain = jid.domain().as_str().to_owned();
        let header = || StreamHeader {
            to: Some(Cow::Owned(domain.clone())),
            from: None,
            id: None,
        };
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(tokio_xmpp::Error::Io)?;
        let tcp = if self.direct {
            tcp
        } else {
            let pending = initiate_stream(BufStream::new(tcp), ns, header(), timeouts).await?;
            let (features, mut stream) = pending.recv_features::<XmppStreamElement>().await?;
            assert!(features.can_starttls(), "server must offer STARTTLS");
            stream
                .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                    starttls::Request,
                )))
                .await?;
            loop {
                match stream.next().await {
                    Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                    Some(Ok(_)) => continue,
                    _ => return Err(tokio_xmpp::Error::Disconnected),
                }
            }
            stream.into_inner().into_inner()
        };
        let name = ServerName::try_from(domain.clone()).map_err(|e| {
            tokio_xmpp::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(tokio_xmpp::Error::Io)?;
        let cb = {
            let (_, conn) = tls.get_ref();
            match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) if self.channel_binding => conn
                    .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .map(ChannelBinding::TlsExporter)
                    .unwrap_or(ChannelBinding::None),
                _ => ChannelBinding::None,
            }
        };
        let pending = initiate_stream(BufStream::new(tls), ns, header(), timeouts).await?;
        Ok((pending, cb))
    }
}

pub async fn online(server: &TestServer, jid: &str, password: &str, direct: bool) -> (Client, Jid) {
    online_cb(server, jid, password, direct, true).await
}

pub async fn online_cb(
    server: &TestServer,
    jid: &str,
    password: &str,
    direct: bool,
    channel_binding: bool,
) -> (Client, Jid) {
    let addr = if direct { server.direct } else { server.c2s };
    online_at(server, addr, jid, password, direct, channel_binding).await
}

/// Online through `addr` (e.g. a [`openspimed_tests::CutProxy`] in front of the server); the
/// client reconnects there, and resumes with XEP-0198, when the connection drops.
pub async fn online_at(
    server: &TestServer,
    addr: SocketAddr,
    jid: &str,
    password: &str,
    direct: bool,
    channel_binding: bool,
) -> (Client, Jid) {
    let connector = TestConnector {
        addr,
        direct,
        tls: server.tls_config(direct.then_some(b"xmpp-client".as_slice())),
        channel_binding,
    };
    let jid: Jid = match FullJid::new(jid) {
        Ok(f) => f.into(),
        Err(_) => BareJid::new(jid).expect("jid").into(),
    };
    let mut client = Client::new_with_connector(jid, password, connector, Timeouts::tight());
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("online in time")
        {
            Some(Event::Online { bound_jid, .. }) => return (client, bound_jid),
            Some(Event::Disconnected(e)) => panic!("login failed: {e}"),
            Some(Event::Stanza(_)) => continue,
            None => panic!("client ended"),
        }
    }
}

pub async fn ping_server(client: &mut Client) {
    let ping = Element::builder("ping", "urn:xmpp:ping").build();
    let to = Jid::new("localhost").unwrap();
    let resp = tokio::time::timeout(WAIT, client.send_iq(Some(to), IqRequest::Get(ping)).await)
        .await
        .expect("pong in time")
        .expect("iq answered");
    assert!(matches!(resp, IqResponse::Result(_)), "{resp:?}");
}

pub async fn next_message(client: &mut Client) -> Message {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("message in time")
        {
            Some(Event::Stanza(Stanza::Message(m))) => return m,
            Some(Event::Stanza(_)) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Sends an iq and returns the answer, converting between openspimed's element tree and
/// tokio-xmpp's (minidom) through their XML text.
pub async fn iq(
    client: &mut Client,
    to: &str,
    get: bool,
    payload: &openspimed_module_api::Element,
) -> Result<Option<openspimed_module_api::Element>, tokio_xmpp::parsers::stanza_error::StanzaError>
{
    let el: Element = payload.to_string().parse().expect("minidom parses our XML");
    let req = if get {
        IqRequest::Get(el)
    } else {
        IqRequest::Set(el)
    };
    let resp = tokio::time::timeout(WAIT, client.send_iq(Some(Jid::new(to).unwrap()), req).await)
        .await
        .expect("answer in time")
        .expect("iq answered");
    match resp {
        IqResponse::Result(None) => Ok(None),
        IqResponse::Result(Some(el)) => {
            let text = String::from(&el);
            Ok(Some(
                openspimed_module_api::Element::parse(&text).expect("our parser reads it"),
            ))
        }
        IqResponse::Error(e) => Err(e),
    }
}

/// A key of the OpenSpime test vectors (`sender`, `recipient`, …).
pub fn vector_key(who: &str) -> openspime::RsaPrivateKey {
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../../modules/openspime/tests/data/openspime-0.9.json"
    ))
    .unwrap();
    openspime::crypto::private_key_from_pem(v["keys"][who]["private_pem_pkcs1"].as_str().unwrap())
        .unwrap()
}

/// A report with one entry of the seed's CO2 fields.
pub fn co2_report(ppm: &str) -> openspimed_module_api::Element {
    let f = |name: &str, value: &str| openspime::Field {
        name: name.into(),
        value: value.into(),
        attrs: if name == "ele" {
            vec![("unit".into(), "m".into())]
        } else {
            vec![]
        },
    };
    openspime::Data {
        entries: vec![openspime::Entry {
            fields: vec![
                f("date", "2008-04-02T17:54:22+01:00"),
                f("exposure", "outdoor"),
                f("lat", "45.475841199050905"),
                f("lon", "9.172725677490234"),
                f("ele", "120.0"),
                f("ppm", ppm),
            ],
        }],
    }
    .to_element()
}

/// Runs a XEP-0313 query at `to` (`None`: the user's own archive) and returns the results
/// that came before the answer, parsed by xmpp-parsers (strict about their shape), and the
/// `<fin/>` or the error.
pub async fn mam_query(
    client: &mut Client,
    to: Option<&str>,
    query: tokio_xmpp::parsers::mam::Query,
) -> (
    Vec<tokio_xmpp::parsers::mam::Result_>,
    Result<tokio_xmpp::parsers::mam::Fin, tokio_xmpp::parsers::stanza_error::StanzaError>,
) {
    use tokio_xmpp::parsers::mam;
    let to = to.map(|t| Jid::new(t).unwrap());
    let token = client.send_iq(to, IqRequest::Set(query.into())).await;
    let answer = tokio::time::timeout(WAIT, token)
        .await
        .expect("answer in time")
        .expect("iq answered");
    let fin = match answer {
        IqResponse::Result(Some(el)) => Ok(mam::Fin::try_from(el).expect("a <fin/>")),
        IqResponse::Result(None) => panic!("a query's answer holds a <fin/>"),
        IqResponse::Error(e) => Err(e),
    };
    // The results were written before the answer: they are in the client's queue now.
    let mut results = Vec::new();
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), client.next()).await
    {
        if let Event::Stanza(Stanza::Message(m)) = ev {
            for p in m.payloads {
                if p.is("result", tokio_xmpp::parsers::ns::MAM) {
                    results.push(mam::Result_::try_from(p).expect("a well-formed <result/>"));
                }
            }
        }
    }
    (results, fin)
}

/// A XEP-0313 query with these form fields (`(var, values)`) and paging.
pub fn mam_form(
    queryid: &str,
    fields: &[(&str, &[&str])],
    set: Option<tokio_xmpp::parsers::rsm::SetQuery>,
) -> tokio_xmpp::parsers::mam::Query {
    use tokio_xmpp::parsers::data_forms::{DataForm, DataFormType, Field};
    let form = (!fields.is_empty()).then(|| {
        let mut f = DataForm::new(
            DataFormType::Submit,
            tokio_xmpp::parsers::ns::MAM,
            Vec::new(),
        );
        for (var, values) in fields {
            use tokio_xmpp::parsers::data_forms::FieldType;
            let kind = match *var {
                "ids" => FieldType::TextMulti,
                "with" => FieldType::JidSingle,
                _ => FieldType::TextSingle,
            };
            let mut field = Field::new(var, kind);
            field.values = values.iter().map(|v| (*v).to_owned()).collect();
            f.fields.push(field);
        }
        f
    });
    tokio_xmpp::parsers::mam::Query {
        queryid: Some(tokio_xmpp::parsers::mam::QueryId(queryid.to_owned())),
        node: None,
        form,
        set,
        flip_page: false,
    }
}
