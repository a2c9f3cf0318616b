//! From a DataFusion physical plan to a stage graph (see [`stages`]).

pub mod balance;
pub mod broadcast;
pub mod explain;
pub mod local_leaves;
pub mod stages;
