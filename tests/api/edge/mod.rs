//! The edge protections (issue 6): limits, rate limits, browser ingestion, OpenAPI.

mod browser;
mod limits;
mod openapi;
mod rate_limits;
pub mod raw;
