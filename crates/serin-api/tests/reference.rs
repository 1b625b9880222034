//! docs/reference.md names every status field, condition type and reason: a field or
//! reason added to the API without a line there fails here.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};

const REFERENCE: &str = include_str!("../../../docs/reference.md");
const CONTRACT: &str = include_str!("../src/contract.rs");

/// The words inside the page's `code` spans.
fn documented() -> BTreeSet<String> {
    REFERENCE
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| span.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The string constants of `pub mod <module>` in contract.rs.
fn constants(module: &str) -> Vec<String> {
    let start = CONTRACT
        .find(&format!("pub mod {module} {{"))
        .unwrap_or_default();
    let body = &CONTRACT[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    body.lines()
        .filter(|line| line.trim_start().starts_with("pub const"))
        .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
        .collect()
}

fn field_names(schema: &JSONSchemaProps, names: &mut BTreeSet<String>) {
    for (name, child) in schema.properties.iter().flatten() {
        names.insert(name.clone());
        field_names(child, names);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
        field_names(item, names);
    }
}

#[test]
fn every_condition_and_reason_is_documented() {
    let documented = documented();
    let conditions = constants("condition");
    let reasons = constants("reason");
    assert!(
        conditions.len() >= 7 && reasons.len() >= 20,
        "{conditions:?} {reasons:?}"
    );
    let missing: Vec<&String> = conditions
        .iter()
        .chain(&reasons)
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not name {missing:?}"
    );
}

#[test]
fn every_status_field_is_documented() {
    let crd = serin_api::canary_crd();
    let status = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|schema| schema.open_api_v3_schema.as_ref())
        .and_then(|schema| schema.properties.as_ref())
        .and_then(|properties| properties.get("status"))
        .cloned()
        .unwrap_or_default();
    let mut fields = BTreeSet::new();
    field_names(&status, &mut fields);
    // The conditions' own fields are Kubernetes' metav1.Condition.
    for standard in ["type", "status", "lastTransitionTime"] {
        fields.remove(standard);
    }
    assert!(fields.len() >= 20, "{fields:?}");
    let documented = documented();
    let missing: Vec<&String> = fields.iter().filter(|f| !documented.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not name {missing:?}"
    );
}
