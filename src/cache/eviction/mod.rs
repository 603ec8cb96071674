//! Keeping the cache within `cache.maxsize`: least recently pulled images go first, whole, and
//! content goes only when no kept image references it.

pub mod plan;
