//! The package's exceptions (defined in Python, `dim_toolkit/_errors.py`) raised from Rust with
//! the same messages the command-line tools print.

use pyo3::prelude::*;

/// Which exception class of `dim_toolkit._errors` a failure becomes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Anything else the toolkit reports (files, index directories, interrupted jobs).
    General,
    /// A model that cannot be loaded or lacks the asked-for output.
    Model,
    /// Vectors or images whose shape does not fit (also a `ValueError`).
    Dimension,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::General => "DimToolkitError",
            Kind::Model => "ModelError",
            Kind::Dimension => "DimensionError",
        }
    }
}

/// The exception of `kind` carrying `message`.
pub fn raise(kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| {
        match py.import("dim_toolkit._errors").and_then(|m| m.getattr(kind.class_name())) {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(error) => error,
            },
            // Only when the extension is imported without its package.
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(message),
        }
    })
}

/// `raise(kind, …)` for an error value, with its source chain as the CLIs print it (`{:#}`).
pub fn from_error(kind: Kind, context: &str, error: impl std::error::Error) -> PyErr {
    let mut message = if context.is_empty() { error.to_string() } else { format!("{context}: {error}") };
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    raise(kind, message)
}

/// A bad argument value (an unknown feature, provider or metric name).
pub fn bad_argument(message: impl Into<String>) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(message.into())
}
