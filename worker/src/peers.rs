//! Proof of membership before joining: a worker with node credentials (mutual
//! TLS, a cluster secret) shows it can talk to the cluster's nodes before it
//! registers, so one with the wrong CA, certificate or secret fails to join
//! and says why instead of joining and failing every query placed on it.
//!
//! The worker calls a harmless action (`weft.query_status` of no query) on
//! up to [`PROBED`] current members at once:
//! - one answer: the credentials work, join;
//! - no answer, and at least one peer refused the credentials (a TLS
//!   handshake that failed on a certificate, or `Unauthenticated`): refuse
//!   to join, naming the peer, its reason and the flags to check;
//! - no member, or none reachable (stale registrations of dead workers): join,
//!   since there is nobody to disagree with.

use std::time::Duration;

use weft_common::flight::{actions, ClientPool};
use weft_common::registry::{Members, WorkerInfo};
use weft_proto::QueryRef;

/// How many members are asked at once.
const PROBED: usize = 3;
/// How long one probe may take (a frozen peer is not an answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one probe showed.
#[derive(Debug)]
enum Probe {
    Accepted,
    /// The peer and this worker do not trust each other's credentials.
    Refused(String),
    /// No answer (gone, frozen, not listening): says nothing about trust.
    Unreachable,
}

/// `Ok` if this worker may join the cluster `members` (see the module docs);
/// `Err` names the refusing peers and what to fix.
pub(crate) async fn check_credentials(
    clients: &ClientPool,
    own_address: &str,
    members: &Members,
    tls: bool,
    secret: bool,
) -> Result<(), String> {
    let peers: Vec<&WorkerInfo> = members
        .iter()
        .filter(|w| w.address != own_address)
        .take(PROBED)
        .collect();
    if peers.is_empty() {
        return Ok(());
    }
    let probes = futures::future::join_all(peers.iter().map(|w| probe(clients, &w.address))).await;
    let mut refusals = Vec::new();
    for (peer, probe) in peers.iter().zip(probes) {
        match probe {
            Probe::Accepted => return Ok(()),
            Probe::Refused(why) => refusals.push(format!("{} at {}: {why}", peer.id, peer.address)),
            Probe::Unreachable => {}
        }
    }
    if refusals.is_empty() {
        return Ok(());
    }
    let mut check = Vec::new();
    if tls {
        check.push(
            "--tls-ca-file must be the CA that signed the cluster's node certificates, and \
             --tls-cert-file a certificate that CA signed",
        );
    }
    if secret {
        check.push("--cluster-secret-file must hold the same secret as on every other node");
    }
    Err(format!(
        "this worker's node credentials are refused by the cluster, so it does not join: {}; {}",
        refusals.join("; "),
        check.join("; ")
    ))
}

async fn probe(clients: &ClientPool, address: &str) -> Probe {
    let call = clients.action(
        address,
        actions::QUERY_STATUS,
        QueryRef {
            query_id: "weft-join-check".to_string(),
            keep_from_attempt: 0,
        },
    );
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Err(_) => Probe::Unreachable,
        Ok(Ok(_)) => Probe::Accepted,
        Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
            Probe::Refused(status.message().to_string())
        }
        Ok(Err(status)) => {
            let text = error_chain(&status);
            if is_certificate_failure(&text) {
                Probe::Refused(format!("TLS handshake failed: {text}"))
            } else if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
            ) {
                Probe::Unreachable
            } else {
                // The peer ran the call and answered: the credentials work.
                Probe::Accepted
            }
        }
    }
}

/// The status message with every source error below it.
fn error_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// A TLS failure about certificates (either side's), as rustls words it.
fn is_certificate_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("certificate")
        || t.contains("unknownissuer")
        || t.contains("unknownca")
        || t.contains("badcertificate")
        || t.contains("fatal alert")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_told_from_unreachable_peers() {
        for refused in [
            "transport error: invalid peer certificate: UnknownIssuer",
            "received fatal alert: UnknownCA",
            "received fatal alert: BadCertificate",
            "peer sent no certificates",
        ] {
            assert!(is_certificate_failure(refused), "{refused}");
        }
        for other in [
            "transport error: Connection refused (os error 111)",
            "tcp connect error: deadline has elapsed",
            "connection reset by peer",
        ] {
            assert!(!is_certificate_failure(other), "{other}");
        }
    }

    #[tokio::test]
    async fn nobody_to_ask_or_nobody_answering_lets_the_worker_join() {
        let clients = ClientPool::new();
        let none: Members = std::sync::Arc::new(vec![]);
        assert!(
            check_credentials(&clients, "http://127.0.0.1:1", &none, true, true)
                .await
                .is_ok()
        );
        // A stale registration of a dead worker: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let stale: Members = std::sync::Arc::new(vec![WorkerInfo {
            id: "worker-gone".into(),
            address: dead,
            slots: 1,
            version: String::new(),
            draining: false,
            epoch: 0,
            memory_limit: None,
        }]);
        assert!(
            check_credentials(&clients, "http://127.0.0.1:1", &stale, true, true)
                .await
                .is_ok()
        );
    }
}
