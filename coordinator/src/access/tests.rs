use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;

const RULES: &str = r#"
[groups]
analysts = ["alice", "bob"]

[[tables]]
user = "mallory"
allow = false

[[tables]]
group = "analysts"
catalog = "shop"
schema = "public"
table = "customers"
allow = true
row_filter = "region = 'EU' OR owner = current_user"
columns = [
  { name = "ssn", allow = false },
  { name = "email", mask = "concat(substr(email, 1, 2), '***')" },
  { name = "id|name|region|owner", allow = true },
]

[[tables]]
catalog = "shop"
schema = "public"
table = "orders"
allow = true

[[tables]]
user = "carol"
catalog = "shop"
allow = true
"#;

fn rules() -> AccessRules {
    AccessRules::parse(RULES, "rules.toml").expect("rules parse")
}

#[test]
fn first_match_wins_and_no_match_denies() {
    let rules = rules();
    let alice = rules.subject("alice");
    assert_eq!(alice.groups, vec!["analysts".to_string()]);
    assert!(matches!(
        rules.table(&alice, "shop", "public", "customers"),
        TableAccess::Allowed(g) if g.rule == 2
    ));
    // Anyone may read orders (rule 3), but mallory's rule 1 comes first.
    assert!(matches!(
        rules.table(&rules.subject("dave"), "shop", "public", "orders"),
        TableAccess::Allowed(g) if g.rule == 3
    ));
    match rules.table(&rules.subject("mallory"), "shop", "public", "orders") {
        TableAccess::Denied(why) => assert_eq!(why, "rule 1 of rules.toml denies it"),
        other => panic!("{other:?}"),
    }
    // Nothing allows dave the customers table: deny by default.
    match rules.table(&rules.subject("dave"), "shop", "public", "customers") {
        TableAccess::Denied(why) => assert_eq!(why, "no rule of rules.toml allows it"),
        other => panic!("{other:?}"),
    }
    // Patterns match whole names.
    assert!(matches!(
        rules.table(&alice, "shop", "public", "customers_archive"),
        TableAccess::Denied(_)
    ));
    assert!(matches!(
        rules.table(&rules.subject("carol"), "shop", "other", "anything"),
        TableAccess::Allowed(g) if g.rule == 4
    ));
}

#[test]
fn column_rules_first_match_and_unlisted_columns_follow_the_table() {
    let rules = rules();
    let TableAccess::Allowed(grant) =
        rules.table(&rules.subject("bob"), "shop", "public", "customers")
    else {
        panic!("bob reads customers");
    };
    assert_eq!(grant.column("ssn"), ColumnAccess::Deny);
    assert!(matches!(grant.column("email"), ColumnAccess::Mask(_)));
    assert_eq!(grant.column("region"), ColumnAccess::Allow);
    assert_eq!(grant.column("notes"), ColumnAccess::Allow);
}

#[test]
fn invalid_files_are_refused_naming_the_rule() {
    let cases = [
        ("[[tables]]\ncatalog = \"(\"\nallow = true\n", "rule 1"),
        (
            "[[tables]]\nallow = false\nrow_filter = \"a = 1\"\n",
            "cannot have",
        ),
        (
            "[[tables]]\nallow = true\nrow_filter = \"a = = 1\"\n",
            "not an SQL expression",
        ),
        (
            "[[tables]]\nallow = true\ncolumns = [{ name = \"a\", allow = false, mask = \"1\" }]\n",
            "contradict",
        ),
        ("[[tables]]\ncatalog = \"x\"\n", "allow"),
        ("[[tables]]\nallow = true\ncolour = \"red\"\n", "colour"),
    ];
    for (text, expected) in cases {
        let err = AccessRules::parse(text, "f.toml").expect_err(text);
        assert!(
            err.contains("f.toml") && err.contains(expected),
            "{text}: {err}"
        );
    }
}

/// A session over a `shop.public` catalog with `customers` and `orders`,
/// seen by `user` through the rules.
fn session(user: &str) -> SessionContext {
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("shop", "public")
            .with_create_default_catalog_and_schema(true),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("ssn", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec!["Ann", "Ben", "Cid", "Dee"])),
            Arc::new(StringArray::from(vec![
                "ann@x.org",
                "ben@x.org",
                "cid@x.org",
                "dee@x.org",
            ])),
            Arc::new(StringArray::from(vec!["111", "222", "333", "444"])),
            Arc::new(StringArray::from(vec!["EU", "US", "US", "EU"])),
            Arc::new(StringArray::from(vec!["zed", "bob", "zed", "zed"])),
        ],
    )
    .expect("batch");
    let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
    ctx.register_table("customers", Arc::new(table))
        .expect("customers");
    let orders = MemTable::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        vec![vec![]],
    )
    .expect("orders");
    ctx.register_table("orders", Arc::new(orders))
        .expect("orders");
    let state = ctx.state();
    let secured =
        SecuredCatalogList::new(Arc::clone(state.catalog_list()), Arc::new(rules()), user);
    SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(Arc::new(secured))
            .build(),
    )
}

async fn rows(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<String>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let text = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    Ok(text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect())
}

#[tokio::test]
async fn hidden_columns_masks_and_row_filters_hold_through_every_shape_of_query() {
    let bob = session("bob");
    // SELECT *: no ssn, masked email, only EU rows or bob's own.
    assert_eq!(
        rows(&bob, "SELECT * FROM customers ORDER BY id")
            .await
            .unwrap(),
        vec![
            "1,Ann,an***,EU,zed",
            "2,Ben,be***,US,bob",
            "4,Dee,de***,EU,zed"
        ]
    );
    // Naming the hidden column, through a subquery, an aggregate or a join.
    for sql in [
        "SELECT ssn FROM customers",
        "SELECT v.ssn FROM (SELECT * FROM customers) v",
        "SELECT count(DISTINCT ssn) FROM customers",
        "SELECT c.ssn FROM customers c JOIN orders o ON c.id = o.id",
    ] {
        let err = rows(&bob, sql).await.expect_err(sql).to_string();
        assert!(err.contains("ssn"), "{sql}: {err}");
    }
    // Aggregates see only the filtered rows, and a filter on the mask
    // compares masked values.
    assert_eq!(
        rows(&bob, "SELECT count(*) FROM customers").await.unwrap(),
        vec!["3"]
    );
    assert_eq!(
        rows(
            &bob,
            "SELECT count(*) FROM customers WHERE email = 'ann@x.org'"
        )
        .await
        .unwrap(),
        vec!["0"]
    );
    // The information schema lists what bob sees.
    assert_eq!(
        rows(
            &bob,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers' ORDER BY ordinal_position"
        )
        .await
        .unwrap(),
        vec!["id", "name", "email", "region", "owner"]
    );
    // EXPLAIN shows the row filter.
    let plan = rows(&bob, "EXPLAIN SELECT name FROM customers")
        .await
        .unwrap()
        .join("\n");
    assert!(
        plan.contains("region = Utf8(\"EU\")") && plan.contains("Utf8(\"bob\")"),
        "{plan}"
    );
}

#[tokio::test]
async fn denied_tables_cannot_be_named_or_listed() {
    let dave = session("dave");
    let err = rows(&dave, "SELECT count(*) FROM customers")
        .await
        .expect_err("dave has no rule for customers")
        .to_string();
    assert!(
        err.contains("access denied: user \"dave\" may not read table shop.public.customers")
            && err.contains("no rule of rules.toml allows it"),
        "{err}"
    );
    // A name that does not exist is denied the same way (no probing).
    let err = rows(&dave, "SELECT * FROM shop.public.secret_plans")
        .await
        .expect_err("denied")
        .to_string();
    assert!(err.contains("access denied"), "{err}");
    assert_eq!(
        rows(
            &dave,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        .await
        .unwrap(),
        vec!["orders"]
    );
    let mallory = session("mallory");
    assert!(rows(&mallory, "SELECT * FROM orders").await.is_err());
    assert!(mallory.catalog_names().is_empty());
    // carol's rule allows all of shop, unfiltered: she reads the real values.
    let carol = session("carol");
    assert_eq!(
        rows(&carol, "SELECT ssn FROM customers WHERE id = 3")
            .await
            .unwrap(),
        vec!["333"]
    );
}
