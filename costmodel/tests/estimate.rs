//! Estimates of fixture models: breakdowns, sources, JSON names.
