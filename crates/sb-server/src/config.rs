//! Loading configuration: defaults, then the TOML file, then `SB_SECTION__FIELD` variables.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use sb_core::config::Config;
use std::path::Path;

/// Builds the configuration. A named file must exist; unknown fields anywhere are errors, so a
/// typo never silently falls back to a default.
pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    // Only SECTION__FIELD names are config; other SB_ variables (SB_REQUIRE_EXTERNAL, …) are not.
    let env = Env::prefixed("SB_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    fig.merge(env).extract().map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature is fixed
    fn file_then_environment_override_defaults() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[limits]\nbody_size_bytes_max = 2048\n[auth]\nregistration = \"open\""
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SB_LIMITS__CONNECTIONS_MAX", "7");
            jail.set_env("SB_REQUIRE_EXTERNAL", "1");
            let c = load(Some(f.path())).expect("loads");
            assert_eq!(c.limits.body_size_bytes_max, 2048);
            assert_eq!(c.limits.connections_max, 7);
            assert_eq!(c.auth.registration, sb_core::config::RegistrationMode::Open);
            assert_eq!(c.server.listen.port(), 8443);
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_and_missing_files_are_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[limits]\nbody_size_max = 1").unwrap();
        assert!(load(Some(f.path())).is_err());
        assert!(load(Some(Path::new("/nonexistent/sb.toml"))).is_err());
    }
}
