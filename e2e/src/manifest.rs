//! One Canary manifest builder for every end-to-end test and benchmark, so the
//! template they roll out is written in one place.

use std::fmt::Write;

/// A Canary as a person would write it, built up field by field.
#[derive(Clone, Debug)]
pub struct CanaryManifest {
    name: String,
    replicas: u32,
    containers: Vec<(String, String)>,
    /// Env of the first container, values written verbatim as YAML.
    env: Vec<(String, String)>,
    service: Option<String>,
    spec: String,
}

impl CanaryManifest {
    /// `name` at 4 replicas, one container `app` running `web:1`, Services on port
    /// 80 to container port 8080.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            replicas: 4,
            containers: vec![("app".to_owned(), "web:1".to_owned())],
            env: Vec::new(),
            service: Some("{port: 80, targetPort: 8080}".to_owned()),
            spec: String::new(),
        }
    }

    /// The first container's image.
    pub fn image(mut self, image: &str) -> Self {
        if let Some(first) = self.containers.first_mut() {
            first.1 = image.to_owned();
        }
        self
    }

    /// `spec.replicas`.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Another container in the pod template.
    pub fn container(mut self, name: &str, image: &str) -> Self {
        self.containers.push((name.to_owned(), image.to_owned()));
        self
    }

    /// An env variable of the first container; `value` is YAML as written
    /// (`'0.01'` is a string, `0.01` a number, which a pod spec refuses).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `spec.service` as YAML, or none.
    pub fn service(mut self, service: Option<&str>) -> Self {
        self.service = service.map(str::to_owned);
        self
    }

    /// More spec lines, indented two spaces (`  steps: [25, 50]\n`).
    pub fn spec(mut self, lines: &str) -> Self {
        self.spec.push_str(lines);
        if !self.spec.ends_with('\n') {
            self.spec.push('\n');
        }
        self
    }

    /// The manifest, for `kubectl apply -f -`.
    pub fn yaml(&self) -> String {
        let name = &self.name;
        let mut yaml = format!(
            "apiVersion: serin.dev/v1alpha1
kind: Canary
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
",
            replicas = self.replicas
        );
        for (index, (container, image)) in self.containers.iter().enumerate() {
            let _ = writeln!(yaml, "      - name: {container}\n        image: '{image}'");
            if index == 0 && !self.env.is_empty() {
                yaml.push_str("        env:\n");
                for (key, value) in &self.env {
                    let _ = writeln!(yaml, "        - {{name: {key}, value: {value}}}");
                }
            }
        }
        if let Some(service) = &self.service {
            let _ = writeln!(yaml, "  service: {service}");
        }
        yaml.push_str(&self.spec);
        yaml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_decodes_as_the_canary_it_describes() {
        let yaml = CanaryManifest::new("web")
            .image("web:2")
            .replicas(3)
            .env("SIM_ERROR_RATE", "'0.02'")
            .container("sidecar", "proxy:1")
            .spec("  steps: [10, 50]")
            .yaml();
        let canary: serin_api::Canary =
            serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(canary.spec.replicas, 3);
        assert_eq!(canary.spec.steps, [10, 50]);
        let pod = canary.spec.template.spec.unwrap_or_default();
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[0].image.as_deref(), Some("web:2"));
        let env = pod.containers[0].env.clone().unwrap_or_default();
        assert_eq!(env[0].value.as_deref(), Some("0.02"));
        assert_eq!(canary.spec.service.map(|s| s.port), Some(80));
    }
}
