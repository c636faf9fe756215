//! Batch bodies: a JSON array of single-endpoint bodies, each item validated on its own as
//! it is read (no tree of the array is built).

use serde_json::json;

use super::{Body, DetailBudget, FieldError, Location, reader};

/// One item's outcome: the parsed item, or its field errors as the answer lists them.
pub type ItemOutcome<T> = Result<T, Vec<FieldError>>;

/// Each item's outcome, in order: the parsed item or its field errors (locations prefixed
/// with the item's index), listed through one [`DetailBudget`] as they are found, so that
/// however many errors the items hold, only what the answer shows is kept. The whole body is
/// refused when it is not a non-empty array of at most `max_items` items; items past that
/// are counted, not read.
pub fn parse_batch<T>(
    body: Body<'_>,
    max_items: usize,
    parse_item: impl Fn(Body<'_>) -> Result<T, Vec<FieldError>>,
) -> Result<Vec<ItemOutcome<T>>, Vec<FieldError>> {
    let mut budget = DetailBudget::default();
    let whole_body_error =
        |kind, msg, ctx| vec![FieldError::whole_body(kind, msg, body.echo(), ctx)];
    let not_a_list =
        || whole_body_error("list_type", "Input should be a valid list".to_owned(), None);
    let Body::Json { text, marked, .. } = body else {
        return Err(not_a_list());
    };
    let mut items = Vec::new();
    let counted = reader::each_element(text, |raw| {
        if items.len() == max_items {
            items = Vec::new();
            return false;
        }
        let index = items.len();
        let item = parse_item(Body::Json {
            text: raw.get(),
            marked,
            hidden: None,
        });
        items.push(item.map_err(|errors| {
            let errors = errors
                .into_iter()
                .map(|mut e| {
                    e.loc.insert(1, Location::Index(index));
                    e
                })
                .collect();
            budget.list(errors, vec![Location::from("body"), Location::Index(index)])
        }));
        true
    });
    let count = match counted {
        Ok(Some(count)) => count,
        Ok(None) => return Err(not_a_list()),
        Err(err) => return Err(vec![super::unreadable(&err)]),
    };
    if count == 0 {
        return Err(whole_body_error(
            "too_short",
            "List should have at least 1 item after validation, not 0".to_owned(),
            Some(json!({"field_type": "List", "min_length": 1, "actual_length": 0})),
        ));
    }
    if count > max_items {
        return Err(whole_body_error(
            "too_long",
            format!("List should have at most {max_items} items after validation, not {count}"),
            Some(json!({"field_type": "List", "max_length": max_items, "actual_length": count})),
        ));
    }
    Ok(items)
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
        ])
        .to_string();

        let results = parse_batch(Body::json(&body, false), 10, NewMetric::from_body).unwrap();

        assert!(results[0].is_ok());
        let errors = results[1].as_ref().unwrap_err();
        assert_eq!(
            errors[0].loc,
            vec!["body".into(), Location::Index(1), "metric_name".into()]
        );
    }

    #[test]
    fn empty_non_array_and_oversized_bodies_are_refused_whole() {
        let kind = |body: &str| {
            let body = Body::json(body, false);
            parse_batch(body, 2, NewMetric::from_body).unwrap_err()[0].kind
        };

        assert_eq!(kind("[]"), "too_short");
        assert_eq!(kind(r#"{"a": 1}"#), "list_type");
        assert_eq!(kind("[{}, {}, {}]"), "too_long");
        assert_eq!(kind(&format!("[{}1]", "1,".repeat(100_000))), "too_long");
    }
}
