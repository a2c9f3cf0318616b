//! One trace per query across every process: a coordinator and two workers
//! as separate processes export spans over OTLP/gRPC to a receiver inside
//! this test (a tonic `TraceService` from `opentelemetry-proto`).
//!
//! 1. Start the OTLP receiver.
//! 2. Start the coordinator and two workers with `--otlp-endpoint` and a
//!    batch delay of a minute, so spans only leave on the shutdown flush.
//! 3. Run a multi-stage query with the client's own `traceparent`; check its
//!    answer against single-node DataFusion.
//! 4. SIGTERM every process; each exits and flushes its pending spans.
//! 5. The query's spans come from the coordinator and both workers, share
//!    the client's trace id, and every parent link resolves to a received
//!    span or to the client's span; query, task, exchange-read and result
//!    spans carry `query_id`, `stage`, `task`, `worker`; resources name
//!    `service.name` and `service.instance.id`; with `--trace-operators`
//!    (here through its environment variable) the workers' operators have
//!    spans under their tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weft_integration_tests::otlp::{OtlpReceiver, Received};
use weft_integration_tests::process::{ProcessCluster, ProcessOptions};
use weft_integration_tests::{canonical_rows, connect, read_all, tpch_dir};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_querys_spans_from_every_process_form_one_trace() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("the trace scenario timed out");
}

async fn scenario() {
    // 1. The receiver.
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");

    // 2. The cluster, exporting only when flushed.
    let dir = tpch_dir(0.01, 2);
    let catalogs = format!(
        "default_catalog = \"tpch\"\n\n[catalogs.tpch]\nkind = \"files\"\npath = {:?}\nformat = \"parquet\"\n",
        dir.to_string_lossy()
    );
    let mut cluster = ProcessCluster::start(
        2,
        ProcessOptions {
            catalogs,
            slots: 2,
            // Log lines filtered to warnings: spans are exported regardless.
            env: vec![
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "60000".into()),
                ("RUST_LOG".into(), "warn".into()),
                // Operator spans on the workers (the coordinator ignores it).
                ("WEFT_TRACE_OPERATORS".into(), "true".into()),
            ],
            args: vec!["--otlp-endpoint".into(), receiver.endpoint()],
            etcd: None,
            http: true,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await
    .expect("cluster");

    // 3. A multi-stage query under the client's trace.
    let client_trace = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let mut client = connect(&cluster.flight_url()).await.expect("connect");
    client.set_header("traceparent", format!("00-{client_trace}-{client_span}-01"));
    let sql = "SELECT n_name, count(*) AS customers, sum(c_acctbal) AS balance \
               FROM tpch.public.customer JOIN tpch.public.nation ON c_nationkey = n_nationkey \
               GROUP BY n_name ORDER BY n_name";
    let info = client
        .execute(sql.to_string(), None)
        .await
        .expect("execute");
    let got = canonical_rows(&read_all(&mut client, &info).await.expect("read"));
    let reference = datafusion::prelude::SessionContext::new();
    for t in ["customer", "nation"] {
        reference
            .register_parquet(
                t,
                dir.join(t).to_string_lossy().as_ref(),
                Default::default(),
            )
            .await
            .expect("register");
    }
    let want = canonical_rows(
        &reference
            .sql(&sql.replace("tpch.public.", ""))
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run"),
    );
    assert_eq!(got, want);
    assert_eq!(
        receiver.spans().len(),
        0,
        "spans arrived before the flush: the batch delay was not honoured"
    );
    // Let the coordinator release the query's tasks (it ends them after the last read).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4. SIGTERM: every process exits and flushes.
    for node in cluster.workers.iter_mut().chain([&mut cluster.coordinator]) {
        node.signal("TERM").expect("SIGTERM");
    }
    for node in cluster.workers.iter_mut().chain([&mut cluster.coordinator]) {
        let status = node.wait_exit(Duration::from_secs(30)).await.expect("exit");
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            node.name,
            node.log_tail()
        );
    }

    // 5. One trace with intact links.
    let spans: Vec<Received> = receiver
        .spans()
        .into_iter()
        .filter(|s| hex(&s.trace_id) == client_trace)
        .collect();
    let ids: BTreeSet<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
    for s in &spans {
        let parent = hex(&s.parent);
        assert!(
            parent == client_span || ids.contains(&parent),
            "span {} ({}) has parent {parent}, which is neither the client's span nor a received span",
            s.name,
            s.service
        );
    }
    let by_service: BTreeMap<&str, BTreeSet<&str>> =
        spans.iter().fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.service.as_str())
                .or_default()
                .insert(s.instance.as_str());
            m
        });
    assert_eq!(
        by_service.get("weft-coordinator").map(BTreeSet::len),
        Some(1),
        "{by_service:?}"
    );
    assert_eq!(
        by_service.get("weft-worker").map(BTreeSet::len),
        Some(2),
        "both workers send spans of the query: {by_service:?}"
    );
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "flight_sql",
        "query",
        "admission",
        "planning",
        "stage_cutting",
        "launch",
        "result_stream",
        "task",
        "exchange_read",
        "serve_output",
    ] {
        assert!(names.contains(name), "no {name} span; got {names:?}");
    }
    let query = spans
        .iter()
        .find(|s| s.name == "query")
        .expect("query span");
    let query_id = query.attributes.get("query_id").cloned().expect("query_id");
    assert_eq!(
        query.attributes.get("state").map(String::as_str),
        Some("finished")
    );
    for s in spans.iter().filter(|s| s.name == "task") {
        assert_eq!(s.attributes.get("query_id"), Some(&query_id));
        for field in ["stage", "task", "worker"] {
            assert!(
                s.attributes.contains_key(field),
                "task span without {field}: {s:?}"
            );
        }
        assert_eq!(
            s.attributes.get("worker"),
            Some(&s.instance),
            "task span names its worker"
        );
    }
    assert!(
        spans.iter().any(|s| s.name == "exchange_read"
            && s.attributes.get("transport").map(String::as_str) == Some("flight")),
        "no exchange read crossed Flight between workers"
    );
    // --trace-operators: the operators of the tasks' fragments, under their tasks.
    let by_id: std::collections::HashMap<String, &Received> =
        spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    for op in ["HashJoinExec", "AggregateExec", "StageReaderExec"] {
        let span = spans
            .iter()
            .find(|s| s.name == op && s.service == "weft-worker")
            .unwrap_or_else(|| panic!("no {op} operator span; got {names:?}"));
        let mut parent = by_id.get(&hex(&span.parent)).copied();
        while let Some(p) = parent.filter(|p| p.name != "task") {
            parent = by_id.get(&hex(&p.parent)).copied();
        }
        assert!(parent.is_some(), "the {op} span is not under a task span");
    }
}
