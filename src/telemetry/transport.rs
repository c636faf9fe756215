//! The transport in front of Sentry's own: scrubs transactions on their way out. Events,
//! logs and breadcrumbs have `before_send*` hooks; sentry 0.49 has none for transactions,
//! whose request (URL with its query string, headers) and spans would otherwise leave as
//! captured.

use std::sync::Arc;
use std::time::Duration;

use sentry::protocol::EnvelopeItem;
use sentry::{Envelope, Transport, TransportFactory, TransportOptions};

use super::scrub::Scrubber;

/// Builds the real transport (`inner`) wrapped in the scrubbing one.
pub struct ScrubbingTransportFactory {
    inner: Arc<dyn TransportFactory>,
    scrubber: Arc<Scrubber>,
}

impl ScrubbingTransportFactory {
    /// Scrubs with `scrubber`, then sends through what `inner` builds.
    pub fn new(inner: Arc<dyn TransportFactory>, scrubber: Arc<Scrubber>) -> Self {
        ScrubbingTransportFactory { inner, scrubber }
    }
}

impl TransportFactory for ScrubbingTransportFactory {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        Arc::new(ScrubbingTransport {
            inner: self.inner.create_transport_with_options(options),
            scrubber: self.scrubber.clone(),
        })
    }
}

struct ScrubbingTransport {
    inner: Arc<dyn Transport>,
    scrubber: Arc<Scrubber>,
}

impl Transport for ScrubbingTransport {
    fn send_envelope(&self, envelope: Envelope) {
        if let Some(envelope) = scrub_transactions(&self.scrubber, envelope) {
            self.inner.send_envelope(envelope);
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.inner.flush(timeout)
    }

    fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.shutdown(timeout)
    }
}

/// The envelope with its transactions scrubbed (one that cannot be is left out); `None`
/// when nothing is left to send.
fn scrub_transactions(scrubber: &Scrubber, envelope: Envelope) -> Option<Envelope> {
    let has_transaction = envelope
        .items()
        .any(|item| matches!(item, EnvelopeItem::Transaction(_)));
    if !has_transaction {
        return Some(envelope);
    }
    let mut scrubbed = Envelope::new().with_headers(envelope.headers().clone());
    for item in envelope.into_items() {
        match item {
            EnvelopeItem::Transaction(transaction) => {
                if let Some(transaction) = scrubber.transaction(*transaction) {
                    scrubbed.add_item(transaction);
                }
            }
            other => scrubbed.add_item(other),
        }
    }
    scrubbed.items().next().is_some().then_some(scrubbed)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use sentry::protocol::Request;
    use sentry::test::TestTransport;
    use sentry::{Hub, TransactionContext};

    use super::*;
    use crate::telemetry::{Config, client_options};

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz";

    /// The envelopes a client with our options sends, scrubbed by our transport in front
    /// of the test transport.
    fn sent_by(f: impl FnOnce()) -> Vec<Envelope> {
        let mut config = Config::for_tests();
        config.sentry.dsn = SecretString::from("https://public@sentry.invalid/1".to_owned());
        let mut options = client_options(&config, Scrubber::default()).expect("a DSN is set");
        let captured = TestTransport::new();
        let scrubber = Arc::new(Scrubber::default());
        options.transport = Some(Arc::new(ScrubbingTransportFactory::new(
            Arc::new(captured.clone()),
            scrubber,
        )));
        let hub = Arc::new(Hub::new(Some(Arc::new(options.into())), Arc::default()));
        Hub::run(hub, f);
        captured.fetch_and_clear_envelopes()
    }

    #[test]
    fn a_transactions_query_string_and_credentials_never_leave() {
        let envelopes = sent_by(|| {
            let ctx = TransactionContext::new("POST /api/analytics/log_raw_metric", "http.server");
            let transaction = sentry::start_transaction(ctx);
            transaction.set_request(Request {
                url: Some(
                    format!("http://api.local/api/analytics/log_raw_metric?token={JWT}&x=1")
                        .parse()
                        .unwrap(),
                ),
                query_string: Some(format!("token={JWT}")),
                headers: [("x-forwarded-token".to_owned(), format!("Bearer {JWT}"))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            });
            transaction.set_tag("note", format!("seen {JWT}"));
            transaction.finish();
        });

        let transactions: Vec<_> = envelopes
            .iter()
            .flat_map(|e| e.items())
            .filter_map(|item| match item {
                EnvelopeItem::Transaction(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(transactions.len(), 1);
        let sent = serde_json::to_string(&transactions[0]).unwrap();
        assert!(!sent.contains(JWT), "{sent}");
        let request = transactions[0].request.as_ref().unwrap();
        assert_eq!(
            request.url.as_ref().map(|u| u.as_str()),
            Some("http://api.local/api/analytics/log_raw_metric")
        );
        assert_eq!(
            transactions[0].name.as_deref(),
            Some("POST /api/analytics/log_raw_metric")
        );
    }
}
