//! What a hostile first week does to a controller: a Canary that does not decode, a
//! pod template the API server refuses, a controller that cannot list, a SIGTERM in
//! a bad state, promotion after promotion that must each drain gracefully, and a
//! reconcile from a Canary older than the controller's own last write.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serin_api::{Canary, CanaryStatus, Phase};
use serin_controller::cache::Cache;
use serin_controller::metrics::Metrics;
use serin_controller::reconciler::{Context as Shared, Layer, Settings, reconcile_canary};
use serin_controller::run::SHUTDOWN_GRACE;
use serin_e2e::controller::{Controller, install_crds, service_account_kubeconfig};
use serin_e2e::manifest::CanaryManifest;
use serin_e2e::process::eventually;
use serin_e2e::rollout::canary_events;

use crate::cluster;
use crate::rollout::{
    Rollout, condition_status, message, phase, revisions, status, status_condition,
};

const FAST_STEPS: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n";

/// A Canary whose env value is written as `value`: unquoted `0.01` is a number,
/// which the API server stores (the pod spec has no schema) and the Rust types
/// cannot read.
fn undecodable(name: &str, value: &str) -> CanaryManifest {
    CanaryManifest::new(name)
        .replicas(2)
        .service(None)
        .env("SIM_ERROR_RATE", value)
}

#[test]
fn an_undecodable_canary_is_reported_and_cannot_stop_the_others() -> Result<()> {
    let mut good = Rollout::start(cluster(), "poison", "good", "web:1", FAST_STEPS)?;
    good.wait_promoted(Duration::from_secs(60))?;
    let bad = good.sibling("bad");
    bad.apply_manifest(&undecodable("bad", "0.01"))?;
    let field = "spec.template.spec.containers[0].env[0].value";
    // The bad Canary does not decode for the tests either: read its status alone.
    let reported = |status: &CanaryStatus| {
        status_condition(status, "InvalidSpec")
            .is_some_and(|c| c.status == "True" && c.message.contains(field))
    };
    let seen = bad.wait_status(
        "InvalidSpec naming the field",
        Duration::from_secs(30),
        reported,
    )?;
    assert_eq!(
        status_condition(&seen, "Promoted")
            .map(|c| c.status)
            .as_deref(),
        Some("False")
    );
    assert!(bad.events()?.contains(&"InvalidSpec".to_owned()));
    // GitOps tools read it as stalled (kstatus Failed, Argo CD Degraded), not as
    // work under way.
    let stalled = status_condition(&seen, "Stalled");
    assert_eq!(
        stalled
            .as_ref()
            .map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "InvalidSpec")),
        "{stalled:?}"
    );

    // A restarted controller lists every Canary at once; the bad one must not fail
    // that list. Ready means every watch listed.
    good.restart_controller()?;
    let controller = good.controller.as_ref().context("no controller")?;
    eventually(
        "serin_canaries_undecodable counting it",
        Duration::from_secs(30),
        || {
            let metrics = controller.metrics()?;
            Ok(metrics
                .contains("serin_canaries_undecodable 1")
                .then_some(()))
        },
    )?;
    good.roll_out("web:2")?;
    bad.wait_status("still reported", Duration::from_secs(10), reported)?;

    let took = good
        .controller
        .take()
        .context("no controller")?
        .terminate(SHUTDOWN_GRACE * 3);
    assert!(
        took.is_some_and(|took| took <= SHUTDOWN_GRACE + Duration::from_secs(2)),
        "SIGTERM with an undecodable Canary: exited after {took:?}, bound {SHUTDOWN_GRACE:?}"
    );
    eprintln!("SIGTERM to exit with an undecodable Canary: {took:?}");

    good.controller = Some(Controller::start(cluster(), &good.namespace)?);
    bad.apply_manifest(&undecodable("bad", "'0.01'"))?;
    let fixed = bad.wait("the fixed Canary healthy", Duration::from_secs(60), |c| {
        phase(c) == Some(Phase::Healthy) && condition_status(c, "InvalidSpec") == "False"
    })?;
    assert!(!revisions(&fixed).0.is_empty());
    Ok(())
}

#[test]
fn a_pod_template_the_api_server_refuses_is_an_invalid_spec_and_nothing_is_created() -> Result<()> {
    let rollout = Rollout::prepare(cluster(), "refused", "web")?;
    let steps = "  steps: [50]\n  stepDuration: 2s\n";
    let refused = |c: &Canary| {
        let message = message(c, "InvalidSpec");
        message.contains("spec.template.spec.containers[1].name")
            && message.contains("Duplicate value")
    };
    rollout.apply_manifest(&CanaryManifest::new("web").container("app", "sidecar:1"))?;
    let add_twin = r#"[{"op":"add","path":"/spec/template/spec/containers/-","value":{"name":"app","image":"sidecar:1"}}]"#;
    let first = rollout.wait(
        "InvalidSpec with the API server's message",
        Duration::from_secs(30),
        |c| refused(c) && c.metadata.generation == status(c).observed_generation,
    )?;
    assert_eq!(condition_status(&first, "Promoted"), "False");
    assert_eq!(rollout.replica_set_count()?, 0, "no ReplicaSet created");
    assert_eq!(rollout.service_count()?, 0, "no Service created");

    rollout.apply("web:1", steps)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let (stable, _) = revisions(&rollout.canary()?);

    // During a rollout: the stable revision keeps serving, nothing new is created.
    rollout.patch("json", add_twin)?;
    let held = rollout.wait(
        "InvalidSpec on the new template",
        Duration::from_secs(30),
        refused,
    )?;
    assert_eq!(phase(&held), Some(Phase::Healthy));
    assert_eq!(condition_status(&held, "Promoted"), "False");
    assert_eq!(revisions(&held).0, stable);
    assert_eq!(rollout.replica_set_count()?, 1);
    assert_eq!(rollout.replica_set(&stable)?.0, 4);
    Ok(())
}

#[test]
fn readyz_fails_while_a_watch_cannot_list() -> Result<()> {
    let cluster = cluster();
    let namespace = cluster.namespace("blind")?;
    let kubectl = &cluster.kubectl;
    kubectl.run(&["create", "serviceaccount", "blind", "-n", &namespace])?;
    let (_dir, kubeconfig) = service_account_kubeconfig(cluster, &namespace, "blind")?;
    let controller = Controller::spawn(
        &namespace,
        &kubeconfig,
        &["--leader-election=false".to_owned()],
    )?;
    let refused = eventually(
        "readyz reporting the failing watch",
        Duration::from_secs(30),
        || {
            Ok(match controller.readyz() {
                Some((503, body)) if body.contains("failing") => Some(body),
                _ => None,
            })
        },
    )
    .with_context(|| controller.log())?;
    assert!(refused.contains("forbidden"), "{refused}");

    kubectl.run(&[
        "create",
        "rolebinding",
        "blind-sees",
        "-n",
        &namespace,
        "--clusterrole=serin",
        &format!("--serviceaccount={namespace}:blind"),
    ])?;
    eventually(
        "readyz ok once allowed to list",
        Duration::from_secs(90),
        || Ok((controller.readyz().map(|(code, _)| code) == Some(200)).then_some(())),
    )?;
    Ok(())
}

#[test]
fn every_promotion_keeps_the_previous_stable_for_the_scale_down_delay() -> Result<()> {
    let delay = Duration::from_secs(5);
    let steps = format!(
        "  steps: [50]\n  stepDuration: 1s\n  scaleDownDelay: {}s\n",
        delay.as_secs()
    );
    let rollout = Rollout::start(cluster(), "drain", "web", "web:1", &steps)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    for image in ["web:2", "web:3", "web:4"] {
        let (old, _) = revisions(&rollout.canary()?);
        rollout.set_image(image)?;
        rollout.wait(&format!("{image} promoted"), Duration::from_secs(60), |c| {
            let (stable, _) = revisions(c);
            phase(c) == Some(Phase::Healthy) && !stable.is_empty() && stable != old
        })?;
        // Seen promoted no earlier than it was: the old stable must keep its pods
        // for the delay from here, less one poll.
        let promoted = Instant::now();
        while rollout.replica_set(&old)?.0 > 0 {
            ensure!(promoted.elapsed() < delay * 4, "{old} never drained");
            thread::sleep(Duration::from_millis(200));
        }
        let kept = promoted.elapsed();
        assert!(
            kept + Duration::from_millis(500) >= delay,
            "{old} drained {kept:?} after {image} was promoted, before scaleDownDelay {delay:?}"
        );
    }
    Ok(())
}

#[test]
fn serin_is_installed_with_least_privilege() -> Result<()> {
    let cluster = cluster();
    let rollout = Rollout::prepare(cluster, "privilege", "web")?;
    let kubectl = &cluster.kubectl;
    let namespace = &rollout.namespace;

    let deployment = kubectl.get_json(&["deployment", "serin-controller", "-n", "serin-system"])?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod:#}");
    assert!(
        pod["securityContext"]["runAsUser"]
            .as_i64()
            .is_some_and(|uid| uid > 0)
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["readOnlyRootFilesystem"], true, "{container:#}");
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(container["capabilities"]["drop"][0], "ALL");

    let can_read_secrets = |namespace: &str| -> Result<bool> {
        let output = kubectl.output(
            &[
                "auth",
                "can-i",
                "get",
                "secrets",
                "-n",
                namespace,
                "--as=system:serviceaccount:serin-system:serin",
            ],
            None,
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).trim() == "yes")
    };
    assert!(
        !can_read_secrets(namespace)?,
        "no Secret is readable by default"
    );

    kubectl.run(&[
        "create",
        "secret",
        "generic",
        "prometheus",
        "-n",
        namespace,
        "--from-literal=username=serin",
        "--from-literal=password=s3cret",
    ])?;
    let analysis = "  steps: [50]\n  stepDuration: 1s\n  analysis:
    interval: 1s
    prometheus: {address: 'http://127.0.0.1:1', secretRef: {name: prometheus}}
    metrics: [{name: up, query: 'vector(1)', max: 2}]\n";
    rollout.apply("web:1", analysis)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.set_image("web:2")?;
    let message = |c: &Canary| {
        status(c)
            .analysis
            .first()
            .and_then(|m| m.message.clone())
            .unwrap_or_default()
    };
    let forbidden = rollout.wait(
        "the analysis says how to allow the Secret",
        Duration::from_secs(30),
        |c| message(c).contains("create rolebinding serin-prometheus-credentials"),
    )?;
    assert_eq!(
        phase(&forbidden),
        Some(Phase::Progressing),
        "blind is never promoted"
    );

    // The documented grant, for this namespace only.
    kubectl.run(&[
        "-n",
        namespace,
        "create",
        "rolebinding",
        "serin-prometheus-credentials",
        "--clusterrole=serin-prometheus-credentials",
        "--serviceaccount=serin-system:serin",
    ])?;
    assert!(can_read_secrets(namespace)?);
    assert!(!can_read_secrets("default")?, "still no Secret elsewhere");
    rollout.wait(
        "the Secret read, Prometheus the next problem",
        Duration::from_secs(30),
        |c| {
            let message = message(c);
            !message.is_empty() && !message.contains("Secret")
        },
    )?;
    Ok(())
}

/// How many Events are recorded on Canary `name`.
fn event_count(namespace: &str, name: &str) -> Result<usize> {
    Ok(canary_events(&cluster().kubectl, namespace, name)?.len())
}

/// The controller's reconcile, run in-process on a Canary as it was before its
/// own status write (what a reconcile sees when the watch has not caught up): the
/// same controller waits for the watch, and one without that memory (another
/// replica, a restart) is refused by the write's precondition. Neither writes the
/// status again or records a transition's Events twice.
#[test]
fn a_reconcile_from_a_canary_older_than_its_own_write_changes_nothing() -> Result<()> {
    install_crds(cluster())?;
    let namespace = cluster().namespace("stale")?;
    let manifest = CanaryManifest::new("web").image("web:1").spec(FAST_STEPS);
    cluster().kubectl.run_with_input(
        &["apply", "-n", &namespace, "-f", "-"],
        Some(&manifest.yaml()),
    )?;
    let settings = Settings {
        namespace: Some(namespace.clone()),
        shard_selector: None,
        concurrency: 1,
        prometheus_address: None,
        prometheus_queries: 1,
        cluster_sinks: None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = cluster().kubectl.client().await?;
        let canaries: Api<Canary> = Api::namespaced(client.clone(), &namespace);
        let controller = |replica_sets: Vec<ReplicaSet>, services: Vec<Service>| {
            let metrics = Arc::new(Metrics::default());
            let cache = Cache::holding(replica_sets, services);
            Shared::new(client.clone(), &settings, metrics, cache)
        };
        let version = |canary: &Canary| canary.resource_version().unwrap_or_default();
        let before = canaries.get("web").await?;
        let first = controller(Vec::new(), Vec::new());
        reconcile_canary(&before, &first).await?;
        let written = canaries.get("web").await?;
        ensure!(
            version(&written) != version(&before),
            "the first reconcile wrote no status"
        );
        let events = event_count(&namespace, "web")?;
        ensure!(events > 0, "the first reconcile recorded no Event");

        reconcile_canary(&before, &first).await?;
        ensure!(
            version(&canaries.get("web").await?) == version(&written),
            "the status was written again from the older Canary"
        );
        ensure!(
            event_count(&namespace, "web")? == events,
            "Events recorded again from the older Canary"
        );

        // Its watches show what the first one made.
        let everything = ListParams::default();
        let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &namespace);
        let services = Api::<Service>::namespaced(client.clone(), &namespace);
        let restarted = controller(
            replica_sets.list(&everything).await?.items,
            services.list(&everything).await?.items,
        );
        let refused = reconcile_canary(&before, &restarted).await;
        let error = refused
            .err()
            .context("a controller without the memory wrote from the older Canary")?;
        ensure!(
            error.is_conflict() && error.layer() == Layer::Report,
            "not the write's conflict: {error}"
        );
        ensure!(version(&canaries.get("web").await?) == version(&written));
        ensure!(
            event_count(&namespace, "web")? == events,
            "Events recorded by a refused plan"
        );
        Ok(())
    })
}
