//! `rollwatch.toml`: read and checked (placeholder until the live sidecar lands).
