//! moai-models.
