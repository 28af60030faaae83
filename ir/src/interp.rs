//! The reference CPU interpreter (f32) for the canonical op set.
