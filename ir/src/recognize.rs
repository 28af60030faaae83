//! Recognition of higher-level structure (linear, embedding, norms, rotary, attention, MLPs, LM head) with egg rewrites.
