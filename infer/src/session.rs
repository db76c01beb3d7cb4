//! The one place ONNX Runtime sessions are built: intra-op threads, graph optimisation level and
//! the execution provider (CPU, or CUDA when compiled in, with a fallback or a hard error), and
//! reading the model's DIM metadata from the session.

use crate::{graph_pruning, runtime};
use dim_models::onnx_metadata::{MetadataError, ModelMetadata};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` feature and the onnxruntime-gpu library).
    Cuda,
}

impl ExecutionProvider {
    /// The provider's name on command lines and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda),
            other => Err(format!("unknown execution provider `{other}` (known: cpu, cuda)")),
        }
    }
}

/// How sessions are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    pub threads: usize,
    /// The requested execution provider.
    pub execution_provider: ExecutionProvider,
    /// Refuse to fall back to the CPU when the requested provider is unavailable.
    pub strict_execution_provider: bool,
    /// Build the session for this output only: the nodes it does not need are cut from the graph
    /// first ([`crate::graph_pruning`]). `None`, or a name the graph has no output for, loads the
    /// whole graph.
    pub only_output: Option<String>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            execution_provider: ExecutionProvider::Cpu,
            strict_execution_provider: false,
            only_output: None,
        }
    }
}

/// Errors building a session or reading its metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// ONNX Runtime itself could not be loaded.
    #[error("{0}")]
    Runtime(String),
    /// The model file does not exist.
    #[error("model {0} does not exist (export one with dim-export, or pass --model)")]
    ModelMissing(PathBuf),
    /// ONNX Runtime refused a setting or the model.
    #[error("cannot load model {path}: {message}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The requested execution provider is unavailable and `strict` forbids falling back.
    #[error("execution provider `{provider}` is unavailable: {reason}")]
    ProviderUnavailable {
        /// The requested provider.
        provider: &'static str,
        /// Why it could not be used.
        reason: String,
    },
    /// The model carries no (or broken) DIM metadata.
    #[error("model {path} cannot be used: {source}")]
    Metadata {
        /// The model file.
        path: PathBuf,
        /// What is wrong with the metadata.
        #[source]
        source: MetadataError,
    },
}

/// A built session with what it runs on and what the model says about itself.
pub struct ModelSession {
    /// The ONNX Runtime session.
    pub session: Session,
    /// The provider actually in use (after any fallback).
    pub execution_provider: ExecutionProvider,
    /// Why the requested provider was not used, when a fallback happened.
    pub fallback_reason: Option<String>,
    /// The model's DIM metadata.
    pub metadata: ModelMetadata,
}

/// Builds a session for `model` with `options`, falling back to the CPU (with the reason kept in
/// [`ModelSession::fallback_reason`]) when the requested provider cannot be registered, unless
/// the options are strict.
pub fn build_session(model: &Path, options: &SessionOptions) -> Result<ModelSession, SessionError> {
    if !model.is_file() {
        return Err(SessionError::ModelMissing(model.to_path_buf()));
    }
    let graph = read_graph(model, options.only_output.as_deref())?;
    let (session, execution_provider, fallback_reason) = match options.execution_provider {
        ExecutionProvider::Cpu => {
            (commit(model, &graph, options.threads, false)?, ExecutionProvider::Cpu, None)
        }
        ExecutionProvider::Cuda => match commit(model, &graph, options.threads, true) {
            Ok(session) => (session, ExecutionProvider::Cuda, None),
            Err(SessionError::ProviderUnavailable { provider, reason }) => {
                if options.strict_execution_provider {
                    return Err(SessionError::ProviderUnavailable { provider, reason });
                }
                (commit(model, &graph, options.threads, false)?, ExecutionProvider::Cpu, Some(reason))
            }
            Err(other) => return Err(other),
        },
    };
    let metadata = read_metadata(&session)
        .map_err(|source| SessionError::Metadata { path: model.to_path_buf(), source })?;
    Ok(ModelSession { session, execution_provider, fallback_reason, metadata })
}

/// The model cut down to `only_output`, or `None` to load the file whole: no output was named,
/// or the model cannot be pruned (ONNX Runtime then says what is wrong with it, if anything is).
fn read_graph(model: &Path, only_output: Option<&str>) -> Result<Option<Vec<u8>>, SessionError> {
    let Some(output) = only_output else { return Ok(None) };
    let bytes = std::fs::read(model)
        .map_err(|e| SessionError::Load { path: model.to_path_buf(), message: e.to_string() })?;
    Ok(graph_pruning::prune_to_output(&bytes, output).ok().map(|pruned| pruned.bytes))
}

fn commit(
    model: &Path,
    graph: &Option<Vec<u8>>,
    threads: usize,
    cuda: bool,
) -> Result<Session, SessionError> {
    let environment = runtime::ensure_initialised().map_err(SessionError::Runtime)?;
    let load_error = |message: String| SessionError::Load { path: model.to_path_buf(), message };
    let mut builder = Session::builder(environment)
        .map_err(|e| load_error(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load_error(e.to_string()))?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(|e| load_error(e.to_string()))?;
    }
    // Spinning intra-op threads would burn the cores that the image decoders run on between
    // model runs; dim-embed keeps both busy, so idle ONNX Runtime threads should sleep.
    builder = builder.with_intra_op_spinning(false).map_err(|e| load_error(e.to_string()))?;
    if cuda {
        builder = with_cuda(builder)?;
    }
    match graph {
        Some(pruned) => builder.commit_from_memory(pruned),
        None => builder.commit_from_file(model),
    }
    .map_err(|e| load_error(e.to_string()))
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, SessionError> {
    // Without `error_on_failure` ONNX Runtime silently runs on the CPU, which would make a
    // requested GPU run quietly slow; the caller decides whether to fall back.
    builder.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]).map_err(|e| {
        SessionError::ProviderUnavailable { provider: ExecutionProvider::Cuda.name(), reason: e.to_string() }
    })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, SessionError> {
    Err(SessionError::ProviderUnavailable {
        provider: ExecutionProvider::Cuda.name(),
        reason: "this binary was built without CUDA support (rebuild with `--features dim-infer/cuda`)"
            .into(),
    })
}

/// Reads the DIM metadata from a session's model `metadata_props`.
pub fn read_metadata(session: &Session) -> Result<ModelMetadata, MetadataError> {
    let metadata = session.metadata().map_err(|_| MetadataError::Missing("metadata_props"))?;
    let props: HashMap<String, String> = metadata
        .custom_keys()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|key| metadata.custom(&key).map(|value| (key, value)))
        .collect();
    ModelMetadata::from_props(&props)
}
