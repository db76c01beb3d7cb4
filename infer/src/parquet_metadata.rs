//! `metadata.parquet`: one row per embedding, in `embeddings.npy`'s order, for pandas, pyarrow,
//! DuckDB or Spark (the layout clip-retrieval users load beside their `.npy`).
//!
//! Columns, in order:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `row` | int64 | the row of `embeddings.npy` |
//! | `path` | string | absolute path (bytes that are not UTF-8 written `\xNN`, as in the manifest) |
//! | `path_bytes` | binary, nullable | the raw name when it is not UTF-8, else null |
//! | `size_bytes` | int64 | file size when embedded |
//! | `mtime_ns` | int64 | modification time when embedded, ns since the Unix epoch |
//! | `sha256` | string, nullable | hex sha256 of the file's bytes |
//! | `width`, `height` | int32, nullable | upright size in pixels (EXIF orientation applied) |
//! | `model_sha256` | string | the model's weights digest |
//! | `feature` | string | the model output the vectors are |
//!
//! `sha256`, `width` and `height` are read from the file itself, so they are null when the file
//! is gone or has changed since it was embedded. They are computed once per file: a rewrite
//! reuses the values of an earlier `metadata.parquet` (its own, or the shards' when merging) for
//! files whose path, size and mtime are unchanged. The file's key-value metadata repeats the
//! model identity and holds `dim.embeddings_sha256`, the digest of the `embeddings.npy` it
//! describes, so a reader can tell a stale file (a run killed after the manifest was committed but
//! before this file was) from a current one. It is written atomically.

use dim_models::atomic_file;
use dim_models::path_record::PathRecord;
use dim_vectors::manifest::{Manifest, ManifestRow};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the metadata table in an embeddings directory.
pub const METADATA_FILE: &str = "metadata.parquet";
/// Key-value metadata key holding the sha256 of the `embeddings.npy` the table describes.
pub const EMBEDDINGS_SHA256_KEY: &str = "dim.embeddings_sha256";

const SCHEMA: &str = "message dim_embedding_metadata {
    required int64 row;
    required binary path (STRING);
    optional binary path_bytes;
    required int64 size_bytes;
    required int64 mtime_ns;
    optional binary sha256 (STRING);
    optional int32 width;
    optional int32 height;
    required binary model_sha256 (STRING);
    required binary feature (STRING);
}";

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 1 << 17;

/// What a file's bytes say beyond the manifest's stat: its content digest and upright size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Upright width in pixels.
    pub width: u32,
    /// Upright height in pixels.
    pub height: u32,
}

/// Facts already known from earlier tables, keyed by (path, size, mtime).
#[derive(Debug, Default)]
pub struct KnownFacts {
    facts: HashMap<(PathBuf, u64, u128), FileFacts>,
}

impl KnownFacts {
    /// Reads the facts of every `metadata.parquet` among `tables` that exists. A table that
    /// cannot be read only costs recomputation, so it is reported on stderr and passed over.
    pub fn read(tables: &[PathBuf]) -> Self {
        let mut known = KnownFacts::default();
        for table in tables.iter().filter(|table| table.exists()) {
            if let Err(error) = known.add_table(table) {
                eprintln!(
                    "dim-embed: not reusing {} ({error}); its files are read again",
                    dim_models::path_record::display(table)
                );
            }
        }
        known
    }

    fn add_table(&mut self, table: &Path) -> Result<(), MetadataError> {
        let parquet_error = |source| MetadataError::Parquet { path: table.to_path_buf(), source };
        let file = std::fs::File::open(table)
            .map_err(|source| MetadataError::Io { path: table.to_path_buf(), source })?;
        let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
        for row in reader.get_row_iter(None).map_err(parquet_error)? {
            let row = row.map_err(parquet_error)?;
            let mut record = TableRecord::default();
            for (name, field) in row.get_column_iter() {
                record.set(name, field);
            }
            if let Some((key, facts)) = record.into_known() {
                self.facts.insert(key, facts);
            }
        }
        Ok(())
    }

    /// How many files this holds facts for.
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    /// Whether this holds no facts.
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    fn get(&self, row: &ManifestRow) -> Option<&FileFacts> {
        self.facts.get(&(row.path.clone(), row.size, row.mtime_ns))
    }
}

/// The columns of one row as read back, for [`KnownFacts`].
#[derive(Default)]
struct TableRecord {
    path: Option<String>,
    path_bytes: Option<Vec<u8>>,
    size: Option<i64>,
    mtime_ns: Option<i64>,
    sha256: Option<String>,
    width: Option<i32>,
    height: Option<i32>,
}

impl TableRecord {
    fn set(&mut self, name: &str, field: &Field) {
        match (name, field) {
            ("path", Field::Str(text)) => self.path = Some(text.clone()),
            ("path_bytes", Field::Bytes(bytes)) => self.path_bytes = Some(bytes.data().to_vec()),
            ("size_bytes", Field::Long(value)) => self.size = Some(*value),
            ("mtime_ns", Field::Long(value)) => self.mtime_ns = Some(*value),
            ("sha256", Field::Str(text)) => self.sha256 = Some(text.clone()),
            ("width", Field::Int(value)) => self.width = Some(*value),
            ("height", Field::Int(value)) => self.height = Some(*value),
            _ => {}
        }
    }

    fn into_known(self) -> Option<((PathBuf, u64, u128), FileFacts)> {
        let path = match self.path_bytes {
            Some(bytes) => PathBuf::from(OsString::from_vec(bytes)),
            None => PathBuf::from(self.path?),
        };
        let key = (path, u64::try_from(self.size?).ok()?, u128::try_from(self.mtime_ns?).ok()?);
        let facts = FileFacts {
            sha256: self.sha256?,
            width: u32::try_from(self.width?).ok()?,
            height: u32::try_from(self.height?).ok()?,
        };
        Some((key, facts))
    }
}

/// Errors writing or reading `metadata.parquet`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet library refused the data or the file.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataSummary {
    /// Rows written (the manifest's count).
    pub rows: usize,
    /// Files read to compute their digest and size.
    pub read: usize,
    /// Files whose facts came from an earlier table.
    pub reused: usize,
    /// Files that are gone or changed since they were embedded: their facts are null.
    pub unavailable: usize,
}

/// The facts of a run of manifest rows, in order: `None` for a file that is gone or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatheredFacts {
    /// One entry per row.
    pub facts: Vec<Option<FileFacts>>,
    /// How many came from [`KnownFacts`] rather than from reading the file.
    pub reused: usize,
}

/// Takes each row's facts from `known`, or reads its file (in parallel).
pub fn gather_facts(rows: &[ManifestRow], known: &KnownFacts, show_progress: bool) -> GatheredFacts {
    let bar = crate::embed_job::progress_bar(rows.len() as u64, "files hashed", show_progress);
    let found: Vec<(Option<FileFacts>, bool)> = rows
        .par_iter()
        .map(|row| {
            let found = match known.get(row) {
                Some(facts) => (Some(facts.clone()), true),
                None => (read_facts(row), false),
            };
            bar.inc(1);
            found
        })
        .collect();
    bar.finish_and_clear();
    let reused = found.iter().filter(|(_, reused)| *reused).count();
    GatheredFacts { facts: found.into_iter().map(|(facts, _)| facts).collect(), reused }
}

/// Writes `dir/metadata.parquet` for `manifest` (the manifest of `dir`), taking facts from
/// `known` where it has them and reading the other files.
pub fn write(
    dir: &Path,
    manifest: &Manifest,
    known: &KnownFacts,
    show_progress: bool,
) -> Result<MetadataSummary, MetadataError> {
    let GatheredFacts { facts, reused } = gather_facts(&manifest.rows, known, show_progress);
    let unavailable = facts.iter().filter(|facts| facts.is_none()).count();

    let path = dir.join(METADATA_FILE);
    let parquet_error = |source| MetadataError::Parquet { path: path.clone(), source };
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).map_err(parquet_error)?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(key_values(manifest)))
            .build(),
    );
    let mut failure = None;
    let staged = atomic_file::stage(&path, |out| {
        let result = (|| {
            let mut writer = SerializedFileWriter::new(out, schema, properties)?;
            for (start, chunk) in (0..manifest.rows.len()).step_by(ROW_GROUP_ROWS).map(|start| {
                let end = (start + ROW_GROUP_ROWS).min(manifest.rows.len());
                (start, start..end)
            }) {
                write_row_group(&mut writer, manifest, start, &facts[chunk])?;
            }
            writer.close()?;
            Ok(())
        })();
        result.map_err(|error: parquet::errors::ParquetError| {
            let message = error.to_string();
            failure = Some(error);
            std::io::Error::other(message)
        })
    });
    let staged = match (staged, failure) {
        (_, Some(source)) => return Err(MetadataError::Parquet { path, source }),
        (Err(source), None) => return Err(MetadataError::Io { path, source }),
        (Ok(staged), None) => staged,
    };
    staged.commit().map_err(|source| MetadataError::Io { path: path.clone(), source })?;
    Ok(MetadataSummary { rows: manifest.rows.len(), read: manifest.rows.len() - reused, reused, unavailable })
}

fn key_values(manifest: &Manifest) -> Vec<KeyValue> {
    let mut pairs = vec![
        KeyValue::new("dim.model_sha256".into(), manifest.model.checkpoint_sha256.clone()),
        KeyValue::new("dim.preset".into(), manifest.model.preset.clone()),
        KeyValue::new("dim.feature".into(), manifest.model.feature.name().to_string()),
        KeyValue::new("dim.dim".into(), manifest.model.dim.to_string()),
        KeyValue::new("dim.toolkit_version".into(), dim_models::TOOLKIT_VERSION.to_string()),
    ];
    if let Some(digest) = &manifest.embeddings_sha256 {
        pairs.push(KeyValue::new(EMBEDDINGS_SHA256_KEY.into(), digest.clone()));
    }
    pairs
}

fn write_row_group<W: std::io::Write + Send>(
    writer: &mut SerializedFileWriter<W>,
    manifest: &Manifest,
    start: usize,
    facts: &[Option<FileFacts>],
) -> Result<(), parquet::errors::ParquetError> {
    let rows = &manifest.rows[start..start + facts.len()];
    let records: Vec<PathRecord> = rows.iter().map(|row| PathRecord::of(&row.path)).collect();
    let present = |facts: &Option<FileFacts>| i16::from(facts.is_some());
    let fact_levels: Vec<i16> = facts.iter().map(present).collect();
    let model = ByteArray::from(manifest.model.checkpoint_sha256.as_str());
    let feature = ByteArray::from(manifest.model.feature.name());

    let mut group = writer.next_row_group()?;
    let mut column_index = 0;
    while let Some(mut column) = group.next_column()? {
        match column_index {
            0 => {
                let values: Vec<i64> = (start..start + rows.len()).map(|row| row as i64).collect();
                column.typed::<Int64Type>().write_batch(&values, None, None)?;
            }
            1 => {
                let values: Vec<ByteArray> =
                    records.iter().map(|record| ByteArray::from(record.path.as_str())).collect();
                column.typed::<ByteArrayType>().write_batch(&values, None, None)?;
            }
            2 => {
                let levels: Vec<i16> = rows
                    .iter()
                    .zip(&records)
                    .map(|(_, record)| i16::from(record.path_bytes_hex.is_some()))
                    .collect();
                let values: Vec<ByteArray> = rows
                    .iter()
                    .zip(&records)
                    .filter(|(_, record)| record.path_bytes_hex.is_some())
                    .map(|(row, _)| ByteArray::from(row.path.as_os_str().as_bytes().to_vec()))
                    .collect();
                column.typed::<ByteArrayType>().write_batch(&values, Some(&levels), None)?;
            }
            3 => {
                let values: Vec<i64> = rows.iter().map(|row| clamp_i64(u128::from(row.size))).collect();
                column.typed::<Int64Type>().write_batch(&values, None, None)?;
            }
            4 => {
                let values: Vec<i64> = rows.iter().map(|row| clamp_i64(row.mtime_ns)).collect();
                column.typed::<Int64Type>().write_batch(&values, None, None)?;
            }
            5 => {
                let values: Vec<ByteArray> =
                    facts.iter().flatten().map(|f| ByteArray::from(f.sha256.as_str())).collect();
                column.typed::<ByteArrayType>().write_batch(&values, Some(&fact_levels), None)?;
            }
            6 | 7 => {
                let values: Vec<i32> = facts
                    .iter()
                    .flatten()
                    .map(|f| clamp_i32(if column_index == 6 { f.width } else { f.height }))
                    .collect();
                column.typed::<Int32Type>().write_batch(&values, Some(&fact_levels), None)?;
            }
            8 | 9 => {
                let value = if column_index == 8 { &model } else { &feature };
                let values = vec![value.clone(); rows.len()];
                column.typed::<ByteArrayType>().write_batch(&values, None, None)?;
            }
            _ => unreachable!("the schema has ten columns"),
        }
        column.close()?;
        column_index += 1;
    }
    group.close()?;
    Ok(())
}

/// `value` as an i64, saturating (sizes and mtimes as Parquet and PostgreSQL hold them).
pub(crate) fn clamp_i64(value: u128) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `value` as an i32, saturating.
pub(crate) fn clamp_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Reads the digest and upright size of the file a row describes, if it is still the file that
/// was embedded (same size and mtime before and after reading).
fn read_facts(row: &ManifestRow) -> Option<FileFacts> {
    let unchanged = || ManifestRow::stat(&row.path).ok().is_some_and(|now| now == *row);
    if !unchanged() {
        return None;
    }
    let sha256 = dim_vectors::manifest::file_sha256(&row.path).ok()?;
    let (width, height) = upright_dimensions(&row.path)?;
    unchanged().then_some(FileFacts { sha256, width, height })
}

/// The size an image shows at once its EXIF orientation is applied, read from its header.
fn upright_dimensions(path: &Path) -> Option<(u32, u32)> {
    use image::ImageDecoder;
    use image::metadata::Orientation;
    let mut decoder = image::ImageReader::open(path).ok()?.with_guessed_format().ok()?.into_decoder().ok()?;
    let (width, height) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    Some(if turned { (height, width) } else { (width, height) })
}
