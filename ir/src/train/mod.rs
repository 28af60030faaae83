//! The training graph: loss, reverse-mode autodiff, optimizer updates, precision policies, recomputation, liveness and per-op costs.
