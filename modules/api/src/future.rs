//! The future the object-safe parts of the API return.

/// A boxed future, for the object-safe parts of the API (traits with async methods that
/// modules hold as `dyn`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
