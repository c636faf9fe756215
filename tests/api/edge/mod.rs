//! The edge protections (issues 6 and 13): limits, connections, rate limits, browser
//! ingestion, OpenAPI.

mod browser;
mod connections;
mod limits;
mod openapi;
mod rate_limits;
pub mod raw;
