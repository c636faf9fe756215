//! The edge protections (issues 6, 13 and 20): limits, connections, rate limits, browser
//! ingestion, OpenAPI, slow requests holding connection slots.

mod browser;
mod connections;
mod limits;
mod openapi;
mod rate_limits;
pub mod raw;
mod slot_holders;
