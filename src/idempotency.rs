//! `Idempotency-Key` on the analytics endpoints: a replay of a request by the same user
//! answers the first request's id and stores nothing new; the same key with another body
//! is a 422. The store decides races (see `store::IdempotencyClaim`); this module reads
//! the header, hashes the validated body and says what happened ([`Keyed`]); the route
//! turns that into an answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_with::{DurationSeconds, serde_as};

use crate::clock::Clock;
use crate::domain::{FieldError, NewAnalyticsEvent, NewMetric, sorted_json};
use crate::store::{EventRow, IdempotencyClaim, IdempotentInsert, MetricRow, Store, StoreError};

/// The request header that carries the key.
pub const HEADER: &str = "idempotency-key";
/// Longest accepted key, in bytes (as Stripe's).
pub const MAX_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header as the request carried it; never rejects, so the
/// handler decides when a bad key is reported (after auth, as any other 422).
#[derive(Debug, Clone, Default)]
pub struct IdempotencyHeader(Option<Result<String, String>>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(IdempotencyHeader(parts.headers.get(HEADER).map(|value| {
            let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let key = raw.trim();
            let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
            if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
                Err(raw)
            } else {
                Ok(key.to_owned())
            }
        })))
    }
}

impl IdempotencyHeader {
    /// The key, `Ok(None)` without the header, `Err` with the field error of a malformed key.
    pub fn key(&self) -> Result<Option<&str>, FieldError> {
        match &self.0 {
            None => Ok(None),
            Some(Err(raw)) => Err(invalid_key(raw)),
            Some(Ok(key)) => Ok(Some(key)),
        }
    }

    /// The claim for the body's hash (see [`key`](Self::key)). The hash is computed only
    /// when there is a key: most requests carry none.
    fn claim(
        &self,
        body_hash: impl FnOnce() -> String,
        expired_before: NaiveDateTime,
    ) -> Result<Option<IdempotencyClaim>, FieldError> {
        Ok(self.key()?.map(|key| IdempotencyClaim {
            key: key.to_owned(),
            body_hash: body_hash(),
            expired_before,
        }))
    }
}

/// `[idempotency]` settings.
#[serde_as]
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Config {
    /// A key older than this is forgotten: the same key then stores a new row.
    #[serde_as(as = "DurationSeconds<u64>")]
    #[serde(rename = "retention_secs")]
    pub retention: Duration,
}

impl Config {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention.is_zero() {
            return Err("idempotency.retention_secs must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// What a request's `Idempotency-Key` came to.
#[derive(Debug)]
pub enum Keyed {
    /// No key: the caller stores the row the usual way.
    NoKey,
    /// The row was stored under the key; its id.
    Stored(String),
    /// The key was used before with the same body: the first request's id, nothing stored.
    Replayed(String),
    /// The key is malformed (a 422 at the header).
    Invalid(FieldError),
    /// The key was used before with another body (a 422 at the header).
    Conflict(FieldError),
}

/// How long keys live, and the clock that says when they were made.
#[derive(Clone)]
pub struct Idempotency {
    retention: Duration,
    clock: Arc<dyn Clock>,
}

impl Idempotency {
    /// Keys kept for `config.retention`, aged by `clock`.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        Idempotency {
            retention: config.retention,
            clock,
        }
    }

    fn expired_before(&self, now: DateTime<Utc>) -> NaiveDateTime {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        now.checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .naive_utc()
            .trunc_subsecs(3)
    }

    /// Stores the metric under the request's key, or finds the first request's id.
    pub async fn store_metric(
        &self,
        store: &dyn Store,
        header: &IdempotencyHeader,
        row: &MetricRow,
    ) -> Result<Keyed, StoreError> {
        let hash = || metric_hash(&row.metric);
        let insert =
            async |claim: &IdempotencyClaim| store.insert_metric_idempotent(row, claim).await;
        self.store_keyed(header, row.id, hash, insert).await
    }

    /// As `store_metric`, for an analytics event.
    pub async fn store_event(
        &self,
        store: &dyn Store,
        header: &IdempotencyHeader,
        row: &EventRow,
    ) -> Result<Keyed, StoreError> {
        let hash = || event_hash(&row.event);
        let insert =
            async |claim: &IdempotencyClaim| store.insert_event_idempotent(row, claim).await;
        self.store_keyed(header, row.id, hash, insert).await
    }

    /// Claims the request's key for the body's hash and inserts the row under it (`new_id`);
    /// the hash is computed only when there is a key (most requests carry none).
    async fn store_keyed(
        &self,
        header: &IdempotencyHeader,
        new_id: uuid::Uuid,
        hash: impl FnOnce() -> String,
        insert: impl AsyncFnOnce(&IdempotencyClaim) -> Result<IdempotentInsert, StoreError>,
    ) -> Result<Keyed, StoreError> {
        let claim = match header.claim(hash, self.expired_before(self.clock.now())) {
            Ok(Some(claim)) => claim,
            Ok(None) => return Ok(Keyed::NoKey),
            Err(invalid) => return Ok(Keyed::Invalid(invalid)),
        };
        let outcome = insert(&claim).await?;
        Ok(keyed(outcome, new_id.to_string(), &claim))
    }

    /// Deletes expired keys now and then until the task is aborted.
    pub fn spawn_pruner(&self, store: Arc<dyn Store>) -> JoinHandle<()> {
        let this = self.clone();
        let every = (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store
                    .prune_idempotency_keys(this.expired_before(this.clock.now()))
                    .await
                {
                    Ok(0) => {}
                    Ok(pruned) => tracing::debug!(pruned, "expired idempotency keys deleted"),
                    Err(err) => tracing::warn!(error = ?err, "pruning idempotency keys failed"),
                }
            }
        })
    }
}

fn keyed(outcome: IdempotentInsert, new_id: String, claim: &IdempotencyClaim) -> Keyed {
    match outcome {
        IdempotentInsert::Stored => Keyed::Stored(new_id),
        IdempotentInsert::Replayed { row_id } => {
            tracing::debug!("idempotent replay answered with the first request's id");
            Keyed::Replayed(row_id)
        }
        IdempotentInsert::Conflict => Keyed::Conflict(conflict(&claim.key)),
    }
}

/// What a key already claimed means for a request: the first request's id when the bodies
/// match, else a conflict (a 422 at the header). Stream mode's bucket decides with this too.
pub fn replay_or_conflict(key: &str, body_hash: &str, claimed: (String, String)) -> Keyed {
    let (claimed_hash, row_id) = claimed;
    if claimed_hash == body_hash {
        tracing::debug!("idempotent replay answered with the first request's id");
        Keyed::Replayed(row_id)
    } else {
        Keyed::Conflict(conflict(key))
    }
}

fn header_error(kind: &'static str, msg: &str, input: &str) -> FieldError {
    FieldError {
        kind,
        loc: vec!["header".into(), "Idempotency-Key".into()],
        msg: msg.to_owned(),
        input: Value::String(input.to_owned()).into(),
        ctx: None,
    }
}

fn invalid_key(raw: &str) -> FieldError {
    let mut error = header_error(
        "idempotency_key_invalid",
        "Idempotency-Key must be 1 to 255 printable ASCII characters",
        raw,
    );
    error.ctx = Some(json!({ "max_length": MAX_KEY_LEN }));
    error
}

fn conflict(key: &str) -> FieldError {
    header_error(
        "idempotency_key_conflict",
        "This Idempotency-Key was already used with a different request body; \
         use a new key for a new request",
        key,
    )
}

/// SHA-256 of the validated metric, so a replay that differs only in spelling (key order,
/// `"2.5"` for `2.5`, unknown keys) is still the same request.
pub fn metric_hash(metric: &NewMetric) -> String {
    // Fields in sorted order, as the hash has always read them.
    #[derive(Serialize)]
    struct Hashed<'a> {
        data_string: &'a str,
        metric_name: &'a str,
        metric_value: f64,
    }
    hash(&Hashed {
        data_string: &metric.data_string,
        metric_name: &metric.metric_name,
        metric_value: metric.metric_value,
    })
}

/// SHA-256 of the validated event (see `metric_hash`): `data` with every object's keys
/// sorted, written without a tree (a `Value` of a dense `data` is ~40× its text).
pub fn event_hash(event: &NewAnalyticsEvent) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        data: &'a RawValue,
        data_index: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
    }
    let data = RawValue::from_string(sorted_json(&event.data_json)).expect("stored data is JSON");
    hash(&Hashed {
        data: &data,
        data_index: &event.data_index,
        event_type: &event.event_type,
    })
}

fn hash(fields: &impl Serialize) -> String {
    let mut digest = Sha256::new();
    serde_json::to_writer(DigestWriter(&mut digest), fields).expect("the fields serialize");
    format!("{:x}", digest.finalize())
}

/// Feeds what is written to the digest, so the hashed text is never held whole.
struct DigestWriter<'d>(&'d mut Sha256);

impl std::io::Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    /// The hashes as they were computed before (claims stored by an older build must
    /// still match): the fields as a `Value`, every object's keys sorted.
    fn tree_hash(value: &Value) -> String {
        fn sorted(value: &Value) -> Value {
            match value {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    let mut out = Map::new();
                    for key in keys {
                        out.insert(key.clone(), sorted(&map[key.as_str()]));
                    }
                    Value::Object(out)
                }
                Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
                other => other.clone(),
            }
        }
        let bytes = serde_json::to_vec(&sorted(value)).unwrap();
        format!("{:x}", Sha256::digest(bytes))
    }

    fn data_text() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-cé\"\\\\\u{1}\u{7f} ]{0,4}".prop_map(Value::from),
            Just(Value::Null),
            Just(Value::Bool(true)),
        ];
        let nested = leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::vec(("[a-c\"\\\\é\u{1}]{0,3}", inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        });
        prop::collection::vec(("[a-cZ_\"\\\\é\u{1}]{0,3}", nested), 0..6)
            .prop_map(|fields| Value::Object(fields.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn the_hashes_are_those_a_tree_gave(data in data_text(), name in ".{1,4}", value in 0.0..1e20f64) {
            let event = NewAnalyticsEvent::parse(&json!({"type": name, "data": data, "data_index": "i"})).unwrap();
            let stored: Value = serde_json::from_str(&event.data_json).unwrap();
            prop_assert_eq!(
                event_hash(&event),
                tree_hash(&json!({"type": event.event_type, "data": stored, "data_index": event.data_index}))
            );
            let metric = NewMetric::parse(&json!({"metric_name": name, "metric_value": value, "data_string": "d"})).unwrap();
            prop_assert_eq!(
                metric_hash(&metric),
                tree_hash(&json!({"metric_name": metric.metric_name, "metric_value": metric.metric_value, "data_string": metric.data_string}))
            );
        }
    }

    fn event(data: Value) -> NewAnalyticsEvent {
        NewAnalyticsEvent::parse(&json!({"type": "t", "data": data, "data_index": "i"})).unwrap()
    }

    #[test]
    fn the_body_hash_ignores_key_order_but_not_values() {
        let a = event(json!({"x": 1, "y": {"b": 2, "a": [1, {"d": 0, "c": 1}]}}));
        let b = event(json!({"y": {"a": [1, {"c": 1, "d": 0}], "b": 2}, "x": 1}));
        let c = event(json!({"x": 1, "y": {"b": 3, "a": [1, {"d": 0, "c": 1}]}}));

        assert_eq!(event_hash(&a), event_hash(&b));
        assert_ne!(event_hash(&a), event_hash(&c));
    }

    #[test]
    fn a_numeric_string_hashes_as_its_number() {
        let parse = |v: Value| {
            NewMetric::parse(&json!({"metric_name": "m", "metric_value": v, "data_string": "d"}))
                .unwrap()
        };

        assert_eq!(
            metric_hash(&parse(json!("2.5"))),
            metric_hash(&parse(json!(2.5)))
        );
        assert_ne!(
            metric_hash(&parse(json!(2.5))),
            metric_hash(&parse(json!(2.6)))
        );
    }
}
