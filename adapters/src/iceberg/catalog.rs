//! Iceberg catalogs the sink commits through.
//!
//! A catalog maps a table name to the location of the table's current metadata file; a commit
//! writes a new metadata file and swaps the pointer only if it still points at the metadata the
//! commit was built on (compare-and-swap), so concurrent writers never lose each other's
//! snapshots.
//!
//! The SQL catalog reads and writes the tables pyiceberg's `SqlCatalog` (and iceberg-java's
//! `JdbcCatalog`) use, so the sink works on a catalog database those tools made, and they read
//! what the sink commits:
//! `iceberg_tables(catalog_name, table_namespace, table_name, metadata_location,
//! previous_metadata_location[, iceberg_type])` and `iceberg_namespace_properties(catalog_name,
//! namespace, property_key, property_value)`; multi-level namespaces are stored joined with
//! dots. A new database gets the current layout (with `iceberg_type`, as pyiceberg 0.10+ and
//! iceberg-java make it); one without that column (older pyiceberg) is used as it is.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{MetadataLocation, Runtime, TableCreation, TableIdent, TableRequirement, TableUpdate};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{ConnectorError, Result};

/// Where the catalog lives, from `catalog_uri` and `'catalog.type'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CatalogTarget {
    /// A SQLite catalog database (`sqlite:////abs/path.db`, SQLAlchemy's form).
    Sqlite(PathBuf),
    /// A REST catalog at this base URL.
    Rest(String),
}

impl CatalogTarget {
    /// Parses `catalog_uri` given the optional `'catalog.type'` override.
    pub(crate) fn parse(uri: &str, kind: Option<&str>) -> Result<Self> {
        let kind = match kind {
            Some(k) => k.to_string(),
            None if uri.starts_with("http://") || uri.starts_with("https://") => "rest".into(),
            None if uri.starts_with("sqlite:") || uri.starts_with("postgresql:") || uri.starts_with("postgres:") => {
                "sql".into()
            }
            None => {
                return Err(ConnectorError::Config(format!(
                    "'catalog_uri' = '{uri}' is not a catalog this sink knows: use a SQLite catalog \
                     ('sqlite:////abs/path/catalog.db'), or set 'catalog.type'"
                )))
            }
        };
        match kind.as_str() {
            "sql" => {
                if let Some(path) = uri.strip_prefix("sqlite:///") {
                    if path.is_empty() || path == ":memory:" {
                        return Err(ConnectorError::Config(
                            "'catalog_uri': a SQLite catalog needs a file ('sqlite:////abs/path/catalog.db')".into(),
                        ));
                    }
                    return Ok(Self::Sqlite(PathBuf::from(path)));
                }
                Err(ConnectorError::Config(format!(
                    "'catalog_uri' = '{uri}': the SQL catalog supports SQLite databases \
                     ('sqlite:////abs/path/catalog.db')"
                )))
            }
            "rest" => {
                let url = url::Url::parse(uri).map_err(|e| {
                    ConnectorError::Config(format!("'catalog_uri' = '{uri}' is not a URL for a REST catalog: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(ConnectorError::Config(format!(
                        "'catalog_uri' = '{uri}': a REST catalog is an http:// or https:// URL"
                    )));
                }
                Ok(Self::Rest(uri.to_string()))
            }
            "glue" | "hms" => Err(ConnectorError::Config(format!(
                "'catalog.type' = '{kind}' is not supported by this build of the Iceberg sink; use a SQL catalog \
                 ('catalog_uri' = 'sqlite:////abs/path/catalog.db')"
            ))),
            other => Err(ConnectorError::Config(format!(
                "'catalog.type' = '{other}' is not a catalog type: use 'sql', 'rest', 'glue' or 'hms'"
            ))),
        }
    }
}

/// The result of a compare-and-swap commit.
pub(crate) enum Committed {
    /// The table as of the new metadata.
    Done(Box<Table>),
    /// Another writer committed first (or a requirement no longer holds): reload and retry.
    Conflict(String),
}

/// A SQL catalog in a SQLite database.
#[derive(Debug)]
pub(crate) struct SqlCatalog {
    path: PathBuf,
    name: String,
}

impl SqlCatalog {
    /// The catalog named `name` in the database at `path` (created with its tables if absent).
    pub(crate) fn new(path: PathBuf, name: String) -> Self {
        Self { path, name }
    }

    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        format!("sqlite:///{} (catalog '{}')", self.path.display(), self.name)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed(format!("Iceberg catalog {}: {what}: {e}", self.describe()))
    }

    fn connect(&self) -> Result<Connection> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                return Err(self.err("cannot open", format!("directory {} does not exist", dir.display())));
            }
        }
        let conn = Connection::open(&self.path).map_err(|e| self.err("cannot open", e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| self.err("cannot open", e))?;
        // The tables pyiceberg's SqlCatalog creates (same names, columns and keys).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS iceberg_tables (
                catalog_name VARCHAR(255) NOT NULL,
                table_namespace VARCHAR(255) NOT NULL,
                table_name VARCHAR(255) NOT NULL,
                metadata_location VARCHAR(1000),
                previous_metadata_location VARCHAR(1000),
                iceberg_type VARCHAR(5),
                PRIMARY KEY (catalog_name, table_namespace, table_name));
             CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
                catalog_name VARCHAR(255) NOT NULL,
                namespace VARCHAR(255) NOT NULL,
                property_key VARCHAR(255) NOT NULL,
                property_value VARCHAR(1000) NOT NULL,
                PRIMARY KEY (catalog_name, namespace, property_key));",
        )
        .map_err(|e| self.err("cannot create the catalog tables", e))?;
        Ok(conn)
    }

    /// Whether the catalog's table has the `iceberg_type` column (tables vs views).
    fn typed(&self, conn: &Connection) -> bool {
        conn.prepare("SELECT iceberg_type FROM iceberg_tables LIMIT 0").is_ok()
    }

    fn namespace(ident: &TableIdent) -> String {
        ident.namespace.join(".")
    }

    /// The metadata location of `ident`, if the table exists.
    fn location_of(&self, conn: &Connection, ident: &TableIdent) -> Result<Option<String>> {
        let views_apart = if self.typed(conn) { " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)" } else { "" };
        conn.query_row(
            &format!(
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3{views_apart}"
            ),
            params![self.name, Self::namespace(ident), ident.name],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()
        .map(Option::flatten)
        .map_err(|e| self.err("cannot read", e))
    }

    /// The `location` property of the table's namespace, if set.
    pub(crate) fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let conn = self.connect()?;
        conn.query_row(
            "SELECT property_value FROM iceberg_namespace_properties \
             WHERE catalog_name = ?1 AND namespace = ?2 AND property_key = 'location'",
            params![self.name, Self::namespace(ident)],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(|e| self.err("cannot read", e))
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        let location = {
            let conn = self.connect()?;
            self.location_of(&conn, ident)?
        };
        let Some(location) = location else { return Ok(None) };
        let metadata = TableMetadata::read_from(file_io, &location)
            .await
            .map_err(|e| self.err(&format!("cannot read the metadata of {ident} at {location}"), e))?;
        Ok(Some(table(ident, file_io, metadata, location)?))
    }

    /// Creates the table (and its namespace, as pyiceberg does: an `exists` property), or loads
    /// it when another writer created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        let location = creation.location.clone().unwrap_or_default();
        let metadata = TableMetadataBuilder::from_table_creation(creation)
            .and_then(TableMetadataBuilder::build)
            .map_err(|e| self.err(&format!("cannot create {ident}"), e))?
            .metadata;
        let at = MetadataLocation::new_with_metadata(&location, &metadata);
        metadata.write_to(file_io, &at).await.map_err(|e| self.err(&format!("cannot write {at}"), e))?;
        let inserted = {
            let conn = self.connect()?;
            let ns = Self::namespace(ident);
            conn.execute(
                "INSERT OR IGNORE INTO iceberg_namespace_properties \
                 (catalog_name, namespace, property_key, property_value) VALUES (?1, ?2, 'exists', 'true')",
                params![self.name, ns],
            )
            .map_err(|e| self.err("cannot create the namespace", e))?;
            let (column, value) = if self.typed(&conn) { (", iceberg_type", ", 'TABLE'") } else { ("", "") };
            conn.execute(
                &format!(
                    "INSERT OR IGNORE INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                     metadata_location, previous_metadata_location{column}) VALUES (?1, ?2, ?3, ?4, NULL{value})"
                ),
                params![self.name, ns, ident.name, at.to_string()],
            )
            .map_err(|e| self.err(&format!("cannot create {ident}"), e))?
        };
        if inserted == 0 {
            // Created by another writer meanwhile: theirs is the table.
            drop(file_io.delete(at.to_string()).await);
            return self
                .load(ident, file_io)
                .await?
                .ok_or_else(|| self.err(&format!("cannot create {ident}"), "the table vanished"));
        }
        table(ident, file_io, metadata, at.to_string())
    }

    /// Applies `updates` to `base` if `requirements` hold, writes the new metadata file and
    /// moves the catalog's pointer from `base`'s metadata to it atomically.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        let ident = base.identifier();
        let current = base.metadata_location_result().map_err(|e| self.err("commit", e))?.to_string();
        for r in requirements {
            if let Err(e) = r.check(Some(base.metadata())) {
                return Ok(Committed::Conflict(e.to_string()));
            }
        }
        let mut builder = base.metadata().clone().into_builder(Some(current.clone()));
        for u in updates {
            builder = u.apply(builder).map_err(|e| self.err(&format!("cannot update {ident}"), e))?;
        }
        let metadata = builder.build().map_err(|e| self.err(&format!("cannot update {ident}"), e))?.metadata;
        let at = MetadataLocation::from_str(&current)
            .map_err(|e| self.err(&format!("metadata location {current}"), e))?
            .with_next_version()
            .with_new_metadata(&metadata);
        metadata.write_to(base.file_io(), &at).await.map_err(|e| self.err(&format!("cannot write {at}"), e))?;
        let swapped = {
            let conn = self.connect()?;
            conn.execute(
                "UPDATE iceberg_tables SET metadata_location = ?1, previous_metadata_location = ?2 \
                 WHERE catalog_name = ?3 AND table_namespace = ?4 AND table_name = ?5 AND metadata_location = ?2",
                params![at.to_string(), current, self.name, Self::namespace(ident), ident.name],
            )
            .map_err(|e| self.err(&format!("cannot commit {ident}"), e))?
        };
        if swapped == 0 {
            drop(base.file_io().delete(at.to_string()).await);
            return Ok(Committed::Conflict(format!("{ident} was changed by another writer")));
        }
        Ok(Committed::Done(Box::new(table(ident, base.file_io(), metadata, at.to_string())?)))
    }

    /// The catalog database's directory (the default warehouse of tables the sink creates).
    pub(crate) fn directory(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// The catalog a sink commits through.
#[derive(Debug)]
pub(crate) enum Catalog {
    /// A SQL catalog (SQLite).
    Sql(SqlCatalog),
    /// A REST catalog.
    Rest(super::rest::RestCatalog),
}

impl Catalog {
    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Catalog::Sql(c) => c.describe(),
            Catalog::Rest(c) => c.describe(),
        }
    }

    /// The `location` property of the table's namespace, if set.
    pub(crate) async fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        match self {
            Catalog::Sql(c) => c.namespace_location(ident),
            Catalog::Rest(c) => c.namespace_location(ident).await,
        }
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        match self {
            Catalog::Sql(c) => c.load(ident, file_io).await,
            Catalog::Rest(c) => c.load(ident, file_io).await,
        }
    }

    /// Creates the table, or loads it when another writer created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        match self {
            Catalog::Sql(c) => c.create(ident, creation, file_io).await,
            Catalog::Rest(c) => c.create(ident, creation, file_io).await,
        }
    }

    /// Commits `updates` on top of `base` if `requirements` still hold.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        match self {
            Catalog::Sql(c) => c.commit(base, requirements, updates).await,
            Catalog::Rest(c) => c.commit(base, requirements, updates).await,
        }
    }

    /// Where new tables go when neither the sink nor the namespace says: the SQL catalog
    /// database's directory; a REST catalog decides itself (None).
    pub(crate) fn default_warehouse(&self) -> Option<&Path> {
        match self {
            Catalog::Sql(c) => Some(c.directory()),
            Catalog::Rest(_) => None,
        }
    }
}

/// The table at `location` with `metadata`, read and written through `file_io`.
pub(crate) fn table(ident: &TableIdent, file_io: &FileIO, metadata: TableMetadata, location: String) -> Result<Table> {
    let runtime = Runtime::try_current().map_err(|e| ConnectorError::Failed(e.to_string()))?;
    Table::builder()
        .identifier(ident.clone())
        .file_io(file_io.clone())
        .metadata(metadata)
        .metadata_location(location)
        .runtime(runtime)
        .build()
        .map_err(|e| ConnectorError::Failed(format!("Iceberg table {ident}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_uris() {
        assert_eq!(
            CatalogTarget::parse("sqlite:////tmp/x/catalog.db", None).expect("sqlite"),
            CatalogTarget::Sqlite(PathBuf::from("/tmp/x/catalog.db"))
        );
        let e = CatalogTarget::parse("sqlite:///:memory:", None).expect_err("memory").to_string();
        assert!(e.contains("needs a file"), "{e}");
        let e = CatalogTarget::parse("thrift://metastore:9083", None).expect_err("thrift").to_string();
        assert!(e.contains("'catalog.type'"), "{e}");
        let e = CatalogTarget::parse("sqlite:////tmp/c.db", Some("nessie")).expect_err("nessie").to_string();
        assert!(e.contains("not a catalog type"), "{e}");
        assert_eq!(
            CatalogTarget::parse("https://cat.example.com/api/catalog", None).expect("rest"),
            CatalogTarget::Rest("https://cat.example.com/api/catalog".into())
        );
        let e = CatalogTarget::parse("sqlite:////tmp/c.db", Some("rest")).expect_err("not http").to_string();
        assert!(e.contains("http:// or https://"), "{e}");
    }
}
