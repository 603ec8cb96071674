//! Opening the store `storage:` names: the filesystem, memory, S3 (or an S3-compatible server),
//! GCS or Azure Blob, all behind `object_store`. A bucket is checked before cistern serves, so
//! a wrong name, endpoint or credential stops start-up with a message instead of failing pulls.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, PutPayload};
use secrecy::ExposeSecret;

use super::{layout, SpoolDir, Storage, StorageError};
use crate::config::StorageConfig;

/// Written at start: proves the bucket exists and takes writes with these credentials (a read
/// cannot tell a missing bucket from a missing key).
const PROBE_KEY: &str = "probe";

impl Storage {
    /// The store `config` describes, checked to answer.
    pub async fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        let name = config.describe();
        let (store, streaming): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) = match config {
            StorageConfig::Filesystem { root_directory } => {
                let storage = Storage::filesystem(root_directory)?;
                storage.check_at_start(name).await?;
                return Ok(storage);
            }
            StorageConfig::InMemory => {
                let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
                (store.clone(), store)
            }
            cloud => (
                cloud_store(cloud, ClientOptions::new())?,
                // Blob reads last as long as the client takes to read: object_store's 30 s
                // request timeout (which covers the body) would cut a slow client's download
                // of a large layer. Their stream has its own idle deadline instead.
                cloud_store(cloud, ClientOptions::new().with_timeout_disabled())?,
            ),
        };
        let storage = Storage {
            store,
            streaming,
            local_root: None,
            index: Arc::default(),
            spool: Arc::new(
                SpoolDir::for_this_process().map_err(|source| StorageError::Root {
                    path: std::env::temp_dir().display().to_string(),
                    source,
                })?,
            ),
            pressure: Arc::default(),
            free_floor: Arc::default(),
        };
        storage.check_at_start(name).await?;
        Ok(storage)
    }

    /// The probe at start: a store that does not take writes stops start-up, except a full
    /// one, which cistern serves from (uncached for what is new) while space is made.
    async fn check_at_start(&self, store: String) -> Result<(), StorageError> {
        match self.check_writable().await {
            Ok(()) => Ok(()),
            Err(e) if super::out_of_space(&e) => {
                tracing::warn!(store, error = %e, "storage is full at start; serving, and caching again once a write succeeds");
                Ok(())
            }
            Err(source) => Err(StorageError::Unreachable { store, source }),
        }
    }

    /// Writes the probe object: the store exists and takes writes with these credentials.
    /// A probe refused for lack of space marks the store full (`pressure`); one that
    /// succeeds marks it writable again.
    pub async fn check_writable(&self) -> Result<(), object_store::Error> {
        let probe = PutPayload::from_static(b"cistern checks it can write here\n");
        let key = Path::from(layout::INTERNAL).child(PROBE_KEY);
        let result = self.store.put(&key, probe).await.map(|_| ());
        match &result {
            Ok(()) => self.pressure.stored(),
            Err(e) => {
                self.pressure.refused(key.as_ref(), e);
            }
        }
        result
    }
}

/// An object store client for `config` (S3, GCS or Azure) with these client options.
fn cloud_store(
    config: &StorageConfig,
    options: ClientOptions,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let store = match config {
        StorageConfig::S3(s3) => {
            let options = options
                .with_allow_http(s3.allow_http)
                .with_allow_invalid_certificates(s3.skip_verify);
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_virtual_hosted_style_request(!s3.force_path_style)
                .with_client_options(options);
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
            }
            if let (Some(key), Some(secret)) = (&s3.access_key, &s3.secret_key) {
                builder = builder
                    .with_access_key_id(key)
                    .with_secret_access_key(secret.expose_secret());
            }
            if let Some(token) = &s3.session_token {
                builder = builder.with_token(token.expose_secret());
            }
            let store = builder.build().map_err(|e| opening(config, e))?;
            prefixed(store, &s3.root_directory)
        }
        StorageConfig::Gcs(gcs) => {
            let mut builder = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&gcs.bucket)
                .with_client_options(options);
            if let Some(key_file) = &gcs.key_file {
                builder = builder.with_service_account_path(key_file.display().to_string());
            }
            let store = builder.build().map_err(|e| opening(config, e))?;
            prefixed(store, &gcs.root_directory)
        }
        StorageConfig::Azure(azure) => {
            let mut builder = MicrosoftAzureBuilder::from_env()
                .with_account(&azure.account_name)
                .with_container_name(&azure.container)
                .with_client_options(options);
            if let Some(key) = &azure.account_key {
                builder = builder.with_access_key(key.expose_secret());
            }
            if let Some(url) = &azure.service_url {
                builder = builder
                    .with_endpoint(url.as_str().trim_end_matches('/').to_owned())
                    .with_allow_http(url.scheme() == "http");
            }
            let store = builder.build().map_err(|e| opening(config, e))?;
            prefixed(store, &azure.root_directory)
        }
        StorageConfig::Filesystem { .. } | StorageConfig::InMemory => {
            unreachable!("local stores are opened without a client")
        }
    };
    Ok(store)
}

fn prefixed<T: ObjectStore>(store: T, root: &str) -> Arc<dyn ObjectStore> {
    if root.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, root))
    }
}

fn opening(config: &StorageConfig, source: object_store::Error) -> StorageError {
    StorageError::Unreachable {
        store: config.describe(),
        source,
    }
}
