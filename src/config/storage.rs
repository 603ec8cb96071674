//! `storage:`: where the cache lives. A directory (the default), memory, or a bucket in S3 (or
//! an S3-compatible server), Google Cloud Storage or Azure Blob, in Distribution's keys. Exactly
//! one driver, as Distribution requires. Credentials not in the file come from each cloud's
//! usual environment (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_*`).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{bad, scalar, ConfigError};

#[derive(Debug, Clone)]
pub enum StorageConfig {
    Filesystem { root_directory: PathBuf },
    InMemory,
    S3(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// None: from `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `regionendpoint`: an S3-compatible server (MinIO, Ceph, moto...).
    pub endpoint: Option<Url>,
    pub access_key: Option<String>,
    pub secret_key: Option<SecretString>,
    pub session_token: Option<SecretString>,
    /// Path-style URLs (`endpoint/bucket/key`), which S3-compatible servers need.
    pub force_path_style: bool,
    /// Plain HTTP to the endpoint (`secure: false`, or an `http://` endpoint).
    pub allow_http: bool,
    pub skip_verify: bool,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub root_directory: String,
}

#[derive(Debug, Clone)]
pub struct GcsConfig {
    pub bucket: String,
    pub key_file: Option<PathBuf>,
    pub root_directory: String,
}

#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub account_name: String,
    pub account_key: Option<SecretString>,
    pub container: String,
    /// `serviceurl`: another endpoint, such as Azurite's.
    pub service_url: Option<Url>,
    pub root_directory: String,
}

impl StorageConfig {
    /// Where the cache is, for the start-up log line (no secrets).
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Filesystem { root_directory } => {
                format!("filesystem {}", root_directory.display())
            }
            StorageConfig::InMemory => "in memory (lost at exit)".to_owned(),
            StorageConfig::S3(s3) => format!(
                "s3://{}/{}{}",
                s3.bucket,
                s3.root_directory,
                s3.endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            StorageConfig::Gcs(gcs) => format!("gs://{}/{}", gcs.bucket, gcs.root_directory),
            StorageConfig::Azure(azure) => format!(
                "azure {}/{}/{}",
                azure.account_name, azure.container, azure.root_directory
            ),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawStorage {
    filesystem: Option<RawFilesystem>,
    #[serde(deserialize_with = "scalar::deserialize_present")]
    inmemory: bool,
    s3: Option<RawS3>,
    gcs: Option<RawGcs>,
    azure: Option<RawAzure>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFilesystem {
    rootdirectory: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawS3 {
    accesskey: Option<String>,
    secretkey: Option<String>,
    sessiontoken: Option<String>,
    region: Option<String>,
    regionendpoint: Option<String>,
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    forcepathstyle: Option<bool>,
    bucket: Option<String>,
    rootdirectory: Option<String>,
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    secure: Option<bool>,
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    skipverify: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawGcs {
    bucket: Option<String>,
    keyfile: Option<String>,
    rootdirectory: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAzure {
    accountname: Option<String>,
    accountkey: Option<String>,
    container: Option<String>,
    serviceurl: Option<String>,
    rootdirectory: Option<String>,
}

/// A value that must be there and not empty.
fn required(value: Option<String>, key: &str, what: &str) -> Result<String, ConfigError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| bad(key, format!("missing: {what}")))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn prefix(rootdirectory: Option<String>) -> String {
    rootdirectory
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned()
}

fn endpoint(value: Option<String>, key: &str) -> Result<Option<Url>, ConfigError> {
    non_empty(value)
        .map(|v| {
            Url::parse(&v).map_err(|e| {
                bad(
                    key,
                    format!("{v:?} is not a URL such as http://127.0.0.1:9000: {e}"),
                )
            })
        })
        .transpose()
}

impl RawStorage {
    pub(super) fn validate(self) -> Result<StorageConfig, ConfigError> {
        let mut drivers = Vec::new();
        if self.filesystem.is_some() {
            drivers.push("filesystem");
        }
        if self.inmemory {
            drivers.push("inmemory");
        }
        if self.s3.is_some() {
            drivers.push("s3");
        }
        if self.gcs.is_some() {
            drivers.push("gcs");
        }
        if self.azure.is_some() {
            drivers.push("azure");
        }
        if drivers.len() > 1 {
            return Err(bad(
                "storage",
                format!(
                    "configure one storage driver, not {}",
                    drivers.join(" and ")
                ),
            ));
        }
        if self.inmemory {
            return Ok(StorageConfig::InMemory);
        }
        if let Some(s3) = self.s3 {
            return s3.validate();
        }
        if let Some(gcs) = self.gcs {
            return Ok(StorageConfig::Gcs(GcsConfig {
                bucket: required(gcs.bucket, "storage.gcs.bucket", "the bucket to cache in")?,
                key_file: non_empty(gcs.keyfile).map(PathBuf::from),
                root_directory: prefix(gcs.rootdirectory),
            }));
        }
        if let Some(azure) = self.azure {
            return Ok(StorageConfig::Azure(AzureConfig {
                account_name: required(
                    azure.accountname,
                    "storage.azure.accountname",
                    "the storage account",
                )?,
                account_key: non_empty(azure.accountkey).map(SecretString::from),
                container: required(
                    azure.container,
                    "storage.azure.container",
                    "the container to cache in",
                )?,
                service_url: endpoint(azure.serviceurl, "storage.azure.serviceurl")?,
                root_directory: prefix(azure.rootdirectory),
            }));
        }
        let root = self
            .filesystem
            .and_then(|f| non_empty(f.rootdirectory))
            .unwrap_or_else(|| "./storage".to_owned());
        Ok(StorageConfig::Filesystem {
            root_directory: PathBuf::from(root),
        })
    }
}

impl RawS3 {
    fn validate(self) -> Result<StorageConfig, ConfigError> {
        let bucket = required(self.bucket, "storage.s3.bucket", "the bucket to cache in")?;
        let access_key = non_empty(self.accesskey);
        let secret_key = non_empty(self.secretkey);
        match (&access_key, &secret_key) {
            (Some(_), None) => {
                return Err(bad(
                    "storage.s3.secretkey",
                    "missing: storage.s3.accesskey is set, so its secret key is needed",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "storage.s3.accesskey",
                    "missing: storage.s3.secretkey is set, so an access key is needed",
                ))
            }
            _ => {}
        }
        let endpoint = endpoint(self.regionendpoint, "storage.s3.regionendpoint")?;
        let http_endpoint = endpoint.as_ref().is_some_and(|e| e.scheme() == "http");
        Ok(StorageConfig::S3(S3Config {
            bucket,
            region: non_empty(self.region),
            // S3-compatible servers need path-style URLs; AWS takes both.
            force_path_style: self.forcepathstyle.unwrap_or(true),
            allow_http: http_endpoint || self.secure == Some(false),
            skip_verify: self.skipverify.unwrap_or(false),
            endpoint,
            access_key,
            secret_key: secret_key.map(SecretString::from),
            session_token: non_empty(self.sessiontoken).map(SecretString::from),
            root_directory: prefix(self.rootdirectory),
        }))
    }
}
