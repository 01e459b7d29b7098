//! Transparent mode (placeholder until the next commit).
