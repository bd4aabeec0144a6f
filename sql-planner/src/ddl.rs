//! Parsing of LaminarDB statements.
//!
//! The streaming DDL (`CREATE SOURCE … WITH (…)`, `CREATE STREAM … AS …`, `CREATE SINK …`,
//! `WATERMARK FOR`, `EMIT …`) is parsed here on top of the SQL tokenizer; the query text of a
//! stream, sink or ad-hoc query is kept verbatim and bound later by the planner.

use std::collections::BTreeMap;

use arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};
use crate::types::sql_type_to_arrow;

/// The `WITH (…)` options of a source or sink, keys lower-cased.
pub type Options = BTreeMap<String, String>;

/// A declared column.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// The SQL type as written.
    pub sql_type: String,
    /// Arrow type.
    pub data_type: DataType,
    /// False for `NOT NULL`.
    pub nullable: bool,
}

/// `WATERMARK FOR col [AS col - INTERVAL '…']`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkDef {
    /// The event-time column.
    pub column: String,
    /// How far the watermark trails the largest event time seen, in milliseconds.
    pub delay_ms: i64,
}

/// `CREATE SOURCE` / `CREATE TABLE`.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateSource {
    /// Name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<ColumnDef>,
    /// Event-time watermark.
    pub watermark: Option<WatermarkDef>,
    /// `PRIMARY KEY (…)`: rows with an existing key replace the old row (upsert source).
    pub primary_key: Vec<String>,
    /// `WITH (…)` options.
    pub options: Options,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `OR REPLACE`.
    pub or_replace: bool,
}

/// How a continuous query emits its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmitMode {
    /// Updating output: results change as data arrives (the default).
    #[default]
    OnUpdate,
    /// `EMIT ON WINDOW CLOSE`: one final row per window once the watermark passes its end.
    OnWindowClose,
    /// `EMIT CHANGES`: a changelog.
    Changes,
}

/// `CREATE STREAM` / `CREATE MATERIALIZED VIEW`.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateStream {
    /// Name.
    pub name: String,
    /// The `SELECT` text.
    pub query: String,
    /// True for `MATERIALIZED VIEW`.
    pub materialized: bool,
    /// `EMIT …` clause.
    pub emit: EmitMode,
    /// Trailing `WITH (…)` options (`'retention'`).
    pub options: Options,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `OR REPLACE`.
    pub or_replace: bool,
}

/// `CREATE SINK`.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateSink {
    /// Name.
    pub name: String,
    /// The query feeding the sink (`FROM x` becomes `SELECT * FROM x`).
    pub query: String,
    /// `EMIT …` (`ON WINDOW CLOSE` makes a windowed query append-only).
    pub emit: EmitMode,
    /// `WITH (…)` options.
    pub options: Options,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
}

/// Kinds of catalog objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A source (or table).
    Source,
    /// A stream.
    Stream,
    /// A materialized view.
    MaterializedView,
    /// A sink.
    Sink,
}

impl ObjectKind {
    /// SQL spelling.
    pub fn sql(self) -> &'static str {
        match self {
            ObjectKind::Source => "SOURCE",
            ObjectKind::Stream => "STREAM",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
            ObjectKind::Sink => "SINK",
        }
    }
}

/// A parsed statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `CREATE SOURCE`.
    CreateSource(CreateSource),
    /// `CREATE STREAM` / `CREATE MATERIALIZED VIEW`.
    CreateStream(CreateStream),
    /// `CREATE SINK`.
    CreateSink(CreateSink),
    /// `DROP kind [IF EXISTS] name [CASCADE]`.
    Drop {
        /// Kind.
        kind: ObjectKind,
        /// Name.
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`.
        cascade: bool,
    },
    /// `SHOW SOURCES|STREAMS|SINKS|MATERIALIZED VIEWS`.
    Show(ObjectKind),
    /// `SHOW CREATE [SOURCE|STREAM|SINK|MATERIALIZED VIEW] name`: the defining statement.
    ShowCreate {
        /// The kind named in the statement, if any.
        kind: Option<ObjectKind>,
        /// Name.
        name: String,
    },
    /// `DESCRIBE name`.
    Describe(String),
    /// `EXPLAIN query`.
    Explain(String),
    /// `INSERT INTO name [(cols)] VALUES … | SELECT …`.
    Insert {
        /// Target source.
        table: String,
        /// Explicit column list.
        columns: Vec<String>,
        /// The `VALUES`/`SELECT` text.
        query: String,
    },
    /// An ad-hoc query.
    Query(String),
}

struct Cursor<'a> {
    sql: &'a str,
    toks: Vec<TokenWithSpan>,
    pos: usize,
    line_starts: Vec<usize>,
}

impl<'a> Cursor<'a> {
    fn new(sql: &'a str) -> Result<Self> {
        let toks = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .map_err(|e| PlanError::Parse(e.to_string()))?
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .collect::<Vec<_>>();
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        let mut c = Self { sql, toks, pos: 0, line_starts };
        while matches!(c.toks.last().map(|t| &t.token), Some(Token::SemiColon)) {
            c.toks.pop();
        }
        if c.toks.iter().any(|t| t.token == Token::SemiColon) {
            return Err(PlanError::Parse("expected one statement; found several separated by ';'".into()));
        }
        Ok(c)
    }

    fn offset(&self, loc: Location) -> usize {
        let line = (loc.line.max(1) - 1) as usize;
        let start = self.line_starts.get(line).copied().unwrap_or(self.sql.len());
        let col = loc.column.max(1) as usize - 1;
        self.sql[start..].char_indices().nth(col).map(|(i, _)| start + i).unwrap_or(self.sql.len())
    }

    fn start_of(&self, idx: usize) -> usize {
        self.toks.get(idx).map(|t| self.offset(t.span.start)).unwrap_or(self.sql.len())
    }

    fn text(&self, from: usize, to: usize) -> String {
        let end = if to < self.toks.len() {
            self.start_of(to)
        } else {
            self.toks.last().map(|t| self.offset(t.span.end)).unwrap_or(self.sql.len())
        };
        let start = self.start_of(from).min(end);
        self.sql[start..end].trim().to_string()
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos).map(|t| &t.token)
    }

    fn peek_at(&self, i: usize) -> Option<&Token> {
        self.toks.get(i).map(|t| &t.token)
    }

    fn word_at(&self, i: usize) -> Option<String> {
        match self.peek_at(i) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn peek_word(&self) -> Option<String> {
        self.word_at(self.pos)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word().as_deref() == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_words(&mut self, ws: &[&str]) -> bool {
        if ws.iter().enumerate().all(|(i, w)| self.word_at(self.pos + i).as_deref() == Some(*w)) {
            self.pos += ws.len();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(self.unexpected(w))
        }
    }

    fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Token) -> Result<()> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.unexpected(&t.to_string()))
        }
    }

    fn unexpected(&self, wanted: &str) -> PlanError {
        match self.toks.get(self.pos) {
            Some(t) => PlanError::Parse(format!(
                "expected {wanted}, found '{}' at line {}, column {}",
                t.token, t.span.start.line, t.span.start.column
            )),
            None => PlanError::Parse(format!("expected {wanted}, found end of statement")),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    fn expect_end(&self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.unexpected("end of statement"))
        }
    }

    fn ident(&mut self) -> Result<String> {
        match self.peek().cloned() {
            Some(Token::Word(w)) => {
                self.pos += 1;
                Ok(if w.quote_style.is_some() { w.value } else { w.value.to_lowercase() })
            }
            _ => Err(self.unexpected("a name")),
        }
    }

    fn object_name(&mut self) -> Result<String> {
        let mut name = self.ident()?;
        while self.eat(&Token::Period) {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    /// Index of the first token at paren depth 0 from `from` satisfying `pred`, else the end.
    fn find_top_level(&self, from: usize, mut pred: impl FnMut(&Self, usize) -> bool) -> usize {
        let mut depth = 0i32;
        let mut i = from;
        while i < self.toks.len() {
            match &self.toks[i].token {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                _ if depth == 0 && pred(self, i) => return i,
                _ => {}
            }
            i += 1;
        }
        self.toks.len()
    }

    /// Index of the `)` matching the `(` at `open`.
    fn matching_paren(&self, open: usize) -> Option<usize> {
        let mut depth = 0i32;
        for i in open..self.toks.len() {
            match self.toks[i].token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn options(&mut self) -> Result<Options> {
        let mut out = Options::new();
        self.expect(&Token::LParen)?;
        if self.eat(&Token::RParen) {
            return Ok(out);
        }
        loop {
            let key = match self.peek().cloned() {
                Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => {
                    self.pos += 1;
                    s
                }
                Some(Token::Word(w)) => {
                    self.pos += 1;
                    let mut k = w.value;
                    while self.eat(&Token::Period) {
                        match self.peek().cloned() {
                            Some(Token::Word(w)) => {
                                self.pos += 1;
                                k.push('.');
                                k.push_str(&w.value);
                            }
                            _ => return Err(self.unexpected("an option name")),
                        }
                    }
                    k
                }
                _ => return Err(self.unexpected("an option name")),
            };
            self.expect(&Token::Eq)?;
            let value = match self.peek().cloned() {
                Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => s,
                Some(Token::Number(n, _)) => n,
                Some(Token::Word(w)) => w.value,
                Some(Token::Minus) => match self.peek_at(self.pos + 1).cloned() {
                    Some(Token::Number(n, _)) => {
                        self.pos += 1;
                        format!("-{n}")
                    }
                    _ => return Err(self.unexpected("an option value")),
                },
                _ => return Err(self.unexpected("an option value")),
            };
            self.pos += 1;
            let key = key.to_lowercase();
            if out.insert(key.clone(), value).is_some() {
                return Err(PlanError::Parse(format!("option '{key}' is given twice")));
            }
            if self.eat(&Token::Comma) {
                continue;
            }
            self.expect(&Token::RParen)?;
            return Ok(out);
        }
    }
}

/// Parses one statement.
pub fn parse_statement(sql: &str) -> Result<Statement> {
    let mut c = Cursor::new(sql)?;
    let Some(first) = c.peek_word() else {
        return match c.peek() {
            Some(Token::LParen) => Ok(Statement::Query(c.text(0, c.toks.len()))),
            None => Err(PlanError::Parse("empty statement".into())),
            _ => Err(c.unexpected("a statement")),
        };
    };
    match first.as_str() {
        "CREATE" => {
            c.pos += 1;
            let or_replace = c.eat_words(&["OR", "REPLACE"]);
            if c.eat_word("SOURCE") || c.eat_word("TABLE") {
                parse_create_source(&mut c, or_replace)
            } else if c.eat_word("STREAM") {
                parse_create_stream(&mut c, false, or_replace)
            } else if c.eat_words(&["MATERIALIZED", "VIEW"]) || c.eat_word("VIEW") {
                parse_create_stream(&mut c, true, or_replace)
            } else if c.eat_word("SINK") {
                parse_create_sink(&mut c)
            } else {
                Err(c.unexpected("SOURCE, TABLE, STREAM, MATERIALIZED VIEW or SINK after CREATE"))
            }
        }
        "DROP" => {
            c.pos += 1;
            let kind = parse_kind(&mut c, false)?;
            let if_exists = c.eat_words(&["IF", "EXISTS"]);
            let name = c.object_name()?;
            let cascade = c.eat_word("CASCADE");
            if !cascade {
                c.eat_word("RESTRICT");
            }
            c.expect_end()?;
            Ok(Statement::Drop { kind, name, if_exists, cascade })
        }
        "SHOW" => {
            c.pos += 1;
            if c.eat_word("CREATE") {
                // `SHOW CREATE name` (the name is all that is left) or `SHOW CREATE kind name`.
                let kind = match c.peek_at(c.pos + 1) {
                    None => None,
                    Some(_) => Some(parse_kind(&mut c, false)?),
                };
                let name = c.object_name()?;
                c.expect_end()?;
                return Ok(Statement::ShowCreate { kind, name });
            }
            let kind = parse_kind(&mut c, true)?;
            c.expect_end()?;
            Ok(Statement::Show(kind))
        }
        "DESCRIBE" | "DESC" => {
            c.pos += 1;
            let name = c.object_name()?;
            c.expect_end()?;
            Ok(Statement::Describe(name))
        }
        "EXPLAIN" => {
            c.pos += 1;
            Ok(Statement::Explain(c.text(c.pos, c.toks.len())))
        }
        "INSERT" => {
            c.pos += 1;
            c.expect_word("INTO")?;
            let table = c.object_name()?;
            let mut columns = Vec::new();
            if c.peek() == Some(&Token::LParen)
                && !matches!(c.word_at(c.pos + 1).as_deref(), Some("SELECT" | "VALUES" | "WITH"))
            {
                c.pos += 1;
                loop {
                    columns.push(c.ident()?);
                    if !c.eat(&Token::Comma) {
                        break;
                    }
                }
                c.expect(&Token::RParen)?;
            }
            if c.at_end() {
                return Err(c.unexpected("VALUES or SELECT"));
            }
            Ok(Statement::Insert { table, columns, query: c.text(c.pos, c.toks.len()) })
        }
        "SELECT" | "WITH" | "VALUES" => Ok(Statement::Query(c.text(0, c.toks.len()))),
        _ => Err(c.unexpected("a statement")),
    }
}

fn parse_kind(c: &mut Cursor<'_>, plural: bool) -> Result<ObjectKind> {
    let kinds: &[(&[&str], ObjectKind)] = if plural {
        &[
            (&["SOURCES"], ObjectKind::Source),
            (&["TABLES"], ObjectKind::Source),
            (&["STREAMS"], ObjectKind::Stream),
            (&["SINKS"], ObjectKind::Sink),
            (&["MATERIALIZED", "VIEWS"], ObjectKind::MaterializedView),
            (&["VIEWS"], ObjectKind::MaterializedView),
        ]
    } else {
        &[
            (&["SOURCE"], ObjectKind::Source),
            (&["TABLE"], ObjectKind::Source),
            (&["STREAM"], ObjectKind::Stream),
            (&["SINK"], ObjectKind::Sink),
            (&["MATERIALIZED", "VIEW"], ObjectKind::MaterializedView),
            (&["VIEW"], ObjectKind::MaterializedView),
        ]
    };
    for (words, kind) in kinds {
        if c.eat_words(words) {
            return Ok(*kind);
        }
    }
    Err(c.unexpected(if plural {
        "SOURCES, STREAMS, SINKS or MATERIALIZED VIEWS"
    } else {
        "SOURCE, STREAM, SINK or MATERIALIZED VIEW"
    }))
}

fn parse_create_source(c: &mut Cursor<'_>, or_replace: bool) -> Result<Statement> {
    let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
    let name = c.object_name()?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut watermark = None;
    let mut primary_key = Vec::new();
    c.expect(&Token::LParen)?;
    loop {
        if c.eat_word("WATERMARK") {
            c.expect_word("FOR")?;
            let column = c.ident()?;
            let mut delay_ms = 0;
            if c.eat_word("AS") {
                let from = c.pos;
                let to = end_of_list(c, from);
                let text = c.text(from, to);
                delay_ms = watermark_delay(&text, &column)?;
                c.pos = to;
            }
            if watermark.replace(WatermarkDef { column, delay_ms }).is_some() {
                return Err(PlanError::Schema("only one WATERMARK may be declared".into()));
            }
        } else if c.eat_words(&["PRIMARY", "KEY"]) {
            c.expect(&Token::LParen)?;
            loop {
                primary_key.push(c.ident()?);
                if !c.eat(&Token::Comma) {
                    break;
                }
            }
            c.expect(&Token::RParen)?;
        } else {
            let col = c.ident()?;
            let from = c.pos;
            let to = end_of_list(c, from);
            // trailing column constraints
            let mut type_end = to;
            let mut nullable = true;
            let mut is_pk = false;
            let mut i = from;
            while i < to {
                match c.word_at(i).as_deref() {
                    Some("NOT") if c.word_at(i + 1).as_deref() == Some("NULL") => {
                        type_end = type_end.min(i);
                        nullable = false;
                        i += 2;
                    }
                    Some("NULL") => {
                        type_end = type_end.min(i);
                        i += 1;
                    }
                    Some("PRIMARY") if c.word_at(i + 1).as_deref() == Some("KEY") => {
                        type_end = type_end.min(i);
                        is_pk = true;
                        i += 2;
                    }
                    _ => {
                        if type_end < to {
                            c.pos = i;
                            return Err(c.unexpected("NOT NULL, NULL or PRIMARY KEY"));
                        }
                        i += 1;
                    }
                }
            }
            if type_end == from {
                return Err(PlanError::Parse(format!("column '{col}' needs a type")));
            }
            let sql_type = c.text(from, type_end);
            let data_type = sql_type_to_arrow(&sql_type).map_err(|e| {
                PlanError::Schema(format!("column '{col}': {}", e.to_string().trim_start_matches("invalid schema: ")))
            })?;
            if columns.iter().any(|x| x.name == col) {
                return Err(PlanError::Schema(format!("column '{col}' is declared twice")));
            }
            if is_pk {
                primary_key.push(col.clone());
            }
            columns.push(ColumnDef { name: col, sql_type, data_type, nullable: nullable && !is_pk });
            c.pos = to;
        }
        if c.eat(&Token::Comma) {
            continue;
        }
        c.expect(&Token::RParen)?;
        break;
    }
    if columns.is_empty() {
        return Err(PlanError::Schema(format!("source '{name}' declares no columns")));
    }
    if let Some(w) = &watermark {
        let col = columns
            .iter()
            .find(|x| x.name == w.column)
            .ok_or_else(|| PlanError::Schema(format!("WATERMARK FOR '{}': no such column", w.column)))?;
        if !matches!(col.data_type, DataType::Timestamp(..) | DataType::Int64 | DataType::Int32 | DataType::Date32) {
            return Err(PlanError::Schema(format!(
                "WATERMARK FOR '{}': the column must be TIMESTAMP or BIGINT (milliseconds), not {}",
                w.column, col.sql_type
            )));
        }
    }
    for k in &primary_key {
        match columns.iter_mut().find(|x| &x.name == k) {
            // key columns are NOT NULL, so a null key is rejected when the row is inserted
            Some(col) => col.nullable = false,
            None => return Err(PlanError::Schema(format!("PRIMARY KEY column '{k}' is not declared"))),
        }
    }
    let options = if c.eat_word("WITH") { c.options()? } else { Options::new() };
    c.expect_end()?;
    Ok(Statement::CreateSource(CreateSource {
        name,
        columns,
        watermark,
        primary_key,
        options,
        if_not_exists,
        or_replace,
    }))
}

/// Index of the `,` or closing `)` that ends the list item starting at `from`.
fn end_of_list(c: &Cursor<'_>, from: usize) -> usize {
    let mut depth = 0i32;
    for i in from..c.toks.len() {
        match c.toks[i].token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
            }
            Token::Comma if depth == 0 => return i,
            _ => {}
        }
    }
    c.toks.len()
}

/// Milliseconds of `col - INTERVAL '…'` (or 0 for `col`).
fn watermark_delay(text: &str, column: &str) -> Result<i64> {
    let expr = Parser::new(&GenericDialect {}).try_with_sql(text)?.parse_expr()?;
    let is_col = |e: &SqlExpr| matches!(e, SqlExpr::Identifier(id) if id.value.eq_ignore_ascii_case(column));
    match &expr {
        e if is_col(e) => Ok(0),
        SqlExpr::BinaryOp { left, op: BinaryOperator::Minus, right } if is_col(left) => match right.as_ref() {
            SqlExpr::Interval(_) => crate::interval::interval_to_ms(right),
            SqlExpr::Value(v) => v
                .to_string()
                .parse::<i64>()
                .map_err(|_| PlanError::Schema(format!("watermark delay '{v}' is not a number of milliseconds"))),
            other => Err(PlanError::Schema(format!("watermark delay must be an INTERVAL, got '{other}'"))),
        },
        _ => Err(PlanError::Schema(format!(
            "WATERMARK FOR {column} AS <expr>: the expression must be '{column}' or '{column} - INTERVAL ...', got '{text}'"
        ))),
    }
}

/// Index of the statement's trailing `WITH (…)` after a query starting at `q_start`: the last
/// top-level `WITH (` whose `)` ends the statement (a leading `WITH` is the query's own CTE).
fn trailing_with(c: &Cursor<'_>, q_start: usize) -> usize {
    c.find_top_level(q_start + 1, |c, i| {
        c.word_at(i).as_deref() == Some("WITH")
            && c.peek_at(i + 1) == Some(&Token::LParen)
            && c.matching_paren(i + 1) == Some(c.toks.len() - 1)
    })
}

/// The query text from `AS` up to an `EMIT` clause or the trailing `WITH (…)`; leaves the cursor
/// after `EMIT …` and returns the emit mode too.
fn query_tail(c: &mut Cursor<'_>) -> Result<(String, EmitMode)> {
    c.expect_word("AS")?;
    let q_start = c.pos;
    let with_at = trailing_with(c, q_start);
    let q_end = c.find_top_level(q_start, |c, i| c.word_at(i).as_deref() == Some("EMIT")).min(with_at);
    let query = c.text(q_start, q_end);
    if q_end == q_start || query.is_empty() {
        return Err(c.unexpected("a query"));
    }
    c.pos = q_end;
    let emit = parse_emit(c)?;
    Ok((query, emit))
}

fn parse_create_stream(c: &mut Cursor<'_>, materialized: bool, or_replace: bool) -> Result<Statement> {
    let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
    let name = c.object_name()?;
    let (query, emit) = query_tail(c)?;
    let options = if c.eat_word("WITH") { c.options()? } else { Options::new() };
    c.expect_end()?;
    Ok(Statement::CreateStream(CreateStream { name, query, materialized, emit, options, if_not_exists, or_replace }))
}

fn parse_emit(c: &mut Cursor<'_>) -> Result<EmitMode> {
    if !c.eat_word("EMIT") {
        return Ok(EmitMode::OnUpdate);
    }
    if c.eat_word("CHANGES") {
        Ok(EmitMode::Changes)
    } else if c.eat_words(&["ON", "WINDOW", "CLOSE"]) || c.eat_word("FINAL") {
        Ok(EmitMode::OnWindowClose)
    } else if c.eat_words(&["ON", "UPDATE"]) {
        Ok(EmitMode::OnUpdate)
    } else {
        Err(c.unexpected("CHANGES, ON WINDOW CLOSE or ON UPDATE after EMIT"))
    }
}

fn parse_create_sink(c: &mut Cursor<'_>) -> Result<Statement> {
    let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
    let name = c.object_name()?;
    let (query, emit) = if c.eat_word("FROM") {
        let from = c.object_name()?;
        (format!("SELECT * FROM {from}"), EmitMode::OnUpdate)
    } else {
        query_tail(c)?
    };
    let options = if c.eat_word("WITH") { c.options()? } else { Options::new() };
    c.expect_end()?;
    Ok(Statement::CreateSink(CreateSink { name, query, emit, options, if_not_exists }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_source_with_watermark_and_options() {
        let s = parse_statement(
            "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = 'kafka', 'bootstrap.servers' = 'h:9092', 'topic' = 't');",
        )
        .expect("parse");
        let Statement::CreateSource(s) = s else { panic!("not a source") };
        assert_eq!(s.name, "trades");
        assert_eq!(s.columns.len(), 3);
        assert!(!s.columns[0].nullable);
        assert_eq!(s.watermark, Some(WatermarkDef { column: "ts".into(), delay_ms: 5000 }));
        assert_eq!(s.options.get("connector").map(String::as_str), Some("kafka"));
        assert_eq!(s.options.get("bootstrap.servers").map(String::as_str), Some("h:9092"));
    }

    #[test]
    fn create_sink_splits_query_and_options() {
        let s = parse_statement(
            "CREATE SINK alerts AS SELECT symbol, price FROM trades WHERE price > (SELECT 1) WITH (connector = 'kafka', 'topic' = 'x')",
        )
        .expect("parse");
        let Statement::CreateSink(s) = s else { panic!("not a sink") };
        assert_eq!(s.query, "SELECT symbol, price FROM trades WHERE price > (SELECT 1)");
        assert_eq!(s.options.len(), 2);
        let s = parse_statement("CREATE SINK s FROM agg WITH (connector = 'console')").expect("parse");
        let Statement::CreateSink(s) = s else { panic!("not a sink") };
        assert_eq!(s.query, "SELECT * FROM agg");
    }

    #[test]
    fn create_stream_with_emit_and_cte() {
        let s = parse_statement(
            "CREATE STREAM w AS WITH x AS (SELECT * FROM t) SELECT k, COUNT(*) FROM x GROUP BY k EMIT ON WINDOW CLOSE",
        )
        .expect("parse");
        let Statement::CreateStream(s) = s else { panic!("not a stream") };
        assert_eq!(s.query, "WITH x AS (SELECT * FROM t) SELECT k, COUNT(*) FROM x GROUP BY k");
        assert_eq!(s.emit, EmitMode::OnWindowClose);
        assert!(!s.materialized);
        let s = parse_statement("CREATE STREAM r AS SELECT * FROM t WITH ('retention' = '10 rows')").expect("parse");
        let Statement::CreateStream(s) = s else { panic!("not a stream") };
        assert_eq!(s.query, "SELECT * FROM t");
        assert_eq!(s.options.get("retention").map(String::as_str), Some("10 rows"));
    }

    #[test]
    fn drop_show_describe() {
        assert_eq!(
            parse_statement("DROP MATERIALIZED VIEW IF EXISTS mv CASCADE").expect("drop"),
            Statement::Drop { kind: ObjectKind::MaterializedView, name: "mv".into(), if_exists: true, cascade: true }
        );
        assert_eq!(parse_statement("show streams").expect("show"), Statement::Show(ObjectKind::Stream));
        assert_eq!(
            parse_statement("SHOW CREATE SINK out").expect("show create"),
            Statement::ShowCreate { kind: Some(ObjectKind::Sink), name: "out".into() }
        );
        assert_eq!(
            parse_statement("show create trades").expect("show create"),
            Statement::ShowCreate { kind: None, name: "trades".into() }
        );
        assert_eq!(parse_statement("DESCRIBE Trades").expect("desc"), Statement::Describe("trades".into()));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_statement("CREATE SOURCE t (a GEOMETRY)").expect_err("type");
        assert!(e.to_string().contains("column 'a'"), "{e}");
        let e = parse_statement("CREATE SOURCE t (a INT, a INT)").expect_err("dup");
        assert!(e.to_string().contains("declared twice"), "{e}");
        let e = parse_statement("CREATE SOURCE t (a INT, WATERMARK FOR b)").expect_err("wm");
        assert!(e.to_string().contains("'b'"), "{e}");
        let e = parse_statement("CREATE SOURCE t (a INT) WITH (x = '1', x = '2')").expect_err("dup opt");
        assert!(e.to_string().contains("'x'"), "{e}");
        assert!(parse_statement("CREATE FOO x").is_err());
    }

    #[test]
    fn insert_and_query() {
        let s = parse_statement("INSERT INTO t (a, b) VALUES (1, 'x')").expect("insert");
        assert_eq!(
            s,
            Statement::Insert {
                table: "t".into(),
                columns: vec!["a".into(), "b".into()],
                query: "VALUES (1, 'x')".into()
            }
        );
        assert_eq!(parse_statement("select 1;").expect("q"), Statement::Query("select 1".into()));
    }
}
