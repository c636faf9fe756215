//! How a row travels in a stream: JSON with the table's column names, made at capture and
//! read back by the loader exactly as it was (the event's `data` as its stored text).

use std::borrow::Cow;

use bytes::Bytes;
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{NewAnalyticsEvent, NewMetric, serialized_len};
use crate::store::{EventRow, MetricRow};

/// The two tables, each with a stream of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `"AnalyticsMetrics"`.
    Metrics,
    /// `"AnalyticsDetails"`.
    Details,
}

impl Table {
    /// Both tables.
    pub const ALL: [Table; 2] = [Table::Metrics, Table::Details];

    /// The database table, also the metrics' `table` label.
    pub fn name(self) -> &'static str {
        match self {
            Table::Metrics => "AnalyticsMetrics",
            Table::Details => "AnalyticsDetails",
        }
    }

    /// The JetStream stream that holds the table's rows until they are loaded.
    pub fn stream(self) -> &'static str {
        match self {
            Table::Metrics => "ANALYTICS_METRICS",
            Table::Details => "ANALYTICS_DETAILS",
        }
    }

    /// The subject rows are published on.
    pub fn subject(self) -> &'static str {
        match self {
            Table::Metrics => "analytics.metrics",
            Table::Details => "analytics.details",
        }
    }

    /// Where the rows the database refuses go, with the reason in a header.
    pub fn dead_letter_subject(self) -> &'static str {
        match self {
            Table::Metrics => "analytics.dead.metrics",
            Table::Details => "analytics.dead.details",
        }
    }
}

/// The stream that keeps dead letters (every table's) for an operator to read.
pub const DEAD_LETTER_STREAM: &str = "ANALYTICS_DEAD";
/// Its subjects.
pub const DEAD_LETTER_SUBJECTS: &str = "analytics.dead.>";

/// A row type that travels through a stream.
pub trait StreamRow: Sized + Send + Sync + 'static {
    /// Its table.
    const TABLE: Table;
    /// Its id, the message's `Nats-Msg-Id`.
    fn id(&self) -> Uuid;
    /// The message payload.
    fn encode(&self) -> Bytes;
    /// The row back from a payload; `Err` for a message that is not one of ours.
    fn decode(payload: &[u8]) -> Result<Self, serde_json::Error>;
    /// The same row under another id (an idempotent replay's).
    fn with_id(self, id: Uuid) -> Self;
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricMessage<'a> {
    id: Uuid,
    created_at: NaiveDateTime,
    user_id: Cow<'a, str>,
    analytic_metric: Cow<'a, str>,
    value: f64,
    data_string: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventMessage<'a> {
    id: Uuid,
    created_at: NaiveDateTime,
    user_id: Cow<'a, str>,
    #[serde(rename = "type")]
    event_type: Cow<'a, str>,
    /// The stored form of `data` (JSON text), as the direct path stores it.
    data: Cow<'a, str>,
    data_index: Cow<'a, str>,
}

/// The message's JSON, in a buffer of exactly its size: `data` is escaped again inside the
/// message (up to twice its size), and a growing buffer could hold twice that again.
fn to_bytes(message: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(serialized_len(message));
    serde_json::to_writer(&mut out, message).expect("a row always serializes");
    Bytes::from(out)
}

impl StreamRow for MetricRow {
    const TABLE: Table = Table::Metrics;

    fn id(&self) -> Uuid {
        self.id
    }

    fn with_id(self, id: Uuid) -> Self {
        Self { id, ..self }
    }

    fn encode(&self) -> Bytes {
        to_bytes(&MetricMessage {
            id: self.id,
            created_at: self.created_at,
            user_id: Cow::Borrowed(&self.user_id),
            analytic_metric: Cow::Borrowed(&self.metric.metric_name),
            value: self.metric.metric_value,
            data_string: Cow::Borrowed(&self.metric.data_string),
        })
    }

    fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        let m: MetricMessage = serde_json::from_slice(payload)?;
        Ok(MetricRow {
            id: m.id,
            created_at: m.created_at,
            user_id: m.user_id.into_owned(),
            metric: NewMetric {
                metric_name: m.analytic_metric.into_owned(),
                metric_value: m.value,
                data_string: m.data_string.into_owned(),
            },
        })
    }
}

impl StreamRow for EventRow {
    const TABLE: Table = Table::Details;

    fn id(&self) -> Uuid {
        self.id
    }

    fn with_id(self, id: Uuid) -> Self {
        Self { id, ..self }
    }

    fn encode(&self) -> Bytes {
        to_bytes(&EventMessage {
            id: self.id,
            created_at: self.created_at,
            user_id: Cow::Borrowed(&self.user_id),
            event_type: Cow::Borrowed(&self.event.event_type),
            data: Cow::Borrowed(&self.event.data_json),
            data_index: Cow::Borrowed(&self.event.data_index),
        })
    }

    fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        let m: EventMessage = serde_json::from_slice(payload)?;
        // `data` goes into a jsonb column: text that is not JSON would fail every insert.
        serde_json::from_str::<serde::de::IgnoredAny>(&m.data)?;
        Ok(EventRow {
            id: m.id,
            created_at: m.created_at,
            user_id: m.user_id.into_owned(),
            event: NewAnalyticsEvent {
                event_type: m.event_type.into_owned(),
                data_json: m.data.into_owned(),
                data_index: m.data_index.into_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    #[test]
    fn rows_come_back_as_they_were_sent() {
        let metric = NewMetric::parse(&json!({"metric_name": "m", "metric_value": 0.1,
            "data_string": "é\u{0}"}))
        .unwrap();
        let metric = MetricRow::new(now(), "u".to_owned(), metric);
        let event = NewAnalyticsEvent::parse(
            &json!({"type": "t", "data": {"b": 1e300, "a": [1, "x"]}, "data_index": "i"}),
        )
        .unwrap();
        let event = EventRow::new(now(), "u".to_owned(), event);

        let metric_back = MetricRow::decode(&metric.encode()).unwrap();
        let event_back = EventRow::decode(&event.encode()).unwrap();

        assert_eq!(format!("{metric_back:?}"), format!("{metric:?}"));
        assert_eq!(format!("{event_back:?}"), format!("{event:?}"));
    }

    #[test]
    fn a_message_that_is_not_a_row_is_refused() {
        let metric = MetricRow::new(
            now(),
            "u".to_owned(),
            NewMetric::parse(&json!({"metric_name": "m", "metric_value": 1, "data_string": "d"}))
                .unwrap(),
        );
        let mut extra: serde_json::Value = serde_json::from_slice(&metric.encode()).unwrap();
        extra["surprise"] = json!(1);

        assert!(MetricRow::decode(b"not json").is_err());
        assert!(MetricRow::decode(extra.to_string().as_bytes()).is_err());
        assert!(EventRow::decode(&metric.encode()).is_err());
    }
}
