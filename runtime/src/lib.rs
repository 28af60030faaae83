//! moai-runtime.
