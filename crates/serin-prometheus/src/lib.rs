//! Where the analysis reads its numbers: query templates with PromQL escaping, and
//! the Prometheus HTTP client.

pub mod client;
pub mod template;

pub use client::{ClientError, Credentials, Prometheus, QueryError};
pub use template::{
    TemplateError, VARIABLES, Variables, check, check_selector, counted, counted_buckets, render,
};
