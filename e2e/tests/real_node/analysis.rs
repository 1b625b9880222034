//! The judge on real traffic: Prometheus discovers the real pods through the API
//! server and scrapes what they really served; a release that answers real 5xx is
//! rolled back, a healthy one promoted.

use std::time::{Duration, Instant};

use anyhow::Result;
use serin_api::Phase;
use serin_e2e::load::Load;
use serin_e2e::process::eventually;
use serin_e2e::prometheus::Prometheus;
use serin_e2e::rollout::{Rollout, phase, reason, revisions};

use crate::cluster;
use crate::traffic::{RATE, release_with_errors, service_address, workload};

#[test]
fn a_release_answering_real_5xx_is_rolled_back_and_a_healthy_one_promoted() -> Result<()> {
    let mut prometheus = Prometheus::start_discovering(&cluster().kubectl, Duration::from_secs(1))?;
    // The controller finds Prometheus by its Service name, through the cluster DNS.
    let prometheus_address = prometheus.expose(&cluster().kubectl, "prometheus-judge")?;
    let rollout = Rollout::prepare_in_cluster(cluster(), "real-judge", "web")?;
    let spec = format!(
        r#"  steps: [25, 50]
  stepDuration: 30s
  analysis:
    interval: 5s
    confidence: 0.999
    prometheus: {{address: "{prometheus_address}"}}
    metrics:
    - name: errors
      errorRate:
        requests: sum(increase(http_requests_total{{namespace="{{{{namespace}}}}",pod=~"{{{{pods}}}}"}}[{{{{elapsed}}}}]))
        errors: sum(increase(http_requests_total{{namespace="{{{{namespace}}}}",pod=~"{{{{pods}}}}",code=~"5.."}}[{{{{elapsed}}}}])) or vector(0)
"#
    );
    rollout.apply_manifest(&workload("v1", &spec))?;
    rollout.wait_promoted(Duration::from_secs(90))?;
    let address = service_address(&rollout)?;
    let namespace = rollout.namespace.clone();
    let discovered = eventually(
        "Prometheus scraping the four pods it discovered",
        Duration::from_secs(60),
        || {
            let up = prometheus.query(&format!("sum(up{{namespace=\"{namespace}\"}})"))?;
            let count = up[0]["value"][1].as_str().unwrap_or("0").parse::<f64>()?;
            Ok((count >= 4.0).then_some(count))
        },
    )?;
    eprintln!("Prometheus discovered and scrapes {discovered} pods of {namespace}");

    let load = Load::start(address, RATE, Duration::from_secs(240))?;
    std::thread::sleep(Duration::from_secs(3));
    let (stable, _) = revisions(&rollout.canary()?);
    let released = Instant::now();
    release_with_errors(&rollout, "v2", "0.3")?;
    let aborted = rollout.wait("v2 rolled back", Duration::from_secs(120), |c| {
        phase(c) == Some(Phase::Aborted)
    })?;
    let rolled_back = released.elapsed();
    assert_eq!(reason(&aborted, "Progressing"), "AnalysisFailed");
    assert_eq!(revisions(&aborted).0, stable, "stable kept");

    release_with_errors(&rollout, "v3", "0")?;
    rollout.wait("v3 promoted", Duration::from_secs(150), |c| {
        let (now_stable, _) = revisions(c);
        now_stable != stable && phase(c) == Some(Phase::Healthy)
    })?;
    let answers = load.stop();
    let by_v2: Vec<_> = answers
        .iter()
        .filter(|a| a.version.as_deref() == Some("v2"))
        .collect();
    let bad = by_v2.len();
    let bad_failed = by_v2.iter().filter(|a| !a.succeeded()).count();
    let good_failed = answers
        .iter()
        .filter(|a| a.version.as_deref() != Some("v2") && !a.succeeded())
        .count();
    eprintln!(
        "v2 (30% errors) rolled back {:.1}s after the release; clients saw {bad_failed} failures in its {bad} answers; \
         v3 promoted; {good_failed} failures among the {} other answers",
        rolled_back.as_secs_f64(),
        answers.len() - bad
    );
    assert!(bad_failed > 0, "the bad release served real 5xx");
    assert_eq!(good_failed, 0, "stable and v3 failed no request");
    Ok(())
}
