//! Client access control: who may pull through the mirror, and which repositories. A mirror
//! holding Docker Hub credentials is a security boundary: without this, anyone who can reach it
//! can pull the credential owner's private images.
//!
//! A client is admitted when nothing is configured, when its address is in `access.sources`, or
//! when it presents `auth.htpasswd` credentials. The address is the TCP peer: headers such as
//! `X-Forwarded-For` are not trusted, since any client can send them.

mod htpasswd;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{AccessConfig, Patterns, RegistryConfig};
pub use htpasswd::{Htpasswd, HtpasswdError};

/// Why a request is refused.
#[derive(Debug)]
pub enum Refusal {
    /// 401 with `WWW-Authenticate: Basic realm=...`: credentials would help.
    Unauthorized { realm: String, message: String },
    /// 403 `DENIED`: nothing the client can send would help.
    Denied(String),
}

pub struct Access {
    htpasswd: Option<(Htpasswd, String)>,
    sources: Vec<IpNet>,
    allow: Patterns,
    deny: Patterns,
    /// Each registry's own `repositories: {allow, deny}`, by the prefix its names start with.
    per_registry: Vec<RegistryPatterns>,
}

/// A registry's own patterns, checked on top of `access.repositories`.
struct RegistryPatterns {
    /// `ghcr.io/`: the start of every name of the registry.
    prefix: String,
    allow: Patterns,
    deny: Patterns,
}

impl Access {
    /// The policy `config` and the registries' own patterns describe; reads the htpasswd file.
    pub fn new(
        config: &AccessConfig,
        registries: &[RegistryConfig],
    ) -> Result<Access, HtpasswdError> {
        let htpasswd = match &config.htpasswd {
            Some(h) => Some((Htpasswd::load(&h.path)?, h.realm.clone())),
            None => None,
        };
        Ok(Access {
            htpasswd,
            sources: config.sources.clone(),
            allow: config.allow.clone(),
            deny: config.deny.clone(),
            per_registry: registries
                .iter()
                .filter(|r| !r.allow.is_empty() || !r.deny.is_empty())
                .map(|r| RegistryPatterns {
                    prefix: format!("{}/", r.host),
                    allow: r.allow.clone(),
                    deny: r.deny.clone(),
                })
                .collect(),
        })
    }

    /// Admits the client at `peer` presenting `authorization`, or says why not.
    pub async fn admit(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        if self.htpasswd.is_none() && self.sources.is_empty() {
            return Ok(());
        }
        // A client of a dual-stack listener shows up as ::ffff:a.b.c.d.
        let peer = peer.map(|ip| ip.to_canonical());
        if peer.is_some_and(|ip| self.sources.iter().any(|net| net.contains(&ip))) {
            return Ok(());
        }
        let client = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        match &self.htpasswd {
            Some((htpasswd, realm)) => match authorization {
                Some(value) if htpasswd.verify(value).await => Ok(()),
                Some(_) => Err(Refusal::Unauthorized {
                    realm: realm.clone(),
                    message: format!("client {client}: wrong user name or password"),
                }),
                None => Err(Refusal::Unauthorized {
                    realm: realm.clone(),
                    message: format!("client {client}: authentication required"),
                }),
            },
            None => Err(Refusal::Denied(format!(
                "client address {client} is not in access.sources"
            ))),
        }
    }

    /// Whether `repository` (as this mirror names it: `library/alpine`, `ghcr.io/owner/app`)
    /// may be pulled: `access.repositories` allows it, and so does its registry's section.
    pub fn allows(&self, repository: &str) -> bool {
        let allowed = |allow: &Patterns, deny: &Patterns| {
            (allow.is_empty() || allow.matches(repository)) && !deny.matches(repository)
        };
        allowed(&self.allow, &self.deny)
            && self
                .per_registry
                .iter()
                .filter(|r| repository.starts_with(&r.prefix))
                .all(|r| allowed(&r.allow, &r.deny))
    }
}
