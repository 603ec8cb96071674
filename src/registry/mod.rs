//! Typed registry names: registries, repository names, tags, digests, references and media
//! types. Each type is parsed once at the edge; the rest of the code can trust it.

mod digest;
mod manifest;
mod media_type;
mod mirrored;
mod name;
mod reference;
mod registry_id;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use manifest::{check_manifest, ManifestError};
pub use media_type::{accepts, upstream_accept, DEFAULT_MANIFEST_ACCEPT};
pub use mirrored::{default_hosts, MirroredRegistries, UnservedName, DOCKER_HUB_HOSTS};
pub use name::{NameError, RepoName};
pub use reference::{Reference, Tag, TagError};
pub use registry_id::{is_registry_host, RegistryId, DOCKER_HUB_NAME};
