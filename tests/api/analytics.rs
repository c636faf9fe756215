//! `POST /api/analytics/log_raw_analytics` against a real database.

use serde_json::{Value, json};

use crate::helpers::{TestApp, event_body};
use crate::on_both_backends;

const PATH: &str = "/api/analytics/log_raw_analytics";

async fn the_frontend_body_is_stored_as_the_original_stores_it(app: TestApp) {
    let token = app.token("user-7");
    let body = event_body("home_viewed", json!({}), "home_viewed");

    let response = app.post_json(PATH, &body, Some(&token)).await;

    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    let row = app
        .store
        .event_by_id(&id)
        .await
        .unwrap()
        .expect("the row exists");
    assert_eq!(row.user_id, "user-7");
    assert_eq!(row.event_type, "home_viewed");
    assert_eq!(row.data, Some(serde_json::Map::new()));
    assert_eq!(row.data_index.as_deref(), Some("home_viewed"));
    assert_eq!(row.created_at, row.updated_at);
}

async fn nested_data_round_trips(app: TestApp) {
    let token = app.token("user-7");
    let data =
        json!({"agent": {"id": "a1", "steps": [1, 2.5, "x", null, true]}, "unicode": "héllo ✓ 😀"});
    let body = json!({"type": "agent_run", "data": data, "data_index": "a1", "unknown_key": 1});

    let id: String = app
        .post_json(PATH, &body, Some(&token))
        .await
        .json()
        .await
        .unwrap();

    let row = app.store.event_by_id(&id).await.unwrap().unwrap();
    assert_eq!(Value::Object(row.data.unwrap()), data);
}

async fn control_characters_in_data_are_stripped_also_from_keys(app: TestApp) {
    let token = app.token("user-7");
    let body = event_body("t\u{7f}", json!({"k\u{0}": ["\u{0}v\tw"]}), "\u{1b}i");

    let response = app.post_json(PATH, &body, Some(&token)).await;

    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    let row = app.store.event_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.event_type, "t");
    assert_eq!(Value::Object(row.data.unwrap()), json!({"k": ["v\tw"]}));
    assert_eq!(row.data_index.as_deref(), Some("i"));
}

async fn data_that_is_not_an_object_is_a_dict_type_error(app: TestApp) {
    let token = app.token("user-7");
    for data in [json!([1]), json!("x"), json!(null)] {
        let body = event_body("t", data, "i");

        let response = app.post_json(PATH, &body, Some(&token)).await;

        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            "Invalid data for POST /api/analytics/log_raw_analytics"
        );
        assert_eq!(body["detail"][0]["type"], "dict_type");
        assert_eq!(body["detail"][0]["loc"], json!(["body", "data"]));
    }
}

async fn empty_type_and_index_are_allowed(app: TestApp) {
    let token = app.token("user-7");
    let body = event_body("", json!({"a": 1}), "");

    let response = app.post_json(PATH, &body, Some(&token)).await;

    assert_eq!(response.status(), 200);
}

async fn an_admin_can_store_on_behalf_of_another_user(app: TestApp) {
    let token = app.admin_token("admin-1");
    let body = event_body("t", json!({}), "i");

    let response = app
        .client
        .post(app.url(PATH))
        .bearer_auth(&token)
        .header("X-Act-As-User-Id", "  target-user  ")
        .json(&body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let id: String = response.json().await.unwrap();
    assert_eq!(
        app.store.event_by_id(&id).await.unwrap().unwrap().user_id,
        "target-user"
    );
}

async fn an_index_key_too_long_for_the_database_index_is_a_422_not_a_500(app: TestApp) {
    let token = app.token("user-7");
    // Pseudo-random letters: PostgreSQL cannot compress them under its index-entry limit.
    let mut seed = 12345u64;
    let random: String = (0..3000)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (seed >> 59) as u8 % 26)
        })
        .collect();
    let long = event_body("t", json!({}), random.as_str());
    let at_limit = event_body("t", json!({}), &random[..1000]);

    let refused = app.post_json(PATH, &long, Some(&token)).await;
    let accepted = app.post_json(PATH, &at_limit, Some(&token)).await;

    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "string_too_long");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "data_index"]));
    assert_eq!(accepted.status(), 200);
}

/// A compact body is stored as sent, any other is parsed and written back: the same event
/// spelled three ways must be stored the same.
async fn the_same_event_is_stored_alike_however_it_is_spelled(app: TestApp) {
    let token = app.token("user-1");
    let bodies = [
        r#"{"type":"t","data":{"b":1.5,"a":[1,"é"],"n":{"x":null}},"data_index":"i"}"#,
        r#"{"type": "t", "data": {"b": 1.50, "a": [1, "\u00e9"], "n": {"x": null}}, "data_index": "i"}"#,
        r#"{"type":"t","data":{"b":0,"a":[1,"é"],"n":{"x":null},"b":1.5},"data_index":"i"}"#,
    ];
    let expected = json!({"b": 1.5, "a": [1, "é"], "n": {"x": null}});

    for body in bodies {
        let response = app.post_raw(PATH, body, Some(&token)).await;

        assert_eq!(response.status(), 200, "{body}");
        let id: String = response.json().await.unwrap();
        let row = app.store.event_by_id(&id).await.unwrap().unwrap();
        assert_eq!(Value::Object(row.data.unwrap()), expected, "{body}");
        assert_eq!(
            (row.event_type.as_str(), row.data_index.as_deref()),
            ("t", Some("i"))
        );
    }
}

/// A body must be a JSON object: an array holding the fields by position (which serde's
/// derived readers would take), an array holding an event, or any other JSON value is a
/// 422 and nothing is stored, on both endpoints.
async fn a_body_that_is_not_an_object_is_a_422_and_stores_nothing(app: TestApp) {
    let token = app.token("user-1");
    let event = r#"{"type":"t","data":{},"data_index":"i"}"#;
    let bodies = [
        r#"["home",{"a":1},"idx"]"#.to_owned(),
        r#"["0",{},"0"]"#.to_owned(),
        r#" ["0", {}, "0"] "#.to_owned(),
        r#"["a",1,"b"]"#.to_owned(),
        r#"[1,2]"#.to_owned(),
        format!("[{event}]"),
        r#""home""#.to_owned(),
        "42".to_owned(),
        "null".to_owned(),
    ];
    for path in [PATH, "/api/analytics/log_raw_metric"] {
        for body in &bodies {
            let response = app.post_raw(path, body.clone(), Some(&token)).await;

            assert_eq!(response.status(), 422, "{path} {body}");
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["message"], format!("Invalid data for POST {path}"));
            assert_eq!(answer["detail"][0]["type"], "model_type", "{path} {body}");
            assert_eq!(answer["detail"][0]["loc"], json!(["body"]));
        }
    }
    assert_eq!(app.count_rows(r#""AnalyticsDetails""#).await, 0);
    assert_eq!(app.count_rows(r#""AnalyticsMetrics""#).await, 0);
}

on_both_backends!(
    a_body_that_is_not_an_object_is_a_422_and_stores_nothing,
    the_same_event_is_stored_alike_however_it_is_spelled,
    an_index_key_too_long_for_the_database_index_is_a_422_not_a_500,
    the_frontend_body_is_stored_as_the_original_stores_it,
    nested_data_round_trips,
    control_characters_in_data_are_stripped_also_from_keys,
    data_that_is_not_an_object_is_a_dict_type_error,
    empty_type_and_index_are_allowed,
    an_admin_can_store_on_behalf_of_another_user,
);

#[tokio::test]
async fn non_finite_numbers_inside_data_are_refused_with_their_location() {
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Postgres).await;
    let raw = r#"{"type": "t", "data": {"a": [1, NaN]}, "data_index": "i"}"#;

    let response = app.post_raw(PATH, raw, Some(&app.token("u"))).await;

    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "finite_number");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "data", "a", 1]));
}
