//! Discord alerts: the platform and product channels, one REST client, flood control.
//!
//! `Alerter` is what the service holds (in the router's state). Nothing here knows about
//! HTTP requests to this service.

mod config;
mod discord;
mod flood;
mod shared;
pub mod split;
mod storage_watch;

use std::time::Duration;

use serde::Deserialize;

pub use config::Config;
pub use discord::DiscordClient;
pub use flood::{Admission, FloodGate};
pub use shared::{ALERT_BUCKET, SharedDedupe};
pub use split::{DISCORD_MESSAGE_LIMIT, Part, SplitError, split_message};
pub use storage_watch::StorageWatch;

/// Which alert channel, as the original's `DiscordChannel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscordChannel {
    /// `PLATFORM_ALERT_DISCORD_CHANNEL`: operations alerts.
    Platform,
    /// `PRODUCT_ALERT_DISCORD_CHANNEL`: product notices.
    Product,
}

impl DiscordChannel {
    /// The name used in requests and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscordChannel::Platform => "platform",
            DiscordChannel::Product => "product",
        }
    }

    /// `platform` or `product`; anything else is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "platform" => Some(DiscordChannel::Platform),
            "product" => Some(DiscordChannel::Product),
            _ => None,
        }
    }
}

/// What happened to an alert that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// Posted: the channel and every message id, in order.
    Sent {
        /// The Discord channel id the messages went to.
        channel_id: String,
        /// One id per message (long content is split).
        message_ids: Vec<String>,
    },
    /// The same alert went out within the dedupe window; this one was counted, not sent.
    Suppressed,
}

/// Why an alert was not delivered. Display texts are the contract's `status` strings;
/// none of them contains the bot token or a URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    /// No bot token is configured.
    #[error("Discord alerts are not configured")]
    NotConfigured,
    /// Empty or blank content.
    #[error("Message content is empty")]
    EmptyContent,
    /// No channel with that id, and no text channel with that name in the bot's guilds.
    #[error("Channel not found: {0}")]
    ChannelNotFound(String),
    /// The channel exists but is not a text or announcement channel.
    #[error("Channel {0} cannot receive messages (not a text channel)")]
    NotTextChannel(String),
    /// Discord refused the request (a 4xx other than 429); not retried.
    #[error("Error: {message}")]
    Refused {
        /// The HTTP status Discord answered.
        status: u16,
        /// Discord's JSON error code, when it sent one.
        code: Option<i64>,
        /// Discord's message.
        message: String,
    },
    /// Discord kept rate-limiting past the wait budget.
    #[error("Discord is rate limiting alerts; retry later")]
    RateLimited {
        /// How long Discord asked us to wait.
        retry_after: Duration,
    },
    /// Discord did not answer usefully (timeouts, connection errors, 5xx) within the retries.
    #[error("Discord is unreachable: {reason}")]
    Unavailable {
        /// What went wrong, without URLs.
        reason: String,
        /// A sensible wait before trying again.
        retry_after: Duration,
    },
}

impl From<SplitError> for AlertError {
    fn from(err: SplitError) -> Self {
        match err {
            SplitError::Empty => AlertError::EmptyContent,
        }
    }
}

/// The service's alert sender: channel names, the client, flood control, storage watch.
#[derive(Debug)]
pub struct Alerter {
    client: DiscordClient,
    platform_channel: String,
    product_channel: String,
    flood: FloodGate,
    /// Stream mode: the dedupe window holds across replicas.
    shared: Option<SharedDedupe>,
    storage: StorageWatch,
}

impl Alerter {
    /// An alerter for a validated config, or `None` when no bot token is set (alerts off).
    pub fn new(config: &Config) -> Option<Self> {
        config.bot_token()?;
        Some(Alerter {
            client: DiscordClient::new(config),
            platform_channel: config.platform_channel.trim().to_owned(),
            product_channel: config.product_channel.trim().to_owned(),
            flood: FloodGate::new(config.dedupe_window),
            shared: None,
            storage: StorageWatch::new(config.storage_alert_after, config.dedupe_window),
        })
    }

    /// Shares the dedupe window with the other replicas through `shared`.
    pub fn with_shared_dedupe(self, shared: SharedDedupe) -> Self {
        Alerter {
            shared: Some(shared),
            ..self
        }
    }

    /// The configured channel name or id behind `channel`.
    pub fn target(&self, channel: DiscordChannel) -> &str {
        match channel {
            DiscordChannel::Platform => &self.platform_channel,
            DiscordChannel::Product => &self.product_channel,
        }
    }

    /// Tracks storage health; see [`StorageWatch`].
    pub fn storage_watch(&self) -> &StorageWatch {
        &self.storage
    }

    /// Sends `content` to `channel` unless the same alert went out within the window.
    pub async fn send(&self, channel: DiscordChannel, content: &str) -> Result<Alert, AlertError> {
        let label = channel.as_str();
        if content.trim().is_empty() {
            return Err(AlertError::EmptyContent);
        }
        let (repeated, ticket) = loop {
            match self.flood.admit(channel, content) {
                Admission::Send { repeated, ticket } => break (repeated, ticket),
                Admission::Suppress => {
                    metrics::counter!("analytics_alerts_suppressed_total", "channel" => label)
                        .increment(1);
                    return Ok(Alert::Suppressed);
                }
                // The send it waits for is bounded by the client's wait budget.
                Admission::Wait(in_flight) => in_flight.settled().await,
            }
        };
        if let Some(shared) = &self.shared
            && !shared.claim(channel, content).await
        {
            // Another replica sent it within the window: remembered here as sent.
            self.flood.sent(channel, content, ticket);
            metrics::counter!("analytics_alerts_suppressed_total", "channel" => label).increment(1);
            return Ok(Alert::Suppressed);
        }
        let text = if repeated > 0 {
            format!("{content}\n(repeated ×{repeated})")
        } else {
            content.to_owned()
        };
        match self.client.send(self.target(channel), &text).await {
            Ok((channel_id, message_ids)) => {
                self.flood.sent(channel, content, ticket);
                metrics::counter!("analytics_alerts_sent_total", "channel" => label).increment(1);
                Ok(Alert::Sent {
                    channel_id,
                    message_ids,
                })
            }
            Err(err) => {
                if let Some(shared) = &self.shared {
                    shared.release(channel, content).await;
                }
                self.flood.failed(channel, content, repeated, ticket);
                metrics::counter!("analytics_alerts_failed_total", "channel" => label).increment(1);
                tracing::warn!(alert.channel = label, error = %err, "Discord alert not delivered");
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn config_for(discord: &MockServer) -> Config {
        Config {
            product_channel: "77".to_owned(),
            ..Config::new("unit-test-token", &discord.uri())
        }
    }

    #[test]
    fn alerts_are_off_without_a_bot_token() {
        assert!(Alerter::new(&Config::new("  ", "http://127.0.0.1:9")).is_none());
    }

    #[tokio::test]
    async fn an_alert_is_sent_once_within_the_dedupe_window() {
        let discord = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/channels/77"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "77", "type": 5})))
            .mount(&discord)
            .await;
        Mock::given(method("POST"))
            .and(path("/channels/77/messages"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "m9"})))
            .mount(&discord)
            .await;
        let alerter = Alerter::new(&config_for(&discord)).expect("a bot token is set");

        let outcome = alerter
            .send(DiscordChannel::Product, "low balance for user 42")
            .await;
        let again = alerter
            .send(DiscordChannel::Product, "low balance for user 42")
            .await;
        let blank = alerter.send(DiscordChannel::Product, " ").await;

        assert_eq!(
            outcome,
            Ok(Alert::Sent {
                channel_id: "77".to_owned(),
                message_ids: vec!["m9".to_owned()],
            })
        );
        assert_eq!(again, Ok(Alert::Suppressed));
        assert_eq!(blank, Err(AlertError::EmptyContent));
    }
}
