//! The web server's bearer token, `web.token` in the home: 32 random bytes in hex, a file of
//! mode 0600. `n0m1_web` creates it at first start; `n0m1ctl --remote` reads it. A token
//! file that others can read is refused, as ssh refuses such a private key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bytes of randomness in a token (64 hex characters).
pub const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} the token file {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the token file {path} can be read by others (mode {mode:o}): `chmod 600 {path}`, or delete it to have n0m1_web make a new one"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the token file {path} does not hold a token ({TOKEN_BYTES} bytes in hex): delete it to have n0m1_web make a new one"
    )]
    Malformed { path: PathBuf },
    #[error(
        "the token file {path} is {kind}, not a regular file: delete it to have n0m1_web make a new one"
    )]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("no randomness for a new token: {0}")]
    Random(String),
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Reads the token in `path`, refusing a file group or others may read and anything but a
/// regular file (a FIFO would block the reader in `open` for ever). Opened without blocking,
/// then checked, then read: at most a token's length and a little more.
pub fn read(path: &Path) -> Result<String, TokenError> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io(path, "read"))?;
    let meta = file.metadata().map_err(io(path, "read"))?;
    if let Some(kind) = n0m1_core::home::not_a_regular_file(&meta.file_type()) {
        return Err(TokenError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(io(path, "read"))?;
    let token = text.trim();
    if token.len() != TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_owned())
}

/// The token in `path`, made first if there is none (created 0600, never overwritten).
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    if fs::symlink_metadata(path).is_ok() {
        return read(path);
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| TokenError::Random(error.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .map_err(io(path, "write"))?;
            Ok(token)
        }
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(error) => Err(io(path, "create")(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_an_exposed_or_bad_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("web.token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&path).unwrap(), token);
        let other = tmp.path().join("other.token");
        assert_ne!(load_or_create(&other).unwrap(), token);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a token\n").unwrap();
        assert!(matches!(read(&path), Err(TokenError::Malformed { .. })));
        // A FIFO would block `open` for ever: refused by name, at once.
        let fifo = tmp.path().join("fifo.token");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let error = load_or_create(&fifo).unwrap_err().to_string();
        assert!(error.contains("is a FIFO, not a regular file"), "{error}");
        let dir = tmp.path().join("dir.token");
        fs::create_dir(&dir).unwrap();
        assert!(read(&dir).unwrap_err().to_string().contains("a directory"));
    }
}
