//! Unpacking a model archive (`.tar.gz`, `.zip`) into an empty directory, refusing
//! anything that could write outside it or fill the disk, and finding the Triton model
//! directory in what was unpacked.
//!
//! Invariants: only regular files and directories are created, each at a path made of
//! ordinary names below the target (no `..`, absolute paths, links or devices); the bytes
//! written are counted as they are written, not taken from the archive's headers, and stop
//! at the limit. Blocking: call from `spawn_blocking`. On error the caller removes the
//! target directory.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::uri::ArchiveKind;

/// Bounds on one model's files.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of file content.
    pub max_bytes: u64,
    /// Most files and directories.
    pub max_files: usize,
}

/// Why an archive (or a pulled directory) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry whose path is absolute.
    #[error("archive entry {0:?} is an absolute path")]
    Absolute(String),
    /// An entry whose path climbs out of the model directory.
    #[error("archive entry {0:?} escapes the model directory")]
    Escapes(String),
    /// A symbolic or hard link entry.
    #[error("archive entry {0:?} is a link; only regular files and directories are allowed")]
    Link(String),
    /// A device, FIFO or other special entry.
    #[error("archive entry {0:?} is not a regular file or directory")]
    Special(String),
    /// More entries than the file limit.
    #[error("model has more than {0} files")]
    TooManyFiles(usize),
    /// More content than the byte limit (an archive bomb, or just too big).
    #[error("model files are larger than {0} bytes")]
    TooLarge(u64),
    /// The archive could not be read as its kind.
    #[error("not a valid {kind} archive: {reason}")]
    Corrupt { kind: ArchiveKind, reason: String },
    /// Writing what was unpacked failed.
    #[error("unpacking failed: {0}")]
    Io(#[from] io::Error),
    /// What was unpacked is no Triton model directory.
    #[error("no Triton model directory found: {0}")]
    Layout(&'static str),
}

/// Unpacks `archive` (of `kind`) into the empty directory `target`; returns the bytes
/// written.
pub fn unpack(
    archive: &Path,
    kind: ArchiveKind,
    target: &Path,
    limits: Limits,
) -> Result<u64, ArchiveError> {
    let file = File::open(archive)?;
    let mut budget = Budget::new(limits);
    match kind {
        ArchiveKind::TarGz => unpack_tar(file, target, &mut budget)?,
        ArchiveKind::Zip => unpack_zip(file, target, &mut budget)?,
    }
    Ok(budget.bytes)
}

struct Budget {
    limits: Limits,
    bytes: u64,
    files: usize,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            bytes: 0,
            files: 0,
        }
    }

    fn count_file(&mut self) -> Result<(), ArchiveError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(ArchiveError::TooManyFiles(self.limits.max_files));
        }
        Ok(())
    }

    /// Fails at once when an entry declares more than what is left.
    fn check_declared(&self, size: u64) -> Result<(), ArchiveError> {
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(ArchiveError::TooLarge(self.limits.max_bytes));
        }
        Ok(())
    }

    /// Copies `reader` to a new file at `dest`, stopping one byte past what is left.
    fn write(&mut self, reader: &mut dyn Read, dest: &Path) -> Result<(), ArchiveError> {
        let left = self.limits.max_bytes.saturating_sub(self.bytes);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)?;
        let written = io::copy(&mut reader.take(left.saturating_add(1)), &mut out)?;
        self.bytes = self.bytes.saturating_add(written);
        if written > left {
            return Err(ArchiveError::TooLarge(self.limits.max_bytes));
        }
        Ok(())
    }
}

/// The relative path an entry name stands for, made of ordinary names only; `None` for
/// the archive's root itself (`./`). Used for archive entries and object-store keys.
pub fn safe_relative(name: &str) -> Result<Option<PathBuf>, ArchiveError> {
    if name.starts_with('/') || name.starts_with('\\') || has_drive(name) {
        return Err(ArchiveError::Absolute(name.to_owned()));
    }
    if name.contains(['\\', '\0']) {
        return Err(ArchiveError::Escapes(name.to_owned()));
    }
    let mut out = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::Escapes(name.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Absolute(name.to_owned()))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn has_drive(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn create_parents(target: &Path, relative: &Path) -> Result<(), ArchiveError> {
    if let Some(parent) = relative.parent() {
        std::fs::create_dir_all(target.join(parent))?;
    }
    Ok(())
}

fn unpack_tar(file: File, target: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    use tar::EntryType;
    let corrupt = |e: io::Error| ArchiveError::Corrupt {
        kind: ArchiveKind::TarGz,
        reason: e.to_string(),
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        match kind {
            // Archive-wide metadata, not a file.
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink | EntryType::Link => return Err(ArchiveError::Link(name)),
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            _ => return Err(ArchiveError::Special(name)),
        }
        let Some(relative) = safe_relative(&name)? else {
            continue;
        };
        budget.count_file()?;
        if kind == EntryType::Directory {
            std::fs::create_dir_all(target.join(&relative))?;
            continue;
        }
        budget.check_declared(entry.size())?;
        create_parents(target, &relative)?;
        budget.write(&mut entry, &target.join(&relative))?;
    }
    Ok(())
}

fn unpack_zip(file: File, target: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        kind: ArchiveKind::Zip,
        reason: e.to_string(),
    };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(corrupt)?;
    if archive.len() > budget.limits.max_files {
        return Err(ArchiveError::TooManyFiles(budget.limits.max_files));
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(corrupt)?;
        let name = entry.name().to_owned();
        if entry.is_symlink() {
            return Err(ArchiveError::Link(name));
        }
        let is_dir = entry.is_dir();
        // Unix mode bits, when the archive carries them, must say file or directory.
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170_000;
            if kind != 0 && kind != 0o100_000 && kind != 0o040_000 {
                return Err(ArchiveError::Special(name));
            }
        }
        let Some(relative) = safe_relative(&name)? else {
            continue;
        };
        budget.count_file()?;
        if is_dir {
            std::fs::create_dir_all(target.join(&relative))?;
            continue;
        }
        budget.check_declared(entry.size())?;
        create_parents(target, &relative)?;
        budget.write(&mut entry, &target.join(&relative))?;
    }
    Ok(())
}

/// Finds the Triton model directory in `dir`: `dir` itself when it holds a numeric version
/// directory, or its only entry when that is a directory that does (an archive made with
/// `tar -C parent model`).
pub fn model_root(dir: &Path) -> Result<PathBuf, ArchiveError> {
    if has_version_dir(dir)? {
        return Ok(dir.to_path_buf());
    }
    let entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    if let [only] = entries.as_slice() {
        if only.file_type()?.is_dir() && has_version_dir(&only.path())? {
            return Ok(only.path());
        }
    }
    Err(ArchiveError::Layout(
        "it has no numeric version subdirectory (e.g. 1/) at its top or in its only directory",
    ))
}

fn has_version_dir(dir: &Path) -> Result<bool, io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let numeric = entry
            .file_name()
            .to_str()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numeric && entry.file_type()?.is_dir() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_files: 100,
    };

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    /// Writes a raw name into the header (the tar crate's `set_path` refuses `..`, which
    /// is the point of these tests).
    fn raw_entry(
        b: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
        name: &str,
        mut h: tar::Header,
        data: &[u8],
    ) {
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn unpack_bytes(
        bytes: &[u8],
        kind: ArchiveKind,
        limits: Limits,
    ) -> Result<(tempfile::TempDir, u64), ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        std::fs::write(&archive, bytes).unwrap();
        let target = dir.path().join("out");
        std::fs::create_dir(&target).unwrap();
        unpack(&archive, kind, &target, limits).map(|n| (dir, n))
    }

    fn good_tar() -> Vec<u8> {
        tar_gz(|b| {
            b.append_data(&mut file_header(5), "linear/config.pbtxt", &b"hello"[..])
                .unwrap();
            b.append_data(&mut file_header(3), "linear/1/model.py", &b"abc"[..])
                .unwrap();
        })
    }

    #[test]
    fn unpacks_a_tar_gz_and_finds_the_model_root() {
        let (dir, bytes) = unpack_bytes(&good_tar(), ArchiveKind::TarGz, LIMITS).unwrap();
        assert_eq!(bytes, 8);
        let root = model_root(&dir.path().join("out")).unwrap();
        assert_eq!(root, dir.path().join("out/linear"));
        assert_eq!(std::fs::read(root.join("1/model.py")).unwrap(), b"abc");
    }

    #[test]
    fn unpacks_a_zip() {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.add_directory("1/", opts).unwrap();
        w.start_file("1/model.py", opts).unwrap();
        w.write_all(b"abc").unwrap();
        w.start_file("./config.pbtxt", opts).unwrap();
        w.write_all(b"cfg").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let (dir, n) = unpack_bytes(&bytes, ArchiveKind::Zip, LIMITS).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            model_root(&dir.path().join("out")).unwrap(),
            dir.path().join("out")
        );
    }

    #[test]
    fn refuses_unsafe_tar_entries() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar_gz(|b| raw_entry(b, "../evil", file_header(1), b"x")),
                "escapes",
            ),
            (
                tar_gz(|b| raw_entry(b, "1/../../evil", file_header(1), b"x")),
                "escapes",
            ),
            (
                tar_gz(|b| raw_entry(b, "/etc/evil", file_header(1), b"x")),
                "absolute",
            ),
            (
                tar_gz(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, "1/leak", "/etc/passwd").unwrap();
                }),
                "is a link",
            ),
            (
                tar_gz(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, "1/hard", "config.pbtxt").unwrap();
                }),
                "is a link",
            ),
            (
                tar_gz(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_size(0);
                    b.append_data(&mut h, "1/fifo", io::empty()).unwrap();
                }),
                "not a regular file",
            ),
            (b"not gzip at all".to_vec(), "not a valid tar.gz"),
        ];
        for (bytes, want) in cases {
            let err = unpack_bytes(&bytes, ArchiveKind::TarGz, LIMITS)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn stops_archive_bombs() {
        // 4 MiB of zeros compresses to a few KiB; the limit is 1 MiB.
        let zeros = vec![0u8; 4 << 20];
        let bomb = tar_gz(|b| {
            b.append_data(&mut file_header(zeros.len() as u64), "1/zeros", &zeros[..])
                .unwrap();
        });
        assert!(bomb.len() < 64 << 10);
        let err = unpack_bytes(&bomb, ArchiveKind::TarGz, LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");

        // A header that lies about its size is caught by counting what is written.
        let liar = tar_gz(|b| {
            b.append_data(&mut file_header(zeros.len() as u64), "1/zeros", &zeros[..])
                .unwrap();
        });
        let small = Limits {
            max_bytes: 10,
            max_files: 100,
        };
        assert!(matches!(
            unpack_bytes(&liar, ArchiveKind::TarGz, small).unwrap_err(),
            ArchiveError::TooLarge(10)
        ));

        let many = tar_gz(|b| {
            for i in 0..150 {
                b.append_data(&mut file_header(1), format!("1/f{i}"), &b"x"[..])
                    .unwrap();
            }
        });
        assert!(matches!(
            unpack_bytes(&many, ArchiveKind::TarGz, LIMITS).unwrap_err(),
            ArchiveError::TooManyFiles(100)
        ));
    }

    #[test]
    fn refuses_unsafe_zip_entries() {
        let zip_with = |name: &str, symlink: bool| {
            let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
            let opts = zip::write::SimpleFileOptions::default();
            if symlink {
                w.add_symlink(name, "/etc/passwd", opts).unwrap();
            } else {
                w.start_file(name, opts).unwrap();
                w.write_all(b"x").unwrap();
            }
            w.finish().unwrap().into_inner()
        };
        for (bytes, want) in [
            (zip_with("../evil", false), "escapes"),
            (zip_with("/abs/evil", false), "absolute"),
            (zip_with("C:/evil", false), "absolute"),
            (zip_with("a\\..\\evil", false), "escapes"),
            (zip_with("1/leak", true), "is a link"),
        ] {
            let err = unpack_bytes(&bytes, ArchiveKind::Zip, LIMITS)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn finds_no_model_without_a_version_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.pbtxt"), "x").unwrap();
        std::fs::create_dir(dir.path().join("weights")).unwrap();
        let err = model_root(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no numeric version"), "{err}");
    }

    #[test]
    fn relative_paths_are_ordinary_names() {
        assert_eq!(
            safe_relative("./a/./b").unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(safe_relative("./").unwrap(), None);
        assert!(safe_relative("a/../../b").is_err());
        assert!(safe_relative("a/..").is_err());
    }
}
