//! Identity resolution.

mod batch;
pub mod graph;
pub mod manager;
mod intern;
pub mod normalize;
mod output;
pub mod state;
