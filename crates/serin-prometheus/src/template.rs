//! Query templates: `{{variable}}` filled in per arm, every value escaped for PromQL,
//! and the result parsed before it is ever sent.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// The variables a query template may use; the API's list, which its CEL rules check.
pub use serin_api::TEMPLATE_VARIABLES as VARIABLES;

/// What a template is filled in with for one arm (canary or stable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variables {
    /// The Canary's namespace.
    pub namespace: String,
    /// The Canary's name.
    pub name: String,
    /// The arm's revision (pod template hash).
    pub revision: String,
    /// The arm's ReplicaSet, `<name>-<revision>`.
    pub replicaset: String,
    /// The arm's Service, `<name>-stable` or `<name>-canary`.
    pub service: String,
    /// The analysis interval.
    pub interval: Duration,
    /// Time since the step's weight took effect, to the millisecond: with the
    /// query evaluated at the analysis' own time, the range starts exactly there.
    pub elapsed: Duration,
}

/// Why a template cannot be used. Reported as a spec error; no query is sent.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{…}}` names a variable that does not exist.
    #[error("unknown variable {{{{{name}}}}}; the variables are {}", known())]
    UnknownVariable {
        /// The name as written.
        name: String,
    },
    /// `{{` without a closing `}}`.
    #[error("{{{{ at byte {at} is not closed with }}}}")]
    Unclosed {
        /// Byte offset of the `{{`.
        at: usize,
    },
    /// A counter, filled in, is not a series selector.
    #[error(
        "must be a series selector of counters such as http_requests_total{{pod=~\"{{{{pods}}}}\"}}, not an expression ({query}): Serin reads each series itself"
    )]
    NotASelector {
        /// The selector as it would have been used.
        query: String,
    },
    /// The filled-in query is not PromQL.
    #[error("is not valid PromQL once filled in ({query}): {message}")]
    Parse {
        /// The query as it would have been sent.
        query: String,
        /// The parser's complaint.
        message: String,
    },
}

fn known() -> String {
    VARIABLES.map(|v| format!("{{{{{v}}}}}")).join(", ")
}

impl Variables {
    /// Placeholder values of the right shape, to check a template before a rollout.
    pub fn example() -> Self {
        Self {
            namespace: "default".into(),
            name: "app".into(),
            revision: "0123456789".into(),
            replicaset: "app-0123456789".into(),
            service: "app-canary".into(),
            interval: Duration::from_secs(15),
            elapsed: Duration::from_secs(60),
        }
    }

    /// A regex for the arm's pods: the ReplicaSet's name and the 5-character suffix
    /// the ReplicaSet controller appends.
    pub fn pods(&self) -> String {
        format!("{}-[a-z0-9]{{5}}", regex_literal(&self.replicaset))
    }

    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "namespace" => string_content(&self.namespace),
            "name" => string_content(&self.name),
            "revision" => string_content(&self.revision),
            "replicaset" => string_content(&self.replicaset),
            "pods" => string_content(&self.pods()),
            "service" => string_content(&self.service),
            "interval" => duration(self.interval),
            "elapsed" => window(self.elapsed),
            _ => return None,
        })
    }
}

/// Fills in a template and checks that the result parses as PromQL.
pub fn render(template: &str, variables: &Variables) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unclosed { at: offset + start })?;
        let name = after[..end].trim();
        let value = variables
            .value(name)
            .ok_or_else(|| TemplateError::UnknownVariable { name: name.into() })?;
        out.push_str(&value);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    promql_parser::parser::parse(&out).map_err(|message| TemplateError::Parse {
        query: out.clone(),
        message,
    })?;
    Ok(out)
}

/// Checks a template with placeholder values: unknown variables and PromQL that does
/// not parse are found before any rollout.
pub fn check(template: &str) -> Result<(), TemplateError> {
    render(template, &Variables::example()).map(drop)
}

/// The query for what the counters of `selector` gained over the window that
/// starts at `since` and ends `variables.elapsed` later, where the query is
/// evaluated: for each series, its last sample in the window less its last sample
/// at `since`. A series with no sample at `since` (a new pod, a first error) counts
/// from zero, one whose value fell (a restart) counts from its restart, and one
/// that ended in the window (a pod scaled away) keeps what it counted. Raw
/// samples, no extrapolation: whole numbers, read alike for both arms. With
/// `zero_when_none`, no series at all reads as 0 (no error has happened).
pub fn counted(
    selector: &str,
    variables: &Variables,
    since: SystemTime,
    zero_when_none: bool,
) -> Result<String, TemplateError> {
    let mut query = format!("sum({})", gains(selector, variables, since)?);
    if zero_when_none {
        query.push_str(" or vector(0)");
    }
    Ok(query)
}

/// The query for what a histogram's bucket counters of `selector` gained over the
/// window, read as [`counted`] reads counters, summed per bucket bound: one series
/// per `le`, the cumulative count of requests at most that slow.
pub fn counted_buckets(
    selector: &str,
    variables: &Variables,
    since: SystemTime,
) -> Result<String, TemplateError> {
    Ok(format!(
        "sum by (le) ({})",
        gains(selector, variables, since)?
    ))
}

/// Each series' gain over the window, as [`counted`] explains it.
fn gains(
    selector: &str,
    variables: &Variables,
    since: SystemTime,
) -> Result<String, TemplateError> {
    let series = render_selector(selector, variables)?;
    let start = unix_seconds(since);
    let last = format!("last_over_time({series}[{}])", window(variables.elapsed));
    Ok(format!("({last} - {series} @ {start}) >= 0 or {last}"))
}

/// Checks a counter selector with placeholder values, as [`check`] does a query.
pub fn check_selector(template: &str) -> Result<(), TemplateError> {
    render_selector(template, &Variables::example()).map(drop)
}

fn render_selector(template: &str, variables: &Variables) -> Result<String, TemplateError> {
    let series = render(template, variables)?;
    match promql_parser::parser::parse(&series) {
        Ok(promql_parser::parser::Expr::VectorSelector(_)) => Ok(series),
        _ => Err(TemplateError::NotASelector { query: series }),
    }
}

/// Escapes a value for the inside of a double-quoted PromQL string (templates put
/// variables in double quotes): the value can neither end the string nor inject a
/// matcher.
pub fn string_content(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes regex metacharacters so that a name matches only itself in `=~`.
pub fn regex_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A duration as PromQL writes it: whole seconds, at least one.
pub fn duration(value: Duration) -> String {
    format!("{}s", value.as_secs().max(1))
}

/// A time as Prometheus takes it (an `@` modifier, a query's `time`): Unix
/// seconds to the millisecond, `1795000000.040`.
pub(crate) fn unix_seconds(at: SystemTime) -> String {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// A window's length as PromQL writes it, to the millisecond (`75s`, `75900ms`):
/// rounding it to a second would move the window's start by up to a second
/// between two analyses of one window, and a scrape at the edge would fall in and
/// out of the count.
pub fn window(value: Duration) -> String {
    let millis = value.as_millis().max(1);
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}
