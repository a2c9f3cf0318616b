//! What happens to one query: admitted ([`admission`]), then, once planned,
//! attempts placed and launched on the workers, retried when infrastructure
//! fails under them ([`attempt`]), and results held behind the output fence
//! until they can no longer be taken back ([`results`]); its progress is
//! read from the workers ([`progress`]).

pub mod admission;
pub mod attempt;
pub mod progress;
pub mod results;
