//! Spill to disk (`infinity-former.md` §9.7, tier 3): a buffer that lives in a memory-mapped file,
//! so that the OS pages archive data out to the file under memory pressure instead of holding it
//! in RAM. The file is unlinked as soon as it is mapped: nothing is left in the directory once the
//! tensor is dropped, even after a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

/// A buffer that could not be spilled, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("spilling the archive to {}: {source}", path.display())]
pub struct SpillError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where a window's buffers are allocated: RAM, or memory-mapped files in a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    #[default]
    Ram,
    Spill(Arc<Path>),
}

impl Storage {
    /// RAM, or spill files in `dir` when one is given.
    pub fn new(dir: Option<&Path>) -> Self {
        dir.map_or(Storage::Ram, |d| Storage::Spill(Arc::from(d)))
    }

    /// A zeroed CPU tensor of `shape`: in RAM, or over a fresh mapped file.
    pub fn zeros(&self, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, SpillError> {
        match self {
            Storage::Ram => Ok(Tensor::zeros(shape, (kind, device))),
            Storage::Spill(dir) => mapped_zeros(dir, shape, kind),
        }
    }
}

/// Creates a file of the right length in `dir`, maps it shared (libtorch's `from_file` keeps the
/// mapping alive exactly as long as any tensor over it, views included), then unlinks it.
fn mapped_zeros(dir: &Path, shape: &[i64], kind: Kind) -> Result<Tensor, SpillError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "infini-archive-{}-{}.bin",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let error = |source| SpillError {
        path: path.clone(),
        source,
    };
    let numel: i64 = shape.iter().product();
    let bytes = numel as u64 * kind.elt_size_in_bytes() as u64;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(error)?;
    let mapped = file.set_len(bytes.max(1)).map_err(error).and_then(|()| {
        let name = path.to_str().ok_or_else(|| {
            error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the spill path is not UTF-8",
            ))
        })?;
        Tensor::f_from_file(name, true, numel, (kind, Device::Cpu))
            .map_err(|e| error(std::io::Error::other(e.to_string())))
    });
    drop(file);
    let unlinked = std::fs::remove_file(&path).map_err(error);
    let tensor = mapped?;
    unlinked?;
    Ok(tensor.view(shape))
}

/// A fresh, empty directory for one test, removed (with anything left in it) when dropped.
#[cfg(test)]
pub(crate) struct ScratchDir(PathBuf);

#[cfg(test)]
impl ScratchDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infini-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Entries in the directory.
    pub(crate) fn files(&self) -> usize {
        std::fs::read_dir(&self.0).expect("readable").count()
    }
}

#[cfg(test)]
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spilled_buffer_is_zeroed_writable_and_leaves_no_file() {
        let dir = ScratchDir::new("spill-buffer");
        let storage = Storage::new(Some(dir.path()));
        let t = storage
            .zeros(&[2, 3, 64, 4], Kind::Float, Device::Cpu)
            .unwrap();
        assert_eq!(t.size(), vec![2, 3, 64, 4]);
        assert_eq!(t.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let _ = t.narrow(2, 5, 1).fill_(3.0);
        assert_eq!(t.sum(Kind::Float).double_value(&[]), 3.0 * 2.0 * 3.0 * 4.0);
        assert_eq!(dir.files(), 0);
        let missing = Storage::new(Some(&dir.path().join("absent")));
        let err = missing
            .zeros(&[1, 1, 64, 4], Kind::Float, Device::Cpu)
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
