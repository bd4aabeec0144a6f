//! What the object-store backends share: the log store that commits with the store's
//! conditional create, and registering a backend's schemes with delta-rs.

use std::sync::Arc;

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory, ObjectStoreFactory,
    ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use url::Url;

/// delta-rs' default log store: each commit is a conditional create of the next log entry
/// (`If-None-Match: *`), so two writers cannot both claim a version and no lock table is needed.
struct ConditionalPutLogs;

impl LogStoreFactory for ConditionalPutLogs {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

/// Registers `stores` and the conditional-put log store for each of `schemes` (`"s3"`, …).
pub fn register(schemes: &[&str], stores: Arc<dyn ObjectStoreFactory>) {
    for scheme in schemes {
        if let Ok(u) = Url::parse(&format!("{scheme}://")) {
            object_store_factories().insert(u.clone(), stores.clone());
            logstore_factories().insert(u, Arc::new(ConditionalPutLogs));
        }
    }
}

/// The path of a table URL inside its bucket or container.
pub fn path_of(url: &Url) -> DeltaResult<Path> {
    Path::from_url_path(url.path()).map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))
}
