//! Batch bodies: a JSON array of single-endpoint bodies, each item validated on its own.

use serde_json::{Value, json};

use super::{FieldError, Location};

/// Each item's outcome, in order: the parsed item or its field errors (locations prefixed
/// with the item's index). The whole body is refused when it is not a non-empty array of at
/// most `max_items` items.
pub fn parse_batch<T>(
    body: &Value,
    max_items: usize,
    parse_item: impl Fn(&Value) -> Result<T, Vec<FieldError>>,
) -> Result<Vec<Result<T, Vec<FieldError>>>, Vec<FieldError>> {
    let Value::Array(items) = body else {
        return Err(vec![FieldError::whole_body(
            "list_type",
            "Input should be a valid list".to_owned(),
            body.clone(),
            None,
        )]);
    };
    let length_error = |kind, msg: String, ctx| {
        Err(vec![FieldError::whole_body(
            kind,
            msg,
            body.clone(),
            Some(ctx),
        )])
    };
    if items.is_empty() {
        return length_error(
            "too_short",
            "List should have at least 1 item after validation, not 0".to_owned(),
            json!({"field_type": "List", "min_length": 1, "actual_length": 0}),
        );
    }
    if items.len() > max_items {
        return length_error(
            "too_long",
            format!(
                "List should have at most {max_items} items after validation, not {}",
                items.len()
            ),
            json!({"field_type": "List", "max_length": max_items, "actual_length": items.len()}),
        );
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_item(item).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|mut e| {
                        e.loc.insert(1, Location::Index(index));
                        e
                    })
                    .collect()
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewMetric;

    #[test]
    fn items_are_validated_on_their_own_with_indexed_locations() {
        let body = json!([
            {"metric_name": "a", "metric_value": 1, "data_string": "d"},
            {"metric_name": "", "metric_value": 1, "data_string": "d"},
        ]);

        let results = parse_batch(&body, 10, NewMetric::parse).unwrap();

        assert!(results[0].is_ok());
        let errors = results[1].as_ref().unwrap_err();
        assert_eq!(
            errors[0].loc,
            vec!["body".into(), Location::Index(1), "metric_name".into()]
        );
    }

    #[test]
    fn empty_non_array_and_oversized_bodies_are_refused_whole() {
        let kind = |body: Value| parse_batch(&body, 2, NewMetric::parse).unwrap_err()[0].kind;

        assert_eq!(kind(json!([])), "too_short");
        assert_eq!(kind(json!({"a": 1})), "list_type");
        assert_eq!(kind(json!([{}, {}, {}])), "too_long");
    }
}
