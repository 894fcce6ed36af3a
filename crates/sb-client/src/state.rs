//! What the CLI remembers between runs, in `$XDG_CONFIG_HOME/switchboard/` (usually
//! `~/.config/switchboard/`): pinned server fingerprints and the current login. The directory is
//! 0700 and every file 0600, written atomically (temp file, fsync, rename).

use sb_core::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot find a config directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({detail}); delete it and log in again")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnownServers {
    /// `host:port` → SHA-256 fingerprint.
    #[serde(default)]
    pub servers: BTreeMap<String, String>,
}

/// The login the CLI uses by default.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Login {
    pub server: String,
    pub username: String,
    pub session_id: String,
    pub token: Secret<String>,
    /// Set when the server is trusted through a CA file instead of a pinned fingerprint.
    pub ca_file: Option<PathBuf>,
}

/// Creates `dir` (and its parents) and makes it private to the user (0700).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates `path` empty at mode 0600 if it does not exist yet.
pub fn touch_private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where this device keeps its end-to-end keys for `username` on the server `server_key`.
pub fn e2ee_path(dir: &Path, server_key: &str, username: &str) -> PathBuf {
    dir.join("e2ee")
        .join(server_key.replace([':', '/'], "_"))
        .join(format!("{username}.db"))
}

pub struct ClientState {
    dir: PathBuf,
}

impl ClientState {
    /// The per-user directory, from the XDG base directory rules.
    pub fn open_default() -> Result<Self, StateError> {
        let dirs =
            directories::ProjectDirs::from("", "", "switchboard").ok_or(StateError::NoConfigDir)?;
        Self::open(dirs.config_dir())
    }

    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    path,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let text = toml::to_string(value).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    pub fn known_servers(&self) -> Result<KnownServers, StateError> {
        Ok(self.read("known_servers.toml")?.unwrap_or_default())
    }

    pub fn pin(&self, server_key: &str, fingerprint: &str) -> Result<(), StateError> {
        let mut k = self.known_servers()?;
        k.servers
            .insert(server_key.to_string(), fingerprint.to_string());
        self.write("known_servers.toml", &k)
    }

    /// Forgets a pinned server; returns whether it was known.
    pub fn forget(&self, server_key: &str) -> Result<bool, StateError> {
        let mut k = self.known_servers()?;
        let was = k.servers.remove(server_key).is_some();
        self.write("known_servers.toml", &k)?;
        Ok(was)
    }

    pub fn login(&self) -> Result<Option<Login>, StateError> {
        self.read("login.toml")
    }

    pub fn save_login(&self, login: &Login) -> Result<(), StateError> {
        self.write("login.toml", login)
    }

    pub fn clear_login(&self) -> Result<(), StateError> {
        let path = self.dir.join("login.toml");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let st = ClientState::open(&dir.path().join("sb")).unwrap();
        st.pin("127.0.0.1:8443", "AA:BB").unwrap();
        st.save_login(&Login {
            server: "https://127.0.0.1:8443".into(),
            username: "a".into(),
            session_id: "s".into(),
            token: Secret::new("sbs_x".into()),
            ca_file: None,
        })
        .unwrap();
        for name in ["known_servers.toml", "login.toml"] {
            let mode = std::fs::metadata(st.dir().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let dir_mode = std::fs::metadata(st.dir()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            st.known_servers().unwrap().servers["127.0.0.1:8443"],
            "AA:BB"
        );
        assert_eq!(st.login().unwrap().unwrap().token.expose(), "sbs_x");
        assert!(st.forget("127.0.0.1:8443").unwrap());
        st.clear_login().unwrap();
        assert!(st.login().unwrap().is_none());
    }
}
