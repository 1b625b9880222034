//! The Prometheus client: one number per query, with timeouts and credentials, and
//! anything short of a finite number reported as no data, never as zero.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use thiserror::Error;

use crate::template::unix_seconds;

/// Keys of the credentials Secret.
pub const TOKEN_KEY: &str = "token";
/// Basic-auth user name key.
pub const USERNAME_KEY: &str = "username";
/// Basic-auth password key.
pub const PASSWORD_KEY: &str = "password";
/// PEM certificate authority key.
pub const CA_KEY: &str = "ca.crt";

/// How to authenticate to Prometheus, read from the Secret the spec names.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Basic auth: user name and password.
    pub basic: Option<(String, String)>,
    /// Extra certificate authority (PEM) to trust for https.
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("basic", &self.basic.as_ref().map(|(user, _)| user))
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

/// Why a client could not be built. A spec or Secret problem a person fixes.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    /// The Secret has no usable credentials.
    #[error(
        "the Secret needs a `token` key, or both `username` and `password` (and may add `ca.crt`)"
    )]
    NoCredentials,
    /// A value is not UTF-8 or not a valid header.
    #[error("the Secret's `{0}` is not valid text for an HTTP header")]
    BadValue(&'static str),
    /// `ca.crt` is not PEM.
    #[error("the Secret's `ca.crt` is not a PEM certificate: {0}")]
    BadCertificate(String),
    /// The address or TLS set-up was refused.
    #[error("cannot use Prometheus address {address}: {message}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        message: String,
    },
}

impl Credentials {
    /// Reads credentials from a Secret's data.
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, ClientError> {
        let text = |key: &'static str| {
            data.get(key)
                .map(|bytes| {
                    String::from_utf8(bytes.clone())
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| ClientError::BadValue(key))
                })
                .transpose()
        };
        let token = text(TOKEN_KEY)?;
        let basic = match (text(USERNAME_KEY)?, text(PASSWORD_KEY)?) {
            (Some(user), Some(password)) => Some((user, password)),
            _ => None,
        };
        if token.is_none() && basic.is_none() {
            return Err(ClientError::NoCredentials);
        }
        Ok(Self {
            token,
            basic,
            ca: data.get(CA_KEY).cloned(),
        })
    }

    fn headers(&self) -> Result<HeaderMap, ClientError> {
        let mut headers = HeaderMap::new();
        let value = if let Some(token) = &self.token {
            Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadValue(TOKEN_KEY))?,
            )
        } else if let Some((user, password)) = &self.basic {
            let encoded = STANDARD.encode(format!("{user}:{password}"));
            Some(
                HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| ClientError::BadValue(PASSWORD_KEY))?,
            )
        } else {
            None
        };
        if let Some(mut value) = value {
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(headers)
    }
}

/// Why a query gave no number. The step holds; none of these is ever read as zero.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    /// Prometheus could not be reached, timed out, or refused the query.
    #[error("Prometheus query failed: {0}")]
    Failed(String),
    /// The query matched no series.
    #[error("the query returned no series")]
    Empty,
    /// The query returned NaN or an infinity.
    #[error("the query returned {0}")]
    NotFinite(String),
    /// The query returned several series where one number was wanted.
    #[error("the query returned {0} series; aggregate it to one, for example with sum()")]
    Ambiguous(usize),
    /// A series without the label that tells the series apart.
    #[error("a series of the result has no {0} label")]
    Unlabelled(String),
    /// A range vector instead of a number.
    #[error("the query returned a range vector; use an instant query such as sum(rate(...[1m]))")]
    RangeVector,
}

/// A Prometheus server to read analysis metrics from.
#[derive(Clone)]
pub struct Prometheus {
    client: prometheus_http_query::Client,
}

impl Prometheus {
    /// A client for `address` with a whole-request `timeout`. A process-wide rustls
    /// crypto provider must be installed first for https.
    pub fn new(
        address: &str,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let address_error = |message: String| ClientError::Address {
            address: address.to_owned(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .no_proxy();
        if let Some(credentials) = credentials {
            builder = builder.default_headers(credentials.headers()?);
            if let Some(pem) = &credentials.ca {
                let certificates = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
                if certificates.is_empty() {
                    return Err(ClientError::BadCertificate("no certificate found".into()));
                }
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
        }
        let http = builder.build().map_err(|e| address_error(e.to_string()))?;
        let client = prometheus_http_query::Client::from(http, address)
            .map_err(|e| address_error(e.to_string()))?;
        Ok(Self { client })
    }

    /// Runs an instant query that must produce one finite number, at Prometheus'
    /// own time.
    pub async fn value(&self, query: &str) -> Result<f64, QueryError> {
        self.value_at(query, None).await
    }

    /// Runs an instant query that must produce one finite number, evaluated at
    /// `at` (to the millisecond) when given: an analysis' window then ends where
    /// its analysis says, not when the query happened to arrive.
    pub async fn value_at(&self, query: &str, at: Option<SystemTime>) -> Result<f64, QueryError> {
        let mut request = self.client.query(query);
        if let Some(at) = at {
            request = request.query("time", unix_seconds(at));
        }
        let response = request
            .get()
            .await
            .map_err(|e| QueryError::Failed(error_chain(&e)))?;
        let sample = match response.data() {
            Data::Scalar(sample) => sample.value(),
            Data::Vector(series) => match series.as_slice() {
                [] => return Err(QueryError::Empty),
                [one] => one.sample().value(),
                many => return Err(QueryError::Ambiguous(many.len())),
            },
            Data::Matrix(_) => return Err(QueryError::RangeVector),
        };
        finite(sample)
    }

    /// Runs an instant query, evaluated at `at`, that must produce one or more
    /// series, each told apart by `label` and carrying a finite number: a
    /// histogram's buckets by `le`, say. Pairs of the label's value and the number.
    pub async fn values_by_at(
        &self,
        query: &str,
        label: &str,
        at: SystemTime,
    ) -> Result<Vec<(String, f64)>, QueryError> {
        let response = self
            .client
            .query(query)
            .query("time", unix_seconds(at))
            .get()
            .await
            .map_err(|e| QueryError::Failed(error_chain(&e)))?;
        let series = match response.data() {
            Data::Vector(series) => series,
            Data::Scalar(_) => return Err(QueryError::Unlabelled(label.to_owned())),
            Data::Matrix(_) => return Err(QueryError::RangeVector),
        };
        if series.is_empty() {
            return Err(QueryError::Empty);
        }
        series
            .iter()
            .map(|one| {
                let value = one
                    .metric()
                    .get(label)
                    .ok_or_else(|| QueryError::Unlabelled(label.to_owned()))?;
                Ok((value.clone(), finite(one.sample().value())?))
            })
            .collect()
    }
}

fn finite(sample: f64) -> Result<f64, QueryError> {
    if sample.is_finite() {
        Ok(sample)
    } else {
        Err(QueryError::NotFinite(sample.to_string()))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_need_a_token_or_a_user_and_password() {
        let secret = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            Credentials::from_secret(&secret(&[("username", "u")])),
            Err(ClientError::NoCredentials)
        );
        let token = Credentials::from_secret(&secret(&[("token", "abc\n")])).unwrap();
        assert_eq!(token.token.as_deref(), Some("abc"));
        let headers = token.headers().unwrap();
        assert_eq!(headers[AUTHORIZATION], "Bearer abc");
        let basic =
            Credentials::from_secret(&secret(&[("username", "u"), ("password", "p")])).unwrap();
        assert_eq!(basic.headers().unwrap()[AUTHORIZATION], "Basic dTpw");
        assert!(!format!("{basic:?}").contains('p'));
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused() {
        let credentials = Credentials {
            token: Some("t".into()),
            basic: None,
            ca: Some(b"not a certificate".to_vec()),
        };
        let Err(error) = Prometheus::new(
            "https://127.0.0.1:1",
            Some(&credentials),
            Duration::from_secs(1),
        ) else {
            panic!("a bad CA was accepted");
        };
        assert!(matches!(error, ClientError::BadCertificate(_)), "{error}");
    }
}
