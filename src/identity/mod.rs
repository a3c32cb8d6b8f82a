//! Identity resolution.

mod batch;
pub mod graph;
mod intern;
mod load;
pub mod manager;
pub mod normalize;
mod output;
mod rules;
pub mod state;
