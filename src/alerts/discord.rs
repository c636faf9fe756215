//! `DiscordClient`: plain REST with the bot token. Resolves channels (by id, or by name
//! across the bot's guilds), posts split messages with mentions disabled, honours 429s and
//! retries transient failures within a wait budget.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::split::{DISCORD_MESSAGE_LIMIT, split_message};
use super::{AlertError, Config};

/// Discord channel types that accept messages: GUILD_TEXT and GUILD_ANNOUNCEMENT.
const TEXT_CHANNEL_TYPES: [u64; 2] = [0, 5];
/// Largest page of `GET /users/@me/guilds`.
const GUILD_PAGE: usize = 200;
/// First backoff after a 5xx or timeout; doubled per retry, jittered, capped.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// The least a 429 waits: a `retry_after` of 0 (or one the body leaves out) would retry at
/// once and draw the next 429, which counts toward Cloudflare's invalid-request ban.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_millis(100);
/// What callers are told to wait after Discord could not be reached.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A Discord REST client, built once and shared.
pub struct DiscordClient {
    http: reqwest::Client,
    base_url: String,
    authorization: HeaderValue,
    /// Its wait budget and retries.
    wait_budget: Duration,
    max_retries: u32,
    /// Configured channel name or id → channel id.
    channels: Mutex<HashMap<String, String>>,
    /// Set by a global 429: no request leaves before this instant.
    paused_until: Mutex<Option<Instant>>,
    pacing: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for DiscordClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The error body Discord sends with a 4xx.
#[derive(Debug, Default, Deserialize)]
struct DiscordErrorBody {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// The body of a 429.
#[derive(Debug, Deserialize)]
struct RateLimitBody {
    retry_after: f64,
    #[serde(default)]
    global: bool,
}

#[derive(Debug, Deserialize)]
struct Guild {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Channel {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    kind: u64,
}

/// One failed attempt and whether another may follow.
enum Attempt {
    /// Wait this long, then retry (a 429).
    RateLimited(Duration),
    /// Retry after backoff (a 5xx or a transport failure).
    Transient(String),
}

impl DiscordClient {
    /// Builds the HTTP client once, with the configured timeouts.
    pub fn new(config: &Config) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!(
                "DiscordBot (https://github.com/Significant-Gravitas/AutoGPT, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
            .expect("a reqwest client with timeouts and rustls always builds");
        let mut authorization =
            HeaderValue::from_str(&format!("Bot {}", config.bot_token().unwrap_or_default()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bot invalid-token"));
        authorization.set_sensitive(true);
        let pacing = Quota::with_period(config.channel_interval).map(|quota| {
            let burst = NonZeroU32::new(config.channel_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(quota.allow_burst(burst))
        });
        DiscordClient {
            http,
            base_url: config.base_url().to_owned(),
            authorization,
            wait_budget: config.wait_budget,
            max_retries: config.max_retries,
            channels: Mutex::new(HashMap::new()),
            paused_until: Mutex::new(None),
            pacing,
        }
    }

    /// Posts `content` (split as needed) to the channel named or numbered `target`;
    /// returns the channel id and the message ids.
    pub async fn send(
        &self,
        target: &str,
        content: &str,
    ) -> Result<(String, Vec<String>), AlertError> {
        let parts = split_message(content, DISCORD_MESSAGE_LIMIT)?;
        let deadline = Instant::now() + self.wait_budget;
        let mut channel_id = self.resolve(target, deadline).await?;
        let mut message_ids = Vec::with_capacity(parts.len());
        let mut resolved_again = false;
        for part in &parts {
            loop {
                match self.post_message(&channel_id, &part.text, deadline).await {
                    Ok(id) => {
                        message_ids.push(id);
                        break;
                    }
                    // The cached channel is gone (deleted, or the bot was removed): look
                    // the name up once more, in case it now names another channel.
                    Err(AlertError::Refused { status: 404, .. }) if !resolved_again => {
                        self.forget(target);
                        resolved_again = true;
                        channel_id = self.resolve(target, deadline).await?;
                    }
                    Err(AlertError::Refused { status: 404, .. }) => {
                        self.forget(target);
                        return Err(AlertError::ChannelNotFound(target.to_owned()));
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok((channel_id, message_ids))
    }

    /// The channel id for a configured name or id, from the cache or from Discord.
    async fn resolve(&self, target: &str, deadline: Instant) -> Result<String, AlertError> {
        if let Some(id) = self.cached(target) {
            return Ok(id);
        }
        let id = if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
            self.check_channel_id(target, deadline).await?
        } else {
            self.find_by_name(target, deadline).await?
        };
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.to_owned(), id.clone());
        Ok(id)
    }

    fn cached(&self, target: &str) -> Option<String> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.get(target).cloned()
    }

    fn forget(&self, target: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.remove(target);
    }

    async fn check_channel_id(&self, id: &str, deadline: Instant) -> Result<String, AlertError> {
        let path = format!("/channels/{id}");
        let channel: Channel = match self.call(Method::GET, &path, None, deadline).await {
            Ok(value) => parse(value)?,
            Err(AlertError::Refused {
                status: 404 | 400, ..
            }) => return Err(AlertError::ChannelNotFound(id.to_owned())),
            Err(err) => return Err(err),
        };
        if TEXT_CHANNEL_TYPES.contains(&channel.kind) {
            Ok(channel.id)
        } else {
            Err(AlertError::NotTextChannel(id.to_owned()))
        }
    }

    /// The first text channel named exactly `name` in any of the bot's guilds.
    async fn find_by_name(&self, name: &str, deadline: Instant) -> Result<String, AlertError> {
        let mut after: Option<String> = None;
        let mut other_kind_seen = false;
        loop {
            let mut path = format!("/users/@me/guilds?limit={GUILD_PAGE}");
            if let Some(after) = &after {
                path.push_str(&format!("&after={after}"));
            }
            let guilds: Vec<Guild> = parse(self.call(Method::GET, &path, None, deadline).await?)?;
            for guild in &guilds {
                let path = format!("/guilds/{}/channels", guild.id);
                let channels: Vec<Channel> =
                    parse(self.call(Method::GET, &path, None, deadline).await?)?;
                for channel in channels {
                    if channel.name.as_deref() != Some(name) {
                        continue;
                    }
                    if TEXT_CHANNEL_TYPES.contains(&channel.kind) {
                        return Ok(channel.id);
                    }
                    other_kind_seen = true;
                }
            }
            if guilds.len() < GUILD_PAGE {
                break;
            }
            after = guilds.last().map(|g| g.id.clone());
        }
        Err(if other_kind_seen {
            AlertError::NotTextChannel(name.to_owned())
        } else {
            AlertError::ChannelNotFound(name.to_owned())
        })
    }

    async fn post_message(
        &self,
        channel_id: &str,
        content: &str,
        deadline: Instant,
    ) -> Result<String, AlertError> {
        self.pace(channel_id, deadline).await?;
        // `parse: []`: an "@everyone" or a role mention in alert text pings no one.
        // The nonce, the same on every retry of this message, with `enforce_nonce`: a retry
        // of a POST that timed out after Discord took it returns that message instead of
        // posting it twice. Discord allows up to 25 characters.
        let nonce = format!("{:016x}", rand::rng().random::<u64>());
        let body = json!({
            "content": content,
            "allowed_mentions": { "parse": [] },
            "nonce": nonce,
            "enforce_nonce": true,
        });
        let path = format!("/channels/{channel_id}/messages");
        let message = self
            .call(Method::POST, &path, Some(&body), deadline)
            .await?;
        message
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| unexpected("a message without an id"))
    }

    /// Keeps each channel under Discord's per-channel limit instead of provoking 429s.
    async fn pace(&self, channel_id: &str, deadline: Instant) -> Result<(), AlertError> {
        let Some(pacing) = &self.pacing else {
            return Ok(());
        };
        let key = channel_id.to_owned();
        while let Err(not_until) = pacing.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait_within(wait, deadline).await?;
        }
        Ok(())
    }

    /// One request with retries: 429 waits `retry_after` (a global one pauses every
    /// request), 5xx and transport failures back off, other 4xx fail at once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, AlertError> {
        let mut failures = 0;
        loop {
            self.wait_for_global_pause(deadline).await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base_url))
                .header(AUTHORIZATION, self.authorization.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            let attempt = match request.send().await {
                Ok(response) => match self.read(response).await? {
                    Ok(value) => return Ok(value),
                    Err(attempt) => attempt,
                },
                Err(err) => Attempt::Transient(transport_reason(err)),
            };
            match attempt {
                Attempt::RateLimited(retry_after) => {
                    tracing::info!(retry_after = ?retry_after, "Discord rate limit; waiting");
                    if Instant::now() + retry_after > deadline {
                        return Err(AlertError::RateLimited { retry_after });
                    }
                    tokio::time::sleep(retry_after).await;
                }
                Attempt::Transient(reason) => {
                    failures += 1;
                    tracing::info!(attempt = failures, reason = %reason, "Discord request failed");
                    if failures > self.max_retries {
                        return Err(unavailable(reason));
                    }
                    let backoff = backoff(failures);
                    if Instant::now() + backoff > deadline {
                        return Err(unavailable(reason));
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// A response as a final value (`Ok(Ok)`), a final error (`Err`), or a retry.
    async fn read(&self, response: Response) -> Result<Result<Value, Attempt>, AlertError> {
        let status = response.status();
        if status.is_success() {
            return match response.json::<Value>().await {
                Ok(value) => Ok(Ok(value)),
                Err(err) => Ok(Err(Attempt::Transient(transport_reason(err)))),
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let header_wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            let limit = response.json::<RateLimitBody>().await.ok();
            let seconds = limit
                .as_ref()
                .map(|l| l.retry_after)
                .or(header_wait)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(1.0);
            let retry_after = Duration::from_secs_f64(seconds.min(3600.0)).max(MIN_RATE_LIMIT_WAIT);
            if limit.is_some_and(|l| l.global) {
                self.pause_all(retry_after);
            }
            return Ok(Err(Attempt::RateLimited(retry_after)));
        }
        if status.is_server_error() {
            return Ok(Err(Attempt::Transient(format!(
                "Discord answered {status}"
            ))));
        }
        let error = response
            .json::<DiscordErrorBody>()
            .await
            .unwrap_or_default();
        Err(AlertError::Refused {
            status: status.as_u16(),
            code: error.code,
            message: error
                .message
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
        })
    }

    fn pause_all(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    async fn wait_for_global_pause(&self, deadline: Instant) -> Result<(), AlertError> {
        let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        match until {
            Some(until) => {
                wait_within(until.saturating_duration_since(Instant::now()), deadline).await
            }
            None => Ok(()),
        }
    }
}

/// Sleeps `wait` unless that would pass `deadline`, which is a rate-limit failure.
async fn wait_within(wait: Duration, deadline: Instant) -> Result<(), AlertError> {
    if wait.is_zero() {
        return Ok(());
    }
    if Instant::now() + wait > deadline {
        return Err(AlertError::RateLimited { retry_after: wait });
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Exponential, capped, with full jitter over its upper half.
fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(8));
    let ceiling = exponential.min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// A reqwest error as text, with the URL removed.
fn transport_reason(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_decode() {
        "unreadable response"
    } else {
        "request failed"
    };
    format!("{kind}: {}", err.without_url())
}

fn unavailable(reason: String) -> AlertError {
    AlertError::Unavailable {
        reason,
        retry_after: UNAVAILABLE_RETRY_AFTER,
    }
}

fn unexpected(what: &str) -> AlertError {
    unavailable(format!("Discord sent {what}"))
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, AlertError> {
    serde_json::from_value(value).map_err(|_| unexpected("an unexpected response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let first: Vec<_> = (0..50).map(|_| backoff(1)).collect();
        let late: Vec<_> = (0..50).map(|_| backoff(20)).collect();

        assert!(
            first
                .iter()
                .all(|d| *d >= BACKOFF_BASE / 2 && *d <= BACKOFF_BASE)
        );
        assert!(
            late.iter()
                .all(|d| *d >= BACKOFF_CAP / 2 && *d <= BACKOFF_CAP)
        );
        assert!(first.iter().any(|d| *d != first[0]));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let config = Config::new("very-secret-token", "http://127.0.0.1:9");

        let client = DiscordClient::new(&config);

        assert!(!format!("{client:?} {config:?}").contains("very-secret-token"));
    }
}
