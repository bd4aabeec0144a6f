//! Binding and planning: SQL text → DataFusion logical plan (bound against the catalog and
//! type-coerced) → LaminarDB dataflow plan.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::logical_expr::{Distinct, Expr, ExprSchemable, LogicalPlan};
use datafusion::prelude::SessionContext;
use laminar_dataflow::plan::{
    AggKind, AggSpec, AggregatePlan, BatchFn, PlanNode, SessionWindow, WindowClose, WindowKind,
};

use crate::error::{PlanError, Result};
use crate::exprs::{relax, CastTo, ExprPredicate, ExprProjection};

/// A source as the planner sees it.
#[derive(Clone, Debug)]
pub struct SourceBinding {
    /// Schema.
    pub schema: SchemaRef,
    /// True when the source never retracts rows.
    pub append_only: bool,
    /// The `WATERMARK FOR` column, if the source declares one.
    pub watermark: Option<String>,
}

/// A stream (or materialized view) as the planner sees it.
#[derive(Clone, Debug)]
pub struct StreamBinding {
    /// Output schema.
    pub schema: SchemaRef,
    /// Its compiled plan (inlined where another query reads the stream).
    pub plan: PlanNode,
}

/// What the planner needs from the catalog.
pub trait CatalogView {
    /// A source by (lower-case) name.
    fn source(&self, name: &str) -> Option<SourceBinding>;
    /// A stream or materialized view by name.
    fn stream(&self, name: &str) -> Option<StreamBinding>;
    /// Every relation name with its schema.
    fn relations(&self) -> Vec<(String, SchemaRef)>;
}

/// A planned continuous query.
#[derive(Clone, Debug)]
pub struct PlannedQuery {
    /// The dataflow plan.
    pub plan: PlanNode,
    /// Output schema (names as the query spells them).
    pub schema: SchemaRef,
    /// The bound logical plan, indented.
    pub logical: String,
    /// Sources and streams the query reads directly.
    pub references: std::collections::BTreeSet<String>,
}

/// Binds `sql` against `relations` (registered as empty tables), type-coerces and optimizes it.
pub fn bind(sql: &str, relations: &[(String, SchemaRef)]) -> Result<LogicalPlan> {
    let ctx = SessionContext::new();
    for (name, schema) in relations {
        let t = MemTable::try_new(schema.clone(), vec![vec![]])?;
        ctx.register_table(TableReference::bare(name.as_str()), Arc::new(t))?;
    }
    let state = ctx.state();
    let plan = futures::executor::block_on(state.create_logical_plan(sql))?;
    // Analyzer (type coercion) and the standard logical optimizer: physical expressions
    // expect simplified input, and pruned projections mean less work per row.
    Ok(state.optimize(&plan)?)
}

/// Plans a continuous query.
pub fn plan_query(sql: &str, catalog: &dyn CatalogView) -> Result<PlannedQuery> {
    plan_query_with(sql, catalog, false)
}

/// Plans a continuous query; `emit_on_close` asks for `EMIT ON WINDOW CLOSE`.
pub fn plan_query_with(sql: &str, catalog: &dyn CatalogView, emit_on_close: bool) -> Result<PlannedQuery> {
    let mut references = std::collections::BTreeSet::new();
    let (logical, plan) = match crate::window::rewrite(sql)? {
        Some((rewritten, window)) => {
            let wc = crate::window::WindowedCatalog::new(catalog, window)?;
            let logical = bind(&rewritten, &wc.relations())?;
            let plan = compile(&logical, &wc, &mut references)?;
            if references.iter().any(|r| crate::window::is_view(r)) {
                references.retain(|r| !crate::window::is_view(r));
                references.insert(wc.window.base.to_lowercase());
            }
            let sources = wc.watermark_sources();
            if emit_on_close && sources.is_empty() {
                return Err(PlanError::Plan(format!(
                    "EMIT ON WINDOW CLOSE needs a watermark on the window's time column: declare \
                     `WATERMARK FOR {} AS {0} - INTERVAL '…'` on the source",
                    wc.window.time_column
                )));
            }
            let mut found = false;
            let plan = finish_windows(plan, &sources, emit_on_close, &mut found);
            if !found {
                return Err(PlanError::Plan(
                    "a window in GROUP BY needs window_end among the groups (do not drop it in a subquery)".into(),
                ));
            }
            (logical, plan)
        }
        None => {
            if emit_on_close {
                return Err(PlanError::Plan(
                    "EMIT ON WINDOW CLOSE needs an event-time window (TUMBLE/HOP/SESSION) in GROUP BY".into(),
                ));
            }
            let logical = bind(sql, &catalog.relations())?;
            let plan = compile(&logical, catalog, &mut references)?;
            (logical, plan)
        }
    };
    let schema = relax(logical.schema().as_arrow());
    let mut seen = std::collections::HashSet::new();
    for f in schema.fields() {
        if !seen.insert(f.name().to_lowercase()) {
            return Err(PlanError::Plan(format!(
                "the result has two columns named '{}': give them distinct names with AS \
                 (e.g. SELECT a.{0} AS a_{0}, b.{0} AS b_{0} …)",
                f.name()
            )));
        }
    }
    // Give the output the query's column names.
    let plan = if plan.schema().fields().iter().map(|f| f.name()).eq(schema.fields().iter().map(|f| f.name())) {
        plan
    } else {
        PlanNode::Project { input: Box::new(plan), map: Arc::new(CastTo::new(&schema)) }
    };
    let logical = logical.display_indent().to_string();
    Ok(PlannedQuery { plan, schema, logical, references })
}

/// Fills in how the window aggregates of `node` close their windows.
fn finish_windows(node: PlanNode, sources: &[String], emit_on_close: bool, found: &mut bool) -> PlanNode {
    let mut rec = |n: Box<PlanNode>| Box::new(finish_windows(*n, sources, emit_on_close, found));
    match node {
        PlanNode::WindowAggregate { input, plan, close } => {
            let close = WindowClose { sources: sources.to_vec(), emit_on_close, ..(*close).clone() };
            let input = rec(input);
            *found = true;
            PlanNode::WindowAggregate { input, plan, close: Arc::new(close) }
        }
        PlanNode::Filter { input, predicate } => PlanNode::Filter { input: rec(input), predicate },
        PlanNode::Project { input, map } => PlanNode::Project { input: rec(input), map },
        PlanNode::Aggregate { input, plan } => PlanNode::Aggregate { input: rec(input), plan },
        PlanNode::WindowAssign { input, spec } => PlanNode::WindowAssign { input: rec(input), spec },
        PlanNode::Join { left, right, plan } => {
            let left = rec(left);
            let right = rec(right);
            PlanNode::Join { left, right, plan }
        }
        PlanNode::Union { inputs, schema } => PlanNode::Union {
            inputs: inputs.into_iter().map(|i| finish_windows(i, sources, emit_on_close, found)).collect(),
            schema,
        },
        s @ PlanNode::Source { .. } => s,
    }
}

/// The windows `node` yields rows of (a window assignment under filters and projections).
fn yields_windows(node: &PlanNode) -> Option<WindowKind> {
    match node {
        PlanNode::WindowAssign { spec, .. } => Some(spec.kind),
        PlanNode::Filter { input, .. } | PlanNode::Project { input, .. } => yields_windows(input),
        _ => None,
    }
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

pub(crate) fn compile(
    plan: &LogicalPlan,
    catalog: &dyn CatalogView,
    refs: &mut std::collections::BTreeSet<String>,
) -> Result<PlanNode> {
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.table_name.table().to_string();
            refs.insert(name.clone());
            let mut node = if let Some(s) = catalog.source(&name) {
                PlanNode::Source { name: name.clone(), schema: relax(&s.schema), append_only: s.append_only }
            } else if let Some(s) = catalog.stream(&name) {
                s.plan
            } else {
                return Err(PlanError::NotFound(format!("table '{name}' not found")));
            };
            if let Some(proj) = &scan.projection {
                let full = scan.source.schema();
                let exprs: Vec<Expr> = proj
                    .iter()
                    .map(|&i| Expr::Column(datafusion::common::Column::new_unqualified(full.field(i).name())))
                    .collect();
                let in_df = datafusion::common::DFSchema::try_from(full.as_ref().clone())?;
                let map = ExprProjection::new(&exprs, &in_df, scan.projected_schema.as_arrow())?;
                node = PlanNode::Project { input: Box::new(node), map: Arc::new(map) };
            }
            for f in &scan.filters {
                let p = ExprPredicate::new(f, &scan.projected_schema)?;
                node = PlanNode::Filter { input: Box::new(node), predicate: Arc::new(p) };
            }
            if scan.fetch.is_some() {
                return Err(PlanError::Unsupported("LIMIT in a continuous query".into()));
            }
            node
        }
        LogicalPlan::Projection(p) => {
            let input = compile(&p.input, catalog, refs)?;
            let map = ExprProjection::new(&p.expr, p.input.schema(), p.schema.as_arrow())?;
            PlanNode::Project { input: Box::new(input), map: Arc::new(map) }
        }
        LogicalPlan::Filter(f) => {
            let input = compile(&f.input, catalog, refs)?;
            let pred = ExprPredicate::new(&f.predicate, f.input.schema())?;
            PlanNode::Filter { input: Box::new(input), predicate: Arc::new(pred) }
        }
        LogicalPlan::SubqueryAlias(s) => compile(&s.input, catalog, refs)?,
        LogicalPlan::Aggregate(a) => {
            let input = compile(&a.input, catalog, refs)?;
            let in_schema = a.input.schema();
            let out = a.schema.as_arrow();
            let nkeys = a.group_expr.len();
            if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                return Err(PlanError::Unsupported("GROUPING SETS, CUBE and ROLLUP in a continuous query".into()));
            }
            let key_schema = Schema::new(out.fields()[..nkeys].to_vec());
            let keys = ExprProjection::new(&a.group_expr, in_schema, &key_schema)?;
            let mut aggs = Vec::with_capacity(a.aggr_expr.len());
            for (i, e) in a.aggr_expr.iter().enumerate() {
                let Expr::AggregateFunction(af) = unalias(e) else {
                    return Err(PlanError::Unsupported(format!("aggregate expression '{e}'")));
                };
                let name = af.func.name().to_lowercase();
                let p = &af.params;
                if p.filter.is_some() {
                    return Err(PlanError::Unsupported("FILTER (WHERE …) on an aggregate".into()));
                }
                if !p.order_by.is_empty() {
                    return Err(PlanError::Unsupported("ORDER BY inside an aggregate".into()));
                }
                let literal_arg = matches!(p.args.first().map(unalias), Some(Expr::Literal(v, _)) if !v.is_null());
                let kind = match (name.as_str(), p.distinct) {
                    ("count", false) if p.args.is_empty() || literal_arg => AggKind::CountStar,
                    ("count", false) => AggKind::Count,
                    ("count", true) => AggKind::CountDistinct,
                    ("sum", false) => AggKind::Sum,
                    ("avg" | "mean", false) => AggKind::Avg,
                    ("min", _) => AggKind::Min,
                    ("max", _) => AggKind::Max,
                    (n, true) => return Err(PlanError::Unsupported(format!("{}(DISTINCT …)", n.to_uppercase()))),
                    (n, false) => {
                        return Err(PlanError::Unsupported(format!(
                            "aggregate function {}() in a continuous query (supported: COUNT, COUNT(DISTINCT), SUM, AVG, MIN, MAX)",
                            n.to_uppercase()
                        )))
                    }
                };
                let arg: Option<Arc<dyn BatchFn>> = if kind == AggKind::CountStar {
                    None
                } else {
                    let arg = p.args.first().ok_or_else(|| PlanError::Plan(format!("{name}() needs an argument")))?;
                    let t = arg.get_type(in_schema.as_ref())?;
                    let s = Schema::new(vec![arrow::datatypes::Field::new("arg", t, true)]);
                    Some(Arc::new(ExprProjection::new(std::slice::from_ref(arg), in_schema, &s)?))
                };
                aggs.push(AggSpec { kind, arg, output_type: out.field(nkeys + i).data_type().clone() });
            }
            let plan = AggregatePlan {
                keys: Arc::new(keys),
                aggs,
                output_schema: relax(out),
                input_append_only: input.is_append_only(),
            };
            let key_of =
                |name: &str| a.group_expr.iter().position(|e| matches!(unalias(e), Expr::Column(c) if c.name == name));
            let kind = yields_windows(&input);
            match (key_of("window_end"), kind) {
                (Some(end_key), Some(kind)) => {
                    let session = match kind {
                        WindowKind::Session { gap_ms } => {
                            let start_key = key_of("window_start").ok_or_else(|| {
                                PlanError::Plan(
                                    "a SESSION window needs window_start among the groups (do not drop it in a subquery)"
                                        .into(),
                                )
                            })?;
                            Some(SessionWindow { start_key, gap_ms })
                        }
                        _ => None,
                    };
                    PlanNode::WindowAggregate {
                        input: Box::new(input),
                        plan: Arc::new(plan),
                        close: Arc::new(WindowClose { end_key, session, sources: Vec::new(), emit_on_close: false }),
                    }
                }
                _ => PlanNode::Aggregate { input: Box::new(input), plan: Arc::new(plan) },
            }
        }
        LogicalPlan::Distinct(Distinct::All(inner)) => {
            let input = compile(inner, catalog, refs)?;
            let schema = inner.schema();
            let exprs: Vec<Expr> = schema.columns().into_iter().map(Expr::Column).collect();
            let keys = ExprProjection::new(&exprs, schema, schema.as_arrow())?;
            let plan = AggregatePlan {
                keys: Arc::new(keys),
                aggs: Vec::new(),
                output_schema: relax(schema.as_arrow()),
                input_append_only: input.is_append_only(),
            };
            PlanNode::Aggregate { input: Box::new(input), plan: Arc::new(plan) }
        }
        LogicalPlan::Union(u) => {
            let schema = relax(u.schema.as_arrow());
            let inputs = u
                .inputs
                .iter()
                .map(|i| {
                    let n = compile(i, catalog, refs)?;
                    Ok(PlanNode::Project { input: Box::new(n), map: Arc::new(CastTo::new(&schema)) })
                })
                .collect::<Result<Vec<_>>>()?;
            PlanNode::Union { inputs, schema }
        }
        LogicalPlan::Sort(_) => {
            return Err(PlanError::Unsupported(
                "ORDER BY in a continuous query (results are unordered changes; order them when reading with query())"
                    .into(),
            ))
        }
        LogicalPlan::Limit(_) => {
            return Err(PlanError::Unsupported(
                "LIMIT/OFFSET in a continuous query (use query() for top-N reads)".into(),
            ))
        }
        LogicalPlan::Join(j) => crate::join::compile_join(j, catalog, refs)?,
        LogicalPlan::Window(_) => {
            return Err(PlanError::Unsupported("window functions (OVER …) in a continuous query".into()))
        }
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
            return Err(PlanError::Unsupported(
                "a continuous query needs a FROM clause naming a source or stream".into(),
            ))
        }
        other => {
            return Err(PlanError::Unsupported(format!(
                "'{}' in a continuous query",
                other.display().to_string().split(':').next().unwrap_or("this operator")
            )))
        }
    })
}
