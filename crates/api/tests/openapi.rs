//! The OpenAPI document is part of drome's contract: any change to it shows up in review.

#[test]
fn openapi_document_snapshot() {
    let doc = serde_json::to_value(api::openapi()).unwrap();
    insta::assert_json_snapshot!("openapi", doc);
}

#[test]
fn job_spec_defaults() {
    let spec: api::JobSpec = serde_json::from_str(r#"{"command": "sleep"}"#).unwrap();
    assert_eq!((spec.gpus_per_node, spec.nodes, spec.max_restarts), (1, 1, 3));
    assert!(serde_json::from_str::<api::JobSpec>(r#"{"comand": "sleep"}"#).is_err());
}
