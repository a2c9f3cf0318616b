//! Fuzzing on stable Rust: the decoders that read bytes from outside a
//! process, each fed its corpus in `fuzz/corpus/<target>/` (replayed on every
//! run, crashers included) and then a seeded stream of mutations of it
//! (bit flips, byte sets, truncations, duplications, insertions, splices).
//! Any panic fails the test; the input is saved as
//! `fuzz/corpus/<target>/crash-<hash>` so it is replayed from then on.
//!
//! Targets: `ticket` (Flight tickets as the coordinator and the workers
//! decode them), `command` (Flight SQL commands and descriptors), `catalog`
//! (the catalog file parser), `copy` (PostgreSQL's binary COPY decoder,
//! fed in random chunks).
//!
//! `WEFT_FUZZ_ITERATIONS` (default 3000 per target) and `WEFT_FUZZ_SEED`
//! (default: from the clock, printed) control a run; longer runs outside CI:
//! `WEFT_FUZZ_ITERATIONS=1000000 cargo test -p weft-integration-tests --test fuzz --release`.
//! `WEFT_FUZZ_BLESS=1` rewrites the seed inputs (`seed-*`) from the
//! generators below.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use arrow_flight::sql::{
    Any, Command, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    ProstMessageExt, TicketStatementQuery,
};
use prost::Message;
use weft_connectors::postgres::copy::CopyDecoder;
use weft_connectors::postgres::types::{map_scalar, WireType};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0u8, 0xff, 0x7f, 0x80, rng.next() as u8][rng.below(5)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 if !v.is_empty() => {
                let (a, b) = (rng.below(v.len()), rng.below(v.len()));
                let (a, b) = (a.min(b), a.max(b));
                let slice = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, slice);
            }
            4 => {
                let at = rng.below(v.len() + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if v.len() >= 4 => {
                // A length-like field set to an extreme.
                let i = rng.below(v.len() - 3);
                let extreme = [i32::MAX, i32::MIN, -1, 0][rng.below(4)];
                v[i..i + 4].copy_from_slice(&extreme.to_be_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

fn decode_ticket(bytes: &[u8]) {
    // The coordinator: a statement ticket holding a result handle.
    if let Ok(any) = Any::decode(bytes) {
        if let Ok(Some(t)) = any.unpack::<TicketStatementQuery>() {
            let _ = weft_proto::ResultTicket::decode(&*t.statement_handle);
        }
        let _ = Command::try_from(any);
    }
    // A worker: a partition ticket, with or without a grant.
    if let Ok(ticket) = weft_proto::PartitionTicket::decode(bytes) {
        if let Some(grant) = ticket.grant {
            let secret = weft_common::auth::ClusterSecret::from_bytes(&[9; 32]).unwrap();
            let grant = weft_common::auth::ResultGrant {
                user: grant.user,
                expires: grant.expires,
                signature: grant.signature.to_vec(),
            };
            let query = ticket.task.map(|t| t.query_id).unwrap_or_default();
            assert!(
                secret.verify_grant(&query, &grant).is_err(),
                "a forged grant verified"
            );
        }
    }
    let info = arrow_flight::FlightInfo::new().with_endpoint(
        arrow_flight::FlightEndpoint::new().with_ticket(arrow_flight::Ticket::new(bytes.to_vec())),
    );
    let _ = weft_coordinator::flight_sql::query_ids_of(&info);
}

fn decode_command(bytes: &[u8]) {
    if let Ok(any) = Any::decode(bytes) {
        if let Ok(Command::CommandPreparedStatementQuery(p)) = Command::try_from(any) {
            let _ = weft_proto::PreparedHandle::decode(&*p.prepared_statement_handle);
        }
    }
    let _ = weft_proto::LaunchTask::decode(bytes);
    let _ = arrow_flight::CancelFlightInfoRequest::decode(bytes);
}

fn parse_catalog(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = weft_common::config::CatalogsConfig::parse(&text, Path::new("fuzz.toml"));
}

fn copy_schema() -> (Arc<Schema>, Vec<WireType>) {
    let types = [
        ("int4", -1),
        ("text", -1),
        ("numeric", ((15 << 16) | 2) + 4),
        ("date", -1),
        ("timestamp", -1),
        ("timestamptz", -1),
        ("bool", -1),
        ("float8", -1),
        ("int8", -1),
        ("bytea", -1),
        ("interval", -1),
        ("uuid", -1),
    ];
    let mut fields = Vec::new();
    let mut wire = Vec::new();
    for (i, (name, typmod)) in types.iter().enumerate() {
        let (dt, w) = map_scalar(name, *typmod).unwrap_or_else(|| panic!("{name} maps"));
        fields.push(Field::new(format!("c{i}"), dt, true));
        wire.push(w);
    }
    (Arc::new(Schema::new(fields)), wire)
}

fn decode_copy(bytes: &[u8], chunking: u64) {
    let (schema, wire) = copy_schema();
    let mut decoder = CopyDecoder::try_new(schema, &wire).expect("decoder");
    let mut rng = Rng(chunking | 1);
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(64));
        if decoder.feed(&rest[..n]).is_err() {
            return;
        }
        rest = &rest[n..];
        if decoder.rows() > 2 && decoder.flush().is_err() {
            return;
        }
    }
    let _ = decoder.check_complete();
    let _ = decoder.flush();
}

/// Seed inputs of each target, from the real encoders.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "ticket" => {
            let handle = weft_proto::ResultTicket {
                query_id: "0f0e0d0c-0b0a-4908-8706-050403020100".into(),
                endpoint: 3,
            };
            let statement = TicketStatementQuery {
                statement_handle: handle.encode_to_vec().into(),
            };
            let partition = weft_proto::PartitionTicket {
                task: Some(weft_proto::TaskId {
                    query_id: "q-1".into(),
                    stage_id: 2,
                    task_index: 1,
                    attempt: 0,
                }),
                partition: 4,
                grant: Some(weft_proto::ResultGrant {
                    user: "alice".into(),
                    expires: 4_000_000_000,
                    signature: vec![7; 32],
                }),
            };
            vec![statement.as_any().encode_to_vec(), partition.encode_to_vec()]
        }
        "command" => vec![
            CommandStatementQuery {
                query: "SELECT 1".into(),
                transaction_id: None,
            }
            .as_any()
            .encode_to_vec(),
            CommandPreparedStatementQuery {
                prepared_statement_handle: weft_proto::PreparedHandle {
                    sql: "SELECT * FROM t WHERE a > 1".into(),
                }
                .encode_to_vec()
                .into(),
            }
            .as_any()
            .encode_to_vec(),
            CommandGetTables {
                catalog: Some("tpch".into()),
                db_schema_filter_pattern: Some("%".into()),
                table_name_filter_pattern: Some("line\\_%".into()),
                table_types: vec!["TABLE".into()],
                include_schema: true,
            }
            .as_any()
            .encode_to_vec(),
        ],
        "catalog" => vec![
            b"default_catalog = \"tpch\"\n[catalogs.tpch]\nkind = \"files\"\npath = \"/data/tpch\"\nformat = \"parquet\"\n[catalogs.tpch.storage]\naws_region = \"eu-west-1\"\n".to_vec(),
            b"[catalogs.db]\nkind = \"postgres\"\nurl = \"postgresql://u:${ENV:PW}@h:5432/d?sslmode=prefer\"\npool_size = 2\nmax_connections = 8\npool_timeout = \"5s\"\nconnect_timeout = \"3s\"\ntls = \"prefer\"\nunsupported_types = \"skip\"\nsplit_size = \"16MB\"\n[catalogs.db.tables.\"public.events\"]\nsplit_column = \"id\"\nlower_bound = \"1\"\nupper_bound = \"1000\"\nsplits = 4\n".to_vec(),
            b"[catalogs.m]\nkind = \"mysql\"\nurl = \"mysql://u:p@h:3306/d\"\nquery_pushdown = false\n[catalogs.f]\nkind = \"flightsql\"\nurl = \"grpc://h:1\"\ncatalog = \"x\"\n".to_vec(),
        ],
        "copy" => {
            let mut v = b"PGCOPY\n\xff\r\n\0".to_vec();
            v.extend_from_slice(&0u32.to_be_bytes());
            v.extend_from_slice(&0u32.to_be_bytes());
            let numeric = {
                // 1234.50: ndigits 2, weight 0, positive, dscale 2.
                let mut n = Vec::new();
                for x in [2i16, 0, 0, 2, 1234, 5000] {
                    n.extend_from_slice(&x.to_be_bytes());
                }
                n
            };
            let interval = {
                let mut i = 3_600_000_000i64.to_be_bytes().to_vec();
                i.extend_from_slice(&2i32.to_be_bytes());
                i.extend_from_slice(&1i32.to_be_bytes());
                i
            };
            let fields: Vec<Option<Vec<u8>>> = vec![
                Some(42i32.to_be_bytes().to_vec()),
                Some(b"weft".to_vec()),
                Some(numeric),
                Some(9000i32.to_be_bytes().to_vec()),
                Some(777_000_000i64.to_be_bytes().to_vec()),
                Some((-1i64).to_be_bytes().to_vec()),
                Some(vec![1]),
                Some(2.5f64.to_be_bytes().to_vec()),
                Some(i64::MAX.to_be_bytes().to_vec()),
                Some(vec![0, 1, 2]),
                Some(interval),
                Some(vec![0xab; 16]),
            ];
            for row in 0..3 {
                v.extend_from_slice(&(fields.len() as i16).to_be_bytes());
                for (i, f) in fields.iter().enumerate() {
                    match f {
                        Some(b) if (row + i) % 5 != 4 => {
                            v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                            v.extend_from_slice(b);
                        }
                        _ => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
            }
            v.extend_from_slice(&(-1i16).to_be_bytes());
            vec![v]
        }
        other => panic!("unknown target {other}"),
    }
}

fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

fn run(target: &str, check: impl Fn(&[u8], u64) + std::panic::RefUnwindSafe) {
    let dir = corpus_dir(target);
    if std::env::var_os("WEFT_FUZZ_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (WEFT_FUZZ_BLESS=1 writes the seeds)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    corpus.sort();
    assert!(!corpus.is_empty(), "{}: empty corpus", dir.display());
    let seed: u64 = std::env::var("WEFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| weft_common::auth::unix_now() ^ 0x5eed);
    let iterations: usize = std::env::var("WEFT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    println!(
        "fuzz {target}: {} corpus inputs, {iterations} mutations, WEFT_FUZZ_SEED={seed}",
        corpus.len()
    );
    // Quiet panics: a caught one is reported below with its input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    for (name, input) in &corpus {
        if std::panic::catch_unwind(|| check(input, seed)).is_err() {
            failure = Some(format!("corpus input {name} panics"));
            break;
        }
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..iterations {
        if failure.is_some() {
            break;
        }
        let a = &corpus[rng.below(corpus.len())].1;
        let b = &corpus[rng.below(corpus.len())].1;
        let input = mutate(&mut rng, a, b);
        let chunking = rng.next();
        if std::panic::catch_unwind(|| check(&input, chunking)).is_err() {
            let path = dir.join(format!("crash-{}", hash(&input)));
            std::fs::write(&path, &input).unwrap();
            failure = Some(format!(
                "a mutated input panics (WEFT_FUZZ_SEED={seed}); saved as {}",
                path.display()
            ));
        }
    }
    std::panic::set_hook(hook);
    if let Some(f) = failure {
        panic!("fuzz {target}: {f}");
    }
}

#[test]
fn fuzz_ticket_decoding() {
    run("ticket", |b, _| decode_ticket(b));
}

#[test]
fn fuzz_command_decoding() {
    run("command", |b, _| decode_command(b));
}

#[test]
fn fuzz_catalog_parser() {
    run("catalog", |b, _| parse_catalog(b));
}

#[test]
fn fuzz_copy_decoder() {
    run("copy", decode_copy);
}

#[test]
fn the_copy_seed_decodes() {
    // The seed is a valid stream: the harness exercises real rows, not only errors.
    let input = &seeds("copy")[0];
    let (schema, wire) = copy_schema();
    let mut decoder = CopyDecoder::try_new(schema, &wire).unwrap();
    decoder.feed(input).unwrap();
    decoder.check_complete().unwrap();
    assert_eq!(decoder.flush().unwrap().num_rows(), 3);
}
