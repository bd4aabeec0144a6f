//! The persistent catalog: the DDL statements that define every object, in creation order,
//! stored in `catalog.json` under the database directory (written atomically: temp + rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{codes, LaminarError, Result};

/// One catalog entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatalogEntry {
    /// Object name.
    pub name: String,
    /// `SOURCE`, `STREAM`, `MATERIALIZED VIEW` or `SINK`.
    pub kind: String,
    /// The statement that created it.
    pub sql: String,
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    entries: Vec<CatalogEntry>,
}

/// The ordered list of definitions, optionally backed by a file.
#[derive(Debug, Default)]
pub struct Catalog {
    path: Option<PathBuf>,
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// Loads `dir/catalog.json` (or starts empty); `None` keeps the catalog in memory only.
    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let Some(dir) = dir else { return Ok(Self::default()) };
        let path = dir.join("catalog.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| LaminarError::Connection {
                    code: codes::CONNECTION_FAILED,
                    message: format!("catalog file {} is corrupt: {e}", path.display()),
                })?;
                f.entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(LaminarError::Connection {
                    code: codes::CONNECTION_FAILED,
                    message: format!("cannot read {}: {e}", path.display()),
                })
            }
        };
        Ok(Self { path: Some(path), entries })
    }

    /// Entries in creation order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// Returns a copy of the catalog with `f` applied, persisted; `self` is replaced only when the
    /// write succeeded.
    pub fn update(&mut self, f: impl FnOnce(&mut Vec<CatalogEntry>)) -> Result<()> {
        let mut next = self.entries.clone();
        f(&mut next);
        if let Some(path) = &self.path {
            let tmp = path.with_extension("json.tmp");
            let body = serde_json::to_vec_pretty(&CatalogFile { version: 1, entries: next.clone() })
                .map_err(|e| LaminarError::Internal(e.to_string()))?;
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&body)?;
                file.sync_all()?;
                std::fs::rename(&tmp, path)
            };
            write().map_err(|e| LaminarError::Connection {
                code: codes::CONNECTION_FAILED,
                message: format!("cannot write the catalog {}: {e}", path.display()),
            })?;
        }
        self.entries = next;
        Ok(())
    }
}
