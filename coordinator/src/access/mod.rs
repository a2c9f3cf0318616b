//! Access rules: which tables, columns and rows each user may read.
//!
//! `weft-coordinator --access-rules-file FILE` names a TOML file of groups
//! and an ordered list of table rules:
//!
//! ```toml
//! [groups]
//! analysts = ["alice", "bob"]
//!
//! [[tables]]                      # rules are tried in order, first match wins
//! group = "analysts"              # who: `user` and/or `group` (regexes; none = anyone)
//! catalog = "pg"                  # what: `catalog`, `schema`, `table` (regexes; none = any)
//! schema = "public"
//! table = "customers"
//! allow = true
//! row_filter = "region = 'EU' OR owner = current_user"
//! columns = [                     # first match wins; a column no entry matches is readable
//!   { name = "ssn", allow = false },
//!   { name = "email", mask = "'***'" },
//! ]
//!
//! [[tables]]
//! catalog = "system"
//! allow = true
//! ```
//!
//! A table no rule matches is denied. Rules apply to every user, admins
//! included, and are read again when the file changes (a change that does
//! not parse keeps the previous rules and logs why).
//!
//! They are enforced in the catalogs a query sees ([`catalog`]): a denied
//! table cannot be named, a denied column is not part of its table, and a
//! table with a row filter or a mask is replaced, when the SQL is planned,
//! by `Projection(masks) <- Filter(row filter) <- TableScan`. Everything
//! after that (optimizer, federation pushdown, distribution) sees the
//! rewritten plan, so the filter reaches the remote database's SQL and every
//! worker's fragment, and `EXPLAIN` shows it.

pub mod catalog;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

pub use catalog::SecuredCatalogList;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tables: Vec<TableRuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableRuleFile {
    user: Option<String>,
    group: Option<String>,
    catalog: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    allow: bool,
    #[serde(default)]
    columns: Vec<ColumnRuleFile>,
    row_filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnRuleFile {
    name: String,
    allow: Option<bool>,
    mask: Option<String>,
}

/// Parsed, checked access rules.
#[derive(Debug)]
pub struct AccessRules {
    /// The file they were read from (named in denials).
    source: String,
    /// user -> the groups they belong to.
    memberships: HashMap<String, Vec<String>>,
    rules: Vec<TableRule>,
}

#[derive(Debug)]
struct TableRule {
    /// 1-based position in the file.
    number: usize,
    user: Option<Regex>,
    group: Option<Regex>,
    catalog: Option<Regex>,
    schema: Option<Regex>,
    table: Option<Regex>,
    allow: bool,
    columns: Vec<ColumnRule>,
    row_filter: Option<String>,
}

#[derive(Debug)]
struct ColumnRule {
    name: Arc<Regex>,
    access: ColumnAccess,
}

/// What a user may see of one column of a table they may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnAccess {
    Allow,
    /// Not part of the table for this user.
    Deny,
    /// Read as this SQL expression over the table's columns instead.
    Mask(String),
}

/// The decision for one table.
#[derive(Debug, Clone)]
pub enum TableAccess {
    /// Why, for the error message.
    Denied(String),
    Allowed(TableGrant),
}

/// A table rule that allowed a table: its column rules and row filter.
#[derive(Debug, Clone)]
pub struct TableGrant {
    /// The rule's position in the file (named in errors about its SQL).
    pub rule: usize,
    columns: Vec<(Arc<Regex>, ColumnAccess)>,
    /// SQL expression rows must satisfy; `current_user` is the reader.
    pub row_filter: Option<String>,
    source: String,
}

impl TableGrant {
    /// The access to `column`: the first column rule whose name matches, or
    /// allowed when none does.
    pub fn column(&self, column: &str) -> ColumnAccess {
        self.columns
            .iter()
            .find(|(name, _)| name.is_match(column))
            .map_or(ColumnAccess::Allow, |(_, access)| access.clone())
    }

    /// Where the grant comes from: "rule N of FILE".
    pub fn origin(&self) -> String {
        format!("rule {} of {}", self.rule, self.source)
    }
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// The reader a decision is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Empty when authentication is off.
    pub user: String,
    pub groups: Vec<String>,
}

impl AccessRules {
    /// Reads and checks `path`; an error names the file and the rule.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read access rules file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses rules from `text`; `source` names them in messages.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let file: RulesFile = toml::from_str(text)
            .map_err(|e| format!("access rules file {source} is not valid: {e}"))?;
        let mut memberships: HashMap<String, Vec<String>> = HashMap::new();
        for (group, users) in &file.groups {
            for user in users {
                memberships
                    .entry(user.clone())
                    .or_default()
                    .push(group.clone());
            }
        }
        let mut rules = Vec::with_capacity(file.tables.len());
        for (i, rule) in file.tables.into_iter().enumerate() {
            let number = i + 1;
            let at = |what: &str, e: String| {
                format!(
                    "access rules file {source}, rule {number} ([[tables]] #{number}), {what}: {e}"
                )
            };
            let pattern = |field: &str, value: &Option<String>| -> Result<Option<Regex>, String> {
                value
                    .as_deref()
                    .map(|p| Regex::new(&anchored(p)).map_err(|e| at(field, e.to_string())))
                    .transpose()
            };
            if !rule.allow && (rule.row_filter.is_some() || !rule.columns.is_empty()) {
                return Err(at(
                    "allow = false",
                    "a rule that denies cannot have columns or a row_filter".into(),
                ));
            }
            if let Some(filter) = &rule.row_filter {
                check_expression(filter).map_err(|e| at("row_filter", e))?;
            }
            let mut columns = Vec::with_capacity(rule.columns.len());
            for column in rule.columns {
                let name = Regex::new(&anchored(&column.name))
                    .map(Arc::new)
                    .map_err(|e| at(&format!("column {:?}", column.name), e.to_string()))?;
                let access = match (column.allow, column.mask) {
                    (Some(false), Some(_)) => {
                        return Err(at(
                            &format!("column {:?}", column.name),
                            "allow = false and a mask contradict each other".into(),
                        ))
                    }
                    (Some(false), None) => ColumnAccess::Deny,
                    (_, Some(mask)) => {
                        check_expression(&mask)
                            .map_err(|e| at(&format!("mask of column {:?}", column.name), e))?;
                        ColumnAccess::Mask(mask)
                    }
                    (_, None) => ColumnAccess::Allow,
                };
                columns.push(ColumnRule { name, access });
            }
            rules.push(TableRule {
                number,
                user: pattern("user", &rule.user)?,
                group: pattern("group", &rule.group)?,
                catalog: pattern("catalog", &rule.catalog)?,
                schema: pattern("schema", &rule.schema)?,
                table: pattern("table", &rule.table)?,
                allow: rule.allow,
                columns,
                row_filter: rule.row_filter,
            });
        }
        Ok(Self {
            source: source.to_string(),
            memberships,
            rules,
        })
    }

    /// `user` with the groups the file puts them in.
    pub fn subject(&self, user: &str) -> Subject {
        Subject {
            user: user.to_string(),
            groups: self.memberships.get(user).cloned().unwrap_or_default(),
        }
    }

    /// The first rule matching the reader and the table decides.
    pub fn table(&self, who: &Subject, catalog: &str, schema: &str, table: &str) -> TableAccess {
        let found = self.rules.iter().find(|r| {
            r.user.as_ref().is_none_or(|u| u.is_match(&who.user))
                && r.group
                    .as_ref()
                    .is_none_or(|g| who.groups.iter().any(|name| g.is_match(name)))
                && r.catalog.as_ref().is_none_or(|c| c.is_match(catalog))
                && r.schema.as_ref().is_none_or(|s| s.is_match(schema))
                && r.table.as_ref().is_none_or(|t| t.is_match(table))
        });
        match found {
            None => TableAccess::Denied(format!("no rule of {} allows it", self.source)),
            Some(rule) if !rule.allow => {
                TableAccess::Denied(format!("rule {} of {} denies it", rule.number, self.source))
            }
            Some(rule) => TableAccess::Allowed(TableGrant {
                rule: rule.number,
                columns: rule
                    .columns
                    .iter()
                    .map(|c| (Arc::clone(&c.name), c.access.clone()))
                    .collect(),
                row_filter: rule.row_filter.clone(),
                source: self.source.clone(),
            }),
        }
    }
}

/// Parses `sql` as one SQL expression (the columns it names are checked
/// against each table when a query reads it).
fn check_expression(sql: &str) -> Result<(), String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map(|_| ())
        .map_err(|e| format!("{sql:?} is not an SQL expression: {e}"))
}

/// The rules file of a coordinator, re-read when it changes.
pub type WatchedRules = weft_common::auth::WatchedFile<AccessRules>;

/// Opens `--access-rules-file`; an error (unreadable, invalid) stops the start.
pub fn open(path: &Path) -> Result<Arc<WatchedRules>, String> {
    WatchedRules::open(path, AccessRules::load).map(Arc::new)
}
