//! Publishing an embeddings directory into PostgreSQL with pgvector, and searching it there.
//!
//! A published table holds one row per image, keyed by the file's raw path bytes:
//!
//! ```sql
//! path_bytes bytea PRIMARY KEY, path text, source_row bigint, size_bytes bigint, mtime_ns bigint,
//! sha256 text, width integer, height integer, embedding vector(D), published_at timestamptz
//! ```
//!
//! with a pgvector HNSW index (`vector_cosine_ops`, the given `m` and `ef_construction`), built
//! in bulk once the creating publish's rows are in and maintained on insert after that. The
//! table `dim_tables` records, per published table, the model digest, preset, feature and width;
//! publishing another model's vectors into a table is refused. `source_row` is the row in the
//! embeddings directory it was published from, `path` the path as the manifest writes it.
//!
//! [`publish`] sends only rows that are new or changed (size, mtime or row) since the table last
//! saw them, in batches: each batch is copied in binary into a temporary table and upserted in
//! one transaction. A run killed at any moment therefore leaves whole batches, and a rerun sends
//! the rest: never a duplicate (the key), never a lost row. Several processes (one per shard) can
//! publish into one table at once; table creation is serialised by an advisory lock. Rows are
//! added and updated, never deleted.
//!
//! A table can hold the vectors after a collection-fitted PCA (with whitening), as a dim-search
//! index does; that is also how the shipped model's 4096-d embeddings fit pgvector's HNSW limit of
//! 2000 dimensions. The transform is fitted once, by the publish that creates the table, on that
//! directory's vectors, and stored in `dim_post_processing`; every later publish (another shard
//! included) and every query applies the stored transform, so all rows share one space.
//! Searches rank by cosine distance (`<=>`); the score is the cosine similarity.

use crate::parquet_metadata::{self, FileFacts, KnownFacts, METADATA_FILE, clamp_i32, clamp_i64};
use dim_index::index::Hit;
use dim_models::path_record::PathRecord;
use dim_vectors::manifest::{Manifest, ManifestError, ManifestRow, ModelIdentity};
use dim_vectors::npy;
use dim_vectors::post_process::{Pca, PcaDescription, PcaSpec};
use pgvector::Vector;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The table recording each published table's model.
pub const REGISTRY_TABLE: &str = "dim_tables";
/// The table holding each published table's post-processing transform, if it has one.
pub const POST_PROCESSING_TABLE: &str = "dim_post_processing";
/// The most dimensions pgvector's HNSW index takes for `vector`.
pub const HNSW_MAX_DIMS: usize = 2000;

/// Advisory-lock key serialising schema changes by concurrent publishers ("dimtools" in ASCII).
const SCHEMA_LOCK_KEY: i64 = 0x6469_6d74_6f6f_6c73;

/// Errors publishing to or searching PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The table name is not a plain identifier.
    #[error(
        "table name `{0}` is not allowed: use 1-48 lower-case letters, digits and underscores, starting with a letter"
    )]
    TableName(String),
    /// The server could not be reached or refused a statement.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// The server has no pgvector.
    #[error("the server has no pgvector extension (`CREATE EXTENSION vector` failed: {0}); install pgvector")]
    NoPgvector(postgres::Error),
    /// The table holds another model's vectors.
    #[error("table {table} holds vectors of another model ({reason}); publish into another table")]
    ModelMismatch {
        /// The table.
        table: String,
        /// What differs.
        reason: String,
    },
    /// The registry entry of a table is unreadable.
    #[error("dim_tables entry of {table} is unreadable: {reason}")]
    Registry {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// The table was not published by dim-search.
    #[error("table {0} is not a dim-search table (no entry in dim_tables); publish into it first")]
    UnknownTable(String),
    /// The embeddings directory is unreadable.
    #[error(transparent)]
    Embeddings(#[from] ManifestError),
    /// The vectors file is unreadable.
    #[error(transparent)]
    Vectors(#[from] npy::NpyError),
    /// The post-processing could not be fitted or applied.
    #[error(transparent)]
    PostProcess(#[from] dim_vectors::post_process::PostProcessError),
    /// The vectors are too wide for pgvector's HNSW index.
    #[error(
        "pgvector's HNSW index takes at most {HNSW_MAX_DIMS} dimensions and these vectors have {0}: \
         publish with --pca D (D <= {HNSW_MAX_DIMS})"
    )]
    TooWide(usize),
    /// A query vector has the wrong width.
    #[error("the query vector has {found} values but table {table} holds {expected}-d vectors")]
    QueryWidth {
        /// The table.
        table: String,
        /// Its width.
        expected: usize,
        /// The query's.
        found: usize,
    },
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Destination table.
    pub table: String,
    /// Rows per transaction.
    pub batch_rows: usize,
    /// HNSW links per node (as `dim-search build --m`).
    pub m: usize,
    /// HNSW build candidate list (as `dim-search build --ef-construction`).
    pub ef_construction: usize,
    /// The post-processing to fit when this publish creates the table (a table that exists keeps
    /// its own).
    pub post_process: Option<PcaSpec>,
    /// Draw progress bars on stderr.
    pub show_progress: bool,
}

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishSummary {
    /// Rows sent (new or changed).
    pub published: usize,
    /// Rows the table already held unchanged.
    pub unchanged: usize,
    /// Transactions committed.
    pub batches: usize,
    /// Rows in the table afterwards.
    pub table_rows: i64,
    /// Seconds spent sending rows.
    pub seconds: f64,
    /// The table's post-processing, if it has one.
    pub post_process: Option<PcaDescription>,
    /// Whether this publish created the table (and fitted its post-processing).
    pub created: bool,
}

/// Checks that `table` is a plain identifier, so it can be spliced into SQL.
pub fn check_table_name(table: &str) -> Result<(), StoreError> {
    let mut chars = table.chars();
    let valid = table.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && table != REGISTRY_TABLE;
    if valid { Ok(()) } else { Err(StoreError::TableName(table.to_string())) }
}

/// Connects to `url` (a `postgresql://` URL or `key=value` string).
pub fn connect(url: &str) -> Result<Client, StoreError> {
    Ok(Client::connect(url, NoTls)?)
}

/// Publishes the embeddings directory `dir` into `options.table` (see the module documentation).
pub fn publish(
    client: &mut Client,
    dir: &Path,
    options: &PublishOptions,
) -> Result<PublishSummary, StoreError> {
    check_table_name(&options.table)?;
    let manifest = Manifest::read(dir)?;
    let vectors = npy::read_matrix(&dir.join(dim_vectors::manifest::EMBEDDINGS_FILE))?;
    let setup = prepare_table(client, &options.table, &manifest.model, &vectors, options)?;
    let table = &options.table;

    let mut present: HashMap<Vec<u8>, (i64, i64, i64)> = HashMap::new();
    for row in
        client.query(&format!("SELECT path_bytes, size_bytes, mtime_ns, source_row FROM {table}"), &[])?
    {
        present.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
    }
    let pending: Vec<(usize, &ManifestRow)> = manifest
        .rows
        .iter()
        .enumerate()
        .filter(|(index, row)| {
            let now = (clamp_i64(u128::from(row.size)), clamp_i64(row.mtime_ns), *index as i64);
            present.get(row.path.as_os_str().as_bytes()) != Some(&now)
        })
        .collect();
    let unchanged = manifest.rows.len() - pending.len();

    let started = Instant::now();
    let known = KnownFacts::read(&[dir.join(METADATA_FILE)]);
    let pending_rows: Vec<ManifestRow> = pending.iter().map(|(_, row)| (*row).clone()).collect();
    let facts = parquet_metadata::gather_facts(&pending_rows, &known, options.show_progress).facts;
    let vector_type =
        client.prepare(&format!("SELECT embedding FROM {table} LIMIT 0"))?.columns()[0].type_().clone();
    let column_types = [
        Type::BYTEA,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::INT4,
        vector_type,
    ];
    let bar = crate::embed_job::progress_bar(pending.len() as u64, "rows published", options.show_progress);
    let mut batches = 0;
    let batch_rows = options.batch_rows.max(1);
    for (batch, batch_facts) in pending.chunks(batch_rows).zip(facts.chunks(batch_rows)) {
        let mut transaction = client.transaction()?;
        transaction.batch_execute(&format!(
            "CREATE TEMP TABLE dim_staging (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        ))?;
        let sink = transaction.copy_in(
            "COPY dim_staging (path_bytes, path, source_row, size_bytes, mtime_ns, sha256, width, height, embedding) \
             FROM STDIN BINARY",
        )?;
        let mut writer = BinaryCopyInWriter::new(sink, &column_types);
        let batch_vectors: Vec<f32> =
            batch.iter().flat_map(|&(index, _)| vectors.row(index).iter().copied()).collect();
        let batch_vectors = match &setup.pca {
            Some(pca) => pca.apply_rows(&batch_vectors)?,
            None => batch_vectors,
        };
        let stored_dim = batch_vectors.len() / batch.len();
        for ((&(index, row), facts), vector) in
            batch.iter().zip(batch_facts).zip(batch_vectors.chunks_exact(stored_dim))
        {
            write_row(&mut writer, index, row, facts.as_ref(), vector.to_vec())?;
        }
        writer.finish()?;
        transaction.batch_execute(&format!(
            "INSERT INTO {table} (path_bytes, path, source_row, size_bytes, mtime_ns, sha256, width, height, embedding) \
             SELECT path_bytes, path, source_row, size_bytes, mtime_ns, sha256, width, height, embedding FROM dim_staging \
             ON CONFLICT (path_bytes) DO UPDATE SET path = EXCLUDED.path, source_row = EXCLUDED.source_row, \
             size_bytes = EXCLUDED.size_bytes, mtime_ns = EXCLUDED.mtime_ns, sha256 = EXCLUDED.sha256, \
             width = EXCLUDED.width, height = EXCLUDED.height, embedding = EXCLUDED.embedding, published_at = now()"
        ))?;
        transaction.commit()?;
        batches += 1;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    ensure_index(client, table)?;
    let seconds = started.elapsed().as_secs_f64();
    let table_rows: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.get(0);
    Ok(PublishSummary {
        published: pending.len(),
        unchanged,
        batches,
        table_rows,
        seconds,
        post_process: setup.pca.map(|pca| pca.description().clone()),
        created: setup.created,
    })
}

fn write_row(
    writer: &mut BinaryCopyInWriter<'_>,
    index: usize,
    row: &ManifestRow,
    facts: Option<&FileFacts>,
    vector: Vec<f32>,
) -> Result<(), postgres::Error> {
    let path_bytes = row.path.as_os_str().as_bytes();
    let path = PathRecord::of(&row.path).path;
    let source_row = index as i64;
    let size = clamp_i64(u128::from(row.size));
    let mtime = clamp_i64(row.mtime_ns);
    let sha256 = facts.map(|f| f.sha256.as_str());
    let width = facts.map(|f| clamp_i32(f.width));
    let height = facts.map(|f| clamp_i32(f.height));
    let embedding = Vector::from(vector);
    let values: [&(dyn ToSql + Sync); 9] =
        [&path_bytes, &path, &source_row, &size, &mtime, &sha256, &width, &height, &embedding];
    writer.write(&values)
}

/// What [`prepare_table`] found or made.
struct TableSetup {
    pca: Option<Pca>,
    created: bool,
}

/// Creates the extension, the registry, the table (fitting its post-processing on `vectors`)
/// and its HNSW index if missing, and checks that the table holds `model`'s vectors; all under
/// one advisory lock.
fn prepare_table(
    client: &mut Client,
    table: &str,
    model: &ModelIdentity,
    vectors: &npy::Matrix,
    options: &PublishOptions,
) -> Result<TableSetup, StoreError> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])?;
    transaction.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").map_err(StoreError::NoPgvector)?;
    transaction.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {REGISTRY_TABLE} (table_name text PRIMARY KEY, model_sha256 text NOT NULL, \
         preset text NOT NULL, feature text NOT NULL, dim integer NOT NULL, hnsw_m integer NOT NULL, \
         hnsw_ef_construction integer NOT NULL, toolkit_version text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE IF NOT EXISTS {POST_PROCESSING_TABLE} (table_name text PRIMARY KEY, description text NOT NULL, \
         mean bytea NOT NULL, components bytea NOT NULL, variances bytea NOT NULL)"
    ))?;
    if let Some(recorded) = registered_model(&mut transaction, table)? {
        if let Some(reason) = recorded.mismatch(model) {
            return Err(StoreError::ModelMismatch { table: table.to_string(), reason });
        }
        let pca = stored_post_processing(&mut transaction, table)?;
        transaction.commit()?;
        return Ok(TableSetup { pca, created: false });
    }
    let pca = match &options.post_process {
        Some(spec) => Some(Pca::fit(&vectors.values, vectors.cols, spec)?),
        None => None,
    };
    let stored_dim = pca.as_ref().map_or(model.dim, |pca| pca.description().dims);
    if stored_dim > HNSW_MAX_DIMS {
        return Err(StoreError::TooWide(stored_dim));
    }
    let feature = model.feature.name();
    let dim = model.dim as i32;
    let (m, ef) = (options.m as i32, options.ef_construction as i32);
    transaction.execute(
        &format!(
            "INSERT INTO {REGISTRY_TABLE} (table_name, model_sha256, preset, feature, dim, hnsw_m, \
             hnsw_ef_construction, toolkit_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &table,
            &model.checkpoint_sha256,
            &model.preset,
            &feature,
            &dim,
            &m,
            &ef,
            &dim_models::TOOLKIT_VERSION,
        ],
    )?;
    if let Some(pca) = &pca {
        let description = serde_json::to_string(pca.description()).expect("a PCA description serialises");
        transaction.execute(
            &format!(
                "INSERT INTO {POST_PROCESSING_TABLE} (table_name, description, mean, components, variances) \
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            &[
                &table,
                &description,
                &f32_bytes(pca.mean()),
                &f32_bytes(pca.components()),
                &f32_bytes(pca.variances()),
            ],
        )?;
    }
    transaction.batch_execute(&format!(
        "CREATE TABLE {table} (path_bytes bytea PRIMARY KEY, path text NOT NULL, \
         source_row bigint NOT NULL, size_bytes bigint NOT NULL, mtime_ns bigint NOT NULL, sha256 text, \
         width integer, height integer, embedding vector({stored_dim}) NOT NULL, \
         published_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    transaction.commit()?;
    Ok(TableSetup { pca, created: true })
}

/// Builds the table's HNSW index, with the M and ef_construction recorded when the table was
/// created, unless it has one. It is built after the creating publish's rows are in (a bulk
/// build is several times faster than maintaining the graph row by row); later rows are added
/// to it as they are inserted, and a run killed before this point builds it on its rerun.
fn ensure_index(client: &mut Client, table: &str) -> Result<(), StoreError> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])?;
    let params = transaction.query_one(
        &format!("SELECT hnsw_m, hnsw_ef_construction FROM {REGISTRY_TABLE} WHERE table_name = $1"),
        &[&table],
    )?;
    let (m, ef_construction): (i32, i32) = (params.get(0), params.get(1));
    transaction.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {table}_embedding_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) \
         WITH (m = {m}, ef_construction = {ef_construction})"
    ))?;
    transaction.commit()?;
    Ok(())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_le_bytes()).collect()
}

fn stored_post_processing(
    client: &mut impl postgres::GenericClient,
    table: &str,
) -> Result<Option<Pca>, StoreError> {
    let Some(row) = client.query_opt(
        &format!("SELECT description, mean, components, variances FROM {POST_PROCESSING_TABLE} WHERE table_name = $1"),
        &[&table],
    )?
    else {
        return Ok(None);
    };
    let unreadable = |reason: String| StoreError::Registry { table: table.to_string(), reason };
    let description: String = row.get(0);
    let description: PcaDescription = serde_json::from_str(&description)
        .map_err(|e| unreadable(format!("post-processing description: {e}")))?;
    let floats = |index: usize, expected: usize| -> Result<Vec<f32>, StoreError> {
        let bytes: Vec<u8> = row.get(index);
        if bytes.len() != expected * 4 {
            return Err(unreadable(format!(
                "post-processing part {index} has {} bytes, not {}",
                bytes.len(),
                expected * 4
            )));
        }
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let (input, dims) = (description.input_dim, description.dims);
    let mean = floats(1, input)?;
    let components = floats(2, dims * input)?;
    let variances = floats(3, dims)?;
    Ok(Some(Pca::from_parts(description, mean, components, variances)))
}

fn registered_model(
    client: &mut impl postgres::GenericClient,
    table: &str,
) -> Result<Option<ModelIdentity>, StoreError> {
    let row = client.query_opt(
        &format!("SELECT model_sha256, preset, feature, dim FROM {REGISTRY_TABLE} WHERE table_name = $1"),
        &[&table],
    )?;
    let Some(row) = row else { return Ok(None) };
    let feature: String = row.get(2);
    let dim: i32 = row.get(3);
    let feature = feature.parse().map_err(|_| StoreError::Registry {
        table: table.to_string(),
        reason: format!("unknown feature `{feature}`"),
    })?;
    Ok(Some(ModelIdentity { checkpoint_sha256: row.get(0), preset: row.get(1), feature, dim: dim as usize }))
}

/// A published table opened for searching: its model and post-processing.
pub struct PublishedTable {
    /// The table.
    pub name: String,
    /// The model whose vectors it holds.
    pub model: ModelIdentity,
    /// The transform its rows went through, applied to every embedded query.
    pub post_process: Option<Pca>,
}

/// Where a query vector comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySpace {
    /// As the model embeds it: the table's post-processing is applied first.
    Embedded,
    /// Already in the table's space (a stored row's vector).
    Stored,
}

impl PublishedTable {
    /// Reads what `dim-search publish` recorded about `table`.
    pub fn open(client: &mut Client, table: &str) -> Result<Self, StoreError> {
        check_table_name(table)?;
        let registry_exists: bool =
            client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&REGISTRY_TABLE])?.get(0);
        if !registry_exists {
            return Err(StoreError::UnknownTable(table.to_string()));
        }
        let model =
            registered_model(client, table)?.ok_or_else(|| StoreError::UnknownTable(table.to_string()))?;
        let post_process = stored_post_processing(client, table)?;
        Ok(PublishedTable { name: table.to_string(), model, post_process })
    }

    /// The stored vector of the row published from `source_row`, if the table has one.
    pub fn row_vector(&self, client: &mut Client, source_row: usize) -> Result<Option<Vec<f32>>, StoreError> {
        let row = client.query_opt(
            &format!("SELECT embedding FROM {} WHERE source_row = $1 LIMIT 1", self.name),
            &[&(source_row as i64)],
        )?;
        Ok(row.map(|row| row.get::<_, Vector>(0).to_vec()))
    }

    /// The `k` nearest rows to `query` by pgvector's HNSW index (`hnsw.ef_search` = `ef`, raised
    /// to `k`, at most pgvector's 1000), as [`Hit`]s: rank, `source_row`, cosine similarity and
    /// path.
    pub fn search(
        &self,
        client: &mut Client,
        query: &[f32],
        space: QuerySpace,
        k: usize,
        ef: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let query = match (space, &self.post_process) {
            (QuerySpace::Embedded, _) if query.len() != self.model.dim => {
                return Err(StoreError::QueryWidth {
                    table: self.name.clone(),
                    expected: self.model.dim,
                    found: query.len(),
                });
            }
            (QuerySpace::Embedded, Some(pca)) => pca.apply(query)?,
            _ => query.to_vec(),
        };
        let mut transaction = client.transaction()?;
        transaction.batch_execute(&format!("SET LOCAL hnsw.ef_search = {}", ef.max(k).clamp(1, 1000)))?;
        let vector = Vector::from(query);
        let rows = transaction.query(
            &format!(
                "SELECT source_row, path_bytes, (1 - (embedding <=> $1))::real FROM {} \
                 ORDER BY embedding <=> $1 LIMIT $2",
                self.name
            ),
            &[&vector, &(k as i64)],
        )?;
        transaction.commit()?;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(rank, row)| {
                let source_row: i64 = row.get(0);
                let path_bytes: Vec<u8> = row.get(1);
                Hit {
                    rank: rank + 1,
                    row: source_row as usize,
                    score: row.get(2),
                    path: PathBuf::from(OsString::from_vec(path_bytes)),
                }
            })
            .collect())
    }
}
