//! Azure Blob Storage and ADLS Gen2 Delta tables (`az://container/path`,
//! `abfss://container@account.dfs.core.windows.net/path`, `adl://`, `azure://`) through
//! object_store's Azure client.
//!
//! The account, its key or a SAS token, or a service principal come from the environment
//! (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`,
//! `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID`); `AZURE_STORAGE_USE_EMULATOR=true`
//! talks to Azurite (`AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`). Commits
//! use Blob Storage's conditional create (`If-None-Match: *`), so concurrent writers never
//! overwrite each other's versions.

use std::sync::Arc;

use deltalake::logstore::object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::{DeltaResult, DeltaTableError, Path};
use url::Url;

/// URL schemes of Azure locations.
pub const SCHEMES: &[&str] = &["az", "abfs", "abfss", "adl", "azure"];

/// Builds Azure stores rooted at the URL's container.
struct AzureStores;

impl ObjectStoreFactory for AzureStores {
    fn parse_url_opts(&self, url: &Url, config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
        for (k, v) in &config.raw {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        let store = builder.build().map_err(|e| DeltaTableError::ObjectStore { source: e })?;
        Ok((Arc::new(store), super::cloud::path_of(url)?))
    }
}

/// Registers the Azure handlers with delta-rs (once per process).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| super::cloud::register(SCHEMES, Arc::new(AzureStores)));
}
