//! What a worker remembers so that no task outlives its query: cancelled
//! attempts (fences) and the task leases its coordinators renew.
//!
//! - A cancel fences the attempts it names: a launch of a fenced attempt
//!   that arrives late (a cancel that raced with the launch) is refused, and
//!   so is a read of its outputs, with a message that says it was cancelled.
//!   Fences are forgotten after [`FENCE_MEMORY`], long after any late call.
//! - A launch may carry a lease: the query's tasks on this worker live while
//!   its coordinator renews the lease (`weft.renew_leases`). A coordinator
//!   that dies or is cut off stops renewing; when the lease runs out the
//!   worker cancels the query's tasks, frees their buffers and fences every
//!   attempt of it.
//! - Attempts whose tasks were dropped when this worker lost its etcd lease
//!   (a new epoch) are remembered as lost: a late launch or read of one is
//!   refused as `Unavailable` naming this worker, so the coordinator runs
//!   the query again rather than failing it.
//!
//! ```text
//!  coordinator ──launch(lease)──► worker: deadline = now + lease
//!  coordinator ──renew(ids)─────► worker: deadline = now + lease, per id
//!                 (silence)       worker: deadline passed -> cancel + fence
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a cancelled query's fence is kept.
pub(crate) const FENCE_MEMORY: Duration = Duration::from_secs(600);

/// Fences and leases of one worker's queries.
#[derive(Debug, Default)]
pub(crate) struct Fencing {
    /// query -> (attempts below this one are fenced, when fenced).
    fences: Mutex<HashMap<String, (u32, Instant)>>,
    /// query -> (its lease, when it runs out).
    leases: Mutex<HashMap<String, (Duration, Instant)>>,
    /// (query, attempt) -> (why its tasks were dropped, when).
    lost: Mutex<HashMap<(String, u32), (String, Instant)>>,
}

impl Fencing {
    /// Fences the attempts of `query_id` below `keep_from` (0: every
    /// attempt). Fences only grow. Returns the bound it fenced below
    /// (`u32::MAX`: every attempt).
    pub(crate) fn fence(&self, query_id: &str, keep_from: u32) -> u32 {
        let below = if keep_from == 0 { u32::MAX } else { keep_from };
        let now = Instant::now();
        let mut fences = self.fences.lock();
        fences.retain(|_, (_, at)| now.duration_since(*at) < FENCE_MEMORY);
        let entry = fences.entry(query_id.to_string()).or_insert((0, now));
        entry.0 = entry.0.max(below);
        entry.1 = now;
        if below == u32::MAX {
            self.leases.lock().remove(query_id);
        }
        below
    }

    /// Whether `attempt` of `query_id` was cancelled here.
    pub(crate) fn is_fenced(&self, query_id: &str, attempt: u32) -> bool {
        self.fences
            .lock()
            .get(query_id)
            .is_some_and(|(below, _)| *below == u32::MAX || attempt < *below)
    }

    /// The tasks of `attempt` of `query_id` were dropped for `why` (the
    /// worker's registration was lost).
    pub(crate) fn lose(&self, query_id: &str, attempt: u32, why: &str) {
        let now = Instant::now();
        let mut lost = self.lost.lock();
        lost.retain(|_, (_, at)| now.duration_since(*at) < FENCE_MEMORY);
        lost.insert((query_id.to_string(), attempt), (why.to_string(), now));
        self.leases.lock().remove(query_id);
    }

    /// Why `attempt` of `query_id` was dropped here, if it was.
    pub(crate) fn lost(&self, query_id: &str, attempt: u32) -> Option<String> {
        self.lost
            .lock()
            .get(&(query_id.to_string(), attempt))
            .map(|(why, _)| why.clone())
    }

    /// A task of `query_id` was launched with `lease` (zero: none).
    pub(crate) fn launched(&self, query_id: &str, lease: Duration) {
        if lease.is_zero() {
            return;
        }
        let deadline = Instant::now() + lease;
        let mut leases = self.leases.lock();
        let entry = leases
            .entry(query_id.to_string())
            .or_insert((lease, deadline));
        entry.0 = entry.0.max(lease);
        entry.1 = entry.1.max(deadline);
    }

    /// Renews the leases of `query_ids`; returns those with no lease here
    /// (never launched here, or already ended).
    pub(crate) fn renew<'a>(&self, query_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        let mut unknown = Vec::new();
        for id in query_ids {
            match leases.get_mut(id) {
                Some((lease, deadline)) => *deadline = (*deadline).max(now + *lease),
                None => unknown.push(id.to_string()),
            }
        }
        unknown
    }

    /// The query ended here (released or cancelled): no lease to watch.
    pub(crate) fn ended(&self, query_id: &str) {
        self.leases.lock().remove(query_id);
    }

    /// Removes and returns the queries whose lease ran out, with the lease.
    pub(crate) fn expired(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        let gone: Vec<(String, Duration)> = leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, (lease, _))| (id.clone(), *lease))
            .collect();
        for (id, _) in &gone {
            leases.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_cover_the_attempts_they_name_and_only_grow() {
        let f = Fencing::default();
        assert!(!f.is_fenced("q", 0));
        f.fence("q", 2);
        assert!(f.is_fenced("q", 0) && f.is_fenced("q", 1));
        assert!(!f.is_fenced("q", 2), "a later attempt runs");
        f.fence("q", 1);
        assert!(f.is_fenced("q", 1), "a fence never shrinks");
        f.fence("q", 0);
        assert!(f.is_fenced("q", 7) && f.is_fenced("q", u32::MAX - 1));
        assert!(!f.is_fenced("other", 0));
    }

    #[test]
    fn leases_expire_unless_renewed() {
        let f = Fencing::default();
        f.launched("a", Duration::from_millis(50));
        f.launched("b", Duration::from_millis(50));
        f.launched("none", Duration::ZERO);
        assert_eq!(
            f.renew(["a", "none", "unknown"]),
            ["none".to_string(), "unknown".to_string()]
        );
        std::thread::sleep(Duration::from_millis(30));
        f.renew(["a"]);
        std::thread::sleep(Duration::from_millis(30));
        let expired: Vec<String> = f.expired().into_iter().map(|(id, _)| id).collect();
        assert_eq!(expired, ["b"], "a was renewed, b was not");
        assert!(f.expired().is_empty(), "an expired lease is reported once");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(f.expired().len(), 1, "a, no longer renewed");
    }

    #[test]
    fn lost_attempts_are_remembered_one_by_one() {
        let f = Fencing::default();
        f.launched("q", Duration::from_secs(60));
        f.lose("q", 1, "epoch 1");
        assert_eq!(f.lost("q", 1).as_deref(), Some("epoch 1"));
        assert_eq!(f.lost("q", 2), None, "a later attempt is not lost");
        assert_eq!(f.lost("other", 1), None);
        assert!(!f.is_fenced("q", 1), "lost is not cancelled");
        assert_eq!(
            f.renew(["q"]),
            ["q".to_string()],
            "no lease is left to renew"
        );
    }

    #[test]
    fn a_final_fence_ends_the_lease() {
        let f = Fencing::default();
        f.launched("q", Duration::from_millis(1));
        f.fence("q", 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(f.expired().is_empty());
    }
}
