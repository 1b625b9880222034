//! Templates: every variable filled in and escaped, unknown variables and bad PromQL
//! refused before anything is sent, and values that try to break out of a PromQL
//! string stay inside it.

use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use serin_prometheus::{TemplateError, VARIABLES, Variables, check, render};

fn arm() -> Variables {
    Variables {
        namespace: "shop".into(),
        name: "podinfo".into(),
        revision: "5d9f8c7b6a".into(),
        replicaset: "podinfo-5d9f8c7b6a".into(),
        service: "podinfo-canary".into(),
        interval: Duration::from_secs(15),
        elapsed: Duration::from_millis(75_900),
    }
}

/// The label matchers of the one vector selector a query holds.
fn matchers(query: &str) -> Vec<(String, MatchOp, String)> {
    fn find(expr: &Expr) -> Option<Vec<(String, MatchOp, String)>> {
        match expr {
            Expr::VectorSelector(selector) => Some(
                selector
                    .matchers
                    .matchers
                    .iter()
                    .map(|m| (m.name.clone(), m.op.clone(), m.value.clone()))
                    .collect(),
            ),
            Expr::MatrixSelector(matrix) => find(&Expr::VectorSelector(matrix.vs.clone())),
            Expr::Call(call) => call.args.args.iter().find_map(|a| find(a)),
            Expr::Aggregate(aggregate) => find(&aggregate.expr),
            Expr::Paren(paren) => find(&paren.expr),
            _ => None,
        }
    }
    let parsed = parser::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    find(&parsed).unwrap_or_else(|| panic!("no vector selector in {query}"))
}

#[test]
fn every_variable_is_filled_in_for_the_arm() {
    let query = render(
        r#"sum(increase(http_requests_total{namespace="{{namespace}}",app="{{name}}",rev="{{revision}}",rs="{{replicaset}}",pod=~"{{pods}}",svc="{{ service }}"}[{{elapsed}}]))"#,
        &arm(),
    )
    .expect("renders");
    assert!(query.contains("[75900ms]"), "{query}");
    let found = matchers(&query);
    let value = |label: &str| {
        found
            .iter()
            .find(|(name, _, _)| name == label)
            .map(|(_, _, value)| value.clone())
            .expect("the label is matched")
    };
    assert_eq!(value("namespace"), "shop");
    assert_eq!(value("app"), "podinfo");
    assert_eq!(value("rev"), "5d9f8c7b6a");
    assert_eq!(value("rs"), "podinfo-5d9f8c7b6a");
    assert_eq!(value("svc"), "podinfo-canary");
    assert_eq!(value("pod"), "podinfo-5d9f8c7b6a-[a-z0-9]{5}");
    let interval = render("rate(x[{{interval}}])", &arm()).expect("renders");
    assert_eq!(interval, "rate(x[15s])");
    let whole = Variables {
        elapsed: Duration::from_secs(75),
        ..arm()
    };
    let elapsed = render("increase(x[{{elapsed}}])", &whole).expect("renders");
    assert_eq!(elapsed, "increase(x[75s])", "whole seconds read as such");
}

#[test]
fn the_pods_regex_matches_only_the_arms_pods() {
    let mut arm = arm();
    arm.replicaset = "api.v2-abc".into();
    assert_eq!(arm.pods(), r"api\.v2-abc-[a-z0-9]{5}");
}

#[test]
fn values_that_try_to_break_out_of_the_string_stay_inside_it() {
    let attacks = [
        r#"x"} or vector(1) or up{a=""#,
        r#"x\"} or vector(1) #"#,
        "x\"}\n or vector(1)",
        r"trailing\",
        "\\\\\"",
        "tab\tand\u{7}bell",
        "unicode-ünïcode-🦀",
    ];
    for attack in attacks {
        let mut arm = arm();
        arm.namespace = attack.into();
        let query = render(r#"sum(up{namespace="{{namespace}}"})"#, &arm)
            .unwrap_or_else(|e| panic!("{attack:?}: {e}"));
        assert_eq!(
            matchers(&query),
            vec![("namespace".to_owned(), MatchOp::Equal, attack.to_owned())],
            "{attack:?} became {query}"
        );
        let parsed = parser::parse(&query).expect("parses");
        assert!(matches!(parsed, Expr::Aggregate(_)), "{attack:?}: {query}");
    }
}

#[test]
fn regex_metacharacters_in_names_match_literally() {
    let mut arm = arm();
    arm.replicaset = r#"a.b*c"d\e(f)"#.into();
    let query = render(r#"up{pod=~"{{pods}}"}"#, &arm).expect("renders");
    let (_, op, value) = matchers(&query).remove(0);
    assert!(matches!(op, MatchOp::Re(_)));
    assert_eq!(value, r#"a\.b\*c"d\\e\(f\)-[a-z0-9]{5}"#);
}

#[test]
fn an_unknown_variable_is_refused_with_the_list_of_known_ones() {
    let error = check(r#"up{pod="{{pod}}"}"#).expect_err("unknown variable");
    assert_eq!(error, TemplateError::UnknownVariable { name: "pod".into() });
    let text = error.to_string();
    for variable in VARIABLES {
        assert!(text.contains(&format!("{{{{{variable}}}}}")), "{text}");
    }
}

#[test]
fn an_unclosed_variable_is_refused() {
    assert_eq!(
        check(r#"up{pod="{{pods"}"#),
        Err(TemplateError::Unclosed { at: 8 })
    );
}

#[test]
fn a_query_that_does_not_parse_is_refused_before_it_is_sent() {
    let error = check("sum(rate(http_requests_total{pod=~\"{{pods}}\"}[{{interval}}])")
        .expect_err("unbalanced");
    assert!(matches!(error, TemplateError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("app-0123456789"), "{error}");
    assert!(check("sum(rate(x[{{interval}}])) by (").is_err());
}

#[test]
fn a_counter_is_read_from_its_samples_at_both_ends_of_the_window() {
    use serin_prometheus::counted;
    use std::time::{SystemTime, UNIX_EPOCH};
    let since: SystemTime = UNIX_EPOCH + Duration::from_millis(1_795_000_000_040);
    let selector = r#"http_requests_total{pod=~"{{pods}}",code=~"5.."}"#;
    let query = counted(selector, &arm(), since, true).expect("a selector");
    let series = r#"http_requests_total{pod=~"podinfo-5d9f8c7b6a-[a-z0-9]{5}",code=~"5.."}"#;
    let last = format!("last_over_time({series}[75900ms])");
    assert_eq!(
        query,
        format!("sum(({last} - {series} @ 1795000000.040) >= 0 or {last}) or vector(0)")
    );
    parser::parse(&query).expect("the query parses");
    let requests = counted("r", &arm(), since, false).expect("a selector");
    assert!(
        !requests.contains("vector(0)"),
        "no requests is no data: {requests}"
    );
}

#[test]
fn a_histograms_buckets_are_read_like_counters_one_series_per_bound() {
    use serin_prometheus::counted_buckets;
    use std::time::{SystemTime, UNIX_EPOCH};
    let since: SystemTime = UNIX_EPOCH + Duration::from_millis(1_795_000_000_040);
    let selector = r#"http_request_duration_seconds_bucket{pod=~"{{pods}}"}"#;
    let query = counted_buckets(selector, &arm(), since).expect("a selector");
    let series = r#"http_request_duration_seconds_bucket{pod=~"podinfo-5d9f8c7b6a-[a-z0-9]{5}"}"#;
    let last = format!("last_over_time({series}[75900ms])");
    assert_eq!(
        query,
        format!("sum by (le) (({last} - {series} @ 1795000000.040) >= 0 or {last})")
    );
    parser::parse(&query).expect("the query parses");
    assert!(matches!(
        counted_buckets("histogram_quantile(0.99, x)", &arm(), since),
        Err(TemplateError::NotASelector { .. })
    ));
}

#[test]
fn a_counter_must_be_a_series_selector() {
    use serin_prometheus::check_selector;
    assert_eq!(
        check_selector(r#"http_requests_total{pod=~"{{pods}}"}"#),
        Ok(())
    );
    for expression in [
        r#"sum(http_requests_total{pod=~"{{pods}}"})"#,
        r#"increase(http_requests_total{pod=~"{{pods}}"}[{{elapsed}}])"#,
        "vector(1)",
    ] {
        let error = check_selector(expression).expect_err(expression);
        assert!(
            matches!(error, TemplateError::NotASelector { .. }),
            "{expression}: {error}"
        );
        assert!(error.to_string().contains("series selector"), "{error}");
    }
    assert!(matches!(
        check_selector("x{pod=~\"{{pod}}\"}"),
        Err(TemplateError::UnknownVariable { .. })
    ));
}
