//! `log_raw_metric`'s body: `{"metric_name": str, "metric_value": number, "data_string": str}`.

use serde_json::Value;
use serde_json::value::RawValue;

use super::reader::{self, Kind};
use super::{Body, FieldError, Fields, fields, pyjson};

/// A metric that passed validation, control characters already stripped.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMetric {
    /// What was measured (`analyticMetric`).
    pub metric_name: String,
    /// A finite, non-negative value (`value`).
    pub metric_value: f64,
    /// Free-form context (`dataString`).
    pub data_string: String,
}

impl NewMetric {
    /// Validates a body, reporting every field error at once.
    pub fn from_body(body: Body<'_>) -> Result<Self, Vec<FieldError>> {
        let fields = Fields::read(
            body,
            "LogRawMetricRequest",
            ["metric_name", "metric_value", "data_string"],
        )?;
        let mut errors = Vec::new();
        let metric_name = fields::string(&fields, 0, "metric_name", 1, usize::MAX, &mut errors);
        let metric_value = non_negative_number(&fields, "metric_value", &mut errors);
        let data_string = fields::string(&fields, 2, "data_string", 1, usize::MAX, &mut errors);
        match (metric_name, metric_value, data_string) {
            (Some(metric_name), Some(metric_value), Some(data_string)) => Ok(NewMetric {
                metric_name,
                metric_value,
                data_string,
            }),
            _ => Err(errors),
        }
    }

    /// Validates a parsed body (its non-finite markers honoured): for tests and fuzz
    /// targets, which build bodies as trees. Requests go through [`from_body`](Self::from_body).
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        super::read_tree(body, Self::from_body)
    }
}

/// A finite number ≥ 0; like pydantic in lax mode, a numeric string is converted.
fn non_negative_number<const N: usize>(
    fields: &Fields<'_, N>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<f64> {
    let Some(raw) = fields.raw(1) else {
        errors.push(fields.missing(field));
        return None;
    };
    number(fields, raw, field).map_err(|e| errors.push(e)).ok()
}

fn number<const N: usize>(
    fields: &Fields<'_, N>,
    raw: &RawValue,
    field: &str,
) -> Result<f64, FieldError> {
    let value = match reader::kind(raw.get()) {
        Kind::Number => serde_json::from_str::<f64>(raw.get())
            .map_err(|_| FieldError::finite_number(field, fields.echo(raw)))?,
        Kind::String => {
            let text = reader::string(raw).unwrap_or_default();
            if fields.marked() && pyjson::non_finite_str(&text).is_some() {
                return Err(FieldError::finite_number(field, fields.echo(raw)));
            }
            text.trim()
                .parse::<f64>()
                .map_err(|_| FieldError::float_parsing(field, fields.echo(raw)))?
        }
        _ => return Err(FieldError::float_type(field, fields.echo(raw))),
    };
    if !value.is_finite() {
        Err(FieldError::finite_number(field, fields.echo(raw)))
    } else if value < 0.0 {
        Err(FieldError::greater_than_equal(field, fields.echo(raw), 0.0))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_types(body: Value) -> Vec<&'static str> {
        NewMetric::parse(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn accepts_numbers_and_numeric_strings() {
        for (input, expected) in [
            (json!(2.5), 2.5),
            (json!(0), 0.0),
            (json!("2.5"), 2.5),
            (json!(" 3 "), 3.0),
            (json!(1e308), 1e308),
        ] {
            let body = json!({"metric_name": "m", "metric_value": input, "data_string": "d"});
            assert_eq!(NewMetric::parse(&body).unwrap().metric_value, expected);
        }
    }

    #[test]
    fn negative_zero_is_allowed() {
        let body = json!({"metric_name": "m", "metric_value": -0.0, "data_string": "d"});

        assert_eq!(NewMetric::parse(&body).unwrap().metric_value, 0.0);
    }

    #[test]
    fn refuses_non_finite_negative_and_non_numbers() {
        let cases = [
            (json!("inf"), "finite_number"),
            (json!("NaN"), "finite_number"),
            (json!("1e309"), "finite_number"),
            (json!(-1), "greater_than_equal"),
            (json!("abc"), "float_parsing"),
            (json!(""), "float_parsing"),
            (json!(true), "float_type"),
            (json!(null), "float_type"),
            (json!([1]), "float_type"),
        ];
        for (input, kind) in cases {
            let body = json!({"metric_name": "m", "metric_value": input, "data_string": "d"});
            assert_eq!(error_types(body), vec![kind], "input {input}");
        }
    }

    #[test]
    fn reports_every_field_error_in_field_order() {
        assert_eq!(
            error_types(json!({})),
            vec!["missing", "missing", "missing"]
        );
        assert_eq!(
            error_types(json!({"metric_name": "", "metric_value": "x", "data_string": 5})),
            vec!["string_too_short", "float_parsing", "string_type"]
        );
    }

    #[test]
    fn strips_control_characters_after_the_length_check() {
        let body = json!({"metric_name": "\u{1}", "metric_value": 1, "data_string": "a\u{0}b"});

        let metric = NewMetric::parse(&body).unwrap();

        assert_eq!(metric.metric_name, "");
        assert_eq!(metric.data_string, "ab");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_model_type_error() {
        assert_eq!(error_types(json!([1, 2])), vec!["model_type"]);
    }
}
