//! Authentication, query ownership, the read-only SQL surface and node
//! credentials, on a real cluster of processes (etcd, `weft-coordinator`,
//! two `weft-worker`s) with a password file made by `weft passwd`, a JWT key
//! and a cluster secret.
//!
//! `clients_are_checked_and_kept_apart`:
//! 1. `weft passwd` writes alice, bob and root (an admin) into a password
//!    file, reading each password from standard input.
//! 2. Every Flight SQL RPC is refused `Unauthenticated` without credentials,
//!    with a bogus session token, an expired JWT and a forged JWT; the
//!    handshake refuses a wrong password. Each message says which.
//! 3. alice (password) and dana (JWT) get answers equal to single-node
//!    DataFusion.
//! 4. bob cannot read, poll or cancel alice's query, nor see it in
//!    `system.runtime.queries`; root sees it with its SQL and user; alice
//!    reads it to the end.
//! 5. DDL, DML, `COPY ... TO`, `CREATE EXTERNAL TABLE` and reading a
//!    server file by path are refused; no file is written.
//! 6. A client that reaches a worker directly (launch, cancel, DoGet) is
//!    refused `Unauthenticated`, without a node token and with one signed by
//!    another secret; the worker's log says why.
//! 7. A worker started with another cluster secret fails to join (the
//!    members refuse its calls when it asks them first) and says why.
//!
//! `direct_results_tickets_are_signed_and_scoped`: with `--direct-results`
//! a client reads from the workers with the tickets it was given; a ticket
//! whose grant names another user or query, or has none, is refused.
//!
//! `exposed_without_authentication_refuses_to_start`: a coordinator or a
//! worker asked to listen on a non-loopback address without authentication
//! exits at once, naming the flags (it never binds the address).

use std::process::{Command, Stdio};
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, ProstMessageExt};
use arrow_flight::{Action, Criteria, Empty, FlightDescriptor, Ticket};
use futures::StreamExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use prost::Message;
use tonic::transport::Channel;
use weft_integration_tests::process::{binary, weft_passwd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{
    canonical_rows, connect, read_all, run_sql, single_node_rows, tpch_dir,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const SQL: &str =
    "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem GROUP BY 1 ORDER BY 1";
const JWT_SECRET: &str = "jwt-secret-of-at-least-32-bytes!!";

fn catalogs() -> String {
    format!(
        "default_catalog = \"tpch\"\n[catalogs.tpch]\nkind = \"files\"\npath = \"{}\"\nformat = \"parquet\"\n",
        tpch_dir(0.01, 2).display()
    )
}

async fn expected() -> Vec<String> {
    let ctx = weft_integration_tests::tpch_single_node(tpch_dir(0.01, 2)).await;
    single_node_rows(&ctx, SQL).await
}

fn jwt(sub: &str, exp_in: i64, secret: &str) -> String {
    let exp = weft_common::auth::unix_now() as i64 + exp_in;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A secured cluster: password file, JWT key, cluster secret, root as admin.
async fn secured_cluster(extra_env: &[(&str, &str)]) -> ProcessCluster {
    let files = tempfile::Builder::new()
        .prefix("weft-sec-")
        .tempdir()
        .unwrap()
        .keep();
    let passwords = files.join("passwords");
    for (user, password) in [
        ("alice", "wonderland"),
        ("bob", "builder"),
        ("root", "toor"),
    ] {
        weft_passwd(&passwords, user, password);
    }
    let jwt_key = files.join("jwt.key");
    std::fs::write(&jwt_key, JWT_SECRET).unwrap();
    let secret = files.join("cluster.secret");
    std::fs::write(&secret, "5e".repeat(32)).unwrap();
    let mut env = vec![
        (
            "WEFT_PASSWORD_FILE".to_string(),
            passwords.display().to_string(),
        ),
        (
            "WEFT_JWT_KEY_FILE".to_string(),
            jwt_key.display().to_string(),
        ),
        ("WEFT_ADMIN_USERS".to_string(), "root".to_string()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    ProcessCluster::start(
        2,
        ProcessOptions {
            catalogs: catalogs(),
            slots: 1,
            env,
            args: vec!["--cluster-secret-file".into(), secret.display().to_string()],
            etcd: None,
            http: true,
            sign_in: Some(("root".into(), "toor".into())),
            tls_ca: None,
        },
    )
    .await
    .expect("a secured cluster")
}

async fn sign_in(
    cluster: &ProcessCluster,
    user: &str,
    password: &str,
) -> FlightSqlServiceClient<Channel> {
    let mut client = connect(&cluster.flight_url()).await.unwrap();
    client.handshake(user, password).await.expect("sign in");
    client
}

async fn raw(cluster: &ProcessCluster) -> FlightServiceClient<Channel> {
    FlightServiceClient::new(
        Channel::from_shared(cluster.flight_url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Every Flight SQL RPC with `token`: each must be refused Unauthenticated
/// with a message containing `why`.
async fn every_rpc_refused(cluster: &ProcessCluster, token: Option<&str>, why: &str) {
    let mut c = raw(cluster).await;
    let statement = FlightDescriptor::new_cmd(
        arrow_flight::sql::CommandStatementQuery {
            query: SQL.into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    );
    let tables = FlightDescriptor::new_cmd(CommandGetTables::default().as_any().encode_to_vec());
    let ticket = Ticket::new(
        arrow_flight::sql::TicketStatementQuery {
            statement_handle: weft_proto::ResultTicket {
                query_id: "some-query".into(),
                endpoint: 0,
            }
            .encode_to_vec()
            .into(),
        }
        .as_any()
        .encode_to_vec(),
    );
    let progress = Action::new("weft.query_progress", "some-query");
    let prepare = Action::new(
        "CreatePreparedStatement",
        arrow_flight::sql::ActionCreatePreparedStatementRequest {
            query: SQL.into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    );
    let mut results: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "GetFlightInfo(statement)",
            c.get_flight_info(with_token(statement.clone(), token))
                .await
                .map(|_| ()),
        ),
        (
            "GetFlightInfo(GetTables)",
            c.get_flight_info(with_token(tables, token))
                .await
                .map(|_| ()),
        ),
        (
            "PollFlightInfo",
            c.poll_flight_info(with_token(statement.clone(), token))
                .await
                .map(|_| ()),
        ),
        (
            "GetSchema",
            c.get_schema(with_token(statement, token)).await.map(|_| ()),
        ),
        (
            "DoGet",
            c.do_get(with_token(ticket, token)).await.map(|_| ()),
        ),
        (
            "DoAction(progress)",
            c.do_action(with_token(progress, token)).await.map(|_| ()),
        ),
        (
            "DoAction(prepare)",
            c.do_action(with_token(prepare, token)).await.map(|_| ()),
        ),
        (
            "ListFlights",
            c.list_flights(with_token(Criteria::default(), token))
                .await
                .map(|_| ()),
        ),
        (
            "ListActions",
            c.list_actions(with_token(Empty {}, token))
                .await
                .map(|_| ()),
        ),
    ];
    let put = futures::stream::iter(vec![arrow_flight::FlightData::default()]);
    results.push(("DoPut", c.do_put(with_token(put, token)).await.map(|_| ())));
    let exchange = futures::stream::iter(vec![arrow_flight::FlightData::default()]);
    results.push((
        "DoExchange",
        c.do_exchange(with_token(exchange, token)).await.map(|_| ()),
    ));
    // A handshake with a bearer token (or nothing) signs in only with a
    // valid one.
    let hello = futures::stream::iter(vec![arrow_flight::HandshakeRequest::default()]);
    results.push((
        "Handshake",
        c.handshake(with_token(hello, token)).await.map(|_| ()),
    ));
    for (rpc, result) in results {
        let status = result.expect_err(rpc);
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{rpc}: {status}"
        );
        assert!(status.message().contains(why), "{rpc}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_are_checked_and_kept_apart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // 1.
        let mut cluster = secured_cluster(&[]).await;
        let expected = expected().await;
        // 2.
        every_rpc_refused(&cluster, None, "no credentials").await;
        every_rpc_refused(
            &cluster,
            Some("weft-session1.YWxpY2U.9999999999.00"),
            "not issued",
        )
        .await;
        every_rpc_refused(&cluster, Some(&jwt("dana", -600, JWT_SECRET)), "expired").await;
        every_rpc_refused(
            &cluster,
            Some(&jwt("dana", 600, "a-forged-key-of-at-least-32-bytes")),
            "signature",
        )
        .await;
        let mut c = connect(&cluster.flight_url()).await.unwrap();
        let err = c.handshake("alice", "not-her-password").await.unwrap_err();
        assert!(
            err.to_string().contains("wrong user name or password"),
            "{err}"
        );

        // 3.
        let mut alice = sign_in(&cluster, "alice", "wonderland").await;
        let info = alice.execute(SQL.into(), None).await.unwrap();
        assert_eq!(
            canonical_rows(&read_all(&mut alice, &info).await.unwrap()),
            expected
        );
        let mut dana = connect(&cluster.flight_url()).await.unwrap();
        dana.set_token(jwt("dana", 600, JWT_SECRET));
        let info = dana.execute(SQL.into(), None).await.unwrap();
        assert_eq!(
            canonical_rows(&read_all(&mut dana, &info).await.unwrap()),
            expected
        );

        // 4. alice's query, planned and running, not read yet.
        let info = alice.execute(SQL.into(), None).await.unwrap();
        let id = weft_coordinator::flight_sql::query_ids_of(&info).remove(0);
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let mut bob = sign_in(&cluster, "bob", "builder").await;
        let read = bob.do_get(ticket.clone()).await.map(|_| ()).unwrap_err();
        assert!(read.to_string().contains("unknown"), "{read}");
        let mut bob_raw = raw(&cluster).await;
        let bob_token = bob.token().unwrap().clone();
        let poll = bob_raw
            .do_action(with_token(
                Action::new("weft.query_progress", id.clone()),
                Some(&bob_token),
            ))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(poll.code(), tonic::Code::NotFound, "{poll}");
        let cancel = bob_raw
            .do_action(with_token(
                Action::new(
                    "CancelFlightInfo",
                    arrow_flight::CancelFlightInfoRequest::new(info.clone()).encode_to_vec(),
                ),
                Some(&bob_token),
            ))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(cancel.to_string().contains("unknown"), "{cancel}");
        let listed = |rows: Vec<String>| rows.iter().any(|r| r.contains(&id));
        let seen_by_bob = canonical_rows(
            &weft_integration_tests::run_sql(
                &mut bob,
                "SELECT query_id, sql FROM system.runtime.queries",
            )
            .await
            .unwrap(),
        );
        assert!(!listed(seen_by_bob.clone()), "{seen_by_bob:?}");
        let mut root = sign_in(&cluster, "root", "toor").await;
        let seen_by_root = canonical_rows(
            &weft_integration_tests::run_sql(
                &mut root,
                &format!("SELECT user, sql FROM system.runtime.queries WHERE query_id = '{id}'"),
            )
            .await
            .unwrap(),
        );
        assert_eq!(seen_by_root.len(), 1, "{seen_by_root:?}");
        assert!(seen_by_root[0].contains("alice") && seen_by_root[0].contains("l_returnflag"));
        assert_eq!(
            canonical_rows(&read_all(&mut alice, &info).await.unwrap()),
            expected
        );

        // 5.
        let target = cluster.dir.path().join("copied.csv");
        for sql in [
            "CREATE VIEW v AS SELECT 1".to_string(),
            "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'".to_string(),
            format!("COPY (SELECT 1) TO '{}' STORED AS CSV", target.display()),
            "INSERT INTO lineitem SELECT * FROM lineitem LIMIT 1".to_string(),
            "DROP TABLE lineitem".to_string(),
        ] {
            let err = alice
                .execute(sql.clone(), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("not allowed"), "{sql}: {err}");
            let err = alice
                .prepare(sql.clone(), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("not allowed"), "prepared {sql}: {err}");
        }
        assert!(!target.exists());
        for sql in [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM 'file:///etc/passwd'",
        ] {
            assert!(alice.execute(sql.into(), None).await.is_err(), "{sql}");
        }

        // 6.
        let worker = &cluster.workers[0];
        let mut direct = FlightServiceClient::new(
            Channel::from_shared(format!("http://{}", worker.flight))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let other = weft_common::auth::ClusterSecret::from_bytes(&[7; 32]).unwrap();
        for token in [None, Some(other.node_token())] {
            let signed = |mut r: tonic::Request<Action>| {
                if let Some(t) = &token {
                    r.metadata_mut()
                        .insert(weft_common::auth::NODE_TOKEN_METADATA, t.parse().unwrap());
                }
                r
            };
            let launch = weft_proto::LaunchTask::default().encode_to_vec();
            for (kind, body) in [
                (weft_common::flight::actions::LAUNCH_TASK, launch),
                (
                    weft_common::flight::actions::CANCEL_QUERY,
                    weft_proto::QueryRef {
                        query_id: id.clone(),
                        keep_from_attempt: 0,
                    }
                    .encode_to_vec(),
                ),
            ] {
                let status = direct
                    .do_action(signed(tonic::Request::new(Action::new(kind, body))))
                    .await
                    .map(|_| ())
                    .unwrap_err();
                assert_eq!(
                    status.code(),
                    tonic::Code::Unauthenticated,
                    "{kind}: {status}"
                );
            }
            let ticket = weft_proto::PartitionTicket {
                task: Some(weft_proto::TaskId {
                    query_id: id.clone(),
                    stage_id: 0,
                    task_index: 0,
                    attempt: 0,
                }),
                partition: 0,
                grant: None,
            };
            let mut request = tonic::Request::new(Ticket::new(ticket.encode_to_vec()));
            if let Some(t) = &token {
                request
                    .metadata_mut()
                    .insert(weft_common::auth::NODE_TOKEN_METADATA, t.parse().unwrap());
            }
            let status = direct.do_get(request).await.map(|_| ()).unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "DoGet: {status}"
            );
        }
        let log = std::fs::read_to_string(&worker.log).unwrap();
        assert!(
            log.contains("refused an internal call: no node token"),
            "{log}"
        );
        assert!(
            log.contains("not signed with this cluster's secret"),
            "{log}"
        );
        // 7. A worker with another cluster secret asks the members before it
        // joins: they refuse its calls, so it exits and never registers.
        let wrong = cluster.dir.path().join("other.secret");
        std::fs::write(&wrong, "7a".repeat(32)).unwrap();
        let log = cluster
            .refused_worker(&["--cluster-secret-file".into(), wrong.display().to_string()])
            .await
            .expect("a worker with another cluster secret is refused");
        assert!(
            log.contains("node credentials are refused by the cluster, so it does not join")
                && log.contains("not signed with this cluster's secret")
                && log.contains("--cluster-secret-file"),
            "{log}"
        );
        assert_eq!(
            canonical_rows(
                &run_sql(&mut root, "SELECT count(*) FROM system.runtime.workers")
                    .await
                    .unwrap()
            ),
            ["2"]
        );
        for secret in [
            "wonderland",
            "builder",
            "toor",
            JWT_SECRET,
            &"5e".repeat(32),
        ] {
            for node in std::iter::once(&cluster.coordinator).chain(&cluster.workers) {
                let text = std::fs::read_to_string(&node.log).unwrap();
                assert!(!text.contains(secret), "{} logged a secret", node.name);
            }
        }
    })
    .await
    .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_results_tickets_are_signed_and_scoped() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = secured_cluster(&[("WEFT_DIRECT_RESULTS", "true")]).await;
        let expected = expected().await;
        let mut alice = sign_in(&cluster, "alice", "wonderland").await;
        let info = alice.execute(SQL.into(), None).await.unwrap();
        let endpoint = info.endpoint[0].clone();
        let location = endpoint.location[0].uri.clone();
        let url = weft_common::flight::location_url(&location).unwrap();
        let mut worker =
            FlightServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap());
        let ticket = endpoint.ticket.clone().unwrap();
        let original = weft_proto::PartitionTicket::decode(&*ticket.ticket).unwrap();
        assert!(original.grant.is_some(), "the ticket carries no grant");
        let altered = |f: &dyn Fn(&mut weft_proto::PartitionTicket)| {
            let mut t = original.clone();
            f(&mut t);
            Ticket::new(t.encode_to_vec())
        };
        for (what, bad) in [
            (
                "another user",
                altered(&|t| t.grant.as_mut().unwrap().user = "bob".into()),
            ),
            (
                "another query",
                altered(&|t| t.task.as_mut().unwrap().query_id = "other".into()),
            ),
            ("no grant", altered(&|t| t.grant = None)),
        ] {
            let status = worker.do_get(bad).await.map(|_| ()).unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{what}: {status}"
            );
        }
        // The tickets as given read the answer (every endpoint, from its worker).
        let mut batches = Vec::new();
        for e in &info.endpoint {
            let url = weft_common::flight::location_url(&e.location[0].uri).unwrap();
            let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
            let mut client = FlightSqlServiceClient::new(channel);
            let mut stream = client
                .do_get(e.ticket.clone().unwrap())
                .await
                .expect("read with the grant");
            while let Some(b) = stream.next().await {
                batches.push(b.unwrap());
            }
        }
        assert_eq!(canonical_rows(&batches), expected);
    })
    .await
    .expect("the test timed out");
}

#[test]
fn exposed_without_authentication_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let catalogs = dir.path().join("catalogs.toml");
    std::fs::write(&catalogs, catalogs_text()).unwrap();
    for (binary_name, flags) in [
        ("weft-coordinator", "--password-file"),
        ("weft-worker", "--cluster-secret-file"),
    ] {
        // An address of no interface here: the check comes before any bind.
        let out = Command::new(binary(binary_name).unwrap())
            .args([
                "--listen",
                "192.0.2.10:50050",
                "--http-listen",
                "none",
                "--etcd",
                "http://127.0.0.1:1",
            ])
            .arg("--catalogs")
            .arg(&catalogs)
            .env_remove("WEFT_INSECURE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary_name} started");
        assert!(
            text.contains("refusing to serve on 192.0.2.10:50050 without authentication")
                && text.contains(flags)
                && text.contains("--insecure"),
            "{binary_name}: {text}"
        );
    }
}

fn catalogs_text() -> String {
    "[catalogs.x]\nkind = \"files\"\npath = \"/nonexistent\"\n".to_string()
}
