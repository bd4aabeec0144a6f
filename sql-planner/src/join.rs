//! Planning of joins: equi-join keys, the remaining ON conditions, and event-time bounds between
//! the two sides (`b.ts BETWEEN a.ts AND a.ts + INTERVAL '5' MINUTE`) that let the join forget
//! rows as the watermarks pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::{Column, DFSchema, JoinType, NullEquality, ScalarValue};
use datafusion::logical_expr::{expr::Cast, BinaryExpr, Expr, ExprSchemable, Join, Operator};
use laminar_dataflow::plan::{JoinKind, JoinPlan, PlanNode, TimeBound};

use crate::error::{PlanError, Result};
use crate::exprs::{relax, ExprPredicate, ExprProjection};
use crate::planner::{compile, CatalogView};

/// Compiles a DataFusion join into an incremental join node.
pub(crate) fn compile_join(j: &Join, catalog: &dyn CatalogView, refs: &mut BTreeSet<String>) -> Result<PlanNode> {
    let kind = match j.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Right => JoinKind::Right,
        JoinType::Full => JoinKind::Full,
        other => {
            return Err(PlanError::Unsupported(format!(
                "{other} joins (EXISTS / IN subqueries) in a continuous query; use INNER, LEFT, RIGHT or FULL joins"
            )))
        }
    };
    if j.on.is_empty() {
        return Err(PlanError::Unsupported(
            "a join without an equality condition (a cross or theta join) in a continuous query: \
             add `ON left.key = right.key`"
                .into(),
        ));
    }
    if j.null_equality == NullEquality::NullEqualsNull {
        return Err(PlanError::Unsupported("IS NOT DISTINCT FROM as a join condition".into()));
    }
    let left = compile(&j.left, catalog, refs)?;
    let right = compile(&j.right, catalog, refs)?;
    let ls = j.left.schema();
    let rs = j.right.schema();
    let mut lkeys = Vec::with_capacity(j.on.len());
    let mut rkeys = Vec::with_capacity(j.on.len());
    let mut key_fields = Vec::with_capacity(j.on.len());
    for (i, (l, r)) in j.on.iter().enumerate() {
        let lt = l.get_type(ls.as_ref())?;
        let rt = r.get_type(rs.as_ref())?;
        let r = if lt == rt { r.clone() } else { Expr::Cast(Cast::new(Box::new(r.clone()), lt.clone())) };
        key_fields.push(Field::new(format!("k{i}"), lt, true));
        lkeys.push(l.clone());
        rkeys.push(r);
    }
    let key_schema = Schema::new(key_fields);
    let left_keys = ExprProjection::new(&lkeys, ls, &key_schema)?;
    let right_keys = ExprProjection::new(&rkeys, rs, &key_schema)?;
    let filter = match &j.filter {
        Some(f) => Some(Arc::new(ExprPredicate::new(f, &j.schema)?) as _),
        None => None,
    };
    let time_bound = j.filter.as_ref().and_then(|f| time_bound(f, ls, rs, &left, &right, catalog));
    let plan = JoinPlan {
        kind,
        left_keys: Arc::new(left_keys),
        right_keys: Arc::new(right_keys),
        filter,
        output_schema: relax(j.schema.as_arrow()),
        time_bound,
    };
    Ok(PlanNode::Join { left: Box::new(left), right: Box::new(right), plan: Arc::new(plan) })
}

/// `column + offset_ms` on one side of the join.
struct TimeTerm {
    left: bool,
    column: Column,
    offset_ms: i64,
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        Expr::Cast(c) => strip(&c.expr),
        Expr::TryCast(c) => strip(&c.expr),
        other => other,
    }
}

/// Milliseconds of an interval or integer literal.
fn literal_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = strip(e) else { return None };
    match v {
        ScalarValue::IntervalMonthDayNano(Some(iv)) if iv.months == 0 => {
            Some(iv.days as i64 * 86_400_000 + iv.nanoseconds.div_euclid(1_000_000))
        }
        ScalarValue::IntervalDayTime(Some(iv)) => Some(iv.days as i64 * 86_400_000 + iv.milliseconds as i64),
        ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
        ScalarValue::DurationSecond(Some(v)) => Some(v * 1000),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(v / 1000),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1_000_000),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::Int32(Some(v)) => Some(*v as i64),
        _ => None,
    }
}

fn time_term(e: &Expr, ls: &DFSchema, rs: &DFSchema) -> Option<TimeTerm> {
    match strip(e) {
        Expr::Column(c) => {
            if ls.has_column(c) {
                Some(TimeTerm { left: true, column: c.clone(), offset_ms: 0 })
            } else if rs.has_column(c) {
                Some(TimeTerm { left: false, column: c.clone(), offset_ms: 0 })
            } else {
                None
            }
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right }) => {
            if let Some(ms) = literal_ms(right) {
                time_term(left, ls, rs).map(|t| TimeTerm { offset_ms: t.offset_ms + ms, ..t })
            } else {
                let ms = literal_ms(left)?;
                time_term(right, ls, rs).map(|t| TimeTerm { offset_ms: t.offset_ms + ms, ..t })
            }
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) => {
            let ms = literal_ms(right)?;
            time_term(left, ls, rs).map(|t| TimeTerm { offset_ms: t.offset_ms - ms, ..t })
        }
        _ => None,
    }
}

fn conjuncts(e: &Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Between(b) if !b.negated => {
            out.push(Expr::BinaryExpr(BinaryExpr::new(b.expr.clone(), Operator::GtEq, b.low.clone())));
            out.push(Expr::BinaryExpr(BinaryExpr::new(b.expr.clone(), Operator::LtEq, b.high.clone())));
        }
        other => out.push(other.clone()),
    }
}

/// Sources of `node` whose watermark column is `column`'s name, and all its watermarked sources.
fn watermarked(node: &PlanNode, column: &str, catalog: &dyn CatalogView) -> Option<Vec<String>> {
    let mut all = Vec::new();
    let mut found = false;
    for s in node.sources() {
        if let Some(w) = catalog.source(&s).and_then(|b| b.watermark) {
            found |= w.eq_ignore_ascii_case(column);
            all.push(s);
        }
    }
    found.then_some(all)
}

/// Finds `right.ts - left.ts` bounds in the ON conditions, on the sides' event-time columns.
fn time_bound(
    filter: &Expr,
    ls: &DFSchema,
    rs: &DFSchema,
    left: &PlanNode,
    right: &PlanNode,
    catalog: &dyn CatalogView,
) -> Option<TimeBound> {
    let mut parts = Vec::new();
    conjuncts(filter, &mut parts);
    let mut columns: Option<(Column, Column)> = None;
    let (mut lower, mut upper) = (i64::MIN, i64::MAX);
    for p in &parts {
        let Expr::BinaryExpr(BinaryExpr { left: a, op, right: b }) = p else { continue };
        let (Some(ta), Some(tb)) = (time_term(a, ls, rs), time_term(b, ls, rs)) else { continue };
        if ta.left == tb.left {
            continue;
        }
        // Rewrite as `R.col - L.col <op> c`.
        let (r, l, op) = if ta.left { (tb, ta, flip(*op)) } else { (ta, tb, Some(*op)) };
        let Some(op) = op else { continue };
        let pair = (l.column.clone(), r.column.clone());
        match &columns {
            Some(c) if *c != pair => continue,
            Some(_) => {}
            None => columns = Some(pair),
        }
        let c = l.offset_ms.saturating_sub(r.offset_ms);
        match op {
            Operator::Lt | Operator::LtEq => upper = upper.min(c),
            Operator::Gt | Operator::GtEq => lower = lower.max(c),
            _ => {}
        }
    }
    let (lc, rc) = columns?;
    if lower == i64::MIN && upper == i64::MAX {
        return None;
    }
    let left_sources = watermarked(left, &lc.name, catalog)?;
    let right_sources = watermarked(right, &rc.name, catalog)?;
    Some(TimeBound {
        left_column: ls.index_of_column(&lc).ok()?,
        right_column: rs.index_of_column(&rc).ok()?,
        lower_ms: lower,
        upper_ms: upper,
        left_sources,
        right_sources,
    })
}

/// `a op b` as `b op' a`; `None` for operators that are not comparisons.
fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}
