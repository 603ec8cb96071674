//! Typed registry names: repository names, tags, digests, references and media types.
//! Each type is parsed once at the edge; the rest of the code can trust it.

mod digest;
mod manifest;
mod media_type;
mod mirrored;
mod name;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use manifest::{check_manifest, ManifestError};
pub use media_type::{accepts, upstream_accept, DEFAULT_MANIFEST_ACCEPT};
pub use mirrored::{is_registry_host, MirroredRegistries};
pub use name::{NameError, RepoName};
pub use reference::{Reference, Tag, TagError};
