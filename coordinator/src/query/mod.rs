//! What happens to one query once it is planned: attempts placed and
//! launched on the workers, retried when infrastructure fails under them
//! ([`attempt`]), and results held behind the output fence until they can no
//! longer be taken back ([`results`]).

pub mod attempt;
pub mod results;
