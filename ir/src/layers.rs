//! Decoder-layer detection (name-scope metadata with a structural fallback) and the model summary the planner reads.
