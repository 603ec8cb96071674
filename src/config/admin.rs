//! `admin:` (cistern's extension): the token an operator sends to use the admin actions on the
//! debug listener (refresh a tag, purge a tag, an image or a repository). Without a token
//! every admin action is refused: deleting from the cache is never open by default.

use secrecy::SecretString;
use serde::Deserialize;

use super::{bad, ConfigError};

/// A shorter token is refused: it could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// `admin.token` (or `REGISTRY_ADMIN_TOKEN`); None disables the admin actions. A secret: it
    /// never reaches logs, `Debug` output or any answer.
    pub token: Option<SecretString>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAdmin {
    token: Option<String>,
}

impl RawAdmin {
    pub(super) fn validate(self) -> Result<AdminConfig, ConfigError> {
        // An empty value (`REGISTRY_ADMIN_TOKEN=`) means no token, as for `proxy.password`.
        let token = self.token.filter(|t| !t.is_empty());
        if let Some(token) = &token {
            // The length is said, never the value.
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(bad(
                    "admin.token",
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters (it has {}); e.g. `openssl rand -hex 32`",
                        token.chars().count()
                    ),
                ));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    "admin.token",
                    "must not contain spaces or control characters (it is sent in an Authorization header)",
                ));
            }
        }
        Ok(AdminConfig {
            token: token.map(SecretString::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::config::Config;

    #[test]
    fn the_token_comes_from_the_file_or_the_environment_and_stays_hidden() {
        let c = Config::from_yaml("admin: {token: 0123456789abcdef-file}\n", Vec::new())
            .unwrap()
            .config;
        assert_eq!(
            c.admin.token.as_ref().unwrap().expose_secret(),
            "0123456789abcdef-file"
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef-file"));
        let env = [(
            "REGISTRY_ADMIN_TOKEN".to_owned(),
            "0123456789abcdef-env".to_owned(),
        )];
        let c = Config::from_yaml("version: 0.1\n", env).unwrap().config;
        assert_eq!(
            c.admin.token.as_ref().unwrap().expose_secret(),
            "0123456789abcdef-env"
        );
        let c = Config::from_yaml("version: 0.1\n", Vec::new())
            .unwrap()
            .config;
        assert!(c.admin.token.is_none(), "no token, no admin actions");
    }

    #[test]
    fn a_short_token_is_refused_without_being_shown() {
        let e = Config::from_yaml("admin: {token: short-secret}\n", Vec::new()).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("admin.token"), "{message}");
        assert!(!message.contains("short-secret"), "{message}");
        assert!(Config::from_yaml("admin: {tokn: x}\n", Vec::new()).is_err());
    }
}
