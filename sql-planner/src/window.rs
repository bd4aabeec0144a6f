//! Event-time windows in GROUP BY: `TUMBLE(ts, size)`, `HOP(ts, slide, size)` (and upstream's
//! `HOPPING(ts, size, hop)`), `SESSION(ts, gap)`.
//!
//! Before binding, a query with a window in its GROUP BY is rewritten: the relation it reads is
//! replaced by a windowed view of it (its columns plus `window_start` and `window_end`, one row
//! per window a row belongs to), and the window call in GROUP BY (and in the SELECT list) by
//! those two columns. The view compiles to a `WindowAssign` node, and the aggregate grouping by
//! `window_end` becomes a `WindowAggregate` that closes windows as the watermark passes. For
//! sessions the view gives each row its own window `[ts, ts + gap)` and the aggregate merges the
//! windows of each group into sessions.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, Query, Select,
    SelectItem, SetExpr, Statement as SqlStatement, TableAlias, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use laminar_dataflow::plan::{PlanNode, WindowKind, WindowSpec};

use crate::error::{PlanError, Result};
use crate::exprs::relax;
use crate::interval::interval_to_ms;
use crate::planner::{CatalogView, SourceBinding, StreamBinding};

/// Name under which the windowed view of the query's relation is bound.
const VIEW: &str = "__laminar_windowed";

/// A windowed view of one relation, created for one query.
#[derive(Clone, Debug)]
pub(crate) struct WindowedRelation {
    /// The relation the query reads.
    pub base: String,
    /// The window.
    pub kind: WindowKind,
    /// The time column (as written).
    pub time_column: String,
}

fn args(f: &FunctionArguments) -> Vec<SqlExpr> {
    match f {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn size_ms(e: &SqlExpr, what: &str) -> Result<i64> {
    let ms = match e {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<i64>()
                .map_err(|_| PlanError::Plan(format!("{what}: '{n}' is not a whole number of milliseconds")))?,
            other => return Err(PlanError::Plan(format!("{what} must be an INTERVAL or milliseconds, got {other}"))),
        },
        other => interval_to_ms(other)?,
    };
    if ms <= 0 {
        return Err(PlanError::Plan(format!("{what} must be positive")));
    }
    Ok(ms)
}

fn column_name(e: &SqlExpr, func: &str) -> Result<String> {
    match e {
        SqlExpr::Identifier(i) => Ok(i.value.clone()),
        SqlExpr::CompoundIdentifier(parts) => Ok(parts.last().map(|i| i.value.clone()).unwrap_or_default()),
        other => Err(PlanError::Plan(format!("{func}: the first argument must be a time column, got '{other}'"))),
    }
}

/// Recognises a window call.
fn window_call(e: &SqlExpr) -> Result<Option<(WindowKind, String)>> {
    let SqlExpr::Function(f) = e else { return Ok(None) };
    let name = f.name.to_string().to_ascii_lowercase();
    let a = args(&f.args);
    let kind = match name.as_str() {
        "tumble" | "tumbling" => {
            let [_, size] = a.as_slice() else {
                return Err(PlanError::Plan("TUMBLE(time_column, size) takes two arguments".into()));
            };
            WindowKind::Tumble { size_ms: size_ms(size, "TUMBLE size")? }
        }
        "hop" => {
            let [_, slide, size] = a.as_slice() else {
                return Err(PlanError::Plan("HOP(time_column, slide, size) takes three arguments".into()));
            };
            WindowKind::Hop { size_ms: size_ms(size, "HOP size")?, slide_ms: size_ms(slide, "HOP slide")? }
        }
        "hopping" => {
            let [_, size, hop] = a.as_slice() else {
                return Err(PlanError::Plan("HOPPING(time_column, size, hop) takes three arguments".into()));
            };
            WindowKind::Hop { size_ms: size_ms(size, "HOPPING size")?, slide_ms: size_ms(hop, "HOPPING hop")? }
        }
        "session" => {
            let [_, gap] = a.as_slice() else {
                return Err(PlanError::Plan("SESSION(time_column, gap) takes two arguments".into()));
            };
            WindowKind::Session { gap_ms: size_ms(gap, "SESSION gap")? }
        }
        _ => return Ok(None),
    };
    if let WindowKind::Hop { size_ms, slide_ms } = kind {
        if size_ms % slide_ms != 0 {
            return Err(PlanError::Plan(format!(
                "HOP: the size ({size_ms} ms) must be a multiple of the slide ({slide_ms} ms)"
            )));
        }
    }
    let time = column_name(a.first().ok_or_else(|| PlanError::Plan(format!("{name}() needs arguments")))?, &name)?;
    Ok(Some((kind, time)))
}

fn ident(name: &str) -> SqlExpr {
    SqlExpr::Identifier(Ident::new(name))
}

/// Rewrites a query with a window in GROUP BY (at the top level, or in one subquery or CTE);
/// `None` when it has none.
pub(crate) fn rewrite(sql: &str) -> Result<Option<(String, WindowedRelation)>> {
    let Ok(mut statements) = Parser::parse_sql(&GenericDialect {}, sql) else { return Ok(None) };
    let [SqlStatement::Query(q)] = statements.as_mut_slice() else { return Ok(None) };
    let mut found = None;
    visit_query(q, &mut found)?;
    Ok(found.map(|w| (q.to_string(), w)))
}

/// Rewrites the windowed SELECT of `q` or of a query nested in it (CTEs, derived tables in
/// FROM and joins, set operations); at most one may have a window.
fn visit_query(q: &mut Query, found: &mut Option<WindowedRelation>) -> Result<()> {
    if let Some(with) = &mut q.with {
        for cte in with.cte_tables.iter_mut() {
            visit_query(&mut cte.query, found)?;
        }
    }
    visit_set(&mut q.body, found)
}

fn visit_set(body: &mut SetExpr, found: &mut Option<WindowedRelation>) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for from in select.from.iter_mut() {
                visit_factor(&mut from.relation, found)?;
                for j in from.joins.iter_mut() {
                    visit_factor(&mut j.relation, found)?;
                }
            }
            if let Some(w) = rewrite_select(select)? {
                if found.is_some() {
                    return Err(PlanError::Unsupported(
                        "two windowed GROUP BYs in one query; define one of them as a stream".into(),
                    ));
                }
                *found = Some(w);
            }
            Ok(())
        }
        SetExpr::Query(q) => visit_query(q, found),
        SetExpr::SetOperation { left, right, .. } => {
            visit_set(left, found)?;
            visit_set(right, found)
        }
        _ => Ok(()),
    }
}

fn visit_factor(t: &mut TableFactor, found: &mut Option<WindowedRelation>) -> Result<()> {
    match t {
        TableFactor::Derived { subquery, .. } => visit_query(subquery, found),
        TableFactor::NestedJoin { table_with_joins, .. } => {
            visit_factor(&mut table_with_joins.relation, found)?;
            for j in table_with_joins.joins.iter_mut() {
                visit_factor(&mut j.relation, found)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Rewrites one SELECT with a window in its GROUP BY; `None` when it has none.
fn rewrite_select(select: &mut Select) -> Result<Option<WindowedRelation>> {
    let GroupByExpr::Expressions(groups, _) = &mut select.group_by else { return Ok(None) };
    let mut found: Option<(usize, SqlExpr, WindowKind, String)> = None;
    for (i, g) in groups.iter().enumerate() {
        if let Some((kind, time)) = window_call(g)? {
            if found.is_some() {
                return Err(PlanError::Plan("only one window may appear in GROUP BY".into()));
            }
            found = Some((i, g.clone(), kind, time));
        }
    }
    let Some((pos, call, kind, time_column)) = found else { return Ok(None) };
    groups.splice(pos..=pos, [ident("window_start"), ident("window_end")]);
    for item in select.projection.iter_mut() {
        match item {
            SelectItem::UnnamedExpr(e) if *e == call => {
                *item = SelectItem::ExprWithAlias { expr: ident("window_start"), alias: Ident::new("window_start") }
            }
            SelectItem::ExprWithAlias { expr, .. } if *expr == call => *expr = ident("window_start"),
            _ => {}
        }
    }
    let [from] = select.from.as_mut_slice() else {
        return Err(PlanError::Unsupported(
            "a window over several relations; define the join as a stream, then window that stream".into(),
        ));
    };
    if !from.joins.is_empty() {
        return Err(PlanError::Unsupported(
            "a window over a join; define the join as a stream, then window that stream".into(),
        ));
    }
    let TableFactor::Table { name, alias, .. } = &mut from.relation else {
        return Err(PlanError::Unsupported("a window over a subquery; define it as a stream first".into()));
    };
    let base = name.to_string().trim_matches('"').to_string();
    if alias.is_none() {
        *alias = Some(TableAlias { explicit: true, name: Ident::new(base.clone()), columns: Vec::new() });
    }
    *name = ObjectName::from(vec![Ident::new(VIEW)]);
    Ok(Some(WindowedRelation { base, kind, time_column }))
}

/// The catalog as a windowed query sees it: the base relations plus the windowed view.
pub(crate) struct WindowedCatalog<'a> {
    /// The real catalog.
    pub inner: &'a dyn CatalogView,
    /// The view's definition.
    pub window: WindowedRelation,
    /// The view's schema and plan.
    view: StreamBinding,
}

impl<'a> WindowedCatalog<'a> {
    /// Builds the windowed view of `window.base`.
    pub fn new(inner: &'a dyn CatalogView, window: WindowedRelation) -> Result<Self> {
        let base = window.base.to_lowercase();
        let (schema, plan): (SchemaRef, PlanNode) = if let Some(s) = inner.source(&base) {
            let schema = relax(&s.schema);
            (schema.clone(), PlanNode::Source { name: base.clone(), schema, append_only: s.append_only })
        } else if let Some(s) = inner.stream(&base) {
            (s.schema.clone(), s.plan)
        } else {
            return Err(PlanError::NotFound(format!("table '{}' not found", window.base)));
        };
        let time_column =
            schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(&window.time_column)).ok_or_else(
                || PlanError::Plan(format!("window time column '{}' is not a column of '{base}'", window.time_column)),
            )?;
        let t = schema.field(time_column).data_type().clone();
        let ok = matches!(t, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64) || t.is_integer();
        if !ok {
            return Err(PlanError::Plan(format!(
                "window time column '{}' must be a TIMESTAMP or BIGINT (milliseconds), not {t}",
                window.time_column
            )));
        }
        let wt = if t.is_integer() {
            DataType::Int64
        } else if let DataType::Timestamp(..) = t {
            t
        } else {
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None)
        };
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new("window_start", wt.clone(), true)));
        fields.push(Arc::new(Field::new("window_end", wt, true)));
        let out = Arc::new(Schema::new(fields));
        let spec = WindowSpec { kind: window.kind, time_column, output_schema: out.clone() };
        let view =
            StreamBinding { schema: out, plan: PlanNode::WindowAssign { input: Box::new(plan), spec: Arc::new(spec) } };
        Ok(Self { inner, window, view })
    }

    /// Sources under the view whose watermark column is the window's time column.
    pub fn watermark_sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut all = Vec::new();
        for s in self.view.plan.sources() {
            if let Some(w) = self.inner.source(&s).and_then(|b| b.watermark) {
                if w.eq_ignore_ascii_case(&self.window.time_column) {
                    out.push(s.clone());
                }
                all.push(s);
            }
        }
        if out.is_empty() {
            Vec::new()
        } else {
            all
        }
    }
}

impl CatalogView for WindowedCatalog<'_> {
    fn source(&self, name: &str) -> Option<SourceBinding> {
        self.inner.source(name)
    }

    fn stream(&self, name: &str) -> Option<StreamBinding> {
        if name == VIEW {
            Some(self.view.clone())
        } else {
            self.inner.stream(name)
        }
    }

    fn relations(&self) -> Vec<(String, SchemaRef)> {
        let mut r = self.inner.relations();
        r.push((VIEW.to_string(), self.view.schema.clone()));
        r
    }
}

/// True when `name` is the windowed view.
pub(crate) fn is_view(name: &str) -> bool {
    name == VIEW
}
