//! The catalogs one reader sees under access rules.
//!
//! [`SecuredCatalogList`] wraps the coordinator's catalogs for one query (or
//! one metadata request): catalogs, schemas and tables the rules deny are
//! not listed, a denied table cannot be named, and an allowed table with
//! hidden columns, masks or a row filter becomes a [`SecuredTable`], whose
//! logical plan DataFusion inlines where the SQL names it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider,
};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, TableReference};
use datafusion::datasource::{provider_as_source, TableType};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{
    cast, lit, ColumnarValue, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use weft_common::flight::AccessDenied;

use super::{AccessRules, ColumnAccess, Subject, TableAccess, TableGrant};

/// What every wrapper of one reader shares.
struct Policy {
    rules: Arc<AccessRules>,
    who: Subject,
    /// Parses the rules' SQL expressions (built-in functions and `current_user`).
    expressions: SessionState,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("user", &self.who.user)
            .finish_non_exhaustive()
    }
}

impl Policy {
    fn decide(&self, catalog: &str, schema: &str, table: &str) -> TableAccess {
        self.rules.table(&self.who, catalog, schema, table)
    }

    fn denied(&self, catalog: &str, schema: &str, table: &str, why: &str) -> DataFusionError {
        let user = if self.who.user.is_empty() {
            "an unauthenticated reader".to_string()
        } else {
            format!("user {:?}", self.who.user)
        };
        DataFusionError::External(Box::new(AccessDenied(format!(
            "access denied: {user} may not read table {catalog}.{schema}.{table}: {why}"
        ))))
    }

    /// `sql` as an expression over `schema`, `current_user` replaced by the
    /// reader's name.
    fn expression(&self, sql: &str, schema: &DFSchema) -> Result<Expr> {
        let expr = self.expressions.create_logical_expr(sql, schema)?;
        let user = self.who.user.clone();
        Ok(expr
            .transform_up(|e| {
                Ok(match e {
                    Expr::ScalarFunction(f) if f.name() == CURRENT_USER => {
                        Transformed::yes(lit(user.clone()))
                    }
                    other => Transformed::no(other),
                })
            })?
            .data)
    }
}

/// The catalogs `inner` as `who` may see them under `rules`.
#[derive(Debug)]
pub struct SecuredCatalogList {
    inner: Arc<dyn CatalogProviderList>,
    policy: Arc<Policy>,
}

impl SecuredCatalogList {
    pub fn new(inner: Arc<dyn CatalogProviderList>, rules: Arc<AccessRules>, user: &str) -> Self {
        let who = rules.subject(user);
        let mut expressions = SessionStateBuilder::new().with_default_features().build();
        // Only its name is used: the rules' `current_user` becomes the
        // reader's name before anything runs.
        let _ = datafusion::execution::FunctionRegistry::register_udf(
            &mut expressions,
            Arc::new(ScalarUDF::new_from_impl(CurrentUser::new())),
        );
        Self {
            inner,
            policy: Arc::new(Policy {
                rules,
                who,
                expressions,
            }),
        }
    }
}

impl CatalogProviderList for SecuredCatalogList {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.inner.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.inner
            .catalog_names()
            .into_iter()
            .filter(|c| {
                self.catalog(c)
                    .is_some_and(|c| !c.schema_names().is_empty())
            })
            .collect()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let inner = self.inner.catalog(name)?;
        Some(Arc::new(SecuredCatalog {
            name: name.to_string(),
            inner,
            policy: Arc::clone(&self.policy),
        }))
    }
}

#[derive(Debug)]
struct SecuredCatalog {
    name: String,
    inner: Arc<dyn CatalogProvider>,
    policy: Arc<Policy>,
}

impl CatalogProvider for SecuredCatalog {
    /// Schemas with at least one table the reader may read.
    fn schema_names(&self) -> Vec<String> {
        self.inner
            .schema_names()
            .into_iter()
            .filter(|s| {
                self.schema(s)
                    .is_some_and(|schema| !schema.table_names().is_empty())
            })
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let inner = self.inner.schema(name)?;
        Some(Arc::new(SecuredSchema {
            catalog: self.name.clone(),
            name: name.to_string(),
            inner,
            policy: Arc::clone(&self.policy),
        }))
    }
}

#[derive(Debug)]
struct SecuredSchema {
    catalog: String,
    name: String,
    inner: Arc<dyn SchemaProvider>,
    policy: Arc<Policy>,
}

#[async_trait]
impl SchemaProvider for SecuredSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner
            .table_names()
            .into_iter()
            .filter(|t| {
                matches!(
                    self.policy.decide(&self.catalog, &self.name, t),
                    TableAccess::Allowed(_)
                )
            })
            .collect()
    }

    /// The rules decide before the table is looked up, so a denied name
    /// answers the same whether the table exists or not.
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let grant = match self.policy.decide(&self.catalog, &self.name, name) {
            TableAccess::Denied(why) => {
                return Err(self.policy.denied(&self.catalog, &self.name, name, &why))
            }
            TableAccess::Allowed(grant) => grant,
        };
        let Some(inner) = self.inner.table(name).await? else {
            return Ok(None);
        };
        let reference = TableReference::full(self.catalog.as_str(), self.name.as_str(), name);
        secure_table(&self.policy, reference, inner, &grant).map(Some)
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(
            self.policy.decide(&self.catalog, &self.name, name),
            TableAccess::Allowed(_)
        ) && self.inner.table_exist(name)
    }
}

/// `inner` as `grant` lets the reader see it: unchanged when the grant
/// hides, masks and filters nothing.
fn secure_table(
    policy: &Policy,
    reference: TableReference,
    inner: Arc<dyn TableProvider>,
    grant: &TableGrant,
) -> Result<Arc<dyn TableProvider>> {
    let schema = inner.schema();
    let qualified = DFSchema::try_from_qualified_schema(reference.clone(), &schema)?;
    let in_rule = |what: &str, e: DataFusionError| {
        DataFusionError::Plan(format!(
            "{what} of {} cannot be applied to table {reference}: {e}",
            grant.origin()
        ))
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut changed = false;
    for (qualifier, field) in qualified.iter() {
        match grant.column(field.name()) {
            ColumnAccess::Allow => columns.push(Expr::Column(Column::from((qualifier, field)))),
            ColumnAccess::Deny => changed = true,
            ColumnAccess::Mask(sql) => {
                let what = format!("the mask of column {}", field.name());
                let mask = policy
                    .expression(&sql, &qualified)
                    .map_err(|e| in_rule(&what, e))?;
                // A mask reads like the column: same name, same type.
                mask.get_type(&qualified).map_err(|e| in_rule(&what, e))?;
                columns.push(cast(mask, field.data_type().clone()).alias(field.name()));
                changed = true;
            }
        }
    }
    let filter = grant
        .row_filter
        .as_deref()
        .map(|sql| {
            policy
                .expression(sql, &qualified)
                .map_err(|e| in_rule("the row_filter", e))
        })
        .transpose()?;
    if !changed && filter.is_none() {
        return Ok(inner);
    }
    if columns.is_empty() {
        return Err(policy.denied(
            reference.catalog().unwrap_or_default(),
            reference.schema().unwrap_or_default(),
            reference.table(),
            &format!("{} hides every column", grant.origin()),
        ));
    }
    let mut plan = LogicalPlanBuilder::scan(reference.clone(), provider_as_source(inner), None)?;
    if let Some(filter) = filter {
        plan = plan
            .filter(filter)
            .map_err(|e| in_rule("the row_filter", e))?;
    }
    let plan = plan.project(columns)?.build()?;
    Ok(Arc::new(SecuredTable {
        schema: Arc::new(plan.schema().as_arrow().clone()),
        plan,
    }))
}

/// A table read through a rule's masks and row filter: the SQL planner
/// inlines [`SecuredTable::get_logical_plan`] where the table is named.
#[derive(Debug)]
pub struct SecuredTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for SecuredTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        Some(Cow::Borrowed(&self.plan))
    }

    /// Only reached by callers that scan a provider without planning SQL;
    /// plans the same rewritten plan.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = state.create_physical_plan(&self.plan).await?;
        match projection {
            None => Ok(plan),
            Some(indices) => Ok(Arc::new(ProjectionExec::try_new(
                indices.iter().map(|&i| {
                    let field = self.schema.field(i);
                    (
                        Arc::new(datafusion::physical_expr::expressions::Column::new(
                            field.name(),
                            i,
                        ))
                            as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                        field.name().clone(),
                    )
                }),
                plan,
            )?)),
        }
    }
}

const CURRENT_USER: &str = "current_user";

/// `current_user` in the rules' expressions (replaced by the reader's name
/// before planning; never evaluated).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentUser {
    signature: Signature,
}

impl CurrentUser {
    fn new() -> Self {
        Self {
            signature: Signature::exact(vec![], Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for CurrentUser {
    fn name(&self) -> &str {
        CURRENT_USER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[arrow::datatypes::DataType],
    ) -> Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<ColumnarValue> {
        datafusion::common::internal_err!("current_user is replaced before a query runs")
    }
}
