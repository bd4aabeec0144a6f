//! Expression evaluation on Arrow batches: DataFusion physical expressions wrapped as the
//! runtime's [`BatchFn`] and [`PredicateFn`].

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, prep_null_mask_filter};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use laminar_dataflow::error::{DataflowError, Result as DfResult};
use laminar_dataflow::plan::{BatchFn, PredicateFn};

use crate::error::Result;

/// Makes every field nullable: runtime batches are validated against these schemas, and
/// nullability inferred at plan time is not a guarantee worth failing a batch over.
pub fn relax(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema.fields().iter().map(|f| Arc::new(Field::new(f.name(), f.data_type().clone(), true))).collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

fn to_physical(expr: &Expr, input: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(expr, input, &ExecutionProps::new())?)
}

fn finish(cols: Vec<ArrayRef>, schema: &SchemaRef, rows: usize) -> DfResult<RecordBatch> {
    let cols = cols
        .into_iter()
        .zip(schema.fields().iter())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(schema.clone(), cols, &RecordBatchOptions::new().with_row_count(Some(rows)))?)
}

/// Evaluates a list of expressions into the columns of a new batch.
#[derive(Debug)]
pub struct ExprProjection {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    text: String,
}

impl ExprProjection {
    /// Plans `exprs` against `input`; the output columns get the names and types of `output`.
    pub fn new(exprs: &[Expr], input: &DFSchema, output: &Schema) -> Result<Self> {
        let physical = exprs.iter().map(|e| to_physical(e, input)).collect::<Result<Vec<_>>>()?;
        let text = exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        Ok(Self { exprs: physical, schema: relax(output), text })
    }
}

impl BatchFn for ExprProjection {
    fn eval(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let n = batch.num_rows();
        let mut cols = Vec::with_capacity(self.exprs.len());
        for e in &self.exprs {
            let v = e.evaluate(batch).map_err(|e| DataflowError::Eval(e.to_string()))?;
            cols.push(v.into_array(n).map_err(|e| DataflowError::Eval(e.to_string()))?);
        }
        finish(cols, &self.schema, n)
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        self.text.clone()
    }
}

/// Renames and casts columns positionally to a target schema (used to align UNION inputs).
#[derive(Debug)]
pub struct CastTo {
    schema: SchemaRef,
}

impl CastTo {
    /// Aligns batches to `schema`.
    pub fn new(schema: &Schema) -> Self {
        Self { schema: relax(schema) }
    }
}

impl BatchFn for CastTo {
    fn eval(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        finish(batch.columns().to_vec(), &self.schema, batch.num_rows())
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        "align columns".into()
    }
}

/// A boolean expression; null counts as false.
#[derive(Debug)]
pub struct ExprPredicate {
    expr: Arc<dyn PhysicalExpr>,
    text: String,
}

impl ExprPredicate {
    /// Plans `expr` against `input`.
    pub fn new(expr: &Expr, input: &DFSchema) -> Result<Self> {
        Ok(Self { expr: to_physical(expr, input)?, text: expr.to_string() })
    }
}

impl PredicateFn for ExprPredicate {
    fn eval(&self, batch: &RecordBatch) -> DfResult<BooleanArray> {
        let v = self.expr.evaluate(batch).map_err(|e| DataflowError::Eval(e.to_string()))?;
        let a = v.into_array(batch.num_rows()).map_err(|e| DataflowError::Eval(e.to_string()))?;
        let b = a
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataflowError::Eval(format!("predicate is {} rather than BOOLEAN", a.data_type())))?;
        Ok(if b.null_count() > 0 { prep_null_mask_filter(b) } else { b.clone() })
    }

    fn describe(&self) -> String {
        self.text.clone()
    }
}
