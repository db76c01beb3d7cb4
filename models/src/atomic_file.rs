//! Atomic file writes: data goes to a temporary file in the destination's directory, is synced,
//! and is renamed over the destination, so a crash or a full disk never leaves a half-written file.
//! Outputs that belong together are staged first ([`stage`]) and committed as one
//! ([`commit_together`]): a journal naming every rename is written before the first rename, so a
//! process killed halfway through is rolled forward by the next one to touch the directory
//! ([`finish_interrupted_commit`]), and a failure while writing one file never updates the others.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Prefix of every temporary file this module makes (then the destination's name).
const TEMP_PREFIX: &str = ".";
/// Suffix of every temporary file this module makes.
const TEMP_SUFFIX: &str = ".tmp";

/// A fully written and synced temporary file, waiting to be renamed over its destination.
/// Dropped without [`StagedFile::commit`], it is removed and the destination is untouched.
#[derive(Debug)]
pub struct StagedFile {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
    /// The directory holding both the staged file and its destination.
    dir: PathBuf,
}

impl StagedFile {
    /// Renames the staged file over its destination.
    pub fn commit(self) -> io::Result<()> {
        self.temp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The journal of a multi-file commit in progress: lines of `staged name<TAB>final name`.
pub const JOURNAL_FILE: &str = ".commit-journal";

/// Renames every staged file over its destination as one change: all of `files` must lie in
/// `dir`. Killed at any point, the directory holds either the old files (plus staged leftovers)
/// or a journal from which [`finish_interrupted_commit`] completes the change.
pub fn commit_together(dir: &Path, files: Vec<StagedFile>) -> io::Result<()> {
    finish_interrupted_commit(dir)?;
    let mut renames = Vec::with_capacity(files.len());
    for file in files {
        if file.dir != dir {
            return Err(io::Error::other(format!("{} is not in {}", file.path.display(), dir.display())));
        }
        let names = (file.temp.path().file_name(), file.path.file_name());
        let (Some(staged), Some(final_name)) =
            (names.0.and_then(|n| n.to_str()), names.1.and_then(|n| n.to_str()))
        else {
            return Err(io::Error::other("journalled file names must be UTF-8"));
        };
        renames.push((staged.to_string(), final_name.to_string()));
        // From here the staged file outlives this process, and the journal owns it.
        file.temp.into_temp_path().keep().map_err(|e| e.error)?;
    }
    let journal: String =
        renames.iter().map(|(staged, final_name)| format!("{staged}\t{final_name}\n")).collect();
    write_bytes_atomically(&dir.join(JOURNAL_FILE), journal.as_bytes())?;
    finish_interrupted_commit(dir).map(|_| ())
}

/// Removes the files staged for `destinations` (file names in `dir`) that no commit will use:
/// what a process killed before committing left behind, including a journal it was killed while
/// writing (never renamed into place, so its commit never began). Call it after
/// [`finish_interrupted_commit`] and only while no other process writes `dir`. A file that cannot
/// be removed only costs disk space, so failures are ignored.
pub fn remove_abandoned_staged_files(dir: &Path, destinations: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let abandoned = name.ends_with(TEMP_SUFFIX)
            && destinations
                .iter()
                .chain([&JOURNAL_FILE])
                .any(|file| name.starts_with(&format!("{TEMP_PREFIX}{file}.")));
        if abandoned {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Completes a [`commit_together`] that was interrupted in `dir`, if there is one; returns
/// whether there was. Renames are redone for the staged files still present (the others were
/// renamed before the interruption), then the journal is removed.
pub fn finish_interrupted_commit(dir: &Path) -> io::Result<bool> {
    let journal_path = dir.join(JOURNAL_FILE);
    let journal = match fs::read_to_string(&journal_path) {
        Ok(journal) => journal,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    for line in journal.lines() {
        let Some((staged, final_name)) = line.split_once('\t') else {
            return Err(io::Error::other(format!(
                "{} has a malformed line {line:?}",
                journal_path.display()
            )));
        };
        match fs::rename(dir.join(staged), dir.join(final_name)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    fs::remove_file(&journal_path)?;
    Ok(true)
}

/// The buffered writer [`stage`] hands to its closure. It is `Send`, so writers that need an
/// owned `Write + Send` sink (Parquet's) can take `&mut` of it.
pub type StagedWriter<'a> = BufWriter<&'a fs::File>;

/// Writes the future contents of `path` to a synced temporary file beside it.
pub fn stage<F>(path: &Path, write: F) -> io::Result<StagedFile>
where
    F: FnOnce(&mut StagedWriter<'_>) -> io::Result<()>,
{
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    let temp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{file_name}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    {
        let mut writer = BufWriter::new(temp.as_file());
        write(&mut writer)?;
        writer.flush()?;
    }
    // Temporary files are created owner-only; the result is an ordinary shareable file.
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    temp.as_file().sync_all()?;
    Ok(StagedFile { temp, path: path.to_path_buf(), dir: dir.to_path_buf() })
}

/// Writes `path` atomically with `write`. On any error the destination is untouched and the
/// temporary file is removed.
pub fn write_atomically<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut StagedWriter<'_>) -> io::Result<()>,
{
    stage(path, write)?.commit()
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_committed_together_all_change_and_an_interrupted_commit_is_rolled_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.npy"));
        write_bytes_atomically(&a, b"old a").unwrap();
        write_bytes_atomically(&b, b"old b").unwrap();
        let staged = vec![
            stage(&a, |w| w.write_all(b"new a")).unwrap(),
            stage(&b, |w| w.write_all(b"new b")).unwrap(),
        ];
        commit_together(dir.path(), staged).unwrap();
        assert_eq!((fs::read(&a).unwrap(), fs::read(&b).unwrap()), (b"new a".to_vec(), b"new b".to_vec()));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no journal or staged file is left");

        // A process killed after the first of two renames: the journal and one staged file remain.
        let staged_b = stage(&b, |w| w.write_all(b"newer b")).unwrap();
        let staged_name = staged_b.temp.path().file_name().unwrap().to_str().unwrap().to_string();
        staged_b.temp.into_temp_path().keep().unwrap();
        write_bytes_atomically(&a, b"newer a").unwrap();
        let journal = format!(".a.json.gone.tmp\ta.json\n{staged_name}\tb.npy\n");
        write_bytes_atomically(&dir.path().join(JOURNAL_FILE), journal.as_bytes()).unwrap();
        assert!(finish_interrupted_commit(dir.path()).unwrap());
        assert_eq!(fs::read(&b).unwrap(), b"newer b");
        assert_eq!(fs::read(&a).unwrap(), b"newer a");
        assert!(!finish_interrupted_commit(dir.path()).unwrap(), "nothing left to finish");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);

        // A process killed before its commit leaves staged files that nothing will rename.
        let abandoned = stage(&b, |w| w.write_all(b"never committed")).unwrap();
        abandoned.temp.into_temp_path().keep().unwrap();
        let other = stage(&dir.path().join("c.txt"), |w| w.write_all(b"not ours")).unwrap();
        other.temp.into_temp_path().keep().unwrap();
        // Killed while writing the journal: its temporary file was never renamed into place.
        let half_journal =
            stage(&dir.path().join(JOURNAL_FILE), |w| w.write_all(b".b.npy.x.tmp\tb")).unwrap();
        half_journal.temp.into_temp_path().keep().unwrap();
        remove_abandoned_staged_files(dir.path(), &["a.json", "b.npy"]);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].starts_with(".c.txt.") && names[1] == "a.json" && names[2] == "b.npy", "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_neither_the_destination_nor_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let result = write_atomically(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(result.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        write_bytes_atomically(&path, b"whole").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
