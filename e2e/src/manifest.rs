//! One Canary manifest builder for every end-to-end test and benchmark, so the
//! template they roll out is written in one place.

use std::fmt::Write;

use crate::cluster::KWOK_PLACEMENT;

/// A Canary as a person would write it, built up field by field.
#[derive(Clone, Debug)]
pub struct CanaryManifest {
    name: String,
    /// Labels of the Canary itself, `key: value` YAML pairs.
    labels: Vec<String>,
    replicas: u32,
    containers: Vec<(String, String)>,
    /// Env of the first container, values written verbatim as YAML.
    env: Vec<(String, String)>,
    service: Option<String>,
    spec: String,
    /// Annotations of the pod template, `key: value` YAML pairs.
    pod_annotations: Vec<String>,
    /// More lines of the first container (probes, ports), written verbatim.
    first_container: String,
    /// Whether the pods run on the real node (real containers) or on kwok's nodes.
    real_pods: bool,
}

impl CanaryManifest {
    /// `name` at 4 replicas, one container `app` running `web:1`, Services on port
    /// 80 to container port 8080, pods on kwok's nodes.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: Vec::new(),
            replicas: 4,
            containers: vec![("app".to_owned(), "web:1".to_owned())],
            env: Vec::new(),
            service: Some("{port: 80, targetPort: 8080}".to_owned()),
            spec: String::new(),
            real_pods: false,
            first_container: String::new(),
            pod_annotations: Vec::new(),
        }
    }

    /// Pods annotated for Prometheus' pod discovery: scraped at `port`'s `/metrics`.
    pub fn scraped_at(mut self, port: u16) -> Self {
        self.pod_annotations.extend([
            "prometheus.io/scrape: 'true'".to_owned(),
            format!("prometheus.io/port: '{port}'"),
        ]);
        self
    }

    /// More fields of the first container, one YAML mapping per line
    /// (`readinessProbe: {...}`).
    pub fn first_container(mut self, lines: &str) -> Self {
        for line in lines.lines().filter(|line| !line.trim().is_empty()) {
            self.first_container
                .push_str(&format!("        {}\n", line.trim()));
        }
        self
    }

    /// Pods on the real node, as real containers (the image must be imported there).
    pub fn on_real_node(mut self) -> Self {
        self.real_pods = true;
        self
    }

    /// A label on the Canary (not its pods), such as a shard's.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push(format!("{key}: '{value}'"));
        self
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
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}, annotations: {{{annotations}}}}}
    spec:
",
            replicas = self.replicas,
            labels = self.labels.join(", "),
            annotations = self.pod_annotations.join(", ")
        );
        if !self.real_pods {
            for line in KWOK_PLACEMENT.lines() {
                let _ = writeln!(yaml, "      {line}");
            }
        }
        yaml.push_str("      containers:\n");
        for (index, (container, image)) in self.containers.iter().enumerate() {
            let _ = writeln!(yaml, "      - name: {container}\n        image: '{image}'");
            if index == 0 {
                yaml.push_str(&self.first_container);
            }
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
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_manifest_decodes_as_the_canary_it_describes() {
        let yaml = CanaryManifest::new("web")
            .image("web:2")
            .replicas(3)
            .env("SIM_ERROR_RATE", "'0.02'")
            .container("sidecar", "proxy:1")
            .first_container("ports: [{containerPort: 8080}]")
            .scraped_at(8080)
            .spec("  steps: [10, 50]")
            .yaml();
        let canary: serin_api::Canary =
            serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(canary.spec.replicas, 3);
        assert_eq!(
            canary.spec.steps,
            [10, 50].map(serin_api::Weight::from_percent)
        );
        let template = canary.spec.template.unwrap_or_default();
        let pod = template.spec.unwrap_or_default();
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[0].image.as_deref(), Some("web:2"));
        let annotations = template.metadata.and_then(|m| m.annotations);
        let annotations = annotations.unwrap_or_default();
        assert_eq!(annotations["prometheus.io/port"], "8080");
        let ports = pod.containers[0].ports.clone().unwrap_or_default();
        assert_eq!(ports[0].container_port, 8080);
        let env = pod.containers[0].env.clone().unwrap_or_default();
        assert_eq!(env[0].value.as_deref(), Some("0.02"));
        assert_eq!(canary.spec.service.map(|s| s.port), Some(80));
        let kwok = BTreeMap::from([("type".to_owned(), "kwok".to_owned())]);
        assert_eq!(pod.node_selector, Some(kwok));
        assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
    }

    #[test]
    fn real_pods_ask_for_no_kwok_node() {
        let yaml = CanaryManifest::new("web").on_real_node().yaml();
        let canary: serin_api::Canary =
            serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let pod = canary
            .spec
            .template
            .unwrap_or_default()
            .spec
            .unwrap_or_default();
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
    }
}
