//! A revision names a pod template: the same template always gives the same name.

use sha2::{Digest, Sha256};

use serin_api::PodTemplate;

/// The revision of `template`: the first 10 hex digits of the SHA-256 of its JSON.
///
/// The JSON of k8s-openapi types is canonical (fields in a fixed order, maps
/// sorted), so a template re-applied unchanged keeps its revision, and the
/// revision fits in a label value and a ReplicaSet name.
pub fn revision_of(template: &PodTemplate) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest
        .iter()
        .take(5)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplate {
        PodTemplate {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn same_template_same_revision() {
        assert_eq!(
            revision_of(&template("web:1")),
            revision_of(&template("web:1"))
        );
    }

    #[test]
    fn a_changed_template_is_a_new_revision() {
        assert_ne!(
            revision_of(&template("web:1")),
            revision_of(&template("web:2"))
        );
    }

    #[test]
    fn revision_is_ten_lower_hex_digits() {
        let revision = revision_of(&template("web:1"));
        assert_eq!(revision.len(), 10);
        assert!(
            revision
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
