//! Reading a Canary as the API server stored it. The pod spec is stored without a
//! schema, so a stored Canary may not fit the Rust types (`value: 0.01` where a
//! string belongs); decoding one object at a time, with the path of what did not
//! fit, lets the controller report that Canary and go on with the others.

use serde_json::Value;

use crate::Canary;

/// A stored Canary that does not fit the API's types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DecodeError {
    /// Where, as a path into the object: `spec.template.spec.containers[0].env[0].value`.
    pub field: String,
    /// What does not fit, as serde says it: `invalid type: floating point `0.01`, expected a string`.
    pub problem: String,
}

/// Decodes one stored Canary, or says which field does not fit and why.
pub fn decode(object: &Value) -> Result<Canary, DecodeError> {
    serde_path_to_error::deserialize(object).map_err(|error| {
        let field = error.path().to_string();
        DecodeError {
            field: if field == "." {
                "(the whole object)".to_owned()
            } else {
                field
            },
            problem: error.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn canary(env_value: Value) -> Value {
        json!({
            "apiVersion": "serin.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:1",
                        "env": [{"name": "RATE", "value": env_value}]}]}
                }
            }
        })
    }

    #[test]
    fn a_stored_canary_decodes() {
        let decoded = decode(&canary(json!("0.01")));
        assert!(decoded.is_ok(), "{decoded:?}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let error = decode(&canary(json!(0.01))).err();
        let error = error.unwrap_or_else(|| panic!("a number where a string belongs decoded"));
        assert_eq!(error.field, "spec.template.spec.containers[0].env[0].value");
        assert!(
            error.problem.contains("expected a string"),
            "{}",
            error.problem
        );
    }
}
